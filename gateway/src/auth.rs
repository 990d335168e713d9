//! Token checks for protected routes: the shape of the `Authorization`
//! header, a cache of verdicts keyed by a hash of the exact token, and the
//! call to the auth service (or a local HS256 check) on a miss.
//!
//! Rules, in the order they apply:
//! - a missing or malformed header is refused here, with no network call;
//! - a positive verdict is cached for min(`cache_ttl`, `exp` − now), ending
//!   at `exp` to the millisecond, so a cached grant never outlives its
//!   token; a refusal is cached for `negative_ttl`; failures to get an answer
//!   are never cached;
//! - on a miss, a token whose `exp` has passed is refused without asking
//!   (the claim is read, not trusted: it can only shorten a token's life at
//!   the gateway, never lengthen it), so a hit costs no decoding at all;
//! - concurrent misses for one token share a single verification.

use crate::config::{Auth, AuthMode};
use base64::Engine;
use moka::future::Cache;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Tokens longer than this are refused without being looked at further.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Clock skew the local verifier tolerates on `nbf` (as the auth service).
pub const LEEWAY_SECS: u64 = 15;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BearerError {
    Missing,
    Malformed,
}

fn is_base64url(part: &str) -> bool {
    !part.is_empty()
        && part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Extracts the token from `Authorization` values: exactly one header,
/// scheme `Bearer` in any case, then one token of three base64url parts.
pub fn bearer<'a>(values: &[&'a [u8]]) -> Result<&'a str, BearerError> {
    let value = match values {
        [] => return Err(BearerError::Missing),
        [one] => *one,
        _ => return Err(BearerError::Malformed),
    };
    if value.len() > MAX_TOKEN_BYTES + 16 {
        return Err(BearerError::Malformed);
    }
    let value = std::str::from_utf8(value).map_err(|_| BearerError::Malformed)?;
    let (scheme, token) = value.split_once(' ').ok_or(BearerError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(BearerError::Malformed);
    }
    let token = token.trim_start_matches(' ').trim_end_matches([' ', '\t']);
    if !is_token_shaped(token) {
        return Err(BearerError::Malformed);
    }
    Ok(token)
}

/// A JWT's shape, wherever a token comes from: at most `MAX_TOKEN_BYTES`,
/// three non-empty base64url parts and nothing else.
fn is_token_shaped(token: &str) -> bool {
    let mut parts = token.split('.');
    token.len() <= MAX_TOKEN_BYTES
        && parts.by_ref().take(3).filter(|p| is_base64url(p)).count() == 3
        && parts.next().is_none()
}

/// The subprotocol name under which browsers send a token on a WebSocket
/// upgrade (`Sec-WebSocket-Protocol: bearer, <token>`): they cannot set
/// `Authorization` there, and a token in the URL would end up in logs.
pub const BEARER_SUBPROTOCOL: &str = "bearer";

/// A token offered as a WebSocket subprotocol.
#[derive(Debug, PartialEq, Eq)]
pub struct SubprotocolBearer<'a> {
    /// `None` when no `bearer` subprotocol was offered.
    pub token: Option<&'a str>,
    /// The other subprotocols offered, in order, to forward upstream
    /// (empty: send none).
    pub others: String,
}

/// Reads `Sec-WebSocket-Protocol` values (one list, however many lines):
/// `bearer` followed by the token, among any other subprotocols. `bearer`
/// twice, or without a well-formed token after it, is malformed.
pub fn subprotocol_bearer<'a>(values: &[&'a [u8]]) -> Result<SubprotocolBearer<'a>, BearerError> {
    let mut items = Vec::new();
    for value in values {
        let value = std::str::from_utf8(value).map_err(|_| BearerError::Malformed)?;
        items.extend(value.split(',').map(|p| p.trim_matches([' ', '\t'])));
    }
    let mut token = None;
    let mut others: Vec<&str> = Vec::new();
    let mut items = items.into_iter().filter(|p| !p.is_empty());
    while let Some(item) = items.next() {
        if item == BEARER_SUBPROTOCOL {
            if token.is_some() {
                return Err(BearerError::Malformed);
            }
            let candidate = items.next().ok_or(BearerError::Malformed)?;
            if !is_token_shaped(candidate) {
                return Err(BearerError::Malformed);
            }
            token = Some(candidate);
        } else {
            others.push(item);
        }
    }
    Ok(SubprotocolBearer {
        token,
        others: others.join(", "),
    })
}

