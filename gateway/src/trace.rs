//! Request traces (OpenTelemetry), with `tracing:` in routes.yaml.
//!
//! Each request gets a root span that continues the client's W3C
//! `traceparent` (`tracestate` kept) or starts a trace; its children are
//! the routing, the token's verification (with the call to the auth
//! service as a child of its own) and each upstream attempt, whose span the
//! upstream gets as its `traceparent`. Whether a trace is recorded is
//! decided once, at its root ([`sampled`]): by the parent's flag when there
//! is one, else by `sampling_ratio` over the trace id. A trace not recorded
//! still has ids and passes them on, flagged unsampled, so the services
//! behind make the same choice.
//!
//! Spans are plain values here, turned into OpenTelemetry's [`SpanData`]
//! and handed to the bounded export ([`otlp::Export`]) when they end;
//! attributes carry routes, servers, statuses and user ids, never a token
//! or a header's value.

use crate::config::traces::Tracing;
use crate::metrics;
use contract::telemetry::otlp::{self, Counted, Export};
use http::HeaderMap;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue, Value};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use std::borrow::Cow;
use std::sync::Arc;
use std::time::SystemTime;

/// `tracestate` is passed on up to this many bytes, whole entries only
/// (W3C trace context asks for at least 512).
pub const MAX_TRACESTATE: usize = 512;

/// The trace context a request arrived with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    pub trace_id: u128,
    pub span_id: u64,
    pub sampled: bool,
    pub state: Option<Arc<str>>,
}

/// Reads `traceparent` and `tracestate` (W3C trace context level 1). A
/// missing, repeated or malformed `traceparent` yields `None`: the request
/// starts a trace of its own, and its `tracestate` is dropped with it.
pub fn incoming(headers: &HeaderMap) -> Option<Incoming> {
    let mut values = headers.get_all("traceparent").iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let (trace_id, span_id, flags) = traceparent_fields(value.as_bytes())?;
    Some(Incoming {
        trace_id,
        span_id,
        sampled: flags & 1 == 1,
        state: tracestate(headers),
    })
}

/// The fields of one `traceparent` value: version, trace id, parent id and
/// flags in lowercase hex; a version after `00` may append fields after a
/// `-`, and `ff` is invalid; all-zero ids are invalid.
pub fn traceparent_fields(value: &[u8]) -> Option<(u128, u64, u8)> {
    if value.len() < 55 {
        return None;
    }
    let version = hex(&value[0..2])? as u8;
    let exact = version == 0 && value.len() == 55;
    let extended = version != 0 && version != 0xff && (value.len() == 55 || value[55] == b'-');
    if !(exact || extended) || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let trace_id = hex(&value[3..35])?;
    let span_id = hex(&value[36..52])? as u64;
    let flags = hex(&value[53..55])? as u8;
    (trace_id != 0 && span_id != 0).then_some((trace_id, span_id, flags))
}

/// Lowercase hex digits, up to 32 of them.
fn hex(digits: &[u8]) -> Option<u128> {
    digits.iter().try_fold(0u128, |n, &d| {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => return None,
        };
        Some(n << 4 | u128::from(v))
    })
}

/// `tracestate` entries passed on, at most (W3C trace context's bound).
pub const MAX_TRACESTATE_ENTRIES: usize = 32;

/// Every `tracestate` header joined, in order, kept to
/// [`MAX_TRACESTATE_ENTRIES`] entries and [`MAX_TRACESTATE`] bytes, whole
/// entries only: the first that would not fit ends it. An entry that is not
/// `key=value` in visible ASCII is dropped; `None` when nothing is left.
fn tracestate(headers: &HeaderMap) -> Option<Arc<str>> {
    let mut kept = String::new();
    let mut entries = 0;
    'headers: for value in headers.get_all("tracestate") {
        let Ok(value) = value.to_str() else {
            continue;
        };
        for entry in value.split(',').map(|e| e.trim_matches([' ', '\t'])) {
            let well_formed = entry.split_once('=').is_some_and(|(key, value)| {
                !key.is_empty()
                    && !value.is_empty()
                    && !key.contains(' ')
                    && entry.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
            });
            if !well_formed {
                continue;
            }
            if entries == MAX_TRACESTATE_ENTRIES || kept.len() + entry.len() + 1 > MAX_TRACESTATE {
                break 'headers;
            }
            if !kept.is_empty() {
                kept.push(',');
            }
            kept.push_str(entry);
            entries += 1;
        }
    }
    (!kept.is_empty()).then(|| kept.into())
}

