//! `auth.mode: jwks`: a token's signature is checked here, against the keys
//! the issuer publishes at `jwks_url`.
//!
//! - **Which key:** only the JWKS fetched from `jwks_url`, looked up by the
//!   token's `kid`. A token's `jku`, `x5u`, `x5c` or embedded `jwk` is never
//!   read, so no token can make the gateway fetch or trust anything else.
//! - **Which algorithm:** the token's `alg` must be in `auth.algorithms`
//!   (asymmetric only; `--check` refuses `none` and HS*), must suit the
//!   key's type and curve, and must be the key's own `alg` when the JWKS
//!   names one. An HS256 token "signed" with a published key therefore
//!   never verifies.
//! - **Claims:** `exp` (with `auth.leeway`), `nbf`, `iss` (exactly
//!   `auth.issuer`), `aud` (one of `auth.audiences`) are required; a token
//!   whose `type`/`typ` says it is a refresh or ID token is refused; the
//!   user id is read at `user_id_claim`, the roles at `roles_claim`.
//! - **Refreshing the keys:** at start (failing the start when neither the
//!   JWKS nor `jwks_cache` gives a key), then when the server's `max-age`
//!   has passed (clamped to `jwks_min_refresh` … 1 h; 5 min without one),
//!   in the background, and at once for an unknown `kid`, but never more
//!   than once per `jwks_min_refresh`: a flood of made-up kids costs one
//!   fetch per interval. A failed fetch keeps the keys in force.
//! - **Revocations:** a verified token is then checked against the
//!   revoked sessions and users ([`super::revoked`]).

use super::revoked::{Facts, Revoked};
use super::users::{Identities, role_ok};
use super::{Identity, Verdict};
use crate::config::Auth;
use crate::config::jwks::{ClaimPath, JwsAlgorithm};
use crate::metrics;
use arc_swap::ArcSwap;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The largest JWKS document read.
pub const MAX_DOCUMENT: usize = 256 * 1024;
/// Keys kept from one document; the rest are ignored.
pub const MAX_KEYS: usize = 64;
/// How long a JWKS is used without a `max-age`.
const DEFAULT_MAX_AGE: Duration = Duration::from_secs(300);
/// The longest a JWKS is used before it is fetched again.
const LONGEST_MAX_AGE: Duration = Duration::from_secs(3600);

/// The kind of key a JWK is, which decides the algorithms it may verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Ed25519,
    P256,
    P384,
    Rsa,
}

impl Kind {
    fn suits(self, alg: Algorithm) -> bool {
        matches!(
            (self, alg),
            (Kind::Ed25519, Algorithm::EdDSA)
                | (Kind::P256, Algorithm::ES256)
                | (Kind::P384, Algorithm::ES384)
                | (
                    Kind::Rsa,
                    Algorithm::RS256
                        | Algorithm::RS384
                        | Algorithm::RS512
                        | Algorithm::PS256
                        | Algorithm::PS384
                        | Algorithm::PS512
                )
        )
    }
}

struct Key {
    decoding: DecodingKey,
    kind: Kind,
    /// The JWK's own `alg`, when it names one.
    alg: Option<Algorithm>,
}

/// The keys of one JWKS document, by `kid`.
pub struct KeySet {
    keys: HashMap<String, Key>,
}

