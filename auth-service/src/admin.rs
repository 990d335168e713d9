//! `/api/admin/users`: account administration, for active admins only.
//!
//! The caller's role is read from the database on every request rather than
//! trusted from a header, so a demotion takes effect at once.

use crate::AppState;
use crate::error::{Error, Result};
use crate::revocations::Reason;
use crate::sessions;
use crate::users::{self, PublicUser, ROLES};
use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::{Deserialize, Serialize};
use service_kit::{Json, Path, Query, UserId};

pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 500;

/// An active admin, identified by `x-user-id`.
pub struct Admin(pub i64);

impl FromRequestParts<AppState> for Admin {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        let UserId(id) = UserId::from_request_parts(parts, state).await?;
        match users::standing(&state.db, id)
            .await?
            .map(|s| s.role)
            .as_deref()
        {
            Some("admin") => Ok(Admin(id)),
            Some(_) => Err(Error::Forbidden),
            None => Err(Error::Unauthenticated),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Page {
    pub limit: Option<i64>,
    pub offset: Option<i64>,
}

#[derive(Debug, Serialize)]
pub struct UserList {
    pub users: Vec<PublicUser>,
    pub total: i64,
    pub limit: i64,
    pub offset: i64,
}

pub async fn list(
    State(state): State<AppState>,
    _admin: Admin,
    Query(page): Query<Page>,
) -> Result<Json<UserList>> {
    let limit = page.limit.unwrap_or(DEFAULT_LIMIT);
    let offset = page.offset.unwrap_or(0);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(Error::Validation(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )));
    }
    if offset < 0 {
        return Err(Error::Validation("offset must not be negative".into()));
    }
    let (rows, total) = users::list(&state.db, limit, offset).await?;
    Ok(Json(UserList {
        users: rows.into_iter().map(PublicUser::from).collect(),
        total,
        limit,
        offset,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Changes {
    pub active: Option<bool>,
    pub role: Option<String>,
}

/// Admins cannot disable, demote or delete themselves: that is how the last
/// admin locks everyone out.
fn refuse_self(admin: &Admin, target: i64) -> Result<()> {
    if admin.0 == target {
        return Err(Error::Conflict(
            "an admin cannot disable, demote or delete their own account",
        ));
    }
    Ok(())
}

pub async fn update(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<i64>,
    Json(changes): Json<Changes>,
) -> Result<Json<PublicUser>> {
    if let Some(role) = changes.role.as_deref()
        && !ROLES.contains(&role)
    {
        return Err(Error::Validation(format!(
            "role must be one of: {}",
            ROLES.join(", ")
        )));
    }
    let demoting = changes.role.as_deref().is_some_and(|r| r != "admin");
    if changes.active == Some(false) || demoting {
        refuse_self(&admin, id)?;
    }
    let before = users::by_id(&state.db, id)
        .await?
        .ok_or(Error::UserNotFound)?;
    let user = users::update(&state.db, id, changes.active, changes.role.as_deref())
        .await?
        .ok_or(Error::UserNotFound)?;
    if !user.active {
        // Disabling ends every session: re-enabling later does not revive them.
        sessions::revoke_all(&state.db, id).await?;
        state.revocations.revoke(id, Reason::Disabled, None).await;
    } else if user.role != before.role {
        // Cached verdicts carry the old role; gateways must ask again.
        state
            .revocations
            .revoke(id, Reason::RoleChanged, None)
            .await;
    }
    tracing::info!(admin = admin.0, user_id = id, active = user.active, role = %user.role, "user updated");
    Ok(Json(user.into()))
}

pub async fn delete(
    State(state): State<AppState>,
    admin: Admin,
    Path(id): Path<i64>,
) -> Result<StatusCode> {
    refuse_self(&admin, id)?;
    if !users::delete(&state.db, id).await? {
        return Err(Error::UserNotFound);
    }
    state.revocations.revoke(id, Reason::Deleted, None).await;
    tracing::info!(admin = admin.0, user_id = id, "user deleted");
    Ok(StatusCode::NO_CONTENT)
}
