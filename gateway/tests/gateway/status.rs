//! The status page on the admin listener: the same facts as HTML and as
//! JSON, behind the admin token, following the gateway's state (an
//! upstream going unhealthy, reloads) and readable in a real browser.

use crate::support::{Gateway, Upstream, raw};
use serde_json::Value;
use service_kit::testing::unused_port;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const TOKEN: &str = "status-page-admin-token-of-enough-length-0123";

fn routes(servers: &[SocketAddr]) -> String {
    let servers = crate::support::quoted(servers);
    format!(
        r#"
auth:
  verify_url: http://127.0.0.1:9/api/verify
upstreams:
  tasks:
    servers: [{servers}]
    health_check: {{ type: http, path: /healthz, interval: 500ms }}
routes:
  - {{ prefix: /api/tasks, upstream: tasks, access: protected, roles: [admin] }}
  - {{ prefix: "/old<b>", redirect: {{ to: "https://example.com" }}, access: public }}
"#
    )
}

async fn status(admin: SocketAddr, accept: &str) -> (u16, Option<String>, String) {
    let bearer = format!("Bearer {TOKEN}");
    raw_text(admin, &[("authorization", &bearer), ("accept", accept)]).await
}

/// `GET /status` with `headers`: (status, content type, body).
async fn raw_text(admin: SocketAddr, headers: &[(&str, &str)]) -> (u16, Option<String>, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut request = String::from("GET /status HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    let mut stream = tokio::net::TcpStream::connect(admin)
        .await
        .expect("connect");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let content_type = head.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("content-type: ")
            .map(str::to_owned)
    });
    (status, content_type, body.to_string())
}

async fn json(admin: SocketAddr) -> Value {
    let (code, kind, body) = status(admin, "application/json").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(kind.as_deref(), Some("application/json"));
    serde_json::from_str(&body).expect("json")
}

