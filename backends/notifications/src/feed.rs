//! Where events come from, and what a reconnecting client missed.
//!
//! - [`Feed::Redis`]: events arrive on the Redis channel that tasks and
//!   orders publish to; each user's recent events are in a Redis stream, so
//!   any replica can replay them. Revocations arrive on their own channel and
//!   close the user's sockets.
//! - [`Feed::Memory`]: events are posted to this service directly and kept
//!   here (one replica; what is kept is lost on restart).
//!
//! Either way every event has an id, `MILLISECONDS-SEQUENCE` (Redis stream
//! ids, or the same shape made here), which only grows: a client names the
//! last id it saw when it reconnects, and nothing at or before it is sent
//! again.

use crate::event::{Event, EventId, render, render_stored};
use crate::hub::{Close, Hub};
use crate::lock;
use futures::StreamExt;
use serde::Deserialize;
use service_kit::events::{self, Published};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub enum Feed {
    Redis(Arc<RedisFeed>),
    Memory(MemoryFeed),
}

impl Feed {
    /// Whether new sockets can be served: always in memory; with Redis,
    /// while the subscription is up.
    pub fn is_ready(&self) -> bool {
        match self {
            Feed::Redis(redis) => redis.subscribed.load(Ordering::Acquire),
            Feed::Memory(_) => true,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Feed::Redis(_) => "redis",
            Feed::Memory(_) => "direct",
        }
    }

    /// `user`'s kept events after `after`, oldest first.
    pub async fn replay(&self, user: i64, after: EventId) -> Result<Vec<Event>, String> {
        match self {
            Feed::Redis(redis) => redis.replay(user, after).await,
            Feed::Memory(memory) => Ok(memory.replay(user, after)),
        }
    }
}

/// Events posted directly, numbered and kept here.
#[derive(Default)]
pub struct MemoryFeed {
    state: Mutex<Memory>,
}

#[derive(Default)]
struct Memory {
    last: Option<EventId>,
    users: HashMap<i64, Kept>,
    published: u64,
}

struct Kept {
    events: VecDeque<Event>,
    touched: Instant,
}

impl MemoryFeed {
    /// Numbers, keeps and delivers one event.
    pub fn publish(&self, hub: &Hub, event: &Published) -> EventId {
        // Delivered under the same lock that numbers it, so that two events
        // posted at once reach sockets in the order of their ids (a socket
        // skips an id lower than one it has sent).
        let mut state = lock(&self.state);
        let rendered = {
            let millis = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            // Ids only grow, even if the clock steps back.
            let id = match state.last {
                Some(last) if last.millis >= millis => EventId {
                    millis: last.millis,
                    seq: last.seq + 1,
                },
                _ => EventId { millis, seq: 0 },
            };
            state.last = Some(id);
            let rendered = render(id, &event.kind, &event.data);
            let now = Instant::now();
            let kept = state.users.entry(event.user_id).or_insert_with(|| Kept {
                events: VecDeque::new(),
                touched: now,
            });
            kept.touched = now;
            kept.events.push_back(rendered.clone());
            if kept.events.len() > events::REPLAY_LIMIT {
                kept.events.pop_front();
            }
            state.published += 1;
            // Users idle for longer than the replay window are forgotten,
            // swept now and then so that the map cannot only grow.
            if state.published.is_multiple_of(1024) {
                let window = Duration::from_secs(events::REPLAY_SECONDS);
                state
                    .users
                    .retain(|_, kept| now.duration_since(kept.touched) < window);
            }
            rendered
        };
        let id = rendered.id;
        // Delivered after it is kept: a socket that replays first and then
        // listens either finds it kept or receives it (or both, and skips
        // the second by id).
        hub.deliver(event.user_id, rendered);
        drop(state);
        id
    }

