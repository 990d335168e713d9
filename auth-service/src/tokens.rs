//! Access and refresh tokens, signed with the key ring's current key
//! (EdDSA by default; ES256 or RS256) or, when so configured, with the
//! HS256 secret.
//!
//! Both kinds carry `sub` (the user id as a string), `iss`, `aud`, `exp`,
//! `iat`, `nbf`, `jti` and `type`; access tokens also carry `role`, `ver`
//! and `sid`, so that a gateway that verifies locally can enforce role
//! routes and drop a session at logout. A ring-signed token names its key
//! in `kid`.
//!
//! Decoding takes the algorithm from the key, never from the token: a
//! token's `alg` must be the one its `kid`'s key was made for, and an HS256
//! token is only checked when a secret is configured (the HS256 set-up, or
//! the tokens issued before a switch to a key ring). `jku`, `x5u` and an
//! embedded `jwk` are never looked at. 15 s of clock skew is allowed on
//! `exp` and `nbf`, no more. `iss` and `aud`, when present, must be this
//! service's.

use crate::keyring::{KeyAlgorithm, Retention, Ring};
use arc_swap::ArcSwap;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use service_kit::identity::parse_user_id;
use std::sync::Arc;

/// Clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY_SECS: u64 = 15;

/// The shortest secret accepted: HS256 keys under 256 bits are guessable.
pub const MIN_SECRET_LEN: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenType {
    Access,
    Refresh,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    pub exp: u64,
    pub iat: u64,
    pub nbf: u64,
    pub jti: String,
    #[serde(rename = "type")]
    pub token_type: TokenType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// The user's token version when an access token was issued; verify
    /// refuses tokens from an older version. Absent means 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ver: Option<i64>,
    /// The session (refresh-token family) an access token belongs to;
    /// verify refuses it once that session is revoked, so a logout ends its
    /// access tokens too, not only its refresh token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
}

/// Why a token was refused. Clients only ever see "invalid or expired
/// token"; the reason is for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("expired")]
    Expired,
    #[error("not yet valid")]
    NotYetValid,
    #[error("wrong token type")]
    WrongType,
    #[error("bad signature")]
    BadSignature,
    #[error("algorithm not allowed")]
    Algorithm,
    #[error("unknown key")]
    UnknownKey,
    #[error("wrong issuer or audience")]
    WrongAudience,
    #[error("malformed")]
    Malformed,
}

/// A freshly signed token and the facts the caller must store about it.
#[derive(Debug, Clone)]
pub struct Issued {
    pub token: String,
    pub jti: String,
    pub expires_at: u64,
}

/// A verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub user_id: i64,
    pub claims: Claims,
}

/// What signs new tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signer {
    /// The key ring's signing key of this algorithm.
    Ring(KeyAlgorithm),
    /// The HS256 secret.
    Secret,
}

/// Who tokens are issued by and for.
#[derive(Debug, Clone)]
pub struct Names {
    pub issuer: String,
    pub audience: String,
}

pub struct Keys {
    signer: Signer,
    ring: ArcSwap<Ring>,
    secret: Option<(EncodingKey, DecodingKey)>,
    names: Names,
    /// The validation of each algorithm a token may have, made once.
    validations: [(Algorithm, Validation); 4],
    pub access_ttl: u64,
    pub refresh_ttl: u64,
}

impl Keys {
    /// Keys that sign with `signer`; `secret`, when set, also verifies
    /// HS256 tokens.
    pub fn new(
        signer: Signer,
        secret: Option<&[u8]>,
        ring: Ring,
        names: Names,
        access_ttl: u64,
        refresh_ttl: u64,
    ) -> Self {
        Self {
            signer,
            ring: ArcSwap::from_pointee(ring),
            secret: secret.map(|s| (EncodingKey::from_secret(s), DecodingKey::from_secret(s))),
            validations: [
                Algorithm::HS256,
                Algorithm::EdDSA,
                Algorithm::ES256,
                Algorithm::RS256,
            ]
            .map(|alg| (alg, validation(alg, &names))),
            names,
            access_ttl,
            refresh_ttl,
        }
    }

