//! What happens to a response, decided in plain code: the header edits on
//! an upstream's answer, and which refusal answers a failure to get one.
//!
//! A new response-side feature is one module (or function) here and one
//! call in the edge's `response_filter` (or `fail_to_proxy`).

use crate::auth::BEARER_SUBPROTOCOL;
use crate::edit::{Edit, Unsendable};
use crate::headers::REQUEST_ID;
use crate::refusal::{self, Refusal};
use crate::request::Admission;
use crate::router::Route;
use http::HeaderMap;

/// The edits on an upstream's response head.
pub fn edits(
    admission: Option<&Admission>,
    request_id: &str,
    status: u16,
    answered_subprotocol: bool,
) -> Result<Vec<Edit>, Unsendable> {
    let mut edits = Vec::with_capacity(4);
    edits.push(Edit::set(REQUEST_ID, request_id)?);
    let Some(admission) = admission else {
        return Ok(edits);
    };
    if let Some(rate) = &admission.rate {
        for (name, value) in refusal::rate_headers(rate) {
            edits.push(Edit::set(name, value)?);
        }
    }
    // A browser that offered subprotocols fails the handshake unless the
    // 101 names one of them; the upstream never saw `bearer`.
    if status == 101
        && admission.subprotocols.as_ref().is_some_and(|s| s.bearer)
        && !answered_subprotocol
    {
        edits.push(Edit::Set(
            "sec-websocket-protocol",
            http::HeaderValue::from_static(BEARER_SUBPROTOCOL),
        ));
    }
    Ok(edits)
}

/// The route's own edits on a response (the upstream's, or an answer of the
/// gateway's on this route): its `response_headers` rules and its CORS
/// policy. Compression is decided after them, on the edited head
/// ([`crate::compression::decide`]).
pub fn route_edits(route: &Route, request: &HeaderMap, response: &HeaderMap) -> Vec<Edit> {
    let mut edits = route.response_headers.edits().to_vec();
    if let Some(policy) = &route.cors {
        // The CORS headers are decided on the head as the rules leave it
        // (a rule may set or remove `Vary`).
        let cors = if route.response_headers.is_empty() {
            crate::cors::response_edits(policy, request, response)
        } else {
            let mut ruled = response.clone();
            crate::edit::apply(&mut ruled, &edits);
            crate::cors::response_edits(policy, request, &ruled)
        };
        edits.extend(cors);
    }
    edits
}

/// Where a request failed, as the edge classifies the proxy engine's errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// A phase asked for this status.
    Status(u16),
    /// The client's body stalled past `server.request_body_timeout`.
    BodyTimeout,
    /// The upstream timed out (connect, read or write).
    UpstreamTimeout,
    /// The upstream refused, reset, or answered something unreadable.
    Upstream,
    /// The connection to the client broke or timed out: no one to answer.
    ClientGone,
    /// The client sent something that could not be read.
    Client,
    /// Anything else: the gateway's own fault.
    Internal,
    /// The upstream's limits shed the request before it was sent.
    Overloaded,
}

/// The refusal that answers a failure (`None`: nobody to answer), and the
/// status to log.
pub fn failure(failure: Failure, no_healthy: bool) -> (u16, Option<Refusal>) {
    let refusal = match failure {
        Failure::ClientGone => return (0, None),
        Failure::Status(502) | Failure::Upstream => Refusal::BadGateway { no_healthy },
        Failure::Status(503) => Refusal::Unavailable,
        Failure::Overloaded => Refusal::UpstreamOverloaded,
        Failure::Status(504) | Failure::UpstreamTimeout => Refusal::GatewayTimeout,
        Failure::Status(413) => Refusal::PayloadTooLarge { limit: None },
        Failure::Status(400) | Failure::Client => Refusal::Unreadable,
        Failure::Status(408) | Failure::BodyTimeout => Refusal::RequestTimeout { head: false },
        Failure::Status(431) => Refusal::HeadersTooLarge,
        Failure::Status(_) | Failure::Internal => Refusal::Internal,
    };
    (refusal.status(), Some(refusal))
}

