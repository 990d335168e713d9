//! `auth.mode: jwks`: tokens checked at the gateway against the keys an
//! issuer publishes (its JWKS), with no secret and no call per token. This
//! module holds the types of its keys; their defaults are `Auth`'s
//! accessors (`schema.rs`) and their checks are in `check.rs`.
//!
//! The keys it reads, all under `auth`: `jwks_url`, `issuer`, `audiences`
//! (required), `algorithms` (an allow-list of asymmetric algorithms; `none`
//! and HS* are refused whatever a token says), `roles_claim` and
//! `user_id_claim` (dotted paths into the claims), `jwks_min_refresh` (the
//! JWKS is fetched at most once per this, however many unknown `kid`s
//! arrive) and `jwks_cache` (a file keeping the last JWKS fetched, for a
//! start while the issuer is unreachable).

use serde::Deserialize;

/// A signature algorithm a token may use in `jwks` mode: asymmetric only,
/// so that no key published for anyone to read can ever act as a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub enum JwsAlgorithm {
    EdDSA,
    ES256,
    ES384,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
}

impl JwsAlgorithm {
    pub const ALL: [JwsAlgorithm; 9] = [
        JwsAlgorithm::EdDSA,
        JwsAlgorithm::ES256,
        JwsAlgorithm::ES384,
        JwsAlgorithm::RS256,
        JwsAlgorithm::RS384,
        JwsAlgorithm::RS512,
        JwsAlgorithm::PS256,
        JwsAlgorithm::PS384,
        JwsAlgorithm::PS512,
    ];

    pub fn name(self) -> &'static str {
        match self {
            JwsAlgorithm::EdDSA => "EdDSA",
            JwsAlgorithm::ES256 => "ES256",
            JwsAlgorithm::ES384 => "ES384",
            JwsAlgorithm::RS256 => "RS256",
            JwsAlgorithm::RS384 => "RS384",
            JwsAlgorithm::RS512 => "RS512",
            JwsAlgorithm::PS256 => "PS256",
            JwsAlgorithm::PS384 => "PS384",
            JwsAlgorithm::PS512 => "PS512",
        }
    }
}

impl TryFrom<String> for JwsAlgorithm {
    type Error = String;

    fn try_from(value: String) -> Result<Self, String> {
        if let Some(found) = JwsAlgorithm::ALL.into_iter().find(|a| a.name() == value) {
            return Ok(found);
        }
        if value.eq_ignore_ascii_case("none") || value.to_ascii_uppercase().starts_with("HS") {
            return Err(format!(
                "{value:?} is never accepted in jwks mode: an unsigned or HMAC token would let \
                 anyone who reads the published keys sign (use mode: local for HS256)"
            ));
        }
        Err(format!(
            "unknown algorithm {value:?}; one of {}",
            JwsAlgorithm::ALL.map(JwsAlgorithm::name).join(", ")
        ))
    }
}

/// A dotted path into a token's claims (`role`, `realm_access.roles`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct ClaimPath(pub Vec<String>);

impl TryFrom<String> for ClaimPath {
    type Error = String;

    fn try_from(value: String) -> Result<Self, String> {
        let segments: Vec<String> = value.split('.').map(str::to_owned).collect();
        let ok = !value.is_empty()
            && segments.len() <= 8
            && segments.iter().all(|s| {
                (1..=64).contains(&s.len())
                    && s.bytes().all(|b| {
                        b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b':' | b'/')
                    })
            });
        if ok {
            Ok(ClaimPath(segments))
        } else {
            Err(format!(
                "{value:?} must be up to 8 claim names joined by '.', each 1-64 of \
                 [A-Za-z0-9_:/-]"
            ))
        }
    }
}

impl ClaimPath {
    pub fn text(&self) -> String {
        self.0.join(".")
    }

    pub(crate) fn of(text: &str) -> ClaimPath {
        ClaimPath(text.split('.').map(str::to_owned).collect())
    }
}

/// The algorithms accepted when `algorithms` is not set.
pub const DEFAULT_ALGORITHMS: [JwsAlgorithm; 3] = [
    JwsAlgorithm::EdDSA,
    JwsAlgorithm::ES256,
    JwsAlgorithm::RS256,
];

/// The keys of `auth` that only `jwks` mode reads.
pub const ONLY_JWKS: [&str; 8] = [
    "jwks_url",
    "issuer",
    "audiences",
    "algorithms",
    "roles_claim",
    "user_id_claim",
    "jwks_min_refresh",
    "jwks_cache",
];

/// An `http://` or `https://` URL with a host.
pub fn url_ok(url: &str) -> bool {
    (url.starts_with("http://") || url.starts_with("https://"))
        && url
            .parse::<http::Uri>()
            .is_ok_and(|u| u.host().is_some_and(|h| !h.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_asymmetric_algorithms_are_accepted() {
        for ok in ["EdDSA", "ES256", "RS256", "PS512"] {
            assert!(JwsAlgorithm::try_from(ok.to_string()).is_ok(), "{ok}");
        }
        for refused in ["none", "None", "HS256", "hs512", "RS1", "eddsa", ""] {
            assert!(
                JwsAlgorithm::try_from(refused.to_string()).is_err(),
                "{refused}"
            );
        }
        let message = JwsAlgorithm::try_from("HS256".to_string()).unwrap_err();
        assert!(message.contains("never accepted"), "{message}");
    }

    #[test]
    fn claim_paths() {
        let path = ClaimPath::try_from("realm_access.roles".to_string()).expect("path");
        assert_eq!(path.0, vec!["realm_access", "roles"]);
        assert_eq!(path.text(), "realm_access.roles");
        for bad in [
            "",
            ".",
            "a..b",
            "a.",
            "a b",
            &"x.".repeat(8).to_string(),
            &"y".repeat(65),
        ] {
            assert!(ClaimPath::try_from(bad.to_string()).is_err(), "{bad:?}");
        }
    }
}
