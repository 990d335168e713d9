//! Traces of a service's requests (OpenTelemetry), off unless a collector
//! is named: `--otlp-endpoint` / `OTEL_EXPORTER_OTLP_ENDPOINT`.
//!
//! Each request is a span (method, route, status; never a header's value)
//! that continues the caller's W3C `traceparent`, so that the gateway, the
//! service and the services it calls ([`pass_on`]) share one trace.

pub use contract::telemetry::Traces;
pub use contract::telemetry::context::{continue_from, pass_on};
use contract::telemetry::otlp;

/// The flags every service takes.
#[derive(Debug, Clone, clap::Args)]
pub struct TraceArgs {
    /// OTLP/HTTP collector base URL (spans are posted to URL/v1/traces as
    /// protobuf); traces are off when unset.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// The `service.name` of this service's spans (default: the binary's
    /// name).
    #[arg(
        long = "otel-service-name",
        alias = "service-name",
        env = "OTEL_SERVICE_NAME"
    )]
    pub service_name: Option<String>,
    /// Share of new traces recorded, 0 to 1; a request with a
    /// `traceparent` follows its sampled flag (parent-based).
    #[arg(long, alias = "sampling-ratio", env = "OTEL_TRACES_SAMPLER_ARG",
          default_value_t = 1.0, value_parser = ratio)]
    pub trace_sampling_ratio: f64,
}

fn ratio(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{text:?} is not a number from 0 to 1")),
    }
}

impl Default for TraceArgs {
    /// Traces off.
    fn default() -> Self {
        TraceArgs {
            otlp_endpoint: None,
            service_name: None,
            trace_sampling_ratio: 1.0,
        }
    }
}

impl TraceArgs {
    /// The export settings, `None` when traces are off; an endpoint that is
    /// not an http(s) URL is refused.
    pub fn settings(&self, service: &str) -> Result<Option<otlp::Settings>, String> {
        let Some(endpoint) = self.otlp_endpoint.as_deref().filter(|e| !e.is_empty()) else {
            return Ok(None);
        };
        if let Some(problem) = otlp::endpoint_problem(endpoint) {
            return Err(format!(
                "--otlp-endpoint {problem} (the collector's OTLP/HTTP base, such as \
                 http://127.0.0.1:4318)"
            ));
        }
        Ok(Some(otlp::Settings {
            endpoint: endpoint.to_owned(),
            service_name: self
                .service_name
                .clone()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| service.to_owned()),
            sampling_ratio: self.trace_sampling_ratio,
        }))
    }
}

/// Records on `span` the status its exchange got, or with `None` that it
/// got no answer; a 5xx or no answer is OpenTelemetry's error status.
pub fn answered(span: &tracing::Span, status: Option<u16>) {
    if let Some(status) = status {
        span.record("http.response.status_code", status);
    }
    if status.is_none_or(|s| s >= 500) {
        span.record("otel.status_code", "ERROR");
    }
}

/// Logging, and with an endpoint, trace export; keep the guard until exit.
pub fn init(service: &str, args: &TraceArgs) -> Result<Option<Traces>, String> {
    let settings = args.settings(service)?;
    contract::telemetry::init_traced(settings.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        traces: TraceArgs,
    }

    #[test]
    fn traces_are_off_by_default_and_endpoints_and_ratios_are_checked() {
        let off = Cli::try_parse_from(["svc"]).expect("no flags");
        assert_eq!(off.traces.settings("svc"), Ok(None));
        let on = Cli::try_parse_from(["svc", "--otlp-endpoint", "http://127.0.0.1:4318"])
            .expect("endpoint");
        let settings = on.traces.settings("orders").expect("valid").expect("on");
        assert_eq!(settings.service_name, "orders");
        assert_eq!(settings.traces_url(), "http://127.0.0.1:4318/v1/traces");
        assert_eq!(settings.sampling_ratio, 1.0);
        for bad in ["127.0.0.1:4318", "ftp://c", "http://"] {
            let cli = Cli::try_parse_from(["svc", "--otlp-endpoint", bad]).expect("parsed");
            assert!(cli.traces.settings("svc").is_err(), "{bad}");
        }
        for bad in ["1.5", "-0.1", "NaN", "half"] {
            assert!(
                Cli::try_parse_from(["svc", "--trace-sampling-ratio", bad]).is_err(),
                "{bad}"
            );
        }
    }
}
