//! The schema of `routes.yaml`: one type per section, unknown keys refused.

use crate::answers::{Redirect, Respond};
use crate::compression::{CompressionDefaults, RouteCompression};
use crate::cors::Cors;
use crate::header_rules::HeaderRules;
use crate::hosts::HostPattern;
use crate::pools::{PassiveHealth, PoolLimits, Retry, ServerEntry};
use crate::values::*;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the proxy listens on.
    #[serde(default = "defaults::listen")]
    pub listen: String,
    #[serde(default)]
    pub server: ServerSettings,
    /// TLS termination on a listener of its own; none by default.
    #[serde(default)]
    pub tls: Option<Tls>,
    pub auth: Auth,
    pub upstreams: BTreeMap<String, Upstream>,
    pub routes: Vec<RouteSettings>,
    /// OpenTelemetry traces; none by default.
    #[serde(default)]
    pub tracing: Option<crate::traces::Tracing>,
    /// Where each key was in the file, for warnings made after loading.
    #[serde(skip)]
    pub lines: std::sync::Arc<crate::yaml_lines::KeyLines>,
}

/// `tls:`: HTTPS on `listen`, with the certificate chain and key in PEM
/// files (paths relative to the routes file). Both are read again on every
/// reload; TLS 1.2 and 1.3 only.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    pub listen: String,
    pub cert: String,
    pub key: String,
    /// Offer HTTP/2 by ALPN (h2, then http/1.1); otherwise HTTP/1.1 only.
    #[serde(default = "defaults::yes")]
    pub http2: bool,
    /// Answer every plain-HTTP request (but `/healthz`) on the top-level
    /// `listen` with a 308 to the same path over HTTPS.
    #[serde(default)]
    pub redirect_http: bool,
    /// More certificates, each chosen when the client's SNI names one of
    /// its `hosts`; `cert` and `key` above are the default.
    #[serde(default)]
    pub certificates: Vec<SniCertificate>,
}

/// `tls.certificates[]`: a certificate for some host names.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SniCertificate {
    pub hosts: Vec<HostPattern>,
    pub cert: String,
    pub key: String,
}

/// `upstreams.NAME.tls`: connect to the pool's servers over TLS, verifying
/// their certificates against `ca` (a PEM file) or the system's roots, for
/// the name `sni` (default: the first server's host).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    #[serde(default)]
    pub sni: Option<String>,
    #[serde(default)]
    pub ca: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Worker threads for the proxy; default: the number of cores.
    #[serde(default)]
    pub threads: Option<usize>,
    /// Whether an idle worker thread may take tasks queued on a busy one
    /// (one shared runtime), or each thread runs only the connections it
    /// accepted (one runtime per thread).
    #[serde(default = "defaults::work_stealing")]
    pub work_stealing: bool,
    /// How long in-flight requests may finish after SIGTERM.
    #[serde(default = "defaults::grace_period")]
    pub grace_period: Dur,
    /// How long an idle client connection is kept open.
    #[serde(default = "defaults::keepalive_timeout")]
    pub keepalive_timeout: Dur,
    /// Request line plus headers above this size are answered 431, as soon
    /// as that much has arrived.
    #[serde(default = "defaults::max_header_bytes")]
    pub max_header_bytes: ByteSize,
    /// A request head (line and headers) must be complete this long after
    /// its first byte; a slower one is answered 408.
    #[serde(default = "defaults::request_head_timeout")]
    pub request_head_timeout: Dur,
    /// A request body must arrive whole within this long of the head;
    /// a slower one is answered 408 (also bounds each read of it).
    #[serde(default = "defaults::request_body_timeout")]
    pub request_body_timeout: Dur,
    /// Client connections served at once; more are closed as they arrive.
    /// Default: derived from the open-file limit (see README).
    #[serde(default)]
    pub max_connections: Option<usize>,
    /// Client connections one IP address (one /64 for IPv6) may hold open
    /// at once; none when unset.
    #[serde(default)]
    pub max_connections_per_ip: Option<usize>,
    /// WebSocket tunnels one user may hold open through this gateway.
    #[serde(default = "defaults::max_websockets_per_user")]
    pub max_websockets_per_user: usize,
    /// Default request body limit for routes that set none.
    #[serde(default = "defaults::max_body_bytes")]
    pub max_body_bytes: ByteSize,
    /// Idle upstream connections kept per worker thread.
    #[serde(default = "defaults::upstream_keepalive_pool")]
    pub upstream_keepalive_pool: usize,
    /// Peers whose `X-Forwarded-*` headers are believed.
    #[serde(default)]
    pub trusted_proxies: Vec<Network>,
    /// Where Prometheus metrics are served; none when unset.
    #[serde(default)]
    pub metrics_listen: Option<String>,
    /// Where the auth service reports revocations when there is no Redis
    /// (`POST /revocations`, with `GATEWAY_ADMIN_TOKEN`); none when unset.
    #[serde(default)]
    pub admin_listen: Option<String>,
    /// Unix socket used to hand listeners to a new process on upgrade.
    #[serde(default = "defaults::upgrade_sock")]
    pub upgrade_sock: String,
    /// Response compression: which routes by default, and how.
    #[serde(default)]
    pub compression: CompressionDefaults,
}

