//! argon2id password hashing, off the async worker threads.
//!
//! A hash takes tens of milliseconds of CPU. Running it on a blocking thread
//! behind a small semaphore keeps the async workers (and so `/api/verify`)
//! responsive while logins run, and bounds how many cores logins can take.

use crate::error::{Error, Result};
use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use std::sync::Arc;
use tokio::sync::Semaphore;

/// Passwords shorter than this are refused at registration.
pub const MIN_PASSWORD_BYTES: usize = 8;
/// Longer passwords are refused so that a request cannot buy unbounded CPU.
pub const MAX_PASSWORD_BYTES: usize = 1024;

#[derive(Clone)]
pub struct Passwords {
    permits: Arc<Semaphore>,
    /// A real hash of a random password, checked against when the email is
    /// unknown, so that an unknown email costs the same time as a wrong
    /// password.
    dummy_hash: Arc<str>,
}

/// The default number of concurrent hashes: all cores but one, so that token
/// verification always has a core.
pub fn default_concurrency() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get().saturating_sub(1))
        .unwrap_or(1)
        .max(1)
}

fn hash_blocking(password: &[u8]) -> Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password, &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| Error::Internal(format!("password hashing failed: {e}")))
}

fn verify_blocking(password: &[u8], hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| Argon2::default().verify_password(password, &parsed).is_ok())
        .unwrap_or(false)
}

impl Passwords {
    pub async fn new(concurrency: usize) -> Result<Self> {
        let dummy = crate::random_hex(16);
        let dummy_hash = tokio::task::spawn_blocking(move || hash_blocking(dummy.as_bytes()))
            .await
            .map_err(|e| Error::Internal(e.to_string()))??;
        Ok(Self {
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            dummy_hash: dummy_hash.into(),
        })
    }

    async fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| Error::Internal(e.to_string()))?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| Error::Internal(e.to_string()))
    }

    pub async fn hash(&self, password: String) -> Result<String> {
        self.run(move || hash_blocking(password.as_bytes())).await?
    }

    /// Checks `password` against `hash`, or against the dummy hash when the
    /// account does not exist (and then always answers false).
    pub async fn verify(&self, password: String, hash: Option<String>) -> Result<bool> {
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.dummy_hash.to_string());
        let matches = self
            .run(move || verify_blocking(password.as_bytes(), &hash))
            .await?;
        Ok(known && matches)
    }
}

/// Checks the length rules shared by registration and `create-admin`.
pub fn validate(password: &str) -> Result<()> {
    if password.len() < MIN_PASSWORD_BYTES {
        return Err(Error::Validation(format!(
            "password must be at least {MIN_PASSWORD_BYTES} bytes"
        )));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(Error::Validation(format!(
            "password must be at most {MAX_PASSWORD_BYTES} bytes"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_are_argon2id_and_verify() {
        let passwords = Passwords::new(1).await.expect("init");
        let hash = passwords.hash("correct horse".into()).await.expect("hash");
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(
            passwords
                .verify("correct horse".into(), Some(hash.clone()))
                .await
                .expect("verify")
        );
        assert!(
            !passwords
                .verify("wrong horse".into(), Some(hash))
                .await
                .expect("verify")
        );
        assert!(
            !passwords
                .verify("anything".into(), None)
                .await
                .expect("verify")
        );
    }

    #[test]
    fn length_rules() {
        assert!(validate("1234567").is_err());
        assert!(validate("12345678").is_ok());
        assert!(validate(&"x".repeat(1024)).is_ok());
        assert!(validate(&"x".repeat(1025)).is_err());
    }
}
