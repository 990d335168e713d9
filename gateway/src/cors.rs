//! Cross-origin calls (CORS), decided in plain code.
//!
//! On a route with `cors`, the gateway owns the answer to browsers: a
//! preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`)
//! is answered here, before any credential is asked for and without
//! reaching the upstream; every other response gets `Vary: Origin`, and the
//! `Access-Control-*` headers only when the origin is allowed. The
//! upstream's own `Access-Control-*` headers are dropped so that the route's
//! policy is the only one a browser sees.

use crate::config::cors::Cors;
use crate::edit::Edit;
use crate::refusal::{Answer, Refusal};
use http::{HeaderMap, HeaderName, HeaderValue, Method};

/// Request headers a page may always send: the CORS-safelisted ones, and
/// those every call to a protected route needs.
const ALWAYS_ALLOWED: [&str; 6] = [
    "accept",
    "accept-language",
    "content-language",
    "content-type",
    "authorization",
    "x-request-id",
];

/// The response headers a route's policy owns.
const OWNED: [HeaderName; 6] = [
    http::header::ACCESS_CONTROL_ALLOW_ORIGIN,
    http::header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
    http::header::ACCESS_CONTROL_EXPOSE_HEADERS,
    http::header::ACCESS_CONTROL_ALLOW_METHODS,
    http::header::ACCESS_CONTROL_ALLOW_HEADERS,
    http::header::ACCESS_CONTROL_MAX_AGE,
];

/// A route's `cors`, compiled once per generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// `None` for `*`.
    origins: Option<Vec<String>>,
    methods: Vec<String>,
    headers: Vec<String>,
    allow_methods: String,
    allow_headers: String,
    expose: Option<String>,
    max_age: String,
    credentials: bool,
}

impl Policy {
    pub fn new(cors: &Cors) -> Policy {
        let methods: Vec<String> = cors.methods.iter().map(|m| m.0.clone()).collect();
        let mut headers: Vec<String> = ALWAYS_ALLOWED.iter().map(|h| (*h).to_owned()).collect();
        for h in &cors.headers {
            let h = h.to_ascii_lowercase();
            if !headers.contains(&h) {
                headers.push(h);
            }
        }
        let any = cors.origins.iter().any(|o| o == "*");
        Policy {
            origins: (!any).then(|| cors.origins.clone()),
            allow_methods: methods.join(", "),
            allow_headers: headers.join(", "),
            methods,
            headers,
            expose: (!cors.expose_headers.is_empty()).then(|| cors.expose_headers.join(", ")),
            max_age: cors.max_age.0.as_secs().to_string(),
            credentials: cors.credentials,
        }
    }

    /// The one `Origin` of a request, when this policy allows it.
    fn allowed<'h>(&self, headers: &'h HeaderMap) -> Option<&'h str> {
        let mut values = headers.get_all(http::header::ORIGIN).iter();
        let origin = values.next()?.to_str().ok()?;
        if values.next().is_some() {
            return None;
        }
        match &self.origins {
            None => Some(origin),
            Some(list) => list.iter().any(|o| o == origin).then_some(origin),
        }
    }

    /// `Access-Control-Allow-Origin`'s value for an allowed origin.
    fn allow_origin(&self, origin: &str) -> String {
        if self.origins.is_none() {
            "*".into()
        } else {
            origin.into()
        }
    }
}

/// The method a preflight asks about: `OPTIONS` with `Origin` and
/// `Access-Control-Request-Method`. `None` for any other request.
pub fn requested_method<'h>(method: &Method, headers: &'h HeaderMap) -> Option<&'h str> {
    if method != Method::OPTIONS || !headers.contains_key(http::header::ORIGIN) {
        return None;
    }
    headers
        .get(http::header::ACCESS_CONTROL_REQUEST_METHOD)?
        .to_str()
        .ok()
        .filter(|m| Method::from_bytes(m.as_bytes()).is_ok())
}

