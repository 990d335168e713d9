use clap::Parser;
use std::process::ExitCode;

/// Portcullis tasks service. Listens on loopback by default: only the
/// gateway, which sets `x-user-id` after verifying a token, may reach it.
#[derive(Parser)]
#[command(name = "tasks", version)]
struct Cli {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, env = "TASKS_LISTEN", default_value = "127.0.0.1:9101")]
    listen: String,
    /// sqlite:PATH (created on first run) or postgres://USER@HOST:PORT/DB.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://data/tasks.db",
        hide_env_values = true
    )]
    database_url: String,
    #[command(flatten)]
    events: service_kit::events::EventArgs,
    #[command(flatten)]
    traces: service_kit::traces::TraceArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    service_kit::server::run_binary(
        "tasks",
        &cli.listen,
        &cli.database_url,
        &tasks::MIGRATIONS,
        &cli.traces,
        |db| {
            let events = service_kit::events::Publisher::from_args(&cli.events)?;
            Ok(tasks::app(tasks::AppState { db, events }))
        },
    )
    .await
}
