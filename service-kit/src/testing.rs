//! A fresh, isolated database for each test.
//!
//! Without `TEST_DATABASE_URL` a test gets an SQLite file in its own
//! temporary directory. With `TEST_DATABASE_URL=postgres://…` it gets a new
//! schema in that database, selected through the connection's
//! `search_path`, so concurrent tests and repeated runs never see each
//! other's rows; the schema is dropped when the test ends.

use std::time::{SystemTime, UNIX_EPOCH};

pub const TEST_DATABASE_URL: &str = "TEST_DATABASE_URL";

pub struct TestDatabase {
    /// The URL to give the service under test.
    pub url: String,
    cleanup: Cleanup,
}

enum Cleanup {
    /// Removed when dropped.
    Directory {
        _dir: tempfile::TempDir,
    },
    Schema {
        admin_url: String,
        schema: String,
    },
}

fn unique_name() -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!(
        "t_{}_{}_{}",
        std::process::id(),
        nanos % 1_000_000_000_000,
        n
    )
}

impl TestDatabase {
    /// Whether tests run against PostgreSQL in this process.
    pub fn is_postgres() -> bool {
        std::env::var(TEST_DATABASE_URL).is_ok_and(|u| u.starts_with("postgres"))
    }

    pub async fn new() -> Self {
        match std::env::var(TEST_DATABASE_URL) {
            Ok(admin_url) if admin_url.starts_with("postgres") => {
                use sqlx::Connection;
                let schema = unique_name();
                let mut conn = sqlx::PgConnection::connect(&admin_url)
                    .await
                    .unwrap_or_else(|e| panic!("{TEST_DATABASE_URL} is set but unreachable: {e}"));
                sqlx::query(&format!("CREATE SCHEMA {schema}"))
                    .execute(&mut conn)
                    .await
                    .expect("create test schema");
                let _ = conn.close().await;
                let separator = if admin_url.contains('?') { '&' } else { '?' };
                let url = format!("{admin_url}{separator}options=-c%20search_path%3D{schema}");
                TestDatabase {
                    url,
                    cleanup: Cleanup::Schema { admin_url, schema },
                }
            }
            _ => {
                let dir = tempfile::tempdir().expect("temporary directory");
                let url = format!("sqlite://{}", dir.path().join("test.db").display());
                TestDatabase {
                    url,
                    cleanup: Cleanup::Directory { _dir: dir },
                }
            }
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Cleanup::Schema { admin_url, schema } = &self.cleanup {
            drop_schemas(admin_url, std::slice::from_ref(schema));
        }
    }
}

/// Drops PostgreSQL schemas (and everything in them), ignoring failures.
/// Safe to call from `Drop` inside a test's runtime, which cannot be
/// blocked on: a short-lived thread with its own runtime does the work.
pub fn drop_schemas(admin_url: &str, schemas: &[String]) {
    let (admin_url, schemas) = (admin_url.to_owned(), schemas.to_vec());
    let _ = std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        runtime.block_on(async {
            use sqlx::Connection;
            if let Ok(mut conn) = sqlx::PgConnection::connect(&admin_url).await {
                for schema in &schemas {
                    let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                        .execute(&mut conn)
                        .await;
                }
                let _ = conn.close().await;
            }
        });
    })
    .join();
}

/// A service binary running as a child process for a test.
///
/// Started with `--listen 127.0.0.1:0`, it is ready once it prints
/// `listening on ADDR`; the harness waits for that line rather than
/// sleeping. The child is killed when this is dropped, and its output is
/// printed if the test is failing, so a red test shows what the service said.
pub struct ChildService {
    name: String,
    child: std::process::Child,
    pub addr: std::net::SocketAddr,
    logs: std::sync::Arc<std::sync::Mutex<String>>,
}

/// How long a service may take to print its `listening on` line.
const START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

