//! `GET /api/me`: the caller's own account, identified by the gateway.

use crate::AppState;
use crate::error::{Error, Result};
use crate::users;
use axum::extract::State;
use serde::Serialize;
use service_kit::{Json, UserId};
use time::OffsetDateTime;

#[derive(Debug, Serialize)]
pub struct Me {
    pub user_id: i64,
    pub email: String,
    pub role: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

pub async fn me(State(state): State<AppState>, UserId(id): UserId) -> Result<Json<Me>> {
    let user = users::by_id(&state.db, id)
        .await?
        .filter(|u| u.active)
        .ok_or(Error::Unauthenticated)?;
    Ok(Json(Me {
        user_id: user.id,
        email: user.email,
        role: user.role,
        created_at: user.created_at,
    }))
}
