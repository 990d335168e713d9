//! `POST /api/logout`: revokes the refresh token's whole family.

use crate::AppState;
use crate::error::Result;
use crate::refresh::RefreshBody;
use crate::revocations::Reason;
use crate::sessions;
use axum::extract::State;
use axum::http::StatusCode;
use service_kit::Json;

pub async fn logout(
    State(state): State<AppState>,
    Json(body): Json<RefreshBody>,
) -> Result<StatusCode> {
    let (user_id, session) = sessions::revoke(&state.db, &state.keys, &body.refresh).await?;
    state
        .revocations
        .revoke(user_id, Reason::Logout, Some(&session))
        .await;
    Ok(StatusCode::NO_CONTENT)
}
