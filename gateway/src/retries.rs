//! Retries (`upstreams.NAME.retry`), decided in plain code: which failed
//! attempts go again, and the budget that keeps a struggling pool from a
//! retry storm.
//!
//! An attempt goes again only when the request is idempotent (GET, HEAD,
//! OPTIONS, PUT, DELETE) or the upstream provably never started it (the
//! connection was refused, or a 503 with `Retry-After` came back: a server
//! that says so did not act), its body can still be replayed, nothing was
//! answered to the client yet, attempts are left, and the pool's budget has
//! room: retries may be at most `budget` of the requests over the last ten
//! seconds (plus a floor of three, so that a quiet pool can retry at all).

use crate::config::pools::{RetryOn, RetrySettings};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What ended an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The connection could not be made: nothing was sent.
    ConnectError,
    /// The connection broke (reset, closed) before any answer.
    Reset,
    /// No answer in time.
    Timeout,
    /// The upstream answered with this status.
    Status(u16),
}

impl Outcome {
    fn condition(self) -> Option<RetryOn> {
        match self {
            Outcome::ConnectError => Some(RetryOn::ConnectError),
            Outcome::Reset => Some(RetryOn::Reset),
            Outcome::Timeout => Some(RetryOn::Timeout),
            Outcome::Status(502) => Some(RetryOn::Status502),
            Outcome::Status(503) => Some(RetryOn::Status503),
            Outcome::Status(504) => Some(RetryOn::Status504),
            Outcome::Status(_) => None,
        }
    }

    /// Whether the attempt counts as the server failing (for outlier
    /// ejection): no answer, or 502/503/504.
    pub fn is_failure(self) -> bool {
        !matches!(self, Outcome::Status(s) if !matches!(s, 502..=504))
    }
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send it again (to another server when there is one).
    Retry,
    /// The outcome is not one the pool retries, or the request may not go
    /// again: the client gets it as it is.
    No,
    /// Retryable, but every attempt is used.
    Exhausted,
    /// Retryable, but the pool's budget is spent.
    OverBudget,
}

impl Verdict {
    /// The `outcome` label of `portcullis_upstream_retries_total`.
    pub fn label(self) -> Option<&'static str> {
        match self {
            Verdict::Retry => Some("retried"),
            Verdict::Exhausted => Some("attempts_exhausted"),
            Verdict::OverBudget => Some("budget_exhausted"),
            Verdict::No => None,
        }
    }
}

/// The facts of one failed attempt.
#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    pub outcome: Outcome,
    /// GET, HEAD, OPTIONS, PUT, DELETE (and TRACE).
    pub idempotent: bool,
    /// A 503 that carried `Retry-After`.
    pub retry_after: bool,
    /// The request body can be sent again (all of it is still buffered).
    pub replayable: bool,
    /// Something was already sent to the client.
    pub answered: bool,
    /// Attempts made so far, this one included.
    pub made: u32,
}

/// Whether `attempt` goes again under `settings`; `budget` is asked last,
/// and only takes a retry it allows.
pub fn decide(
    settings: &RetrySettings,
    attempt: &Attempt,
    budget: &Budget,
    now: Instant,
) -> Verdict {
    let Some(condition) = attempt.outcome.condition() else {
        return Verdict::No;
    };
    if !settings.on.contains(&condition) || attempt.answered || !attempt.replayable {
        return Verdict::No;
    }
    let not_started = attempt.outcome == Outcome::ConnectError
        || (attempt.outcome == Outcome::Status(503) && attempt.retry_after);
    if !attempt.idempotent && !not_started {
        return Verdict::No;
    }
    if attempt.made >= settings.attempts {
        return Verdict::Exhausted;
    }
    if !budget.take_retry(now) {
        return Verdict::OverBudget;
    }
    Verdict::Retry
}

/// Retries allowed over a window whatever the traffic.
const FLOOR: u64 = 3;
/// The window, in one-second slots.
const SLOTS: usize = 10;

/// A pool's retry budget: requests and retries counted per second over the
/// last ten seconds.
#[derive(Debug)]
pub struct Budget {
    /// Retries allowed per 100 requests.
    percent: u64,
    window: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    /// (second since `start`, requests, retries) per slot.
    slots: [(u64, u64, u64); SLOTS],
}

impl Budget {
    pub fn new(percent: u32, now: Instant) -> Budget {
        Budget {
            percent: u64::from(percent),
            window: Mutex::new(Window {
                start: now,
                slots: [(u64::MAX, 0, 0); SLOTS],
            }),
        }
    }

