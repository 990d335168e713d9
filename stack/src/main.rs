use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;

/// Runs the whole Portcullis stack: the auth service, tasks, orders,
/// inventory and the web page where routes.yaml's upstreams say they listen, then the
/// gateway on that file. Ctrl-C or SIGTERM stops every service gracefully;
/// if one dies, the others are stopped and the exit status is non-zero.
#[derive(Debug, Parser)]
#[command(name = "stack", version, after_help = AFTER_HELP)]
struct Cli {
    /// The routes file; its upstreams auth, tasks, orders and inventory say
    /// where each service is started (one process per server listed).
    #[arg(long, short = 'c', env = "STACK_ROUTES", default_value = "routes.yaml")]
    routes: PathBuf,
    /// Where the SQLite databases and the development signing secret live.
    #[arg(long, env = "STACK_DATA_DIR", default_value = "data")]
    data_dir: PathBuf,
    /// Run every service on PostgreSQL instead of SQLite, each in its own
    /// schema of this database.
    #[arg(long, env = "DATABASE_URL", value_name = "URL", hide_env_values = true)]
    postgres: Option<String>,
    /// PostgreSQL schemas are named PREFIX_auth, PREFIX_tasks, …
    #[arg(long, env = "STACK_SCHEMA_PREFIX", default_value = "portcullis")]
    schema_prefix: String,
    /// Where the service binaries are (default: beside this one).
    #[arg(long, env = "STACK_BIN_DIR")]
    bin_dir: Option<PathBuf>,
    /// The built browser client, served under /app/ when routes.yaml has a
    /// `web` upstream (`./run stack` builds it).
    #[arg(long, env = "STACK_WEB_DIR", default_value = "web/dist")]
    web_dir: PathBuf,
}

const AFTER_HELP: &str = "\
Exit status: 0 after a clean stop on a signal; 1 when a service died or
would not start; 2 when nothing was started (unreadable or invalid routes
file, missing binary, address in use).

JWT_SECRET_KEY signs tokens; when it is unset, a development secret is made
once and kept in DATA_DIR/jwt-secret.";

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let bin_dir = cli.bin_dir.unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("."))
    });
    stack::run(stack::Options {
        routes: cli.routes,
        data_dir: cli.data_dir,
        postgres: cli.postgres,
        schema_prefix: cli.schema_prefix,
        bin_dir,
        web_dir: cli.web_dir,
    })
    .await
}
