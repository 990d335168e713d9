//! The request hooks: the only place that knows Pingora's proxy API.
//!
//! Per request: pin the current route-table generation, normalise the path,
//! pick the route, authenticate if the route is protected, then forward with
//! the identity headers replaced, on the exact path the decision was made on.

use crate::auth::{self, BearerError, Outcome, Verdict};
use crate::config::Access;
use crate::headers::{self, AUTH_EXPIRES, REQUEST_ID, USER_ID, USER_ROLE};
use crate::limits::{Decision, Scope};
use crate::router::{Lookup, Route};
use crate::upstreams::Pool;
use crate::{Gateway, Generation, metrics, path};
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType, Result};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub struct Proxy {
    pub gateway: Arc<Gateway>,
}

/// What one request carries through the hooks.
pub struct Ctx {
    start: Instant,
    generation: Option<Arc<Generation>>,
    route: Option<Arc<Route>>,
    path: String,
    request_id: String,
    identity: Option<Arc<auth::Identity>>,
    pool: Option<Arc<Pool>>,
    selected: Option<SocketAddr>,
    tried: Vec<SocketAddr>,
    /// No server of the pool was healthy (as opposed to all refusing).
    no_healthy: bool,
    upstream_start: Option<Instant>,
    body_bytes: u64,
    websocket: bool,
    /// On a WebSocket upgrade that offered subprotocols: the ones to
    /// forward (a `bearer` token removed), and whether `bearer` was among
    /// them (then the 101 names it, as browsers require).
    subprotocols: Option<(String, bool)>,
    /// On an authenticated WebSocket: what the socket may live on.
    grant: Option<Grant>,
    /// The route's tightest rate-limit decision, for the response headers.
    rate: Option<Decision>,
    /// The identity is a stale grant (stale-if-error).
    stale: bool,
    /// The request arrived over TLS.
    https: bool,
    /// When the request body must be whole (`server.request_body_timeout`).
    body_deadline: Option<Instant>,
    /// An admitted WebSocket's place under its user's tunnel bound.
    tunnel: Option<crate::connections::Slot<String>>,
}

/// The authority an upgraded connection was admitted with. The connection is
/// cut at the first frame, either way, after the token's `exp` or after a
/// revocation of its user.
struct Grant {
    expires: Option<u64>,
    admitted: Instant,
    /// The verifier's revocation count at admission: while it has not
    /// moved, no frame needs to look further.
    epoch: u64,
}

/// A refusal written by the gateway itself.
struct Refusal {
    status: u16,
    code: &'static str,
    message: String,
    retry_after: Option<u64>,
    allow: Option<String>,
    /// The rate limit that refused the request, for its headers.
    rate: Option<Decision>,
}

impl Refusal {
    fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Refusal {
            status,
            code,
            message: message.into(),
            retry_after: None,
            allow: None,
            rate: None,
        }
    }
}

