use clap::Parser;
use gateway::config::Config;
use gateway::settings::{self, Overrides, StartError};
use std::path::PathBuf;
use std::process::ExitCode;

// The proxy allocates and frees small buffers on every request; mimalloc's
// per-thread free lists cut that cost well below glibc malloc's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Portcullis gateway: routes, authenticates and load-balances HTTP requests
/// as `routes.yaml` says.
#[derive(Debug, Parser)]
#[command(name = "gateway", version, after_help = AFTER_HELP)]
struct Cli {
    /// The routes file.
    #[arg(
        long,
        short = 'c',
        env = "GATEWAY_CONFIG",
        default_value = "routes.yaml"
    )]
    config: PathBuf,
    /// Check the routes file, print every problem found, and exit.
    #[arg(long)]
    check: bool,
    /// Listen here instead of the file's `listen` (port 0 picks a free port).
    #[arg(long, env = "GATEWAY_LISTEN")]
    listen: Option<String>,
    /// Serve metrics here instead of the file's `server.metrics_listen`.
    #[arg(long, env = "GATEWAY_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    /// Serve the admin listener (revocations without Redis) here instead of
    /// the file's `server.admin_listen`.
    #[arg(long, env = "GATEWAY_ADMIN_LISTEN")]
    admin_listen: Option<String>,
    /// Worker threads (default: the file's `server.threads`, else the number of cores).
    #[arg(long, env = "GATEWAY_THREADS")]
    threads: Option<usize>,
    /// Reload the routes file when it changes, as on SIGHUP.
    #[arg(long, env = "GATEWAY_WATCH")]
    watch: bool,
    /// Redis to follow revocations on (logout, disabled, deleted, role
    /// changed): the user's cached verdicts are dropped at once.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    redis_url: Option<String>,
    /// The revocation channel; the auth service publishes on the same.
    #[arg(
        long,
        env = "REVOCATION_CHANNEL",
        default_value = "portcullis:revocations"
    )]
    revocation_channel: String,
    /// Prefix of the shared rate-limit buckets' keys in Redis: gateways
    /// that share limits use the same one.
    #[arg(long, env = "RATE_LIMIT_NAMESPACE", default_value = "portcullis")]
    rate_limit_namespace: String,
    /// Take over the listeners of a running gateway, which must then be sent
    /// SIGQUIT within five seconds (zero-downtime upgrade).
    #[arg(long)]
    upgrade: bool,
}

const AFTER_HELP: &str = "\
Signals: SIGHUP reloads the routes file (an invalid file is refused and the
running routes stay); SIGTERM drains for server.grace_period and exits;
SIGQUIT hands the listeners to a process started with --upgrade.

Environment: JWT_SECRET_KEY is read when auth.mode is local;
GATEWAY_ADMIN_TOKEN (at least 32 characters) authenticates the admin listener.";

/// Access-log bytes that may wait for the writer (some 50 000 lines);
/// past that, lines are dropped and counted rather than slowing requests.
const ACCESS_LOG_BUFFER: usize = 16 * 1024 * 1024;
/// How long an access-log line may wait to be written when few come.
const ACCESS_LOG_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

fn main() -> ExitCode {
    // Before anything else: SIGHUP would otherwise kill the process.
    let hangups = match gateway::edge::server::hangups() {
        Ok(rx) => rx,
        Err(e) => {
            eprintln!("gateway: cannot install the SIGHUP handler: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cli = Cli::parse();
    // The access log (one line per request) is written off the request
    // path, in batches; the guard writes what is left on the way out.
    let _access_log = contract::telemetry::init_with_access_log(
        "access",
        ACCESS_LOG_BUFFER,
        ACCESS_LOG_INTERVAL,
        gateway::metrics::access_log_dropped,
    );
    contract::supervision::follow_parent();

    if cli.check {
        return match Config::load(&cli.config) {
            Ok(config) => {
                let problems = gateway::edge::tls::check_files(&config);
                if !problems.is_empty() {
                    for problem in &problems {
                        eprintln!("{}: {problem}", cli.config.display());
                    }
                    return ExitCode::FAILURE;
                }
                for warning in config.shadowing() {
                    eprintln!("{}: warning: {warning}", cli.config.display());
                }
                println!(
                    "{}: ok ({} routes, {} upstreams)",
                    cli.config.display(),
                    config.routes.len(),
                    config.upstreams.len()
                );
                ExitCode::SUCCESS
            }
            Err(errors) => {
                for error in &errors.0 {
                    eprintln!("{}: {error}", cli.config.display());
                }
                ExitCode::FAILURE
            }
        };
    }

    // Layered once: the file, then the environment and flags over it.
    let mut config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(errors) => return fail(&StartError::Config(errors)),
    };
    for warning in config.shadowing() {
        tracing::warn!(%warning, "route nested inside a route of the other access");
    }
    let overrides = Overrides {
        listen: cli.listen,
        metrics_listen: cli.metrics_listen,
        admin_listen: cli.admin_listen,
        threads: cli.threads,
    };
    let admin_token = std::env::var("GATEWAY_ADMIN_TOKEN").ok();
    let admin_token = match settings::layer(&mut config, overrides, admin_token) {
        Ok((token, notice)) => {
            if let Some(notice) = notice {
                tracing::warn!("{notice}");
            }
            token
        }
        Err(error) => return fail(&error),
    };
    let launch = gateway::edge::server::Launch {
        config,
        config_path: cli.config,
        admin_token,
        secret: std::env::var("JWT_SECRET_KEY").ok(),
        upgrade: cli.upgrade,
        watch: cli.watch,
        revocations: cli
            .redis_url
            .inspect(|redis_url| {
                if let Err(error) =
                    gateway::shared_limits::install(redis_url, &cli.rate_limit_namespace)
                {
                    eprintln!("gateway: {error}");
                }
            })
            .map(|redis_url| gateway::revocations::Subscription {
                redis_url,
                channel: cli.revocation_channel,
            }),
    };
    match gateway::edge::server::run(launch, hangups) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fail(&error),
    }
}

fn fail(error: &StartError) -> ExitCode {
    for line in error.to_string().lines() {
        eprintln!("gateway: {line}");
    }
    ExitCode::FAILURE
}
