//! Binding, hardening and serving a router.

use crate::{ApiError, Db, Json};
use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::future::Future;
use std::io;
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::{DefaultOnResponse, OnResponse, TraceLayer};

/// Request bodies above this size are refused with 413 before any handler
/// runs. Every JSON body the services accept is far smaller.
pub const BODY_LIMIT: usize = 64 * 1024;

async fn not_found() -> ApiError {
    ApiError::not_found()
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this method is not allowed on this path",
    )
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ApiError::internal(&"handler panicked").into_response()
}

/// Adds what every service needs around its routes: the envelope for unknown
/// paths and methods, the body limit, a panic guard that still answers in the
/// envelope, and request tracing (method, route and status; never headers,
/// which carry tokens). Each request's span continues the trace its
/// `traceparent` names ([`crate::traces`]).
pub fn harden(router: Router) -> Router {
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_response(
                    |response: &Response, latency: std::time::Duration, span: &tracing::Span| {
                        crate::traces::answered(span, Some(response.status().as_u16()));
                        DefaultOnResponse::new()
                            .level(tracing::Level::DEBUG)
                            .on_response(response, latency, span);
                    },
                ),
        )
}

/// The span of one request: named by method and route (the matched
/// pattern, not the path with its ids), server kind, child of the caller's
/// trace when it sent one.
fn request_span<B>(request: &axum::http::Request<B>) -> tracing::Span {
    if request.uri().path() == "/healthz" {
        // The gateway's health checks would fill the traces: their span
        // names no `otel.kind`, so it is logged and never exported.
        return tracing::info_span!("request", "url.path" = "/healthz");
    }
    // A path no route matched is the client's text: it names nothing.
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("", |m| m.as_str());
    let method = contract::telemetry::span_method(request.method().as_str());
    let name = if route.is_empty() {
        method.to_owned()
    } else {
        format!("{method} {route}")
    };
    let span = tracing::info_span!(
        "request",
        otel.name = %name,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        "http.request.method" = method,
        "http.route" = tracing::field::Empty,
        "url.path" = request.uri().path(),
        "http.response.status_code" = tracing::field::Empty,
    );
    if !route.is_empty() {
        span.record("http.route", route);
    }
    crate::traces::continue_from(&span, request.headers());
    span
}

/// `GET /healthz`: 200 when the database answers, 503 otherwise. Any state
/// that holds the service's `Db` can serve it.
pub async fn healthz<S: AsRef<Db> + Send + Sync>(
    State(state): State<S>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let db = state.as_ref();
    db.ping().await.map_err(|e| {
        tracing::warn!(error = %e, "health check: database unreachable");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the database is unreachable",
        )
    })?;
    Ok(Json(
        serde_json::json!({"status": "ok", "database": db.kind()}),
    ))
}

/// Binds `addr` and prints `listening on ADDR` with the address actually
/// bound, so that callers passing port 0 learn the port.
pub async fn bind(addr: &str) -> io::Result<TcpListener> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    println!("listening on {local}");
    tracing::info!(addr = %local, "listening");
    Ok(listener)
}

/// Serves `router` until `shutdown` resolves, then lets in-flight requests
/// finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// The whole life of a service binary: logging, database (opened and
/// migrated), router, listener, serving until Ctrl-C or SIGTERM. Any
/// start-up failure is one line on stderr and a non-zero exit.
pub async fn run_binary(
    name: &str,
    listen: &str,
    database_url: &str,
    migrations: &crate::db::Migrations,
    traces: &crate::traces::TraceArgs,
    app: impl FnOnce(Db) -> Result<Router, String>,
) -> std::process::ExitCode {
    let traces = match crate::traces::init(name, traces) {
        Ok(traces) => traces,
        Err(error) => {
            eprintln!("{name}: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let shutdown = shutdown_signal();
    crate::supervision::follow_parent();
    let result = async {
        let db = Db::open(database_url, 16, migrations)
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(database = db.kind(), "database ready");
        let router = app(db.clone())?;
        let listener = bind(listen)
            .await
            .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
        serve(listener, router, shutdown)
            .await
            .map_err(|e| e.to_string())?;
        db.close().await;
        Ok::<(), String>(())
    }
    .await;
    // The last spans are sent before the process ends.
    drop(traces);
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{name}: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM.
///
/// The handlers are installed when this is called, not when the future is
/// first polled: call it first thing, so that a signal arriving while the
/// database is opened or migrated is held until serving starts, which then
/// ends at once and cleanly, instead of killing the process by the signal's
/// default action.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let interrupt = signal(SignalKind::interrupt());
    let terminate = signal(SignalKind::terminate());
    async move {
        let interrupt = async {
            match interrupt {
                Ok(mut s) => drop(s.recv().await),
                Err(_) => std::future::pending::<()>().await,
            }
        };
        let terminate = async {
            match terminate {
                Ok(mut s) => drop(s.recv().await),
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = interrupt => {},
            () = terminate => {},
        }
        tracing::info!("shutting down");
    }
}
