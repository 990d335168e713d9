//! Real processes for gateway tests: the auth service, the gateway, and a
//! recording upstream that keeps every header line it receives.

use serde_json::Value;
use service_kit::testing::{ChildService, TestDatabase, unused_port, workspace_binary};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

pub const SECRET: &str = "gateway-test-secret-gateway-test-secret!";

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub target: String,
    /// Header lines exactly as received: (name, value), in order.
    pub headers: Vec<(String, String)>,
}

impl Seen {
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// A raw HTTP/1.1 upstream that records requests (health checks aside) and
/// answers 200, or never answers while `hang` is set.
pub struct Upstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    pub hang: Arc<AtomicBool>,
    /// Milliseconds to wait before answering.
    pub delay_ms: Arc<AtomicU64>,
    /// When N > 0, a connection's Nth request is read, recorded, and
    /// answered by closing the connection. 2: a keep-alive connection the
    /// server dropped while it sat in the gateway's pool; 1: a server that
    /// breaks every connection it accepts.
    pub drop_nth: Arc<AtomicU64>,
    /// When N > 0, the first N of every 2N requests (over all connections)
    /// are answered 503: a server failing half its requests, in runs.
    pub fail_runs: Arc<AtomicU64>,
    tasks: Arc<Mutex<JoinSet<()>>>,
}

/// What a test upstream does with the requests it reads.
#[derive(Clone, Default)]
struct Knobs {
    seen: Arc<Mutex<Vec<Seen>>>,
    hang: Arc<AtomicBool>,
    delay_ms: Arc<AtomicU64>,
    drop_nth: Arc<AtomicU64>,
    fail_runs: Arc<AtomicU64>,
    served: Arc<AtomicU64>,
}

async fn serve_connection<S>(stream: S, knobs: Knobs)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let Knobs {
        seen,
        hang,
        delay_ms,
        drop_nth,
        fail_runs,
        served: all_served,
    } = knobs;
    let mut reader = BufReader::new(stream);
    let mut served = 0;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).await.unwrap_or(0) == 0 {
            return;
        }
        let mut parts = request_line.trim_end().splitn(3, ' ');
        let method = parts.next().unwrap_or_default().to_owned();
        let target = parts.next().unwrap_or_default().to_owned();
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                headers.push((name.to_owned(), value.trim().to_owned()));
            }
        }
        let length: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).await.is_err() {
            return;
        }
        let health = target == "/healthz";
        let websocket = headers
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case("upgrade") && v.eq_ignore_ascii_case("websocket"));
        if !health {
            seen.lock().expect("lock").push(Seen {
                method,
                target: target.clone(),
                headers,
            });
            served += 1;
            if served == drop_nth.load(Ordering::SeqCst) {
                return;
            }
            if hang.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            let delay = delay_ms.load(Ordering::SeqCst);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            let runs = fail_runs.load(Ordering::SeqCst);
            let n = all_served.fetch_add(1, Ordering::SeqCst);
            if runs > 0 && (n / runs).is_multiple_of(2) {
                let unavailable = "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n";
                if reader
                    .get_mut()
                    .write_all(unavailable.as_bytes())
                    .await
                    .is_err()
                {
                    return;
                }
                continue;
            }
        }
        if websocket {
            // Switch protocols, then echo bytes: enough to prove the tunnel.
            // The 101 is not sent within microseconds: the proxy engine (0.9.1) tears
            // an upgrade down when the 101 is read before the request's
            // empty body is (upstream issue #946), which only a loopback
            // upstream answering instantly triggers.
            tokio::time::sleep(Duration::from_millis(25)).await;
            let stream = reader.get_mut();
            let head = "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: x\r\n\r\n";
            if stream.write_all(head.as_bytes()).await.is_err() {
                return;
            }
            let mut buf = [0u8; 1024];
            loop {
                match reader.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if reader.get_mut().write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
        let body = serde_json::json!({"target": target}).to_string();
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if reader
            .get_mut()
            .write_all(response.as_bytes())
            .await
            .is_err()
        {
            return;
        }
    }
}

impl Upstream {
    pub async fn start() -> Upstream {
        Upstream::start_on("127.0.0.1:0".parse().expect("address")).await
    }

