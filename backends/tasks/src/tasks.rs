//! `/api/tasks`: create, list, read, update and delete the caller's tasks.

use crate::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use service_kit::db::api_error as db_error;
use service_kit::{ApiError, Json, Path, Query, UserId, with_db};
use time::OffsetDateTime;

pub const MAX_TITLE_CHARS: usize = 500;
pub const DEFAULT_LIMIT: i64 = 50;
pub const MAX_LIMIT: i64 = 500;

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Task {
    pub id: i64,
    pub title: String,
    pub completed: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

const COLUMNS: &str = "id, title, completed, created_at, updated_at";

/// Unknown fields are refused, except `user_id`, which clients of the
/// tutorials send and which is ignored: identity comes from the header.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTask {
    pub title: String,
    #[serde(default)]
    pub completed: bool,
    #[serde(default, rename = "user_id")]
    _user_id: Option<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Changes {
    pub title: Option<String>,
    pub completed: Option<bool>,
    #[serde(default, rename = "user_id")]
    _user_id: Option<IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listing {
    pub limit: Option<i64>,
    pub offset: Option<i64>,
    pub completed: Option<bool>,
    #[serde(default, rename = "user_id")]
    _user_id: Option<IgnoredAny>,
}

fn now() -> OffsetDateTime {
    // Whole seconds, so both engines store and return the same value.
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(0).unwrap_or(now)
}

/// Trims a title and checks its length (1–500 characters).
fn title(raw: &str) -> Result<String, ApiError> {
    let trimmed = raw.trim();
    let chars = trimmed.chars().count();
    if chars == 0 || chars > MAX_TITLE_CHARS {
        return Err(ApiError::validation(format!(
            "title must be 1 to {MAX_TITLE_CHARS} characters after trimming"
        )));
    }
    Ok(trimmed.to_owned())
}

pub async fn list(
    State(state): State<AppState>,
    UserId(user): UserId,
    Query(query): Query<Listing>,
) -> Result<Json<Vec<Task>>, ApiError> {
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    let offset = query.offset.unwrap_or(0);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::validation(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        )));
    }
    if offset < 0 {
        return Err(ApiError::validation("offset must not be negative"));
    }
    // `$2 IS NULL OR completed = $2` keeps one statement for both cases.
    let sql = format!(
        "SELECT {COLUMNS} FROM tasks WHERE user_id = $1 AND ($2 IS NULL OR completed = $2) \
         ORDER BY id DESC LIMIT $3 OFFSET $4"
    );
    let tasks = with_db!(&state.db, pool => sqlx::query_as::<_, Task>(&sql)
        .bind(user)
        .bind(query.completed)
        .bind(limit)
        .bind(offset)
        .fetch_all(pool)
        .await)
    .map_err(db_error)?;
    Ok(Json(tasks))
}

pub async fn create(
    State(state): State<AppState>,
    UserId(user): UserId,
    Json(body): Json<NewTask>,
) -> Result<(StatusCode, Json<Task>), ApiError> {
    let title = title(&body.title)?;
    let now = now();
    let sql = format!(
        "INSERT INTO tasks (user_id, title, completed, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $4) RETURNING {COLUMNS}"
    );
    let task = with_db!(&state.db, pool => sqlx::query_as::<_, Task>(&sql)
        .bind(user)
        .bind(&title)
        .bind(body.completed)
        .bind(now)
        .fetch_one(pool)
        .await)
    .map_err(db_error)?;
    state.events.publish(user, "task.created", &task);
    Ok((StatusCode::CREATED, Json(task)))
}

pub async fn read(
    State(state): State<AppState>,
    UserId(user): UserId,
    Path(id): Path<i64>,
) -> Result<Json<Task>, ApiError> {
    let sql = format!("SELECT {COLUMNS} FROM tasks WHERE id = $1 AND user_id = $2");
    with_db!(&state.db, pool => sqlx::query_as::<_, Task>(&sql)
        .bind(id)
        .bind(user)
        .fetch_optional(pool)
        .await)
    .map_err(db_error)?
    .map(Json)
    .ok_or_else(ApiError::not_found)
}

pub async fn update(
    State(state): State<AppState>,
    UserId(user): UserId,
    Path(id): Path<i64>,
    Json(changes): Json<Changes>,
) -> Result<Json<Task>, ApiError> {
    let title = changes.title.as_deref().map(title).transpose()?;
    let sql = format!(
        "UPDATE tasks SET title = COALESCE($3, title), completed = COALESCE($4, completed), \
         updated_at = $5 WHERE id = $1 AND user_id = $2 RETURNING {COLUMNS}"
    );
    let task = with_db!(&state.db, pool => sqlx::query_as::<_, Task>(&sql)
        .bind(id)
        .bind(user)
        .bind(title)
        .bind(changes.completed)
        .bind(now())
        .fetch_optional(pool)
        .await)
    .map_err(db_error)?
    .ok_or_else(ApiError::not_found)?;
    state.events.publish(user, "task.updated", &task);
    Ok(Json(task))
}

pub async fn delete(
    State(state): State<AppState>,
    UserId(user): UserId,
    Path(id): Path<i64>,
) -> Result<StatusCode, ApiError> {
    let deleted =
        with_db!(&state.db, pool => sqlx::query("DELETE FROM tasks WHERE id = $1 AND user_id = $2")
        .bind(id)
        .bind(user)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
        .map_err(db_error)?;
    if deleted == 0 {
        return Err(ApiError::not_found());
    }
    state
        .events
        .publish(user, "task.deleted", serde_json::json!({ "id": id }));
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_are_trimmed_and_bounded() {
        assert_eq!(title("  buy milk ").as_deref().ok(), Some("buy milk"));
        assert!(title("   ").is_err());
        assert!(title("").is_err());
        assert!(title(&"é".repeat(500)).is_ok(), "500 characters, not bytes");
        assert!(title(&"x".repeat(501)).is_err());
    }
}
