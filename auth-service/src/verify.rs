//! `POST /api/verify`: the question the gateway asks about every token it
//! has not cached. It must stay cheap: a signature check and one indexed
//! read, never a password hash.
//!
//! `GET /api/verify` asks the same question the way other proxies ask it
//! (Nginx `auth_request`, Caddy `forward_auth`, Traefik `forwardAuth`):
//! the token in `Authorization: Bearer`, the identity in the `x-user-id`
//! and `x-user-role` response headers, so those proxies can use the auth
//! service without the gateway.

use crate::AppState;
use crate::error::{Error, Result};
use crate::tokens::TokenType;
use crate::users;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use service_kit::Json;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyBody {
    pub access: String,
}

#[derive(Debug, Serialize)]
pub struct Identity {
    pub user_id: i64,
    pub role: String,
}

pub async fn verify(
    State(state): State<AppState>,
    Json(body): Json<VerifyBody>,
) -> Result<Json<Identity>> {
    identify(&state, &body.access).await.map(Json)
}

pub async fn forward_auth(State(state): State<AppState>, headers: HeaderMap) -> Result<Response> {
    let token = bearer(&headers)?;
    let identity = identify(&state, token).await?;
    let role = HeaderValue::from_str(&identity.role)
        .map_err(|_| Error::Internal("a role is not a valid header value".into()))?;
    let user_id = HeaderValue::from(identity.user_id);
    let mut response = Json(identity).into_response();
    response.headers_mut().insert("x-user-id", user_id);
    response.headers_mut().insert("x-user-role", role);
    Ok(response)
}

/// The token of the one `Authorization: Bearer` header: none is 401
/// `unauthenticated`, anything else malformed (two headers, another scheme,
/// an empty or spaced token) is 401 `invalid_token`.
fn bearer(headers: &HeaderMap) -> Result<&str> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next().ok_or(Error::Unauthenticated)?;
    if values.next().is_some() {
        return Err(Error::InvalidToken);
    }
    let value = value.to_str().map_err(|_| Error::InvalidToken)?;
    let (scheme, token) = value.split_once(' ').ok_or(Error::InvalidToken)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() || token.contains(' ') {
        return Err(Error::InvalidToken);
    }
    Ok(token)
}

async fn identify(state: &AppState, token: &str) -> Result<Identity> {
    let verified = state
        .keys
        .decode(token, TokenType::Access)
        .map_err(|reason| {
            tracing::debug!(%reason, "access token refused");
            Error::InvalidToken
        })?;
    // The signature proves who the token was issued to, not that the account
    // still exists or is enabled: that is checked on every call.
    let version = verified.claims.ver.unwrap_or(0);
    // A token naming its session is honoured only while that session is:
    // logout and refresh-token reuse revoke sessions.
    let standing = match &verified.claims.sid {
        Some(family_id) => {
            users::standing_in_session(&state.db, verified.user_id, family_id).await?
        }
        None => users::standing(&state.db, verified.user_id).await?,
    };
    let standing = standing
        .filter(|s| s.token_version == version)
        .ok_or(Error::InvalidToken)?;
    Ok(Identity {
        user_id: verified.user_id,
        role: standing.role,
    })
}
