//! Authentication of protected routes. The proxy makes one call,
//! [`Verifier::admit`]: credentials in, identity, grant and whether it was
//! stale out, or the refusal to answer.
//!
//! - [`credentials`]: the `Authorization` header's and the `bearer`
//!   subprotocol's shape; nothing verified.
//! - [`cache`]: the verdict cache and its policy ([`Verifier`]).
//! - `users`: one shared identity per user, and the index by user that
//!   revocations use.
//! - `source`: the auth service (remote), the HS256 check (local) or the
//!   JWKS check ([`jwks`]).
//! - [`revoked`]: the sessions and users revoked, which the local and jwks
//!   checks refuse until their tokens expire.
//!
//! Rules, in the order they apply:
//! - a missing or malformed header is refused here, with no network call;
//! - a positive verdict is cached for min(`cache_ttl`, `exp` + leeway − now),
//!   so a cached grant never outlives its token; a refusal is cached for
//!   `negative_ttl`; failures to get an answer are never cached;
//! - on a miss, a token whose `exp` (plus the leeway the auth service also
//!   allows) has passed is refused without asking (the claim is read, not
//!   trusted: it can only shorten a token's life at the gateway, never
//!   lengthen it), and `exp` is kept with the entry, so a hit decodes
//!   nothing;
//! - concurrent misses for one token share a single verification.

pub mod cache;
pub mod credentials;
pub mod jwks;
pub mod revoked;
mod source;
mod users;

pub use cache::{Outcome, Verdict, Verifier};
pub use credentials::{
    BEARER_SUBPROTOCOL, BearerError, Credentials, MAX_TOKEN_BYTES, Subprotocols, bearer, peek_exp,
    subprotocol_bearer,
};
pub use source::Unavailable;

use crate::metrics;
use crate::refusal::Refusal;
use crate::trace::Span;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Who a verified token belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// A positive decimal integer, ready to be sent as `x-user-id`.
    pub user_id: Box<str>,
    pub role: Box<str>,
}

/// What a protected request was admitted with.
#[derive(Debug)]
pub struct Admitted {
    pub identity: Arc<Identity>,
    /// The identity is a stale grant (stale-if-error).
    pub stale: bool,
    pub grant: Grant,
}

/// The authority an upgraded connection lives on: it is cut at the first
/// frame, either way, after the token's end or after a revocation of its
/// user.
#[derive(Debug, Clone, Copy)]
pub struct Grant {
    /// The token's `exp` (seconds since the epoch), sent upstream as
    /// `x-auth-expires`.
    pub expires: Option<u64>,
    /// `exp` plus the leeway: when the grant stops counting.
    ends: Option<u64>,
    admitted: Instant,
    /// The verifier's revocation count at admission: while it has not
    /// moved, no frame needs to look further.
    epoch: u64,
}

/// Why an upgraded connection's grant lapsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lapse {
    Expired,
    Revoked,
}

impl Lapse {
    pub fn label(self) -> &'static str {
        match self {
            Lapse::Expired => "expired",
            Lapse::Revoked => "revoked",
        }
    }
}

impl Grant {
    /// A grant admitted now, for tests of what is built from one.
    #[cfg(test)]
    pub(crate) fn at(expires: Option<u64>) -> Grant {
        Grant {
            expires,
            ends: expires,
            admitted: Instant::now(),
            epoch: 0,
        }
    }

    /// Whether the grant still holds for `user_id`, at `now` (seconds since
    /// the epoch).
    pub fn lapsed(&self, verifier: &Verifier, user_id: &str, now: u64) -> Option<Lapse> {
        if self.ends.is_some_and(|end| now >= end) {
            Some(Lapse::Expired)
        } else if verifier.revoked_since_epoch(user_id, self.admitted, self.epoch) {
            Some(Lapse::Revoked)
        } else {
            None
        }
    }
}

/// Seconds since the epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Verifier {
    /// The one call a protected request makes: the token from
    /// `credentials`, its verdict (cached, shared with a concurrent miss, or
    /// asked), and when the verifier cannot answer, a stale grant within
    /// `stale_allowance` (stale-if-error), else 503. With `span`, the
    /// verdict's origin is its `portcullis.auth.cache` attribute (hit, miss,
    /// coalesced, expired, stale), and a call to the auth service a child.
    pub async fn admit(
        &self,
        credentials: &Credentials<'_>,
        stale_allowance: Option<Duration>,
        request_id: &str,
        mut span: Option<&mut Span>,
    ) -> Result<Admitted, Refusal> {
        let token = credentials.token()?;
        // Read before verifying: a revocation during the verification moves
        // it, so a WebSocket admitted now is still checked.
        let epoch = self.revocation_epoch();
        let started = Instant::now();
        let (checked, outcome) = self.check(token, span.as_deref()).await;
        let m = metrics::get();
        m.verify_result(outcome.label());
        if let Some(span) = span.as_deref_mut() {
            span.set("portcullis.auth.cache", outcome.label());
        }
        if outcome == Outcome::Miss {
            m.verify_latency.observe(started.elapsed().as_secs_f64());
        }
        let grant = |expires: Option<u64>| Grant {
            expires,
            ends: expires.map(|exp| exp.saturating_add(self.leeway().as_secs())),
            admitted: started,
            epoch,
        };
        match checked {
            Ok((Verdict::Allowed(identity), exp)) => Ok(Admitted {
                identity,
                stale: false,
                grant: grant(exp),
            }),
            Ok((Verdict::Denied, _)) => Err(Refusal::InvalidToken),
            Err(error) => {
                m.verify_failures.with_label_values(&[error.label()]).inc();
                // A grant that ended a moment ago (never a refusal, never
                // past exp, never after a revocation) rather than a 503.
                let Some(identity) = stale_allowance.and_then(|a| self.stale(token, a)) else {
                    tracing::warn!(request_id, error = %error, "token verification unavailable");
                    return Err(Refusal::AuthUnavailable);
                };
                m.verify_stale.inc();
                if let Some(span) = span {
                    span.set("portcullis.auth.cache", "stale");
                }
                tracing::warn!(request_id, error = %error, user_id = %identity.user_id, "token verification unavailable; serving a stale grant");
                Ok(Admitted {
                    identity,
                    stale: true,
                    grant: grant(peek_exp(token)),
                })
            }
        }
    }
}