    pub fn signer(&self) -> Signer {
        self.signer
    }

    /// The ring in force.
    pub fn ring(&self) -> Arc<Ring> {
        self.ring.load_full()
    }

    /// Replaces the ring (after reading the table again).
    pub fn set_ring(&self, ring: Ring) {
        self.ring.store(Arc::new(ring));
    }

    /// How long a superseded ring key keeps verifying.
    pub fn retention(&self) -> Retention {
        Retention::new(self.access_ttl, self.refresh_ttl, LEEWAY_SECS)
    }

    /// Signs a token of `token_type` for `user_id`, valid from `now`.
    pub fn issue(
        &self,
        user_id: i64,
        token_type: TokenType,
        role: Option<&str>,
        version: i64,
        session: Option<&str>,
        now: u64,
    ) -> Result<Issued, String> {
        let ttl = match token_type {
            TokenType::Access => self.access_ttl,
            TokenType::Refresh => self.refresh_ttl,
        };
        let jti = crate::random_hex(16);
        let claims = Claims {
            sub: user_id.to_string(),
            iss: Some(self.names.issuer.clone()),
            aud: Some(self.names.audience.clone()),
            exp: now + ttl,
            iat: now,
            nbf: now,
            jti: jti.clone(),
            token_type,
            role: match token_type {
                TokenType::Access => role.map(str::to_owned),
                TokenType::Refresh => None,
            },
            ver: match token_type {
                TokenType::Access if version != 0 => Some(version),
                _ => None,
            },
            sid: match token_type {
                TokenType::Access => session.map(str::to_owned),
                TokenType::Refresh => None,
            },
        };
        let token = match self.signer {
            Signer::Secret => {
                let (key, _) = self
                    .secret
                    .as_ref()
                    .ok_or("no HS256 secret is configured")?;
                jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, key)
            }
            Signer::Ring(_) => {
                let ring = self.ring.load();
                // The key signing at this moment, whatever `now` the claims
                // are dated from.
                let key = ring
                    .signing(crate::now_unix())
                    .ok_or("the key ring has no key signing now")?;
                let mut header = Header::new(key.algorithm.jwt());
                header.kid = Some(key.kid.clone());
                jsonwebtoken::encode(&header, &claims, key.encoding())
            }
        }
        .map_err(|e| e.to_string())?;
        Ok(Issued {
            token,
            jti,
            expires_at: claims.exp,
        })
    }

    /// Checks signature, algorithm, `exp`/`nbf` (with the leeway), issuer,
    /// audience and type.
    pub fn decode(&self, token: &str, expected: TokenType) -> Result<Verified, Refusal> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| Refusal::Malformed)?;
        let now = crate::now_unix();
        let ring;
        let (key, algorithm) = match header.alg {
            Algorithm::HS256 => {
                let (_, key) = self.secret.as_ref().ok_or(Refusal::Algorithm)?;
                (key, Algorithm::HS256)
            }
            alg @ (Algorithm::EdDSA | Algorithm::ES256 | Algorithm::RS256) => {
                let kid = header.kid.as_deref().ok_or(Refusal::UnknownKey)?;
                ring = self.ring.load();
                let key = ring.verifying(kid, now).ok_or(Refusal::UnknownKey)?;
                if key.algorithm.jwt() != alg {
                    return Err(Refusal::Algorithm);
                }
                (key.decoding(), alg)
            }
            _ => return Err(Refusal::Algorithm),
        };
        let (_, validation) = self
            .validations
            .iter()
            .find(|(alg, _)| *alg == algorithm)
            .ok_or(Refusal::Algorithm)?;
        let data =
            jsonwebtoken::decode::<Claims>(token, key, validation).map_err(|error| match error
                .kind()
            {
                ErrorKind::ExpiredSignature => Refusal::Expired,
                ErrorKind::ImmatureSignature => Refusal::NotYetValid,
                ErrorKind::InvalidSignature => Refusal::BadSignature,
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => Refusal::Algorithm,
                ErrorKind::InvalidIssuer | ErrorKind::InvalidAudience => Refusal::WrongAudience,
                _ => Refusal::Malformed,
            })?;
        if data.claims.token_type != expected {
            return Err(Refusal::WrongType);
        }
        let user_id = parse_user_id(&data.claims.sub).ok_or(Refusal::Malformed)?;
        Ok(Verified {
            user_id,
            claims: data.claims,
        })
    }
}

