//! What the upstream sees: the target (the path the decision was made on,
//! after the route's rewrite) and the header edits. One pass over the
//! client's header names decides what goes:
//! - every spelling of the identity headers, on every route (protected
//!   routes then get exactly one of each);
//! - method- and URL-override headers, and every name with `_`;
//! - forwarding headers, unless the peer is a trusted proxy, whose chain is
//!   extended instead.

use super::Admission;
use crate::edit::{Edit, Unsendable};
use crate::headers::{self, AUTH_EXPIRES, REQUEST_ID, USER_ID, USER_ROLE};
use crate::refusal::Refusal;
use crate::router::Route;
use http::{HeaderMap, HeaderValue};
use std::net::IpAddr;

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
    /// The `Host` of the upstream server chosen.
    pub host: Option<&'a HeaderValue>,
}

/// The edits that make the client's `headers` the upstream request's, and
/// how many identity headers the client sent (counted as spoofing).
pub fn edits(headers: &HeaderMap, forward: &Forward<'_>) -> Result<(Vec<Edit>, usize), Unsendable> {
    let trusted = forward.trusted;
    let mut spoofed = 0;
    // One allocation: the removals, then at most ten edits of the gateway's.
    let mut edits: Vec<Edit> = Vec::with_capacity(12);
    edits.extend(
        headers
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
            .map(|name| Edit::Remove(name.clone())),
    );
    let admission = forward.admission;
    if let Some(user) = &admission.user {
        edits.push(Edit::set(USER_ID, &*user.identity.user_id)?);
        edits.push(Edit::set(USER_ROLE, &*user.identity.role)?);
        if admission.websocket
            && let Some(expires) = user.grant.expires
        {
            edits.push(Edit::set(AUTH_EXPIRES, expires.to_string())?);
        }
    }
    if let Some(subprotocols) = &admission.subprotocols {
        edits.push(if subprotocols.others.is_empty() {
            Edit::Remove(http::header::SEC_WEBSOCKET_PROTOCOL)
        } else {
            Edit::Set(
                "sec-websocket-protocol",
                HeaderValue::from_str(&subprotocols.others).map_err(|_| Unsendable)?,
            )
        });
    }
    if !admission.route.forward_authorization {
        edits.push(Edit::Remove(http::header::AUTHORIZATION));
    }
    // The route's own rules: they cannot name a header the gateway sets
    // (refused when the file is checked).
    edits.extend(admission.route.request_headers.edits().iter().cloned());
    edits.push(Edit::set(REQUEST_ID, forward.request_id)?);

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
    edits.push(Edit::set("x-forwarded-for", forwarded_for)?);
    if !trusted || !headers.contains_key("x-forwarded-proto") {
        let scheme = if forward.https { "https" } else { "http" };
        edits.push(Edit::set_static("x-forwarded-proto", scheme));
    }
    if !trusted || !headers.contains_key("x-forwarded-host") {
        edits.push(match headers.get(http::header::HOST) {
            Some(host) => Edit::Set("x-forwarded-host", host.clone()),
            None => Edit::remove("x-forwarded-host"),
        });
    }
    if let Some(host) = forward.host {
        edits.push(Edit::Set("Host", host.clone()));
    }
    Ok((edits, spoofed))
}

