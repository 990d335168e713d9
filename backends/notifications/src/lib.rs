//! Portcullis notifications service: each signed-in user's own live events
//! (tasks created, updated and deleted; orders placed and cancelled) over a
//! WebSocket, and nobody else's.
//!
//! Identity comes from the gateway's `x-user-id`, as in every backend: the
//! gateway authenticates the upgrade like any protected request (browsers
//! may send the token as the `bearer, <token>` WebSocket subprotocol) and
//! says when the token expires. Events come from tasks and orders, after
//! their change has committed: through Redis with `REDIS_URL` (any number
//! of replicas), or posted directly to `/internal/events` without it (one
//! replica; the one-command stack). See [`feed`] for both.

pub mod event;
pub mod feed;
pub mod hub;
pub mod socket;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use feed::{Feed, MemoryFeed, RedisFeed};
use hub::Hub;
use service_kit::events::Published;
use service_kit::{ApiError, Json};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Takes a lock even if a thread panicked while holding it: the hub's and
/// the memory feed's maps stay consistent between statements.
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What a replica accepts.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open sockets per user; more are refused with 429.
    pub per_user: usize,
    /// Open sockets on this replica; more are refused with 503.
    pub total: usize,
    /// How often each socket is pinged.
    pub ping_interval: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            per_user: 16,
            total: 50_000,
            ping_interval: Duration::from_secs(5),
        }
    }
}

/// Where events come from.
pub enum Source<'a> {
    Redis {
        url: &'a str,
        /// Prefix of events' channel and keys (`EVENTS_NAMESPACE`).
        namespace: &'a str,
        revocation_channel: &'a str,
    },
    Direct,
}

#[derive(Clone)]
pub struct AppState {
    pub hub: Arc<Hub>,
    pub feed: Arc<Feed>,
    pub limits: Limits,
    shutdown: tokio::sync::watch::Receiver<bool>,
    stop: Arc<tokio::sync::watch::Sender<bool>>,
}

/// Events a socket may have queued before it counts as stalled.
const SOCKET_QUEUE: usize = 256;

impl AppState {
    /// Builds the state and, with Redis, starts following it (in the
    /// background: the service starts, and says it is unavailable, while
    /// Redis is down).
    pub fn start(source: Source<'_>, limits: Limits) -> Result<Self, String> {
        let hub = Arc::new(Hub::new(SOCKET_QUEUE));
        let feed = match source {
            Source::Redis {
                url,
                namespace,
                revocation_channel,
            } => {
                service_kit::events::check_namespace(namespace)?;
                let redis = Arc::new(RedisFeed::new(url, namespace, revocation_channel)?);
                let feed = Arc::new(Feed::Redis(Arc::clone(&redis)));
                tokio::spawn(redis.follow(Arc::clone(&hub)));
                feed
            }
            Source::Direct => Arc::new(Feed::Memory(MemoryFeed::default())),
        };
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        Ok(AppState {
            hub,
            feed,
            limits,
            shutdown,
            stop: Arc::new(stop),
        })
    }
}

pub fn app(state: AppState) -> Router {
    let mut routes = Router::new()
        .route("/api/notifications/ws", get(socket::connect))
        .route("/healthz", get(healthz));
    if matches!(*state.feed, Feed::Memory(_)) {
        routes = routes.route("/internal/events", post(publish));
    }
    service_kit::server::harden(routes.with_state(state))
}

/// `GET /healthz`: 200 while sockets can be served; 503 while Redis is
/// lost.
async fn healthz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    if !state.feed.is_ready() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Redis is unreachable; live events are unavailable",
        ));
    }
    Ok(Json(serde_json::json!({
        "status": "ok",
        "events": state.feed.name(),
        "sockets": state.hub.sockets(),
    })))
}

/// `POST /internal/events` (direct mode only): an event from tasks or
/// orders. Not routed by the gateway; reachable only where the backends'
/// own ports are.
async fn publish(
    State(state): State<AppState>,
    Json(event): Json<Published>,
) -> Result<StatusCode, ApiError> {
    if event.user_id <= 0 {
        return Err(ApiError::validation("user_id must be a positive integer"));
    }
    let kind_ok = (1..=64).contains(&event.kind.len())
        && event
            .kind
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b == b'.' || b == b'_');
    if !kind_ok {
        return Err(ApiError::validation(
            "type must be 1 to 64 characters of a-z, '.' and '_'",
        ));
    }
    let Feed::Memory(memory) = &*state.feed else {
        return Err(ApiError::not_found());
    };
    memory.publish(&state.hub, &event);
    Ok(StatusCode::ACCEPTED)
}

/// Serves until `shutdown` resolves; then closes every socket (1001) and
/// waits up to two seconds for them to go.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let stop = Arc::clone(&state.stop);
    let shutdown = async move {
        shutdown.await;
        // Sockets are upgraded connections, which a graceful shutdown does
        // not wait for: every one, even one registered a moment later,
        // watches this and closes (1001).
        stop.send_replace(true);
    };
    let hub = Arc::clone(&state.hub);
    service_kit::server::serve(listener, app(state), shutdown).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while hub.sockets() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
