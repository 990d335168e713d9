//! Refresh-token families: issuing, rotating and revoking sessions.
//!
//! A login starts a family. Each refresh marks the presented token used and
//! adds its successor to the same family, in one conditional `UPDATE`, so of
//! two concurrent refreshes with one token exactly one wins. A token that is
//! presented again after it was used is evidence that it leaked: the whole
//! family is revoked and the legitimate holder must sign in again.
//!
//! A token is only honoured while its family is unrevoked and its user is
//! active, so revoking a family or disabling a user also disarms any
//! successor written concurrently.

use crate::error::{Error, Result};
use crate::tokens::{Issued, Keys, TokenType};
use serde::Serialize;
use service_kit::{Db, with_db};
use sha2::{Digest, Sha256};

/// What register, login and refresh answer.
#[derive(Debug, Clone, Serialize)]
pub struct TokenPair {
    pub access: String,
    pub refresh: String,
    pub user_id: i64,
}

/// Only this digest of a refresh token's `jti` is stored, so a database
/// leak yields no usable token identifiers.
fn jti_hash(jti: &str) -> String {
    crate::hex(&Sha256::digest(jti.as_bytes()))
}

fn sign(
    keys: &Keys,
    user_id: i64,
    token_type: TokenType,
    role: Option<&str>,
    version: i64,
    session: Option<&str>,
) -> Result<Issued> {
    keys.issue(
        user_id,
        token_type,
        role,
        version,
        session,
        crate::now_unix(),
    )
    .map_err(|e| Error::Internal(format!("signing failed: {e}")))
}

const INSERT_REFRESH: &str =
    "INSERT INTO refresh_tokens (jti_hash, family_id, expires_at, used) VALUES ($1, $2, $3, FALSE)";

fn expiry(issued: &Issued) -> i64 {
    i64::try_from(issued.expires_at).unwrap_or(i64::MAX)
}

async fn store_refresh(db: &Db, family_id: &str, issued: &Issued) -> Result<()> {
    with_db!(db, pool => sqlx::query(INSERT_REFRESH)
        .bind(jti_hash(&issued.jti))
        .bind(family_id)
        .bind(expiry(issued))
        .execute(pool)
        .await
        .map(drop))?;
    Ok(())
}

fn pair(keys: &Keys, user: &Subject<'_>, family_id: &str, refresh: Issued) -> Result<TokenPair> {
    let user_id = user.id;
    let access = sign(
        keys,
        user_id,
        TokenType::Access,
        Some(user.role),
        user.token_version,
        Some(family_id),
    )?;
    Ok(TokenPair {
        access: access.token,
        refresh: refresh.token,
        user_id,
    })
}

/// Who a session is for.
pub struct Subject<'a> {
    pub id: i64,
    pub role: &'a str,
    pub token_version: i64,
}

impl<'a> From<&'a crate::users::User> for Subject<'a> {
    fn from(user: &'a crate::users::User) -> Self {
        Subject {
            id: user.id,
            role: &user.role,
            token_version: user.token_version,
        }
    }
}

/// Starts a new session for a user who just proved who they are. The family
/// and its first token are written in one transaction, so no reader (the
/// pruner included) ever sees a family without a token.
pub async fn start(db: &Db, keys: &Keys, user: Subject<'_>) -> Result<TokenPair> {
    let user_id = user.id;
    const FAMILY: &str =
        "INSERT INTO token_families (id, user_id, revoked, created_at) VALUES ($1, $2, FALSE, $3)";
    let family_id = crate::random_hex(16);
    let refresh = sign(keys, user_id, TokenType::Refresh, None, 0, None)?;
    with_db!(db, pool => async {
        let mut tx = pool.begin().await?;
        sqlx::query(FAMILY)
            .bind(&family_id)
            .bind(user_id)
            .bind(crate::now_timestamp())
            .execute(&mut *tx)
            .await?;
        sqlx::query(INSERT_REFRESH)
            .bind(jti_hash(&refresh.jti))
            .bind(&family_id)
            .bind(expiry(&refresh))
            .execute(&mut *tx)
            .await?;
        tx.commit().await
    }
    .await)?;
    pair(keys, &user, &family_id, refresh)
}

