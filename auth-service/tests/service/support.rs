//! An in-process auth service on a fresh database, driven through its
//! router without a socket.

use auth_service::config::Cli;
use auth_service::{AppState, app, build_state, open_database};
use axum::body::Body;
use axum::http::{Method, StatusCode};
use clap::Parser;
use serde_json::{Value, json};
pub use service_kit::testing::Reply;
use service_kit::testing::{RouterClient, TestDatabase};

pub const SECRET: &str = "test-secret-test-secret-test-secret-0123";
pub const PASSWORD: &str = "correct horse battery";

pub struct TestApp {
    pub state: AppState,
    client: RouterClient,
    _db: TestDatabase,
}

impl TestApp {
    pub async fn new() -> Self {
        Self::with_args(&[]).await
    }

    pub async fn with_args(extra: &[&str]) -> Self {
        let db = TestDatabase::new().await;
        let mut args = vec!["auth-service", "--database-url", &db.url];
        args.extend_from_slice(extra);
        let cli = Cli::parse_from(args);
        let database = open_database(&cli.settings).await.expect("database");
        let state = build_state(&cli.settings, database, Some(SECRET.as_bytes()))
            .await
            .expect("state");
        TestApp {
            client: RouterClient::new(app(state.clone())),
            state,
            _db: db,
        }
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.client.send(Method::POST, path, &[], Some(&body)).await
    }

    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Body>,
    ) -> Reply {
        self.client.send_raw(method, path, headers, body).await
    }

    /// A request made on behalf of `user_id`, as the gateway would send it.
    pub async fn as_user(
        &self,
        user_id: i64,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Reply {
        self.client
            .as_user(user_id, method, path, body.as_ref())
            .await
    }

    /// `PATCH /api/admin/users/{target} {"active": false}`, sent as `caller`.
    pub async fn disable(&self, caller: i64, target: i64) -> Reply {
        self.as_user(
            caller,
            Method::PATCH,
            &format!("/api/admin/users/{target}"),
            Some(json!({"active": false})),
        )
        .await
    }

    pub async fn register(&self, email: &str) -> Reply {
        let reply = self
            .post(
                "/api/register",
                json!({"email": email, "password": PASSWORD}),
            )
            .await;
        assert_eq!(
            reply.status,
            StatusCode::CREATED,
            "register {email}: {}",
            reply.body
        );
        reply
    }

    pub async fn login(&self, email: &str, password: &str) -> Reply {
        self.post("/api/login", json!({"email": email, "password": password}))
            .await
    }

    pub async fn verify(&self, access: &str) -> Reply {
        self.post("/api/verify", json!({"access": access})).await
    }

    pub async fn refresh(&self, refresh: &str) -> Reply {
        self.post("/api/refresh", json!({"refresh": refresh})).await
    }

    /// Creates an admin directly, as `auth-service create-admin` does.
    pub async fn admin(&self, email: &str) -> i64 {
        auth_service::create_admin::create_admin(&self.state.db, email, PASSWORD.into())
            .await
            .expect("create admin");
        let reply = self.login(email, PASSWORD).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        reply.body["user_id"].as_i64().expect("user_id")
    }
}

pub fn assert_envelope(reply: &Reply, status: StatusCode, code: &str) {
    assert_eq!(reply.status, status, "{}", reply.body);
    assert_eq!(reply.code(), code, "{}", reply.body);
    assert!(
        reply.body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "envelope without message: {}",
        reply.body
    );
    if status == StatusCode::UNAUTHORIZED {
        assert_eq!(
            reply
                .headers
                .get("www-authenticate")
                .map(|v| v.to_str().expect("ascii")),
            Some("Bearer"),
            "every 401 carries WWW-Authenticate"
        );
    }
}
