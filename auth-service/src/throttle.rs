//! Login throttling per email address.
//!
//! Each login attempt takes a slot before the password is checked; a
//! successful login frees them all. Once `max` attempts have failed within
//! `window`, further attempts are refused without checking the password, so
//! an online guesser gets `max` guesses per window. Because slots are taken
//! before hashing, concurrent guesses cannot slip past the limit.
//!
//! State lives in this process (a bounded cache): with several replicas the
//! effective limit is `max` per replica.

use moka::sync::Cache;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct LoginThrottle {
    attempts: Cache<String, Arc<Mutex<VecDeque<Instant>>>>,
    max: usize,
    window: Duration,
}

impl LoginThrottle {
    pub fn new(max: u32, window: Duration) -> Self {
        Self {
            attempts: Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(window)
                .build(),
            max: usize::try_from(max).unwrap_or(usize::MAX).max(1),
            window,
        }
    }

    /// Takes an attempt slot for `email`, or answers how many seconds remain
    /// until one frees up.
    pub fn begin(&self, email: &str, now: Instant) -> Result<(), u64> {
        let entry = self
            .attempts
            .get_with_by_ref(email, || Arc::new(Mutex::new(VecDeque::new())));
        let mut attempts = entry.lock().unwrap_or_else(|p| p.into_inner());
        while attempts
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= self.window)
        {
            attempts.pop_front();
        }
        if attempts.len() >= self.max {
            let oldest = attempts.front().copied().unwrap_or(now);
            let wait = self
                .window
                .saturating_sub(now.saturating_duration_since(oldest));
            return Err(wait.as_secs() + u64::from(wait.subsec_nanos() > 0));
        }
        attempts.push_back(now);
        Ok(())
    }

    /// Forgets the attempts for `email` after a successful login.
    pub fn succeeded(&self, email: &str) {
        self.attempts.invalidate(email);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sixth_attempt_in_the_window_is_refused_until_the_oldest_expires() {
        let throttle = LoginThrottle::new(5, Duration::from_secs(900));
        let start = Instant::now();
        for i in 0..5 {
            assert_eq!(
                throttle.begin("a@x.io", start + Duration::from_secs(i)),
                Ok(())
            );
        }
        assert_eq!(
            throttle.begin("a@x.io", start + Duration::from_secs(10)),
            Err(890)
        );
        // Another account is unaffected.
        assert_eq!(throttle.begin("b@x.io", start), Ok(()));
        // Once the first attempt leaves the window a slot frees up.
        assert_eq!(
            throttle.begin("a@x.io", start + Duration::from_secs(900)),
            Ok(())
        );
    }

    #[test]
    fn success_clears_the_count() {
        let throttle = LoginThrottle::new(2, Duration::from_secs(60));
        let now = Instant::now();
        assert_eq!(throttle.begin("a@x.io", now), Ok(()));
        assert_eq!(throttle.begin("a@x.io", now), Ok(()));
        assert!(throttle.begin("a@x.io", now).is_err());
        throttle.succeeded("a@x.io");
        assert_eq!(throttle.begin("a@x.io", now), Ok(()));
    }
}
