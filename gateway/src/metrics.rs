//! Prometheus metrics, registered once in the default registry that the
//! metrics listener serves.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
};
use std::sync::OnceLock;

pub struct Metrics {
    /// Requests by route prefix (or `none`) and status.
    pub requests: IntCounterVec,
    /// Time from sending a request upstream to its end, by upstream pool.
    pub upstream_latency: HistogramVec,
    /// Verify cache lookups by result (`portcullis_verify_cache_total`),
    /// one handle per result so that counting needs no label lookup on
    /// every protected request: hit, miss, coalesced, expired.
    verify_cache: [IntCounter; 4],
    /// Duration of calls to the verifier (misses only).
    pub verify_latency: Histogram,
    /// Verifications that produced no answer, by reason.
    pub verify_failures: IntCounterVec,
    /// Client-sent identity headers removed.
    pub identity_stripped: IntCounter,
    /// Trace spans the collector accepted.
    pub trace_spans_exported: IntCounter,
    /// Trace spans lost: the export queue was full, or the collector
    /// refused them or did not answer.
    pub trace_spans_dropped: IntCounter,
    /// 1 when an upstream server passes its health check, by pool and server.
    pub upstream_healthy: IntGaugeVec,
    /// Reloads of routes.yaml by result: applied, rejected.
    pub reloads: IntCounterVec,
    /// Revocation messages received from the auth service.
    pub revocations: IntCounter,
    /// Cached verdicts dropped by revocations.
    pub revoked_entries: IntCounter,
    /// 1 while the revocation channel is subscribed.
    pub revocation_subscribed: IntGauge,
    /// 1 when revocations are followed on Redis (so that 0 above means a
    /// subscription down, not one never configured).
    pub revocation_configured: IntGauge,
    /// JWKS fetches (jwks mode), by trigger (start, max_age, unknown_kid)
    /// and result (ok, failed).
    pub jwks_fetches: IntCounterVec,
    /// Signature keys in the JWKS in force.
    pub jwks_keys: IntGauge,
    /// Tokens checked against the JWKS, by result (ok, or the reason for a
    /// refusal: unknown_kid, algorithm, bad_signature, expired, issuer,
    /// audience, claims, revoked, malformed, not_yet_valid).
    pub jwks_verifications: IntCounterVec,
    /// Proxied WebSockets cut because their token expired or their user was
    /// revoked, by reason.
    pub sockets_cut: IntCounterVec,
    /// Requests refused by a rate limit, by route and scope (ip, route, user).
    pub rate_limited: IntCounterVec,
    /// Requests shed by an upstream's limits, by upstream and limit.
    pub upstream_overloaded: IntCounterVec,
    /// Shared rate-limit checks answered without Redis, by route and scope.
    pub rate_limit_fallbacks: IntCounterVec,
    /// Failed attempts that went again or could not, by upstream and outcome.
    pub upstream_retries: IntCounterVec,
    /// Servers taken out of rotation by passive health, by upstream and server.
    pub upstream_ejections: IntCounterVec,
    /// Requests let through on a stale grant while the verifier was
    /// unavailable (stale-if-error).
    pub verify_stale: IntCounter,
    /// Client connections open now.
    pub connections_open: IntGauge,
    /// Client connections closed on arrival, by the bound they met.
    pub connections_refused: IntCounterVec,
    /// Access-log lines dropped because the writer could not keep up.
    pub access_log_dropped: IntCounter,
}

/// Counts one access-log line dropped (see `contract::telemetry`).
pub fn access_log_dropped() {
    get().access_log_dropped.inc();
}

fn counter(name: &str, help: &str) -> IntCounter {
    register(
        IntCounter::new(name, help)
            .unwrap_or_else(|e| unreachable!("metric {name} is well-formed: {e}")),
    )
}

fn register<C: prometheus::core::Collector + Clone + 'static>(collector: C) -> C {
    // A second registration (several gateways in one test process) is
    // harmless: the first one is what the listener serves.
    let _ = prometheus::default_registry().register(Box::new(collector.clone()));
    collector
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        IntCounterVec::new(Opts::new(name, help), labels)
            .unwrap_or_else(|e| unreachable!("metric {name} is well-formed: {e}")),
    )
}

impl Metrics {
    /// Counts one verify cache lookup by its result: `hit`, `miss`,
    /// `coalesced` or `expired` (the labels registered, in that order).
    /// Verdict lookups answered without asking (hits and coalesced) and
    /// those that asked (misses), since start.
    pub fn verify_counts(&self) -> (u64, u64) {
        (
            self.verify_cache[0].get() + self.verify_cache[2].get(),
            self.verify_cache[1].get(),
        )
    }

    pub fn verify_result(&self, result: &str) {
        let index = match result {
            "hit" => 0,
            "miss" => 1,
            "coalesced" => 2,
            _ => 3,
        };
        self.verify_cache[index].inc();
    }
}

