//! Before any route is looked at: the request id, the head's size, the
//! `Host` rule, the gateway's own `/healthz`, and the redirect from plain
//! HTTP to HTTPS.

use super::Request;
use crate::config::Config;
use crate::headers::{self, REQUEST_ID};
use crate::refusal::Refusal;
use http::{HeaderMap, Method};
use std::net::SocketAddr;

/// What the front of the pipeline decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Front {
    /// On to admission.
    Continue,
    /// Refused before routing; the connection is closed after the answer
    /// (the head itself was at fault).
    Refuse(Refusal),
    /// Refused before routing; the connection may serve another request.
    Answer(Refusal),
    /// The gateway's own health answer.
    Health,
    /// `308` to this location, over HTTPS.
    Redirect(String),
}

/// What the front needs besides the request.
#[derive(Debug, Clone, Copy)]
pub struct Head<'a> {
    pub http11: bool,
    /// Bytes of the request target as received.
    pub target_bytes: usize,
    /// The target's path and query, for a redirect.
    pub target: &'a str,
    pub https: bool,
}

/// The request id: the client's when well formed, else a new one.
pub fn request_id(headers: &HeaderMap) -> String {
    match headers.get(REQUEST_ID) {
        Some(value) if headers::is_valid_request_id(value.as_bytes()) => {
            String::from_utf8_lossy(value.as_bytes()).into_owned()
        }
        _ => headers::new_request_id(),
    }
}

/// Bytes of the request line and headers, as the client sent them (close
/// enough: names, values and separators).
pub fn head_bytes(target_bytes: usize, headers: &HeaderMap) -> usize {
    target_bytes
        + headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum::<usize>()
}

/// Decides what happens before routing.
pub fn check(request: &Request<'_>, head: &Head<'_>, config: &Config) -> Front {
    // HTTP/1 heads are bounded while they are read; this also covers HTTP/2,
    // and a limit lowered by a reload.
    if head_bytes(head.target_bytes, request.headers) > config.server.max_header_bytes.0 as usize {
        return Front::Refuse(Refusal::HeadersTooLarge);
    }
    // The first two Host values are all the rule needs: no allocation.
    let mut all = request
        .headers
        .get_all(http::header::HOST)
        .iter()
        .map(http::HeaderValue::as_bytes);
    let (first, second) = (all.next(), all.next());
    let found = [first.unwrap_or_default(), second.unwrap_or_default()];
    let count = usize::from(first.is_some()) + usize::from(second.is_some());
    if let Some(problem) = headers::host_problem(head.http11, &found[..count]) {
        return Front::Refuse(Refusal::BadRequest(problem));
    }
    if request.path == "/healthz"
        && (*request.method == Method::GET || *request.method == Method::HEAD)
    {
        return Front::Health;
    }
    if !head.https && config.tls.as_ref().is_some_and(|t| t.redirect_http) {
        let port = config
            .tls
            .as_ref()
            .and_then(|t| t.listen.parse::<SocketAddr>().ok())
            .map_or(443, |a| a.port());
        return match https_location(request.headers, head.target, port) {
            Some(location) => Front::Redirect(location),
            None => Front::Answer(Refusal::BadRequest("a Host header is required")),
        };
    }
    Front::Continue
}

