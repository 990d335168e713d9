//! The gateway as users and attackers meet it: real gateway and auth
//! service processes on ephemeral ports, and a recording upstream.

mod support;

use futures::future::join_all;
use service_kit::testing::{ChildService, TestDatabase};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use support::{
    Gateway, Upstream, auth_service, eventually, get_with_token, open_upgrade, raw, register,
    routes,
};

struct Stack {
    _db: TestDatabase,
    auth: ChildService,
    tasks: Upstream,
    gateway: Gateway,
}

async fn stack(auth_args: &[&str]) -> Stack {
    let db = TestDatabase::new().await;
    let auth = auth_service(&db, auth_args);
    let tasks = Upstream::start().await;
    let gateway = Gateway::start(&routes(auth.addr, &[tasks.addr], ""), &[]);
    Stack {
        _db: db,
        auth,
        tasks,
        gateway,
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_requests_carry_the_verified_identity_and_nothing_else() {
    let s = stack(&[]).await;
    let gw = s.gateway.addr();
    let (_, user_id) = register(gw, "alice@example.com").await;
    let login = raw(
        gw,
        "POST",
        "/api/auth/login",
        &[],
        r#"{"email":"alice@example.com","password":"a long password"}"#,
    )
    .await;
    assert_eq!(login.status, 200, "{:?}", login.body);
    let token = login.body["access"].as_str().expect("access").to_owned();

    let reply = raw(
        gw,
        "GET",
        "/api/tasks?page=2",
        &[
            ("authorization", &bearer(&token)),
            ("x-request-id", "trace-42"),
        ],
        "",
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.header("x-request-id"), Some("trace-42"));

    let seen = s.tasks.seen();
    assert_eq!(seen.len(), 1);
    let request = &seen[0];
    assert_eq!(request.target, "/api/tasks?page=2");
    assert_eq!(request.all("x-user-id"), vec![user_id.to_string().as_str()]);
    assert_eq!(request.all("x-user-role"), vec!["user"]);
    assert!(
        request.all("authorization").is_empty(),
        "the token was forwarded"
    );
    assert_eq!(request.all("x-request-id"), vec!["trace-42"]);
    assert_eq!(request.all("x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(request.all("x-forwarded-proto"), vec!["http"]);
    assert_eq!(request.all("x-forwarded-host"), vec!["gateway.test"]);

    // A generated request id when the client sends none (or a bad one).
    let reply = raw(
        gw,
        "GET",
        "/api/tasks",
        &[
            ("authorization", &bearer(&token)),
            ("x-request-id", "bad id / with spaces"),
        ],
        "",
    )
    .await;
    let generated = reply
        .header("x-request-id")
        .expect("generated id")
        .to_owned();
    assert!(!generated.is_empty() && !generated.contains(' '));
    assert_eq!(
        s.tasks.seen()[1].all("x-request-id"),
        vec![generated.as_str()]
    );

    // The rewrite reaches the auth service's /api/me with the gateway's identity.
    let me = get_with_token(gw, "/api/auth/me", &token).await;
    assert_eq!(me.status, 200, "{:?}", me.body);
    assert_eq!(me.body["user_id"], user_id);
    assert_eq!(me.body["email"], "alice@example.com");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_identity_headers_never_reach_the_upstream() {
    let s = stack(&[]).await;
    let gw = s.gateway.addr();
    let (token, user_id) = register(gw, "mallory@example.com").await;
    let spoofs = [
        ("x-user-id", "9001"),
        ("X-User-Id", "9002"),
        ("X_USER_ID", "9003"),
        ("x_user_id", "9004"),
        ("x-user-id", "9005"),
        ("x-user-role", "admin"),
        ("X_User_Role", "admin"),
        ("connection", "x-user-id, x-user-role, x-forwarded-for"),
        ("x-forwarded-for", "10.9.8.7"),
        ("forwarded", "for=127.0.0.1;proto=https;host=admin.internal"),
        ("x-real-ip", "10.0.0.1"),
        ("x-forwarded-prefix", "//evil.example"),
        ("x-http-method-override", "DELETE"),
    ];

    // Public route: every spelling is removed, none is added.
    let reply = raw(gw, "GET", "/api/public/x", &spoofs, "").await;
    assert_eq!(reply.status, 200, "{:?}\n{}", reply, s.gateway.child.logs());
    // Protected route, with a valid token: exactly the verified identity.
    let mut with_token = spoofs.to_vec();
    let auth = bearer(&token);
    with_token.push(("authorization", &auth));
    let reply = raw(gw, "GET", "/api/tasks", &with_token, "").await;
    assert_eq!(reply.status, 200);

    let seen = s.tasks.seen();
    assert_eq!(seen.len(), 2);
    let identity_lines = |request: &support::Seen| -> Vec<(String, String)> {
        request
            .headers
            .iter()
            .filter(|(name, _)| {
                let n = name.to_ascii_lowercase().replace('_', "-");
                n == "x-user-id" || n == "x-user-role"
            })
            .cloned()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect()
    };
    assert_eq!(
        identity_lines(&seen[0]),
        vec![],
        "public route leaked identity headers"
    );
    assert_eq!(
        identity_lines(&seen[1]),
        vec![
            ("x-user-id".to_owned(), user_id.to_string()),
            ("x-user-role".to_owned(), "user".to_owned())
        ]
    );
    for request in &seen {
        assert_eq!(
            request.all("x-forwarded-for"),
            vec!["127.0.0.1"],
            "an untrusted X-Forwarded-For was kept"
        );
        for name in [
            "forwarded",
            "x-real-ip",
            "x-forwarded-prefix",
            "x-http-method-override",
        ] {
            assert!(request.all(name).is_empty(), "{name} reached the upstream");
        }
    }
    assert!(
        s.gateway
            .metric("portcullis_identity_headers_stripped_total")
            .await
            >= 14.0
    );

    // A client-side role header does not open admin routes.
    let reply = raw(
        gw,
        "GET",
        "/api/admin/users",
        &[("authorization", &auth), ("x-user-role", "admin")],
        "",
    )
    .await;
    assert_eq!(reply.status, 403);
    assert_eq!(reply.code(), "forbidden");
    assert_eq!(s.tasks.seen().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_tricks_never_reach_a_protected_upstream_unauthenticated() {
    let s = stack(&[]).await;
    let gw = s.gateway.addr();
    let cases = [
        ("/api/auth/../tasks", 401),
        ("/api/auth/%2e%2e/tasks", 401),
        ("/api/public/%2E%2E/tasks", 401),
        ("/api/public/.%2e/tasks/1", 401),
        ("/api/auth%2ftasks", 400),
        ("/api/public%2F..%2Ftasks", 400),
        ("/api/public/..%5ctasks", 400),
        ("/api/public\\..\\tasks", 400),
        ("//api/tasks", 401),
        ("/api//tasks", 401),
        ("/api/./tasks", 401),
        ("/api/tasks;x", 404),
        ("/api/tasksx", 404),
        ("/api/tasks%00", 400),
        ("/api/%2e%2e/%2e%2e/api/tasks", 400),
        ("/api/tasks?next=/api/public", 401),
        ("/api/tasks#/api/public", 401),
        ("/api/admin/../tasks", 401),
        ("/api/public/..;/tasks", 400),
    ];
    for (path, status) in cases {
        let reply = raw(gw, "GET", path, &[], "").await;
        assert_eq!(reply.status, status, "{path}: {:?}", reply.body);
        assert!(!reply.code().is_empty(), "{path}: no error envelope");
    }
    let leaked: Vec<String> = s
        .tasks
        .seen()
        .into_iter()
        .map(|r| r.target)
        .filter(|t| !t.starts_with("/api/public"))
        .collect();
    assert_eq!(
        leaked,
        Vec::<String>::new(),
        "reached the protected upstream"
    );

    // With a token, the normalised path is exactly what is sent upstream.
    let (token, _) = register(gw, "paths@example.com").await;
    let auth = bearer(&token);
    for (path, sent) in [
        ("//api/tasks", "/api/tasks"),
        ("/api/auth/%2e%2e/tasks/%7e7", "/api/tasks/~7"),
        ("/api/tasks/a/../b?q=%2e", "/api/tasks/b?q=%2e"),
    ] {
        let reply = raw(gw, "GET", path, &[("authorization", &auth)], "").await;
        assert_eq!(reply.status, 200, "{path}");
        assert_eq!(
            s.tasks.seen().last().map(|r| r.target.clone()).as_deref(),
            Some(sent),
            "{path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_requests_with_a_fresh_token_make_one_verify_call() {
    let s = stack(&[]).await;
    let gw = s.gateway.addr();
    let (token, _) = register(gw, "crowd@example.com").await;
    let miss = r#"portcullis_verify_cache_total{result="miss"}"#;
    let before = s.gateway.metric(miss).await;
    let auth = bearer(&token);
    let headers = [("authorization", auth.as_str())];
    let replies = join_all((0..50).map(|_| raw(gw, "GET", "/api/tasks", &headers, ""))).await;
    assert!(
        replies.iter().all(|r| r.status == 200),
        "{:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert_eq!(
        s.gateway.metric(miss).await - before,
        1.0,
        "one verify call for 50 requests"
    );
    let hits = s
        .gateway
        .metric(r#"portcullis_verify_cache_total{result="hit"}"#)
        .await;
    let waits = s
        .gateway
        .metric(r#"portcullis_verify_cache_total{result="coalesced"}"#)
        .await;
    assert_eq!(hits + waits, 49.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_refused_even_when_cached() {
    let s = stack(&["--access-ttl", "2"]).await;
    let gw = s.gateway.addr();
    let (token, _) = register(gw, "brief@example.com").await;
    let auth = bearer(&token);
    assert_eq!(
        raw(gw, "GET", "/api/tasks", &[("authorization", &auth)], "")
            .await
            .status,
        200
    );
    let exp = gateway::auth::peek_exp(&token).expect("exp");
    // Waiting for the clock is the point of this test: the token must die.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    tokio::time::sleep(Duration::from_secs(exp.saturating_sub(now) + 1)).await;
    let reply = raw(gw, "GET", "/api/tasks", &[("authorization", &auth)], "").await;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
    assert_eq!(s.tasks.seen().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_service_down_means_503_and_nothing_forwarded() {
    let mut s = stack(&[]).await;
    let gw = s.gateway.addr();
    let (token, _) = register(gw, "outage@example.com").await;
    s.auth.kill();
    let reply = get_with_token(gw, "/api/tasks", &token).await;
    assert_eq!(reply.status, 503, "{:?}", reply.body);
    assert_eq!(reply.code(), "auth_unavailable");
    assert_eq!(reply.header("retry-after"), Some("1"));
    // Malformed or missing tokens are refused without asking anyone.
    for headers in [
        vec![("authorization", "Bearer not-a-jwt")],
        vec![("authorization", "Basic dXNlcjpwdw==")],
        vec![],
    ] {
        let reply = raw(gw, "GET", "/api/tasks", &headers, "").await;
        assert_eq!(reply.status, 401, "{headers:?}");
        assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
    }
    assert!(
        s.tasks.seen().is_empty(),
        "a request was forwarded without a verdict"
    );
    assert!(
        s.gateway
            .metric(r#"portcullis_verify_failures_total{reason="unreachable"}"#)
            .await
            >= 1.0
    );
}

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
async fn a_dropped_pooled_connection_is_retried_for_get_and_never_for_post() {
    let db = TestDatabase::new().await;
    let auth = auth_service(&db, &[]);
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&routes(auth.addr, &[upstream.addr], ""), &[]);
    let gw = gateway.addr();
    upstream
        .drop_second
        .store(true, std::sync::atomic::Ordering::SeqCst);

    // The first request leaves its connection in the pool; the second goes
    // on it, the server drops it, and the gateway sends it again on a new
    // connection.
    assert_eq!(raw(gw, "GET", "/api/public/one", &[], "").await.status, 200);
    let reply = raw(gw, "GET", "/api/public/two", &[], "").await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let targets: Vec<String> = upstream.seen().iter().map(|s| s.target.clone()).collect();
    assert_eq!(
        targets,
        ["/api/public/one", "/api/public/two", "/api/public/two"]
    );

    // A POST that meets the same fate is answered 502 and sent only once:
    // the server may have acted on it.
    let reply = raw(gw, "POST", "/api/public/three", &[], "{}").await;
    assert_eq!(reply.status, 502, "{:?}", reply.body);
    let posts = upstream
        .seen()
        .iter()
        .filter(|s| s.target == "/api/public/three")
        .count();
    assert_eq!(posts, 1, "a POST was sent twice");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sighup_applies_valid_files_and_refuses_invalid_ones_under_load() {
    let s = stack(&[]).await;
    let gw = s.gateway.addr();
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                while !stop.load(Ordering::Relaxed) {
                    match client
                        .get(format!("http://{gw}/api/public/load"))
                        .send()
                        .await
                    {
                        Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();

    let extra = "  - { prefix: /api/extra, upstream: tasks, access: public }\n";
    s.gateway
        .write_routes(&routes(s.auth.addr, &[s.tasks.addr], extra));
    s.gateway.child.signal("HUP");
    let applied = eventually(Duration::from_secs(5), async || {
        raw(gw, "GET", "/api/extra", &[], "").await.status == 200
    })
    .await;
    assert!(
        applied,
        "the valid file was not applied:\n{}",
        s.gateway.child.logs()
    );

    s.gateway.write_routes("routes: [this is not: valid");
    s.gateway.child.signal("HUP");
    let refused = eventually(Duration::from_secs(5), async || {
        s.gateway.child.logs().contains("reload refused")
    })
    .await;
    assert!(
        refused,
        "no log line for the invalid file:\n{}",
        s.gateway.child.logs()
    );
    assert_eq!(
        raw(gw, "GET", "/api/extra", &[], "").await.status,
        200,
        "the old table stopped serving"
    );

    // Keep the load on until it means something, however busy the machine.
    let enough = eventually(Duration::from_secs(20), async || {
        ok.load(Ordering::Relaxed) > 200
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    join_all(workers).await;
    assert!(enough, "the load never got going");
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during reloads"
    );
    assert_eq!(
        s.gateway
            .metric(r#"portcullis_config_reloads_total{result="applied"}"#)
            .await,
        1.0
    );
    assert_eq!(
        s.gateway
            .metric(r#"portcullis_config_reloads_total{result="rejected"}"#)
            .await,
        1.0
    );
}

#[test]
fn check_flag_validates_files_and_names_every_error() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/../routes.yaml");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["--check", "--config", shipped])
        .output()
        .expect("run");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let broken = dir.path().join("routes.yaml");
    std::fs::write(
        &broken,
        "auth:\n  verify_url: http://127.0.0.1:9001/api/verify\nupstreams:\n  tasks:\n    servers: [\"127.0.0.1:9101\"]\nroutes:\n  - prefix: /api/tasks\n    upstream: taks\n    access: protected\n  - prefix: /api/admin\n    upstream: tasks\n    access: public\n    roles: [admin]\n",
    )
    .expect("write");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["--check", "--config"])
        .arg(&broken)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("routes[0].upstream: unknown upstream \"taks\" at line 8"),
        "{stderr}"
    );
    assert!(
        stderr.contains("routes[1].roles: roles need access: protected at line 13"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_mode_checks_signatures_without_the_auth_service() {
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    let tasks = Upstream::start().await;
    let config = format!(
        "auth:\n  mode: local\nupstreams:\n  tasks:\n    servers: [\"{}\"]\nroutes:\n  - {{ prefix: /api/tasks, upstream: tasks, access: protected }}\n",
        tasks.addr
    );
    let gateway = Gateway::start(&config, &[("JWT_SECRET_KEY", support::SECRET)]);
    let gw = gateway.addr();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let sign = |alg: Algorithm, secret: &str, kind: &str| {
        let claims = serde_json::json!({"sub": "42", "exp": now + 60, "iat": now, "nbf": now, "jti": "j", "type": kind, "role": "user"});
        encode(
            &Header::new(alg),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("sign")
    };
    let good = sign(Algorithm::HS256, support::SECRET, "access");
    let reply = get_with_token(gw, "/api/tasks", &good).await;
    assert_eq!(reply.status, 200);
    assert_eq!(tasks.seen()[0].all("x-user-id"), vec!["42"]);
    let refused = [
        sign(
            Algorithm::HS256,
            "another-secret-another-secret-another-secret",
            "access",
        ),
        sign(Algorithm::HS512, support::SECRET, "access"),
        sign(Algorithm::HS256, support::SECRET, "refresh"),
        format!(
            "{}.{}.",
            "eyJhbGciOiJub25lIn0",
            good.split('.').nth(1).expect("payload")
        ),
    ];
    for token in refused {
        let reply = get_with_token(gw, "/api/tasks", &token).await;
        assert_eq!(reply.status, 401, "{token}");
    }
    assert_eq!(tasks.seen().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_are_authenticated_and_tunnelled_where_allowed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let db = TestDatabase::new().await;
    let auth = auth_service(&db, &[]);
    let tasks = Upstream::start().await;
    let extra = "  - { prefix: /api/ws, upstream: tasks, access: protected, websocket: true }\n";
    let gateway = Gateway::start(&routes(auth.addr, &[tasks.addr], extra), &[]);
    let gw = gateway.addr();
    let (token, user_id) = register(gw, "sockets@example.com").await;
    let upgrade = [
        ("upgrade", "websocket"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("sec-websocket-version", "13"),
    ];

    // Refused without a token, and on routes that do not allow upgrades.
    let anonymous = raw(gw, "GET", "/api/ws", &upgrade, "").await;
    assert_eq!(anonymous.status, 401);
    let mut on_plain_route = upgrade.to_vec();
    let auth_header = bearer(&token);
    on_plain_route.push(("authorization", &auth_header));
    let refused = raw(gw, "GET", "/api/tasks", &on_plain_route, "").await;
    assert_eq!(
        (refused.status, refused.code()),
        (400, "upgrade_not_allowed")
    );
    assert!(tasks.seen().is_empty());

    // Allowed: 101, the identity reaches the upstream, bytes flow both ways.
    let mut stream = tokio::net::TcpStream::connect(gw).await.expect("connect");
    let request = format!(
        "GET /api/ws HTTP/1.1\r\nhost: gateway.test\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\nauthorization: Bearer {token}\r\nx-user-id: 9999\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).await.expect("response head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream
        .write_all(b"ping through the tunnel")
        .await
        .expect("write");
    let mut echoed = [0u8; 23];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut echoed))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(&echoed, b"ping through the tunnel");
    let seen = tasks.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].all("x-user-id"), vec![user_id.to_string().as_str()]);
}

/// Whether bytes written to an open tunnel come back.
async fn echoes(stream: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if stream.write_all(b"tick").await.is_err() {
        return false;
    }
    let mut back = [0u8; 4];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut back)).await,
        Ok(Ok(_)) if &back == b"tick"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_token_may_come_as_a_subprotocol_never_reaches_the_upstream_and_lapses_at_exp()
{
    let db = TestDatabase::new().await;
    let auth = auth_service(&db, &["--access-ttl", "3"]);
    let tasks = Upstream::start().await;
    let extra = "  - { prefix: /api/ws, upstream: tasks, access: protected, websocket: true }\n";
    let gateway = Gateway::start(&routes(auth.addr, &[tasks.addr], extra), &[]);
    let gw = gateway.addr();
    let (token, user_id) = register(gw, "subprotocol@example.com").await;
    let exp = gateway::auth::peek_exp(&token).expect("exp");

    // Refused: a malformed token after `bearer`, `bearer` with nothing
    // after it, and a token in the URL, which is never read.
    for (path, protocols) in [
        ("/api/ws", "bearer, not-a-token".to_owned()),
        ("/api/ws", "bearer".to_owned()),
        (&*format!("/api/ws?access_token={token}"), "chat".to_owned()),
    ] {
        let (_, head) = open_upgrade(gw, path, &[("sec-websocket-protocol", &protocols)]).await;
        assert!(
            head.starts_with("HTTP/1.1 401"),
            "{path} {protocols}: {head}"
        );
    }
    assert!(tasks.seen().is_empty());

    // Accepted: the 101 names `bearer`, as browsers require; the upstream
    // sees the other subprotocols only, the identity, and when the token
    // expires (a client's own x-auth-expires is dropped).
    let offered = format!("chat, bearer, {token}");
    let (mut stream, head) = open_upgrade(
        gw,
        "/api/ws",
        &[
            ("sec-websocket-protocol", &offered),
            ("x-auth-expires", "99999999999"),
        ],
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-protocol: bearer\r\n"),
        "{head}"
    );
    assert!(echoes(&mut stream).await, "the tunnel carries bytes");
    let seen = tasks.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].all("sec-websocket-protocol"), vec!["chat"]);
    assert_eq!(seen[0].all("x-user-id"), vec![user_id.to_string().as_str()]);
    assert_eq!(
        seen[0].all("x-auth-expires"),
        vec![exp.to_string().as_str()]
    );
    assert!(seen[0].all("authorization").is_empty());
    assert!(
        !seen[0].headers.iter().any(|(_, v)| v.contains(&token)),
        "the token reached the upstream: {:?}",
        seen[0].headers
    );

    // The tunnel carries frames until the token's exp, and is cut at the
    // first one after it.
    let mut cut = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        if !echoes(&mut stream).await {
            assert!(now + 1 >= exp, "cut at {now}, before the token's exp {exp}");
            cut = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(cut, "the tunnel outlived its token");
    assert_eq!(
        gateway
            .metric("portcullis_websockets_cut_total{reason=\"expired\"}")
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_requests_finish() {
    let mut s = stack(&[]).await;
    let gw = s.gateway.addr();
    s.tasks.delay_ms.store(700, Ordering::SeqCst);
    let in_flight = tokio::spawn(async move { raw(gw, "GET", "/api/public/slow", &[], "").await });
    let arrived = eventually(Duration::from_secs(5), async || !s.tasks.seen().is_empty()).await;
    assert!(arrived);
    s.gateway.child.signal("TERM");
    let reply = in_flight.await.expect("join");
    assert_eq!(reply.status, 200, "the in-flight request was cut");
    let status = s
        .gateway
        .child
        .wait_exit(Duration::from_secs(15))
        .expect("exited within the grace period");
    assert!(status.success(), "{status:?}");
}

/// How one request went during a listener hand-over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    Ok,
    /// The connect was refused: the listener had a gap.
    Refused,
    /// Accepted, then closed before the request was read.
    ClosedUnread,
    /// Any other outcome (a status other than 200, a cut response).
    Failed,
}

async fn attempt(gw: std::net::SocketAddr) -> Attempt {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(gw).await else {
        return Attempt::Refused;
    };
    let request = b"GET /api/public/up HTTP/1.1\r\nhost: gateway.test\r\nconnection: close\r\n\r\n";
    if stream.write_all(request).await.is_err() {
        return Attempt::ClosedUnread;
    }
    let mut response = Vec::new();
    match tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await {
        Ok(Ok(_)) if response.is_empty() => Attempt::ClosedUnread,
        Ok(Ok(_)) if response.starts_with(b"HTTP/1.1 200") => Attempt::Ok,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset && response.is_empty() => {
            Attempt::ClosedUnread
        }
        _ => Attempt::Failed,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upgrade_hands_the_listener_over_without_refusing_a_connection() {
    let s = stack(&[]).await;
    let gw = s.gateway.addr();
    let stop = Arc::new(AtomicBool::new(false));
    let outcomes = Arc::new(std::sync::Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let (stop, outcomes) = (stop.clone(), outcomes.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    // A new connection each time, so that a gap in the
                    // listener would show as a refused connect.
                    let outcome = attempt(gw).await;
                    outcomes.lock().expect("lock").push(outcome);
                }
            })
        })
        .collect();

    // The new process waits on the upgrade socket for the old one's listeners.
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .arg("--config")
        .arg(&s.gateway.config)
        .args(["--listen", &gw.to_string(), "--threads", "2", "--upgrade"]);
    let new = std::thread::spawn(move || ChildService::start("gateway-new", command));
    let socket = s.gateway.upgrade_sock();
    let waiting = eventually(Duration::from_secs(10), async || socket.exists()).await;
    assert!(waiting, "the new process never opened the upgrade socket");
    let mut old = s.gateway.child;
    old.signal("QUIT");
    let new = new.join().expect("new gateway started");
    let old_status = old
        .wait_exit(Duration::from_secs(20))
        .expect("the old process exited");
    assert!(old_status.success(), "{old_status:?}");
    // The new process now serves alone.
    assert_eq!(
        raw(gw, "GET", "/api/public/after", &[], "").await.status,
        200
    );
    stop.store(true, Ordering::Relaxed);
    join_all(workers).await;

    let outcomes = outcomes.lock().expect("lock").clone();
    let count = |kind: Attempt| outcomes.iter().filter(|o| **o == kind).count();
    let summary = format!(
        "ok {}, refused {}, closed unread {}, failed {}\n{}",
        count(Attempt::Ok),
        count(Attempt::Refused),
        count(Attempt::ClosedUnread),
        count(Attempt::Failed),
        new.logs()
    );
    assert!(count(Attempt::Ok) > 100, "too little traffic: {summary}");
    assert_eq!(
        count(Attempt::Refused),
        0,
        "the listener had a gap: {summary}"
    );
    assert_eq!(count(Attempt::Failed), 0, "a request failed: {summary}");
    // Pingora closes connections that have not sent their request when the
    // old process starts draining; only the ones caught at that instant.
    assert!(
        count(Attempt::ClosedUnread) * 100 <= count(Attempt::Ok),
        "{summary}"
    );
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
async fn watch_applies_a_changed_file_without_a_signal() {
    let db = TestDatabase::new().await;
    let auth = auth_service(&db, &[]);
    let tasks = Upstream::start().await;
    let gateway = Gateway::start(
        &routes(auth.addr, &[tasks.addr], ""),
        &[("GATEWAY_WATCH", "true")],
    );
    let gw = gateway.addr();
    assert_eq!(raw(gw, "GET", "/api/watched", &[], "").await.status, 404);
    let extra = "  - { prefix: /api/watched, upstream: tasks, access: public }\n";
    gateway.write_routes(&routes(auth.addr, &[tasks.addr], extra));
    let applied = eventually(Duration::from_secs(5), async || {
        raw(gw, "GET", "/api/watched", &[], "").await.status == 200
    })
    .await;
    assert!(
        applied,
        "the changed file was not applied:\n{}",
        gateway.child.logs()
    );
    // A broken save is refused; the routes in force keep serving.
    gateway.write_routes("upstreams: {");
    let refused = eventually(Duration::from_secs(5), async || {
        gateway.child.logs().contains("reload refused")
    })
    .await;
    assert!(refused);
    assert_eq!(raw(gw, "GET", "/api/watched", &[], "").await.status, 200);
}

/// A verify endpoint that takes 200 ms to refuse every token, and records
/// how many calls it was serving at once.
async fn slow_refusing_verifier() -> (std::net::SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (now, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (now_, peak_) = (Arc::clone(&now), Arc::clone(&peak));
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (now, peak) = (Arc::clone(&now_), Arc::clone(&peak_));
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    // One request: headers, then Content-Length bytes.
                    let complete = |b: &[u8]| {
                        let text = String::from_utf8_lossy(b);
                        let (head, body) = text.split_once("\r\n\r\n")?;
                        let length = head
                            .lines()
                            .find_map(|l| {
                                let (name, value) = l.split_once(':')?;
                                name.eq_ignore_ascii_case("content-length")
                                    .then(|| value.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        (body.len() >= length).then_some(head.len() + 4 + length)
                    };
                    let used = loop {
                        if let Some(used) = complete(&buffer) {
                            break used;
                        }
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                        }
                    };
                    buffer.drain(..used);
                    let serving = now.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(serving, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    now.fetch_sub(1, Ordering::SeqCst);
                    let body = r#"{"error":{"code":"invalid_token","message":"no"}}"#;
                    let reply = format!(
                        "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if stream.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, now, peak)
}

/// A well-formed token nobody signed, unexpired by its own claim: the
/// gateway cannot refuse it without asking.
fn forged_token(n: usize) -> String {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 3600;
    format!(
        "{}.{}.{}",
        b64(r#"{"alg":"HS256","typ":"JWT"}"#),
        b64(&format!(r#"{{"sub":"{n}","exp":{exp},"type":"access"}}"#)),
        b64(&format!("forged-signature-{n}"))
    )
}

async fn get_tasks_with(gw: std::net::SocketAddr, authorization: &str) -> support::Reply {
    raw(
        gw,
        "GET",
        "/api/tasks",
        &[("authorization", authorization)],
        "",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_new_tokens_reaches_the_auth_service_at_most_max_in_flight_at_once() {
    let (verifier, _, peak) = slow_refusing_verifier().await;
    let tasks = Upstream::start().await;
    let config = routes(verifier, &[tasks.addr], "")
        .replace("  timeout: 1s\n", "  timeout: 5s\n  max_in_flight: 4\n");
    let gateway = Gateway::start(&config, &[]);
    let gw = gateway.addr();

    // 40 distinct tokens at once: 10 rounds of 4 calls of 200 ms fit in
    // the 5 s timeout, so every one gets its real answer.
    let tokens: Vec<String> = (0..40)
        .map(|n| format!("Bearer {}", forged_token(n)))
        .collect();
    let replies = join_all(tokens.iter().map(|t| get_tasks_with(gw, t))).await;
    let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    assert!(statuses.iter().all(|s| *s == 401), "{statuses:?}");
    assert_eq!(
        peak.load(Ordering::SeqCst),
        4,
        "the auth service saw more (or fewer) than max_in_flight calls at once"
    );
    assert!(tasks.seen().is_empty());

    // With the slots taken for longer than the timeout, the rest are
    // answered 503 within it instead of queueing without end.
    let tight = routes(verifier, &[tasks.addr], "")
        .replace("  timeout: 1s\n", "  timeout: 300ms\n  max_in_flight: 1\n");
    gateway.write_routes(&tight);
    gateway.child.signal("HUP");
    let reloaded = eventually(Duration::from_secs(5), async || {
        gateway
            .metric(r#"portcullis_config_reloads_total{result="applied"}"#)
            .await
            >= 1.0
    })
    .await;
    assert!(reloaded, "the gateway did not reload its routes");
    let tokens: Vec<String> = (100..106)
        .map(|n| format!("Bearer {}", forged_token(n)))
        .collect();
    let started = std::time::Instant::now();
    let replies = join_all(tokens.iter().map(|t| get_tasks_with(gw, t))).await;
    let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 401).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 503).count(),
        5,
        "{statuses:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "waiting for a slot outlived auth.timeout: {:?}",
        started.elapsed()
    );
    // Most waited the whole timeout for a slot; one that got a slot late
    // ran out of time during its call.
    let saturated = gateway
        .metric(r#"portcullis_verify_failures_total{reason="saturated"}"#)
        .await;
    let timed_out = gateway
        .metric(r#"portcullis_verify_failures_total{reason="timeout"}"#)
        .await;
    assert!(saturated >= 4.0, "saturated: {saturated}");
    assert_eq!(saturated + timed_out, 5.0);
}

/// Receives one datagram on a systemd-style notify socket.
fn notify_message(socket: &std::os::unix::net::UnixDatagram) -> String {
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut buffer = [0u8; 256];
    let n = socket.recv(&mut buffer).expect("a notify datagram");
    String::from_utf8_lossy(&buffer[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_is_told_which_process_serves_before_and_after_an_upgrade() {
    let db = TestDatabase::new().await;
    let auth = auth_service(&db, &[]);
    let tasks = Upstream::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&path).expect("bind");
    let notify = path.display().to_string();
    let gateway = Gateway::start(
        &routes(auth.addr, &[tasks.addr], ""),
        &[("NOTIFY_SOCKET", notify.as_str())],
    );
    let gw = gateway.addr();
    let first = notify_message(&socket);
    assert!(first.contains("READY=1\n"), "{first:?}");
    assert!(
        first.contains(&format!("MAINPID={}\n", gateway.child.pid())),
        "{first:?}"
    );

    // What the systemd unit's reload does: a new process with --upgrade,
    // then SIGQUIT to the old one.
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("NOTIFY_SOCKET", &notify)
        .arg("--config")
        .arg(&gateway.config)
        .args(["--listen", &gw.to_string(), "--threads", "1", "--upgrade"]);
    let new = std::thread::spawn(move || ChildService::start("gateway-new", command));
    let sock = gateway.upgrade_sock();
    let waiting = eventually(Duration::from_secs(10), async || sock.exists()).await;
    assert!(waiting, "the new process never opened the upgrade socket");
    let mut old = gateway.child;
    old.signal("QUIT");
    let new = new.join().expect("new gateway");
    let second = notify_message(&socket);
    assert!(
        second.contains(&format!("MAINPID={}\n", new.pid())),
        "the new process did not name itself: {second:?}"
    );
    let old_status = old
        .wait_exit(Duration::from_secs(20))
        .expect("the old process exited");
    assert!(old_status.success(), "{old_status:?}");
    assert_eq!(raw(gw, "GET", "/api/public/x", &[], "").await.status, 200);
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_if_error_serves_a_recent_grant_within_its_bound_and_nothing_else() {
    let db = TestDatabase::new().await;
    let mut auth = auth_service(&db, &[]);
    let tasks = Upstream::start().await;
    let extra =
        "  - { prefix: /api/steady, upstream: tasks, access: protected, stale_if_error: 2s }\n";
    let config = routes(auth.addr, &[tasks.addr], extra).replace("cache_ttl: 30s", "cache_ttl: 1s");
    let gateway = Gateway::start(&config, &[]);
    let gw = gateway.addr();
    let (token, _) = register(gw, "stale@example.com").await;
    let (unseen, _) = register(gw, "unseen@example.com").await;
    let get = async |path: &str, token: &str| get_with_token(gw, path, token).await.status;
    assert_eq!(get("/api/steady/1", &token).await, 200);
    assert_eq!(get("/api/steady/1", &forged_token(1)).await, 401);

    // The auth service goes away. Once the cached grant has ended, a route
    // without stale-if-error answers 503…
    auth.kill();
    let ended = eventually(Duration::from_secs(5), async || {
        get("/api/tasks", &token).await == 503
    })
    .await;
    assert!(ended, "the grant never ended");
    let grant_ended = std::time::Instant::now();
    // …while this one still serves the grant it had, and only that: not a
    // token it never saw, not a refusal it once gave.
    assert_eq!(get("/api/steady/2", &token).await, 200);
    assert_eq!(get("/api/steady/2", &unseen).await, 503);
    assert!(gateway.metric("portcullis_verify_stale_total").await >= 1.0);

    // Past the allowance, it refuses too.
    let refused = eventually(Duration::from_secs(6), async || {
        get("/api/steady/3", &token).await == 503
    })
    .await;
    assert!(refused, "a stale grant was served past its allowance");
    let served_for = grant_ended.elapsed();
    assert!(
        served_for >= Duration::from_millis(1500),
        "refused after {served_for:?}, before the 2 s allowance"
    );
    // The refusal once cached is not kept past its own TTL either.
    assert_eq!(get("/api/steady/4", &forged_token(1)).await, 503);
    let seen: Vec<String> = tasks.seen().iter().map(|s| s.target.clone()).collect();
    assert!(seen.contains(&"/api/steady/2".to_owned()));
    assert!(!seen.contains(&"/api/steady/4".to_owned()));
}
