//! What happens to a request, decided in plain code: functions of plain
//! values (method, path, headers, peer address, the generation) that return
//! plain values (an admission, header edits, a refusal). The proxy phases
//! in the edge (`edge/proxy.rs`) only call them and act on the answer.
//!
//! In order:
//! 1. [`front`]: before any route: request id, head size, `Host`, the
//!    gateway's own `/healthz`, the redirect to HTTPS.
//! 2. [`admit`]: route ([`route`]), limits before authentication,
//!    declared body size ([`body`]), credentials and verification
//!    ([`crate::auth`]), role, per-user limit, WebSocket slots.
//! 3. [`forward`]: the upstream request's target and header edits.
//!
//! A new request-side feature is one module here and one call in [`admit`]
//! (or in [`forward`] for what the upstream sees).

pub mod answer;
pub mod body;
pub mod forward;
pub mod front;
pub mod route;

use crate::auth::Verifier;
use crate::auth::{self, Credentials, Grant, Identity, Subprotocols};
use crate::config::ServerSettings;
use crate::connections::{Counts, Slot};
use crate::headers;
use crate::limits::{Decision, Scope};
use crate::metrics;
use crate::refusal::Refusal;
use crate::router::Route;
use crate::router::RouteTable;
use crate::trace::Span;
use http::{HeaderMap, Method};
use opentelemetry::trace::SpanKind;
use std::net::IpAddr;
use std::sync::Arc;

/// What the admission decisions read of the generation in force.
#[derive(Clone, Copy)]
pub struct Rules<'a> {
    pub routes: &'a RouteTable,
    pub server: &'a ServerSettings,
    pub verifier: &'a Verifier,
}

/// A request as the decisions see it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a Method,
    /// The path as received, before normalisation.
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// The target's authority (HTTP/2's `:authority`, or an absolute-form
    /// HTTP/1.1 target), which names the host before `Host` does.
    pub authority: Option<&'a str>,
    pub headers: &'a HeaderMap,
    /// The client connection's address.
    pub peer: Option<IpAddr>,
    /// An upgrade request (`Connection: upgrade` with `Upgrade`).
    pub upgrade: bool,
}

/// What a request was admitted with: everything the later phases need.
#[derive(Debug)]
pub struct Admission {
    pub route: Arc<Route>,
    /// The normalised path the route was chosen on (sent upstream after the
    /// route's rewrite).
    pub path: String,
    /// An admitted WebSocket upgrade.
    pub websocket: bool,
    /// On an upgrade that offered subprotocols: what to forward and answer.
    pub subprotocols: Option<Subprotocols>,
    /// The route's tightest rate-limit decision, for the response headers.
    pub rate: Option<Decision>,
    /// On a protected route: who, from which grant.
    pub user: Option<User>,
    /// What the gateway answers itself instead of going upstream (a CORS
    /// preflight, a `redirect` or `respond` route).
    pub answer: Option<crate::refusal::Answer>,
    /// The answer is a CORS preflight's.
    pub preflight: bool,
}

/// The verified caller of a protected route.
#[derive(Debug)]
pub struct User {
    pub identity: Arc<Identity>,
    pub stale: bool,
    pub grant: Grant,
    /// An admitted WebSocket's place under its user's tunnel bound.
    pub tunnel: Option<Slot<String>>,
}

/// A header map from name/value pairs, for the tests of the decisions.
#[cfg(test)]
pub(crate) fn header_map<V: AsRef<str>>(pairs: &[(&str, V)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
            value.as_ref().parse().expect("value"),
        );
    }
    map
}

/// A request from a fixed client address, for the tests of the decisions.
#[cfg(test)]
pub(crate) fn test_request<'a>(
    method: &'a Method,
    path: &'a str,
    headers: &'a HeaderMap,
    upgrade: bool,
) -> Request<'a> {
    Request {
        method,
        path,
        query: None,
        authority: None,
        headers,
        peer: Some(std::net::Ipv4Addr::new(192, 0, 2, 1).into()),
        upgrade,
    }
}

