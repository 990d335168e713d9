//! The real `auth-service` binary as a process: start-up, configuration
//! errors, `create-admin` and graceful shutdown.

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
async fn refuses_to_start_without_a_strong_secret() {
    let db = TestDatabase::new().await;
    for (secret, expected) in [
        (None, "JWT_SECRET_KEY is not set"),
        (Some("too-short"), "at least 32"),
    ] {
        let mut command = command(&db);
        command.args(["--listen", "127.0.0.1:0"]);
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
    let service = start(&db, None, &["--dev"]);
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
