//! What a careless operator or a hostile routes file can do to a gateway:
//! every refusal comes with a key and a line, costs no more memory than the
//! file, and leaves a running gateway serving and reloading.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;
use support::{Gateway, Upstream, eventually, raw};

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

async fn reloaded(gateway: &Gateway, result: &str, count: f64) -> bool {
    let sample = format!(r#"portcullis_config_reloads_total{{result="{result}"}}"#);
    eventually(Duration::from_secs(30), async || {
        gateway.metric(&sample).await == count
    })
    .await
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
    assert!(stderr.contains("routes[") && stderr.contains("].roles"), "{stderr}");
    assert!(stderr.contains(" at line "), "{stderr}");

    let gateway = Gateway::start(&public_routes(upstream.addr, ""), &[]);
    let before = peak_rss_mib(gateway.child.pid());
    gateway.write_routes(&alias_bomb(upstream.addr));
    gateway.child.signal("HUP");
    assert!(
        reloaded(&gateway, "rejected", 1.0).await,
        "the bomb was not refused:\n{}",
        gateway.child.logs()
    );
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
    assert_eq!(
        raw(gateway.addr(), "GET", "/api/public/x", &[], "").await.status,
        200
    );
    // The next valid file is applied as usual.
    gateway.write_routes(&public_routes(
        upstream.addr,
        "  - { prefix: /api/extra, upstream: app, access: public }\n",
    ));
    gateway.child.signal("HUP");
    assert!(reloaded(&gateway, "applied", 1.0).await, "{}", gateway.child.logs());
    assert_eq!(
        raw(gateway.addr(), "GET", "/api/extra", &[], "").await.status,
        200
    );
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
        gateway.write_routes(&public_routes(upstream.addr, extra));
        gateway.child.signal("HUP");
        assert!(
            reloaded(&gateway, "rejected", n as f64 + 1.0).await,
            "{}",
            gateway.child.logs()
        );
    }
    gateway.write_routes(&public_routes(
        upstream.addr,
        "  - { prefix: /api/extra, upstream: app, access: public, rate_limit: { per_ip: { requests: 1, per: 24h } } }\n",
    ));
    gateway.child.signal("HUP");
    assert!(reloaded(&gateway, "applied", 1.0).await, "{}", gateway.child.logs());
    assert_eq!(
        raw(gateway.addr(), "GET", "/api/extra", &[], "").await.status,
        200
    );
    assert_eq!(
        raw(gateway.addr(), "GET", "/api/extra", &[], "").await.status,
        429
    );
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
    assert!(stdout.contains("ok (100000 routes, 1 upstreams)"), "{stdout}");
    std::fs::write(&file, many(100_001)).expect("write");
    let (ok, _, stderr) = check(&file);
    assert!(!ok);
    assert!(
        stderr.contains("routes: has 100001 entries; at most 100000 are allowed"),
        "{stderr}"
    );

    let gateway = Gateway::start(&public_routes(upstream.addr, ""), &[]);
    gateway.write_routes(&many(100_000));
    gateway.child.signal("HUP");
    assert!(reloaded(&gateway, "applied", 1.0).await, "{}", gateway.child.logs());
    assert_eq!(
        raw(gateway.addr(), "GET", "/r/99999/x", &[], "").await.status,
        200
    );
    assert_eq!(
        raw(gateway.addr(), "GET", "/r/100000", &[], "").await.status,
        404
    );
}
