use crate::*;
use std::time::Duration;

const MINIMAL: &str = r#"
auth:
  verify_url: http://127.0.0.1:9001/api/verify
upstreams:
  tasks:
    servers: ["127.0.0.1:9101"]
routes:
  - prefix: /api/tasks
    upstream: tasks
    access: protected
"#;

#[test]
fn prefixes_contain_on_whole_segments_only() {
    let p = |s: &str| Prefix::parse(s).expect("prefix");
    for (outer, inner, expected) in [
        ("/api", "/api/tasks", true),
        ("/api", "/api/tasks/7", true),
        ("/", "/api", true),
        ("/api", "/apix", false),
        ("/api", "/api", false),
        ("/api/tasks", "/api", false),
        ("/", "/", false),
    ] {
        assert_eq!(p(outer).contains(&p(inner)), expected, "{outer} ⊃ {inner}");
    }
}

#[test]
fn routes_nested_in_the_other_access_are_reported_with_both_lines() {
    let source = r#"
auth:
  verify_url: http://127.0.0.1:9001/api/verify
upstreams:
  app:
    servers: ["127.0.0.1:9101"]
routes:
  - prefix: /api
    upstream: app
    access: protected
  - prefix: /api/tasks/export
    upstream: app
    access: public
  - prefix: /docs
    upstream: app
    access: public
  - prefix: /docs/internal
    upstream: app
    access: protected
  - prefix: /api/orders
    upstream: app
    access: protected
  - prefix: /docsets
    upstream: app
    access: protected
"#;
    let config = Config::parse(source).expect("valid");
    let found: Vec<String> = config.shadowing().iter().map(ToString::to_string).collect();
    assert_eq!(
        found,
        [
            "routes[1].prefix: public route /api/tasks/export (line 11) lies inside protected route /api (line 8): requests under it skip authentication",
            "routes[3].prefix: protected route /docs/internal (line 17) lies inside public route /docs (line 14): requests under it need a token",
        ]
    );
    // The shipped file has no such nesting.
    let shipped = include_str!("../../routes.yaml");
    let config = Config::parse(shipped).expect("shipped routes");
    assert!(config.shadowing().is_empty());
}

#[test]
fn minimal_file_gets_the_documented_defaults() {
    let config = Config::parse(MINIMAL).expect("valid");
    assert_eq!(config.listen, "127.0.0.1:8080");
    assert_eq!(config.auth.mode, AuthMode::Remote);
    assert_eq!(config.auth.cache_ttl, Dur(Duration::from_secs(30)));
    assert_eq!(config.server.grace_period, Dur(Duration::from_secs(5)));
    let tasks = &config.upstreams["tasks"];
    assert_eq!(tasks.balance, Balance::RoundRobin);
    assert_eq!(tasks.connect_timeout, Dur(Duration::from_secs(1)));
    assert!(tasks.health_check.is_none());
    assert_eq!(config.routes[0].prefix.as_str(), "/api/tasks");
    assert!(!config.routes[0].forward_authorization);
    assert_eq!(config.body_limit(&config.routes[0]), 1024 * 1024);
}