/// Whether a request whose upstream exchange failed goes again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Never: the upstream may have acted on it, or there is nothing left
    /// to send again.
    Never,
    /// On a fresh connection.
    Again,
    /// As the proxy engine decides for its own pooled connections.
    Default,
}

/// What a failed exchange may do. A pooled connection the server closed
/// since its last use can fail on write as well as on read; the engine
/// retries only the read failures. Nothing was answered yet and the request
/// is idempotent, so it goes again on a fresh connection (the same server,
/// or the next if that one refuses). A fresh connection that breaks before
/// any answer (a server going down with connections still in its backlog)
/// sends an idempotent request to the next server of the pool, as long as
/// one is left untried. A request that is not idempotent, or whose body can
/// no longer be replayed, is never sent twice.
pub fn retry(
    idempotent: bool,
    replayable_body: bool,
    answered: bool,
    reused: bool,
    connection_broke: bool,
    another_server: bool,
) -> Retry {
    if !idempotent || !replayable_body || answered {
        Retry::Never
    } else if connection_broke && (reused || another_server) {
        Retry::Again
    } else {
        Retry::Default
    }
}

/// A failed connect sent nothing, so any method may go to the next server,
/// until every server of the pool was tried.
pub fn connect_again(tried: usize, pool_size: usize) -> bool {
    tried < pool_size
}

