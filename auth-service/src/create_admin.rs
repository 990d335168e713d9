//! `auth-service create-admin --email E`: bootstraps the first admin.

use crate::error::Error;
use crate::{passwords, users};
use anyhow::{Context, bail};
use service_kit::Db;

/// Creates an admin with `password`, or promotes, re-activates and sets the
/// password of an existing account. Returns a line for the operator.
pub async fn create_admin(db: &Db, email: &str, password: String) -> anyhow::Result<String> {
    let email = users::normalize_email(email);
    if !users::is_valid_email(&email) {
        bail!("{email:?} is not a valid email address");
    }
    passwords::validate(&password).map_err(|e| anyhow::anyhow!("{e}"))?;
    let hasher = passwords::Passwords::new(1)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let hash = hasher
        .hash(password)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let existing = users::by_email(db, &email)
        .await
        .context("looking up the user")?;
    Ok(match existing {
        Some(user) => {
            users::promote(db, user.id, &hash)
                .await
                .context("promoting the user")?
                .ok_or(Error::UserNotFound)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            // Whoever registered this account before may hold sessions;
            // none of them survives the promotion.
            crate::sessions::revoke_all(db, user.id)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            format!("promoted user {} ({email}) to admin", user.id)
        }
        None => {
            let user = users::insert(db, &email, &hash, "admin")
                .await
                .context("creating the user")?;
            format!("created admin user {} ({email})", user.id)
        }
    })
}

/// Reads the password from the first line of `input`, without its line ending.
pub fn read_password(mut input: impl std::io::BufRead) -> anyhow::Result<String> {
    let mut line = String::new();
    input
        .read_line(&mut line)
        .context("reading the password from standard input")?;
    let password = line.trim_end_matches(['\r', '\n']).to_owned();
    if password.is_empty() {
        bail!(
            "no password on standard input: pipe it in, e.g. `echo \"$PASSWORD\" | auth-service create-admin --email E`"
        );
    }
    Ok(password)
}
