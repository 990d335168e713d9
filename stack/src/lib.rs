//! The whole Portcullis stack as one command.
//!
//! `stack` reads `routes.yaml`, starts the auth service and the backends
//! where its upstreams say they listen, waits for every `/healthz`, then
//! starts the gateway on that same file. [`plan`] decides what to start,
//! [`secret`] and [`databases`] what to give it, [`supervisor`] runs it.
//! Everything a newcomer could get wrong (a taken port, a missing binary, an
//! unreadable file) is checked before the first process starts and said in
//! one line.

pub mod databases;
pub mod plan;
pub mod secret;
pub mod supervisor;

use databases::Databases;
use gateway_config::Config;
use plan::{Kind, Plan, connect_address};
use secret::Secret;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use supervisor::{Console, Launch, Signals, Stop, Supervisor};

pub struct Options {
    pub routes: PathBuf,
    pub data_dir: PathBuf,
    pub postgres: Option<String>,
    pub schema_prefix: String,
    pub bin_dir: PathBuf,
    /// The built browser client the `web` service serves.
    pub web_dir: PathBuf,
}

/// Nothing was started: the set-up is wrong.
const EXIT_SETUP: u8 = 2;

/// Runs the stack until a signal or a child's death.
pub async fn run(options: Options) -> ExitCode {
    let prepared = match prepare(&options).await {
        Ok(prepared) => prepared,
        Err(problems) => {
            for problem in problems {
                eprintln!("stack: {problem}");
            }
            return ExitCode::from(EXIT_SETUP);
        }
    };
    supervise(&options, prepared).await
}

struct Prepared {
    config: Config,
    plan: Plan,
    secret: Secret,
    databases: Databases,
    /// Authenticates the auth service to the gateway's admin listener; new
    /// on every start, known to those two processes only.
    admin_token: String,
}

/// Every check that can fail before a process starts. Each problem is one
/// line; all of them are reported at once.
async fn prepare(options: &Options) -> Result<Prepared, Vec<String>> {
    let routes = options.routes.display();
    let source = std::fs::read_to_string(&options.routes)
        .map_err(|e| vec![format!("cannot read {routes}: {e}")])?;
    let config = Config::parse(&source).map_err(|errors| {
        errors
            .0
            .iter()
            .map(|error| format!("{routes}: {error}"))
            .collect::<Vec<_>>()
    })?;
    let plan = Plan::from_config(&config);

    if let Some(cargo) = started_by_cargo() {
        build_services(&cargo, &options.bin_dir, &plan.binaries()).map_err(|e| vec![e])?;
    }
    let mut problems = Vec::new();
    for binary in plan.binaries() {
        let path = options.bin_dir.join(binary);
        if !path.is_file() {
            problems.push(format!(
                "missing binary {}: `./run stack` builds every binary and runs the stack beside them",
                path.display()
            ));
        }
    }
    problems.extend(check_addresses(&plan));
    if !problems.is_empty() {
        return Err(problems);
    }

    let databases = match &options.postgres {
        Some(url) => Databases::postgres(url, &options.schema_prefix).map_err(|e| vec![e])?,
        None => Databases::sqlite(&options.data_dir),
    };
    databases.prepare().await.map_err(|e| vec![e])?;
    let secret = Secret::resolve(std::env::var("JWT_SECRET_KEY").ok(), &options.data_dir)
        .map_err(|e| vec![e])?;
    let admin_token = secret::random_hex().map_err(|e| vec![e])?;
    Ok(Prepared {
        config,
        plan,
        secret,
        databases,
        admin_token,
    })
}

/// The cargo that ran this binary (`cargo run -p stack`), if one did.
fn started_by_cargo() -> Option<std::ffi::OsString> {
    let cargo = std::env::var_os("CARGO")?;
    (std::env::var("CARGO_PKG_NAME").ok()? == env!("CARGO_PKG_NAME")).then_some(cargo)
}