#[test]
fn value_types() {
    assert_eq!(Dur::parse("250ms"), Ok(Dur(Duration::from_millis(250))));
    assert_eq!(Dur::parse("2s"), Ok(Dur(Duration::from_secs(2))));
    assert_eq!(Dur::parse("1m"), Ok(Dur(Duration::from_secs(60))));
    assert!(Dur::parse("2").is_err());
    assert!(Dur::parse("2 weeks").is_err());
    assert!(Dur::parse("-1s").is_err());
    assert_eq!(ByteSize::parse("16KiB"), Ok(ByteSize(16384)));
    assert_eq!(ByteSize::parse("1MiB"), Ok(ByteSize(1 << 20)));
    assert_eq!(ByteSize::parse("100"), Ok(ByteSize(100)));
    assert!(ByteSize::parse("1TiB").is_err());
    for (raw, expected) in [
        ("/api/tasks", Ok("/api/tasks")),
        ("/api/tasks/", Ok("/api/tasks")),
        ("/", Ok("/")),
        ("api", Err(())),
        ("/api//tasks", Err(())),
        ("/api/../tasks", Err(())),
        ("/api/%2e", Err(())),
        ("/api/ta sks", Err(())),
    ] {
        assert_eq!(
            Prefix::parse(raw).map(|p| p.0).map_err(drop),
            expected.map(str::to_owned),
            "{raw}"
        );
    }
    assert_eq!(
        HostPort::parse("auth:9001"),
        Ok(HostPort {
            host: "auth".into(),
            port: 9001
        })
    );
    assert!(HostPort::parse("auth").is_err());
    assert!(HostPort::parse("auth:0").is_err());
    assert!(HostPort::parse("auth:http").is_err());
}

#[test]
fn networks() {
    let net = Network::parse("10.0.0.0/8").expect("net");
    assert!(net.contains("10.1.2.3".parse().expect("ip")));
    assert!(!net.contains("11.0.0.1".parse().expect("ip")));
    assert!(net.contains("::ffff:10.0.0.1".parse().expect("ip")));
    let one = Network::parse("::1").expect("net");
    assert!(one.contains("::1".parse().expect("ip")));
    assert!(!one.contains("::2".parse().expect("ip")));
    assert!(Network::parse("10.0.0.0/33").is_err());
    assert!(Network::parse("example.com").is_err());
    let all = Network::parse("0.0.0.0/0").expect("net");
    assert!(all.contains("203.0.113.9".parse().expect("ip")));
}

#[test]
fn unknown_keys_are_errors_with_a_line() {
    let source = MINIMAL.replace("access: protected", "access: protected\n    acess: public");
    let errors = Config::parse(&source).expect_err("unknown key");
    let text = errors.to_string();
    assert!(text.contains("unknown field `acess`"), "{text}");
    assert!(text.contains("routes[0]"), "{text}");
    assert!(text.contains("line 11"), "{text}");
}

#[test]
fn every_unknown_key_and_every_other_problem_in_one_run() {
    let source = r#"
servr: { listen: "127.0.0.1:1" }
auth:
  verify_url: http://127.0.0.1:9001/api/verify
  cache_tll: 30s
upstreams:
  tasks:
    servers: ["127.0.0.1:9101"]
    health_chek: { path: /healthz }
routes:
  - prefix: /api/tasks
    upstream: tasks
    access: protected
  - prefix: /api/orders
    upstream: ordrs
    access: public
    acess: protected
"#;
    let errors = Config::parse(source).expect_err("invalid").0;
    let found: Vec<(String, Option<usize>)> =
        errors.iter().map(|e| (e.path.clone(), e.line)).collect();
    for (path, line) in [
        ("servr", 2),
        ("auth.cache_tll", 5),
        ("upstreams.tasks.health_chek", 9),
        ("routes[1].acess", 17),
    ] {
        assert!(
            found.contains(&(path.to_owned(), Some(line))),
            "{path} at line {line} missing: {errors:?}"
        );
    }
    let unknown = errors
        .iter()
        .find(|e| e.path == "auth.cache_tll")
        .expect("reported");
    assert!(unknown.message.contains("expected one of"), "{unknown}");
    // The checks after parsing still run: the undefined upstream too.
    assert!(
        errors.iter().any(|e| e.path == "routes[1].upstream"),
        "{errors:?}"
    );
}

#[test]
fn an_unknown_key_inside_an_alias_is_reported_once_per_use_with_its_path() {
    let source = r#"
auth:
  verify_url: http://127.0.0.1:9001/api/verify
upstreams:
  tasks:
    servers: ["127.0.0.1:9101"]
routes:
  - &r { prefix: /a, upstream: tasks, access: public, colour: red }
  - *r
"#;
    let errors = Config::parse(source).expect_err("invalid").0;
    let unknown: Vec<&str> = errors
        .iter()
        .filter(|e| e.message.contains("colour"))
        .map(|e| e.path.as_str())
        .collect();
    assert_eq!(
        unknown,
        ["routes[0].colour", "routes[1].colour"],
        "{errors:?}"
    );
}

