//! The Pingora boundary: the only folder of the crate that names Pingora
//! (`tests` below fails when another file does). Each phase is a few lines
//! that call the plain decisions and act on their answers.
//!
//! - [`proxy`]: the `ProxyHttp` phases.
//! - [`write`](mod@write): answers and header edits onto Pingora's sessions and heads.
//! - [`upstreams`]: pools of servers, load balancing and health checks.
//! - [`tls`]: certificate and CA files through Pingora's rustls;
//!   [`handshake`]: each handshake takes the current generation's
//!   certificate.
//! - [`listeners`]: client connections admitted as they are accepted.
//! - [`generation`]: the state one read of `routes.yaml` builds (routes,
//!   pools, verifier, certificate), swapped whole on reload.
//! - [`admin`]: the admin listener (revocations without Redis).
//! - [`server`]: process assembly, reloads and the control loop.

pub mod admin;
pub mod generation;
pub mod handshake;
pub mod listeners;
pub mod proxy;
pub mod server;
pub mod tls;
pub mod upstreams;
pub mod write;

use crate::config::Config;

/// Applies what Pingora reads process-wide from the routes file: the
/// request head's size limit and deadline.
pub fn apply_head_limits(config: &Config) {
    pingora::protocols::http::v1::server::HttpSession::set_request_head_limits(
        usize::try_from(config.server.max_header_bytes.0).unwrap_or(usize::MAX),
        Some(config.server.request_head_timeout.0),
    );
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    fn sources(dir: &Path, found: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                sources(&path, found);
            } else if path.extension().is_some_and(|e| e == "rs") {
                found.push(path);
            }
        }
    }

    /// The boundary holds by construction: outside `src/edge/`, no source
    /// file of the gateway (tests and benches included) names Pingora.
    #[test]
    fn only_the_edge_names_pingora() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let edge = root.join("src").join("edge");
        let mut files = Vec::new();
        for dir in ["src", "tests", "benches", "examples"] {
            if root.join(dir).is_dir() {
                sources(&root.join(dir), &mut files);
            }
        }
        assert!(
            files.len() > 10,
            "sources not found under {}",
            root.display()
        );
        let offenders: Vec<String> = files
            .iter()
            .filter(|f| !f.starts_with(&edge))
            .filter(|f| {
                std::fs::read_to_string(f)
                    .expect("read")
                    .to_ascii_lowercase()
                    .contains("pingora")
            })
            .map(|f| f.display().to_string())
            .collect();
        assert!(offenders.is_empty(), "outside src/edge/: {offenders:?}");
    }
}
