//! W3C trace context (`traceparent`, `tracestate`) on the services' HTTP
//! requests: continued from the request a service serves, passed on to the
//! calls it makes. Without [`super::init_traced`]'s export, spans carry no
//! trace context and nothing is read or written.

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Set once traces are exported: until then there is nothing to continue
/// or pass on, and no header is parsed.
pub(super) static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Makes `span` a child of the trace `headers` carry, if any (a malformed
/// `traceparent` is ignored: the span starts a trace of its own).
pub fn continue_from(span: &tracing::Span, headers: &http::HeaderMap) {
    if !EXPORTING.load(Ordering::Relaxed) || !headers.contains_key("traceparent") {
        return;
    }
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    let _ = span.set_parent(parent);
}

/// Writes `span`'s trace context into `headers`, for a call made on its
/// behalf; nothing when the span is not traced.
pub fn pass_on(span: &tracing::Span, headers: &mut http::HeaderMap) {
    if !EXPORTING.load(Ordering::Relaxed) {
        return;
    }
    let context = span.context();
    TraceContextPropagator::new().inject_context(&context, &mut HeaderInjector(headers));
}
