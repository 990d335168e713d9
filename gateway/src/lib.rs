//! Portcullis gateway.
//!
//! Plain code decides; [`edge`] acts. Everything that touches the proxy
//! engine lives in [`edge`] (a test fails when any other file names the
//! engine's crate), and
//! every decision is a function of plain values with unit tests:
//!
//! - [`request`]: what happens to a request, in order ([`request::front`],
//!   [`request::admit`], [`request::forward`]); [`response`]: what happens
//!   to an answer, and which refusal answers a failure; [`refusal`]: every
//!   answer the gateway writes itself.
//! - [`auth`]: credentials, the verdict cache, the verifier.
//! - [`path`] normalises request paths, [`router`] picks a route,
//!   [`limits`] keeps rate-limit buckets, [`connections`] bounds open
//!   connections and tunnels, [`headers`] holds header rules.
//! - [`generation`]: the state one read of `routes.yaml` builds, swapped
//!   whole on reload; [`revocations`] follows revocations; [`settings`]
//!   layers the environment and flags over the file.
//! - [`config`] is the `gateway-config` crate (the routes file).

pub use gateway_config as config;

pub mod auth;
pub mod connections;
pub mod edge;
pub mod edit;
pub mod generation;
pub mod headers;
pub mod limits;
pub mod metrics;
pub mod notify;
pub mod path;
pub mod refusal;
pub mod request;
pub mod response;
pub mod revocations;
pub mod router;
pub mod settings;

pub use generation::{Gateway, Generation, ReloadError, Start};

/// Property tests: the routes file, arbitrary or cut short, against the
/// loader and the generation built from it.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    /// Values chosen to sit on and beyond every bound, and beyond what the
    /// types can hold.
    const DURATIONS: &[&str] = &[
        "0ms",
        "1ms",
        "250ms",
        "2s",
        "59m",
        "1h",
        "24h",
        "1000h",
        "8784h",
        "8785h",
        "5000000000h",
        "18446744073709551615s",
        "18446744073709551616ms",
        "1d",
        "-1s",
        "",
    ];
    const COUNTS: &[&str] = &[
        "0",
        "1",
        "7",
        "1000",
        "1000000",
        "1000001",
        "4000000000",
        "4294967296",
        "18446744073709551615",
        "-1",
        "1.5",
        "\"x\"",
    ];
    const SIZES: &[&str] = &[
        "0",
        "1KiB",
        "16KiB",
        "1MiB",
        "1GiB",
        "2GiB",
        "17179869184GiB",
        "18446744073709551615",
        "1TiB",
    ];
    const PREFIXES: &[&str] = &["/", "/api", "/api/x", "/api/x/y", "api", "/a//b", "/%2e"];

    /// A routes file built from `choices`: every key the schema has, each
    /// present or not, with values from the lists above.
    fn routes_file(choices: &[u16]) -> String {
        let mut at = 0;
        let mut pick = |n: usize| {
            let c = choices.get(at).copied().unwrap_or(0) as usize;
            at += 1;
            c % n
        };
        let mut out = String::new();
        let maybe = |out: &mut String, pick: &mut dyn FnMut(usize) -> usize, line: String| {
            if pick(3) != 0 {
                out.push_str(&line);
            }
        };
        // Each key present or not, with a value from `values`.
        let keys = |out: &mut String,
                    pick: &mut dyn FnMut(usize) -> usize,
                    indent: &str,
                    keys: &[&str],
                    values: &[&str]| {
            for key in keys {
                let v = values[pick(values.len())];
                maybe(out, pick, format!("{indent}{key}: {v}\n"));
            }
        };
        out.push_str("server:\n");
        let server_durations = [
            "grace_period",
            "keepalive_timeout",
            "request_head_timeout",
            "request_body_timeout",
        ];
        keys(&mut out, &mut pick, "  ", &server_durations, DURATIONS);
        keys(
            &mut out,
            &mut pick,
            "  ",
            &["max_header_bytes", "max_body_bytes"],
            SIZES,
        );
        let server_counts = [
            "threads",
            "upstream_keepalive_pool",
            "max_connections",
            "max_connections_per_ip",
            "max_websockets_per_user",
        ];
        keys(&mut out, &mut pick, "  ", &server_counts, COUNTS);
        out.push_str("auth:\n  verify_url: http://127.0.0.1:9/api/verify\n");
        let auth_durations = ["timeout", "cache_ttl", "negative_ttl"];
        keys(&mut out, &mut pick, "  ", &auth_durations, DURATIONS);
        let auth_counts = ["cache_capacity", "max_in_flight"];
        keys(&mut out, &mut pick, "  ", &auth_counts, COUNTS);
        out.push_str("upstreams:\n  a:\n    servers: [\"127.0.0.1:9\"]\n");
        let timeouts = [
            "connect_timeout",
            "read_timeout",
            "write_timeout",
            "idle_timeout",
        ];
        keys(&mut out, &mut pick, "    ", &timeouts, DURATIONS);
        let interval = DURATIONS[pick(DURATIONS.len())];
        maybe(
            &mut out,
            &mut pick,
            format!("    health_check: {{type: tcp, interval: {interval}}}\n"),
        );
        out.push_str("routes:\n");
        for _ in 0..1 + pick(4) {
            let prefix = PREFIXES[pick(PREFIXES.len())];
            let access = ["public", "protected"][pick(2)];
            out.push_str(&format!(
                "  - prefix: {prefix}\n    upstream: a\n    access: {access}\n"
            ));
            let v = DURATIONS[pick(DURATIONS.len())];
            maybe(&mut out, &mut pick, format!("    stale_if_error: {v}\n"));
            let v = SIZES[pick(SIZES.len())];
            maybe(&mut out, &mut pick, format!("    max_body_bytes: {v}\n"));
            for scope in ["per_ip", "per_user", "route"] {
                let (requests, per, burst) = (
                    COUNTS[pick(COUNTS.len())],
                    DURATIONS[pick(DURATIONS.len())],
                    COUNTS[pick(COUNTS.len())],
                );
                maybe(
                    &mut out,
                    &mut pick,
                    format!(
                        "    rate_limit: {{{scope}: {{requests: {requests}, per: {per}, burst: {burst}}}}}\n"
                    ),
                );
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::default())]

        /// Whatever a routes file holds, checking it never panics, and
        /// whatever checking accepts builds a generation without a panic.
        #[test]
        fn arbitrary_routes_files_never_panic_check_or_build(
            choices in proptest::collection::vec(any::<u16>(), 128),
            cut in any::<Option<u16>>(),
        ) {
            let mut source = routes_file(&choices);
            if let Some(cut) = cut {
                // A file cut short anywhere, as a half-written one is.
                let mut at = usize::from(cut) % (source.len() + 1);
                while !source.is_char_boundary(at) {
                    at -= 1;
                }
                source.truncate(at);
            }
            if let Ok(config) = crate::config::Config::parse(&source) {
                let _ = config.shadowing();
                let built = crate::Generation::build(config, None, &crate::Start { secret: None, revocable: true });
                prop_assert!(built.is_ok(), "{source}\n{:?}", built.err());
            }
        }

        /// Arbitrary bytes, within the size bound, never panic the check.
        #[test]
        fn arbitrary_text_never_panics_check(source in "(?s).{0,400}") {
            let _ = crate::config::Config::parse(&source);
        }
    }
}
