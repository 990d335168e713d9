//! Portcullis inventory service: stock levels, readable by signed-in users,
//! changed by admins, and reserved atomically for orders.
//!
//! `/internal/reserve` and `/internal/release` are for the orders service
//! only: the gateway routes `/api/stock`, never `/internal`, and the service
//! listens on loopback by default.

pub mod reservations;
pub mod stock;

use axum::Router;
use axum::routing::{get, post};
use service_kit::Db;
pub(crate) use service_kit::db::api_error as db_error;
use std::future::Future;
use tokio::net::TcpListener;

pub static MIGRATIONS: service_kit::db::Migrations = service_kit::migrations!();

#[derive(Clone)]
pub struct AppState {
    pub db: Db,
}

impl AsRef<Db> for AppState {
    fn as_ref(&self) -> &Db {
        &self.db
    }
}

pub fn app(state: AppState) -> Router {
    let routes = Router::new()
        .route("/api/stock", get(stock::list))
        .route("/api/stock/{sku}", get(stock::read).put(stock::put))
        .route("/internal/reserve", post(reservations::reserve))
        .route("/internal/release", post(reservations::release))
        .route("/healthz", get(service_kit::server::healthz::<AppState>))
        .with_state(state);
    service_kit::server::harden(routes)
}

pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    service_kit::server::serve(listener, app(state), shutdown).await
}
