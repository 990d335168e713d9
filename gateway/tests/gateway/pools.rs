//! How a pool spreads and sheds load, measured at the upstreams: weights,
//! `least_requests`, `user_hash`, and the limits that answer 503 at once.

use crate::support::*;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// A keep-alive client (the counts below need thousands of requests).
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

fn pool_routes(servers: &str, balance: &str, extra: &str) -> String {
    format!(
        "auth:\n  mode: local\nupstreams:\n  app:\n    servers: [{servers}]\n    balance: {balance}\n    health_check: {{ type: http, path: /healthz, interval: 200ms }}\n    read_timeout: 1s\n{extra}routes:\n  - {{ prefix: /public, upstream: app, access: public }}\n  - {{ prefix: /mine, upstream: app, access: protected }}\n"
    )
}

fn token(user: usize) -> String {
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let claims = serde_json::json!({"sub": user.to_string(), "exp": now + 600, "iat": now, "nbf": now, "type": "access", "role": "user"});
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_split_requests_in_their_proportion() {
    let (big, canary) = (Upstream::start().await, Upstream::start().await);
    let servers = format!(
        "{{address: \"{}\", weight: 95}}, {{address: \"{}\", weight: 5}}",
        big.addr, canary.addr
    );
    let gateway = Gateway::start(
        &pool_routes(&servers, "round_robin", ""),
        &[("JWT_SECRET_KEY", SECRET)],
    );
    let http = client();
    let url = format!("http://{}/public/x", gateway.addr());
    for _ in 0..2000 {
        let status = http.get(&url).send().await.expect("send").status();
        assert_eq!(status, 200);
    }
    let share = canary.seen().len() as f64 / 2000.0;
    assert!(
        (0.03..=0.07).contains(&share),
        "canary got {:.1} %",
        share * 100.0
    );
    assert_eq!(big.seen().len() + canary.seen().len(), 2000);
}

/// Which server each user's requests went to.
fn servers_by_user(upstreams: &[&Upstream]) -> HashMap<String, Vec<usize>> {
    let mut by_user: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, upstream) in upstreams.iter().enumerate() {
        for seen in upstream.seen() {
            if let Some(user) = seen.all("x-user-id").first() {
                let servers = by_user.entry((*user).to_owned()).or_default();
                if !servers.contains(&i) {
                    servers.push(i);
                }
            }
        }
    }
    by_user
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_hash_keeps_each_user_on_one_server_and_moves_few_when_one_is_added() {
    let ups = [
        Upstream::start().await,
        Upstream::start().await,
        Upstream::start().await,
        Upstream::start().await,
    ];
    let list = |n: usize| {
        ups[..n]
            .iter()
            .map(|u| format!("\"{}\"", u.addr))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let gateway = Gateway::start(
        &pool_routes(&list(3), "user_hash", ""),
        &[("JWT_SECRET_KEY", SECRET)],
    );
    let http = client();
    let url = format!("http://{}/mine/x", gateway.addr());
    let tokens: Vec<String> = (1..=50).map(token).collect();
    let round = async |tokens: &[String]| {
        for token in tokens {
            for _ in 0..4 {
                let reply = http
                    .get(&url)
                    .bearer_auth(token)
                    .send()
                    .await
                    .expect("send");
                assert_eq!(reply.status(), 200);
            }
        }
    };
    round(&tokens).await;
    let refs: Vec<&Upstream> = ups.iter().collect();
    let before = servers_by_user(&refs);
    assert_eq!(before.len(), 50);
    for (user, servers) in &before {
        assert_eq!(servers.len(), 1, "user {user} went to {servers:?}");
    }
    let used = |by: &HashMap<String, Vec<usize>>, server| {
        by.values().filter(|s| s.contains(&server)).count()
    };
    for server in 0..3 {
        assert!(
            used(&before, server) >= 5,
            "server {server} got {} users",
            used(&before, server)
        );
    }
    // Public routes have no user: every server takes its turn.
    for _ in 0..6 {
        assert_eq!(
            http.get(format!("http://{}/public/p", gateway.addr()))
                .send()
                .await
                .expect("send")
                .status(),
            200
        );
    }
    let public = |u: &Upstream| u.seen().iter().filter(|s| s.target == "/public/p").count();
    assert_eq!(
        (public(&ups[0]), public(&ups[1]), public(&ups[2])),
        (2, 2, 2)
    );

    // A fourth server: only the users it takes move, each to it.
    gateway.write_routes(&pool_routes(&list(4), "user_hash", ""));
    let reloaded = gateway.reload("applied", 1.0).await;
    assert!(reloaded, "the reload was not applied");
    for upstream in &ups {
        upstream.clear();
    }
    round(&tokens).await;
    let after = servers_by_user(&refs);
    let mut moved = 0;
    for (user, servers) in &after {
        assert_eq!(servers.len(), 1, "user {user} went to {servers:?}");
        if servers != &before[user] {
            moved += 1;
            assert_eq!(servers, &vec![3], "user {user} moved between old servers");
        }
    }
    assert!(
        (3..=22).contains(&moved),
        "{moved} of 50 users moved (about 1/4 expected)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_requests_sends_less_to_a_slow_server() {
    let (fast, slow) = (Upstream::start().await, Upstream::start().await);
    slow.delay_ms.store(200, Ordering::SeqCst);
    let servers = format!("\"{}\", \"{}\"", fast.addr, slow.addr);
    let gateway = Gateway::start(
        &pool_routes(&servers, "least_requests", ""),
        &[("JWT_SECRET_KEY", SECRET)],
    );
    let url = format!("http://{}/public/x", gateway.addr());
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let (http, url) = (client(), url.clone());
        clients.spawn(async move {
            for _ in 0..30 {
                assert_eq!(http.get(&url).send().await.expect("send").status(), 200);
            }
        });
    }
    while let Some(done) = clients.join_next().await {
        done.expect("client");
    }
    let (f, s) = (fast.seen().len(), slow.seen().len());
    assert_eq!(f + s, 300);
    assert!(
        s * 5 < f,
        "the slow server got {s} of 300 requests, the fast one {f}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pool_answers_503_at_once_and_recovers() {
    let hung = Upstream::start().await;
    let servers = format!("\"{}\"", hung.addr);
    let gateway = Gateway::start(
        &pool_routes(&servers, "round_robin", "    limits: { max_pending: 10 }\n"),
        &[("JWT_SECRET_KEY", SECRET)],
    );
    let gw: SocketAddr = gateway.addr();
    hung.hang.store(true, Ordering::SeqCst);
    let mut clients = tokio::task::JoinSet::new();
    for i in 0..100 {
        clients.spawn(async move { raw(gw, "GET", &format!("/public/{i}"), &[], "").await });
    }
    let mut statuses: HashMap<u16, usize> = HashMap::new();
    let mut shed_answers = Vec::new();
    while let Some(reply) = clients.join_next().await {
        let reply = reply.expect("client");
        *statuses.entry(reply.status).or_default() += 1;
        if reply.status == 503 {
            shed_answers.push((
                reply.code().to_owned(),
                reply.header("retry-after").map(str::to_owned),
            ));
        }
    }
    // Ten waited on the hung server (and timed out: 504); the other ninety
    // were answered at once, never sent.
    assert_eq!(statuses.get(&503), Some(&90), "{statuses:?}");
    assert_eq!(statuses.get(&504), Some(&10), "{statuses:?}");
    assert!(
        shed_answers
            .iter()
            .all(|(code, retry)| code == "upstream_overloaded" && retry.as_deref() == Some("1"))
    );
    assert_eq!(hung.seen().len(), 10, "shed requests reached the upstream");
    assert_eq!(
        gateway
            .metric("portcullis_upstream_overloaded_total{limit=\"max_pending\",upstream=\"app\"}")
            .await,
        90.0
    );
    // Every slot was given back.
    hung.hang.store(false, Ordering::SeqCst);
    for i in 0..20 {
        assert_eq!(
            raw(gw, "GET", &format!("/public/after/{i}"), &[], "")
                .await
                .status,
            200
        );
    }
}

const RETRY: &str = "    retry: { attempts: 3, on: [connect_error, reset, 503], budget: 20% }\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_and_ejection_hide_a_half_failing_server() {
    let ups = [
        Upstream::start().await,
        Upstream::start().await,
        Upstream::start().await,
    ];
    // The first server answers 503 to half its requests, five at a time.
    ups[0].fail_runs.store(5, Ordering::SeqCst);
    let servers = ups
        .iter()
        .map(|u| format!("\"{}\"", u.addr))
        .collect::<Vec<_>>()
        .join(", ");
    let passive = "    passive_health: { consecutive_failures: 3, base_ejection: 30s }\n";
    let gateway = Gateway::start(
        &pool_routes(&servers, "round_robin", &format!("{RETRY}{passive}")),
        &[("JWT_SECRET_KEY", SECRET)],
    );
    let http = client();
    let url = format!("http://{}/public/x", gateway.addr());
    let mut failed = 0;
    for _ in 0..1000 {
        if http.get(&url).send().await.expect("send").status() != 200 {
            failed += 1;
        }
    }
    assert_eq!(failed, 0, "clients saw errors");
    // Three failures in a row, and it was out of rotation.
    let bad = ups[0].seen().len();
    assert!(
        (1..=3).contains(&bad),
        "the failing server got {bad} requests"
    );
    let ejections = format!(
        "portcullis_upstream_ejections_total{{server=\"{}\",upstream=\"app\"}}",
        ups[0].addr
    );
    assert_eq!(gateway.metric(&ejections).await, 1.0);
    assert!(
        gateway
            .metric("portcullis_upstream_retries_total{outcome=\"retried\",upstream=\"app\"}")
            .await
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gets_go_again_and_posts_never_do() {
    let ups = [Upstream::start().await, Upstream::start().await];
    ups[0].fail_runs.store(5, Ordering::SeqCst);
    let servers = format!("\"{}\", \"{}\"", ups[0].addr, ups[1].addr);
    // A budget that covers this short run's failures (a quarter of the
    // requests, in bursts).
    let retry = RETRY.replace("20%", "50%");
    let gateway = Gateway::start(
        &pool_routes(&servers, "round_robin", &retry),
        &[("JWT_SECRET_KEY", SECRET)],
    );
    let http = client();
    let url = format!("http://{}/public/x", gateway.addr());
    let mut statuses: HashMap<u16, usize> = HashMap::new();
    for _ in 0..40 {
        let status = http.get(&url).send().await.expect("send").status().as_u16();
        *statuses.entry(status).or_default() += 1;
    }
    assert_eq!(statuses.get(&200), Some(&40), "GETs: {statuses:?}");
    let mut posts: HashMap<u16, usize> = HashMap::new();
    for _ in 0..40 {
        let status = http
            .post(&url)
            .body("{}")
            .send()
            .await
            .expect("send")
            .status()
            .as_u16();
        *posts.entry(status).or_default() += 1;
    }
    // The failing server may have acted on a POST it answered 503 (without
    // Retry-After): the client gets that answer, and the POST goes nowhere
    // else.
    assert!(posts.get(&503).is_some_and(|n| *n > 0), "POSTs: {posts:?}");
    let sent: usize = ups
        .iter()
        .map(|u| u.seen().iter().filter(|s| s.method == "POST").count())
        .sum();
    assert_eq!(sent, 40, "a POST was sent twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_budget_bounds_what_a_failing_pool_is_sent() {
    let ups = [Upstream::start().await, Upstream::start().await];
    for upstream in &ups {
        upstream.fail_runs.store(1_000_000, Ordering::SeqCst);
    }
    let servers = format!("\"{}\", \"{}\"", ups[0].addr, ups[1].addr);
    let gateway = Gateway::start(
        &pool_routes(&servers, "round_robin", RETRY),
        &[("JWT_SECRET_KEY", SECRET)],
    );
    let http = client();
    let url = format!("http://{}/public/x", gateway.addr());
    for _ in 0..200 {
        assert_eq!(http.get(&url).send().await.expect("send").status(), 503);
    }
    let sent = ups[0].seen().len() + ups[1].seen().len();
    // 20 % of the requests, and the floor of three.
    assert!(
        sent <= 200 + 200 / 5 + 3,
        "the pool was sent {sent} attempts"
    );
    assert!(sent > 200, "nothing was retried");
    assert!(
        gateway
            .metric(
                "portcullis_upstream_retries_total{outcome=\"budget_exhausted\",upstream=\"app\"}"
            )
            .await
            >= 100.0
    );
}
