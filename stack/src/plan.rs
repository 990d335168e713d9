//! What to start, read from `routes.yaml`.
//!
//! The routes file already says where every service listens: the gateway
//! sends `tasks` traffic to the servers of the `tasks` upstream, and so on.
//! The stack starts one process per such server, so the file stays the one
//! place where ports are written, and listing two servers for `orders`
//! starts two replicas of it.

use gateway_config::{Config, HostPort};

/// The services the stack knows how to start, by the upstream name that
/// routes to them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Auth,
    Tasks,
    Orders,
    Inventory,
    /// The browser client's page server.
    Web,
    /// Live events over WebSockets.
    Notifications,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Auth,
        Kind::Tasks,
        Kind::Orders,
        Kind::Inventory,
        Kind::Web,
        Kind::Notifications,
    ];

    /// Whether it keeps data (and so gets a `DATABASE_URL`).
    pub fn has_database(self) -> bool {
        !matches!(self, Kind::Web | Kind::Notifications)
    }

    /// The upstream name in `routes.yaml`.
    pub fn upstream(self) -> &'static str {
        match self {
            Kind::Auth => "auth",
            Kind::Tasks => "tasks",
            Kind::Orders => "orders",
            Kind::Inventory => "inventory",
            Kind::Web => "web",
            Kind::Notifications => "notifications",
        }
    }

    /// The binary (and package) name.
    pub fn binary(self) -> &'static str {
        match self {
            Kind::Auth => "auth-service",
            Kind::Tasks => "tasks",
            Kind::Orders => "orders",
            Kind::Inventory => "inventory",
            Kind::Web => "web",
            Kind::Notifications => "notifications",
        }
    }
}

/// One process to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// How its log lines are prefixed: the binary name, with `-N` when the
    /// upstream lists several servers.
    pub name: String,
    pub kind: Kind,
    /// The address it is told to listen on (`--listen`).
    pub listen: String,
}

/// Everything the stack starts, in start order; the gateway comes last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub services: Vec<Service>,
    /// Where orders finds inventory: the first inventory server.
    pub inventory_url: Option<String>,
    /// Where tasks and orders post live events without Redis: the first
    /// notifications server.
    pub notifications_url: Option<String>,
    pub gateway_listen: String,
    pub metrics_listen: Option<String>,
    /// The gateway's admin listener, where the auth service reports
    /// revocations.
    pub admin_listen: Option<String>,
    /// The gateway checks HS256 tokens itself (`auth.mode: local`), so the
    /// auth service must sign with the shared secret rather than its key
    /// ring.
    pub hs256: bool,
    /// With `tracing:` in the file, every service exports its traces to the
    /// same collector with the same sampling ratio: (endpoint, ratio).
    pub traces: Option<(String, String)>,
    /// Upstreams of the file that the stack does not start (other services
    /// the user runs themselves), named so that nobody wonders.
    pub not_started: Vec<String>,
}

impl Plan {
    pub fn from_config(config: &Config) -> Plan {
        let mut services = Vec::new();
        for kind in Kind::ALL {
            let Some(upstream) = config.upstreams.get(kind.upstream()) else {
                continue;
            };
            // The stack starts services on host:port servers; a unix:
            // socket is a service the user runs.
            let servers: Vec<&HostPort> = upstream
                .servers
                .iter()
                .filter_map(|s| s.address.host_port())
                .collect();
            let replicas = servers.len();
            for (i, server) in servers.into_iter().enumerate() {
                let name = if replicas == 1 {
                    kind.binary().to_owned()
                } else {
                    format!("{}-{}", kind.binary(), i + 1)
                };
                services.push(Service {
                    name,
                    kind,
                    listen: server.to_string(),
                });
            }
        }
        let first_url = |kind: Kind| {
            config
                .upstreams
                .get(kind.upstream())
                .and_then(|u| u.servers.first())
                .and_then(|s| s.address.host_port())
                .map(|server| format!("http://{}", reachable(server)))
        };
        let inventory_url = first_url(Kind::Inventory);
        let notifications_url = first_url(Kind::Notifications);
        let not_started = config
            .upstreams
            .keys()
            .filter(|name| !Kind::ALL.iter().any(|k| k.upstream() == name.as_str()))
            .cloned()
            .collect();
        Plan {
            services,
            inventory_url,
            notifications_url,
            gateway_listen: config.listen.clone(),
            metrics_listen: config.server.metrics_listen.clone(),
            admin_listen: config.server.admin_listen.clone(),
            hs256: config.auth.mode == gateway_config::AuthMode::Local,
            traces: config
                .tracing
                .as_ref()
                .map(|t| (t.otlp_endpoint.clone(), t.sampling_ratio.to_string())),
            not_started,
        }
    }

