//! Portcullis auth service: accounts, passwords, tokens and verification.
//!
//! The gateway asks [`verify`] about every protected request it has not
//! cached; everything else here is the account lifecycle behind it. The
//! service is a library with a thin `main.rs`: [`build_state`] opens the
//! database and keys, [`app`] is the router, [`run`] serves it.

pub mod admin;
pub mod config;
pub mod create_admin;
pub mod error;
pub mod keyring;
pub mod keys;
pub mod login;
pub mod logout;
pub mod me;
pub mod passwords;
pub mod refresh;
pub mod register;
pub mod revocations;
pub mod sessions;
pub mod throttle;
pub mod tokens;
pub mod users;
pub mod verify;

use axum::Router;
use axum::routing::{get, patch, post};
use service_kit::Db;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;

pub static MIGRATIONS: service_kit::db::Migrations = service_kit::migrations!();

#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub keys: Arc<tokens::Keys>,
    pub passwords: passwords::Passwords,
    pub throttle: Arc<throttle::LoginThrottle>,
    pub revocations: revocations::Publisher,
    /// The JWKS's `Cache-Control: max-age`, in seconds.
    pub jwks_max_age: u64,
}

/// Opens (and migrates) the database.
pub async fn open_database(settings: &config::Settings) -> anyhow::Result<Db> {
    Ok(Db::open(
        &settings.database_url,
        settings.db_max_connections,
        &MIGRATIONS,
    )
    .await?)
}

/// Everything the handlers need, from settings and the HS256 secret (when
/// one is configured): the key ring is read (and its first key made) here.
pub async fn build_state(
    settings: &config::Settings,
    db: Db,
    secret: Option<&[u8]>,
) -> anyhow::Result<AppState> {
    let concurrency = settings
        .hash_concurrency
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or_else(passwords::default_concurrency);
    if settings.signing_algorithm == tokens::Signer::Secret && secret.is_none() {
        anyhow::bail!("--signing-algorithm HS256 needs JWT_SECRET_KEY");
    }
    let keys = tokens::Keys::new(
        settings.signing_algorithm,
        secret,
        keyring::Ring::from_rows(&[], keyring::Retention::both(0)).map_err(anyhow::Error::msg)?,
        settings.names(),
        settings.access_ttl,
        settings.refresh_ttl,
    );
    keys::sync(&db, &keys)
        .await
        .map_err(|e| anyhow::anyhow!("cannot read the key ring: {e}"))?;
    Ok(AppState {
        db,
        keys: Arc::new(keys),
        passwords: passwords::Passwords::new(concurrency).await?,
        throttle: Arc::new(throttle::LoginThrottle::new(
            settings.login_max_failures,
            Duration::from_secs(settings.login_window),
        )),
        revocations: match &settings.redis_url {
            Some(url) => revocations::Publisher::redis(url, &settings.revocation_channel)
                .map_err(anyhow::Error::msg)?,
            None => revocations::Publisher::none(),
        }
        .with_webhooks(
            settings.revocation_webhooks.clone(),
            std::env::var("GATEWAY_ADMIN_TOKEN").unwrap_or_default(),
        )
        .map_err(anyhow::Error::msg)?
        .with_access_ttl(settings.access_ttl),
        jwks_max_age: settings.jwks_max_age,
    })
}

/// `GET /metrics`: how revocations were delivered, in Prometheus' format.
async fn metrics(
    axum::extract::State(state): axum::extract::State<AppState>,
) -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        state.revocations.render_metrics(),
    )
}

pub fn app(state: AppState) -> Router {
    let routes = Router::new()
        .route("/api/register", post(register::register))
        .route("/api/login", post(login::login))
        .route("/api/refresh", post(refresh::refresh))
        .route(
            "/api/verify",
            post(verify::verify).get(verify::forward_auth),
        )
        .route("/api/logout", post(logout::logout))
        .route("/api/me", get(me::me))
        .route("/api/admin/users", get(admin::list))
        .route(
            "/api/admin/users/{id}",
            patch(admin::update).delete(admin::delete),
        )
        .route("/.well-known/jwks.json", get(keys::jwks))
        .route("/healthz", get(service_kit::server::healthz::<AppState>))
        .route("/metrics", get(metrics))
        .with_state(state);
    service_kit::server::harden(routes)
}

/// Serves the auth service on `listener` until `shutdown` resolves.
/// Background tasks prune expired refresh tokens hourly and re-read the key
/// ring every few seconds.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let db = state.db.clone();
    let pruner = tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(3600));
        loop {
            every.tick().await;
            match sessions::prune_expired(&db).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, "pruned expired refresh tokens"),
                Err(e) => tracing::warn!(error = %e, "pruning expired refresh tokens failed"),
            }
        }
    });
    let ring = tokio::spawn(keys::follow(state.db.clone(), Arc::clone(&state.keys)));
    let served = service_kit::server::serve(listener, app(state), shutdown).await;
    pruner.abort();
    ring.abort();
    served
}

impl AsRef<Db> for AppState {
    fn as_ref(&self) -> &Db {
        &self.db
    }
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Now, truncated to whole seconds so that both engines store and return the
/// same value.
pub fn now_timestamp() -> time::OffsetDateTime {
    i64::try_from(now_unix())
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// `len` random bytes from the operating system, as hex.
pub fn random_hex(len: usize) -> String {
    let mut bytes = vec![0u8; len];
    // The OS random source failing is unrecoverable for a token issuer;
    // continuing with predictable identifiers would be worse than stopping.
    #[allow(clippy::expect_used)]
    getrandom::fill(&mut bytes).expect("the operating system's random source failed");
    hex(&bytes)
}