/// The answer to a preflight on a route with `policy`: 204 with what the
/// page may do, or a refusal when its origin, method or headers are not
/// allowed (with no CORS header, so the browser stops there).
pub fn preflight(policy: &Policy, headers: &HeaderMap) -> Result<Answer, Refusal> {
    let origin = policy
        .allowed(headers)
        .ok_or(Refusal::CorsRefused("this origin may not call this route"))?;
    let method = requested_method(&Method::OPTIONS, headers).unwrap_or("");
    let simple = matches!(method, "GET" | "HEAD" | "POST");
    if !simple && !policy.methods.iter().any(|m| m == method) {
        return Err(Refusal::CorsRefused(
            "this method is not allowed from other origins",
        ));
    }
    let requested = headers
        .get_all(http::header::ACCESS_CONTROL_REQUEST_HEADERS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|h| h.trim().to_ascii_lowercase())
        .filter(|h| !h.is_empty());
    for header in requested {
        if !policy.headers.contains(&header) {
            return Err(Refusal::CorsRefused(
                "a requested header is not allowed from other origins",
            ));
        }
    }
    let mut answer = vec![
        ("access-control-allow-origin", policy.allow_origin(origin)),
        ("access-control-allow-methods", policy.allow_methods.clone()),
        ("access-control-allow-headers", policy.allow_headers.clone()),
        ("access-control-max-age", policy.max_age.clone()),
    ];
    if policy.credentials {
        answer.push(("access-control-allow-credentials", "true".into()));
    }
    answer.push((
        "vary",
        "Origin, Access-Control-Request-Method, Access-Control-Request-Headers".into(),
    ));
    // A 204 has no body and no Content-Length (RFC 9110 §8.6).
    Ok(Answer {
        status: 204,
        headers: answer,
        body: String::new(),
    })
}

