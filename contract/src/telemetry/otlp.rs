//! Spans to an OTLP/HTTP collector (protobuf), batched and bounded, never in
//! a request's way.
//!
//! A finished span is handed over with one `try_send` into a bounded queue
//! ([`Export::submit`]); a thread of its own takes it from there, looking
//! every [`POLL`] (never woken by a sender), in batches of up to [`BATCH`]
//! spans, at least every [`INTERVAL`]. When the queue is
//! full (the collector is slow or gone, and the thread is still waiting on
//! it), the span is dropped and counted: a dead collector costs a request
//! one failed `try_send`, never a wait. A batch the collector refuses or
//! never answers (within [`TIMEOUT`], one retry) is dropped and counted too.
//!
//! The gateway builds its spans itself ([`Export::submit`]); the services
//! record theirs with `tracing` and hand them over through the
//! OpenTelemetry SDK, for which [`Export`] is the span processor.

use opentelemetry::Context;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Spans waiting for the export thread, at most; beyond, they are dropped.
pub const QUEUE: usize = 16_384;
/// Spans per export request, at most.
pub const BATCH: usize = 512;
/// A span waits at most this long before its batch is sent.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// How often the export thread looks at the queue: at [`QUEUE`] spans, a
/// gateway may hand over 160 000 spans a second before any is dropped.
pub const POLL: Duration = Duration::from_millis(100);
/// One export request's deadline, retry included.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Where spans go and what they are labelled with.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The collector's OTLP/HTTP base URL (as `OTEL_EXPORTER_OTLP_ENDPOINT`);
    /// spans are posted to `<endpoint>/v1/traces`.
    pub endpoint: String,
    /// The resource's `service.name`.
    pub service_name: String,
    /// The share of new traces recorded (0 to 1); a trace that arrives
    /// with a parent keeps the parent's choice.
    pub sampling_ratio: f64,
}

/// Why `endpoint` cannot be a collector's OTLP/HTTP base URL, when it
/// cannot: http or https, a host and a valid port, no credentials (a
/// collector's are sent with `OTEL_EXPORTER_OTLP_HEADERS`, so they never
/// show in a page or a log line), no query or fragment (the path
/// `/v1/traces` is appended).
pub fn endpoint_problem(endpoint: &str) -> Option<&'static str> {
    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
        return Some("must be an http:// or https:// URL");
    }
    if endpoint.contains(['?', '#']) {
        return Some("must not have a query or a fragment");
    }
    let Ok(uri) = endpoint.parse::<http::Uri>() else {
        return Some("is not a valid URL");
    };
    let Some(authority) = uri.authority() else {
        return Some("names no host");
    };
    if authority.as_str().contains('@') {
        return Some("must not carry credentials (give them with OTEL_EXPORTER_OTLP_HEADERS)");
    }
    if authority.host().is_empty() {
        return Some("names no host");
    }
    // `Authority::port` is `None` for a port that is not a number, so the
    // text after the host is read here.
    let after_host = authority
        .as_str()
        .rsplit_once(']')
        .map_or(authority.as_str(), |(_, rest)| rest);
    if let Some((_, port)) = after_host.rsplit_once(':')
        && !port.parse::<u16>().is_ok_and(|p| p != 0)
    {
        return Some("has an invalid port");
    }
    None
}

impl Settings {
    /// Where the spans are posted.
    pub fn traces_url(&self) -> String {
        format!("{}/v1/traces", self.endpoint.trim_end_matches('/'))
    }
}

/// What happened to spans, for the caller's counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// The collector accepted them.
    Exported,
    /// The queue was full, or the collector refused or did not answer.
    Dropped,
}

/// The export thread's name.
pub const THREAD: &str = "otlp-export";

/// The hand-over to the export thread. Dropping the last handle sends what
/// is queued and ends the thread.
pub struct Export {
    queue: SyncSender<SpanData>,
    count: fn(Counted, u64),
    /// Set by [`Export::shutdown`]: the thread sends what is queued and
    /// ends (a sender cannot be closed through a shared handle).
    closing: Arc<AtomicBool>,
    /// The export thread, joined by [`Export::shutdown`].
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl std::fmt::Debug for Export {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Export").finish_non_exhaustive()
    }
}