/// `cargo run -p stack` builds the stack alone; the services are built here,
/// in the same profile, so that the one command starts current binaries
/// (cargo makes this a no-op when they are up to date).
fn build_services(
    cargo: &std::ffi::OsStr,
    bin_dir: &std::path::Path,
    binaries: &[&str],
) -> Result<(), String> {
    let mut command = std::process::Command::new(cargo);
    command.arg("build");
    // The working directory may be outside the workspace (`cargo run
    // --manifest-path …`); the stack's own manifest finds it.
    if let Some(dir) = std::env::var_os("CARGO_MANIFEST_DIR") {
        command
            .arg("--manifest-path")
            .arg(std::path::Path::new(&dir).join("Cargo.toml"));
    }
    match bin_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => {}
        Some("release") => {
            command.arg("--release");
        }
        Some(profile) => {
            command.args(["--profile", profile]);
        }
    }
    for binary in binaries {
        command.args(["-p", binary]);
    }
    eprintln!("stack: building {} with cargo", binaries.join(", "));
    let status = command
        .status()
        .map_err(|e| format!("cannot run cargo to build the services: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("building the services failed ({status})"))
    }
}

/// Every address must be free and given to one process only.
fn check_addresses(plan: &Plan) -> Vec<String> {
    let mut problems = Vec::new();
    // Probes stay open until every address is checked, so that two
    // spellings of one port (0.0.0.0:9001 and 127.0.0.1:9001) collide.
    let mut probes = Vec::new();
    let addresses = plan.addresses();
    for (i, (address, who)) in addresses.iter().enumerate() {
        if let Some((_, first)) = addresses[..i].iter().find(|(a, _)| a == address) {
            problems.push(format!(
                "{address} is given to both {first} and {who} in the routes file"
            ));
            continue;
        }
        match std::net::TcpListener::bind(address.as_str()) {
            Ok(probe) => probes.push(probe),
            Err(e) => problems.push(if e.kind() == std::io::ErrorKind::AddrInUse {
                format!(
                    "{address} ({who}) is already in use: stop what holds it, or change the routes file"
                )
            } else {
                format!("cannot listen on {address} ({who}): {e}")
            }),
        }
    }
    problems
}