fn healthy(page: &Value, address: SocketAddr) -> Option<bool> {
    page["upstreams"][0]["servers"]
        .as_array()?
        .iter()
        .find(|s| s["address"] == address.to_string())?["healthy"]
        .as_bool()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_routes_health_and_reloads_to_the_admin_only() {
    let (one, two) = (Upstream::start().await, Upstream::start().await);
    let admin: SocketAddr = format!("127.0.0.1:{}", unused_port())
        .parse()
        .expect("addr");
    let gateway = Gateway::start_with_server(
        &routes(&[one.addr, two.addr]),
        &format!("  admin_listen: {admin}\n"),
        &[("GATEWAY_ADMIN_TOKEN", TOKEN)],
    );

    let listening = service_kit::testing::eventually(Duration::from_secs(10), async || {
        tokio::net::TcpStream::connect(admin).await.is_ok()
    })
    .await;
    assert!(listening, "the admin listener never came up");

    // The admin token, and nothing else, opens it.
    for headers in [
        vec![],
        vec![("authorization", "Bearer wrong-token")],
        vec![("authorization", TOKEN)],
    ] {
        let (code, _, body) = raw_text(admin, &headers).await;
        assert_eq!(code, 401, "{headers:?}: {body}");
        assert!(body.contains("unauthenticated"), "{body}");
    }
    // Not on the proxy's own listener.
    assert_eq!(
        raw(gateway.addr(), "GET", "/status", &[], "").await.status,
        404
    );

    let page = json(admin).await;
    assert_eq!(page["generation"], 1);
    assert_eq!(page["routes"].as_array().map(Vec::len), Some(2));
    assert_eq!(page["routes"][0]["prefix"], "/api/tasks");
    assert_eq!(page["routes"][0]["roles"][0], "admin");
    assert_eq!(page["upstreams"][0]["name"], "tasks");
    assert_eq!(healthy(&page, one.addr), Some(true));
    assert_eq!(healthy(&page, two.addr), Some(true));
    assert_eq!(page["revocations"]["redis"], "not configured");

    // A server going down shows within one health-check interval (500 ms),
    // give or take the check itself.
    two.stop();
    let stopped = Instant::now();
    loop {
        if healthy(&json(admin).await, two.addr) == Some(false) {
            break;
        }
        assert!(
            stopped.elapsed() < Duration::from_secs(3),
            "still healthy on the page {:?} after the server stopped",
            stopped.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "unhealthy on the page {:?} after the server stopped",
        stopped.elapsed()
    );
    assert_eq!(healthy(&json(admin).await, one.addr), Some(true));

    // A refused reload, then an applied one.
    gateway.write_routes("routes: [ {prefix: nowhere} ]\n");
    assert!(gateway.reload("rejected", 1.0).await);
    let page = json(admin).await;
    assert_eq!(page["generation"], 1, "a refused reload changes nothing");
    assert_eq!(page["reloads"][0]["result"], "rejected");
    assert_eq!(page["reloads"][0]["trigger"], "SIGHUP");
    let good = format!(
        "{}\nserver:\n  grace_period: 1s\n  admin_listen: {admin}\n  upgrade_sock: {}\n",
        routes(&[one.addr]),
        gateway.upgrade_sock().display()
    );
    gateway.write_routes(&good);
    assert!(gateway.reload("applied", 1.0).await);
    let page = json(admin).await;
    assert_eq!(page["generation"], 2);
    assert_eq!(page["reloads"][0]["result"], "applied");
    assert_eq!(page["reloads"][1]["result"], "rejected");
    assert_eq!(
        page["upstreams"][0]["servers"].as_array().map(Vec::len),
        Some(1)
    );
    // The server that left the file left the health gauge too.
    let exposed = crate::support::raw_text(gateway.metrics, "/metrics").await;
    assert!(
        exposed.contains(&format!("server=\"{}\"", one.addr)),
        "{exposed}"
    );
    assert!(
        !exposed.contains(&format!("server=\"{}\"", two.addr)),
        "{exposed}"
    );

    // The page itself: HTML without script, what it shows escaped.
    let (code, kind, html) = status(admin, "text/html").await;
    assert_eq!(code, 200);
    assert_eq!(kind.as_deref(), Some("text/html; charset=utf-8"));
    assert!(html.contains("Portcullis status"));
    assert!(html.contains("/old&lt;b&gt;"), "unescaped route");
    assert!(!html.to_ascii_lowercase().contains("<script"));
    assert!(html.contains("rejected"));

    // As a browser shows it: rendered by Chromium from a saved copy (the
    // admin token never goes into a URL), with a phone-sized screenshot.
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("status.html");
    std::fs::write(&file, &html).expect("write");
    let screenshot = std::env::var("STATUS_SCREENSHOT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| dir.path().join("status.png"));
    let (dom, png) = tokio::task::spawn_blocking(move || {
        let url = format!("file://{}", file.display());
        (chromium(&url, &["--dump-dom"]), {
            chromium(
                &url,
                &[
                    &format!("--screenshot={}", screenshot.display()),
                    "--window-size=412,915",
                    "--hide-scrollbars",
                ],
            );
            std::fs::read(&screenshot).unwrap_or_default()
        })
    })
    .await
    .expect("join");
    assert!(dom.contains("Healthy servers"), "{dom}");
    assert!(dom.contains("127.0.0.1"), "{dom}");
    assert!(png.starts_with(b"\x89PNG"), "no screenshot");
    assert!(
        png.len() > 10_000,
        "an empty screenshot ({} bytes)",
        png.len()
    );
}

/// Chromium's output for `url`, killed after a minute if it hangs.
fn chromium(url: &str, args: &[&str]) -> String {
    use std::io::{Read, Seek};
    let chromium = std::env::var("CHROMIUM").unwrap_or("/usr/bin/chromium".into());
    let profile = tempfile::tempdir().expect("profile");
    let mut out = tempfile::tempfile().expect("output file");
    let mut child = std::process::Command::new(&chromium)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
        ])
        .args(args)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .stdout(out.try_clone().expect("clone"))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{chromium}: {e} (apt-get install chromium, or set CHROMIUM)"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().ok().flatten().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within a minute");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut text = String::new();
    let _ = out.seek(std::io::SeekFrom::Start(0));
    let _ = out.read_to_string(&mut text);
    text
}

/// Every metric the shipped Grafana dashboard (`deploy/grafana/`) and the
/// Prometheus rules (`deploy/prometheus/`) query is one the gateway
/// exposes, once it has seen the traffic each one counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_the_rules_query_is_exposed() {
    let tasks = Upstream::start().await;
    let dead = unused_port();
    let config = format!(
        r#"
auth:
  verify_url: http://127.0.0.1:{dead}/api/verify
  timeout: 200ms
upstreams:
  tasks:
    servers: ["{}"]
    health_check: {{ type: http, path: /healthz, interval: 500ms }}
routes:
  - {{ prefix: /api/public, upstream: tasks, access: public, rate_limit: {{ per_ip: {{ requests: 1, per: 1m, burst: 1 }} }} }}
  - {{ prefix: /api/tasks, upstream: tasks, access: protected }}
"#,
        tasks.addr
    );
    let gateway = Gateway::start(&config, &[]);
    let gw = gateway.addr();
    assert_eq!(raw(gw, "GET", "/api/public/a", &[], "").await.status, 200);
    assert_eq!(raw(gw, "GET", "/api/public/a", &[], "").await.status, 429);
    let bearer = format!("Bearer {}", crate::support::forged_token(1));
    let unavailable = raw(gw, "GET", "/api/tasks", &[("authorization", &bearer)], "").await;
    assert_eq!(unavailable.status, 503);
    assert!(gateway.reload("applied", 1.0).await);

    let exposed = crate::support::raw_text(gateway.metrics, "/metrics").await;
    let names: std::collections::BTreeSet<&str> = exposed
        .lines()
        .filter(|l| l.starts_with("portcullis_"))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    for file in [
        "deploy/grafana/portcullis.json",
        "deploy/prometheus/rules.yml",
    ] {
        let text = std::fs::read_to_string(format!("{root}/{file}")).expect(file);
        let mut queried: Vec<&str> = text
            .match_indices("portcullis_")
            .map(|(at, _)| {
                let rest = &text[at..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
                    .unwrap_or(rest.len());
                &rest[..end]
            })
            .filter(|name| name.len() > "portcullis_".len())
            .collect();
        queried.sort_unstable();
        queried.dedup();
        assert!(queried.len() >= 5, "{file}: {queried:?}");
        // Counters the auth service exposes, and alerts on rarer events,
        // may be absent from one run's traffic: the rules are checked for
        // the names, the dashboard for every one.
        let missing: Vec<&&str> = queried
            .iter()
            .filter(|name| !names.contains(**name))
            .filter(|name| file.ends_with(".json") || !RARE.contains(name))
            .collect();
        assert!(
            missing.is_empty(),
            "{file} queries {missing:?}, not in /metrics"
        );
    }
}

