//! `auth.mode: jwks`: tokens checked at the gateway against an issuer's
//! published keys. The issuers are real processes: a third-party one
//! (`issuer.py`: its own RS256 keys, JWKS and `realm_access.roles`, as an
//! identity provider the gateway did not come with) and the auth service
//! with its Ed25519 key ring.

use crate::support::{Gateway, Upstream, auth_service, raw, register};
use serde_json::{Value, json};
use service_kit::testing::{ChildService, TestDatabase, eventually};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const REDIS: &str = "redis://127.0.0.1:6379";
const ISSUER: &str = "https://idp.example.test/realms/shop";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// The third-party issuer, its JWKS served with `max_age`.
struct Issuer {
    child: ChildService,
    client: reqwest::Client,
}

impl Issuer {
    fn start(max_age: u64) -> Issuer {
        let mut command = std::process::Command::new("/usr/bin/python3");
        command
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/gateway/issuer.py"
            ))
            .arg(max_age.to_string());
        Issuer {
            child: ChildService::start("issuer", command),
            client: reqwest::Client::new(),
        }
    }

    fn jwks_url(&self) -> String {
        self.child.url("/jwks.json")
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.client
            .post(self.child.url(path))
            .json(&body)
            .send()
            .await
            .expect("issuer")
            .json()
            .await
            .expect("json")
    }

    /// A token with `claims`, and `header` fields over the issuer's own.
    async fn token(&self, claims: Value, header: Value) -> String {
        let body = self
            .post("/token", json!({"claims": claims, "header": header}))
            .await;
        body["token"].as_str().expect("token").to_string()
    }

    async fn hits(&self) -> (u64, u64) {
        let hits: Value = self
            .client
            .get(self.child.url("/hits"))
            .send()
            .await
            .expect("hits")
            .json()
            .await
            .expect("json");
        (
            hits["jwks"].as_u64().expect("jwks"),
            hits["other"].as_u64().expect("other"),
        )
    }

    async fn jwks_body(&self) -> String {
        self.client
            .get(self.jwks_url())
            .send()
            .await
            .expect("jwks")
            .text()
            .await
            .expect("body")
    }
}

/// Claims a realm of the third-party issuer would put in an access token.
fn claims(sub: &str, roles: &[&str]) -> Value {
    let t = now();
    json!({
        "iss": ISSUER, "aud": ["portcullis", "account"], "sub": sub,
        "iat": t, "nbf": t, "exp": t + 300, "typ": "Bearer",
        "realm_access": {"roles": roles},
    })
}

fn routes(jwks_url: &str, issuer: &str, tasks: SocketAddr, auth: &str, extra: &str) -> String {
    format!(
        r#"
auth:
  mode: jwks
  jwks_url: {jwks_url}
  issuer: "{issuer}"
  audiences: [portcullis]
  jwks_min_refresh: 1s
  cache_ttl: 30s
  negative_ttl: 1s
{auth}
upstreams:
  tasks:
    servers: ["{tasks}"]
{extra}
routes:
  - {{ prefix: /api/tasks, upstream: tasks, access: protected }}
  - {{ prefix: /api/admin, upstream: tasks, access: protected, roles: [admin] }}
"#
    )
}

fn third_party_routes(issuer: &Issuer, tasks: SocketAddr) -> String {
    routes(
        &issuer.jwks_url(),
        ISSUER,
        tasks,
        "  algorithms: [RS256]\n  roles_claim: realm_access.roles\n",
        "",
    )
}