impl KeySet {
    /// The usable signature keys of a JWKS document; keys without a `kid`,
    /// for encryption, symmetric (`oct`), or of an unsupported type or
    /// curve are skipped. An error only when the document itself is not a
    /// JWKS.
    pub fn parse(body: &[u8]) -> Result<KeySet, String> {
        #[derive(serde::Deserialize)]
        struct Document {
            keys: Vec<Value>,
        }
        let document: Document =
            serde_json::from_slice(body).map_err(|e| format!("not a JWKS document: {e}"))?;
        let mut keys = HashMap::new();
        // Usable keys are counted against the bound, so that keys of other
        // kinds listed first never push the signing key out.
        for value in document.keys {
            if keys.len() == MAX_KEYS {
                tracing::warn!(kept = MAX_KEYS, "the JWKS lists more keys than are kept");
                break;
            }
            let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
                continue;
            };
            let Some(kid) = jwk
                .common
                .key_id
                .clone()
                .filter(|k| (1..=256).contains(&k.len()))
            else {
                continue;
            };
            if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
                continue;
            }
            let kind = match &jwk.algorithm {
                AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
                    Kind::Ed25519
                }
                AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
                    Kind::P256
                }
                AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P384 => {
                    Kind::P384
                }
                AlgorithmParameters::RSA(_) => Kind::Rsa,
                _ => continue,
            };
            let alg = match jwk.common.key_algorithm {
                None => None,
                Some(named) => match named.to_string().parse::<Algorithm>() {
                    Ok(alg) if kind.suits(alg) => Some(alg),
                    // A key published for another use (RSA-OAEP, HS256):
                    // never a signature key here.
                    _ => continue,
                },
            };
            let Ok(decoding) = DecodingKey::from_jwk(&jwk) else {
                continue;
            };
            keys.insert(
                kid,
                Key {
                    decoding,
                    kind,
                    alg,
                },
            );
        }
        Ok(KeySet { keys })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn kids(&self) -> impl Iterator<Item = &String> {
        self.keys.keys()
    }
}

/// How long a fetched JWKS is used: its `Cache-Control: max-age`, clamped
/// to `[min, 1 h]`; 5 minutes (or `min`, if longer) without one.
pub fn max_age(cache_control: Option<&str>, min: Duration) -> Duration {
    let declared = cache_control.and_then(|value| {
        value.split(',').find_map(|directive| {
            let (name, seconds) = directive.trim().split_once('=')?;
            name.trim()
                .eq_ignore_ascii_case("max-age")
                .then(|| seconds.trim().trim_matches('"').parse::<u64>().ok())
                .flatten()
        })
    });
    declared
        .map_or(DEFAULT_MAX_AGE, Duration::from_secs)
        .clamp(min, LONGEST_MAX_AGE.max(min))
}

/// Why a token was refused, counted in
/// `portcullis_jwks_verifications_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    Malformed,
    Algorithm,
    UnknownKid,
    BadSignature,
    Expired,
    NotYetValid,
    Issuer,
    Audience,
    Claims,
    Revoked,
}

impl Rejection {
    pub fn label(self) -> &'static str {
        match self {
            Rejection::Malformed => "malformed",
            Rejection::Algorithm => "algorithm",
            Rejection::UnknownKid => "unknown_kid",
            Rejection::BadSignature => "bad_signature",
            Rejection::Expired => "expired",
            Rejection::NotYetValid => "not_yet_valid",
            Rejection::Issuer => "issuer",
            Rejection::Audience => "audience",
            Rejection::Claims => "claims",
            Rejection::Revoked => "revoked",
        }
    }
}

/// What the claims check needs, from `auth`.
struct Rules {
    /// Each allowed algorithm with its validation (that algorithm only,
    /// `exp`/`nbf` with the leeway, `iss` and `aud` required and checked),
    /// made once.
    validations: Vec<(Algorithm, Validation)>,
    roles_claim: ClaimPath,
    user_id_claim: ClaimPath,
}

fn validation(alg: Algorithm, auth: &Auth) -> Validation {
    let mut validation = Validation::new(alg);
    validation.algorithms = vec![alg];
    validation.leeway = auth.leeway.0.as_secs();
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    validation.set_issuer(&[auth.issuer.as_deref().unwrap_or_default()]);
    validation.set_audience(auth.audiences.as_deref().unwrap_or_default());
    validation
}

fn jwt_algorithm(a: JwsAlgorithm) -> Algorithm {
    match a {
        JwsAlgorithm::EdDSA => Algorithm::EdDSA,
        JwsAlgorithm::ES256 => Algorithm::ES256,
        JwsAlgorithm::ES384 => Algorithm::ES384,
        JwsAlgorithm::RS256 => Algorithm::RS256,
        JwsAlgorithm::RS384 => Algorithm::RS384,
        JwsAlgorithm::RS512 => Algorithm::RS512,
        JwsAlgorithm::PS256 => Algorithm::PS256,
        JwsAlgorithm::PS384 => Algorithm::PS384,
        JwsAlgorithm::PS512 => Algorithm::PS512,
    }
}