/// The CORS edits on a response with `response` headers (the upstream's or
/// the gateway's own) to a request with `request` headers.
pub fn response_edits(policy: &Policy, request: &HeaderMap, response: &HeaderMap) -> Vec<Edit> {
    let mut edits: Vec<Edit> = OWNED
        .iter()
        .filter(|name| response.contains_key(*name))
        .cloned()
        .map(Edit::Remove)
        .collect();
    edits.extend(crate::headers::vary(response, "Origin"));
    let Some(origin) = policy.allowed(request) else {
        return edits;
    };
    if let Ok(value) = HeaderValue::from_str(&policy.allow_origin(origin)) {
        edits.push(Edit::Set("access-control-allow-origin", value));
    }
    if policy.credentials {
        edits.push(Edit::set_static("access-control-allow-credentials", "true"));
    }
    if let Some(expose) = policy
        .expose
        .as_ref()
        .and_then(|e| HeaderValue::from_str(e).ok())
    {
        edits.push(Edit::Set("access-control-expose-headers", expose));
    }
    edits
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Dur;
    use crate::config::MethodName;
    use crate::request::header_map;
    use std::time::Duration;

    fn policy(origins: &[&str], credentials: bool) -> Policy {
        Policy::new(&Cors {
            origins: origins.iter().map(|o| (*o).to_owned()).collect(),
            methods: ["GET", "POST", "DELETE"]
                .map(|m| MethodName(m.into()))
                .to_vec(),
            headers: vec!["X-Trace".into()],
            expose_headers: vec!["x-request-id".into()],
            max_age: Dur(Duration::from_secs(600)),
            credentials,
        })
    }

    fn header<'a>(answer: &'a Answer, name: &str) -> Option<&'a str> {
        answer
            .headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn preflights_are_answered_for_allowed_origins_methods_and_headers() {
        let p = policy(&["https://app.example.com"], true);
        let asked = |origin: &str, method: &str, hdrs: &str| {
            let mut pairs = vec![
                ("origin", origin),
                ("access-control-request-method", method),
            ];
            if !hdrs.is_empty() {
                pairs.push(("access-control-request-headers", hdrs));
            }
            preflight(&p, &header_map(&pairs))
        };
        let ok = asked(
            "https://app.example.com",
            "DELETE",
            "authorization, X-Trace",
        )
        .expect("allowed");
        assert_eq!(ok.status, 204);
        assert_eq!(
            header(&ok, "access-control-allow-origin"),
            Some("https://app.example.com")
        );
        assert_eq!(
            header(&ok, "access-control-allow-credentials"),
            Some("true")
        );
        assert_eq!(header(&ok, "access-control-max-age"), Some("600"));
        assert!(header(&ok, "access-control-allow-methods").is_some_and(|m| m.contains("DELETE")));
        assert!(header(&ok, "vary").is_some_and(|v| v.starts_with("Origin")));
        let refused = [
            asked("https://evil.example.com", "GET", ""),
            asked("https://app.example.com.evil.com", "GET", ""),
            asked("https://app.example.com", "PUT", ""),
            asked("https://app.example.com", "GET", "x-other"),
        ];
        for r in refused {
            let refusal = r.expect_err("refused");
            assert_eq!(refusal.status(), 403);
        }
    }

    #[test]
    fn responses_carry_cors_headers_only_for_allowed_origins() {
        let p = policy(&["https://app.example.com"], false);
        let find = |edits: &[Edit], name: &str| {
            edits.iter().find_map(|e| match e {
                Edit::Set(n, v) if *n == name => Some(v.to_str().unwrap_or("").to_owned()),
                _ => None,
            })
        };
        let upstream = header_map(&[("access-control-allow-origin", "*")]);
        let allowed = response_edits(
            &p,
            &header_map(&[("origin", "https://app.example.com")]),
            &upstream,
        );
        assert_eq!(
            find(&allowed, "access-control-allow-origin").as_deref(),
            Some("https://app.example.com")
        );
        assert_eq!(
            find(&allowed, "access-control-expose-headers").as_deref(),
            Some("x-request-id")
        );
        assert_eq!(find(&allowed, "access-control-allow-credentials"), None);
        for headers in [
            header_map(&[("origin", "https://evil.example.com")]),
            header_map::<&str>(&[]),
            header_map(&[
                ("origin", "https://app.example.com"),
                ("origin", "https://app.example.com"),
            ]),
        ] {
            let edits = response_edits(&p, &headers, &upstream);
            assert_eq!(
                find(&edits, "access-control-allow-origin"),
                None,
                "{headers:?}"
            );
            assert!(edits.contains(&Edit::Remove(http::header::ACCESS_CONTROL_ALLOW_ORIGIN)));
            assert!(edits.iter().any(
                |e| matches!(e, Edit::Append(n, v) if n == http::header::VARY && v == "Origin")
            ));
            let varied = header_map(&[("vary", "accept-encoding, origin")]);
            assert!(
                !response_edits(&p, &headers, &varied)
                    .iter()
                    .any(|e| matches!(e, Edit::Append(..)))
            );
        }
        let any = policy(&["*"], false);
        let edits = response_edits(
            &any,
            &header_map(&[("origin", "https://x.test")]),
            &upstream,
        );
        assert_eq!(
            find(&edits, "access-control-allow-origin").as_deref(),
            Some("*")
        );
    }

    #[test]
    fn only_options_with_origin_and_a_method_is_a_preflight() {
        let h = header_map(&[
            ("origin", "https://a.test"),
            ("access-control-request-method", "PUT"),
        ]);
        assert_eq!(requested_method(&Method::OPTIONS, &h), Some("PUT"));
        assert_eq!(requested_method(&Method::GET, &h), None);
        let no_origin = header_map(&[("access-control-request-method", "PUT")]);
        assert_eq!(requested_method(&Method::OPTIONS, &no_origin), None);
        let bad = header_map(&[
            ("origin", "https://a.test"),
            ("access-control-request-method", "P U"),
        ]);
        assert_eq!(requested_method(&Method::OPTIONS, &bad), None);
    }
}
