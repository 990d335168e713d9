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

/// A `redis-server` of the test's own, on `port`, that can be stopped and
/// started again.
struct OwnRedis {
    port: u16,
    child: Option<std::process::Child>,
}

impl OwnRedis {
    fn start(port: u16) -> OwnRedis {
        let mut redis = OwnRedis { port, child: None };
        redis.restart();
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn restart(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install redis-server)");
        self.child = Some(child);
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!("redis-server did not start on {}", self.port);
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_a_limit_through_redis_and_fall_back_while_it_is_down() {
    let mut redis = OwnRedis::start(service_kit::testing::unused_port());
    let upstream = Upstream::start().await;
    let routes = format!(
        "auth:\n  verify_url: http://127.0.0.1:9/api/verify\nupstreams:\n  app:\n    servers: [\"{}\"]\nroutes:\n  - {{ prefix: /api/public, upstream: app, access: public, rate_limit: {{ per_ip: {{ requests: 10, per: 1m, store: redis }} }} }}\n",
        upstream.addr
    );
    let url = redis.url();
    let namespace = format!("test-{}", std::process::id());
    let env = [
        ("REDIS_URL", url.as_str()),
        ("RATE_LIMIT_NAMESPACE", namespace.as_str()),
    ];
    let (one, two) = (Gateway::start(&routes, &env), Gateway::start(&routes, &env));
    let alternate = async |n: usize| {
        let mut passed = 0;
        for i in 0..n {
            let gw = if i % 2 == 0 { one.addr() } else { two.addr() };
            let reply = raw(gw, "GET", "/api/public/x", &[], "").await;
            match reply.status {
                200 => passed += 1,
                429 => assert_eq!(reply.code(), "rate_limited"),
                other => panic!("status {other}"),
            }
        }
        passed
    };
    // One limit for both: ten requests a minute from this address.
    assert_eq!(
        alternate(30).await,
        10,
        "the two gateways did not share one limit"
    );

    // Redis gone: each gateway falls back to its own bucket (still full:
    // the shared one was used until now), and counts it.
    redis.stop();
    let mut passed = 0;
    for _ in 0..15 {
        if raw(one.addr(), "GET", "/api/public/x", &[], "")
            .await
            .status
            == 200
        {
            passed += 1;
        }
    }
    assert_eq!(passed, 10, "the local fallback let through {passed} of 15");
    let fallbacks = "portcullis_rate_limit_fallbacks_total{route=\"/api/public\",scope=\"ip\"}";
    assert!(one.metric(fallbacks).await >= 15.0);

    // Redis back (empty): once the pause is over, the limit is shared again.
    redis.restart();
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    assert_eq!(
        alternate(30).await,
        10,
        "the shared limit did not come back"
    );
}
