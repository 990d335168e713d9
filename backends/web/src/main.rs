use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

/// Portcullis web page server: the built browser client, under /app/.
#[derive(Parser)]
#[command(name = "web", version)]
struct Cli {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, env = "WEB_LISTEN", default_value = "127.0.0.1:9601")]
    listen: String,
    /// The built page (`npm --prefix web run build` writes web/dist).
    #[arg(long, env = "WEB_DIR", default_value = "web/dist")]
    dir: PathBuf,
    #[command(flatten)]
    traces: service_kit::traces::TraceArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let traces = match service_kit::traces::init("web", &cli.traces) {
        Ok(traces) => traces,
        Err(e) => {
            eprintln!("web: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = service_kit::server::shutdown_signal();
    service_kit::supervision::follow_parent();
    let site = web::Site::load(&cli.dir);
    if site.is_empty() {
        tracing::warn!(dir = %cli.dir.display(), "no page to serve; /app/ answers 503 until it is built");
    } else {
        tracing::info!(dir = %cli.dir.display(), files = site.len(), "page loaded");
    }
    let listener = match service_kit::server::bind(&cli.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("web: cannot listen on {}: {e}", cli.listen);
            return ExitCode::FAILURE;
        }
    };
    let served = web::run(listener, site, shutdown).await;
    drop(traces);
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("web: {e}");
            ExitCode::FAILURE
        }
    }
}