pub fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        let buckets = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        let metrics = Metrics {
            requests: counter_vec(
                "portcullis_requests_total",
                "Requests answered, by route prefix and status.",
                &["route", "status"],
            ),
            upstream_latency: register(
                HistogramVec::new(
                    HistogramOpts::new(
                        "portcullis_upstream_latency_seconds",
                        "Time spent on the upstream, by pool.",
                    )
                    .buckets(buckets.clone()),
                    &["upstream"],
                )
                .unwrap_or_else(|e| unreachable!("well-formed: {e}")),
            ),
            verify_cache: {
                let vec = counter_vec(
                    "portcullis_verify_cache_total",
                    "Token verdict lookups: hit, miss, coalesced (waited for another request's call), expired.",
                    &["result"],
                );
                ["hit", "miss", "coalesced", "expired"].map(|label| vec.with_label_values(&[label]))
            },
            verify_latency: register(
                Histogram::with_opts(
                    HistogramOpts::new(
                        "portcullis_verify_latency_seconds",
                        "Duration of token verifications that missed the cache.",
                    )
                    .buckets(buckets),
                )
                .unwrap_or_else(|e| unreachable!("well-formed: {e}")),
            ),
            verify_failures: counter_vec(
                "portcullis_verify_failures_total",
                "Verifications without an answer (answered 503), by reason.",
                &["reason"],
            ),
            identity_stripped: counter(
                "portcullis_identity_headers_stripped_total",
                "Client-sent x-user-id / x-user-role headers removed.",
            ),
            trace_spans_exported: counter(
                "portcullis_trace_spans_exported_total",
                "Trace spans the OTLP collector accepted.",
            ),
            trace_spans_dropped: counter(
                "portcullis_trace_spans_dropped_total",
                "Trace spans lost: export queue full, or the collector refused them or did not answer.",
            ),
            upstream_healthy: register(
                IntGaugeVec::new(
                    Opts::new(
                        "portcullis_upstream_healthy",
                        "1 when the upstream server passes its health check.",
                    ),
                    &["upstream", "server"],
                )
                .unwrap_or_else(|e| unreachable!("well-formed: {e}")),
            ),
            reloads: counter_vec(
                "portcullis_config_reloads_total",
                "Reloads of the routes file: applied or rejected.",
                &["result"],
            ),
            revocations: counter(
                "portcullis_revocations_total",
                "Revocation messages received from the auth service.",
            ),
            revoked_entries: counter(
                "portcullis_revoked_entries_total",
                "Cached verdicts dropped by revocations.",
            ),
            revocation_subscribed: register(
                IntGauge::new(
                    "portcullis_revocation_subscribed",
                    "1 while the revocation channel is subscribed.",
                )
                .unwrap_or_else(|e| unreachable!("well-formed: {e}")),
            ),
            revocation_configured: register(
                IntGauge::new(
                    "portcullis_revocation_configured",
                    "1 when revocations are followed on Redis.",
                )
                .unwrap_or_else(|e| unreachable!("well-formed: {e}")),
            ),
            jwks_fetches: counter_vec(
                "portcullis_jwks_fetches_total",
                "JWKS fetches, by trigger and result.",
                &["trigger", "result"],
            ),
            jwks_keys: register(
                IntGauge::new(
                    "portcullis_jwks_keys",
                    "Signature keys in the JWKS in force.",
                )
                .unwrap_or_else(|e| unreachable!("well-formed: {e}")),
            ),
            jwks_verifications: counter_vec(
                "portcullis_jwks_verifications_total",
                "Tokens checked against the JWKS, by result.",
                &["result"],
            ),
            sockets_cut: counter_vec(
                "portcullis_websockets_cut_total",
                "Proxied WebSockets cut because their token expired or their user was revoked.",
                &["reason"],
            ),
            rate_limited: counter_vec(
                "portcullis_rate_limited_total",
                "Requests refused by a rate limit, by route and scope.",
                &["route", "scope"],
            ),
            upstream_overloaded: counter_vec(
                "portcullis_upstream_overloaded_total",
                "Requests answered 503 at once because an upstream's limits were reached, by upstream and limit.",
                &["upstream", "limit"],
            ),
            rate_limit_fallbacks: counter_vec(
                "portcullis_rate_limit_fallbacks_total",
                "Shared (store: redis) rate-limit checks answered by the fallback while Redis could not answer, by route and scope.",
                &["route", "scope"],
            ),
            upstream_retries: counter_vec(
                "portcullis_upstream_retries_total",
                "Failed upstream attempts sent again (retried) or not (attempts_exhausted, budget_exhausted), by upstream.",
                &["upstream", "outcome"],
            ),
            upstream_ejections: counter_vec(
                "portcullis_upstream_ejections_total",
                "Servers taken out of rotation after failing in live traffic, by upstream and server.",
                &["upstream", "server"],
            ),
            verify_stale: counter(
                "portcullis_verify_stale_total",
                "Requests let through on a stale grant while the verifier was unavailable.",
            ),
            connections_open: register(
                IntGauge::new(
                    "portcullis_connections_open",
                    "Client connections open now.",
                )
                .unwrap_or_else(|e| unreachable!("well-formed: {e}")),
            ),
            connections_refused: counter_vec(
                "portcullis_connections_refused_total",
                "Client connections closed on arrival, by the bound they met.",
                &["reason"],
            ),
            access_log_dropped: counter(
                "portcullis_access_log_dropped_total",
                "Access-log lines dropped because writing them could not keep up.",
            ),
        };
        // Series that alerts compare over time exist from the start at 0:
        // `increase()` cannot see a series' first sample.
        for result in ["applied", "rejected"] {
            metrics.reloads.with_label_values(&[result]);
        }
        metrics
    })
}
/// The status labels of `portcullis_requests_total`: the common codes one
/// by one, the rest by class.
const STATUS_LABELS: [&str; 27] = [
    "0", "200", "201", "204", "301", "302", "304", "400", "401", "403", "404", "405", "409", "413",
    "422", "429", "431", "500", "502", "503", "504", "1xx", "2xx", "3xx", "4xx", "5xx", "other",
];

