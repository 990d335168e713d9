//! The first tutorial's flows: an auth service with verify, a gateway that
//! asks it, orders and inventory behind it, and a client that refreshes
//! once on 401.

use e2e::{Options, Service, Stack, eventually};
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_login_then_call_orders_and_verify_through_the_gateway() {
    let stack = Stack::start().await;
    let mut alice = stack.register("alice").await;
    let reply = alice.login().await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body["user_id"], alice.id);

    let orders = alice.get("/api/orders").await;
    assert_eq!(orders.status, 200, "{}", orders.body);
    assert_eq!(orders.body, json!([]));

    let verified = stack
        .anonymous()
        .post("/api/auth/verify", &json!({"access": alice.access}))
        .await;
    assert_eq!(verified.status, 200, "{}", verified.body);
    assert_eq!(verified.body["user_id"], alice.id);

    let forged = stack
        .anonymous()
        .post(
            "/api/auth/verify",
            &json!({"access": format!("{}x", alice.access)}),
        )
        .await;
    assert_eq!(forged.status, 401);
    assert_eq!(forged.code(), "invalid_token");

    // No token, or a malformed one: refused at the gateway.
    assert_eq!(stack.anonymous().get("/api/orders").await.status, 401);
    let garbage = stack
        .anonymous()
        .send(
            http::Method::GET,
            "/api/orders",
            &[("authorization", "Bearer not-a-token")],
            None,
        )
        .await;
    assert_eq!(garbage.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_access_token_is_refreshed_once_and_the_retry_succeeds() {
    let stack = Stack::with(Options {
        access_ttl: 3,
        ..Options::default()
    })
    .await;
    let mut alice = stack.register("alice").await;
    assert_eq!(alice.get("/api/orders").await.status, 200);

    // The access token lives three seconds (`exp` is whole seconds, so two
    // to three), and the gateway, like the auth service, allows 15 s of
    // clock skew past it; from then on it is refused, whatever the cache
    // holds.
    let expired = eventually(Duration::from_secs(25), async || {
        alice.get("/api/orders").await.status == 401
    })
    .await;
    assert!(expired, "the access token was still accepted after 25 s");
    let refused = alice.get("/api/orders").await;
    assert_eq!(refused.code(), "invalid_token");
    assert!(refused.headers.contains_key("www-authenticate"));

    let spent = alice.refresh.clone();
    let old_access = alice.access.clone();
    let reply = alice
        .send_refreshing_once(http::Method::GET, "/api/orders", None)
        .await;
    assert_eq!(reply.status, 200, "the retried request: {}", reply.body);
    assert_ne!(alice.access, old_access, "a new access token");
    assert_ne!(alice.refresh, spent, "a new refresh token");

    // The refresh token just traded in is refused from now on.
    let again = stack
        .anonymous()
        .post("/api/auth/refresh", &json!({"refresh": spent}))
        .await;
    assert_eq!(again.status, 401, "{}", again.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_ends_the_session() {
    let stack = Stack::start().await;
    let mut alice = stack.register("alice").await;
    let reply = alice.logout().await;
    assert_eq!(reply.status, 204, "{}", reply.body);
    let refused = alice.refresh().await;
    assert_eq!(refused.status, 401, "{}", refused.body);
    // Logging in again opens a new session.
    assert_eq!(alice.login().await.status, 200);
    assert_eq!(alice.refresh().await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_is_down_answers_502_while_the_others_keep_working() {
    let mut stack = Stack::start().await;
    let alice = stack.register("alice").await;
    assert_eq!(alice.get("/api/tasks").await.status, 200);
    let tasks = stack.address(Service::Tasks);
    stack.stop(Service::Tasks);

    let down = alice.get("/api/tasks").await;
    assert_eq!(down.status, 502, "{}", down.body);
    assert_eq!(down.code(), "bad_gateway");
    // Once the health check has noticed, still 502, and the gauge says why.
    let gauge = format!("portcullis_upstream_healthy{{server=\"{tasks}\",upstream=\"tasks\"}}");
    let noticed = eventually(Duration::from_secs(5), async || {
        stack.metric(&gauge).await == Some(0.0)
    })
    .await;
    assert!(noticed, "the health check never marked tasks down");
    assert_eq!(alice.get("/api/tasks").await.status, 502);

    // Everything else is untouched.
    assert_eq!(alice.get("/api/orders").await.status, 200);
    assert_eq!(alice.get("/api/stock").await.status, 200);
    assert_eq!(alice.get("/api/auth/me").await.status, 200);
    stack.register("bob").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_orders_replicas_share_the_traffic_and_one_can_stop() {
    let mut stack = Stack::with(Options {
        orders_replicas: 2,
        ..Options::default()
    })
    .await;
    let alice = stack.register("alice").await;
    for i in 0..20 {
        let reply = alice.get("/api/orders").await;
        assert_eq!(reply.status, 200, "request {i}: {}", reply.body);
    }
    // The replicas' request logs arrive through pipes; wait for all 20.
    let served = || {
        (
            stack.requests_served(Service::Orders(0)),
            stack.requests_served(Service::Orders(1)),
        )
    };
    eventually(Duration::from_secs(5), async || {
        let (a, b) = served();
        a + b >= 20
    })
    .await;
    let (first, second) = served();
    assert_eq!(first + second, 20);
    assert!(first >= 5 && second >= 5, "{first} and {second}");

    // An order placed through one replica is seen through the other: they
    // share the database.
    let placed = alice
        .post("/api/orders", json!({"sku": "KB-001", "quantity": 1}))
        .await;
    assert_eq!(placed.status, 201, "{}", placed.body);

    let stopped = stack.address(Service::Orders(0));
    stack.stop(Service::Orders(0));
    let gauge = format!("portcullis_upstream_healthy{{server=\"{stopped}\",upstream=\"orders\"}}");
    let noticed = eventually(Duration::from_secs(5), async || {
        stack.metric(&gauge).await == Some(0.0)
    })
    .await;
    assert!(noticed, "the health check never marked the replica down");

    let before = stack.requests_served(Service::Orders(1));
    for i in 0..30 {
        let reply = alice.get("/api/orders").await;
        assert_eq!(reply.status, 200, "request {i} after a replica stopped");
        assert_eq!(reply.body.as_array().map(Vec::len), Some(1));
    }
    let all_on_the_survivor = eventually(Duration::from_secs(5), async || {
        stack.requests_served(Service::Orders(1)) - before == 30
    })
    .await;
    assert!(
        all_on_the_survivor,
        "{}",
        stack.requests_served(Service::Orders(1)) - before
    );
}

/// The shipped routes bound sign-ins per client address: password spraying
/// across many accounts from one address meets 429 after the burst of 20,
/// before the auth service is asked; another route is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_routes_limit_sign_ins_per_address() {
    let stack = Stack::start().await;
    let alice = stack.register("alice").await;
    let client = stack.anonymous();
    let mut statuses = Vec::new();
    for i in 0..25 {
        let reply = client
            .post(
                "/api/auth/login",
                &json!({"email": format!("victim{i}@example.com"), "password": "guess number one"}),
            )
            .await;
        statuses.push(reply.status);
        if reply.status == 429 {
            assert_eq!(reply.code(), "rate_limited");
        }
    }
    // The burst of 20 is answered; the bucket refills at one a second, so
    // a slow machine may get one or two more through before the refusals.
    assert!(
        statuses[..20].iter().all(|s| *s == 401),
        "the burst was not answered: {statuses:?}"
    );
    assert!(
        statuses[20..].iter().all(|s| *s == 401 || *s == 429),
        "{statuses:?}"
    );
    assert!(
        statuses[20..].iter().any(|s| *s == 429),
        "sign-ins past the burst were not refused: {statuses:?}"
    );
    assert_eq!(alice.get("/api/orders").await.status, 200);
}
