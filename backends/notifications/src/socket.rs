//! `GET /api/notifications/ws`: one signed-in user's live events.
//!
//! The socket is registered with the hub before anything is replayed, so an
//! event published meanwhile is either replayed or received live, and sent
//! once either way (ids only grow; anything at or before the last id sent is
//! skipped). Messages to the client, all JSON text:
//! - `{"id", "type", "data"}`: an event (`task.created`, `order.placed`, …);
//! - `{"type": "ready"}`: after what was missed (with `?after=ID`) has been
//!   sent; everything later arrives live.
//!
//! The socket is closed by the service when the token it was opened with
//! expires (4001, a second before the gateway's `x-auth-expires`), when the user's
//! sessions are revoked (4003, with Redis), when events become unavailable
//! (1013) and at shutdown (1001). Pings every `ping_interval` find dead
//! clients, and keep a gateway in between checking the grant.

use crate::AppState;
use crate::event::EventId;
use crate::hub::{Close, Full, Signal};
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, rejection};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use service_kit::{ApiError, Query, UserId};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The header in which the gateway says when the caller's token expires
/// (seconds since the epoch).
pub const AUTH_EXPIRES_HEADER: &str = "x-auth-expires";

/// A socket is closed this long before its token's exp: the gateway cuts the
/// tunnel at the first frame after exp, and the close frame (4001) must be
/// through by then for the client to learn why.
const EXPIRY_MARGIN: Duration = Duration::from_secs(1);

/// How long the 101 waits (see `connect`).
const UPGRADE_DELAY: Duration = Duration::from_millis(15);

/// Messages from clients are not expected; anything larger is refused.
const MAX_CLIENT_MESSAGE: usize = 4096;
/// What clients send is pongs and a close frame: a small read buffer (it
/// grows for a larger message) keeps an idle socket cheap.
const READ_BUFFER: usize = 512;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resume {
    /// The last event id the client saw.
    after: Option<String>,
}

/// When the caller's token expires, if the gateway said.
fn expiry(headers: &HeaderMap) -> Result<Option<SystemTime>, ApiError> {
    let mut values = headers.get_all(AUTH_EXPIRES_HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let seconds = (values.next().is_none())
        .then(|| value.to_str().ok()?.parse::<u64>().ok())
        .flatten()
        .ok_or_else(|| ApiError::unauthenticated("malformed x-auth-expires header"))?;
    let at = UNIX_EPOCH + Duration::from_secs(seconds);
    if at <= SystemTime::now() {
        return Err(ApiError::unauthenticated("the token has expired"));
    }
    Ok(Some(at))
}

pub async fn connect(
    State(state): State<AppState>,
    UserId(user): UserId,
    headers: HeaderMap,
    Query(resume): Query<Resume>,
    upgrade: Result<WebSocketUpgrade, rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let upgrade = upgrade.map_err(|rejection| {
        ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            "upgrade_required",
            format!("this endpoint is a WebSocket: {rejection}"),
        )
    })?;
    let expires = expiry(&headers)?;
    let after = resume
        .after
        .as_deref()
        .map(|raw| {
            EventId::parse(raw)
                .ok_or_else(|| {
                    ApiError::validation("after must be an event id (MILLISECONDS-SEQUENCE)")
                })
                .and_then(|id| {
                    // No event can come from the future; such a cursor would
                    // only hide the events before it.
                    let now = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64);
                    if id.millis > now.saturating_add(60_000) {
                        Err(ApiError::validation(
                            "after names an event that cannot exist yet",
                        ))
                    } else {
                        Ok(id)
                    }
                })
        })
        .transpose()?;
    if !state.feed.is_ready() {
        return Err(unavailable());
    }
    let subscription = state
        .hub
        .subscribe(user, state.limits.per_user, state.limits.total)
        .map_err(|full| match full {
            Full::User => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_sockets",
                format!(
                    "at most {} open sockets per user; close one first",
                    state.limits.per_user
                ),
            ),
            Full::Replica => unavailable(),
        })?;
    // Replayed before the upgrade is answered, so that a failing Redis is a
    // 503 the client can read rather than a socket that closes at once.
    let missed = match after {
        Some(after) => state.feed.replay(user, after).await.map_err(|error| {
            tracing::warn!(%error, "cannot read missed events");
            unavailable()
        })?,
        None => Vec::new(),
    };
    let ping = state.limits.ping_interval;
    let shutdown = state.shutdown.clone();
    // Pingora 0.9.1, which the gateway is built on, can tear a tunnel down
    // right after the 101 when the 101 arrives before it has handled the
    // upgrade request's own (empty) body (cloudflare/pingora#946). A few
    // milliseconds here let it do so first; a socket opened directly loses
    // nothing but those milliseconds.
    tokio::time::sleep(UPGRADE_DELAY).await;
    Ok(upgrade
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(MAX_CLIENT_MESSAGE)
        .max_frame_size(MAX_CLIENT_MESSAGE)
        .on_upgrade(move |socket| async move {
            let mut session = Session {
                socket,
                last: after,
                subscription,
            };
            let close = session.run(missed, expires, ping, shutdown).await;
            session.close(close).await;
        })
        .into_response())
}