/// The same path and query over HTTPS, on the TLS listener's port. The host
/// is the client's own `Host` (only its name part, and only when it is a
/// plain host name or address), so a client can only send itself elsewhere.
pub fn https_location(headers: &HeaderMap, target: &str, port: u16) -> Option<String> {
    let host = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(headers::host_name)?;
    let target = if target.is_empty() { "/" } else { target };
    Some(if port == 443 {
        format!("https://{host}{target}")
    } else {
        format!("https://{host}:{port}{target}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        Config::parse(&format!(
            "{extra}auth: {{ verify_url: \"http://127.0.0.1:9/api/verify\" }}\nupstreams:\n  a: {{ servers: [\"127.0.0.1:1\"] }}\nroutes:\n  - {{ prefix: /, upstream: a, access: public }}\n"
        ))
        .expect("config")
    }

    fn front(
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        http11: bool,
        https: bool,
        config: &Config,
    ) -> Front {
        let map = crate::request::header_map(headers);
        let method = Method::from_bytes(method.as_bytes()).expect("method");
        let request = crate::request::test_request(&method, path, &map, false);
        let head = Head {
            http11,
            target_bytes: path.len(),
            target: path,
            https,
        };
        check(&request, &head, config)
    }

    #[test]
    fn decisions_before_routing() {
        let plain = config("server: { max_header_bytes: 1KiB }\n");
        let host = [("host", "example.com")];
        let big = "x".repeat(1100);
        type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, bool, Front);
        let cases: Vec<Case> = vec![
            ("GET", "/x", host.to_vec(), true, Front::Continue),
            ("GET", "/healthz", host.to_vec(), true, Front::Health),
            ("HEAD", "/healthz", host.to_vec(), true, Front::Health),
            ("POST", "/healthz", host.to_vec(), true, Front::Continue),
            (
                "GET",
                "/x",
                vec![],
                true,
                Front::Refuse(Refusal::BadRequest(
                    "HTTP/1.1 requests need exactly one Host header",
                )),
            ),
            // HTTP/1.0 may leave Host out.
            ("GET", "/x", vec![], false, Front::Continue),
            (
                "GET",
                "/x",
                vec![("host", "a"), ("host", "b")],
                true,
                Front::Refuse(Refusal::BadRequest(
                    "HTTP/1.1 requests need exactly one Host header",
                )),
            ),
            (
                "GET",
                "/x",
                vec![("host", "a"), ("x-big", big.as_str())],
                true,
                Front::Refuse(Refusal::HeadersTooLarge),
            ),
        ];
        for (method, path, headers, http11, expected) in cases {
            let got = front(method, path, &headers, http11, false, &plain);
            match (&got, &expected) {
                // The Host rule's exact wording lives in headers.rs.
                (Front::Refuse(Refusal::BadRequest(_)), Front::Refuse(Refusal::BadRequest(_))) => {}
                _ => assert_eq!(got, expected, "{method} {path} {headers:?}"),
            }
        }
    }

    #[test]
    fn plain_http_is_redirected_when_told() {
        let dir = tempfile::tempdir().expect("dir");
        let redirecting = config(&format!(
            "tls: {{ listen: \"127.0.0.1:8443\", cert: {0}/c.pem, key: {0}/k.pem, redirect_http: true }}\n",
            dir.path().display()
        ));
        let host = [("host", "example.com:8080")];
        assert_eq!(
            front("GET", "/a?b=c", &host, true, false, &redirecting),
            Front::Redirect("https://example.com:8443/a?b=c".into())
        );
        assert_eq!(
            front("GET", "/a", &host, true, true, &redirecting),
            Front::Continue
        );
        assert_eq!(
            front("GET", "/a", &[], false, false, &redirecting),
            Front::Answer(Refusal::BadRequest("a Host header is required"))
        );
        let plain = config("");
        assert_eq!(
            front("GET", "/a", &host, true, false, &plain),
            Front::Continue
        );
    }

    #[test]
    fn locations() {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::HOST, "[::1]:8080".parse().expect("host"));
        assert_eq!(
            https_location(&headers, "/x", 443),
            Some("https://[::1]/x".into())
        );
        assert_eq!(
            https_location(&headers, "", 8443),
            Some("https://[::1]:8443/".into())
        );
    }

    #[test]
    fn request_ids_are_kept_only_when_well_formed() {
        let mut headers = HeaderMap::new();
        headers.insert(REQUEST_ID, "abc-123".parse().expect("id"));
        assert_eq!(request_id(&headers), "abc-123");
        headers.insert(REQUEST_ID, "a b".parse().expect("id"));
        assert_ne!(request_id(&headers), "a b");
        assert!(headers::is_valid_request_id(
            request_id(&HeaderMap::new()).as_bytes()
        ));
    }
}