/// The `traceparent` naming `span_id` as the parent of what comes next.
/// Written digit by digit: every traced request sends one, and the
/// formatting machinery cost more than the rest of an unsampled trace.
pub fn traceparent(trace_id: u128, span_id: u64, sampled: bool) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut value = String::with_capacity(55);
    value.push_str("00-");
    for shift in (0..32).rev() {
        value.push(char::from(
            DIGITS[((trace_id >> (shift * 4)) & 0xf) as usize],
        ));
    }
    value.push('-');
    for shift in (0..16).rev() {
        value.push(char::from(
            DIGITS[((span_id >> (shift * 4)) & 0xf) as usize],
        ));
    }
    value.push_str(if sampled { "-01" } else { "-00" });
    value
}

/// Whether a trace is recorded: the parent's flag when there is one (the
/// trace is recorded whole or not at all), else `ratio` over the trace id
/// as OpenTelemetry's `TraceIdRatioBased` decides it, so that every
/// service with the same ratio agrees.
pub fn sampled(parent: Option<&Incoming>, ratio: f64, trace_id: u128) -> bool {
    if let Some(parent) = parent {
        return parent.sampled;
    }
    if ratio >= 1.0 {
        return true;
    }
    // The ratio of the 63-bit space, against the id's low 8 bytes.
    let bound = (ratio.max(0.0) * (1u64 << 63) as f64) as u64;
    ((trace_id as u64) >> 1) < bound
}

/// A non-zero random id.
fn id<T: Default + PartialEq>(make: impl Fn() -> T) -> T {
    loop {
        let id = make();
        if id != T::default() {
            return id;
        }
    }
}

/// The gateway's export and its sampling, for one `tracing:` section.
pub struct Tracer {
    settings: Tracing,
    export: Export,
    scope: InstrumentationScope,
}

impl Tracer {
    /// Starts exporting to `settings.otlp_endpoint`.
    pub fn start(settings: &Tracing) -> Result<Arc<Tracer>, String> {
        let export = Export::start(
            &otlp::Settings {
                endpoint: settings.otlp_endpoint.clone(),
                service_name: settings.service_name.clone(),
                sampling_ratio: settings.sampling_ratio,
            },
            count,
        )?;
        Ok(Arc::new(Tracer {
            settings: settings.clone(),
            export,
            scope: InstrumentationScope::builder("portcullis-gateway")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        }))
    }

    /// Whether this tracer serves `settings` as they are (a reload that
    /// leaves `tracing:` alone keeps the export).
    pub fn serves(&self, settings: &Tracing) -> bool {
        self.settings == *settings
    }

    /// Sends the spans still queued and stops the export (at exit).
    pub fn shutdown(&self) {
        self.export.shutdown();
    }

    /// The root span of a request that arrived with `headers`, started at
    /// `start`.
    pub fn request(self: &Arc<Self>, headers: &HeaderMap, start: SystemTime) -> Span {
        let parent = incoming(headers);
        let trace_id = parent
            .as_ref()
            .map_or_else(|| id(rand::random::<u128>), |p| p.trace_id);
        let recorded = sampled(parent.as_ref(), self.settings.sampling_ratio, trace_id);
        Span {
            tracer: recorded.then(|| Arc::clone(self)),
            trace_id,
            span_id: id(rand::random::<u64>),
            parent: parent.as_ref().map_or(0, |p| p.span_id),
            remote_parent: parent.is_some(),
            state: parent.and_then(|p| p.state),
            name: Cow::Borrowed("request"),
            kind: SpanKind::Server,
            start,
            attributes: Vec::new(),
            failed: false,
        }
    }
}

/// The export's counts, as the gateway's metrics.
fn count(counted: Counted, n: u64) {
    let m = metrics::get();
    match counted {
        Counted::Exported => m.trace_spans_exported.inc_by(n),
        Counted::Dropped => m.trace_spans_dropped.inc_by(n),
    }
}

