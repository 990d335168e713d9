//! What an Nginx front end does every day, through real clients: virtual
//! hosts, compression decoded by curl and Python's own decoders, header
//! rules seen by a recording upstream, redirects and fixed answers, and
//! CORS, from preflight to a real browser.

use crate::support::*;
use service_kit::testing::{TestDatabase, eventually, unused_port};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// A gateway without protected routes: no auth service needed.
fn public(upstreams: &[(&str, SocketAddr)], routes: &str) -> String {
    let mut out = String::from("auth:\n  verify_url: http://127.0.0.1:9/api/verify\nupstreams:\n");
    for (name, addr) in upstreams {
        out.push_str(&format!("  {name}:\n    servers: [\"{addr}\"]\n"));
    }
    out.push_str("routes:\n");
    out.push_str(routes);
    out
}

fn host(name: &str) -> [(&str, &str); 1] {
    [("host", name)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_on_one_listener_reach_two_upstreams() {
    let (api, apps) = (Upstream::start().await, Upstream::start().await);
    let routes = public(
        &[("api", api.addr), ("apps", apps.addr)],
        "  - { prefix: /, hosts: [api.example.test], upstream: api, access: public }\n  - { prefix: /, hosts: [\"*.apps.test\"], upstream: apps, access: public }\n  - { prefix: /shared, upstream: apps, access: public }\n",
    );
    let gateway = Gateway::start(&routes, &[]);
    let gw = gateway.addr();
    let cases = [
        ("api.example.test", "/v1/x", 200, Some("api")),
        ("API.Example.TEST:8080", "/v1/y", 200, Some("api")),
        ("api.example.test.", "/v1/z", 200, Some("api")),
        ("a.apps.test", "/p", 200, Some("apps")),
        ("b.c.apps.test", "/q", 200, Some("apps")),
        // The most specific host's own routes come first: `/` of the exact
        // host takes /shared too.
        ("api.example.test", "/shared/1", 200, Some("api")),
        ("other.test", "/shared/2", 200, Some("apps")),
        // A wildcard never matches its bare suffix; an unknown host finds
        // only the routes for any host.
        ("apps.test", "/p3", 404, None),
        ("other.test", "/v1/w", 404, None),
        // A Host that is no host name is refused, never guessed at.
        ("api.example.test..", "/v1/v", 400, None),
    ];
    for (name, path, status, upstream) in cases {
        let reply = raw(gw, "GET", path, &host(name), "").await;
        assert_eq!(reply.status, status, "{name} {path}: {:?}", reply.body);
        let seen_by = |u: &Upstream| u.seen().iter().any(|s| s.target == path);
        let got = match (seen_by(&api), seen_by(&apps)) {
            (true, false) => Some("api"),
            (false, true) => Some("apps"),
            (false, false) => None,
            (true, true) => panic!("{path} reached both"),
        };
        assert_eq!(got, upstream, "{name} {path}");
    }
    assert_eq!(
        gateway
            .metric("portcullis_requests_total{route=\"api.example.test/\",status=\"200\"}")
            .await,
        4.0,
        "the route is named by its host in metrics"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_of_named_hosts_only_refuses_a_request_without_a_host() {
    let api = Upstream::start().await;
    let routes = public(
        &[("api", api.addr)],
        "  - { prefix: /, hosts: [api.example.test], upstream: api, access: public }\n",
    );
    let gateway = Gateway::start(&routes, &[]);
    let mut stream = tokio::net::TcpStream::connect(gateway.addr())
        .await
        .expect("connect");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream
        .write_all(b"GET /x HTTP/1.0\r\n\r\n")
        .await
        .expect("send");
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response);
    assert!(
        text.starts_with("HTTP/1.1 400") || text.starts_with("HTTP/1.0 400"),
        "{text}"
    );
    assert!(text.contains("\"bad_request\""), "{text}");
    assert!(api.seen().is_empty());
}

/// Writes `routes` and runs `gateway --check` on it.
fn check(dir: &Path, routes: &str) -> (bool, String) {
    let path = dir.join("routes.yaml");
    std::fs::write(&path, routes).expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["--check", "--config"])
        .arg(&path)
        .output()
        .expect("run --check");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned()
            + &String::from_utf8_lossy(&output.stdout),
    )
}

#[test]
fn check_names_each_misused_key_with_its_line() {
    let dir = tempfile::tempdir().expect("dir");
    let addr: SocketAddr = "127.0.0.1:9".parse().expect("addr");
    let cases = [
        (
            "  - { prefix: /a, upstream: app, access: public, request_headers: { set: { X-User-Id: \"1\" } } }\n",
            "routes[0].request_headers.set.X-User-Id",
        ),
        (
            "  - { prefix: /a, upstream: app, access: public, request_headers: { remove: [authorization] } }\n",
            "routes[0].request_headers.remove[0]",
        ),
        (
            "  - { prefix: /a, upstream: app, access: public, response_headers: { add: { Connection: close } } }\n",
            "routes[0].response_headers.add.Connection",
        ),
        (
            "  - { prefix: /a, upstream: app, access: public, cors: { origins: [\"*\"], credentials: true } }\n",
            "routes[0].cors.origins[0]",
        ),
        (
            "  - { prefix: /a, access: public, redirect: { to: \"//evil.test/\", status: 301 } }\n",
            "routes[0].redirect.to",
        ),
        (
            "  - { prefix: /a, access: public, redirect: { to: /b, status: 200 } }\n",
            "routes[0].redirect.status",
        ),
        (
            "  - { prefix: /a, upstream: app, access: public, respond: { status: 503 } }\n",
            "routes[0]",
        ),
        (
            "  - { prefix: /a, upstream: app, access: public, compression: { gzip: 12 } }\n",
            "routes[0].compression.gzip",
        ),
        (
            "  - { prefix: /a, hosts: [a.test], upstream: app, access: public }\n  - { prefix: /a, hosts: [A.test], upstream: app, access: public }\n",
            "routes[1].prefix",
        ),
        (
            "  - { prefix: /a, hosts: [\"a.test:80\"], upstream: app, access: public }\n",
            "routes[0].hosts[0]",
        ),
        (
            "  - { prefix: /a, upstream: app, access: public, compression: { brotli: 0 } }\n",
            "routes[0].compression.brotli",
        ),
    ];
    for (routes, key) in cases {
        let (ok, output) = check(dir.path(), &public(&[("app", addr)], routes));
        assert!(!ok, "--check accepted {routes}");
        assert!(
            output.contains(key) && output.contains("line"),
            "{key} not named with a line in:\n{output}"
        );
    }
    // The same prefix on two different hosts is two routes, not a clash.
    let (ok, output) = check(
        dir.path(),
        &public(
            &[("app", addr)],
            "  - { prefix: /a, hosts: [a.test], upstream: app, access: public }\n  - { prefix: /a, hosts: [b.test], upstream: app, access: public }\n  - { prefix: /a, upstream: app, access: public }\n",
        ),
    );
    assert!(ok, "{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_rules_are_seen_by_the_upstream_and_the_client() {
    let app = Upstream::start().await;
    let routes = public(
        &[("app", app.addr)],
        "  - prefix: /a\n    upstream: app\n    access: public\n    request_headers: { set: { x-api-version: \"2\" }, add: { x-tag: gateway }, remove: [x-debug] }\n    response_headers: { set: { x-frame-options: DENY }, add: { cache-control: no-transform }, remove: [content-type] }\n",
    );
    let gateway = Gateway::start(&routes, &[]);
    let reply = raw(
        gateway.addr(),
        "GET",
        "/a/1",
        &[
            ("x-api-version", "1"),
            ("x-tag", "client"),
            ("x-debug", "on"),
        ],
        "",
    )
    .await;
    assert_eq!(reply.status, 200);
    let seen = app.seen().pop().expect("forwarded");
    assert_eq!(seen.all("x-api-version"), ["2"]);
    assert_eq!(seen.all("x-tag"), ["client", "gateway"]);
    assert!(seen.all("x-debug").is_empty());
    assert_eq!(reply.header("x-frame-options"), Some("DENY"));
    assert_eq!(reply.header("cache-control"), Some("no-transform"));
    assert_eq!(reply.header("content-type"), None);
}

/// `curl -sI` (no redirects followed): status and `Location`.
fn curl_head(url: &str) -> (u16, String, String) {
    let output = Command::new("curl")
        .args(["-sI", "--noproxy", "*", url])
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let status = text
        .lines()
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let location = text
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("location:")
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_default();
    (status, location, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_and_fixed_answers_never_reach_an_upstream() {
    let app = Upstream::start().await;
    let routes = public(
        &[("app", app.addr)],
        "  - { prefix: /old, access: public, redirect: { to: \"https://new.example.test/docs\", status: 308, keep_path: true } }\n  - { prefix: /gone, access: public, redirect: { to: /here } }\n  - { prefix: /maintenance, access: public, respond: { status: 503, body: \"back at noon\" } }\n  - { prefix: /api, upstream: app, access: public }\n",
    );
    let gateway = Gateway::start(&routes, &[]);
    let base = format!("http://{}", gateway.addr());
    let cases = [
        ("/old/a/b?x=1", 308, "https://new.example.test/docs/a/b?x=1"),
        ("/old", 308, "https://new.example.test/docs"),
        ("/gone/deep/path?q", 301, "/here"),
    ];
    for (path, status, location) in cases {
        let url = format!("{base}{path}");
        let (got, to, text) = tokio::task::spawn_blocking(move || curl_head(&url))
            .await
            .expect("join");
        assert_eq!((got, to.as_str()), (status, location), "{path}:\n{text}");
    }
    let output = Command::new("curl")
        .args([
            "-s",
            "--noproxy",
            "*",
            "-w",
            "\n%{http_code} %{content_type}",
        ])
        .arg(format!("{base}/maintenance/x"))
        .output()
        .expect("curl");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "back at noon\n503 text/plain; charset=utf-8"
    );
    assert!(app.seen().is_empty(), "an answer reached the upstream");
}

/// A static file server of Python's own, serving `dir`.
struct Files {
    child: std::process::Child,
    addr: SocketAddr,
}

impl Files {
    fn serve(dir: &Path) -> Files {
        let port = unused_port();
        let child = Command::new("python3")
            .args([
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                &port.to_string(),
                "--directory",
            ])
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 -m http.server");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        for _ in 0..100 {
            if std::net::TcpStream::connect(addr).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Files { child, addr }
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Fetches `url` with `accept` as `Accept-Encoding`, decodes the body with
/// Debian's Python (gzip, brotli, zstandard) and prints what it got.
fn python_fetch(url: &str, accept: &str) -> serde_json::Value {
    const SCRIPT: &str = r#"
import sys, json, gzip, urllib.request, brotli, zstandard
url, accept = sys.argv[1], sys.argv[2]
request = urllib.request.Request(url, headers={"Accept-Encoding": accept} if accept else {})
with urllib.request.urlopen(request) as r:
    wire = r.read()
    coding = r.headers.get("Content-Encoding") or ""
    vary = ", ".join(r.headers.get_all("Vary") or [])
decode = {"gzip": gzip.decompress, "br": brotli.decompress,
          "zstd": lambda b: zstandard.ZstdDecompressor().decompressobj().decompress(b), "": bytes}
body = decode[coding](wire)
print(json.dumps({"coding": coding, "wire": len(wire), "size": len(body), "vary": vary,
                  "body": body.decode("latin-1")}))
"#;
    let python = if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    let output = Command::new(python)
        .args(["-c", SCRIPT, url, accept])
        .output()
        .expect("run python3");
    assert!(
        output.status.success(),
        "python3: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("python output")
}

/// A bundle-like JavaScript file: varied lines, repeated as real code is.
fn bundle() -> String {
    (0..6000)
        .map(|i| {
            format!(
                "export function f{i}(a, b) {{ return a * {} + b - {}; }}\n",
                i % 97,
                i % 13
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_responses_decode_to_the_same_bytes_in_every_client() {
    let dir = tempfile::tempdir().expect("dir");
    let js = bundle();
    std::fs::write(dir.path().join("app.js"), &js).expect("write");
    std::fs::write(dir.path().join("tiny.json"), "{\"ok\":true}").expect("write");
    std::fs::write(dir.path().join("photo.png"), js.as_bytes()).expect("write");
    let files = Files::serve(dir.path());
    let db = TestDatabase::new().await;
    let auth = auth_service(&db, &[]);
    let routes = format!(
        "auth:\n  verify_url: http://{auth}/api/verify\nupstreams:\n  files:\n    servers: [\"{files}\"]\n  auth:\n    servers: [\"{auth}\"]\nroutes:\n  - {{ prefix: /static, upstream: files, access: public, rewrite: / }}\n  - {{ prefix: /private, upstream: files, access: protected, rewrite: / }}\n  - {{ prefix: /private-on, upstream: files, access: protected, rewrite: /, compression: true }}\n  - {{ prefix: /plain, upstream: files, access: public, rewrite: /, compression: false }}\n  - {{ prefix: /api/auth/register, upstream: auth, access: public, methods: [POST], rewrite: /api/register }}\n",
        auth = auth.addr,
        files = files.addr,
    );
    let gateway = Gateway::start(&routes, &[]);
    let base = format!("http://{}", gateway.addr());
    let fetch = |path: &str, accept: &str| {
        let (url, accept) = (format!("{base}{path}"), accept.to_owned());
        async move {
            tokio::task::spawn_blocking(move || python_fetch(&url, &accept))
                .await
                .expect("join")
        }
    };

    for (accept, coding) in [
        ("gzip", "gzip"),
        ("br", "br"),
        ("zstd", "zstd"),
        ("gzip, deflate, br, zstd", "br"),
        ("br;q=0.5, gzip", "gzip"),
        ("zstd;q=1, br;q=0.9, *;q=0.1", "zstd"),
        ("identity", ""),
        ("", ""),
    ] {
        let got = fetch("/static/app.js", accept).await;
        assert_eq!(got["coding"], coding, "{accept:?}");
        assert_eq!(
            got["body"].as_str(),
            Some(js.as_str()),
            "{accept:?}: body differs"
        );
        assert!(
            got["vary"]
                .as_str()
                .is_some_and(|v| v.to_ascii_lowercase().contains("accept-encoding")),
            "{accept:?}: no Vary: {got:?}"
        );
        if !coding.is_empty() {
            let (wire, size) = (got["wire"].as_u64().unwrap(), got["size"].as_u64().unwrap());
            assert!(
                wire * 3 < size,
                "{coding}: {wire} bytes on the wire for {size}"
            );
        }
    }
    // curl, asking for what it supports and decoding it itself.
    let output = Command::new("curl")
        .args([
            "-s",
            "--compressed",
            "--noproxy",
            "*",
            "-w",
            "%{size_download}",
        ])
        .arg(format!("{base}/static/app.js"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&output.stdout);
    let (body, downloaded) = text.split_at(js.len());
    assert_eq!(body, js);
    assert!(downloaded.parse::<usize>().expect("size") * 3 < js.len());

    // Not compressed: below the minimum size, a type not listed, a route
    // with compression off, a protected route by default; on when asked.
    for path in ["/static/tiny.json", "/static/photo.png", "/plain/app.js"] {
        let got = fetch(path, "gzip, br").await;
        assert_eq!(got["coding"], "", "{path}");
    }
    let (token, _) = register(gateway.addr(), "compress@example.com").await;
    for (path, coding) in [("/private/app.js", ""), ("/private-on/app.js", "br")] {
        let (url, bearer) = (format!("{base}{path}"), bearer(&token));
        let output = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "--noproxy",
                "*",
                "-w",
                "%{http_code}",
                "-D",
                "-",
            ])
            .args([
                "-H",
                "accept-encoding: br",
                "-H",
                &format!("authorization: {bearer}"),
            ])
            .arg(&url)
            .output()
            .expect("curl");
        let head = String::from_utf8_lossy(&output.stdout).to_ascii_lowercase();
        assert!(
            head.contains("\n200") || head.ends_with("200"),
            "{path}: {head}"
        );
        let got = head
            .lines()
            .find_map(|l| {
                l.strip_prefix("content-encoding:")
                    .map(|v| v.trim().to_owned())
            })
            .unwrap_or_default();
        assert_eq!(got, coding, "{path}");
    }
}

/// The preflight a browser sends before `method` with `headers` from `origin`.
fn preflight<'a>(origin: &'a str, method: &'a str, headers: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("origin", origin),
        ("access-control-request-method", method),
        ("access-control-request-headers", headers),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preflights_are_answered_without_a_token_and_only_allowed_origins_get_cors_headers() {
    let s = stack(&[]).await;
    let gw = s.gateway.addr();
    let cors = "cors: { origins: [\"https://app.example.test\"], methods: [GET, POST, DELETE], max_age: 10m }";
    s.gateway.write_routes(&routes(
        s.auth.addr,
        &[s.tasks.addr],
        &format!("  - {{ prefix: /api/shared, upstream: tasks, access: protected, {cors} }}\n"),
    ));
    s.gateway.child.signal("HUP");
    // The reload is in force once the route answers preflights.
    let asked = preflight(
        "https://app.example.test",
        "DELETE",
        "authorization, content-type",
    );
    let reloaded = eventually(Duration::from_secs(5), async || {
        raw(gw, "OPTIONS", "/api/shared/1", &asked, "").await.status == 204
    })
    .await;
    assert!(reloaded, "the cors route never answered");
    let reply = raw(gw, "OPTIONS", "/api/shared/1", &asked, "").await;
    assert_eq!(reply.status, 204);
    assert_eq!(
        reply.header("access-control-allow-origin"),
        Some("https://app.example.test")
    );
    assert_eq!(reply.header("access-control-max-age"), Some("600"));
    assert!(
        reply
            .header("access-control-allow-methods")
            .is_some_and(|m| m.contains("DELETE"))
    );
    assert!(
        reply
            .header("access-control-allow-headers")
            .is_some_and(|h| h.contains("authorization"))
    );
    assert!(
        reply.header("www-authenticate").is_none(),
        "a preflight was asked for a token"
    );

    for (origin, method, headers) in [
        ("https://evil.example.test", "DELETE", "authorization"),
        ("https://app.example.test", "PUT", "authorization"),
        ("https://app.example.test", "GET", "x-secret"),
    ] {
        let reply = raw(
            gw,
            "OPTIONS",
            "/api/shared/1",
            &preflight(origin, method, headers),
            "",
        )
        .await;
        assert_eq!(reply.status, 403, "{origin} {method} {headers}");
        assert_eq!(reply.code(), "cors_refused");
        assert_eq!(reply.header("access-control-allow-origin"), None);
    }
    assert!(
        s.tasks
            .seen()
            .iter()
            .all(|r| !r.target.starts_with("/api/shared")),
        "a preflight reached the upstream"
    );

    // A preflight that announces a body is answered without reading it,
    // and its connection closed: no unbounded read for a tokenless request.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(gw).await.expect("connect");
        stream
            .write_all(b"OPTIONS /api/shared/1 HTTP/1.1\r\nhost: gateway.test\r\norigin: https://app.example.test\r\naccess-control-request-method: GET\r\ncontent-length: 100000000\r\n\r\nabc")
            .await
            .expect("send");
        let mut answer = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
        let text = String::from_utf8_lossy(&answer);
        assert!(
            read.is_ok(),
            "the connection stayed open for the body: {text}"
        );
        assert!(text.starts_with("HTTP/1.1 204"), "{text}");
        assert!(
            !text.to_ascii_lowercase().contains("content-length"),
            "a 204 with a length: {text}"
        );
    }

    // The request itself: authenticated as always; the answer readable by
    // the allowed origin only.
    let (token, _) = register(gw, "cors@example.com").await;
    let bearer = bearer(&token);
    let allowed = raw(
        gw,
        "GET",
        "/api/shared/1",
        &[
            ("origin", "https://app.example.test"),
            ("authorization", &bearer),
        ],
        "",
    )
    .await;
    assert_eq!(allowed.status, 200);
    assert_eq!(
        allowed.header("access-control-allow-origin"),
        Some("https://app.example.test")
    );
    assert!(
        allowed
            .headers
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case("vary") && v.contains("Origin"))
    );
    let other = raw(
        gw,
        "GET",
        "/api/shared/1",
        &[
            ("origin", "https://evil.example.test"),
            ("authorization", &bearer),
        ],
        "",
    )
    .await;
    assert_eq!(other.status, 200);
    assert_eq!(other.header("access-control-allow-origin"), None);
    // Without a token: refused, and the allowed page can read why.
    let refused = raw(
        gw,
        "GET",
        "/api/shared/1",
        &[("origin", "https://app.example.test")],
        "",
    )
    .await;
    assert_eq!(refused.status, 401);
    assert_eq!(
        refused.header("access-control-allow-origin"),
        Some("https://app.example.test")
    );
}

/// Chromium, headless, loading `url` (names under `.test` resolved to this
/// machine) and returning the page's DOM once its script settled.
fn chromium_dom(url: &str) -> String {
    let chromium = std::env::var("CHROMIUM").unwrap_or("/usr/bin/chromium".into());
    let profile = tempfile::tempdir().expect("profile");
    let output = Command::new(&chromium)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--host-resolver-rules=MAP *.test 127.0.0.1",
            "--virtual-time-budget=10000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .output()
        .unwrap_or_else(|e| panic!("{chromium}: {e} (apt-get install chromium, or set CHROMIUM)"));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_calls_the_api_from_an_allowed_origin_and_is_blocked_from_another() {
    let db = TestDatabase::new().await;
    let auth = auth_service(&db, &[]);
    let tasks = Upstream::start().await;
    let port = unused_port();
    // One page, served by the gateway itself on two hosts; it calls the API
    // on a third host with the token from its URL's fragment (a preflight,
    // as it sends Authorization), and writes what happened into the page.
    let page = "<!doctype html><html><body><p id=result>pending</p><script>fetch('http://api.site.test:' + location.port + '/api/tasks/from-page', {headers: {authorization: 'Bearer ' + location.hash.slice(1)}}).then(r => r.json()).then(j => { document.getElementById('result').textContent = 'called ' + j.target; }).catch(e => { document.getElementById('result').textContent = 'blocked'; });</script></body></html>";
    let extra = format!(
        "  - {{ prefix: /page, hosts: [app.site.test, evil.site.test], access: public, respond: {{ status: 200, content_type: \"text/html; charset=utf-8\", body: {page:?} }} }}\n  - {{ prefix: /api/tasks, hosts: [api.site.test], upstream: tasks, access: protected, cors: {{ origins: [\"http://app.site.test:{port}\"], methods: [GET] }} }}\n"
    );
    let gateway = Gateway::start_on_port(&routes(auth.addr, &[tasks.addr], &extra), "", &[], port);
    let (token, _) = register(gateway.addr(), "browser@example.com").await;

    let from = |site: &str| format!("http://{site}:{port}/page#{token}");
    let app = from("app.site.test");
    let dom = tokio::task::spawn_blocking(move || chromium_dom(&app))
        .await
        .expect("join");
    assert!(
        dom.contains("called /api/tasks/from-page"),
        "allowed origin:\n{dom}"
    );
    let evil = from("evil.site.test");
    let dom = tokio::task::spawn_blocking(move || chromium_dom(&evil))
        .await
        .expect("join");
    assert!(dom.contains("blocked"), "other origin:\n{dom}");
    let calls = tasks
        .seen()
        .iter()
        .filter(|s| s.target == "/api/tasks/from-page")
        .count();
    // The allowed page's call, once; the other page's preflight was refused
    // at the gateway, so its call was never sent.
    assert_eq!(calls, 1);
}
