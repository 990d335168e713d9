//! `request_headers` and `response_headers`: per-route header rules, each
//! `remove`, `set` and `add` (applied in that order, after the gateway's own
//! edits are decided and never over them: the headers the gateway owns
//! cannot be named).

use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderRules {
    /// Every value of these headers is removed.
    #[serde(default)]
    pub remove: Vec<String>,
    /// The header gets exactly this value.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// This value is added beside any the header has.
    #[serde(default)]
    pub add: BTreeMap<String, String>,
}

impl HeaderRules {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }
}

/// Which head a set of rules edits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Request,
    Response,
}

/// Rules per route, all kinds together.
pub const MAX_RULES: usize = 64;
/// Bytes of one value.
pub const MAX_VALUE: usize = 4096;

/// Headers whose meaning is the connection's, not the message's.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "proxy-authorization",
];

/// Names that tell an upstream the client's address (besides every
/// `x-forwarded-*`): the gateway's own, or a trusted proxy's. The gateway
/// removes them from every other client's request.
pub const CLIENT_ADDRESS: [&str; 13] = [
    "forwarded",
    "forwarded-for",
    "x-real-ip",
    "client-ip",
    "x-client-ip",
    "true-client-ip",
    "x-cluster-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-originating-ip",
    "x-remote-ip",
    "x-remote-addr",
    "x-forwarded",
];

/// Names some frameworks read in place of the request line's path or host;
/// the gateway removes them from every request.
pub const URL_OVERRIDE: [&str; 7] = [
    "x-original-url",
    "x-original-uri",
    "x-rewrite-url",
    "x-override-url",
    "x-host",
    "x-original-host",
    "x-http-host-override",
];

/// Why a rule may not name `name` (lower case), or `None` when it may.
pub fn refused(side: Side, name: &str) -> Option<&'static str> {
    if HOP_BY_HOP.contains(&name) {
        return Some("is a hop-by-hop header, owned by each connection");
    }
    match name {
        "x-user-id" | "x-user-role" | "x-auth-expires" => {
            Some("is an identity header: only the gateway sets it, from a verified token")
        }
        "content-length" => Some("frames the body; the gateway keeps it true"),
        "x-request-id" => Some("is set by the gateway on every request and response"),
        _ if name.starts_with("access-control-") => {
            Some("is a CORS header: configure the route's `cors` instead")
        }
        _ => match side {
            Side::Request => match name {
                "authorization" => Some(
                    "carries the client's credentials: use `forward_authorization` to pass it on",
                ),
                "host" => Some("names the upstream server; the gateway sets it per server"),
                _ if name.starts_with("x-forwarded") || CLIENT_ADDRESS.contains(&name) => {
                    Some("describes the client connection: the gateway sets or removes it")
                }
                "x-http-method-override" | "x-http-method" | "x-method-override" => {
                    Some("could change the method the upstream acts on")
                }
                _ if URL_OVERRIDE.contains(&name) => {
                    Some("could change the path or host the upstream serves")
                }
                _ if name.contains('_') => Some(
                    "has an underscore, which servers behind may read as a dash (the gateway removes such names)",
                ),
                _ if name.starts_with("sec-websocket-") => {
                    Some("belongs to the WebSocket handshake the gateway checks")
                }
                "expect" => Some("is answered by the gateway"),
                _ => None,
            },
            Side::Response => match name {
                "content-encoding" => Some("describes the body: use `compression`"),
                "ratelimit" | "ratelimit-policy" | "retry-after" => {
                    Some("is set by the gateway's rate limits")
                }
                _ => None,
            },
        },
    }
}

/// The problems of one set of rules, as (key, message), keys relative to
/// the rules' own.
pub(crate) fn problems(side: Side, rules: &HeaderRules) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let count = rules.remove.len() + rules.set.len() + rules.add.len();
    if count > MAX_RULES {
        found.push((
            String::new(),
            format!("has {count} rules; at most {MAX_RULES} are allowed"),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    let names = rules
        .remove
        .iter()
        .enumerate()
        .map(|(i, n)| (format!("remove[{i}]"), n))
        .chain(rules.set.keys().map(|n| (format!("set.{n}"), n)))
        .chain(rules.add.keys().map(|n| (format!("add.{n}"), n)));
    for (key, name) in names {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            found.push((key, format!("{name:?} is not a header name")));
            continue;
        }
        let lower = name.to_ascii_lowercase();
        if let Some(why) = refused(side, &lower) {
            found.push((key, format!("{lower} {why}")));
        } else if !seen.insert(lower.clone()) {
            found.push((key, format!("{lower} has more than one rule")));
        }
    }
    for (kind, map) in [("set", &rules.set), ("add", &rules.add)] {
        for (name, value) in map {
            if value.len() > MAX_VALUE || http::HeaderValue::from_str(value).is_err() {
                found.push((
                    format!("{kind}.{name}"),
                    format!(
                        "the value must be printable text of at most {MAX_VALUE} bytes, without line breaks"
                    ),
                ));
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateways_own_headers_are_refused_by_name_on_each_side() {
        let cases = [
            (Side::Request, "x-user-id", true),
            (Side::Response, "x-user-role", true),
            (Side::Request, "x-auth-expires", true),
            (Side::Request, "authorization", true),
            (Side::Response, "authorization", false),
            (Side::Request, "connection", true),
            (Side::Response, "transfer-encoding", true),
            (Side::Request, "host", true),
            (Side::Request, "x-forwarded-for", true),
            (Side::Response, "access-control-allow-origin", true),
            (Side::Response, "content-encoding", true),
            (Side::Request, "x-api-version", false),
            (Side::Response, "strict-transport-security", false),
            (Side::Response, "server", false),
        ];
        for (side, name, expected) in cases {
            assert_eq!(refused(side, name).is_some(), expected, "{side:?} {name}");
        }
    }

    #[test]
    fn names_values_and_duplicates_are_checked() {
        let rules = HeaderRules {
            remove: vec!["X-A".into(), "bad name".into()],
            set: [("x-a".to_owned(), "1".to_owned())].into(),
            add: [("x-b".to_owned(), "line\nbreak".to_owned())].into(),
        };
        let keys: Vec<String> = problems(Side::Response, &rules)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, ["remove[1]", "set.x-a", "add.x-b"]);
    }
}
