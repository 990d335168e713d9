//! Logging set-up shared by every binary (the gateway and every service).

use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// Logs to stderr (stdout is kept for the `listening on` line), filtered by
/// `RUST_LOG` (default `info`), as JSON lines when `LOG_FORMAT=json`.
/// Colours only on a terminal and without `NO_COLOR`, so that files, pipes
/// and the `stack` command's prefixed output get plain text.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        // When stderr is gone (a supervisor died holding its pipe), a log
        // line is lost; reporting that would write to stderr again, and
        // `eprintln!` panics on a broken pipe, taking the logging thread
        // (a request, a shutdown) down with it.
        .log_internal_errors(false)
        .with_writer(std::io::stderr);
    let json = std::env::var("LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    // A second initialisation (tests) is harmless, so its error is ignored.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
