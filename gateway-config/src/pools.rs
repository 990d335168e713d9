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
