//! What the upstream sees: the target (the path the decision was made on,
//! after the route's rewrite) and the header edits. One pass over the
//! client's header names decides what goes:
//! - every spelling of the identity headers, on every route (protected
//!   routes then get exactly one of each);
//! - method- and URL-override headers, and every name with `_`;
//! - forwarding headers, unless the peer is a trusted proxy, whose chain is
//!   extended instead.

use super::Admission;
use crate::edit::Edit;
use crate::headers::{self, AUTH_EXPIRES, REQUEST_ID, USER_ID, USER_ROLE};
use crate::refusal::Refusal;
use crate::router::Route;
use http::HeaderMap;
use std::net::{IpAddr, SocketAddr};

/// The upstream request target: the route's path for `path`, and the query.
pub fn target(route: &Route, path: &str, query: Option<&str>) -> Result<http::Uri, Refusal> {
    let mut target = route.upstream_path(path);
    if let Some(query) = query {
        target.push('?');
        target.push_str(query);
    }
    target.parse::<http::Uri>().map_err(|_| Refusal::Unreadable)
}

/// What the header edits depend on besides the request's headers.
#[derive(Debug, Clone, Copy)]
pub struct Forward<'a> {
    pub admission: &'a Admission,
    pub peer: Option<IpAddr>,
    /// The peer is a trusted proxy (`server.trusted_proxies`).
    pub trusted: bool,
    pub https: bool,
    pub request_id: &'a str,
    /// The upstream server chosen, sent as `Host`.
    pub server: Option<SocketAddr>,
}

/// The edits that make the client's `headers` the upstream request's, and
/// how many identity headers the client sent (counted as spoofing).
pub fn edits(headers: &HeaderMap, forward: &Forward<'_>) -> (Vec<Edit>, usize) {
    let trusted = forward.trusted;
    let mut spoofed = 0;
    let mut edits: Vec<Edit> = headers
        .keys()
        .filter(|name| {
            if headers::is_identity_header(name.as_str()) {
                spoofed += headers.get_all(*name).iter().count();
                return true;
            }
            headers::is_method_override(name.as_str())
                || headers::is_url_override(name.as_str())
                || headers::has_underscore(name.as_str())
                || (!trusted && headers::is_forwarding_header(name.as_str()))
        })
        .map(|name| Edit::Remove(name.clone()))
        .collect();
    let admission = forward.admission;
    if let Some(user) = &admission.user {
        edits.push(Edit::set(USER_ID, &*user.identity.user_id));
        edits.push(Edit::set(USER_ROLE, &*user.identity.role));
        if admission.websocket
            && let Some(expires) = user.grant.expires
        {
            edits.push(Edit::set(AUTH_EXPIRES, expires.to_string()));
        }
    }
    if let Some(subprotocols) = &admission.subprotocols {
        let name = http::header::SEC_WEBSOCKET_PROTOCOL;
        edits.push(if subprotocols.others.is_empty() {
            Edit::Remove(name)
        } else {
            Edit::Set(name, subprotocols.others.clone())
        });
    }
    if !admission.route.forward_authorization {
        edits.push(Edit::Remove(http::header::AUTHORIZATION));
    }
    edits.push(Edit::set(REQUEST_ID, forward.request_id));

    // The gateway's own forwarding headers; a trusted proxy's chain is
    // extended, anyone else's was removed above.
    let chain = trusted
        .then(|| {
            headers
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect::<Vec<_>>()
                .join(", ")
        })
        .filter(|chain| !chain.is_empty());
    let forwarded_for = match (trusted, chain, forward.peer) {
        (true, Some(chain), Some(ip)) => format!("{chain}, {ip}"),
        (_, _, Some(ip)) => ip.to_string(),
        (_, _, None) => String::from("unknown"),
    };
    edits.push(Edit::set("x-forwarded-for", forwarded_for));
    if !trusted || !headers.contains_key("x-forwarded-proto") {
        let scheme = if forward.https { "https" } else { "http" };
        edits.push(Edit::set("x-forwarded-proto", scheme));
    }
    if !trusted || !headers.contains_key("x-forwarded-host") {
        edits.push(match headers.get(http::header::HOST).map(|h| h.to_str()) {
            Some(Ok(host)) => Edit::set("x-forwarded-host", host),
            _ => Edit::remove("x-forwarded-host"),
        });
    }
    if let Some(addr) = forward.server {
        edits.push(Edit::Set(http::header::HOST, addr.to_string()));
    }
    (edits, spoofed)
}

/// `Connection` without the options that would make the gateway drop
/// headers it sets (identity, request id, forwarding, host); the rest keep
/// their effect. `None`: nothing to change.
pub fn connection(headers: &HeaderMap) -> Option<Edit> {
    let values: Vec<String> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    let scrubbed: Vec<Option<String>> = values
        .iter()
        .map(|v| headers::scrub_connection(v))
        .collect();
    if scrubbed.iter().all(Option::is_none) {
        return None;
    }
    let kept: Vec<String> = values
        .into_iter()
        .zip(scrubbed)
        .map(|(value, scrubbed)| scrubbed.unwrap_or(value))
        .filter(|v| !v.is_empty())
        .collect();
    Some(if kept.is_empty() {
        Edit::Remove(http::header::CONNECTION)
    } else {
        Edit::Set(http::header::CONNECTION, kept.join(", "))
    })
}
