//! `POST /api/refresh`: rotation with reuse detection (see `sessions`).

use crate::AppState;
use crate::error::Result;
use crate::sessions::{self, TokenPair};
use axum::extract::State;
use serde::Deserialize;
use service_kit::Json;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshBody {
    pub refresh: String,
}

pub async fn refresh(
    State(state): State<AppState>,
    Json(body): Json<RefreshBody>,
) -> Result<Json<TokenPair>> {
    Ok(Json(
        sessions::rotate(&state.db, &state.keys, &state.revocations, &body.refresh).await?,
    ))
}
