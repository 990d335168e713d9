//! The key ring: the asymmetric keys tokens are signed with, each named by
//! its `kid`, kept in the `signing_keys` table so that every replica signs
//! and verifies with the same keys.
//!
//! A key's life, decided from the rows alone ([`Ring::state`]):
//! - **pending** from `keys rotate` until its `active_from`: published in
//!   the JWKS but not signing yet, so every gateway holds it before the
//!   first token it signs arrives (the lead is the JWKS `max-age` plus the
//!   ring's reload interval);
//! - **signing** from `active_from` until a newer key is active;
//! - **verifying** after that, for as long as the longest token it signed
//!   may live ([`Retention`]): refresh tokens included, since the auth
//!   service verifies those with the same ring. It stays in the JWKS only
//!   while an access token it signed may live, which is all gateways see;
//! - **expired** then: refused, and listed as such by `keys list`.
//!
//! Private keys never leave this module except as signatures; the JWKS
//! carries public parameters only.

use base64::Engine;
use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use service_kit::{Db, with_db};
use std::time::Duration;

/// How often a running service re-reads the ring, so that a key added by
/// `keys rotate` (from another process) is known everywhere before it signs.
pub const RELOAD: Duration = Duration::from_secs(5);

/// The algorithms a ring key can have. HS256 is not one: its secret is not a
/// key that can be published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyAlgorithm {
    EdDSA,
    ES256,
    RS256,
}

impl KeyAlgorithm {
    pub fn name(self) -> &'static str {
        match self {
            KeyAlgorithm::EdDSA => "EdDSA",
            KeyAlgorithm::ES256 => "ES256",
            KeyAlgorithm::RS256 => "RS256",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "EdDSA" => Some(KeyAlgorithm::EdDSA),
            "ES256" => Some(KeyAlgorithm::ES256),
            "RS256" => Some(KeyAlgorithm::RS256),
            _ => None,
        }
    }

    pub fn jwt(self) -> Algorithm {
        match self {
            KeyAlgorithm::EdDSA => Algorithm::EdDSA,
            KeyAlgorithm::ES256 => Algorithm::ES256,
            KeyAlgorithm::RS256 => Algorithm::RS256,
        }
    }
}

/// One row of `signing_keys`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub kid: String,
    pub algorithm: KeyAlgorithm,
    /// The private key's DER, base64.
    pub private_key: String,
    pub created_at: u64,
    pub active_from: u64,
}

/// A ring key ready to sign and verify.
pub struct RingKey {
    pub kid: String,
    pub algorithm: KeyAlgorithm,
    pub created_at: u64,
    pub active_from: u64,
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// The public JWK, with `kid`, `alg` and `use`.
    jwk: Jwk,
}

impl RingKey {
    pub fn encoding(&self) -> &EncodingKey {
        &self.encoding
    }

    pub fn decoding(&self) -> &DecodingKey {
        &self.decoding
    }

    fn from_row(row: &Row) -> Result<Self, String> {
        let der = base64::engine::general_purpose::STANDARD
            .decode(&row.private_key)
            .map_err(|e| format!("key {}: the private key is not base64: {e}", row.kid))?;
        let encoding = match row.algorithm {
            KeyAlgorithm::EdDSA => EncodingKey::from_ed_der(&der),
            KeyAlgorithm::ES256 => EncodingKey::from_ec_der(&der),
            KeyAlgorithm::RS256 => EncodingKey::from_rsa_der(&der),
        };
        let mut jwk = Jwk::from_encoding_key(&encoding, row.algorithm.jwt()).map_err(|e| {
            format!(
                "key {}: not a valid {} key: {e}",
                row.kid,
                row.algorithm.name()
            )
        })?;
        jwk.common.key_id = Some(row.kid.clone());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        let decoding = DecodingKey::from_jwk(&jwk)
            .map_err(|e| format!("key {}: its public key is unusable: {e}", row.kid))?;
        Ok(RingKey {
            kid: row.kid.clone(),
            algorithm: row.algorithm,
            created_at: row.created_at,
            active_from: row.active_from,
            encoding,
            decoding,
            jwk,
        })
    }
}

