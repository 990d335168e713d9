use anyhow::Context;
use auth_service::config::{Cli, Command, KeysAction, Secret, resolve_secret};
use auth_service::tokens::Signer;
use clap::Parser;
use service_kit::server::{bind, shutdown_signal};
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // Commands (keys, create-admin) serve no requests: no traces.
    let traces = match &cli.command {
        None => service_kit::traces::init("auth-service", &cli.traces),
        Some(_) => service_kit::traces::init("auth-service", &Default::default()),
    };
    let traces = match traces {
        Ok(traces) => traces,
        Err(error) => {
            eprintln!("auth-service: {error}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown = shutdown_signal();
    service_kit::supervision::follow_parent();
    let ran = run(cli, shutdown).await;
    drop(traces);
    match ran {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("auth-service: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let settings = cli.settings;
    if let Some(Command::CreateAdmin { email }) = cli.command {
        let password = auth_service::create_admin::read_password(std::io::stdin().lock())?;
        let db = auth_service::open_database(&settings).await?;
        println!(
            "{}",
            auth_service::create_admin::create_admin(&db, &email, password).await?
        );
        db.close().await;
        return Ok(());
    }

    if let Some(Command::Keys { action }) = cli.command {
        let db = auth_service::open_database(&settings).await?;
        let retention = auth_service::keyring::Retention::new(
            settings.access_ttl,
            settings.refresh_ttl,
            auth_service::tokens::LEEWAY_SECS,
        );
        let printed = match action {
            KeysAction::Rotate { now } => {
                let lead = if now {
                    0
                } else {
                    auth_service::keys::publication_lead(settings.jwks_max_age)
                };
                auth_service::keys::rotate(&db, settings.signing_algorithm, lead).await
            }
            KeysAction::List => auth_service::keys::list(&db, retention).await,
        };
        db.close().await;
        print!("{}", printed.map_err(anyhow::Error::msg)?);
        return Ok(());
    }

    let secret = resolve_secret(
        std::env::var("JWT_SECRET_KEY").ok(),
        settings.dev,
        settings.signing_algorithm == Signer::Secret,
    )?;
    if settings.signing_algorithm != Signer::Secret && secret.is_some() {
        tracing::warn!(
            "JWT_SECRET_KEY is set beside the key ring: HS256 tokens signed with it are still \
             accepted; unset it once the tokens issued before the switch have expired"
        );
    }
    if let Some(Secret::Generated(_)) = secret {
        tracing::warn!(
            "JWT_SECRET_KEY is unset: using a random development secret (--dev); \
             tokens will stop verifying when this process restarts"
        );
    }
    let db = auth_service::open_database(&settings).await?;
    tracing::info!(database = db.kind(), "database ready");
    let state =
        auth_service::build_state(&settings, db.clone(), secret.as_ref().map(Secret::bytes))
            .await?;
    let listener = bind(&settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    auth_service::run(listener, state, shutdown).await?;
    db.close().await;
    Ok(())
}
