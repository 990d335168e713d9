//! `routes.yaml`: the schema, its parsing, and every check that can be made
//! before anything starts.
//!
//! Parsing is strict: unknown keys are errors, and values are parsed into
//! newtypes (durations, sizes, prefixes, addresses) while deserialising, so
//! a mistake is reported with its key path and line. Checks that need the
//! whole file (a route naming an undefined upstream, two routes claiming the
//! same prefix and method) run afterwards and report every problem at once.

use serde::Deserialize;
use serde::de::{self, Deserializer};
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Key path, e.g. `routes[3].upstream`; empty for file-level problems.
    pub path: String,
    pub message: String,
    pub line: Option<usize>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        write!(f, "{}", self.message)?;
        if let Some(line) = self.line {
            write!(f, " at line {line}")?;
        }
        Ok(())
    }
}

/// Every problem found in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Bounds on the file as a whole. Each is far above what a real gateway
/// needs and low enough that checking or reloading a file at the bound
/// stays well under a second and a few hundred megabytes.
pub mod bounds {
    /// Size of the routes file.
    pub const FILE_BYTES: u64 = 8 * 1024 * 1024;
    /// Entries under `routes`.
    pub const ROUTES: usize = 100_000;
    /// Entries under `upstreams`.
    pub const UPSTREAMS: usize = 10_000;
    /// Servers of one upstream.
    pub const SERVERS: usize = 1_000;
    /// Roles of one route.
    pub const ROLES: usize = 64;
    /// Bytes of one role name.
    pub const ROLE_BYTES: usize = 128;
    /// Entries under `server.trusted_proxies`.
    pub const TRUSTED_PROXIES: usize = 1_024;
    /// Shadowing warnings reported one by one; the rest are counted.
    pub const WARNINGS: usize = 100;
}

// ---------------------------------------------------------------------------
// Value types, validated while parsing.

/// A duration written as `250ms`, `2s`, `5m` or `1h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl Dur {
    /// No duration in the file may be longer: every configured duration can
    /// then be added to an `Instant` or multiplied by a configured count
    /// without overflow. Each key has a tighter bound of its own.
    pub const MAX: Duration = Duration::from_secs(366 * 86_400);
    const MAX_TEXT: &str = "366 days";

    /// Written back in the file's own notation, for error messages.
    pub fn text(d: Duration) -> String {
        let ms = d.as_millis();
        if ms.is_multiple_of(3_600_000) && ms > 0 {
            format!("{}h", ms / 3_600_000)
        } else if ms.is_multiple_of(60_000) && ms > 0 {
            format!("{}m", ms / 60_000)
        } else if ms.is_multiple_of(1000) && ms > 0 {
            format!("{}s", ms / 1000)
        } else {
            format!("{ms}ms")
        }
    }

    pub fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        let split = raw
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| format!("{raw:?} has no unit: write e.g. 500ms, 2s, 1m"))?;
        let (number, unit) = raw.split_at(split);
        let n: u64 = number
            .parse()
            .map_err(|_| format!("{raw:?} is not a duration like 500ms, 2s or 1m"))?;
        let millis = match unit {
            "ms" => Some(n),
            "s" => n.checked_mul(1000),
            "m" => n.checked_mul(60_000),
            "h" => n.checked_mul(3_600_000),
            _ => return Err(format!("{raw:?} has an unknown unit: use ms, s, m or h")),
        };
        match millis {
            Some(millis) if Duration::from_millis(millis) <= Dur::MAX => {
                Ok(Dur(Duration::from_millis(millis)))
            }
            _ => Err(format!(
                "{raw:?} is too long: no duration here may exceed {}",
                Dur::MAX_TEXT
            )),
        }
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Dur::parse(&raw).map_err(de::Error::custom)
    }
}

/// A size in bytes written as `512`, `16KiB`, `1MiB` or `1GiB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bytes(pub u64);

impl Bytes {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
        let (number, unit) = raw.split_at(split);
        let n: u64 = number
            .parse()
            .map_err(|_| format!("{raw:?} is not a size like 512, 16KiB or 1MiB"))?;
        let factor = match unit.trim() {
            "" | "B" => 1,
            "KiB" | "K" | "KB" => 1024,
            "MiB" | "M" | "MB" => 1024 * 1024,
            "GiB" | "G" | "GB" => 1024 * 1024 * 1024,
            _ => return Err(format!("{raw:?} has an unknown unit: use KiB, MiB or GiB")),
        };
        n.checked_mul(factor)
            .map(Bytes)
            .ok_or_else(|| format!("{raw:?} is too large"))
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(Bytes(n)),
            Raw::Text(text) => Bytes::parse(&text).map_err(de::Error::custom),
        }
    }
}

/// A path prefix: absolute, already in normal form (no empty, `.` or `..`
/// segments, no percent-encoding, no trailing slash except for `/` itself),
/// so that it can be compared with normalised request paths byte for byte.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Prefix(pub String);

