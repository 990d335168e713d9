//! Portcullis orders service: each user's orders, with stock reserved in the
//! inventory service before an order exists.
//!
//! Placing an order: reserve (inventory, one atomic statement there), then
//! write the order; if writing fails the reservation is released. Not enough
//! stock → 409 and nothing changes; inventory unreachable → 503 and no order.
//! Cancelling: release the reservation (idempotent), then mark the order
//! cancelled. Reservations carry an id chosen here, so a retried call never
//! takes or returns stock twice.
//!
//! Placed and cancelled orders are announced to the notifications service
//! once written (`order.placed`, `order.cancelled`).

pub mod inventory_client;
pub mod orders;

use axum::Router;
use axum::routing::get;
use service_kit::Db;
use std::future::Future;
use tokio::net::TcpListener;

pub static MIGRATIONS: service_kit::db::Migrations = service_kit::migrations!();

#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub inventory: inventory_client::InventoryClient,
    pub events: service_kit::events::Publisher,
}

impl AsRef<Db> for AppState {
    fn as_ref(&self) -> &Db {
        &self.db
    }
}

pub fn app(state: AppState) -> Router {
    let routes = Router::new()
        .route("/api/orders", get(orders::list).post(orders::place))
        .route("/api/orders/{id}", get(orders::read).delete(orders::cancel))
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
