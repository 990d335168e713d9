//! The request phases: each reads plain values off Pingora's session, calls
//! the plain decision, and acts on its answer.
//!
//! Per request: pin the current generation, decide the front
//! ([`request::front`]), admit ([`request::admit`]), pick a server, rewrite
//! the upstream request ([`request::forward`]), edit the response
//! ([`response::edits`]), answer failures ([`response::failure`]), log.

use super::generation::{Gateway, Generation};
use super::upstreams::{Pool, Server};
use super::write;
use crate::auth::unix_now;
use crate::compression::{self, Coding};
use crate::headers;
use crate::metrics::{self, RequestCounts};
use crate::pool_load;
use crate::refusal::{Answer, Refusal};
use crate::request::front::{self, Front, Head};
use crate::request::{self, Admission, Refused, Request, body, forward};
use crate::response::{self, Failure, Retry};
use crate::retries;
use crate::trace::Span;
use async_trait::async_trait;
use bytes::Bytes;
use opentelemetry::trace::SpanKind;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::compression::ResponseCompression;
use pingora::prelude::HttpPeer;
use pingora::protocols::http::compression::Algorithm;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType, Result};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

pub struct Proxy {
    pub gateway: Arc<Gateway>,
}

/// What one request carries through the phases.
pub struct Ctx {
    start: Instant,
    generation: Option<Arc<Generation>>,
    request_id: String,
    /// The request arrived over TLS.
    https: bool,
    admission: Option<Admission>,
    /// A refused request's route, path and grant, for the log.
    refused: Option<Refused>,
    upstream: Upstream,
    /// The body being read (`server.request_body_timeout`, the route's size).
    body: Option<body::Progress>,
    /// The request's root span, with `tracing:`.
    trace: Option<Span>,
}

/// The upstream side of one request.
#[derive(Default)]
struct Upstream {
    pool: Option<Arc<Pool>>,
    /// The server chosen (its index in the pool), and those that refused.
    selected: Option<usize>,
    tried: Vec<usize>,
    /// No server of the pool was healthy (as opposed to all refusing).
    no_healthy: bool,
    started: Option<Instant>,
    /// The request's place in the pool's load (given back when the request
    /// ends), or the limit that refused it.
    slot: Option<pool_load::Slot>,
    overloaded: Option<pool_load::Over>,
    /// Counts the request on the server of this attempt.
    on_server: Option<pool_load::ServerGuard>,
    /// Attempts made so far.
    attempts: u32,
    /// The upstream's answer was set aside to go again (the error that
    /// ends the attempt is the gateway's own).
    retrying_answer: bool,
    /// The next attempt resends this one (its pooled connection was stale).
    same_attempt: bool,
    /// The pool's limits and budget have counted this request.
    admitted: bool,
    /// This attempt's span (the upstream's `traceparent`), with `tracing:`.
    span: Option<Span>,
}

impl Upstream {
    /// The server chosen for this attempt.
    fn server(&self) -> Option<&Server> {
        self.pool.as_ref()?.server(self.selected?)
    }

    /// Whether a server this request has not tried (the one of this
    /// attempt counted as tried) is in rotation now: healthy, not ejected.
    fn untried_left(&self) -> bool {
        let Some(pool) = &self.pool else {
            return false;
        };
        let mut tried = self.tried.clone();
        tried.extend(self.selected.filter(|s| !self.tried.contains(s)));
        pool.any_other(&tried)
    }

    /// Whether the pool's `retry` sends this failed attempt again (counted
    /// by outcome); `None` when the pool has no `retry`.
    fn retries(
        &self,
        session: &Session,
        outcome: retries::Outcome,
        retry_after: bool,
    ) -> Option<bool> {
        let pool = self.pool.as_ref()?;
        let (settings, budget) = (pool.retry.as_ref()?, pool.budget.as_ref()?);
        let attempt = retries::Attempt {
            outcome,
            idempotent: session.req_header().method.is_idempotent(),
            retry_after,
            replayable: !session.as_ref().retry_buffer_truncated(),
            answered: session.response_written().is_some(),
            made: self.attempts,
        };
        let verdict = if self.untried_left() || outcome == retries::Outcome::ConnectError {
            retries::decide(settings, &attempt, budget, Instant::now())
        } else {
            retries::Verdict::No
        };
        if let Some(label) = verdict.label() {
            metrics::get()
                .upstream_retries
                .with_label_values(&[pool.name.as_str(), label])
                .inc();
        }
        Some(verdict == retries::Verdict::Retry)
    }

