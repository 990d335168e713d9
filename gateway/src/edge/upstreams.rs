//! Upstream pools: load balancing and active health checks.
//!
//! Each pool owns a Pingora load balancer over addresses resolved when the
//! pool is built. Health checks run in a task per pool that stops when the
//! pool's generation of the route table is replaced.

use crate::config::pools::PoolLimits;
use crate::config::{self, Balance, CheckKind};
use crate::metrics;
use crate::pool_load::{self, Load, ServerLoad};
use pingora::lb::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};
use pingora::lb::selection::{Consistent, Random, RoundRobin};
use pingora::lb::{Backend, Backends, LoadBalancer, discovery};
use pingora::protocols::l4::socket::SocketAddr;
use pingora::upstreams::peer::HttpPeer;
use std::collections::BTreeSet;
use std::net::ToSocketAddrs;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

enum Balancer {
    /// Also what `least_requests` keeps its health in (it chooses itself).
    RoundRobin(LoadBalancer<RoundRobin>),
    Random(LoadBalancer<Random>),
    /// `user_hash`: Pingora's ketama ring, keyed by the user id.
    Consistent(LoadBalancer<Consistent>),
}

pub struct Pool {
    pub name: String,
    /// This pool's series of `portcullis_upstream_latency_seconds`.
    pub latency: prometheus::Histogram,
    balancer: Balancer,
    balance: Balance,
    servers: Vec<Server>,
    /// What is in flight to this pool, and the limits that shed it.
    pub load: Arc<Load>,
    pub limits: PoolLimits,
    /// Round robin for `user_hash` requests without a user.
    turn: std::sync::atomic::AtomicUsize,
    /// Which failed attempts go again, and the budget for them.
    pub retry: Option<crate::config::pools::RetrySettings>,
    pub budget: Option<crate::retries::Budget>,
    /// Passive health: when a server failing in live traffic leaves
    /// rotation; ejections are decided one at a time, so that two servers
    /// failing together never pass the share the pool may lose.
    outliers: Option<crate::outliers::Settings>,
    ejecting: std::sync::Mutex<()>,
    check_interval: Option<Duration>,
    connect_timeout: Duration,
    read_timeout: Duration,
    write_timeout: Duration,
    idle_timeout: Duration,
    tls: Option<PoolTls>,
}

/// TLS to a pool's servers: the name their certificates must carry, and
/// the roots to check them against (the system's when none).
#[derive(Clone)]
struct PoolTls {
    sni: String,
    roots: Option<Arc<pingora::protocols::tls::CaType>>,
    /// Keeps this pool's connections to itself. Pingora's connection reuse
    /// does not tell peers apart by CA: without it, a connection verified
    /// against another pool's roots could be reused here.
    group: u64,
}

impl PoolTls {
    fn apply(&self, peer: &mut HttpPeer) {
        peer.scheme = pingora::upstreams::peer::Scheme::HTTPS;
        peer.sni.clone_from(&self.sni);
        peer.options.ca.clone_from(&self.roots);
        peer.group_key = self.group;
    }
}

/// One server of a pool: where it listens, and the `Host` it is sent.
pub struct Server {
    pub addr: SocketAddr,
    /// Its address (`localhost` for a Unix socket), made once here rather
    /// than formatted on every request.
    pub host: http::HeaderValue,
    pub weight: u32,
    /// Its requests in flight.
    pub load: Arc<ServerLoad>,
    /// Its failures in live traffic (passive health).
    pub record: crate::outliers::Record,
}