async fn supervise(options: &Options, prepared: Prepared) -> ExitCode {
    let plan = &prepared.plan;
    let mut names: Vec<&str> = plan.services.iter().map(|s| s.name.as_str()).collect();
    names.push("gateway");
    let console = Console::new(&names);
    let mut signals = match Signals::install() {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("stack: cannot install signal handlers: {e}");
            return ExitCode::from(EXIT_SETUP);
        }
    };
    console.say(&prepared.secret.describe());
    console.say(&prepared.databases.describe());
    for name in &plan.not_started {
        console.say(&format!(
            "upstream {name:?} is not one of the stack's services; start it yourself"
        ));
    }

    let mut supervisor = Supervisor::new(console.clone());
    let stop = start_and_watch(options, &prepared, &mut supervisor, &mut signals).await;
    let failed = match stop {
        Stop::Signal(name) => {
            console.say(&format!("{name} received: stopping every service"));
            false
        }
        Stop::Died(index, status) => {
            let why = supervisor.why(index, status);
            console.say(&format!("{why}; stopping the others"));
            true
        }
        Stop::Unhealthy(index, last) => {
            let why = supervisor.unhealthy(index, &last);
            console.say(&format!("{why}; stopping the others"));
            true
        }
        Stop::Failed(problem) => {
            console.say(&format!("{problem}; stopping the others"));
            true
        }
    };
    let clean = supervisor.stop_all(&mut signals).await;
    console.say("stopped");
    console.flush();
    if failed || !clean {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Starts the services, waits for them, starts the gateway, waits for it,
/// announces, and watches; returns why it stopped.
async fn start_and_watch(
    options: &Options,
    prepared: &Prepared,
    supervisor: &mut Supervisor,
    signals: &mut Signals,
) -> Stop {
    let Prepared {
        config,
        plan,
        secret,
        databases,
        admin_token,
    } = prepared;
    if let Err(problem) = start_services(options, plan, secret, admin_token, databases, supervisor)
    {
        return Stop::Failed(problem);
    }
    if let Err(stop) = supervisor.wait_healthy(signals).await {
        return stop;
    }
    let gateway = Launch {
        name: "gateway",
        binary: &options.bin_dir.join("gateway"),
        args: vec![
            "--config".into(),
            options.routes.display().to_string(),
            "--listen".into(),
            plan.gateway_listen.clone(),
        ],
        env: vec![
            ("JWT_SECRET_KEY", secret.value.clone()),
            ("GATEWAY_ADMIN_TOKEN", admin_token.clone()),
        ],
        // The stack checked these addresses and this file; the environment
        // must not move the gateway elsewhere behind its back.
        env_remove: &[
            "GATEWAY_CONFIG",
            "GATEWAY_LISTEN",
            "GATEWAY_METRICS_LISTEN",
            "GATEWAY_ADMIN_LISTEN",
        ],
        health_url: format!("http://{}/healthz", connect_address(&plan.gateway_listen)),
        grace: config.server.grace_period.0,
    };
    if let Err(problem) = supervisor.spawn(gateway) {
        return Stop::Failed(problem);
    }
    if let Err(stop) = supervisor.wait_healthy(signals).await {
        return stop;
    }
    announce(&supervisor.console, plan);
    supervisor.watch(signals).await
}

fn start_services(
    options: &Options,
    plan: &Plan,
    secret: &Secret,
    admin_token: &str,
    databases: &Databases,
    supervisor: &mut Supervisor,
) -> Result<(), String> {
    for service in &plan.services {
        let mut args = vec!["--listen".to_owned(), service.listen.clone()];
        let mut env = Vec::new();
        if service.kind.has_database() {
            env.push(("DATABASE_URL", databases.url(service.kind)));
        }
        if let Some((endpoint, ratio)) = &plan.traces {
            env.push(("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.clone()));
            env.push(("OTEL_TRACES_SAMPLER_ARG", ratio.clone()));
        }
        match service.kind {
            Kind::Auth => {
                env.push(("JWT_SECRET_KEY", secret.value.clone()));
                if plan.hs256 {
                    args.extend(["--signing-algorithm".to_owned(), "HS256".to_owned()]);
                }
                // Revocations go straight to the gateway's admin listener,
                // so a logout or a disabled user is refused at once.
                if let Some(admin) = &plan.admin_listen {
                    env.push(("GATEWAY_ADMIN_TOKEN", admin_token.to_owned()));
                    env.push((
                        "AUTH_REVOCATION_WEBHOOKS",
                        format!("http://{}/revocations", connect_address(admin)),
                    ));
                }
            }
            Kind::Orders | Kind::Tasks => {
                if let (Kind::Orders, Some(url)) = (service.kind, &plan.inventory_url) {
                    args.extend(["--inventory-url".to_owned(), url.clone()]);
                }
                // Live events go straight to the notifications service; a
                // REDIS_URL in the environment takes precedence.
                if let Some(url) = &plan.notifications_url {
                    env.push(("NOTIFICATIONS_URL", url.clone()));
                }
            }
            Kind::Web => {
                args.extend(["--dir".to_owned(), options.web_dir.display().to_string()]);
            }
            Kind::Inventory | Kind::Notifications => {}
        }
        supervisor.spawn(Launch {
            name: &service.name,
            binary: &options.bin_dir.join(service.kind.binary()),
            args,
            env,
            // Only the auth service (and the gateway) may hold the secret.
            env_remove: if service.kind == Kind::Auth {
                &[]
            } else {
                &["JWT_SECRET_KEY", "GATEWAY_ADMIN_TOKEN"]
            },
            health_url: format!("http://{}/healthz", connect_address(&service.listen)),
            grace: Duration::ZERO,
        })?;
    }
    Ok(())
}

/// The ready message: where the gateway is, and three commands to paste.
fn announce(console: &Console, plan: &Plan) {
    let base = format!("http://{}", connect_address(&plan.gateway_listen));
    let metrics = plan
        .metrics_listen
        .as_deref()
        .map(|m| format!(", metrics on http://{}/metrics", connect_address(m)))
        .unwrap_or_default();
    console.say(&format!("ready: the gateway is on {base}{metrics}"));
    console.say("try (register, log in, then a protected call):");
    let credentials = r#"-H 'content-type: application/json' -d '{"email":"alice@example.com","password":"correct horse battery"}'"#;
    console.plain("");
    console.plain(&format!(
        "curl -s {base}/api/auth/register {credentials}; echo"
    ));
    console.plain(&format!(
        r#"ACCESS=$(curl -s {base}/api/auth/login {credentials} | sed -E 's/.*"access":"([^"]+)".*/\1/')"#
    ));
    console.plain(&format!(
        r#"curl -s {base}/api/tasks -H "authorization: Bearer $ACCESS" -H 'content-type: application/json' -d '{{"title":"try Portcullis"}}'; echo"#
    ));
    console.plain("");
    if plan.services.iter().any(|s| s.kind == Kind::Web) {
        console.say(&format!("the web page: {base}/app/"));
    }
    console.say("Ctrl-C stops every service");
}
