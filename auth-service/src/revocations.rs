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
//! The answer that caused a revocation (the logout's 204, the admin's 200)
//! is sent only once every target took it: Redis accepted the `PUBLISH`,
//! and every admin listener answered 2xx after dropping the user's cached
//! verdicts. A client that uses its old token the instant it has that answer
//! is refused. The wait is bounded ([`DELIVERY_WAIT`]): a target that has
//! not taken the revocation by then is logged and counted, the answer goes
//! out anyway, and that target is retried in the background with growing
//! back-off ([`RETRIES`]), so a gateway that was briefly away still drops
//! the grant well before its cache would have. Logs never hold the Redis
//! URL, which may hold a password.

use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How long an answer waits for its revocation to be taken by every target.
pub const DELIVERY_WAIT: Duration = Duration::from_secs(2);

/// Background retries of a target that did not take a revocation in time:
/// after 0.25 s, 0.5 s, 1 s, … 32 s (about a minute in all).
pub const RETRIES: u32 = 8;
const FIRST_BACKOFF: Duration = Duration::from_millis(250);

/// Revocations counted by how they ended, for `/metrics`.
#[derive(Debug, Default)]
pub struct Counts {
    /// Taken by every target before the answer went out.
    pub delivered: AtomicU64,
    /// A target missed the bounded wait; the answer went out without it.
    pub late: AtomicU64,
    /// Taken by a late target on a background retry.
    pub retried: AtomicU64,
    /// A target never took it, after every retry.
    pub abandoned: AtomicU64,
}

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
    /// The session that ended (logout, refresh-token reuse). Without one,
    /// every token of the user issued up to `at` stops counting (disabled,
    /// deleted, role changed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    /// When, in seconds since the epoch on this service's clock (the clock
    /// tokens' `iat` comes from).
    pub at: u64,
    /// Until when a token it concerns may still be presented: the longest
    /// access token's `exp` plus the leeway. Gateways that verify tokens
    /// themselves keep the revocation that long.
    pub until: u64,
}

impl Revocation {
    pub fn new(user_id: i64, reason: Reason, sid: Option<&str>, access_ttl: u64) -> Self {
        let at = crate::now_unix();
        Revocation {
            user_id,
            reason,
            sid: sid.map(str::to_owned),
            at,
            until: at
                .saturating_add(access_ttl)
                .saturating_add(crate::tokens::LEEWAY_SECS),
        }
    }
}

/// A revocation as sent to Redis: with an id that gateways acknowledge.
#[derive(Debug, Serialize)]
struct Tagged<'a> {
    #[serde(flatten)]
    revocation: &'a Revocation,
    id: &'a str,
}

#[derive(Clone, Default)]
pub struct Publisher {
    /// The access tokens' lifetime, for [`Revocation::until`] (a day when
    /// unset).
    access_ttl: Option<u64>,
    redis: Option<Arc<Redis>>,
    webhooks: Option<Arc<Webhooks>>,
    counts: Arc<Counts>,
}

/// One place a revocation must reach.
#[derive(Clone)]
enum Target {
    Redis(Arc<Redis>),
    Webhook(Arc<Webhooks>, usize),
}

impl Target {
    async fn send(&self, revocation: &Revocation) -> Result<(), String> {
        match self {
            Target::Redis(redis) => redis.publish(revocation).await,
            Target::Webhook(webhooks, i) => webhooks.post_one(*i, revocation).await,
        }
    }

    /// For logs: never the Redis URL, which may hold a password.
    fn name(&self) -> String {
        match self {
            Target::Redis(redis) => format!("redis channel {}", redis.channel),
            Target::Webhook(webhooks, i) => webhooks.urls[*i].clone(),
        }
    }
}

/// Gateways' admin listeners, told directly.
struct Webhooks {
    client: reqwest::Client,
    urls: Vec<String>,
    token: String,
}

