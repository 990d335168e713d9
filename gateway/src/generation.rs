//! One version of the gateway's state ([`Generation`]), built from one read
//! of `routes.yaml`, and the handle that swaps it on reload ([`Gateway`]).

use crate::config::{Config, ConfigErrors};
use crate::{auth, connections, router};
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::watch;

/// What every generation is built with besides its file: settings from the
/// environment and flags, read once in `main`.
#[derive(Clone, Default)]
pub struct Start {
    /// The auth service's signing secret, for `auth.mode: local`.
    pub secret: Option<String>,
    /// Whether revocations can arrive (Redis or the admin listener).
    pub revocable: bool,
}

/// One version of the routing state, built from one read of `routes.yaml`.
/// Requests take a reference at their start and keep it to their end, so a
/// reload never changes the rules under a request.
pub struct Generation {
    pub config: Config,
    pub routes: router::RouteTable,
    pub pools: HashMap<String, Arc<crate::edge::upstreams::Pool>>,
    pub verifier: Arc<auth::Verifier>,
    /// The HTTPS listener's certificate, read with this generation's file.
    pub certificate: Option<Arc<crate::edge::tls::Certificate>>,
    stop: watch::Sender<bool>,
}

impl Generation {
    /// Builds a generation, resolving upstream names. The verifier (and its
    /// cache) of `previous` is kept when the auth settings did not change.
    pub fn build(
        config: Config,
        previous: Option<&Generation>,
        start: &Start,
    ) -> Result<Generation, String> {
        let mut pools = HashMap::new();
        for (name, upstream) in &config.upstreams {
            pools.insert(
                name.clone(),
                Arc::new(crate::edge::upstreams::Pool::build(name, upstream)?),
            );
        }
        // Grants are kept past their end as long as the longest
        // stale-if-error allowance of any route.
        let stale_window = config
            .routes
            .iter()
            .filter_map(|r| r.stale_if_error.map(|d| d.0))
            .max()
            .unwrap_or_default();
        let verifier = match previous {
            Some(previous)
                if previous.config.auth == config.auth
                    && previous.verifier.stale_window() == stale_window =>
            {
                Arc::clone(&previous.verifier)
            }
            _ => Arc::new(
                auth::Verifier::new(
                    &config.auth,
                    start.secret.as_deref().map(str::as_bytes),
                    start.revocable,
                )?
                .keeping_stale(stale_window, config.auth.cache_capacity),
            ),
        };
        let certificate = config
            .tls
            .as_ref()
            .map(|t| crate::edge::tls::load_certificate(&t.cert, &t.key))
            .transpose()
            .map_err(|e| format!("tls: {e}"))?;
        let (stop, _) = watch::channel(false);
        Ok(Generation {
            routes: router::RouteTable::new(&config),
            config,
            pools,
            verifier,
            certificate,
            stop,
        })
    }

    /// One health-check round for every pool. The load balancer counts a new server
    /// as healthy until checked, so this runs before a generation serves.
    pub async fn check_all(&self) {
        let checks = self.pools.values().map(|pool| pool.check_once());
        futures::future::join_all(checks).await;
    }

    /// Starts the periodic health checks of every pool.
    pub fn start_checks(&self) {
        for pool in self.pools.values() {
            pool.spawn_checks(self.stop.subscribe());
        }
    }

    /// Stops this generation's health checks.
    pub fn retire(&self) {
        let _ = self.stop.send(true);
    }
}

/// What a caught panic said, for the log line that reports it.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown cause".into());
    format!("building the routes failed: {text}")
}

/// The gateway's shared state: the current generation and where it came from.
pub struct Gateway {
    pub current: ArcSwap<Generation>,
    pub config_path: PathBuf,
    /// What every generation is built with besides its file.
    pub start: Start,
    /// WebSocket tunnels open, by user id; they outlive generations.
    pub tunnels: Arc<connections::Counts<String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Invalid(ConfigErrors),
    #[error("{0}")]
    Build(String),
}

impl Gateway {
    pub fn new(first: Generation, config_path: PathBuf, start: Start) -> Self {
        crate::edge::apply_head_limits(&first.config);
        Gateway {
            current: ArcSwap::from_pointee(first),
            config_path,
            start,
            tunnels: Arc::default(),
        }
    }

    /// Re-reads the routes file. A valid file replaces the current
    /// generation atomically, after its first health checks; an invalid one
    /// changes nothing.
    pub async fn reload(&self, source: &str) -> Result<usize, ReloadError> {
        let mut config =
            Config::from_source(source, &self.config_path).map_err(ReloadError::Invalid)?;
        let old = self.current.load_full();
        // The listeners belong to the running process: a changed address
        // needs a restart, and the running one is kept meanwhile.
        if config.listen != old.config.listen
            || config.server.metrics_listen != old.config.server.metrics_listen
            || config.server.admin_listen != old.config.server.admin_listen
        {
            tracing::warn!("listen addresses in the routes file changed; they apply on restart");
        }
        config.listen = old.config.listen.clone();
        config.server.metrics_listen = old.config.server.metrics_listen.clone();
        config.server.admin_listen = old.config.server.admin_listen.clone();
        let next =
            Generation::build(config, Some(&old), &self.start).map_err(ReloadError::Build)?;
        next.check_all().await;
        next.start_checks();
        let routes = next.routes.len();
        crate::edge::apply_head_limits(&next.config);
        let previous = self.current.swap(Arc::new(next));
        previous.retire();
        Ok(routes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The largest values `--check` allows still build every part of a
    /// generation: caches, buckets, pools.
    #[test]
    fn the_largest_accepted_values_build() {
        let source = r#"
server: { max_header_bytes: 1MiB, keepalive_timeout: 1h, grace_period: 1h }
auth:
  verify_url: http://127.0.0.1:9/api/verify
  cache_ttl: 24h
  negative_ttl: 1h
  cache_capacity: 10000000
  leeway: 5m
upstreams:
  tasks: { servers: ["127.0.0.1:9101"] }
routes:
  - prefix: /api/x
    upstream: tasks
    access: protected
    stale_if_error: 1h
    rate_limit:
      per_ip: { requests: 1, per: 24h, burst: 7 }
      route: { requests: 1000000, per: 1ms, burst: 1000000 }
"#;
        let config = Config::parse(source).expect("largest values");
        let start = Start {
            secret: None,
            revocable: true,
        };
        assert!(Generation::build(config, None, &start).is_ok());
    }
}
