//! `POST /api/verify`: the question the gateway asks about every token it
//! has not cached. It must stay cheap: a signature check and one indexed
//! read, never a password hash.

use crate::AppState;
use crate::error::{Error, Result};
use crate::tokens::TokenType;
use crate::users;
use axum::extract::State;
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
    let verified = state
        .keys
        .decode(&body.access, TokenType::Access)
        .map_err(|reason| {
            tracing::debug!(%reason, "access token refused");
            Error::InvalidToken
        })?;
    // The signature proves who the token was issued to, not that the account
    // still exists or is enabled: that is checked on every call.
    let version = verified.claims.ver.unwrap_or(0);
    let standing = users::standing(&state.db, verified.user_id)
        .await?
        .filter(|s| s.token_version == version)
        .ok_or(Error::InvalidToken)?;
    Ok(Json(Identity {
        user_id: verified.user_id,
        role: standing.role,
    }))
}
