//! Upstream pools: failures, failover, retries, timeouts, the envelope of
//! every gateway error, servers returning to rotation.

use crate::support::*;
use service_kit::testing::TestDatabase;
use std::sync::atomic::Ordering;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_upstream_gives_502_then_leaves_rotation() {
    let s = stack(&[]).await;
    let gw = s.gateway.addr();
    assert_eq!(raw(gw, "GET", "/api/public/a", &[], "").await.status, 200);
    s.tasks.stop();
    let first = raw(gw, "GET", "/api/public/a", &[], "").await;
    assert_eq!(first.status, 502, "{:?}", first.body);
    assert_eq!(first.code(), "bad_gateway");
    // Within two health-check intervals (200 ms each, plus slack) the server
    // is out of rotation, and the answer says so.
    let ejected = eventually(Duration::from_secs(3), async || {
        raw(gw, "GET", "/api/public/a", &[], "").await.body["error"]["message"]
            == "no healthy upstream server for this route"
    })
    .await;
    assert!(ejected, "the dead server stayed in rotation");
    let reply = raw(gw, "GET", "/api/public/a", &[], "").await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.header("retry-after"), None);
    let gauge = format!(
        "portcullis_upstream_healthy{{server=\"{}\",upstream=\"tasks\"}}",
        s.tasks.addr
    );
    assert_eq!(s.gateway.metric(&gauge).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_fail_over_to_the_live_server_of_a_pool() {
    let db = TestDatabase::new().await;
    let auth = auth_service(&db, &[]);
    let (a, b) = (Upstream::start().await, Upstream::start().await);
    let gateway = Gateway::start(&routes(auth.addr, &[a.addr, b.addr], ""), &[]);
    let gw = gateway.addr();
    for _ in 0..4 {
        assert_eq!(raw(gw, "GET", "/api/public/x", &[], "").await.status, 200);
    }
    assert_eq!((a.seen().len(), b.seen().len()), (2, 2), "round robin");
    a.stop();
    for i in 0..20 {
        let reply = raw(gw, "GET", "/api/public/x", &[], "").await;
        assert_eq!(reply.status, 200, "request {i} after one server stopped");
    }
    assert_eq!(b.seen().len(), 22);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_breaking_fresh_connections_sends_gets_to_the_next_server_and_never_posts() {
    let db = TestDatabase::new().await;
    let auth = auth_service(&db, &[]);
    let (broken, good) = (Upstream::start().await, Upstream::start().await);
    broken.drop_nth.store(1, Ordering::SeqCst);
    let gateway = Gateway::start(&routes(auth.addr, &[broken.addr, good.addr], ""), &[]);
    let gw = gateway.addr();
    for i in 0..6 {
        let reply = raw(gw, "GET", "/api/public/get", &[], "").await;
        assert_eq!(reply.status, 200, "GET {i}: {:?}", reply.body);
    }
    assert_eq!(good.seen().len(), 6);

    // Round robin sends one of two POSTs to the broken server: it may have
    // acted on it, so that one is answered 502 and sent nowhere else.
    let mut statuses = Vec::new();
    for _ in 0..2 {
        statuses.push(raw(gw, "POST", "/api/public/post", &[], "{}").await.status);
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 502]);
    let posts = |u: &Upstream| u.seen().iter().filter(|s| s.method == "POST").count();
    assert_eq!(
        (posts(&broken), posts(&good)),
        (1, 1),
        "a POST was sent twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_pooled_connection_is_retried_for_get_and_never_for_post() {
    let db = TestDatabase::new().await;
    let auth = auth_service(&db, &[]);
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&routes(auth.addr, &[upstream.addr], ""), &[]);
    let gw = gateway.addr();
    upstream.drop_nth.store(2, Ordering::SeqCst);

    // One client connection throughout: it is served by one gateway worker
    // thread, whose pool holds the upstream connection between requests.
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(1)
        .build()
        .expect("client");
    let url = |path: &str| format!("http://{gw}{path}");

    let times = |target: &str| {
        upstream
            .seen()
            .iter()
            .filter(|s| s.target == target)
            .count()
    };

    // A request that goes on a pooled connection (the server drops each
    // connection's second request) is sent again on a new connection. When
    // the engine hands a connection back to its pool is its own business,
    // so requests go until one met a dropped connection.
    let mut resent = 0;
    for i in 0..20 {
        let target = format!("/api/public/get/{i}");
        let reply = client.get(url(&target)).send().await.expect("send");
        assert_eq!(reply.status(), 200, "{target}");
        reply.bytes().await.expect("body");
        match times(&target) {
            1 => {}
            2 => resent += 1,
            n => panic!("{target} was sent {n} times"),
        }
        if resent > 0 {
            break;
        }
    }
    assert_eq!(resent, 1, "no GET met a dropped pooled connection");

    // A POST that meets the same fate is answered 502 and sent only once:
    // the server may have acted on it.
    let mut refused = 0;
    for i in 0..20 {
        let target = format!("/api/public/post/{i}");
        let reply = client
            .post(url(&target))
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .expect("send");
        let status = reply.status();
        reply.bytes().await.expect("body");
        assert_eq!(times(&target), 1, "{target} was sent twice");
        if status == 502 {
            refused += 1;
            break;
        }
        assert_eq!(status, 200, "{target}");
    }
    assert_eq!(refused, 1, "no POST met a dropped pooled connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_upstream_gives_504() {
    let s = stack(&[]).await;
    s.tasks.hang.store(true, Ordering::SeqCst);
    let started = std::time::Instant::now();
    let reply = raw(s.gateway.addr(), "GET", "/api/public/slow", &[], "").await;
    assert_eq!(reply.status, 504, "{:?}", reply.body);
    assert_eq!(reply.code(), "gateway_timeout");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_errors_are_json_envelopes() {
    let s = stack(&[]).await;
    let gw = s.gateway.addr();
    let (token, _) = register(gw, "errors@example.com").await;
    let health = raw(gw, "GET", "/healthz", &[], "").await;
    assert_eq!(
        (health.status, health.body["status"].as_str()),
        (200, Some("ok"))
    );

    let not_found = raw(gw, "GET", "/nowhere", &[], "").await;
    assert_eq!((not_found.status, not_found.code()), (404, "not_found"));
    let wrong_method = raw(gw, "GET", "/api/auth/login", &[], "").await;
    assert_eq!(
        (wrong_method.status, wrong_method.code()),
        (405, "method_not_allowed")
    );
    assert_eq!(wrong_method.header("allow"), Some("POST"));
    let big_body = raw(
        gw,
        "POST",
        "/api/public/upload",
        &[("content-length", "5000000")],
        "",
    )
    .await;
    assert_eq!(
        (big_body.status, big_body.code()),
        (413, "payload_too_large")
    );
    let huge = "h".repeat(20 * 1024);
    let big_headers = raw(gw, "GET", "/api/public/x", &[("x-padding", &huge)], "").await;
    assert_eq!(
        (big_headers.status, big_headers.code()),
        (431, "headers_too_large")
    );
    for (value, code) in [
        ("", "unauthenticated"),
        ("Bearer a.b", "invalid_token"),
        ("Bearer a.b.c d", "invalid_token"),
    ] {
        let headers: Vec<(&str, &str)> = if value.is_empty() {
            vec![]
        } else {
            vec![("authorization", value)]
        };
        let reply = raw(gw, "GET", "/api/tasks", &headers, "").await;
        assert_eq!((reply.status, reply.code()), (401, code), "{value:?}");
        assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
    }
    let forged = format!("{}x", &token[..token.len() - 1]);
    let reply = get_with_token(gw, "/api/tasks", &forged).await;
    assert_eq!((reply.status, reply.code()), (401, "invalid_token"));
    let user_on_admin = get_with_token(gw, "/api/admin/users", &token).await;
    assert_eq!(
        (user_on_admin.status, user_on_admin.code()),
        (403, "forbidden")
    );
    assert!(s.tasks.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_answers_again_returns_to_rotation() {
    let s = stack(&[]).await;
    let gw = s.gateway.addr();
    let addr = s.tasks.addr;
    s.tasks.stop();
    let ejected = eventually(Duration::from_secs(3), async || {
        raw(gw, "GET", "/api/public/a", &[], "").await.body["error"]["message"]
            == "no healthy upstream server for this route"
    })
    .await;
    assert!(ejected, "the stopped server stayed in rotation");
    let revived = Upstream::start_on(addr).await;
    let back = eventually(Duration::from_secs(3), async || {
        raw(gw, "GET", "/api/public/a", &[], "").await.status == 200
    })
    .await;
    assert!(
        back,
        "the server did not return within the health-check bound"
    );
    assert!(!revived.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unix_socket_upstream_serves_public_and_protected_routes() {
    let db = TestDatabase::new().await;
    let auth = auth_service(&db, &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("tasks.sock");
    let tasks = Upstream::start_unix(&socket).await;
    let routes = format!(
        r#"
auth:
  verify_url: http://{auth}/api/verify
upstreams:
  auth:
    servers: ["{auth}"]
  tasks:
    servers: ["unix:{socket}"]
    health_check: {{ type: http, path: /healthz, interval: 200ms }}
routes:
  - {{ prefix: /api/auth/register, upstream: auth, access: public, methods: [POST], rewrite: /api/register }}
  - {{ prefix: /api/public, upstream: tasks, access: public }}
  - {{ prefix: /api/tasks, upstream: tasks, access: protected }}
"#,
        auth = auth.addr,
        socket = socket.display()
    );
    let gateway = Gateway::start(&routes, &[]);
    let gw = gateway.addr();

    let public = raw(gw, "GET", "/api/public/a?x=1", &[("x-user-id", "7")], "").await;
    assert_eq!(public.status, 200, "{:?}", public.body);
    assert_eq!(public.body["target"], "/api/public/a?x=1");
    let (token, user) = register(gw, "unix@example.com").await;
    let protected = get_with_token(gw, "/api/tasks/1", &token).await;
    assert_eq!(protected.status, 200, "{:?}", protected.body);
    let unauthenticated = raw(gw, "GET", "/api/tasks/1", &[], "").await;
    assert_eq!(unauthenticated.status, 401);

    let seen = tasks.seen();
    assert_eq!(
        seen.len(),
        2,
        "the refused request never reached the socket"
    );
    assert_eq!(
        seen[0].all("x-user-id"),
        Vec::<&str>::new(),
        "spoofed id stripped"
    );
    assert_eq!(seen[1].all("x-user-id"), vec![user.to_string().as_str()]);
    // A socket has no host name: the upstream is told `localhost`.
    assert_eq!(seen[1].all("host"), vec!["localhost"]);
    let gauge = format!(
        "portcullis_upstream_healthy{{server=\"unix:{}\",upstream=\"tasks\"}}",
        socket.display()
    );
    assert_eq!(gateway.metric(&gauge).await, 1.0);

    // The socket's server stops: 502, then out of rotation by its checks.
    tasks.stop();
    std::fs::remove_file(&socket).expect("remove socket");
    let gone = raw(gw, "GET", "/api/public/a", &[], "").await;
    assert_eq!(gone.status, 502, "{:?}", gone.body);
    let ejected = eventually(Duration::from_secs(3), async || {
        gateway.metric(&gauge).await == 0.0
    })
    .await;
    assert!(ejected, "a dead socket stayed in rotation");
}