    /// Records the attempt's result on its server (passive health).
    fn record(&self, failed: bool) {
        if let (Some(pool), Some(index)) = (&self.pool, self.selected) {
            pool.record(index, failed);
        }
    }
}

/// A request the pool's limits shed: counted, and the error that answers it.
fn overloaded(ctx: &mut Ctx, pool: &Pool, over: pool_load::Over) -> Box<Error> {
    metrics::get()
        .upstream_overloaded
        .with_label_values(&[pool.name.as_str(), over.label()])
        .inc();
    ctx.upstream.overloaded = Some(over);
    Error::explain(ErrorType::HTTPStatus(503), "upstream limits reached")
}

fn client_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|addr| addr.as_inet())
        .map(|addr| addr.ip())
}

fn plain_request<'a>(session: &'a Session) -> Request<'a> {
    let head = session.req_header();
    Request {
        method: &head.method,
        path: head.uri.path(),
        query: head.uri.query(),
        authority: head.uri.authority().map(|a| a.as_str()),
        headers: &head.headers,
        peer: client_ip(session),
        upgrade: session.is_upgrade_req(),
    }
}

/// The request head's shape, for the front decisions.
fn head(session: &Session, https: bool) -> Head<'_> {
    let head = session.req_header();
    Head {
        http11: head.version == http::Version::HTTP_11,
        target_bytes: head.raw_path().len(),
        target: head.uri.path_and_query().map_or("/", |p| p.as_str()),
        https,
    }
}

/// Writes what the front decided instead of going on; the connection is
/// closed after a refusal.
async fn answer_front(session: &mut Session, request_id: &str, decided: Front) -> Result<()> {
    match decided {
        Front::Continue => Ok(()),
        Front::Health => write::health(session, request_id).await,
        Front::Redirect(location) => write::redirect(session, request_id, location).await,
        Front::Refuse(refusal) => {
            session.set_keepalive(None);
            write::refusal(session, request_id, &refusal).await
        }
        Front::Answer(refusal) => write::refusal(session, request_id, &refusal).await,
    }
}

/// Writes an admission's refusal; on a route with a CORS policy, with its
/// headers, so that a page of an allowed origin can read why.
async fn refuse(session: &mut Session, ctx: &mut Ctx, refused: Refused) -> Result<()> {
    if !session.is_body_empty() {
        // Reading a refused body just to keep the connection would let a
        // client make the gateway read without limit.
        session.set_keepalive(None);
    }
    let (mut header, body) = write::refusal_head(&refused.refusal)?;
    // A refused preflight gets none: the browser stops there.
    let routed = refused.routed.as_ref().filter(|r| !r.preflight);
    if let Some(policy) = routed.and_then(|r| r.route.cors.as_ref()) {
        let edits =
            crate::cors::response_edits(policy, &session.req_header().headers, &header.headers);
        write::edits(&mut header, edits)?;
    }
    let written = write::answer(session, &ctx.request_id, header, body).await;
    ctx.refused = Some(refused);
    written
}

/// Writes what the gateway answers itself on an admitted request: a
/// preflight as decided, a `redirect` or `respond` route's answer with the
/// route's response edits.
async fn answer(session: &mut Session, ctx: &Ctx, answer: Answer, preflight: bool) -> Result<()> {
    if !session.is_body_empty() {
        // The body is not read: reading it only to keep the connection
        // would let a client make the gateway read without limit.
        session.set_keepalive(None);
    }
    let (mut header, body) = write::answer_head(answer)?;
    if let (Some(admission), false) = (&ctx.admission, preflight) {
        let request = &session.req_header().headers;
        let edits = response::route_edits(&admission.route, request, &header.headers);
        write::edits(&mut header, edits)?;
    }
    write::answer(session, &ctx.request_id, header, body).await
}

/// Has the engine's compressor encode this response with `coding`. The
/// engine compresses with the first coding a request lists, so it is shown
/// only the one chosen here (by q-value).
fn compress(session: &mut Session, coding: Coding, level: u32) {
    let Some(module) = session
        .downstream_modules_ctx
        .get_mut::<ResponseCompression>()
    else {
        return;
    };
    let algorithm = match coding {
        Coding::Brotli => Algorithm::Brotli,
        Coding::Zstd => Algorithm::Zstd,
        Coding::Gzip => Algorithm::Gzip,
    };
    if !module.is_header_phase() {
        return;
    }
    module.adjust_algorithm_level(algorithm, level);
    if let Ok(mut chosen) = RequestHeader::build("GET", b"/", Some(1))
        && chosen
            .insert_header("accept-encoding", coding.token())
            .is_ok()
    {
        module.request_filter(&chosen);
    }
}

