//! Revocations from the auth service, over Redis pub/sub: each message names
//! a user whose cached verdicts must go now (logout, disabled, deleted, role
//! changed, a stolen refresh token), not when they expire.
//!
//! The subscription is kept up for the life of the gateway. A gap in it may
//! have missed revocations, so after every reconnection the whole verdict
//! cache is dropped: the price is one verification per active token, the
//! gain is that no revoked grant outlives a Redis outage.

use crate::auth::Verifier;
use crate::auth::revoked::Revocation;
use crate::metrics;
use futures::StreamExt;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Deserialize)]
struct Wire {
    user_id: serde_json::Value,
    /// Set by the auth service when it waits for gateways to acknowledge.
    #[serde(default)]
    id: Option<String>,
    /// The session ended (logout, refresh-token reuse). Read loosely: a
    /// value of the wrong type is dropped, never the whole message.
    #[serde(default)]
    sid: Option<serde_json::Value>,
    #[serde(default)]
    at: Option<serde_json::Value>,
    #[serde(default)]
    until: Option<serde_json::Value>,
}

/// A revocation message, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The user, as the gateway writes user ids (a positive decimal
    /// integer).
    pub user_id: String,
    /// The id to acknowledge it with (1–64 of `[A-Za-z0-9-]`).
    pub id: Option<String>,
    /// The session it ends (1–128 of `[A-Za-z0-9_-]`); none: the user's
    /// every token up to `at`.
    pub sid: Option<String>,
    pub at: Option<u64>,
    pub until: Option<u64>,
}

/// How long a revocation that does not say is kept by verifiers that check
/// tokens themselves: a day, longer than any access token's life here.
const DEFAULT_KEEP: u64 = 86_400;

impl Message {
    /// What the revoked set keeps, at `now` when the message gave no time.
    /// `at` is taken at most five minutes ahead of this clock, and `until`
    /// at most a week ahead: a message cannot lock a user out for good.
    pub fn revocation(&self, now: u64) -> Revocation {
        let at = self.at.unwrap_or(now).min(now.saturating_add(300));
        Revocation {
            user_id: self.user_id.clone(),
            sid: self.sid.clone(),
            at,
            until: self
                .until
                .unwrap_or_else(|| at.saturating_add(DEFAULT_KEEP))
                .min(now.saturating_add(7 * DEFAULT_KEEP)),
        }
    }
}