#[test]
fn every_semantic_error_is_reported_with_path_and_line() {
    let source = r#"
auth:
  mode: remote
upstreams:
  tasks:
    servers: []
routes:
  - prefix: /api/tasks
    upstream: tasks
    access: protected
  - prefix: /api/orders
    upstream: ordrs
    access: public
    roles: [admin]
  - prefix: /api/tasks/
    upstream: tasks
    access: public
"#;
    let errors = Config::parse(source).expect_err("invalid").0;
    let rendered: Vec<String> = errors.iter().map(ToString::to_string).collect();
    let expected = [
        "auth.verify_url: is required for protected routes in remote mode at line 2",
        "upstreams.tasks.servers: needs at least one host:port or unix:/path at line 6",
        "routes[1].upstream: unknown upstream \"ordrs\" at line 12",
        "routes[1].roles: roles need access: protected at line 14",
        "routes[2].prefix: \"/api/tasks\" is already routed at line 15",
    ];
    for line in expected {
        assert!(
            rendered.iter().any(|r| r == line),
            "missing {line:?} in {rendered:#?}"
        );
    }
    assert_eq!(rendered.len(), expected.len(), "{rendered:#?}");
}

#[test]
fn rate_limits_are_checked_with_their_paths() {
    let source = format!(
        "{MINIMAL}  - prefix: /api/open\n    upstream: tasks\n    access: public\n    rate_limit:\n      per_ip: {{ requests: 0, per: 1s }}\n      per_user: {{ requests: 5, per: 1s }}\n  - prefix: /api/closed\n    upstream: tasks\n    access: protected\n    rate_limit: {{ route: {{ requests: 5, per: 0ms, burst: 0 }} }}\n"
    );
    let errors = Config::parse(&source).expect_err("invalid").0;
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "routes[1].rate_limit.per_user",
            "routes[1].rate_limit.per_ip.requests",
            "routes[2].rate_limit.route.per",
            "routes[2].rate_limit.route.burst",
        ]
    );
    let unknown = format!(
        "{MINIMAL}  - prefix: /api/x\n    upstream: tasks\n    access: public\n    rate_limit: {{ per_ip: {{ requests: 5, per: 1s, brust: 9 }} }}\n"
    );
    let error = Config::parse(&unknown)
        .expect_err("unknown key")
        .to_string();
    assert!(error.contains("brust"), "{error}");
    let fine = format!(
        "{MINIMAL}  - prefix: /api/x\n    upstream: tasks\n    access: protected\n    rate_limit: {{ per_ip: {{ requests: 100, per: 1s, burst: 200 }}, per_user: {{ requests: 5, per: 1s }} }}\n"
    );
    let config = Config::parse(&fine).expect("valid");
    let limits = config.routes[1].rate_limit.as_ref().expect("limits");
    assert_eq!(limits.per_ip.as_ref().and_then(|r| r.burst), Some(200));
}

#[test]
fn method_specific_routes_may_share_a_prefix() {
    let source = format!(
        "{MINIMAL}  - prefix: /api/stock\n    upstream: tasks\n    access: public\n    methods: [get]\n  - prefix: /api/stock\n    upstream: tasks\n    access: protected\n    methods: [PUT]\n"
    );
    let config = Config::parse(&source).expect("valid");
    assert_eq!(config.routes[1].methods, vec![MethodName("GET".into())]);
    let clash =
        format!("{source}  - prefix: /api/stock\n    upstream: tasks\n    access: public\n");
    let errors = Config::parse(&clash).expect_err("clash");
    assert!(errors.to_string().contains("routes[3].prefix"), "{errors}");
    let head_clash = format!(
        "{MINIMAL}  - {{prefix: /p, upstream: tasks, access: public, methods: [GET]}}\n  - {{prefix: /p, upstream: tasks, access: protected, methods: [HEAD]}}\n"
    );
    let errors = Config::parse(&head_clash).expect_err("HEAD is claimed by GET");
    assert!(errors.to_string().contains("routes[2].prefix"), "{errors}");
}

