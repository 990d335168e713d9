//! `POST /api/login`.

use crate::AppState;
use crate::error::{Error, Result};
use crate::register::Credentials;
use crate::sessions::{self, TokenPair};
use crate::users;
use axum::extract::State;
use service_kit::Json;
use std::time::Instant;

pub async fn login(
    State(state): State<AppState>,
    Json(body): Json<Credentials>,
) -> Result<Json<TokenPair>> {
    let email = users::normalize_email(&body.email);
    // Malformed emails can name no account. Refusing them before the
    // throttle keeps its keys bounded and the database out of reach of
    // bytes it would reject (a NUL on PostgreSQL).
    if !users::is_valid_email(&email) {
        return Err(Error::InvalidCredentials);
    }
    state
        .throttle
        .begin(&email, Instant::now())
        .map_err(|retry_after| {
            tracing::warn!("login throttled");
            Error::TooManyAttempts { retry_after }
        })?;
    // Oversized passwords are refused like wrong ones, after the throttle, so
    // they neither buy CPU nor reveal anything.
    if body.password.len() > crate::passwords::MAX_PASSWORD_BYTES {
        return Err(Error::InvalidCredentials);
    }
    let user = users::by_email(&state.db, &email).await?;
    let hash = user.as_ref().map(|u| u.password_hash.clone());
    // Unknown emails are checked against a dummy hash, so both failures take
    // the same time and give the same answer.
    let matches = state.passwords.verify(body.password, hash).await?;
    let user = match user {
        Some(user) if matches && user.active => user,
        _ => {
            tracing::info!("login failed");
            return Err(Error::InvalidCredentials);
        }
    };
    state.throttle.succeeded(&email);
    tracing::info!(user_id = user.id, "logged in");
    let tokens = sessions::start(&state.db, &state.keys, (&user).into()).await?;
    Ok(Json(tokens))
}
