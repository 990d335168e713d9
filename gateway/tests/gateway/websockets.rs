//! WebSocket upgrades: authentication, tunnelling, the bearer subprotocol,
//! tunnels cut when their grant lapses.

use crate::support::*;
use service_kit::testing::TestDatabase;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrades_are_authenticated_and_tunnelled_where_allowed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let db = TestDatabase::new().await;
    let auth = auth_service(&db, &[]);
    let tasks = Upstream::start().await;
    let extra = "  - { prefix: /api/ws, upstream: tasks, access: protected, websocket: true }\n";
    let gateway = Gateway::start(&routes(auth.addr, &[tasks.addr], extra), &[]);
    let gw = gateway.addr();
    let (token, user_id) = register(gw, "sockets@example.com").await;
    let upgrade = [
        ("upgrade", "websocket"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("sec-websocket-version", "13"),
    ];

    // Refused without a token, and on routes that do not allow upgrades.
    let anonymous = raw(gw, "GET", "/api/ws", &upgrade, "").await;
    assert_eq!(anonymous.status, 401);
    let mut on_plain_route = upgrade.to_vec();
    let auth_header = bearer(&token);
    on_plain_route.push(("authorization", &auth_header));
    let refused = raw(gw, "GET", "/api/tasks", &on_plain_route, "").await;
    assert_eq!(
        (refused.status, refused.code()),
        (400, "upgrade_not_allowed")
    );
    assert!(tasks.seen().is_empty());

    // Allowed: 101, the identity reaches the upstream, bytes flow both ways.
    let mut stream = tokio::net::TcpStream::connect(gw).await.expect("connect");
    let request = format!(
        "GET /api/ws HTTP/1.1\r\nhost: gateway.test\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\nauthorization: Bearer {token}\r\nx-user-id: 9999\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).await.expect("response head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream
        .write_all(b"ping through the tunnel")
        .await
        .expect("write");
    let mut echoed = [0u8; 23];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut echoed))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(&echoed, b"ping through the tunnel");
    let seen = tasks.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].all("x-user-id"), vec![user_id.to_string().as_str()]);
}

/// Whether bytes written to an open tunnel come back.
async fn echoes(stream: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if stream.write_all(b"tick").await.is_err() {
        return false;
    }
    let mut back = [0u8; 4];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut back)).await,
        Ok(Ok(_)) if &back == b"tick"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_token_may_come_as_a_subprotocol_never_reaches_the_upstream_and_lapses_at_exp()
{
    let db = TestDatabase::new().await;
    let auth = auth_service(&db, &["--access-ttl", "3"]);
    let tasks = Upstream::start().await;
    let extra = "  - { prefix: /api/ws, upstream: tasks, access: protected, websocket: true }\n";
    // No leeway past `exp`: the tunnel lapses at the token's own end.
    let routes =
        routes(auth.addr, &[tasks.addr], extra).replacen("auth:\n", "auth:\n  leeway: 0s\n", 1);
    let gateway = Gateway::start(&routes, &[]);
    let gw = gateway.addr();
    let (token, user_id) = register(gw, "subprotocol@example.com").await;
    let exp = gateway::auth::peek_exp(&token).expect("exp");

    // Refused: a malformed token after `bearer`, `bearer` with nothing
    // after it, and a token in the URL, which is never read.
    for (path, protocols) in [
        ("/api/ws", "bearer, not-a-token".to_owned()),
        ("/api/ws", "bearer".to_owned()),
        (&*format!("/api/ws?access_token={token}"), "chat".to_owned()),
    ] {
        let (_, head) = open_upgrade(gw, path, &[("sec-websocket-protocol", &protocols)]).await;
        assert!(
            head.starts_with("HTTP/1.1 401"),
            "{path} {protocols}: {head}"
        );
    }
    assert!(tasks.seen().is_empty());

    // Accepted: the 101 names `bearer`, as browsers require; the upstream
    // sees the other subprotocols only, the identity, and when the token
    // expires (a client's own x-auth-expires is dropped).
    let offered = format!("chat, bearer, {token}");
    let (mut stream, head) = open_upgrade(
        gw,
        "/api/ws",
        &[
            ("sec-websocket-protocol", &offered),
            ("x-auth-expires", "99999999999"),
        ],
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-protocol: bearer\r\n"),
        "{head}"
    );
    assert!(echoes(&mut stream).await, "the tunnel carries bytes");
    let seen = tasks.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].all("sec-websocket-protocol"), vec!["chat"]);
    assert_eq!(seen[0].all("x-user-id"), vec![user_id.to_string().as_str()]);
    assert_eq!(
        seen[0].all("x-auth-expires"),
        vec![exp.to_string().as_str()]
    );
    assert!(seen[0].all("authorization").is_empty());
    assert!(
        !seen[0].headers.iter().any(|(_, v)| v.contains(&token)),
        "the token reached the upstream: {:?}",
        seen[0].headers
    );

    // The tunnel carries frames until the token's exp, and is cut at the
    // first one after it.
    let mut cut = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        if !echoes(&mut stream).await {
            assert!(now + 1 >= exp, "cut at {now}, before the token's exp {exp}");
            cut = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(cut, "the tunnel outlived its token");
    assert_eq!(
        gateway
            .metric("portcullis_websockets_cut_total{reason=\"expired\"}")
            .await,
        1.0
    );
}