fn unavailable() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "live events are unavailable right now; retry shortly",
    )
    .with_retry_after(1)
}

struct Session {
    socket: WebSocket,
    last: Option<EventId>,
    subscription: crate::hub::Subscription,
}

impl Session {
    /// Serves the socket until it must close; returns why (`None`: the
    /// client left or the connection failed, nothing to send).
    async fn run(
        &mut self,
        missed: Vec<crate::event::Event>,
        expires: Option<SystemTime>,
        ping_interval: Duration,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> Option<Close> {
        for event in missed {
            self.send_event(event).await.ok()?;
        }
        self.send(Message::Text(r#"{"type":"ready"}"#.into()))
            .await
            .ok()?;

        let expiry = async {
            let close_at = expires.map(|at| at - EXPIRY_MARGIN);
            match close_at.and_then(|at| at.duration_since(SystemTime::now()).ok()) {
                Some(left) => tokio::time::sleep(left).await,
                None if expires.is_some() => {}
                None => std::future::pending().await,
            }
        };
        tokio::pin!(expiry);
        let mut ping = tokio::time::interval(ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        // Pings not yet answered; a client that misses two is gone.
        let mut unanswered = 0u8;
        loop {
            tokio::select! {
                signal = self.subscription.signals.recv() => match signal {
                    Some(Signal::Event(event)) => self.send_event(event).await.ok()?,
                    Some(Signal::Close(close)) => return Some(close),
                    // Dropped by the hub: it fell behind.
                    None => return Some(Close::Unavailable),
                },
                () = &mut expiry => return Some(Close::Expired),
                _ = ping.tick() => {
                    if unanswered >= 2 {
                        tracing::debug!("client stopped answering pings");
                        return None;
                    }
                    unanswered += 1;
                    self.send(Message::Ping(Default::default())).await.ok()?;
                }
                message = self.socket.recv() => match message {
                    Some(Ok(Message::Pong(_))) => unanswered = 0,
                    // Clients have nothing to say; their pings are answered
                    // by the library.
                    Some(Ok(Message::Text(_) | Message::Binary(_) | Message::Ping(_))) => {}
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return None,
                },
                _ = shutdown.changed() => return Some(Close::GoingAway),
            }
        }
    }

    async fn send_event(&mut self, event: crate::event::Event) -> Result<(), axum::Error> {
        if self.last.is_some_and(|last| event.id <= last) {
            return Ok(());
        }
        self.last = Some(event.id);
        self.send(Message::Text(event.text.as_ref().into())).await
    }

    async fn send(&mut self, message: Message) -> Result<(), axum::Error> {
        // A client that stops reading cannot hold the task forever.
        match tokio::time::timeout(Duration::from_secs(10), self.socket.send(message)).await {
            Ok(sent) => sent,
            Err(_) => Err(axum::Error::new("send timed out")),
        }
    }

    async fn close(mut self, close: Option<Close>) {
        if let Some(close) = close {
            let frame = CloseFrame {
                code: close.code(),
                reason: close.reason().into(),
            };
            let _ = self.send(Message::Close(Some(frame))).await;
        }
    }
}
