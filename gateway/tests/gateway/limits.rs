//! Rate limits per address and per user.

use crate::support::*;
use service_kit::testing::TestDatabase;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_ip_limit_stops_a_flood_before_any_token_is_verified() {
    let db = TestDatabase::new().await;
    let auth = auth_service(&db, &[]);
    let tasks = Upstream::start().await;
    let extra = "  - { prefix: /api/limited, upstream: tasks, access: protected, \
                 rate_limit: { per_ip: { requests: 5, per: 1m } } }\n";
    let gateway = Gateway::start(&routes(auth.addr, &[tasks.addr], extra), &[]);
    let gw = gateway.addr();

    // Fifty requests, each with a token never seen before: only the first
    // five are looked at (and refused); the rest never reach the verifier.
    let mut statuses = Vec::new();
    let mut last = None;
    for n in 0..50 {
        let reply = get_with_token(gw, "/api/limited", &forged_token(n)).await;
        statuses.push(reply.status);
        last = Some(reply);
    }
    assert_eq!(statuses[..5], [401; 5]);
    assert!(statuses[5..].iter().all(|s| *s == 429), "{statuses:?}");
    assert_eq!(
        gateway
            .metric("portcullis_verify_cache_total{result=\"miss\"}")
            .await,
        5.0,
        "the flood reached the verifier"
    );
    let refused = last.expect("a reply");
    assert_eq!(refused.code(), "rate_limited");
    let retry: u64 = refused
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!((1..=12).contains(&retry), "one request every 12 s: {retry}");
    assert_eq!(
        refused.header("ratelimit-policy"),
        Some("5;w=60"),
        "{:?}",
        refused.headers
    );
    assert!(
        refused
            .header("ratelimit")
            .is_some_and(|v| v.starts_with("limit=5, remaining=0, reset=")),
        "{:?}",
        refused.headers
    );
    assert_eq!(
        gateway
            .metric("portcullis_rate_limited_total{route=\"/api/limited\",scope=\"ip\"}")
            .await,
        45.0
    );
    // Other routes are not limited.
    assert_eq!(raw(gw, "GET", "/api/public/x", &[], "").await.status, 200);
    assert!(tasks.seen().iter().all(|s| s.target != "/api/limited"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_user_limits_keep_users_apart() {
    let db = TestDatabase::new().await;
    let auth = auth_service(&db, &[]);
    let tasks = Upstream::start().await;
    let extra = "  - { prefix: /api/mine, upstream: tasks, access: protected, \
                 rate_limit: { per_user: { requests: 3, per: 1m } } }\n";
    let gateway = Gateway::start(&routes(auth.addr, &[tasks.addr], extra), &[]);
    let gw = gateway.addr();
    let (alice, _) = register(gw, "limited-alice@example.com").await;
    let (bob, _) = register(gw, "limited-bob@example.com").await;

    let mut remaining = Vec::new();
    for _ in 0..3 {
        let reply = get_with_token(gw, "/api/mine", &alice).await;
        assert_eq!(reply.status, 200);
        remaining.push(reply.header("ratelimit").map(str::to_owned));
    }
    let left: Vec<&str> = remaining
        .iter()
        .map(|h| {
            h.as_deref()
                .and_then(|v| v.split(", ").nth(1))
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(left, ["remaining=2", "remaining=1", "remaining=0"]);
    let refused = get_with_token(gw, "/api/mine", &alice).await;
    assert_eq!((refused.status, refused.code()), (429, "rate_limited"));
    // Bob's allowance is his own.
    let his = get_with_token(gw, "/api/mine", &bob).await;
    assert_eq!(his.status, 200);
    assert_eq!(
        gateway
            .metric("portcullis_rate_limited_total{route=\"/api/mine\",scope=\"user\"}")
            .await,
        1.0
    );
    assert_eq!(tasks.seen().len(), 4);
}