/// Writes a JSON envelope with a `Content-Length`, so that the client
/// connection can be kept alive (Pingora's own error responses close it).
async fn respond(session: &mut Session, ctx: &Ctx, refusal: &Refusal) -> Result<()> {
    let body = Bytes::from(service_kit::error::render(refusal.code, &refusal.message));
    let mut header = ResponseHeader::build(refusal.status, Some(6))?;
    header.insert_header("content-type", "application/json")?;
    header.insert_header("content-length", body.len().to_string())?;
    header.insert_header("cache-control", "no-store")?;
    if !ctx.request_id.is_empty() {
        header.insert_header(REQUEST_ID, ctx.request_id.as_str())?;
    }
    if refusal.status == 401 {
        header.insert_header("www-authenticate", "Bearer")?;
    }
    if let Some(seconds) = refusal.retry_after {
        header.insert_header("retry-after", seconds.to_string())?;
    }
    if let Some(allow) = &refusal.allow {
        header.insert_header("allow", allow.as_str())?;
    }
    if let Some(rate) = &refusal.rate {
        rate_headers(&mut header, rate)?;
    }
    let head = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(header), head)
        .await?;
    if !head {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

/// `RateLimit` and `RateLimit-Policy` (draft-ietf-httpapi-ratelimit-headers):
/// the burst, what is left of it, and when it is whole again.
fn rate_headers(header: &mut ResponseHeader, rate: &Decision) -> Result<()> {
    header.insert_header(
        "ratelimit",
        format!(
            "limit={}, remaining={}, reset={}",
            rate.limit,
            rate.remaining,
            Decision::seconds(rate.reset)
        ),
    )?;
    header.insert_header(
        "ratelimit-policy",
        format!("{};w={}", rate.limit, Decision::seconds(rate.window)),
    )?;
    Ok(())
}

/// The 429 for a request a limit refused.
fn rate_limited(route: &Route, scope: Scope, decision: Decision) -> Refusal {
    metrics::get()
        .rate_limited
        .with_label_values(&[route.prefix.as_str(), scope.label()])
        .inc();
    let wait = Decision::seconds(decision.retry_after).max(1);
    let mut refusal = Refusal::new(
        429,
        "rate_limited",
        format!("too many requests; retry in {wait} s"),
    );
    refusal.retry_after = Some(wait);
    refusal.rate = Some(decision);
    refusal
}

/// Keeps the decision with the fewest requests left, for the headers.
fn tighter(current: Option<Decision>, new: Decision) -> Option<Decision> {
    match current {
        Some(old) if old.remaining <= new.remaining => Some(old),
        _ => Some(new),
    }
}

/// 308 to the same path and query over HTTPS, on the TLS listener's port.
/// The host is the client's own `Host` (only its name part, and only when it
/// is a plain host name or address), so a client can only send itself
/// elsewhere; without a usable one, 400.
async fn redirect_to_https(
    session: &mut Session,
    ctx: &Ctx,
    generation: &Generation,
) -> Result<()> {
    let port = generation
        .config
        .tls
        .as_ref()
        .and_then(|t| t.listen.parse::<SocketAddr>().ok())
        .map_or(443, |a| a.port());
    let request = session.req_header();
    let host = request
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(headers::host_name);
    let Some(host) = host else {
        return respond(
            session,
            ctx,
            &Refusal::new(400, "bad_request", "a Host header is required"),
        )
        .await;
    };
    let target = request
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let location = if port == 443 {
        format!("https://{host}{target}")
    } else {
        format!("https://{host}:{port}{target}")
    };
    let mut header = ResponseHeader::build(308, Some(4))?;
    header.insert_header("location", location)?;
    header.insert_header("content-length", "0")?;
    header.insert_header(REQUEST_ID, ctx.request_id.as_str())?;
    session.set_keepalive(None);
    session
        .write_response_header(Box::new(header), true)
        .await?;
    Ok(())
}

fn client_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|addr| addr.as_inet())
        .map(|addr| addr.ip())
}

/// Removes `Connection` options that would make the gateway drop headers it
/// sets (identity, request id, forwarding, host); the rest keep their effect.
fn scrub_connection(session: &mut Session) -> Result<()> {
    let values: Vec<String> = session
        .req_header()
        .headers
        .get_all(http::header::CONNECTION)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    let scrubbed: Vec<Option<String>> = values
        .iter()
        .map(|v| headers::scrub_connection(v))
        .collect();
    if scrubbed.iter().all(Option::is_none) {
        return Ok(());
    }
    let kept: Vec<String> = values
        .into_iter()
        .zip(scrubbed)
        .map(|(value, scrubbed)| scrubbed.unwrap_or(value))
        .filter(|v| !v.is_empty())
        .collect();
    let request = session.req_header_mut();
    request.remove_header(&http::header::CONNECTION);
    if !kept.is_empty() {
        request.insert_header(http::header::CONNECTION, kept.join(", "))?;
    }
    Ok(())
}

/// Bytes of the request line and headers, as the client sent them (close
/// enough: names, values and separators).
fn header_bytes(request: &RequestHeader) -> usize {
    request.raw_path().len()
        + request
            .headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum::<usize>()
}

