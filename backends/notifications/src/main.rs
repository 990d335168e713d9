use clap::Parser;
use notifications::{AppState, Limits, Source};
use std::process::ExitCode;
use std::time::Duration;

/// Portcullis notifications service. Listens on loopback by default: only
/// the gateway, which sets `x-user-id` after verifying a token, may reach it.
#[derive(Parser)]
#[command(name = "notifications", version)]
struct Cli {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, env = "NOTIFICATIONS_LISTEN", default_value = "127.0.0.1:9401")]
    listen: String,
    /// Redis to receive events (and revocations) from; any number of
    /// replicas may share it. Without it, events are posted to this one
    /// replica's /internal/events.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    redis_url: Option<String>,
    /// Prefix of the Redis channel and keys of events, as set for tasks
    /// and orders.
    #[arg(long, env = "EVENTS_NAMESPACE", default_value = service_kit::events::DEFAULT_NAMESPACE)]
    events_namespace: String,
    /// The channel the auth service publishes revocations on; a revoked
    /// user's sockets are closed at once (with Redis).
    #[arg(
        long,
        env = "REVOCATION_CHANNEL",
        default_value = "portcullis:revocations"
    )]
    revocation_channel: String,
    /// Open sockets per user; more are refused with 429.
    #[arg(long, env = "NOTIFICATIONS_MAX_PER_USER", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_per_user: u32,
    /// Open sockets on this replica; more are refused with 503.
    #[arg(long, env = "NOTIFICATIONS_MAX_SOCKETS", default_value_t = 50_000,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_sockets: u32,
    /// Seconds between pings on each socket.
    #[arg(long, env = "NOTIFICATIONS_PING_SECONDS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..=300))]
    ping_seconds: u64,
    #[command(flatten)]
    traces: service_kit::traces::TraceArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let traces = match service_kit::traces::init("notifications", &cli.traces) {
        Ok(traces) => traces,
        Err(e) => {
            eprintln!("notifications: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = service_kit::server::shutdown_signal();
    service_kit::supervision::follow_parent();
    let source = match cli.redis_url.as_deref().filter(|url| !url.is_empty()) {
        Some(url) => Source::Redis {
            url,
            namespace: &cli.events_namespace,
            revocation_channel: &cli.revocation_channel,
        },
        None => Source::Direct,
    };
    let limits = Limits {
        per_user: cli.max_per_user as usize,
        total: cli.max_sockets as usize,
        ping_interval: Duration::from_secs(cli.ping_seconds),
    };
    let result = async {
        let state = AppState::start(source, limits)?;
        tracing::info!(events = state.feed.name(), "live events ready");
        let listener = service_kit::server::bind(&cli.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", cli.listen))?;
        notifications::run(listener, state, shutdown)
            .await
            .map_err(|e| e.to_string())
    }
    .await;
    drop(traces);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("notifications: {error}");
            ExitCode::FAILURE
        }
    }
}