/// The address of a configured server. A name is resolved once, here, to
/// its first address: a name with several records is one server, not
/// several.
fn resolve(server: &config::ServerAddr) -> Result<SocketAddr, String> {
    match server {
        config::ServerAddr::Tcp(host_port) => (host_port.host.as_str(), host_port.port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {server}: {e}"))?
            .next()
            .map(SocketAddr::Inet)
            .ok_or_else(|| format!("{server} resolves to no address")),
        config::ServerAddr::Unix(path) => std::os::unix::net::SocketAddr::from_pathname(path)
            .map(SocketAddr::Unix)
            .map_err(|e| format!("{server}: {e}")),
    }
}

/// The value of `Host` sent to a server: its address, or `localhost` for a
/// Unix socket (which has no host name of its own).
fn host_of(addr: &SocketAddr) -> Result<http::HeaderValue, String> {
    match addr {
        SocketAddr::Inet(inet) => {
            http::HeaderValue::try_from(inet.to_string()).map_err(|e| format!("{inet}: {e}"))
        }
        SocketAddr::Unix(_) => Ok(http::HeaderValue::from_static("localhost")),
    }
}

/// A balancer over `servers`; each backend carries its server's index.
fn balancer<S>(name: &str, servers: &[Server]) -> Result<LoadBalancer<S>, String>
where
    S: pingora::lb::selection::BackendSelection + 'static,
    S::Iter: pingora::lb::selection::BackendIter,
{
    let backends: BTreeSet<Backend> = servers
        .iter()
        .enumerate()
        .map(|(index, server)| {
            let mut backend = Backend {
                addr: server.addr.clone(),
                weight: server.weight as usize,
                ext: Default::default(),
            };
            backend.ext.insert(index);
            backend
        })
        .collect();
    let lb = LoadBalancer::from_backends(Backends::new(discovery::Static::new(backends)));
    // A static list is known at once: this update completes without waiting.
    match futures::FutureExt::now_or_never(lb.update()) {
        Some(Ok(())) => Ok(lb),
        Some(Err(e)) => Err(format!("upstream {name}: {e}")),
        None => Err(format!("upstream {name}: its server list did not load")),
    }
}

impl std::fmt::Display for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.addr {
            SocketAddr::Inet(addr) => addr.fmt(f),
            unix => write!(f, "unix:{unix}"),
        }
    }
}

impl Pool {
    /// Builds a pool, resolving server names once, here.
    pub fn build(name: &str, upstream: &config::Upstream) -> Result<Pool, String> {
        let tls = upstream
            .tls
            .as_ref()
            .map(|tls| -> Result<PoolTls, String> {
                let sni = match &tls.sni {
                    Some(sni) => sni.clone(),
                    None => upstream
                        .servers
                        .first()
                        .and_then(|s| s.address.host_port())
                        .map(|s| s.host.clone())
                        .unwrap_or_default(),
                };
                let roots = tls
                    .ca
                    .as_deref()
                    .map(super::tls::load_roots)
                    .transpose()
                    .map_err(|e| format!("upstreams.{name}.tls.ca: {e}"))?;
                // The pool, its name to check and its roots: a reload that
                // changes either starts new connections.
                let group = {
                    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
                    let ca = tls
                        .ca
                        .as_deref()
                        .map(std::fs::read)
                        .transpose()
                        .ok()
                        .flatten();
                    BuildHasherDefault::<DefaultHasher>::default().hash_one((name, &sni, ca))
                };
                Ok(PoolTls { sni, roots, group })
            })
            .transpose()?;
        let mut servers: Vec<Server> = Vec::new();
        for server in &upstream.servers {
            let addr = resolve(&server.address)?;
            if !servers.iter().any(|s| s.addr == addr) {
                let host = host_of(&addr)?;
                servers.push(Server {
                    addr,
                    host,
                    weight: server.weight.max(1),
                    load: Arc::default(),
                    record: Default::default(),
                });
            }
        }
        let check: Option<Box<dyn HealthCheck + Send + Sync>> =
            upstream
                .health_check
                .as_ref()
                .map(|check| -> Box<dyn HealthCheck + Send + Sync> {
                    match check.kind {
                        CheckKind::Tcp => {
                            let mut tcp = TcpHealthCheck::new();
                            tcp.peer_template.options.connection_timeout =
                                Some(upstream.connect_timeout.0);
                            tcp
                        }
                        CheckKind::Http => {
                            let mut http = HttpHealthCheck::new("portcullis-health", false);
                            if let Some(tls) = &tls {
                                tls.apply(&mut http.peer_template);
                            }
                            if let Ok(mut req) = pingora::http::RequestHeader::build(
                                "GET",
                                check.path.as_str().as_bytes(),
                                None,
                            ) {
                                let _ = req.insert_header("host", "portcullis-health");
                                let _ = req
                                    .insert_header("user-agent", "portcullis-gateway-health-check");
                                http.req = req;
                            }
                            http.peer_template.options.connection_timeout =
                                Some(upstream.connect_timeout.0);
                            http.peer_template.options.read_timeout =
                                Some(upstream.connect_timeout.0.max(Duration::from_secs(1)));
                            http.validator =
                                Some(Box::new(|response: &pingora::http::ResponseHeader| {
                                    if response.status.is_success() {
                                        Ok(())
                                    } else {
                                        pingora::Error::e_explain(
                                            pingora::ErrorType::CustomCode(
                                                "unhealthy status",
                                                response.status.as_u16(),
                                            ),
                                            "health check answered a non-2xx status",
                                        )
                                    }
                                }));
                            Box::new(http)
                        }
                    }
                });
        let balancer = match upstream.balance {
            Balance::RoundRobin | Balance::LeastRequests => {
                let mut lb = balancer::<RoundRobin>(name, &servers)?;
                if let Some(check) = check {
                    lb.set_health_check(check);
                }
                Balancer::RoundRobin(lb)
            }
            Balance::Random => {
                let mut lb = balancer::<Random>(name, &servers)?;
                if let Some(check) = check {
                    lb.set_health_check(check);
                }
                Balancer::Random(lb)
            }
            Balance::UserHash => {
                let mut lb = balancer::<Consistent>(name, &servers)?;
                if let Some(check) = check {
                    lb.set_health_check(check);
                }
                Balancer::Consistent(lb)
            }
        };
        Ok(Pool {
            name: name.to_owned(),
            latency: crate::metrics::get()
                .upstream_latency
                .with_label_values(&[name]),
            balancer,
            balance: upstream.balance,
            servers,
            load: Arc::default(),
            limits: upstream.limits,
            turn: Default::default(),
            retry: upstream.retry.as_ref().map(config::pools::Retry::settings),
            budget: upstream
                .retry
                .as_ref()
                .map(|r| crate::retries::Budget::new(r.budget.0, std::time::Instant::now())),
            outliers: upstream.passive_health.map(|p| crate::outliers::Settings {
                consecutive_failures: p.consecutive_failures,
                base_ejection: p.base_ejection.0,
                max_ejected_percent: p.max_ejected_percent.0,
            }),
            ejecting: std::sync::Mutex::new(()),
            check_interval: upstream.health_check.as_ref().map(|c| c.interval.0),
            connect_timeout: upstream.connect_timeout.0,
            read_timeout: upstream.read_timeout.0,
            write_timeout: upstream.write_timeout.0,
            idle_timeout: upstream.idle_timeout.0,
            tls,
        })
    }