/// The `exp` claim of a JWT, read without checking the signature.
pub fn peek_exp(token: &str) -> Option<u64> {
    #[derive(Deserialize)]
    struct Exp {
        exp: u64,
    }
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    serde_json::from_slice::<Exp>(&bytes).ok().map(|c| c.exp)
}

/// How long until `exp` (seconds since the epoch); zero once it has passed.
/// The longest anything is kept in a cache here; moka refuses (panics on)
/// lifetimes over 1000 years. `--check` bounds every configured time far
/// below this.
const MAX_KEEP: Duration = Duration::from_secs(366 * 86_400);

/// `at + d`, saturating at [`MAX_KEEP`] from `at`: a configured duration
/// must never make request handling panic on overflow.
fn later(at: Instant, d: Duration) -> Instant {
    at.checked_add(d.min(MAX_KEEP)).unwrap_or(at)
}

fn time_left(exp: u64) -> Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    Duration::from_secs(exp).saturating_sub(now)
}

/// Who a verified token belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// A positive decimal integer, ready to be sent as `x-user-id`.
    pub user_id: Box<str>,
    pub role: Box<str>,
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

/// The verifier could not give an answer. Never cached; answered 503.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unavailable {
    #[error("the auth service did not answer in time")]
    Timeout,
    #[error("the auth service is unreachable: {0}")]
    Unreachable(String),
    #[error("the auth service gave an unusable answer: {0}")]
    BadAnswer(String),
    #[error("auth.max_in_flight verifications were already running for auth.timeout")]
    Saturated,
}

impl Unavailable {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Unavailable::Timeout => "timeout",
            Unavailable::Unreachable(_) => "unreachable",
            Unavailable::BadAnswer(_) => "bad_answer",
            Unavailable::Saturated => "saturated",
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
}

/// Which cached keys grant which user, so that a revocation can drop all of
/// a user's entries at once, and when each user was last revoked, so that a
/// verification already under way then cannot put a grant back afterwards.
#[derive(Default)]
struct ByUser {
    /// Each key with its entry's deadline, which tells the entry apart from
    /// a newer one under the same key when the older one's removal is
    /// reported late.
    keys: std::collections::HashMap<Box<str>, std::collections::HashMap<[u8; 32], Instant>>,
    revoked: std::collections::HashMap<Box<str>, Instant>,
}

impl ByUser {
    fn forget(&mut self, user_id: &str, key: &[u8; 32], until: Instant) {
        if let Some(keys) = self.keys.get_mut(user_id) {
            if keys.get(key) == Some(&until) {
                keys.remove(key);
            }
            if keys.is_empty() {
                self.keys.remove(user_id);
            }
        }
    }
}

/// Takes a lock even if a thread panicked while holding it: both maps kept
/// under locks here stay usable (at worst one index key too many, which a
/// revocation then invalidates harmlessly; or one identity not shared).
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One shared `Identity` per user and role, however many of that user's
/// tokens are cached: a cache of a million tokens held by a few thousand
/// users then holds a few thousand identities, not a million copies.
#[derive(Default)]
struct Identities {
    known: std::sync::Mutex<Interned>,
}

#[derive(Default)]
struct Interned {
    map: std::collections::HashMap<Identity, std::sync::Weak<Identity>>,
    /// The map is swept of identities no cached entry holds any more when it
    /// reaches this size, which then doubles the live count (amortised O(1)).
    sweep_at: usize,
}

impl Identities {
    fn share(&self, identity: Identity) -> Arc<Identity> {
        // Only misses come here, one per verification.
        let mut known = lock(&self.known);
        if let Some(shared) = known.map.get(&identity).and_then(std::sync::Weak::upgrade) {
            return shared;
        }
        if known.map.len() >= known.sweep_at {
            known.map.retain(|_, weak| weak.strong_count() > 0);
            known.sweep_at = (known.map.len() * 2).max(1024);
        }
        let shared = Arc::new(identity.clone());
        known.map.insert(identity, Arc::downgrade(&shared));
        shared
    }
}

enum Source {
    Remote {
        client: reqwest::Client,
        url: String,
        in_flight: tokio::sync::Semaphore,
        timeout: Duration,
    },
    Local {
        key: Box<jsonwebtoken::DecodingKey>,
        validation: Box<jsonwebtoken::Validation>,
    },
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
    users: Arc<std::sync::Mutex<ByUser>>,
    revocable: bool,
    source: Source,
    ttl: Duration,
    negative_ttl: Duration,
}

#[derive(Serialize)]
struct VerifyRequest<'a> {
    access: &'a str,
}

#[derive(Deserialize)]
struct VerifyAnswer {
    user_id: serde_json::Value,
    #[serde(default)]
    role: Option<String>,
}

