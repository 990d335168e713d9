//! A test language for the whole stack, spoken through the gateway.
//!
//! [`Stack::start`] runs the real binaries (auth service, tasks, orders,
//! inventory, web page, notifications, gateway) as processes on ephemeral ports, with the shipped
//! `routes.yaml` pointed at them, so the tests exercise the routes users
//! get. A test then talks like a user:
//!
//! ```ignore
//! let stack = Stack::start().await;
//! let alice = stack.register("alice").await;
//! let reply = alice.get("/api/tasks").await;
//! ```
//!
//! Every process is killed when the stack is dropped, and a failing test
//! prints what each one said.

pub mod otlp;
pub mod sockets;

use serde_json::{Value, json};
use service_kit::testing::{ChildService, TestDatabase, unused_port, workspace_binary};
use std::process::Command;
use std::time::Duration;

pub use service_kit::testing::Reply;

/// The password every test user has.
pub const PASSWORD: &str = "correct horse battery";

/// The shipped routes file.
pub fn shipped_routes() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../routes.yaml");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
}

/// Where each service listens, to point the shipped routes file at.
#[derive(Debug, Clone)]
pub struct Addresses {
    pub gateway: String,
    pub metrics: String,
    pub admin: String,
    pub auth: String,
    pub tasks: Vec<String>,
    pub orders: Vec<String>,
    pub inventory: String,
    pub web: String,
    pub notifications: Vec<String>,
}

/// Timings shortened for tests.
#[derive(Debug, Clone)]
pub struct Timings {
    pub cache_ttl: &'static str,
    pub health_interval: &'static str,
    pub grace_period: &'static str,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            cache_ttl: "2s",
            health_interval: "200ms",
            grace_period: "1s",
        }
    }
}

/// The shipped `routes.yaml` with its addresses and timings replaced, each
/// replacement checked, so a change to the shipped file that these tests
/// would no longer cover fails loudly instead of silently testing less.
pub fn routes_for(addresses: &Addresses, timings: &Timings, upgrade_sock: &str) -> String {
    let servers = |list: &[String]| format!("servers: [{}]", list.join(", "));
    let mut routes = shipped_routes();
    for (from, to) in [
        (
            "listen: 127.0.0.1:8080",
            format!("listen: {}", addresses.gateway),
        ),
        (
            "metrics_listen: 127.0.0.1:9090",
            format!("metrics_listen: {}", addresses.metrics),
        ),
        (
            "admin_listen: 127.0.0.1:9091",
            format!("admin_listen: {}", addresses.admin),
        ),
        ("127.0.0.1:9001", addresses.auth.clone()),
        ("servers: [127.0.0.1:9101]", servers(&addresses.tasks)),
        ("servers: [127.0.0.1:9201]", servers(&addresses.orders)),
        (
            "servers: [127.0.0.1:9301]",
            servers(std::slice::from_ref(&addresses.inventory)),
        ),
        (
            "servers: [127.0.0.1:9601]",
            servers(std::slice::from_ref(&addresses.web)),
        ),
        (
            "servers: [127.0.0.1:9401]",
            servers(&addresses.notifications),
        ),
        (
            "cache_ttl: 30s",
            format!("cache_ttl: {}", timings.cache_ttl),
        ),
        (
            "interval: 2s",
            format!("interval: {}", timings.health_interval),
        ),
        (
            "grace_period: 5s",
            format!(
                "grace_period: {}\n  upgrade_sock: {upgrade_sock}",
                timings.grace_period
            ),
        ),
    ] {
        assert!(
            routes.contains(from),
            "the shipped routes.yaml no longer contains {from:?}; update the end-to-end harness"
        );
        routes = routes.replace(from, &to);
    }
    routes
}

/// Options for [`Stack::with`].
#[derive(Debug, Clone)]
pub struct Options {
    /// Access token lifetime, seconds.
    pub access_ttl: u64,
    pub orders_replicas: usize,
    pub notifications_replicas: usize,
    /// A Redis for events and revocations (the services then use it rather
    /// than direct calls); each stack gets its own channels and keys on it.
    pub redis: Option<String>,
    pub timings: Timings,
    /// An OTLP collector's base URL: every service and the gateway export
    /// their traces there (the gateway through a `tracing:` section).
    pub traces: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            access_ttl: 3600,
            orders_replicas: 1,
            notifications_replicas: 1,
            redis: None,
            timings: Timings::default(),
            traces: None,
        }
    }
}

