//! Assembling the process: Pingora's server, the proxy and metrics
//! listeners, and the control service that reloads `routes.yaml`.

use super::admin::Admin;
use super::generation::{Gateway, Generation, ReloadError};
use super::proxy::Proxy;
use crate::config::{Config, ConfigErrors};
use crate::metrics;
use crate::settings::{Start, StartError};
use async_trait::async_trait;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::{BackgroundService, background_service};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// What `main` hands over: the routes file with the environment and flags
/// layered over it, and what came from outside the file.
pub struct Launch {
    pub config: Config,
    pub config_path: PathBuf,
    /// The admin listener's token, when it is to be served.
    pub admin_token: Option<String>,
    /// The signing secret for `auth.mode: local`.
    pub secret: Option<String>,
    /// Take the listeners over from a running gateway (zero-downtime upgrade).
    pub upgrade: bool,
    /// Reload when the routes file changes, as on SIGHUP.
    pub watch: bool,
    /// Follow revocations on this Redis channel.
    pub revocations: Option<crate::revocations::Subscription>,
}

/// Installs the SIGHUP handler. Must run first thing: until a handler is
/// installed, SIGHUP's default action kills the process.
pub fn hangups() -> std::io::Result<mpsc::UnboundedReceiver<()>> {
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP])?;
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("sighup".into())
        .spawn(move || {
            for _ in signals.forever() {
                if tx.send(()).is_err() {
                    break;
                }
            }
        })?;
    Ok(rx)
}

/// Binds `addr` for a moment to learn the port (when it is 0) and to fail
/// with one clear line if it is taken: Pingora only panics inside a worker.
fn reserve(addr: &str, what: &'static str) -> Result<String, StartError> {
    let failed = |e: std::io::Error| StartError::Listen {
        addr: addr.to_owned(),
        what,
        reason: e.to_string(),
    };
    let listener = std::net::TcpListener::bind(addr).map_err(failed)?;
    Ok(listener.local_addr().map_err(failed)?.to_string())
}

