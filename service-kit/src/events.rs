//! Live events: what a backend publishes after a change has committed, and
//! how it reaches the notifications service.
//!
//! Two transports, chosen by configuration:
//! - **Redis** (`REDIS_URL`): one atomic script appends the event to the
//!   user's stream (`portcullis:events:{user}`; `portcullis` is the
//!   namespace, `EVENTS_NAMESPACE`, the last [`REPLAY_LIMIT`]
//!   events for [`REPLAY_SECONDS`]) and publishes it, with the id the stream
//!   gave it, on `portcullis:events`. Every notifications replica subscribes to the
//!   channel, so any replica serves any user; a client that reconnects names
//!   the last id it saw and is sent what it missed from the stream.
//! - **Direct** (`NOTIFICATIONS_URL`): the event is posted to one
//!   notifications service's `/internal/events`, which numbers and keeps it
//!   itself. This is the one-command stack's default, with one replica.
//!
//! Publishing never delays or fails the request that caused it: events go
//! through a bounded queue to one background task (which keeps a user's
//! events in order), and an event that cannot be delivered is logged and
//! dropped. The database stays the source of truth; a client that missed
//! events re-reads it when it reconnects.

use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::sync::mpsc;

/// The namespace of events' Redis channel and keys, unless configured.
pub const DEFAULT_NAMESPACE: &str = "portcullis";
/// How many of a user's events are kept for clients that reconnect.
pub const REPLAY_LIMIT: usize = 100;
/// How long a user's kept events stay after the last one.
pub const REPLAY_SECONDS: u64 = 3600;
/// Events waiting to be sent; beyond this, new ones are dropped.
const QUEUE: usize = 1024;
/// One attempt to deliver an event may take this long.
const SEND_TIMEOUT: Duration = Duration::from_secs(2);

/// The Redis channel events are published on.
pub fn channel(namespace: &str) -> String {
    format!("{namespace}:events")
}

/// The Redis stream holding `user`'s recent events.
pub fn stream_key(namespace: &str, user: i64) -> String {
    format!("{namespace}:events:{user}")
}

/// Checks a namespace: 1–64 visible ASCII characters.
pub fn check_namespace(namespace: &str) -> Result<(), String> {
    if (1..=64).contains(&namespace.len()) && namespace.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(format!(
            "EVENTS_NAMESPACE {namespace:?} must be 1 to 64 visible ASCII characters"
        ))
    }
}

/// Where a backend sends its events; flattened into its command line.
#[derive(Debug, Clone, clap::Args)]
pub struct EventArgs {
    /// Redis for live events (any number of notifications replicas);
    /// takes precedence over --notifications-url.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// A notifications service to post live events to directly, when there
    /// is no Redis. With neither, no events are published.
    #[arg(long, env = "NOTIFICATIONS_URL")]
    pub notifications_url: Option<String>,
    /// Prefix of the Redis channel and keys of events; deployments that
    /// share one Redis need different ones.
    #[arg(long, env = "EVENTS_NAMESPACE", default_value = DEFAULT_NAMESPACE)]
    pub events_namespace: String,
}

/// One event, as published: whose it is, what happened, and the resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Published {
    pub user_id: i64,
    #[serde(rename = "type")]
    pub kind: String,
    pub data: serde_json::Value,
}

/// Appends to the stream and publishes with the stream's id in one step, so
/// that ids on the channel and in the stream always agree and arrive in the
/// order they were given. The stream is trimmed exactly (not with `~`), so
/// that a replay of `REPLAY_LIMIT` entries is everything kept. The channel
/// message is `USER ID JSON`.
const SCRIPT: &str = r"
local id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[1], '*', 'event', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[5] .. ' ' .. id .. ' ' .. ARGV[2])
return id
";

#[derive(Clone)]
pub struct Publisher {
    queue: Option<mpsc::Sender<Published>>,
}

enum Transport {
    Redis {
        // Boxed: the client is large, and the enum lives in one task.
        client: Box<redis::Client>,
        connection: Option<redis::aio::MultiplexedConnection>,
        script: redis::Script,
        namespace: String,
    },
    Direct {
        client: reqwest::Client,
        url: String,
    },
}

impl Publisher {
    /// Publishes nothing (no notifications service configured).
    pub fn none() -> Self {
        Publisher { queue: None }
    }