/// Exchanges a refresh token for a new pair, spending it.
pub async fn rotate(
    db: &Db,
    keys: &Keys,
    revocations: &crate::revocations::Publisher,
    refresh_token: &str,
) -> Result<TokenPair> {
    let verified = keys
        .decode(refresh_token, TokenType::Refresh)
        .map_err(|reason| {
            tracing::debug!(%reason, "refresh token refused");
            Error::InvalidToken
        })?;
    let user_id = verified.user_id;
    let hash = jti_hash(&verified.claims.jti);
    let now = i64::try_from(crate::now_unix()).unwrap_or(i64::MAX);

    const SPEND: &str = "UPDATE refresh_tokens SET used = TRUE \
        WHERE jti_hash = $1 AND used = FALSE AND expires_at > $2 AND EXISTS ( \
            SELECT 1 FROM token_families f JOIN users u ON u.id = f.user_id \
            WHERE f.id = refresh_tokens.family_id AND f.revoked = FALSE \
              AND u.active = TRUE AND u.id = $3) \
        RETURNING family_id";
    let spent = with_db!(db, pool => sqlx::query_scalar::<_, String>(SPEND)
        .bind(&hash)
        .bind(now)
        .bind(user_id)
        .fetch_optional(pool)
        .await)?;

    let Some(family_id) = spent else {
        const LOOKUP: &str =
            "SELECT family_id FROM refresh_tokens WHERE jti_hash = $1 AND used = TRUE";
        let reused = with_db!(db, pool => sqlx::query_scalar::<_, String>(LOOKUP)
            .bind(&hash)
            .fetch_optional(pool)
            .await)?;
        if let Some(family_id) = reused {
            tracing::warn!(
                user_id,
                "spent refresh token presented again; revoking its family"
            );
            // Announced once: replaying the same spent token again costs
            // no further wait.
            if revoke_family(db, &family_id).await? {
                revocations
                    .revoke(user_id, crate::revocations::Reason::Reuse, Some(&family_id))
                    .await;
            }
        }
        return Err(Error::InvalidToken);
    };

    let standing = crate::users::standing(db, user_id)
        .await?
        .ok_or(Error::InvalidToken)?;
    let refresh = sign(keys, user_id, TokenType::Refresh, None, 0, None)?;
    store_refresh(db, &family_id, &refresh).await?;
    let subject = Subject {
        id: user_id,
        role: &standing.role,
        token_version: standing.token_version,
    };
    pair(keys, &subject, &family_id, refresh)
}

/// Revokes a token family; whether it was live until now.
async fn revoke_family(db: &Db, family_id: &str) -> Result<bool> {
    let changed = with_db!(db, pool => sqlx::query(
        "UPDATE token_families SET revoked = TRUE WHERE id = $1 AND revoked = FALSE",
    )
    .bind(family_id)
    .execute(pool)
    .await
    .map(|done| done.rows_affected()))?;
    Ok(changed > 0)
}

/// Ends the session a refresh token belongs to and returns its user and
/// session. Answers `InvalidToken` when the token is not one this service
/// issued.
pub async fn revoke(db: &Db, keys: &Keys, refresh_token: &str) -> Result<(i64, String)> {
    let verified = keys
        .decode(refresh_token, TokenType::Refresh)
        .map_err(|_| Error::InvalidToken)?;
    const SQL: &str = "UPDATE token_families SET revoked = TRUE \
        WHERE id = (SELECT family_id FROM refresh_tokens WHERE jti_hash = $1) AND user_id = $2 \
        RETURNING id";
    let session: Option<(String,)> = with_db!(db, pool => sqlx::query_as(SQL)
        .bind(jti_hash(&verified.claims.jti))
        .bind(verified.user_id)
        .fetch_optional(pool)
        .await)?;
    let (session,) = session.ok_or(Error::InvalidToken)?;
    Ok((verified.user_id, session))
}

/// Ends every session of a user (disabled, demoted or deleted).
pub async fn revoke_all(db: &Db, user_id: i64) -> Result<()> {
    with_db!(db, pool => sqlx::query("UPDATE token_families SET revoked = TRUE WHERE user_id = $1")
        .bind(user_id)
        .execute(pool)
        .await
        .map(drop))?;
    Ok(())
}

/// Deletes refresh tokens past their expiry and families left empty, so the
/// tables do not grow with every login forever. Expired tokens are refused by
/// their `exp` claim before the database is consulted, so nothing is lost.
pub async fn prune_expired(db: &Db) -> Result<u64> {
    let now = i64::try_from(crate::now_unix()).unwrap_or(i64::MAX);
    let tokens = with_db!(db, pool => sqlx::query("DELETE FROM refresh_tokens WHERE expires_at <= $1")
        .bind(now)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))?;
    with_db!(db, pool => sqlx::query(
        "DELETE FROM token_families WHERE NOT EXISTS \
         (SELECT 1 FROM refresh_tokens t WHERE t.family_id = token_families.id)")
        .execute(pool)
        .await
        .map(drop))?;
    Ok(tokens)
}
