//! `/api/stock`: read by any signed-in user, written by admins.

use crate::{AppState, db_error};
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use service_kit::{ApiError, Json, Path, UserId, UserRole, with_db};

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Item {
    pub sku: String,
    pub name: String,
    pub quantity: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItemBody {
    pub name: String,
    pub quantity: i64,
}

/// A SKU: 1–64 of `[A-Za-z0-9._-]`.
pub fn valid_sku(sku: &str) -> bool {
    (1..=64).contains(&sku.len())
        && sku
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

pub async fn list(
    State(state): State<AppState>,
    _user: UserId,
) -> Result<Json<Vec<Item>>, ApiError> {
    let items = with_db!(&state.db, pool => sqlx::query_as::<_, Item>(
        "SELECT sku, name, quantity FROM stock ORDER BY sku")
        .fetch_all(pool)
        .await)
    .map_err(db_error)?;
    Ok(Json(items))
}

pub async fn read(
    State(state): State<AppState>,
    _user: UserId,
    Path(sku): Path<String>,
) -> Result<Json<Item>, ApiError> {
    with_db!(&state.db, pool => sqlx::query_as::<_, Item>(
        "SELECT sku, name, quantity FROM stock WHERE sku = $1")
        .bind(&sku)
        .fetch_optional(pool)
        .await)
    .map_err(db_error)?
    .map(Json)
    .ok_or_else(ApiError::not_found)
}

/// Creates or replaces an item. The role comes from `x-user-role`, which the
/// gateway sets from the verified token and strips from clients.
pub async fn put(
    State(state): State<AppState>,
    UserId(user): UserId,
    role: UserRole,
    Path(sku): Path<String>,
    Json(body): Json<ItemBody>,
) -> Result<(StatusCode, Json<Item>), ApiError> {
    if !role.is_admin() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "changing stock requires the admin role",
        ));
    }
    if !valid_sku(&sku) {
        return Err(ApiError::validation(
            "sku must be 1-64 of A-Z a-z 0-9 . _ -",
        ));
    }
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        return Err(ApiError::validation("name must be 1 to 200 characters"));
    }
    if body.quantity < 0 {
        return Err(ApiError::validation("quantity must not be negative"));
    }
    const SQL: &str = "INSERT INTO stock (sku, name, quantity) VALUES ($1, $2, $3) \
        ON CONFLICT (sku) DO UPDATE SET name = excluded.name, quantity = excluded.quantity \
        RETURNING sku, name, quantity";
    let item = with_db!(&state.db, pool => sqlx::query_as::<_, Item>(SQL)
        .bind(&sku)
        .bind(name)
        .bind(body.quantity)
        .fetch_one(pool)
        .await)
    .map_err(db_error)?;
    tracing::info!(user_id = user, sku = %item.sku, quantity = item.quantity, "stock set");
    Ok((StatusCode::OK, Json(item)))
}

#[cfg(test)]
mod tests {
    #[test]
    fn skus() {
        for (sku, ok) in [
            ("KB-001", true),
            ("a.b_c", true),
            ("", false),
            ("a b", false),
            ("x/y", false),
        ] {
            assert_eq!(super::valid_sku(sku), ok, "{sku:?}");
        }
        assert!(!super::valid_sku(&"x".repeat(65)));
    }
}
