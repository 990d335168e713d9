use clap::Parser;
use std::process::ExitCode;

/// Portcullis inventory service. Listens on loopback by default: only the
/// gateway and the orders service may reach it.
#[derive(Parser)]
#[command(name = "inventory", version)]
struct Cli {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, env = "INVENTORY_LISTEN", default_value = "127.0.0.1:9301")]
    listen: String,
    /// sqlite:PATH (created on first run) or postgres://USER@HOST:PORT/DB.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://data/inventory.db",
        hide_env_values = true
    )]
    database_url: String,
    #[command(flatten)]
    traces: service_kit::traces::TraceArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    service_kit::server::run_binary(
        "inventory",
        &cli.listen,
        &cli.database_url,
        &inventory::MIGRATIONS,
        &cli.traces,
        |db| Ok(inventory::app(inventory::AppState { db })),
    )
    .await
}
