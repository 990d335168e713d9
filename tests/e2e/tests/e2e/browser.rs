//! The browser client (web/) in a real browser: Debian's Chromium driven by
//! playwright-core, through the gateway of a whole stack. The checks live in
//! `web/tests/browser.mjs`; this test gives it the stack and reports what it
//! said.
//!
//! Needs what `./run deps` installs: Node.js, `web/node_modules`, the built
//! page (`web/dist`) and `/usr/bin/chromium` (or `CHROMIUM`).

use e2e::{Options, Service, Stack, web_dir};
use std::path::{Path, PathBuf};
use std::process::Command;

const ACCESS_TTL: u64 = 4;

fn web_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../web")
}

/// Every prerequisite, each missing one named with how to get it.
fn prerequisites() -> (PathBuf, Vec<String>) {
    let chromium = PathBuf::from(std::env::var("CHROMIUM").unwrap_or("/usr/bin/chromium".into()));
    let mut missing = Vec::new();
    if !chromium.is_file() {
        missing.push(format!(
            "{} (apt-get install chromium, or set CHROMIUM)",
            chromium.display()
        ));
    }
    if !web_root().join("node_modules/playwright-core").is_dir() {
        missing.push("web/node_modules (npm --prefix web ci)".into());
    }
    if !web_dir().join("index.html").is_file() {
        missing.push("web/dist (npm --prefix web run build)".into());
    }
    if Command::new("node").arg("--version").output().is_err() {
        missing.push("node (Node.js 20 or later)".into());
    }
    (chromium, missing)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_works_in_a_real_browser() {
    let (chromium, missing) = prerequisites();
    assert!(
        missing.is_empty(),
        "the browser test needs {} — `./run deps` installs them all",
        missing.join(", ")
    );
    let stack = Stack::with(Options {
        access_ttl: ACCESS_TTL,
        ..Options::default()
    })
    .await;
    let screenshot = std::env::var_os("SCREENSHOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::temp_dir().join(format!("portcullis-page-{}.png", std::process::id()))
        });
    let output = tokio::task::spawn_blocking({
        let page_url = format!("{}/app/", stack.gateway_url());
        let screenshot = screenshot.clone();
        move || {
            Command::new("node")
                .arg(web_root().join("tests/browser.mjs"))
                .current_dir(web_root())
                .env("PAGE_URL", page_url)
                .env("ACCESS_TTL", ACCESS_TTL.to_string())
                .env("CHROMIUM", chromium)
                .env("SCREENSHOT", screenshot)
                .output()
                .expect("run node")
        }
    })
    .await
    .expect("join");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "{said}\n--- gateway ---\n{}",
        stack.gateway_logs()
    );
    assert!(said.contains("all checks passed"), "{said}");
    assert!(
        stack.requests_served(Service::Web) >= 2,
        "the page was not served by the web service"
    );
}
