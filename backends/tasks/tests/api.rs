//! The tasks service through its router, on SQLite by default and on
//! PostgreSQL when `TEST_DATABASE_URL` is set.

use axum::http::{Method, StatusCode};
use serde_json::{Value, json};
use service_kit::testing::{Reply, RouterClient, TestDatabase};

const ALICE: i64 = 7;
const BOB: i64 = 8;

async fn service() -> (RouterClient, TestDatabase) {
    let db = TestDatabase::new().await;
    let database = service_kit::Db::open(&db.url, 8, &tasks::MIGRATIONS)
        .await
        .expect("database");
    (
        RouterClient::new(tasks::app(tasks::AppState {
            db: database,
            events: service_kit::events::Publisher::none(),
        })),
        db,
    )
}

async fn create(client: &RouterClient, user: i64, title: &str) -> Value {
    let reply = client
        .as_user(
            user,
            Method::POST,
            "/api/tasks",
            Some(&json!({"title": title})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    reply.body
}

fn titles(reply: &Reply) -> Vec<&str> {
    reply
        .body
        .as_array()
        .expect("a list")
        .iter()
        .map(|t| t["title"].as_str().expect("title"))
        .collect()
}

#[tokio::test]
async fn a_user_manages_their_tasks() {
    let (client, _db) = service().await;
    let first = create(&client, ALICE, "  write the report ").await;
    assert_eq!(first["title"], "write the report");
    assert_eq!(first["completed"], false);
    assert!(
        first["created_at"]
            .as_str()
            .is_some_and(|t| t.contains('T'))
    );
    assert!(first.get("user_id").is_none());
    create(&client, ALICE, "water the plants").await;
    create(&client, ALICE, "call the bank").await;

    let list = client.as_user(ALICE, Method::GET, "/api/tasks", None).await;
    assert_eq!(
        titles(&list),
        ["call the bank", "water the plants", "write the report"],
        "newest first"
    );
    let page = client
        .as_user(ALICE, Method::GET, "/api/tasks?limit=1&offset=1", None)
        .await;
    assert_eq!(titles(&page), ["water the plants"]);

    let id = first["id"].as_i64().expect("id");
    let path = format!("/api/tasks/{id}");
    let updated = client
        .as_user(ALICE, Method::PUT, &path, Some(&json!({"completed": true})))
        .await;
    assert_eq!(updated.status, StatusCode::OK);
    assert_eq!(updated.body["completed"], true);
    assert_eq!(
        updated.body["title"], "write the report",
        "an absent field is unchanged"
    );
    let renamed = client
        .as_user(
            ALICE,
            Method::PUT,
            &path,
            Some(&json!({"title": "report, v2"})),
        )
        .await;
    assert_eq!(
        (
            renamed.body["title"].as_str(),
            renamed.body["completed"].as_bool()
        ),
        (Some("report, v2"), Some(true))
    );

    let done = client
        .as_user(ALICE, Method::GET, "/api/tasks?completed=true", None)
        .await;
    assert_eq!(titles(&done), ["report, v2"]);
    let open = client
        .as_user(ALICE, Method::GET, "/api/tasks?completed=false", None)
        .await;
    assert_eq!(titles(&open).len(), 2);

    assert_eq!(
        client.as_user(ALICE, Method::GET, &path, None).await.body["id"],
        id
    );
    assert_eq!(
        client
            .as_user(ALICE, Method::DELETE, &path, None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        client.as_user(ALICE, Method::GET, &path, None).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        client
            .as_user(ALICE, Method::DELETE, &path, None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn users_never_see_or_touch_each_others_tasks() {
    let (client, _db) = service().await;
    let alices = create(&client, ALICE, "alice's secret").await;
    let path = format!("/api/tasks/{}", alices["id"]);

    assert_eq!(
        titles(&client.as_user(BOB, Method::GET, "/api/tasks", None).await),
        Vec::<&str>::new()
    );
    let missing = client
        .as_user(BOB, Method::GET, "/api/tasks/999999", None)
        .await;
    let attempts = [
        client.as_user(BOB, Method::GET, &path, None).await,
        client
            .as_user(
                BOB,
                Method::PUT,
                &path,
                Some(&json!({"title": "pwned", "completed": true})),
            )
            .await,
        client.as_user(BOB, Method::DELETE, &path, None).await,
    ];
    for reply in &attempts {
        assert_eq!(reply.status, StatusCode::NOT_FOUND);
        assert_eq!(
            reply.body, missing.body,
            "another user's task looks exactly like a missing one"
        );
    }
    // A user_id in the body or query changes nothing: the header decides.
    let bobs = client
        .as_user(
            BOB,
            Method::POST,
            "/api/tasks",
            Some(&json!({"title": "bob's", "user_id": ALICE})),
        )
        .await;
    assert_eq!(bobs.status, StatusCode::CREATED);
    let alice_list = client
        .as_user(
            ALICE,
            Method::GET,
            &format!("/api/tasks?user_id={BOB}"),
            None,
        )
        .await;
    assert_eq!(titles(&alice_list), ["alice's secret"]);
    let unchanged = client.as_user(ALICE, Method::GET, &path, None).await;
    assert_eq!(
        (
            unchanged.body["title"].as_str(),
            unchanged.body["completed"].as_bool()
        ),
        (Some("alice's secret"), Some(false))
    );
}

#[tokio::test]
async fn requests_without_one_well_formed_identity_are_refused() {
    let (client, _db) = service().await;
    let task = create(&client, ALICE, "mine").await;
    let path = format!("/api/tasks/{}", task["id"]);
    let body = json!({"title": "x"});
    let endpoints = [
        (Method::GET, "/api/tasks".to_owned(), None),
        (Method::POST, "/api/tasks".to_owned(), Some(&body)),
        (Method::GET, path.clone(), None),
        (Method::PUT, path.clone(), Some(&body)),
        (Method::DELETE, path.clone(), None),
    ];
    for (method, path, body) in endpoints {
        let cases: [(&[(&str, &str)], StatusCode); 5] = [
            (&[], StatusCode::UNAUTHORIZED),
            (&[("x-user-id", "abc")], StatusCode::UNAUTHORIZED),
            (&[("x-user-id", "-7")], StatusCode::UNAUTHORIZED),
            (
                &[("x-user-id", "7"), ("x-user-id", "8")],
                StatusCode::BAD_REQUEST,
            ),
            (&[("x_user_id", "7")], StatusCode::UNAUTHORIZED),
        ];
        for (headers, status) in cases {
            let reply = client.send(method.clone(), &path, headers, body).await;
            assert_eq!(reply.status, status, "{method} {path} {headers:?}");
            reply.code();
        }
    }
    // Nothing above changed the task.
    assert_eq!(
        client.as_user(ALICE, Method::GET, &path, None).await.body["title"],
        "mine"
    );
}

#[tokio::test]
async fn invalid_input_is_refused_with_the_envelope() {
    let (client, _db) = service().await;
    let task = create(&client, ALICE, "valid").await;
    let path = format!("/api/tasks/{}", task["id"]);
    let long = "x".repeat(501);
    let cases = [
        (
            Method::POST,
            "/api/tasks".to_owned(),
            Some(json!({"title": "   "})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::POST,
            "/api/tasks".to_owned(),
            Some(json!({"title": long})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::POST,
            "/api/tasks".to_owned(),
            Some(json!({})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::POST,
            "/api/tasks".to_owned(),
            Some(json!({"title": "x", "done": true})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::POST,
            "/api/tasks".to_owned(),
            Some(json!({"title": "x", "completed": "yes"})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::PUT,
            path.clone(),
            Some(json!({"title": ""})),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::GET,
            "/api/tasks?limit=0".to_owned(),
            None,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::GET,
            "/api/tasks?offset=-1".to_owned(),
            None,
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            Method::GET,
            "/api/tasks?completed=maybe".to_owned(),
            None,
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::GET,
            "/api/tasks/abc".to_owned(),
            None,
            StatusCode::NOT_FOUND,
        ),
        (
            Method::PATCH,
            path.clone(),
            Some(json!({})),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
    ];
    for (method, path, body, status) in cases {
        let reply = client
            .as_user(ALICE, method.clone(), &path, body.as_ref())
            .await;
        assert_eq!(
            reply.status, status,
            "{method} {path} {body:?}: {}",
            reply.body
        );
        reply.code();
    }
    let malformed = client
        .send(
            Method::POST,
            "/api/tasks",
            &[("x-user-id", "7"), ("content-type", "application/json")],
            None,
        )
        .await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        client.as_user(ALICE, Method::GET, &path, None).await.body["title"],
        "valid"
    );
}

#[tokio::test]
async fn health_reports_the_database() {
    let (client, _db) = service().await;
    let reply = client.send(Method::GET, "/healthz", &[], None).await;
    assert_eq!(reply.status, StatusCode::OK);
    let expected = if TestDatabase::is_postgres() {
        "postgres"
    } else {
        "sqlite"
    };
    assert_eq!(reply.body["database"], expected);
}

/// Strings with controls mixed into ordinary text, and any text at all.
fn text() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    prop_oneof![
        any::<String>(),
        "[a-z \\x00-\\x1f\\x7f-\\x9f]{0,12}",
        "[ a-zA-Zé日]{0,20}",
    ]
}

/// Any title, on SQLite and on PostgreSQL alike: stored as sent (trimmed)
/// or refused with a 4xx naming the field, never a 500.
#[test]
fn arbitrary_titles_are_stored_or_refused_never_a_500() {
    use proptest::prelude::*;
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (client, _db) = runtime.block_on(service());
    proptest!(ProptestConfig::with_cases(96), |(title in text())| {
        let created = runtime.block_on(client.as_user(
            ALICE,
            Method::POST,
            "/api/tasks",
            Some(&json!({"title": title})),
        ));
        let trimmed = title.trim();
        if title.chars().any(char::is_control) {
            prop_assert_eq!(created.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", created.body);
            prop_assert!(created.body["error"]["message"].as_str().unwrap_or("").starts_with("title must not contain control"));
        } else if trimmed.is_empty() || trimmed.chars().count() > 500 {
            prop_assert_eq!(created.status, StatusCode::UNPROCESSABLE_ENTITY);
        } else {
            prop_assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
            prop_assert_eq!(created.body["title"].as_str(), Some(trimmed));
            let path = format!("/api/tasks/{}", created.body["id"]);
            let read = runtime.block_on(client.as_user(ALICE, Method::GET, &path, None));
            prop_assert_eq!(read.body["title"].as_str(), Some(trimmed));
        }
        let renamed = runtime.block_on(client.as_user(
            ALICE,
            Method::PATCH,
            "/api/tasks/1",
            Some(&json!({"title": title})),
        ));
        prop_assert!(renamed.status.is_success() || renamed.status.is_client_error(), "{}", renamed.status);
    });
}

/// Replicas starting together on one new SQLite file (two `orders` or
/// `tasks` servers in the one-command stack) all open it: creating the
/// file, switching it to WAL and migrating it are done one at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_opening_one_new_sqlite_file_together_all_succeed() {
    let dir = std::env::temp_dir().join(format!("tasks-together-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let url = format!("sqlite://{}/tasks.db", dir.display());
    let mut openers = tokio::task::JoinSet::new();
    for _ in 0..6 {
        let url = url.clone();
        openers.spawn(async move {
            service_kit::Db::open(&url, 2, &tasks::MIGRATIONS)
                .await
                .map(|_| ())
        });
    }
    while let Some(opened) = openers.join_next().await {
        opened
            .expect("join")
            .expect("every replica opens the database");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
