use clap::Parser;
use orders::inventory_client::InventoryClient;
use std::process::ExitCode;
use std::time::Duration;

/// Portcullis orders service. Listens on loopback by default: only the
/// gateway, which sets `x-user-id` after verifying a token, may reach it.
#[derive(Parser)]
#[command(name = "orders", version)]
struct Cli {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, env = "ORDERS_LISTEN", default_value = "127.0.0.1:9201")]
    listen: String,
    /// sqlite:PATH (created on first run) or postgres://USER@HOST:PORT/DB.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://data/orders.db",
        hide_env_values = true
    )]
    database_url: String,
    /// Base URL of the inventory service.
    #[arg(long, env = "INVENTORY_URL", default_value = "http://127.0.0.1:9301")]
    inventory_url: String,
    /// Timeout for calls to the inventory service, in milliseconds.
    #[arg(long, env = "INVENTORY_TIMEOUT_MS", default_value_t = 2000)]
    inventory_timeout_ms: u64,
    #[command(flatten)]
    events: service_kit::events::EventArgs,
    #[command(flatten)]
    traces: service_kit::traces::TraceArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let timeout = Duration::from_millis(cli.inventory_timeout_ms);
    service_kit::server::run_binary(
        "orders",
        &cli.listen,
        &cli.database_url,
        &orders::MIGRATIONS,
        &cli.traces,
        |db| {
            let inventory =
                InventoryClient::new(&cli.inventory_url, timeout).map_err(|e| e.to_string())?;
            let events = service_kit::events::Publisher::from_args(&cli.events)?;
            Ok(orders::app(orders::AppState {
                db,
                inventory,
                events,
            }))
        },
    )
    .await
}
