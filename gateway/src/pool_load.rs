//! A pool's load and the limits that shed it (`upstreams.NAME.limits`),
//! decided in plain code: a request takes a [`Slot`] before a server is
//! chosen, or is refused at once (503 `upstream_overloaded`); nothing
//! queues. The slot counts the request until it ends, as pending until the
//! head of its answer arrives, and as a connection from connect to end.

use crate::config::pools::PoolLimits;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

/// What a pool has in flight now.
#[derive(Debug, Default)]
pub struct Load {
    requests: AtomicU32,
    pending: AtomicU32,
    connections: AtomicU32,
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Over {
    Requests,
    Pending,
    Connections,
}

impl Over {
    pub fn label(self) -> &'static str {
        match self {
            Over::Requests => "max_requests",
            Over::Pending => "max_pending",
            Over::Connections => "max_connections",
        }
    }
}

/// Adds one to `counter` unless that passes `max`.
fn take(counter: &AtomicU32, max: Option<u32>) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| match max {
            Some(max) if n >= max => None,
            _ => Some(n + 1),
        })
        .is_ok()
}

impl Load {
    /// A slot for one more request, or the limit it would pass. A request
    /// that finds every connection the pool may use taken is refused too:
    /// it would only wait.
    pub fn admit(self: &Arc<Self>, limits: &PoolLimits) -> Result<Slot, Over> {
        if let Some(max) = limits.max_connections
            && self.connections.load(Ordering::Acquire) >= max
        {
            return Err(Over::Connections);
        }
        if !take(&self.requests, limits.max_requests) {
            return Err(Over::Requests);
        }
        if !take(&self.pending, limits.max_pending) {
            self.requests.fetch_sub(1, Ordering::AcqRel);
            return Err(Over::Pending);
        }
        Ok(Slot {
            load: Arc::clone(self),
            pending: true,
            connected: false,
        })
    }

    /// (requests, pending, connections), for tests and the status page.
    pub fn now(&self) -> (u32, u32, u32) {
        (
            self.requests.load(Ordering::Acquire),
            self.pending.load(Ordering::Acquire),
            self.connections.load(Ordering::Acquire),
        )
    }
}

/// One request's place in its pool's load; given back when dropped.
#[derive(Debug)]
pub struct Slot {
    load: Arc<Load>,
    pending: bool,
    connected: bool,
}