/// A service of the stack, to stop one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Auth,
    Tasks,
    Orders(usize),
    Inventory,
    Web,
    Notifications(usize),
}

/// The built browser client (`npm --prefix web run build`).
pub fn web_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../web/dist")
}

/// The whole stack, running.
pub struct Stack {
    client: Client,
    pub options: Options,
    metrics_url: String,
    // Declared before the databases: processes stop before their files go.
    gateway: ChildService,
    auth: Option<ChildService>,
    tasks: Option<ChildService>,
    orders: Vec<Option<ChildService>>,
    inventory: Option<ChildService>,
    web: Option<ChildService>,
    notifications: Vec<Option<ChildService>>,
    /// How a notifications replica is started (again, on its address).
    notifications_env: Vec<(&'static str, String)>,
    auth_db: TestDatabase,
    _tasks_db: TestDatabase,
    _orders_db: TestDatabase,
    _inventory_db: TestDatabase,
    _dir: tempfile::TempDir,
}

const SECRET: &str = "end-to-end-signing-secret-of-forty-bytes!!";
const ADMIN_TOKEN: &str = "end-to-end-gateway-admin-token-of-forty!!";

fn service(
    name: &str,
    binary: &str,
    db: &TestDatabase,
    extra: &[&str],
    env: &[(&str, String)],
) -> ChildService {
    let mut command = Command::new(workspace_binary(binary));
    command
        .args(["--listen", "127.0.0.1:0"])
        .args(extra)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("DATABASE_URL", &db.url)
        .env("RUST_LOG", "info,tower_http=debug");
    ChildService::start(name, command)
}

fn notifications_replica(i: usize, listen: &str, env: &[(&'static str, String)]) -> ChildService {
    let mut command = Command::new(workspace_binary("notifications"));
    command
        .args(["--listen", listen])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("RUST_LOG", "info,tower_http=debug");
    ChildService::start(&format!("notifications-{}", i + 1), command)
}

/// A name no other test run uses, for Redis channels and keys.
pub fn unique_namespace() -> String {
    let mut bytes = [0u8; 6];
    getrandom::fill(&mut bytes).expect("randomness");
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("e2e-{hex}")
}

impl Stack {
    pub async fn start() -> Stack {
        Stack::with(Options::default()).await
    }

    pub async fn with(options: Options) -> Stack {
        let auth_db = TestDatabase::new().await;
        let tasks_db = TestDatabase::new().await;
        let orders_db = TestDatabase::new().await;
        let inventory_db = TestDatabase::new().await;
        let dir = tempfile::tempdir().expect("temporary directory");

        // The gateway's admin listener is chosen first: the auth service
        // reports revocations there, as in the one-command stack.
        let admin = format!("127.0.0.1:{}", unused_port());
        let traced: Vec<(&str, String)> = options
            .traces
            .iter()
            .map(|url| ("OTEL_EXPORTER_OTLP_ENDPOINT", url.clone()))
            .collect();
        let mut auth_command = Command::new(workspace_binary("auth-service"));
        auth_command
            .args(["--listen", "127.0.0.1:0"])
            .envs(traced.iter().map(|(k, v)| (*k, v.as_str())))
            .env("DATABASE_URL", &auth_db.url)
            .env("JWT_SECRET_KEY", SECRET)
            .env("JWT_ACCESS_TTL", options.access_ttl.to_string())
            .env("GATEWAY_ADMIN_TOKEN", ADMIN_TOKEN)
            .env(
                "AUTH_REVOCATION_WEBHOOKS",
                format!("http://{admin}/revocations"),
            );
        // With Redis, every service shares one namespace of its own, so
        // that stacks running side by side never see each other's events
        // or revocations.
        let mut notifications_env = vec![("NOTIFICATIONS_PING_SECONDS", "1".to_owned())];
        notifications_env.extend(traced.iter().cloned());
        let mut revocation_args = Vec::new();
        if let Some(redis) = &options.redis {
            let namespace = unique_namespace();
            let channel = format!("{namespace}:revocations");
            auth_command
                .env("REDIS_URL", redis)
                .env("REVOCATION_CHANNEL", &channel);
            notifications_env.extend([
                ("REDIS_URL", redis.clone()),
                ("EVENTS_NAMESPACE", namespace),
                ("REVOCATION_CHANNEL", channel.clone()),
            ]);
            revocation_args = vec![
                "--redis-url".to_owned(),
                redis.clone(),
                "--revocation-channel".to_owned(),
                channel,
            ];
        }
        let auth = ChildService::start("auth-service", auth_command);
        let notifications: Vec<ChildService> = (0..options.notifications_replicas)
            .map(|i| notifications_replica(i, "127.0.0.1:0", &notifications_env))
            .collect();
        // Without Redis, events are posted to the first replica.
        let mut events_env: Vec<(&str, String)> = notifications_env
            .iter()
            .filter(|(name, _)| matches!(*name, "REDIS_URL" | "EVENTS_NAMESPACE"))
            .cloned()
            .collect();
        if let Some(first) = notifications.first() {
            events_env.push(("NOTIFICATIONS_URL", format!("http://{}", first.addr)));
        }
        events_env.extend(traced.iter().cloned());
        let tasks = service("tasks", "tasks", &tasks_db, &[], &events_env);
        let inventory = service("inventory", "inventory", &inventory_db, &[], &traced);
        let inventory_url = format!("http://{}", inventory.addr);
        let orders: Vec<ChildService> = (0..options.orders_replicas)
            .map(|i| {
                service(
                    &format!("orders-{}", i + 1),
                    "orders",
                    &orders_db,
                    &["--inventory-url", &inventory_url],
                    &events_env,
                )
            })
            .collect();

        let mut web_command = Command::new(workspace_binary("web"));
        web_command
            .envs(traced.iter().map(|(k, v)| (*k, v.as_str())))
            .args(["--listen", "127.0.0.1:0", "--dir"])
            .arg(web_dir())
            .env("RUST_LOG", "info,tower_http=debug");
        let web = ChildService::start("web", web_command);

        let addresses = Addresses {
            gateway: format!("127.0.0.1:{}", unused_port()),
            metrics: format!("127.0.0.1:{}", unused_port()),
            admin,
            auth: auth.addr.to_string(),
            tasks: vec![tasks.addr.to_string()],
            orders: orders.iter().map(|o| o.addr.to_string()).collect(),
            inventory: inventory.addr.to_string(),
            web: web.addr.to_string(),
            notifications: notifications.iter().map(|n| n.addr.to_string()).collect(),
        };
        let routes_path = dir.path().join("routes.yaml");
        let upgrade_sock = dir.path().join("upgrade.sock");
        let mut routes = routes_for(
            &addresses,
            &options.timings,
            &upgrade_sock.display().to_string(),
        );
        if let Some(url) = &options.traces {
            routes.push_str(&format!("\ntracing:\n  otlp_endpoint: {url}\n"));
        }
        std::fs::write(&routes_path, routes).expect("write routes.yaml");
        let mut command = Command::new(workspace_binary("gateway"));
        command
            .arg("--config")
            .arg(&routes_path)
            .args(&revocation_args)
            .env("GATEWAY_ADMIN_TOKEN", ADMIN_TOKEN);
        let mut gateway = ChildService::start("gateway", command);
        // Pingora announces its address as it binds; wait until it accepts.
        let addr = addresses.gateway.parse().expect("gateway address");
        gateway.wait_accepting(addr);

        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("HTTP client");
        Stack {
            client: Client {
                http,
                base: format!("http://{}", addresses.gateway),
            },
            options,
            metrics_url: format!("http://{}/metrics", addresses.metrics),
            gateway,
            auth: Some(auth),
            tasks: Some(tasks),
            orders: orders.into_iter().map(Some).collect(),
            inventory: Some(inventory),
            web: Some(web),
            notifications: notifications.into_iter().map(Some).collect(),
            notifications_env,
            auth_db,
            _tasks_db: tasks_db,
            _orders_db: orders_db,
            _inventory_db: inventory_db,
            _dir: dir,
        }
    }

    /// A client without any token.
    pub fn anonymous(&self) -> Client {
        self.client.clone()
    }

    /// Registers `name@example.com` and returns the signed-in user.
    pub async fn register(&self, name: &str) -> User {
        let email = format!("{name}@example.com");
        let reply = self
            .client
            .post(
                "/api/auth/register",
                &json!({"email": email, "password": PASSWORD}),
            )
            .await;
        assert_eq!(reply.status, 201, "register {name}: {}", reply.body);
        User::from_tokens(self.client.clone(), email, &reply)
    }

    /// Makes `name@example.com` an administrator with the auth service's
    /// `create-admin` command, as an operator would, and signs them in.
    pub async fn admin(&self, name: &str) -> User {
        use std::io::Write;
        let email = format!("{name}@example.com");
        let mut child = Command::new(workspace_binary("auth-service"))
            .args(["create-admin", "--email", &email])
            .env("DATABASE_URL", &self.auth_db.url)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run auth-service create-admin");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(format!("{PASSWORD}\n").as_bytes())
            .expect("write the password");
        let output = child.wait_with_output().expect("create-admin finished");
        assert!(
            output.status.success(),
            "create-admin failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let mut admin = User {
            client: self.client.clone(),
            email,
            id: 0,
            access: String::new(),
            refresh: String::new(),
        };
        let reply = admin.login().await;
        assert_eq!(reply.status, 200, "admin login: {}", reply.body);
        admin
    }

    fn slot(&mut self, which: Service) -> &mut Option<ChildService> {
        match which {
            Service::Auth => &mut self.auth,
            Service::Tasks => &mut self.tasks,
            Service::Inventory => &mut self.inventory,
            Service::Orders(i) => &mut self.orders[i],
            Service::Web => &mut self.web,
            Service::Notifications(i) => &mut self.notifications[i],
        }
    }

    fn running(&self, which: Service) -> &ChildService {
        let slot = match which {
            Service::Auth => &self.auth,
            Service::Tasks => &self.tasks,
            Service::Inventory => &self.inventory,
            Service::Orders(i) => &self.orders[i],
            Service::Web => &self.web,
            Service::Notifications(i) => &self.notifications[i],
        };
        slot.as_ref().expect("the service is running")
    }

    /// Stops a service the way an operator would (SIGTERM) and waits for it
    /// to exit.
    pub fn stop(&mut self, which: Service) {
        let mut child = self.slot(which).take().expect("the service is running");
        child.signal("TERM");
        let status = child.wait_exit(Duration::from_secs(15));
        assert!(
            status.is_some_and(|s| s.success()),
            "{which:?} did not stop cleanly: {status:?}"
        );
    }

    /// Starts a stopped notifications replica again on its address.
    pub fn restart_notifications(&mut self, i: usize, addr: std::net::SocketAddr) {
        assert!(self.notifications[i].is_none(), "replica {i} is running");
        self.notifications[i] = Some(notifications_replica(
            i,
            &addr.to_string(),
            &self.notifications_env,
        ));
    }

    /// Opens `user_id`'s socket straight on notifications replica `i`, as
    /// the gateway would (`x-user-id`).
    pub async fn socket_on_replica(
        &self,
        i: usize,
        user_id: i64,
        query: &str,
    ) -> Result<sockets::Socket, (u16, String)> {
        let addr = self.address(Service::Notifications(i));
        sockets::open(
            &format!("ws://{addr}/api/notifications/ws{query}"),
            &[("x-user-id", &user_id.to_string())],
        )
        .await
    }

    /// The gateway's base URL, `http://127.0.0.1:PORT`.
    pub fn gateway_url(&self) -> &str {
        &self.client.base
    }

    /// The address a service listens on.
    pub fn address(&self, which: Service) -> std::net::SocketAddr {
        self.running(which).addr
    }

    /// Requests a service has answered, from its request log.
    pub fn requests_served(&self, which: Service) -> usize {
        self.running(which)
            .logs()
            .lines()
            .filter(|l| l.contains("finished processing request") && !l.contains("/healthz"))
            .count()
    }

    /// A sample of the gateway's metrics (`name{labels}` exactly as
    /// exposed), if present.
    pub async fn metric(&self, sample: &str) -> Option<f64> {
        let text = self
            .client
            .http
            .get(&self.metrics_url)
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines().find_map(|line| {
            let value = line.strip_prefix(sample)?.strip_prefix(' ')?;
            value.trim().parse().ok()
        })
    }

    /// The gateway's log, for a failing assertion.
    pub fn gateway_logs(&self) -> String {
        self.gateway.logs()
    }
}

pub use service_kit::testing::eventually;

/// HTTP through the gateway.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    pub async fn send(
        &self,
        method: http::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Reply {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.expect("the gateway answered");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("response body");
        Reply::parse(status, headers, &bytes)
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(http::Method::GET, path, &[], None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        self.send(http::Method::POST, path, &[], Some(body)).await
    }
}

/// A signed-in user.
pub struct User {
    client: Client,
    pub email: String,
    pub id: i64,
    pub access: String,
    pub refresh: String,
}

impl User {
    fn from_tokens(client: Client, email: String, reply: &Reply) -> User {
        let mut user = User {
            client,
            email,
            id: 0,
            access: String::new(),
            refresh: String::new(),
        };
        user.keep_tokens(reply);
        user
    }

    fn keep_tokens(&mut self, reply: &Reply) {
        self.access = reply.str("access");
        self.refresh = reply.str("refresh");
        self.id = reply.body["user_id"]
            .as_i64()
            .unwrap_or_else(|| panic!("no user_id in {}", reply.body));
    }

    /// A request with this user's access token.
    pub async fn send(&self, method: http::Method, path: &str, body: Option<&Value>) -> Reply {
        self.send_with(method, path, &[], body).await
    }

    /// A request with this user's access token and extra headers.
    pub async fn send_with(
        &self,
        method: http::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Reply {
        let bearer = format!("Bearer {}", self.access);
        let mut all = vec![("authorization", bearer.as_str())];
        all.extend_from_slice(headers);
        self.client.send(method, path, &all, body).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(http::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.send(http::Method::POST, path, Some(&body)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> Reply {
        self.send(http::Method::PUT, path, Some(&body)).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> Reply {
        self.send(http::Method::PATCH, path, Some(&body)).await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.send(http::Method::DELETE, path, None).await
    }

    /// Opens this user's notifications socket through the gateway as a
    /// browser does: the access token as the `bearer` subprotocol.
    pub async fn socket(&self, query: &str) -> Result<sockets::Socket, (u16, String)> {
        let url = format!(
            "{}/api/notifications/ws{query}",
            self.client.base.replacen("http://", "ws://", 1)
        );
        let protocols = format!("bearer, {}", self.access);
        sockets::open(&url, &[("sec-websocket-protocol", &protocols)]).await
    }

    /// Logs in again; keeps the new tokens on success.
    pub async fn login(&mut self) -> Reply {
        let reply = self
            .client
            .post(
                "/api/auth/login",
                &json!({"email": self.email, "password": PASSWORD}),
            )
            .await;
        if reply.status == 200 {
            self.keep_tokens(&reply);
        }
        reply
    }

    /// Trades the refresh token for a new pair; keeps it on success.
    pub async fn refresh(&mut self) -> Reply {
        let reply = self
            .client
            .post("/api/auth/refresh", &json!({"refresh": self.refresh}))
            .await;
        if reply.status == 200 {
            self.keep_tokens(&reply);
        }
        reply
    }

    pub async fn logout(&self) -> Reply {
        self.client
            .post("/api/auth/logout", &json!({"refresh": self.refresh}))
            .await
    }

    /// The tutorials' client: send; on 401 refresh once and send again.
    pub async fn send_refreshing_once(
        &mut self,
        method: http::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Reply {
        let first = self.send(method.clone(), path, body).await;
        if first.status != 401 || self.refresh().await.status != 200 {
            return first;
        }
        self.send(method, path, body).await
    }
}
