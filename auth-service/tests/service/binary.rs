//! The real `auth-service` binary as a process: start-up, configuration
//! errors, `create-admin`, the key ring (`keys rotate`, `keys list`, the
//! JWKS) and graceful shutdown.

use serde_json::{Value, json};
use service_kit::testing::{ChildService, TestDatabase};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

const SECRET: &str = "binary-test-secret-binary-test-secret-42";
const BIN: &str = env!("CARGO_BIN_EXE_auth-service");

/// The binary with a clean environment: nothing from the developer's shell
/// (DATABASE_URL, JWT_* …) leaks into what is being tested.
fn command(db: &TestDatabase) -> Command {
    let mut command = Command::new(BIN);
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .env("DATABASE_URL", &db.url);
    command
}

fn start(db: &TestDatabase, secret: Option<&str>, extra: &[&str]) -> ChildService {
    let mut command = command(db);
    command.args(["--listen", "127.0.0.1:0"]).args(extra);
    if let Some(secret) = secret {
        command.env("JWT_SECRET_KEY", secret);
    }
    ChildService::start("auth-service", command)
}

async fn post(client: &reqwest::Client, url: String, body: Value) -> (u16, Value) {
    let response = client.post(url).json(&body).send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn serves_on_an_ephemeral_port() {
    let db = TestDatabase::new().await;
    let service = start(&db, Some(SECRET), &[]);
    assert_ne!(service.addr.port(), 0);
    let client = reqwest::Client::new();

    let health = client
        .get(service.url("/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);

    let credentials = json!({"email": "zoe@example.com", "password": "a long password"});
    let (status, tokens) = post(&client, service.url("/api/register"), credentials.clone()).await;
    assert_eq!(status, 201, "{tokens}");
    let (status, _) = post(&client, service.url("/api/login"), credentials).await;
    assert_eq!(status, 200);
    let (status, identity) = post(
        &client,
        service.url("/api/verify"),
        json!({"access": tokens["access"]}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(identity["user_id"], tokens["user_id"]);

    let logs = service.logs();
    assert!(
        !logs.contains("a long password"),
        "a password reached the log:\n{logs}"
    );
    let access = tokens["access"].as_str().expect("token");
    assert!(!logs.contains(access), "a token reached the log:\n{logs}");
}

#[tokio::test]
async fn hs256_refuses_to_start_without_a_strong_secret() {
    let db = TestDatabase::new().await;
    for (secret, expected) in [
        (None, "JWT_SECRET_KEY is not set"),
        (Some("too-short"), "at least 32"),
    ] {
        let mut command = command(&db);
        command.args(["--listen", "127.0.0.1:0", "--signing-algorithm", "HS256"]);
        if let Some(secret) = secret {
            command.env("JWT_SECRET_KEY", secret);
        }
        let output = command.output().expect("run");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "started with secret {secret:?}");
        assert!(stderr.contains(expected), "stderr: {stderr}");
        assert!(!stderr.contains("panicked"), "stderr: {stderr}");
    }
}

#[tokio::test]
async fn dev_mode_generates_a_secret_and_says_so() {
    let db = TestDatabase::new().await;
    let service = start(&db, None, &["--dev", "--signing-algorithm", "HS256"]);
    let health = reqwest::get(service.url("/healthz"))
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);
    assert!(
        service.logs().contains("random development secret"),
        "{}",
        service.logs()
    );
}

#[tokio::test]
async fn unusable_database_url_is_one_clear_line() {
    let mut command = Command::new(BIN);
    command.env_clear().env("JWT_SECRET_KEY", SECRET).args([
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        "mysql://root:hunter2@localhost/db",
    ]);
    let output = command.output().expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("unsupported database URL"),
        "stderr: {stderr}"
    );
    assert!(
        !stderr.contains("hunter2"),
        "the URL's password was printed: {stderr}"
    );
}

#[tokio::test]
async fn create_admin_bootstraps_an_administrator() {
    let db = TestDatabase::new().await;
    let run_create_admin = |password: &str| {
        let mut child = command(&db)
            .args(["create-admin", "--email", "Admin@Example.com"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(format!("{password}\n").as_bytes())
            .expect("write password");
        child.wait_with_output().expect("wait")
    };
    let output = run_create_admin("first admin password");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("created admin user"));
    // Running it again promotes and resets the password instead of failing.
    let output = run_create_admin("second admin password");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("promoted user"));
    let output = run_create_admin("short");
    assert!(!output.status.success());

    let service = start(&db, Some(SECRET), &[]);
    let client = reqwest::Client::new();
    let (status, _) = post(
        &client,
        service.url("/api/login"),
        json!({"email": "admin@example.com", "password": "first admin password"}),
    )
    .await;
    assert_eq!(status, 401, "the password was reset by the second run");
    let (status, tokens) = post(
        &client,
        service.url("/api/login"),
        json!({"email": "admin@example.com", "password": "second admin password"}),
    )
    .await;
    assert_eq!(status, 200, "{tokens}");
    let (_, identity) = post(
        &client,
        service.url("/api/verify"),
        json!({"access": tokens["access"]}),
    )
    .await;
    assert_eq!(identity["role"], "admin");
    let list = client
        .get(service.url("/api/admin/users"))
        .header("x-user-id", tokens["user_id"].to_string())
        .send()
        .await
        .expect("list");
    assert_eq!(list.status(), 200);
}

#[tokio::test]
async fn sigterm_shuts_down_cleanly() {
    let db = TestDatabase::new().await;
    let mut service = start(&db, Some(SECRET), &[]);
    assert_eq!(
        reqwest::get(service.url("/healthz"))
            .await
            .expect("healthz")
            .status(),
        200
    );
    service.signal("TERM");
    let status = service
        .wait_exit(Duration::from_secs(10))
        .expect("exited after SIGTERM");
    assert!(status.success(), "{status:?}");
}

async fn jwks(client: &reqwest::Client, service: &ChildService) -> (Vec<String>, String) {
    let response = client
        .get(service.url("/.well-known/jwks.json"))
        .send()
        .await
        .expect("jwks");
    assert_eq!(response.status(), 200);
    let cache_control = response
        .headers()
        .get("cache-control")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body: Value = response.json().await.expect("json");
    let kids = body["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| {
            assert!(k.get("d").is_none(), "a private part published: {k}");
            k["kid"].as_str().expect("kid").to_string()
        })
        .collect();
    (kids, cache_control)
}

fn kid_of(token: &str) -> String {
    use base64::Engine;
    let header = token.split('.').next().expect("header");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .expect("base64");
    let header: Value = serde_json::from_slice(&bytes).expect("json");
    assert_eq!(header["alg"], "EdDSA");
    header["kid"].as_str().expect("kid").to_string()
}

/// `auth-service keys ARGS`, with the service's own JWKS max-age (2 s).
fn keys_command(db: &TestDatabase, args: &[&str]) -> String {
    let output = command(db)
        .env("JWKS_MAX_AGE", "2")
        .arg("keys")
        .args(args)
        .output()
        .expect("keys");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "keys {args:?}: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// A new install signs with Ed25519 and needs no secret; `keys rotate`
/// publishes the next key at once, signs with it only after the JWKS
/// max-age (and the ring's reload), and the old key keeps verifying.
#[tokio::test]
async fn a_rotated_key_is_published_before_it_signs_and_the_old_one_keeps_verifying() {
    let db = TestDatabase::new().await;
    let service = start(&db, None, &["--jwks-max-age", "2"]);
    let client = reqwest::Client::new();
    let (first, cache_control) = jwks(&client, &service).await;
    assert_eq!(first.len(), 1, "one key on a new install");
    assert_eq!(cache_control, "public, max-age=2");

    let credentials = json!({"email": "kim@example.com", "password": "a long password"});
    let (status, old) = post(&client, service.url("/api/register"), credentials.clone()).await;
    assert_eq!(status, 201, "{old}");
    assert_eq!(kid_of(old["access"].as_str().expect("access")), first[0]);

    let rotated = keys_command(&db, &["rotate"]);
    assert!(rotated.contains("signing from"), "{rotated}");
    let listing = keys_command(&db, &["list"]);
    assert!(
        listing.contains("pending") && listing.contains("signing"),
        "{listing}"
    );

    // Published within the ring's reload (5 s), still not signing.
    let deadline = std::time::Instant::now() + Duration::from_secs(8);
    let next = loop {
        let (kids, _) = jwks(&client, &service).await;
        if kids.len() == 2 {
            break kids.into_iter().find(|k| *k != first[0]).expect("new kid");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new key was never published"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (_, early) = post(&client, service.url("/api/login"), credentials.clone()).await;
    assert_eq!(
        kid_of(early["access"].as_str().expect("access")),
        first[0],
        "a key signed before its publication lead was over"
    );

    // Signing after max-age + reload (7 s from the rotation).
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let fresh = loop {
        let (_, tokens) = post(&client, service.url("/api/login"), credentials.clone()).await;
        let access = tokens["access"].as_str().expect("access").to_string();
        if kid_of(&access) == next {
            break tokens;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the new key never signed"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    for tokens in [&old, &fresh] {
        let (status, identity) = post(
            &client,
            service.url("/api/verify"),
            json!({"access": tokens["access"]}),
        )
        .await;
        assert_eq!(status, 200, "{identity}");
    }
    // The old refresh token (signed by the old key) still refreshes.
    let (status, _) = post(
        &client,
        service.url("/api/refresh"),
        json!({"refresh": old["refresh"]}),
    )
    .await;
    assert_eq!(status, 200);
    let listing = keys_command(&db, &["list"]);
    assert!(listing.contains("verifying until"), "{listing}");
}

#[tokio::test]
async fn rotating_an_hs256_service_is_refused_with_the_reason() {
    let db = TestDatabase::new().await;
    let output = command(&db)
        .env("JWT_SECRET_KEY", SECRET)
        .args(["--signing-algorithm", "HS256", "keys", "rotate"])
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("no key ring to rotate"), "{stderr}");
}
