//! A collector for the tests: receives OTLP/HTTP trace exports, decodes
//! them with the official protobuf definitions (`opentelemetry-proto`), and
//! keeps every span for the test to read.

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
use prost::Message;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One received span, flattened.
#[derive(Debug, Clone)]
pub struct Span {
    /// The resource's `service.name`.
    pub service: String,
    pub name: String,
    /// Hex, as trace viewers show them; the parent is empty on a root.
    pub trace_id: String,
    pub span_id: String,
    pub parent_id: String,
    /// OTLP's span kind: 2 server, 3 client.
    pub kind: i32,
    /// Every attribute, its value as text.
    pub attributes: Vec<(String, String)>,
    /// The `trace_state` it was exported with.
    pub trace_state: String,
    /// Start and end, nanoseconds since the epoch.
    pub start: u64,
    pub end: u64,
}

impl Span {
    /// An attribute's value.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The collector, listening until dropped.
pub struct Collector {
    /// The OTLP/HTTP base URL to give the exporters.
    pub url: String,
    spans: Arc<Mutex<Vec<Span>>>,
    /// Export requests that did not decode.
    pub malformed: Arc<Mutex<usize>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(value: Option<&Any>) -> String {
    match value {
        Some(Any::StringValue(s)) => s.clone(),
        Some(Any::IntValue(i)) => i.to_string(),
        Some(Any::BoolValue(b)) => b.to_string(),
        Some(Any::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

/// The spans of one export request.
fn flatten(request: ExportTraceServiceRequest) -> Vec<Span> {
    let mut spans = Vec::new();
    for resource in request.resource_spans {
        let service = resource
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .map(|kv| text(kv.value.as_ref().and_then(|v| v.value.as_ref())))
            .unwrap_or_default();
        for scope in resource.scope_spans {
            for span in scope.spans {
                spans.push(Span {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_id: hex(&span.parent_span_id),
                    kind: span.kind,
                    attributes: span
                        .attributes
                        .into_iter()
                        .map(|kv| {
                            let value = text(kv.value.as_ref().and_then(|v| v.value.as_ref()));
                            (kv.key, value)
                        })
                        .collect(),
                    trace_state: span.trace_state,
                    start: span.start_time_unix_nano,
                    end: span.end_time_unix_nano,
                });
            }
        }
    }
    spans
}

/// One trace as an indented tree, each span with its service, kind,
/// duration and attributes: what a trace viewer shows, as text.
pub fn tree(spans: &[Span], trace_id: &str) -> String {
    let trace: Vec<&Span> = spans.iter().filter(|s| s.trace_id == trace_id).collect();
    let known = |id: &str| trace.iter().any(|s| s.span_id == id);
    let mut out = format!("trace {trace_id}\n");
    let mut roots: Vec<&Span> = trace
        .iter()
        .copied()
        .filter(|s| !known(&s.parent_id))
        .collect();
    roots.sort_by_key(|s| s.start);
    fn walk(out: &mut String, trace: &[&Span], span: &Span, depth: usize) {
        let kind = match span.kind {
            2 => "server",
            3 => "client",
            _ => "internal",
        };
        let attributes: Vec<String> = span
            .attributes
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        out.push_str(&format!(
            "{:indent$}{} [{}, {kind}] {:.2} ms  {}\n",
            "",
            span.name,
            span.service,
            span.end.saturating_sub(span.start) as f64 / 1e6,
            attributes.join(" "),
            indent = depth * 2
        ));
        let mut children: Vec<&&Span> = trace
            .iter()
            .filter(|s| s.parent_id == span.span_id)
            .collect();
        children.sort_by_key(|s| s.start);
        for child in children {
            walk(out, trace, child, depth + 1);
        }
    }
    for root in roots {
        walk(&mut out, &trace, root, 0);
    }
    out
}

impl Collector {
    pub async fn start() -> Collector {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the collector");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let spans = Arc::new(Mutex::new(Vec::new()));
        let malformed = Arc::new(Mutex::new(0));
        let (kept, bad) = (Arc::clone(&spans), Arc::clone(&malformed));
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| {
                let (kept, bad) = (Arc::clone(&kept), Arc::clone(&bad));
                async move {
                    match ExportTraceServiceRequest::decode(body) {
                        Ok(request) => kept.lock().expect("spans").extend(flatten(request)),
                        Err(_) => *bad.lock().expect("count") += 1,
                    }
                    (
                        [("content-type", "application/x-protobuf")],
                        ExportTraceServiceResponse::default().encode_to_vec(),
                    )
                }
            }),
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Collector {
            url,
            spans,
            malformed,
            task,
        }
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Span> {
        self.spans.lock().expect("spans").clone()
    }

    /// Waits (at most `limit`) until `done` holds for the spans received,
    /// and returns them either way.
    pub async fn wait_for(&self, limit: Duration, done: impl Fn(&[Span]) -> bool) -> Vec<Span> {
        let deadline = Instant::now() + limit;
        loop {
            let spans = self.spans();
            if done(&spans) || Instant::now() >= deadline {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
