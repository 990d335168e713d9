//! Which route a request takes: its path normalised, the route found by
//! longest whole-segment prefix and method, and the upgrade rules.

use super::Request;
use crate::path;
use crate::refusal::Refusal;
use crate::router::{Lookup, Route, RouteTable};
use std::sync::Arc;

/// A request's route and the path it was chosen on.
#[derive(Debug)]
pub struct Routed {
    pub route: Arc<Route>,
    pub path: String,
    /// An upgrade the route allows.
    pub websocket: bool,
    /// A CORS preflight, routed as the request it asks about.
    pub preflight: bool,
}

/// The host a request names, in normal form: the target's authority, else
/// `Host`. `None` when neither holds a host name or address.
pub fn host(request: &Request<'_>) -> Option<String> {
    let raw = match request.authority {
        Some(authority) => authority.rsplit('@').next().unwrap_or(authority),
        None => request.headers.get(http::header::HOST)?.to_str().ok()?,
    };
    crate::config::normal_host(raw)
}

/// Normalises the path and finds the route ([`check_upgrade`] follows): on
/// the request's host when routes name hosts, and for a preflight, the
/// route of the method it asks about when that route has a CORS policy.
pub fn resolve(routes: &RouteTable, request: &Request<'_>) -> Result<Routed, Refusal> {
    let normalised = path::normalize(request.path).map_err(|e| Refusal::BadPath(e.to_string()))?;
    let host = if routes.has_hosts() {
        host(request)
    } else {
        None
    };
    if host.is_none() && routes.has_hosts() {
        let named = request.authority.is_some() || request.headers.contains_key(http::header::HOST);
        if named {
            // Routed by host, a host that is no host name is never guessed.
            return Err(Refusal::BadRequest(
                "the Host header is not a host name or address",
            ));
        }
        if routes.host_only() {
            return Err(Refusal::BadRequest(
                "this gateway serves named hosts only: send the host in Host",
            ));
        }
    }
    let host = host.as_deref();
    if let Some(asked) = crate::cors::requested_method(request.method, request.headers)
        && let Lookup::Found(route) = routes.find_on(host, &normalised, asked)
        && route.cors.is_some()
    {
        return Ok(Routed {
            route: Arc::clone(route),
            path: normalised,
            websocket: false,
            preflight: true,
        });
    }
    let route = match routes.find_on(host, &normalised, request.method.as_str()) {
        Lookup::Found(route) => Arc::clone(route),
        Lookup::NotFound => return Err(Refusal::NotFound),
        Lookup::MethodNotAllowed(allow) => return Err(Refusal::MethodNotAllowed { allow }),
    };
    Ok(Routed {
        route,
        path: normalised,
        websocket: request.upgrade,
        preflight: false,
    })
}

