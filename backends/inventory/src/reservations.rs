//! `/internal/reserve` and `/internal/release`, called by the orders service.
//!
//! A reservation is named by an id the caller chooses (one per order), so
//! both calls are idempotent: a retry after a lost answer neither takes nor
//! returns stock twice.

use crate::{AppState, db_error};
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use service_kit::{ApiError, Json, with_db};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reserve {
    pub reservation_id: String,
    pub sku: String,
    pub quantity: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Release {
    pub reservation_id: String,
}

#[derive(Debug, Serialize)]
pub struct Outcome {
    pub reservation_id: String,
    /// The item's quantity after the call (absent when nothing changed).
    pub remaining: Option<i64>,
}

fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

pub async fn reserve(
    State(state): State<AppState>,
    Json(body): Json<Reserve>,
) -> Result<Json<Outcome>, ApiError> {
    if !valid_id(&body.reservation_id) {
        return Err(ApiError::validation("invalid reservation_id"));
    }
    if body.quantity <= 0 {
        return Err(ApiError::validation("quantity must be positive"));
    }
    let reservation_id = body.reservation_id.clone();
    // One transaction: record the reservation (its primary key makes a
    // retry a no-op), then take the stock only if enough is there.
    let remaining = with_db!(&state.db, pool => async {
        let mut tx = pool.begin().await?;
        let claimed = sqlx::query(
            "INSERT INTO reservations (id, sku, quantity) SELECT $1, $2, $3 \
             WHERE EXISTS (SELECT 1 FROM stock WHERE sku = $2) ON CONFLICT (id) DO NOTHING")
            .bind(&body.reservation_id)
            .bind(&body.sku)
            .bind(body.quantity)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if claimed == 0 {
            let existing: Option<(String, i64)> = sqlx::query_as(
                "SELECT sku, quantity FROM reservations WHERE id = $1")
                .bind(&body.reservation_id)
                .fetch_optional(&mut *tx)
                .await?;
            tx.rollback().await?;
            return Ok::<_, sqlx::Error>(match existing {
                // The same reservation again: already done.
                Some((sku, quantity)) if sku == body.sku && quantity == body.quantity => Reserved::Again,
                Some(_) => Reserved::Conflict,
                None => Reserved::UnknownSku,
            });
        }
        let left: Option<i64> = sqlx::query_scalar(
            "UPDATE stock SET quantity = quantity - $2 WHERE sku = $1 AND quantity >= $2 RETURNING quantity")
            .bind(&body.sku)
            .bind(body.quantity)
            .fetch_optional(&mut *tx)
            .await?;
        match left {
            Some(left) => {
                tx.commit().await?;
                Ok(Reserved::Done(left))
            }
            None => {
                tx.rollback().await?;
                Ok(Reserved::Insufficient)
            }
        }
    }
    .await)
    .map_err(db_error)?;
    match remaining {
        Reserved::Done(left) => {
            tracing::info!(reservation = %reservation_id, sku = %body.sku, quantity = body.quantity, left, "reserved");
            Ok(Json(Outcome {
                reservation_id,
                remaining: Some(left),
            }))
        }
        Reserved::Again => Ok(Json(Outcome {
            reservation_id,
            remaining: None,
        })),
        Reserved::Insufficient => Err(ApiError::new(
            StatusCode::CONFLICT,
            "insufficient_stock",
            "not enough stock for this quantity",
        )),
        Reserved::Conflict => Err(ApiError::new(
            StatusCode::CONFLICT,
            "reservation_conflict",
            "this reservation id is already used for another item or quantity",
        )),
        Reserved::UnknownSku => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_sku",
            "no such item",
        )),
    }
}

enum Reserved {
    Done(i64),
    Again,
    Insufficient,
    Conflict,
    UnknownSku,
}

pub async fn release(
    State(state): State<AppState>,
    Json(body): Json<Release>,
) -> Result<Json<Outcome>, ApiError> {
    if !valid_id(&body.reservation_id) {
        return Err(ApiError::validation("invalid reservation_id"));
    }
    // Deleting the reservation and returning its stock happen together; a
    // release of an unknown (or already released) reservation changes nothing.
    let remaining = with_db!(&state.db, pool => async {
        let mut tx = pool.begin().await?;
        let taken: Option<(String, i64)> = sqlx::query_as(
            "DELETE FROM reservations WHERE id = $1 RETURNING sku, quantity")
            .bind(&body.reservation_id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some((sku, quantity)) = taken else {
            tx.rollback().await?;
            return Ok::<_, sqlx::Error>(None);
        };
        let left: i64 = sqlx::query_scalar(
            "UPDATE stock SET quantity = quantity + $2 WHERE sku = $1 RETURNING quantity")
            .bind(&sku)
            .bind(quantity)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(left))
    }
    .await)
    .map_err(db_error)?;
    Ok(Json(Outcome {
        reservation_id: body.reservation_id,
        remaining,
    }))
}
