//! Command-line flags, environment fallbacks and the signing secret.

use crate::keyring::KeyAlgorithm;
use crate::tokens::{MIN_SECRET_LEN, Names, Signer};
use clap::{Args, Parser, Subcommand};

const AFTER_HELP: &str = "\
Environment only (never a flag, so it cannot leak through the process list):
  JWT_SECRET_KEY       HS256 secret, at least 32 bytes. Required with --signing-algorithm
                       HS256 (unless --dev); with a key ring, it still verifies the HS256
                       tokens issued before the switch.
  GATEWAY_ADMIN_TOKEN  Token for --revocation-webhook (the gateways' admin listener).

Every flag above also reads the environment variable shown in brackets.";

#[derive(Debug, Parser)]
#[command(name = "auth-service", version, about = "Portcullis auth service", after_help = AFTER_HELP)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub settings: Settings,
    #[command(flatten)]
    pub traces: service_kit::traces::TraceArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Creates an admin account, or promotes (and re-activates) an existing
    /// one. The password is read from the first line of standard input.
    CreateAdmin {
        #[arg(long)]
        email: String,
    },
    /// The key ring tokens are signed with.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysAction {
    /// Adds a signing key of --signing-algorithm. It is published in the
    /// JWKS at once and starts signing after --jwks-max-age (and the ring's
    /// reload interval), so that every gateway holds it first; the previous
    /// key keeps verifying until the longest token it signed has expired.
    Rotate {
        /// Sign with the new key at once (a key that leaked): tokens it
        /// signs reach gateways before their JWKS copy is refreshed, and are
        /// refused there until it is.
        #[arg(long)]
        now: bool,
    },
    /// Lists the keys with their state.
    List,
}

/// `--signing-algorithm`: a key-ring algorithm or HS256.
fn parse_signer(value: &str) -> Result<Signer, String> {
    match value.to_ascii_lowercase().as_str() {
        "eddsa" | "ed25519" => Ok(Signer::Ring(KeyAlgorithm::EdDSA)),
        "es256" => Ok(Signer::Ring(KeyAlgorithm::ES256)),
        "rs256" => Ok(Signer::Ring(KeyAlgorithm::RS256)),
        "hs256" => Ok(Signer::Secret),
        _ => Err("one of EdDSA, ES256, RS256, HS256".into()),
    }
}

#[derive(Debug, Clone, Args)]
pub struct Settings {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, env = "AUTH_LISTEN", default_value = "127.0.0.1:9001")]
    pub listen: String,

    /// sqlite:PATH (created on first run) or postgres://USER@HOST:PORT/DB.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://data/auth.db",
        hide_env_values = true
    )]
    pub database_url: String,

    /// Maximum database connections in the pool.
    #[arg(long, env = "AUTH_DB_MAX_CONNECTIONS", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub db_max_connections: u32,

    /// Generate a random signing secret when JWT_SECRET_KEY is unset. Tokens
    /// then stop verifying when the process restarts. Never use in production.
    #[arg(long)]
    pub dev: bool,

    /// Redis to publish revocations on (logout, disable, delete, role
    /// change, refresh-token reuse), so that gateways drop their cached
    /// verdicts at once. Unset: gateways keep them for their cache TTL.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// Also post revocations to these gateway admin listeners
    /// (`http://HOST:PORT/revocations`, comma-separated), authenticated with
    /// GATEWAY_ADMIN_TOKEN: instant revocation without Redis.
    #[arg(
        long = "revocation-webhook",
        env = "AUTH_REVOCATION_WEBHOOKS",
        value_delimiter = ','
    )]
    pub revocation_webhooks: Vec<String>,

    /// The pub/sub channel for revocations; gateways subscribe to the same.
    #[arg(
        long,
        env = "REVOCATION_CHANNEL",
        default_value = "portcullis:revocations"
    )]
    pub revocation_channel: String,

    /// How tokens are signed: EdDSA (Ed25519), ES256 or RS256 with the key
    /// ring (published at /.well-known/jwks.json), or HS256 with
    /// JWT_SECRET_KEY (which every verifier must then hold).
    #[arg(long, env = "JWT_ALGORITHM", default_value = "EdDSA", value_parser = parse_signer)]
    pub signing_algorithm: Signer,

    /// The `iss` of every token.
    #[arg(long = "jwt-issuer", env = "JWT_ISSUER", default_value = "portcullis")]
    pub issuer: String,

    /// The `aud` of every token.
    #[arg(
        long = "jwt-audience",
        env = "JWT_AUDIENCE",
        default_value = "portcullis"
    )]
    pub audience: String,

    /// The JWKS's `Cache-Control: max-age`, in seconds; also how long a
    /// rotated key is published before it signs.
    #[arg(long, env = "JWKS_MAX_AGE", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub jwks_max_age: u64,

    /// Lifetime of access tokens, in seconds.
    #[arg(long, env = "JWT_ACCESS_TTL", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    pub access_ttl: u64,

    /// Lifetime of refresh tokens, in seconds.
    #[arg(long, env = "JWT_REFRESH_TTL", default_value_t = 7 * 86400, value_parser = clap::value_parser!(u64).range(1..))]
    pub refresh_ttl: u64,

    /// Failed logins for one email, within the window, before 429.
    #[arg(long, env = "AUTH_LOGIN_MAX_FAILURES", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub login_max_failures: u32,

    /// The login throttling window, in seconds.
    #[arg(long, env = "AUTH_LOGIN_WINDOW", default_value_t = 900, value_parser = clap::value_parser!(u64).range(1..))]
    pub login_window: u64,

    /// Password hashes computed at once (default: cores - 1, at least 1).
    #[arg(long, env = "AUTH_HASH_CONCURRENCY", value_parser = clap::value_parser!(u64).range(1..))]
    pub hash_concurrency: Option<u64>,
}

