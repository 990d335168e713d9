//! The verdict cache and its policy: keyed by SHA-256 of the exact token,
//! each entry with its own deadline (min(`cache_ttl`, `exp` + leeway − now)
//! for a grant, `negative_ttl` for a refusal; failures never cached),
//! concurrent misses sharing one verification, revocations dropping a
//! user's grants at once, and stale-if-error grants kept apart.

use super::revoked::Revoked;
use super::source::{Source, Unavailable};
use super::users::{ByUser, Identities, lock};
use super::{Identity, credentials::peek_exp};
use crate::config::Auth;
use crate::trace::Span;
use moka::future::Cache;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The longest anything is kept in a cache here; moka refuses (panics on)
/// lifetimes over 1000 years. `--check` bounds every configured time far
/// below this.
const MAX_KEEP: Duration = Duration::from_secs(366 * 86_400);

/// `at + d`, saturating at [`MAX_KEEP`] from `at`: a configured duration
/// must never make request handling panic on overflow.
fn later(at: Instant, d: Duration) -> Instant {
    at.checked_add(d.min(MAX_KEEP)).unwrap_or(at)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allowed(Arc<Identity>),
    Denied,
}

/// Where an answer came from, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Served from the cache.
    Hit,
    /// This request asked the verifier.
    Miss,
    /// Another request for the same token was already asking; this one waited.
    Coalesced,
    /// Not cached, and refused without asking: `exp` has passed.
    Expired,
}

impl Outcome {
    /// The result label counted in `portcullis_verify_cache_total`.
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Miss => "miss",
            Outcome::Coalesced => "coalesced",
            Outcome::Expired => "expired",
        }
    }
}

/// A cached verdict and the moment it stops counting. The deadline is
/// checked on every read, so a grant ends at the token's `exp` to the
/// millisecond; the cache itself keeps no per-entry timer (a timer node per
/// entry costs more memory than the entry's own data), and an entry past its
/// deadline is dropped when it is next read or evicted by capacity.
#[derive(Clone)]
struct Entry {
    verdict: Verdict,
    until: Instant,
    /// The token's `exp`, decoded once on the miss that made the entry.
    exp: Option<u64>,
}

/// A grant kept for stale-if-error: served, within a route's allowance past
/// `until`, only while the verifier cannot answer.
#[derive(Clone)]
struct Stale {
    identity: Arc<Identity>,
    /// When the fresh grant ended (as its cache entry).
    until: Instant,
    /// The token's `exp`; never served past it.
    exp: Option<u64>,
    /// When the verifier was asked; a revocation since then voids it.
    verified: Instant,
}

pub struct Verifier {
    cache: Cache<[u8; 32], Entry>,
    /// Positive grants for stale-if-error, kept `ttl + stale_window`; only
    /// when some route allows stale answers.
    stale: Option<moka::sync::Cache<[u8; 32], Stale>>,
    stale_window: Duration,
    /// Revocations handled so far; lets a per-frame check skip the lock
    /// while nothing was revoked.
    revocations: std::sync::atomic::AtomicU64,
    identities: Identities,
    /// Sessions and users revoked, for the sources that check tokens here.
    revoked: Arc<Revoked>,
    users: Arc<std::sync::Mutex<ByUser>>,
    revocable: bool,
    source: Source,
    ttl: Duration,
    leeway: Duration,
    negative_ttl: Duration,
}

impl Verifier {
    /// A verifier for `auth`. Local mode needs the signing secret.
    /// `revocable`: whether revocations can arrive (Redis or the admin
    /// listener), and so whether cached grants are indexed by user; without
    /// them the index would only cost memory (about 100 bytes per token).
    pub fn new(auth: &Auth, secret: Option<&[u8]>, revocable: bool) -> Result<Self, String> {
        let source = Source::new(auth, secret)?;
        let users = Arc::new(std::sync::Mutex::new(ByUser::default()));
        let mut builder = Cache::builder().max_capacity(auth.cache_capacity);
        if revocable {
            // Keeps the per-user index in step with the cache: whatever
            // removes an entry (capacity, invalidation, replacement) removes
            // its key. Without revocations there is no index to keep.
            let index = Arc::clone(&users);
            builder = builder.eviction_listener(move |key: Arc<[u8; 32]>, entry: Entry, _cause| {
                if let Verdict::Allowed(identity) = &entry.verdict {
                    lock(&index).forget(&identity.user_id, &key, entry.until);
                }
            });
        }
        let cache = builder.build();
        Ok(Verifier {
            cache,
            stale: None,
            stale_window: Duration::ZERO,
            revocations: std::sync::atomic::AtomicU64::new(0),
            identities: Identities::default(),
            revoked: Arc::default(),
            users,
            revocable,
            source,
            ttl: auth.cache_ttl.0,
            leeway: auth.leeway.0,
            negative_ttl: auth.negative_ttl.0,
        })
    }

