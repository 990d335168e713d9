//! The orders service against a real inventory service on a socket, each
//! on its own database (SQLite by default, PostgreSQL with
//! `TEST_DATABASE_URL`).

use axum::http::{Method, StatusCode};
use futures::future::join_all;
use orders::inventory_client::InventoryClient;
use serde_json::{Value, json};
use service_kit::testing::{RouterClient, TestDatabase};
use std::net::SocketAddr;
use std::time::Duration;

struct Stack {
    orders: RouterClient,
    inventory: RouterClient,
    _dbs: (TestDatabase, TestDatabase),
}

async fn serve_inventory() -> (SocketAddr, RouterClient, TestDatabase) {
    let db = TestDatabase::new().await;
    let state = inventory::AppState {
        db: service_kit::Db::open(&db.url, 8, &inventory::MIGRATIONS)
            .await
            .expect("inventory db"),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let router = inventory::app(state);
    tokio::spawn(axum::serve(listener, router.clone()).into_future());
    (addr, RouterClient::new(router), db)
}

async fn orders_against(inventory_url: &str) -> (RouterClient, TestDatabase) {
    let db = TestDatabase::new().await;
    let state = orders::AppState {
        db: service_kit::Db::open(&db.url, 8, &orders::MIGRATIONS)
            .await
            .expect("orders db"),
        inventory: InventoryClient::new(inventory_url, Duration::from_secs(2)).expect("client"),
        events: service_kit::events::Publisher::none(),
    };
    (RouterClient::new(orders::app(state)), db)
}

async fn stack() -> Stack {
    let (addr, inventory, inventory_db) = serve_inventory().await;
    let (orders, orders_db) = orders_against(&format!("http://{addr}")).await;
    Stack {
        orders,
        inventory,
        _dbs: (inventory_db, orders_db),
    }
}

async fn stock(s: &Stack, sku: &str) -> i64 {
    s.inventory
        .as_user(1, Method::GET, &format!("/api/stock/{sku}"), None)
        .await
        .body["quantity"]
        .as_i64()
        .expect("quantity")
}

async fn set_stock(s: &Stack, sku: &str, quantity: i64) {
    let reply = s
        .inventory
        .send(
            Method::PUT,
            &format!("/api/stock/{sku}"),
            &[("x-user-id", "1"), ("x-user-role", "admin")],
            Some(&json!({"name": sku, "quantity": quantity})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
}

async fn order(s: &Stack, user: i64, sku: &str, quantity: i64) -> (StatusCode, Value) {
    let reply = s
        .orders
        .as_user(
            user,
            Method::POST,
            "/api/orders",
            Some(&json!({"sku": sku, "quantity": quantity})),
        )
        .await;
    (reply.status, reply.body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordering_takes_stock_and_cancelling_returns_it() {
    let s = stack().await;
    let before = stock(&s, "KB-001").await;
    let (status, placed) = order(&s, 7, "KB-001", 3).await;
    assert_eq!(status, StatusCode::CREATED, "{placed}");
    assert_eq!(
        (
            placed["sku"].as_str(),
            placed["quantity"].as_i64(),
            placed["status"].as_str()
        ),
        (Some("KB-001"), Some(3), Some("placed"))
    );
    assert!(placed.get("reservation_id").is_none() && placed.get("user_id").is_none());
    assert_eq!(stock(&s, "KB-001").await, before - 3);

    let path = format!("/api/orders/{}", placed["id"]);
    let mine = s.orders.as_user(7, Method::GET, "/api/orders", None).await;
    assert_eq!(mine.body.as_array().map(Vec::len), Some(1));
    assert_eq!(
        s.orders.as_user(7, Method::GET, &path, None).await.body["id"],
        placed["id"]
    );
    // Another user sees nothing and cannot cancel it.
    assert_eq!(
        s.orders
            .as_user(8, Method::GET, "/api/orders", None)
            .await
            .body,
        json!([])
    );
    for method in [Method::GET, Method::DELETE] {
        assert_eq!(
            s.orders.as_user(8, method, &path, None).await.status,
            StatusCode::NOT_FOUND
        );
    }
    assert_eq!(stock(&s, "KB-001").await, before - 3);

    let cancelled = s.orders.as_user(7, Method::DELETE, &path, None).await;
    assert_eq!(cancelled.status, StatusCode::OK, "{}", cancelled.body);
    assert_eq!(cancelled.body["status"], "cancelled");
    assert_eq!(stock(&s, "KB-001").await, before);
    // Cancelling again returns nothing twice.
    assert_eq!(
        s.orders
            .as_user(7, Method::DELETE, &path, None)
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(stock(&s, "KB-001").await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_ordering_is_refused_and_changes_nothing() {
    let s = stack().await;
    set_stock(&s, "LAST", 2).await;
    let (status, body) = order(&s, 7, "LAST", 3).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("insufficient_stock"))
    );
    assert_eq!(stock(&s, "LAST").await, 2);
    assert_eq!(
        s.orders
            .as_user(7, Method::GET, "/api/orders", None)
            .await
            .body,
        json!([])
    );
    let (status, _) = order(&s, 7, "NO-SUCH-SKU", 1).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    for bad in [
        json!({"sku": "LAST", "quantity": 0}),
        json!({"sku": "LAST"}),
        json!({"sku": "LAST", "quantity": 1, "price": 0}),
    ] {
        let reply = s
            .orders
            .as_user(7, Method::POST, "/api/orders", Some(&bad))
            .await;
        assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
    }
    // A user_id in the body is ignored.
    let reply = s
        .orders
        .as_user(
            7,
            Method::POST,
            "/api/orders",
            Some(&json!({"sku": "LAST", "quantity": 1, "user_id": 8})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED);
    assert_eq!(
        s.orders
            .as_user(8, Method::GET, "/api/orders", None)
            .await
            .body,
        json!([])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stock_never_goes_negative_under_concurrent_orders() {
    let s = stack().await;
    set_stock(&s, "HOT", 10).await;
    let results = join_all((0..50).map(|i| order(&s, 100 + i, "HOT", 1))).await;
    let placed = results
        .iter()
        .filter(|(status, _)| *status == StatusCode::CREATED)
        .count();
    let refused = results
        .iter()
        .filter(|(status, _)| *status == StatusCode::CONFLICT)
        .count();
    assert_eq!(
        (placed, refused),
        (10, 40),
        "{:?}",
        results.iter().map(|r| r.0).collect::<Vec<_>>()
    );
    assert_eq!(stock(&s, "HOT").await, 0);

    // The last unit, two buyers at once: exactly one gets it.
    set_stock(&s, "ONE", 1).await;
    let pair = join_all([order(&s, 1, "ONE", 1), order(&s, 2, "ONE", 1)]).await;
    let winners = pair
        .iter()
        .filter(|(status, _)| *status == StatusCode::CREATED)
        .count();
    assert_eq!(winners, 1);
    assert_eq!(stock(&s, "ONE").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventory_down_means_503_and_no_order_anywhere() {
    let (_live, inventory, _inventory_db) = serve_inventory().await;
    // A port nothing listens on: bind, learn it, close it.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr");
    let (orders, _orders_db) = orders_against(&format!("http://{dead}")).await;
    let before = inventory
        .as_user(1, Method::GET, "/api/stock", None)
        .await
        .body;
    let reply = orders
        .as_user(
            7,
            Method::POST,
            "/api/orders",
            Some(&json!({"sku": "KB-001", "quantity": 1})),
        )
        .await;
    assert_eq!(
        (reply.status, reply.code()),
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    );
    assert_eq!(
        reply
            .headers
            .get("retry-after")
            .map(|v| v.to_str().expect("ascii")),
        Some("1")
    );
    assert_eq!(
        orders
            .as_user(7, Method::GET, "/api/orders", None)
            .await
            .body,
        json!([]),
        "no order was written"
    );
    assert_eq!(
        inventory
            .as_user(1, Method::GET, "/api/stock", None)
            .await
            .body,
        before,
        "no stock was taken"
    );
}

#[tokio::test]
async fn requests_without_one_well_formed_identity_are_refused() {
    let s = stack().await;
    let body = json!({"sku": "KB-001", "quantity": 1});
    for (method, path, body) in [
        (Method::GET, "/api/orders", None),
        (Method::POST, "/api/orders", Some(&body)),
        (Method::GET, "/api/orders/1", None),
        (Method::DELETE, "/api/orders/1", None),
    ] {
        let cases: [(&[(&str, &str)], StatusCode); 3] = [
            (&[], StatusCode::UNAUTHORIZED),
            (&[("x-user-id", "0")], StatusCode::UNAUTHORIZED),
            (
                &[("x-user-id", "7"), ("x-user-id", "8")],
                StatusCode::BAD_REQUEST,
            ),
        ];
        for (headers, status) in cases {
            let reply = s.orders.send(method.clone(), path, headers, body).await;
            assert_eq!(reply.status, status, "{method} {path} {headers:?}");
        }
    }
    assert_eq!(stock(&s, "KB-001").await, 25, "nothing was reserved");
}