    fn replay(&self, user: i64, after: EventId) -> Vec<Event> {
        let state = lock(&self.state);
        let window = Duration::from_secs(events::REPLAY_SECONDS);
        state
            .users
            .get(&user)
            .filter(|kept| kept.touched.elapsed() < window)
            .map(|kept| {
                kept.events
                    .iter()
                    .filter(|e| e.id > after)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Events through Redis.
pub struct RedisFeed {
    client: redis::Client,
    namespace: String,
    revocation_channel: String,
    subscribed: AtomicBool,
    connection: tokio::sync::Mutex<Option<redis::aio::MultiplexedConnection>>,
}

/// How often the subscription is pinged, and how long an answer may take.
const PING_EVERY: Duration = Duration::from_secs(5);
const PING_TIMEOUT: Duration = Duration::from_secs(3);

/// How long a replay read may take before the socket is refused.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(2);

impl RedisFeed {
    pub fn new(url: &str, namespace: &str, revocation_channel: &str) -> Result<Self, String> {
        Ok(RedisFeed {
            client: redis::Client::open(url).map_err(|e| format!("invalid REDIS_URL: {e}"))?,
            namespace: namespace.to_owned(),
            revocation_channel: revocation_channel.to_owned(),
            subscribed: AtomicBool::new(false),
            connection: tokio::sync::Mutex::new(None),
        })
    }

    async fn replay(&self, user: i64, after: EventId) -> Result<Vec<Event>, String> {
        let read = async {
            // The multiplexed connection is shared by cloning it: replays
            // run side by side, and the lock is held only to find or make it.
            let mut connection = {
                let mut slot = self.connection.lock().await;
                match slot.as_ref() {
                    Some(connection) => connection.clone(),
                    None => slot
                        .insert(
                            self.client
                                .get_multiplexed_async_connection()
                                .await
                                .map_err(|e| e.to_string())?,
                        )
                        .clone(),
                }
            };
            let entries: redis::RedisResult<Vec<(String, Vec<String>)>> = redis::cmd("XRANGE")
                .arg(events::stream_key(&self.namespace, user))
                .arg(format!("({after}"))
                .arg("+")
                .arg("COUNT")
                .arg(events::REPLAY_LIMIT)
                .query_async(&mut connection)
                .await;
            entries.map_err(|e| {
                // Only a broken connection is made again; an error answer
                // (whatever caused it) leaves the shared one alone.
                if (e.is_io_error() || e.is_connection_dropped())
                    && let Ok(mut slot) = self.connection.try_lock()
                {
                    *slot = None;
                }
                e.to_string()
            })
        };
        let entries = tokio::time::timeout(REPLAY_TIMEOUT, read)
            .await
            .map_err(|_| "Redis did not answer in time".to_owned())??;
        Ok(entries
            .into_iter()
            .filter_map(|(id, fields)| {
                let id = EventId::parse(&id)?;
                let json = fields.chunks(2).find(|f| f[0] == "event")?.get(1)?;
                render_stored(id, json)
            })
            .collect())
    }

    /// Subscribes and delivers, for as long as the process runs. While the
    /// subscription is down the feed is not ready, and every socket is
    /// closed (1013, try again later): their clients reconnect once Redis is
    /// back and are sent what they missed.
    pub async fn follow(self: Arc<Self>, hub: Arc<Hub>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.subscribe().await {
                Ok(pubsub) => {
                    backoff = Duration::from_millis(100);
                    self.subscribed.store(true, Ordering::Release);
                    tracing::info!("subscribed to live events on Redis");
                    let (mut sink, mut messages) = pubsub.split();
                    // A connection that went quiet without closing (a
                    // partition, a failover) is found by pinging it.
                    let mut ping = tokio::time::interval(PING_EVERY);
                    ping.tick().await;
                    loop {
                        tokio::select! {
                            message = messages.next() => match message {
                                Some(message) => self.dispatch(&hub, &message),
                                None => break,
                            },
                            _ = ping.tick() => {
                                let answered = tokio::time::timeout(
                                    PING_TIMEOUT,
                                    sink.ping::<redis::Value>(),
                                )
                                .await;
                                if !matches!(answered, Ok(Ok(_))) {
                                    tracing::warn!("Redis did not answer a ping on the subscription");
                                    break;
                                }
                            }
                        }
                    }
                    tracing::warn!("Redis subscription lost; live events unavailable");
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot subscribe to Redis; live events unavailable");
                }
            }
            if self.subscribed.swap(false, Ordering::AcqRel) {
                hub.close_all(Close::Unavailable);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    async fn subscribe(&self) -> redis::RedisResult<redis::aio::PubSub> {
        let mut pubsub = self.client.get_async_pubsub().await?;
        pubsub.subscribe(events::channel(&self.namespace)).await?;
        pubsub.subscribe(&self.revocation_channel).await?;
        Ok(pubsub)
    }

    fn dispatch(&self, hub: &Hub, message: &redis::Msg) {
        let Ok(payload) = std::str::from_utf8(message.get_payload_bytes()) else {
            return;
        };
        if message.get_channel_name() == self.revocation_channel {
            #[derive(Deserialize)]
            struct Revocation {
                user_id: i64,
            }
            match serde_json::from_str::<Revocation>(payload) {
                Ok(revocation) => hub.close_user(revocation.user_id, Close::Revoked),
                Err(error) => tracing::warn!(%error, "unreadable revocation message"),
            }
            return;
        }
        match parse_published(payload) {
            Some((user, event)) => hub.deliver(user, event),
            None => tracing::warn!("unreadable event message"),
        }
    }
}

/// Reads a channel message, `USER ID JSON`.
fn parse_published(payload: &str) -> Option<(i64, Event)> {
    let (user, rest) = payload.split_once(' ')?;
    let (id, json) = rest.split_once(' ')?;
    let user = service_kit::identity::parse_user_id(user)?;
    Some((user, render_stored(EventId::parse(id)?, json)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_parse_and_order() {
        let cases = [
            ("1-0", Some((1, 0))),
            ("1732412345678-12", Some((1_732_412_345_678, 12))),
            ("0-0", Some((0, 0))),
            ("1", None),
            ("-1", None),
            ("1-", None),
            ("a-1", None),
            ("1-1-1", None),
            ("+1-1", None),
            (" 1-1", None),
            ("", None),
            ("99999999999999999999999-0", None),
        ];
        for (raw, expected) in cases {
            assert_eq!(
                EventId::parse(raw).map(|id| (id.millis, id.seq)),
                expected,
                "{raw:?}"
            );
        }
        let a = EventId::parse("10-5").unwrap();
        let b = EventId::parse("10-12").unwrap();
        let c = EventId::parse("11-0").unwrap();
        assert!(a < b && b < c, "numeric, not textual, order");
        assert_eq!(b.to_string(), "10-12");
    }

    #[test]
    fn channel_messages_name_their_user() {
        let (user, event) =
            parse_published(r#"42 1700000000000-3 {"type":"task.created","data":{"id":7}}"#)
                .expect("well-formed");
        assert_eq!(user, 42);
        assert_eq!(event.id.to_string(), "1700000000000-3");
        let sent: serde_json::Value = serde_json::from_str(&event.text).unwrap();
        assert_eq!(
            sent,
            serde_json::json!({"id": "1700000000000-3", "type": "task.created", "data": {"id": 7}})
        );
        for bad in [
            "",
            "42",
            "42 1-0",
            "x 1-0 {}",
            "0 1-0 {\"type\":\"a\",\"data\":1}",
            "42 nope {\"type\":\"a\",\"data\":1}",
            "42 1-0 not-json",
        ] {
            assert!(parse_published(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn memory_ids_grow_and_replay_is_per_user_and_after_the_cursor() {
        let hub = Hub::new(16);
        let feed = MemoryFeed::default();
        let publish = |user: i64, n: i64| {
            feed.publish(
                &hub,
                &Published {
                    user_id: user,
                    kind: "task.created".into(),
                    data: serde_json::json!({"id": n}),
                },
            )
        };
        let first = publish(1, 1);
        let second = publish(2, 2);
        let third = publish(1, 3);
        assert!(first < second && second < third);
        let all = feed.replay(1, EventId { millis: 0, seq: 0 });
        assert_eq!(
            all.iter().map(|e| e.id).collect::<Vec<_>>(),
            [first, third],
            "only user 1's events"
        );
        assert_eq!(
            feed.replay(1, first)
                .iter()
                .map(|e| e.id)
                .collect::<Vec<_>>(),
            [third]
        );
        assert!(feed.replay(1, third).is_empty());
        assert!(feed.replay(3, first).is_empty());
    }

    #[test]
    fn memory_keeps_the_last_events_only() {
        let hub = Hub::new(16);
        let feed = MemoryFeed::default();
        let mut ids = Vec::new();
        for n in 0..(events::REPLAY_LIMIT + 5) {
            ids.push(feed.publish(
                &hub,
                &Published {
                    user_id: 9,
                    kind: "task.updated".into(),
                    data: serde_json::json!({ "n": n }),
                },
            ));
        }
        let kept = feed.replay(9, EventId { millis: 0, seq: 0 });
        assert_eq!(kept.len(), events::REPLAY_LIMIT);
        assert_eq!(kept.first().map(|e| e.id), Some(ids[5]));
    }
}