/// How long superseded keys are kept, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Verifying here: the longest token (refresh tokens included).
    pub verifying: u64,
    /// In the JWKS: the longest access token.
    pub published: u64,
}

impl Retention {
    /// From the token lifetimes, with the clock leeway verification allows
    /// and the ring's reload interval (a replica may sign with a key for
    /// that long after another replica saw its successor).
    pub fn new(access_ttl: u64, refresh_ttl: u64, leeway: u64) -> Self {
        let margin = leeway.saturating_add(RELOAD.as_secs());
        Retention {
            verifying: access_ttl.max(refresh_ttl).saturating_add(margin),
            published: access_ttl.saturating_add(margin),
        }
    }

    /// The same for both, for tests.
    pub fn both(seconds: u64) -> Self {
        Retention {
            verifying: seconds,
            published: seconds,
        }
    }
}

/// Where a key is in its life at a given moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Pending,
    Signing,
    /// Superseded; verifies until then (seconds since the epoch).
    Verifying {
        until: u64,
    },
    Expired,
}

impl State {
    /// Whether a key in this state still verifies here.
    pub fn verifies(self) -> bool {
        self != State::Expired
    }
}

/// Every key of the table, ordered by `active_from` (then `kid`).
pub struct Ring {
    keys: Vec<RingKey>,
    /// How long a superseded key keeps verifying here (refresh tokens
    /// included).
    retention: u64,
    /// How long a superseded key stays in the JWKS: the longest access
    /// token's life, which is all a gateway ever verifies.
    published: u64,
}

impl Ring {
    /// The ring of `rows`, keeping superseded keys for `retention` (here)
    /// and `published` (in the JWKS) seconds. A row that cannot be used is
    /// an error: a key that silently stopped verifying would log people out.
    pub fn from_rows(rows: &[Row], retention: Retention) -> Result<Self, String> {
        let mut keys = rows
            .iter()
            .map(RingKey::from_row)
            .collect::<Result<Vec<_>, _>>()?;
        keys.sort_by(|a, b| (a.active_from, &a.kid).cmp(&(b.active_from, &b.kid)));
        Ok(Ring {
            keys,
            retention: retention.verifying,
            published: retention.published.min(retention.verifying),
        })
    }

    pub fn keys(&self) -> &[RingKey] {
        &self.keys
    }

    /// The state of `self.keys()[index]` at `now`.
    pub fn state(&self, index: usize, now: u64) -> State {
        let key = &self.keys[index];
        if key.active_from > now {
            return State::Pending;
        }
        // Keys are sorted by activation (then kid), so the first later key
        // already active is the one that superseded this one.
        let successor = self.keys[index + 1..].iter().find(|k| k.active_from <= now);
        match successor {
            None => State::Signing,
            Some(next) => {
                let until = next.active_from.saturating_add(self.retention);
                if now < until {
                    State::Verifying { until }
                } else {
                    State::Expired
                }
            }
        }
    }

    /// The key that signs at `now`, whatever its algorithm: a change of
    /// algorithm is a rotation (`keys rotate` with the new one), published
    /// ahead like any other, so replicas configured differently for a while
    /// still sign with the same key.
    pub fn signing(&self, now: u64) -> Option<&RingKey> {
        (0..self.keys.len())
            .find(|&i| self.state(i, now) == State::Signing)
            .map(|i| &self.keys[i])
    }

    /// Whether the key at `index` is in the JWKS at `now`: pending,
    /// signing, or superseded for less than the longest access token's life.
    fn published(&self, index: usize, now: u64) -> bool {
        match self.state(index, now) {
            State::Pending | State::Signing => true,
            State::Verifying { until } => {
                let superseded = until.saturating_sub(self.retention);
                now < superseded.saturating_add(self.published)
            }
            State::Expired => false,
        }
    }

