//! How a pool spreads and bounds its requests: servers with weights, the
//! balancing policy, and the limits that shed load when a pool is full.

use crate::values::ServerAddr;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use std::fmt;

/// `servers[]`: `HOST:PORT` or `unix:/path`, or `{address, weight}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerEntry {
    pub address: ServerAddr,
    /// Its share of the pool's requests against the other servers' weights.
    pub weight: u32,
}

/// The longest weight: enough for a 0.1 % canary, bounded so the balancer's
/// tables stay small.
pub const MAX_WEIGHT: u32 = 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Weighted {
    address: ServerAddr,
    #[serde(default = "one")]
    weight: u32,
}

fn one() -> u32 {
    1
}

impl<'de> Deserialize<'de> for ServerEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Either;
        impl<'de> Visitor<'de> for Either {
            type Value = ServerEntry;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("HOST:PORT, unix:/path, or {address: HOST:PORT, weight: N}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                ServerAddr::parse(v)
                    .map(|address| ServerEntry { address, weight: 1 })
                    .map_err(E::custom)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                let w = Weighted::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(ServerEntry {
                    address: w.address,
                    weight: w.weight,
                })
            }
        }
        d.deserialize_any(Either)
    }
}

impl fmt::Display for ServerEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.address.fmt(f)
    }
}

/// `upstreams.NAME.limits`: requests beyond these are answered 503
/// `upstream_overloaded` at once, never queued.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolLimits {
    /// Connections to the pool's servers in use at once.
    #[serde(default)]
    pub max_connections: Option<u32>,
    /// Requests waiting on the pool at once: for a connection, or for the
    /// head of the answer.
    #[serde(default)]
    pub max_pending: Option<u32>,
    /// Requests in flight to the pool at once, answers being streamed
    /// included.
    #[serde(default)]
    pub max_requests: Option<u32>,
}

impl PoolLimits {
    /// Whether any limit is set.
    pub fn any(&self) -> bool {
        *self != PoolLimits::default()
    }
}

/// Each limit's bound.
pub const MAX_LIMIT: u32 = 1_000_000;

pub(crate) fn problems(limits: &PoolLimits) -> Vec<(String, String)> {
    [
        ("max_connections", limits.max_connections),
        ("max_pending", limits.max_pending),
        ("max_requests", limits.max_requests),
    ]
    .into_iter()
    .filter_map(|(key, value)| {
        let value = value?;
        (!(1..=MAX_LIMIT).contains(&value))
            .then(|| (key.to_owned(), format!("must be between 1 and {MAX_LIMIT}")))
    })
    .collect()
}

/// A failure `retry.on` may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryOn {
    ConnectError,
    Reset,
    Timeout,
    Status502,
    Status503,
    Status504,
}

impl<'de> Deserialize<'de> for RetryOn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct On;
        const EXPECTED: &str = "connect_error, reset, timeout, 502, 503 or 504";
        impl Visitor<'_> for On {
            type Value = RetryOn;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(EXPECTED)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RetryOn, E> {
                match v {
                    "connect_error" => Ok(RetryOn::ConnectError),
                    "reset" => Ok(RetryOn::Reset),
                    "timeout" => Ok(RetryOn::Timeout),
                    "502" => Ok(RetryOn::Status502),
                    "503" => Ok(RetryOn::Status503),
                    "504" => Ok(RetryOn::Status504),
                    _ => Err(E::custom(format!(
                        "unknown retry condition {v:?}: expected {EXPECTED}"
                    ))),
                }
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RetryOn, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RetryOn, E> {
                self.visit_str(&v.to_string())
            }
        }
        d.deserialize_any(On)
    }
}

/// A share written `20%` (or `20`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Percent(pub u32);

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct P;
        impl Visitor<'_> for P {
            type Value = Percent;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a share such as 20%")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Percent, E> {
                v.trim()
                    .trim_end_matches('%')
                    .trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|p| *p <= 100)
                    .map(Percent)
                    .ok_or_else(|| E::custom(format!("{v:?} is not a share from 0% to 100%")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Percent, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Percent, E> {
                self.visit_str(&v.to_string())
            }
        }
        d.deserialize_any(P)
    }
}

/// `upstreams.NAME.retry`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    /// Attempts in all, the first included.
    #[serde(default = "two")]
    pub attempts: u32,
    /// The failures that go again.
    #[serde(default = "default_on")]
    pub on: Vec<RetryOn>,
    /// Retries at most this share of the pool's requests over ten seconds.
    #[serde(default = "twenty")]
    pub budget: Percent,
}

/// The retry settings as the gateway reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySettings {
    pub attempts: u32,
    pub on: Vec<RetryOn>,
    pub budget: u32,
}

impl Retry {
    pub fn settings(&self) -> RetrySettings {
        RetrySettings {
            attempts: self.attempts,
            on: self.on.clone(),
            budget: self.budget.0,
        }
    }
}

fn two() -> u32 {
    2
}
fn twenty() -> Percent {
    Percent(20)
}
fn default_on() -> Vec<RetryOn> {
    vec![RetryOn::ConnectError, RetryOn::Reset, RetryOn::Status503]
}

/// `upstreams.NAME.passive_health`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PassiveHealth {
    #[serde(default = "five")]
    pub consecutive_failures: u32,
    #[serde(default = "thirty_seconds")]
    pub base_ejection: crate::values::Dur,
    #[serde(default = "fifty")]
    pub max_ejected_percent: Percent,
}

fn five() -> u32 {
    5
}
fn thirty_seconds() -> crate::values::Dur {
    crate::values::Dur(std::time::Duration::from_secs(30))
}
fn fifty() -> Percent {
    Percent(50)
}

pub(crate) fn retry_problems(retry: &Retry) -> Vec<(String, String)> {
    let mut found = Vec::new();
    if !(1..=10).contains(&retry.attempts) {
        found.push(("attempts".into(), "must be between 1 and 10".into()));
    }
    if retry.on.is_empty() {
        found.push(("on".into(), "needs at least one condition".into()));
    }
    found
}

pub(crate) fn passive_problems(passive: &PassiveHealth) -> Vec<(String, String)> {
    let mut found = Vec::new();
    if !(1..=1000).contains(&passive.consecutive_failures) {
        found.push((
            "consecutive_failures".into(),
            "must be between 1 and 1000".into(),
        ));
    }
    let base = passive.base_ejection.0;
    if base < std::time::Duration::from_millis(100) || base > std::time::Duration::from_secs(3600) {
        found.push((
            "base_ejection".into(),
            "must be between 100ms and 1h".into(),
        ));
    }
    found
}
