//! The inventory service through its router, on SQLite by default and on
//! PostgreSQL when `TEST_DATABASE_URL` is set.

use axum::http::{Method, StatusCode};
use serde_json::json;
use service_kit::testing::{Reply, RouterClient, TestDatabase};

async fn service() -> (RouterClient, TestDatabase) {
    let db = TestDatabase::new().await;
    let database = service_kit::Db::open(&db.url, 8, &inventory::MIGRATIONS)
        .await
        .expect("database");
    (
        RouterClient::new(inventory::app(inventory::AppState { db: database })),
        db,
    )
}

async fn quantity(client: &RouterClient, sku: &str) -> i64 {
    let reply = client
        .as_user(1, Method::GET, &format!("/api/stock/{sku}"), None)
        .await;
    reply.body["quantity"].as_i64().expect("quantity")
}

#[tokio::test]
async fn stock_is_seeded_and_readable_by_signed_in_users() {
    let (client, _db) = service().await;
    let list = client.as_user(1, Method::GET, "/api/stock", None).await;
    assert_eq!(list.status, StatusCode::OK);
    let items = list.body.as_array().expect("list");
    assert!(items.len() >= 3, "seeded items: {}", list.body);
    assert!(
        items
            .iter()
            .all(|i| i["sku"].is_string() && i["name"].is_string() && i["quantity"].is_i64())
    );
    assert_eq!(quantity(&client, "KB-001").await, 25);
    assert_eq!(
        client
            .as_user(1, Method::GET, "/api/stock/NOPE", None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    let anonymous = client.send(Method::GET, "/api/stock", &[], None).await;
    assert_eq!(
        (anonymous.status, anonymous.code()),
        (StatusCode::UNAUTHORIZED, "unauthenticated")
    );
}

#[tokio::test]
async fn only_admins_change_stock() {
    let (client, _db) = service().await;
    let body = json!({"name": "Mechanical keyboard", "quantity": 5});
    let user = client
        .send(
            Method::PUT,
            "/api/stock/KB-001",
            &[("x-user-id", "2"), ("x-user-role", "user")],
            Some(&body),
        )
        .await;
    assert_eq!(
        (user.status, user.code()),
        (StatusCode::FORBIDDEN, "forbidden")
    );
    let no_role = client
        .as_user(2, Method::PUT, "/api/stock/KB-001", Some(&body))
        .await;
    assert_eq!(no_role.status, StatusCode::FORBIDDEN);
    assert_eq!(quantity(&client, "KB-001").await, 25);

    let admin = [("x-user-id", "1"), ("x-user-role", "admin")];
    let changed = client
        .send(Method::PUT, "/api/stock/KB-001", &admin, Some(&body))
        .await;
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.body);
    assert_eq!(quantity(&client, "KB-001").await, 5);
    let created = client
        .send(
            Method::PUT,
            "/api/stock/NEW-1",
            &admin,
            Some(&json!({"name": "New", "quantity": 3})),
        )
        .await;
    assert_eq!(
        created.body,
        json!({"sku": "NEW-1", "name": "New", "quantity": 3})
    );
    for bad in [
        json!({"name": "x", "quantity": -1}),
        json!({"name": " ", "quantity": 1}),
        json!({"name": "x"}),
        json!({"name": "x", "quantity": 1, "price": 3}),
    ] {
        let reply = client
            .send(Method::PUT, "/api/stock/KB-001", &admin, Some(&bad))
            .await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    }
    let bad_sku = client
        .send(Method::PUT, "/api/stock/a%20b", &admin, Some(&body))
        .await;
    assert_eq!(bad_sku.status, StatusCode::UNPROCESSABLE_ENTITY);
}

async fn reserve(client: &RouterClient, id: &str, sku: &str, quantity: i64) -> Reply {
    let body = json!({"reservation_id": id, "sku": sku, "quantity": quantity});
    client
        .send(Method::POST, "/internal/reserve", &[], Some(&body))
        .await
}

#[tokio::test]
async fn reservations_are_atomic_and_idempotent() {
    let (client, _db) = service().await;
    let first = reserve(&client, "r1", "MN-003", 4).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.body);
    assert_eq!(first.body["remaining"], 6);
    // The same reservation again takes nothing more.
    let again = reserve(&client, "r1", "MN-003", 4).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(quantity(&client, "MN-003").await, 6);
    let reused = reserve(&client, "r1", "MN-003", 1).await;
    assert_eq!(
        (reused.status, reused.code()),
        (StatusCode::CONFLICT, "reservation_conflict")
    );

    let too_many = reserve(&client, "r2", "MN-003", 7).await;
    assert_eq!(
        (too_many.status, too_many.code()),
        (StatusCode::CONFLICT, "insufficient_stock")
    );
    assert_eq!(
        quantity(&client, "MN-003").await,
        6,
        "a refused reservation changes nothing"
    );
    let unknown = reserve(&client, "r3", "NOPE", 1).await;
    assert_eq!(
        (unknown.status, unknown.code()),
        (StatusCode::NOT_FOUND, "unknown_sku")
    );
    let zero = reserve(&client, "r4", "MN-003", 0).await;
    assert_eq!(zero.status, StatusCode::UNPROCESSABLE_ENTITY);

    let release = json!({"reservation_id": "r1"});
    for _ in 0..2 {
        let reply = client
            .send(Method::POST, "/internal/release", &[], Some(&release))
            .await;
        assert_eq!(reply.status, StatusCode::OK);
    }
    assert_eq!(
        quantity(&client, "MN-003").await,
        10,
        "released exactly once"
    );
}

