//! Upstream pools: load balancing and active health checks.
//!
//! Each pool owns a Pingora load balancer over addresses resolved when the
//! pool is built. Health checks run in a task per pool that stops when the
//! pool's generation of the route table is replaced.

use crate::config::{self, Balance, CheckKind};
use crate::metrics;
use pingora::lb::health_check::{HealthCheck, HttpHealthCheck, TcpHealthCheck};
use pingora::lb::selection::{Random, RoundRobin};
use pingora::lb::{Backend, LoadBalancer};
use pingora::upstreams::peer::HttpPeer;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

enum Balancer {
    RoundRobin(LoadBalancer<RoundRobin>),
    Random(LoadBalancer<Random>),
}

pub struct Pool {
    pub name: String,
    balancer: Balancer,
    servers: Vec<SocketAddr>,
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

fn resolve(server: &config::HostPort) -> Result<Vec<SocketAddr>, String> {
    let addrs: Vec<SocketAddr> = (server.host.as_str(), server.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {server}: {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("{server} resolves to no address"));
    }
    // One address per configured server: a name with several records is
    // one server, not several.
    Ok(addrs.into_iter().take(1).collect())
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
        let mut servers = Vec::new();
        for server in &upstream.servers {
            for addr in resolve(server)? {
                if !servers.contains(&addr) {
                    servers.push(addr);
                }
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
        let addrs = servers.iter().map(ToString::to_string).collect::<Vec<_>>();
        let balancer = match upstream.balance {
            Balance::RoundRobin => {
                let mut lb =
                    LoadBalancer::<RoundRobin>::try_from_iter(addrs.iter().map(String::as_str))
                        .map_err(|e| format!("upstream {name}: {e}"))?;
                if let Some(check) = check {
                    lb.set_health_check(check);
                }
                Balancer::RoundRobin(lb)
            }
            Balance::Random => {
                let mut lb =
                    LoadBalancer::<Random>::try_from_iter(addrs.iter().map(String::as_str))
                        .map_err(|e| format!("upstream {name}: {e}"))?;
                if let Some(check) = check {
                    lb.set_health_check(check);
                }
                Balancer::Random(lb)
            }
        };
        Ok(Pool {
            name: name.to_owned(),
            balancer,
            servers,
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

    /// A healthy server not in `exclude`, by the pool's policy.
    pub fn select(&self, exclude: &[SocketAddr]) -> Option<SocketAddr> {
        let accept = |backend: &Backend, healthy: bool| {
            healthy
                && backend
                    .addr
                    .as_inet()
                    .is_some_and(|addr| !exclude.contains(addr))
        };
        let iterations = self.servers.len() * 2 + 2;
        let backend = match &self.balancer {
            Balancer::RoundRobin(lb) => lb.select_with(b"", iterations, accept),
            Balancer::Random(lb) => lb.select_with(b"", iterations, accept),
        }?;
        backend.addr.as_inet().copied()
    }

    /// A peer for `addr` with this pool's timeouts. Every timeout is set:
    /// Pingora's defaults are unbounded.
    pub fn peer(&self, addr: SocketAddr) -> HttpPeer {
        let mut peer = HttpPeer::new(addr, false, String::new());
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
        }
    }

    /// Servers and whether each is currently in rotation.
    pub fn health(&self) -> Vec<(SocketAddr, bool)> {
        let backends = self.backends();
        backends
            .get_backend()
            .iter()
            .filter_map(|b| b.addr.as_inet().map(|addr| (*addr, backends.ready(b))))
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
                .with_label_values(&[self.name.as_str(), addr.to_string().as_str()])
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
