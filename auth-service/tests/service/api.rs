//! Service tests: every endpoint through the router, on SQLite by default and
//! on PostgreSQL when `TEST_DATABASE_URL` is set.

use crate::support::{PASSWORD, TestApp, assert_envelope};
use auth_service::tokens::TokenType;
use axum::http::{Method, StatusCode};
use futures::future::join_all;
use serde_json::json;

#[tokio::test]
async fn register_returns_tokens_that_verify() {
    let app = TestApp::new().await;
    let reply = app.register("alice@example.com").await;
    let user_id = reply.body["user_id"].as_i64().expect("numeric user_id");
    assert!(user_id > 0);
    assert_ne!(reply.str("access"), reply.str("refresh"));

    let verified = app.verify(&reply.str("access")).await;
    assert_eq!(verified.status, StatusCode::OK, "{}", verified.body);
    assert_eq!(verified.body, json!({"user_id": user_id, "role": "user"}));
}

#[tokio::test]
async fn register_refuses_bad_input_with_the_envelope() {
    let app = TestApp::new().await;
    app.register("Bob@Example.com").await;

    let cases = [
        (
            json!({"email": "  bob@EXAMPLE.com ", "password": PASSWORD}),
            StatusCode::CONFLICT,
            "email_taken",
        ),
        (
            json!({"email": "not-an-email", "password": PASSWORD}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            json!({"email": "carol@example.com", "password": "1234567"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            json!({"email": "carol@example.com", "password": "x".repeat(1025)}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
        ),
        (
            json!({"email": "carol@example.com", "password": PASSWORD, "role": "admin"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            json!({"email": "carol@example.com"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
        (
            json!({"email": 7, "password": PASSWORD}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        ),
    ];
    for (body, status, code) in cases {
        let reply = app.post("/api/register", body.clone()).await;
        assert_envelope(&reply, status, code);
    }
    // Exactly 1024 bytes is still accepted.
    let reply = app
        .post(
            "/api/register",
            json!({"email": "dan@example.com", "password": "p".repeat(1024)}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);

    // Nothing above created an account for carol.
    let login = app.login("carol@example.com", PASSWORD).await;
    assert_envelope(&login, StatusCode::UNAUTHORIZED, "invalid_credentials");
}

#[tokio::test]
async fn transport_mistakes_are_4xx_envelopes() {
    let app = TestApp::new().await;
    let json_ct = [("content-type", "application/json")];
    let cases = [
        (
            Method::POST,
            "/api/register",
            &json_ct[..],
            "{\"email\": ".to_owned(),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            Method::POST,
            "/api/login",
            &[("content-type", "text/plain")][..],
            "{}".to_owned(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            Method::POST,
            "/api/verify",
            &[][..],
            "{}".to_owned(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            Method::POST,
            "/api/register",
            &json_ct[..],
            format!(
                "{{\"email\":\"{}\",\"password\":\"x\"}}",
                "a".repeat(70 * 1024)
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            Method::GET,
            "/api/nowhere",
            &[][..],
            String::new(),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Method::GET,
            "/api/login",
            &[][..],
            String::new(),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
    ];
    for (method, path, headers, body, status, code) in cases {
        let reply = app.raw(method.clone(), path, headers, body).await;
        assert_envelope(&reply, status, code);
    }
}

#[tokio::test]
async fn login_failures_look_the_same_for_unknown_email_and_wrong_password() {
    let app = TestApp::new().await;
    let registered = app.register("erin@example.com").await;

    let ok = app.login(" ERIN@example.com", PASSWORD).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    assert_eq!(ok.body["user_id"], registered.body["user_id"]);
    assert_eq!(app.verify(&ok.str("access")).await.status, StatusCode::OK);

    let wrong_password = app.login("erin@example.com", "not the password").await;
    let unknown_email = app.login("nobody@example.com", PASSWORD).await;
    assert_envelope(
        &wrong_password,
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
    );
    assert_eq!(wrong_password.body, unknown_email.body);
    assert_eq!(wrong_password.status, unknown_email.status);
}

#[tokio::test]
async fn repeated_failed_logins_are_throttled() {
    let app = TestApp::with_args(&["--login-max-failures", "3", "--login-window", "600"]).await;
    app.register("frank@example.com").await;
    for _ in 0..3 {
        let reply = app.login("frank@example.com", "wrong password").await;
        assert_envelope(&reply, StatusCode::UNAUTHORIZED, "invalid_credentials");
    }
    // Even the right password is refused now, and the client learns when to retry.
    let throttled = app.login("Frank@example.com", PASSWORD).await;
    assert_envelope(
        &throttled,
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_attempts",
    );
    let retry_after: u64 = throttled.headers["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=600).contains(&retry_after), "{retry_after}");
    // Other accounts are unaffected.
    app.register("grace@example.com").await;
    assert_eq!(
        app.login("grace@example.com", PASSWORD).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn refresh_rotates_and_a_reused_token_revokes_the_family() {
    let app = TestApp::new().await;
    let first = app.register("heidi@example.com").await;
    let r0 = first.str("refresh");

    let second = app.refresh(&r0).await;
    assert_eq!(second.status, StatusCode::OK, "{}", second.body);
    assert_eq!(second.body["user_id"], first.body["user_id"]);
    let r1 = second.str("refresh");
    assert_ne!(r1, r0, "a refresh hands out a new refresh token");
    assert_eq!(
        app.verify(&second.str("access")).await.status,
        StatusCode::OK
    );

    // Replaying the spent token is refused and takes the family down with it.
    assert_envelope(
        &app.refresh(&r0).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    );
    assert_envelope(
        &app.refresh(&r1).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    );

    // Another login is another family, unaffected.
    let other = app.login("heidi@example.com", PASSWORD).await;
    assert_eq!(
        app.refresh(&other.str("refresh")).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn refresh_refuses_access_tokens_and_garbage() {
    let app = TestApp::new().await;
    let reply = app.register("ivan@example.com").await;
    for token in [reply.str("access"), "garbage".into(), String::new()] {
        assert_envelope(
            &app.refresh(&token).await,
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        );
    }
    // An access token is not a refresh token, and the reverse.
    assert_envelope(
        &app.verify(&reply.str("refresh")).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_refreshes_with_one_token_let_exactly_one_through() {
    let app = TestApp::new().await;
    let refresh = app.register("judy@example.com").await.str("refresh");
    let attempts = (0..8).map(|_| app.refresh(&refresh));
    let replies = join_all(attempts).await;
    let ok = replies
        .iter()
        .filter(|r| r.status == StatusCode::OK)
        .count();
    assert_eq!(
        ok,
        1,
        "statuses: {:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    for reply in replies.iter().filter(|r| r.status != StatusCode::OK) {
        assert_envelope(reply, StatusCode::UNAUTHORIZED, "invalid_token");
    }
}

#[tokio::test]
async fn logout_revokes_the_session() {
    let app = TestApp::new().await;
    let session = app.register("ken@example.com").await;
    let other = app.login("ken@example.com", PASSWORD).await;

    let reply = app
        .post("/api/logout", json!({"refresh": session.str("refresh")}))
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.body);
    assert_envelope(
        &app.refresh(&session.str("refresh")).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    );
    // The session's access token ends with it, at once.
    assert_envelope(
        &app.post("/api/verify", json!({"access": session.str("access")}))
            .await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    );
    // Only that session ends.
    assert_eq!(
        app.post("/api/verify", json!({"access": other.str("access")}))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        app.refresh(&other.str("refresh")).await.status,
        StatusCode::OK
    );

    let garbage = app.post("/api/logout", json!({"refresh": "nope"})).await;
    assert_envelope(&garbage, StatusCode::UNAUTHORIZED, "invalid_token");
    let missing = app.post("/api/logout", json!({})).await;
    assert_envelope(&missing, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body");
}

#[tokio::test]
async fn verify_refuses_expired_and_future_tokens() {
    let app = TestApp::new().await;
    let user_id = app.register("leo@example.com").await.body["user_id"]
        .as_i64()
        .expect("id");
    let now = auth_service::now_unix();
    let keys = &app.state.keys;
    // Issued two hours ago with a one-hour lifetime: expired beyond the leeway.
    let expired = keys
        .issue(
            user_id,
            TokenType::Access,
            Some("user"),
            0,
            None,
            now - 7200,
        )
        .expect("sign");
    assert_envelope(
        &app.verify(&expired.token).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    );
    // Expired five seconds ago: within the 15 s leeway, still accepted.
    let grace = keys
        .issue(
            user_id,
            TokenType::Access,
            Some("user"),
            0,
            None,
            now - 3605,
        )
        .expect("sign");
    assert_eq!(app.verify(&grace.token).await.status, StatusCode::OK);
    // Not valid for another minute.
    let early = keys
        .issue(user_id, TokenType::Access, Some("user"), 0, None, now + 60)
        .expect("sign");
    assert_envelope(
        &app.verify(&early.token).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    );
    // A well-signed token for a user that never existed.
    let ghost = keys
        .issue(999_999, TokenType::Access, Some("admin"), 0, None, now)
        .expect("sign");
    assert_envelope(
        &app.verify(&ghost.token).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    );
}

#[tokio::test]
async fn me_reads_the_gateway_identity() {
    let app = TestApp::new().await;
    let user_id = app.register("Mallory@Example.com").await.body["user_id"]
        .as_i64()
        .expect("id");
    let me = app.as_user(user_id, Method::GET, "/api/me", None).await;
    assert_eq!(me.status, StatusCode::OK, "{}", me.body);
    assert_eq!(me.body["user_id"], user_id);
    assert_eq!(me.body["email"], "mallory@example.com");
    assert_eq!(me.body["role"], "user");
    assert!(
        me.body["created_at"]
            .as_str()
            .is_some_and(|t| t.contains('T'))
    );
    assert!(me.body.get("password_hash").is_none());

    let anonymous = app.raw(Method::GET, "/api/me", &[], "").await;
    assert_envelope(&anonymous, StatusCode::UNAUTHORIZED, "unauthenticated");
    let id = user_id.to_string();
    let doubled = app
        .raw(
            Method::GET,
            "/api/me",
            &[("x-user-id", &id), ("x-user-id", &id)],
            "",
        )
        .await;
    assert_envelope(&doubled, StatusCode::BAD_REQUEST, "ambiguous_identity");
    let malformed = app
        .raw(Method::GET, "/api/me", &[("x-user-id", "1 OR 1=1")], "")
        .await;
    assert_envelope(&malformed, StatusCode::UNAUTHORIZED, "unauthenticated");
    let unknown = app.as_user(987_654, Method::GET, "/api/me", None).await;
    assert_envelope(&unknown, StatusCode::UNAUTHORIZED, "unauthenticated");
}

#[tokio::test]
async fn admin_endpoints_require_an_admin() {
    let app = TestApp::new().await;
    let user = app.register("nina@example.com").await.body["user_id"]
        .as_i64()
        .expect("id");
    let admin = app.admin("root@example.com").await;

    let forbidden = app
        .as_user(user, Method::GET, "/api/admin/users", None)
        .await;
    assert_envelope(&forbidden, StatusCode::FORBIDDEN, "forbidden");
    let patch = app.disable(user, admin).await;
    assert_envelope(&patch, StatusCode::FORBIDDEN, "forbidden");
    let anonymous = app.raw(Method::GET, "/api/admin/users", &[], "").await;
    assert_envelope(&anonymous, StatusCode::UNAUTHORIZED, "unauthenticated");
    // A client-side role header does not make anyone an admin.
    let spoofed = app
        .raw(
            Method::GET,
            "/api/admin/users",
            &[("x-user-id", &user.to_string()), ("x-user-role", "admin")],
            "",
        )
        .await;
    assert_envelope(&spoofed, StatusCode::FORBIDDEN, "forbidden");

    let list = app
        .as_user(
            admin,
            Method::GET,
            "/api/admin/users?limit=1&offset=0",
            None,
        )
        .await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.body);
    assert_eq!(list.body["total"], 2);
    assert_eq!(list.body["users"].as_array().expect("array").len(), 1);
    assert_eq!(list.body["users"][0]["user_id"], user);
    assert!(list.body["users"][0].get("password_hash").is_none());
    let page2 = app
        .as_user(
            admin,
            Method::GET,
            "/api/admin/users?limit=1&offset=1",
            None,
        )
        .await;
    assert_eq!(page2.body["users"][0]["user_id"], admin);
    for bad in [
        "limit=0",
        "limit=100000",
        "offset=-1",
        "limit=abc",
        "sort=email",
    ] {
        let reply = app
            .as_user(admin, Method::GET, &format!("/api/admin/users?{bad}"), None)
            .await;
        assert!(reply.status.is_client_error(), "{bad}: {}", reply.status);
        reply.code();
    }
}

#[tokio::test]
async fn disabling_a_user_stops_their_tokens_at_once() {
    let app = TestApp::new().await;
    let session = app.register("oscar@example.com").await;
    let user = session.body["user_id"].as_i64().expect("id");
    let admin = app.admin("boss@example.com").await;
    assert_eq!(
        app.verify(&session.str("access")).await.status,
        StatusCode::OK
    );

    let reply = app.disable(admin, user).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert_eq!(reply.body["active"], false);

    assert_envelope(
        &app.verify(&session.str("access")).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    );
    assert_envelope(
        &app.refresh(&session.str("refresh")).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    );
    assert_envelope(
        &app.login("oscar@example.com", PASSWORD).await,
        StatusCode::UNAUTHORIZED,
        "invalid_credentials",
    );

    // Re-enabling lets them sign in again, but the old session stays dead.
    let reply = app
        .as_user(
            admin,
            Method::PATCH,
            &format!("/api/admin/users/{user}"),
            Some(json!({"active": true})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_envelope(
        &app.refresh(&session.str("refresh")).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    );
    assert_eq!(
        app.login("oscar@example.com", PASSWORD).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn roles_change_what_verify_reports() {
    let app = TestApp::new().await;
    let session = app.register("peggy@example.com").await;
    let user = session.body["user_id"].as_i64().expect("id");
    let admin = app.admin("chief@example.com").await;
    let path = format!("/api/admin/users/{user}");

    let promoted = app
        .as_user(admin, Method::PATCH, &path, Some(json!({"role": "admin"})))
        .await;
    assert_eq!(promoted.body["role"], "admin");
    assert_eq!(
        app.verify(&session.str("access")).await.body["role"],
        "admin"
    );
    // The promoted user can now administer.
    assert_eq!(
        app.as_user(user, Method::GET, "/api/admin/users", None)
            .await
            .status,
        StatusCode::OK
    );

    let invalid = app
        .as_user(admin, Method::PATCH, &path, Some(json!({"role": "root"})))
        .await;
    assert_envelope(
        &invalid,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
    let unknown_field = app
        .as_user(admin, Method::PATCH, &path, Some(json!({"email": "x@y.z"})))
        .await;
    assert_envelope(
        &unknown_field,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_body",
    );
    let missing = app.disable(admin, 424242).await;
    assert_envelope(&missing, StatusCode::NOT_FOUND, "not_found");
    let not_an_id = app
        .as_user(
            admin,
            Method::PATCH,
            "/api/admin/users/abc",
            Some(json!({})),
        )
        .await;
    assert_envelope(&not_an_id, StatusCode::NOT_FOUND, "not_found");

    // An admin cannot lock themselves out.
    let own = format!("/api/admin/users/{admin}");
    for change in [json!({"active": false}), json!({"role": "user"})] {
        let reply = app.as_user(admin, Method::PATCH, &own, Some(change)).await;
        assert_envelope(&reply, StatusCode::CONFLICT, "conflict");
    }
    assert_envelope(
        &app.as_user(admin, Method::DELETE, &own, None).await,
        StatusCode::CONFLICT,
        "conflict",
    );
}

#[tokio::test]
async fn deleted_users_are_gone_and_their_ids_never_return() {
    let app = TestApp::new().await;
    let session = app.register("quinn@example.com").await;
    let user = session.body["user_id"].as_i64().expect("id");
    let admin = app.admin("owner@example.com").await;
    let path = format!("/api/admin/users/{user}");

    let reply = app.as_user(admin, Method::DELETE, &path, None).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.body);
    assert_envelope(
        &app.as_user(admin, Method::DELETE, &path, None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_envelope(
        &app.verify(&session.str("access")).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    );
    assert_envelope(
        &app.refresh(&session.str("refresh")).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    );

    // The same email registers again, under a new id; the old token stays dead.
    let again = app.register("quinn@example.com").await;
    let new_id = again.body["user_id"].as_i64().expect("id");
    assert!(
        new_id > admin && new_id != user,
        "ids are never reused: {new_id}"
    );
    assert_envelope(
        &app.verify(&session.str("access")).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_registrations_of_one_email_create_one_account() {
    let app = TestApp::new().await;
    let attempts = (0..20).map(|i| {
        let email = if i % 2 == 0 {
            "rupert@example.com"
        } else {
            " RUPERT@example.com"
        };
        app.post(
            "/api/register",
            json!({"email": email, "password": PASSWORD}),
        )
    });
    let replies = join_all(attempts).await;
    let created = replies
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .count();
    assert_eq!(
        created,
        1,
        "statuses: {:?}",
        replies.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    for reply in replies.iter().filter(|r| r.status != StatusCode::CREATED) {
        assert_envelope(reply, StatusCode::CONFLICT, "email_taken");
    }
}

#[tokio::test]
async fn health_reports_the_database() {
    let app = TestApp::new().await;
    let reply = app.raw(Method::GET, "/healthz", &[], "").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body["status"], "ok");
    let expected = if service_kit::testing::TestDatabase::is_postgres() {
        "postgres"
    } else {
        "sqlite"
    };
    assert_eq!(reply.body["database"], expected);
}

#[tokio::test]
async fn promoting_an_existing_account_ends_its_earlier_sessions() {
    let app = TestApp::new().await;
    // Someone registered the address the operator is about to make admin.
    let squatter = app.register("admin@corp.example").await;
    let id = squatter.body["user_id"].as_i64().expect("id");
    assert_eq!(
        app.verify(&squatter.str("access")).await.body["role"],
        "user"
    );

    let admin = app.admin("admin@corp.example").await;
    assert_eq!(admin, id, "the existing account was promoted");
    // The squatter's tokens do not inherit the admin role: they stop working.
    assert_envelope(
        &app.verify(&squatter.str("access")).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    );
    assert_envelope(
        &app.refresh(&squatter.str("refresh")).await,
        StatusCode::UNAUTHORIZED,
        "invalid_token",
    );
    // The operator's own session after the promotion is an admin session.
    let fresh = app.login("admin@corp.example", PASSWORD).await;
    let verified = app.verify(&fresh.str("access")).await;
    assert_eq!(verified.status, StatusCode::OK);
    assert_eq!(verified.body["role"], "admin");
    let refreshed = app.refresh(&fresh.str("refresh")).await;
    assert_eq!(
        app.verify(&refreshed.str("access")).await.body["role"],
        "admin"
    );
}

#[tokio::test]
async fn malformed_login_emails_are_refused_like_wrong_passwords() {
    let app = TestApp::new().await;
    for email in ["x".repeat(60_000), "not-an-email".to_owned()] {
        let reply = app.login(&email, PASSWORD).await;
        assert_envelope(&reply, StatusCode::UNAUTHORIZED, "invalid_credentials");
    }
    // A control character is refused like in any other field (it says
    // nothing about whether an account exists).
    let reply = app.login("a\u{0}@x.io", PASSWORD).await;
    assert_envelope(
        &reply,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation_failed",
    );
}

#[tokio::test]
async fn forward_auth_answers_in_headers_for_other_proxies() {
    let app = TestApp::new().await;
    let session = app.register("fwd@example.com").await;
    let access = session.str("access");
    let bearer = format!("Bearer {access}");

    let ok = app
        .raw(
            Method::GET,
            "/api/verify",
            &[("authorization", &bearer)],
            "",
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    let user_id = session.body["user_id"].to_string();
    assert_eq!(
        ok.headers.get("x-user-id").and_then(|v| v.to_str().ok()),
        Some(user_id.as_str())
    );
    assert_eq!(
        ok.headers.get("x-user-role").and_then(|v| v.to_str().ok()),
        Some("user")
    );
    assert_eq!(ok.body["user_id"], session.body["user_id"]);
    // The scheme is case-insensitive, as RFC 9110 says.
    let lower = format!("bearer {access}");
    let ok = app
        .raw(Method::GET, "/api/verify", &[("authorization", &lower)], "")
        .await;
    assert_eq!(ok.status, StatusCode::OK);

    let missing = app.raw(Method::GET, "/api/verify", &[], "").await;
    assert_envelope(&missing, StatusCode::UNAUTHORIZED, "unauthenticated");
    assert!(missing.headers.get("x-user-id").is_none());

    let refresh = format!("Bearer {}", session.str("refresh"));
    let forged = format!("Bearer {access}x");
    let spaced = format!("Bearer {access} extra");
    let basic = format!("Basic {access}");
    for headers in [
        vec![("authorization", basic.as_str())],
        vec![("authorization", "Bearer ")],
        vec![("authorization", spaced.as_str())],
        vec![("authorization", refresh.as_str())],
        vec![("authorization", forged.as_str())],
        vec![
            ("authorization", bearer.as_str()),
            ("authorization", bearer.as_str()),
        ],
    ] {
        let reply = app.raw(Method::GET, "/api/verify", &headers, "").await;
        assert_envelope(&reply, StatusCode::UNAUTHORIZED, "invalid_token");
        assert!(reply.headers.get("x-user-id").is_none(), "{headers:?}");
    }

    // A disabled account's token stops working here too.
    let admin = app.admin("root@example.com").await;
    let id = session.body["user_id"].as_i64().expect("id");
    let disabled = app.disable(admin, id).await;
    assert_eq!(disabled.status, StatusCode::OK, "{}", disabled.body);
    let refused = app
        .raw(
            Method::GET,
            "/api/verify",
            &[("authorization", &bearer)],
            "",
        )
        .await;
    assert_envelope(&refused, StatusCode::UNAUTHORIZED, "invalid_token");
}

/// Any email, password and token text, on SQLite and on PostgreSQL alike:
/// a 4xx or a success, never a 500; a control character is a 422 naming
/// its field.
#[test]
fn arbitrary_text_in_every_field_is_refused_or_served_never_a_500() {
    use proptest::prelude::*;
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let app = runtime.block_on(TestApp::new());
    let text = || {
        prop_oneof![
            any::<String>(),
            "[a-z@. \\x00-\\x1f\\x7f-\\x9f]{0,16}",
            "[a-z]{1,8}@[a-z]{1,8}\\.[a-z\\x00]{2,3}",
        ]
    };
    proptest!(ProptestConfig::with_cases(48), |(email in text(), password in text(), token in text())| {
        let body = json!({"email": email, "password": format!("{password}-long enough")});
        let registered = runtime.block_on(app.post("/api/register", body.clone()));
        prop_assert!(!registered.status.is_server_error(), "register: {} {}", registered.status, registered.body);
        if email.chars().any(char::is_control) {
            prop_assert_eq!(registered.status, StatusCode::UNPROCESSABLE_ENTITY);
            prop_assert!(registered.body["error"]["message"].as_str().unwrap_or("").starts_with("email must not contain control"), "{}", registered.body);
        } else if password.chars().any(char::is_control) {
            prop_assert_eq!(registered.status, StatusCode::UNPROCESSABLE_ENTITY);
        }
        let login = runtime.block_on(app.post("/api/login", body));
        prop_assert!(!login.status.is_server_error(), "login: {} {}", login.status, login.body);
        for (path, field) in [("/api/refresh", "refresh"), ("/api/verify", "access"), ("/api/logout", "refresh")] {
            let reply = runtime.block_on(app.post(path, json!({field: token})));
            prop_assert!(!reply.status.is_server_error(), "{path}: {} {}", reply.status, reply.body);
        }
    });
}
