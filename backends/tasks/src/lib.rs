//! Portcullis tasks service: each user's own task list.
//!
//! Identity comes from the `x-user-id` header the gateway sets, and from
//! nothing else: a `user_id` in a body or query string is ignored. Every
//! statement carries the owner in its `WHERE` clause, so another user's task
//! is indistinguishable from a missing one (404).
//!
//! Every change is announced to the notifications service once it has
//! committed (`task.created`, `task.updated`, `task.deleted`).

pub mod tasks;

use axum::Router;
use axum::routing::get;
use service_kit::Db;
use std::future::Future;
use tokio::net::TcpListener;

pub static MIGRATIONS: service_kit::db::Migrations = service_kit::migrations!();

#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub events: service_kit::events::Publisher,
}

pub fn app(state: AppState) -> Router {
    let routes = Router::new()
        .route("/api/tasks", get(tasks::list).post(tasks::create))
        .route(
            "/api/tasks/{id}",
            get(tasks::read).put(tasks::update).delete(tasks::delete),
        )
        .route("/healthz", get(service_kit::server::healthz::<AppState>))
        .with_state(state);
    service_kit::server::harden(routes)
}

impl AsRef<Db> for AppState {
    fn as_ref(&self) -> &Db {
        &self.db
    }
}

pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    service_kit::server::serve(listener, app(state), shutdown).await
}