impl Export {
    /// Starts the export thread. `count` is called with the number of spans
    /// exported or dropped, from the request that dropped one or from the
    /// export thread.
    pub fn start(settings: &Settings, count: fn(Counted, u64)) -> Result<Export, String> {
        if let Some(problem) = endpoint_problem(&settings.endpoint) {
            return Err(format!("the OTLP endpoint {problem}"));
        }
        let url = settings.traces_url();
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .connect_timeout(TIMEOUT)
            // Spans go to the collector named, never where it points.
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .map_err(|e| format!("OTLP client: {e}"))?;
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(Client(client))
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(url)
            .with_timeout(TIMEOUT)
            .with_retry_policy(
                opentelemetry_otlp::RetryPolicy::recommended()
                    .with_max_retries(1)
                    .with_initial_delay(Duration::from_millis(100))
                    .with_max_delay(Duration::from_millis(500)),
            )
            .build()
            .map_err(|e| format!("OTLP exporter: {e}"))?;
        exporter.set_resource(
            &Resource::builder_empty()
                .with_service_name(settings.service_name.clone())
                .build(),
        );
        let (queue, spans) = std::sync::mpsc::sync_channel(QUEUE);
        let closing = Arc::new(AtomicBool::new(false));
        let closed = Arc::clone(&closing);
        let thread = std::thread::Builder::new()
            .name(THREAD.into())
            .spawn(move || run(exporter, spans, &closed, count))
            .map_err(|e| format!("OTLP export thread: {e}"))?;
        Ok(Export {
            queue,
            count,
            closing,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queues a finished span; drops and counts it when the queue is full.
    pub fn submit(&self, span: SpanData) {
        if self.closing.load(Ordering::Relaxed) {
            (self.count)(Counted::Dropped, 1);
            return;
        }
        match self.queue.try_send(span) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                (self.count)(Counted::Dropped, 1);
            }
        }
    }

    /// Sends what is queued and stops the thread (at exit, so that the last
    /// spans are not lost), waiting at most [`TIMEOUT`] plus a batch's
    /// worth of time. Spans submitted afterwards are dropped and counted.
    pub fn shutdown(&self) {
        self.closing.store(true, Ordering::Relaxed);
        let handle = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(handle) = handle {
            let deadline = Instant::now() + TIMEOUT + INTERVAL;
            while !handle.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if handle.is_finished() {
                let _ = handle.join();
            }
        }
    }
}

/// The export thread: batches, sends, counts; ends when the queue closes.
fn run<E: SpanExporter>(
    exporter: E,
    spans: Receiver<SpanData>,
    closing: &AtomicBool,
    count: fn(Counted, u64),
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(_) => {
            // No runtime, no export: everything queued is dropped.
            for _ in spans.iter() {
                count(Counted::Dropped, 1);
            }
            return;
        }
    };
    let export = |batch: Vec<SpanData>| {
        let n = batch.len() as u64;
        match runtime.block_on(exporter.export(batch)) {
            Ok(()) => count(Counted::Exported, n),
            Err(_) => count(Counted::Dropped, n),
        }
    };
    let mut batch = Vec::with_capacity(BATCH);
    let mut due = Instant::now() + INTERVAL;
    loop {
        // The queue is polled, never waited on: a sender finds no thread
        // to wake, so handing a span over is a few atomic operations, not
        // a lock and a context switch per span.
        let open = loop {
            match spans.try_recv() {
                Ok(span) => {
                    batch.push(span);
                    if batch.len() >= BATCH {
                        export(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)));
                        due = Instant::now() + INTERVAL;
                    }
                }
                Err(TryRecvError::Empty) => break !closing.load(Ordering::Relaxed),
                Err(TryRecvError::Disconnected) => break false,
            }
        };
        if !open || Instant::now() >= due {
            if !batch.is_empty() {
                export(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)));
            }
            due = Instant::now() + INTERVAL;
        }
        if !open {
            return;
        }
        std::thread::sleep(POLL);
    }
}