/// One span of a request, recorded (and exported when it ends) only when
/// its trace is sampled.
pub struct Span {
    /// `None`: not recorded (the trace is not sampled); the ids are still
    /// passed on.
    tracer: Option<Arc<Tracer>>,
    trace_id: u128,
    span_id: u64,
    /// 0: a root.
    parent: u64,
    remote_parent: bool,
    state: Option<Arc<str>>,
    name: Cow<'static, str>,
    kind: SpanKind,
    start: SystemTime,
    attributes: Vec<KeyValue>,
    failed: bool,
}

impl std::fmt::Debug for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Span")
            .field("name", &self.name)
            .field("traceparent", &self.traceparent())
            .finish_non_exhaustive()
    }
}

impl Span {
    /// A child of this span, starting now.
    pub fn child(&self, name: &'static str, kind: SpanKind) -> Span {
        Span {
            tracer: self.tracer.clone(),
            trace_id: self.trace_id,
            span_id: id(rand::random::<u64>),
            parent: self.span_id,
            remote_parent: false,
            state: self.state.clone(),
            name: Cow::Borrowed(name),
            kind,
            start: SystemTime::now(),
            attributes: Vec::new(),
            failed: false,
        }
    }

    /// Whether the span is recorded (attributes are worth computing).
    pub fn recording(&self) -> bool {
        self.tracer.is_some()
    }

    /// Sets an attribute, replacing an earlier value (kept only when
    /// recording).
    pub fn set(&mut self, key: &'static str, value: impl Into<Value>) {
        if !self.recording() {
            return;
        }
        let value = value.into();
        match self.attributes.iter_mut().find(|kv| kv.key.as_str() == key) {
            Some(kv) => kv.value = value,
            None => self.attributes.push(KeyValue::new(key, value)),
        }
    }

    /// Renames the span (the root, once its route is known).
    pub fn rename(&mut self, name: String) {
        if self.recording() {
            self.name = Cow::Owned(name);
        }
    }

    /// Marks the span as failed (OpenTelemetry's error status).
    pub fn fail(&mut self) {
        self.failed = true;
    }

    /// The `traceparent` that makes this span the parent of a call.
    pub fn traceparent(&self) -> String {
        traceparent(self.trace_id, self.span_id, self.recording())
    }

    /// The `tracestate` the trace arrived with.
    pub fn tracestate(&self) -> Option<&str> {
        self.state.as_deref()
    }

