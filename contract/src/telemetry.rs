//! Logging set-up shared by every binary (the gateway and every service).

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;
use tracing::Subscriber;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

pub mod context;
mod line;
pub mod otlp;

pub use line::date_time;

/// Logs to stderr (stdout is kept for the `listening on` line), filtered by
/// `RUST_LOG` (default `info`), as JSON lines when `LOG_FORMAT=json`.
/// Colours only on a terminal and without `NO_COLOR`, so that files, pipes
/// and the `stack` command's prefixed output get plain text.
pub fn init() {
    let layer = stderr_layer(std::io::stderr, false);
    // A second initialisation (tests) is harmless, so its error is ignored.
    let _ = tracing_subscriber::registry()
        .with(env_filter())
        .with(layer)
        .try_init();
}

/// A request method as a span names it: one of HTTP's own (RFC 9110), or
/// `_OTHER` for one a client made up, which is no name to keep.
pub fn span_method(method: &str) -> &str {
    match method {
        "GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS" | "CONNECT" | "TRACE" => {
            method
        }
        _ => "_OTHER",
    }
}

/// As [`init`], and with `traces`, the spans at level `INFO` and above that
/// declare an `otel.kind` (never events: log lines may hold what a trace
/// must not) are exported
/// to an OTLP collector ([`otlp`]), each continuing the trace its request
/// came with ([`context`]). `RUST_LOG` filters spans as well as log lines:
/// the request spans are `INFO`, so a filter above it (`warn`) turns traces
/// off. Keep the returned guard until exit: dropping it sends the spans
/// still queued.
pub fn init_traced(traces: Option<&otlp::Settings>) -> Result<Option<Traces>, String> {
    let Some(settings) = traces else {
        init();
        return Ok(None);
    };
    use opentelemetry::trace::TracerProvider;
    use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
    let export = otlp::Export::start(settings, count_service_spans)?;
    let provider = SdkTracerProvider::builder()
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            settings.sampling_ratio,
        ))))
        .with_resource(
            opentelemetry_sdk::Resource::builder_empty()
                .with_service_name(settings.service_name.clone())
                .build(),
        )
        .with_span_processor(export)
        .build();
    let tracer = provider.tracer("portcullis");
    // Spans carry what the request was, not where in the code it ran.
    let spans = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_tracked_inactivity(false)
        // Only spans declared for export (they name their `otel.kind`): a
        // dependency's span, or an `#[instrument]` that records its
        // arguments, never reaches the collector.
        .with_filter(filter_fn(|m| {
            m.is_span()
                && *m.level() <= tracing::Level::INFO
                && m.fields().field("otel.kind").is_some()
        }));
    // `RUST_LOG` filters for both layers, globally: with it as a filter of
    // the log layer alone, the spans of requests that queried PostgreSQL
    // were seen never to close, and so never to be exported.
    let _ = tracing_subscriber::registry()
        .with(env_filter())
        .with(stderr_layer(std::io::stderr, false))
        .with(spans)
        .try_init();
    context::EXPORTING.store(true, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(
        endpoint = %settings.traces_url(),
        service = %settings.service_name,
        sampling_ratio = settings.sampling_ratio,
        "exporting traces"
    );
    Ok(Some(Traces(provider)))
}

/// The services' span export, flushed when dropped.
pub struct Traces(opentelemetry_sdk::trace::SdkTracerProvider);

impl Drop for Traces {
    fn drop(&mut self) {
        let _ = self.0.shutdown();
    }
}

/// A service has no metrics listener: lost spans are logged, at most once
/// a minute, with how many were lost since the last line. Only the export
/// thread logs: a span dropped on a full queue is dropped while `tracing`
/// is closing it, where a log line must not be made.
fn count_service_spans(counted: otlp::Counted, n: u64) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LOST: AtomicU64 = AtomicU64::new(0);
    static LAST: Mutex<Option<std::time::Instant>> = Mutex::new(None);
    if counted == otlp::Counted::Dropped {
        LOST.fetch_add(n, Ordering::Relaxed);
    }
    if std::thread::current().name() != Some(otlp::THREAD) || LOST.load(Ordering::Relaxed) == 0 {
        return;
    }
    let mut last = LAST.lock().unwrap_or_else(PoisonError::into_inner);
    if last.is_none_or(|at| at.elapsed() >= Duration::from_secs(60)) {
        *last = Some(std::time::Instant::now());
        drop(last);
        let lost = LOST.swap(0, Ordering::Relaxed);
        tracing::warn!(
            spans = lost,
            "trace spans dropped: the collector is slow or unreachable"
        );
    }
}