impl Prefix {
    /// Longer prefixes are refused: no request path that long is routed.
    pub const MAX_LEN: usize = 1024;

    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.len() > Prefix::MAX_LEN {
            return Err(format!(
                "prefix is {} bytes long; at most {} are allowed",
                raw.len(),
                Prefix::MAX_LEN
            ));
        }
        if !raw.starts_with('/') {
            return Err(format!("prefix {raw:?} must start with /"));
        }
        if raw == "/" {
            return Ok(Prefix(raw.into()));
        }
        let trimmed = raw.strip_suffix('/').unwrap_or(raw);
        for segment in trimmed[1..].split('/') {
            if segment.is_empty() || segment == "." || segment == ".." {
                return Err(format!(
                    "prefix {raw:?} has an empty, \".\" or \"..\" segment"
                ));
            }
            if segment
                .bytes()
                .any(|b| b == b'%' || b == b'\\' || b == b'?' || b == b'#' || !b.is_ascii_graphic())
            {
                return Err(format!(
                    "prefix {raw:?} may only hold printable ASCII without %, \\, ? or #"
                ));
            }
        }
        Ok(Prefix(trimmed.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `other` lies strictly inside this prefix, on whole segments
    /// (`/api` contains `/api/tasks`, never `/apix`).
    pub fn contains(&self, other: &Prefix) -> bool {
        let (outer, inner) = (self.0.as_str(), other.0.as_str());
        if outer == inner {
            return false;
        }
        outer == "/"
            || inner
                .strip_prefix(outer)
                .is_some_and(|rest| rest.starts_with('/'))
    }
}

impl<'de> Deserialize<'de> for Prefix {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Prefix::parse(&raw).map_err(de::Error::custom)
    }
}

/// An HTTP method token, upper-cased.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Method(pub String);

impl<'de> Deserialize<'de> for Method {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        const KNOWN: [&str; 9] = [
            "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT",
        ];
        let upper = raw.to_ascii_uppercase();
        if KNOWN.contains(&upper.as_str()) {
            Ok(Method(upper))
        } else {
            Err(de::Error::custom(format!(
                "unknown method {raw:?}: expected one of {}",
                KNOWN.join(", ")
            )))
        }
    }
}

/// An upstream server, `host:port`. Names are resolved when the table is
/// built, never per request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl HostPort {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let (host, port) = raw
            .rsplit_once(':')
            .ok_or_else(|| format!("{raw:?} must be host:port"))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{raw:?} has an invalid port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains(['/', ' ', '@']) {
            return Err(format!("{raw:?} has an invalid host"));
        }
        Ok(HostPort {
            host: host.into(),
            port,
        })
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl<'de> Deserialize<'de> for HostPort {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        HostPort::parse(&raw).map_err(de::Error::custom)
    }
}

/// An address or network (`10.0.0.0/8`, `::1`), for trusted proxies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    pub addr: IpAddr,
    pub bits: u8,
}

impl Network {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let (addr, bits) = match raw.split_once('/') {
            Some((addr, bits)) => (addr, Some(bits)),
            None => (raw, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{raw:?} is not an IP address or network"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            Some(bits) => bits
                .parse::<u8>()
                .ok()
                .filter(|b| *b <= max)
                .ok_or_else(|| format!("{raw:?} has an invalid prefix length"))?,
            None => max,
        };
        Ok(Network { addr, bits })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V6(v6)) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            _ => ip,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.bits))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl<'de> Deserialize<'de> for Network {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Network::parse(&raw).map_err(de::Error::custom)
    }
}

// ---------------------------------------------------------------------------
// The schema.

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the proxy listens on.
    #[serde(default = "defaults::listen")]
    pub listen: String,
    #[serde(default)]
    pub server: Server,
    /// TLS termination on a listener of its own; none by default.
    #[serde(default)]
    pub tls: Option<Tls>,
    pub auth: Auth,
    pub upstreams: BTreeMap<String, Upstream>,
    pub routes: Vec<Route>,
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
pub struct Server {
    /// Worker threads for the proxy; default: the number of cores.
    #[serde(default)]
    pub threads: Option<usize>,
    /// How long in-flight requests may finish after SIGTERM.
    #[serde(default = "defaults::grace_period")]
    pub grace_period: Dur,
    /// How long an idle client connection is kept open.
    #[serde(default = "defaults::keepalive_timeout")]
    pub keepalive_timeout: Dur,
    /// Request line plus headers above this size are answered 431, as soon
    /// as that much has arrived.
    #[serde(default = "defaults::max_header_bytes")]
    pub max_header_bytes: Bytes,
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
    pub max_body_bytes: Bytes,
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
}

impl Server {
    /// Whether `ip` is one of `trusted_proxies`.
    pub fn trusts(&self, ip: std::net::IpAddr) -> bool {
        self.trusted_proxies.iter().any(|net| net.contains(ip))
    }
}