/// The refusal for a request refused before any phase ran.
pub fn early(status: u16) -> Refusal {
    match status {
        405 => Refusal::ConnectNotSupported,
        408 => Refusal::RequestTimeout { head: true },
        431 => Refusal::HeadersTooLarge,
        _ => Refusal::Unreadable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_map_to_one_refusal_each() {
        let cases = [
            (Failure::ClientGone, false, 0, None),
            (
                Failure::Upstream,
                false,
                502,
                Some(Refusal::BadGateway { no_healthy: false }),
            ),
            (
                Failure::Status(502),
                true,
                502,
                Some(Refusal::BadGateway { no_healthy: true }),
            ),
            (Failure::Status(503), false, 503, Some(Refusal::Unavailable)),
            (
                Failure::UpstreamTimeout,
                false,
                504,
                Some(Refusal::GatewayTimeout),
            ),
            (
                Failure::Status(504),
                false,
                504,
                Some(Refusal::GatewayTimeout),
            ),
            (
                Failure::Status(413),
                false,
                413,
                Some(Refusal::PayloadTooLarge { limit: None }),
            ),
            (Failure::Client, false, 400, Some(Refusal::Unreadable)),
            (Failure::Status(400), false, 400, Some(Refusal::Unreadable)),
            (
                Failure::BodyTimeout,
                false,
                408,
                Some(Refusal::RequestTimeout { head: false }),
            ),
            (
                Failure::Status(408),
                false,
                408,
                Some(Refusal::RequestTimeout { head: false }),
            ),
            (Failure::Internal, false, 500, Some(Refusal::Internal)),
            (
                Failure::Overloaded,
                false,
                503,
                Some(Refusal::UpstreamOverloaded),
            ),
            (Failure::Status(418), false, 500, Some(Refusal::Internal)),
        ];
        for (given, no_healthy, status, refusal) in cases {
            assert_eq!(failure(given, no_healthy), (status, refusal), "{given:?}");
        }
    }

    fn admission(bearer: Option<bool>, rate: bool) -> Admission {
        use crate::router::Route;
        use std::sync::Arc;
        use std::time::Duration;
        Admission {
            route: Arc::new(Route {
                websocket: true,
                ..Route::test("/ws", "u")
            }),
            path: "/ws".into(),
            websocket: bearer.is_some(),
            subprotocols: bearer.map(|bearer| crate::auth::Subprotocols {
                others: String::new(),
                bearer,
            }),
            rate: rate.then_some(crate::limits::Decision {
                allowed: true,
                limit: 10,
                remaining: 4,
                reset: Duration::from_millis(1500),
                retry_after: Duration::ZERO,
                window: Duration::from_secs(60),
            }),
            user: None,
            answer: None,
            preflight: false,
        }
    }

    #[test]
    fn response_edits() {
        let id = Edit::set_static("x-request-id", "rid");
        let bearer = Edit::Set(
            "sec-websocket-protocol",
            http::HeaderValue::from_static("bearer"),
        );
        let rate = [
            Edit::set_static("ratelimit", "limit=10, remaining=4, reset=2"),
            Edit::set_static("ratelimit-policy", "10;w=60"),
        ];
        let cases: Vec<(Option<Admission>, u16, bool, Vec<Edit>)> = vec![
            (None, 200, false, vec![id.clone()]),
            (Some(admission(None, false)), 200, false, vec![id.clone()]),
            (
                Some(admission(None, true)),
                200,
                false,
                [vec![id.clone()], rate.to_vec()].concat(),
            ),
            // A 101 must name `bearer` when the browser offered it...
            (
                Some(admission(Some(true), false)),
                101,
                false,
                vec![id.clone(), bearer],
            ),
            // ...unless the upstream chose another, or it was not offered.
            (
                Some(admission(Some(true), false)),
                101,
                true,
                vec![id.clone()],
            ),
            (
                Some(admission(Some(false), false)),
                101,
                false,
                vec![id.clone()],
            ),
            (
                Some(admission(Some(true), false)),
                403,
                false,
                vec![id.clone()],
            ),
        ];
        for (admission, status, answered, expected) in cases {
            assert_eq!(
                edits(admission.as_ref(), "rid", status, answered),
                Ok(expected),
                "{status} {answered}"
            );
        }
    }

    #[test]
    fn retries_never_send_a_request_the_upstream_may_have_acted_on_twice() {
        use Retry::*;
        // (idempotent, replayable body, answered, reused, connection broke,
        // another server left)
        let cases = [
            ((true, true, false, true, true, false), Again),
            ((true, true, false, false, true, false), Default),
            ((true, true, false, false, true, true), Again),
            ((true, true, false, true, false, true), Default),
            ((true, true, false, false, false, true), Default),
            ((false, true, false, true, true, true), Never),
            ((false, true, false, false, true, true), Never),
            ((true, false, false, true, true, true), Never),
            ((true, true, true, true, true, true), Never),
        ];
        for ((idempotent, replayable, answered, reused, broke, another), expected) in cases {
            assert_eq!(
                retry(idempotent, replayable, answered, reused, broke, another),
                expected,
                "{idempotent} {replayable} {answered} {reused} {broke} {another}"
            );
        }
        assert!(connect_again(1, 2));
        assert!(!connect_again(2, 2));
        assert!(!connect_again(0, 0));
    }

    #[test]
    fn cors_headers_are_decided_after_the_routes_own_rules() {
        use crate::config::cors::Cors;
        use crate::config::header_rules::HeaderRules;
        let route = Route {
            response_headers: crate::rules::Rules::new(&HeaderRules {
                remove: vec!["vary".into()],
                ..HeaderRules::default()
            }),
            cors: Some(crate::cors::Policy::new(&Cors {
                origins: vec!["https://app.example.com".into()],
                methods: Vec::new(),
                headers: Vec::new(),
                expose_headers: Vec::new(),
                max_age: crate::config::Dur(std::time::Duration::from_secs(60)),
                credentials: false,
            })),
            ..Route::test("/api", "api")
        };
        let request = crate::request::header_map(&[("origin", "https://app.example.com")]);
        let mut response = crate::request::header_map(&[("vary", "Origin")]);
        let edits = route_edits(&route, &request, &response);
        crate::edit::apply(&mut response, &edits);
        // The rule removed the upstream's Vary: the gateway's own is added.
        let vary: Vec<_> = response.get_all("vary").iter().collect();
        assert_eq!(vary, ["Origin"]);
        assert_eq!(
            response["access-control-allow-origin"],
            "https://app.example.com"
        );
    }

    #[test]
    fn early_refusals() {
        for (status, expected) in [(400, 400), (405, 405), (408, 408), (431, 431), (414, 400)] {
            assert_eq!(early(status).status(), expected, "{status}");
        }
    }
}
