//! Logging set-up shared by every binary.

use tracing_subscriber::EnvFilter;

/// Logs to stderr (stdout is kept for the `listening on` line), filtered by
/// `RUST_LOG` (default `info`), as JSON lines when `LOG_FORMAT=json`.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let json = std::env::var("LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    // A second initialisation (tests) is harmless, so its error is ignored.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