    /// Keeps positive grants for up to `window` past their end, for routes
    /// that allow stale answers while the verifier is unavailable (zero:
    /// none kept).
    pub fn keeping_stale(mut self, window: Duration, capacity: u64) -> Self {
        self.stale_window = window;
        self.stale = (!window.is_zero()).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(capacity)
                .time_to_live(self.ttl.saturating_add(window).min(MAX_KEEP))
                .build()
        });
        self
    }

    /// Uses `revoked` (shared by every generation, fed by the revocation
    /// channel) instead of a set of its own.
    pub fn with_revoked(mut self, revoked: Arc<Revoked>) -> Self {
        self.revoked = revoked;
        self
    }

    /// The revoked sessions and users this verifier refuses.
    pub fn revoked(&self) -> &Arc<Revoked> {
        &self.revoked
    }

    /// Whether tokens are checked here against an issuer's published keys
    /// (jwks mode), which is where revocations missed during a gap must be
    /// made up for by refusing older tokens.
    pub fn checks_signatures_with_keys(&self) -> bool {
        self.source.is_jwks()
    }

    /// Whether tokens are checked here rather than asked about (local and
    /// jwks modes), and so whether revocations must be kept here.
    pub fn checks_tokens_itself(&self) -> bool {
        !self.source.is_remote()
    }

    /// Ready to verify (in jwks mode: keys fetched); the error says why not.
    pub async fn ready(&self) -> Result<(), String> {
        self.source.ready().await
    }

    /// How long grants are kept past their end for stale-if-error.
    pub fn stale_window(&self) -> Duration {
        self.stale_window
    }

    /// A grant for `token` that ended at most `allowance` ago, for use only
    /// when the verifier cannot answer: never a refusal, never past the
    /// token's `exp`, never for a user revoked since it was verified.
    pub fn stale(&self, token: &str, allowance: Duration) -> Option<Arc<Identity>> {
        let stale = self.stale.as_ref()?;
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let kept = stale.get(&key)?;
        let usable = Instant::now() < later(kept.until, allowance.min(self.stale_window))
            && kept.exp.is_none_or(|exp| !self.time_left(exp).is_zero())
            && !self.revoked_since(&kept.identity.user_id, kept.verified);
        usable.then_some(kept.identity)
    }

    /// The verdict for `token` (already shape-checked), for tests; the
    /// proxy goes through [`Verifier::admit`](super::Verifier::admit).
    #[cfg(test)]
    pub async fn verify(&self, token: &str) -> (Result<Verdict, Unavailable>, Outcome) {
        let (checked, outcome) = self.check(token, None).await;
        (checked.map(|(verdict, _)| verdict), outcome)
    }

    /// The verdict for `token` and its `exp`, decoded once per miss and kept
    /// with the entry, so a hit decodes nothing. A call to the auth service
    /// is a child of `span`.
    pub(super) async fn check(
        &self,
        token: &str,
        span: Option<&Span>,
    ) -> (Result<(Verdict, Option<u64>), Unavailable>, Outcome) {
        if self.source.refresh_keys() {
            // A key left the JWKS: grants for tokens it signed must not
            // outlive it.
            self.clear();
        }
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(entry) = self.cache.get(&key).await {
            if Instant::now() < entry.until {
                return (Ok((entry.verdict, entry.exp)), Outcome::Hit);
            }
            self.cache.invalidate(&key).await;
        }
        let exp = peek_exp(token);
        if exp.is_some_and(|exp| self.time_left(exp).is_zero()) {
            return (Ok((Verdict::Denied, exp)), Outcome::Expired);
        }
        let started = Instant::now();
        // A waiter can be handed an entry that another request inserted and
        // that has since passed its deadline; it is dropped and asked for
        // again, once: the second entry is at most milliseconds old.
        for _ in 0..2 {
            let asked = AtomicBool::new(false);
            let result = self
                .cache
                .entry(key)
                .or_try_insert_with(async {
                    asked.store(true, Ordering::Relaxed);
                    let verdict = self
                        .source
                        .ask(token, &self.identities, &self.revoked, span)
                        .await?;
                    let ttl = match &verdict {
                        Verdict::Allowed(_) => self
                            .ttl
                            .min(exp.map_or(self.ttl, |exp| self.time_left(exp))),
                        Verdict::Denied => self.negative_ttl,
                    };
                    let until = later(Instant::now(), ttl);
                    Ok::<_, Unavailable>(Entry {
                        verdict,
                        until,
                        exp,
                    })
                })
                .await;
            let outcome = if asked.load(Ordering::Relaxed) {
                Outcome::Miss
            } else {
                Outcome::Coalesced
            };
            match result {
                Ok(entry) if !entry.is_fresh() && Instant::now() >= entry.value().until => {
                    self.cache.invalidate(&key).await;
                }
                Ok(entry) if entry.is_fresh() => {
                    let Entry { verdict, until, .. } = entry.into_value();
                    if verdict == Verdict::Denied
                        && let Some(stale) = &self.stale
                    {
                        // Refused now: an earlier grant may no longer stand in.
                        stale.invalidate(&key);
                    }
                    if let Verdict::Allowed(identity) = &verdict {
                        if !self.index(&identity.user_id, key, until, started) {
                            // Revoked while this verification was under way:
                            // the answer stands for this request, but is not
                            // kept.
                            self.cache.invalidate(&key).await;
                        } else if let Some(stale) = &self.stale {
                            stale.insert(
                                key,
                                Stale {
                                    identity: Arc::clone(identity),
                                    until,
                                    exp,
                                    verified: started,
                                },
                            );
                        }
                    }
                    return (Ok((verdict, exp)), outcome);
                }
                Ok(entry) => {
                    let entry = entry.into_value();
                    return (Ok((entry.verdict, entry.exp)), outcome);
                }
                Err(error) => return (Err((*error).clone()), outcome),
            }
        }
        (Ok((Verdict::Denied, exp)), Outcome::Expired)
    }

    /// Records that `key` grants `user_id`; false when the user was revoked
    /// after `asked_at`, in which case the grant must not be kept.
    fn index(&self, user_id: &str, key: [u8; 32], until: Instant, asked_at: Instant) -> bool {
        if !self.revocable {
            return true;
        }
        let mut users = lock(&self.users);
        if users
            .revoked
            .get(user_id)
            .is_some_and(|revoked| *revoked >= asked_at)
        {
            return false;
        }
        users
            .keys
            .entry(user_id.into())
            .or_default()
            .insert(key, until);
        true
    }

    /// Drops every cached grant of `user_id` (a revocation: logout, disabled,
    /// deleted, role changed); their next request is verified afresh.
    /// Returns how many entries were dropped.
    pub async fn revoke_user(&self, user_id: &str) -> usize {
        let keys = {
            let mut users = lock(&self.users);
            let now = Instant::now();
            // Revocation times are kept for a day: long enough for any
            // verification still under way, any stale grant, and the proxied
            // WebSockets admitted before them, which are checked against
            // them for as long as their token lives.
            let horizon = (self.ttl.saturating_add(self.stale_window) + Duration::from_secs(60))
                .max(Duration::from_secs(86_400));
            users
                .revoked
                .retain(|_, at| now.saturating_duration_since(*at) < horizon);
            users.revoked.insert(user_id.into(), now);
            self.revocations.fetch_add(1, Ordering::AcqRel);
            users.keys.remove(user_id).unwrap_or_default()
        };
        // Invalidated outside the lock: the eviction listener takes it.
        for key in keys.keys() {
            self.cache.invalidate(key).await;
        }
        keys.len()
    }

    /// How many revocations have been handled (for [`Self::revoked_since_epoch`]).
    pub fn revocation_epoch(&self) -> u64 {
        self.revocations.load(Ordering::Acquire)
    }

    /// [`Self::revoked_since`], answered without a lock while no revocation has
    /// been handled since `epoch` was read (at `since`).
    pub fn revoked_since_epoch(&self, user_id: &str, since: Instant, epoch: u64) -> bool {
        self.revocation_epoch() != epoch && self.revoked_since(user_id, since)
    }

    /// Whether `user_id` was revoked at or after `since` (always false when
    /// revocations cannot arrive). A proxied WebSocket admitted at `since`
    /// is cut when this turns true.
    pub fn revoked_since(&self, user_id: &str, since: Instant) -> bool {
        self.revocable
            && lock(&self.users)
                .revoked
                .get(user_id)
                .is_some_and(|at| *at >= since)
    }

    /// Drops every cached verdict (after revocations may have been missed).
    pub fn clear(&self) {
        self.cache.invalidate_all();
        if let Some(stale) = &self.stale {
            stale.invalidate_all();
        }
    }

    /// How long until `exp` (seconds since the epoch) and the leeway after
    /// it; zero once that has passed. The auth service allows the same
    /// leeway, so where a verdict comes from never changes the answer.
    pub fn time_left(&self, exp: u64) -> Duration {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Duration::from_secs(exp)
            .saturating_add(self.leeway)
            .saturating_sub(now)
    }

    /// The leeway allowed past a token's `exp`.
    pub fn leeway(&self) -> Duration {
        self.leeway
    }

    /// Cached verdicts (approximate; for metrics and tests).
    pub fn cached(&self) -> u64 {
        self.cache.entry_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn b64(json: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    #[tokio::test]
    async fn expired_tokens_are_refused_before_any_lookup() {
        let auth: Auth =
            crate::config::yaml_de::from_str("verify_url: http://127.0.0.1:9/api/verify")
                .expect("auth");
        let verifier = Verifier::new(&auth, None, true).expect("verifier");
        let token = format!("{}.{}.sig", b64("{}"), b64(r#"{"exp":1000}"#));
        let (verdict, outcome) = verifier.verify(&token).await;
        assert_eq!(verdict, Ok(Verdict::Denied));
        assert_eq!(outcome, Outcome::Expired);
        assert_eq!(verifier.cached(), 0);
    }

    fn signed(secret: &[u8], user: &str) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let claims = serde_json::json!({
            "sub": user, "type": "access", "role": "user",
            "iat": now, "nbf": now, "exp": now + 3600,
        });
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret),
        )
        .expect("token")
    }

    #[tokio::test]
    async fn stale_grants_are_kept_only_when_asked_and_never_after_a_revocation() {
        let secret = b"a-signing-secret-of-at-least-thirty-two-bytes";
        let auth: Auth = crate::config::yaml_de::from_str("mode: local").expect("auth");
        let keeping = Verifier::new(&auth, Some(secret), true)
            .expect("verifier")
            .keeping_stale(Duration::from_secs(10), 100);
        let alice = signed(secret, "7");
        let bob = signed(secret, "8");
        assert!(matches!(
            keeping.verify(&alice).await.0,
            Ok(Verdict::Allowed(_))
        ));
        assert!(matches!(
            keeping.verify(&bob).await.0,
            Ok(Verdict::Allowed(_))
        ));
        assert_eq!(
            keeping
                .stale(&alice, Duration::from_secs(5))
                .map(|i| i.user_id.clone()),
            Some("7".into())
        );
        let never_seen = signed(secret, "9");
        assert!(keeping.stale(&never_seen, Duration::from_secs(5)).is_none());
        keeping.revoke_user("7").await;
        assert!(
            keeping.stale(&alice, Duration::from_secs(5)).is_none(),
            "a revoked user's grant served stale"
        );
        assert!(keeping.stale(&bob, Duration::from_secs(5)).is_some());
        keeping.clear();
        assert!(keeping.stale(&bob, Duration::from_secs(5)).is_none());

        let plain = Verifier::new(&auth, Some(secret), true).expect("verifier");
        assert!(matches!(
            plain.verify(&alice).await.0,
            Ok(Verdict::Allowed(_))
        ));
        assert!(plain.stale(&alice, Duration::from_secs(5)).is_none());
        assert_eq!(plain.stale_window(), Duration::ZERO);
    }
}