    fn with<T>(&self, now: Instant, f: impl FnOnce(&mut (u64, u64, u64), u64, u64) -> T) -> T {
        let mut window = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let second = now.saturating_duration_since(window.start).as_secs();
        let (mut requests, mut retries) = (0, 0);
        for slot in &window.slots {
            if slot.0 != u64::MAX && second.saturating_sub(slot.0) < SLOTS as u64 {
                requests += slot.1;
                retries += slot.2;
            }
        }
        let slot = &mut window.slots[(second % SLOTS as u64) as usize];
        if slot.0 != second {
            *slot = (second, 0, 0);
        }
        f(slot, requests, retries)
    }

    /// Counts a request sent to the pool.
    pub fn request(&self, now: Instant) {
        self.with(now, |slot, _, _| slot.1 += 1);
    }

    /// Takes one retry when the window has room for it.
    pub fn take_retry(&self, now: Instant) -> bool {
        let percent = self.percent;
        self.with(now, |slot, requests, retries| {
            let allowed = requests * percent / 100 + FLOOR;
            if retries < allowed {
                slot.2 += 1;
                true
            } else {
                false
            }
        })
    }
}

/// How long a window is, for documentation and tests.
pub const WINDOW: Duration = Duration::from_secs(SLOTS as u64);

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> RetrySettings {
        RetrySettings {
            attempts: 3,
            on: vec![
                RetryOn::ConnectError,
                RetryOn::Reset,
                RetryOn::Status502,
                RetryOn::Status503,
            ],
            budget: 20,
        }
    }

    fn attempt(outcome: Outcome, idempotent: bool) -> Attempt {
        Attempt {
            outcome,
            idempotent,
            retry_after: false,
            replayable: true,
            answered: false,
            made: 1,
        }
    }

    #[test]
    fn only_what_the_upstream_cannot_have_acted_on_goes_again() {
        let now = Instant::now();
        let budget = Budget::new(100, now);
        for _ in 0..100 {
            budget.request(now);
        }
        let s = settings();
        let cases = [
            (attempt(Outcome::Status(503), true), Verdict::Retry),
            (attempt(Outcome::Reset, true), Verdict::Retry),
            (attempt(Outcome::ConnectError, false), Verdict::Retry),
            (attempt(Outcome::Reset, false), Verdict::No),
            (attempt(Outcome::Status(503), false), Verdict::No),
            (
                Attempt {
                    retry_after: true,
                    ..attempt(Outcome::Status(503), false)
                },
                Verdict::Retry,
            ),
            (attempt(Outcome::Status(504), true), Verdict::No),
            (attempt(Outcome::Status(500), true), Verdict::No),
            (attempt(Outcome::Timeout, true), Verdict::No),
            (
                Attempt {
                    answered: true,
                    ..attempt(Outcome::Reset, true)
                },
                Verdict::No,
            ),
            (
                Attempt {
                    replayable: false,
                    ..attempt(Outcome::Reset, true)
                },
                Verdict::No,
            ),
            (
                Attempt {
                    made: 3,
                    ..attempt(Outcome::Reset, true)
                },
                Verdict::Exhausted,
            ),
        ];
        for (attempt, expected) in cases {
            assert_eq!(decide(&s, &attempt, &budget, now), expected, "{attempt:?}");
        }
    }

    #[test]
    fn the_budget_allows_its_share_of_recent_requests_and_forgets_old_ones() {
        let start = Instant::now();
        let budget = Budget::new(20, start);
        for _ in 0..100 {
            budget.request(start);
        }
        // 20 % of 100, plus the floor of 3.
        let taken = (0..50).filter(|_| budget.take_retry(start)).count();
        assert_eq!(taken, 23);
        // Ten seconds on, the window is empty again: the floor only.
        let later = start + WINDOW + Duration::from_secs(1);
        let taken = (0..50).filter(|_| budget.take_retry(later)).count();
        assert_eq!(taken, 3);
        let s = settings();
        let a = attempt(Outcome::Reset, true);
        assert_eq!(decide(&s, &a, &budget, later), Verdict::OverBudget);
    }

    #[test]
    fn failures_for_outlier_ejection() {
        for (outcome, failure) in [
            (Outcome::ConnectError, true),
            (Outcome::Reset, true),
            (Outcome::Timeout, true),
            (Outcome::Status(502), true),
            (Outcome::Status(503), true),
            (Outcome::Status(504), true),
            (Outcome::Status(500), false),
            (Outcome::Status(200), false),
            (Outcome::Status(404), false),
        ] {
            assert_eq!(outcome.is_failure(), failure, "{outcome:?}");
        }
    }
}