impl Settings {
    pub fn names(&self) -> Names {
        Names {
            issuer: self.issuer.clone(),
            audience: self.audience.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error(
        "JWT_SECRET_KEY is not set and --signing-algorithm is HS256: set it to a random string \
         of at least {MIN_SECRET_LEN} bytes (for example `openssl rand -hex 32`), pass --dev to \
         use a throw-away secret, or sign with a key ring (--signing-algorithm EdDSA)"
    )]
    Missing,
    #[error(
        "JWT_SECRET_KEY is {0} bytes long; at least {MIN_SECRET_LEN} are required \
         (for example `openssl rand -hex 32`)"
    )]
    TooShort(usize),
}

/// Where the signing secret came from.
#[derive(Debug, PartialEq, Eq)]
pub enum Secret {
    FromEnvironment(Vec<u8>),
    Generated(Vec<u8>),
}

impl Secret {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Secret::FromEnvironment(bytes) | Secret::Generated(bytes) => bytes,
        }
    }
}

/// Resolves the HS256 secret from `JWT_SECRET_KEY`'s value: required when
/// it signs (`required`), else optional (it then verifies older tokens).
pub fn resolve_secret(
    value: Option<String>,
    dev: bool,
    required: bool,
) -> Result<Option<Secret>, SecretError> {
    match value.filter(|v| !v.is_empty()) {
        Some(value) if value.len() >= MIN_SECRET_LEN => {
            Ok(Some(Secret::FromEnvironment(value.into_bytes())))
        }
        Some(value) => Err(SecretError::TooShort(value.len())),
        None if !required => Ok(None),
        None if dev => Ok(Some(Secret::Generated(crate::random_hex(32).into_bytes()))),
        None => Err(SecretError::Missing),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_rules() {
        assert_eq!(resolve_secret(None, false, true), Err(SecretError::Missing));
        assert_eq!(
            resolve_secret(Some(String::new()), false, true),
            Err(SecretError::Missing)
        );
        assert_eq!(resolve_secret(None, false, false), Ok(None));
        assert_eq!(
            resolve_secret(Some("short".into()), true, true),
            Err(SecretError::TooShort(5))
        );
        assert_eq!(
            resolve_secret(Some("short".into()), false, false),
            Err(SecretError::TooShort(5)),
            "a secret that is set must be usable even when nothing signs with it"
        );
        let long = "k".repeat(32);
        assert_eq!(
            resolve_secret(Some(long.clone()), false, false),
            Ok(Some(Secret::FromEnvironment(long.into_bytes())))
        );
        let Ok(Some(Secret::Generated(generated))) = resolve_secret(None, true, true) else {
            panic!("--dev generates a secret");
        };
        assert!(generated.len() >= MIN_SECRET_LEN);
    }

    #[test]
    fn signing_algorithms() {
        assert_eq!(parse_signer("EdDSA"), Ok(Signer::Ring(KeyAlgorithm::EdDSA)));
        assert_eq!(parse_signer("rs256"), Ok(Signer::Ring(KeyAlgorithm::RS256)));
        assert_eq!(parse_signer("HS256"), Ok(Signer::Secret));
        assert!(parse_signer("none").is_err());
        assert!(parse_signer("HS512").is_err());
        let cli = Cli::parse_from(["auth-service"]);
        assert_eq!(
            cli.settings.signing_algorithm,
            Signer::Ring(KeyAlgorithm::EdDSA),
            "new installs sign with Ed25519"
        );
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
