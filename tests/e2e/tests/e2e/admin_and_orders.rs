//! Account administration through the gateway, and orders against
//! inventory.

use e2e::{Options, Stack, Timings, eventually};
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_or_logged_out_user_is_refused_within_a_second() {
    // A cache TTL far longer than the bound: only the revocation the auth
    // service sends to the gateway's admin listener can explain a refusal.
    let stack = Stack::with(Options {
        timings: Timings {
            cache_ttl: "30s",
            ..Timings::default()
        },
        ..Options::default()
    })
    .await;
    let alice = stack.register("alice").await;
    let bob = stack.register("bob").await;

    let refused = alice.get("/api/admin/users").await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert_eq!(refused.code(), "forbidden");

    let admin = stack.admin("root").await;
    let users = admin.get("/api/admin/users").await;
    assert_eq!(users.status, 200, "{}", users.body);
    let emails: Vec<&str> = users.body["users"]
        .as_array()
        .expect("a user list")
        .iter()
        .filter_map(|u| u["email"].as_str())
        .collect();
    for email in ["alice@example.com", "bob@example.com", "root@example.com"] {
        assert!(emails.contains(&email), "{email} missing from {emails:?}");
    }

    // Alice's token is in the gateway's cache now.
    assert_eq!(alice.get("/api/tasks").await.status, 200);
    let disabled = admin
        .patch(
            &format!("/api/admin/users/{}", alice.id),
            json!({"active": false}),
        )
        .await;
    assert_eq!(disabled.status, 200, "{}", disabled.body);
    assert_eq!(disabled.body["active"], false);
    let at = Instant::now();

    let bound = Duration::from_secs(1);
    let shut_out = eventually(bound + Duration::from_secs(3), async || {
        alice.get("/api/tasks").await.status == 401
    })
    .await;
    let took = at.elapsed();
    assert!(shut_out, "a disabled user still got through after {took:?}");
    assert!(took <= bound, "refused only after {took:?}, beyond 1 s");
    assert_eq!(alice.get("/api/tasks").await.status, 401);
    // Nobody else is affected, and Alice cannot log back in.
    assert_eq!(bob.get("/api/tasks").await.status, 200);
    let mut alice = alice;
    assert_eq!(alice.login().await.status, 401);

    // Bob logs out: his access token (cached, 30 s TTL) stops at once too.
    assert_eq!(bob.logout().await.status, 204);
    let at = Instant::now();
    let logged_out = eventually(Duration::from_secs(4), async || {
        bob.get("/api/tasks").await.status == 401
    })
    .await;
    let took = at.elapsed();
    assert!(
        logged_out && took <= bound,
        "bob's token still worked {took:?} after logout"
    );
    assert!(
        stack
            .metric("portcullis_revoked_entries_total")
            .await
            .is_some_and(|n| n >= 2.0),
        "{}",
        stack.gateway_logs()
    );
}

fn quantity(reply: &e2e::Reply) -> i64 {
    reply.body["quantity"]
        .as_i64()
        .unwrap_or_else(|| panic!("no quantity in {}", reply.body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_take_stock_refuse_what_is_not_there_and_give_it_back() {
    let stack = Stack::start().await;
    let alice = stack.register("alice").await;
    let bob = stack.register("bob").await;
    let start = quantity(&alice.get("/api/stock/MN-003").await);
    assert_eq!(start, 10);

    let order = alice
        .post("/api/orders", json!({"sku": "MN-003", "quantity": 4}))
        .await;
    assert_eq!(order.status, 201, "{}", order.body);
    assert_eq!(order.body["status"], "placed");
    assert_eq!(quantity(&alice.get("/api/stock/MN-003").await), 6);

    let too_many = bob
        .post("/api/orders", json!({"sku": "MN-003", "quantity": 7}))
        .await;
    assert_eq!(too_many.status, 409, "{}", too_many.body);
    assert_eq!(quantity(&bob.get("/api/stock/MN-003").await), 6);
    assert_eq!(bob.get("/api/orders").await.body, json!([]));

    let unknown = bob
        .post("/api/orders", json!({"sku": "NOPE-1", "quantity": 1}))
        .await;
    assert_eq!(unknown.status, 422, "{}", unknown.body);

    // Bob cannot cancel Alice's order.
    let path = format!("/api/orders/{}", order.body["id"]);
    assert_eq!(bob.delete(&path).await.status, 404);
    assert_eq!(quantity(&alice.get("/api/stock/MN-003").await), 6);

    let cancelled = alice.delete(&path).await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.body);
    assert_eq!(cancelled.body["status"], "cancelled");
    assert_eq!(quantity(&alice.get("/api/stock/MN-003").await), 10);

    // The seven units Bob wanted are there now.
    let retried = bob
        .post("/api/orders", json!({"sku": "MN-003", "quantity": 7}))
        .await;
    assert_eq!(retried.status, 201, "{}", retried.body);
    assert_eq!(quantity(&bob.get("/api/stock/MN-003").await), 3);
}
