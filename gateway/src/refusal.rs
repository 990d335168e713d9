//! Every answer the gateway writes itself instead of the upstream's: one
//! enum, one table of status, code, message and headers. Admission
//! refusals, the proxy engine's own early refusals and upstream failures all end up
//! here, so one status never carries two codes or two messages.

use crate::limits::Decision;
use std::borrow::Cow;

/// A refusal, carrying what its answer needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The path cannot be normalised safely (the reason says why).
    BadPath(String),
    /// A request the gateway cannot take as it is (the reason says why).
    BadRequest(&'static str),
    /// The request could not be read, or refused it before any phase.
    Unreadable,
    NotFound,
    MethodNotAllowed {
        /// The methods the path takes, for `Allow`.
        allow: String,
    },
    /// CONNECT, refused before any phase.
    ConnectNotSupported,
    UpgradeNotAllowed,
    PayloadTooLarge {
        /// The route's limit, when the declared length is what exceeds it.
        limit: Option<u64>,
    },
    HeadersTooLarge,
    /// The head (`head: true`) or the body was not complete in time.
    RequestTimeout {
        head: bool,
    },
    RateLimited(Decision),
    TooManyWebsockets {
        max: usize,
    },
    Unauthenticated,
    MalformedBearer,
    MalformedSubprotocol,
    InvalidToken,
    Forbidden,
    /// A CORS preflight the route's policy does not allow (the reason says
    /// which part).
    CorsRefused(&'static str),
    AuthUnavailable,
    BadGateway {
        /// No server of the pool was healthy (as opposed to all refusing).
        no_healthy: bool,
    },
    Unavailable,
    /// An upstream's limits (`upstreams.NAME.limits`) were reached.
    UpstreamOverloaded,
    GatewayTimeout,
    Internal,
}

/// A refusal as written: status, headers and the JSON envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

impl Refusal {
    /// The table: status, stable code and message of every refusal.
    pub fn parts(&self) -> (u16, &'static str, Cow<'static, str>) {
        use Cow::Borrowed as B;
        match self {
            Refusal::BadPath(reason) => (400, "bad_path", Cow::Owned(reason.clone())),
            Refusal::BadRequest(reason) => (400, "bad_request", B(reason)),
            Refusal::Unreadable => (400, "bad_request", B("the request could not be read")),
            Refusal::NotFound => (404, "not_found", B("no route for this path")),
            Refusal::MethodNotAllowed { .. } => (
                405,
                "method_not_allowed",
                B("this method is not allowed on this path"),
            ),
            Refusal::ConnectNotSupported => {
                (405, "method_not_allowed", B("CONNECT is not supported"))
            }
            Refusal::UpgradeNotAllowed => (
                400,
                "upgrade_not_allowed",
                B("protocol upgrades are not allowed on this route"),
            ),
            Refusal::PayloadTooLarge { limit: Some(limit) } => (
                413,
                "payload_too_large",
                Cow::Owned(format!("the request body exceeds {limit} bytes")),
            ),
            Refusal::PayloadTooLarge { limit: None } => (
                413,
                "payload_too_large",
                B("the request body exceeds this route's limit"),
            ),
            Refusal::HeadersTooLarge => (
                431,
                "headers_too_large",
                B("the request headers are too large"),
            ),
            Refusal::RequestTimeout { head: true } => (
                408,
                "request_timeout",
                B("the request head was not complete in time"),
            ),
            Refusal::RequestTimeout { head: false } => (
                408,
                "request_timeout",
                B("the request body was not complete in time"),
            ),
            Refusal::RateLimited(decision) => (
                429,
                "rate_limited",
                Cow::Owned(format!(
                    "too many requests; retry in {} s",
                    Self::wait(decision)
                )),
            ),
            Refusal::TooManyWebsockets { max } => (
                429,
                "too_many_websockets",
                Cow::Owned(format!(
                    "at most {max} WebSockets per user may be open at once"
                )),
            ),
            Refusal::Unauthenticated => (401, "unauthenticated", B("a Bearer token is required")),
            Refusal::MalformedBearer => (
                401,
                "invalid_token",
                B("the Authorization header is not a well-formed Bearer token"),
            ),
            Refusal::MalformedSubprotocol => (
                401,
                "invalid_token",
                B("the bearer subprotocol must be followed by one well-formed token"),
            ),
            Refusal::InvalidToken => (401, "invalid_token", B("invalid or expired token")),
            Refusal::Forbidden => (403, "forbidden", B("your role does not allow this route")),
            Refusal::CorsRefused(reason) => (403, "cors_refused", B(reason)),
            Refusal::AuthUnavailable => (
                503,
                "auth_unavailable",
                B("the token could not be verified right now; retry shortly"),
            ),
            Refusal::BadGateway { no_healthy: true } => (
                502,
                "bad_gateway",
                B("no healthy upstream server for this route"),
            ),
            Refusal::BadGateway { no_healthy: false } => (
                502,
                "bad_gateway",
                B("the upstream server could not be reached"),
            ),
            Refusal::Unavailable => (503, "unavailable", B("the service is unavailable")),
            Refusal::UpstreamOverloaded => (
                503,
                "upstream_overloaded",
                B("the service is at its limit of requests in flight; try again shortly"),
            ),
            Refusal::GatewayTimeout => (
                504,
                "gateway_timeout",
                B("the upstream server did not answer in time"),
            ),
            Refusal::Internal => (500, "internal", B("internal gateway error")),
        }
    }

    pub fn status(&self) -> u16 {
        self.parts().0
    }

    /// Seconds a rate-limited client should wait (at least one).
    fn wait(decision: &Decision) -> u64 {
        Decision::seconds(decision.retry_after).max(1)
    }

    /// The refusal's own headers, besides the envelope's.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = Vec::new();
        match self {
            Refusal::MethodNotAllowed { allow } => headers.push(("allow", allow.clone())),
            Refusal::RateLimited(decision) => {
                headers.push(("retry-after", Self::wait(decision).to_string()));
                headers.extend(rate_headers(decision));
            }
            Refusal::AuthUnavailable | Refusal::Unavailable | Refusal::UpstreamOverloaded => {
                headers.push(("retry-after", "1".into()));
            }
            _ => {}
        }
        if self.status() == 401 {
            headers.push(("www-authenticate", "Bearer".into()));
        }
        headers
    }

    /// The whole answer: status, headers (`content-type`, `content-length`,
    /// `cache-control` and the refusal's own) and the envelope, so the
    /// client connection can be kept alive after it.
    pub fn answer(&self) -> Answer {
        let (status, code, message) = self.parts();
        let body = contract::envelope::render(code, &message);
        let mut headers = vec![
            ("content-type", "application/json".to_owned()),
            ("content-length", body.len().to_string()),
            ("cache-control", "no-store".to_owned()),
        ];
        headers.extend(self.headers());
        Answer {
            status,
            headers,
            body,
        }
    }
}