pub struct Jwks {
    url: String,
    client: reqwest::Client,
    rules: Rules,
    min_refresh: Duration,
    cache_file: Option<PathBuf>,
    keys: ArcSwap<KeySet>,
    /// When a fetch was last attempted, in milliseconds since `born` plus
    /// one (0: never).
    last_attempt: std::sync::atomic::AtomicU64,
    /// When the keys are next due, in milliseconds since `born`: read by
    /// every request.
    due: std::sync::atomic::AtomicU64,
    born: Instant,
    /// One fetch at a time.
    fetching: Arc<tokio::sync::Mutex<()>>,
    /// A fetch dropped a key since [`Jwks::keys_removed`] was last asked.
    removed: std::sync::atomic::AtomicBool,
}

/// Why the JWKS could not be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FetchError(pub String);

impl Jwks {
    pub fn new(auth: &Auth) -> Result<Jwks, String> {
        let url = auth
            .jwks_url
            .clone()
            .ok_or("auth.jwks_url is required in jwks mode")?;
        let client = reqwest::Client::builder()
            .timeout(auth.timeout.0)
            .connect_timeout(auth.timeout.0)
            .redirect(reqwest::redirect::Policy::none())
            .http1_only()
            .build()
            .map_err(|e| format!("cannot build the JWKS client: {e}"))?;
        Ok(Jwks {
            url,
            client,
            rules: Rules {
                validations: auth
                    .algorithms()
                    .into_iter()
                    .map(|a| {
                        let alg = jwt_algorithm(a);
                        (alg, validation(alg, auth))
                    })
                    .collect(),
                roles_claim: auth.roles_claim(),
                user_id_claim: auth.user_id_claim(),
            },
            min_refresh: auth.jwks_min_refresh(),
            cache_file: auth.jwks_cache.clone(),
            keys: ArcSwap::from_pointee(KeySet {
                keys: HashMap::new(),
            }),
            last_attempt: std::sync::atomic::AtomicU64::new(0),
            due: std::sync::atomic::AtomicU64::new(0),
            born: Instant::now(),
            fetching: Arc::new(tokio::sync::Mutex::new(())),
            removed: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The first fetch: keys from `jwks_url`, else from `jwks_cache`; an
    /// error naming both when neither gives one.
    pub async fn ready(&self) -> Result<(), String> {
        if !self.keys.load().is_empty() {
            return Ok(());
        }
        let _one = self.fetching.lock().await;
        let fetched = self.fetch("start").await;
        if !self.keys.load().is_empty() {
            return Ok(());
        }
        let why = match fetched {
            Ok(()) => format!("the JWKS at {} holds no usable signature key", self.url),
            Err(error) => format!("cannot fetch the JWKS from {}: {error}", self.url),
        };
        let Some(path) = &self.cache_file else {
            return Err(format!(
                "auth.jwks_url: {why}, and no cached copy exists (auth.jwks_cache is not set)"
            ));
        };
        let cached = std::fs::read(path)
            .map_err(|e| e.to_string())
            .and_then(|body| KeySet::parse(&body));
        match cached {
            Ok(set) if !set.is_empty() => {
                tracing::warn!(error = %why, cache = %path.display(), keys = set.len(), "starting with the cached JWKS");
                metrics::get().jwks_keys.set(set.len() as i64);
                self.keys.store(Arc::new(set));
                Ok(())
            }
            Ok(_) => Err(format!(
                "auth.jwks_url: {why}, and the cached copy {} holds no usable key",
                path.display()
            )),
            Err(error) => Err(format!(
                "auth.jwks_url: {why}, and no cached copy could be read at {} ({error})",
                path.display()
            )),
        }
    }

    /// Fetches the JWKS once (the caller holds `fetching`), replacing the
    /// keys only with a document that holds at least one.
    async fn fetch(&self, trigger: &'static str) -> Result<(), FetchError> {
        self.last_attempt.store(
            self.now_ms().saturating_add(1),
            std::sync::atomic::Ordering::Relaxed,
        );
        // A failure is retried after the shortest interval.
        self.set_due(self.min_refresh);
        let fetched = self.get().await;
        let m = metrics::get();
        match fetched {
            Ok((body, set, age)) => {
                m.jwks_fetches.with_label_values(&[trigger, "ok"]).inc();
                m.jwks_keys.set(set.len() as i64);
                self.set_due(age);
                let previous = self.keys.load();
                let removed = previous.kids().any(|kid| !set.keys.contains_key(kid));
                tracing::debug!(keys = set.len(), trigger, "JWKS fetched");
                self.keys.store(Arc::new(set));
                if let Some(path) = &self.cache_file {
                    keep_copy(path, &body);
                }
                if removed {
                    // Grants cached for tokens a removed key signed must go.
                    self.removed
                        .store(true, std::sync::atomic::Ordering::Release);
                }
                Ok(())
            }
            Err(error) => {
                m.jwks_fetches.with_label_values(&[trigger, "failed"]).inc();
                tracing::warn!(url = %self.url, %error, trigger, "JWKS fetch failed; the keys in force stay");
                Err(error)
            }
        }
    }

    async fn get(&self) -> Result<(Vec<u8>, KeySet, Duration), FetchError> {
        let mut response = self
            .client
            .get(&self.url)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| FetchError(describe(&e)))?;
        if !response.status().is_success() {
            return Err(FetchError(format!("status {}", response.status().as_u16())));
        }
        let age = max_age(
            response
                .headers()
                .get("cache-control")
                .and_then(|v| v.to_str().ok()),
            self.min_refresh,
        );
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| FetchError(describe(&e)))?
        {
            if body.len() + chunk.len() > MAX_DOCUMENT {
                return Err(FetchError(format!(
                    "the document is larger than {MAX_DOCUMENT} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        let set = KeySet::parse(&body).map_err(FetchError)?;
        if set.is_empty() {
            return Err(FetchError("no usable signature key in the document".into()));
        }
        Ok((body, set, age))
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn set_due(&self, after: Duration) {
        let at = self
            .now_ms()
            .saturating_add(u64::try_from(after.as_millis()).unwrap_or(u64::MAX));
        self.due.store(at, std::sync::atomic::Ordering::Relaxed);
    }

    fn is_due(&self) -> bool {
        self.now_ms() >= self.due.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Starts a background fetch when the keys are due, unless one runs.
    /// Called by every protected request (cached or not), so that a key
    /// removed from the JWKS stops counting within its max-age.
    pub(super) fn refresh_if_due(self: &Arc<Self>) {
        if !self.is_due() {
            return;
        }
        let Ok(guard) = Arc::clone(&self.fetching).try_lock_owned() else {
            return;
        };
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let _guard = guard;
            if this.is_due() {
                let _ = this.fetch("max_age").await;
            }
        });
    }

    /// For a kid not in the set: fetch now, unless a fetch was attempted
    /// within `jwks_min_refresh`. Concurrent callers wait for one fetch.
    async fn refresh_for_unknown_kid(&self) {
        let _one = self.fetching.lock().await;
        let last = self.last_attempt.load(std::sync::atomic::Ordering::Relaxed);
        let since = self.now_ms().saturating_add(1).saturating_sub(last);
        let recent = last != 0 && u128::from(since) < self.min_refresh.as_millis();
        if !recent {
            let _ = self.fetch("unknown_kid").await;
        }
    }

    /// Whether a fetch dropped a key since this was last asked (once).
    pub fn keys_removed(&self) -> bool {
        use std::sync::atomic::Ordering;
        self.removed.load(Ordering::Acquire) && self.removed.swap(false, Ordering::AcqRel)
    }

    /// The verdict on `token`.
    pub(super) async fn verify(
        self: &Arc<Self>,
        token: &str,
        identities: &Identities,
        revoked: &Revoked,
    ) -> Verdict {
        let result = self.check(token, revoked).await;
        let m = metrics::get();
        match result {
            Ok(identity) => {
                m.jwks_verifications.with_label_values(&["ok"]).inc();
                Verdict::Allowed(identities.share(identity))
            }
            Err(rejection) => {
                m.jwks_verifications
                    .with_label_values(&[rejection.label()])
                    .inc();
                Verdict::Denied
            }
        }
    }

    async fn check(&self, token: &str, revoked: &Revoked) -> Result<Identity, Rejection> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| Rejection::Malformed)?;
        let alg = header.alg;
        let Some((_, validation)) = self.rules.validations.iter().find(|(a, _)| *a == alg) else {
            return Err(Rejection::Algorithm);
        };
        let kid = header.kid.ok_or(Rejection::UnknownKid)?;
        let mut keys = self.keys.load_full();
        if !keys.keys.contains_key(&kid) {
            self.refresh_for_unknown_kid().await;
            keys = self.keys.load_full();
        }
        let key = keys.keys.get(&kid).ok_or(Rejection::UnknownKid)?;
        if !key.kind.suits(alg) || key.alg.is_some_and(|named| named != alg) {
            return Err(Rejection::Algorithm);
        }
        let claims = jsonwebtoken::decode::<Value>(token, &key.decoding, validation)
            .map_err(|error| {
                use jsonwebtoken::errors::ErrorKind;
                match error.kind() {
                    ErrorKind::InvalidSignature => Rejection::BadSignature,
                    ErrorKind::ExpiredSignature => Rejection::Expired,
                    ErrorKind::ImmatureSignature => Rejection::NotYetValid,
                    ErrorKind::InvalidIssuer => Rejection::Issuer,
                    ErrorKind::InvalidAudience => Rejection::Audience,
                    ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => Rejection::Issuer,
                    ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => Rejection::Audience,
                    ErrorKind::InvalidAlgorithm => Rejection::Algorithm,
                    _ => Rejection::Malformed,
                }
            })?
            .claims;
        let identity = identity(&claims, &self.rules.user_id_claim, &self.rules.roles_claim)
            .ok_or(Rejection::Claims)?;
        let facts = Facts {
            user_id: &identity.user_id,
            sid: claims.get("sid").and_then(Value::as_str),
            iat: claims.get("iat").and_then(Value::as_u64),
        };
        if revoked.refuses(facts, super::unix_now()).is_some() {
            return Err(Rejection::Revoked);
        }
        Ok(identity)
    }
}

fn describe(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        "timed out".into()
    } else if error.is_connect() {
        "cannot connect".into()
    } else {
        error.to_string()
    }
}

/// Writes the last good JWKS to `path` (through a temporary file, so a
/// reader never sees half of one). A failure is logged, never fatal.
fn keep_copy(path: &std::path::Path, body: &[u8]) {
    let temporary = path.with_extension("tmp");
    let written = std::fs::write(&temporary, body).and_then(|()| std::fs::rename(&temporary, path));
    if let Err(error) = written {
        tracing::warn!(path = %path.display(), %error, "cannot keep a copy of the JWKS");
    }
}

/// The value at `path` in `claims`.
fn at<'a>(claims: &'a Value, path: &ClaimPath) -> Option<&'a Value> {
    path.0
        .iter()
        .try_fold(claims, |value, name| value.get(name))
}

/// The identity a verified token's claims name; `None` when the user id is
/// missing or unusable, or the token is not an access token.
fn identity(
    claims: &Value,
    user_id_claim: &ClaimPath,
    roles_claim: &ClaimPath,
) -> Option<Identity> {
    // This service's refresh tokens say `type: refresh`; other issuers'
    // refresh and ID tokens say `typ: Refresh` / `typ: ID`.
    for name in ["type", "typ"] {
        if let Some(kind) = claims.get(name).and_then(Value::as_str)
            && ["refresh", "id", "offline"]
                .iter()
                .any(|refused| kind.eq_ignore_ascii_case(refused))
        {
            return None;
        }
    }
    let user_id = user_id(at(claims, user_id_claim)?)?;
    let roles: Vec<&str> = match at(claims, roles_claim) {
        Some(Value::String(role)) => vec![role.as_str()],
        Some(Value::Array(roles)) => roles.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    let roles: Vec<&str> = roles
        .into_iter()
        .filter(|r| role_ok(r))
        .take(MAX_ROLES)
        .collect();
    let role = if roles.is_empty() {
        "user".to_string()
    } else {
        roles.join(",")
    };
    Some(Identity {
        user_id: user_id.into(),
        role: role.into(),
    })
}

/// Roles kept from one token.
pub const MAX_ROLES: usize = 32;

/// A user id as the gateway sends it: a positive integer (a number, or a
/// string of one) in its one spelling, else an opaque id of 1–128
/// characters safe in a header (`[A-Za-z0-9._@:|-]`).
fn user_id(value: &Value) -> Option<String> {
    let text = match value {
        Value::Number(n) => {
            return contract::identity::parse_user_id(&n.to_string()).map(|id| id.to_string());
        }
        Value::String(s) => s.as_str(),
        _ => return None,
    };
    // Anything that looks like a number must be one, in its one spelling:
    // "0", "-3" or "+7" never pass as opaque ids.
    if text
        .bytes()
        .all(|b| b.is_ascii_digit() || b == b'-' || b == b'+')
    {
        return contract::identity::parse_user_id(text).map(|id| id.to_string());
    }
    let opaque = (1..=128).contains(&text.len())
        && text.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b':' | b'|' | b'-')
        });
    opaque.then(|| text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn path(text: &str) -> ClaimPath {
        ClaimPath::try_from(text.to_string()).expect("path")
    }

    #[test]
    fn identities_from_claims() {
        let sub = path("sub");
        let role = path("role");
        let realm = path("realm_access.roles");
        type Case<'a> = (Value, &'a ClaimPath, Option<(&'a str, &'a str)>);
        let cases: Vec<Case> = vec![
            (
                json!({"sub": "7", "role": "admin"}),
                &role,
                Some(("7", "admin")),
            ),
            (json!({"sub": 7}), &role, Some(("7", "user"))),
            (
                json!({"sub": "auth0|5f1c"}),
                &role,
                Some(("auth0|5f1c", "user")),
            ),
            (
                json!({"sub": "9", "realm_access": {"roles": ["admin", "offline access", "ops"]}}),
                &realm,
                Some(("9", "admin,ops")),
            ),
            (
                json!({"sub": "9", "realm_access": {"roles": "admin"}}),
                &realm,
                Some(("9", "admin")),
            ),
            (json!({"sub": "0"}), &role, None),
            (json!({"sub": -3}), &role, None),
            (json!({"sub": "-3"}), &role, None),
            (json!({"sub": "+7"}), &role, None),
            (json!({"sub": "a b"}), &role, None),
            (json!({"sub": "7\r\nx-user-id: 1"}), &role, None),
            (json!({"sub": "x".repeat(129)}), &role, None),
            (json!({"role": "admin"}), &role, None),
            (json!({"sub": "7", "type": "refresh"}), &role, None),
            (json!({"sub": "7", "typ": "Refresh"}), &role, None),
            (json!({"sub": "7", "typ": "ID"}), &role, None),
            (
                json!({"sub": "7", "typ": "Bearer"}),
                &role,
                Some(("7", "user")),
            ),
            (
                json!({"sub": "7", "role": "ad,min"}),
                &role,
                Some(("7", "user")),
            ),
        ];
        for (claims, roles_claim, expected) in cases {
            let got = identity(&claims, &sub, roles_claim);
            let got = got.as_ref().map(|i| (&*i.user_id, &*i.role));
            assert_eq!(got, expected, "{claims}");
        }
    }

    #[test]
    fn max_age_is_read_and_clamped() {
        let min = Duration::from_secs(10);
        let cases = [
            (Some("public, max-age=120"), 120),
            (Some("max-age=\"60\", must-revalidate"), 60),
            (Some("MAX-AGE=1"), 10),
            (Some("max-age=999999"), 3600),
            (Some("no-store"), 300),
            (Some("max-age=abc"), 300),
            (None, 300),
        ];
        for (header, seconds) in cases {
            assert_eq!(
                max_age(header, min),
                Duration::from_secs(seconds),
                "{header:?}"
            );
        }
        assert_eq!(
            max_age(None, Duration::from_secs(600)),
            Duration::from_secs(600)
        );
    }

    #[test]
    fn only_signature_keys_of_known_kinds_are_kept() {
        let document = json!({"keys": [
            {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "enc", "use": "enc", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "oct", "kid": "secret", "k": "c2VjcmV0"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "hs", "alg": "HS256", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "XYZ", "kid": "odd"},
            "not a key"
        ]});
        let set = KeySet::parse(document.to_string().as_bytes()).expect("set");
        let kids: Vec<&String> = set.kids().collect();
        assert_eq!(kids, vec!["ed"]);
        assert!(KeySet::parse(b"{}").is_err());
        assert!(KeySet::parse(b"[]").is_err());
    }
}
