//! The route table: longest-prefix match on whole path segments.
//!
//! Lookup walks up the normalised path one segment at a time and probes a
//! hash map at each step, so its cost grows with the depth of the path, not
//! with the number of routes.

use crate::config::answers::{Redirect, Respond};
use crate::config::{Access, Config, HostPattern, RouteSettings};
use std::collections::HashMap;
use std::sync::Arc;

/// What a route does with a request it admits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Proxied to the named upstream.
    Upstream(String),
    /// Answered with a redirect.
    Redirect(Redirect),
    /// Answered with a fixed response.
    Respond(Respond),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Position in `routes.yaml`, for logs and metrics.
    pub index: usize,
    pub prefix: String,
    /// The route's name in logs and metrics: its prefix, after its hosts
    /// when it has any (`api.example.com,api.example.org/v1`).
    pub label: String,
    pub action: Action,
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
    /// Response compression, when on.
    pub compression: Option<crate::compression::Policy>,
    /// The route's own header rules for the upstream request and the
    /// client's response.
    pub request_headers: crate::rules::Rules,
    pub response_headers: crate::rules::Rules,
    /// Cross-origin calls, when allowed.
    pub cors: Option<crate::cors::Policy>,
    /// This route's series of `portcullis_requests_total`.
    pub counts: crate::metrics::RequestCounts,
}

impl Route {
    fn new(index: usize, route: &RouteSettings, config: &Config) -> Route {
        let label = if route.hosts.is_empty() {
            route.prefix.0.clone()
        } else {
            let hosts: Vec<String> = route.hosts.iter().map(HostPattern::text).collect();
            format!("{}{}", hosts.join(","), route.prefix.0)
        };
        let action = match (&route.upstream, &route.redirect, &route.respond) {
            (_, Some(redirect), _) => Action::Redirect(redirect.clone()),
            (_, _, Some(respond)) => Action::Respond(respond.clone()),
            (upstream, _, _) => Action::Upstream(upstream.clone().unwrap_or_default()),
        };
        let protected = route.access == Access::Protected;
        Route {
            index,
            prefix: route.prefix.0.clone(),
            action,
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
                .and_then(|limits| crate::limits::RouteLimits::new(limits, &label, index))
                .map(Arc::new),
            stale_if_error: route.stale_if_error.map(|d| d.0),
            compression: route
                .upstream
                .as_ref()
                .and_then(|_| {
                    crate::config::compression::effective(
                        &config.server.compression,
                        route.compression.as_ref(),
                        protected,
                    )
                })
                .map(|settings| crate::compression::Policy::new(&settings)),
            request_headers: crate::rules::Rules::new(&route.request_headers),
            response_headers: crate::rules::Rules::new(&route.response_headers),
            cors: route.cors.as_ref().map(crate::cors::Policy::new),
            counts: crate::metrics::RequestCounts::new(&label),
            label,
        }
    }

    /// A public route to `upstream` with every setting at its default, for
    /// the tests of the decisions.
    #[cfg(test)]
    pub fn test(prefix: &str, upstream: &str) -> Route {
        Route {
            index: 0,
            prefix: prefix.into(),
            label: prefix.into(),
            action: Action::Upstream(upstream.into()),
            access: Access::Public,
            roles: Vec::new(),
            rewrite: None,
            methods: Vec::new(),
            forward_authorization: false,
            websocket: false,
            max_body_bytes: 0,
            limits: None,
            stale_if_error: None,
            compression: None,
            request_headers: Default::default(),
            response_headers: Default::default(),
            cors: None,
            counts: crate::metrics::RequestCounts::new(prefix),
        }
    }

    /// The upstream this route proxies to, if it does.
    pub fn upstream(&self) -> Option<&str> {
        match &self.action {
            Action::Upstream(name) => Some(name),
            _ => None,
        }
    }

    fn allows(&self, method: &str) -> bool {
        self.methods.is_empty() || self.methods.iter().any(|m| m == method)
    }

    /// Whether `role` (one role, or several joined by `,` from a token
    /// that lists them) may use this route.
    pub fn admits(&self, role: &str) -> bool {
        self.roles.is_empty()
            || role
                .split(',')
                .any(|one| self.roles.iter().any(|r| r == one))
    }

    /// The part of a normalised `path` this route matched below its
    /// prefix (`/a/b` for `/old/a/b` on `/old`; empty at the prefix).
    pub fn suffix<'p>(&self, path: &'p str) -> &'p str {
        if self.prefix == "/" {
            path
        } else {
            &path[self.prefix.len().min(path.len())..]
        }
    }

    /// The path to send upstream for the normalised `path` this route
    /// matched: the prefix replaced by `rewrite`, when set.
    pub fn upstream_path(&self, path: &str) -> String {
        let Some(rewrite) = &self.rewrite else {
            return path.to_owned();
        };
        let rest = self.suffix(path);
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
#[must_use]
pub enum Lookup<'a> {
    Found(&'a Arc<Route>),
    /// The prefix exists but not for this method; the value is for `Allow`.
    MethodNotAllowed(String),
    NotFound,
}

impl Lookup<'_> {
    pub fn is_found(&self) -> bool {
        matches!(self, Lookup::Found(_))
    }
}

/// The routes of one host (or of any host), by prefix.
#[derive(Debug, Default)]
struct Prefixes {
    by_prefix: HashMap<String, Vec<Arc<Route>>>,
}

