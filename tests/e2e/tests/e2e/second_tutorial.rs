//! The second tutorial's flows: per-user tasks behind a gateway that sets
//! `x-user-id`, which is the only identity that counts.

use e2e::Stack;
use serde_json::{Value, json};

fn titles(reply: &e2e::Reply) -> Vec<String> {
    reply
        .body
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {}", reply.body))
        .iter()
        .map(|t| t["title"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_keep_their_tasks_apart() {
    let stack = Stack::start().await;
    let alice = stack.register("alice").await;
    let bob = stack.register("bob").await;

    let milk = alice.post("/api/tasks", json!({"title": "buy milk"})).await;
    assert_eq!(milk.status, 201, "{}", milk.body);
    let call = alice.post("/api/tasks", json!({"title": "call mum"})).await;
    let bobs = bob.post("/api/tasks", json!({"title": "fix bike"})).await;
    assert_eq!(bobs.status, 201);
    let (milk_id, call_id, bike_id) = (
        milk.body["id"].clone(),
        call.body["id"].clone(),
        bobs.body["id"].clone(),
    );

    assert_eq!(
        titles(&alice.get("/api/tasks").await),
        ["call mum", "buy milk"]
    );
    assert_eq!(titles(&bob.get("/api/tasks").await), ["fix bike"]);

    // Update and delete one's own.
    let done = alice
        .put(&format!("/api/tasks/{milk_id}"), json!({"completed": true}))
        .await;
    assert_eq!(done.status, 200, "{}", done.body);
    assert_eq!(done.body["completed"], true);
    let deleted = alice.delete(&format!("/api/tasks/{call_id}")).await;
    assert!(deleted.status.is_success(), "{}", deleted.status);
    assert_eq!(titles(&alice.get("/api/tasks").await), ["buy milk"]);

    // Bob cannot read, change or delete Alice's task by its id, and the
    // answer is the same as for a task that does not exist.
    let missing = bob.get("/api/tasks/999999").await;
    assert_eq!(missing.status, 404);
    let path = format!("/api/tasks/{milk_id}");
    for reply in [
        bob.get(&path).await,
        bob.put(&path, json!({"title": "stolen"})).await,
        bob.delete(&path).await,
    ] {
        assert_eq!(reply.status, 404, "{}", reply.body);
        assert_eq!(reply.body, missing.body);
    }
    let still = alice.get(&path).await;
    assert_eq!(still.status, 200);
    assert_eq!(still.body["title"], "buy milk");
    assert_eq!(still.body["completed"], true);

    // And Alice cannot touch Bob's.
    let bob_path = format!("/api/tasks/{bike_id}");
    assert_eq!(alice.delete(&bob_path).await.status, 404);
    assert_eq!(titles(&bob.get("/api/tasks").await), ["fix bike"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_identity_header_changes_nothing() {
    let stack = Stack::start().await;
    let alice = stack.register("alice").await;
    let bob = stack.register("bob").await;
    let secret = alice
        .post("/api/tasks", json!({"title": "alice's secret"}))
        .await;
    assert_eq!(secret.status, 201);
    let alice_id = alice.id.to_string();

    // Bob, with his own valid token, claims to be Alice in every spelling.
    for header in ["x-user-id", "X-User-Id", "x_user_id", "X-USER-ID"] {
        let reply = bob
            .send_with(
                http::Method::GET,
                "/api/tasks",
                &[(header, &alice_id)],
                None,
            )
            .await;
        assert_eq!(reply.status, 200, "{header}: {}", reply.body);
        assert_eq!(reply.body, json!([]), "{header} leaked Alice's tasks");
    }
    // A task created with a forged header and a forged body field is Bob's.
    let created = bob
        .send_with(
            http::Method::POST,
            "/api/tasks",
            &[("x-user-id", &alice_id)],
            Some(&json!({"title": "planted", "user_id": alice.id})),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(titles(&alice.get("/api/tasks").await), ["alice's secret"]);
    assert_eq!(titles(&bob.get("/api/tasks").await), ["planted"]);

    // Without a token, the header opens nothing.
    let anonymous = stack
        .anonymous()
        .send(
            http::Method::GET,
            "/api/tasks",
            &[("x-user-id", &alice_id)],
            None,
        )
        .await;
    assert_eq!(anonymous.status, 401);
    assert_eq!(anonymous.code(), "unauthenticated");

    // A role claimed by header does not make Bob an administrator.
    let admin = bob
        .send_with(
            http::Method::GET,
            "/api/admin/users",
            &[("x-user-role", "admin")],
            None,
        )
        .await;
    assert_eq!(admin.status, 403);
    let stock = bob
        .send_with(
            http::Method::PUT,
            "/api/stock/KB-001",
            &[("x-user-role", "admin")],
            Some(&json!({"name": "free keyboards", "quantity": 9999})),
        )
        .await;
    assert_eq!(stock.status, 403, "{}", stock.body);
    let unchanged: Value = bob.get("/api/stock/KB-001").await.body;
    assert_eq!(unchanged["quantity"], 25);
}
