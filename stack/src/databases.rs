//! The database each service is given.
//!
//! SQLite (the default): one file per service under the data directory;
//! replicas of a service share its file. PostgreSQL: one schema per service
//! in the given database, because every service keeps its own migration
//! history and their version numbers would collide in one schema.

use crate::plan::Kind;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub enum Databases {
    Sqlite { dir: PathBuf },
    Postgres { url: String, schema_prefix: String },
}

impl Databases {
    pub fn sqlite(dir: &Path) -> Databases {
        Databases::Sqlite {
            dir: dir.to_path_buf(),
        }
    }

    /// PostgreSQL at `url`, schemas named `{schema_prefix}_{service}`.
    pub fn postgres(url: &str, schema_prefix: &str) -> Result<Databases, String> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(
                "--postgres (or DATABASE_URL, which it reads) wants a postgres:// URL; \
                 unset DATABASE_URL to run the stack on SQLite"
                    .into(),
            );
        }
        if url.contains("options=") {
            return Err(
                "the PostgreSQL URL must not set options=: the stack sets each service's search_path"
                    .into(),
            );
        }
        let valid = schema_prefix.len() <= 40
            && schema_prefix.starts_with(|c: char| c.is_ascii_lowercase())
            && schema_prefix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid {
            return Err(format!(
                "schema prefix {schema_prefix:?} must be 1-40 of a-z, 0-9 and _, starting with a letter"
            ));
        }
        Ok(Databases::Postgres {
            url: url.to_owned(),
            schema_prefix: schema_prefix.to_owned(),
        })
    }

    pub fn schema(&self, kind: Kind) -> Option<String> {
        match self {
            Databases::Sqlite { .. } => None,
            Databases::Postgres { schema_prefix, .. } => {
                Some(format!("{schema_prefix}_{}", kind.upstream()))
            }
        }
    }

    /// The `DATABASE_URL` for a service of this kind.
    pub fn url(&self, kind: Kind) -> String {
        match self {
            Databases::Sqlite { dir } => {
                format!(
                    "sqlite://{}",
                    dir.join(format!("{}.db", kind.upstream())).display()
                )
            }
            Databases::Postgres { url, .. } => {
                let schema = self.schema(kind).unwrap_or_default();
                let separator = if url.contains('?') { '&' } else { '?' };
                format!("{url}{separator}options=-c%20search_path%3D{schema}")
            }
        }
    }

    /// One line for the user; a PostgreSQL password is never shown.
    pub fn describe(&self) -> String {
        match self {
            Databases::Sqlite { dir } => format!("databases: SQLite files under {}", dir.display()),
            Databases::Postgres { url, schema_prefix } => format!(
                "databases: PostgreSQL at {}, schemas {schema_prefix}_*",
                without_credentials(url)
            ),
        }
    }

    /// Makes the SQLite directory, or the PostgreSQL schemas.
    pub async fn prepare(&self) -> Result<(), String> {
        match self {
            Databases::Sqlite { dir } => std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display())),
            Databases::Postgres { url, .. } => {
                use sqlx::Connection;
                let mut conn = sqlx::PgConnection::connect(url).await.map_err(|e| {
                    format!(
                        "cannot reach PostgreSQL at {}: {e}",
                        without_credentials(url)
                    )
                })?;
                for kind in Kind::ALL.into_iter().filter(|k| k.has_database()) {
                    let schema = self.schema(kind).unwrap_or_default();
                    sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
                        .execute(&mut conn)
                        .await
                        .map_err(|e| format!("cannot create schema {schema}: {e}"))?;
                }
                let _ = conn.close().await;
                Ok(())
            }
        }
    }
}

/// `postgres://user:secret@host:5432/db?password=x` → `postgres://host:5432/db`:
/// no user information and no parameters, which may carry passwords.
fn without_credentials(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(unparsable URL)".into();
    };
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    format!("{scheme}://{host}/{path}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_gives_each_service_its_file() {
        let dbs = Databases::sqlite(Path::new("data"));
        assert_eq!(dbs.url(Kind::Auth), "sqlite://data/auth.db");
        assert_eq!(dbs.url(Kind::Orders), "sqlite://data/orders.db");
    }

    #[test]
    fn postgres_gives_each_service_its_schema() {
        let dbs = Databases::postgres("postgres://u:pw@db:5432/app?sslmode=disable", "portcullis")
            .expect("valid");
        assert_eq!(
            dbs.url(Kind::Tasks),
            "postgres://u:pw@db:5432/app?sslmode=disable&options=-c%20search_path%3Dportcullis_tasks"
        );
        let plain = Databases::postgres("postgres://db/app", "p1").expect("valid");
        assert_eq!(
            plain.url(Kind::Auth),
            "postgres://db/app?options=-c%20search_path%3Dp1_auth"
        );
        assert!(!dbs.describe().contains("pw"), "{}", dbs.describe());
        for (url, shown) in [
            (
                "postgres://u:pw@db:5432/app?sslmode=disable",
                "postgres://db:5432/app",
            ),
            ("postgres://db/app?password=pw", "postgres://db/app"),
            ("postgres://u:p@w@db/app", "postgres://db/app"),
            ("postgresql://localhost", "postgresql://localhost/"),
        ] {
            assert_eq!(without_credentials(url), shown, "{url}");
        }
    }

    #[test]
    fn bad_postgres_settings_are_refused() {
        for (url, prefix) in [
            ("mysql://db/app", "portcullis"),
            ("postgres://db/app?options=-c%20x", "portcullis"),
            ("postgres://db/app", "Bad"),
            ("postgres://db/app", "x; drop"),
            ("postgres://db/app", ""),
        ] {
            assert!(Databases::postgres(url, prefix).is_err(), "{url} {prefix}");
        }
    }
}