/// Only `algorithm`, 15 s of leeway on `exp` and `nbf`, the claims every
/// token has, and this service's `iss` and `aud` when a token names them.
fn validation(algorithm: Algorithm, names: &Names) -> Validation {
    let mut validation = Validation::new(algorithm);
    validation.algorithms = vec![algorithm];
    validation.leeway = LEEWAY_SECS;
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.set_required_spec_claims(&["exp", "nbf", "iat", "sub"]);
    validation.set_issuer(&[&names.issuer]);
    validation.set_audience(&[&names.audience]);
    validation
}

/// The issuer and audience when none are configured.
pub fn default_names() -> Names {
    Names {
        issuer: "portcullis".into(),
        audience: "portcullis".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{Algorithm, Header};

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test";

    fn keys() -> Keys {
        Keys::new(
            Signer::Secret,
            Some(SECRET),
            Ring::from_rows(&[], Retention::both(0)).expect("an empty ring"),
            default_names(),
            3600,
            7 * 86400,
        )
    }

    fn now() -> u64 {
        crate::now_unix()
    }

    fn b64(bytes: &[u8]) -> String {
        // Minimal unpadded base64url encoder for crafting hostile tokens.
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
            let chars = chunk.len() + 1;
            for i in 0..chars {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            }
        }
        out
    }

    fn claims(token_type: TokenType, exp: u64, nbf: u64) -> Claims {
        Claims {
            sub: "7".into(),
            iss: None,
            aud: None,
            exp,
            iat: now(),
            nbf,
            jti: "j".into(),
            token_type,
            role: Some("user".into()),
            ver: None,
            sid: None,
        }
    }

    fn sign(claims: &Claims, alg: Algorithm, secret: &[u8]) -> String {
        jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(secret))
            .expect("sign")
    }

    #[test]
    fn round_trip_keeps_every_claim() {
        let keys = keys();
        let t = now();
        for token_type in [TokenType::Access, TokenType::Refresh] {
            let issued = keys
                .issue(42, token_type, Some("admin"), 3, Some("f00d"), t)
                .expect("issue");
            let verified = keys.decode(&issued.token, token_type).expect("decode");
            assert_eq!(verified.user_id, 42);
            assert_eq!(verified.claims.sub, "42");
            assert_eq!(verified.claims.jti, issued.jti);
            assert_eq!(verified.claims.iat, t);
            assert_eq!(verified.claims.nbf, t);
            assert_eq!(verified.claims.token_type, token_type);
            let version = (token_type == TokenType::Access).then_some(3);
            assert_eq!(verified.claims.ver, version);
            let ttl = if token_type == TokenType::Access {
                3600
            } else {
                7 * 86400
            };
            assert_eq!(verified.claims.exp, t + ttl);
        }
        let a = keys
            .issue(1, TokenType::Access, None, 0, None, t)
            .expect("a");
        let b = keys
            .issue(1, TokenType::Access, None, 0, None, t)
            .expect("b");
        assert_ne!(a.jti, b.jti, "every token gets its own jti");
    }

    #[test]
    fn refusal_reasons() {
        let keys = keys();
        let t = now();
        let none_token = format!(
            "{}.{}.",
            b64(br#"{"alg":"none","typ":"JWT"}"#),
            b64(&serde_json::to_vec(&claims(TokenType::Access, t + 60, t)).expect("json"))
        );
        let cases: Vec<(&str, String, Result<(), Refusal>)> = vec![
            (
                "valid",
                sign(
                    &claims(TokenType::Access, t + 60, t),
                    Algorithm::HS256,
                    SECRET,
                ),
                Ok(()),
            ),
            (
                "expired within the leeway",
                sign(
                    &claims(TokenType::Access, t - 5, t - 60),
                    Algorithm::HS256,
                    SECRET,
                ),
                Ok(()),
            ),
            (
                "expired beyond the leeway",
                sign(
                    &claims(TokenType::Access, t - 30, t - 60),
                    Algorithm::HS256,
                    SECRET,
                ),
                Err(Refusal::Expired),
            ),
            (
                "nbf ahead beyond the leeway",
                sign(
                    &claims(TokenType::Access, t + 600, t + 60),
                    Algorithm::HS256,
                    SECRET,
                ),
                Err(Refusal::NotYetValid),
            ),
            (
                "nbf ahead within the leeway",
                sign(
                    &claims(TokenType::Access, t + 600, t + 5),
                    Algorithm::HS256,
                    SECRET,
                ),
                Ok(()),
            ),
            (
                "refresh token offered as access",
                sign(
                    &claims(TokenType::Refresh, t + 60, t),
                    Algorithm::HS256,
                    SECRET,
                ),
                Err(Refusal::WrongType),
            ),
            (
                "tampered signature",
                {
                    let mut token = sign(
                        &claims(TokenType::Access, t + 60, t),
                        Algorithm::HS256,
                        SECRET,
                    );
                    // The first signature character: it carries six whole
                    // bits (the last one carries padding bits, whose change
                    // would make the token malformed rather than forged).
                    let at = token.rfind('.').expect("three parts") + 1;
                    let first = token.as_bytes()[at];
                    let other = if first == b'A' { "B" } else { "A" };
                    token.replace_range(at..=at, other);
                    token
                },
                Err(Refusal::BadSignature),
            ),
            (
                "signed with another secret",
                sign(
                    &claims(TokenType::Access, t + 60, t),
                    Algorithm::HS256,
                    b"another-secret-another-secret-another",
                ),
                Err(Refusal::BadSignature),
            ),
            (
                "alg HS512",
                sign(
                    &claims(TokenType::Access, t + 60, t),
                    Algorithm::HS512,
                    SECRET,
                ),
                Err(Refusal::Algorithm),
            ),
            ("alg none", none_token, Err(Refusal::Malformed)),
            ("not a token", "abc".into(), Err(Refusal::Malformed)),
        ];
        for (name, token, expected) in cases {
            let got = keys.decode(&token, TokenType::Access).map(drop);
            assert_eq!(got, expected, "{name}");
        }
    }

    #[test]
    fn missing_claims_are_refused() {
        let keys = keys();
        let t = now();
        let without_nbf = serde_json::json!({
            "sub": "7", "exp": t + 60, "iat": t, "jti": "j", "type": "access"
        });
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &without_nbf,
            &EncodingKey::from_secret(SECRET),
        )
        .expect("sign");
        assert_eq!(
            keys.decode(&token, TokenType::Access),
            Err(Refusal::Malformed)
        );
        let bad_sub = Claims {
            sub: "seven".into(),
            ..claims(TokenType::Access, t + 60, t)
        };
        assert_eq!(
            keys.decode(&sign(&bad_sub, Algorithm::HS256, SECRET), TokenType::Access),
            Err(Refusal::Malformed)
        );
    }

    fn ring_keys(algorithm: KeyAlgorithm, secret: Option<&[u8]>) -> Keys {
        let row = crate::keyring::new_row(algorithm, 0, 0).expect("key");
        let ring = Ring::from_rows(&[row], Retention::both(1_000)).expect("ring");
        Keys::new(
            Signer::Ring(algorithm),
            secret,
            ring,
            default_names(),
            3600,
            7 * 86400,
        )
    }

    #[test]
    fn ring_tokens_name_their_key_and_verify_with_it_only() {
        let t = now();
        for algorithm in [
            KeyAlgorithm::EdDSA,
            KeyAlgorithm::ES256,
            KeyAlgorithm::RS256,
        ] {
            let keys = ring_keys(algorithm, None);
            let issued = keys
                .issue(42, TokenType::Access, Some("user"), 0, Some("s1"), t)
                .expect("issue");
            let header = jsonwebtoken::decode_header(&issued.token).expect("header");
            assert_eq!(header.alg, algorithm.jwt());
            let kid = header.kid.expect("kid");
            assert_eq!(kid, keys.ring().keys()[0].kid);
            let verified = keys
                .decode(&issued.token, TokenType::Access)
                .expect("decode");
            assert_eq!(verified.claims.iss.as_deref(), Some("portcullis"));
            assert_eq!(verified.claims.aud.as_deref(), Some("portcullis"));
            assert_eq!(verified.claims.sid.as_deref(), Some("s1"));
            // Another ring's key of the same algorithm does not verify it.
            let other = ring_keys(algorithm, None);
            assert_eq!(
                other.decode(&issued.token, TokenType::Access),
                Err(Refusal::UnknownKey),
                "{algorithm:?}"
            );
        }
    }

    #[test]
    fn algorithm_confusion_is_refused() {
        let t = now();
        let keys = ring_keys(KeyAlgorithm::EdDSA, None);
        let ring = keys.ring();
        let kid = ring.keys()[0].kid.clone();
        let jwks = serde_json::to_vec(&ring.jwks(t)).expect("jwks");
        let claims = claims(TokenType::Access, t + 60, t);
        // HS256 with the published public key as the secret, naming the kid.
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(kid.clone());
        let confused =
            jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(&jwks)).expect("sign");
        assert_eq!(
            keys.decode(&confused, TokenType::Access),
            Err(Refusal::Algorithm)
        );
        // The right kid with another asymmetric algorithm.
        let es = crate::keyring::new_row(KeyAlgorithm::ES256, 0, 0).expect("key");
        let es_key = {
            use base64::Engine;
            let der = base64::engine::general_purpose::STANDARD
                .decode(&es.private_key)
                .expect("der");
            EncodingKey::from_ec_der(&der)
        };
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.clone());
        let wrong_alg = jsonwebtoken::encode(&header, &claims, &es_key).expect("sign");
        assert_eq!(
            keys.decode(&wrong_alg, TokenType::Access),
            Err(Refusal::Algorithm)
        );
        // No kid.
        let no_kid =
            jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &es_key).expect("sign");
        assert_eq!(
            keys.decode(&no_kid, TokenType::Access),
            Err(Refusal::UnknownKey)
        );
        // Another issuer, signed by the ring's own key.
        let wrong_iss = Claims {
            iss: Some("someone-else".into()),
            ..claims.clone()
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(kid);
        let token =
            jsonwebtoken::encode(&header, &wrong_iss, ring.keys()[0].encoding()).expect("sign");
        assert_eq!(
            keys.decode(&token, TokenType::Access),
            Err(Refusal::WrongAudience)
        );
    }

    #[test]
    fn a_configured_secret_still_verifies_hs256_tokens_beside_the_ring() {
        let t = now();
        let token = sign(
            &claims(TokenType::Access, t + 60, t),
            Algorithm::HS256,
            SECRET,
        );
        assert!(
            ring_keys(KeyAlgorithm::EdDSA, Some(SECRET))
                .decode(&token, TokenType::Access)
                .is_ok()
        );
        assert_eq!(
            ring_keys(KeyAlgorithm::EdDSA, None).decode(&token, TokenType::Access),
            Err(Refusal::Algorithm)
        );
    }
}
