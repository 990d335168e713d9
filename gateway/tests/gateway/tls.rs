//! HTTPS on the gateway, with certificate authorities made at test time:
//! HTTP/1.1 and HTTP/2 by ALPN, the redirect from plain HTTP, a certificate
//! rotated by a reload while a connection stays open, and TLS to upstreams.

use crate::support::{Gateway, Upstream, raw, routes};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

/// A certificate authority of the test's own.
struct Authority {
    params: CertificateParams,
    key: KeyPair,
    pem: String,
}

impl Authority {
    fn new(name: &str) -> Authority {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate().expect("key");
        let pem = params.self_signed(&key).expect("CA certificate").pem();
        Authority { params, key, pem }
    }

    /// A certificate for `localhost` and 127.0.0.1 signed by this authority,
    /// written as `cert` and `key`.
    fn issue(&self, cert: &Path, key: &Path) {
        self.issue_for(&["localhost", "127.0.0.1"], cert, key);
    }

    /// A certificate for `names`, signed by this authority.
    fn issue_for(&self, names: &[&str], cert: &Path, key: &Path) {
        let names = names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
        let params = CertificateParams::new(names).expect("params");
        let leaf_key = KeyPair::generate().expect("key");
        let issuer = Issuer::from_params(&self.params, &self.key);
        let leaf = params.signed_by(&leaf_key, &issuer).expect("leaf");
        std::fs::write(cert, leaf.pem()).expect("write cert");
        std::fs::write(key, leaf_key.serialize_pem()).expect("write key");
    }

    fn der(&self) -> CertificateDer<'static> {
        let body: String = self
            .pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        use base64::Engine;
        CertificateDer::from(
            base64::engine::general_purpose::STANDARD
                .decode(body)
                .expect("base64"),
        )
    }

    fn write(&self, path: &Path) {
        std::fs::write(path, &self.pem).expect("write CA");
    }
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A TLS connection to `addr` trusting only `authority`.
async fn connect(addr: SocketAddr, authority: &Authority) -> std::io::Result<Tls> {
    connect_as(addr, authority, "localhost").await
}

/// A TLS connection to `addr` asking for `name` (SNI) and checking the
/// certificate against it, trusting only `authority`.
async fn connect_as(addr: SocketAddr, authority: &Authority, name: &str) -> std::io::Result<Tls> {
    // The process may have installed it already; either way ring is in use.
    let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let mut roots = RootCertStore::empty();
    roots.add(authority.der()).expect("root");
    let config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from(name.to_owned()).expect("name"), tcp)
        .await
}

/// One keep-alive request on an open connection; the status.
async fn get_on(stream: &mut BufReader<Tls>, path: &str) -> u16 {
    let request = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\n\r\n");
    stream
        .get_mut()
        .write_all(request.as_bytes())
        .await
        .expect("send");
    let mut status = String::new();
    stream.read_line(&mut status).await.expect("status line");
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        stream.read_line(&mut line).await.expect("header");
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().expect("length");
        }
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await.expect("body");
    status
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status")
}