impl Slot {
    /// The request has a connection to a server (counted once, however
    /// many attempts it takes).
    pub fn connected(&mut self) {
        if !self.connected {
            self.connected = true;
            self.load.connections.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// The head of the answer arrived: no longer pending.
    pub fn answered(&mut self) {
        if self.pending {
            self.pending = false;
            self.load.pending.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.answered();
        if self.connected {
            self.load.connections.fetch_sub(1, Ordering::AcqRel);
        }
        self.load.requests.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One server's requests in flight (for `balance: least_requests`).
#[derive(Debug, Default)]
pub struct ServerLoad {
    in_flight: AtomicU32,
}

impl ServerLoad {
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Counts a request on this server until the guard drops.
    pub fn enter(self: &Arc<Self>) -> ServerGuard {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        ServerGuard(Arc::clone(self))
    }
}

#[derive(Debug)]
pub struct ServerGuard(Arc<ServerLoad>);

impl Drop for ServerGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The candidate a draw lands on when each holds a share of the draws
/// equal to its weight. Candidates are (server index, weight, in flight).
pub fn weighted(candidates: &[(usize, u32, u32)], draw: u64) -> Option<&(usize, u32, u32)> {
    let total: u64 = candidates.iter().map(|c| u64::from(c.1.max(1))).sum();
    let mut point = draw % total.max(1);
    candidates.iter().find(|c| {
        let weight = u64::from(c.1.max(1));
        if point < weight {
            true
        } else {
            point -= weight;
            false
        }
    })
}

/// `balance: least_requests`: a candidate drawn by weight, a second drawn
/// by weight among the others (`draws`), and of the two the one with fewer
/// requests in flight for its weight; the first on a tie, so that an idle
/// pool is spread by weight.
pub fn two_choices(candidates: &[(usize, u32, u32)], draws: (u64, u64)) -> Option<usize> {
    let first = *weighted(candidates, draws.0)?;
    let others: Vec<(usize, u32, u32)> = candidates
        .iter()
        .filter(|c| c.0 != first.0)
        .copied()
        .collect();
    let Some(&second) = weighted(&others, draws.1) else {
        return Some(first.0);
    };
    let (first, second) = (&first, &second);
    // in_flight / weight, compared without division.
    let busier = |a: &(usize, u32, u32), b: &(usize, u32, u32)| {
        u64::from(a.2) * u64::from(b.1.max(1)) > u64::from(b.2) * u64::from(a.1.max(1))
    };
    Some(if busier(first, second) {
        second.0
    } else {
        first.0
    })
}

/// Two random numbers for [`two_choices`]: a per-thread xorshift, seeded
/// once from the system (a draw needs to be cheap, not unpredictable).
pub fn draws() -> (u64, u64) {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let mut seed = [0u8; 8];
            let _ = getrandom::fill(&mut seed);
            u64::from_le_bytes(seed) | 1
        });
    }
    STATE.with(|state| {
        let next = || {
            let mut x = state.get();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            state.set(x);
            x
        };
        (next(), next())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(requests: Option<u32>, pending: Option<u32>, connections: Option<u32>) -> PoolLimits {
        PoolLimits {
            max_connections: connections,
            max_pending: pending,
            max_requests: requests,
        }
    }

    #[test]
    fn slots_are_refused_at_each_limit_and_given_back_when_dropped() {
        let load = Arc::new(Load::default());
        let l = limits(Some(3), Some(2), Some(1));
        let mut a = load.admit(&l).expect("first");
        let b = load.admit(&l).expect("second");
        assert_eq!(load.admit(&l).err(), Some(Over::Pending));
        assert_eq!(load.now(), (2, 2, 0));
        a.answered();
        a.connected();
        assert_eq!(load.now(), (2, 1, 1));
        // One connection in use, the bound: a new request would only wait.
        assert_eq!(load.admit(&l).err(), Some(Over::Connections));
        drop(a);
        let c = load.admit(&l).expect("after one ended");
        let d = load.admit(&l).err();
        assert_eq!(d, Some(Over::Pending));
        drop((b, c));
        assert_eq!(load.now(), (0, 0, 0));
        let unbounded = limits(None, None, None);
        let many: Vec<Slot> = (0..100)
            .map(|_| load.admit(&unbounded).expect("no limit"))
            .collect();
        assert_eq!(load.now(), (100, 100, 0));
        drop(many);
        assert_eq!(load.now(), (0, 0, 0));
        let one = limits(Some(1), None, None);
        let _held = load.admit(&one).expect("one");
        assert_eq!(load.admit(&one).err(), Some(Over::Requests));
        assert_eq!(
            load.now(),
            (1, 1, 0),
            "a refused request leaves nothing behind"
        );
    }

    #[test]
    fn two_choices_takes_the_less_busy_for_its_weight() {
        // First draw: 0 → server 0, 1 → server 1, 2..=6 → server 2 (weight
        // 5); the second among the others, in their order.
        let servers = [(0, 1, 10), (1, 1, 2), (2, 5, 10)];
        // 0 vs 1 → 1 (10 > 2); 0 vs 2 → 2 (10/1 > 10/5); 1 vs 2 → 1
        // (2/1 = 10/5: a tie keeps the first); 2 vs 0 → 2.
        for (draws, expected) in [((0, 0), 1), ((0, 1), 2), ((1, 1), 1), ((6, 0), 2)] {
            assert_eq!(two_choices(&servers, draws), Some(expected), "{draws:?}");
        }
        assert_eq!(two_choices(&[(7, 1, 100)], (5, 9)), Some(7));
        assert_eq!(two_choices(&[], (0, 0)), None);
        // An idle pool is spread by weight: 95 / 5.
        let idle = [(0, 95, 0), (1, 5, 0)];
        let to_canary = (0..100u64)
            .filter(|d| two_choices(&idle, (*d, *d)) == Some(1))
            .count();
        assert_eq!(to_canary, 5);
    }
}
