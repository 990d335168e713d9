//! `POST /api/register`.

use crate::AppState;
use crate::error::{Error, Result};
use crate::sessions::{self, TokenPair};
use crate::{passwords, users};
use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;
use service_kit::Json;
use service_kit::db::is_unique_violation;

/// Credentials. Deliberately not `Debug`, so a password cannot end up in a
/// log line by accident.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    pub email: String,
    pub password: String,
}

pub async fn register(
    State(state): State<AppState>,
    Json(body): Json<Credentials>,
) -> Result<(StatusCode, Json<TokenPair>)> {
    let email = users::normalize_email(&body.email);
    if !users::is_valid_email(&email) {
        return Err(Error::Validation("email is not a valid address".into()));
    }
    passwords::validate(&body.password)?;
    // Cheap duplicate check first, so a taken email does not cost a hash; the
    // unique constraint below still decides races.
    if users::by_email(&state.db, &email).await?.is_some() {
        return Err(Error::EmailTaken);
    }
    let hash = state.passwords.hash(body.password).await?;
    let user = users::insert(&state.db, &email, &hash, "user")
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                Error::EmailTaken
            } else {
                e.into()
            }
        })?;
    tracing::info!(user_id = user.id, "registered");
    let tokens = sessions::start(&state.db, &state.keys, (&user).into()).await?;
    Ok((StatusCode::CREATED, Json(tokens)))
}
