//! The token signing secret for a development stack.
//!
//! A secret made afresh at every start would sign tokens that stop
//! verifying after each restart, and logged-in users would be logged out
//! for no reason they can see. So unless `JWT_SECRET_KEY` is set, the stack
//! keeps one in the data directory, readable by the owner only.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The file name inside the data directory.
pub const FILE: &str = "jwt-secret";
/// The auth service refuses shorter secrets.
const MIN_BYTES: usize = 32;

/// Where the secret came from, for the line the stack prints.
#[derive(Debug, PartialEq, Eq)]
pub enum Source {
    Environment,
    Kept(PathBuf),
    Made(PathBuf),
}

#[derive(Debug)]
pub struct Secret {
    pub value: String,
    pub source: Source,
}

impl Secret {
    /// The secret from `JWT_SECRET_KEY` (`from_env`), else the one kept in
    /// `data_dir`, else a new one written there.
    pub fn resolve(from_env: Option<String>, data_dir: &Path) -> Result<Secret, String> {
        if let Some(value) = from_env.filter(|v| !v.is_empty()) {
            if value.len() < MIN_BYTES {
                return Err(format!(
                    "JWT_SECRET_KEY must be at least {MIN_BYTES} bytes (e.g. `openssl rand -hex 32`)"
                ));
            }
            return Ok(Secret {
                value,
                source: Source::Environment,
            });
        }
        let path = data_dir.join(FILE);
        match std::fs::read_to_string(&path) {
            Ok(kept) => {
                let value = kept.trim().to_owned();
                if value.len() < MIN_BYTES {
                    return Err(format!(
                        "{} holds fewer than {MIN_BYTES} bytes; delete it and a new secret will be made",
                        path.display()
                    ));
                }
                Ok(Secret {
                    value,
                    source: Source::Kept(path),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let value = random_hex()?;
                std::fs::create_dir_all(data_dir)
                    .map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
                let mut file = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)
                    .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
                file.write_all(format!("{value}\n").as_bytes())
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                Ok(Secret {
                    value,
                    source: Source::Made(path),
                })
            }
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    /// The line that tells the user which secret signs their tokens. It
    /// never contains the secret.
    pub fn describe(&self) -> String {
        match &self.source {
            Source::Environment => "signing tokens with JWT_SECRET_KEY from the environment".into(),
            Source::Kept(path) => format!(
                "JWT_SECRET_KEY is unset: signing tokens with the development secret kept in {} \
                 (set JWT_SECRET_KEY for anything real)",
                path.display()
            ),
            Source::Made(path) => format!(
                "JWT_SECRET_KEY is unset: made a development secret and kept it in {} \
                 (set JWT_SECRET_KEY for anything real)",
                path.display()
            ),
        }
    }
}

/// 64 hex characters of fresh randomness.
pub fn random_hex() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness for a secret: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_secret_is_made_once_then_kept() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let data = dir.path().join("data");
        let made = Secret::resolve(None, &data).expect("made");
        assert_eq!(made.source, Source::Made(data.join(FILE)));
        assert_eq!(made.value.len(), 64);
        let mode = std::fs::metadata(data.join(FILE))
            .expect("secret file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "only the owner may read the secret");

        let kept = Secret::resolve(None, &data).expect("kept");
        assert_eq!(kept.source, Source::Kept(data.join(FILE)));
        assert_eq!(kept.value, made.value);
        assert!(!kept.describe().contains(&kept.value));
    }

    #[test]
    fn the_environment_wins_and_is_not_written_down() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let secret = Secret::resolve(Some("x".repeat(40)), dir.path()).expect("from env");
        assert_eq!(secret.source, Source::Environment);
        assert!(!dir.path().join(FILE).exists());
        let short = Secret::resolve(Some("short".into()), dir.path()).expect_err("too short");
        assert!(short.contains("at least 32 bytes"), "{short}");
    }

    #[test]
    fn a_short_kept_secret_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().expect("temporary directory");
        std::fs::write(dir.path().join(FILE), "short\n").expect("write");
        let error = Secret::resolve(None, dir.path()).expect_err("too short");
        assert!(error.contains("delete it"), "{error}");
    }
}