/// Values that once passed `--check` and then panicked at start-up,
/// on reload or per request are refused with their key and line.
#[test]
fn values_that_would_overflow_later_are_refused_with_key_and_line() {
    let route = |extra: &str| {
        format!("{MINIMAL}  - prefix: /api/x\n    upstream: tasks\n    access: protected\n{extra}")
    };
    for (source, path, line) in [
        (
            route("    rate_limit:\n      per_ip: {requests: 1, per: 1000h, burst: 10000}\n"),
            "routes[1].rate_limit.per_ip.per",
            15,
        ),
        (
            route(
                "    rate_limit:\n      per_ip: {requests: 1, per: 5000000000h, burst: 4000000000}\n",
            ),
            "",
            0,
        ),
        (
            route("    rate_limit:\n      route: {requests: 1, per: 24h, burst: 100000}\n"),
            "routes[1].rate_limit.route",
            15,
        ),
        (
            MINIMAL.replace("auth:\n", "auth:\n  negative_ttl: 18446744073709551615s\n"),
            "",
            0,
        ),
        (
            MINIMAL.replace("auth:\n", "auth:\n  negative_ttl: 2h\n"),
            "auth.negative_ttl",
            3,
        ),
        (
            MINIMAL.replace("auth:\n", "auth:\n  cache_ttl: 8784h\n"),
            "auth.cache_ttl",
            3,
        ),
        (
            route("    stale_if_error: 2h\n"),
            "routes[1].stale_if_error",
            14,
        ),
        (
            MINIMAL.replace("    servers:", "    read_timeout: 0ms\n    servers:"),
            "upstreams.tasks.read_timeout",
            6,
        ),
        (
            format!("server:\n  max_header_bytes: 2MiB\n{MINIMAL}"),
            "server.max_header_bytes",
            2,
        ),
        (
            format!("server:\n  threads: 100000\n{MINIMAL}"),
            "server.threads",
            2,
        ),
    ] {
        let errors = Config::parse(&source).expect_err(&source);
        let text = errors.to_string();
        if path.is_empty() {
            // Refused while parsing: serde names the key and line.
            assert!(text.contains("too long"), "{text}");
            assert!(text.contains("line"), "{text}");
        } else {
            assert_eq!(errors.0[0].path, path, "{text}");
            assert_eq!(errors.0[0].line, Some(line), "{text}");
        }
    }
    // The largest values allowed still build every part of a generation.
    let source = format!(
        "{}{}",
        MINIMAL.replace(
            "auth:\n",
            "auth:\n  cache_ttl: 24h\n  negative_ttl: 1h\n  cache_capacity: 10000000\n"
        ),
        "  - prefix: /api/x\n    upstream: tasks\n    access: protected\n    stale_if_error: 1h\n    rate_limit:\n      per_ip: {requests: 1, per: 24h, burst: 7}\n      route: {requests: 1000000, per: 1ms, burst: 1000000}\n"
    );
    Config::parse(&source).expect("largest values");
}

#[test]
fn oversized_files_and_counts_are_refused() {
    let big = format!("{MINIMAL}#{}\n", "x".repeat(bounds::FILE_BYTES as usize));
    let error = Config::parse(&big).expect_err("too big").to_string();
    assert!(error.contains("at most 8388608"), "{error}");
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("routes.yaml");
    std::fs::write(&file, &big).expect("write");
    let error = Config::load(&file).expect_err("too big").to_string();
    assert!(error.contains("larger than 8388608 bytes"), "{error}");

    let roles: Vec<String> = (0..100).map(|i| format!("r{i}")).collect();
    let source = format!("{MINIMAL}    roles: [{}]\n", roles.join(", "));
    let errors = Config::parse(&source).expect_err("roles");
    assert_eq!(errors.0[0].path, "routes[0].roles");
    assert!(errors.to_string().contains("at most 64"), "{errors}");
}

