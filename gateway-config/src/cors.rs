//! `cors`: which other origins' pages may call a route from a browser.

use crate::values::{Dur, MethodName};
use serde::Deserialize;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cors {
    /// `https://app.example.com` (scheme, host and port only), or `*` for
    /// any origin when `credentials` is off.
    pub origins: Vec<String>,
    /// Methods a page may use (default GET, HEAD, POST).
    #[serde(default = "methods")]
    pub methods: Vec<MethodName>,
    /// Request headers a page may send beyond the always-allowed ones
    /// (`authorization`, `content-type`, …).
    #[serde(default)]
    pub headers: Vec<String>,
    /// Response headers a page may read beyond the always-readable ones.
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// How long a browser may keep a preflight's answer.
    #[serde(default = "max_age")]
    pub max_age: Dur,
    /// Whether pages may send cookies and read the answer to such requests.
    #[serde(default)]
    pub credentials: bool,
}

/// Entries in each list.
pub const MAX_ENTRIES: usize = 64;

fn methods() -> Vec<MethodName> {
    ["GET", "HEAD", "POST"]
        .map(|m| MethodName(m.into()))
        .to_vec()
}
fn max_age() -> Dur {
    Dur(Duration::from_secs(600))
}

/// An origin in the form a browser sends it: lower-case scheme and host,
/// the port only when it is not the scheme's default.
pub fn origin_ok(origin: &str) -> bool {
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false;
    };
    if !matches!(scheme, "http" | "https") || rest.is_empty() || rest.contains('/') {
        return false;
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) if !rest.ends_with(']') => (host, Some(port)),
        _ => (rest, None),
    };
    let port_ok = port.is_none_or(|p| {
        p.parse::<u16>().is_ok_and(|n| n > 0)
            && !p.starts_with('0')
            && !matches!((scheme, p), ("http", "80") | ("https", "443"))
    });
    port_ok && crate::hosts::normal_host(host).is_some_and(|normal| normal == host)
}

pub(crate) fn problems(cors: &Cors) -> Vec<(String, String)> {
    let mut found = Vec::new();
    if cors.origins.is_empty() {
        found.push(("origins".into(), "needs at least one origin".into()));
    }
    for (key, len) in [
        ("origins", cors.origins.len()),
        ("methods", cors.methods.len()),
        ("headers", cors.headers.len()),
        ("expose_headers", cors.expose_headers.len()),
    ] {
        if len > MAX_ENTRIES {
            found.push((key.into(), format!("at most {MAX_ENTRIES} entries")));
        }
    }
    for (i, origin) in cors.origins.iter().enumerate() {
        if origin == "*" {
            if cors.credentials {
                found.push((
                    format!("origins[{i}]"),
                    "\"*\" cannot be used with credentials: true; list the origins".into(),
                ));
            }
            if cors.origins.len() > 1 {
                found.push((
                    format!("origins[{i}]"),
                    "\"*\" already allows every origin; list no others".into(),
                ));
            }
        } else if !origin_ok(origin) {
            found.push((
                format!("origins[{i}]"),
                format!(
                    "{origin:?} is not an origin as browsers send it: scheme://host[:port] in lower case, no path, no default port"
                ),
            ));
        }
    }
    for (key, list) in [
        ("headers", &cors.headers),
        ("expose_headers", &cors.expose_headers),
    ] {
        for (i, name) in list.iter().enumerate() {
            if name == "*" || http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                found.push((
                    format!("{key}[{i}]"),
                    format!("{name:?} is not a header name (\"*\" is not accepted: list them)"),
                ));
            }
        }
    }
    if cors.max_age.0 > Duration::from_secs(86_400) {
        found.push(("max_age".into(), "must be at most 24h".into()));
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_as_browsers_send_them() {
        for ok in [
            "https://app.example.com",
            "http://localhost:5173",
            "http://[::1]:8080",
            "http://127.0.0.1:8080",
        ] {
            assert!(origin_ok(ok), "{ok}");
        }
        for bad in [
            "app.example.com",
            "https://app.example.com/",
            "https://App.example.com",
            "https://app.example.com:443",
            "http://a:80",
            "null",
            "file://x",
            "https://a:0",
            "https://a:x",
            "https://",
            "https://a.com/path",
        ] {
            assert!(!origin_ok(bad), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_wildcard_with_credentials_is_refused() {
        let cors = Cors {
            origins: vec!["*".into()],
            methods: methods(),
            headers: vec![],
            expose_headers: vec![],
            max_age: max_age(),
            credentials: true,
        };
        assert_eq!(problems(&cors).len(), 1);
        assert!(
            problems(&Cors {
                credentials: false,
                ..cors
            })
            .is_empty()
        );
    }
}
