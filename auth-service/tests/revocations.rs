//! Revocations published on Redis (the real server at 127.0.0.1:6379) after
//! every change that must end a user's cached verdicts at the gateways.

mod support;

use axum::http::{Method, StatusCode};
use futures::StreamExt;
use serde_json::{Value, json};
use std::time::Duration;
use support::TestApp;

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
        serde_json::from_slice(message.get_payload_bytes()).expect("JSON")
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
        json!({"user_id": ann_id, "reason": "logout"})
    );

    // A spent refresh token presented again: its session is revoked.
    let session = app.login("ann@example.com", support::PASSWORD).await;
    let first = session.str("refresh");
    assert_eq!(app.refresh(&first).await.status, StatusCode::OK);
    assert_eq!(app.refresh(&first).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        listener.next().await,
        json!({"user_id": ann_id, "reason": "reuse"})
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
        json!({"user_id": bob_id, "reason": "logout"})
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
    assert_eq!(
        app.refresh(&session.str("refresh")).await.status,
        StatusCode::UNAUTHORIZED
    );
}