/// Checking is linear in the number of routes: 100 000 routes (the
/// bound) that all share prefixes with each other are checked here in
/// a debug build; `bench/config.py` times it in release.
#[test]
fn the_route_bound_is_accepted_and_one_more_is_refused() {
    let mut source = String::from(
        "auth:\n  verify_url: http://127.0.0.1:9001/api/verify\nupstreams:\n  a: {servers: [\"127.0.0.1:9101\"]}\nroutes:\n  - {prefix: /, upstream: a, access: public}\n",
    );
    for i in 1..bounds::ROUTES {
        // Every route lies inside `/`, a route of the other access.
        source.push_str(&format!(
            "  - {{prefix: /r/{i}, upstream: a, access: protected, methods: [GET]}}\n"
        ));
    }
    let config = Config::parse(&source).expect("at the bound");
    assert_eq!(config.routes.len(), bounds::ROUTES);
    let warnings = config.shadowing();
    assert_eq!(warnings.len(), bounds::WARNINGS + 1);
    assert!(
        warnings[bounds::WARNINGS]
            .to_string()
            .contains("99899 more routes"),
        "{}",
        warnings[bounds::WARNINGS]
    );
    source.push_str("  - {prefix: /r/1, upstream: a, access: public, methods: [HEAD]}\n");
    let errors = Config::parse(&source).expect_err("over the bound").0;
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["routes", "routes[100000].prefix"]);
    assert_eq!(errors[1].line, Some(100_006));
}

/// The tree walk finds exactly the pairs the definition gives (every
/// route against every other), keeps the first ones in file order and
/// counts the rest: a chain of 300 nested prefixes of alternating
/// access, each with two method-specific routes.
#[test]
fn nesting_warnings_match_the_quadratic_definition() {
    let mut source = String::from(
        "auth:\n  verify_url: http://127.0.0.1:9001/api/verify\nupstreams:\n  a: {servers: [\"127.0.0.1:9101\"]}\nroutes:\n",
    );
    let mut prefix = String::new();
    for depth in 0..300 {
        prefix.push_str(if depth % 3 == 0 { "/x" } else { "/y" });
        let access = if depth % 2 == 0 {
            "public"
        } else {
            "protected"
        };
        for method in ["GET", "POST"] {
            source.push_str(&format!(
                "  - {{prefix: {prefix}, upstream: a, access: {access}, methods: [{method}]}}\n"
            ));
        }
    }
    let config = Config::parse(&source).expect("valid");
    let mut expected = Vec::new();
    for (o, outer) in config.routes.iter().enumerate() {
        for (i, inner) in config.routes.iter().enumerate() {
            if outer.access != inner.access && outer.prefix.contains(&inner.prefix) {
                expected.push((o, i));
            }
        }
    }
    let warnings = config.shadowing();
    assert_eq!(warnings.len(), bounds::WARNINGS + 1);
    for (warning, (o, i)) in warnings.iter().take(bounds::WARNINGS).zip(&expected) {
        assert_eq!(warning.path, format!("routes[{i}].prefix"));
        let outer = config.routes[*o].prefix.as_str();
        assert!(
            warning
                .message
                .contains(&format!(" route {outer} (line {})", o + 6)),
            "{warning}"
        );
    }
    assert!(
        warnings[bounds::WARNINGS].message.starts_with(&format!(
            "{} more routes",
            expected.len() - bounds::WARNINGS
        )),
        "{} pairs: {}",
        expected.len(),
        warnings[bounds::WARNINGS]
    );
}

