//! How many connections (and WebSocket tunnels) may be open at once.
//!
//! [`Counts`] is the plain rule: a count per key with a bound, taken by a
//! [`Slot`] that gives it back when dropped, so a connection or a tunnel
//! holds its place exactly as long as it lives. [`Limits`] bounds client
//! connections in total and per address; the edge (`edge::listeners`)
//! takes a place for every client connection as it is accepted, before a
//! TLS handshake or any byte is read, and a connection over a bound is
//! closed at once, never queued.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Open things by key, each key within a bound.
pub struct Counts<K: Hash + Eq + Clone> {
    open: Mutex<HashMap<K, usize>>,
}

impl<K: Hash + Eq + Clone> Default for Counts<K> {
    fn default() -> Self {
        Counts {
            open: Mutex::new(HashMap::new()),
        }
    }
}

/// One place taken under a key; dropping it gives the place back.
pub struct Slot<K: Hash + Eq + Clone> {
    counts: Arc<Counts<K>>,
    key: K,
}

impl<K: Hash + Eq + Clone> Counts<K> {
    /// Takes a place under `key` when fewer than `max` are taken.
    pub fn take(self: &Arc<Self>, key: K, max: usize) -> Option<Slot<K>> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(key.clone()).or_insert(0);
        if *count >= max {
            if *count == 0 {
                open.remove(&key);
            }
            return None;
        }
        *count += 1;
        Some(Slot {
            counts: Arc::clone(self),
            key,
        })
    }

    /// Places taken under `key`.
    pub fn open(&self, key: &K) -> usize {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.get(key).copied().unwrap_or(0)
    }
}

impl<K: Hash + Eq + Clone + std::fmt::Debug> std::fmt::Debug for Slot<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Slot").field(&self.key).finish()
    }
}

impl<K: Hash + Eq + Clone> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut open = self
            .counts
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// The key a client address is counted under: the address, or its /64 for
/// IPv6 (one host usually holds a whole /64).
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
        v4 => v4,
    }
}

/// The default bound on client connections: half of what the open-file
/// limit leaves after a reserve (each client connection may need an
/// upstream connection too), at least 64.
pub fn default_max(open_files: Option<u64>) -> usize {
    let open_files = open_files.unwrap_or(1024).min(4_000_000);
    usize::try_from(open_files.saturating_sub(256) / 2)
        .unwrap_or(usize::MAX)
        .max(64)
}

/// The process's soft open-file limit.
pub fn open_file_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

/// Why a connection was closed on arrival.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `server.max_connections` are open.
    Total,
    /// `server.max_connections_per_ip` are open from this address.
    PerIp,
}

/// The bounds in force and what is open.
pub struct Limits {
    pub max_total: usize,
    pub max_per_ip: Option<usize>,
    total: Arc<AtomicUsize>,
    per_ip: Arc<Counts<IpAddr>>,
}

/// One place under the total bound, given back on drop.
struct Total(Arc<AtomicUsize>);

impl Drop for Total {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The places one connection holds.
pub struct Admitted {
    _total: Total,
    _per_ip: Option<Slot<IpAddr>>,
}

impl Limits {
    pub fn new(max_total: usize, max_per_ip: Option<usize>) -> Self {
        Limits {
            max_total,
            max_per_ip,
            total: Arc::default(),
            per_ip: Arc::default(),
        }
    }

    /// Takes the places of one new connection from `ip`.
    pub fn admit(&self, ip: Option<IpAddr>) -> Result<Admitted, Refused> {
        self.total
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < self.max_total).then_some(open + 1)
            })
            .map_err(|_| Refused::Total)?;
        let total = Total(Arc::clone(&self.total));
        let per_ip = match (self.max_per_ip, ip) {
            (Some(max), Some(ip)) => Some(
                self.per_ip
                    .take(client_key(ip), max)
                    .ok_or(Refused::PerIp)?,
            ),
            _ => None,
        };
        Ok(Admitted {
            _total: total,
            _per_ip: per_ip,
        })
    }

    /// Client connections open now.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_taken_within_bounds_and_given_back_on_drop() {
        let counts: Arc<Counts<&str>> = Arc::default();
        let a1 = counts.take("a", 2).expect("first");
        let a2 = counts.take("a", 2).expect("second");
        assert!(counts.take("a", 2).is_none(), "third over the bound");
        assert!(counts.take("b", 2).is_some(), "other keys are apart");
        drop(a1);
        assert_eq!(counts.open(&"a"), 1);
        let _a3 = counts.take("a", 2).expect("a place came back");
        drop(a2);
        assert!(counts.take("z", 0).is_none());
        assert_eq!(counts.open(&"z"), 0);
    }

    #[test]
    fn connections_are_limited_in_total_and_per_address() {
        let limits = Limits::new(3, Some(2));
        let one: IpAddr = "192.0.2.1".parse().expect("ip");
        let two: IpAddr = "192.0.2.2".parse().expect("ip");
        let first = limits.admit(Some(one)).expect("1");
        let _second = limits.admit(Some(one)).expect("2");
        assert_eq!(limits.admit(Some(one)).err(), Some(Refused::PerIp));
        let _third = limits.admit(Some(two)).expect("3");
        assert_eq!(limits.admit(Some(two)).err(), Some(Refused::Total));
        drop(first);
        assert_eq!(limits.open(), 2);
        assert!(limits.admit(Some(one)).is_ok());
        // A refused per-address place gives back its total place.
        assert_eq!(limits.open(), 2);
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        let a: IpAddr = "2001:db8:1:2::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("ip");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().expect("ip");
        assert_eq!(
            client_key(mapped),
            "192.0.2.1".parse::<IpAddr>().expect("ip")
        );
    }

    #[test]
    fn the_default_bound_follows_the_open_file_limit() {
        assert_eq!(default_max(Some(20_000)), 9_872);
        assert_eq!(default_max(Some(1024)), 384);
        assert_eq!(default_max(Some(100)), 64);
        assert_eq!(default_max(None), 384);
        assert_eq!(default_max(Some(u64::MAX)), 1_999_872);
    }
}
