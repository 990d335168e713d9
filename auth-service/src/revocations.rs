//! Telling gateways that a user's tokens stopped counting, so that they drop
//! their cached verdicts at once instead of when those expire.
//!
//! Published after the change is committed: on logout, on a refresh token's
//! reuse (its session is revoked), and when an admin disables, deletes,
//! promotes or demotes a user. With `REDIS_URL` the message goes to a Redis
//! pub/sub channel every gateway subscribes to. Without Redis, it can be
//! posted to each gateway's admin listener (`--revocation-webhook`, with
//! `GATEWAY_ADMIN_TOKEN`), which is how the one-command stack does it. With
//! neither, gateways keep a verdict for at most their `auth.cache_ttl`.
//!
//! Publishing never delays or fails the request that caused it: it runs on
//! its own task, and a failure is logged (without the Redis URL, which may
//! hold a password).

use serde::Serialize;
use std::sync::Arc;

/// Why a user's tokens were revoked; gateways treat every reason alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    Logout,
    Reuse,
    Disabled,
    Deleted,
    RoleChanged,
}

/// The message on the channel.
#[derive(Debug, Serialize)]
pub struct Revocation {
    pub user_id: i64,
    pub reason: Reason,
}

#[derive(Clone, Default)]
pub struct Publisher {
    redis: Option<Arc<Redis>>,
    webhooks: Option<Arc<Webhooks>>,
}

/// Gateways' admin listeners, told directly.
struct Webhooks {
    client: reqwest::Client,
    urls: Vec<String>,
    token: String,
}

impl Webhooks {
    async fn post(&self, revocation: &Revocation) -> Result<(), String> {
        let mut failures = Vec::new();
        for url in &self.urls {
            let sent = self
                .client
                .post(url)
                .bearer_auth(&self.token)
                .json(revocation)
                .send()
                .await;
            match sent {
                Ok(response) if response.status().is_success() => {}
                Ok(response) => failures.push(format!("{url}: status {}", response.status())),
                Err(error) => failures.push(format!("{url}: {error}")),
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(failures.join("; "))
        }
    }
}

struct Redis {
    client: redis::Client,
    channel: String,
    /// One multiplexed connection, made on first use and again after an error.
    connection: tokio::sync::Mutex<Option<redis::aio::MultiplexedConnection>>,
}

impl Publisher {
    /// Publishes nothing.
    pub fn none() -> Self {
        Publisher::default()
    }

    /// Publishes to `channel` on the Redis at `url`. Only the URL is checked
    /// here; the connection is made on first use, so the service starts (and
    /// serves) while Redis is down.
    pub fn redis(url: &str, channel: &str) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| format!("invalid REDIS_URL: {e}"))?;
        Ok(Publisher {
            redis: Some(Arc::new(Redis {
                client,
                channel: channel.to_owned(),
                connection: tokio::sync::Mutex::new(None),
            })),
            webhooks: None,
        })
    }

    /// Also posts every revocation to these admin listeners.
    pub fn with_webhooks(mut self, urls: Vec<String>, token: String) -> Result<Self, String> {
        if urls.is_empty() {
            return Ok(self);
        }
        if token.len() < 32 {
            return Err(
                "--revocation-webhook needs GATEWAY_ADMIN_TOKEN (at least 32 characters)".into(),
            );
        }
        for url in &urls {
            if !url.starts_with("http://") && !url.starts_with("https://") {
                return Err(format!("revocation webhook {url:?} must be an http(s) URL"));
            }
        }
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(2))
            .build()
            .map_err(|e| format!("cannot build the webhook client: {e}"))?;
        self.webhooks = Some(Arc::new(Webhooks {
            client,
            urls,
            token,
        }));
        Ok(self)
    }

    pub fn is_enabled(&self) -> bool {
        self.redis.is_some() || self.webhooks.is_some()
    }

    /// Announces that `user_id`'s tokens were revoked, in the background.
    pub fn revoke(&self, user_id: i64, reason: Reason) {
        if !self.is_enabled() {
            return;
        }
        let publisher = self.clone();
        tokio::spawn(async move {
            if let Err(error) = publisher.revoke_now(user_id, reason).await {
                tracing::warn!(user_id, ?reason, %error, "revocation not delivered; gateways keep their cached verdict until it expires");
            }
        });
    }

    /// Announces a revocation and waits until Redis took it (for tests and
    /// the command line).
    pub async fn revoke_now(&self, user_id: i64, reason: Reason) -> Result<(), String> {
        let revocation = Revocation { user_id, reason };
        let redis = match &self.redis {
            Some(redis) => redis.publish(&revocation).await,
            None => Ok(()),
        };
        let webhooks = match &self.webhooks {
            Some(webhooks) => webhooks.post(&revocation).await,
            None => Ok(()),
        };
        match (redis, webhooks) {
            (Ok(()), Ok(())) => Ok(()),
            (Err(a), Err(b)) => Err(format!("{a}; {b}")),
            (Err(e), _) | (_, Err(e)) => Err(e),
        }
    }
}

impl Redis {
    async fn publish(&self, revocation: &Revocation) -> Result<(), String> {
        let payload = serde_json::to_string(revocation).map_err(|e| e.to_string())?;
        self.send(&payload).await.map_err(|e| e.to_string())
    }

    async fn send(&self, payload: &str) -> redis::RedisResult<()> {
        let mut slot = self.connection.lock().await;
        // A connection that failed is dropped and made again once.
        for attempt in 0..2 {
            let connection = match slot.as_mut() {
                Some(connection) => connection,
                None => slot.insert(self.client.get_multiplexed_async_connection().await?),
            };
            let sent: redis::RedisResult<i64> = redis::cmd("PUBLISH")
                .arg(&self.channel)
                .arg(payload)
                .query_async(connection)
                .await;
            match sent {
                Ok(_) => return Ok(()),
                Err(error) if attempt == 0 => {
                    tracing::debug!(%error, "redis connection lost; reconnecting");
                    *slot = None;
                }
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }
}