impl Proxy {
    /// Cuts an upgraded connection whose token has expired or whose user
    /// was revoked since it was admitted, at the first chunk either way.
    /// A chunk that is exactly one WebSocket close frame is let through:
    /// that is the upstream (or the client) closing, typically for this very
    /// reason, and the other side should learn the code.
    fn check_grant(&self, ctx: &Ctx, chunk: Option<&Bytes>) -> Result<()> {
        let (Some(grant), Some(identity)) = (&ctx.grant, &ctx.identity) else {
            return Ok(());
        };
        if chunk.is_some_and(|c| headers::is_close_frame(c)) {
            return Ok(());
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let lapsed = if grant.expires.is_some_and(|exp| now >= exp) {
            "expired"
        } else if self.gateway.current.load().verifier.revoked_since_epoch(
            &identity.user_id,
            grant.admitted,
            grant.epoch,
        ) {
            "revoked"
        } else {
            return Ok(());
        };
        metrics::get()
            .sockets_cut
            .with_label_values(&[lapsed])
            .inc();
        tracing::info!(request_id = %ctx.request_id, user_id = %identity.user_id, reason = lapsed, "closing a WebSocket whose grant lapsed");
        Err(Error::explain(
            ErrorType::Custom("grant lapsed"),
            "the WebSocket's token expired or was revoked",
        ))
    }

    /// Decides what happens to a request: `Ok(())` to forward it, or the
    /// refusal to send.
    async fn admit(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
    ) -> std::result::Result<(), Refusal> {
        let generation = Arc::clone(
            ctx.generation
                .as_ref()
                .ok_or_else(|| Refusal::new(500, "internal", "no route table"))?,
        );
        let request = session.req_header();
        let normalised = path::normalize(request.uri.path())
            .map_err(|e| Refusal::new(400, "bad_path", e.to_string()))?;
        let method = request.method.as_str();
        let route = match generation.routes.find(&normalised, method) {
            Lookup::Found(route) => Arc::clone(route),
            Lookup::NotFound => {
                return Err(Refusal::new(404, "not_found", "no route for this path"));
            }
            Lookup::MethodNotAllowed(allow) => {
                let mut refusal = Refusal::new(
                    405,
                    "method_not_allowed",
                    "this method is not allowed on this path",
                );
                refusal.allow = Some(allow);
                return Err(refusal);
            }
        };
        ctx.path = normalised;
        ctx.route = Some(Arc::clone(&route));

        if session.is_upgrade_req() {
            if !route.websocket {
                return Err(Refusal::new(
                    400,
                    "upgrade_not_allowed",
                    "protocol upgrades are not allowed on this route",
                ));
            }
            // An upgrade carries no body (RFC 6455 §4.1); one that does
            // would be read with the tunnel's long timeouts, not the body
            // deadline.
            let headers = &session.req_header().headers;
            let has_body = headers.contains_key(http::header::TRANSFER_ENCODING)
                || headers
                    .get_all(http::header::CONTENT_LENGTH)
                    .iter()
                    .any(|v| v.as_bytes() != b"0");
            if has_body {
                return Err(Refusal::new(
                    400,
                    "bad_request",
                    "an upgrade request must not carry a body",
                ));
            }
            ctx.websocket = true;
        }

        // Per client IP and per route, before anything is verified: a flood
        // is refused here and never reaches the auth service.
        if let Some(limits) = &route.limits {
            let server = &generation.config.server;
            let forwarded: Vec<&str> = if server.trusted_proxies.is_empty() {
                Vec::new()
            } else {
                session
                    .req_header()
                    .headers
                    .get_all("x-forwarded-for")
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .collect()
            };
            let ip = headers::limit_address(client_ip(session), &forwarded, |ip| server.trusts(ip));
            if let Some((scope, decision)) = limits.before_auth(ip) {
                if !decision.allowed {
                    return Err(rate_limited(&route, scope, decision));
                }
                ctx.rate = tighter(ctx.rate, decision);
            }
        }

        let request = session.req_header();
        if let Some(length) = request.headers.get(http::header::CONTENT_LENGTH) {
            let length = length
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| Refusal::new(400, "bad_request", "invalid Content-Length"))?;
            if length > route.max_body_bytes {
                return Err(Refusal::new(
                    413,
                    "payload_too_large",
                    format!("the request body exceeds {} bytes", route.max_body_bytes),
                ));
            }
        }

        // A token offered as a WebSocket subprotocol is taken out of what is
        // forwarded on every route, and counts on protected ones when there
        // is no Authorization header.
        let mut subprotocol_token = None;
        if ctx.websocket {
            let offered: Vec<&[u8]> = request
                .headers
                .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
                .iter()
                .map(|v| v.as_bytes())
                .collect();
            if !offered.is_empty() {
                let parsed = auth::subprotocol_bearer(&offered).map_err(|_| {
                    Refusal::new(
                        401,
                        "invalid_token",
                        "the bearer subprotocol must be followed by one well-formed token",
                    )
                })?;
                subprotocol_token = parsed.token;
                ctx.subprotocols = Some((parsed.others, parsed.token.is_some()));
            }
        }

        if route.access == Access::Protected {
            let values: Vec<&[u8]> = request
                .headers
                .get_all(http::header::AUTHORIZATION)
                .iter()
                .map(|v| v.as_bytes())
                .collect();
            let token = match (auth::bearer(&values), subprotocol_token) {
                (Err(BearerError::Missing), Some(token)) => Ok(token),
                (result, _) => result,
            };
            let token = token.map_err(|e| match e {
                BearerError::Missing => {
                    Refusal::new(401, "unauthenticated", "a Bearer token is required")
                }
                BearerError::Malformed => Refusal::new(
                    401,
                    "invalid_token",
                    "the Authorization header is not a well-formed Bearer token",
                ),
            })?;
            // Read before verifying: a revocation during the verification
            // moves it, so a WebSocket admitted now is still checked.
            let epoch = generation.verifier.revocation_epoch();
            let started = Instant::now();
            let (verdict, outcome) = generation.verifier.verify(token).await;
            let m = metrics::get();
            m.verify_outcome(outcome);
            if outcome == Outcome::Miss {
                m.verify_latency.observe(started.elapsed().as_secs_f64());
            }
            let identity = match verdict {
                Ok(Verdict::Allowed(identity)) => identity,
                Ok(Verdict::Denied) => {
                    return Err(Refusal::new(
                        401,
                        "invalid_token",
                        "invalid or expired token",
                    ));
                }
                Err(error) => {
                    m.verify_failures.with_label_values(&[error.label()]).inc();
                    // Stale-if-error, where the route allows it: a grant
                    // that ended a moment ago (never a refusal, never past
                    // exp, never after a revocation) rather than a 503.
                    let stale = route
                        .stale_if_error
                        .and_then(|allowance| generation.verifier.stale(token, allowance));
                    let Some(identity) = stale else {
                        tracing::warn!(request_id = %ctx.request_id, error = %error, "token verification unavailable");
                        let mut refusal = Refusal::new(
                            503,
                            "auth_unavailable",
                            "the token could not be verified right now; retry shortly",
                        );
                        refusal.retry_after = Some(1);
                        return Err(refusal);
                    };
                    m.verify_stale.inc();
                    ctx.stale = true;
                    tracing::warn!(request_id = %ctx.request_id, error = %error, user_id = %identity.user_id, "token verification unavailable; serving a stale grant");
                    identity
                }
            };
            if !route.admits(&identity.role) {
                return Err(Refusal::new(
                    403,
                    "forbidden",
                    "your role does not allow this route",
                ));
            }
            if let Some((scope, decision)) = route
                .limits
                .as_ref()
                .and_then(|limits| limits.after_auth(&identity.user_id))
            {
                if !decision.allowed {
                    return Err(rate_limited(&route, scope, decision));
                }
                ctx.rate = tighter(ctx.rate, decision);
            }
            if ctx.websocket {
                let max = generation.config.server.max_websockets_per_user;
                let Some(slot) = self.gateway.tunnels.take(identity.user_id.to_string(), max)
                else {
                    return Err(Refusal::new(
                        429,
                        "too_many_websockets",
                        format!("at most {max} WebSockets per user may be open at once"),
                    ));
                };
                ctx.tunnel = Some(slot);
                ctx.grant = Some(Grant {
                    expires: auth::peek_exp(token),
                    admitted: started,
                    epoch,
                });
            }
            ctx.identity = Some(identity);
        }

        ctx.pool = generation.pools.get(&route.upstream).cloned();
        Ok(())
    }
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            start: Instant::now(),
            generation: None,
            route: None,
            path: String::new(),
            request_id: String::new(),
            identity: None,
            pool: None,
            selected: None,
            tried: Vec::new(),
            no_healthy: false,
            upstream_start: None,
            body_bytes: 0,
            websocket: false,
            subprotocols: None,
            grant: None,
            rate: None,
            stale: false,
            https: false,
            body_deadline: None,
            tunnel: None,
        }
    }

    async fn early_request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        let generation = self.gateway.current.load_full();
        // Pingora keeps idle client connections forever after the first
        // request unless told otherwise on every request.
        session.set_keepalive(Some(
            generation
                .config
                .server
                .keepalive_timeout
                .0
                .as_secs()
                .max(1),
        ));
        // Requests a client sent back to back, without waiting for the
        // answers, are served in order (RFC 9112 §9.3.2) instead of dropped
        // after the first answer promised keep-alive.
        session.set_pipelining_enabled(true);
        ctx.generation = Some(generation);
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let generation = ctx
            .generation
            .clone()
            .ok_or_else(|| Error::new(ErrorType::InternalError))?;
        let request = session.req_header();
        ctx.request_id = match request.headers.get(REQUEST_ID) {
            Some(value) if headers::is_valid_request_id(value.as_bytes()) => {
                String::from_utf8_lossy(value.as_bytes()).into_owned()
            }
            _ => headers::new_request_id(),
        };
        if header_bytes(request) > generation.config.server.max_header_bytes.0 as usize {
            session.set_keepalive(None);
            respond(
                session,
                ctx,
                &Refusal::new(
                    431,
                    "headers_too_large",
                    "the request headers are too large",
                ),
            )
            .await?;
            return Ok(true);
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
        if let Some(problem) =
            headers::host_problem(request.version == http::Version::HTTP_11, &found[..count])
        {
            session.set_keepalive(None);
            respond(session, ctx, &Refusal::new(400, "bad_request", problem)).await?;
            return Ok(true);
        }
        if request.uri.path() == "/healthz"
            && (request.method == http::Method::GET || request.method == http::Method::HEAD)
        {
            let body = Bytes::from_static(br#"{"status":"ok"}"#);
            let mut header = ResponseHeader::build(200, Some(4))?;
            header.insert_header("content-type", "application/json")?;
            header.insert_header("content-length", body.len().to_string())?;
            header.insert_header(REQUEST_ID, ctx.request_id.as_str())?;
            let head = request.method == http::Method::HEAD;
            session
                .write_response_header(Box::new(header), head)
                .await?;
            if !head {
                session.write_response_body(Some(body), true).await?;
            }
            return Ok(true);
        }
        ctx.https = session
            .digest()
            .is_some_and(|digest| digest.ssl_digest.is_some());
        if !ctx.https
            && generation
                .config
                .tls
                .as_ref()
                .is_some_and(|t| t.redirect_http)
        {
            redirect_to_https(session, ctx, &generation).await?;
            return Ok(true);
        }
        scrub_connection(session)?;
        match self.admit(session, ctx).await {
            Ok(()) => {
                if !ctx.websocket {
                    // A body must arrive whole in time: each read waits at
                    // most what is left, and request_body_filter checks the
                    // rest (a trickle of bytes never resets the clock).
                    let limit = generation.config.server.request_body_timeout.0;
                    ctx.body_deadline = Some(Instant::now() + limit);
                    session.set_read_timeout(Some(limit));
                }
                Ok(false)
            }
            Err(refusal) => {
                if !session.is_body_empty() {
                    // Reading a refused body just to keep the connection
                    // would let a client make the gateway read without limit.
                    session.set_keepalive(None);
                }
                respond(session, ctx, &refusal).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let pool = ctx.pool.clone().ok_or_else(|| {
            Error::explain(ErrorType::HTTPStatus(503), "route has no upstream pool")
        })?;
        let Some(addr) = pool.select(&ctx.tried) else {
            // Nothing healthy, or every server refused the connection: the
            // gateway itself is fine and the upstream is not, which is what
            // 502 says (503 is kept for the gateway's own unavailability:
            // the auth service, draining).
            ctx.no_healthy = ctx.tried.is_empty();
            return Err(Error::explain(
                ErrorType::HTTPStatus(502),
                "no healthy upstream",
            ));
        };
        ctx.selected = Some(addr);
        let mut peer = pool.peer(addr);
        if ctx.websocket {
            // An upgraded connection is idle between messages; the pool's
            // per-read timeout would cut it.
            peer.options.read_timeout = Some(Duration::from_secs(3600));
            session.set_read_timeout(Some(Duration::from_secs(3600)));
        }
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(addr) = ctx.selected.take() {
            ctx.tried.push(addr);
        }
        // A failed connect sent nothing, so any method may go to the next
        // server; stop once every server of the pool has been tried.
        let pool_size = ctx.pool.as_ref().map_or(0, |p| p.len());
        if ctx.tried.len() < pool_size {
            e.set_retry(true);
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        _ctx: &mut Ctx,
        reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("upstream {peer}"));
        // A pooled connection the server has closed since its last use can
        // fail on write as well as on read; Pingora retries only the read
        // failures. Nothing was answered yet and the request is idempotent,
        // so it goes again on a fresh connection (the same server, or the
        // next if that one refuses). A request that is not idempotent is
        // never sent twice: the server may have acted on it before the
        // connection failed.
        let replayable = session.req_header().method.is_idempotent()
            && !session.as_ref().retry_buffer_truncated()
            && session.response_written().is_none();
        if !replayable {
            e.set_retry(false);
        } else if reused
            && matches!(
                e.etype(),
                ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed
            )
        {
            e.set_retry(true);
        } else {
            e.retry.decide_reuse(reused);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let route = ctx
            .route
            .clone()
            .ok_or_else(|| Error::new(ErrorType::InternalError))?;
        let generation = ctx
            .generation
            .clone()
            .ok_or_else(|| Error::new(ErrorType::InternalError))?;

        // The path sent is the one the decision was made on.
        let mut target = route.upstream_path(&ctx.path);
        if let Some(query) = session.req_header().uri.query() {
            target.push('?');
            target.push_str(query);
        }
        let uri = target
            .parse::<http::Uri>()
            .map_err(|_| Error::explain(ErrorType::HTTPStatus(400), "unforwardable path"))?;
        upstream.set_uri(uri);

        // One pass over the client's header names decides what goes:
        // - every spelling of the identity headers, on every route
        //   (protected routes then get exactly one of each, below);
        // - method- and URL-override headers, and every name with `_`;
        // - forwarding headers, unless the peer is a trusted proxy.
        let peer_ip = client_ip(session);
        let trusted = peer_ip.is_some_and(|ip| generation.config.server.trusts(ip));
        let client_forwarded_for = trusted
            .then(|| {
                upstream
                    .headers
                    .get_all("x-forwarded-for")
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .filter(|chain| !chain.is_empty());
        let mut spoofed = 0;
        let dropped: Vec<http::HeaderName> = upstream
            .headers
            .keys()
            .filter(|name| {
                if headers::is_identity_header(name.as_str()) {
                    spoofed += upstream.headers.get_all(*name).iter().count();
                    return true;
                }
                headers::is_method_override(name.as_str())
                    || headers::is_url_override(name.as_str())
                    || headers::has_underscore(name.as_str())
                    || (!trusted && headers::is_forwarding_header(name.as_str()))
            })
            .cloned()
            .collect();
        if spoofed > 0 {
            metrics::get().identity_stripped.inc_by(spoofed as u64);
        }
        for name in &dropped {
            upstream.remove_header(name);
        }
        if let Some(identity) = &ctx.identity {
            upstream.insert_header(USER_ID, &*identity.user_id)?;
            upstream.insert_header(USER_ROLE, &*identity.role)?;
        }
        if let Some(expires) = ctx.grant.as_ref().and_then(|g| g.expires) {
            upstream.insert_header(AUTH_EXPIRES, expires.to_string())?;
        }
        if let Some((others, _)) = &ctx.subprotocols {
            if others.is_empty() {
                upstream.remove_header(&http::header::SEC_WEBSOCKET_PROTOCOL);
            } else {
                upstream.insert_header(http::header::SEC_WEBSOCKET_PROTOCOL, others.as_str())?;
            }
        }
        if !route.forward_authorization {
            upstream.remove_header(&http::header::AUTHORIZATION);
        }
        upstream.insert_header(REQUEST_ID, ctx.request_id.as_str())?;

        // The gateway's own forwarding headers; a trusted proxy's chain is
        // extended, anyone else's was removed above.
        let forwarded_for = match (trusted, client_forwarded_for, peer_ip) {
            (true, Some(chain), Some(ip)) => format!("{chain}, {ip}"),
            (_, _, Some(ip)) => ip.to_string(),
            (_, _, None) => String::from("unknown"),
        };
        upstream.insert_header("x-forwarded-for", forwarded_for)?;
        if !trusted || upstream.headers.get("x-forwarded-proto").is_none() {
            upstream.insert_header(
                "x-forwarded-proto",
                if ctx.https { "https" } else { "http" },
            )?;
        }
        if !trusted || upstream.headers.get("x-forwarded-host").is_none() {
            match session
                .req_header()
                .headers
                .get(http::header::HOST)
                .cloned()
            {
                Some(host) => upstream.insert_header("x-forwarded-host", host)?,
                None => {
                    upstream.remove_header("x-forwarded-host");
                }
            }
        }
        if let Some(addr) = ctx.selected {
            upstream.insert_header(http::header::HOST, addr.to_string())?;
        }
        ctx.upstream_start = Some(Instant::now());
        Ok(())
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if session.was_upgraded() {
            // A socket's frames are not a request body: no size limit, but
            // the grant is checked on each.
            return self.check_grant(ctx, body.as_ref());
        }
        if let Some(deadline) = ctx.body_deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() && !(end && body.is_none()) {
                return Err(Error::explain(
                    ErrorType::HTTPStatus(408),
                    "request body not complete in time",
                ));
            }
            session.set_read_timeout(Some(left.max(Duration::from_millis(1))));
        }
        if let (Some(chunk), Some(route)) = (body.as_ref(), ctx.route.as_ref()) {
            ctx.body_bytes += chunk.len() as u64;
            if ctx.body_bytes > route.max_body_bytes {
                return Err(Error::explain(
                    ErrorType::HTTPStatus(413),
                    "request body over the route's limit",
                ));
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        response.insert_header(REQUEST_ID, ctx.request_id.as_str())?;
        if let Some(rate) = &ctx.rate {
            rate_headers(response, rate)?;
        }
        // A browser that offered subprotocols fails the handshake unless
        // the 101 names one of them; the upstream never saw `bearer`.
        if response.status == http::StatusCode::SWITCHING_PROTOCOLS
            && matches!(ctx.subprotocols, Some((_, true)))
            && response
                .headers
                .get(http::header::SEC_WEBSOCKET_PROTOCOL)
                .is_none()
        {
            response.insert_header(
                http::header::SEC_WEBSOCKET_PROTOCOL,
                auth::BEARER_SUBPROTOCOL,
            )?;
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        _end: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        if session.was_upgraded() {
            self.check_grant(ctx, body.as_ref())?;
        }
        Ok(None)
    }

    fn early_refusal(&self, status: u16, _error: &Error) -> Option<(ResponseHeader, Bytes)> {
        let (code, message) = match status {
            400 => ("bad_request", "the request could not be read"),
            405 => ("method_not_allowed", "CONNECT is not supported"),
            408 => (
                "request_timeout",
                "the request head was not complete in time",
            ),
            431 => ("headers_too_large", "the request headers are too large"),
            _ => ("bad_request", "the request was refused"),
        };
        let body = Bytes::from(service_kit::error::render(code, message));
        let mut header = ResponseHeader::build(status, Some(4)).ok()?;
        header
            .insert_header("content-type", "application/json")
            .ok()?;
        header
            .insert_header("content-length", body.len().to_string())
            .ok()?;
        header.insert_header("cache-control", "no-store").ok()?;
        header.insert_header("connection", "close").ok()?;
        Some((header, body))
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let status = match (e.etype(), e.esource()) {
            (ErrorType::HTTPStatus(code), _) => *code,
            // A body that stalled past request_body_timeout.
            (ErrorType::ReadTimedout, ErrorSource::Downstream) if ctx.body_deadline.is_some() => {
                408
            }
            (
                ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout,
                ErrorSource::Upstream,
            ) => 504,
            (_, ErrorSource::Upstream) => 502,
            (
                ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout,
                _,
            ) if ctx.upstream_start.is_some() => 504,
            (
                ErrorType::ReadError
                | ErrorType::WriteError
                | ErrorType::ConnectionClosed
                | ErrorType::ReadTimedout
                | ErrorType::WriteTimedout,
                ErrorSource::Downstream,
            ) => 0,
            (_, ErrorSource::Downstream) => 400,
            (
                ErrorType::ConnectRefused | ErrorType::ConnectNoRoute | ErrorType::ConnectError,
                _,
            ) => 502,
            _ => 500,
        };
        if status > 0 && session.response_written().is_none() {
            let mut refusal = match status {
                502 if ctx.no_healthy => Refusal::new(
                    502,
                    "bad_gateway",
                    "no healthy upstream server for this route",
                ),
                502 => Refusal::new(
                    502,
                    "bad_gateway",
                    "the upstream server could not be reached",
                ),
                503 => {
                    let mut r = Refusal::new(503, "unavailable", "the service is unavailable");
                    r.retry_after = Some(1);
                    r
                }
                504 => Refusal::new(
                    504,
                    "gateway_timeout",
                    "the upstream server did not answer in time",
                ),
                413 => Refusal::new(
                    413,
                    "payload_too_large",
                    "the request body exceeds this route's limit",
                ),
                400 => Refusal::new(400, "bad_request", "the request could not be read"),
                408 => Refusal::new(
                    408,
                    "request_timeout",
                    "the request body was not complete in time",
                ),
                other => Refusal::new(
                    other,
                    "internal",
                    "the gateway failed to handle the request",
                ),
            };
            if status == 500 {
                tracing::error!(request_id = %ctx.request_id, error = %e, "proxy error");
                refusal.message = "internal gateway error".into();
            }
            session.set_keepalive(None);
            let _ = respond(session, ctx, &refusal).await;
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, error: Option<&Error>, ctx: &mut Ctx) {
        let status = session
            .response_written()
            .map_or(0, |response| response.status.as_u16());
        let route = ctx.route.as_ref().map_or("none", |r| r.prefix.as_str());
        let m = metrics::get();
        m.requests
            .with_label_values(&[route, itoa_status(status)])
            .inc();
        let upstream = ctx.pool.as_ref().map_or("", |p| p.name.as_str());
        if let Some(started) = ctx.upstream_start {
            m.upstream_latency
                .with_label_values(&[upstream])
                .observe(started.elapsed().as_secs_f64());
        }
        let user_id = ctx.identity.as_ref().map_or("", |i| &*i.user_id);
        tracing::info!(
            target: "access",
            request_id = %ctx.request_id,
            method = %session.req_header().method,
            path = %if ctx.path.is_empty() { session.req_header().uri.path() } else { ctx.path.as_str() },
            route,
            status,
            upstream,
            // Evaluated only when the access log is enabled.
            server = %ctx.selected.map(|a| a.to_string()).unwrap_or_default(),
            user_id,
            // The identity came from a stale grant (stale-if-error).
            stale = ctx.stale,
            duration_ms = ctx.start.elapsed().as_secs_f64() * 1000.0,
            error = error.map(|e| e.etype().as_str()).unwrap_or(""),
        );
    }
}

/// Status codes as static label strings, so the hot path does not format.
fn itoa_status(status: u16) -> &'static str {
    match status {
        0 => "0",
        200 => "200",
        201 => "201",
        204 => "204",
        301 => "301",
        302 => "302",
        304 => "304",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        409 => "409",
        413 => "413",
        422 => "422",
        429 => "429",
        431 => "431",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        s if s < 200 => "1xx",
        s if s < 300 => "2xx",
        s if s < 400 => "3xx",
        s if s < 500 => "4xx",
        _ => "5xx",
    }
}