/// `curl` over HTTPS: (status, HTTP version) or the exit code.
async fn curl(url: &str, ca: &Path, extra: &[&str]) -> Result<(u16, String), i32> {
    let mut command = std::process::Command::new("curl");
    command
        .args([
            "-s",
            "-o",
            "/dev/null",
            "--noproxy",
            "*",
            "-w",
            "%{http_code} %{http_version}",
        ])
        .arg("--cacert")
        .arg(ca)
        .args(extra)
        .arg(url);
    let output = tokio::task::spawn_blocking(move || command.output().expect("run curl"))
        .await
        .expect("join");
    if !output.status.success() {
        return Err(output.status.code().unwrap_or(-1));
    }
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (status, version) = text.split_once(' ').expect("curl output");
    Ok((status.parse().expect("status"), version.to_owned()))
}

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Files {
        Files {
            dir: tempfile::tempdir().expect("dir"),
        }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// The gateway in front of `tasks`, with HTTPS on a port of its own.
fn https_gateway(files: &Files, tasks: SocketAddr, redirect: bool) -> (Gateway, SocketAddr) {
    let tls_port = service_kit::testing::unused_port();
    let config = format!(
        "tls:\n  listen: 127.0.0.1:{tls_port}\n  cert: {}\n  key: {}\n  redirect_http: {redirect}\n{}",
        files.path("gateway.crt").display(),
        files.path("gateway.key").display(),
        routes("127.0.0.1:9".parse().expect("addr"), &[tasks], "")
    );
    let mut gateway = Gateway::start(&config, &[]);
    let tls: SocketAddr = gateway
        .child
        .wait_for_output("tls on ")
        .trim()
        .parse()
        .expect("tls address");
    gateway.child.wait_accepting(tls);
    (gateway, tls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_speaks_http2_and_http1_and_plain_http_is_redirected() {
    let files = Files::new();
    let ca = Authority::new("test CA");
    ca.issue(&files.path("gateway.crt"), &files.path("gateway.key"));
    ca.write(&files.path("ca.pem"));
    let tasks = Upstream::start().await;
    let (gateway, tls) = https_gateway(&files, tasks.addr, true);
    let url = format!("https://localhost:{}/api/public/hello", tls.port());
    let resolve = format!("localhost:{}:127.0.0.1", tls.port());

    let h2 = curl(
        &url,
        &files.path("ca.pem"),
        &["--http2", "--resolve", &resolve],
    )
    .await;
    assert_eq!(h2, Ok((200, "2".to_owned())), "HTTP/2 by ALPN");
    let h1 = curl(
        &url,
        &files.path("ca.pem"),
        &["--http1.1", "--resolve", &resolve],
    )
    .await;
    assert_eq!(h1, Ok((200, "1.1".to_owned())));
    for version in ["--tlsv1.2", "--tlsv1.3"] {
        let pinned = if version == "--tlsv1.2" { "1.2" } else { "1.3" };
        let reply = curl(
            &url,
            &files.path("ca.pem"),
            &[version, "--tls-max", pinned, "--resolve", &resolve],
        )
        .await;
        assert!(reply.is_ok(), "TLS {pinned}: {reply:?}");
    }
    // A client that does not trust the authority gets no answer at all.
    let stranger = Authority::new("another CA");
    stranger.write(&files.path("stranger.pem"));
    assert!(
        curl(&url, &files.path("stranger.pem"), &["--resolve", &resolve])
            .await
            .is_err()
    );
    // The upstream learns that the client came over HTTPS.
    let seen = tasks.seen();
    assert!(!seen.is_empty());
    assert!(
        seen.iter()
            .all(|s| s.all("x-forwarded-proto") == vec!["https"]),
        "{:?}",
        seen.iter()
            .map(|s| s.all("x-forwarded-proto"))
            .collect::<Vec<_>>()
    );

    // Plain HTTP is redirected, path and query kept; the health check is not.
    let plain = raw(gateway.addr(), "GET", "/api/public/hello?x=1", &[], "").await;
    assert_eq!(plain.status, 308);
    assert_eq!(
        plain.header("location"),
        Some(format!("https://gateway.test:{}/api/public/hello?x=1", tls.port()).as_str())
    );
    assert_eq!(
        raw(gateway.addr(), "GET", "/healthz", &[], "").await.status,
        200
    );
    let served = tasks.seen().len();
    assert_eq!(
        served,
        seen.len(),
        "a redirected request reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_rotates_the_certificate_without_dropping_open_connections() {
    let files = Files::new();
    let old = Authority::new("old CA");
    let new = Authority::new("new CA");
    old.issue(&files.path("gateway.crt"), &files.path("gateway.key"));
    let tasks = Upstream::start().await;
    let (gateway, tls) = https_gateway(&files, tasks.addr, false);

    let mut open = BufReader::new(connect(tls, &old).await.expect("handshake"));
    assert_eq!(get_on(&mut open, "/api/public/before").await, 200);

    // The new certificate, from another authority, in place; then SIGHUP.
    new.issue(&files.path("gateway.crt"), &files.path("gateway.key"));
    let applied = gateway.reload("applied", 1.0).await;
    assert!(applied, "the reload was not applied");

    // New connections get the new certificate…
    assert!(
        connect(tls, &old).await.is_err(),
        "still the old certificate"
    );
    let mut fresh = BufReader::new(connect(tls, &new).await.expect("new certificate"));
    assert_eq!(get_on(&mut fresh, "/api/public/fresh").await, 200);
    // …and the connection opened before the reload is still served.
    assert_eq!(get_on(&mut open, "/api/public/after").await, 200);

    // A broken file is refused by the next reload; the certificate stays.
    std::fs::write(files.path("gateway.key"), "not a key").expect("write");
    let rejected = gateway.reload("rejected", 1.0).await;
    assert!(rejected, "a broken key was accepted");
    let mut still = BufReader::new(connect(tls, &new).await.expect("kept certificate"));
    assert_eq!(get_on(&mut still, "/api/public/kept").await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_each_hosts_certificate_and_a_reload_rotates_them() {
    let files = Files::new();
    let ca = Authority::new("test CA");
    ca.issue(&files.path("gateway.crt"), &files.path("gateway.key"));
    ca.issue_for(
        &["api.example.test"],
        &files.path("api.crt"),
        &files.path("api.key"),
    );
    ca.issue_for(
        &["*.apps.example.test"],
        &files.path("apps.crt"),
        &files.path("apps.key"),
    );
    let tasks = Upstream::start().await;
    let tls_port = service_kit::testing::unused_port();
    let config = format!(
        "tls:\n  listen: 127.0.0.1:{tls_port}\n  cert: gateway.crt\n  key: gateway.key\n  certificates:\n    - {{ hosts: [api.example.test], cert: api.crt, key: api.key }}\n    - {{ hosts: [\"*.apps.example.test\"], cert: apps.crt, key: apps.key }}\n{}",
        routes("127.0.0.1:9".parse().expect("addr"), &[tasks.addr], "")
    );
    // The gateway's routes file lives in a directory of its own: the
    // certificates are named by absolute path.
    let config = config
        .replace("cert: ", &format!("cert: {}/", files.dir.path().display()))
        .replace("key: ", &format!("key: {}/", files.dir.path().display()));
    let mut gateway = Gateway::start(&config, &[]);
    let tls: SocketAddr = gateway
        .child
        .wait_for_output("tls on ")
        .trim()
        .parse()
        .expect("tls address");
    gateway.child.wait_accepting(tls);

    // Each name gets the certificate made for it (the client checks the
    // name), the default goes to the rest.
    for name in ["api.example.test", "a.apps.example.test", "localhost"] {
        let mut stream = BufReader::new(
            connect_as(tls, &ca, name)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}")),
        );
        assert_eq!(get_on(&mut stream, "/api/public/sni").await, 200, "{name}");
    }
    // A certificate's wildcard covers one label: deeper names, the bare
    // suffix and other names get the default (made for localhost).
    for name in [
        "b.c.apps.example.test",
        "apps.example.test",
        "other.example.test",
    ] {
        assert!(
            connect_as(tls, &ca, name).await.is_err(),
            "{name} was given a certificate for it"
        );
    }

    // A reload reads every certificate again.
    let other = Authority::new("other CA");
    other.issue_for(
        &["api.example.test"],
        &files.path("api.crt"),
        &files.path("api.key"),
    );
    let applied = gateway.reload("applied", 1.0).await;
    assert!(applied, "the reload was not applied");
    assert!(connect_as(tls, &other, "api.example.test").await.is_ok());
    assert!(connect_as(tls, &ca, "api.example.test").await.is_err());
    assert!(connect_as(tls, &ca, "a.apps.example.test").await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_pools_may_be_reached_over_tls_and_are_verified() {
    let files = Files::new();
    let ca = Authority::new("upstream CA");
    ca.issue(&files.path("gateway.crt"), &files.path("gateway.key"));
    ca.write(&files.path("ca.pem"));
    let stranger = Authority::new("another CA");
    stranger.write(&files.path("stranger.pem"));
    let tasks = Upstream::start().await;
    // The HTTPS server upstream is another gateway in front of `tasks`.
    let (_inner, inner_tls) = https_gateway(&files, tasks.addr, false);

    let pool = |name: &str, ca: &Path| {
        format!(
            "  {name}:\n    servers: [\"{inner_tls}\"]\n    tls: {{ sni: localhost, ca: {} }}\n",
            ca.display()
        )
    };
    let config = routes("127.0.0.1:9".parse().expect("addr"), &[tasks.addr], "").replace(
        "routes:\n",
        &format!(
            "{}{}routes:\n  - {{ prefix: /api/public/secure, upstream: secure, access: public }}\n  - {{ prefix: /api/public/wrong, upstream: wrong, access: public }}\n",
            pool("secure", &files.path("ca.pem")),
            pool("wrong", &files.path("stranger.pem")),
        ),
    );
    let outer = Gateway::start(&config, &[]);
    let reply = raw(outer.addr(), "GET", "/api/public/secure/x", &[], "").await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert!(
        tasks
            .seen()
            .iter()
            .any(|s| s.target == "/api/public/secure/x")
    );
    // A server whose certificate the pool's CA did not sign is not used.
    let refused = raw(outer.addr(), "GET", "/api/public/wrong/x", &[], "").await;
    assert_eq!(refused.status, 502, "{:?}", refused.body);
    assert!(
        !tasks
            .seen()
            .iter()
            .any(|s| s.target == "/api/public/wrong/x")
    );
}

#[test]
fn check_reads_the_certificate_files_like_nginx_t() {
    let files = Files::new();
    let ca = Authority::new("check CA");
    ca.issue(&files.path("gateway.crt"), &files.path("gateway.key"));
    let routes = files.path("routes.yaml");
    let check = |yaml: &str| {
        std::fs::write(&routes, yaml).expect("write");
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
            .args(["--check", "--config"])
            .arg(&routes)
            .output()
            .expect("run gateway --check");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    // Relative paths are the routes file's neighbours.
    let good = "tls: { listen: 127.0.0.1:8443, cert: gateway.crt, key: gateway.key }\n\
                auth: { mode: local }\nupstreams: {}\nroutes: []\n";
    assert_eq!(check(good), (Some(0), String::new()));
    std::fs::write(
        files.path("other.key"),
        KeyPair::generate().expect("key").serialize_pem(),
    )
    .expect("write");
    let (code, stderr) = check(&good.replace("key: gateway.key", "key: other.key"));
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("tls.cert/tls.key") && stderr.contains("does not belong"),
        "{stderr}"
    );
    let (code, stderr) = check(&good.replace(
        "key: gateway.key }",
        "key: gateway.key, certificates: [{ hosts: [api.example.test], cert: gateway.crt, key: other.key }] }",
    ));
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("tls.certificates[0]") && stderr.contains("does not belong"),
        "{stderr}"
    );
    let (code, stderr) = check(
        "auth: { mode: local }\nupstreams:\n  a: { servers: [127.0.0.1:1], tls: { ca: missing.pem } }\nroutes: []\n",
    );
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("upstreams.a.tls.ca") && stderr.contains("missing.pem"),
        "{stderr}"
    );
}
