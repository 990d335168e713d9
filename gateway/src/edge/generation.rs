//! One version of the gateway's state ([`Generation`]), built from one read
//! of `routes.yaml`, and the handle that swaps it on reload ([`Gateway`]).

use super::{tls, upstreams};
use crate::config::{Config, ConfigErrors};
use crate::request::Rules;
use crate::settings::Start;
use crate::{auth, connections, router};
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::watch;

/// One version of the routing state, built from one read of `routes.yaml`.
/// Requests take a reference at their start and keep it to their end, so a
/// reload never changes the rules under a request.
pub struct Generation {
    pub config: Config,
    pub routes: router::RouteTable,
    pub pools: HashMap<String, Arc<upstreams::Pool>>,
    pub verifier: Arc<auth::Verifier>,
    /// The HTTPS listener's certificates, read with this generation's file.
    pub certificate: Option<Arc<tls::Certificates>>,
    /// Request traces (`tracing:`); the export of `previous` is kept when
    /// the section did not change.
    pub tracer: Option<Arc<crate::trace::Tracer>>,
    /// 1 for the first table this process loaded, then one more per reload.
    pub number: u64,
    /// When it was built (seconds since the epoch).
    pub loaded_at: u64,
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
        if crate::shared_limits::store().is_none()
            && let Some(key) = config.shared_limits().first()
        {
            return Err(format!(
                "{key}: store: redis needs Redis (REDIS_URL or --redis-url)"
            ));
        }
        let mut pools = HashMap::new();
        for (name, upstream) in &config.upstreams {
            pools.insert(
                name.clone(),
                Arc::new(upstreams::Pool::build(name, upstream)?),
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
                .keeping_stale(stale_window, config.auth.cache_capacity)
                .with_revoked(Arc::clone(&start.revoked)),
            ),
        };
        let certificate = config
            .tls
            .as_ref()
            .map(tls::Certificates::load)
            .transpose()
            .map_err(|e| format!("tls: {e}"))?
            .map(Arc::new);
        let tracer = match (&config.tracing, previous.and_then(|p| p.tracer.as_ref())) {
            (None, _) => None,
            (Some(wanted), Some(kept)) if kept.serves(wanted) => Some(Arc::clone(kept)),
            (Some(wanted), _) => {
                Some(crate::trace::Tracer::start(wanted).map_err(|e| format!("tracing: {e}"))?)
            }
        };
        let (stop, _) = watch::channel(false);
        Ok(Generation {
            routes: router::RouteTable::new(&config),
            config,
            pools,
            verifier,
            certificate,
            tracer,
            number: previous.map_or(1, |p| p.number + 1),
            loaded_at: crate::auth::unix_now(),
            stop,
        })
    }

    /// What the plain admission decisions read of this generation.
    pub fn rules(&self) -> Rules<'_> {
        Rules {
            routes: &self.routes,
            server: &self.config.server,
            verifier: &self.verifier,
        }
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
    /// The last reloads and their results, for the status page.
    pub reloads: crate::status::Reloads,
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
        super::apply_head_limits(&first.config);
        Gateway {
            current: ArcSwap::from_pointee(first),
            config_path,
            start,
            tunnels: Arc::default(),
            reloads: crate::status::Reloads::default(),
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
        next.verifier.ready().await.map_err(ReloadError::Build)?;
        next.check_all().await;
        next.start_checks();
        let routes = next.routes.len();
        super::apply_head_limits(&next.config);
        let previous = self.current.swap(Arc::new(next));
        previous.retire();
        // Servers (and pools) that left the file leave the health gauge:
        // a dead server no longer configured must not keep an alert firing.
        let current = self.current.load();
        let gauge = &crate::metrics::get().upstream_healthy;
        for (name, pool) in &previous.pools {
            let kept = current
                .pools
                .get(name)
                .map(|p| p.health())
                .unwrap_or_default();
            for (address, _) in pool.health() {
                if !kept.iter().any(|(a, _)| *a == address) {
                    let _ = gauge.remove_label_values(&[name.as_str(), address.as_str()]);
                }
            }
        }
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
            ..Start::default()
        };
        assert!(Generation::build(config, None, &start).is_ok());
    }
}

/// Property tests: the routes file, arbitrary or cut short, against the
/// loader and the generation built from it.
#[cfg(test)]
mod properties {
    use super::{Generation, Start};
    use proptest::prelude::*;

    /// Values chosen to sit on and beyond every bound, and beyond what the
    /// types can hold.
    const DURATIONS: &[&str] = &[
        "0ms",
        "1ms",
        "250ms",
        "2s",
        "59m",
        "1h",
        "24h",
        "1000h",
        "8784h",
        "8785h",
        "5000000000h",
        "18446744073709551615s",
        "18446744073709551616ms",
        "1d",
        "-1s",
        "",
    ];
    const COUNTS: &[&str] = &[
        "0",
        "1",
        "7",
        "1000",
        "1000000",
        "1000001",
        "4000000000",
        "4294967296",
        "18446744073709551615",
        "-1",
        "1.5",
        "\"x\"",
    ];
    const SIZES: &[&str] = &[
        "0",
        "1KiB",
        "16KiB",
        "1MiB",
        "1GiB",
        "2GiB",
        "17179869184GiB",
        "18446744073709551615",
        "1TiB",
    ];
    const PREFIXES: &[&str] = &["/", "/api", "/api/x", "/api/x/y", "api", "/a//b", "/%2e"];