async fn get(gw: SocketAddr, path: &str, token: &str) -> u16 {
    let bearer = format!("Bearer {token}");
    raw(gw, "GET", path, &[("authorization", &bearer)], "")
        .await
        .status
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_party_issuers_tokens_are_accepted_with_their_roles() {
    let issuer = Issuer::start(300);
    let tasks = Upstream::start().await;
    let gateway = Gateway::start(&third_party_routes(&issuer, tasks.addr), &[]);
    let gw = gateway.addr();

    let admin = issuer
        .token(claims("42", &["admin", "offline_access"]), json!({}))
        .await;
    let bearer = format!("Bearer {admin}");
    let reply = raw(
        gw,
        "GET",
        "/api/tasks",
        &[
            ("authorization", &bearer),
            ("x-user-id", "1"),
            ("x-user-role", "root"),
        ],
        "",
    )
    .await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    let seen = tasks.seen();
    let last = seen.last().expect("forwarded");
    assert_eq!(
        last.all("x-user-id"),
        vec!["42"],
        "the token's sub, never the client's"
    );
    assert_eq!(last.all("x-user-role"), vec!["admin,offline_access"]);
    assert!(
        last.all("authorization").is_empty(),
        "the token went upstream"
    );
    assert_eq!(get(gw, "/api/admin/x", &admin).await, 200);

    // Another user of the realm without the admin role; an opaque user id.
    let user = issuer
        .token(claims("f81d4fae-7dec-11d0", &["user"]), json!({}))
        .await;
    assert_eq!(get(gw, "/api/tasks", &user).await, 200);
    assert_eq!(
        tasks.seen().last().expect("seen").all("x-user-id"),
        vec!["f81d4fae-7dec-11d0"]
    );
    assert_eq!(get(gw, "/api/admin/x", &user).await, 403);

    assert!(gateway.metric("portcullis_jwks_keys").await >= 1.0);
    assert!(
        gateway
            .metric("portcullis_jwks_verifications_total{result=\"ok\"}")
            .await
            >= 2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_confused_tokens_are_refused_and_nothing_but_the_jwks_url_is_fetched() {
    let issuer = Issuer::start(300);
    let tasks = Upstream::start().await;
    let routes = third_party_routes(&issuer, tasks.addr)
        .replace("jwks_min_refresh: 1s", "jwks_min_refresh: 30s");
    let gateway = Gateway::start(&routes, &[]);
    let gw = gateway.addr();
    let good = claims("7", &["admin"]);
    assert_eq!(
        get(
            gw,
            "/api/tasks",
            &issuer.token(good.clone(), json!({})).await
        )
        .await,
        200
    );
    let (jwks_before, _) = issuer.hits().await;

    let jwks = issuer.jwks_body().await;
    let kid: Value = serde_json::from_str(&jwks).expect("jwks");
    let kid = kid["keys"][0]["kid"].as_str().expect("kid").to_string();
    let payload = b64(good.to_string().as_bytes());
    // HS256 "signed" with the published key as the secret, naming its kid.
    let confused = {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some(kid.clone());
        jsonwebtoken::encode(
            &header,
            &good,
            &jsonwebtoken::EncodingKey::from_secret(jwks.as_bytes()),
        )
        .expect("hs256")
    };
    let none = format!(
        "{}.{payload}.",
        b64(format!(r#"{{"alg":"none","typ":"JWT","kid":"{kid}"}}"#).as_bytes())
    );
    let trap = issuer.child.url("/trap");
    let t = now();
    let cases: Vec<(&str, String)> = vec![
        ("hs256 with the public key", confused),
        ("alg none", none),
        (
            "unknown kid",
            issuer.token(good.clone(), json!({"kid": "no-such-key"})).await,
        ),
        (
            "jku elsewhere, unknown kid",
            issuer
                .token(good.clone(), json!({"kid": "elsewhere", "jku": trap}))
                .await,
        ),
        (
            "x5u elsewhere",
            issuer
                .token(good.clone(), json!({"kid": "x5u-key", "x5u": trap}))
                .await,
        ),
        (
            "wrong iss",
            issuer
                .token(
                    json!({"iss": "https://evil.example", "aud": "portcullis", "sub": "7", "exp": t + 300}),
                    json!({}),
                )
                .await,
        ),
        (
            "wrong aud",
            issuer
                .token(
                    json!({"iss": ISSUER, "aud": "another-app", "sub": "7", "exp": t + 300}),
                    json!({}),
                )
                .await,
        ),
        (
            "no aud",
            issuer
                .token(json!({"iss": ISSUER, "sub": "7", "exp": t + 300}), json!({}))
                .await,
        ),
        (
            "expired beyond the leeway",
            issuer
                .token(
                    json!({"iss": ISSUER, "aud": "portcullis", "sub": "7", "exp": t - 60}),
                    json!({}),
                )
                .await,
        ),
        (
            "a refresh token",
            issuer
                .token(
                    json!({"iss": ISSUER, "aud": "portcullis", "sub": "7", "exp": t + 300, "typ": "Refresh"}),
                    json!({}),
                )
                .await,
        ),
        (
            "tampered payload",
            {
                let token = issuer.token(good.clone(), json!({})).await;
                let parts: Vec<&str> = token.split('.').collect();
                let forged = claims("1", &["admin"]);
                format!("{}.{}.{}", parts[0], b64(forged.to_string().as_bytes()), parts[2])
            },
        ),
    ];
    for (name, token) in &cases {
        let reply = raw(
            gw,
            "GET",
            "/api/admin/x",
            &[("authorization", &format!("Bearer {token}"))],
            "",
        )
        .await;
        assert_eq!(reply.status, 401, "{name}: {:?}", reply.body);
        assert_eq!(reply.code(), "invalid_token", "{name}");
    }
    let (jwks_after, other) = issuer.hits().await;
    assert_eq!(other, 0, "a token made the gateway fetch something else");
    // Three tokens named unknown kids within the 30 s interval: one fetch
    // at most.
    assert!(
        jwks_after - jwks_before <= 1,
        "{} JWKS fetches",
        jwks_after - jwks_before
    );
    for result in [
        "algorithm",
        "unknown_kid",
        "issuer",
        "audience",
        "bad_signature",
        "claims",
    ] {
        let sample = format!("portcullis_jwks_verifications_total{{result=\"{result}\"}}");
        assert!(gateway.metric(&sample).await >= 1.0, "{sample}");
    }
    // An expired token is refused on its own claim, before any key is used.
    assert!(
        gateway
            .metric("portcullis_verify_cache_total{result=\"expired\"}")
            .await
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_kid_flood_fetches_the_jwks_at_most_once_per_interval() {
    let issuer = Issuer::start(300);
    let tasks = Upstream::start().await;
    let routes = third_party_routes(&issuer, tasks.addr)
        .replace("jwks_min_refresh: 1s", "jwks_min_refresh: 2s");
    let gateway = Gateway::start(&routes, &[]);
    let gw = gateway.addr();
    let (before, _) = issuer.hits().await;

    // 10 000 tokens signed by the issuer's own key, each naming a random kid.
    let token = issuer.token(claims("7", &[]), json!({})).await;
    let parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut refused = 0;
    let url = format!("http://{gw}/api/tasks");
    for batch in 0..100 {
        let mut requests = tokio::task::JoinSet::new();
        for i in 0..100 {
            let header =
                b64(format!(r#"{{"alg":"RS256","kid":"flood-{batch}-{i}-{}"}}"#, now()).as_bytes());
            let token = format!("{header}.{}.{}", parts[1], parts[2]);
            let (client, url) = (client.clone(), url.clone());
            requests.spawn(async move {
                client
                    .get(url)
                    .bearer_auth(token)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0)
            });
        }
        while let Some(status) = requests.join_next().await {
            if status.expect("request") == 401 {
                refused += 1;
            }
        }
    }
    let elapsed = started.elapsed();
    let (after, other) = issuer.hits().await;
    assert_eq!(refused, 10_000);
    assert_eq!(other, 0);
    let fetches = after - before;
    let allowed = elapsed.as_secs() / 2 + 1;
    println!("10 000 unknown kids in {elapsed:?}: {fetches} JWKS fetches (at most {allowed})");
    assert!(fetches <= allowed, "{fetches} fetches in {elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_removed_from_the_jwks_stops_verifying_and_its_successor_takes_over() {
    // The issuer's max-age of 1 s: the gateway looks again every second.
    let issuer = Issuer::start(1);
    let tasks = Upstream::start().await;
    let gateway = Gateway::start(&third_party_routes(&issuer, tasks.addr), &[]);
    let gw = gateway.addr();
    let old = issuer.token(claims("7", &[]), json!({})).await;
    assert_eq!(
        get(gw, "/api/tasks", &old).await,
        200,
        "cached from here on"
    );

    // Past the 1 s minimum interval since the gateway's first fetch, a new
    // kid is fetched for at once.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    issuer.post("/rotate", json!({})).await;
    let new = issuer.token(claims("8", &[]), json!({})).await;
    assert_eq!(
        get(gw, "/api/tasks", &new).await,
        200,
        "a new kid is fetched at once"
    );
    assert_eq!(
        get(gw, "/api/tasks", &old).await,
        200,
        "both keys are published"
    );

    issuer.post("/drop", json!({})).await;
    let removed = Instant::now();
    let refused = eventually(Duration::from_secs(5), async || {
        get(gw, "/api/tasks", &old).await == 401
    })
    .await;
    assert!(refused, "a token of a removed key still passes");
    println!("refused {:?} after the key's removal", removed.elapsed());
    assert_eq!(get(gw, "/api/tasks", &new).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_jwks_or_a_cached_copy_the_gateway_does_not_start_and_says_why() {
    let tasks = Upstream::start().await;
    let dead = format!(
        "http://127.0.0.1:{}/jwks.json",
        service_kit::testing::unused_port()
    );
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("routes.yaml");
    std::fs::write(&config, routes(&dead, ISSUER, tasks.addr, "", "")).expect("write");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .env_clear()
        .arg("--config")
        .arg(&config)
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains(&dead), "{stderr}");
    assert!(stderr.contains("no cached copy"), "{stderr}");

    // With a copy kept by an earlier run, it starts on that copy.
    let issuer = Issuer::start(300);
    let copy = dir.path().join("jwks-copy.json");
    let auth = format!("  jwks_cache: {}\n", copy.display());
    let token = issuer.token(claims("7", &[]), json!({})).await;
    {
        let first = Gateway::start(
            &routes(&issuer.jwks_url(), ISSUER, tasks.addr, &auth, ""),
            &[],
        );
        assert_eq!(get(first.addr(), "/api/tasks", &token).await, 200);
    }
    assert!(copy.exists(), "no copy kept");
    let second = Gateway::start(&routes(&dead, ISSUER, tasks.addr, &auth, ""), &[]);
    assert_eq!(get(second.addr(), "/api/tasks", &token).await, 200);
    assert!(
        second
            .child
            .logs()
            .contains("starting with the cached JWKS")
    );
}

/// The auth service's own key ring, two gateways verifying locally, Redis
/// carrying revocations.
struct RingStack {
    db: TestDatabase,
    auth: ChildService,
    _tasks: Upstream,
    gateways: Vec<Gateway>,
    channel: String,
    config: String,
}

fn channel() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    format!("test-gateway-jwks-{:x}", hasher.finish())
}

impl RingStack {
    async fn start(auth_args: &[&str]) -> RingStack {
        let channel = channel();
        let db = TestDatabase::new().await;
        let mut args = vec!["--redis-url", REDIS, "--revocation-channel", &channel];
        args.extend_from_slice(auth_args);
        let auth = auth_service(&db, &args);
        let tasks = Upstream::start().await;
        let jwks_url = auth.url("/.well-known/jwks.json");
        let extra = format!("  auth:\n    servers: [\"{}\"]\n", auth.addr);
        let config = routes(&jwks_url, "portcullis", tasks.addr, "", &extra).replace(
            "routes:\n",
            "routes:\n  - { prefix: /api/auth/register, upstream: auth, access: public, methods: [POST], rewrite: /api/register }\n  - { prefix: /api/auth/login, upstream: auth, access: public, methods: [POST], rewrite: /api/login }\n  - { prefix: /api/auth/logout, upstream: auth, access: public, methods: [POST], rewrite: /api/logout }\n",
        );
        let mut stack = RingStack {
            db,
            auth,
            _tasks: tasks,
            gateways: Vec::new(),
            channel,
            config,
        };
        for _ in 0..2 {
            stack.add_gateway().await;
        }
        stack
    }

    async fn add_gateway(&mut self) {
        let env = [
            ("REDIS_URL", REDIS),
            ("REVOCATION_CHANNEL", self.channel.as_str()),
        ];
        let gateway = Gateway::start(&self.config, &env);
        let subscribed = eventually(Duration::from_secs(10), async || {
            gateway.metric("portcullis_revocation_subscribed").await == 1.0
        })
        .await;
        assert!(subscribed, "not subscribed");
        self.gateways.push(gateway);
    }

    fn addrs(&self) -> Vec<SocketAddr> {
        self.gateways.iter().map(Gateway::addr).collect()
    }
}

async fn login_pair(gw: SocketAddr, email: &str) -> (String, String) {
    let body = json!({"email": email, "password": "a long password"}).to_string();
    let reply = raw(gw, "POST", "/api/auth/login", &[], &body).await;
    assert_eq!(reply.status, 200, "login: {:?}", reply.body);
    (
        reply.body["access"].as_str().expect("access").to_owned(),
        reply.body["refresh"].as_str().expect("refresh").to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_is_refused_by_every_gateway_within_a_second_and_after_a_restart() {
    let mut stack = RingStack::start(&[]).await;
    let gws = stack.addrs();
    register(gws[0], "ann@example.com").await;
    let (session, refresh) = login_pair(gws[0], "ann@example.com").await;
    let (other_session, _) = login_pair(gws[1], "ann@example.com").await;
    for &gw in &gws {
        assert_eq!(
            get(gw, "/api/tasks", &session).await,
            200,
            "verified and cached"
        );
    }

    let since = Instant::now();
    let body = json!({"refresh": refresh}).to_string();
    let logout = raw(gws[1], "POST", "/api/auth/logout", &[], &body).await;
    assert_eq!(logout.status, 204);
    for &gw in &gws {
        let refused = eventually(Duration::from_secs(1), async || {
            get(gw, "/api/tasks", &session).await == 401
        })
        .await;
        assert!(refused, "{gw} still accepts the session after a second");
    }
    println!(
        "logout refused everywhere {:?} after it was sent",
        since.elapsed()
    );
    for &gw in &gws {
        assert_eq!(
            get(gw, "/api/tasks", &other_session).await,
            200,
            "another session of the same user ended too"
        );
    }

    // A gateway started after the logout reads the revocations in force.
    stack.add_gateway().await;
    let late = stack.gateways[2].addr();
    assert_eq!(get(late, "/api/tasks", &session).await, 401);
    assert_eq!(get(late, "/api/tasks", &other_session).await, 200);
    let _ = &stack.db;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotation_under_load_refuses_nothing_that_should_pass() {
    let stack = RingStack::start(&["--jwks-max-age", "2"]).await;
    let gws = stack.addrs();
    register(gws[0], "load@example.com").await;
    let (old, _) = login_pair(gws[0], "load@example.com").await;
    let kid = |token: &str| -> String {
        use base64::Engine;
        let header = token.split('.').next().expect("header");
        let header: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(header)
                .expect("b64"),
        )
        .expect("json");
        header["kid"].as_str().expect("kid").to_string()
    };
    let old_kid = kid(&old);

    // Hammer both gateways with the old token and with fresh ones.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tokens = std::sync::Arc::new(std::sync::Mutex::new(vec![old.clone()]));
    let mut load = tokio::task::JoinSet::new();
    for worker in 0..4 {
        let (stop, tokens, gw) = (stop.clone(), tokens.clone(), gws[worker % 2]);
        load.spawn(async move {
            let client = reqwest::Client::new();
            let (mut sent, mut failed) = (0u64, Vec::new());
            let mut i = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let token = {
                    let tokens = tokens.lock().expect("lock");
                    tokens[i % tokens.len()].clone()
                };
                i += 1;
                let status = client
                    .get(format!("http://{gw}/api/tasks"))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0);
                sent += 1;
                if status != 200 {
                    failed.push(status);
                }
            }
            (sent, failed)
        });
    }

    let rotate = std::process::Command::new(service_kit::testing::workspace_binary("auth-service"))
        .env("DATABASE_URL", &stack.db.url)
        .env("JWKS_MAX_AGE", "2")
        .args(["keys", "rotate"])
        .output()
        .expect("rotate");
    assert!(
        rotate.status.success(),
        "{}",
        String::from_utf8_lossy(&rotate.stderr)
    );
    // New logins until one is signed by the new key, then a little more.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut rotated_at = None;
    while Instant::now() < deadline {
        let (fresh, _) = login_pair(gws[1], "load@example.com").await;
        let new_kid = kid(&fresh) != old_kid;
        tokens.lock().expect("lock").push(fresh);
        if new_kid && rotated_at.is_none() {
            rotated_at = Some(Instant::now());
        }
        if rotated_at.is_some_and(|at| at.elapsed() > Duration::from_secs(2)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(rotated_at.is_some(), "the new key never signed");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut sent, mut failed) = (0, Vec::new());
    while let Some(done) = load.join_next().await {
        let (s, f) = done.expect("worker");
        sent += s;
        failed.extend(f);
    }
    println!(
        "{sent} requests across the rotation, {} refused",
        failed.len()
    );
    assert!(sent > 100, "too little load: {sent}");
    assert!(failed.is_empty(), "refused during the rotation: {failed:?}");
    let _ = &stack.auth;
}
