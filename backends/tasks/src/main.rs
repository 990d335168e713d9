use clap::Parser;
use service_kit::server::{bind, shutdown_signal};
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
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    service_kit::telemetry::init();
    let result = async {
        let db = tasks::open_database(&cli.database_url).await?;
        let listener = bind(&cli.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", cli.listen))?;
        tasks::run(
            listener,
            tasks::AppState { db: db.clone() },
            shutdown_signal(),
        )
        .await?;
        db.close().await;
        anyhow::Ok(())
    }
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tasks: {error:#}");
            ExitCode::FAILURE
        }
    }
}
