//! Events as they go to clients: an id that only grows per user, and the
//! JSON text a client receives. Shared by where events come from
//! ([`crate::feed`]) and where they go ([`crate::hub`]), which do not know
//! each other's internals.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

/// An event's place in its user's sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId {
    pub millis: u64,
    pub seq: u64,
}

impl EventId {
    /// Parses `MILLISECONDS-SEQUENCE`, both parts decimal.
    pub fn parse(raw: &str) -> Option<EventId> {
        let (millis, seq) = raw.split_once('-')?;
        let digits =
            |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(millis) || !digits(seq) {
            return None;
        }
        Some(EventId {
            millis: millis.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.millis, self.seq)
    }
}

/// An event ready for the wire: its id and the JSON text a client receives,
/// `{"id", "type", "data"}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: EventId,
    pub text: Arc<str>,
}

/// What a publisher stored: the event without its owner and id.
#[derive(Deserialize)]
struct Stored {
    #[serde(rename = "type")]
    kind: String,
    data: serde_json::Value,
}

#[derive(Serialize)]
struct Outgoing<'a> {
    id: String,
    #[serde(rename = "type")]
    kind: &'a str,
    data: &'a serde_json::Value,
}

pub(crate) fn render(id: EventId, kind: &str, data: &serde_json::Value) -> Event {
    let text = serde_json::to_string(&Outgoing {
        id: id.to_string(),
        kind,
        data,
    })
    .unwrap_or_default();
    Event {
        id,
        text: text.into(),
    }
}

pub(crate) fn render_stored(id: EventId, json: &str) -> Option<Event> {
    let stored: Stored = serde_json::from_str(json).ok()?;
    Some(render(id, &stored.kind, &stored.data))
}