    /// The key named `kid`, while it may still verify.
    pub fn verifying(&self, kid: &str, now: u64) -> Option<&RingKey> {
        let index = self.keys.iter().position(|k| k.kid == kid)?;
        self.state(index, now).verifies().then(|| &self.keys[index])
    }

    /// The JWKS document: every published key's public parameters, newest
    /// first.
    pub fn jwks(&self, now: u64) -> serde_json::Value {
        let keys: Vec<&Jwk> = (0..self.keys.len())
            .rev()
            .filter(|&i| self.published(i, now))
            .map(|i| &self.keys[i].jwk)
            .collect();
        serde_json::json!({ "keys": keys })
    }
}

/// A new private key of `algorithm`, as the table stores it.
pub fn generate(algorithm: KeyAlgorithm) -> Result<String, String> {
    let der = match algorithm {
        KeyAlgorithm::EdDSA => {
            // PKCS#8 v1 for Ed25519 (RFC 8410): a fixed prefix and the
            // 32-byte seed.
            const PREFIX: [u8; 16] = [
                0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
                0x04, 0x20,
            ];
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed).map_err(|e| format!("no random source: {e}"))?;
            let mut der = PREFIX.to_vec();
            der.extend_from_slice(&seed);
            der
        }
        KeyAlgorithm::ES256 => {
            use p256::pkcs8::EncodePrivateKey;
            let secret = loop {
                let mut bytes = [0u8; 32];
                getrandom::fill(&mut bytes).map_err(|e| format!("no random source: {e}"))?;
                // Out of the curve's range in about 2^-32 of draws.
                if let Ok(secret) = p256::SecretKey::from_slice(&bytes) {
                    break secret;
                }
            };
            secret
                .to_pkcs8_der()
                .map_err(|e| format!("cannot encode a P-256 key: {e}"))?
                .as_bytes()
                .to_vec()
        }
        KeyAlgorithm::RS256 => {
            use rsa::pkcs1::EncodeRsaPrivateKey;
            let key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048)
                .map_err(|e| format!("cannot generate an RSA key: {e}"))?;
            key.to_pkcs1_der()
                .map_err(|e| format!("cannot encode an RSA key: {e}"))?
                .as_bytes()
                .to_vec()
        }
    };
    Ok(base64::engine::general_purpose::STANDARD.encode(der))
}