impl Webhooks {
    async fn post_one(&self, i: usize, revocation: &Revocation) -> Result<(), String> {
        let url = &self.urls[i];
        let sent = self
            .client
            .post(url)
            .bearer_auth(&self.token)
            .json(revocation)
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => Ok(()),
            Ok(response) => Err(format!("{url}: status {}", response.status())),
            Err(error) => Err(format!("{url}: {error}")),
        }
    }
}

struct Redis {
    client: redis::Client,
    channel: String,
    /// One multiplexed connection, made on first use and again after an error.
    connection: tokio::sync::Mutex<Option<redis::aio::MultiplexedConnection>>,
    /// Acknowledgements awaited, by revocation id.
    acks: Arc<std::sync::Mutex<std::collections::HashMap<String, Waiter>>>,
    /// Whether the acknowledgement listener is subscribed; made on first
    /// use and again after it ended.
    listening: tokio::sync::Mutex<Option<Arc<std::sync::atomic::AtomicBool>>>,
}

/// One revocation waiting for its gateways.
#[derive(Default)]
struct Waiter {
    received: usize,
    /// How many gateways were subscribed when it was published; unknown
    /// until `PUBLISH` answered (an acknowledgement may come first).
    expected: Option<usize>,
    done: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Waiter {
    fn settle(&mut self) {
        if self.expected.is_some_and(|n| self.received >= n)
            && let Some(done) = self.done.take()
        {
            let _ = done.send(());
        }
    }
}

/// Removes a waiter however its wait ends.
struct Registered<'a> {
    acks: &'a std::sync::Mutex<std::collections::HashMap<String, Waiter>>,
    id: String,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        lock(self.acks).remove(&self.id);
    }
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
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
            access_ttl: None,
            redis: Some(Arc::new(Redis {
                client,
                channel: channel.to_owned(),
                connection: tokio::sync::Mutex::new(None),
                acks: Arc::default(),
                listening: tokio::sync::Mutex::new(None),
            })),
            webhooks: None,
            counts: Arc::default(),
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

    /// Revocations say how long their tokens may live from this lifetime.
    pub fn with_access_ttl(mut self, access_ttl: u64) -> Self {
        self.access_ttl = Some(access_ttl);
        self
    }

    fn message(&self, user_id: i64, reason: Reason, sid: Option<&str>) -> Revocation {
        Revocation::new(user_id, reason, sid, self.access_ttl.unwrap_or(86_400))
    }

    pub fn is_enabled(&self) -> bool {
        self.redis.is_some() || self.webhooks.is_some()
    }

    /// How revocations ended so far.
    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    fn targets(&self) -> Vec<Target> {
        let mut targets: Vec<Target> = self.redis.iter().cloned().map(Target::Redis).collect();
        if let Some(webhooks) = &self.webhooks {
            targets
                .extend((0..webhooks.urls.len()).map(|i| Target::Webhook(Arc::clone(webhooks), i)));
        }
        targets
    }

    /// Announces that `user_id`'s tokens (those of session `sid` only, when
    /// given) were revoked, and returns once every target took it or
    /// [`DELIVERY_WAIT`] passed; targets still missing are retried in the
    /// background. Never fails the caller.
    pub async fn revoke(&self, user_id: i64, reason: Reason, sid: Option<&str>) {
        let targets = self.targets();
        if targets.is_empty() {
            return;
        }
        let revocation = Arc::new(self.message(user_id, reason, sid));
        let mut sends = tokio::task::JoinSet::new();
        for (i, target) in targets.iter().enumerate() {
            let (target, revocation) = (target.clone(), Arc::clone(&revocation));
            sends.spawn(async move { (i, target.send(&revocation).await) });
        }
        let mut taken = vec![false; targets.len()];
        let deadline = tokio::time::Instant::now() + DELIVERY_WAIT;
        while let Ok(Some(joined)) = tokio::time::timeout_at(deadline, sends.join_next()).await {
            if let Ok((i, result)) = joined {
                match result {
                    Ok(()) => taken[i] = true,
                    Err(error) => {
                        tracing::warn!(user_id, ?reason, target = %targets[i].name(), %error, "revocation not taken; retrying in the background");
                    }
                }
            }
        }
        // Sends still running after the wait are abandoned here and retried
        // below, so the count of attempts stays bounded.
        sends.abort_all();
        let late: Vec<Target> = targets
            .into_iter()
            .zip(taken)
            .filter_map(|(target, taken)| (!taken).then_some(target))
            .collect();
        if late.is_empty() {
            self.counts.delivered.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.counts.late.fetch_add(1, Ordering::Relaxed);
        for target in late {
            let (counts, revocation) = (Arc::clone(&self.counts), Arc::clone(&revocation));
            tokio::spawn(async move {
                let mut backoff = FIRST_BACKOFF;
                for attempt in 1..=RETRIES {
                    tokio::time::sleep(backoff).await;
                    backoff = backoff.saturating_mul(2);
                    match tokio::time::timeout(DELIVERY_WAIT, target.send(&revocation)).await {
                        Ok(Ok(())) => {
                            counts.retried.fetch_add(1, Ordering::Relaxed);
                            tracing::info!(user_id, ?reason, target = %target.name(), attempt, "revocation taken on a retry");
                            return;
                        }
                        Ok(Err(error)) => {
                            tracing::debug!(user_id, target = %target.name(), attempt, %error, "revocation retry failed")
                        }
                        Err(_) => {
                            tracing::debug!(user_id, target = %target.name(), attempt, "revocation retry timed out")
                        }
                    }
                }
                counts.abandoned.fetch_add(1, Ordering::Relaxed);
                tracing::error!(user_id, ?reason, target = %target.name(), "revocation never taken; that gateway keeps its cached verdict until it expires");
            });
        }
    }

    /// Announces a revocation once and reports whether every target took
    /// it (for tests and the command line).
    pub async fn revoke_now(&self, user_id: i64, reason: Reason) -> Result<(), String> {
        let revocation = self.message(user_id, reason, None);
        let mut failures = Vec::new();
        for target in self.targets() {
            if let Err(error) = target.send(&revocation).await {
                failures.push(error);
            }
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(failures.join("; "))
        }
    }

    /// The counts in Prometheus' text format.
    pub fn render_metrics(&self) -> String {
        let c = &self.counts;
        let mut out = String::from(
            "# HELP portcullis_auth_revocations_total Revocations by how their delivery ended.\n# TYPE portcullis_auth_revocations_total counter\n",
        );
        for (result, value) in [
            ("delivered", &c.delivered),
            ("late", &c.late),
            ("retried", &c.retried),
            ("abandoned", &c.abandoned),
        ] {
            out.push_str(&format!(
                "portcullis_auth_revocations_total{{result=\"{result}\"}} {}\n",
                value.load(Ordering::Relaxed)
            ));
        }
        out
    }
}

