//! Instant revocation across gateways: two gateway processes and the auth
//! service share the real Redis at 127.0.0.1:6379; a logout or a disabled
//! account is refused by both gateways within a second, however long their
//! cache TTL (30 s here).

use crate::support::{Gateway, Upstream, auth_service, raw, register, routes};
use service_kit::testing::TestDatabase;
use std::time::{Duration, Instant};

const REDIS: &str = "redis://127.0.0.1:6379";

fn channel() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    format!("test-gateway-revocations-{:x}", hasher.finish())
}

async fn status(gw: std::net::SocketAddr, token: &str) -> u16 {
    let auth = format!("Bearer {token}");
    raw(
        gw,
        "GET",
        "/api/tasks",
        &[("authorization", auth.as_str())],
        "",
    )
    .await
    .status
}

/// How long until `token` is refused by `gw`, polling every 10 ms for at
/// most `limit`.
async fn refused_after(
    gw: std::net::SocketAddr,
    token: &str,
    since: Instant,
    limit: Duration,
) -> Option<Duration> {
    while since.elapsed() < limit {
        if status(gw, token).await == 401 {
            return Some(since.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

/// An admin account, made with the auth service's own command.
fn create_admin(db: &TestDatabase, email: &str) {
    use std::io::Write;
    let mut child =
        std::process::Command::new(service_kit::testing::workspace_binary("auth-service"))
            .args(["create-admin", "--email", email])
            .env("DATABASE_URL", &db.url)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("run create-admin");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"a long password\n")
        .expect("password");
    assert!(child.wait().expect("create-admin").success());
}

/// Signs in through the gateway: (access, refresh).
async fn login_pair(gw: std::net::SocketAddr, email: &str) -> (String, String) {
    let body = serde_json::json!({"email": email, "password": "a long password"}).to_string();
    let reply = raw(
        gw,
        "POST",
        "/api/auth/login",
        &[("content-type", "application/json")],
        &body,
    )
    .await;
    assert_eq!(reply.status, 200, "login {email}: {:?}", reply.body);
    (
        reply.body["access"].as_str().expect("access").to_owned(),
        reply.body["refresh"].as_str().expect("refresh").to_owned(),
    )
}

async fn login(gw: std::net::SocketAddr, email: &str) -> String {
    login_pair(gw, email).await.0
}

async fn subscribed(gateway: &Gateway) -> bool {
    crate::support::eventually(Duration::from_secs(10), async || {
        gateway.metric("portcullis_revocation_subscribed").await == 1.0
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_or_a_disabled_account_is_refused_by_every_gateway_within_a_second() {
    let channel = channel();
    let db = TestDatabase::new().await;
    let auth = auth_service(
        &db,
        &["--redis-url", REDIS, "--revocation-channel", &channel],
    );
    let tasks = Upstream::start().await;
    // Logout and the auth service's own admin API, beside the usual routes.
    let extra = "  - { prefix: /api/auth/logout, upstream: auth, access: public, methods: [POST], rewrite: /api/logout }\n  - { prefix: /api/accounts, upstream: auth, access: protected, roles: [admin], rewrite: /api/admin/users }\n";
    let config = routes(auth.addr, &[tasks.addr], extra);
    let env = [
        ("REDIS_URL", REDIS),
        ("REVOCATION_CHANNEL", channel.as_str()),
    ];
    let (one, two) = (Gateway::start(&config, &env), Gateway::start(&config, &env));
    assert!(
        subscribed(&one).await && subscribed(&two).await,
        "not subscribed"
    );
    let (gw1, gw2) = (one.addr(), two.addr());

    let (alice, _) = register(gw1, "alice@example.com").await;
    let (bob, _) = register(gw1, "bob@example.com").await;
    for gw in [gw1, gw2] {
        assert_eq!(status(gw, &alice).await, 200);
        assert_eq!(status(gw, &bob).await, 200);
    }

    // Alice logs out (through the gateway, as the page does).
    let (session, refresh) = login_pair(gw1, "alice@example.com").await;
    for gw in [gw1, gw2] {
        assert_eq!(status(gw, &session).await, 200, "cached before the logout");
    }
    let since = Instant::now();
    let logout = raw(
        gw2,
        "POST",
        "/api/auth/logout",
        &[("content-type", "application/json")],
        &format!(r#"{{"refresh":"{refresh}"}}"#),
    )
    .await;
    assert_eq!(logout.status, 204);
    for gw in [gw1, gw2] {
        let delay = refused_after(gw, &session, since, Duration::from_secs(1)).await;
        assert!(
            delay.is_some(),
            "{gw} still accepts the logged-out session after 1 s"
        );
    }
    // Her other session and bob are unaffected: they are verified again
    // and still allowed.
    for gw in [gw1, gw2] {
        assert_eq!(status(gw, &alice).await, 200);
        assert_eq!(status(gw, &bob).await, 200);
    }
    assert!(one.metric("portcullis_revocations_total").await >= 1.0);
    assert!(one.metric("portcullis_revoked_entries_total").await >= 2.0);

    // An admin disables bob: refused everywhere within a second.
    create_admin(&db, "root@example.com");
    let root = login(gw1, "root@example.com").await;
    let bob_id = raw(
        gw1,
        "GET",
        "/api/auth/me",
        &[("authorization", &format!("Bearer {bob}"))],
        "",
    )
    .await
    .body["user_id"]
        .as_i64()
        .expect("bob's id");
    let since = Instant::now();
    let disable = raw(
        gw1,
        "PATCH",
        &format!("/api/accounts/{bob_id}"),
        &[
            ("authorization", &format!("Bearer {root}")),
            ("content-type", "application/json"),
        ],
        r#"{"active":false}"#,
    )
    .await;
    assert_eq!(disable.status, 200, "{:?}", disable.body);
    for gw in [gw1, gw2] {
        let delay = refused_after(gw, &bob, since, Duration::from_secs(1)).await;
        assert!(
            delay.is_some(),
            "{gw} still accepts a disabled user after 1 s"
        );
    }
    assert_eq!(
        status(gw2, &alice).await,
        200,
        "alice was caught up in bob's revocation"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_the_gateway_serves_and_says_it_is_not_subscribed() {
    let db = TestDatabase::new().await;
    let auth = auth_service(&db, &[]);
    let tasks = Upstream::start().await;
    let config = routes(auth.addr, &[tasks.addr], "");
    // Nothing listens on port 1.
    let gateway = Gateway::start(&config, &[("REDIS_URL", "redis://127.0.0.1:1")]);
    let (token, _) = register(gateway.addr(), "dora@example.com").await;
    assert_eq!(status(gateway.addr(), &token).await, 200);
    assert_eq!(status(gateway.addr(), &token).await, 200);
    assert_eq!(
        gateway.metric("portcullis_revocation_subscribed").await,
        0.0
    );
}

#[test]
fn an_admin_listener_never_runs_without_a_real_token() {
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("routes.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:0\nserver:\n  admin_listen: 127.0.0.1:0\n  upgrade_sock: {}\nauth: {{ mode: local }}\nupstreams: {{}}\nroutes: []\n",
            dir.path().join("u.sock").display()
        ),
    )
    .expect("write");
    // A token too short to be one: refused at start.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .env_clear()
        .env("JWT_SECRET_KEY", "0123456789abcdef0123456789abcdef")
        .env("GATEWAY_ADMIN_TOKEN", "short")
        .arg("--config")
        .arg(&config)
        .output()
        .expect("run gateway");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("server.admin_listen needs GATEWAY_ADMIN_TOKEN (at least 32 characters)"),
        "{stderr}"
    );

    // No token at all (the shipped file, run as it comes): the gateway
    // serves, says why the admin listener is off, and never opens it.
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"));
    command
        .env_clear()
        .env("JWT_SECRET_KEY", "0123456789abcdef0123456789abcdef")
        .arg("--config")
        .arg(&config);
    let gateway = service_kit::testing::ChildService::start("gateway", command);
    let notice = "server.admin_listen (127.0.0.1:0) is off: it needs GATEWAY_ADMIN_TOKEN";
    // stderr is collected beside stdout; give it a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !gateway.logs().contains(notice) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let logs = gateway.logs();
    assert!(logs.contains(notice), "{logs}");
    assert!(!logs.contains("admin on"), "{logs}");
}

/// Logs out through the gateway on one connection and, the instant the
/// 204's head is read, sends a request with the same session's access
/// token on another connection already open. Returns that request's status.
async fn use_right_after_logout(gw: std::net::SocketAddr, access: &str, refresh: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = format!(r#"{{"refresh":"{refresh}"}}"#);
    let logout = format!(
        "POST /api/auth/logout HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let request = format!(
        "GET /api/tasks HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {access}\r\nconnection: close\r\n\r\n"
    );
    let mut first = tokio::net::TcpStream::connect(gw).await.expect("connect");
    let mut second = tokio::net::TcpStream::connect(gw).await.expect("connect");
    first.set_nodelay(true).expect("nodelay");
    second.set_nodelay(true).expect("nodelay");
    first.write_all(logout.as_bytes()).await.expect("logout");
    let mut head = Vec::new();
    let mut byte = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = first.read(&mut byte).await.expect("read");
        assert!(n > 0, "no answer to the logout");
        head.extend_from_slice(&byte[..n]);
    }
    second.write_all(request.as_bytes()).await.expect("send");
    assert!(
        head.starts_with(b"HTTP/1.1 204"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let mut answer = Vec::new();
    second.read_to_end(&mut answer).await.expect("read");
    String::from_utf8_lossy(&answer)
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status")
}

/// The logout race, 200 times: the logged-out session's cached access
/// token is used the instant the 204 arrives. Never served, whether the
/// revocation travels through the admin listener or through Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_used_the_instant_its_logout_is_answered_is_never_served() {
    let token = "a-test-admin-token-that-is-long-enough-0123456789";
    let admin = format!("127.0.0.1:{}", service_kit::testing::unused_port());
    let channel = channel();
    for mode in ["admin listener", "redis"] {
        let db = TestDatabase::new().await;
        let mut command =
            std::process::Command::new(service_kit::testing::workspace_binary("auth-service"));
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("JWT_SECRET_KEY", crate::support::SECRET)
            .env("DATABASE_URL", &db.url)
            .env("GATEWAY_ADMIN_TOKEN", token)
            .args(["--listen", "127.0.0.1:0"]);
        let env: Vec<(&str, &str)> = if mode == "redis" {
            command.args(["--redis-url", REDIS, "--revocation-channel", &channel]);
            vec![
                ("REDIS_URL", REDIS),
                ("REVOCATION_CHANNEL", channel.as_str()),
            ]
        } else {
            command.args([
                "--revocation-webhook",
                &format!("http://{admin}/revocations"),
            ]);
            vec![
                ("GATEWAY_ADMIN_LISTEN", admin.as_str()),
                ("GATEWAY_ADMIN_TOKEN", token),
            ]
        };
        let auth = service_kit::testing::ChildService::start("auth-service", command);
        let tasks = Upstream::start().await;
        let extra = "  - { prefix: /api/auth/logout, upstream: auth, access: public, methods: [POST], rewrite: /api/logout }\n";
        let gateway = Gateway::start(&routes(auth.addr, &[tasks.addr], extra), &env);
        if mode == "redis" {
            assert!(subscribed(&gateway).await, "not subscribed");
        }
        let gw = gateway.addr();
        register(gw, "racer@example.com").await;
        let mut served = 0;
        for _ in 0..200 {
            let (access, refresh) = login_pair(gw, "racer@example.com").await;
            assert_eq!(
                status(gw, &access).await,
                200,
                "not cached before the logout"
            );
            if use_right_after_logout(gw, &access, &refresh).await != 401 {
                served += 1;
            }
        }
        assert_eq!(
            served,
            0,
            "{mode}: {served} of 200 requests were served after the logout was answered\n{}",
            auth.logs()
        );
        let delivered = service_kit::testing::ChildService::logs(&auth);
        assert!(!delivered.contains("revocation not taken"), "{delivered}");
    }
}
