//! Portcullis web page server: the browser client's built files, served
//! under `/app/` behind the gateway, so that the page and the API share one
//! origin and no cross-origin rules are needed.
//!
//! The files are read once at start-up into memory. A request can only name
//! a file that was there then: there is no path from a request to the file
//! system, so no traversal to guard against, and a deploy that replaces the
//! directory takes effect on restart, all files at once.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use service_kit::ApiError;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Where the page lives on the gateway.
pub const MOUNT: &str = "/app";

/// A file of the built page.
struct File {
    bytes: axum::body::Bytes,
    content_type: &'static str,
    /// Vite names bundled files after their content, so they never change
    /// under one name and may be cached for good; everything else is
    /// revalidated.
    immutable: bool,
}

/// The built page, in memory.
#[derive(Clone)]
pub struct Site {
    files: Arc<HashMap<String, File>>,
    /// Why the page cannot be served, when it cannot.
    missing: Option<String>,
}

/// Files above this size are not served: the page has no business with one,
/// and memory stays bounded whatever the directory holds.
const MAX_FILE_BYTES: u64 = 8 * 1024 * 1024;

fn content_type(name: &str) -> &'static str {
    match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json" | "map") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("woff2") => "font/woff2",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

impl Site {
    /// Reads every file under `dir`. A directory without `index.html` gives
    /// a site that answers 503 with what to do, rather than a service that
    /// refuses to start: the rest of the stack works without the page.
    pub fn load(dir: &std::path::Path) -> Site {
        let mut files = HashMap::new();
        let mut pending = vec![(dir.to_path_buf(), String::new())];
        while let Some((path, prefix)) = pending.pop() {
            let Ok(entries) = std::fs::read_dir(&path) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let Ok(kind) = entry.file_type() else {
                    continue;
                };
                // Hidden files and links are never part of a build.
                if name.starts_with('.') || kind.is_symlink() {
                    continue;
                }
                let relative = format!("{prefix}{name}");
                if kind.is_dir() {
                    pending.push((entry.path(), format!("{relative}/")));
                } else if kind.is_file()
                    && entry.metadata().is_ok_and(|m| m.len() <= MAX_FILE_BYTES)
                    && let Ok(bytes) = std::fs::read(entry.path())
                {
                    files.insert(
                        relative.clone(),
                        File {
                            bytes: bytes.into(),
                            content_type: content_type(&name),
                            immutable: relative.starts_with("assets/"),
                        },
                    );
                }
            }
        }
        let missing = (!files.contains_key("index.html")).then(|| {
            format!(
                "the page is not built ({} has no index.html): run `npm --prefix web ci && npm --prefix web run build`",
                dir.display()
            )
        });
        Site {
            files: Arc::new(files),
            missing,
        }
    }

    /// Files served, for the start-up log.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    fn serve(&self, name: &str) -> Response {
        if let Some(why) = &self.missing {
            return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_built", why.clone())
                .into_response();
        }
        let Some(file) = self.files.get(name) else {
            return ApiError::not_found().into_response();
        };
        let cache = if file.immutable {
            "public, max-age=31536000, immutable"
        } else if name == "index.html" {
            // Also keeps the page out of the back/forward cache, so Back
            // after signing out loads it afresh instead of showing a copy
            // that was signed in.
            "no-store"
        } else {
            "no-cache"
        };
        let mut response = (
            [
                (header::CONTENT_TYPE, file.content_type),
                (header::CACHE_CONTROL, cache),
            ],
            file.bytes.clone(),
        )
            .into_response();
        let headers = response.headers_mut();
        // The refresh token lives in localStorage (see web/src/api.ts), so
        // an injected script would be a session compromise: only the page's
        // own files may run, load or be connected to.
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                 connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
                 frame-ancestors 'none'",
            ),
        );
        headers.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        response
    }
}

async fn index(State(site): State<Site>) -> Response {
    site.serve("index.html")
}

async fn file(State(site): State<Site>, Path(name): Path<String>) -> Response {
    site.serve(&name)
}

async fn healthz(State(site): State<Site>) -> Response {
    let status = if site.missing.is_some() {
        "not_built"
    } else {
        "ok"
    };
    axum::Json(serde_json::json!({ "status": status, "files": site.len() })).into_response()
}

pub fn app(site: Site) -> Router {
    let routes = Router::new()
        .route(
            MOUNT,
            get(|| async { Redirect::permanent(&format!("{MOUNT}/")) }),
        )
        .route(&format!("{MOUNT}/"), get(index))
        .route(&format!("{MOUNT}/{{*name}}"), get(file))
        .route("/healthz", get(healthz))
        .with_state(site);
    service_kit::server::harden(routes)
}

pub async fn run(
    listener: TcpListener,
    site: Site,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    service_kit::server::serve(listener, app(site), shutdown).await
}

#[cfg(test)]
mod tests {
    use super::content_type;

    #[test]
    fn content_types_by_extension() {
        for (name, expected) in [
            ("index.html", "text/html; charset=utf-8"),
            ("assets/index-3f2a.js", "text/javascript; charset=utf-8"),
            ("assets/index-3f2a.css", "text/css; charset=utf-8"),
            ("favicon.svg", "image/svg+xml"),
            ("README", "application/octet-stream"),
            ("archive.tar.gz", "application/octet-stream"),
        ] {
            assert_eq!(content_type(name), expected, "{name}");
        }
    }
}