impl Redis {
    /// Publishes `revocation` and waits until every gateway subscribed at
    /// that moment acknowledged it (the caller bounds the wait).
    async fn publish(&self, revocation: &Revocation) -> Result<(), String> {
        self.listen().await.map_err(|e| e.to_string())?;
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes).map_err(|e| e.to_string())?;
        let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let payload = serde_json::to_string(&Tagged {
            revocation,
            id: &id,
        })
        .map_err(|e| e.to_string())?;
        let (done, acknowledged) = tokio::sync::oneshot::channel();
        lock(&self.acks).insert(
            id.clone(),
            Waiter {
                done: Some(done),
                ..Waiter::default()
            },
        );
        let _registered = Registered {
            acks: &self.acks,
            id: id.clone(),
        };
        let gateways = self
            .send(&payload, revocation.until)
            .await
            .map_err(|e| e.to_string())?;
        if let Some(waiter) = lock(&self.acks).get_mut(&id) {
            waiter.expected = Some(gateways);
            waiter.settle();
        }
        // Just under the caller's own bound, so that a silent listener is
        // noticed here.
        let wait = DELIVERY_WAIT.saturating_sub(Duration::from_millis(100));
        match tokio::time::timeout(wait, acknowledged).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err("acknowledgements stopped".into()),
            Err(_) => {
                // Gateways were subscribed but none of their answers came:
                // the acknowledgement subscription may be half-open. The
                // next revocation subscribes afresh.
                if let Some(alive) = self.listening.lock().await.as_ref() {
                    alive.store(false, Ordering::Relaxed);
                }
                Err(format!(
                    "{gateways} gateways did not all acknowledge in time"
                ))
            }
        }
    }

    /// Subscribes to the acknowledgement channel unless a listener is on it.
    async fn listen(&self) -> redis::RedisResult<()> {
        use futures::StreamExt;
        let mut slot = self.listening.lock().await;
        if slot
            .as_ref()
            .is_some_and(|alive| alive.load(Ordering::Relaxed))
        {
            return Ok(());
        }
        let mut pubsub = self.client.get_async_pubsub().await?;
        pubsub.subscribe(format!("{}:acks", self.channel)).await?;
        let alive = Arc::new(std::sync::atomic::AtomicBool::new(true));
        *slot = Some(Arc::clone(&alive));
        let acks = Arc::clone(&self.acks);
        tokio::spawn(async move {
            let mut messages = pubsub.into_on_message();
            while let Some(message) = messages.next().await {
                let Ok(id) = std::str::from_utf8(message.get_payload_bytes()) else {
                    continue;
                };
                if let Some(waiter) = lock(&acks).get_mut(id) {
                    waiter.received += 1;
                    waiter.settle();
                }
            }
            alive.store(false, Ordering::Relaxed);
            tracing::warn!(
                "revocation acknowledgements lost; listening again on the next revocation"
            );
        });
        Ok(())
    }

    /// Publishes `payload` and returns how many gateways were subscribed
    /// (`PUBSUB NUMSUB` of their counting channel, in the same transaction).
    /// The same transaction adds it to the list of revocations still in
    /// force (a sorted set scored by `until`, trimmed of those past), which
    /// a gateway that verifies tokens itself reads whenever it subscribes:
    /// one that was away or just started misses nothing still relevant.
    async fn send(&self, payload: &str, until: u64) -> redis::RedisResult<usize> {
        let gateways = format!("{}:gateways", self.channel);
        let in_force = format!("{}:revoked", self.channel);
        // A connection that failed is dropped and made again once. The lock
        // covers only taking (or making) the shared connection: commands on
        // a multiplexed connection go out concurrently.
        let mut attempt = 0;
        loop {
            let mut connection = {
                let mut slot = self.connection.lock().await;
                match slot.as_ref() {
                    Some(connection) => connection.clone(),
                    None => slot
                        .insert(self.client.get_multiplexed_async_connection().await?)
                        .clone(),
                }
            };
            let sent: redis::RedisResult<((String, usize), i64, i64, i64)> = redis::pipe()
                .atomic()
                .cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(&gateways)
                .cmd("ZADD")
                .arg(&in_force)
                .arg(until)
                .arg(payload)
                .cmd("ZREMRANGEBYSCORE")
                .arg(&in_force)
                .arg("-inf")
                .arg(format!("({}", crate::now_unix()))
                .cmd("PUBLISH")
                .arg(&self.channel)
                .arg(payload)
                .query_async(&mut connection)
                .await;
            match sent {
                Ok(((_, subscribed), _, _, _)) => return Ok(subscribed),
                Err(error) if attempt == 0 => {
                    tracing::debug!(%error, "redis connection lost; reconnecting");
                    *self.connection.lock().await = None;
                    attempt += 1;
                }
                Err(error) => return Err(error),
            }
        }
    }
}
