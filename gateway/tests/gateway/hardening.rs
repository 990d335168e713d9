//! What a careless operator or a hostile routes file can do to a gateway:
//! every refusal comes with a key and a line, costs no more memory than the
//! file, and leaves a running gateway serving and reloading.

use crate::support::{Gateway, Upstream, eventually, raw};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// A gateway without protected routes: no auth service needed.
fn public_routes(upstream: std::net::SocketAddr, extra: &str) -> String {
    format!(
        "auth:\n  verify_url: http://127.0.0.1:9/api/verify\nupstreams:\n  app:\n    servers: [\"{upstream}\"]\nroutes:\n  - {{ prefix: /api/public, upstream: app, access: public }}\n{extra}"
    )
}

fn check(path: &Path) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["--check", "--config"])
        .arg(path)
        .output()
        .expect("run --check");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The peak resident memory of a process so far, in MiB.
fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmHWM")
        / 1024
}

/// One anchored list of 100 000 roles, referenced from 5 000 routes: a
/// 1 MB file that expands to half a billion strings.
fn alias_bomb(upstream: std::net::SocketAddr) -> String {
    let roles: Vec<String> = (0..100_000).map(|i| format!("r{i}")).collect();
    let mut extra = format!(
        "  - prefix: /a/0\n    upstream: app\n    access: protected\n    roles: &R [{}]\n",
        roles.join(",")
    );
    for i in 1..5000 {
        extra.push_str(&format!(
            "  - {{prefix: /a/{i}, upstream: app, access: protected, roles: *R}}\n"
        ));
    }
    public_routes(upstream, &extra)
}