    /// Ends the span now and hands it to the export.
    pub fn end(self) {
        let Some(tracer) = &self.tracer else {
            return;
        };
        let state = self
            .state
            .as_deref()
            .and_then(|s| s.parse::<TraceState>().ok())
            .unwrap_or_default();
        let span = SpanData {
            span_context: SpanContext::new(
                TraceId::from_bytes(self.trace_id.to_be_bytes()),
                SpanId::from_bytes(self.span_id.to_be_bytes()),
                TraceFlags::SAMPLED,
                false,
                state,
            ),
            parent_span_id: SpanId::from_bytes(self.parent.to_be_bytes()),
            parent_span_is_remote: self.remote_parent,
            span_kind: self.kind,
            name: self.name,
            start_time: self.start,
            end_time: SystemTime::now(),
            attributes: self.attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: if self.failed {
                Status::error("")
            } else {
                Status::Unset
            },
            instrumentation_scope: tracer.scope.clone(),
        };
        tracer.export.submit(span);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::header_map;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparent_follows_the_w3c_rules() {
        assert_eq!(
            traceparent_fields(VALID.as_bytes()),
            Some((0x4bf92f3577b34da6a3ce929d0e0e4736, 0x00f067aa0ba902b7, 1))
        );
        for (value, ok) in [
            (VALID, true),
            // A later version may add fields after a dash.
            (
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-extra",
                true,
            ),
            (
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
                true,
            ),
            // Version 00 is exactly 55 characters.
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
                false,
            ),
            (
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                false,
            ),
            (
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
                false,
            ),
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                false,
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                false,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                false,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
                false,
            ),
            (
                "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                false,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
                false,
            ),
            ("", false),
            (
                "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                false,
            ),
        ] {
            assert_eq!(
                traceparent_fields(value.as_bytes()).is_some(),
                ok,
                "{value}"
            );
        }
    }

    #[test]
    fn a_traceparent_written_is_one_read_back() {
        for (trace, span, sampled) in [
            (1u128, 1u64, true),
            (u128::MAX, u64::MAX, false),
            (0x4bf92f3577b34da6a3ce929d0e0e4736, 0x00f067aa0ba902b7, true),
        ] {
            let value = traceparent(trace, span, sampled);
            assert_eq!(
                value,
                format!("00-{trace:032x}-{span:016x}-{:02x}", u8::from(sampled))
            );
            assert_eq!(
                traceparent_fields(value.as_bytes()),
                Some((trace, span, u8::from(sampled)))
            );
        }
    }

    #[test]
    fn an_incoming_context_needs_exactly_one_valid_traceparent() {
        let one = header_map(&[("traceparent", VALID), ("tracestate", "a=1, b=2")]);
        let got = incoming(&one).expect("valid");
        assert!(got.sampled);
        assert_eq!(got.state.as_deref(), Some("a=1,b=2"));
        let two = header_map(&[("traceparent", VALID), ("traceparent", VALID)]);
        assert_eq!(incoming(&two), None, "a repeated traceparent is ambiguous");
        let state_only = header_map(&[("tracestate", "a=1")]);
        assert_eq!(incoming(&state_only), None);
        // Entries past the bound are dropped whole.
        let long = (0..100)
            .map(|i| format!("k{i}=v"))
            .collect::<Vec<_>>()
            .join(",");
        let long = header_map(&[("traceparent", VALID), ("tracestate", long.as_str())]);
        let state = incoming(&long).and_then(|i| i.state).expect("state");
        assert!(state.len() <= MAX_TRACESTATE, "{}", state.len());
        assert!(state.split(',').count() <= MAX_TRACESTATE_ENTRIES);
        assert!(
            state
                .split(',')
                .all(|e| e.starts_with('k') && e.ends_with("=v"))
        );
        // In order across headers; nothing after the first entry that does
        // not fit; malformed entries dropped.
        let many = header_map(&[
            ("traceparent", VALID),
            ("tracestate", "a=1,junk,=x,b=2"),
            ("tracestate", "c=3"),
        ]);
        assert_eq!(
            incoming(&many).and_then(|i| i.state).as_deref(),
            Some("a=1,b=2,c=3")
        );
        let big = format!("a={}", "x".repeat(MAX_TRACESTATE));
        let cut = header_map(&[
            ("traceparent", VALID),
            ("tracestate", "first=1"),
            ("tracestate", big.as_str()),
            ("tracestate", "after=2"),
        ]);
        assert_eq!(
            incoming(&cut).and_then(|i| i.state).as_deref(),
            Some("first=1")
        );
    }

    #[test]
    fn sampling_follows_the_parent_else_the_ratio() {
        let parent = |sampled| Incoming {
            trace_id: 1,
            span_id: 1,
            sampled,
            state: None,
        };
        assert!(sampled(Some(&parent(true)), 0.0, 1));
        assert!(!sampled(Some(&parent(false)), 1.0, 1));
        assert!(sampled(None, 1.0, u128::MAX));
        assert!(!sampled(None, 0.0, 0));
        // About the ratio of random trace ids are recorded.
        let n = 20_000;
        let kept = (0..n)
            .filter(|_| sampled(None, 0.01, rand::random::<u128>()))
            .count();
        assert!((100..=320).contains(&kept), "{kept} of {n} at 1 %");
    }

    #[test]
    fn children_share_the_trace_and_name_their_parent() {
        let tracer = None;
        let root = Span {
            tracer,
            trace_id: 7,
            span_id: 9,
            parent: 0,
            remote_parent: false,
            state: Some("a=1".into()),
            name: Cow::Borrowed("request"),
            kind: SpanKind::Server,
            start: SystemTime::now(),
            attributes: Vec::new(),
            failed: false,
        };
        let child = root.child("upstream", SpanKind::Client);
        assert_eq!(child.parent, 9);
        assert_ne!(child.span_id, 9);
        assert_eq!(
            child.traceparent(),
            format!("00-{:032x}-{:016x}-00", 7, child.span_id)
        );
        assert_eq!(child.tracestate(), Some("a=1"));
        assert!(!child.recording());
    }
}
