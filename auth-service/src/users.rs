//! The users table. Every statement is written once and runs on both
//! engines through `with_db!`.

use serde::Serialize;
use service_kit::{Db, with_db};
use time::OffsetDateTime;

pub const ROLES: [&str; 2] = ["user", "admin"];

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct User {
    pub id: i64,
    pub email: String,
    pub password_hash: String,
    pub role: String,
    pub active: bool,
    pub created_at: OffsetDateTime,
    pub token_version: i64,
}

/// What verification needs to know about an active user.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Standing {
    pub role: String,
    pub token_version: i64,
}

/// A user as clients see it: never the password hash.
#[derive(Debug, Clone, Serialize)]
pub struct PublicUser {
    pub user_id: i64,
    pub email: String,
    pub role: String,
    pub active: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl From<User> for PublicUser {
    fn from(user: User) -> Self {
        Self {
            user_id: user.id,
            email: user.email,
            role: user.role,
            active: user.active,
            created_at: user.created_at,
        }
    }
}

const COLUMNS: &str = "id, email, password_hash, role, active, created_at, token_version";

/// Normalises an email for storage and lookup: trimmed and lower-cased, so
/// that `Alice@Example.com ` and `alice@example.com` are one account.
pub fn normalize_email(raw: &str) -> String {
    raw.trim().to_lowercase()
}

/// A deliberately simple syntax check: one `@`, a non-empty local part, a
/// dotted domain, no whitespace or control characters, at most 254 bytes.
/// Deliverability is the mail server's business.
pub fn is_valid_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    email.len() <= 254
        && !local.is_empty()
        && local.len() <= 64
        && !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..")
        && email.chars().all(|c| !c.is_whitespace() && !c.is_control())
}

pub async fn insert(
    db: &Db,
    email: &str,
    password_hash: &str,
    role: &str,
) -> Result<User, sqlx::Error> {
    let sql = format!(
        "INSERT INTO users (email, password_hash, role, active, created_at) \
         VALUES ($1, $2, $3, TRUE, $4) RETURNING {COLUMNS}"
    );
    with_db!(db, pool => sqlx::query_as::<_, User>(&sql)
        .bind(email)
        .bind(password_hash)
        .bind(role)
        .bind(crate::now_timestamp())
        .fetch_one(pool)
        .await)
}

pub async fn by_email(db: &Db, email: &str) -> Result<Option<User>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM users WHERE email = $1");
    with_db!(db, pool => sqlx::query_as::<_, User>(&sql).bind(email).fetch_optional(pool).await)
}

pub async fn by_id(db: &Db, id: i64) -> Result<Option<User>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM users WHERE id = $1");
    with_db!(db, pool => sqlx::query_as::<_, User>(&sql).bind(id).fetch_optional(pool).await)
}

/// The role and token version of an active user, or `None` when the user
/// is gone or disabled. This is the per-request check behind
/// `/api/verify`: one primary-key read.
pub async fn standing(db: &Db, id: i64) -> Result<Option<Standing>, sqlx::Error> {
    const SQL: &str = "SELECT role, token_version FROM users WHERE id = $1 AND active = TRUE";
    with_db!(db, pool => sqlx::query_as::<_, Standing>(SQL).bind(id).fetch_optional(pool).await)
}

/// [`standing`], and only while the session `family_id` of this user is
/// unrevoked: the check behind `/api/verify` for access tokens that name
/// their session. Still one indexed read.
pub async fn standing_in_session(
    db: &Db,
    id: i64,
    family_id: &str,
) -> Result<Option<Standing>, sqlx::Error> {
    const SQL: &str = "SELECT u.role, u.token_version FROM users u \
        JOIN token_families f ON f.user_id = u.id \
        WHERE u.id = $1 AND u.active = TRUE AND f.id = $2 AND f.revoked = FALSE";
    with_db!(db, pool => sqlx::query_as::<_, Standing>(SQL)
        .bind(id)
        .bind(family_id)
        .fetch_optional(pool)
        .await)
}

pub async fn list(db: &Db, limit: i64, offset: i64) -> Result<(Vec<User>, i64), sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM users ORDER BY id LIMIT $1 OFFSET $2");
    let users = with_db!(db, pool => sqlx::query_as::<_, User>(&sql)
        .bind(limit)
        .bind(offset)
        .fetch_all(pool)
        .await)?;
    let total = with_db!(db, pool => sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM users")
        .fetch_one(pool)
        .await)?;
    Ok((users, total))
}

/// Applies the given changes; `None` leaves a column as it is.
pub async fn update(
    db: &Db,
    id: i64,
    active: Option<bool>,
    role: Option<&str>,
) -> Result<Option<User>, sqlx::Error> {
    let sql = format!(
        "UPDATE users SET active = COALESCE($2, active), role = COALESCE($3, role) \
         WHERE id = $1 RETURNING {COLUMNS}"
    );
    with_db!(db, pool => sqlx::query_as::<_, User>(&sql)
        .bind(id)
        .bind(active)
        .bind(role)
        .fetch_optional(pool)
        .await)
}

/// Sets a password and the admin role, re-activating the account, and
/// invalidates every access token issued to it before: whoever held the
/// account until now must not inherit the new role.
pub async fn promote(db: &Db, id: i64, password_hash: &str) -> Result<Option<User>, sqlx::Error> {
    let sql = format!(
        "UPDATE users SET role = 'admin', active = TRUE, password_hash = $2, \
         token_version = token_version + 1 WHERE id = $1 RETURNING {COLUMNS}"
    );
    with_db!(db, pool => sqlx::query_as::<_, User>(&sql)
        .bind(id)
        .bind(password_hash)
        .fetch_optional(pool)
        .await)
}

/// Deletes a user; their token families and refresh tokens go with them.
pub async fn delete(db: &Db, id: i64) -> Result<bool, sqlx::Error> {
    with_db!(db, pool => sqlx::query("DELETE FROM users WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await
        .map(|r| r.rows_affected() > 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_rules() {
        let cases = [
            ("alice@example.com", true),
            ("a.b+tag@sub.example.co", true),
            ("alice@example", false),
            ("alice", false),
            ("@example.com", false),
            ("alice@@example.com", false),
            ("al ice@example.com", false),
            ("alice@.example.com", false),
            ("alice@example.com.", false),
            ("alice@exa..mple.com", false),
            ("alice@example.com\n", false),
            ("", false),
        ];
        for (email, valid) in cases {
            assert_eq!(is_valid_email(email), valid, "{email:?}");
        }
        let long_local = format!("{}@example.com", "a".repeat(65));
        assert!(!is_valid_email(&long_local));
    }

    #[test]
    fn normalisation_trims_and_lowercases() {
        assert_eq!(
            normalize_email("  Alice@Example.COM \t"),
            "alice@example.com"
        );
    }
}