fn one_line(errors: &ConfigErrors) -> String {
    errors
        .0
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Loads the configuration, starts every service and serves until a signal
/// ends the process. Returns only on a start-up error.
pub fn run(options: Launch, hangups: mpsc::UnboundedReceiver<()>) -> Result<(), StartError> {
    let mut config = options.config;
    let admin_token = options.admin_token;
    if !options.upgrade {
        config.listen = reserve(&config.listen, "proxy")?;
        if let Some(metrics_listen) = &config.server.metrics_listen {
            config.server.metrics_listen = Some(reserve(metrics_listen, "metrics")?);
        }
        if let Some(admin_listen) = &config.server.admin_listen {
            config.server.admin_listen = Some(reserve(admin_listen, "admin")?);
        }
        if let Some(tls) = &mut config.tls {
            tls.listen = reserve(&tls.listen, "tls")?;
        }
    }
    let threads = config.server.threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let listen = config.listen.clone();
    let metrics_listen = config.server.metrics_listen.clone();
    let admin_listen = config.server.admin_listen.clone();
    let tls = config.tls.clone();
    let server_conf = ServerConf {
        threads,
        work_stealing: config.server.work_stealing,
        grace_period_seconds: Some(config.server.grace_period.0.as_secs()),
        graceful_shutdown_timeout_seconds: Some(config.server.grace_period.0.as_secs().max(1)),
        upstream_keepalive_pool_size: config.server.upstream_keepalive_pool,
        upgrade_sock: config.server.upgrade_sock.clone(),
        ..ServerConf::default()
    };

    let max_header_bytes = config.server.max_header_bytes.0;
    let keepalive_timeout = config
        .server
        .keepalive_timeout
        .0
        .max(Duration::from_secs(1));
    let max_connections = config
        .server
        .max_connections
        .unwrap_or_else(|| crate::connections::default_max(crate::connections::open_file_limit()));
    let max_per_ip = config.server.max_connections_per_ip;
    tracing::info!(max_connections, ?max_per_ip, "client connection bounds");
    let start = Start {
        secret: options.secret,
        revocable: options.revocations.is_some() || config.server.admin_listen.is_some(),
        ..Start::default()
    };
    if config.auth.mode == crate::config::AuthMode::Jwks && start.revocable {
        // Revocations made before this start are unknown until the list in
        // force is read from Redis (never, with the admin listener alone):
        // tokens issued before now are refused until then, and refreshed.
        start.revoked.unsynced(crate::auth::unix_now());
    }
    metrics::get()
        .revocation_configured
        .set(i64::from(options.revocations.is_some()));
    let generation = std::panic::catch_unwind(|| Generation::build(config, None, &start))
        .unwrap_or_else(|panic| Err(super::generation::panic_message(&*panic)))
        .map_err(StartError::Build)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StartError::Runtime(e.to_string()))?;
    runtime
        .block_on(generation.verifier.ready())
        .map_err(StartError::Build)?;
    // Pingora treats a server as healthy until checked: check before serving.
    runtime.block_on(generation.check_all());
    let routes = generation.routes.len();
    let gateway = Arc::new(Gateway::new(generation, options.config_path.clone(), start));

    let opt = Opt {
        upgrade: options.upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, server_conf);
    server.bootstrap();

    let mut app = pingora::proxy::http_proxy(
        &server.configuration,
        Proxy {
            gateway: Arc::clone(&gateway),
        },
    );
    // HTTP/2 has no request head to bound while reading: its header list
    // is bounded by the same setting (h2 answers 431 itself).
    let mut h2 = pingora::protocols::http::v2::server::default_h2_options();
    h2.max_header_list_size(u32::try_from(max_header_bytes).unwrap_or(u32::MAX));
    app.h2_options = Some(h2);
    // An idle HTTP/2 connection is closed like an idle HTTP/1 one.
    let mut server_options = pingora::apps::HttpServerOptions::default();
    server_options.h2_idle_timeout = Some(keepalive_timeout);
    app.server_options = Some(server_options);
    let mut proxy = pingora::services::listening::Service::new(
        "portcullis".to_string(),
        super::listeners::Limited {
            inner: Arc::new(app),
            limits: Arc::new(crate::connections::Limits::new(max_connections, max_per_ip)),
        },
    );
    // No read buffer of the transport's own: Pingora reads request heads
    // and bodies into buffers of its own, and a 64 KiB buffer per client
    // connection made 1 000 idle or slow clients cost 64 MB.
    use pingora::listeners::ListenerConfig;
    use pingora::protocols::l4::stream::L4BufferSettings;
    let buffers = L4BufferSettings::default().read(0);
    proxy.add_listener(ListenerConfig::tcp(&listen).l4_buffer(buffers));
    if let Some(tls) = &tls {
        let settings = super::handshake::settings(Arc::clone(&gateway), tls.http2)
            .map_err(StartError::Build)?;
        proxy.add_listener(
            ListenerConfig::tcp(&tls.listen)
                .tls(settings)
                .l4_buffer(buffers),
        );
    }
    server.add_service(proxy);

    if let Some(metrics_listen) = &metrics_listen {
        metrics::get();
        let mut service = pingora_prometheus::prometheus_http_service();
        service.add_tcp(metrics_listen);
        service.threads = Some(1);
        server.add_service(service);
    }

    if let (Some(admin_listen), Some(token)) = (&admin_listen, admin_token) {
        let mut service = pingora::services::listening::Service::new(
            "admin".to_string(),
            Admin {
                gateway: Arc::clone(&gateway),
                token,
            },
        );
        service.add_tcp(admin_listen);
        service.threads = Some(1);
        server.add_service(service);
    }

    let control = background_service(
        "control",
        Control {
            gateway: Arc::clone(&gateway),
            hangups: Mutex::new(Some(hangups)),
            watch: options.watch,
            revocations: options.revocations,
        },
    );
    server.add_service(control);

    println!("listening on {listen}");
    if let Some(tls) = &tls {
        println!("tls on {}", tls.listen);
    }
    if let Some(metrics_listen) = &metrics_listen {
        println!("metrics on {metrics_listen}");
    }
    if let Some(admin_listen) = &admin_listen {
        println!("admin on {admin_listen}");
    }
    tracing::info!(%listen, threads, routes, "gateway started");
    // The listeners are bound (or, on an upgrade, received) by now, so
    // connections queue from here on even before the first accept.
    crate::notify::ready();
    // `run` (not `run_forever`, which exits the process) returns once the
    // services have stopped, so that `main` can write the last log lines.
    server.run(pingora::server::RunArgs {
        shutdown_signal: Box::new(Signals),
    });
    // The spans of the last requests go out before the process ends.
    if let Some(tracer) = &gateway.current.load().tracer {
        tracer.shutdown();
    }
    Ok(())
}

/// Pingora's signals (SIGTERM drains, SIGQUIT hands the listeners over),
/// but a fast shutdown (SIGINT) ends the process at once, once the access
/// log is written. Pingora's own fast shutdown stops its per-thread
/// runtimes one after the other, without stopping the accept loops first;
/// an accept loop whose listener belonged to a runtime already stopped
/// then fails at once, again and again, and its thread never stops.
struct Signals;