    /// An upstream on a given address (to bring a stopped one back).
    pub async fn start_on(addr: SocketAddr) -> Upstream {
        let listener = TcpListener::bind(addr).await.expect("bind upstream");
        let addr = listener.local_addr().expect("addr");
        let knobs = Knobs::default();
        let tasks = Arc::new(Mutex::new(JoinSet::new()));
        let (k, t) = (knobs.clone(), tasks.clone());
        tasks.lock().expect("lock").spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                t.lock()
                    .expect("lock")
                    .spawn(serve_connection(stream, k.clone()));
            }
        });
        Upstream::with(addr, knobs, tasks)
    }

    fn with(addr: SocketAddr, knobs: Knobs, tasks: Arc<Mutex<JoinSet<()>>>) -> Upstream {
        Upstream {
            addr,
            seen: knobs.seen,
            hang: knobs.hang,
            delay_ms: knobs.delay_ms,
            drop_nth: knobs.drop_nth,
            fail_runs: knobs.fail_runs,
            tasks,
        }
    }

    /// The same upstream on a Unix socket at `path` (its `addr` is then
    /// unspecified: `0.0.0.0:0`).
    pub async fn start_unix(path: &std::path::Path) -> Upstream {
        let listener = tokio::net::UnixListener::bind(path).expect("bind unix upstream");
        let knobs = Knobs::default();
        let tasks = Arc::new(Mutex::new(JoinSet::new()));
        let (k, t) = (knobs.clone(), tasks.clone());
        tasks.lock().expect("lock").spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                t.lock()
                    .expect("lock")
                    .spawn(serve_connection(stream, k.clone()));
            }
        });
        Upstream::with("0.0.0.0:0".parse().expect("address"), knobs, tasks)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }

    /// Forgets what it has seen so far.
    pub fn clear(&self) {
        self.seen.lock().expect("lock").clear();
    }

    /// Closes the listener and every connection: connects are refused from now on.
    pub fn stop(&self) {
        self.tasks.lock().expect("lock").abort_all();
    }
}

/// A response read off the wire.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

/// Sends one request, byte for byte as given (nothing normalised), with
/// `Connection: close`, and reads the response.
pub async fn raw(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    // `host: gateway.test` unless the caller names a host of its own.
    let host = if headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        ""
    } else {
        "host: gateway.test\r\n"
    };
    let mut request = format!("{method} {target} HTTP/1.1\r\n{host}connection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() {
        request.push_str(&format!(
            "content-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        ));
    }
    request.push_str("\r\n");
    request.push_str(body);
    let mut stream = TcpStream::connect(addr).await.expect("connect to gateway");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.to_owned(), v.trim().to_owned()))
        .collect();
    Reply {
        status,
        headers,
        body: serde_json::from_str(body).unwrap_or(Value::Null),
    }
}