/// Keeps the decision with the fewest requests left, for the headers.
fn tighter(current: Option<Decision>, new: Decision) -> Option<Decision> {
    match current {
        Some(old) if old.remaining <= new.remaining => Some(old),
        _ => Some(new),
    }
}

/// The 429 for a request a limit refused, counted by route and scope.
fn rate_limited(route: &Route, scope: Scope, decision: Decision) -> Refusal {
    metrics::get()
        .rate_limited
        .with_label_values(&[route.label.as_str(), scope.label()])
        .inc();
    Refusal::RateLimited(decision)
}

/// A refused request, with the route it was refused on when it got that
/// far (for the access log and the per-route metrics).
#[derive(Debug)]
pub struct Refused {
    pub refusal: Refusal,
    pub routed: Option<route::Routed>,
    /// Refused after a stale grant (stale-if-error) was taken, for the log.
    pub stale: bool,
}

/// What the checks after routing found.
struct Checked {
    subprotocols: Option<Subprotocols>,
    rate: Option<Decision>,
    user: Option<User>,
    answer: Option<crate::refusal::Answer>,
}

/// Decides whether a request goes upstream: `Ok` with what it was admitted
/// with, or the refusal to answer.
/// With `trace`, the routing and the verification are spans under it.
pub async fn admit(
    request: &Request<'_>,
    rules: &Rules<'_>,
    tunnels: &Arc<Counts<String>>,
    request_id: &str,
    trace: Option<&Span>,
) -> Result<Admission, Refused> {
    let routing = trace.map(|t| t.child("route", SpanKind::Internal));
    let resolved = route::resolve(rules.routes, request);
    if let Some(mut span) = routing {
        match &resolved {
            Ok(routed) if span.recording() => span.set("http.route", routed.route.label.clone()),
            Ok(_) => {}
            Err(refusal) => span.set("portcullis.refusal", refusal.parts().1),
        }
        span.end();
    }
    let routed = resolved.map_err(|refusal| Refused {
        refusal,
        routed: None,
        stale: false,
    })?;
    let mut stale = false;
    match check(
        request, &routed, rules, tunnels, request_id, &mut stale, trace,
    )
    .await
    {
        Ok(checked) => Ok(Admission {
            route: routed.route,
            path: routed.path,
            websocket: routed.websocket,
            subprotocols: checked.subprotocols,
            rate: checked.rate,
            user: checked.user,
            answer: checked.answer,
            preflight: routed.preflight,
        }),
        Err(refusal) => Err(Refused {
            refusal,
            routed: Some(routed),
            stale,
        }),
    }
}