/// `Connection` without the options that would make the gateway drop
/// headers it sets (identity, request id, forwarding, host); the rest keep
/// their effect. `None`: nothing to change.
pub fn connection(headers: &HeaderMap) -> Option<Edit> {
    let values = headers.get_all(http::header::CONNECTION);
    // Nothing is allocated unless some option must go (the common case is
    // no Connection header, or `keep-alive`/`close`).
    let scrub =
        |v: &http::HeaderValue| headers::scrub_connection(&String::from_utf8_lossy(v.as_bytes()));
    if values.iter().all(|v| scrub(v).is_none()) {
        return None;
    }
    let kept: Vec<String> = values
        .iter()
        .map(|v| scrub(v).unwrap_or_else(|| String::from_utf8_lossy(v.as_bytes()).into_owned()))
        .filter(|v| !v.is_empty())
        .collect();
    Some(if kept.is_empty() {
        Edit::Remove(http::header::CONNECTION)
    } else {
        match HeaderValue::try_from(kept.join(", ")) {
            Ok(value) => Edit::Set("Connection", value),
            Err(_) => Edit::Remove(http::header::CONNECTION),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Grant, Identity, Subprotocols};
    use crate::config::Access;
    use crate::request::User;
    use std::sync::Arc;

    fn route(access: Access, forward_authorization: bool, rewrite: Option<&str>) -> Arc<Route> {
        Arc::new(Route {
            access,
            rewrite: rewrite.map(String::from),
            forward_authorization,
            websocket: true,
            max_body_bytes: 1024,
            ..Route::test("/api/tasks", "tasks")
        })
    }

    fn admission(
        route: Arc<Route>,
        websocket: bool,
        user: bool,
        subprotocols: Option<&str>,
    ) -> Admission {
        Admission {
            route,
            path: "/api/tasks/7".into(),
            websocket,
            subprotocols: subprotocols.map(|others| Subprotocols {
                others: others.into(),
                bearer: true,
            }),
            rate: None,
            user: user.then(|| User {
                identity: Arc::new(Identity {
                    user_id: "7".into(),
                    role: "admin".into(),
                }),
                stale: false,
                grant: Grant::at(Some(1_900_000_000)),
                tunnel: None,
            }),
            answer: None,
            preflight: false,
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        crate::request::header_map(pairs)
    }

    /// The `Host` of the upstream server in these tests.
    static HOST: HeaderValue = HeaderValue::from_static("127.0.0.1:9101");

    /// The client's headers after the edits, and the spoofing count.
    fn forwarded(
        client: &[(&str, &str)],
        admission: &Admission,
        trusted: bool,
    ) -> (HeaderMap, usize) {
        let mut map = headers(client);
        let facts = Forward {
            admission,
            peer: Some("10.0.0.1".parse().expect("ip")),
            trusted,
            https: false,
            request_id: "rid-1",
            host: Some(&HOST),
        };
        let (edits, spoofed) = edits(&map, &facts).expect("sendable");
        crate::edit::apply(&mut map, &edits);
        (map, spoofed)
    }

    fn all<'a>(map: &'a HeaderMap, name: &str) -> Vec<&'a str> {
        map.get_all(name)
            .iter()
            .map(|v| v.to_str().expect("text"))
            .collect()
    }

    const HOSTILE: &[(&str, &str)] = &[
        ("host", "example.com"),
        ("x-user-id", "1"),
        ("X-User-Id", "2"),
        ("x_user_role", "admin"),
        ("x-auth-expires", "99999999999"),
        ("x-forwarded-for", "6.6.6.6"),
        ("x-forwarded-host", "evil.example"),
        ("x-forwarded-proto", "https"),
        ("forwarded", "for=6.6.6.6"),
        ("x-real-ip", "6.6.6.6"),
        ("x-http-method-override", "DELETE"),
        ("x-original-url", "/admin"),
        ("my_header", "1"),
        ("authorization", "Bearer a.b.c"),
        ("x-request-id", "client-chosen"),
        ("x-kept", "yes"),
    ];

    #[test]
    fn a_public_route_gets_no_identity_and_nothing_the_client_forged() {
        let admission = admission(route(Access::Public, false, None), false, false, None);
        let (map, spoofed) = forwarded(HOSTILE, &admission, false);
        assert_eq!(spoofed, 4, "every identity spelling is counted");
        let cases: &[(&str, &[&str])] = &[
            ("x-user-id", &[]),
            ("x-user-role", &[]),
            ("x_user_role", &[]),
            ("x-auth-expires", &[]),
            ("x-forwarded-for", &["10.0.0.1"]),
            ("x-forwarded-host", &["example.com"]),
            ("x-forwarded-proto", &["http"]),
            ("forwarded", &[]),
            ("x-real-ip", &[]),
            ("x-http-method-override", &[]),
            ("x-original-url", &[]),
            ("my_header", &[]),
            ("authorization", &[]),
            ("x-request-id", &["rid-1"]),
            ("host", &["127.0.0.1:9101"]),
            ("x-kept", &["yes"]),
        ];
        for (name, expected) in cases {
            assert_eq!(all(&map, name), *expected, "{name}");
        }
    }

    #[test]
    fn a_protected_route_gets_exactly_one_verified_identity() {
        let protected = admission(route(Access::Protected, false, None), false, true, None);
        let (map, _) = forwarded(HOSTILE, &protected, false);
        assert_eq!(all(&map, "x-user-id"), ["7"]);
        assert_eq!(all(&map, "x-user-role"), ["admin"]);
        // Only an upgraded connection is told when its token ends.
        assert!(all(&map, "x-auth-expires").is_empty());
        assert!(all(&map, "authorization").is_empty());

        let forwarding = admission(route(Access::Protected, true, None), false, true, None);
        let (map, _) = forwarded(HOSTILE, &forwarding, false);
        assert_eq!(all(&map, "authorization"), ["Bearer a.b.c"]);
    }

    #[test]
    fn a_websocket_is_told_when_its_token_ends_and_never_sees_the_bearer_subprotocol() {
        let client = [
            ("host", "example.com"),
            ("sec-websocket-protocol", "chat, bearer, a.b.c"),
        ];
        let with_others = admission(
            route(Access::Protected, false, None),
            true,
            true,
            Some("chat"),
        );
        let (map, _) = forwarded(&client, &with_others, false);
        assert_eq!(all(&map, "x-auth-expires"), ["1900000000"]);
        assert_eq!(all(&map, "sec-websocket-protocol"), ["chat"]);

        let only_bearer = admission(route(Access::Protected, false, None), true, true, Some(""));
        let (map, _) = forwarded(&client, &only_bearer, false);
        assert!(all(&map, "sec-websocket-protocol").is_empty());
    }

    #[test]
    fn a_trusted_proxy_chain_is_extended_and_its_headers_kept() {
        let admission = admission(route(Access::Public, false, None), false, false, None);
        let (map, spoofed) = forwarded(HOSTILE, &admission, true);
        assert_eq!(spoofed, 4, "identity headers go even from a trusted proxy");
        assert_eq!(all(&map, "x-forwarded-for"), ["6.6.6.6, 10.0.0.1"]);
        assert_eq!(all(&map, "x-forwarded-proto"), ["https"]);
        assert_eq!(all(&map, "x-forwarded-host"), ["evil.example"]);
        assert_eq!(all(&map, "x-real-ip"), ["6.6.6.6"]);
        assert!(all(&map, "x-user-id").is_empty());
    }

    #[test]
    fn targets_follow_the_rewrite_and_keep_the_query() {
        let plain = route(Access::Public, false, None);
        assert_eq!(
            target(&plain, "/api/tasks/7", Some("a=1")).expect("uri"),
            "/api/tasks/7?a=1"
        );
        let rewritten = route(Access::Public, false, Some("/v2/items"));
        assert_eq!(
            target(&rewritten, "/api/tasks/7", None).expect("uri"),
            "/v2/items/7"
        );
        assert_eq!(
            target(&rewritten, "/api/tasks", None).expect("uri"),
            "/v2/items"
        );
    }

    #[test]
    fn connection_options_cannot_drop_what_the_gateway_sets() {
        let cases: &[(&[&str], Option<Edit>)] = &[
            (&[], None),
            (&["keep-alive"], None),
            (
                &["close, x-user-id"],
                Some(Edit::Set("Connection", HeaderValue::from_static("close"))),
            ),
            (
                &["x-forwarded-for", "host"],
                Some(Edit::Remove(http::header::CONNECTION)),
            ),
            (
                &["upgrade, X-Request-Id", "keep-alive"],
                Some(Edit::Set(
                    "Connection",
                    HeaderValue::from_static("upgrade, keep-alive"),
                )),
            ),
        ];
        for (values, expected) in cases {
            let pairs: Vec<(&str, &str)> = values.iter().map(|v| ("connection", *v)).collect();
            assert_eq!(&connection(&headers(&pairs)), expected, "{values:?}");
        }
    }
}
