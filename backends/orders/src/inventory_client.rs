//! Calls to the inventory service's internal endpoints.

use serde::Serialize;
use std::time::Duration;
use tracing::Instrument;

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
        let (span, headers) = self.call("/internal/reserve");
        let sent = self
            .http
            .post(format!("{}/internal/reserve", self.base))
            .headers(headers)
            .json(&body)
            .send()
            .instrument(span.clone())
            .await;
        service_kit::traces::answered(&span, sent.as_ref().ok().map(|r| r.status().as_u16()));
        match sent {
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
        let (span, headers) = self.call("/internal/release");
        let sent = self
            .http
            .post(format!("{}/internal/release", self.base))
            .headers(headers)
            .json(&ReleaseBody { reservation_id })
            .send()
            .instrument(span.clone())
            .await;
        service_kit::traces::answered(&span, sent.as_ref().ok().map(|r| r.status().as_u16()));
        let response = sent.map_err(|e| e.to_string())?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(format!("inventory answered {}", response.status()))
        }
    }
}

impl InventoryClient {
    /// The span of a call to `path` (a child of the request being served)
    /// and the headers that make inventory's span its child.
    fn call(&self, path: &'static str) -> (tracing::Span, reqwest::header::HeaderMap) {
        let span = tracing::info_span!(
            "inventory",
            otel.name = %format_args!("POST {path}"),
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            "http.request.method" = "POST",
            // The path, not the base URL, which may carry credentials.
            "url.path" = path,
            "http.response.status_code" = tracing::field::Empty,
        );
        let mut headers = reqwest::header::HeaderMap::new();
        service_kit::traces::pass_on(&span, &mut headers);
        (span, headers)
    }
}