    pub fn len(&self) -> usize {
        self.servers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// A healthy server (its index) not in `exclude`, by the pool's policy;
    /// `user` is the verified user, for `user_hash`.
    pub fn select(&self, exclude: &[usize], user: Option<&str>) -> Option<usize> {
        let index = |backend: &Backend| backend.ext.get::<usize>().copied();
        let now = self.outliers.map(|_| std::time::Instant::now());
        let ejected = |i: usize| {
            now.is_some_and(|now| self.servers.get(i).is_some_and(|s| s.record.ejected(now)))
        };
        let accept = |backend: &Backend, healthy: bool| {
            healthy && index(backend).is_some_and(|i| !exclude.contains(&i) && !ejected(i))
        };
        // Enough steps to get past every excluded or unhealthy server, on
        // a ring with up to 160 points per unit of weight.
        let iterations = self.servers.len() * 2 + 2;
        let backend = match (&self.balancer, self.balance, user) {
            (Balancer::Consistent(lb), _, Some(user)) => {
                lb.select_with(user.as_bytes(), iterations * 160, accept)
            }
            (_, Balance::LeastRequests | Balance::UserHash, _) => {
                return self.fewest_or_next(exclude);
            }
            (Balancer::RoundRobin(lb), ..) => lb.select_with(b"", iterations, accept),
            (Balancer::Random(lb), ..) => lb.select_with(b"", iterations, accept),
            (Balancer::Consistent(_), ..) => return None,
        }?;
        index(&backend)
    }

    /// Whether each server's requests in flight are counted: only
    /// `least_requests` reads them.
    pub fn counts_in_flight(&self) -> bool {
        self.balance == Balance::LeastRequests
    }

    /// Whether a server not in `exclude` is in rotation (healthy, not
    /// ejected); the balancer's turn is left as it is.
    pub fn any_other(&self, exclude: &[usize]) -> bool {
        !self.candidates(exclude).is_empty()
    }

    /// The healthy servers not in `exclude`: (index, weight, in flight).
    fn candidates(&self, exclude: &[usize]) -> Vec<(usize, u32, u32)> {
        let backends = self.backends();
        let now = std::time::Instant::now();
        backends
            .get_backend()
            .iter()
            .filter(|b| backends.ready(b))
            .filter_map(|b| {
                let i = *b.ext.get::<usize>()?;
                let server = self.servers.get(i)?;
                let ejected = self.outliers.is_some() && server.record.ejected(now);
                (!exclude.contains(&i) && !ejected)
                    .then(|| (i, server.weight, server.load.in_flight()))
            })
            .collect()
    }

    /// Records an attempt on server `index` for passive health: `failed`
    /// when it gave no answer or a 502/503/504. Ejects the server when that
    /// makes too many failures in a row.
    pub fn record(&self, index: usize, failed: bool) {
        let (Some(settings), Some(server)) = (&self.outliers, self.servers.get(index)) else {
            return;
        };
        let _one_at_a_time = self.ejecting.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        let out = self
            .servers
            .iter()
            .filter(|s| s.record.ejected(now))
            .count();
        if let Some(duration) = server
            .record
            .record(settings, failed, now, out, self.servers.len())
        {
            let name = server.to_string();
            metrics::get()
                .upstream_ejections
                .with_label_values(&[self.name.as_str(), name.as_str()])
                .inc();
            tracing::warn!(upstream = %self.name, server = %name, seconds = duration.as_secs_f64(), "server failing in live traffic; out of rotation");
        }
    }

    /// `least_requests`: the less busy of two; `user_hash` without a user:
    /// each healthy server in turn.
    fn fewest_or_next(&self, exclude: &[usize]) -> Option<usize> {
        let candidates = self.candidates(exclude);
        if self.balance == Balance::LeastRequests {
            return pool_load::two_choices(&candidates, pool_load::draws());
        }
        // Round robin by weight: each server takes turns in its share.
        let turn = self.turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        pool_load::weighted(&candidates, turn as u64).map(|c| c.0)
    }

    /// The server at `index` (as [`Pool::select`] gave it).
    pub fn server(&self, index: usize) -> Option<&Server> {
        self.servers.get(index)
    }

    /// A peer for `server` with this pool's timeouts. Every timeout is set:
    /// Pingora's defaults are unbounded.
    pub fn peer(&self, server: &Server) -> HttpPeer {
        // Pingora builds a peer from an IP address or a path; the address
        // is already resolved, so it is set as it is.
        let placeholder = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
        let mut peer = HttpPeer::new(placeholder, false, String::new());
        peer._address = server.addr.clone();
        if let Some(tls) = &self.tls {
            tls.apply(&mut peer);
        }
        peer.options.connection_timeout = Some(self.connect_timeout);
        peer.options.total_connection_timeout = Some(self.connect_timeout);
        peer.options.read_timeout = Some(self.read_timeout);
        peer.options.write_timeout = Some(self.write_timeout);
        peer.options.idle_timeout = Some(self.idle_timeout);
        peer
    }

    fn backends(&self) -> &pingora::lb::Backends {
        match &self.balancer {
            Balancer::RoundRobin(lb) => lb.backends(),
            Balancer::Random(lb) => lb.backends(),
            Balancer::Consistent(lb) => lb.backends(),
        }
    }

    /// Servers (as configured) and whether each is currently in rotation.
    pub fn health(&self) -> Vec<(String, bool)> {
        let backends = self.backends();
        let mut health: Vec<(usize, String, bool)> = backends
            .get_backend()
            .iter()
            .filter_map(|b| {
                let index = *b.ext.get::<usize>()?;
                Some((
                    index,
                    self.servers.get(index)?.to_string(),
                    backends.ready(b),
                ))
            })
            .collect();
        health.sort_by_key(|(index, ..)| *index);
        health
            .into_iter()
            .map(|(_, name, ready)| (name, ready))
            .collect()
    }

    /// Runs one round of health checks and publishes the result.
    pub async fn check_once(&self) {
        if self.check_interval.is_none() {
            return;
        }
        self.backends().run_health_check(true).await;
        let gauge = &metrics::get().upstream_healthy;
        for (addr, healthy) in self.health() {
            gauge
                .with_label_values(&[self.name.as_str(), addr.as_str()])
                .set(i64::from(healthy));
        }
    }

    /// Checks at the configured interval until `stop` turns true.
    pub fn spawn_checks(self: &Arc<Self>, mut stop: watch::Receiver<bool>) {
        let Some(interval) = self.check_interval else {
            return;
        };
        let pool = Arc::clone(self);
        tokio::spawn(async move {
            let mut previous = pool.health();
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = stop.changed() => return,
                }
                if *stop.borrow() {
                    return;
                }
                pool.check_once().await;
                let now = pool.health();
                for ((addr, was), (_, is)) in previous.iter().zip(now.iter()) {
                    if was != is {
                        if *is {
                            tracing::info!(upstream = %pool.name, server = %addr, "server back in rotation");
                        } else {
                            tracing::warn!(upstream = %pool.name, server = %addr, "server failed its health check; out of rotation");
                        }
                    }
                }
                previous = now;
            }
        });
    }
}