impl ServerSettings {
    /// Whether `ip` is one of `trusted_proxies`.
    pub fn trusts(&self, ip: std::net::IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(ip))
    }
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            threads: None,
            work_stealing: defaults::work_stealing(),
            grace_period: defaults::grace_period(),
            keepalive_timeout: defaults::keepalive_timeout(),
            max_header_bytes: defaults::max_header_bytes(),
            request_head_timeout: defaults::request_head_timeout(),
            request_body_timeout: defaults::request_body_timeout(),
            max_connections: None,
            max_connections_per_ip: None,
            max_websockets_per_user: defaults::max_websockets_per_user(),
            max_body_bytes: defaults::max_body_bytes(),
            upstream_keepalive_pool: defaults::upstream_keepalive_pool(),
            trusted_proxies: Vec::new(),
            metrics_listen: None,
            admin_listen: None,
            upgrade_sock: defaults::upgrade_sock(),
            compression: CompressionDefaults::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Ask the auth service's verify endpoint (the default).
    Remote,
    /// Check HS256 signatures here with `JWT_SECRET_KEY`.
    Local,
    /// Check asymmetric signatures here against the issuer's published
    /// keys (`jwks_url`).
    Jwks,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    #[serde(default = "defaults::auth_mode")]
    pub mode: AuthMode,
    /// `POST {"access": token}` endpoint; required in remote mode.
    #[serde(default)]
    pub verify_url: Option<String>,
    #[serde(default = "defaults::verify_timeout")]
    pub timeout: Dur,
    /// Upper bound on how long a positive answer is reused.
    #[serde(default = "defaults::cache_ttl")]
    pub cache_ttl: Dur,
    /// How long a refusal (401) is reused.
    #[serde(default = "defaults::negative_ttl")]
    pub negative_ttl: Dur,
    #[serde(default = "defaults::cache_capacity")]
    pub cache_capacity: u64,
    /// Verifications sent to the auth service at once; more wait (within
    /// `timeout`) for one to finish. A flood of never-seen tokens, which no
    /// cache can absorb, then costs the auth service at most this much
    /// concurrency instead of one call per request in flight.
    #[serde(default = "defaults::max_in_flight")]
    pub max_in_flight: u32,
    /// Clock skew allowed past a token's `exp` (and before its `nbf` in
    /// local mode). The auth service allows 15 s; the same default here
    /// means a token is accepted or refused the same way whether the
    /// verdict comes from the cache, a local check or the auth service.
    #[serde(default = "defaults::leeway")]
    pub leeway: Dur,
    /// jwks mode (`jwks.rs`): where the issuer publishes its keys.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// jwks mode: the only `iss` accepted.
    #[serde(default)]
    pub issuer: Option<String>,
    /// jwks mode: a token's `aud` must name one of these.
    #[serde(default)]
    pub audiences: Option<Vec<String>>,
    /// jwks mode: the signature algorithms accepted (asymmetric only).
    #[serde(default)]
    pub algorithms: Option<Vec<crate::jwks::JwsAlgorithm>>,
    /// jwks mode: where the role or roles are (default `role`).
    #[serde(default)]
    pub roles_claim: Option<crate::jwks::ClaimPath>,
    /// jwks mode: where the user id is (default `sub`).
    #[serde(default)]
    pub user_id_claim: Option<crate::jwks::ClaimPath>,
    /// jwks mode: the JWKS is fetched at most once per this.
    #[serde(default)]
    pub jwks_min_refresh: Option<Dur>,
    /// jwks mode: a file keeping the last JWKS fetched.
    #[serde(default)]
    pub jwks_cache: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    RoundRobin,
    Random,
    /// The less busy of two servers picked at random (requests in flight
    /// over weight).
    LeastRequests,
    /// Each verified user to one server (consistent hashing of the user
    /// id); round robin on public routes.
    UserHash,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    Http,
    Tcp,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSettings {
    #[serde(rename = "type")]
    pub kind: CheckKind,
    /// Path requested by HTTP checks; any 2xx answer is healthy.
    #[serde(default = "defaults::health_path")]
    pub path: Prefix,
    #[serde(default = "defaults::health_interval")]
    pub interval: Dur,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// `host:port`, `unix:/path`, or `{address, weight}`.
    pub servers: Vec<ServerEntry>,
    #[serde(default = "defaults::balance")]
    pub balance: Balance,
    #[serde(default)]
    pub health_check: Option<HealthCheckSettings>,
    #[serde(default = "defaults::connect_timeout")]
    pub connect_timeout: Dur,
    /// Longest wait for each read from the upstream (headers or body).
    #[serde(default = "defaults::read_timeout")]
    pub read_timeout: Dur,
    #[serde(default = "defaults::write_timeout")]
    pub write_timeout: Dur,
    /// How long an idle pooled upstream connection is kept.
    #[serde(default = "defaults::idle_timeout")]
    pub idle_timeout: Dur,
    /// TLS to this pool's servers; plain HTTP when unset.
    #[serde(default)]
    pub tls: Option<UpstreamTls>,
    /// Load shedding: requests over these are answered 503 at once.
    #[serde(default)]
    pub limits: PoolLimits,
    /// Which failed attempts go again, and the budget for them.
    #[serde(default)]
    pub retry: Option<Retry>,
    /// Servers failing in live traffic leave rotation for a while.
    #[serde(default)]
    pub passive_health: Option<PassiveHealth>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Public,
    Protected,
}

