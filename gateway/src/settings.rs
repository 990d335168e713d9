//! Settings layered once, in `main`: the routes file first, then the
//! environment, then flags (clap reads a flag, else its variable). What
//! comes from outside the file (the signing secret, the admin token) is
//! passed in here, never read deeper in the library.

use crate::config::{Config, ConfigErrors};
use crate::revocations::MIN_ADMIN_TOKEN_LEN;

/// What every generation is built with besides its file: settings from the
/// environment and flags, read once in `main`.
#[derive(Clone, Default)]
pub struct Start {
    /// The auth service's signing secret, for `auth.mode: local`.
    pub secret: Option<String>,
    /// Whether revocations can arrive (Redis or the admin listener).
    pub revocable: bool,
    /// The sessions and users revoked, kept across generations.
    pub revoked: std::sync::Arc<crate::auth::revoked::Revoked>,
}

/// Values from the environment or flags that replace the file's.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub metrics_listen: Option<String>,
    pub admin_listen: Option<String>,
    pub threads: Option<usize>,
}

/// Why the gateway cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(ConfigErrors),
    #[error(
        "server.admin_listen needs GATEWAY_ADMIN_TOKEN (at least {MIN_ADMIN_TOKEN_LEN} characters)"
    )]
    AdminToken,
    #[error("cannot listen on {addr} ({what}): {reason}")]
    Listen {
        addr: String,
        what: &'static str,
        reason: String,
    },
    #[error("{0}")]
    Build(String),
    #[error("cannot start a runtime: {0}")]
    Runtime(String),
}

/// The file's settings with the overrides applied, and the admin listener's
/// token when it is to be served. With an admin listener but no token at
/// all (a first run of the shipped file), the listener stays off and the
/// returned notice says so; a token too short to be one is an error.
pub fn layer(
    config: &mut Config,
    overrides: Overrides,
    admin_token: Option<String>,
) -> Result<(Option<String>, Option<String>), StartError> {
    if let Some(listen) = overrides.listen {
        config.listen = listen;
    }
    if let Some(metrics_listen) = overrides.metrics_listen {
        config.server.metrics_listen = Some(metrics_listen);
    }
    if let Some(admin_listen) = overrides.admin_listen {
        config.server.admin_listen = Some(admin_listen);
    }
    if let Some(threads) = overrides.threads {
        config.server.threads = Some(threads);
    }
    match (&config.server.admin_listen, admin_token) {
        (None, _) => Ok((None, None)),
        (Some(_), Some(token)) if token.len() >= MIN_ADMIN_TOKEN_LEN => Ok((Some(token), None)),
        (Some(admin), None) => {
            let notice = format!(
                "server.admin_listen ({admin}) is off: it needs GATEWAY_ADMIN_TOKEN (at least {MIN_ADMIN_TOKEN_LEN} characters); revocations arrive only through Redis, if followed"
            );
            config.server.admin_listen = None;
            Ok((None, Some(notice)))
        }
        (Some(_), Some(_)) => Err(StartError::AdminToken),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "server: { admin_listen: \"127.0.0.1:9090\" }\nauth: { verify_url: \"http://127.0.0.1:9/api/verify\" }\nupstreams:\n  a: { servers: [\"127.0.0.1:1\"] }\nroutes:\n  - { prefix: /, upstream: a, access: public }\n";

    #[test]
    fn the_admin_listener_needs_a_real_token() {
        let long = "t".repeat(MIN_ADMIN_TOKEN_LEN);
        let short = "t".repeat(MIN_ADMIN_TOKEN_LEN - 1);
        let mut config = Config::parse(FILE).expect("file");
        let (token, notice) =
            layer(&mut config, Overrides::default(), Some(long.clone())).expect("served");
        assert_eq!((token, notice), (Some(long), None));
        assert_eq!(
            config.server.admin_listen.as_deref(),
            Some("127.0.0.1:9090")
        );

        let mut config = Config::parse(FILE).expect("file");
        let (token, notice) = layer(&mut config, Overrides::default(), None).expect("starts");
        assert_eq!(token, None);
        assert!(notice.is_some_and(|n| n.contains("GATEWAY_ADMIN_TOKEN")));
        assert_eq!(config.server.admin_listen, None, "the listener stays off");

        let mut config = Config::parse(FILE).expect("file");
        assert!(matches!(
            layer(&mut config, Overrides::default(), Some(short)),
            Err(StartError::AdminToken)
        ));
    }

    #[test]
    fn flags_and_environment_replace_the_file() {
        let mut config = Config::parse(FILE).expect("file");
        let overrides = Overrides {
            listen: Some("127.0.0.1:0".into()),
            metrics_listen: Some("127.0.0.1:1".into()),
            admin_listen: None,
            threads: Some(3),
        };
        let (token, _) = layer(&mut config, overrides, None).expect("starts");
        assert_eq!(token, None);
        assert_eq!(config.listen, "127.0.0.1:0");
        assert_eq!(config.server.metrics_listen.as_deref(), Some("127.0.0.1:1"));
        assert_eq!(config.server.threads, Some(3));
    }
}
