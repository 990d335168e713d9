//! One request through the gateway, seen as one trace across the services
//! it reaches, as an operator's trace viewer shows it.

use e2e::otlp::{Collector, Span};
use e2e::{Options, Stack};
use serde_json::json;
use std::time::Duration;

const CLIENT_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const CLIENT_SPAN: &str = "b7ad6b7169203331";

fn one<'a>(spans: &'a [Span], what: &str, pick: impl Fn(&Span) -> bool) -> &'a Span {
    let found: Vec<&Span> = spans.iter().filter(|s| pick(s)).collect();
    assert_eq!(found.len(), 1, "{what}: {found:#?}\nall spans: {spans:#?}");
    found[0]
}

/// A stack whose every process exports to a collector of the test's own,
/// and a signed-in user.
async fn traced_stack() -> (Collector, Stack, e2e::User) {
    let collector = Collector::start().await;
    let stack = Stack::with(Options {
        traces: Some(collector.url.clone()),
        ..Options::default()
    })
    .await;
    let alice = stack.register("alice").await;
    (collector, stack, alice)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_is_one_trace_from_the_gateway_through_orders_to_inventory() {
    let (collector, stack, alice) = traced_stack().await;

    let traceparent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    let placed = alice
        .send_with(
            http::Method::POST,
            "/api/orders",
            &[
                ("traceparent", traceparent.as_str()),
                ("tracestate", "vendor=abc"),
            ],
            Some(&json!({"sku": "MN-003", "quantity": 1})),
        )
        .await;
    assert_eq!(placed.status, 201, "{}", placed.body);

    let spans = collector
        .wait_for(Duration::from_secs(20), |spans| {
            let traced = |service: &str| {
                spans
                    .iter()
                    .any(|s| s.trace_id == CLIENT_TRACE && s.service == service)
            };
            traced("inventory") && traced("auth-service") && traced("portcullis-gateway") && {
                // Every gateway span of the request (the root ends last).
                spans
                    .iter()
                    .any(|s| s.trace_id == CLIENT_TRACE && s.parent_id == CLIENT_SPAN)
            }
        })
        .await;
    let trace: Vec<Span> = spans
        .iter()
        .filter(|s| s.trace_id == CLIENT_TRACE)
        .cloned()
        .collect();
    // Shown with --nocapture: the trace as a viewer would draw it.
    eprintln!("{}", e2e::otlp::tree(&spans, CLIENT_TRACE));

    // The gateway continues the client's trace: its root's parent is the
    // client's span, and the trace state is kept.
    let root = one(&trace, "the gateway's root", |s| {
        s.service == "portcullis-gateway" && s.parent_id == CLIENT_SPAN
    });
    assert_eq!(root.kind, 2, "server span");
    assert_eq!(root.name, "POST /api/orders");
    assert_eq!(root.attribute("http.response.status_code"), Some("201"));
    assert_eq!(root.attribute("http.route"), Some("/api/orders"));
    assert_eq!(root.attribute("portcullis.upstream"), Some("orders"));
    assert_eq!(
        root.attribute("enduser.id"),
        Some(alice.id.to_string().as_str())
    );
    assert_eq!(root.trace_state, "vendor=abc");
    let child_of = |parent: &Span, service: &str, name: &str| {
        one(
            &trace,
            &format!("{service} {name} under {}", parent.name),
            |s| s.parent_id == parent.span_id && s.service == service && s.name == name,
        )
        .clone()
    };
    let routing = child_of(root, "portcullis-gateway", "route");
    assert_eq!(routing.attribute("http.route"), Some("/api/orders"));

    // Alice's first request with this token: a cache miss, verified by the
    // auth service in a span of its own under the gateway's call.
    let verify = child_of(root, "portcullis-gateway", "verify token");
    assert_eq!(verify.attribute("portcullis.auth.cache"), Some("miss"));
    let call = child_of(&verify, "portcullis-gateway", "POST /api/verify");
    assert_eq!(call.kind, 3, "client span");
    assert_eq!(call.attribute("http.response.status_code"), Some("200"));
    let verified = child_of(&call, "auth-service", "POST /api/verify");
    assert_eq!(verified.kind, 2);
    assert_eq!(verified.attribute("http.response.status_code"), Some("200"));

    // The upstream exchange, then orders, its call to inventory, and
    // inventory's reservation, each the child of the one before.
    let upstream = child_of(root, "portcullis-gateway", "upstream");
    assert_eq!(upstream.kind, 3);
    assert_eq!(upstream.attribute("http.response.status_code"), Some("201"));
    assert_eq!(
        upstream.attribute("server.address"),
        Some(stack.address(e2e::Service::Orders(0)).to_string().as_str())
    );
    let orders = child_of(&upstream, "orders", "POST /api/orders");
    assert_eq!(orders.kind, 2);
    assert_eq!(orders.attribute("http.response.status_code"), Some("201"));
    let reserve = child_of(&orders, "orders", "POST /internal/reserve");
    assert_eq!(reserve.kind, 3);
    let reserved = child_of(&reserve, "inventory", "POST /internal/reserve");
    assert_eq!(reserved.attribute("http.response.status_code"), Some("200"));

    // A second request with the same token, no trace context: a trace of
    // its own, the verdict from the cache, no call to the auth service.
    let listed = alice.get("/api/orders").await;
    assert_eq!(listed.status, 200);
    let spans = collector
        .wait_for(Duration::from_secs(20), |spans| {
            spans.iter().any(|s| {
                s.name == "GET /api/orders"
                    && s.service == "portcullis-gateway"
                    && s.parent_id.is_empty()
            }) && spans
                .iter()
                .any(|s| s.name == "GET /api/orders" && s.service == "orders")
        })
        .await;
    let second = one(&spans, "the second request's root", |s| {
        s.name == "GET /api/orders" && s.service == "portcullis-gateway"
    });
    assert_ne!(second.trace_id, CLIENT_TRACE);
    let second_trace: Vec<Span> = spans
        .iter()
        .filter(|s| s.trace_id == second.trace_id)
        .cloned()
        .collect();
    let cached = one(&second_trace, "the cached verification", |s| {
        s.name == "verify token"
    });
    assert_eq!(cached.attribute("portcullis.auth.cache"), Some("hit"));
    assert!(
        !second_trace.iter().any(|s| s.name == "POST /api/verify"),
        "a cache hit asked the auth service: {second_trace:#?}"
    );
    let orders_span = one(&second_trace, "orders' span", |s| s.service == "orders");
    assert!(
        second_trace
            .iter()
            .any(|s| s.name == "upstream" && s.span_id == orders_span.parent_id)
    );

    // No span anywhere holds a credential: not in an attribute, a name or
    // the trace state.
    for span in collector.spans() {
        for secret in [alice.access.as_str(), alice.refresh.as_str(), "Bearer"] {
            assert!(
                !span.name.contains(secret) && !span.trace_state.contains(secret),
                "{} {} holds a credential",
                span.service,
                span.name
            );
        }
        for (key, value) in &span.attributes {
            for secret in [alice.access.as_str(), alice.refresh.as_str(), "Bearer"] {
                assert!(
                    !value.contains(secret) && !key.contains(secret),
                    "{} {} holds a credential in {key}",
                    span.service,
                    span.name
                );
            }
        }
    }
    // The gateway checks every service's health all along: none of it is
    // traced.
    assert!(
        !collector
            .spans()
            .iter()
            .any(|s| s.attribute("url.path") == Some("/healthz")),
        "health checks were traced"
    );
    assert_eq!(*collector.malformed.lock().expect("count"), 0);
    let exported = stack
        .metric("portcullis_trace_spans_exported_total")
        .await
        .unwrap_or_default();
    assert!(
        exported >= 9.0,
        "{exported} gateway spans counted as exported"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsampled_trace_is_passed_on_and_recorded_nowhere() {
    let (collector, _stack, alice) = traced_stack().await;
    let unsampled = "5bf92f3577b34da6a3ce929d0e0e4736";
    let reply = alice
        .send_with(
            http::Method::POST,
            "/api/orders",
            &[(
                "traceparent",
                &format!("00-{unsampled}-00f067aa0ba902b7-00"),
            )],
            Some(&json!({"sku": "MN-003", "quantity": 1})),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    // A recorded request after it: once its spans are in from every
    // service, the unsampled one's would be too.
    let sampled = "6bf92f3577b34da6a3ce929d0e0e4736";
    let reply = alice
        .send_with(
            http::Method::POST,
            "/api/orders",
            &[("traceparent", &format!("00-{sampled}-00f067aa0ba902b7-01"))],
            Some(&json!({"sku": "MN-003", "quantity": 1})),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.body);
    let spans = collector
        .wait_for(Duration::from_secs(20), |spans| {
            ["portcullis-gateway", "orders", "inventory"]
                .iter()
                .all(|service| {
                    spans
                        .iter()
                        .any(|s| s.trace_id == sampled && s.service == *service)
                })
        })
        .await;
    assert!(
        spans
            .iter()
            .any(|s| s.trace_id == sampled && s.service == "inventory"),
        "the sampled trace never arrived: {spans:#?}"
    );
    let leaked: Vec<&Span> = spans.iter().filter(|s| s.trace_id == unsampled).collect();
    assert!(
        leaked.is_empty(),
        "an unsampled trace was recorded: {leaked:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_collector_costs_requests_nothing_and_its_spans_are_counted_lost() {
    // A port nothing listens on.
    let dead = format!("http://127.0.0.1:{}", service_kit::testing::unused_port());
    let stack = Stack::with(Options {
        traces: Some(dead),
        ..Options::default()
    })
    .await;
    let alice = stack.register("alice").await;
    for _ in 0..50 {
        let reply = alice.get("/api/tasks").await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    // Each request is at least three gateway spans (root, route, verify,
    // upstream); all of them are lost, and counted.
    let counted = e2e::eventually(Duration::from_secs(20), async || {
        stack
            .metric("portcullis_trace_spans_dropped_total")
            .await
            .is_some_and(|n| n >= 150.0)
    })
    .await;
    let dropped = stack.metric("portcullis_trace_spans_dropped_total").await;
    assert!(counted, "dropped spans counted: {dropped:?}");
    assert_eq!(
        stack
            .metric("portcullis_trace_spans_exported_total")
            .await
            .unwrap_or_default(),
        0.0
    );
}
