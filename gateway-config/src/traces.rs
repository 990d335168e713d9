//! `tracing:`: OpenTelemetry traces of the requests the gateway serves,
//! exported to an OTLP/HTTP collector. Absent: no trace is started,
//! continued or passed on, and a client's `traceparent` goes upstream as
//! sent.

use serde::Deserialize;

/// The `service.name` the gateway's spans carry unless told otherwise.
pub const DEFAULT_SERVICE_NAME: &str = "portcullis-gateway";

/// `tracing:`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tracing {
    /// The collector's OTLP/HTTP base URL; spans are posted to
    /// `<otlp_endpoint>/v1/traces` as protobuf.
    pub otlp_endpoint: String,
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// The share of requests that start a recorded trace, 0 to 1. A request
    /// that arrives with a `traceparent` follows its sampled flag
    /// (parent-based), so a trace is recorded whole or not at all.
    #[serde(default = "default_ratio")]
    pub sampling_ratio: f64,
}

fn default_service_name() -> String {
    DEFAULT_SERVICE_NAME.into()
}

fn default_ratio() -> f64 {
    1.0
}

/// Every problem of `tracing:`, as (key, message).
pub(crate) fn problems(tracing: &Tracing) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    if let Some(problem) = contract::telemetry::otlp::endpoint_problem(&tracing.otlp_endpoint) {
        problems.push((
            "tracing.otlp_endpoint".into(),
            format!("{problem} (the collector's OTLP/HTTP base, such as http://127.0.0.1:4318)"),
        ));
    }
    let name = &tracing.service_name;
    if name.is_empty() || name.len() > 256 || name.chars().any(char::is_control) {
        problems.push((
            "tracing.service_name".into(),
            "must be 1 to 256 characters, none of them control characters".into(),
        ));
    }
    if !(0.0..=1.0).contains(&tracing.sampling_ratio) {
        problems.push((
            "tracing.sampling_ratio".into(),
            "must be a number from 0 to 1 (1: every new trace; 0: only those a client's \
             sampled traceparent asks for)"
                .into(),
        ));
    }
    problems
}