impl Access {
    /// As written in `routes.yaml`.
    pub fn name(self) -> &'static str {
        match self {
            Access::Public => "public",
            Access::Protected => "protected",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSettings {
    pub prefix: Prefix,
    /// The hosts this route serves; every host when empty.
    #[serde(default)]
    pub hosts: Vec<HostPattern>,
    /// Name of an entry under `upstreams`; a route has this, `redirect` or
    /// `respond`.
    #[serde(default)]
    pub upstream: Option<String>,
    /// Answered by the gateway with a redirect.
    #[serde(default)]
    pub redirect: Option<Redirect>,
    /// Answered by the gateway with a fixed response.
    #[serde(default)]
    pub respond: Option<Respond>,
    pub access: Access,
    /// Roles allowed on a protected route; empty means any authenticated user.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Replaces the matched prefix before forwarding.
    #[serde(default)]
    pub rewrite: Option<Prefix>,
    /// Methods the route accepts; empty means all.
    #[serde(default)]
    pub methods: Vec<MethodName>,
    /// Whether the client's `Authorization` header reaches the upstream.
    #[serde(default)]
    pub forward_authorization: bool,
    /// Whether WebSocket upgrades are allowed.
    #[serde(default)]
    pub websocket: bool,
    /// Request body limit for this route.
    #[serde(default)]
    pub max_body_bytes: Option<ByteSize>,
    /// Rate limits for this route; none by default.
    #[serde(default)]
    pub rate_limit: Option<RateLimits>,
    /// While the auth service cannot answer, a cached grant that ended at
    /// most this long ago may still be used (protected routes; opt-in).
    #[serde(default)]
    pub stale_if_error: Option<Dur>,
    /// Response compression for this route (see `server.compression`).
    #[serde(default)]
    pub compression: Option<RouteCompression>,
    /// Edits to the request sent upstream.
    #[serde(default)]
    pub request_headers: HeaderRules,
    /// Edits to the response sent to the client.
    #[serde(default)]
    pub response_headers: HeaderRules,
    /// Cross-origin calls from browsers.
    #[serde(default)]
    pub cors: Option<Cors>,
}

/// `{requests: 100, per: 1s, burst: 200}`: on average `requests` every
/// `per`, and up to `burst` at once (default: `requests`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    pub requests: u32,
    pub per: Dur,
    #[serde(default)]
    pub burst: Option<u32>,
    /// Where the buckets live: this process (`local`), or Redis, shared by
    /// every gateway (`redis`, with `REDIS_URL`).
    #[serde(default)]
    pub store: LimitStore,
    /// With `store: redis`, what a check does while Redis cannot answer:
    /// the local bucket (`local`) or let the request through (`open`).
    #[serde(default)]
    pub fallback: LimitFallback,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitStore {
    #[default]
    Local,
    Redis,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitFallback {
    #[default]
    Local,
    Open,
}

impl Rate {
    /// `per × burst / requests`: how far ahead of now a bucket may run.
    /// `None` when it does not fit a `Duration`.
    pub fn depth(&self) -> Option<Duration> {
        let burst = self.burst.unwrap_or(self.requests);
        (self.per.0 / self.requests.max(1)).checked_mul(burst.max(1))
    }
}

/// A route's rate limits. `per_ip` and `route` apply before
/// authentication, so a flood is refused before any token is checked;
/// `per_user` after it (protected routes only).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimits {
    #[serde(default)]
    pub per_ip: Option<Rate>,
    #[serde(default)]
    pub per_user: Option<Rate>,
    /// All clients of the route together.
    #[serde(default)]
    pub route: Option<Rate>,
}

mod defaults {
    use super::*;
    pub fn listen() -> String {
        "127.0.0.1:8080".into()
    }
    pub fn grace_period() -> Dur {
        Dur(Duration::from_secs(5))
    }
    pub fn keepalive_timeout() -> Dur {
        Dur(Duration::from_secs(60))
    }
    pub fn max_header_bytes() -> ByteSize {
        ByteSize(16 * 1024)
    }
    pub fn request_head_timeout() -> Dur {
        Dur(Duration::from_secs(10))
    }
    pub fn request_body_timeout() -> Dur {
        Dur(Duration::from_secs(30))
    }
    pub fn max_websockets_per_user() -> usize {
        16
    }
    pub fn max_body_bytes() -> ByteSize {
        ByteSize(1024 * 1024)
    }
    /// Measured faster both with the gateway on its own core and sharing
    /// the cores with other processes (bench/results).
    pub fn work_stealing() -> bool {
        false
    }
    pub fn upstream_keepalive_pool() -> usize {
        256
    }
    pub fn yes() -> bool {
        true
    }
    pub fn upgrade_sock() -> String {
        "/tmp/portcullis-gateway-upgrade.sock".into()
    }
    pub fn auth_mode() -> AuthMode {
        AuthMode::Remote
    }
    pub fn verify_timeout() -> Dur {
        Dur(Duration::from_secs(2))
    }
    pub fn cache_ttl() -> Dur {
        Dur(Duration::from_secs(30))
    }
    pub fn negative_ttl() -> Dur {
        Dur(Duration::from_secs(5))
    }
    pub fn leeway() -> Dur {
        Dur(Duration::from_secs(15))
    }
    pub fn cache_capacity() -> u64 {
        100_000
    }
    pub fn max_in_flight() -> u32 {
        64
    }
    pub fn balance() -> Balance {
        Balance::RoundRobin
    }
    pub fn health_path() -> Prefix {
        Prefix("/healthz".into())
    }
    pub fn health_interval() -> Dur {
        Dur(Duration::from_secs(2))
    }
    pub fn connect_timeout() -> Dur {
        Dur(Duration::from_secs(1))
    }
    pub fn read_timeout() -> Dur {
        Dur(Duration::from_secs(30))
    }
    pub fn write_timeout() -> Dur {
        Dur(Duration::from_secs(30))
    }
    pub fn idle_timeout() -> Dur {
        Dur(Duration::from_secs(60))
    }
}

impl Config {
    /// The key paths of the limits kept in Redis (`store: redis`).
    pub fn shared_limits(&self) -> Vec<String> {
        let mut keys = Vec::new();
        for (i, route) in self.routes.iter().enumerate() {
            let Some(limits) = &route.rate_limit else {
                continue;
            };
            for (key, rate) in [
                ("per_ip", &limits.per_ip),
                ("per_user", &limits.per_user),
                ("route", &limits.route),
            ] {
                if rate.as_ref().is_some_and(|r| r.store == LimitStore::Redis) {
                    keys.push(format!("routes[{i}].rate_limit.{key}.store"));
                }
            }
        }
        keys
    }

    /// The request body limit of `route`.
    pub fn body_limit(&self, route: &RouteSettings) -> u64 {
        route.max_body_bytes.unwrap_or(self.server.max_body_bytes).0
    }
}

/// The jwks-mode keys (`jwks.rs` holds their types), with their defaults.
impl Auth {
    pub fn algorithms(&self) -> Vec<crate::jwks::JwsAlgorithm> {
        self.algorithms
            .clone()
            .unwrap_or_else(|| crate::jwks::DEFAULT_ALGORITHMS.to_vec())
    }

    pub fn roles_claim(&self) -> crate::jwks::ClaimPath {
        self.roles_claim
            .clone()
            .unwrap_or_else(|| crate::jwks::ClaimPath::of("role"))
    }

    pub fn user_id_claim(&self) -> crate::jwks::ClaimPath {
        self.user_id_claim
            .clone()
            .unwrap_or_else(|| crate::jwks::ClaimPath::of("sub"))
    }

    /// At most one JWKS fetch per this, however many unknown kids arrive.
    pub fn jwks_min_refresh(&self) -> Duration {
        self.jwks_min_refresh
            .map_or(Duration::from_secs(10), |d| d.0)
    }

    /// Which of the jwks-only keys are set (for the other modes' check).
    pub(crate) fn jwks_keys_set(&self) -> Vec<&'static str> {
        let set = [
            self.jwks_url.is_some(),
            self.issuer.is_some(),
            self.audiences.is_some(),
            self.algorithms.is_some(),
            self.roles_claim.is_some(),
            self.user_id_claim.is_some(),
            self.jwks_min_refresh.is_some(),
            self.jwks_cache.is_some(),
        ];
        crate::jwks::ONLY_JWKS
            .into_iter()
            .zip(set)
            .filter_map(|(key, set)| set.then_some(key))
            .collect()
    }
}