/// Any SKU (in the path) and name, on SQLite and on PostgreSQL alike:
/// stored or refused with a 4xx, never a 500; a control character is a 422
/// naming its field.
#[test]
fn arbitrary_skus_and_names_are_stored_or_refused_never_a_500() {
    use proptest::prelude::*;
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (client, _db) = runtime.block_on(service());
    let admin = [("x-user-id", "1"), ("x-user-role", "admin")];
    let text = || {
        prop_oneof![
            any::<String>(),
            "[a-zA-Z0-9._ \\x00-\\x1f\\x7f-\\x9f-]{0,12}",
            "[A-Z0-9-]{1,10}",
        ]
    };
    proptest!(ProptestConfig::with_cases(96), |(sku in text(), name in text())| {
        let encoded: String = sku.bytes().map(|b| format!("%{b:02X}")).collect();
        let path = format!("/api/stock/{encoded}");
        let put = runtime.block_on(client.send(
            Method::PUT,
            &path,
            &admin,
            Some(&json!({"name": name, "quantity": 3})),
        ));
        prop_assert!(put.status.is_success() || put.status.is_client_error(), "{} {}", put.status, put.body);
        let message = put.body["error"]["message"].as_str().unwrap_or("");
        if sku.chars().any(char::is_control) && !sku.is_empty() {
            prop_assert_eq!(put.status, StatusCode::UNPROCESSABLE_ENTITY);
            prop_assert!(message.starts_with("sku must not contain control"), "{}", message);
        } else if name.chars().any(char::is_control) && !sku.is_empty() {
            prop_assert_eq!(put.status, StatusCode::UNPROCESSABLE_ENTITY);
        }
        let get = runtime.block_on(client.as_user(2, Method::GET, &path, None));
        prop_assert!(get.status.is_success() || get.status.is_client_error(), "{} {}", get.status, get.body);
        if put.status.is_success() {
            prop_assert_eq!(get.body["name"].as_str(), Some(name.trim()));
        }
        let reserve = runtime.block_on(client.send(
            Method::POST,
            "/internal/reserve",
            &[],
            Some(&json!({"reservation_id": sku, "sku": sku, "quantity": 1})),
        ));
        prop_assert!(reserve.status.is_success() || reserve.status.is_client_error(), "{} {}", reserve.status, reserve.body);
    });
}
