//! Calls to the inventory service's internal endpoints.

use serde::Serialize;
use std::time::Duration;

#[derive(Clone)]
pub struct InventoryClient {
    http: reqwest::Client,
    base: String,
}

/// What a reservation attempt came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Reservation {
    Reserved,
    Insufficient,
    UnknownSku,
    /// No usable answer (unreachable, timeout, 5xx): the outcome is unknown,
    /// so the caller must release before giving up.
    Unavailable(String),
}

#[derive(Serialize)]
struct ReserveBody<'a> {
    reservation_id: &'a str,
    sku: &'a str,
    quantity: i64,
}

#[derive(Serialize)]
struct ReleaseBody<'a> {
    reservation_id: &'a str,
}

impl InventoryClient {
    pub fn new(base: &str, timeout: Duration) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()?;
        Ok(InventoryClient {
            http,
            base: base.trim_end_matches('/').to_owned(),
        })
    }

    pub async fn reserve(&self, reservation_id: &str, sku: &str, quantity: i64) -> Reservation {
        let body = ReserveBody {
            reservation_id,
            sku,
            quantity,
        };
        match self
            .http
            .post(format!("{}/internal/reserve", self.base))
            .json(&body)
            .send()
            .await
        {
            Ok(response) => match response.status().as_u16() {
                200 => Reservation::Reserved,
                409 => Reservation::Insufficient,
                404 => Reservation::UnknownSku,
                status => Reservation::Unavailable(format!("inventory answered {status}")),
            },
            Err(error) => Reservation::Unavailable(error.to_string()),
        }
    }

    /// Returns a reservation's stock; `Ok` also when it was already released.
    pub async fn release(&self, reservation_id: &str) -> Result<(), String> {
        let response = self
            .http
            .post(format!("{}/internal/release", self.base))
            .json(&ReleaseBody { reservation_id })
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!("inventory answered {}", response.status()))
        }
    }
}
