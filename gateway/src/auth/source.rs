//! Where verdicts come from on a cache miss: the auth service's
//! `POST /api/verify` (remote), an HS256 check with the shared secret
//! (local), or a signature check against the issuer's JWKS (jwks). The two
//! that check tokens here also refuse revoked sessions and users.

use super::jwks::Jwks;
use super::revoked::{Facts, Revoked};
use super::users::{Identities, role_ok};
use super::{Identity, Verdict};
use crate::config::{Auth, AuthMode};
use crate::trace::Span;
use opentelemetry::trace::SpanKind;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant};

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

pub(super) enum Source {
    Remote {
        client: reqwest::Client,
        url: String,
        in_flight: tokio::sync::Semaphore,
        timeout: Duration,
        /// What a traced call records of `url`, made once: its host, port
        /// and path, never the URL itself (it may carry credentials or a
        /// query).
        called: Vec<(&'static str, opentelemetry::Value)>,
    },
    Local {
        key: Box<jsonwebtoken::DecodingKey>,
        validation: Box<jsonwebtoken::Validation>,
    },
    Jwks(Arc<Jwks>),
}

impl Source {
    /// The source `auth` describes. Local mode needs the signing secret.
    pub(super) fn new(auth: &Auth, secret: Option<&[u8]>) -> Result<Self, String> {
        Ok(match auth.mode {
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
                    called: called(&url),
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
                validation.leeway = auth.leeway.0.as_secs();
                validation.validate_exp = true;
                validation.validate_nbf = true;
                validation.set_required_spec_claims(&["exp", "nbf", "iat", "sub"]);
                // Local mode never checked audiences; tokens that name one
                // are not refused for it.
                validation.validate_aud = false;
                Source::Local {
                    key: Box::new(jsonwebtoken::DecodingKey::from_secret(secret)),
                    validation: Box::new(validation),
                }
            }
            AuthMode::Jwks => Source::Jwks(Arc::new(Jwks::new(auth)?)),
        })
    }

    /// Ready to verify: in jwks mode, the first JWKS fetched (or read from
    /// its cached copy).
    pub(super) async fn ready(&self) -> Result<(), String> {
        match self {
            Source::Jwks(jwks) => jwks.ready().await,
            _ => Ok(()),
        }
    }

    pub(super) fn is_jwks(&self) -> bool {
        matches!(self, Source::Jwks(_))
    }

    pub(super) fn is_remote(&self) -> bool {
        matches!(self, Source::Remote { .. })
    }

    /// Keeps the JWKS fresh (a background fetch when due) and says whether
    /// keys left it since this was last asked.
    pub(super) fn refresh_keys(&self) -> bool {
        match self {
            Source::Jwks(jwks) => {
                jwks.refresh_if_due();
                jwks.keys_removed()
            }
            _ => false,
        }
    }

    /// The verdict for `token`; a call to the auth service is a child span
    /// of `span`.
    pub(super) async fn ask(
        &self,
        token: &str,
        identities: &Identities,
        revoked: &Revoked,
        span: Option<&Span>,
    ) -> Result<Verdict, Unavailable> {
        match self {
            Source::Remote {
                client,
                url,
                in_flight,
                timeout,
                called,
            } => {
                let mut call = span.map(|parent| {
                    let mut call = parent.child("POST /api/verify", SpanKind::Client);
                    for (key, value) in called {
                        call.set(key, value.clone());
                    }
                    call
                });
                let answer = ask_remote(
                    client,
                    url,
                    in_flight,
                    *timeout,
                    token,
                    identities,
                    call.as_mut(),
                )
                .await;
                if let Some(mut call) = call {
                    if let Err(error) = &answer {
                        call.set("error.type", error.label());
                        call.fail();
                    }
                    call.end();
                }
                answer
            }
            Source::Local { key, validation } => {
                let Ok(data) = jsonwebtoken::decode::<LocalClaims>(token, key, validation) else {
                    return Ok(Verdict::Denied);
                };
                if data.claims.token_type != "access" {
                    return Ok(Verdict::Denied);
                }
                let Some(id) = identity(&data.claims.sub, data.claims.role.as_deref()) else {
                    return Ok(Verdict::Denied);
                };
                let facts = Facts {
                    user_id: &id.user_id,
                    sid: data.claims.sid.as_deref(),
                    iat: data.claims.iat,
                };
                if revoked.refuses(facts, super::unix_now()).is_some() {
                    return Ok(Verdict::Denied);
                }
                Ok(Verdict::Allowed(identities.share(id)))
            }
            Source::Jwks(jwks) => Ok(jwks.verify(token, identities, revoked).await),
        }
    }
}

/// The attributes of a traced call to `url`: host, port and path.
fn called(url: &str) -> Vec<(&'static str, opentelemetry::Value)> {
    let mut attributes = vec![("http.request.method", "POST".into())];
    if let Ok(uri) = url.parse::<http::Uri>() {
        if let Some(authority) = uri.authority() {
            attributes.push(("server.address", authority.host().to_owned().into()));
            if let Some(port) = authority.port_u16() {
                attributes.push(("server.port", i64::from(port).into()));
            }
        }
        attributes.push(("url.path", uri.path().to_owned().into()));
    }
    attributes
}

/// `POST /api/verify` within `timeout`, the wait for a slot included.
/// With `call`, the request carries its span's `traceparent`, and the span
/// the status it got.
async fn ask_remote(
    client: &reqwest::Client,
    url: &str,
    in_flight: &tokio::sync::Semaphore,
    timeout: Duration,
    token: &str,
    identities: &Identities,
    call: Option<&mut Span>,
) -> Result<Verdict, Unavailable> {
    // The wait for a slot and the call share one deadline, so a
    // request is answered within auth.timeout either way.
    let started = Instant::now();
    let _slot = tokio::time::timeout(timeout, in_flight.acquire())
        .await
        .map_err(|_| Unavailable::Saturated)?
        .map_err(|_| Unavailable::Saturated)?;
    let left = timeout.saturating_sub(started.elapsed());
    if left.is_zero() {
        return Err(Unavailable::Saturated);
    }
    let body = serde_json::to_vec(&VerifyRequest { access: token })
        .map_err(|e| Unavailable::BadAnswer(e.to_string()))?;
    let mut request = client
        .post(url)
        .timeout(left)
        .header("content-type", "application/json");
    if let Some(span) = call.as_deref() {
        request = request.header("traceparent", span.traceparent());
        if let Some(state) = span.tracestate() {
            request = request.header("tracestate", state);
        }
    }
    let response = request.body(body).send().await.map_err(|e| {
        if e.is_timeout() {
            Unavailable::Timeout
        } else {
            Unavailable::Unreachable(e.to_string())
        }
    })?;
    if let Some(span) = call {
        span.set(
            "http.response.status_code",
            i64::from(response.status().as_u16()),
        );
    }
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
                .map(|id| Verdict::Allowed(identities.share(id)))
                .ok_or_else(|| Unavailable::BadAnswer("200 without a valid user_id".into()))
        }
        401 => Ok(Verdict::Denied),
        status => Err(Unavailable::BadAnswer(format!("status {status}"))),
    }
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
    #[serde(default)]
    sid: Option<String>,
    #[serde(default)]
    iat: Option<u64>,
}

/// Builds an identity from untrusted parts, refusing anything that could
/// not be sent safely as a header value.
fn identity(user_id: &str, role: Option<&str>) -> Option<Identity> {
    let id = contract::identity::parse_user_id(user_id)?;
    let role = role.unwrap_or("user");
    role_ok(role).then(|| Identity {
        user_id: id.to_string().into(),
        role: role.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