#[derive(Deserialize)]
struct LocalClaims {
    sub: String,
    #[serde(rename = "type")]
    token_type: String,
    #[serde(default)]
    role: Option<String>,
}

/// Builds an identity from untrusted parts, refusing anything that could
/// not be sent safely as a header value.
fn identity(user_id: &str, role: Option<&str>) -> Option<Identity> {
    let id = service_kit::identity::parse_user_id(user_id)?;
    let role = role.unwrap_or("user");
    let role_ok = !role.is_empty()
        && role.len() <= 64
        && role
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    role_ok.then(|| Identity {
        user_id: id.to_string().into(),
        role: role.into(),
    })
}

impl Verifier {
    /// A verifier for `auth`. Local mode needs the signing secret.
    /// `revocable`: whether revocations can arrive (Redis or the admin
    /// listener), and so whether cached grants are indexed by user; without
    /// them the index would only cost memory (about 100 bytes per token).
    pub fn new(auth: &Auth, secret: Option<&[u8]>, revocable: bool) -> Result<Self, String> {
        let source = match auth.mode {
            AuthMode::Remote => {
                let url = auth
                    .verify_url
                    .clone()
                    .ok_or("auth.verify_url is required in remote mode")?;
                let client = reqwest::Client::builder()
                    .timeout(auth.timeout.0)
                    .connect_timeout(auth.timeout.0)
                    .pool_idle_timeout(Duration::from_secs(60))
                    .pool_max_idle_per_host(256)
                    .tcp_nodelay(true)
                    .http1_only()
                    .build()
                    .map_err(|e| format!("cannot build the verify client: {e}"))?;
                Source::Remote {
                    client,
                    url,
                    in_flight: tokio::sync::Semaphore::new(auth.max_in_flight as usize),
                    timeout: auth.timeout.0,
                }
            }
            AuthMode::Local => {
                let secret = secret.ok_or(
                    "auth.mode local needs JWT_SECRET_KEY (the auth service's signing secret)",
                )?;
                if secret.len() < 32 {
                    return Err("JWT_SECRET_KEY must be at least 32 bytes".into());
                }
                let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
                validation.algorithms = vec![jsonwebtoken::Algorithm::HS256];
                validation.leeway = LEEWAY_SECS;
                validation.validate_exp = true;
                validation.validate_nbf = true;
                validation.set_required_spec_claims(&["exp", "nbf", "iat", "sub"]);
                Source::Local {
                    key: Box::new(jsonwebtoken::DecodingKey::from_secret(secret)),
                    validation: Box::new(validation),
                }
            }
        };
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
            users,
            revocable,
            source,
            ttl: auth.cache_ttl.0,
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
            && kept.exp.is_none_or(|exp| !time_left(exp).is_zero())
            && !self.revoked_since(&kept.identity.user_id, kept.verified);
        usable.then_some(kept.identity)
    }

