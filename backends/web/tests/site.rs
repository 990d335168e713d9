//! The page server through its router: what a browser gets, and what it
//! never gets.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

async fn get(site: &web::Site, path: &str) -> Answer {
    let response = web::app(site.clone())
        .oneshot(Request::get(path).body(Body::empty()).expect("request"))
        .await
        .expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

/// A built page: index, one hashed bundle, and files that must never be
/// served (a hidden file, a link out of the directory).
fn built() -> (tempfile::TempDir, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("dir");
    let outside = tempfile::tempdir().expect("outside");
    std::fs::write(
        dir.path().join("index.html"),
        "<!doctype html><title>t</title>",
    )
    .expect("write");
    std::fs::create_dir(dir.path().join("assets")).expect("mkdir");
    std::fs::write(dir.path().join("assets/index-abc123.js"), "console.log(1)").expect("write");
    std::fs::write(dir.path().join(".env"), "JWT_SECRET_KEY=nope").expect("write");
    std::fs::write(outside.path().join("secret.txt"), "outside").expect("write");
    std::os::unix::fs::symlink(
        outside.path().join("secret.txt"),
        dir.path().join("link.txt"),
    )
    .expect("symlink");
    (dir, outside)
}

#[tokio::test]
async fn serves_the_page_and_its_bundles_with_safe_headers() {
    let (dir, _outside) = built();
    let site = web::Site::load(dir.path());

    let index = get(&site, "/app/").await;
    assert_eq!(index.status, StatusCode::OK);
    assert!(index.body.contains("<title>t</title>"));
    assert_eq!(index.headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(index.headers["cache-control"], "no-store");
    let csp = index.headers["content-security-policy"]
        .to_str()
        .expect("csp");
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"));
    assert_eq!(index.headers["x-content-type-options"], "nosniff");

    let bundle = get(&site, "/app/assets/index-abc123.js").await;
    assert_eq!(bundle.status, StatusCode::OK);
    assert_eq!(bundle.body, "console.log(1)");
    assert_eq!(
        bundle.headers["content-type"],
        "text/javascript; charset=utf-8"
    );
    assert!(
        bundle.headers["cache-control"]
            .to_str()
            .expect("cache-control")
            .contains("immutable")
    );

    let bare = get(&site, "/app").await;
    assert_eq!(bare.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(bare.headers["location"], "/app/");
}

#[tokio::test]
async fn nothing_outside_the_built_files_is_reachable() {
    let (dir, _outside) = built();
    let site = web::Site::load(dir.path());
    for path in [
        "/app/.env",
        "/app/link.txt",
        "/app/../Cargo.toml",
        "/app/%2e%2e/%2e%2e/etc/passwd",
        "/app/assets/../../index.html",
        "/app/missing.js",
        "/index.html",
        "/",
    ] {
        let answer = get(&site, path).await;
        assert_eq!(
            answer.status,
            StatusCode::NOT_FOUND,
            "{path}: {}",
            answer.body
        );
        assert!(
            answer.body.contains(r#""code":"not_found""#),
            "{path}: {}",
            answer.body
        );
    }
}

#[tokio::test]
async fn an_unbuilt_page_says_how_to_build_it_and_the_service_stays_healthy() {
    let empty = tempfile::tempdir().expect("dir");
    let site = web::Site::load(&empty.path().join("dist"));
    let page = get(&site, "/app/").await;
    assert_eq!(page.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(page.body.contains(r#""code":"not_built""#), "{}", page.body);
    assert!(
        page.body.contains("npm --prefix web run build"),
        "{}",
        page.body
    );
    let health = get(&site, "/healthz").await;
    assert_eq!(health.status, StatusCode::OK);
    assert!(health.body.contains("not_built"), "{}", health.body);
}