/// As [`init`], but the events of `target` (one line per request) are
/// appended to a buffer that a thread of its own writes out in batches:
/// every `interval`, or sooner once 64 KiB are waiting. The request that
/// logs a line only formats and copies it; a busy gateway makes one write
/// per batch instead of one per request, and never wakes another thread
/// per line. Every other event is written at once, as by [`init`]. A line
/// that would take the buffer past `capacity` bytes is dropped and
/// `dropped` called (a disk or pipe that cannot keep up must not slow or
/// stall requests). The returned guard writes what is waiting when dropped.
pub fn init_with_access_log(
    target: &'static str,
    capacity: usize,
    interval: Duration,
    dropped: fn(),
) -> AccessLog {
    let batch = Arc::new(Batch::new(Box::new(std::io::stderr()), capacity, dropped));
    let _ = ACCESS_LOG.set(Arc::clone(&batch));
    let writer = Arc::clone(&batch);
    let thread = std::thread::Builder::new()
        .name("access-log".into())
        .spawn(move || writer.run(interval));
    let log = AccessLog {
        batch: Arc::clone(&batch),
    };
    if thread.is_err() {
        // No thread, no batching: everything is written at once.
        init();
        return log;
    }
    let filter = env_filter();
    // Without a hint, a per-layer filter lifts the level below which
    // `log` records (Pingora's debug lines) are dropped before any work:
    // each would then be built and offered to the filter on every request.
    let hint = filter.max_level_hint();
    let only = |keep: bool| {
        let filter = filter_fn(move |m| (m.target() == target) == keep);
        match hint {
            Some(level) => filter.with_max_level_hint(level),
            None => filter,
        }
    };
    let immediate = stderr_layer(std::io::stderr, false).with_filter(only(false));
    let batched = stderr_layer(Batched(batch), true).with_filter(only(true));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(immediate)
        .with(batched)
        .try_init();
    log
}

fn env_filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))
}

/// A log layer writing to `writer`: JSON lines with `LOG_FORMAT=json`,
/// else text (for the access log, in [`line::Line`]'s cheaper, identical
/// text, without colours).
fn stderr_layer<S, W>(writer: W, access: bool) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(colour)
        // When stderr is gone (a supervisor died holding its pipe), a log
        // line is lost; reporting that would write to stderr again, and
        // `eprintln!` panics on a broken pipe, taking the logging thread
        // (a request, a shutdown) down with it.
        .log_internal_errors(false)
        .with_writer(writer);
    let json = std::env::var("LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    if json {
        layer.json().boxed()
    } else if access {
        layer.with_ansi(false).event_format(line::Line).boxed()
    } else {
        layer.boxed()
    }
}

/// Bytes waiting that make the writer go at once rather than at its
/// next interval.
const WRITE_AT: usize = 64 * 1024;

/// Lines waiting to be written, and where they go.
struct Batch {
    waiting: Mutex<Vec<u8>>,
    /// Taken (before `waiting`) for each write, so that batches go out in
    /// the order they were taken.
    out: Mutex<Box<dyn Write + Send>>,
    full: Condvar,
    capacity: usize,
    dropped: fn(),
}

impl Batch {
    fn new(out: Box<dyn Write + Send>, capacity: usize, dropped: fn()) -> Batch {
        Batch {
            waiting: Mutex::new(Vec::with_capacity(WRITE_AT)),
            out: Mutex::new(out),
            full: Condvar::new(),
            capacity,
            dropped,
        }
    }

    /// Adds a line; drops it when the buffer is at capacity.
    fn push(&self, line: &[u8]) {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        if waiting.len() + line.len() > self.capacity {
            drop(waiting);
            (self.dropped)();
            return;
        }
        let before = waiting.len();
        waiting.extend_from_slice(line);
        if before < WRITE_AT && waiting.len() >= WRITE_AT {
            self.full.notify_one();
        }
    }

    /// Writes everything waiting, in one write.
    fn write_out(&self) {
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        let batch = {
            let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
            if waiting.is_empty() {
                return;
            }
            std::mem::replace(&mut *waiting, Vec::with_capacity(WRITE_AT))
        };
        // A lost stderr loses the lines; nothing better can be done.
        let _ = out.write_all(&batch);
        let _ = out.flush();
    }