/// The upgrade rules, once routed: only on a route that allows WebSockets,
/// and never with a body.
pub fn check_upgrade(routed: &Routed, request: &Request<'_>) -> Result<(), Refusal> {
    if !routed.websocket {
        return Ok(());
    }
    if !routed.route.websocket {
        return Err(Refusal::UpgradeNotAllowed);
    }
    // An upgrade carries no body (RFC 6455 §4.1); one that does would be
    // read with the tunnel's long timeouts, not the body deadline.
    let headers = request.headers;
    let has_body = headers.contains_key(http::header::TRANSFER_ENCODING)
        || headers
            .get_all(http::header::CONTENT_LENGTH)
            .iter()
            .any(|v| v.as_bytes() != b"0");
    if has_body {
        return Err(Refusal::BadRequest(
            "an upgrade request must not carry a body",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use http::Method;

    const ROUTES: &str = r#"
auth: { verify_url: "http://127.0.0.1:9/api/verify" }
upstreams:
  a: { servers: ["127.0.0.1:1"] }
routes:
  - { prefix: /api/tasks, upstream: a, access: protected }
  - { prefix: /api/stock, upstream: a, access: public, methods: [GET] }
  - { prefix: /api/stock, upstream: a, access: protected, methods: [PUT, PATCH] }
  - { prefix: /ws, upstream: a, access: protected, websocket: true }
  - { prefix: /, upstream: a, access: public, methods: [GET] }
"#;

    fn table() -> RouteTable {
        RouteTable::new(&Config::parse(ROUTES).expect("routes"))
    }

    type Decided = Result<(String, String, bool), Refusal>;

    fn decide(method: &str, path: &str, upgrade: bool, headers: &[(&str, &str)]) -> Decided {
        let map = crate::request::header_map(headers);
        let method = Method::from_bytes(method.as_bytes()).expect("method");
        let request = crate::request::test_request(&method, path, &map, upgrade);
        let routed = resolve(&table(), &request)?;
        check_upgrade(&routed, &request)?;
        Ok((routed.route.prefix.clone(), routed.path, routed.websocket))
    }

    fn found(prefix: &str, path: &str) -> Decided {
        Ok((prefix.into(), path.into(), false))
    }

    #[test]
    fn routing_decisions() {
        let cases: Vec<(&str, &str, Decided)> = vec![
            ("GET", "/api/tasks", found("/api/tasks", "/api/tasks")),
            (
                "DELETE",
                "/api/tasks/7",
                found("/api/tasks", "/api/tasks/7"),
            ),
            // Whole segments only: /api/tasksX is not under /api/tasks.
            ("GET", "/api/tasksX", found("/", "/api/tasksX")),
            (
                "POST",
                "/api/tasksX",
                Err(Refusal::MethodNotAllowed {
                    allow: "GET, HEAD".into(),
                }),
            ),
            // The decision is made on the normalised path.
            (
                "GET",
                "/api/stock/../tasks/1",
                found("/api/tasks", "/api/tasks/1"),
            ),
            ("GET", "/api/%74asks", found("/api/tasks", "/api/tasks")),
            ("GET", "/api/stock/x", found("/api/stock", "/api/stock/x")),
            ("HEAD", "/api/stock/x", found("/api/stock", "/api/stock/x")),
            ("PATCH", "/api/stock/x", found("/api/stock", "/api/stock/x")),
            (
                "DELETE",
                "/api/stock/x",
                Err(Refusal::MethodNotAllowed {
                    allow: "GET, HEAD, PATCH, PUT".into(),
                }),
            ),
            ("GET", "/%2e%2e/etc", Err(Refusal::BadPath(String::new()))),
            ("GET", "/a%2fb", Err(Refusal::BadPath(String::new()))),
            ("GET", "relative", Err(Refusal::BadPath(String::new()))),
        ];
        for (method, path, expected) in cases {
            let got = decide(method, path, false, &[]);
            match (&got, &expected) {
                (Err(Refusal::BadPath(_)), Err(Refusal::BadPath(_))) => {}
                _ => assert_eq!(got, expected, "{method} {path}"),
            }
        }
    }

    #[test]
    fn upgrade_rules() {
        assert_eq!(
            decide("GET", "/ws/x", true, &[]),
            Ok(("/ws".into(), "/ws/x".into(), true))
        );
        assert_eq!(
            decide("GET", "/api/tasks", true, &[]),
            Err(Refusal::UpgradeNotAllowed)
        );
        for body in [("content-length", "5"), ("transfer-encoding", "chunked")] {
            assert_eq!(
                decide("GET", "/ws/x", true, &[body]),
                Err(Refusal::BadRequest(
                    "an upgrade request must not carry a body"
                )),
                "{body:?}"
            );
        }
        assert!(decide("GET", "/ws/x", true, &[("content-length", "0")]).is_ok());
        // Not an upgrade: the same route is an ordinary request.
        assert_eq!(
            decide("GET", "/ws/x", false, &[]),
            Ok(("/ws".into(), "/ws/x".into(), false))
        );
    }
}