fn collect(
    name: String,
    stream: impl std::io::Read + Send + 'static,
    logs: std::sync::Arc<std::sync::Mutex<String>>,
    ready: Option<(std::sync::mpsc::Sender<std::net::SocketAddr>, &'static str)>,
) {
    use std::io::BufRead;
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stream)
            .lines()
            .map_while(Result::ok)
        {
            if let Some((tx, marker)) = &ready
                && let Some(addr) = ready_address(&line, marker)
            {
                let _ = tx.send(addr);
            }
            if let Ok(mut logs) = logs.lock() {
                logs.push_str(&format!("[{name}] {line}\n"));
            }
        }
    });
}

/// The address that follows `marker` in `line`, up to a space or comma.
fn ready_address(line: &str, marker: &str) -> Option<std::net::SocketAddr> {
    let (_, rest) = line.split_once(marker)?;
    let addr = rest.split([' ', ',']).next()?;
    addr.trim().parse().ok()
}

impl ChildService {
    /// Spawns `command` (stdout and stderr are captured) and waits for its
    /// `listening on` line. Panics with the child's output if it exits or
    /// stays silent instead.
    pub fn start(name: &str, command: std::process::Command) -> Self {
        Self::start_until(name, command, "listening on ")
    }

    /// Like [`ChildService::start`], ready once a stdout line contains
    /// `marker` followed by the address it serves.
    pub fn start_until(
        name: &str,
        mut command: std::process::Command,
        marker: &'static str,
    ) -> Self {
        use std::process::Stdio;
        let logs = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let (tx, rx) = std::sync::mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            collect(name.to_owned(), stdout, logs.clone(), Some((tx, marker)));
        }
        if let Some(stderr) = child.stderr.take() {
            collect(name.to_owned(), stderr, logs.clone(), None);
        }
        let addr = match rx.recv_timeout(START_TIMEOUT) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().ok();
                let output = logs.lock().map(|l| l.clone()).unwrap_or_default();
                panic!("{name} did not start (exit: {status:?}); its output:\n{output}");
            }
        };
        ChildService {
            name: name.to_owned(),
            child,
            addr,
            logs,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn logs(&self) -> String {
        self.logs.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Sends `signal` (e.g. "TERM", "HUP") to the child.
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits up to `timeout` for the child to exit, returning its status.
    pub fn wait_exit(&mut self, timeout: std::time::Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Kills the child now.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildService {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("----- output of {} -----\n{}", self.name, self.logs());
        }
    }
}

/// A binary of this workspace, from the target directory the running test
/// was built into. `cargo test --workspace` builds every binary first.
pub fn workspace_binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(std::path::Path::parent)
        .expect("target directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build -p {name}` (`cargo test --workspace` does)",
        path.display()
    );
    path
}

impl ChildService {
    /// The rest of the first output line that starts with `prefix`.
    pub fn output_line(&self, prefix: &str) -> Option<String> {
        let tag = format!("[{}] {prefix}", self.name);
        self.logs()
            .lines()
            .find_map(|line| line.strip_prefix(&tag).map(str::to_owned))
    }

    /// Waits (up to the start timeout) for an output line starting with
    /// `prefix` and returns the rest of it.
    pub fn wait_for_output(&mut self, prefix: &str) -> String {
        self.wait_for(prefix, |child| child.output_line(prefix))
    }

    /// Waits (up to the start timeout) until the child's output contains
    /// `needle` anywhere.
    pub fn wait_for_text(&mut self, needle: &str) {
        self.wait_for(needle, |child| child.logs().contains(needle).then_some(()));
    }