#[async_trait::async_trait]
impl pingora::server::ShutdownSignalWatch for Signals {
    async fn recv(&self) -> pingora::server::ShutdownSignal {
        use pingora::server::{ShutdownSignal, UnixShutdownSignalWatch};
        match UnixShutdownSignalWatch.recv().await {
            ShutdownSignal::FastShutdown => {
                tracing::info!("SIGINT: stopping now");
                contract::telemetry::flush_access_log();
                std::process::exit(0)
            }
            other => other,
        }
    }
}

/// Reloads on SIGHUP (and on file changes with `--watch`), and runs the
/// health checks of the current generation.
struct Control {
    gateway: Arc<Gateway>,
    hangups: Mutex<Option<mpsc::UnboundedReceiver<()>>>,
    watch: bool,
    revocations: Option<crate::revocations::Subscription>,
}

/// What the watch compares: the text's fingerprint when the file reads,
/// else its size and modification time, so that a file turned unreadable,
/// oversized or not UTF-8 is still noticed (and its reload refused and
/// reported) once, not skipped in silence.
fn watched(path: &std::path::Path, read: &Result<String, ConfigErrors>) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    match read {
        Ok(source) => source.hash(&mut hasher),
        Err(_) => {
            let meta = std::fs::metadata(path).ok()?;
            (meta.len(), meta.modified().ok()).hash(&mut hasher);
        }
    }
    Some(hasher.finish())
}

impl Control {
    /// Reloads from `read`, the file's text as read once for this reload
    /// (and for the change it was noticed by).
    async fn reload(&self, trigger: &str, read: Result<String, ConfigErrors>) {
        use futures::FutureExt;
        // A panic while building a generation must not end this loop:
        // every later SIGHUP would then be ignored. It refuses this reload
        // like an invalid file, and the running routes stay.
        let outcome = match read {
            Ok(source) => std::panic::AssertUnwindSafe(self.gateway.reload(&source))
                .catch_unwind()
                .await
                .unwrap_or_else(|panic| {
                    Err(ReloadError::Build(super::generation::panic_message(
                        &*panic,
                    )))
                }),
            Err(errors) => Err(ReloadError::Invalid(errors)),
        };
        let (result, detail) = match outcome {
            Ok(routes) => {
                tracing::info!(trigger, routes, "routes reloaded");
                ("applied", format!("{routes} routes"))
            }
            Err(error) => {
                let detail = match &error {
                    ReloadError::Invalid(errors) => one_line(errors),
                    ReloadError::Build(message) => message.clone(),
                };
                tracing::error!(trigger, error = %detail, "reload refused; the current routes stay in force");
                // The page keeps a bounded part: a huge bad file lists
                // thousands of errors.
                ("rejected", crate::status::bounded(&detail, 4096))
            }
        };
        self.gateway.reloads.record(crate::status::Reload {
            at: crate::status::timestamp(crate::auth::unix_now()),
            trigger: trigger.to_owned(),
            result,
            detail,
        });
        // Counted after it is on the status page, so that whoever waits for
        // the count finds it there.
        metrics::get().reloads.with_label_values(&[result]).inc();
    }
}

#[async_trait]
impl BackgroundService for Control {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        self.gateway.current.load().start_checks();
        let followed = self.revocations.clone().map(|subscription| {
            let mut stop = shutdown.clone();
            let gateway = Arc::clone(&self.gateway);
            tokio::spawn(crate::revocations::follow(
                move || Arc::clone(&gateway.current.load().verifier),
                subscription,
                Box::pin(async move {
                    let _ = stop.changed().await;
                }),
            ))
        });
        let mut hangups = self.hangups.lock().ok().and_then(|mut h| h.take());
        let path = self.gateway.config_path.clone();
        let mut last = watched(&path, &Config::read(&path));
        let mut poll = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                Some(()) = async {
                    match hangups.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    let read = Config::read(&path);
                    last = watched(&path, &read);
                    self.reload("SIGHUP", read).await;
                }
                _ = poll.tick(), if self.watch => {
                    let read = Config::read(&path);
                    let now = watched(&path, &read);
                    if now.is_some() && now != last {
                        last = now;
                        self.reload("file change", read).await;
                    }
                }
            }
        }
        if let Some(task) = followed {
            task.abort();
        }
        self.gateway.current.load().retire();
    }
}
