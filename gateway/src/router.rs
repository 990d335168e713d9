//! The route table: longest-prefix match on whole path segments.
//!
//! Lookup walks up the normalised path one segment at a time and probes a
//! hash map at each step, so its cost grows with the depth of the path, not
//! with the number of routes.

use crate::config::{Access, Config};
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Position in `routes.yaml`, for logs and metrics.
    pub index: usize,
    pub prefix: String,
    pub upstream: String,
    pub access: Access,
    pub roles: Vec<String>,
    pub rewrite: Option<String>,
    /// Upper-case methods, HEAD included where GET is
    /// ([`crate::config::implied_methods`]); empty means any.
    pub methods: Vec<String>,
    pub forward_authorization: bool,
    pub websocket: bool,
    pub max_body_bytes: u64,
    /// The route's rate limits and their buckets, when it has any.
    pub limits: Option<Arc<crate::limits::RouteLimits>>,
    /// How long past its end a cached grant may serve while the verifier
    /// is unavailable.
    pub stale_if_error: Option<std::time::Duration>,
    /// This route's series of `portcullis_requests_total`.
    pub counts: crate::metrics::RequestCounts,
}

impl Route {
    fn allows(&self, method: &str) -> bool {
        self.methods.is_empty() || self.methods.iter().any(|m| m == method)
    }

    /// Whether `role` may use this route.
    pub fn admits(&self, role: &str) -> bool {
        self.roles.is_empty() || self.roles.iter().any(|r| r == role)
    }

