//! The process: reloads (SIGHUP, --watch), --check, draining on SIGTERM,
//! zero-downtime upgrades, systemd readiness.

use crate::support::*;
use futures::future::join_all;
use service_kit::testing::{ChildService, TestDatabase};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sighup_applies_valid_files_and_refuses_invalid_ones_under_load() {
    let s = stack(&[]).await;
    let gw = s.gateway.addr();
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                while !stop.load(Ordering::Relaxed) {
                    match client
                        .get(format!("http://{gw}/api/public/load"))
                        .send()
                        .await
                    {
                        Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();

    let extra = "  - { prefix: /api/extra, upstream: tasks, access: public }\n";
    s.gateway
        .write_routes(&routes(s.auth.addr, &[s.tasks.addr], extra));
    s.gateway.child.signal("HUP");
    let applied = eventually(Duration::from_secs(5), async || {
        raw(gw, "GET", "/api/extra", &[], "").await.status == 200
    })
    .await;
    assert!(
        applied,
        "the valid file was not applied:\n{}",
        s.gateway.child.logs()
    );

    s.gateway.write_routes("routes: [this is not: valid");
    s.gateway.child.signal("HUP");
    let refused = eventually(Duration::from_secs(5), async || {
        s.gateway.child.logs().contains("reload refused")
    })
    .await;
    assert!(
        refused,
        "no log line for the invalid file:\n{}",
        s.gateway.child.logs()
    );
    assert_eq!(
        raw(gw, "GET", "/api/extra", &[], "").await.status,
        200,
        "the old table stopped serving"
    );

    // Keep the load on until it means something, however busy the machine.
    let enough = eventually(Duration::from_secs(20), async || {
        ok.load(Ordering::Relaxed) > 200
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    join_all(workers).await;
    assert!(enough, "the load never got going");
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during reloads"
    );
    assert_eq!(
        s.gateway
            .metric(r#"portcullis_config_reloads_total{result="applied"}"#)
            .await,
        1.0
    );
    assert_eq!(
        s.gateway
            .metric(r#"portcullis_config_reloads_total{result="rejected"}"#)
            .await,
        1.0
    );
}

#[test]
fn check_flag_validates_files_and_names_every_error() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/../routes.yaml");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["--check", "--config", shipped])
        .output()
        .expect("run");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let broken = dir.path().join("routes.yaml");
    std::fs::write(
        &broken,
        "auth:\n  verify_url: http://127.0.0.1:9001/api/verify\nupstreams:\n  tasks:\n    servers: [\"127.0.0.1:9101\"]\nroutes:\n  - prefix: /api/tasks\n    upstream: taks\n    access: protected\n  - prefix: /api/admin\n    upstream: tasks\n    access: public\n    roles: [admin]\n",
    )
    .expect("write");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["--check", "--config"])
        .arg(&broken)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("routes[0].upstream: unknown upstream \"taks\" at line 8"),
        "{stderr}"
    );
    assert!(
        stderr.contains("routes[1].roles: roles need access: protected at line 13"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_in_flight_requests_finish() {
    let mut s = stack(&[]).await;
    let gw = s.gateway.addr();
    s.tasks.delay_ms.store(700, Ordering::SeqCst);
    let in_flight = tokio::spawn(async move { raw(gw, "GET", "/api/public/slow", &[], "").await });
    let arrived = eventually(Duration::from_secs(5), async || !s.tasks.seen().is_empty()).await;
    assert!(arrived);
    s.gateway.child.signal("TERM");
    let reply = in_flight.await.expect("join");
    assert_eq!(reply.status, 200, "the in-flight request was cut");
    let status = s
        .gateway
        .child
        .wait_exit(Duration::from_secs(15))
        .expect("exited within the grace period");
    assert!(status.success(), "{status:?}");
}

/// How one request went during a listener hand-over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    Ok,
    /// The connect was refused: the listener had a gap.
    Refused,
    /// Accepted, then closed before the request was read.
    ClosedUnread,
    /// Any other outcome (a status other than 200, a cut response).
    Failed,
}

async fn attempt(gw: std::net::SocketAddr) -> Attempt {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(gw).await else {
        return Attempt::Refused;
    };
    let request = b"GET /api/public/up HTTP/1.1\r\nhost: gateway.test\r\nconnection: close\r\n\r\n";
    if stream.write_all(request).await.is_err() {
        return Attempt::ClosedUnread;
    }
    let mut response = Vec::new();
    match tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await {
        Ok(Ok(_)) if response.is_empty() => Attempt::ClosedUnread,
        Ok(Ok(_)) if response.starts_with(b"HTTP/1.1 200") => Attempt::Ok,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset && response.is_empty() => {
            Attempt::ClosedUnread
        }
        _ => Attempt::Failed,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upgrade_hands_the_listener_over_without_refusing_a_connection() {
    let s = stack(&[]).await;
    let gw = s.gateway.addr();
    let stop = Arc::new(AtomicBool::new(false));
    let outcomes = Arc::new(std::sync::Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let (stop, outcomes) = (stop.clone(), outcomes.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    // A new connection each time, so that a gap in the
                    // listener would show as a refused connect.
                    let outcome = attempt(gw).await;
                    outcomes.lock().expect("lock").push(outcome);
                }
            })
        })
        .collect();

    // The new process waits on the upgrade socket for the old one's listeners.
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .arg("--config")
        .arg(&s.gateway.config)
        .args(["--listen", &gw.to_string(), "--threads", "2", "--upgrade"]);
    let new = std::thread::spawn(move || ChildService::start("gateway-new", command));
    let socket = s.gateway.upgrade_sock();
    let waiting = eventually(Duration::from_secs(10), async || socket.exists()).await;
    assert!(waiting, "the new process never opened the upgrade socket");
    let mut old = s.gateway.child;
    old.signal("QUIT");
    let new = new.join().expect("new gateway started");
    let old_status = old
        .wait_exit(Duration::from_secs(20))
        .expect("the old process exited");
    assert!(old_status.success(), "{old_status:?}");
    // The new process now serves alone.
    assert_eq!(
        raw(gw, "GET", "/api/public/after", &[], "").await.status,
        200
    );
    stop.store(true, Ordering::Relaxed);
    join_all(workers).await;

    let outcomes = outcomes.lock().expect("lock").clone();
    let count = |kind: Attempt| outcomes.iter().filter(|o| **o == kind).count();
    let summary = format!(
        "ok {}, refused {}, closed unread {}, failed {}\n{}",
        count(Attempt::Ok),
        count(Attempt::Refused),
        count(Attempt::ClosedUnread),
        count(Attempt::Failed),
        new.logs()
    );
    assert!(count(Attempt::Ok) > 100, "too little traffic: {summary}");
    assert_eq!(
        count(Attempt::Refused),
        0,
        "the listener had a gap: {summary}"
    );
    assert_eq!(count(Attempt::Failed), 0, "a request failed: {summary}");
    // The proxy engine closes connections that have not sent their request when the
    // old process starts draining; only the ones caught at that instant.
    assert!(
        count(Attempt::ClosedUnread) * 100 <= count(Attempt::Ok),
        "{summary}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_applies_a_changed_file_without_a_signal() {
    let db = TestDatabase::new().await;
    let auth = auth_service(&db, &[]);
    let tasks = Upstream::start().await;
    let gateway = Gateway::start(
        &routes(auth.addr, &[tasks.addr], ""),
        &[("GATEWAY_WATCH", "true")],
    );
    let gw = gateway.addr();
    assert_eq!(raw(gw, "GET", "/api/watched", &[], "").await.status, 404);
    let extra = "  - { prefix: /api/watched, upstream: tasks, access: public }\n";
    gateway.write_routes(&routes(auth.addr, &[tasks.addr], extra));
    let applied = eventually(Duration::from_secs(5), async || {
        raw(gw, "GET", "/api/watched", &[], "").await.status == 200
    })
    .await;
    assert!(
        applied,
        "the changed file was not applied:\n{}",
        gateway.child.logs()
    );
    // A broken save is refused; the routes in force keep serving.
    gateway.write_routes("upstreams: {");
    let refused = eventually(Duration::from_secs(5), async || {
        gateway.child.logs().contains("reload refused")
    })
    .await;
    assert!(refused);
    assert_eq!(raw(gw, "GET", "/api/watched", &[], "").await.status, 200);
    // So is a save that cannot be read as text: noticed, refused, counted.
    let rejected = r#"portcullis_config_reloads_total{result="rejected"}"#;
    let before = gateway.metric(rejected).await;
    let tmp = gateway.config.with_extension("tmp");
    std::fs::write(&tmp, b"routes: [\xff\xfe]\n").expect("write");
    std::fs::rename(&tmp, &gateway.config).expect("rename");
    let counted = eventually(Duration::from_secs(5), async || {
        gateway.metric(rejected).await > before
    })
    .await;
    assert!(
        counted,
        "a non-UTF-8 save went unnoticed:\n{}",
        gateway.child.logs()
    );
    assert_eq!(raw(gw, "GET", "/api/watched", &[], "").await.status, 200);
}

/// Receives one datagram on a systemd-style notify socket.
fn notify_message(socket: &std::os::unix::net::UnixDatagram) -> String {
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut buffer = [0u8; 256];
    let n = socket.recv(&mut buffer).expect("a notify datagram");
    String::from_utf8_lossy(&buffer[..n]).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_is_told_which_process_serves_before_and_after_an_upgrade() {
    let db = TestDatabase::new().await;
    let auth = auth_service(&db, &[]);
    let tasks = Upstream::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&path).expect("bind");
    let notify = path.display().to_string();
    let gateway = Gateway::start(
        &routes(auth.addr, &[tasks.addr], ""),
        &[("NOTIFY_SOCKET", notify.as_str())],
    );
    let gw = gateway.addr();
    let first = notify_message(&socket);
    assert!(first.contains("READY=1\n"), "{first:?}");
    assert!(
        first.contains(&format!("MAINPID={}\n", gateway.child.pid())),
        "{first:?}"
    );

    // What the systemd unit's reload does: a new process with --upgrade,
    // then SIGQUIT to the old one.
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("NOTIFY_SOCKET", &notify)
        .arg("--config")
        .arg(&gateway.config)
        .args(["--listen", &gw.to_string(), "--threads", "1", "--upgrade"]);
    let new = std::thread::spawn(move || ChildService::start("gateway-new", command));
    let sock = gateway.upgrade_sock();
    let waiting = eventually(Duration::from_secs(10), async || sock.exists()).await;
    assert!(waiting, "the new process never opened the upgrade socket");
    let mut old = gateway.child;
    old.signal("QUIT");
    let new = new.join().expect("new gateway");
    let second = notify_message(&socket);
    assert!(
        second.contains(&format!("MAINPID={}\n", new.pid())),
        "the new process did not name itself: {second:?}"
    );
    let old_status = old
        .wait_exit(Duration::from_secs(20))
        .expect("the old process exited");
    assert!(old_status.success(), "{old_status:?}");
    assert_eq!(raw(gw, "GET", "/api/public/x", &[], "").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_names_every_request_and_is_written_whole_at_shutdown() {
    let mut s = stack(&[]).await;
    let gw = s.gateway.addr();
    let (token, user) = register(gw, "logged@example.com").await;
    let reply = raw(
        gw,
        "GET",
        "/api/public/a",
        &[("x-request-id", "logged-public-1")],
        "",
    )
    .await;
    assert_eq!(reply.status, 200);
    let bearer = bearer(&token);
    let headers = [
        ("x-request-id", "logged-protected-1"),
        ("authorization", bearer.as_str()),
    ];
    assert_eq!(
        raw(gw, "GET", "/api/tasks/1", &headers, "").await.status,
        200
    );
    // Written by the log's own thread, within its interval (100 ms).
    let line = |logs: &str, id: &str| {
        logs.lines()
            .find(|l| l.contains(&format!("request_id={id}")))
            .map(str::to_owned)
    };
    let logged = eventually(Duration::from_secs(5), async || {
        line(&s.gateway.child.logs(), "logged-protected-1").is_some()
    })
    .await;
    assert!(logged, "{}", s.gateway.child.logs());
    let logs = s.gateway.child.logs();
    let public = line(&logs, "logged-public-1").expect("the public request's line");
    assert!(
        public.contains(r#"route="/api/public""#) && public.contains("status=200"),
        "{public}"
    );
    let protected = line(&logs, "logged-protected-1").expect("the protected request's line");
    assert!(
        protected.contains(r#"route="/api/tasks""#)
            && protected.contains(&format!(r#"user_id="{user}""#)),
        "{protected}"
    );
    assert!(
        !s.gateway.child.logs().contains(&token),
        "a token reached the log"
    );

    // A burst, then SIGINT (a fast shutdown, no grace period) at once:
    // lines still waiting for the log's interval are written on the way
    // out, none lost.
    for i in 0..50 {
        let id = format!("burst-{i}");
        let reply = raw(
            gw,
            "GET",
            "/api/public/b",
            &[("x-request-id", id.as_str())],
            "",
        )
        .await;
        assert_eq!(reply.status, 200);
    }
    s.gateway.child.signal("INT");
    let status = s
        .gateway
        .child
        .wait_exit(Duration::from_secs(15))
        .expect("exited at once");
    assert!(status.success(), "{status:?}");
    let all = eventually(Duration::from_secs(5), async || {
        let logs = s.gateway.child.logs();
        (0..50).all(|i| line(&logs, &format!("burst-{i}")).is_some())
    })
    .await;
    assert!(
        all,
        "access-log lines lost at shutdown:\n{}",
        s.gateway.child.logs()
    );
}
