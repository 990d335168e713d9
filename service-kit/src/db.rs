//! One handle over SQLite (the embedded default) and PostgreSQL.
//!
//! Services write each statement once, in the SQL both engines accept
//! (`$1` placeholders, `TRUE`/`FALSE`, `RETURNING`), and run it through
//! [`with_db!`](crate::with_db), which expands the statement once per engine
//! so that each gets its native types instead of a lowest-common-denominator
//! driver.

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use std::str::FromStr;
use std::time::Duration;

#[derive(Debug, Clone)]
pub enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error(
        "unsupported database URL: expected sqlite:PATH or postgres://… (the URL is not repeated here because it may hold a password)"
    )]
    UnsupportedUrl,
    #[error("invalid database URL: {0}")]
    InvalidUrl(sqlx::Error),
    #[error("cannot create the directory for the SQLite file {path}: {source}")]
    CreateDir {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot connect to the {kind} database: {source}")]
    Connect {
        kind: &'static str,
        source: sqlx::Error,
    },
    #[error("cannot lock {path} to migrate the database: {source}")]
    Lock {
        path: String,
        source: std::io::Error,
    },
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Runs `$body` with `$pool` bound to the concrete pool of whichever engine
/// `$db` holds. The body is compiled once per engine.
///
/// ```ignore
/// let row = with_db!(&state.db, pool => sqlx::query_as::<_, Row>(SQL).bind(id).fetch_one(pool).await)?;
/// ```
#[macro_export]
macro_rules! with_db {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            $crate::db::Db::Sqlite($pool) => $body,
            $crate::db::Db::Postgres($pool) => $body,
        }
    };
}

/// The `Migrations` of the calling crate, embedded from its
/// `migrations/sqlite` and `migrations/postgres` directories.
#[macro_export]
macro_rules! migrations {
    () => {
        $crate::db::Migrations {
            sqlite: {
                static SQLITE: ::sqlx::migrate::Migrator = ::sqlx::migrate!("migrations/sqlite");
                &SQLITE
            },
            postgres: {
                static POSTGRES: ::sqlx::migrate::Migrator =
                    ::sqlx::migrate!("migrations/postgres");
                &POSTGRES
            },
        }
    };
}

/// Holds an exclusive `flock` on the directory of the SQLite file at `url`
/// until dropped; `None` for an in-memory database.
async fn lock_directory_of(url: &str) -> Result<Option<std::fs::File>, DbError> {
    if url.contains(":memory:") || url.contains("mode=memory") {
        return Ok(None);
    }
    let options = SqliteConnectOptions::from_str(url).map_err(DbError::InvalidUrl)?;
    let path = options.get_filename();
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let shown = dir.display().to_string();
    let locked = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dir)?;
        let handle = std::fs::File::open(&dir)?;
        handle.lock()?;
        Ok::<_, std::io::Error>(handle)
    })
    .await
    .map_err(|e| std::io::Error::other(e.to_string()))
    .and_then(|r| r)
    .map_err(|source| DbError::Lock {
        path: shown,
        source,
    })?;
    Ok(Some(locked))
}

/// A service's schema, once per engine (the same schema in two dialects).
pub struct Migrations {
    pub sqlite: &'static Migrator,
    pub postgres: &'static Migrator,
}

impl Db {
    /// Connects and applies the service's migrations.
    pub async fn open(
        url: &str,
        max_connections: u32,
        migrations: &Migrations,
    ) -> Result<Self, DbError> {
        // sqlx serialises concurrent migrators on PostgreSQL with an advisory
        // lock but not on SQLite, where two replicas starting together on a
        // new file would both create the tables and one would fail, and
        // where switching a new file to WAL is refused to a second process
        // doing the same ("database is locked"). An exclusive lock on the
        // file's directory, taken before connecting, does the serialising
        // there (a lock on the file itself could release SQLite's own locks,
        // which POSIX ties to the process, not to the descriptor).
        let _guard = if url.starts_with("sqlite:") {
            lock_directory_of(url).await?
        } else {
            None
        };
        let db = Db::connect(url, max_connections).await?;
        db.migrate(migrations.sqlite, migrations.postgres).await?;
        Ok(db)
    }

    /// Opens a pool for `url`, creating the SQLite file (and its directory)
    /// when it does not exist yet.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, DbError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let options = PgConnectOptions::from_str(url).map_err(DbError::InvalidUrl)?;
            let pool = PgPoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(Duration::from_secs(5))
                .connect_with(options)
                .await
                .map_err(|source| DbError::Connect {
                    kind: "PostgreSQL",
                    source,
                })?;
            Ok(Db::Postgres(pool))
        } else if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)
                .map_err(DbError::InvalidUrl)?
                .create_if_missing(true)
                // WAL lets readers proceed while one writer commits; the busy
                // timeout makes concurrent writers queue instead of failing.
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true);
            let path = options.get_filename();
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|source| DbError::CreateDir {
                    path: path.display().to_string(),
                    source,
                })?;
            }
            let pool = SqlitePoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(Duration::from_secs(5))
                .connect_with(options)
                .await
                .map_err(|source| DbError::Connect {
                    kind: "SQLite",
                    source,
                })?;
            Ok(Db::Sqlite(pool))
        } else {
            Err(DbError::UnsupportedUrl)
        }
    }

    /// Applies the migrations for this engine. Both directories describe the
    /// same schema in each engine's dialect.
    pub async fn migrate(&self, sqlite: &Migrator, postgres: &Migrator) -> Result<(), DbError> {
        match self {
            Db::Sqlite(pool) => sqlite.run(pool).await?,
            Db::Postgres(pool) => postgres.run(pool).await?,
        }
        Ok(())
    }

    /// A round trip to the database, for health checks.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        with_db!(self, pool => sqlx::query("SELECT 1").execute(pool).await.map(drop))
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Db::Sqlite(_) => "sqlite",
            Db::Postgres(_) => "postgres",
        }
    }

    pub async fn close(&self) {
        with_db!(self, pool => pool.close().await);
    }
}

/// The answer for a database failure: 503 (with `Retry-After`) when the
/// database is out of reach or the pool exhausted, which a client can retry;
/// 500 for anything else, logged with its detail.
pub fn api_error(error: sqlx::Error) -> crate::ApiError {
    match error {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
            tracing::warn!(error = %error, "database unavailable");
            crate::ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the database is unavailable",
            )
            .with_retry_after(1)
        }
        other => crate::ApiError::internal(&other),
    }
}

/// Whether `error` is a unique-constraint violation, in either engine.
pub fn is_unique_violation(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .is_some_and(|e| e.is_unique_violation())
}
