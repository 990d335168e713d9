//! Revocations published on Redis (the real server at 127.0.0.1:6379) after
//! every change that must end a user's cached verdicts at the gateways.

use crate::support::TestApp;
use axum::http::{Method, StatusCode};
use futures::StreamExt;
use serde_json::{Value, json};
use std::time::Duration;

const REDIS: &str = "redis://127.0.0.1:6379";

/// A subscriber on a channel of this test's own, so that tests running at
/// the same time never read each other's messages.
struct Listener {
    messages: redis::aio::PubSubStream,
}

impl Listener {
    async fn new(channel: &str) -> Listener {
        let client = redis::Client::open(REDIS).expect("redis url");
        let mut pubsub = client
            .get_async_pubsub()
            .await
            .expect("Redis at 127.0.0.1:6379 (it runs on every machine here)");
        pubsub.subscribe(channel).await.expect("subscribe");
        Listener {
            messages: pubsub.into_on_message(),
        }
    }

    async fn next(&mut self) -> Value {
        let message = tokio::time::timeout(Duration::from_secs(5), self.messages.next())
            .await
            .expect("a revocation within 5 s")
            .expect("the subscription is open");
        let mut value: Value = serde_json::from_slice(message.get_payload_bytes()).expect("JSON");
        // Each message carries a fresh id for gateways to acknowledge.
        let id = value["id"].take();
        assert!(
            id.as_str()
                .is_some_and(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())),
            "{id}"
        );
        let object = value.as_object_mut().expect("object");
        object.remove("id");
        // When, and until when gateways that verify tokens themselves keep
        // it: the access tokens' lifetime (an hour) and the 15 s leeway.
        let at = object.remove("at").and_then(|v| v.as_u64()).expect("at");
        let until = object
            .remove("until")
            .and_then(|v| v.as_u64())
            .expect("until");
        assert!(at.abs_diff(auth_service::now_unix()) <= 5, "at {at}");
        assert_eq!(until - at, 3600 + 15);
        // A session's id is the refresh-token family's: 32 hex digits.
        if let Some(sid) = object.get_mut("sid") {
            assert!(
                sid.as_str()
                    .is_some_and(|s| s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())),
                "{sid}"
            );
            *sid = Value::from("<session>");
        }
        value
    }
}

fn channel() -> String {
    format!("test-revocations-{}-{}", std::process::id(), rand_suffix())
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(0);
    hasher.finish()
}

#[tokio::test]
async fn every_change_that_ends_access_is_published() {
    let channel = channel();
    let mut listener = Listener::new(&channel).await;
    let app = TestApp::with_args(&["--redis-url", REDIS, "--revocation-channel", &channel]).await;
    let admin = app.admin("root@example.com").await;

    // Logout.
    let ann = app.register("ann@example.com").await;
    let ann_id = ann.body["user_id"].as_i64().expect("id");
    let reply = app
        .post("/api/logout", json!({"refresh": ann.str("refresh")}))
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert_eq!(
        listener.next().await,
        json!({"user_id": ann_id, "reason": "logout", "sid": "<session>"})
    );

    // A spent refresh token presented again: its session is revoked.
    let session = app.login("ann@example.com", crate::support::PASSWORD).await;
    let first = session.str("refresh");
    assert_eq!(app.refresh(&first).await.status, StatusCode::OK);
    assert_eq!(app.refresh(&first).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        listener.next().await,
        json!({"user_id": ann_id, "reason": "reuse", "sid": "<session>"})
    );

    // A role change, then disabling, then deleting.
    let path = format!("/api/admin/users/{ann_id}");
    let promote = app
        .as_user(admin, Method::PATCH, &path, Some(json!({"role": "admin"})))
        .await;
    assert_eq!(promote.status, StatusCode::OK, "{}", promote.body);
    assert_eq!(
        listener.next().await,
        json!({"user_id": ann_id, "reason": "role_changed"})
    );
    assert_eq!(app.disable(admin, ann_id).await.status, StatusCode::OK);
    assert_eq!(
        listener.next().await,
        json!({"user_id": ann_id, "reason": "disabled"})
    );
    let delete = app.as_user(admin, Method::DELETE, &path, None).await;
    assert_eq!(delete.status, StatusCode::NO_CONTENT);
    assert_eq!(
        listener.next().await,
        json!({"user_id": ann_id, "reason": "deleted"})
    );

    // A change that ends nothing publishes nothing: re-enabling is not a
    // revocation, and neither is an update that changes no role.
    let bob = app.register("bob@example.com").await;
    let bob_id = bob.body["user_id"].as_i64().expect("id");
    let same = app
        .as_user(
            admin,
            Method::PATCH,
            &format!("/api/admin/users/{bob_id}"),
            Some(json!({"role": "user", "active": true})),
        )
        .await;
    assert_eq!(same.status, StatusCode::OK);
    let logout = app
        .post("/api/logout", json!({"refresh": bob.str("refresh")}))
        .await;
    assert_eq!(logout.status, StatusCode::NO_CONTENT);
    // The next message is bob's logout, not the update before it.
    assert_eq!(
        listener.next().await,
        json!({"user_id": bob_id, "reason": "logout", "sid": "<session>"})
    );
}

