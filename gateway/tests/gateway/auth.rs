//! Protected routes: identity headers, path tricks, the verdict cache,
//! expiry, the auth service down, local verification, floods of new tokens,
//! stale-if-error.

use crate::support::*;
use futures::future::join_all;
use service_kit::testing::TestDatabase;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

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
    assert_eq!(request.method, "GET");
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
    let identity_lines = |request: &crate::support::Seen| -> Vec<(String, String)> {
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
    // No leeway past `exp` (the default allows the auth service's 15 s).
    let db = TestDatabase::new().await;
    let auth = auth_service(&db, &["--access-ttl", "2"]);
    let tasks = Upstream::start().await;
    let routes =
        routes(auth.addr, &[tasks.addr], "").replacen("auth:\n", "auth:\n  leeway: 0s\n", 1);
    let s = Stack {
        _db: db,
        auth,
        tasks,
        gateway: Gateway::start(&routes, &[]),
    };
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
async fn local_mode_checks_signatures_without_the_auth_service() {
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    let tasks = Upstream::start().await;
    let config = format!(
        "auth:\n  mode: local\nupstreams:\n  tasks:\n    servers: [\"{}\"]\nroutes:\n  - {{ prefix: /api/tasks, upstream: tasks, access: protected }}\n",
        tasks.addr
    );
    let gateway = Gateway::start(&config, &[("JWT_SECRET_KEY", crate::support::SECRET)]);
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
    let good = sign(Algorithm::HS256, crate::support::SECRET, "access");
    let reply = get_with_token(gw, "/api/tasks", &good).await;
    assert_eq!(reply.status, 200);
    assert_eq!(tasks.seen()[0].all("x-user-id"), vec!["42"]);
    let refused = [
        sign(
            Algorithm::HS256,
            "another-secret-another-secret-another-secret",
            "access",
        ),
        sign(Algorithm::HS512, crate::support::SECRET, "access"),
        sign(Algorithm::HS256, crate::support::SECRET, "refresh"),
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

async fn get_tasks_with(gw: std::net::SocketAddr, authorization: &str) -> crate::support::Reply {
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
