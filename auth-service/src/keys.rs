//! Keeping the key ring: read at start-up and every [`RELOAD`] (so a key
//! added by `keys rotate` is known everywhere before it signs), a first key
//! made when none signs, the `keys rotate` and `keys list` commands, and
//! `GET /.well-known/jwks.json`.

use crate::AppState;
use crate::keyring::{self, RELOAD, Retention, Ring, State};
use crate::tokens::{Keys, Signer};
use axum::extract::State as Extract;
use axum::http::header;
use axum::response::IntoResponse;
use service_kit::Db;

/// Reads the table into `keys`; when the ring signs and no key is signing
/// now (a new install), adds one of the configured algorithm, active at
/// once. A key of another algorithm that signs is used as it is: changing
/// algorithm is a rotation, published ahead like any other.
pub async fn sync(db: &Db, keys: &Keys) -> Result<(), String> {
    let now = crate::now_unix();
    let mut rows = keyring::load(db).await.map_err(|e| e.to_string())?;
    let mut ring = Ring::from_rows(&rows, keys.retention())?;
    if let Signer::Ring(algorithm) = keys.signer()
        && ring.signing(now).is_none()
    {
        let row = keyring::new_row(algorithm, now, now)?;
        keyring::insert(db, &row).await.map_err(|e| e.to_string())?;
        tracing::info!(kid = %row.kid, algorithm = algorithm.name(), "signing key created");
        rows.push(row);
        ring = Ring::from_rows(&rows, keys.retention())?;
    }
    keys.set_ring(ring);
    Ok(())
}

/// Re-reads the ring every [`RELOAD`] until dropped.
pub async fn follow(db: Db, keys: std::sync::Arc<Keys>) {
    let mut every = tokio::time::interval(RELOAD);
    every.tick().await;
    loop {
        every.tick().await;
        if let Err(error) = sync(&db, &keys).await {
            tracing::warn!(%error, "reading the key ring failed; the ring in force stays");
        }
    }
}

/// `keys rotate`: adds a key of the configured algorithm, signing after
/// `lead` seconds (0: at once). Returns what to print. Expired keys are
/// kept (as `expired` in `keys list`): whether a key has expired depends on
/// the service's token lifetimes, which this command may not share.
pub async fn rotate(db: &Db, signer: Signer, lead: u64) -> Result<String, String> {
    let Signer::Ring(algorithm) = signer else {
        return Err(
            "--signing-algorithm is HS256: there is no key ring to rotate (rotate JWT_SECRET_KEY \
             instead, which ends every session)"
                .into(),
        );
    };
    let now = crate::now_unix();
    let row = keyring::new_row(algorithm, now, now.saturating_add(lead))?;
    keyring::insert(db, &row).await.map_err(|e| e.to_string())?;
    Ok(format!(
        "added key {} ({}), published now, signing from {} (in {lead} s)",
        row.kid,
        algorithm.name(),
        timestamp(row.active_from),
    ))
}

/// `keys list`: one line per key, oldest first.
pub async fn list(db: &Db, retention: Retention) -> Result<String, String> {
    let rows = keyring::load(db).await.map_err(|e| e.to_string())?;
    let ring = Ring::from_rows(&rows, retention)?;
    Ok(render(&ring, crate::now_unix()))
}

fn render(ring: &Ring, now: u64) -> String {
    let mut out = format!(
        "{:<18} {:<6} {:<30} {}\n",
        "KID", "ALG", "STATE", "ACTIVE FROM"
    );
    for (i, key) in ring.keys().iter().enumerate() {
        let state = match ring.state(i, now) {
            State::Pending => "pending".to_string(),
            State::Signing => "signing".to_string(),
            State::Verifying { until } => format!("verifying until {}", timestamp(until)),
            State::Expired => "expired".to_string(),
        };
        out.push_str(&format!(
            "{:<18} {:<6} {:<30} {}\n",
            key.kid,
            key.algorithm.name(),
            state,
            timestamp(key.active_from)
        ));
    }
    out
}

fn timestamp(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| secs.to_string())
}

/// How long before it signs a rotated key is published: the JWKS's max-age
/// (every gateway has refreshed its copy by then) and the ring's reload
/// interval (every replica has read it).
pub fn publication_lead(jwks_max_age: u64) -> u64 {
    jwks_max_age.saturating_add(RELOAD.as_secs())
}

/// `GET /.well-known/jwks.json`: every key that may still verify a live
/// token, public parameters only.
pub async fn jwks(Extract(state): Extract<AppState>) -> impl IntoResponse {
    let body = state.keys.ring().jwks(crate::now_unix());
    (
        [
            (header::CONTENT_TYPE, "application/json".to_string()),
            (
                header::CACHE_CONTROL,
                format!("public, max-age={}", state.jwks_max_age),
            ),
        ],
        body.to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::keyring::KeyAlgorithm;

    #[test]
    fn the_listing_names_every_state() {
        let rows: Vec<_> = [(0, "a"), (100, "b"), (10_000, "c")]
            .into_iter()
            .map(|(from, kid)| {
                let mut row = keyring::new_row(KeyAlgorithm::EdDSA, 0, from).expect("row");
                row.kid = kid.into();
                row
            })
            .collect();
        let ring = Ring::from_rows(&rows, Retention::both(50)).expect("ring");
        let listing = render(&ring, 160);
        let lines: Vec<&str> = listing.lines().collect();
        assert_eq!(lines.len(), 4, "{listing}");
        assert!(lines[1].starts_with("a ") && lines[1].contains("expired"));
        assert!(lines[2].starts_with("b ") && lines[2].contains("signing"));
        assert!(lines[3].starts_with("c ") && lines[3].contains("pending"));
        let listing = render(&ring, 10_010);
        assert!(
            listing.contains("verifying until 1970-01-01T02:47:30Z"),
            "{listing}"
        );
    }
}