    /// The binaries this plan needs, each once, the gateway included.
    pub fn binaries(&self) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = Vec::new();
        for service in &self.services {
            if !names.contains(&service.kind.binary()) {
                names.push(service.kind.binary());
            }
        }
        names.push("gateway");
        names
    }

    /// Every address the stack's processes will listen on, with whose it is.
    pub fn addresses(&self) -> Vec<(String, String)> {
        let mut all: Vec<(String, String)> = self
            .services
            .iter()
            .map(|s| (s.listen.clone(), s.name.clone()))
            .collect();
        all.push((self.gateway_listen.clone(), "gateway".into()));
        if let Some(metrics) = &self.metrics_listen {
            all.push((metrics.clone(), "gateway metrics".into()));
        }
        if let Some(admin) = &self.admin_listen {
            all.push((admin.clone(), "gateway admin".into()));
        }
        all
    }
}

/// The address to connect to for a listen address: a wildcard address
/// (listen on every interface) is reached through loopback.
pub fn connect_address(listen: &str) -> String {
    match HostPort::parse(listen) {
        Ok(host_port) => reachable(&host_port),
        Err(_) => listen.to_owned(),
    }
}

fn reachable(server: &HostPort) -> String {
    let host = match server.host.as_str() {
        "0.0.0.0" | "" => "127.0.0.1",
        "::" => "::1",
        other => other,
    };
    HostPort {
        host: host.to_owned(),
        port: server.port,
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTES: &str = "
listen: 0.0.0.0:8080
server: { metrics_listen: 127.0.0.1:9090 }
auth: { verify_url: http://127.0.0.1:9001/api/verify }
upstreams:
  auth: { servers: [127.0.0.1:9001] }
  tasks: { servers: [127.0.0.1:9101] }
  orders: { servers: [127.0.0.1:9201, 127.0.0.1:9202] }
  inventory: { servers: ['[::]:9301'] }
  notifications: { servers: [127.0.0.1:9401] }
  billing: { servers: [10.0.0.7:80] }
routes:
  - { prefix: /api/tasks, upstream: tasks, access: protected }
";

    #[test]
    fn one_process_per_server_of_each_known_upstream() {
        let plan = Plan::from_config(&Config::parse(ROUTES).expect("valid routes"));
        let started: Vec<(&str, &str)> = plan
            .services
            .iter()
            .map(|s| (s.name.as_str(), s.listen.as_str()))
            .collect();
        assert_eq!(
            started,
            [
                ("auth-service", "127.0.0.1:9001"),
                ("tasks", "127.0.0.1:9101"),
                ("orders-1", "127.0.0.1:9201"),
                ("orders-2", "127.0.0.1:9202"),
                ("inventory", "[::]:9301"),
                ("notifications", "127.0.0.1:9401"),
            ]
        );
        assert_eq!(plan.inventory_url.as_deref(), Some("http://[::1]:9301"));
        assert_eq!(
            plan.notifications_url.as_deref(),
            Some("http://127.0.0.1:9401")
        );
        assert_eq!(plan.not_started, ["billing"]);
        assert_eq!(
            plan.binaries(),
            [
                "auth-service",
                "tasks",
                "orders",
                "inventory",
                "notifications",
                "gateway"
            ]
        );
        assert_eq!(plan.addresses().len(), 8);
    }

    #[test]
    fn wildcard_listen_addresses_are_reached_through_loopback() {
        for (listen, connect) in [
            ("0.0.0.0:8080", "127.0.0.1:8080"),
            ("[::]:8080", "[::1]:8080"),
            ("127.0.0.1:8080", "127.0.0.1:8080"),
            ("localhost:8080", "localhost:8080"),
        ] {
            assert_eq!(connect_address(listen), connect, "{listen}");
        }
    }

    #[test]
    fn a_file_without_backends_starts_only_the_gateway() {
        let config = Config::parse(
            "listen: 127.0.0.1:8080\nauth: { mode: local }\nupstreams: {}\nroutes: []\n",
        )
        .expect("valid routes");
        let plan = Plan::from_config(&config);
        assert!(plan.services.is_empty());
        assert_eq!(plan.inventory_url, None);
        assert_eq!(plan.notifications_url, None);
        assert_eq!(plan.binaries(), ["gateway"]);
    }
}
