//! Live events end to end: tasks and orders publish, the notifications
//! service delivers to the owner's sockets only, through the gateway, with
//! and without Redis, across a replica restart and a Redis outage.

use e2e::sockets::{Ended, Socket};
use e2e::{Options, Service, Stack, eventually};
use serde_json::{Value, json};
use service_kit::testing::unused_port;
use std::time::Duration;

const SHARED_REDIS: &str = "redis://127.0.0.1:6379";
const WAIT: Duration = Duration::from_secs(5);

/// The next event's type and resource id.
async fn next(socket: &mut Socket) -> (String, i64) {
    let event = socket.next_event(WAIT).await.expect("an event in time");
    summary(&event)
}

fn summary(event: &Value) -> (String, i64) {
    (
        event["type"].as_str().unwrap_or_default().to_owned(),
        event["data"]["id"].as_i64().unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_events_reach_their_sockets_through_the_gateway_and_nobody_elses() {
    let stack = Stack::start().await;
    let alice = stack.register("alice").await;
    let bob = stack.register("bob").await;
    let mut alices = alice.socket("").await.expect("alice's socket");
    let mut bobs = bob.socket("").await.expect("bob's socket");

    let task = alice.post("/api/tasks", json!({"title": "watch me"})).await;
    assert_eq!(task.status, 201, "{}", task.body);
    let id = task.body["id"].as_i64().expect("task id");
    let created = alices.next_event(WAIT).await.expect("task.created");
    assert_eq!(created["type"], "task.created");
    assert_eq!(created["data"]["title"], "watch me");
    assert!(created["id"].is_string(), "{created}");

    // A refused change publishes nothing: the next event is the next change.
    assert_eq!(
        alice.post("/api/tasks", json!({"title": " "})).await.status,
        422
    );
    let update = alice
        .put(&format!("/api/tasks/{id}"), json!({"completed": true}))
        .await;
    assert_eq!(update.status, 200);
    let updated = alices.next_event(WAIT).await.expect("task.updated");
    assert_eq!(
        (
            updated["type"].as_str(),
            updated["data"]["completed"].as_bool()
        ),
        (Some("task.updated"), Some(true))
    );
    assert_eq!(alice.delete(&format!("/api/tasks/{id}")).await.status, 204);
    assert_eq!(next(&mut alices).await, ("task.deleted".to_owned(), id));

    let order = alice
        .post("/api/orders", json!({"sku": "MN-003", "quantity": 1}))
        .await;
    assert_eq!(order.status, 201, "{}", order.body);
    let order_id = order.body["id"].as_i64().expect("order id");
    assert_eq!(
        next(&mut alices).await,
        ("order.placed".to_owned(), order_id)
    );
    assert_eq!(
        alice
            .delete(&format!("/api/orders/{order_id}"))
            .await
            .status,
        200
    );
    let cancelled = alices.next_event(WAIT).await.expect("order.cancelled");
    assert_eq!(
        (
            cancelled["type"].as_str(),
            cancelled["data"]["status"].as_str()
        ),
        (Some("order.cancelled"), Some("cancelled"))
    );

    // None of that reached bob: his first event is his own.
    let his = bob.post("/api/tasks", json!({"title": "mine"})).await;
    let his_id = his.body["id"].as_i64().expect("id");
    assert_eq!(next(&mut bobs).await, ("task.created".to_owned(), his_id));
    // And his never reaches alice.
    assert!(
        alices
            .next_event(Duration::from_millis(500))
            .await
            .is_none(),
        "alice received bob's event"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_needs_a_live_token_never_read_from_the_url_and_ends_with_it() {
    let stack = Stack::start().await;
    let alice = stack.register("carol").await;
    let url = format!(
        "{}/api/notifications/ws",
        stack.gateway_url().replacen("http://", "ws://", 1)
    );

    let refusals = [
        (url.clone(), vec![]),
        (format!("{url}?access_token={}", alice.access), vec![]),
        (
            url.clone(),
            vec![("sec-websocket-protocol", "bearer, forged.token.here")],
        ),
        (url.clone(), vec![("sec-websocket-protocol", "bearer")]),
        // A spoofed identity is removed before the upstream sees it.
        (url.clone(), vec![("x-user-id", "1")]),
    ];
    for (target, headers) in refusals {
        let Err((status, body)) = e2e::sockets::open(&target, &headers).await else {
            panic!("accepted {target} {headers:?}");
        };
        assert_eq!(status, 401, "{target} {headers:?}: {body}");
        let body: Value = serde_json::from_str(&body).expect("envelope");
        assert!(body["error"]["code"].is_string());
    }
    // A client that can set Authorization may use it instead.
    let bearer = format!("Bearer {}", alice.access);
    e2e::sockets::open(&url, &[("authorization", &bearer)])
        .await
        .expect("Authorization works too");

    // Logging out ends the open socket (the gateway hears of it at once
    // and cuts the tunnel at the next frame; pings come every second here),
    // and the token no longer opens one.
    let mut socket = alice.socket("").await.expect("socket");
    assert_eq!(alice.logout().await.status, 204);
    let (ended, _) = socket.ended(WAIT).await;
    assert!(ended.is_some(), "the socket outlived the logout");
    let Err((status, _)) = alice.socket("").await else {
        panic!("a logged-out token opened a socket");
    };
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_closes_when_its_token_expires_and_resumes_after_a_refresh() {
    let stack = Stack::with(Options {
        access_ttl: 3,
        ..Options::default()
    })
    .await;
    let mut alice = stack.register("dave").await;
    let mut socket = alice.socket("").await.expect("socket");
    let task = alice.post("/api/tasks", json!({"title": "before"})).await;
    let first = socket.next_event(WAIT).await.expect("event");
    assert_eq!(first["data"]["id"], task.body["id"]);
    let last = first["id"].as_str().expect("id").to_owned();

    let (ended, _) = socket.ended(Duration::from_secs(8)).await;
    assert_eq!(ended, Some(Ended::Closed(4001)), "closed as expired");

    // The page's client: refresh, reconnect after the last id seen.
    assert_eq!(alice.refresh().await.status, 200);
    let missed = alice
        .post("/api/tasks", json!({"title": "while away"}))
        .await;
    let mut socket = alice
        .socket(&format!("?after={last}"))
        .await
        .expect("socket after refresh");
    // Events are published just after the change commits: this one is
    // replayed, or (if it was still on its way) arrives live; once either way.
    let mut seen: Vec<(String, i64)> = socket.replayed.iter().map(summary).collect();
    if seen.is_empty() {
        seen.extend(socket.next_event(WAIT).await.as_ref().map(summary));
    }
    assert!(
        socket
            .next_event(Duration::from_millis(500))
            .await
            .is_none()
    );
    assert_eq!(
        seen,
        [(
            "task.created".to_owned(),
            missed.body["id"].as_i64().expect("id")
        )]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_any_replica_serves_any_user_and_a_restart_delivers_nothing_twice() {
    let mut stack = Stack::with(Options {
        notifications_replicas: 2,
        redis: Some(SHARED_REDIS.into()),
        ..Options::default()
    })
    .await;
    let alice = stack.register("erin").await;
    let bob = stack.register("frank").await;
    let ready = eventually(Duration::from_secs(10), async || {
        stack.socket_on_replica(0, alice.id, "").await.is_ok()
            && stack.socket_on_replica(1, alice.id, "").await.is_ok()
    })
    .await;
    assert!(ready, "the replicas never subscribed");
    let mut on_one = stack.socket_on_replica(0, alice.id, "").await.expect("one");
    let mut on_two = stack.socket_on_replica(1, alice.id, "").await.expect("two");
    let mut through_gateway = Following::open(&alice).await;
    let mut bobs = stack.socket_on_replica(1, bob.id, "").await.expect("bob");

    let t1 = alice.post("/api/tasks", json!({"title": "one"})).await;
    let t1 = t1.body["id"].as_i64().expect("id");
    let seen_one = on_one.next_event(WAIT).await.expect("replica one");
    assert_eq!(summary(&seen_one), ("task.created".to_owned(), t1));
    assert_eq!(on_two.next_event(WAIT).await.as_ref(), Some(&seen_one));
    assert_eq!(through_gateway.next().await, seen_one);
    let last = seen_one["id"].as_str().expect("id").to_owned();

    // Replica one restarts; an event is published meanwhile.
    let addr = stack.address(Service::Notifications(0));
    stack.stop(Service::Notifications(0));
    assert_eq!(on_one.ended(WAIT).await.0, Some(Ended::Closed(1001)));
    let t2 = alice.post("/api/tasks", json!({"title": "two"})).await;
    let t2 = t2.body["id"].as_i64().expect("id");
    assert_eq!(next(&mut on_two).await, ("task.created".to_owned(), t2));
    stack.restart_notifications(0, addr);
    let resumed = eventually(Duration::from_secs(10), async || {
        stack
            .socket_on_replica(0, alice.id, &format!("?after={last}"))
            .await
            .is_ok()
    })
    .await;
    assert!(resumed, "the restarted replica never served");
    let mut back = stack
        .socket_on_replica(0, alice.id, &format!("?after={last}"))
        .await
        .expect("reconnected");
    let replayed: Vec<(String, i64)> = back.replayed.iter().map(summary).collect();
    assert_eq!(replayed, [("task.created".to_owned(), t2)], "missed once");

    // The next event arrives once everywhere: nothing is repeated.
    let t3 = alice.post("/api/tasks", json!({"title": "three"})).await;
    let t3 = t3.body["id"].as_i64().expect("id");
    assert_eq!(next(&mut back).await, ("task.created".to_owned(), t3));
    assert_eq!(next(&mut on_two).await, ("task.created".to_owned(), t3));
    // The gateway sent its socket to either replica. On the one that
    // restarted, it was closed (1001), and the client resumed after the last
    // id it saw, as the page does: it still sees each event once.
    let through = [
        summary(&through_gateway.next().await).1,
        summary(&through_gateway.next().await).1,
    ];
    assert_eq!(through, [t2, t3], "the gateway's socket saw each once");
    assert!(back.next_event(Duration::from_millis(300)).await.is_none());

    // Bob saw none of it; a logout closes alice's sockets on every replica.
    assert!(bobs.next_event(Duration::from_millis(300)).await.is_none());
    assert_eq!(alice.logout().await.status, 204);
    assert_eq!(back.ended(WAIT).await.0, Some(Ended::Closed(4003)));
    assert_eq!(on_two.ended(WAIT).await.0, Some(Ended::Closed(4003)));
    assert!(through_gateway.socket.ended(WAIT).await.0.is_some());
    let his = bob.post("/api/tasks", json!({"title": "still here"})).await;
    assert_eq!(
        next(&mut bobs).await,
        (
            "task.created".to_owned(),
            his.body["id"].as_i64().expect("id")
        )
    );
}

/// A socket through the gateway that, when it is closed, opens another one
/// after the last id it saw, as the page's client does: whichever replica
/// serves it, and however often it is replaced, each event comes once.
struct Following<'a> {
    user: &'a e2e::User,
    socket: Socket,
    last: String,
    pending: std::collections::VecDeque<Value>,
    reconnects: u32,
}

impl<'a> Following<'a> {
    async fn open(user: &'a e2e::User) -> Following<'a> {
        Following {
            user,
            socket: user.socket("").await.expect("socket through the gateway"),
            // Before any event: everything kept is after it.
            last: "0-0".to_owned(),
            pending: Default::default(),
            reconnects: 0,
        }
    }

    async fn next(&mut self) -> Value {
        loop {
            let event = match self.pending.pop_front() {
                Some(event) => Some(event),
                None => self.socket.next_event(WAIT).await,
            };
            if let Some(event) = event {
                self.last = event["id"].as_str().expect("id").to_owned();
                return event;
            }
            self.reconnects += 1;
            assert!(self.reconnects <= 3, "the socket kept closing");
            self.socket = self
                .user
                .socket(&format!("?after={}", self.last))
                .await
                .expect("reconnected through the gateway");
            self.pending.extend(self.socket.replayed.drain(..));
        }
    }
}

/// A Redis server of this test's own, to stop and start again on one port.
struct PrivateRedis(std::process::Child);

impl PrivateRedis {
    fn start(port: u16) -> PrivateRedis {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        let mut server = PrivateRedis(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                server.0.try_wait().ok().flatten().is_none(),
                "redis-server exited"
            );
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server never listened"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_redis_is_down_http_serves_sockets_are_unavailable_and_both_come_back() {
    let port = unused_port();
    let redis = PrivateRedis::start(port);
    let stack = Stack::with(Options {
        redis: Some(format!("redis://127.0.0.1:{port}")),
        ..Options::default()
    })
    .await;
    let alice = stack.register("grace").await;
    let open = async || alice.socket("").await.is_ok();
    assert!(eventually(Duration::from_secs(10), open).await);
    let mut socket = alice.socket("").await.expect("socket");

    // Redis goes away: the socket is closed as "try again later".
    drop(redis);
    assert_eq!(socket.ended(WAIT).await.0, Some(Ended::Closed(1013)));

    // HTTP goes on: writes succeed (their events are dropped), reads too,
    // and new sockets are refused with a status, not left hanging.
    let task = alice.post("/api/tasks", json!({"title": "no redis"})).await;
    assert_eq!(task.status, 201, "{}", task.body);
    assert_eq!(alice.get("/api/tasks").await.status, 200);
    let Err((status, _)) = alice.socket("").await else {
        panic!("a socket opened without Redis");
    };
    assert!(matches!(status, 502 | 503), "{status}");

    // Redis is back: sockets open again and events flow.
    let _redis = PrivateRedis::start(port);
    // The socket that opened is the one used: a second open would ask
    // the replica's health once more, while it is still settling.
    let mut opened = None;
    let back = eventually(Duration::from_secs(15), async || {
        opened = alice.socket("").await.ok();
        opened.is_some()
    })
    .await;
    assert!(back, "sockets never came back with Redis");
    let mut socket = opened.expect("socket");
    let task = alice
        .post("/api/tasks", json!({"title": "redis again"}))
        .await;
    let id = task.body["id"].as_i64().expect("id");
    assert_eq!(next(&mut socket).await, ("task.created".to_owned(), id));
}