/// The services' spans, recorded by the SDK, go the same way.
impl SpanProcessor for Export {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        self.submit(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Export::shutdown(self);
        Ok(())
    }
}

/// The export's HTTP client: the workspace's reqwest, with its timeouts.
#[derive(Debug)]
struct Client(reqwest::Client);

/// A collector's answer is an (almost always empty) protobuf message; a
/// larger one is not read.
const MAX_ANSWER: usize = 64 * 1024;

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for Client {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let (parts, body) = request.into_parts();
        let response = self
            .0
            .request(parts.method, parts.uri.to_string())
            .headers(parts.headers)
            .body(body)
            .send()
            .await?;
        let status = response.status();
        let mut response = response;
        // Read chunk by chunk, so that an answer without a length cannot
        // make the gateway hold more than the bound.
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            if body.len() + chunk.len() > MAX_ANSWER {
                return Err(format!("collector answer over {MAX_ANSWER} bytes").into());
            }
            body.extend_from_slice(&chunk);
        }
        let mut answer = http::Response::new(bytes::Bytes::from(body));
        *answer.status_mut() = status;
        Ok(answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{
        SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
    };
    use std::sync::atomic::AtomicU64;

    static DROPPED: AtomicU64 = AtomicU64::new(0);
    static EXPORTED: AtomicU64 = AtomicU64::new(0);

    fn count(counted: Counted, n: u64) {
        match counted {
            Counted::Dropped => DROPPED.fetch_add(n, Ordering::Relaxed),
            Counted::Exported => EXPORTED.fetch_add(n, Ordering::Relaxed),
        };
    }

    fn span() -> SpanData {
        SpanData {
            span_context: SpanContext::new(
                TraceId::from_bytes([1; 16]),
                SpanId::from_bytes([2; 8]),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            ),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Internal,
            name: "test".into(),
            start_time: std::time::SystemTime::now(),
            end_time: std::time::SystemTime::now(),
            attributes: Vec::new(),
            dropped_attributes_count: 0,
            events: Default::default(),
            links: Default::default(),
            status: Status::Unset,
            instrumentation_scope: Default::default(),
        }
    }

    #[test]
    fn a_collector_that_never_answers_fills_the_queue_and_the_rest_are_counted_dropped() {
        // Accepts connections (the kernel's backlog) and never answers.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let settings = Settings {
            endpoint: format!("http://{}", silent.local_addr().expect("address")),
            service_name: "test".into(),
            sampling_ratio: 1.0,
        };
        let export = Export::start(&settings, count).expect("export");
        // The thread holds at most one batch while it waits on the
        // collector; the queue holds QUEUE more; the rest cannot wait.
        let extra = 1_000;
        for _ in 0..QUEUE + BATCH + extra {
            export.submit(span());
        }
        assert!(
            DROPPED.load(Ordering::Relaxed) >= extra as u64,
            "{} dropped",
            DROPPED.load(Ordering::Relaxed)
        );
        assert_eq!(EXPORTED.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn endpoints_are_plain_collector_urls() {
        for ok in [
            "http://127.0.0.1:4318",
            "https://collector.example/otlp",
            "http://[::1]:4318/",
            "http://collector",
        ] {
            assert_eq!(endpoint_problem(ok), None, "{ok}");
        }
        for bad in [
            "127.0.0.1:4318",
            "ftp://c",
            "http://",
            "http://c:99999",
            "http://c:abc",
            "http://c:0",
            "http://c/?key=1",
            "http://c/#f",
            "http://user:secret@c:4318",
        ] {
            assert!(endpoint_problem(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn endpoints_get_the_traces_path_once() {
        for (endpoint, url) in [
            ("http://c:4318", "http://c:4318/v1/traces"),
            ("http://c:4318/", "http://c:4318/v1/traces"),
            ("https://c/otlp", "https://c/otlp/v1/traces"),
        ] {
            let settings = Settings {
                endpoint: endpoint.into(),
                service_name: "s".into(),
                sampling_ratio: 1.0,
            };
            assert_eq!(settings.traces_url(), url);
        }
    }
}