/// A new key's row: `active_from` is when it starts signing.
pub fn new_row(algorithm: KeyAlgorithm, now: u64, active_from: u64) -> Result<Row, String> {
    Ok(Row {
        kid: crate::random_hex(8),
        algorithm,
        private_key: generate(algorithm)?,
        created_at: now,
        active_from,
    })
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Every row of the table.
pub async fn load(db: &Db) -> Result<Vec<Row>, sqlx::Error> {
    const SQL: &str =
        "SELECT kid, algorithm, private_key, created_at, active_from FROM signing_keys";
    let rows: Vec<(String, String, String, i64, i64)> =
        with_db!(db, pool => sqlx::query_as(SQL).fetch_all(pool).await)?;
    Ok(rows
        .into_iter()
        .filter_map(|(kid, algorithm, private_key, created_at, active_from)| {
            // The table's CHECK admits only these three.
            Some(Row {
                algorithm: KeyAlgorithm::parse(&algorithm)?,
                kid,
                private_key,
                created_at: u64::try_from(created_at).unwrap_or(0),
                active_from: u64::try_from(active_from).unwrap_or(0),
            })
        })
        .collect())
}

pub async fn insert(db: &Db, row: &Row) -> Result<(), sqlx::Error> {
    const SQL: &str = "INSERT INTO signing_keys (kid, algorithm, private_key, created_at, active_from) \
                       VALUES ($1, $2, $3, $4, $5)";
    with_db!(db, pool => sqlx::query(SQL)
        .bind(&row.kid)
        .bind(row.algorithm.name())
        .bind(&row.private_key)
        .bind(to_i64(row.created_at))
        .bind(to_i64(row.active_from))
        .execute(pool)
        .await
        .map(drop))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(kid: &str, algorithm: KeyAlgorithm, active_from: u64) -> Row {
        Row {
            kid: kid.into(),
            algorithm,
            private_key: generate(algorithm).expect("key"),
            created_at: 0,
            active_from,
        }
    }

    #[test]
    fn a_key_is_pending_then_signs_then_verifies_then_expires() {
        let ring = Ring::from_rows(
            &[
                row("b", KeyAlgorithm::EdDSA, 1_000),
                row("a", KeyAlgorithm::EdDSA, 100),
            ],
            Retention {
                verifying: 500,
                published: 200,
            },
        )
        .expect("ring");
        assert_eq!(ring.keys()[0].kid, "a", "ordered by activation");
        let cases = [
            (50, State::Pending, State::Pending),
            (100, State::Signing, State::Pending),
            (999, State::Signing, State::Pending),
            (1_000, State::Verifying { until: 1_500 }, State::Signing),
            (1_499, State::Verifying { until: 1_500 }, State::Signing),
            (1_500, State::Expired, State::Signing),
        ];
        for (now, a, b) in cases {
            assert_eq!((ring.state(0, now), ring.state(1, now)), (a, b), "at {now}");
        }
        assert_eq!(ring.signing(500).map(|k| &*k.kid), Some("a"));
        assert_eq!(ring.signing(1_200).map(|k| &*k.kid), Some("b"));
        assert!(ring.verifying("a", 1_200).is_some());
        assert!(ring.verifying("a", 1_499).is_some(), "refresh tokens");
        assert!(ring.verifying("a", 1_500).is_none());
        // Published while an access token it signed may live (200 s), newest
        // first; the pending key from the start.
        let kids = |now: u64| -> Vec<String> {
            ring.jwks(now)["keys"]
                .as_array()
                .expect("keys")
                .iter()
                .map(|k| k["kid"].as_str().unwrap_or("").to_string())
                .collect()
        };
        assert_eq!(kids(50), vec!["b", "a"]);
        assert_eq!(kids(1_199), vec!["b", "a"]);
        assert_eq!(kids(1_200), vec!["b"]);
    }

    #[test]
    fn the_jwks_holds_public_parameters_only() {
        let rows = [
            row("ed", KeyAlgorithm::EdDSA, 0),
            row("ec", KeyAlgorithm::ES256, 10),
            row("rsa", KeyAlgorithm::RS256, 20),
        ];
        let ring = Ring::from_rows(&rows, Retention::both(1_000)).expect("ring");
        let jwks = ring.jwks(30);
        let keys = jwks["keys"].as_array().expect("keys");
        assert_eq!(keys.len(), 3);
        for key in keys {
            for private in ["d", "p", "q", "dp", "dq", "qi", "k"] {
                assert!(key.get(private).is_none(), "{private} published: {key}");
            }
            assert_eq!(key["use"], "sig");
        }
        let kinds: Vec<(&str, &str)> = keys
            .iter()
            .map(|k| {
                (
                    k["kid"].as_str().unwrap_or(""),
                    k["kty"].as_str().unwrap_or(""),
                )
            })
            .collect();
        assert_eq!(kinds, vec![("rsa", "RSA"), ("ec", "EC"), ("ed", "OKP")]);
        assert_eq!(keys[2]["alg"], "EdDSA");
        assert_eq!(keys[2]["crv"], "Ed25519");
        assert_eq!(keys[1]["crv"], "P-256");
    }

    #[test]
    fn a_damaged_row_is_an_error_naming_its_key() {
        let mut bad = row("x", KeyAlgorithm::EdDSA, 0);
        bad.private_key = "not base64!".into();
        let error = Ring::from_rows(&[bad], Retention::both(10))
            .err()
            .expect("refused");
        assert!(error.contains("key x"), "{error}");
    }
}
