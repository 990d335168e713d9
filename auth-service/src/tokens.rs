//! HS256 access and refresh tokens.
//!
//! Both kinds carry `sub` (the user id as a string), `exp`, `iat`, `nbf`,
//! `jti` and `type`; access tokens also carry `role` so that a gateway that
//! verifies locally can enforce role routes. Decoding accepts HS256 only and
//! allows 15 s of clock skew on `exp` and `nbf`, no more.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use service_kit::identity::parse_user_id;

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

pub struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    pub access_ttl: u64,
    pub refresh_ttl: u64,
}

impl Keys {
    pub fn new(secret: &[u8], access_ttl: u64, refresh_ttl: u64) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "nbf", "iat", "sub"]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            access_ttl,
            refresh_ttl,
        }
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
    ) -> Result<Issued, jsonwebtoken::errors::Error> {
        let ttl = match token_type {
            TokenType::Access => self.access_ttl,
            TokenType::Refresh => self.refresh_ttl,
        };
        let jti = crate::random_hex(16);
        let claims = Claims {
            sub: user_id.to_string(),
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
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)?;
        Ok(Issued {
            token,
            jti,
            expires_at: claims.exp,
        })
    }

    /// Checks signature, algorithm, `exp`/`nbf` (with the leeway) and type.
    pub fn decode(&self, token: &str, expected: TokenType) -> Result<Verified, Refusal> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|error| match error.kind() {
                ErrorKind::ExpiredSignature => Refusal::Expired,
                ErrorKind::ImmatureSignature => Refusal::NotYetValid,
                ErrorKind::InvalidSignature => Refusal::BadSignature,
                ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => Refusal::Algorithm,
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

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{Algorithm, Header};

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test";

    fn keys() -> Keys {
        Keys::new(SECRET, 3600, 7 * 86400)
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
}