/// The checks on a routed request: limits, body size, credentials, role,
/// WebSocket slots.
async fn check(
    request: &Request<'_>,
    routed: &route::Routed,
    rules: &Rules<'_>,
    tunnels: &Arc<Counts<String>>,
    request_id: &str,
    stale_grant: &mut bool,
    trace: Option<&Span>,
) -> Result<Checked, Refusal> {
    route::check_upgrade(routed, request)?;
    let route = &routed.route;
    let mut rate = None;

    // Per client IP and per route, before anything is verified: a flood is
    // refused here and never reaches the auth service.
    if let Some(limits) = &route.limits {
        let server = rules.server;
        let forwarded: Vec<&str> = if server.trusted_proxies.is_empty() {
            Vec::new()
        } else {
            request
                .headers
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect()
        };
        let ip = headers::limit_address(request.peer, &forwarded, |ip| server.trusts(ip));
        if let Some((scope, decision)) = limits.before_auth(ip).await {
            if !decision.allowed {
                return Err(rate_limited(route, scope, decision));
            }
            rate = tighter(rate, decision);
        }
    }

    // A preflight carries no credentials: answered from the route's CORS
    // policy alone, never sent upstream.
    if routed.preflight
        && let Some(policy) = &route.cors
    {
        return Ok(Checked {
            subprotocols: None,
            rate,
            user: None,
            answer: Some(crate::cors::preflight(policy, request.headers)?),
        });
    }

    body::check_declared(request.headers, route.max_body_bytes)?;
    let credentials = Credentials::read(request.headers, routed.websocket)?;

    let mut user = None;
    if route.access == crate::config::Access::Protected {
        let mut verifying = trace.map(|t| t.child("verify token", SpanKind::Internal));
        let verified = rules
            .verifier
            .admit(
                &credentials,
                route.stale_if_error,
                request_id,
                verifying.as_mut(),
            )
            .await;
        if let Some(mut span) = verifying {
            match &verified {
                Ok(admitted) if span.recording() => {
                    span.set("enduser.id", admitted.identity.user_id.to_string());
                }
                Ok(_) => {}
                Err(refusal) => {
                    span.set("portcullis.refusal", refusal.parts().1);
                    span.fail();
                }
            }
            span.end();
        }
        let auth::Admitted {
            identity,
            stale,
            grant,
        } = verified?;
        *stale_grant = stale;
        if !route.admits(&identity.role) {
            return Err(Refusal::Forbidden);
        }
        let after = match &route.limits {
            Some(limits) => limits.after_auth(&identity.user_id).await,
            None => None,
        };
        if let Some((scope, decision)) = after {
            if !decision.allowed {
                return Err(rate_limited(route, scope, decision));
            }
            rate = tighter(rate, decision);
        }
        let mut tunnel = None;
        if routed.websocket {
            let max = rules.server.max_websockets_per_user;
            tunnel = Some(
                tunnels
                    .take(identity.user_id.to_string(), max)
                    .ok_or(Refusal::TooManyWebsockets { max })?,
            );
        }
        user = Some(User {
            identity,
            stale,
            grant,
            tunnel,
        });
    }
    Ok(Checked {
        subprotocols: credentials.subprotocols,
        rate,
        user,
        answer: answer::fixed(route, &routed.path, request.query),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const SECRET: &str = "a-signing-secret-of-at-least-thirty-two-bytes";

    const ROUTES: &str = r#"
server: { max_websockets_per_user: 1, max_body_bytes: 1KiB }
auth: { mode: local }
upstreams:
  a: { servers: ["127.0.0.1:1"] }
routes:
  - { prefix: /pub, upstream: a, access: public }
  - { prefix: /admin, upstream: a, access: protected, roles: [admin] }
  - { prefix: /mine, upstream: a, access: protected }
  - { prefix: /lim, upstream: a, access: public, rate_limit: { per_ip: { requests: 1, per: 1m } } }
  - { prefix: /ws, upstream: a, access: protected, websocket: true }
"#;

    /// What a generation holds for the decisions, built from `ROUTES`.
    struct Fixture {
        config: Config,
        routes: RouteTable,
        verifier: Verifier,
    }

    impl Fixture {
        fn new() -> Fixture {
            let config = Config::parse(ROUTES).expect("routes");
            let verifier =
                Verifier::new(&config.auth, Some(SECRET.as_bytes()), false).expect("verifier");
            Fixture {
                routes: RouteTable::new(&config),
                config,
                verifier,
            }
        }

        fn rules(&self) -> Rules<'_> {
            Rules {
                routes: &self.routes,
                server: &self.config.server,
                verifier: &self.verifier,
            }
        }
    }

    fn token(role: &str) -> String {
        let now = crate::auth::unix_now();
        let claims = serde_json::json!({
            "sub": "7", "type": "access", "role": role,
            "iat": now, "nbf": now, "exp": now + 600,
        });
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("token")
    }

    async fn decide(
        fixture: &Fixture,
        tunnels: &Arc<Counts<String>>,
        method: &str,
        path: &str,
        pairs: &[(&str, String)],
        upgrade: bool,
    ) -> Result<Admission, Refused> {
        let headers = header_map(pairs);
        let method = Method::from_bytes(method.as_bytes()).expect("method");
        let request = test_request(&method, path, &headers, upgrade);
        admit(&request, &fixture.rules(), tunnels, "rid", None).await
    }

    fn refusal(result: Result<Admission, Refused>) -> (Refusal, Option<String>) {
        let refused = result.expect_err("refused");
        (
            refused.refusal,
            refused.routed.map(|r| r.route.prefix.clone()),
        )
    }

    #[tokio::test]
    async fn admissions_and_refusals_in_order() {
        let generation = Fixture::new();
        let tunnels = Arc::default();
        let user = format!("Bearer {}", token("user"));
        let admin = format!("Bearer {}", token("admin"));
        let auth = |value: &str| vec![("authorization", value.to_owned())];

        let public = decide(&generation, &tunnels, "GET", "/pub/x", &[], false).await;
        assert!(
            public
                .as_ref()
                .is_ok_and(|a| a.user.is_none() && a.path == "/pub/x")
        );

        assert_eq!(
            refusal(decide(&generation, &tunnels, "GET", "/nowhere", &[], false).await),
            (Refusal::NotFound, None)
        );
        // Refused after routing: the route is kept for the log.
        assert_eq!(
            refusal(decide(&generation, &tunnels, "GET", "/mine", &[], false).await),
            (Refusal::Unauthenticated, Some("/mine".into()))
        );
        assert_eq!(
            refusal(
                decide(
                    &generation,
                    &tunnels,
                    "GET",
                    "/mine",
                    &auth("Bearer x"),
                    false
                )
                .await
            )
            .0,
            Refusal::MalformedBearer
        );
        assert_eq!(
            refusal(
                decide(
                    &generation,
                    &tunnels,
                    "GET",
                    "/mine",
                    &auth("Bearer a.b.c"),
                    false
                )
                .await
            )
            .0,
            Refusal::InvalidToken
        );
        assert_eq!(
            refusal(decide(&generation, &tunnels, "GET", "/admin", &auth(&user), false).await).0,
            Refusal::Forbidden
        );
        let admitted = decide(&generation, &tunnels, "GET", "/admin", &auth(&admin), false)
            .await
            .expect("admin");
        let who = admitted.user.expect("user");
        assert_eq!(
            (&*who.identity.user_id, &*who.identity.role),
            ("7", "admin")
        );
        assert!(!who.stale);

        let too_long = vec![("content-length", "2048".to_owned())];
        assert_eq!(
            refusal(decide(&generation, &tunnels, "POST", "/pub", &too_long, false).await).0,
            Refusal::PayloadTooLarge { limit: Some(1024) }
        );

        assert!(
            decide(&generation, &tunnels, "GET", "/lim", &[], false)
                .await
                .is_ok()
        );
        let limited = refusal(decide(&generation, &tunnels, "GET", "/lim", &[], false).await).0;
        assert!(
            matches!(limited, Refusal::RateLimited(d) if !d.allowed),
            "{limited:?}"
        );
    }

    #[tokio::test]
    async fn websockets_take_a_slot_and_their_token_from_the_subprotocol() {
        let generation = Fixture::new();
        let tunnels = Arc::default();
        let offered = vec![(
            "sec-websocket-protocol",
            format!("chat, bearer, {}", token("user")),
        )];
        let first = decide(&generation, &tunnels, "GET", "/ws", &offered, true)
            .await
            .expect("admitted");
        assert!(first.websocket);
        assert_eq!(
            first.subprotocols,
            Some(Subprotocols {
                others: "chat".into(),
                bearer: true
            })
        );
        let user = first.user.as_ref().expect("user");
        assert!(user.tunnel.is_some() && user.grant.expires.is_some());
        assert_eq!(
            refusal(decide(&generation, &tunnels, "GET", "/ws", &offered, true).await).0,
            Refusal::TooManyWebsockets { max: 1 }
        );
        drop(first);
        assert!(
            decide(&generation, &tunnels, "GET", "/ws", &offered, true)
                .await
                .is_ok()
        );

        let malformed = vec![("sec-websocket-protocol", "bearer".to_owned())];
        assert_eq!(
            refusal(decide(&generation, &tunnels, "GET", "/ws", &malformed, true).await).0,
            Refusal::MalformedSubprotocol
        );
        // Refused after routing: the route is kept for the log.
        assert_eq!(
            refusal(decide(&generation, &tunnels, "GET", "/pub", &offered, true).await),
            (Refusal::UpgradeNotAllowed, Some("/pub".into()))
        );
    }
}
