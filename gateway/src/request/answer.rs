//! Routes the gateway answers itself, once the request is admitted (so a
//! protected `respond` still asks for a token): `redirect` and `respond`.

use crate::refusal::Answer;
use crate::router::{Action, Route};

/// The answer of a `redirect` or `respond` route; `None` for a route with
/// an upstream.
pub fn fixed(route: &Route, path: &str, query: Option<&str>) -> Option<Answer> {
    match &route.action {
        Action::Upstream(_) => None,
        Action::Redirect(redirect) => {
            let mut location = redirect.to.clone();
            if redirect.keep_path {
                // A normalised path has no empty segment, and `to` never
                // starts with `//`: the result stays on the host `to` names.
                let suffix = route.suffix(path);
                if !suffix.is_empty() {
                    location.truncate(location.trim_end_matches('/').len());
                    location.push_str(suffix);
                }
                if let Some(query) = query {
                    location.push('?');
                    location.push_str(query);
                }
            }
            Some(Answer {
                status: redirect.status,
                headers: vec![("location", location), ("content-length", "0".into())],
                body: String::new(),
            })
        }
        Action::Respond(respond) => {
            let mut headers = vec![("content-type", respond.content_type.clone())];
            // A 204 has no body and no Content-Length (RFC 9110 §8.6).
            if respond.status != 204 {
                headers.push(("content-length", respond.body.len().to_string()));
            }
            Some(Answer {
                status: respond.status,
                headers,
                body: respond.body.clone(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::router::{Lookup, RouteTable};

    const ROUTES: &str = r#"
auth: { verify_url: "http://127.0.0.1:9/api/verify" }
upstreams:
  a: { servers: ["127.0.0.1:1"] }
routes:
  - { prefix: /old, access: public, redirect: { to: "https://new.example.com/docs", status: 308, keep_path: true } }
  - { prefix: /moved, access: public, redirect: { to: "/here" } }
  - { prefix: /, access: public, methods: [GET], redirect: { to: "https://www.example.com/", status: 302, keep_path: true } }
  - { prefix: /down, access: public, respond: { status: 503, body: "back soon", content_type: "text/plain" } }
  - { prefix: /api, upstream: a, access: public }
"#;

    fn answer(path: &str, query: Option<&str>) -> Option<(u16, String)> {
        let table = RouteTable::new(&Config::parse(ROUTES).expect("routes"));
        let Lookup::Found(route) = table.find(path, "GET") else {
            panic!("{path} not routed");
        };
        let answer = fixed(route, path, query)?;
        let location = answer
            .headers
            .iter()
            .find(|(n, _)| *n == "location")
            .map_or(answer.body.clone(), |(_, v)| v.clone());
        Some((answer.status, location))
    }

    #[test]
    fn redirects_keep_or_drop_the_path_and_query_as_configured() {
        let cases = [
            ("/old", None, (308, "https://new.example.com/docs")),
            (
                "/old/a/b",
                Some("x=1"),
                (308, "https://new.example.com/docs/a/b?x=1"),
            ),
            ("/old/", None, (308, "https://new.example.com/docs/")),
            ("/moved/a", Some("x=1"), (301, "/here")),
            ("/", None, (302, "https://www.example.com/")),
            ("/page", Some("q"), (302, "https://www.example.com/page?q")),
            ("/down/x", None, (503, "back soon")),
        ];
        for (path, query, (status, location)) in cases {
            assert_eq!(
                answer(path, query),
                Some((status, location.to_owned())),
                "{path} {query:?}"
            );
        }
        assert_eq!(answer("/api/x", None), None);
    }
}
