//! Rate limits shared by every gateway through Redis
//! (`rate_limit.*.store: redis`): the same GCRA check as the local buckets
//! (`limits.rs`), run atomically in Redis by one Lua script in one round
//! trip, on Redis's own clock, so that N gateways enforce one limit.
//!
//! Keys are `NAMESPACE:rl:ROUTE#N:SCOPE:KEY` and expire when the bucket
//! would be full again. When Redis cannot answer within [`TIMEOUT`], the
//! caller falls back (to its local bucket, or lets the request through, as
//! the limit says) and Redis is not asked again for [`PAUSE`]: a Redis that
//! is down costs the checks under way at that moment one timeout each, not
//! every request. It is asked again after that, so the shared limit comes
//! back by itself.

use redis::aio::MultiplexedConnection;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Longest wait for Redis on a request's path.
pub const TIMEOUT: Duration = Duration::from_millis(100);
/// How long Redis is left alone after it failed.
pub const PAUSE: Duration = Duration::from_secs(1);

/// GCRA in microseconds on Redis's clock. Returns {allowed, ahead or
/// waited, retry after}.
const SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local nxt = tat + interval
local ahead = nxt - now
if ahead > tolerance then
  return {0, tat - now, ahead - tolerance}
end
redis.call('SET', KEYS[1], nxt, 'PX', math.floor(ahead / 1000) + 1)
return {1, ahead, 0}
";

/// The process's connection to Redis for shared limits.
pub struct Store {
    client: redis::Client,
    namespace: String,
    connection: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    /// Milliseconds since `epoch` before which Redis is not asked.
    quiet_until: AtomicU64,
    epoch: Instant,
}

static STORE: OnceLock<Store> = OnceLock::new();

/// Sets up the shared store (once, at start); the routes that ask for it
/// can then be loaded.
pub fn install(redis_url: &str, namespace: &str) -> Result<(), String> {
    let client = redis::Client::open(redis_url).map_err(|e| format!("REDIS_URL: {e}"))?;
    let _ = STORE.set(Store {
        client,
        namespace: namespace.to_owned(),
        connection: tokio::sync::Mutex::new(None),
        quiet_until: AtomicU64::new(0),
        epoch: Instant::now(),
    });
    Ok(())
}

/// The shared store, when one was installed.
pub fn store() -> Option<&'static Store> {
    STORE.get()
}

/// What the script decided: allowed or not; how far ahead of now the
/// bucket is (allowed) or was (refused); when refused, how long until one
/// request would pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub allowed: bool,
    pub ahead: Duration,
    pub retry_after: Duration,
}

/// Why the shared check gave no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unavailable;

impl Store {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The bucket `route`/`scope`/`key`, one request costing `interval`
    /// and the bucket allowed `burst` requests ahead of now, checked in
    /// Redis (in whole microseconds, the interval rounded up, so that the
    /// burst is never rounded away).
    pub async fn take(
        &self,
        route: &str,
        scope: &str,
        key: &str,
        interval: Duration,
        burst: u32,
    ) -> Result<Answer, Unavailable> {
        if self.now_ms() < self.quiet_until.load(Ordering::Acquire) {
            return Err(Unavailable);
        }
        let bucket = format!("{}:rl:{route}:{scope}:{key}", self.namespace);
        let interval = micros(interval + Duration::from_nanos(999)).max(1);
        let tolerance = interval.saturating_mul(u64::from(burst.max(1)));
        let asked = tokio::time::timeout(TIMEOUT, async {
            match self.eval(&bucket, interval, tolerance).await {
                // A connection made before Redis restarted fails once:
                // one fresh connection, within the same wait.
                Err(_) => {
                    *self.connection.lock().await = None;
                    self.eval(&bucket, interval, tolerance).await
                }
                answered => answered,
            }
        })
        .await;
        let unsigned = |v: i64| u64::try_from(v).unwrap_or(0);
        match asked {
            Ok(Ok((allowed, ahead, retry))) => Ok(Answer {
                allowed: allowed == 1,
                ahead: Duration::from_micros(unsigned(ahead)),
                retry_after: Duration::from_micros(unsigned(retry)),
            }),
            Ok(Err(error)) => {
                self.pause(&format!("{error}")).await;
                Err(Unavailable)
            }
            Err(_) => {
                self.pause("no answer in time").await;
                Err(Unavailable)
            }
        }
    }

    /// The script, once, on the held connection (made when there is none).
    async fn eval(
        &self,
        bucket: &str,
        interval: u64,
        tolerance: u64,
    ) -> redis::RedisResult<(i64, i64, i64)> {
        let mut connection = self.connection().await?;
        // EVAL with the script's text: Redis keeps the compiled script, and
        // there is no cache of ours to miss after a Redis restart.
        redis::cmd("EVAL")
            .arg(SCRIPT)
            .arg(1)
            .arg(bucket)
            .arg(interval)
            .arg(tolerance)
            .query_async::<(i64, i64, i64)>(&mut connection)
            .await
    }

    async fn connection(&self) -> redis::RedisResult<MultiplexedConnection> {
        let mut held = self.connection.lock().await;
        if let Some(connection) = held.as_ref() {
            return Ok(connection.clone());
        }
        let connection = self.client.get_multiplexed_async_connection().await?;
        *held = Some(connection.clone());
        Ok(connection)
    }

    /// Forgets the connection and leaves Redis alone for [`PAUSE`].
    async fn pause(&self, why: &str) {
        let until = self.now_ms() + u64::try_from(PAUSE.as_millis()).unwrap_or(1000);
        let previous = self.quiet_until.swap(until, Ordering::AcqRel);
        *self.connection.lock().await = None;
        if previous <= self.now_ms() {
            tracing::warn!(
                error = why,
                "shared rate limits: Redis unavailable; local buckets meanwhile"
            );
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}
