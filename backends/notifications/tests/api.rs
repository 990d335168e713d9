//! The notifications service in-process, on a real listener (WebSockets need
//! one), with and without the real Redis.

use futures::{SinkExt, StreamExt};
use notifications::{AppState, Limits, Source};
use serde_json::{Value, json};
use service_kit::events::{EventArgs, Publisher};
use std::net::SocketAddr;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const REDIS: &str = "redis://127.0.0.1:6379";

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Replica {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    served: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Replica {
    async fn start(source: Source<'_>, limits: Limits) -> Replica {
        let state = AppState::start(source, limits).expect("state");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(notifications::run(listener, state.clone(), async {
            let _ = stopped.await;
        }));
        Replica {
            addr,
            stop: Some(stop),
            served,
        }
    }

    async fn direct() -> Replica {
        Replica::start(Source::Direct, test_limits()).await
    }

    async fn redis(namespace: &str) -> Replica {
        let replica = Replica::start(
            Source::Redis {
                url: REDIS,
                namespace,
                revocation_channel: &format!("{namespace}:revocations"),
            },
            test_limits(),
        )
        .await;
        // The subscription is made in the background; healthz says when.
        let ready = eventually(Duration::from_secs(10), async || {
            replica.get("/healthz").await.0 == 200
        })
        .await;
        assert!(ready, "never subscribed to Redis");
        replica
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let response = reqwest::get(format!("http://{}{path}", self.addr))
            .await
            .expect("answer");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn post_event(&self, body: &Value) -> (u16, Value) {
        let response = reqwest::Client::new()
            .post(format!("http://{}/internal/events", self.addr))
            .json(body)
            .send()
            .await
            .expect("answer");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Opens `user`'s socket (as the gateway would: `x-user-id`, and
    /// `x-auth-expires` when given) and waits for `ready`; returns the
    /// events sent before it (the replay) and the socket.
    async fn open(&self, user: i64, query: &str, expires: Option<u64>) -> (Vec<Value>, Ws) {
        match self.try_open(user, query, expires).await {
            Ok(opened) => opened,
            Err((status, body)) => panic!("socket refused: {status} {body}"),
        }
    }

    async fn try_open(
        &self,
        user: i64,
        query: &str,
        expires: Option<u64>,
    ) -> Result<(Vec<Value>, Ws), (u16, String)> {
        let mut request = format!("ws://{}/api/notifications/ws{query}", self.addr)
            .into_client_request()
            .expect("request");
        let headers = request.headers_mut();
        headers.insert("x-user-id", user.to_string().parse().expect("header"));
        if let Some(expires) = expires {
            headers.insert(
                "x-auth-expires",
                expires.to_string().parse().expect("header"),
            );
        }
        let (mut ws, _) = match tokio_tungstenite::connect_async(request).await {
            Ok(connected) => connected,
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                let body = response
                    .body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default();
                return Err((response.status().as_u16(), body));
            }
            Err(error) => panic!("cannot connect: {error}"),
        };
        let mut replayed = Vec::new();
        loop {
            let message = next_json(&mut ws)
                .await
                .expect("ready before anything else");
            if message["type"] == "ready" {
                return Ok((replayed, ws));
            }
            replayed.push(message);
        }
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.served).await;
    }
}

fn test_limits() -> Limits {
    Limits {
        per_user: 3,
        total: 1000,
        ping_interval: Duration::from_secs(1),
    }
}

/// The next JSON text message within 5 s; `None` if the socket closed or
/// stayed silent.
async fn next_json(ws: &mut Ws) -> Option<Value> {
    next_message(ws, Duration::from_secs(5))
        .await
        .and_then(|m| match m {
            Message::Text(text) => serde_json::from_str(&text).ok(),
            _ => None,
        })
}

/// The next text or close message within `limit` (pings are skipped).
async fn next_message(ws: &mut Ws, limit: Duration) -> Option<Message> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let message = tokio::time::timeout_at(deadline, ws.next()).await.ok()??;
        match message {
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            Ok(message) => return Some(message),
            Err(_) => return None,
        }
    }
}

/// How the service closed the socket, waiting up to `limit`.
async fn close_code(ws: &mut Ws, limit: Duration) -> Option<u16> {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        match next_message(ws, deadline - tokio::time::Instant::now()).await? {
            Message::Close(frame) => return frame.map(|f| u16::from(f.code)),
            _ => continue,
        }
    }
    None
}

use service_kit::testing::eventually;