/// Writes `routes`, sends SIGHUP, and waits until the gateway has counted
/// `count` reloads with `result` (applied or rejected).
async fn reload(gateway: &Gateway, routes: &str, result: &str, count: f64) {
    gateway.write_routes(routes);
    gateway.child.signal("HUP");
    let sample = format!(r#"portcullis_config_reloads_total{{result="{result}"}}"#);
    let counted = eventually(Duration::from_secs(30), async || {
        gateway.metric(&sample).await == count
    })
    .await;
    assert!(
        counted,
        "no reload {result} ({count}):\n{}",
        gateway.child.logs()
    );
}

/// The status of `GET path` through the gateway.
async fn status(gateway: &Gateway, path: &str) -> u16 {
    raw(gateway.addr(), "GET", path, &[], "").await.status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alias_bomb_is_refused_by_check_and_by_a_running_gateway_without_growing_it() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let bomb = dir.path().join("bomb.yaml");
    std::fs::write(&bomb, alias_bomb(upstream.addr)).expect("write");
    let (ok, _, stderr) = check(&bomb);
    assert!(!ok, "--check accepted the alias bomb");
    assert!(
        stderr.contains("more than 2000000 values once its aliases are expanded"),
        "{stderr}"
    );
    // Named by the route whose alias crossed the bound, on its own line.
    assert!(
        stderr.contains("routes[") && stderr.contains("].roles"),
        "{stderr}"
    );
    assert!(stderr.contains(" at line "), "{stderr}");

    let gateway = Gateway::start(&public_routes(upstream.addr, ""), &[]);
    let before = peak_rss_mib(gateway.child.pid());
    reload(&gateway, &alias_bomb(upstream.addr), "rejected", 1.0).await;
    let after = peak_rss_mib(gateway.child.pid());
    assert!(
        after < before + 100,
        "peak memory grew from {before} to {after} MiB"
    );
    assert!(
        gateway.child.logs().contains("aliases are expanded"),
        "{}",
        gateway.child.logs()
    );
    assert_eq!(status(&gateway, "/api/public/x").await, 200);
    // The next valid file is applied as usual.
    reload(
        &gateway,
        &public_routes(
            upstream.addr,
            "  - { prefix: /api/extra, upstream: app, access: public }\n",
        ),
        "applied",
        1.0,
    )
    .await;
    assert_eq!(status(&gateway, "/api/extra").await, 200);
}

/// Values that `--check` once accepted and that then panicked: at start,
/// in the reload thread (after which every SIGHUP was ignored), or in a
/// worker for every refused token.
const PANICKING: [(&str, &str); 3] = [
    (
        "  - prefix: /api/limited\n    upstream: app\n    access: public\n    rate_limit:\n      per_ip: {requests: 1, per: 1000h, burst: 10000}\n",
        "routes[1].rate_limit.per_ip.per: must be between 1ms and 24h at line 12",
    ),
    (
        "  - prefix: /api/limited\n    upstream: app\n    access: public\n    rate_limit:\n      per_ip: {requests: 1, per: 5000000000h, burst: 4000000000}\n",
        "too long",
    ),
    (
        "  - prefix: /api/limited\n    upstream: app\n    access: public\n    rate_limit:\n      route: {requests: 1, per: 24h, burst: 1000}\n",
        "routes[1].rate_limit.route: burst × per / requests is 24000h",
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_that_would_panic_later_are_refused_and_reloads_keep_working() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("routes.yaml");
    for (extra, expected) in PANICKING {
        std::fs::write(&file, public_routes(upstream.addr, extra)).expect("write");
        let (ok, _, stderr) = check(&file);
        assert!(!ok, "--check accepted {extra}");
        assert!(stderr.contains(expected), "{expected:?} not in {stderr}");
    }
    let ttl = public_routes(upstream.addr, "")
        .replace("auth:\n", "auth:\n  negative_ttl: 18446744073709551615s\n");
    std::fs::write(&file, ttl).expect("write");
    let (ok, _, stderr) = check(&file);
    assert!(!ok && stderr.contains("auth.negative_ttl"), "{stderr}");

    // A running gateway refuses each on SIGHUP, and still applies the next
    // valid file: the reload loop survives.
    let gateway = Gateway::start(&public_routes(upstream.addr, ""), &[]);
    for (n, (extra, _)) in PANICKING.iter().enumerate() {
        reload(
            &gateway,
            &public_routes(upstream.addr, extra),
            "rejected",
            n as f64 + 1.0,
        )
        .await;
    }
    reload(&gateway, &public_routes(
        upstream.addr,
        "  - { prefix: /api/extra, upstream: app, access: public, rate_limit: { per_ip: { requests: 1, per: 24h } } }\n",
    ), "applied", 1.0).await;
    assert_eq!(status(&gateway, "/api/extra").await, 200);
    assert_eq!(status(&gateway, "/api/extra").await, 429);
    assert!(
        !gateway.child.logs().contains("panicked"),
        "{}",
        gateway.child.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_routes_are_checked_and_reloaded_and_one_more_is_refused() {
    let upstream = Upstream::start().await;
    let many = |n: usize| {
        let mut extra = String::with_capacity(n * 60);
        for i in 1..n {
            extra.push_str(&format!(
                "  - {{prefix: /r/{i}, upstream: app, access: public}}\n"
            ));
        }
        public_routes(upstream.addr, &extra)
    };
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("routes.yaml");
    std::fs::write(&file, many(100_000)).expect("write");
    let (ok, stdout, stderr) = check(&file);
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("ok (100000 routes, 1 upstreams)"),
        "{stdout}"
    );
    std::fs::write(&file, many(100_001)).expect("write");
    let (ok, _, stderr) = check(&file);
    assert!(!ok);
    assert!(
        stderr.contains("routes: has 100001 entries; at most 100000 are allowed"),
        "{stderr}"
    );

    let gateway = Gateway::start(&public_routes(upstream.addr, ""), &[]);
    reload(&gateway, &many(100_000), "applied", 1.0).await;
    assert_eq!(status(&gateway, "/r/99999/x").await, 200);
    assert_eq!(status(&gateway, "/r/100000").await, 404);
}

/// Sends `request` byte for byte on a fresh connection and reads until the
/// gateway closes it (or 10 s pass).
async fn exchange(gw: std::net::SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(gw).await.expect("connect");
    stream.write_all(request).await.expect("send");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framing_spellings_url_overrides_and_untrusted_client_addresses_never_reach_the_upstream() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&public_routes(upstream.addr, ""), &[]);
    let dropped = [
        ("Transfer_Encoding", "chunked"),
        ("Content_Length", "5"),
        ("content_type", "text/evil"),
        ("X-Original-URL", "/admin"),
        ("X-Rewrite-URL", "/admin"),
        ("X-Original-URI", "/admin"),
        ("X-Client-IP", "10.0.0.1"),
        ("True-Client-IP", "10.0.0.2"),
        ("CF-Connecting-IP", "10.0.0.3"),
    ];
    let mut headers = dropped.to_vec();
    headers.push(("x-kept", "yes"));
    let reply = raw(gateway.addr(), "POST", "/api/public/x", &headers, "hello").await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let seen = upstream.seen();
    assert_eq!(seen.len(), 1);
    for (name, _) in dropped {
        assert!(seen[0].all(name).is_empty(), "{name} reached the upstream");
    }
    assert_eq!(seen[0].all("x-kept"), ["yes"]);
    assert_eq!(seen[0].all("content-length"), ["5"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http11_requests_need_one_well_formed_host_and_pipelined_requests_are_all_served() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&public_routes(upstream.addr, ""), &[]);
    let gw = gateway.addr();
    for (request, what) in [
        (
            "GET /api/public/x HTTP/1.1\r\nconnection: close\r\n\r\n",
            "no Host",
        ),
        (
            "GET /api/public/x HTTP/1.1\r\nhost: a b\r\nconnection: close\r\n\r\n",
            "a Host with a space",
        ),
        (
            "GET /api/public/x HTTP/1.1\r\nhost: user@evil.example\r\nconnection: close\r\n\r\n",
            "a Host with userinfo",
        ),
        (
            "GET /api/public/x HTTP/1.1\r\nhost: evil.example/x\r\nconnection: close\r\n\r\n",
            "a Host with a path",
        ),
    ] {
        let answer = exchange(gw, request.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{what}: {answer}");
        assert!(
            answer.contains(r#""code":"bad_request""#),
            "{what}: {answer}"
        );
    }
    assert!(
        upstream.seen().is_empty(),
        "a request without a usable Host was forwarded"
    );
    // HTTP/1.0 has no Host requirement.
    let answer = exchange(gw, b"GET /api/public/x HTTP/1.0\r\n\r\n").await;
    assert!(
        answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.0 200"),
        "{answer}"
    );

    // Three requests in one write: three answers, in order.
    let pipelined = "GET /api/public/1 HTTP/1.1\r\nhost: gw\r\n\r\nGET /api/public/2 HTTP/1.1\r\nhost: gw\r\n\r\nGET /api/public/3 HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n";
    let answer = exchange(gw, pipelined.as_bytes()).await;
    assert_eq!(answer.matches("HTTP/1.1 200").count(), 3, "{answer}");
    let targets: Vec<String> = upstream.seen()[1..]
        .iter()
        .map(|s| s.target.clone())
        .collect();
    assert_eq!(targets, ["/api/public/1", "/api/public/2", "/api/public/3"]);

    // A request with a body larger than the head limit, then a small one,
    // in one write: the second is a head of its own, never a 431.
    let body = "b".repeat(40 * 1024);
    let pipelined = format!(
        "POST /api/public/4 HTTP/1.1\r\nhost: gw\r\ncontent-length: {}\r\n\r\n{body}GET /api/public/5 HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let answer = exchange(gw, pipelined.as_bytes()).await;
    assert_eq!(answer.matches("HTTP/1.1 200").count(), 2, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_request_with_a_body_is_refused() {
    let db = service_kit::testing::TestDatabase::new().await;
    let auth = crate::support::auth_service(&db, &[]);
    let upstream = Upstream::start().await;
    let extra = "  - { prefix: /api/ws, upstream: tasks, access: protected, websocket: true }\n";
    let gateway = Gateway::start(
        &crate::support::routes(auth.addr, &[upstream.addr], extra),
        &[],
    );
    let gw = gateway.addr();
    let (token, _) = crate::support::register(gw, "carol@example.com").await;
    let request = format!(
        "GET /api/ws HTTP/1.1\r\nhost: gw\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\nauthorization: Bearer {token}\r\ncontent-length: 1048576\r\n\r\nabc"
    );
    let answer = exchange(gw, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("must not carry a body"), "{answer}");
    assert!(upstream.seen().is_empty());
}

/// The gateway's resident memory now, in MiB.
fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS")
        / 1024
}

/// Reads what the gateway sends until it closes the connection.
async fn answer_of(stream: &mut tokio::net::TcpStream, within: Duration) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut answer = Vec::new();
    tokio::time::timeout(within, stream.read_to_end(&mut answer))
        .await
        .ok()?
        .ok()?;
    Some(String::from_utf8_lossy(&answer).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_head_and_a_slow_body_are_cut_with_408() {
    use tokio::io::AsyncWriteExt;
    let upstream = Upstream::start().await;
    let gateway = Gateway::start_with_server(
        &public_routes(upstream.addr, ""),
        "  request_head_timeout: 1s\n  request_body_timeout: 2s\n",
        &[],
    );
    let gw = gateway.addr();

    // A header line every 300 ms: the head is never complete in 1 s.
    let started = std::time::Instant::now();
    let mut slow = tokio::net::TcpStream::connect(gw).await.expect("connect");
    slow.write_all(b"GET /api/public/x HTTP/1.1\r\nhost: gw\r\n")
        .await
        .expect("send");
    let mut cut = false;
    for i in 0..20 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if slow
            .write_all(format!("x-slow-{i}: 1\r\n").as_bytes())
            .await
            .is_err()
        {
            cut = true;
            break;
        }
    }
    let answer = answer_of(&mut slow, Duration::from_secs(5))
        .await
        .unwrap_or_default();
    assert!(cut || !answer.is_empty(), "the slow head was never cut");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""code":"request_timeout""#), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // An idle keep-alive connection is not a slow head: the deadline runs
    // from a head's first byte only.
    let mut idle = tokio::net::TcpStream::connect(gw).await.expect("connect");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    idle.write_all(b"GET /api/public/x HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n")
        .await
        .expect("send");
    let answer = answer_of(&mut idle, Duration::from_secs(5))
        .await
        .unwrap_or_default();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // A 5-byte body at one byte a second: cut at 2 s with 408, and the
    // upstream saw a request that never completed (or none).
    let started = std::time::Instant::now();
    let mut slow = tokio::net::TcpStream::connect(gw).await.expect("connect");
    slow.write_all(b"POST /api/public/x HTTP/1.1\r\nhost: gw\r\ncontent-length: 5\r\n\r\n")
        .await
        .expect("send");
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if slow.write_all(b"a").await.is_err() {
            break;
        }
    }
    let answer = answer_of(&mut slow, Duration::from_secs(5))
        .await
        .unwrap_or_default();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""code":"request_timeout""#), "{answer}");
    assert!(
        started.elapsed() < Duration::from_millis(4500),
        "held for {:?}",
        started.elapsed()
    );
    // A stalled body (no byte at all) ends the same way.
    let mut stalled = tokio::net::TcpStream::connect(gw).await.expect("connect");
    stalled
        .write_all(b"POST /api/public/x HTTP/1.1\r\nhost: gw\r\ncontent-length: 5\r\n\r\nab")
        .await
        .expect("send");
    let answer = answer_of(&mut stalled, Duration::from_secs(6))
        .await
        .unwrap_or_default();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_are_refused_while_reading_and_slow_clients_cost_little_memory() {
    use tokio::io::AsyncWriteExt;
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&public_routes(upstream.addr, ""), &[]);
    let gw = gateway.addr();
    let pid = gateway.child.pid();
    assert_eq!(raw(gw, "GET", "/api/public/x", &[], "").await.status, 200);
    let idle = rss_mib(pid);

    // 200 clients each sending 1 MB of a head that never ends: each is
    // answered 431 once 16 KiB are in, and nothing near 200 MB is held.
    let senders: Vec<_> = (0..200)
        .map(|_| {
            tokio::spawn(async move {
                let mut stream = tokio::net::TcpStream::connect(gw).await.expect("connect");
                let _ = stream
                    .write_all(b"GET /api/public/x HTTP/1.1\r\nhost: gw\r\nx-big: ")
                    .await;
                let chunk = vec![b'a'; 64 * 1024];
                for _ in 0..16 {
                    if stream.write_all(&chunk).await.is_err() {
                        break;
                    }
                }
                answer_of(&mut stream, Duration::from_secs(20))
                    .await
                    .unwrap_or_default()
            })
        })
        .collect();
    let mut refused = 0;
    for sender in senders {
        let answer = sender.await.expect("client");
        if answer.starts_with("HTTP/1.1 431") && answer.contains("headers_too_large") {
            refused += 1;
        }
    }
    assert!(refused >= 190, "only {refused} of 200 were answered 431");
    let peak = peak_rss_mib(pid);
    assert!(peak < idle + 100, "peak {peak} MiB, idle {idle} MiB");

    // 1 000 clients each holding a head open (a byte at a time).
    let mut held = Vec::new();
    for _ in 0..1000 {
        let mut stream = tokio::net::TcpStream::connect(gw).await.expect("connect");
        stream
            .write_all(b"GET /api/public/x HTTP/1.1\r\nx-slow: a")
            .await
            .expect("send");
        held.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let holding = rss_mib(pid);
    println!("gateway RSS: idle {idle} MiB, 1000 slow-header clients {holding} MiB");
    assert!(
        holding < idle + 100,
        "{holding} MiB with 1000 slow clients, idle {idle} MiB"
    );
    drop(held);
    assert_eq!(raw(gw, "GET", "/api/public/x", &[], "").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_bounds_are_closed_on_arrival() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = Upstream::start().await;
    let gateway = Gateway::start_with_server(
        &public_routes(upstream.addr, ""),
        "  max_connections: 6\n  max_connections_per_ip: 3\n",
        &[],
    );
    let gw = gateway.addr();
    let from = |ip: &str| {
        let ip: std::net::IpAddr = ip.parse().expect("ip");
        async move {
            let socket = tokio::net::TcpSocket::new_v4().expect("socket");
            socket.bind((ip, 0).into()).expect("bind");
            socket.connect(gw).await.expect("connect")
        }
    };
    // Whether the gateway serves a request on this connection (the whole
    // answer is read, so the connection can serve the next one).
    async fn served(stream: &mut tokio::net::TcpStream) -> bool {
        let request = b"GET /api/public/x HTTP/1.1\r\nhost: gw\r\n\r\n";
        if stream.write_all(request).await.is_err() {
            return false;
        }
        let read = async {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if stream.read(&mut byte).await.ok()? == 0 {
                    return None;
                }
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            let mut body = vec![0u8; length];
            stream.read_exact(&mut body).await.ok()?;
            Some(head.starts_with("http/1.1 200"))
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(5), read).await,
            Ok(Some(true))
        )
    }
    let mut first = Vec::new();
    for _ in 0..3 {
        let mut stream = from("127.0.0.1").await;
        assert!(served(&mut stream).await);
        first.push(stream);
    }
    let mut fourth = from("127.0.0.1").await;
    assert!(
        !served(&mut fourth).await,
        "a fourth connection from one address was served"
    );
    let mut others = Vec::new();
    for _ in 0..3 {
        let mut stream = from("127.0.0.2").await;
        assert!(served(&mut stream).await);
        others.push(stream);
    }
    let mut seventh = from("127.0.0.3").await;
    assert!(
        !served(&mut seventh).await,
        "a seventh connection was served"
    );
    assert_eq!(
        gateway
            .metric(r#"portcullis_connections_refused_total{reason="max_connections_per_ip"}"#)
            .await,
        1.0
    );
    assert_eq!(
        gateway
            .metric(r#"portcullis_connections_refused_total{reason="max_connections"}"#)
            .await,
        1.0
    );
    // A closed connection gives its place back.
    drop(first.pop());
    let mut again = eventually(Duration::from_secs(5), async || {
        let mut stream = from("127.0.0.1").await;
        served(&mut stream).await
    })
    .await;
    assert!(again, "the place of a closed connection never came back");
    again = served(&mut others[0]).await;
    assert!(
        again,
        "an admitted keep-alive connection stopped being served"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_may_hold_only_so_many_websocket_tunnels() {
    use tokio::io::AsyncReadExt;
    let db = service_kit::testing::TestDatabase::new().await;
    let auth = crate::support::auth_service(&db, &[]);
    let upstream = Upstream::start().await;
    let extra = "  - { prefix: /api/ws, upstream: tasks, access: protected, websocket: true }\n";
    let gateway = Gateway::start_with_server(
        &crate::support::routes(auth.addr, &[upstream.addr], extra),
        "  max_websockets_per_user: 2\n",
        &[],
    );
    let gw = gateway.addr();
    let (alice, _) = crate::support::register(gw, "alice@example.com").await;
    let (bob, _) = crate::support::register(gw, "bob@example.com").await;
    let open = |token: String| async move {
        let bearer = format!("Bearer {token}");
        crate::support::open_upgrade(gw, "/api/ws", &[("authorization", &bearer)]).await
    };
    let (first, head) = open(alice.clone()).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let (_second, head) = open(alice.clone()).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let (mut third, head) = open(alice.clone()).await;
    assert!(head.starts_with("HTTP/1.1 429"), "{head}");
    let mut body = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), third.read_to_end(&mut body)).await;
    assert!(
        String::from_utf8_lossy(&body).contains("too_many_websockets"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    let (_bobs, head) = open(bob).await;
    assert!(head.starts_with("HTTP/1.1 101"), "bob was refused: {head}");
    // A closed tunnel gives its place back.
    drop(first);
    let reopened = eventually(Duration::from_secs(5), async || {
        open(alice.clone()).await.1.starts_with("HTTP/1.1 101")
    })
    .await;
    assert!(reopened, "alice's place never came back");
}

/// What the proxy engine refuses before any of the gateway's code runs is answered
/// with the gateway's JSON envelope all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_refused_before_any_phase_get_the_json_envelope() {
    let upstream = Upstream::start().await;
    let gateway = Gateway::start(&public_routes(upstream.addr, ""), &[]);
    let gw = gateway.addr();
    let many: String = (0..300).map(|i| format!("x-h{i}: 1\r\n")).collect();
    let cases: Vec<(String, &str, &str)> = vec![
        (
            "GET /api/public/x HTTP/1.1\r\nhost: a.example\r\nhost: b.example\r\n\r\n".into(),
            "400",
            "two Host headers",
        ),
        (
            "GET http://other.example/api/public/x HTTP/1.1\r\nhost: a.example\r\n\r\n".into(),
            "400",
            "an absolute-form authority that is not the Host",
        ),
        (
            "GET /api/public/x HTTP/1.1\r\nhost: a.example\r\nx-folded: a\r\n b\r\n\r\n".into(),
            "400",
            "obs-fold",
        ),
        (
            format!("GET /api/public/x HTTP/1.1\r\nhost: a.example\r\n{many}\r\n"),
            "400",
            "more than 256 headers",
        ),
        (
            "GET /api/public/x HTTP/1.1\r\nhost: a.example\r\nx-bad\u{1}name: 1\r\n\r\n".into(),
            "400",
            "a control byte in a header name",
        ),
        (
            "CONNECT a.example:443 HTTP/1.1\r\nhost: a.example:443\r\n\r\n".into(),
            "405",
            "CONNECT",
        ),
        (
            format!(
                "GET /api/public/x HTTP/1.1\r\nhost: a.example\r\nx-big: {}\r\n\r\n",
                "a".repeat(20_000)
            ),
            "431",
            "headers over max_header_bytes in one write",
        ),
    ];
    for (request, status, what) in cases {
        let answer = exchange(gw, request.as_bytes()).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{what}: {answer:?}"
        );
        assert!(
            answer.contains("content-type: application/json")
                || answer.contains("Content-Type: application/json"),
            "{what}: {answer:?}"
        );
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
        let json: serde_json::Value = serde_json::from_str(body)
            .unwrap_or_else(|_| panic!("{what}: the body is not JSON: {answer:?}"));
        assert!(json["error"]["code"].is_string(), "{what}: {json}");
    }
    assert!(
        upstream.seen().is_empty(),
        "a refused request was forwarded"
    );
}