/// The index of a status's label in [`STATUS_LABELS`].
fn status_index(status: u16) -> usize {
    // Counted on every request: a jump table, no string work.
    match status {
        0 => 0,
        200 => 1,
        201 => 2,
        204 => 3,
        301 => 4,
        302 => 5,
        304 => 6,
        400 => 7,
        401 => 8,
        403 => 9,
        404 => 10,
        405 => 11,
        409 => 12,
        413 => 13,
        422 => 14,
        429 => 15,
        431 => 16,
        500 => 17,
        502 => 18,
        503 => 19,
        504 => 20,
        other => match other / 100 {
            1 => 21,
            2 => 22,
            3 => 23,
            4 => 24,
            5 => 25,
            _ => 26,
        },
    }
}

/// Status codes as static label strings, so the hot path does not format.
pub fn status_label(status: u16) -> &'static str {
    STATUS_LABELS[status_index(status)]
}

/// One route's request counters, by status: each handle is looked up in
/// the registry the first time its status is counted and kept, so that
/// counting a request hashes no label. Built with the route table; a new
/// table's handles count on in the same series.
#[derive(Clone)]
pub struct RequestCounts {
    route: String,
    by_status: [OnceLock<IntCounter>; STATUS_LABELS.len()],
}

impl RequestCounts {
    pub fn new(route: &str) -> Self {
        RequestCounts {
            route: route.to_owned(),
            by_status: std::array::from_fn(|_| OnceLock::new()),
        }
    }

    /// The counters of requests no route took.
    pub fn unrouted() -> &'static RequestCounts {
        static NONE: OnceLock<RequestCounts> = OnceLock::new();
        NONE.get_or_init(|| RequestCounts::new("none"))
    }

    /// Counts one answered request.
    pub fn count(&self, status: u16) {
        let index = status_index(status);
        self.by_status[index]
            .get_or_init(|| {
                get()
                    .requests
                    .with_label_values(&[self.route.as_str(), STATUS_LABELS[index]])
            })
            .inc();
    }
}

impl std::fmt::Debug for RequestCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestCounts")
            .field("route", &self.route)
            .finish_non_exhaustive()
    }
}

/// Two routes' counters are alike when they count the same series.
impl PartialEq for RequestCounts {
    fn eq(&self, other: &Self) -> bool {
        self.route == other.route
    }
}

impl Eq for RequestCounts {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_exact_label_is_its_own_status() {
        for label in &STATUS_LABELS[..21] {
            let status: u16 = label.parse().expect("a status code");
            assert_eq!(status_label(status), *label);
        }
    }

    #[test]
    fn every_status_has_its_label() {
        let cases = [
            (0, "0"),
            (200, "200"),
            (204, "204"),
            (404, "404"),
            (504, "504"),
            (101, "1xx"),
            (206, "2xx"),
            (308, "3xx"),
            (418, "4xx"),
            (599, "5xx"),
            (600, "other"),
            (42, "other"),
        ];
        for (status, label) in cases {
            assert_eq!(status_label(status), label, "{status}");
        }
    }

    #[test]
    fn cached_handles_count_in_the_registered_series() {
        let counts = RequestCounts::new("/metrics-test-route");
        counts.count(200);
        counts.count(200);
        counts.count(418);
        let series = |status: &str| {
            get()
                .requests
                .with_label_values(&["/metrics-test-route", status])
                .get()
        };
        assert_eq!(series("200"), 2);
        assert_eq!(series("4xx"), 1);
        // A second table's handles (after a reload) count on in the same series.
        RequestCounts::new("/metrics-test-route").count(200);
        assert_eq!(series("200"), 3);
    }
}