    /// The path to send upstream for the normalised `path` this route
    /// matched: the prefix replaced by `rewrite`, when set.
    pub fn upstream_path(&self, path: &str) -> String {
        let Some(rewrite) = &self.rewrite else {
            return path.to_owned();
        };
        let rest = if self.prefix == "/" {
            path
        } else {
            &path[self.prefix.len().min(path.len())..]
        };
        let base = rewrite.trim_end_matches('/');
        let joined = format!(
            "{base}{}",
            if rest == "/" && base.is_empty() {
                ""
            } else {
                rest
            }
        );
        if joined.is_empty() {
            "/".into()
        } else {
            joined
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Lookup<'a> {
    Found(&'a Arc<Route>),
    /// The prefix exists but not for this method; the value is for `Allow`.
    MethodNotAllowed(String),
    NotFound,
}

#[derive(Debug, Default)]
pub struct RouteTable {
    by_prefix: HashMap<String, Vec<Arc<Route>>>,
}

impl RouteTable {
    pub fn new(config: &Config) -> Self {
        let mut by_prefix: HashMap<String, Vec<Arc<Route>>> = HashMap::new();
        for (index, route) in config.routes.iter().enumerate() {
            let compiled = Route {
                index,
                prefix: route.prefix.0.clone(),
                upstream: route.upstream.clone(),
                access: route.access,
                roles: route.roles.clone(),
                rewrite: route.rewrite.as_ref().map(|p| p.0.clone()),
                methods: crate::config::implied_methods(route.methods.iter().map(|m| m.0.as_str()))
                    .into_iter()
                    .map(String::from)
                    .collect(),
                forward_authorization: route.forward_authorization,
                websocket: route.websocket,
                max_body_bytes: config.body_limit(route),
                limits: route
                    .rate_limit
                    .as_ref()
                    .and_then(crate::limits::RouteLimits::new)
                    .map(Arc::new),
                stale_if_error: route.stale_if_error.map(|d| d.0),
                counts: crate::metrics::RequestCounts::new(&route.prefix.0),
            };
            by_prefix
                .entry(compiled.prefix.clone())
                .or_default()
                .push(Arc::new(compiled));
        }
        RouteTable { by_prefix }
    }

    pub fn len(&self) -> usize {
        self.by_prefix.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.by_prefix.is_empty()
    }

    /// Finds the route for a normalised `path` and an upper-case `method`.
    pub fn find(&self, path: &str, method: &str) -> Lookup<'_> {
        let mut candidate = path
            .strip_suffix('/')
            .filter(|p| !p.is_empty())
            .unwrap_or(path);
        loop {
            if let Some(routes) = self.by_prefix.get(candidate) {
                return match routes.iter().find(|r| r.allows(method)) {
                    Some(route) => Lookup::Found(route),
                    None => {
                        let mut allowed: Vec<&str> = routes
                            .iter()
                            .flat_map(|r| r.methods.iter().map(String::as_str))
                            .collect();
                        allowed.sort_unstable();
                        allowed.dedup();
                        Lookup::MethodNotAllowed(allowed.join(", "))
                    }
                };
            }
            if candidate == "/" {
                return Lookup::NotFound;
            }
            candidate = match candidate.rfind('/') {
                Some(0) | None => "/",
                Some(cut) => &candidate[..cut],
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(routes: &str) -> RouteTable {
        let source = format!(
            "auth:\n  verify_url: http://127.0.0.1:1/api/verify\nupstreams:\n  a:\n    servers: [\"127.0.0.1:1\"]\n  b:\n    servers: [\"127.0.0.1:2\"]\nroutes:\n{routes}"
        );
        RouteTable::new(&crate::config::Config::parse(&source).expect("valid"))
    }

    fn found(table: &RouteTable, path: &str, method: &str) -> Option<(String, String)> {
        match table.find(path, method) {
            Lookup::Found(route) => Some((route.prefix.clone(), route.upstream.clone())),
            _ => None,
        }
    }

    #[test]
    fn longest_prefix_on_segment_boundaries() {
        let t = table(
            "  - {prefix: /api/auth, upstream: a, access: public}\n  - {prefix: /api/auth/me, upstream: b, access: protected}\n  - {prefix: /api/tasks, upstream: b, access: protected}\n",
        );
        let cases = [
            ("/api/auth/login", Some("/api/auth")),
            ("/api/auth", Some("/api/auth")),
            ("/api/auth/", Some("/api/auth")),
            ("/api/auth/me", Some("/api/auth/me")),
            ("/api/auth/me/", Some("/api/auth/me")),
            ("/api/auth/meme", Some("/api/auth")),
            ("/api/tasks", Some("/api/tasks")),
            ("/api/tasks/7", Some("/api/tasks")),
            ("/api/tasksx", None),
            ("/api/tasks;x", None),
            ("/api", None),
            ("/", None),
            ("/other", None),
        ];
        for (path, prefix) in cases {
            assert_eq!(
                found(&t, path, "GET").map(|(p, _)| p).as_deref(),
                prefix,
                "{path}"
            );
        }
    }

    #[test]
    fn root_prefix_catches_everything_else() {
        let t = table(
            "  - {prefix: /, upstream: a, access: public}\n  - {prefix: /api, upstream: b, access: protected}\n",
        );
        assert_eq!(
            found(&t, "/index.html", "GET").map(|(p, _)| p).as_deref(),
            Some("/")
        );
        assert_eq!(found(&t, "/", "GET").map(|(p, _)| p).as_deref(), Some("/"));
        assert_eq!(
            found(&t, "/api/x", "GET").map(|(p, _)| p).as_deref(),
            Some("/api")
        );
    }

    #[test]
    fn methods_select_between_routes_of_one_prefix() {
        let t = table(
            "  - {prefix: /api/stock, upstream: a, access: public, methods: [GET]}\n  - {prefix: /api/stock, upstream: b, access: protected, methods: [PUT, PATCH]}\n",
        );
        assert_eq!(
            found(&t, "/api/stock/x", "GET").map(|(_, u)| u).as_deref(),
            Some("a")
        );
        assert_eq!(
            found(&t, "/api/stock/x", "HEAD").map(|(_, u)| u).as_deref(),
            Some("a")
        );
        assert_eq!(
            found(&t, "/api/stock/x", "PUT").map(|(_, u)| u).as_deref(),
            Some("b")
        );
        assert_eq!(
            t.find("/api/stock", "DELETE"),
            Lookup::MethodNotAllowed("GET, HEAD, PATCH, PUT".into())
        );
    }

    #[test]
    fn rewrites_replace_the_matched_prefix() {
        let t = table(
            "  - {prefix: /api/auth, upstream: a, access: public, rewrite: /api}\n  - {prefix: /api/auth/me, upstream: a, access: protected, rewrite: /api/me}\n  - {prefix: /static, upstream: b, access: public, rewrite: /}\n  - {prefix: /api/tasks, upstream: b, access: protected}\n",
        );
        let cases = [
            ("/api/auth/login", "/api/login"),
            ("/api/auth", "/api"),
            ("/api/auth/", "/api/"),
            ("/api/auth/me", "/api/me"),
            ("/static/app.js", "/app.js"),
            ("/static", "/"),
            ("/static/", "/"),
            ("/api/tasks/7", "/api/tasks/7"),
        ];
        for (path, expected) in cases {
            let Lookup::Found(route) = t.find(path, "GET") else {
                panic!("{path} not routed");
            };
            assert_eq!(route.upstream_path(path), expected, "{path}");
        }
    }
}

/// Property tests: the route found is the longest prefix of whole segments,
/// never a partial segment, whatever the table.
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn segments() -> impl Strategy<Value = Vec<&'static str>> {
        prop::collection::vec(prop::sample::select(vec!["a", "b", "ab", "abc"]), 0..5)
    }

    proptest! {
        #![proptest_config(ProptestConfig::default())]

        #[test]
        fn longest_whole_segment_prefix_wins(
            prefixes in prop::collection::btree_set(segments(), 1..6),
            path in segments(),
            trailing in any::<bool>(),
        ) {
            let prefixes: Vec<String> =
                prefixes.iter().map(|s| format!("/{}", s.join("/"))).collect();
            let mut source = String::from(
                "auth: { verify_url: \"http://127.0.0.1:9/api/verify\" }\nupstreams:\n  a: { servers: [\"127.0.0.1:1\"] }\nroutes:\n",
            );
            for prefix in &prefixes {
                source.push_str(&format!("  - {{ prefix: \"{prefix}\", upstream: a, access: public }}\n"));
            }
            let table = RouteTable::new(&Config::parse(&source).expect("routes"));
            let mut path = format!("/{}", path.join("/"));
            if trailing && path != "/" {
                path.push('/');
            }
            let covers = |prefix: &str| {
                prefix == "/" || path == prefix || path.starts_with(&format!("{prefix}/"))
            };
            let expected = prefixes.iter().filter(|p| covers(p)).max_by_key(|p| p.len());
            match (table.find(&path, "GET"), expected) {
                (Lookup::Found(route), Some(prefix)) => prop_assert_eq!(&route.prefix, prefix, "{}", path),
                (Lookup::NotFound, None) => {}
                (got, want) => prop_assert!(false, "{path}: {got:?}, expected {want:?}"),
            }
        }
    }
}