#[test]
fn servers_are_host_port_or_an_absolute_unix_socket() {
    let long = format!("unix:/{}", "s".repeat(MAX_SOCKET_PATH));
    for (raw, expected) in [
        (
            "127.0.0.1:9101",
            Ok(ServerAddr::Tcp(HostPort {
                host: "127.0.0.1".into(),
                port: 9101,
            })),
        ),
        (
            "unix:/run/tasks.sock",
            Ok(ServerAddr::Unix("/run/tasks.sock".into())),
        ),
        ("unix:run/tasks.sock", Err("must be absolute")),
        ("unix:", Err("must be absolute")),
        ("unix:/a\0b", Err("NUL")),
        (long.as_str(), Err("at most 107 bytes")),
        ("unix", Err("host:port")),
    ] {
        match (ServerAddr::parse(raw), expected) {
            (Ok(found), Ok(expected)) => assert_eq!(found, expected, "{raw}"),
            (Err(found), Err(expected)) => assert!(found.contains(expected), "{raw}: {found}"),
            (found, expected) => panic!("{raw}: {found:?}, expected {expected:?}"),
        }
    }
    assert_eq!(
        ServerAddr::Unix("/run/tasks.sock".into()).to_string(),
        "unix:/run/tasks.sock"
    );

    let unix = MINIMAL.replace("\"127.0.0.1:9101\"", "\"unix:/run/tasks.sock\"");
    let config = Config::parse(&unix).expect("a unix socket server is valid");
    assert_eq!(
        config.upstreams["tasks"].servers[0].address,
        ServerAddr::Unix("/run/tasks.sock".into())
    );
    let relative = MINIMAL.replace("\"127.0.0.1:9101\"", "\"unix:tasks.sock\"");
    let errors = Config::parse(&relative).expect_err("relative socket path");
    let text = errors.to_string();
    assert!(text.contains("upstreams.tasks.servers"), "{text}");
    assert!(text.contains("line 6"), "{text}");
    let tls = unix.replace("    servers:", "    tls: {sni: tasks}\n    servers:");
    let errors = Config::parse(&tls).expect_err("TLS to a socket");
    assert!(
        errors.to_string().contains("upstreams.tasks.tls"),
        "{errors}"
    );
}

#[test]
fn pools_take_weights_policies_limits_retries_and_passive_health() {
    let file = MINIMAL.replace(
        "    servers: [\"127.0.0.1:9101\"]",
        "    servers: [\"127.0.0.1:9101\", {address: \"127.0.0.1:9102\", weight: 5}]\n    balance: least_requests\n    limits: {max_pending: 10}\n    retry: {attempts: 3, on: [connect_error, reset, 503, \"504\"], budget: 25%}\n    passive_health: {consecutive_failures: 3, base_ejection: 10s}",
    );
    let config = Config::parse(&file).expect("valid");
    let tasks = &config.upstreams["tasks"];
    let weights: Vec<u32> = tasks.servers.iter().map(|s| s.weight).collect();
    assert_eq!(weights, [1, 5]);
    assert_eq!(tasks.limits.max_pending, Some(10));
    let retry = tasks.retry.as_ref().expect("retry").settings();
    assert_eq!((retry.attempts, retry.budget, retry.on.len()), (3, 25, 4));
    let passive = tasks.passive_health.expect("passive health");
    assert_eq!(passive.max_ejected_percent.0, 50);

    for (bad, key) in [
        (
            "{address: \"127.0.0.1:9102\", weight: 0}",
            "upstreams.tasks.servers[1].weight",
        ),
        (
            "{address: \"127.0.0.1:9102\", wieght: 2}",
            "upstreams.tasks.servers",
        ),
    ] {
        let file = MINIMAL.replace(
            "    servers: [\"127.0.0.1:9101\"]",
            &format!("    servers: [\"127.0.0.1:9101\", {bad}]"),
        );
        let errors = Config::parse(&file).expect_err(bad).to_string();
        assert!(errors.contains(key) && errors.contains("line"), "{errors}");
    }
    for (setting, key) in [
        (
            "limits: {max_pending: 0}",
            "upstreams.tasks.limits.max_pending",
        ),
        ("retry: {attempts: 11}", "upstreams.tasks.retry.attempts"),
        ("retry: {on: [500]}", "upstreams.tasks.retry.on"),
        ("retry: {budget: 120%}", "upstreams.tasks.retry.budget"),
        (
            "passive_health: {base_ejection: 10ms}",
            "upstreams.tasks.passive_health.base_ejection",
        ),
        ("balance: ip_hash", "upstreams.tasks.balance"),
    ] {
        let file = MINIMAL.replace(
            "    servers: [\"127.0.0.1:9101\"]",
            &format!("    servers: [\"127.0.0.1:9101\"]\n    {setting}"),
        );
        let errors = Config::parse(&file).expect_err(setting).to_string();
        assert!(errors.contains(key), "{setting}: {errors}");
    }
}

