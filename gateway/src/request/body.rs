//! The request body's bounds: its declared length against the route's
//! limit before anything is read, then every chunk against the limit and
//! the deadline (`server.request_body_timeout`) while it is read.

use crate::refusal::Refusal;
use http::HeaderMap;
use std::time::{Duration, Instant};

/// Refuses a declared `Content-Length` that is malformed or over `limit`.
pub fn check_declared(headers: &HeaderMap, limit: u64) -> Result<(), Refusal> {
    let Some(length) = headers.get(http::header::CONTENT_LENGTH) else {
        return Ok(());
    };
    let length = length
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .ok_or(Refusal::BadRequest("invalid Content-Length"))?;
    if length > limit {
        return Err(Refusal::PayloadTooLarge { limit: Some(limit) });
    }
    Ok(())
}

/// A body being read: how much arrived, and by when the rest must.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    received: u64,
    limit: u64,
    deadline: Instant,
}

impl Progress {
    pub fn new(limit: u64, timeout: Duration, now: Instant) -> Self {
        Progress {
            received: 0,
            limit,
            deadline: now.checked_add(timeout).unwrap_or(now),
        }
    }

    /// Takes one chunk (`None` with `end`: the body is complete). Returns
    /// how long the next read may wait: what is left of the deadline, so a
    /// trickle of bytes never resets the clock.
    pub fn chunk(
        &mut self,
        len: Option<usize>,
        end: bool,
        now: Instant,
    ) -> Result<Duration, Refusal> {
        let left = self.deadline.saturating_duration_since(now);
        if left.is_zero() && !(end && len.is_none()) {
            return Err(Refusal::RequestTimeout { head: false });
        }
        if let Some(len) = len {
            self.received = self.received.saturating_add(len as u64);
            if self.received > self.limit {
                return Err(Refusal::PayloadTooLarge { limit: None });
            }
        }
        Ok(left.max(Duration::from_millis(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_lengths() {
        let cases: &[(Option<&str>, Result<(), Refusal>)] = &[
            (None, Ok(())),
            (Some("0"), Ok(())),
            (Some("100"), Ok(())),
            (Some(" 100 "), Ok(())),
            (
                Some("101"),
                Err(Refusal::PayloadTooLarge { limit: Some(100) }),
            ),
            (
                Some("-1"),
                Err(Refusal::BadRequest("invalid Content-Length")),
            ),
            (
                Some("1e3"),
                Err(Refusal::BadRequest("invalid Content-Length")),
            ),
            (
                Some("99999999999999999999999"),
                Err(Refusal::BadRequest("invalid Content-Length")),
            ),
        ];
        for (value, expected) in cases {
            let mut headers = HeaderMap::new();
            if let Some(value) = value {
                headers.insert(http::header::CONTENT_LENGTH, value.parse().expect("value"));
            }
            assert_eq!(&check_declared(&headers, 100), expected, "{value:?}");
        }
    }

    #[test]
    fn chunks_count_against_the_limit_and_the_deadline() {
        let start = Instant::now();
        let mut body = Progress::new(10, Duration::from_secs(2), start);
        assert_eq!(
            body.chunk(Some(6), false, start),
            Ok(Duration::from_secs(2))
        );
        // The clock is not reset by a chunk: the next read waits what is left.
        assert_eq!(
            body.chunk(Some(4), false, start + Duration::from_millis(1500)),
            Ok(Duration::from_millis(500))
        );
        assert_eq!(
            body.chunk(Some(1), false, start + Duration::from_millis(1600)),
            Err(Refusal::PayloadTooLarge { limit: None })
        );

        let mut late = Progress::new(10, Duration::from_secs(1), start);
        let after = start + Duration::from_secs(2);
        assert_eq!(
            late.chunk(Some(1), false, after),
            Err(Refusal::RequestTimeout { head: false })
        );
        // The end of a body that was whole in time is not refused late.
        assert!(late.chunk(None, true, after).is_ok());
    }
}