impl Prefixes {
    fn find(&self, path: &str, method: &str) -> Lookup<'_> {
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

/// The route table: routes of exact hosts, of wildcard hosts, and of any
/// host. A request is looked up in the most specific group that has a
/// route for its path: its exact host, then the wildcards from the longest
/// suffix, then the routes without `hosts`.
#[derive(Debug, Default)]
pub struct RouteTable {
    any: Prefixes,
    exact: HashMap<String, Prefixes>,
    /// By suffix with its dot: `.example.com` for `*.example.com`.
    wildcard: HashMap<String, Prefixes>,
    len: usize,
}

impl RouteTable {
    pub fn new(config: &Config) -> Self {
        let mut table = RouteTable::default();
        for (index, settings) in config.routes.iter().enumerate() {
            let route = Arc::new(Route::new(index, settings, config));
            let mut groups: Vec<&mut Prefixes> = Vec::new();
            if settings.hosts.is_empty() {
                groups.push(&mut table.any);
            }
            let (exact, wildcard) = (&mut table.exact, &mut table.wildcard);
            let mut exact_names = Vec::new();
            let mut suffixes = Vec::new();
            for host in &settings.hosts {
                match host {
                    HostPattern::Exact(name) => exact_names.push(name.clone()),
                    HostPattern::Wildcard(suffix) => suffixes.push(suffix.clone()),
                }
            }
            for name in exact_names {
                exact.entry(name).or_default();
            }
            for suffix in suffixes {
                wildcard.entry(suffix).or_default();
            }
            for host in &settings.hosts {
                let group = match host {
                    HostPattern::Exact(name) => exact.get_mut(name),
                    HostPattern::Wildcard(suffix) => wildcard.get_mut(suffix),
                };
                if let Some(group) = group {
                    group
                        .by_prefix
                        .entry(route.prefix.clone())
                        .or_default()
                        .push(Arc::clone(&route));
                }
            }
            for group in groups {
                group
                    .by_prefix
                    .entry(route.prefix.clone())
                    .or_default()
                    .push(Arc::clone(&route));
            }
            table.len += 1;
        }
        table
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether any route names hosts (the request's host then matters).
    pub fn has_hosts(&self) -> bool {
        !self.exact.is_empty() || !self.wildcard.is_empty()
    }

    /// Whether every route names hosts: a request without a host has none.
    pub fn host_only(&self) -> bool {
        self.any.by_prefix.is_empty() && self.has_hosts()
    }

    /// Finds the route for a normalised `path` and an upper-case `method`
    /// among the routes serving any host.
    pub fn find(&self, path: &str, method: &str) -> Lookup<'_> {
        self.find_on(None, path, method)
    }

    /// Finds the route for a request to `host` (in normal form,
    /// [`crate::config::normal_host`]).
    pub fn find_on(&self, host: Option<&str>, path: &str, method: &str) -> Lookup<'_> {
        if let Some(host) = host.filter(|_| self.has_hosts()) {
            if let Some(group) = self.exact.get(host) {
                match group.find(path, method) {
                    Lookup::NotFound => {}
                    found => return found,
                }
            }
            let mut at = 0;
            while let Some(dot) = host[at..].find('.') {
                let suffix = &host[at + dot..];
                if let Some(group) = self.wildcard.get(suffix) {
                    match group.find(path, method) {
                        Lookup::NotFound => {}
                        found => return found,
                    }
                }
                at += dot + 1;
            }
        }
        self.any.find(path, method)
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
            Lookup::Found(route) => Some((
                route.prefix.clone(),
                route.upstream().unwrap_or_default().to_owned(),
            )),
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
    fn the_most_specific_host_with_a_route_for_the_path_wins() {
        let t = table(
            "  - {prefix: /, hosts: [api.example.com], upstream: a, access: public}\n  - {prefix: /v2, hosts: [\"*.example.com\"], upstream: b, access: public}\n  - {prefix: /v3, hosts: [\"*.eu.example.com\"], upstream: a, access: public}\n  - {prefix: /v3, hosts: [\"*.example.com\"], upstream: b, access: public}\n  - {prefix: /shared, upstream: b, access: public}\n  - {prefix: /only-get, hosts: [get.example.com], upstream: a, access: public, methods: [GET]}\n  - {prefix: /only-get, upstream: b, access: public}\n",
        );
        let cases = [
            (Some("api.example.com"), "/v2/x", Some(("/", "a"))),
            (Some("api.example.com"), "/shared", Some(("/", "a"))),
            (Some("x.example.com"), "/v2/x", Some(("/v2", "b"))),
            (Some("x.eu.example.com"), "/v3", Some(("/v3", "a"))),
            (Some("x.us.example.com"), "/v3", Some(("/v3", "b"))),
            (Some("x.example.com"), "/shared/1", Some(("/shared", "b"))),
            (Some("example.com"), "/v2", None),
            (Some("other.org"), "/shared", Some(("/shared", "b"))),
            (None, "/v2", None),
            (None, "/shared", Some(("/shared", "b"))),
        ];
        for (host, path, expected) in cases {
            let got = match t.find_on(host, path, "GET") {
                Lookup::Found(r) => Some((r.prefix.clone(), r.upstream().unwrap_or("").to_owned())),
                _ => None,
            };
            let expected = expected.map(|(p, u)| (p.to_owned(), u.to_owned()));
            assert_eq!(got, expected, "{host:?} {path}");
        }
        // A method the host's route refuses is refused there, not sent on
        // to the routes for any host.
        assert_eq!(
            t.find_on(Some("get.example.com"), "/only-get", "POST"),
            Lookup::MethodNotAllowed("GET, HEAD".into())
        );
        assert!(t.has_hosts() && !t.host_only());
        let named = table("  - {prefix: /, hosts: [a.example.com], upstream: a, access: public}\n");
        assert!(named.host_only());
        assert!(named.find_on(Some("a.example.com"), "/x", "GET").is_found());
        assert_eq!(named.find("/x", "GET"), Lookup::NotFound);
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
