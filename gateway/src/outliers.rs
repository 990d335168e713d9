//! Passive health (`upstreams.NAME.passive_health`), decided in plain code:
//! a server that fails `consecutive_failures` times in a row in live
//! traffic (no answer, or 502/503/504) leaves rotation for `base_ejection`,
//! twice as long each time it is ejected again (at most 32 times as long).
//! When its time is up it gets traffic again, and one success resets it. A
//! pool never has more than `max_ejected_percent` of its servers ejected at
//! once, rounded down (a pool of one never ejects its server), so a
//! pool-wide outage is reported by the clients' errors, not hidden by an
//! empty rotation.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The settings, as the decisions read them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub consecutive_failures: u32,
    pub base_ejection: Duration,
    pub max_ejected_percent: u32,
}

/// The longest ejection, in multiples of the base.
const MAX_FACTOR: u32 = 32;

/// One server's record.
#[derive(Debug, Default)]
pub struct Record {
    state: Mutex<State>,
}

#[derive(Debug, Default, Clone, Copy)]
struct State {
    failures: u32,
    ejections: u32,
    until: Option<Instant>,
}

impl Record {
    /// Whether the server is out of rotation at `now`.
    pub fn ejected(&self, now: Instant) -> bool {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.until.is_some_and(|until| now < until)
    }

    /// Records an attempt's result. `ejected_now` is how many servers of
    /// the pool are out at `now` and `pool` its size. `Some(duration)` when
    /// this result ejects the server.
    pub fn record(
        &self,
        settings: &Settings,
        failed: bool,
        now: Instant,
        ejected_now: usize,
        pool: usize,
    ) -> Option<Duration> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if !failed {
            state.failures = 0;
            if state.until.is_some_and(|until| now >= until) {
                // Back, and answering: the back-off starts over.
                state.until = None;
                state.ejections = 0;
            }
            return None;
        }
        if state.until.is_some_and(|until| now < until) {
            return None;
        }
        state.failures += 1;
        if state.failures < settings.consecutive_failures {
            return None;
        }
        let allowed = pool * settings.max_ejected_percent as usize / 100;
        if ejected_now >= allowed {
            return None;
        }
        let factor = 2u32.saturating_pow(state.ejections).min(MAX_FACTOR);
        let duration = settings.base_ejection * factor;
        state.ejections += 1;
        state.failures = 0;
        state.until = Some(now + duration);
        Some(duration)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Settings = Settings {
        consecutive_failures: 3,
        base_ejection: Duration::from_secs(10),
        max_ejected_percent: 50,
    };

    #[test]
    fn consecutive_failures_eject_for_longer_each_time() {
        let r = Record::default();
        let t = Instant::now();
        assert_eq!(r.record(&S, true, t, 0, 3), None);
        assert_eq!(
            r.record(&S, false, t, 0, 3),
            None,
            "a success resets the count"
        );
        assert_eq!(r.record(&S, true, t, 0, 3), None);
        assert_eq!(r.record(&S, true, t, 0, 3), None);
        assert_eq!(r.record(&S, true, t, 0, 3), Some(Duration::from_secs(10)));
        assert!(r.ejected(t + Duration::from_secs(9)));
        assert!(!r.ejected(t + Duration::from_secs(10)));
        // Back, failing again: twice as long.
        let back = t + Duration::from_secs(11);
        for _ in 0..2 {
            assert_eq!(r.record(&S, true, back, 0, 3), None);
        }
        assert_eq!(
            r.record(&S, true, back, 0, 3),
            Some(Duration::from_secs(20))
        );
        // Back and answering: the back-off starts over.
        let later = back + Duration::from_secs(21);
        assert_eq!(r.record(&S, false, later, 0, 3), None);
        for _ in 0..2 {
            r.record(&S, true, later, 0, 3);
        }
        assert_eq!(
            r.record(&S, true, later, 0, 3),
            Some(Duration::from_secs(10))
        );
    }

    #[test]
    fn never_more_than_the_share_of_a_pool_and_never_past_the_cap() {
        let t = Instant::now();
        let r = Record::default();
        for _ in 0..2 {
            r.record(&S, true, t, 1, 2);
        }
        // One of two already out, 50 %: this one stays in.
        assert_eq!(r.record(&S, true, t, 1, 2), None);
        assert!(!r.ejected(t));
        // A pool of one never ejects its server: the rotation is never empty.
        let alone = Record::default();
        for _ in 0..2 {
            alone.record(&S, true, t, 0, 1);
        }
        assert!(alone.record(&S, true, t, 0, 1).is_none());
        // The back-off stops growing at 32 × the base.
        let r = Record::default();
        let mut now = t;
        let mut last = Duration::ZERO;
        for _ in 0..10 {
            for _ in 0..3 {
                if let Some(d) = r.record(&S, true, now, 0, 3) {
                    last = d;
                }
            }
            now += last + Duration::from_secs(1);
        }
        assert_eq!(last, Duration::from_secs(320));
    }
}