    /// Chooses the transport: Redis when `redis_url` is set, else direct
    /// when `notifications_url` is set, else none. Only the URLs are checked
    /// here; connections are made on first use, so a service starts (and
    /// serves) while Redis or the notifications service is down.
    pub fn from_args(args: &EventArgs) -> Result<Self, String> {
        check_namespace(&args.events_namespace)?;
        let transport = match (args.redis_url.as_deref(), args.notifications_url.as_deref()) {
            (Some(url), _) if !url.is_empty() => Transport::Redis {
                client: Box::new(
                    redis::Client::open(url).map_err(|e| format!("invalid REDIS_URL: {e}"))?,
                ),
                connection: None,
                script: redis::Script::new(SCRIPT),
                namespace: args.events_namespace.clone(),
            },
            (_, Some(url)) if !url.is_empty() => {
                if !url.starts_with("http://") && !url.starts_with("https://") {
                    return Err(format!("NOTIFICATIONS_URL {url:?} must be an http(s) URL"));
                }
                Transport::Direct {
                    client: reqwest::Client::builder()
                        .timeout(SEND_TIMEOUT)
                        .build()
                        .map_err(|e| format!("cannot build the events client: {e}"))?,
                    url: format!("{}/internal/events", url.trim_end_matches('/')),
                }
            }
            _ => return Ok(Publisher::none()),
        };
        let (queue, events) = mpsc::channel(QUEUE);
        tokio::spawn(transport.run(events));
        Ok(Publisher { queue: Some(queue) })
    }

    /// Queues an event for `user`; returns at once. Call it only after the
    /// change the event describes has committed.
    pub fn publish(&self, user: i64, kind: &'static str, data: impl Serialize) {
        let Some(queue) = &self.queue else {
            return;
        };
        let data = match serde_json::to_value(data) {
            Ok(data) => data,
            Err(error) => {
                tracing::error!(%error, kind, "event not serialisable; dropped");
                return;
            }
        };
        let event = Published {
            user_id: user,
            kind: kind.to_owned(),
            data,
        };
        if queue.try_send(event).is_err() {
            tracing::warn!(
                kind,
                user_id = user,
                "event queue full or closed; event dropped"
            );
        }
    }
}

impl Transport {
    async fn run(mut self, mut events: mpsc::Receiver<Published>) {
        while let Some(event) = events.recv().await {
            let sent = tokio::time::timeout(SEND_TIMEOUT, self.send(&event)).await;
            let error = match sent {
                Ok(Ok(())) => continue,
                Ok(Err(error)) => error,
                Err(_) => "timed out".to_owned(),
            };
            // The URL is not logged: a Redis URL may hold a password.
            tracing::warn!(kind = %event.kind, user_id = event.user_id, %error, "event not delivered; dropped");
            if let Transport::Redis { connection, .. } = &mut self {
                *connection = None;
            }
        }
    }

    async fn send(&mut self, event: &Published) -> Result<(), String> {
        match self {
            Transport::Redis {
                client,
                connection,
                script,
                namespace,
            } => {
                let json = serde_json::json!({"type": event.kind, "data": event.data}).to_string();
                // A connection that failed is made again once.
                for attempt in 0..2 {
                    let con = match connection.as_mut() {
                        Some(con) => con,
                        None => connection.insert(
                            client
                                .get_multiplexed_async_connection()
                                .await
                                .map_err(|e| e.to_string())?,
                        ),
                    };
                    let sent: redis::RedisResult<String> = script
                        .key(stream_key(namespace, event.user_id))
                        .arg(REPLAY_LIMIT)
                        .arg(&json)
                        .arg(REPLAY_SECONDS)
                        .arg(channel(namespace))
                        .arg(event.user_id)
                        .invoke_async(con)
                        .await;
                    match sent {
                        Ok(_) => return Ok(()),
                        // A refused script or a full server is not a lost
                        // connection: retrying would not help.
                        Err(error) if attempt == 0 && error.is_io_error() => *connection = None,
                        Err(error) => return Err(error.to_string()),
                    }
                }
                Ok(())
            }
            Transport::Direct { client, url } => {
                let response = client
                    .post(url.as_str())
                    .json(event)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                if response.status().is_success() {
                    Ok(())
                } else {
                    Err(format!("status {}", response.status()))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publisher_choice_follows_configuration() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let args = |redis: Option<&str>, direct: Option<&str>, namespace: &str| EventArgs {
            redis_url: redis.map(str::to_owned),
            notifications_url: direct.map(str::to_owned),
            events_namespace: namespace.to_owned(),
        };
        let publishes = |a: EventArgs| Publisher::from_args(&a).map(|p| p.queue.is_some());
        rt.block_on(async {
            assert_eq!(publishes(args(None, None, "p")), Ok(false));
            assert_eq!(publishes(args(Some(""), Some(""), "p")), Ok(false));
            assert!(publishes(args(Some("not a url"), None, "p")).is_err());
            assert!(publishes(args(None, Some("127.0.0.1:9401"), "p")).is_err());
            assert_eq!(
                publishes(args(None, Some("http://127.0.0.1:9401"), "p")),
                Ok(true)
            );
            assert_eq!(
                publishes(args(Some("redis://127.0.0.1:6379"), None, "p")),
                Ok(true)
            );
            assert!(publishes(args(None, None, "")).is_err());
            assert!(publishes(args(None, None, "has space")).is_err());
        });
    }
}