impl Default for Server {
    fn default() -> Self {
        Server {
            threads: None,
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    RoundRobin,
    Random,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    Http,
    Tcp,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
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
    pub servers: Vec<HostPort>,
    #[serde(default = "defaults::balance")]
    pub balance: Balance,
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
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
pub struct Route {
    pub prefix: Prefix,
    /// Name of an entry under `upstreams`.
    pub upstream: String,
    pub access: Access,
    /// Roles allowed on a protected route; empty means any authenticated user.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Replaces the matched prefix before forwarding.
    #[serde(default)]
    pub rewrite: Option<Prefix>,
    /// Methods the route accepts; empty means all.
    #[serde(default)]
    pub methods: Vec<Method>,
    /// Whether the client's `Authorization` header reaches the upstream.
    #[serde(default)]
    pub forward_authorization: bool,
    /// Whether WebSocket upgrades are allowed.
    #[serde(default)]
    pub websocket: bool,
    /// Request body limit for this route.
    #[serde(default)]
    pub max_body_bytes: Option<Bytes>,
    /// Rate limits for this route; none by default.
    #[serde(default)]
    pub rate_limit: Option<RateLimits>,
    /// While the auth service cannot answer, a cached grant that ended at
    /// most this long ago may still be used (protected routes; opt-in).
    #[serde(default)]
    pub stale_if_error: Option<Dur>,
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
    pub fn max_header_bytes() -> Bytes {
        Bytes(16 * 1024)
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
    pub fn max_body_bytes() -> Bytes {
        Bytes(1024 * 1024)
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

// ---------------------------------------------------------------------------
// Parsing and checking.

/// A prefix's segments (none for `/`).
fn segments(prefix: &Prefix) -> impl Iterator<Item = &str> {
    prefix.as_str().split('/').filter(|s| !s.is_empty())
}

impl Config {
    /// Parses and checks `source`. On failure, every problem found is
    /// returned, each with its key path and, where known, its line.
    pub fn parse(source: &str) -> Result<Config, ConfigErrors> {
        let file_error = |path: String, message: String, line: Option<usize>| {
            ConfigErrors(vec![ConfigError {
                path,
                message,
                line,
            }])
        };
        if source.len() as u64 > bounds::FILE_BYTES {
            return Err(file_error(
                String::new(),
                format!(
                    "the file is {} bytes; at most {} are read",
                    source.len(),
                    bounds::FILE_BYTES
                ),
                None,
            ));
        }
        // One read of the file: bounded (aliases, nesting), its keys' lines
        // indexed, its events kept for serde.
        let (lines, events) = crate::yaml_lines::KeyLines::read(source)
            .map_err(|r| file_error(r.path, r.message, Some(r.line)))?;
        let mut de = crate::yaml_de::Deserializer::new(&events);
        let parsed: Result<Config, _> = serde_path_to_error::deserialize(&mut de);
        let config = match parsed {
            Ok(config) => config,
            Err(e) => {
                let path = e.path().to_string();
                let path = if path == "." { String::new() } else { path };
                let line = lines.line(&path).or_else(|| de.line());
                return Err(file_error(path, e.into_inner().0, line));
            }
        };
        drop(events);
        let errors = config.check(&lines);
        if errors.is_empty() {
            let mut config = config;
            config.lines = std::sync::Arc::new(lines);
            Ok(config)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// Routes nested inside a route of the other access: a public route
    /// inside a protected one opens part of it to anyone; a protected route
    /// inside a public one closes part of it. Both can be meant, neither is
    /// an error, and both are worth a second look, so `--check` and every
    /// load report them with both lines.
    ///
    /// The routes' prefixes go into a tree of segments once; each route then
    /// walks down its own segments, meeting exactly the routes whose prefix
    /// contains its own: the cost grows with the total length of the
    /// prefixes and the pairs found, never with routes × routes. At most
    /// [`bounds::WARNINGS`] pairs are kept (the first, in file order); one
    /// more line counts the rest.
    pub fn shadowing(&self) -> Vec<ConfigError> {
        let line = |i: usize| self.lines.line(&format!("routes[{i}].prefix"));
        // Node 0 is `/`; each node: its children by segment, the routes
        // whose prefix ends there.
        let mut nodes: Vec<(std::collections::HashMap<&str, usize>, Vec<usize>)> =
            vec![Default::default()];
        let mut ends = Vec::with_capacity(self.routes.len());
        for (i, route) in self.routes.iter().enumerate() {
            let mut node = 0;
            for segment in segments(&route.prefix) {
                node = match nodes[node].0.get(segment) {
                    Some(&child) => child,
                    None => {
                        nodes.push(Default::default());
                        let child = nodes.len() - 1;
                        nodes[node].0.insert(segment, child);
                        child
                    }
                };
            }
            nodes[node].1.push(i);
            ends.push(node);
        }
        // The first pairs in (outer, inner) order, in a bounded max-heap.
        let mut kept = std::collections::BinaryHeap::new();
        let mut total = 0usize;
        for (i, inner) in self.routes.iter().enumerate() {
            let mut node = 0;
            let mut path = segments(&inner.prefix);
            while node != ends[i] {
                for &o in &nodes[node].1 {
                    if self.routes[o].access != inner.access {
                        total += 1;
                        kept.push((o, i));
                        if kept.len() > bounds::WARNINGS {
                            kept.pop();
                        }
                    }
                }
                let Some(next) = path.next().and_then(|s| nodes[node].0.get(s)) else {
                    break;
                };
                node = *next;
            }
        }
        let pairs = kept.into_sorted_vec();
        let at = |i: usize| line(i).map(|l| format!(" (line {l})")).unwrap_or_default();
        let mut found: Vec<ConfigError> = pairs
            .into_iter()
            .take(bounds::WARNINGS)
            .map(|(o, i)| {
                let (outer, inner) = (&self.routes[o], &self.routes[i]);
                let effect = match inner.access {
                    Access::Public => "requests under it skip authentication",
                    Access::Protected => "requests under it need a token",
                };
                ConfigError {
                    path: format!("routes[{i}].prefix"),
                    message: format!(
                        "{} route {}{} lies inside {} route {}{}: {effect}",
                        inner.access.name(),
                        inner.prefix.as_str(),
                        at(i),
                        outer.access.name(),
                        outer.prefix.as_str(),
                        at(o),
                    ),
                    line: None,
                }
            })
            .collect();
        if total > bounds::WARNINGS {
            found.push(ConfigError {
                path: "routes".into(),
                message: format!(
                    "{} more routes lie inside a route of the other access",
                    total - bounds::WARNINGS
                ),
                line: None,
            });
        }
        found
    }

    /// Reads and parses a file. Relative file paths in it (certificates,
    /// keys, CA files) are taken relative to the file's directory. A file
    /// over [`bounds::FILE_BYTES`] is refused without being read whole.
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigErrors> {
        let source = read_bounded(path).map_err(|message| {
            ConfigErrors(vec![ConfigError {
                path: String::new(),
                message,
                line: None,
            }])
        })?;
        let mut config = Config::parse(&source)?;
        config.resolve_paths(path.parent().unwrap_or(std::path::Path::new(".")));
        Ok(config)
    }

    /// Makes relative file paths relative to `base`.
    pub fn resolve_paths(&mut self, base: &std::path::Path) {
        let resolve = |path: &mut String| {
            if std::path::Path::new(path.as_str()).is_relative() {
                *path = base.join(path.as_str()).display().to_string();
            }
        };
        if let Some(tls) = &mut self.tls {
            resolve(&mut tls.cert);
            resolve(&mut tls.key);
        }
        for upstream in self.upstreams.values_mut() {
            if let Some(ca) = upstream.tls.as_mut().and_then(|t| t.ca.as_mut()) {
                resolve(ca);
            }
        }
    }

    fn check(&self, lines: &crate::yaml_lines::KeyLines) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        let mut error = |path: String, message: String| {
            let line = lines.line(&path);
            errors.push(ConfigError {
                path,
                message,
                line,
            });
        };
        // `key` must lie within [min, max].
        fn within(
            error: &mut dyn FnMut(String, String),
            key: String,
            value: Duration,
            min: Duration,
            max: Duration,
        ) {
            if value < min || value > max {
                let message = if min.is_zero() {
                    format!("must be at most {}", Dur::text(max))
                } else {
                    format!("must be between {} and {}", Dur::text(min), Dur::text(max))
                };
                error(key, message);
            }
        }
        const MS: Duration = Duration::from_millis(1);
        const MINUTE: Duration = Duration::from_secs(60);
        const HOUR: Duration = Duration::from_secs(3600);
        const DAY: Duration = Duration::from_secs(86_400);
        const MAX_BODY: u64 = 1024 * 1024 * 1024;

        for (key, count, max) in [
            ("routes", self.routes.len(), bounds::ROUTES),
            ("upstreams", self.upstreams.len(), bounds::UPSTREAMS),
            (
                "server.trusted_proxies",
                self.server.trusted_proxies.len(),
                bounds::TRUSTED_PROXIES,
            ),
        ] {
            if count > max {
                error(
                    key.into(),
                    format!("has {count} entries; at most {max} are allowed"),
                );
            }
        }

        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            error(
                "listen".into(),
                format!("{:?} is not an IP:port address", self.listen),
            );
        }
        if let Some(metrics) = &self.server.metrics_listen
            && metrics.parse::<std::net::SocketAddr>().is_err()
        {
            error(
                "server.metrics_listen".into(),
                format!("{metrics:?} is not an IP:port address"),
            );
        }
        if let Some(admin) = &self.server.admin_listen
            && admin.parse::<std::net::SocketAddr>().is_err()
        {
            error(
                "server.admin_listen".into(),
                format!("{admin:?} is not an IP:port address"),
            );
        }
        if let Some(tls) = &self.tls {
            match tls.listen.parse::<std::net::SocketAddr>() {
                Err(_) => error(
                    "tls.listen".into(),
                    format!("{:?} is not an IP:port address", tls.listen),
                ),
                Ok(addr) if Some(addr) == self.listen.parse().ok() && addr.port() != 0 => error(
                    "tls.listen".into(),
                    "must differ from the plain listen address".into(),
                ),
                Ok(_) => {}
            }
            for (key, value) in [("cert", &tls.cert), ("key", &tls.key)] {
                if value.is_empty() {
                    error(format!("tls.{key}"), "needs a file path".into());
                }
            }
        }
        if let Some(threads) = self.server.threads
            && !(1..=512).contains(&threads)
        {
            error("server.threads".into(), "must be between 1 and 512".into());
        }
        if !(1024..=1024 * 1024).contains(&self.server.max_header_bytes.0) {
            error(
                "server.max_header_bytes".into(),
                "must be between 1KiB and 1MiB".into(),
            );
        }
        if self.server.max_body_bytes.0 > MAX_BODY {
            error(
                "server.max_body_bytes".into(),
                "must be at most 1GiB".into(),
            );
        }
        if self.server.upstream_keepalive_pool > 100_000 {
            error(
                "server.upstream_keepalive_pool".into(),
                "must be at most 100000".into(),
            );
        }
        within(
            &mut error,
            "server.grace_period".into(),
            self.server.grace_period.0,
            Duration::ZERO,
            HOUR,
        );
        within(
            &mut error,
            "server.request_head_timeout".into(),
            self.server.request_head_timeout.0,
            Duration::from_millis(100),
            HOUR,
        );
        within(
            &mut error,
            "server.request_body_timeout".into(),
            self.server.request_body_timeout.0,
            Duration::from_millis(100),
            HOUR,
        );
        for (key, value, max) in [
            ("max_connections", self.server.max_connections, 1_000_000),
            (
                "max_connections_per_ip",
                self.server.max_connections_per_ip,
                1_000_000,
            ),
            (
                "max_websockets_per_user",
                Some(self.server.max_websockets_per_user),
                100_000,
            ),
        ] {
            if value.is_some_and(|v| !(1..=max).contains(&v)) {
                error(
                    format!("server.{key}"),
                    format!("must be between 1 and {max}"),
                );
            }
        }
        within(
            &mut error,
            "server.keepalive_timeout".into(),
            self.server.keepalive_timeout.0,
            Duration::ZERO,
            HOUR,
        );

        let protected = self.routes.iter().any(|r| r.access == Access::Protected);
        match (&self.auth.mode, &self.auth.verify_url) {
            (AuthMode::Remote, None) if protected => error(
                "auth.verify_url".into(),
                "is required for protected routes in remote mode".into(),
            ),
            (AuthMode::Remote, Some(url))
                if !url.starts_with("http://") || url.parse::<http::Uri>().is_err() =>
            {
                error(
                    "auth.verify_url".into(),
                    format!("{url:?} must be an http:// URL"),
                );
            }
            _ => {}
        }
        within(
            &mut error,
            "auth.timeout".into(),
            self.auth.timeout.0,
            MS,
            MINUTE,
        );
        within(
            &mut error,
            "auth.cache_ttl".into(),
            self.auth.cache_ttl.0,
            Duration::ZERO,
            DAY,
        );
        within(
            &mut error,
            "auth.negative_ttl".into(),
            self.auth.negative_ttl.0,
            Duration::ZERO,
            HOUR,
        );
        if !(1..=10_000).contains(&self.auth.max_in_flight) {
            error(
                "auth.max_in_flight".into(),
                "must be between 1 and 10000".into(),
            );
        }
        if self.auth.cache_capacity == 0 {
            error(
                "auth.cache_capacity".into(),
                "must be at least 1 (use a short cache_ttl to limit reuse)".into(),
            );
        } else if self.auth.cache_capacity > 10_000_000 {
            error(
                "auth.cache_capacity".into(),
                "must be at most 10000000".into(),
            );
        }

        for (name, upstream) in &self.upstreams {
            let at = format!("upstreams.{name}");
            if upstream.servers.is_empty() {
                error(
                    format!("{at}.servers"),
                    "needs at least one host:port".into(),
                );
            } else if upstream.servers.len() > bounds::SERVERS {
                error(
                    format!("{at}.servers"),
                    format!(
                        "has {} entries; at most {} are allowed",
                        upstream.servers.len(),
                        bounds::SERVERS
                    ),
                );
            }
            if let Some(tls) = &upstream.tls {
                if tls.sni.as_deref().is_some_and(str::is_empty) {
                    error(format!("{at}.tls.sni"), "must not be empty".into());
                }
                if tls.ca.as_deref().is_some_and(str::is_empty) {
                    error(format!("{at}.tls.ca"), "needs a file path".into());
                }
            }
            if let Some(check) = &upstream.health_check {
                within(
                    &mut error,
                    format!("{at}.health_check.interval"),
                    check.interval.0,
                    Duration::from_millis(100),
                    HOUR,
                );
            }
            for (key, value) in [
                ("connect_timeout", upstream.connect_timeout),
                ("read_timeout", upstream.read_timeout),
                ("write_timeout", upstream.write_timeout),
            ] {
                within(&mut error, format!("{at}.{key}"), value.0, MS, HOUR);
            }
            within(
                &mut error,
                format!("{at}.idle_timeout"),
                upstream.idle_timeout.0,
                Duration::ZERO,
                HOUR,
            );
        }

        // Prefix → (whether a route takes every method, methods claimed):
        // one lookup per route and method, whatever the number of routes.
        let mut claimed: std::collections::HashMap<&str, (bool, HashSet<&str>)> =
            std::collections::HashMap::new();
        for (i, route) in self.routes.iter().enumerate() {
            let at = format!("routes[{i}]");
            if !self.upstreams.contains_key(&route.upstream) {
                error(
                    format!("{at}.upstream"),
                    format!("unknown upstream {:?}", route.upstream),
                );
            }
            if route.access == Access::Public && !route.roles.is_empty() {
                error(format!("{at}.roles"), "roles need access: protected".into());
            }
            if let Some(body) = route.max_body_bytes
                && body.0 > MAX_BODY
            {
                error(
                    format!("{at}.max_body_bytes"),
                    "must be at most 1GiB".into(),
                );
            }
            if let Some(stale) = route.stale_if_error {
                if route.access == Access::Public {
                    error(
                        format!("{at}.stale_if_error"),
                        "needs access: protected".into(),
                    );
                }
                within(
                    &mut error,
                    format!("{at}.stale_if_error"),
                    stale.0,
                    MS,
                    HOUR,
                );
            }
            if let Some(limits) = &route.rate_limit {
                if route.access == Access::Public && limits.per_user.is_some() {
                    error(
                        format!("{at}.rate_limit.per_user"),
                        "needs access: protected (a public route has no user)".into(),
                    );
                }
                for (key, rate) in [
                    ("per_ip", &limits.per_ip),
                    ("per_user", &limits.per_user),
                    ("route", &limits.route),
                ] {
                    let Some(rate) = rate else { continue };
                    let at = format!("{at}.rate_limit.{key}");
                    let count = |error: &mut dyn FnMut(String, String), key: &str, value: u32| {
                        if !(1..=1_000_000).contains(&value) {
                            error(
                                format!("{at}.{key}"),
                                "must be between 1 and 1000000".into(),
                            );
                        }
                    };
                    count(&mut error, "requests", rate.requests);
                    within(&mut error, format!("{at}.per"), rate.per.0, MS, DAY);
                    if let Some(burst) = rate.burst {
                        count(&mut error, "burst", burst);
                    }
                    // The bucket's depth in time: how far ahead of now a
                    // client may be, and how long an idle bucket is kept.
                    match rate.depth() {
                        Some(depth) if depth <= 7 * DAY => {}
                        depth => error(
                            at.clone(),
                            format!(
                                "burst × per / requests is {}; at most 7 days are allowed",
                                depth.map_or_else(|| "too long".into(), Dur::text)
                            ),
                        ),
                    }
                }
            }
            if route.roles.len() > bounds::ROLES {
                error(
                    format!("{at}.roles"),
                    format!(
                        "has {} entries; at most {} are allowed",
                        route.roles.len(),
                        bounds::ROLES
                    ),
                );
            }
            for role in &route.roles {
                if role.is_empty()
                    || role.len() > bounds::ROLE_BYTES
                    || !role.bytes().all(|b| b.is_ascii_graphic())
                {
                    let shown: String = role.chars().take(32).collect();
                    error(
                        format!("{at}.roles"),
                        format!(
                            "invalid role {shown:?}: 1 to {} printable ASCII characters",
                            bounds::ROLE_BYTES
                        ),
                    );
                    break;
                }
            }
            // A GET route also answers HEAD, so it claims HEAD too.
            let methods: Vec<Option<&str>> = if route.methods.is_empty() {
                vec![None]
            } else {
                let mut methods: Vec<Option<&str>> =
                    route.methods.iter().map(|m| Some(m.0.as_str())).collect();
                if methods.contains(&Some("GET")) && !methods.contains(&Some("HEAD")) {
                    methods.push(Some("HEAD"));
                }
                methods
            };
            let (any, taken) = claimed.entry(route.prefix.as_str()).or_default();
            for method in methods {
                let overlaps = *any
                    || match method {
                        None => !taken.is_empty(),
                        Some(method) => taken.contains(method),
                    };
                if overlaps {
                    error(
                        format!("{at}.prefix"),
                        format!(
                            "{:?} is already routed{}",
                            route.prefix.as_str(),
                            method.map(|m| format!(" for {m}")).unwrap_or_default()
                        ),
                    );
                    break;
                }
                match method {
                    None => *any = true,
                    Some(method) => {
                        taken.insert(method);
                    }
                }
            }
        }
        errors
    }

    /// The request body limit of `route`.
    pub fn body_limit(&self, route: &Route) -> u64 {
        route.max_body_bytes.unwrap_or(self.server.max_body_bytes).0
    }
}

/// Reads a file of at most [`bounds::FILE_BYTES`], never more into memory.
fn read_bounded(path: &std::path::Path) -> Result<String, String> {
    use std::io::Read;
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(bounds::FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() as u64 > bounds::FILE_BYTES {
        return Err(format!(
            "{} is larger than {} bytes, the most a routes file may hold",
            path.display(),
            bounds::FILE_BYTES
        ));
    }
    String::from_utf8(bytes).map_err(|_| format!("{} is not UTF-8", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
auth:
  verify_url: http://127.0.0.1:9001/api/verify
upstreams:
  tasks:
    servers: ["127.0.0.1:9101"]
routes:
  - prefix: /api/tasks
    upstream: tasks
    access: protected
"#;

    #[test]
    fn prefixes_contain_on_whole_segments_only() {
        let p = |s: &str| Prefix::parse(s).expect("prefix");
        for (outer, inner, expected) in [
            ("/api", "/api/tasks", true),
            ("/api", "/api/tasks/7", true),
            ("/", "/api", true),
            ("/api", "/apix", false),
            ("/api", "/api", false),
            ("/api/tasks", "/api", false),
            ("/", "/", false),
        ] {
            assert_eq!(p(outer).contains(&p(inner)), expected, "{outer} ⊃ {inner}");
        }
    }

    #[test]
    fn routes_nested_in_the_other_access_are_reported_with_both_lines() {
        let source = r#"
auth:
  verify_url: http://127.0.0.1:9001/api/verify
upstreams:
  app:
    servers: ["127.0.0.1:9101"]
routes:
  - prefix: /api
    upstream: app
    access: protected
  - prefix: /api/tasks/export
    upstream: app
    access: public
  - prefix: /docs
    upstream: app
    access: public
  - prefix: /docs/internal
    upstream: app
    access: protected
  - prefix: /api/orders
    upstream: app
    access: protected
  - prefix: /docsets
    upstream: app
    access: protected
"#;
        let config = Config::parse(source).expect("valid");
        let found: Vec<String> = config.shadowing().iter().map(ToString::to_string).collect();
        assert_eq!(
            found,
            [
                "routes[1].prefix: public route /api/tasks/export (line 11) lies inside protected route /api (line 8): requests under it skip authentication",
                "routes[3].prefix: protected route /docs/internal (line 17) lies inside public route /docs (line 14): requests under it need a token",
            ]
        );
        // The shipped file has no such nesting.
        let shipped = include_str!("../../routes.yaml");
        let config = Config::parse(shipped).expect("shipped routes");
        assert!(config.shadowing().is_empty());
    }

    #[test]
    fn minimal_file_gets_the_documented_defaults() {
        let config = Config::parse(MINIMAL).expect("valid");
        assert_eq!(config.listen, "127.0.0.1:8080");
        assert_eq!(config.auth.mode, AuthMode::Remote);
        assert_eq!(config.auth.cache_ttl, Dur(Duration::from_secs(30)));
        assert_eq!(config.server.grace_period, Dur(Duration::from_secs(5)));
        let tasks = &config.upstreams["tasks"];
        assert_eq!(tasks.balance, Balance::RoundRobin);
        assert_eq!(tasks.connect_timeout, Dur(Duration::from_secs(1)));
        assert!(tasks.health_check.is_none());
        assert_eq!(config.routes[0].prefix.as_str(), "/api/tasks");
        assert!(!config.routes[0].forward_authorization);
        assert_eq!(config.body_limit(&config.routes[0]), 1024 * 1024);
    }

    #[test]
    fn value_types() {
        assert_eq!(Dur::parse("250ms"), Ok(Dur(Duration::from_millis(250))));
        assert_eq!(Dur::parse("2s"), Ok(Dur(Duration::from_secs(2))));
        assert_eq!(Dur::parse("1m"), Ok(Dur(Duration::from_secs(60))));
        assert!(Dur::parse("2").is_err());
        assert!(Dur::parse("2 weeks").is_err());
        assert!(Dur::parse("-1s").is_err());
        assert_eq!(Bytes::parse("16KiB"), Ok(Bytes(16384)));
        assert_eq!(Bytes::parse("1MiB"), Ok(Bytes(1 << 20)));
        assert_eq!(Bytes::parse("100"), Ok(Bytes(100)));
        assert!(Bytes::parse("1TiB").is_err());
        for (raw, expected) in [
            ("/api/tasks", Ok("/api/tasks")),
            ("/api/tasks/", Ok("/api/tasks")),
            ("/", Ok("/")),
            ("api", Err(())),
            ("/api//tasks", Err(())),
            ("/api/../tasks", Err(())),
            ("/api/%2e", Err(())),
            ("/api/ta sks", Err(())),
        ] {
            assert_eq!(
                Prefix::parse(raw).map(|p| p.0).map_err(drop),
                expected.map(str::to_owned),
                "{raw}"
            );
        }
        assert_eq!(
            HostPort::parse("auth:9001"),
            Ok(HostPort {
                host: "auth".into(),
                port: 9001
            })
        );
        assert!(HostPort::parse("auth").is_err());
        assert!(HostPort::parse("auth:0").is_err());
        assert!(HostPort::parse("auth:http").is_err());
    }

    #[test]
    fn networks() {
        let net = Network::parse("10.0.0.0/8").expect("net");
        assert!(net.contains("10.1.2.3".parse().expect("ip")));
        assert!(!net.contains("11.0.0.1".parse().expect("ip")));
        assert!(net.contains("::ffff:10.0.0.1".parse().expect("ip")));
        let one = Network::parse("::1").expect("net");
        assert!(one.contains("::1".parse().expect("ip")));
        assert!(!one.contains("::2".parse().expect("ip")));
        assert!(Network::parse("10.0.0.0/33").is_err());
        assert!(Network::parse("example.com").is_err());
        let all = Network::parse("0.0.0.0/0").expect("net");
        assert!(all.contains("203.0.113.9".parse().expect("ip")));
    }

    #[test]
    fn unknown_keys_are_errors_with_a_line() {
        let source = MINIMAL.replace("access: protected", "access: protected\n    acess: public");
        let errors = Config::parse(&source).expect_err("unknown key");
        let text = errors.to_string();
        assert!(text.contains("unknown field `acess`"), "{text}");
        assert!(text.contains("routes[0]"), "{text}");
        assert!(text.contains("line 11"), "{text}");
    }

    #[test]
    fn every_semantic_error_is_reported_with_path_and_line() {
        let source = r#"
auth:
  mode: remote
upstreams:
  tasks:
    servers: []
routes:
  - prefix: /api/tasks
    upstream: tasks
    access: protected
  - prefix: /api/orders
    upstream: ordrs
    access: public
    roles: [admin]
  - prefix: /api/tasks/
    upstream: tasks
    access: public
"#;
        let errors = Config::parse(source).expect_err("invalid").0;
        let rendered: Vec<String> = errors.iter().map(ToString::to_string).collect();
        let expected = [
            "auth.verify_url: is required for protected routes in remote mode at line 2",
            "upstreams.tasks.servers: needs at least one host:port at line 6",
            "routes[1].upstream: unknown upstream \"ordrs\" at line 12",
            "routes[1].roles: roles need access: protected at line 14",
            "routes[2].prefix: \"/api/tasks\" is already routed at line 15",
        ];
        for line in expected {
            assert!(
                rendered.iter().any(|r| r == line),
                "missing {line:?} in {rendered:#?}"
            );
        }
        assert_eq!(rendered.len(), expected.len(), "{rendered:#?}");
    }

    #[test]
    fn rate_limits_are_checked_with_their_paths() {
        let source = format!(
            "{MINIMAL}  - prefix: /api/open\n    upstream: tasks\n    access: public\n    rate_limit:\n      per_ip: {{ requests: 0, per: 1s }}\n      per_user: {{ requests: 5, per: 1s }}\n  - prefix: /api/closed\n    upstream: tasks\n    access: protected\n    rate_limit: {{ route: {{ requests: 5, per: 0ms, burst: 0 }} }}\n"
        );
        let errors = Config::parse(&source).expect_err("invalid").0;
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "routes[1].rate_limit.per_user",
                "routes[1].rate_limit.per_ip.requests",
                "routes[2].rate_limit.route.per",
                "routes[2].rate_limit.route.burst",
            ]
        );
        let unknown = format!(
            "{MINIMAL}  - prefix: /api/x\n    upstream: tasks\n    access: public\n    rate_limit: {{ per_ip: {{ requests: 5, per: 1s, brust: 9 }} }}\n"
        );
        let error = Config::parse(&unknown)
            .expect_err("unknown key")
            .to_string();
        assert!(error.contains("brust"), "{error}");
        let fine = format!(
            "{MINIMAL}  - prefix: /api/x\n    upstream: tasks\n    access: protected\n    rate_limit: {{ per_ip: {{ requests: 100, per: 1s, burst: 200 }}, per_user: {{ requests: 5, per: 1s }} }}\n"
        );
        let config = Config::parse(&fine).expect("valid");
        let limits = config.routes[1].rate_limit.as_ref().expect("limits");
        assert_eq!(limits.per_ip.as_ref().and_then(|r| r.burst), Some(200));
    }

    #[test]
    fn method_specific_routes_may_share_a_prefix() {
        let source = format!(
            "{MINIMAL}  - prefix: /api/stock\n    upstream: tasks\n    access: public\n    methods: [get]\n  - prefix: /api/stock\n    upstream: tasks\n    access: protected\n    methods: [PUT]\n"
        );
        let config = Config::parse(&source).expect("valid");
        assert_eq!(config.routes[1].methods, vec![Method("GET".into())]);
        let clash =
            format!("{source}  - prefix: /api/stock\n    upstream: tasks\n    access: public\n");
        let errors = Config::parse(&clash).expect_err("clash");
        assert!(errors.to_string().contains("routes[3].prefix"), "{errors}");
        let head_clash = format!(
            "{MINIMAL}  - {{prefix: /p, upstream: tasks, access: public, methods: [GET]}}\n  - {{prefix: /p, upstream: tasks, access: protected, methods: [HEAD]}}\n"
        );
        let errors = Config::parse(&head_clash).expect_err("HEAD is claimed by GET");
        assert!(errors.to_string().contains("routes[2].prefix"), "{errors}");
    }

    /// Values that once passed `--check` and then panicked at start-up,
    /// on reload or per request are refused with their key and line.
    #[test]
    fn values_that_would_overflow_later_are_refused_with_key_and_line() {
        let route = |extra: &str| {
            format!(
                "{MINIMAL}  - prefix: /api/x\n    upstream: tasks\n    access: protected\n{extra}"
            )
        };
        for (source, path, line) in [
            (
                route("    rate_limit:\n      per_ip: {requests: 1, per: 1000h, burst: 10000}\n"),
                "routes[1].rate_limit.per_ip.per",
                15,
            ),
            (
                route(
                    "    rate_limit:\n      per_ip: {requests: 1, per: 5000000000h, burst: 4000000000}\n",
                ),
                "",
                0,
            ),
            (
                route("    rate_limit:\n      route: {requests: 1, per: 24h, burst: 100000}\n"),
                "routes[1].rate_limit.route",
                15,
            ),
            (
                MINIMAL.replace("auth:\n", "auth:\n  negative_ttl: 18446744073709551615s\n"),
                "",
                0,
            ),
            (
                MINIMAL.replace("auth:\n", "auth:\n  negative_ttl: 2h\n"),
                "auth.negative_ttl",
                3,
            ),
            (
                MINIMAL.replace("auth:\n", "auth:\n  cache_ttl: 8784h\n"),
                "auth.cache_ttl",
                3,
            ),
            (
                route("    stale_if_error: 2h\n"),
                "routes[1].stale_if_error",
                14,
            ),
            (
                MINIMAL.replace("    servers:", "    read_timeout: 0ms\n    servers:"),
                "upstreams.tasks.read_timeout",
                6,
            ),
            (
                format!("server:\n  max_header_bytes: 2MiB\n{MINIMAL}"),
                "server.max_header_bytes",
                2,
            ),
            (
                format!("server:\n  threads: 100000\n{MINIMAL}"),
                "server.threads",
                2,
            ),
        ] {
            let errors = Config::parse(&source).expect_err(&source);
            let text = errors.to_string();
            if path.is_empty() {
                // Refused while parsing: serde names the key and line.
                assert!(text.contains("too long"), "{text}");
                assert!(text.contains("line"), "{text}");
            } else {
                assert_eq!(errors.0[0].path, path, "{text}");
                assert_eq!(errors.0[0].line, Some(line), "{text}");
            }
        }
        // The largest values allowed still build every part of a generation.
        let source = format!(
            "{}{}",
            MINIMAL.replace(
                "auth:\n",
                "auth:\n  cache_ttl: 24h\n  negative_ttl: 1h\n  cache_capacity: 10000000\n"
            ),
            "  - prefix: /api/x\n    upstream: tasks\n    access: protected\n    stale_if_error: 1h\n    rate_limit:\n      per_ip: {requests: 1, per: 24h, burst: 7}\n      route: {requests: 1000000, per: 1ms, burst: 1000000}\n"
        );
        let config = Config::parse(&source).expect("largest values");
        crate::Generation::build(config, None, true).expect("builds");
    }

    #[test]
    fn oversized_files_and_counts_are_refused() {
        let big = format!("{MINIMAL}#{}\n", "x".repeat(bounds::FILE_BYTES as usize));
        let error = Config::parse(&big).expect_err("too big").to_string();
        assert!(error.contains("at most 8388608"), "{error}");
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("routes.yaml");
        std::fs::write(&file, &big).expect("write");
        let error = Config::load(&file).expect_err("too big").to_string();
        assert!(error.contains("larger than 8388608 bytes"), "{error}");

        let roles: Vec<String> = (0..100).map(|i| format!("r{i}")).collect();
        let source = format!("{MINIMAL}    roles: [{}]\n", roles.join(", "));
        let errors = Config::parse(&source).expect_err("roles");
        assert_eq!(errors.0[0].path, "routes[0].roles");
        assert!(errors.to_string().contains("at most 64"), "{errors}");
    }

    /// Checking is linear in the number of routes: 100 000 routes (the
    /// bound) that all share prefixes with each other are checked here in
    /// a debug build; `bench/config.py` times it in release.
    #[test]
    fn the_route_bound_is_accepted_and_one_more_is_refused() {
        let mut source = String::from(
            "auth:\n  verify_url: http://127.0.0.1:9001/api/verify\nupstreams:\n  a: {servers: [\"127.0.0.1:9101\"]}\nroutes:\n  - {prefix: /, upstream: a, access: public}\n",
        );
        for i in 1..bounds::ROUTES {
            // Every route lies inside `/`, a route of the other access.
            source.push_str(&format!(
                "  - {{prefix: /r/{i}, upstream: a, access: protected, methods: [GET]}}\n"
            ));
        }
        let config = Config::parse(&source).expect("at the bound");
        assert_eq!(config.routes.len(), bounds::ROUTES);
        let warnings = config.shadowing();
        assert_eq!(warnings.len(), bounds::WARNINGS + 1);
        assert!(
            warnings[bounds::WARNINGS]
                .to_string()
                .contains("99899 more routes"),
            "{}",
            warnings[bounds::WARNINGS]
        );
        source.push_str("  - {prefix: /r/1, upstream: a, access: public, methods: [HEAD]}\n");
        let errors = Config::parse(&source).expect_err("over the bound").0;
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["routes", "routes[100000].prefix"]);
        assert_eq!(errors[1].line, Some(100_006));
    }

    /// The tree walk finds exactly the pairs the definition gives (every
    /// route against every other), keeps the first ones in file order and
    /// counts the rest: a chain of 300 nested prefixes of alternating
    /// access, each with two method-specific routes.
    #[test]
    fn nesting_warnings_match_the_quadratic_definition() {
        let mut source = String::from(
            "auth:\n  verify_url: http://127.0.0.1:9001/api/verify\nupstreams:\n  a: {servers: [\"127.0.0.1:9101\"]}\nroutes:\n",
        );
        let mut prefix = String::new();
        for depth in 0..300 {
            prefix.push_str(if depth % 3 == 0 { "/x" } else { "/y" });
            let access = if depth % 2 == 0 {
                "public"
            } else {
                "protected"
            };
            for method in ["GET", "POST"] {
                source.push_str(&format!(
                    "  - {{prefix: {prefix}, upstream: a, access: {access}, methods: [{method}]}}\n"
                ));
            }
        }
        let config = Config::parse(&source).expect("valid");
        let mut expected = Vec::new();
        for (o, outer) in config.routes.iter().enumerate() {
            for (i, inner) in config.routes.iter().enumerate() {
                if outer.access != inner.access && outer.prefix.contains(&inner.prefix) {
                    expected.push((o, i));
                }
            }
        }
        let warnings = config.shadowing();
        assert_eq!(warnings.len(), bounds::WARNINGS + 1);
        for (warning, (o, i)) in warnings.iter().take(bounds::WARNINGS).zip(&expected) {
            assert_eq!(warning.path, format!("routes[{i}].prefix"));
            let outer = config.routes[*o].prefix.as_str();
            assert!(
                warning
                    .message
                    .contains(&format!(" route {outer} (line {})", o + 6)),
                "{warning}"
            );
        }
        assert!(
            warnings[bounds::WARNINGS].message.starts_with(&format!(
                "{} more routes",
                expected.len() - bounds::WARNINGS
            )),
            "{} pairs: {}",
            expected.len(),
            warnings[bounds::WARNINGS]
        );
    }
}