fn event(user: i64, kind: &str, id: i64) -> Value {
    json!({"user_id": user, "type": kind, "data": {"id": id}})
}

fn unique_namespace() -> String {
    let mut bytes = [0u8; 6];
    getrandom::fill(&mut bytes).expect("randomness");
    format!(
        "test-{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

#[tokio::test]
async fn a_users_socket_receives_their_events_only_in_order() {
    let replica = Replica::direct().await;
    let (replayed, mut alice) = replica.open(1, "", None).await;
    assert!(replayed.is_empty());
    let (_, mut bob) = replica.open(2, "", None).await;

    for (user, kind, id) in [
        (1, "task.created", 10),
        (2, "task.created", 20),
        (1, "task.updated", 10),
        (1, "order.placed", 11),
    ] {
        let (status, body) = replica.post_event(&event(user, kind, id)).await;
        assert_eq!(status, 202, "{body}");
    }
    let mut seen = Vec::new();
    for _ in 0..3 {
        let message = next_json(&mut alice).await.expect("alice's event");
        assert!(message["id"].is_string(), "{message}");
        seen.push((message["type"].clone(), message["data"]["id"].clone()));
    }
    assert_eq!(
        seen,
        [
            (json!("task.created"), json!(10)),
            (json!("task.updated"), json!(10)),
            (json!("order.placed"), json!(11)),
        ]
    );
    let bobs = next_json(&mut bob).await.expect("bob's event");
    assert_eq!(bobs["data"]["id"], 20);
    // Nothing of alice's follows: bob's next message is his own next event.
    replica.post_event(&event(2, "task.deleted", 20)).await;
    let bobs = next_json(&mut bob).await.expect("bob's event");
    assert_eq!(
        (bobs["type"].as_str(), bobs["data"]["id"].as_i64()),
        (Some("task.deleted"), Some(20))
    );
    replica.stop().await;
}

#[tokio::test]
async fn a_reconnecting_client_gets_what_it_missed_once() {
    let replica = Replica::direct().await;
    let (_, mut socket) = replica.open(7, "", None).await;
    replica.post_event(&event(7, "task.created", 1)).await;
    let first = next_json(&mut socket).await.expect("event");
    let last_seen = first["id"].as_str().expect("id").to_owned();
    drop(socket);

    // Published while the client was away.
    replica.post_event(&event(7, "task.created", 2)).await;
    replica.post_event(&event(7, "task.created", 3)).await;
    let (replayed, mut socket) = replica.open(7, &format!("?after={last_seen}"), None).await;
    let ids: Vec<i64> = replayed
        .iter()
        .map(|e| e["data"]["id"].as_i64().expect("id"))
        .collect();
    assert_eq!(ids, [2, 3], "exactly the missed events, in order");
    replica.post_event(&event(7, "task.created", 4)).await;
    let live = next_json(&mut socket).await.expect("live event");
    assert_eq!(live["data"]["id"], 4);
    replica.stop().await;
}

#[tokio::test]
async fn bad_requests_get_the_envelope() {
    let replica = Replica::direct().await;
    // Not an upgrade.
    let client = reqwest::Client::new();
    let plain = client
        .get(format!("http://{}/api/notifications/ws", replica.addr))
        .header("x-user-id", "1")
        .send()
        .await
        .expect("answer");
    assert_eq!(plain.status(), 426);
    let body: Value = plain.json().await.expect("json");
    assert_eq!(body["error"]["code"], "upgrade_required");

    for (query, expires, status) in [
        ("?after=yesterday", None, 422),
        ("?after=99999999999999-0", None, 422),
        ("?since=1-0", None, 400),
        ("", Some(1), 401),
    ] {
        let refused = replica.try_open(1, query, expires).await.err();
        let (code, body) = refused.unwrap_or_else(|| panic!("{query} {expires:?} accepted"));
        assert_eq!(code, status, "{query}: {body}");
        let body: Value = serde_json::from_str(&body).expect("envelope");
        assert!(body["error"]["code"].is_string(), "{body}");
    }

    for bad in [
        json!({"user_id": 0, "type": "task.created", "data": {}}),
        json!({"user_id": 1, "type": "", "data": {}}),
        json!({"user_id": 1, "type": "Task Created", "data": {}}),
        json!({"user_id": 1, "type": "task.created"}),
        json!({"user_id": 1, "type": "task.created", "data": {}, "extra": 1}),
    ] {
        let (status, body) = replica.post_event(&bad).await;
        assert_eq!(status, 422, "{bad}: {body}");
        assert!(body["error"]["code"].is_string());
    }
    replica.stop().await;
}

#[tokio::test]
async fn sockets_per_user_are_limited() {
    let replica = Replica::direct().await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(replica.open(5, "", None).await.1);
    }
    let Err(refused) = replica.try_open(5, "", None).await else {
        panic!("a fourth socket was accepted");
    };
    assert_eq!(refused.0, 429, "{}", refused.1);
    // Another user is not affected, and closing one makes room.
    replica.open(6, "", None).await;
    let mut closing = open.pop().expect("socket");
    closing.close(None).await.expect("close");
    let room = eventually(Duration::from_secs(5), async || {
        replica.try_open(5, "", None).await.is_ok()
    })
    .await;
    assert!(room);
    replica.stop().await;
}

#[tokio::test]
async fn a_socket_closes_when_its_token_expires() {
    let replica = Replica::direct().await;
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + 2;
    let (_, mut socket) = replica.open(3, "", Some(expires)).await;
    let code = close_code(&mut socket, Duration::from_secs(6)).await;
    assert_eq!(code, Some(4001));
    replica.stop().await;
}

#[tokio::test]
async fn shutdown_closes_sockets_as_going_away() {
    let replica = Replica::direct().await;
    let (_, mut socket) = replica.open(3, "", None).await;
    replica.stop().await;
    assert_eq!(
        close_code(&mut socket, Duration::from_secs(5)).await,
        Some(1001)
    );
}

#[tokio::test]
async fn with_redis_every_replica_serves_every_user_and_replays_from_the_stream() {
    let namespace = unique_namespace();
    let one = Replica::redis(&namespace).await;
    let two = Replica::redis(&namespace).await;
    let (_, mut on_one) = one.open(1, "", None).await;
    let (_, mut on_two) = two.open(1, "", None).await;
    let (_, mut other) = two.open(2, "", None).await;

    // Published the way tasks and orders do.
    let publisher = Publisher::from_args(&EventArgs {
        redis_url: Some(REDIS.into()),
        notifications_url: None,
        events_namespace: namespace.clone(),
    })
    .expect("publisher");
    publisher.publish(1, "task.created", json!({"id": 1}));
    publisher.publish(2, "task.created", json!({"id": 2}));
    let a = next_json(&mut on_one).await.expect("replica one");
    let b = next_json(&mut on_two).await.expect("replica two");
    assert_eq!(a, b, "one event, one id, on every replica");
    assert_eq!(a["data"]["id"], 1);
    let others = next_json(&mut other).await.expect("user 2's event");
    assert_eq!(others["data"]["id"], 2);

    // Missed events come from the stream, on any replica.
    let after = a["id"].as_str().expect("id").to_owned();
    publisher.publish(1, "task.updated", json!({"id": 1}));
    next_json(&mut on_two).await.expect("live");
    let (replayed, _) = one.open(1, &format!("?after={after}"), None).await;
    assert_eq!(replayed.len(), 1, "{replayed:?}");
    assert_eq!(replayed[0]["type"], "task.updated");

    // The direct endpoint is not there with Redis.
    assert_eq!(one.post_event(&event(1, "task.created", 9)).await.0, 404);

    // A revocation closes the user's sockets on every replica, not others.
    let mut redis = redis::Client::open(REDIS)
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let _: i64 = redis::cmd("PUBLISH")
        .arg(format!("{namespace}:revocations"))
        .arg(json!({"user_id": 1, "reason": "logout"}).to_string())
        .query_async(&mut redis)
        .await
        .expect("publish");
    assert_eq!(
        close_code(&mut on_one, Duration::from_secs(5)).await,
        Some(4003)
    );
    assert_eq!(
        close_code(&mut on_two, Duration::from_secs(5)).await,
        Some(4003)
    );
    other
        .send(Message::Ping(Default::default()))
        .await
        .expect("still open");
    publisher.publish(2, "task.deleted", json!({"id": 2}));
    assert_eq!(
        next_json(&mut other).await.expect("still served")["type"],
        "task.deleted"
    );
    let _: i64 = redis::cmd("DEL")
        .arg(service_kit::events::stream_key(&namespace, 1))
        .arg(service_kit::events::stream_key(&namespace, 2))
        .query_async(&mut redis)
        .await
        .expect("clean up");
    one.stop().await;
    two.stop().await;
}