/// Series that only appear after events this test does not cause; each is
/// defined in gateway/src/metrics.rs (checked below by name).
const RARE: [&str; 1] = ["portcullis_jwks_fetches_total"];

#[test]
fn the_rare_series_are_the_gateways_own() {
    let source = include_str!("../../src/metrics.rs");
    for name in RARE {
        assert!(source.contains(&format!("\"{name}\"")), "{name}");
    }
}

/// A real Prometheus server, with the shipped rules, scraping a running
/// gateway: the series arrive and the rules load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_gateway_with_the_shipped_rules() {
    let tasks = Upstream::start().await;
    let config = format!(
        "auth:\n  verify_url: http://127.0.0.1:9/api/verify\nupstreams:\n  tasks:\n    servers: [\"{}\"]\nroutes:\n  - {{ prefix: /api/public, upstream: tasks, access: public }}\n",
        tasks.addr
    );
    let gateway = Gateway::start(&config, &[]);
    assert_eq!(
        raw(gateway.addr(), "GET", "/api/public/x", &[], "")
            .await
            .status,
        200
    );

    let dir = tempfile::tempdir().expect("dir");
    let rules = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/prometheus/rules.yml"
    );
    let prometheus_config = dir.path().join("prometheus.yml");
    std::fs::write(
        &prometheus_config,
        format!(
            "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\nrule_files: [\"{rules}\"]\nscrape_configs:\n  - job_name: portcullis-gateway\n    static_configs:\n      - targets: [\"{}\"]\n",
            gateway.metrics
        ),
    )
    .expect("write");
    let port = unused_port();
    let log = dir.path().join("prometheus.log");
    let child = std::process::Command::new("prometheus")
        .arg(format!("--config.file={}", prometheus_config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("prometheus (apt-get install prometheus)");
    let _child = Killed(child);
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    let client = reqwest::Client::new();
    let api = format!("http://127.0.0.1:{port}/api/v1");
    let found = service_kit::testing::eventually(Duration::from_secs(30), async || {
        let reply: Value = match client
            .get(format!("{api}/query"))
            .query(&[("query", "portcullis_requests_total{route=\"/api/public\"}")])
            .send()
            .await
        {
            Ok(response) => response.json().await.unwrap_or(Value::Null),
            Err(_) => return false,
        };
        reply["data"]["result"]
            .as_array()
            .is_some_and(|r| r.iter().any(|s| s["value"][1] == "1"))
    })
    .await;
    assert!(found, "no gateway series in Prometheus:\n{}", logs());
    let rules: Value = client
        .get(format!("{api}/rules"))
        .send()
        .await
        .expect("rules")
        .json()
        .await
        .expect("json");
    let alerts: Vec<&str> = rules["data"]["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .filter(|r| r["type"] == "alerting")
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert!(alerts.contains(&"PortcullisUpstreamDown"), "{alerts:?}");
    assert!(alerts.len() >= 8, "{alerts:?}");
    // And every rule evaluates against the gateway's series without error.
    let evaluated = service_kit::testing::eventually(Duration::from_secs(20), async || {
        let Ok(response) = client.get(format!("{api}/rules")).send().await else {
            return false;
        };
        let rules: Value = response.json().await.unwrap_or(Value::Null);
        let all: Vec<&Value> = rules["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .collect();
        !all.is_empty()
            && all
                .iter()
                .all(|r| r["health"] == "ok" && r["lastError"].as_str().unwrap_or("").is_empty())
    })
    .await;
    assert!(evaluated, "a rule did not evaluate:\n{}", logs());
}

/// A child process killed when the test ends, however it ends.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