    /// The verdict for `token` (already shape-checked by [`bearer`]).
    pub async fn verify(&self, token: &str) -> (Result<Verdict, Unavailable>, Outcome) {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(entry) = self.cache.get(&key).await {
            if Instant::now() < entry.until {
                return (Ok(entry.verdict), Outcome::Hit);
            }
            self.cache.invalidate(&key).await;
        }
        let exp = peek_exp(token);
        if exp.is_some_and(|exp| time_left(exp).is_zero()) {
            return (Ok(Verdict::Denied), Outcome::Expired);
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
                    let verdict = self.ask(token).await?;
                    let ttl = match &verdict {
                        Verdict::Allowed(_) => self.ttl.min(exp.map_or(self.ttl, time_left)),
                        Verdict::Denied => self.negative_ttl,
                    };
                    let until = later(Instant::now(), ttl);
                    Ok::<_, Unavailable>(Entry { verdict, until })
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
                    let Entry { verdict, until } = entry.into_value();
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
                    return (Ok(verdict), outcome);
                }
                Ok(entry) => return (Ok(entry.into_value().verdict), outcome),
                Err(error) => return (Err((*error).clone()), outcome),
            }
        }
        (Ok(Verdict::Denied), Outcome::Expired)
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

    /// Whether `user_id` was revoked at or after `since` (always false when
    /// revocations cannot arrive). A proxied WebSocket admitted at `since`
    /// is cut when this turns true.
    /// How many revocations have been handled (for [`Self::revoked_since_epoch`]).
    pub fn revocation_epoch(&self) -> u64 {
        self.revocations.load(Ordering::Acquire)
    }

    /// [`Self::revoked_since`], answered without a lock while no revocation has
    /// been handled since `epoch` was read (at `since`).
    pub fn revoked_since_epoch(&self, user_id: &str, since: Instant, epoch: u64) -> bool {
        self.revocation_epoch() != epoch && self.revoked_since(user_id, since)
    }

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

    /// Cached verdicts (approximate; for metrics and tests).
    pub fn cached(&self) -> u64 {
        self.cache.entry_count()
    }

    async fn ask(&self, token: &str) -> Result<Verdict, Unavailable> {
        match &self.source {
            Source::Remote {
                client,
                url,
                in_flight,
                timeout,
            } => {
                // The wait for a slot and the call share one deadline, so a
                // request is answered within auth.timeout either way.
                let started = Instant::now();
                let _slot = tokio::time::timeout(*timeout, in_flight.acquire())
                    .await
                    .map_err(|_| Unavailable::Saturated)?
                    .map_err(|_| Unavailable::Saturated)?;
                let left = timeout.saturating_sub(started.elapsed());
                if left.is_zero() {
                    return Err(Unavailable::Saturated);
                }
                let body = serde_json::to_vec(&VerifyRequest { access: token })
                    .map_err(|e| Unavailable::BadAnswer(e.to_string()))?;
                let response = client
                    .post(url)
                    .timeout(left)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| {
                        if e.is_timeout() {
                            Unavailable::Timeout
                        } else {
                            Unavailable::Unreachable(e.to_string())
                        }
                    })?;
                match response.status().as_u16() {
                    200 => {
                        let answer: VerifyAnswer = response.json().await.map_err(|e| {
                            if e.is_timeout() {
                                Unavailable::Timeout
                            } else {
                                Unavailable::BadAnswer(e.to_string())
                            }
                        })?;
                        let user_id = match &answer.user_id {
                            serde_json::Value::Number(n) => n.to_string(),
                            serde_json::Value::String(s) => s.clone(),
                            _ => String::new(),
                        };
                        identity(&user_id, answer.role.as_deref())
                            .map(|id| Verdict::Allowed(self.identities.share(id)))
                            .ok_or_else(|| {
                                Unavailable::BadAnswer("200 without a valid user_id".into())
                            })
                    }
                    401 => Ok(Verdict::Denied),
                    status => Err(Unavailable::BadAnswer(format!("status {status}"))),
                }
            }
            Source::Local { key, validation } => {
                let Ok(data) = jsonwebtoken::decode::<LocalClaims>(token, key, validation) else {
                    return Ok(Verdict::Denied);
                };
                if data.claims.token_type != "access" {
                    return Ok(Verdict::Denied);
                }
                Ok(identity(&data.claims.sub, data.claims.role.as_deref())
                    .map_or(Verdict::Denied, |id| {
                        Verdict::Allowed(self.identities.share(id))
                    }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person(user_id: &str, role: &str) -> Identity {
        Identity {
            user_id: user_id.into(),
            role: role.into(),
        }
    }

    #[test]
    fn identities_are_shared_per_user_and_role_and_forgotten_when_unused() {
        let identities = Identities::default();
        let a = identities.share(person("7", "user"));
        let b = identities.share(person("7", "user"));
        assert!(Arc::ptr_eq(&a, &b), "one user's tokens share one identity");
        let admin = identities.share(person("7", "admin"));
        let other = identities.share(person("8", "user"));
        assert!(!Arc::ptr_eq(&a, &admin) && !Arc::ptr_eq(&a, &other));
        assert_eq!(*admin, person("7", "admin"));

        // Identities no entry holds any more are swept as the map grows.
        drop((admin, other));
        for n in 0..3000 {
            drop(identities.share(person(&(100 + n).to_string(), "user")));
        }
        let known = identities.known.lock().expect("lock");
        assert!(
            known.map.len() < 2100,
            "{} identities kept",
            known.map.len()
        );
        assert!(
            known.map.contains_key(&person("7", "user")),
            "a live one was swept"
        );
    }

    fn b64(json: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }

    #[test]
    fn subprotocol_bearer_shapes() {
        let token = "aGVhZGVy.cGF5bG9hZA.c2ln";
        let parse = |lines: &[&str]| {
            let values: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
            subprotocol_bearer(&values).map(|p| (p.token.map(str::to_owned), p.others))
        };
        type Parsed = Result<(Option<String>, String), BearerError>;
        let cases: Vec<(Vec<String>, Parsed)> = vec![
            (vec![], Ok((None, String::new()))),
            (vec!["chat".into()], Ok((None, "chat".into()))),
            (
                vec![format!("bearer, {token}")],
                Ok((Some(token.into()), String::new())),
            ),
            (
                vec![format!("chat, bearer,{token} , v2")],
                Ok((Some(token.into()), "chat, v2".into())),
            ),
            (
                vec!["bearer".into(), token.into()],
                Ok((Some(token.into()), String::new())),
            ),
            (vec!["bearer".into()], Err(BearerError::Malformed)),
            (vec!["bearer, chat".into()], Err(BearerError::Malformed)),
            (
                vec![format!("bearer, {token}.x")],
                Err(BearerError::Malformed),
            ),
            (
                vec![format!("bearer, {token}, bearer, {token}")],
                Err(BearerError::Malformed),
            ),
            // Subprotocol names are case-sensitive: this is some other one.
            (
                vec![format!("Bearer, {token}")],
                Ok((None, format!("Bearer, {token}"))),
            ),
        ];
        for (lines, expected) in cases {
            let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
            assert_eq!(parse(&lines), expected, "{lines:?}");
        }
        assert_eq!(
            subprotocol_bearer(&[b"bearer, \xff"]).err(),
            Some(BearerError::Malformed)
        );
    }

    #[test]
    fn bearer_shapes() {
        let good = format!("{}.{}.sig", b64("{}"), b64("{}"));
        let with = |v: &str| v.as_bytes().to_vec();
        type Case = (Vec<Vec<u8>>, Result<(), BearerError>);
        let cases: Vec<Case> = vec![
            (vec![], Err(BearerError::Missing)),
            (vec![with(&format!("Bearer {good}"))], Ok(())),
            (vec![with(&format!("bearer {good}"))], Ok(())),
            (vec![with(&format!("BEARER  {good}"))], Ok(())),
            (
                vec![with(&format!("Basic {good}"))],
                Err(BearerError::Malformed),
            ),
            (
                vec![with(&format!("Bearer{good}"))],
                Err(BearerError::Malformed),
            ),
            (vec![with("Bearer ")], Err(BearerError::Malformed)),
            (
                vec![with(&format!("Bearer {good} extra"))],
                Err(BearerError::Malformed),
            ),
            (vec![with("Bearer a.b")], Err(BearerError::Malformed)),
            (vec![with("Bearer a.b.c.d")], Err(BearerError::Malformed)),
            (vec![with("Bearer a..c")], Err(BearerError::Malformed)),
            (vec![with("Bearer a.b.")], Err(BearerError::Malformed)),
            (vec![with("Bearer a+b.c.d")], Err(BearerError::Malformed)),
            (vec![with("Bearer a=.b.c")], Err(BearerError::Malformed)),
            (
                vec![with(&format!("Bearer {}.b.c", "a".repeat(MAX_TOKEN_BYTES)))],
                Err(BearerError::Malformed),
            ),
            (
                vec![
                    with(&format!("Bearer {good}")),
                    with(&format!("Bearer {good}")),
                ],
                Err(BearerError::Malformed),
            ),
            (vec![vec![0xff, 0xfe]], Err(BearerError::Malformed)),
        ];
        for (values, expected) in cases {
            let slices: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
            assert_eq!(bearer(&slices).map(drop), expected, "{values:?}");
        }
    }

    #[test]
    fn exp_is_read_without_verification() {
        let token = format!(
            "{}.{}.sig",
            b64(r#"{"alg":"HS256"}"#),
            b64(r#"{"exp":1700000000,"sub":"1"}"#)
        );
        assert_eq!(peek_exp(&token), Some(1_700_000_000));
        assert_eq!(
            peek_exp(&format!("{}.{}.sig", b64("{}"), b64(r#"{"sub":"1"}"#))),
            None
        );
        assert_eq!(peek_exp("a.!!!.c"), None);
    }

    #[test]
    fn identities_must_be_header_safe() {
        assert!(identity("7", Some("admin")).is_some());
        assert_eq!(identity("7", None).map(|i| i.role), Some("user".into()));
        for (id, role) in [
            ("0", None),
            ("-1", None),
            ("7\r\nx: y", None),
            ("7", Some("ad min")),
            ("7", Some("a\r\n")),
        ] {
            assert!(identity(id, role).is_none(), "{id:?} {role:?}");
        }
    }

    #[tokio::test]
    async fn expired_tokens_are_refused_before_any_lookup() {
        let auth: Auth =
            crate::yaml_de::from_str("verify_url: http://127.0.0.1:9/api/verify").expect("auth");
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
        let auth: Auth = crate::yaml_de::from_str("mode: local").expect("auth");
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