    /// Polls `found` until it yields, the child exits, or the start timeout
    /// passes; `what` names the awaited text in the panic.
    fn wait_for<T>(&mut self, what: &str, found: impl Fn(&Self) -> Option<T>) -> T {
        let deadline = std::time::Instant::now() + START_TIMEOUT;
        loop {
            if let Some(value) = found(self) {
                return value;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                // The child may have printed it just before exiting.
                if let Some(value) = found(self) {
                    return value;
                }
                panic!(
                    "{} exited ({status}) before printing {what:?}:\n{}",
                    self.name,
                    self.logs()
                );
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} never printed {what:?}:\n{}",
                self.name,
                self.logs()
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// Waits until the child accepts TCP connections on `addr` (some servers
    /// announce their address just before they bind it).
    pub fn wait_accepting(&mut self, addr: std::net::SocketAddr) {
        let deadline = std::time::Instant::now() + START_TIMEOUT;
        while std::net::TcpStream::connect(addr).is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{} exited ({status}) before accepting connections:\n{}",
                    self.name,
                    self.logs()
                );
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} never accepted connections on {addr}:\n{}",
                self.name,
                self.logs()
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

/// A free TCP port on 127.0.0.1 for a server that must be told its port
/// rather than bind port 0 itself (the gateway: Pingora binds its own
/// listeners). Ports come from below the kernel's ephemeral range, which is
/// where every `bind(0)` and outgoing connection takes its port, so no other
/// socket of the test run can take this one before the server binds it.
pub fn unused_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    let start = (std::process::id().wrapping_mul(7919)) % SPAN;
    for _ in 0..SPAN {
        let offset = (start + NEXT.fetch_add(1, Ordering::Relaxed)) % SPAN;
        let port = u16::try_from(LOW + offset).expect("port in range");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between {LOW} and {}", LOW + SPAN);
}

/// A response from [`RouterClient`], its body parsed as JSON (`Null` when
/// empty).
#[derive(Debug)]
pub struct Reply {
    pub status: axum::http::StatusCode,
    pub headers: axum::http::HeaderMap,
    pub body: serde_json::Value,
}

impl Reply {
    /// A reply whose body is JSON (`Null` when empty); panics on anything
    /// else, naming the status and showing the bytes.
    pub fn parse(
        status: axum::http::StatusCode,
        headers: axum::http::HeaderMap,
        bytes: &[u8],
    ) -> Reply {
        let body = if bytes.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(bytes).unwrap_or_else(|_| {
                panic!(
                    "non-JSON body for {status}: {:?}",
                    String::from_utf8_lossy(bytes)
                )
            })
        };
        Reply {
            status,
            headers,
            body,
        }
    }

    /// The `error.code` of an envelope answer.
    pub fn code(&self) -> &str {
        self.body["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("not an error envelope: {} {}", self.status, self.body))
    }

    /// A string field of the JSON body.
    pub fn str(&self, field: &str) -> String {
        self.body[field]
            .as_str()
            .unwrap_or_else(|| panic!("no string {field} in {}", self.body))
            .to_owned()
    }
}

/// Drives a router in-process, without a socket.
#[derive(Clone)]
pub struct RouterClient {
    router: axum::Router,
}

impl RouterClient {
    pub fn new(router: axum::Router) -> Self {
        RouterClient { router }
    }

    /// Sends a request; a JSON `body` gets `Content-Type: application/json`.
    pub async fn send(
        &self,
        method: axum::http::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&serde_json::Value>,
    ) -> Reply {
        match body {
            Some(json) => {
                let mut headers = headers.to_vec();
                headers.push(("content-type", "application/json"));
                self.send_raw(method, path, &headers, json.to_string())
                    .await
            }
            None => self.send_raw(method, path, headers, String::new()).await,
        }
    }

    /// Sends a request with exactly these headers and body bytes (for
    /// malformed bodies and wrong content types).
    pub async fn send_raw(
        &self,
        method: axum::http::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<axum::body::Body>,
    ) -> Reply {
        use http_body_util::BodyExt;
        use tower::ServiceExt;
        let mut request = axum::http::Request::builder().method(method).uri(path);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let body = body.into();
        let response = self
            .router
            .clone()
            .oneshot(request.body(body).expect("request"))
            .await
            .expect("routers are infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        Reply::parse(status, headers, &bytes)
    }

    /// A request as the gateway would forward it for `user_id`.
    pub async fn as_user(
        &self,
        user_id: i64,
        method: axum::http::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Reply {
        let id = user_id.to_string();
        self.send(method, path, &[("x-user-id", id.as_str())], body)
            .await
    }
}

/// Waits up to `limit` for `check` to hold, trying every 50 ms; returns
/// whether it did. For effects that arrive on a timer (health checks, cache
/// expiry, a process starting), never as a substitute for waiting on a
/// known event.
pub async fn eventually(limit: std::time::Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// [`eventually`] for tests without a runtime.
pub fn wait_until(limit: std::time::Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    check()
}
