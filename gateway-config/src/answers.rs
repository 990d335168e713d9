//! Routes the gateway answers itself: `redirect` and `respond`.

use serde::Deserialize;

/// `redirect: {to, status, keep_path}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Redirect {
    /// An absolute URL (`https://new.example.com/docs`) or path (`/docs`).
    pub to: String,
    /// 301, 302, 303, 307 or 308.
    #[serde(default = "moved")]
    pub status: u16,
    /// Whether the part of the path below the route's prefix, and the
    /// query, are appended to `to` (`/old/a?b=1` → `{to}/a?b=1`); by
    /// default both are dropped.
    #[serde(default)]
    pub keep_path: bool,
}

/// `respond: {status, body, content_type}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Respond {
    pub status: u16,
    #[serde(default)]
    pub body: String,
    #[serde(default = "text")]
    pub content_type: String,
}

/// Bytes of a fixed answer's body.
pub const MAX_BODY: usize = 64 * 1024;
/// Bytes of a redirect's target.
pub const MAX_TARGET: usize = 2048;

fn moved() -> u16 {
    301
}
fn text() -> String {
    "text/plain; charset=utf-8".into()
}

pub(crate) fn redirect_problems(redirect: &Redirect) -> Vec<(String, String)> {
    let mut found = Vec::new();
    if ![301, 302, 303, 307, 308].contains(&redirect.status) {
        found.push((
            "status".into(),
            format!(
                "{} is not a redirect status: use 301, 302, 303, 307 or 308",
                redirect.status
            ),
        ));
    }
    let to = redirect.to.as_str();
    let absolute = to.starts_with("https://") || to.starts_with("http://");
    let path = to.starts_with('/') && !to.starts_with("//") && !to.starts_with("/\\");
    let parsed = to.parse::<http::Uri>();
    let whole = match &parsed {
        Ok(uri) if absolute => uri.host().is_some_and(|h| !h.is_empty()) && uri.query().is_none(),
        Ok(uri) => path && uri.query().is_none(),
        Err(_) => false,
    };
    if to.len() > MAX_TARGET || !whole || to.contains('#') {
        found.push((
            "to".into(),
            format!(
                "{to:?} must be an http(s) URL with a host, or a path starting with a single /, without query or fragment, at most {MAX_TARGET} bytes"
            ),
        ));
    }
    found
}

pub(crate) fn respond_problems(respond: &Respond) -> Vec<(String, String)> {
    let mut found = Vec::new();
    if !(200..=599).contains(&respond.status) {
        found.push((
            "status".into(),
            format!("{} must be between 200 and 599", respond.status),
        ));
    } else if matches!(respond.status, 204 | 304) && !respond.body.is_empty() {
        found.push((
            "body".into(),
            format!("a {} answer has no body", respond.status),
        ));
    }
    if respond.body.len() > MAX_BODY {
        found.push((
            "body".into(),
            format!(
                "is {} bytes; at most {MAX_BODY} are allowed",
                respond.body.len()
            ),
        ));
    }
    if respond.content_type.len() > 256
        || http::HeaderValue::from_str(&respond.content_type).is_err()
    {
        found.push((
            "content_type".into(),
            "must be printable text without line breaks, at most 256 bytes".into(),
        ));
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redirect(to: &str, status: u16) -> Redirect {
        Redirect {
            to: to.into(),
            status,
            keep_path: false,
        }
    }

    #[test]
    fn redirect_targets_and_statuses() {
        for ok in [
            "https://example.com",
            "https://example.com/docs",
            "http://a:8080/x",
            "/docs",
            "/",
        ] {
            assert!(redirect_problems(&redirect(ok, 308)).is_empty(), "{ok}");
        }
        for bad in [
            "",
            "docs",
            "//evil.com/x",
            "/\\evil.com",
            "javascript:alert(1)",
            "https://",
            "https://a.com/x?y=1",
            "/x#y",
            "ftp://a.com",
            "/a b",
            "/a\r\nSet-Cookie: x",
        ] {
            assert!(
                !redirect_problems(&redirect(bad, 301)).is_empty(),
                "{bad:?} accepted"
            );
        }
        assert_eq!(redirect_problems(&redirect("/x", 200)).len(), 1);
    }

    #[test]
    fn fixed_answers() {
        let ok = Respond {
            status: 503,
            body: "down for maintenance".into(),
            content_type: text(),
        };
        assert!(respond_problems(&ok).is_empty());
        for (status, body) in [(101, ""), (600, ""), (204, "x")] {
            let bad = Respond {
                status,
                body: body.into(),
                content_type: text(),
            };
            assert!(!respond_problems(&bad).is_empty(), "{status}");
        }
    }
}