#[test]
fn shared_rate_limits_are_named_and_their_fallback_needs_them() {
    let file = MINIMAL.replace(
        "    access: protected\n",
        "    access: protected\n    rate_limit: {per_ip: {requests: 10, per: 1m, store: redis, fallback: open}, per_user: {requests: 5, per: 1m}}\n",
    );
    let config = Config::parse(&file).expect("valid");
    assert_eq!(
        config.shared_limits(),
        ["routes[0].rate_limit.per_ip.store"]
    );
    let local_open = MINIMAL.replace(
        "    access: protected\n",
        "    access: protected\n    rate_limit: {per_ip: {requests: 10, per: 1m, fallback: open}}\n",
    );
    let errors = Config::parse(&local_open)
        .expect_err("fallback without redis")
        .to_string();
    assert!(
        errors.contains("routes[0].rate_limit.per_ip.fallback"),
        "{errors}"
    );
}

#[test]
fn the_tracing_section_is_optional_and_checked_with_key_and_line() {
    let config = Config::parse(MINIMAL).expect("minimal");
    assert_eq!(config.tracing, None, "traces are off unless asked for");

    let traced = format!("{MINIMAL}tracing:\n  otlp_endpoint: http://127.0.0.1:4318\n");
    let tracing = Config::parse(&traced)
        .expect("traced")
        .tracing
        .expect("tracing");
    assert_eq!(tracing.service_name, traces::DEFAULT_SERVICE_NAME);
    assert_eq!(tracing.sampling_ratio, 1.0);

    for (section, path, line) in [
        (
            "  otlp_endpoint: 127.0.0.1:4318\n",
            "tracing.otlp_endpoint",
            12,
        ),
        (
            "  otlp_endpoint: ftp://collector\n",
            "tracing.otlp_endpoint",
            12,
        ),
        (
            "  otlp_endpoint: http://c:4318\n  sampling_ratio: 1.5\n",
            "tracing.sampling_ratio",
            13,
        ),
        (
            "  otlp_endpoint: http://c:4318\n  sampling_ratio: -0.1\n",
            "tracing.sampling_ratio",
            13,
        ),
        (
            "  otlp_endpoint: http://c:4318\n  sampling_ratio: .nan\n",
            "tracing.sampling_ratio",
            13,
        ),
        (
            "  otlp_endpoint: http://c:4318\n  service_name: \"\"\n",
            "tracing.service_name",
            13,
        ),
    ] {
        let source = format!("{MINIMAL}tracing:\n{section}");
        let errors = Config::parse(&source).expect_err(&source);
        let text = errors.to_string();
        assert_eq!(errors.0[0].path, path, "{text}");
        assert_eq!(errors.0[0].line, Some(line), "{text}");
    }
    // Unknown keys and a missing endpoint are refused while parsing.
    for section in ["  endpoint: http://c:4318\n", "  sampling_ratio: 0.5\n"] {
        let source = format!("{MINIMAL}tracing:\n{section}");
        let text = Config::parse(&source).expect_err(&source).to_string();
        assert!(text.contains("tracing"), "{text}");
    }
}