    /// A routes file built from `choices`: every key the schema has, each
    /// present or not, with values from the lists above.
    fn routes_file(choices: &[u16]) -> String {
        let mut at = 0;
        let mut pick = |n: usize| {
            let c = choices.get(at).copied().unwrap_or(0) as usize;
            at += 1;
            c % n
        };
        let mut out = String::new();
        let maybe = |out: &mut String, pick: &mut dyn FnMut(usize) -> usize, line: String| {
            if pick(3) != 0 {
                out.push_str(&line);
            }
        };
        // Each key present or not, with a value from `values`.
        let keys = |out: &mut String,
                    pick: &mut dyn FnMut(usize) -> usize,
                    indent: &str,
                    keys: &[&str],
                    values: &[&str]| {
            for key in keys {
                let v = values[pick(values.len())];
                maybe(out, pick, format!("{indent}{key}: {v}\n"));
            }
        };
        out.push_str("server:\n");
        let server_durations = [
            "grace_period",
            "keepalive_timeout",
            "request_head_timeout",
            "request_body_timeout",
        ];
        keys(&mut out, &mut pick, "  ", &server_durations, DURATIONS);
        keys(
            &mut out,
            &mut pick,
            "  ",
            &["max_header_bytes", "max_body_bytes"],
            SIZES,
        );
        let server_counts = [
            "threads",
            "upstream_keepalive_pool",
            "max_connections",
            "max_connections_per_ip",
            "max_websockets_per_user",
        ];
        keys(&mut out, &mut pick, "  ", &server_counts, COUNTS);
        out.push_str("auth:\n  verify_url: http://127.0.0.1:9/api/verify\n");
        let auth_durations = ["timeout", "cache_ttl", "negative_ttl"];
        keys(&mut out, &mut pick, "  ", &auth_durations, DURATIONS);
        let auth_counts = ["cache_capacity", "max_in_flight"];
        keys(&mut out, &mut pick, "  ", &auth_counts, COUNTS);
        out.push_str("upstreams:\n  a:\n    servers: [\"127.0.0.1:9\"]\n");
        let timeouts = [
            "connect_timeout",
            "read_timeout",
            "write_timeout",
            "idle_timeout",
        ];
        keys(&mut out, &mut pick, "    ", &timeouts, DURATIONS);
        let interval = DURATIONS[pick(DURATIONS.len())];
        maybe(
            &mut out,
            &mut pick,
            format!("    health_check: {{type: tcp, interval: {interval}}}\n"),
        );
        out.push_str("routes:\n");
        for _ in 0..1 + pick(4) {
            let prefix = PREFIXES[pick(PREFIXES.len())];
            let access = ["public", "protected"][pick(2)];
            out.push_str(&format!(
                "  - prefix: {prefix}\n    upstream: a\n    access: {access}\n"
            ));
            let v = DURATIONS[pick(DURATIONS.len())];
            maybe(&mut out, &mut pick, format!("    stale_if_error: {v}\n"));
            let v = SIZES[pick(SIZES.len())];
            maybe(&mut out, &mut pick, format!("    max_body_bytes: {v}\n"));
            for scope in ["per_ip", "per_user", "route"] {
                let (requests, per, burst) = (
                    COUNTS[pick(COUNTS.len())],
                    DURATIONS[pick(DURATIONS.len())],
                    COUNTS[pick(COUNTS.len())],
                );
                maybe(
                    &mut out,
                    &mut pick,
                    format!(
                        "    rate_limit: {{{scope}: {{requests: {requests}, per: {per}, burst: {burst}}}}}\n"
                    ),
                );
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::default())]

        /// Whatever a routes file holds, checking it never panics, and
        /// whatever checking accepts builds a generation without a panic.
        #[test]
        fn arbitrary_routes_files_never_panic_check_or_build(
            choices in proptest::collection::vec(any::<u16>(), 128),
            cut in any::<Option<u16>>(),
        ) {
            let mut source = routes_file(&choices);
            if let Some(cut) = cut {
                // A file cut short anywhere, as a half-written one is.
                let mut at = usize::from(cut) % (source.len() + 1);
                while !source.is_char_boundary(at) {
                    at -= 1;
                }
                source.truncate(at);
            }
            if let Ok(config) = crate::config::Config::parse(&source) {
                let _ = config.shadowing();
                let built = Generation::build(config, None, &Start { secret: None, revocable: true, ..Start::default() });
                prop_assert!(built.is_ok(), "{source}\n{:?}", built.err());
            }
        }

        /// Arbitrary bytes, within the size bound, never panic the check.
        #[test]
        fn arbitrary_text_never_panics_check(source in "(?s).{0,400}") {
            let _ = crate::config::Config::parse(&source);
        }
    }
}