/// `RateLimit` and `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers):
/// the burst, what is left of it, and when it is whole again.
pub fn rate_headers(rate: &Decision) -> [(&'static str, String); 2] {
    [
        (
            "ratelimit",
            format!(
                "limit={}, remaining={}, reset={}",
                rate.limit,
                rate.remaining,
                Decision::seconds(rate.reset)
            ),
        ),
        (
            "ratelimit-policy",
            format!("{};w={}", rate.limit, Decision::seconds(rate.window)),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn decision(remaining: u32, retry_after_ms: u64) -> Decision {
        Decision {
            allowed: remaining > 0,
            limit: 20,
            remaining,
            reset: Duration::from_millis(2500),
            retry_after: Duration::from_millis(retry_after_ms),
            window: Duration::from_secs(60),
        }
    }

    fn header<'a>(answer: &'a Answer, name: &str) -> Option<&'a str> {
        answer
            .headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every refusal: status, code, and the headers a client relies on.
    #[test]
    fn the_table() {
        type Case<'a> = (Refusal, u16, &'a str, &'a [(&'a str, &'a str)]);
        let cases: Vec<Case> = vec![
            (
                Refusal::BadPath("dot segments".into()),
                400,
                "bad_path",
                &[],
            ),
            (
                Refusal::BadRequest("a Host header is required"),
                400,
                "bad_request",
                &[],
            ),
            (Refusal::Unreadable, 400, "bad_request", &[]),
            (Refusal::NotFound, 404, "not_found", &[]),
            (
                Refusal::MethodNotAllowed {
                    allow: "GET, HEAD".into(),
                },
                405,
                "method_not_allowed",
                &[("allow", "GET, HEAD")],
            ),
            (Refusal::ConnectNotSupported, 405, "method_not_allowed", &[]),
            (Refusal::UpgradeNotAllowed, 400, "upgrade_not_allowed", &[]),
            (
                Refusal::PayloadTooLarge { limit: Some(10) },
                413,
                "payload_too_large",
                &[],
            ),
            (
                Refusal::PayloadTooLarge { limit: None },
                413,
                "payload_too_large",
                &[],
            ),
            (Refusal::HeadersTooLarge, 431, "headers_too_large", &[]),
            (
                Refusal::RequestTimeout { head: true },
                408,
                "request_timeout",
                &[],
            ),
            (
                Refusal::RequestTimeout { head: false },
                408,
                "request_timeout",
                &[],
            ),
            (
                Refusal::RateLimited(decision(0, 1200)),
                429,
                "rate_limited",
                &[
                    ("retry-after", "2"),
                    ("ratelimit", "limit=20, remaining=0, reset=3"),
                    ("ratelimit-policy", "20;w=60"),
                ],
            ),
            (
                Refusal::RateLimited(decision(0, 10)),
                429,
                "rate_limited",
                &[("retry-after", "1")],
            ),
            (
                Refusal::TooManyWebsockets { max: 16 },
                429,
                "too_many_websockets",
                &[],
            ),
            (
                Refusal::Unauthenticated,
                401,
                "unauthenticated",
                &[("www-authenticate", "Bearer")],
            ),
            (
                Refusal::MalformedBearer,
                401,
                "invalid_token",
                &[("www-authenticate", "Bearer")],
            ),
            (
                Refusal::MalformedSubprotocol,
                401,
                "invalid_token",
                &[("www-authenticate", "Bearer")],
            ),
            (
                Refusal::InvalidToken,
                401,
                "invalid_token",
                &[("www-authenticate", "Bearer")],
            ),
            (Refusal::Forbidden, 403, "forbidden", &[]),
            (
                Refusal::CorsRefused("this origin may not call this route"),
                403,
                "cors_refused",
                &[],
            ),
            (
                Refusal::AuthUnavailable,
                503,
                "auth_unavailable",
                &[("retry-after", "1")],
            ),
            (
                Refusal::BadGateway { no_healthy: true },
                502,
                "bad_gateway",
                &[],
            ),
            (
                Refusal::BadGateway { no_healthy: false },
                502,
                "bad_gateway",
                &[],
            ),
            (
                Refusal::Unavailable,
                503,
                "unavailable",
                &[("retry-after", "1")],
            ),
            (
                Refusal::UpstreamOverloaded,
                503,
                "upstream_overloaded",
                &[("retry-after", "1")],
            ),
            (Refusal::GatewayTimeout, 504, "gateway_timeout", &[]),
            (Refusal::Internal, 500, "internal", &[]),
        ];
        for (refusal, status, code, expected) in cases {
            let answer = refusal.answer();
            assert_eq!(answer.status, status, "{refusal:?}");
            let body: serde_json::Value = serde_json::from_str(&answer.body).expect("JSON");
            assert_eq!(body["error"]["code"], code, "{refusal:?}");
            assert!(
                !body["error"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .is_empty(),
                "{refusal:?} has no message"
            );
            assert_eq!(header(&answer, "content-type"), Some("application/json"));
            assert_eq!(
                header(&answer, "content-length"),
                Some(answer.body.len().to_string().as_str())
            );
            assert_eq!(header(&answer, "cache-control"), Some("no-store"));
            for (name, value) in expected {
                assert_eq!(header(&answer, name), Some(*value), "{refusal:?} {name}");
            }
            // Only a 401 asks for credentials; only refusals that say when
            // to come back carry Retry-After.
            assert_eq!(header(&answer, "www-authenticate").is_some(), status == 401);
            assert_eq!(
                header(&answer, "retry-after").is_some(),
                status == 503 || code == "rate_limited",
                "{refusal:?}"
            );
        }
    }

    #[test]
    fn messages_carry_their_numbers() {
        let message = |r: Refusal| r.parts().2.into_owned();
        assert_eq!(
            message(Refusal::PayloadTooLarge { limit: Some(1024) }),
            "the request body exceeds 1024 bytes"
        );
        assert_eq!(
            message(Refusal::TooManyWebsockets { max: 3 }),
            "at most 3 WebSockets per user may be open at once"
        );
        assert_eq!(
            message(Refusal::RateLimited(decision(0, 4500))),
            "too many requests; retry in 5 s"
        );
        assert_eq!(message(Refusal::BadPath("x".into())), "x");
    }
}