#[tokio::test]
async fn redis_down_never_fails_a_request() {
    // Nothing listens on port 1: every publish fails, in the background.
    let app = TestApp::with_args(&["--redis-url", "redis://127.0.0.1:1"]).await;
    let session = app.register("cy@example.com").await;
    let reply = app
        .post("/api/logout", json!({"refresh": session.str("refresh")}))
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert_eq!(counted(&app, "late"), 1, "the failed delivery is counted");
    assert_eq!(
        app.refresh(&session.str("refresh")).await.status,
        StatusCode::UNAUTHORIZED
    );
}

/// A stand-in gateway on the real Redis: counted on the gateways' channel,
/// it acknowledges each revocation after `delay` (never, when `None`).
async fn gateway(channel: &str, delay: Option<Duration>) -> tokio::task::JoinHandle<usize> {
    let client = redis::Client::open(REDIS).expect("redis url");
    let mut pubsub = client.get_async_pubsub().await.expect("redis");
    pubsub
        .subscribe(&[channel.to_owned(), format!("{channel}:gateways")])
        .await
        .expect("subscribe");
    let mut publisher = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let acks = format!("{channel}:acks");
    tokio::spawn(async move {
        let mut seen = 0;
        let mut messages = pubsub.into_on_message();
        while let Some(message) = messages.next().await {
            seen += 1;
            let value: Value = serde_json::from_slice(message.get_payload_bytes()).expect("JSON");
            let Some(delay) = delay else { continue };
            tokio::time::sleep(delay).await;
            let _: i64 = redis::cmd("PUBLISH")
                .arg(&acks)
                .arg(value["id"].as_str().expect("id"))
                .query_async(&mut publisher)
                .await
                .expect("ack");
            if seen == 3 {
                break;
            }
        }
        seen
    })
}

fn counted(app: &TestApp, result: &str) -> u64 {
    use std::sync::atomic::Ordering;
    let counts = app.state.revocations.counts();
    match result {
        "delivered" => counts.delivered.load(Ordering::Relaxed),
        _ => counts.late.load(Ordering::Relaxed),
    }
}

#[tokio::test]
async fn a_logout_is_answered_once_every_gateway_acknowledged_or_the_wait_ended() {
    let channel = channel();
    let app = TestApp::with_args(&["--redis-url", REDIS, "--revocation-channel", &channel]).await;
    let slow = gateway(&channel, Some(Duration::from_millis(300))).await;
    let quick = gateway(&channel, Some(Duration::ZERO)).await;
    let ann = app.register("ann@example.com").await;
    let started = std::time::Instant::now();
    let reply = app
        .post("/api/logout", json!({"refresh": ann.str("refresh")}))
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "answered before the slow gateway acknowledged"
    );
    assert_eq!(counted(&app, "delivered"), 1);

    // A gateway that never acknowledges: the answer still comes, after the
    // bounded wait, and the delivery is counted late and retried.
    let silent = gateway(&channel, None).await;
    let bob = app.register("bob@example.com").await;
    let reply = app
        .post("/api/logout", json!({"refresh": bob.str("refresh")}))
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert_eq!(counted(&app, "late"), 1);
    // The retry publishes again: each stand-in sees ann's revocation, then
    // bob's twice.
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(10), slow)
            .await
            .ok()
            .and_then(Result::ok),
        Some(3)
    );
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(10), quick)
            .await
            .ok()
            .and_then(Result::ok),
        Some(3)
    );
    silent.abort();
}