impl Ctx {
    /// Keeps an admission: its pool, and unless it is a WebSocket, the
    /// body's bounds (each read waits at most what is left of the deadline).
    fn admitted(&mut self, admission: Admission, generation: &Generation, session: &mut Session) {
        self.upstream.pool = admission
            .route
            .upstream()
            .and_then(|name| generation.pools.get(name))
            .cloned();
        if !admission.websocket {
            let limit = generation.config.server.request_body_timeout.0;
            let max = admission.route.max_body_bytes;
            self.body = Some(body::Progress::new(max, limit, Instant::now()));
            session.set_read_timeout(Some(limit));
        }
        self.admission = Some(admission);
    }
}

impl Proxy {
    /// Cuts an upgraded connection whose grant lapsed, at the first chunk
    /// either way. A chunk that is exactly one WebSocket close frame is let
    /// through: that is the upstream (or the client) closing, typically for
    /// this very reason, and the other side should learn the code.
    fn check_grant(&self, ctx: &Ctx, chunk: Option<&Bytes>) -> Result<()> {
        let Some(user) = ctx.admission.as_ref().and_then(|a| a.user.as_ref()) else {
            return Ok(());
        };
        if chunk.is_some_and(|c| headers::is_close_frame(c)) {
            return Ok(());
        }
        let verifier = &self.gateway.current.load().verifier;
        let Some(lapse) = user
            .grant
            .lapsed(verifier, &user.identity.user_id, unix_now())
        else {
            return Ok(());
        };
        metrics::get()
            .sockets_cut
            .with_label_values(&[lapse.label()])
            .inc();
        tracing::info!(request_id = %ctx.request_id, user_id = %user.identity.user_id, reason = lapse.label(), "closing a WebSocket whose grant lapsed");
        Err(Error::explain(
            ErrorType::Custom("grant lapsed"),
            "the WebSocket's token expired or was revoked",
        ))
    }
}