pub fn auth_service(db: &TestDatabase, extra: &[&str]) -> ChildService {
    let mut command = Command::new(workspace_binary("auth-service"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("JWT_SECRET_KEY", SECRET)
        .env("DATABASE_URL", &db.url)
        .args(["--listen", "127.0.0.1:0"])
        .args(extra);
    ChildService::start("auth-service", command)
}

/// A gateway process on `routes`, with its own metrics listener.
pub struct Gateway {
    pub child: ChildService,
    pub metrics: SocketAddr,
    pub config: PathBuf,
    _dir: tempfile::TempDir,
}

impl Gateway {
    pub fn start(routes: &str, env: &[(&str, &str)]) -> Gateway {
        Gateway::start_with_server(routes, "", env)
    }

    /// Like [`Gateway::start`], with more `server:` keys (each line
    /// indented by two spaces).
    pub fn start_with_server(routes: &str, server: &str, env: &[(&str, &str)]) -> Gateway {
        Gateway::start_on_port(routes, server, env, unused_port())
    }

    /// Like [`Gateway::start_with_server`], listening on `port` (for
    /// routes that must name the gateway's own address).
    pub fn start_on_port(routes: &str, server: &str, env: &[(&str, &str)], port: u16) -> Gateway {
        let dir = tempfile::tempdir().expect("tempdir");
        // Each gateway gets its own upgrade socket, so that tests never
        // hand listeners to each other.
        let routes = format!(
            "{routes}\nserver:\n  grace_period: 1s\n  upgrade_sock: {}\n{server}",
            dir.path().join("upgrade.sock").display()
        );
        let routes = routes.as_str();
        let config = dir.path().join("routes.yaml");
        std::fs::write(&config, routes).expect("write routes");
        let mut command = Command::new(env!("CARGO_BIN_EXE_gateway"));
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("RUST_LOG", "info")
            .args(["--config"])
            .arg(&config)
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--metrics-listen",
                &format!("127.0.0.1:{}", unused_port()),
                "--threads",
                "2",
            ]);
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = ChildService::start("gateway", command);
        let addr = child.addr;
        child.wait_accepting(addr);
        let metrics: SocketAddr = child
            .wait_for_output("metrics on ")
            .trim()
            .parse()
            .expect("metrics address");
        child.wait_accepting(metrics);
        Gateway {
            child,
            metrics,
            config,
            _dir: dir,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.child.addr
    }

    pub fn upgrade_sock(&self) -> PathBuf {
        self._dir.path().join("upgrade.sock")
    }

    /// Replaces the routes file (atomically, as editors and deploy tools do).
    pub fn write_routes(&self, routes: &str) {
        let tmp = self.config.with_extension("tmp");
        std::fs::write(&tmp, routes).expect("write");
        std::fs::rename(&tmp, &self.config).expect("rename");
    }

    /// Sends SIGHUP and waits (up to 10 s) until the reload count with
    /// `result` (`applied`, `rejected`) reaches `count`.
    pub async fn reload(&self, result: &str, count: f64) -> bool {
        self.child.signal("HUP");
        let sample = format!("portcullis_config_reloads_total{{result=\"{result}\"}}");
        eventually(Duration::from_secs(10), async || {
            self.metric(&sample).await >= count
        })
        .await
    }

    /// The value of a metric sample, e.g. `portcullis_verify_cache_total{result="miss"}`.
    pub async fn metric(&self, sample: &str) -> f64 {
        let reply = raw_text(self.metrics, "/metrics").await;
        reply
            .lines()
            .find_map(|line| {
                line.strip_prefix(sample)
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0.0)
    }
}

pub async fn raw_text(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await;
    String::from_utf8_lossy(&response).into_owned()
}

/// Addresses as a `servers:` list's items: `"a", "b"`.
pub fn quoted(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A routes file: the auth service's public endpoints, `/api/auth/me`, an
/// admin-only prefix, and `/api/tasks` on `tasks` (one or more servers).
pub fn routes(auth: SocketAddr, tasks: &[SocketAddr], extra: &str) -> String {
    let servers = quoted(tasks);
    format!(
        r#"
auth:
  verify_url: http://{auth}/api/verify
  timeout: 1s
  cache_ttl: 30s
  negative_ttl: 2s
upstreams:
  auth:
    servers: ["{auth}"]
  tasks:
    servers: [{servers}]
    health_check: {{ type: http, path: /healthz, interval: 200ms }}
    connect_timeout: 500ms
    read_timeout: 1s
routes:
  - {{ prefix: /api/auth/register, upstream: auth, access: public, methods: [POST], rewrite: /api/register }}
  - {{ prefix: /api/auth/login, upstream: auth, access: public, methods: [POST], rewrite: /api/login }}
  - {{ prefix: /api/auth/me, upstream: auth, access: protected, rewrite: /api/me }}
  - {{ prefix: /api/public, upstream: tasks, access: public }}
  - {{ prefix: /api/tasks, upstream: tasks, access: protected }}
  - {{ prefix: /api/admin, upstream: tasks, access: protected, roles: [admin] }}
{extra}"#
    )
}

/// `GET path` with `Authorization: Bearer token`.
pub async fn get_with_token(addr: SocketAddr, path: &str, token: &str) -> Reply {
    let bearer = format!("Bearer {token}");
    raw(addr, "GET", path, &[("authorization", &bearer)], "").await
}

/// Registers `email` through the gateway and returns (access token, user id).
pub async fn register(gateway: SocketAddr, email: &str) -> (String, i64) {
    let body = serde_json::json!({"email": email, "password": "a long password"}).to_string();
    let reply = raw(gateway, "POST", "/api/auth/register", &[], &body).await;
    assert_eq!(reply.status, 201, "register: {:?}", reply.body);
    (
        reply.body["access"].as_str().expect("access").to_owned(),
        reply.body["user_id"].as_i64().expect("user_id"),
    )
}

pub use service_kit::testing::eventually;

/// Sends an upgrade request on a new connection; returns the stream and the
/// response head.
pub async fn open_upgrade(
    gw: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (tokio::net::TcpStream, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(gw).await.expect("connect");
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nhost: gateway.test\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n"
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read_exact(&mut byte).await.is_err() {
            break;
        }
        head.push(byte[0]);
    }
    (stream, String::from_utf8_lossy(&head).into_owned())
}

/// An auth service, a recording upstream and a gateway in front of them.
pub struct Stack {
    pub _db: TestDatabase,
    pub auth: ChildService,
    pub tasks: Upstream,
    pub gateway: Gateway,
}

pub async fn stack(auth_args: &[&str]) -> Stack {
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

pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// A well-formed token nobody signed, unexpired by its own claim: the
/// gateway cannot refuse it without asking.
pub fn forged_token(n: usize) -> String {
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
