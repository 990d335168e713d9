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
    /// Proxied WebSockets cut because their token expired or their user was
    /// revoked, by reason.
    pub sockets_cut: IntCounterVec,
    /// Requests refused by a rate limit, by route and scope (ip, route, user).
    pub rate_limited: IntCounterVec,
    /// Requests let through on a stale grant while the verifier was
    /// unavailable (stale-if-error).
    pub verify_stale: IntCounter,
    /// Client connections open now.
    pub connections_open: IntGauge,
    /// Client connections closed on arrival, by the bound they met.
    pub connections_refused: IntCounterVec,
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
        Metrics {
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
        }
    })
}
/// Status codes as static label strings, so the hot path does not format.
pub fn status_label(status: u16) -> &'static str {
    match status {
        0 => "0",
        200 => "200",
        201 => "201",
        204 => "204",
        301 => "301",
        302 => "302",
        304 => "304",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        409 => "409",
        413 => "413",
        422 => "422",
        429 => "429",
        431 => "431",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        s if s < 200 => "1xx",
        s if s < 300 => "2xx",
        s if s < 400 => "3xx",
        s if s < 500 => "4xx",
        _ => "5xx",
    }
}