/// A revocation message; `None` when it names no valid user. An id or
/// session of the wrong shape is dropped (a message without a valid session
/// revokes the whole user, which fails closed).
pub fn message(payload: &[u8]) -> Option<Message> {
    let wire: Wire = serde_json::from_slice(payload).ok()?;
    let raw = match wire.user_id {
        serde_json::Value::Number(n) => n.to_string(),
        serde_json::Value::String(s) => s,
        _ => return None,
    };
    let user_id = contract::identity::parse_user_id(&raw)?.to_string();
    let id = wire.id.filter(|id| {
        (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    let sid = wire
        .sid
        .and_then(|v| v.as_str().map(str::to_owned))
        .filter(|sid| {
            (1..=128).contains(&sid.len())
                && sid
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    Some(Message {
        user_id,
        id,
        sid,
        at: wire.at.as_ref().and_then(serde_json::Value::as_u64),
        until: wire.until.as_ref().and_then(serde_json::Value::as_u64),
    })
}

/// The channel a gateway subscribes to only to be counted: the auth service
/// asks Redis how many gateways listen (`PUBSUB NUMSUB`) and waits for that
/// many acknowledgements before it answers a logout.
pub fn gateways_channel(channel: &str) -> String {
    format!("{channel}:gateways")
}

/// Where gateways acknowledge a revocation they applied, by its id.
pub fn acks_channel(channel: &str) -> String {
    format!("{channel}:acks")
}

/// The shortest admin token accepted: guessing it must be out of reach.
pub const MIN_ADMIN_TOKEN_LEN: usize = 32;

/// What the admin listener answers a request with.
#[derive(Debug, PartialEq, Eq)]
pub enum AdminRequest {
    /// An authenticated revocation.
    Revoke(Message),
    /// An authenticated `GET /status` (or `HEAD`).
    Status,
    /// Refused: status, error code, message.
    Refused(u16, &'static str, &'static str),
}

/// Judges a request to the admin listener: `POST /revocations` with a body
/// naming one user, or `GET /status`, each with `Authorization: Bearer
/// <GATEWAY_ADMIN_TOKEN>` (compared in constant time); anything else is
/// refused.
pub fn admin_request(
    method: &str,
    path: &str,
    authorization: Option<&[u8]>,
    body: &[u8],
    token: &str,
) -> AdminRequest {
    // The token first: without it, nothing about the listener (not even
    // which paths exist) is answered.
    let presented = authorization
        .and_then(|value| value.strip_prefix(b"Bearer "))
        .unwrap_or_default();
    if !same(presented, token.as_bytes()) {
        return AdminRequest::Refused(401, "unauthenticated", "a valid admin token is required");
    }
    let allowed = match path {
        "/revocations" => "POST",
        "/status" => "GET",
        _ => return AdminRequest::Refused(404, "not_found", "no such resource"),
    };
    if method != allowed && !(allowed == "GET" && method == "HEAD") {
        let message = if allowed == "POST" {
            "use POST"
        } else {
            "use GET"
        };
        return AdminRequest::Refused(405, "method_not_allowed", message);
    }
    if path == "/status" {
        return AdminRequest::Status;
    }
    match message(body) {
        Some(message) => AdminRequest::Revoke(message),
        None => AdminRequest::Refused(
            422,
            "invalid_body",
            "the body must be {\"user_id\": <positive integer>}",
        ),
    }
}

/// Equality whose time does not depend on where the inputs differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// Records the revocation (for the sources that check tokens here, which
/// refuse the session or user until their tokens expire), then drops the
/// user's cached grants from `verifier` (the current generation's) and
/// counts them; `via` names the path the revocation came by, for the log.
pub async fn apply(verifier: &Verifier, message: &Message, via: &'static str) -> usize {
    let now = crate::auth::unix_now();
    // Recorded first: a verification finishing between the two steps is
    // then refused by the set, or its grant is not kept by the cache.
    verifier.revoked().record(&message.revocation(now), now);
    let user_id = message.user_id.as_str();
    let purged = verifier.revoke_user(user_id).await;
    metrics::get().revoked_entries.inc_by(purged as u64);
    tracing::info!(
        user_id,
        session = message.sid.is_some(),
        purged,
        via,
        "revocation applied"
    );
    purged
}

/// Where the auth service keeps the revocations still in force (a sorted
/// set scored by `until`).
pub fn in_force_key(channel: &str) -> String {
    format!("{channel}:revoked")
}

/// Reads the revocations still in force into `verifier`'s set: those
/// published while this gateway was away or not yet started. Only for
/// verifiers that check tokens themselves; the others ask the auth service,
/// which knows them all.
async fn catch_up(
    verifier: &Verifier,
    connection: &mut redis::aio::MultiplexedConnection,
    channel: &str,
) -> redis::RedisResult<usize> {
    let now = crate::auth::unix_now();
    let members: Vec<Vec<u8>> = redis::cmd("ZRANGEBYSCORE")
        .arg(in_force_key(channel))
        .arg(format!("({now}"))
        .arg("+inf")
        .query_async(connection)
        .await?;
    let revoked = verifier.revoked();
    let mut read = 0;
    for member in &members {
        if let Some(message) = message(member) {
            revoked.record(&message.revocation(now), now);
            read += 1;
        }
    }
    revoked.synced();
    Ok(read)
}

/// Where to listen.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub redis_url: String,
    pub channel: String,
}

/// Follows the channel until `shutdown` resolves, applying each revocation
/// to the verifier `current` gives (the generation in force), reconnecting with a
/// growing pause (up to 10 s) when Redis is away.
pub async fn follow(
    current: impl Fn() -> Arc<Verifier> + Send,
    subscription: Subscription,
    mut shutdown: impl std::future::Future<Output = ()> + Unpin,
) {
    let client = match redis::Client::open(subscription.redis_url.as_str()) {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(%error, "invalid REDIS_URL; revocations are not followed");
            return;
        }
    };
    let m = metrics::get();
    let mut pause = Duration::from_millis(250);
    // Successful subscriptions so far.
    let mut connections = 0u64;
    loop {
        let before = connections;
        let session = async {
            let mut pubsub = client.get_async_pubsub().await?;
            // Both in one command: never counted without hearing.
            pubsub
                .subscribe(&[
                    subscription.channel.as_str(),
                    gateways_channel(&subscription.channel).as_str(),
                ])
                .await?;
            // Acknowledgements go out on a connection of their own: a
            // subscribed one cannot publish.
            let mut acks = client.get_multiplexed_async_connection().await?;
            let acks_channel = acks_channel(&subscription.channel);
            // Subscribed first, then the list read: a revocation published
            // in between is in both, and recording it twice is harmless. A
            // failed read leaves a jwks-mode verifier refusing older tokens
            // (unsynced) and never stops the subscription itself.
            let verifier = current();
            let caught_up = if verifier.checks_tokens_itself() {
                match catch_up(&verifier, &mut acks, &subscription.channel).await {
                    Ok(read) => read,
                    Err(error) => {
                        tracing::warn!(%error, "cannot read the revocations in force; older tokens stay refused");
                        0
                    }
                }
            } else {
                0
            };
            if connections > 0 {
                current().clear();
                tracing::warn!(
                    caught_up,
                    "revocation channel back after a gap; cached verdicts dropped"
                );
            }
            connections += 1;
            m.revocation_subscribed.set(1);
            tracing::info!(channel = %subscription.channel, "following revocations");
            let mut messages = pubsub.into_on_message();
            while let Some(message) = messages.next().await {
                if message.get_channel_name() != subscription.channel {
                    continue;
                }
                m.revocations.inc();
                let Some(revocation) = self::message(message.get_payload_bytes()) else {
                    tracing::warn!("unreadable revocation message ignored");
                    continue;
                };
                apply(&current(), &revocation, "redis").await;
                if let Some(id) = &revocation.id {
                    let sent: redis::RedisResult<i64> = redis::cmd("PUBLISH")
                        .arg(&acks_channel)
                        .arg(id)
                        .query_async(&mut acks)
                        .await;
                    if let Err(error) = sent {
                        // The auth service answers after its bounded wait;
                        // a fresh connection serves the next one.
                        tracing::warn!(%error, "revocation applied but not acknowledged");
                        return Err(error);
                    }
                }
            }
            Ok::<(), redis::RedisError>(())
        };
        tokio::select! {
            () = &mut shutdown => return,
            outcome = session => {
                m.revocation_subscribed.set(0);
                // Revocations published from now on may be missed until the
                // list in force is read again; a verifier that checks
                // tokens itself refuses older ones meanwhile.
                // Cached grants go too: a revocation missed from now on must
                // not be outlived by a grant cached before.
                let verifier = current();
                verifier.clear();
                if verifier.checks_signatures_with_keys() {
                    verifier.revoked().unsynced(crate::auth::unix_now());
                }
                match outcome {
                    Ok(()) => tracing::warn!("revocation channel closed; reconnecting"),
                    Err(error) => tracing::warn!(%error, "revocation channel unavailable; retrying"),
                }
            }
        }
        // A connection that worked starts the pauses over.
        if connections > before {
            pause = Duration::from_millis(250);
        }
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_secs(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_authenticated_post_naming_a_user_revokes() {
        let token = "t".repeat(40);
        let good = format!("Bearer {token}");
        let lower = format!("bearer {token}");
        let body = br#"{"user_id":7}"#.as_slice();
        type Case<'a> = (&'a str, &'a str, Option<&'a str>, &'a [u8], AdminRequest);
        let cases: Vec<Case> = vec![
            (
                "POST",
                "/revocations",
                Some(&good),
                body,
                AdminRequest::Revoke(Message {
                    user_id: "7".into(),
                    id: None,
                    sid: None,
                    at: None,
                    until: None,
                }),
            ),
            (
                "POST",
                "/revocations",
                None,
                body,
                AdminRequest::Refused(401, "unauthenticated", "a valid admin token is required"),
            ),
            (
                "POST",
                "/revocations",
                Some("Bearer wrong"),
                body,
                AdminRequest::Refused(401, "unauthenticated", "a valid admin token is required"),
            ),
            (
                "POST",
                "/revocations",
                Some(&token),
                body,
                AdminRequest::Refused(401, "unauthenticated", "a valid admin token is required"),
            ),
            (
                "POST",
                "/revocations",
                Some(&good),
                b"{}",
                AdminRequest::Refused(
                    422,
                    "invalid_body",
                    "the body must be {\"user_id\": <positive integer>}",
                ),
            ),
            (
                "GET",
                "/revocations",
                Some(&good),
                body,
                AdminRequest::Refused(405, "method_not_allowed", "use POST"),
            ),
            (
                "POST",
                "/revocations/",
                Some(&good),
                body,
                AdminRequest::Refused(404, "not_found", "no such resource"),
            ),
            (
                "POST",
                "/metrics",
                Some(&good),
                body,
                AdminRequest::Refused(404, "not_found", "no such resource"),
            ),
            (
                "GET",
                "/metrics",
                None,
                b"",
                AdminRequest::Refused(401, "unauthenticated", "a valid admin token is required"),
            ),
            ("GET", "/status", Some(&good), b"", AdminRequest::Status),
            ("HEAD", "/status", Some(&good), b"", AdminRequest::Status),
            (
                "GET",
                "/status",
                None,
                b"",
                AdminRequest::Refused(401, "unauthenticated", "a valid admin token is required"),
            ),
            (
                "GET",
                "/status",
                Some(&lower),
                b"",
                AdminRequest::Refused(401, "unauthenticated", "a valid admin token is required"),
            ),
            (
                "POST",
                "/status",
                Some(&good),
                b"",
                AdminRequest::Refused(405, "method_not_allowed", "use GET"),
            ),
            (
                "GET",
                "//status",
                Some(&good),
                b"",
                AdminRequest::Refused(404, "not_found", "no such resource"),
            ),
            (
                "GET",
                "/status/",
                Some(&good),
                b"",
                AdminRequest::Refused(404, "not_found", "no such resource"),
            ),
        ];
        for (method, path, authorization, body, expected) in cases {
            assert_eq!(
                admin_request(method, path, authorization.map(str::as_bytes), body, &token),
                expected,
                "{method} {path} {authorization:?}"
            );
        }
    }

    #[test]
    fn messages_name_one_positive_user_id() {
        for (payload, expected) in [
            (r#"{"user_id":7,"reason":"logout"}"#, Some("7")),
            (r#"{"user_id":"12"}"#, Some("12")),
            (r#"{"user_id":0}"#, None),
            (r#"{"user_id":-3}"#, None),
            (r#"{"user_id":"7 OR 1=1"}"#, None),
            (r#"{"user_id":[7]}"#, None),
            (r#"{"reason":"logout"}"#, None),
            ("not json", None),
        ] {
            assert_eq!(
                message(payload.as_bytes()).map(|m| m.user_id).as_deref(),
                expected,
                "{payload}"
            );
        }
    }

    #[test]
    fn sessions_and_times_are_read_and_bad_ones_dropped() {
        let read = |payload: &str| message(payload.as_bytes()).expect("a user");
        let full = read(
            r#"{"user_id":7,"reason":"logout","sid":"ab12_-Z","at":1000,"until":4615,"id":"x-1"}"#,
        );
        assert_eq!(full.sid.as_deref(), Some("ab12_-Z"));
        assert_eq!(full.id.as_deref(), Some("x-1"));
        assert_eq!(
            full.revocation(1_000),
            Revocation {
                user_id: "7".into(),
                sid: Some("ab12_-Z".into()),
                at: 1000,
                until: 4615
            }
        );
        // A session of the wrong shape revokes the whole user instead.
        for sid in [
            r#""a b""#,
            r#""""#,
            "7",
            &format!("\"{}\"", "s".repeat(129)),
        ] {
            let payload = format!(r#"{{"user_id":7,"sid":{sid}}}"#);
            assert_eq!(read(&payload).sid, None, "{payload}");
        }
        // No times: now, kept a day; a far `until` is capped at a week.
        let bare = read(r#"{"user_id":7}"#).revocation(100);
        assert_eq!((bare.at, bare.until), (100, 100 + 86_400));
        let far = read(r#"{"user_id":7,"at":100,"until":99999999999}"#).revocation(100);
        assert_eq!(far.until, 100 + 7 * 86_400);
    }
}