/// Pingora's error, as the plain failure kinds.
fn failure(e: &Error, ctx: &Ctx) -> Failure {
    use ErrorType::*;
    if ctx.upstream.overloaded.is_some() {
        return Failure::Overloaded;
    }
    let timeout = matches!(e.etype(), ConnectTimedout | ReadTimedout | WriteTimedout);
    match (e.etype(), e.esource()) {
        (HTTPStatus(code), _) => Failure::Status(*code),
        (ReadTimedout, ErrorSource::Downstream) if ctx.body.is_some() => Failure::BodyTimeout,
        (_, ErrorSource::Upstream) if timeout => Failure::UpstreamTimeout,
        (_, ErrorSource::Upstream) => Failure::Upstream,
        _ if timeout && ctx.upstream.started.is_some() => Failure::UpstreamTimeout,
        (
            ReadError | WriteError | ConnectionClosed | ReadTimedout | WriteTimedout,
            ErrorSource::Downstream,
        ) => Failure::ClientGone,
        (_, ErrorSource::Downstream) => Failure::Client,
        (ConnectRefused | ConnectNoRoute | ConnectError, _) => Failure::Upstream,
        _ => Failure::Internal,
    }
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            start: Instant::now(),
            generation: None,
            request_id: String::new(),
            https: false,
            admission: None,
            refused: None,
            upstream: Upstream::default(),
            body: None,
            trace: None,
        }
    }

    async fn early_request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        let generation = self.gateway.current.load_full();
        // Pingora keeps idle client connections forever after the first
        // request unless told otherwise on every request.
        let keepalive = generation.config.server.keepalive_timeout.0;
        session.set_keepalive(Some(keepalive.as_secs().max(1)));
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
        ctx.request_id = front::request_id(&session.req_header().headers);
        ctx.https = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        if let Some(tracer) = &generation.tracer {
            let now = SystemTime::now();
            let started = now.checked_sub(ctx.start.elapsed()).unwrap_or(now);
            ctx.trace = Some(tracer.request(&session.req_header().headers, started));
        }
        let head = head(session, ctx.https);
        let request = plain_request(session);
        let decided = front::check(&request, &head, &generation.config);
        if decided == Front::Health {
            // A load balancer's probes would fill the traces.
            ctx.trace = None;
        }
        if decided != Front::Continue {
            return answer_front(session, &ctx.request_id, decided)
                .await
                .map(|()| true);
        }
        let rules = generation.rules();
        let tunnels = &self.gateway.tunnels;
        let trace = ctx.trace.as_ref();
        match request::admit(&request, &rules, tunnels, &ctx.request_id, trace).await {
            Ok(mut admission) => {
                if let Some(answered) = admission.answer.take() {
                    let preflight = admission.preflight;
                    ctx.admission = Some(admission);
                    return answer(session, ctx, answered, preflight)
                        .await
                        .map(|()| true);
                }
                if let Some(edit) = forward::connection(&session.req_header().headers) {
                    write::edits(session.req_header_mut(), vec![edit])?;
                }
                ctx.admitted(admission, &generation, session);
                Ok(false)
            }
            Err(refused) => refuse(session, ctx, refused).await.map(|()| true),
        }
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let pool = ctx.upstream.pool.clone().ok_or_else(|| {
            Error::explain(ErrorType::HTTPStatus(503), "route has no upstream pool")
        })?;
        // A request sent again on a fresh connection because its pooled one
        // had gone stale is the same attempt.
        if !std::mem::take(&mut ctx.upstream.same_attempt) {
            ctx.upstream.attempts += 1;
        }
        if !std::mem::replace(&mut ctx.upstream.admitted, true) {
            // A pool without limits keeps no count: nothing on the way.
            if pool.limits.any() {
                match pool.load.admit(&pool.limits) {
                    Ok(slot) => ctx.upstream.slot = Some(slot),
                    Err(over) => return Err(overloaded(ctx, &pool, over)),
                }
            }
            // Requests shed by the limits are not sent: they give the retry
            // budget nothing.
            if let Some(budget) = &pool.budget {
                budget.request(Instant::now());
            }
        }
        let user = ctx
            .admission
            .as_ref()
            .and_then(|a| a.user.as_ref())
            .map(|u| &*u.identity.user_id);
        let Some((index, server)) = pool
            .select(&ctx.upstream.tried, user)
            .and_then(|i| Some((i, pool.server(i)?)))
        else {
            // Nothing healthy, or every server refused the connection: the
            // gateway itself is fine and the upstream is not (502; 503 is
            // kept for the gateway's own unavailability).
            ctx.upstream.no_healthy = ctx.upstream.tried.is_empty();
            return Err(Error::explain(
                ErrorType::HTTPStatus(502),
                "no healthy upstream",
            ));
        };
        ctx.upstream.selected = Some(index);
        if let Some(root) = &ctx.trace {
            // An earlier attempt that did not get an answer.
            if let Some(mut earlier) = ctx.upstream.span.take() {
                earlier.fail();
                earlier.end();
            }
            let mut span = root.child("upstream", SpanKind::Client);
            if span.recording() {
                span.set("portcullis.upstream", pool.name.clone());
                span.set("server.address", server.to_string());
                span.set("portcullis.attempt", i64::from(ctx.upstream.attempts));
            }
            ctx.upstream.span = Some(span);
        }
        if pool.counts_in_flight() {
            ctx.upstream.on_server = Some(server.load.enter());
        }
        let mut peer = pool.peer(server);
        if ctx.admission.as_ref().is_some_and(|a| a.websocket) {
            // An upgraded connection is idle between messages; the pool's
            // per-read timeout would cut it.
            peer.options.read_timeout = Some(Duration::from_secs(3600));
            session.set_read_timeout(Some(Duration::from_secs(3600)));
        }
        Ok(Box::new(peer))
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        _peer: &HttpPeer,
        _fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(slot) = &mut ctx.upstream.slot {
            slot.connected();
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        ctx.upstream.record(true);
        if let Some(addr) = ctx.upstream.selected.take() {
            ctx.upstream.tried.push(addr);
        }
        let pool_size = ctx.upstream.pool.as_ref().map_or(0, |p| p.len());
        // Nothing was sent: the next server, while one is left (and, with
        // `retry`, within its attempts and budget, asked only then).
        let another = response::connect_again(ctx.upstream.tried.len(), pool_size);
        if another
            && ctx
                .upstream
                .retries(session, retries::Outcome::ConnectError, false)
                .unwrap_or(true)
        {
            e.set_retry(true);
        }
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("upstream {peer}"));
        if std::mem::take(&mut ctx.upstream.retrying_answer) {
            e.set_retry(true);
            return e;
        }
        let broke = matches!(
            e.etype(),
            ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed
        );
        // Only the upstream's side counts against the server: a client that
        // hangs up is not the server failing.
        let upstream = e.esource() == &ErrorSource::Upstream;
        let timeout = upstream
            && matches!(
                e.etype(),
                ErrorType::ReadTimedout | ErrorType::WriteTimedout
            );
        // A pooled connection the server closed while it sat idle is not
        // the server failing either.
        let stale = reused && broke;
        if ((broke && upstream) || timeout) && !stale {
            ctx.upstream.record(true);
            let outcome = if timeout {
                retries::Outcome::Timeout
            } else {
                retries::Outcome::Reset
            };
            if let Some(again) = ctx.upstream.retries(session, outcome, false) {
                ctx.upstream.tried.extend(ctx.upstream.selected);
                e.set_retry(again);
                return e;
            }
        }
        if broke && !reused {
            // A fresh connection broke: this server is not tried again for
            // this request.
            ctx.upstream.tried.extend(ctx.upstream.selected);
        }
        let pool_size = ctx.upstream.pool.as_ref().map_or(0, |p| p.len());
        match response::retry(
            session.req_header().method.is_idempotent(),
            !session.as_ref().retry_buffer_truncated(),
            session.response_written().is_some(),
            reused,
            broke,
            response::connect_again(ctx.upstream.tried.len(), pool_size),
        ) {
            Retry::Never => e.set_retry(false),
            Retry::Again => {
                e.set_retry(true);
                ctx.upstream.same_attempt = reused;
            }
            Retry::Default => e.retry.decide_reuse(reused),
        }
        e
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let status = upstream_response.status.as_u16();
        if status < 200 && status != 101 {
            return Ok(());
        }
        if let Some(span) = &mut ctx.upstream.span {
            span.set("http.response.status_code", i64::from(status));
            if status >= 500 {
                span.fail();
            }
        }
        ctx.upstream.record(matches!(status, 502..=504));
        let retry_after = upstream_response
            .headers
            .contains_key(http::header::RETRY_AFTER);
        let outcome = retries::Outcome::Status(status);
        if ctx.upstream.retries(session, outcome, retry_after) == Some(true) {
            // This answer is not passed on: the request goes to another
            // server, and this one is not asked again.
            ctx.upstream.tried.extend(ctx.upstream.selected);
            ctx.upstream.retrying_answer = true;
            return Err(Error::explain(
                ErrorType::Custom("upstream answer retried"),
                "the answer is one the pool retries",
            ));
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let (Some(admission), Some(generation)) = (&ctx.admission, &ctx.generation) else {
            return Err(Error::new(ErrorType::InternalError));
        };
        let target = forward::target(
            &admission.route,
            &admission.path,
            session.req_header().uri.query(),
        )
        .map_err(|_| Error::explain(ErrorType::HTTPStatus(400), "unforwardable path"))?;
        upstream.set_uri(target);
        let peer = client_ip(session);
        let facts = forward::Forward {
            admission,
            peer,
            trusted: peer.is_some_and(|ip| generation.config.server.trusts(ip)),
            https: ctx.https,
            request_id: &ctx.request_id,
            host: ctx.upstream.server().map(|server| &server.host),
        };
        let (edits, spoofed) = forward::edits(&upstream.headers, &facts)
            .map_err(|_| Error::explain(ErrorType::InternalError, "unsendable header value"))?;
        if spoofed > 0 {
            metrics::get().identity_stripped.inc_by(spoofed as u64);
        }
        write::edits(upstream, edits)?;
        if let Some(span) = &ctx.upstream.span {
            // The upstream continues this attempt's span, whatever the
            // client sent.
            upstream.insert_header("traceparent", span.traceparent())?;
            match span.tracestate() {
                Some(state) => upstream.insert_header("tracestate", state)?,
                None => drop(upstream.remove_header("tracestate")),
            }
        }
        ctx.upstream.started = Some(Instant::now());
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
        if let Some(progress) = &mut ctx.body {
            let wait = progress
                .chunk(body.as_ref().map(Bytes::len), end, Instant::now())
                .map_err(|refusal| {
                    Error::explain(
                        ErrorType::HTTPStatus(refusal.status()),
                        "request body refused",
                    )
                })?;
            session.set_read_timeout(Some(wait));
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let status = response.status.as_u16();
        if let Some(slot) = &mut ctx.upstream.slot {
            slot.answered();
        }
        let mut edits = response::edits(
            ctx.admission.as_ref(),
            &ctx.request_id,
            status,
            response
                .headers
                .contains_key(http::header::SEC_WEBSOCKET_PROTOCOL),
        )
        .map_err(|_| Error::explain(ErrorType::InternalError, "unsendable header value"))?;
        let Some(route) = ctx.admission.as_ref().map(|a| &a.route) else {
            return write::edits(response, edits);
        };
        let request = session.req_header();
        edits.extend(response::route_edits(
            route,
            &request.headers,
            &response.headers,
        ));
        write::edits(response, edits)?;
        // Decided on the head as the client will get it, the route's rules
        // applied.
        let decided = compression::decide(
            route.compression.as_ref(),
            &request.headers,
            request.method == http::Method::HEAD,
            status,
            &response.headers,
        );
        if decided.vary {
            let vary = headers::vary(&response.headers, "Accept-Encoding");
            write::edits(response, vary.into_iter().collect())?;
        }
        if let Some((coding, level)) = decided.compress {
            compress(session, coding, level);
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
        let (mut header, body) = write::refusal_head(&response::early(status)).ok()?;
        header.insert_header("connection", "close").ok()?;
        Some((header, body))
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let (status, refusal) = response::failure(failure(e, ctx), ctx.upstream.no_healthy);
        if let Some(refusal) = refusal
            && session.response_written().is_none()
        {
            if refusal == Refusal::Internal {
                tracing::error!(request_id = %ctx.request_id, error = %e, "proxy error");
            }
            session.set_keepalive(None);
            let _ = write::refusal(session, &ctx.request_id, &refusal).await;
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
        let admission = ctx.admission.as_ref();
        let refused_on = ctx.refused.as_ref().and_then(|r| r.routed.as_ref());
        let (routed, path) = match (admission, refused_on) {
            (Some(a), _) => (Some(&a.route), a.path.as_str()),
            (None, Some(r)) => (Some(&r.route), r.path.as_str()),
            (None, None) => (None, session.req_header().uri.path()),
        };
        let route = routed.map_or("none", |r| r.label.as_str());
        routed
            .map_or(RequestCounts::unrouted(), |r| &r.counts)
            .count(status);
        let upstream = ctx.upstream.pool.as_ref().map_or("", |p| p.name.as_str());
        if let (Some(started), Some(pool)) = (ctx.upstream.started, &ctx.upstream.pool) {
            pool.latency.observe(started.elapsed().as_secs_f64());
        }
        let user = admission.and_then(|a| a.user.as_ref());
        if let Some(mut attempt) = ctx.upstream.span.take() {
            if error.is_some() {
                attempt.fail();
            }
            attempt.end();
        }
        if let Some(mut root) = ctx.trace.take()
            && root.recording()
        {
            let method = contract::telemetry::span_method(session.req_header().method.as_str());
            if routed.is_some() {
                root.rename(format!("{method} {route}"));
                root.set("http.route", route.to_owned());
            } else {
                root.rename(method.to_owned());
            }
            root.set("http.request.method", method.to_owned());
            root.set("url.path", path.to_owned());
            root.set("http.response.status_code", i64::from(status));
            root.set("portcullis.request_id", ctx.request_id.clone());
            if !upstream.is_empty() {
                root.set("portcullis.upstream", upstream.to_owned());
            }
            if let Some(server) = ctx.upstream.server() {
                root.set("server.address", server.to_string());
            }
            if let Some(user) = user {
                root.set("enduser.id", user.identity.user_id.to_string());
            }
            if status >= 500 || status == 0 {
                root.fail();
            }
            root.end();
        }
        tracing::info!(
            target: "access",
            request_id = %ctx.request_id,
            method = %session.req_header().method,
            path,
            route,
            status,
            upstream,
            // Evaluated only when the access log is enabled.
            server = %ctx.upstream.server().map(ToString::to_string).unwrap_or_default(),
            user_id = user.map_or("", |u| &*u.identity.user_id),
            // The identity came from a stale grant (stale-if-error).
            stale = user.is_some_and(|u| u.stale) || ctx.refused.as_ref().is_some_and(|r| r.stale),
            duration_ms = ctx.start.elapsed().as_secs_f64() * 1000.0,
            error = error.map(|e| e.etype().as_str()).unwrap_or(""),
        );
    }
}