    /// The writer thread: a batch every `interval`, or when one is full.
    fn run(&self, interval: Duration) {
        loop {
            {
                let waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
                if waiting.len() < WRITE_AT {
                    let _ = self.full.wait_timeout(waiting, interval);
                }
            }
            self.write_out();
        }
    }
}

/// The writer of batched lines, as the log layer sees it.
struct Batched(Arc<Batch>);

impl<'a> MakeWriter<'a> for Batched {
    type Writer = Handover<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        Handover(&self.0)
    }
}

struct Handover<'a>(&'a Batch);

impl Write for Handover<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.push(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The access log of this process, once [`init_with_access_log`] ran.
static ACCESS_LOG: std::sync::OnceLock<Arc<Batch>> = std::sync::OnceLock::new();

/// Writes the access-log lines still waiting, for a process about to end
/// without returning from `main`.
pub fn flush_access_log() {
    if let Some(batch) = ACCESS_LOG.get() {
        batch.write_out();
    }
}

/// Held by `main`: on drop, the lines still waiting are written.
pub struct AccessLog {
    batch: Arc<Batch>,
}

impl AccessLog {
    /// Writes every line handed over so far.
    pub fn flush(&self) {
        self.batch.write_out();
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that records each write call separately.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Recorder {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn lines(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("line {i}\n")).collect()
    }

    #[test]
    fn waiting_lines_go_out_in_one_write_in_order() {
        let out = Recorder::default();
        let batch = Batch::new(Box::new(out.clone()), 1 << 20, || {});
        let writer = Batched(Arc::new(batch));
        for line in lines(50) {
            writer.make_writer().write_all(line.as_bytes()).unwrap();
        }
        assert!(out.0.lock().unwrap().is_empty(), "nothing written per line");
        writer.0.write_out();
        let writes = out.0.lock().unwrap();
        assert_eq!(writes.len(), 1, "one write for the whole batch");
        assert_eq!(
            String::from_utf8(writes[0].clone()).unwrap(),
            lines(50).concat()
        );
    }

    #[test]
    fn a_full_buffer_drops_the_line_and_says_so() {
        static DROPPED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let out = Recorder::default();
        let batch = Batch::new(Box::new(out.clone()), 16, || {
            DROPPED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        });
        for line in ["0123456\n", "abcdefg\n", "dropped\n", "again\n"] {
            batch.push(line.as_bytes());
        }
        assert_eq!(DROPPED.load(std::sync::atomic::Ordering::Relaxed), 2);
        batch.write_out();
        assert_eq!(out.0.lock().unwrap().concat(), b"0123456\nabcdefg\n");
        // Written out, the buffer takes lines again.
        batch.push(b"later\n");
        batch.write_out();
        assert_eq!(out.0.lock().unwrap().concat(), b"0123456\nabcdefg\nlater\n");
    }

    #[test]
    fn the_thread_writes_a_full_batch_at_once_and_the_rest_at_its_interval() {
        let out = Recorder::default();
        let batch = Arc::new(Batch::new(Box::new(out.clone()), 1 << 20, || {}));
        let writer = Arc::clone(&batch);
        // An interval far longer than the test: only a full batch wakes it.
        std::thread::spawn(move || writer.run(Duration::from_secs(3600)));
        let line = [b'x'; 1023]
            .iter()
            .chain(b"\n")
            .copied()
            .collect::<Vec<u8>>();
        for _ in 0..64 {
            batch.push(&line);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while out.0.lock().unwrap().is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(out.0.lock().unwrap().concat().len(), 64 * 1024);

        let out = Recorder::default();
        let batch = Arc::new(Batch::new(Box::new(out.clone()), 1 << 20, || {}));
        let writer = Arc::clone(&batch);
        std::thread::spawn(move || writer.run(Duration::from_millis(20)));
        batch.push(b"one line\n");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while out.0.lock().unwrap().is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(out.0.lock().unwrap().concat(), b"one line\n");
    }

    #[test]
    fn flush_writes_what_was_handed_over() {
        let out = Recorder::default();
        let log = AccessLog {
            batch: Arc::new(Batch::new(Box::new(out.clone()), 1 << 20, || {})),
        };
        log.batch.push(b"last\n");
        drop(log);
        assert_eq!(out.0.lock().unwrap().concat(), b"last\n");
    }
}
