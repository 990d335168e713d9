//! `/api/orders`: place, list, read and cancel the caller's orders.

use crate::AppState;
use crate::inventory_client::Reservation;
use axum::extract::State;
use axum::http::StatusCode;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use service_kit::db::api_error as db_error;
use service_kit::{ApiError, Json, Path, UserId, with_db};
use time::OffsetDateTime;

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Order {
    pub id: i64,
    pub sku: String,
    pub quantity: i64,
    pub status: String,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(skip)]
    pub reservation_id: String,
}

const COLUMNS: &str = "id, sku, quantity, status, created_at, reservation_id";
pub const MAX_QUANTITY: i64 = 1000;

/// `user_id` is accepted and ignored: identity comes from the header.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewOrder {
    pub sku: String,
    pub quantity: i64,
    #[serde(default, rename = "user_id")]
    _user_id: Option<IgnoredAny>,
}

fn unavailable(message: &'static str) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message).with_retry_after(1)
}

fn reservation_id() -> String {
    let mut bytes = [0u8; 16];
    // Without randomness, ids could collide with another order's; refuse.
    if getrandom::fill(&mut bytes).is_err() {
        return String::new();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub async fn list(
    State(state): State<AppState>,
    UserId(user): UserId,
) -> Result<Json<Vec<Order>>, ApiError> {
    let sql = format!("SELECT {COLUMNS} FROM orders WHERE user_id = $1 ORDER BY id DESC LIMIT 500");
    let orders = with_db!(&state.db, pool => sqlx::query_as::<_, Order>(&sql)
        .bind(user)
        .fetch_all(pool)
        .await)
    .map_err(db_error)?;
    Ok(Json(orders))
}

async fn find(state: &AppState, user: i64, id: i64) -> Result<Order, ApiError> {
    let sql = format!("SELECT {COLUMNS} FROM orders WHERE id = $1 AND user_id = $2");
    with_db!(&state.db, pool => sqlx::query_as::<_, Order>(&sql)
        .bind(id)
        .bind(user)
        .fetch_optional(pool)
        .await)
    .map_err(db_error)?
    .ok_or_else(ApiError::not_found)
}

pub async fn read(
    State(state): State<AppState>,
    UserId(user): UserId,
    Path(id): Path<i64>,
) -> Result<Json<Order>, ApiError> {
    find(&state, user, id).await.map(Json)
}

pub async fn place(
    State(state): State<AppState>,
    UserId(user): UserId,
    Json(body): Json<NewOrder>,
) -> Result<(StatusCode, Json<Order>), ApiError> {
    if !(1..=MAX_QUANTITY).contains(&body.quantity) {
        return Err(ApiError::validation(format!(
            "quantity must be between 1 and {MAX_QUANTITY}"
        )));
    }
    if body.sku.is_empty() || body.sku.len() > 64 {
        return Err(ApiError::validation("sku must be 1 to 64 characters"));
    }
    let reservation = reservation_id();
    if reservation.is_empty() {
        return Err(ApiError::internal(&"no randomness for a reservation id"));
    }
    match state
        .inventory
        .reserve(&reservation, &body.sku, body.quantity)
        .await
    {
        Reservation::Reserved => {}
        Reservation::Insufficient => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "insufficient_stock",
                "not enough stock for this order",
            ));
        }
        Reservation::UnknownSku => {
            return Err(ApiError::validation("no such item"));
        }
        Reservation::Unavailable(reason) => {
            // The reservation may have happened before the answer was lost.
            if let Err(error) = state.inventory.release(&reservation).await {
                tracing::warn!(%reservation, %error, "could not release an uncertain reservation");
            }
            tracing::warn!(%reason, "inventory unavailable; order refused");
            return Err(unavailable(
                "the inventory service is unavailable; no order was placed",
            ));
        }
    }
    let sql = format!(
        "INSERT INTO orders (user_id, sku, quantity, status, reservation_id, created_at) \
         VALUES ($1, $2, $3, 'placed', $4, $5) RETURNING {COLUMNS}"
    );
    let now = OffsetDateTime::now_utc();
    let inserted = with_db!(&state.db, pool => sqlx::query_as::<_, Order>(&sql)
        .bind(user)
        .bind(&body.sku)
        .bind(body.quantity)
        .bind(&reservation)
        .bind(now.replace_nanosecond(0).unwrap_or(now))
        .fetch_one(pool)
        .await);
    match inserted {
        Ok(order) => {
            tracing::info!(order = order.id, user_id = user, sku = %order.sku, quantity = order.quantity, "order placed");
            state.events.publish(user, "order.placed", &order);
            Ok((StatusCode::CREATED, Json(order)))
        }
        Err(error) => {
            if let Err(release) = state.inventory.release(&reservation).await {
                tracing::error!(%reservation, error = %release, "order not written and its reservation not released");
            }
            Err(db_error(error))
        }
    }
}

pub async fn cancel(
    State(state): State<AppState>,
    UserId(user): UserId,
    Path(id): Path<i64>,
) -> Result<Json<Order>, ApiError> {
    let order = find(&state, user, id).await?;
    if order.status == "cancelled" {
        return Ok(Json(order));
    }
    // Stock first: if inventory cannot be reached the order stays placed and
    // the client may retry; a retry releases nothing twice.
    state
        .inventory
        .release(&order.reservation_id)
        .await
        .map_err(|error| {
            tracing::warn!(%error, order = id, "inventory unavailable; cancellation refused");
            unavailable("the inventory service is unavailable; the order is unchanged")
        })?;
    let sql = format!(
        "UPDATE orders SET status = 'cancelled' WHERE id = $1 AND user_id = $2 RETURNING {COLUMNS}"
    );
    let order = with_db!(&state.db, pool => sqlx::query_as::<_, Order>(&sql)
        .bind(id)
        .bind(user)
        .fetch_optional(pool)
        .await)
    .map_err(db_error)?
    .ok_or_else(ApiError::not_found)?;
    state.events.publish(user, "order.cancelled", &order);
    Ok(Json(order))
}
