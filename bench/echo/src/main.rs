//! A backend that costs as little as possible, so that benchmarks measure
//! what sits in front of it.

use axum::Router;
use axum::http::{HeaderMap, Uri};
use clap::Parser;
use service_kit::Json;
use service_kit::server::{bind, serve, shutdown_signal};

#[derive(Parser)]
#[command(
    name = "echo",
    about = "Benchmark backend: a ~100-byte JSON answer to every request"
)]
struct Cli {
    #[arg(long, env = "ECHO_LISTEN", default_value = "127.0.0.1:9501")]
    listen: String,
    /// Also serve on this Unix socket (for the gateway's `unix:` servers).
    #[arg(long)]
    unix: Option<std::path::PathBuf>,
    /// Answer 503 to the first N of every 2N requests: a server failing
    /// half its requests, in runs (for bench/resilience.py).
    #[arg(long, default_value_t = 0)]
    fail_runs: u64,
}

static FAIL_RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static SERVED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

async fn answer(uri: Uri, headers: HeaderMap) -> axum::response::Response {
    use axum::response::IntoResponse;
    use std::sync::atomic::Ordering;
    let runs = FAIL_RUNS.load(Ordering::Relaxed);
    if runs > 0 && (SERVED.fetch_add(1, Ordering::Relaxed) / runs).is_multiple_of(2) {
        return axum::http::StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    body(uri, headers).await.into_response()
}

async fn body(uri: Uri, headers: HeaderMap) -> Json<serde_json::Value> {
    let user = headers
        .get("x-user-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    Json(serde_json::json!({
        "service": "echo",
        "path": uri.path(),
        "user_id": user,
        "items": [1, 2, 3],
        "ok": true,
    }))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let cli = Cli::parse();
    FAIL_RUNS.store(cli.fail_runs, std::sync::atomic::Ordering::Relaxed);
    let listener = bind(&cli.listen).await?;
    let app = Router::new().fallback(answer);
    if let Some(path) = &cli.unix {
        let _ = std::fs::remove_file(path);
        let unix = tokio::net::UnixListener::bind(path)?;
        let app = app.clone();
        tokio::spawn(async move { axum::serve(unix, app).await });
    }
    serve(listener, app, shutdown_signal()).await
}
