//! Checks that need the whole file, and every value's bounds: each problem
//! is reported with its key and line, all of them in one run.

use crate::header_rules::Side;
use crate::schema::*;
use crate::values::*;
use crate::yaml_lines::KeyLines;
use crate::{ConfigError, bounds, overlap};
use std::time::Duration;

impl Config {
    pub(crate) fn check(&self, lines: &KeyLines) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        let mut error = |path: String, message: String| {
            let line = lines.line(&path);
            errors.push(ConfigError {
                path,
                message,
                line,
            });
        };
        // `key` must lie within [min, max].
        fn within(
            error: &mut dyn FnMut(String, String),
            key: String,
            value: Duration,
            min: Duration,
            max: Duration,
        ) {
            if value < min || value > max {
                let message = if min.is_zero() {
                    format!("must be at most {}", Dur::text(max))
                } else {
                    format!("must be between {} and {}", Dur::text(min), Dur::text(max))
                };
                error(key, message);
            }
        }
        const MS: Duration = Duration::from_millis(1);
        const MINUTE: Duration = Duration::from_secs(60);
        const HOUR: Duration = Duration::from_secs(3600);
        const DAY: Duration = Duration::from_secs(86_400);
        const MAX_BODY: u64 = 1024 * 1024 * 1024;

        for (key, count, max) in [
            ("routes", self.routes.len(), bounds::ROUTES),
            ("upstreams", self.upstreams.len(), bounds::UPSTREAMS),
            (
                "server.trusted_proxies",
                self.server.trusted_proxies.len(),
                bounds::TRUSTED_PROXIES,
            ),
        ] {
            if count > max {
                error(
                    key.into(),
                    format!("has {count} entries; at most {max} are allowed"),
                );
            }
        }

        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            error(
                "listen".into(),
                format!("{:?} is not an IP:port address", self.listen),
            );
        }
        if let Some(metrics) = &self.server.metrics_listen
            && metrics.parse::<std::net::SocketAddr>().is_err()
        {
            error(
                "server.metrics_listen".into(),
                format!("{metrics:?} is not an IP:port address"),
            );
        }
        if let Some(admin) = &self.server.admin_listen
            && admin.parse::<std::net::SocketAddr>().is_err()
        {
            error(
                "server.admin_listen".into(),
                format!("{admin:?} is not an IP:port address"),
            );
        }
        if let Some(tls) = &self.tls {
            match tls.listen.parse::<std::net::SocketAddr>() {
                Err(_) => error(
                    "tls.listen".into(),
                    format!("{:?} is not an IP:port address", tls.listen),
                ),
                Ok(addr) if Some(addr) == self.listen.parse().ok() && addr.port() != 0 => error(
                    "tls.listen".into(),
                    "must differ from the plain listen address".into(),
                ),
                Ok(_) => {}
            }
            for (key, value) in [("cert", &tls.cert), ("key", &tls.key)] {
                if value.is_empty() {
                    error(format!("tls.{key}"), "needs a file path".into());
                }
            }
        }
        if let Some(threads) = self.server.threads
            && !(1..=512).contains(&threads)
        {
            error("server.threads".into(), "must be between 1 and 512".into());
        }
        if !(1024..=1024 * 1024).contains(&self.server.max_header_bytes.0) {
            error(
                "server.max_header_bytes".into(),
                "must be between 1KiB and 1MiB".into(),
            );
        }
        if self.server.max_body_bytes.0 > MAX_BODY {
            error(
                "server.max_body_bytes".into(),
                "must be at most 1GiB".into(),
            );
        }
        if self.server.upstream_keepalive_pool > 100_000 {
            error(
                "server.upstream_keepalive_pool".into(),
                "must be at most 100000".into(),
            );
        }
        within(
            &mut error,
            "server.grace_period".into(),
            self.server.grace_period.0,
            Duration::ZERO,
            HOUR,
        );
        within(
            &mut error,
            "server.request_head_timeout".into(),
            self.server.request_head_timeout.0,
            Duration::from_millis(100),
            HOUR,
        );
        within(
            &mut error,
            "server.request_body_timeout".into(),
            self.server.request_body_timeout.0,
            Duration::from_millis(100),
            HOUR,
        );
        for (key, value, max) in [
            ("max_connections", self.server.max_connections, 1_000_000),
            (
                "max_connections_per_ip",
                self.server.max_connections_per_ip,
                1_000_000,
            ),
            (
                "max_websockets_per_user",
                Some(self.server.max_websockets_per_user),
                100_000,
            ),
        ] {
            if value.is_some_and(|v| !(1..=max).contains(&v)) {
                error(
                    format!("server.{key}"),
                    format!("must be between 1 and {max}"),
                );
            }
        }
        within(
            &mut error,
            "server.keepalive_timeout".into(),
            self.server.keepalive_timeout.0,
            Duration::ZERO,
            HOUR,
        );

        let protected = self.routes.iter().any(|r| r.access == Access::Protected);
        match (&self.auth.mode, &self.auth.verify_url) {
            (AuthMode::Remote, None) if protected => error(
                "auth.verify_url".into(),
                "is required for protected routes in remote mode".into(),
            ),
            (AuthMode::Remote, Some(url))
                if !url.starts_with("http://") || url.parse::<http::Uri>().is_err() =>
            {
                error(
                    "auth.verify_url".into(),
                    format!("{url:?} must be an http:// URL"),
                );
            }
            _ => {}
        }
        for (key, message) in jwks_problems(&self.auth) {
            error(key, message);
        }
        for (key, message) in self.tracing.iter().flat_map(crate::traces::problems) {
            error(key, message);
        }
        within(
            &mut error,
            "auth.timeout".into(),
            self.auth.timeout.0,
            MS,
            MINUTE,
        );
        within(
            &mut error,
            "auth.cache_ttl".into(),
            self.auth.cache_ttl.0,
            Duration::ZERO,
            DAY,
        );
        within(
            &mut error,
            "auth.negative_ttl".into(),
            self.auth.negative_ttl.0,
            Duration::ZERO,
            HOUR,
        );
        within(
            &mut error,
            "auth.leeway".into(),
            self.auth.leeway.0,
            Duration::ZERO,
            5 * MINUTE,
        );
        if !(1..=10_000).contains(&self.auth.max_in_flight) {
            error(
                "auth.max_in_flight".into(),
                "must be between 1 and 10000".into(),
            );
        }
        if self.auth.cache_capacity == 0 {
            error(
                "auth.cache_capacity".into(),
                "must be at least 1 (use a short cache_ttl to limit reuse)".into(),
            );
        } else if self.auth.cache_capacity > 10_000_000 {
            error(
                "auth.cache_capacity".into(),
                "must be at most 10000000".into(),
            );
        }

        for (name, upstream) in &self.upstreams {
            let at = format!("upstreams.{name}");
            if upstream.servers.is_empty() {
                error(
                    format!("{at}.servers"),
                    "needs at least one host:port or unix:/path".into(),
                );
            } else if upstream.servers.len() > bounds::SERVERS {
                error(
                    format!("{at}.servers"),
                    format!(
                        "has {} entries; at most {} are allowed",
                        upstream.servers.len(),
                        bounds::SERVERS
                    ),
                );
            }
            for (i, server) in upstream.servers.iter().enumerate() {
                if !(1..=crate::pools::MAX_WEIGHT).contains(&server.weight) {
                    error(
                        format!("{at}.servers[{i}].weight"),
                        format!("must be between 1 and {}", crate::pools::MAX_WEIGHT),
                    );
                }
            }
            if upstream.balance == Balance::UserHash {
                // The consistent-hash ring takes host:port servers only, and
                // 160 points per unit of weight.
                if upstream
                    .servers
                    .iter()
                    .any(|s| matches!(s.address, ServerAddr::Unix(_)))
                {
                    error(
                        format!("{at}.balance"),
                        "user_hash needs host:port servers; a unix: socket has no place on its ring"
                            .into(),
                    );
                }
                let total: u64 = upstream.servers.iter().map(|s| u64::from(s.weight)).sum();
                if total > 10_000 {
                    error(
                        format!("{at}.servers"),
                        format!("user_hash: the weights add up to {total}; at most 10000"),
                    );
                }
            }
            for (key, problem) in crate::pools::problems(&upstream.limits) {
                error(format!("{at}.limits.{key}"), problem);
            }
            for (key, problem) in upstream.retry.iter().flat_map(crate::pools::retry_problems) {
                error(format!("{at}.retry.{key}"), problem);
            }
            for (key, problem) in upstream
                .passive_health
                .iter()
                .flat_map(crate::pools::passive_problems)
            {
                error(format!("{at}.passive_health.{key}"), problem);
            }
            if let Some(tls) = &upstream.tls {
                if upstream
                    .servers
                    .iter()
                    .any(|s| matches!(s.address, ServerAddr::Unix(_)))
                {
                    error(
                        format!("{at}.tls"),
                        "TLS is for host:port servers; a unix: socket is local and plain".into(),
                    );
                }
                if tls.sni.as_deref().is_some_and(str::is_empty) {
                    error(format!("{at}.tls.sni"), "must not be empty".into());
                }
                if tls.ca.as_deref().is_some_and(str::is_empty) {
                    error(format!("{at}.tls.ca"), "needs a file path".into());
                }
            }
            if let Some(check) = &upstream.health_check {
                within(
                    &mut error,
                    format!("{at}.health_check.interval"),
                    check.interval.0,
                    Duration::from_millis(100),
                    HOUR,
                );
            }
            for (key, value) in [
                ("connect_timeout", upstream.connect_timeout),
                ("read_timeout", upstream.read_timeout),
                ("write_timeout", upstream.write_timeout),
            ] {
                within(&mut error, format!("{at}.{key}"), value.0, MS, HOUR);
            }
            within(
                &mut error,
                format!("{at}.idle_timeout"),
                upstream.idle_timeout.0,
                Duration::ZERO,
                HOUR,
            );
        }
        if let Some(tls) = &self.tls {
            self.check_certificates(tls, &mut error);
        }
        for (at, problem) in crate::compression::problems(&self.server.compression.settings()) {
            error(format!("server.compression.{at}"), problem);
        }
        for (i, route) in self.routes.iter().enumerate() {
            let at = format!("routes[{i}]");
            self.check_answer(route, &at, &mut error);
            if route.hosts.len() > bounds::HOSTS {
                error(
                    format!("{at}.hosts"),
                    format!("at most {} hosts per route", bounds::HOSTS),
                );
            }
            if let Some(crate::compression::RouteCompression::Settings(_)) = &route.compression {
                let settings = crate::compression::effective(
                    &self.server.compression,
                    route.compression.as_ref(),
                    route.access == Access::Protected,
                );
                for (key, problem) in settings.iter().flat_map(crate::compression::problems) {
                    error(format!("{at}.compression.{key}"), problem);
                }
            }
            for (key, side, rules) in [
                ("request_headers", Side::Request, &route.request_headers),
                ("response_headers", Side::Response, &route.response_headers),
            ] {
                for (sub, problem) in crate::header_rules::problems(side, rules) {
                    let key = if sub.is_empty() {
                        format!("{at}.{key}")
                    } else {
                        format!("{at}.{key}.{sub}")
                    };
                    error(key, problem);
                }
            }
            if let Some(cors) = &route.cors {
                for (key, problem) in crate::cors::problems(cors) {
                    error(format!("{at}.cors.{key}"), problem);
                }
            }
            if route.access == Access::Public && !route.roles.is_empty() {
                error(format!("{at}.roles"), "roles need access: protected".into());
            }
            if let Some(body) = route.max_body_bytes
                && body.0 > MAX_BODY
            {
                error(
                    format!("{at}.max_body_bytes"),
                    "must be at most 1GiB".into(),
                );
            }
            if let Some(stale) = route.stale_if_error {
                if route.access == Access::Public {
                    error(
                        format!("{at}.stale_if_error"),
                        "needs access: protected".into(),
                    );
                }
                within(
                    &mut error,
                    format!("{at}.stale_if_error"),
                    stale.0,
                    MS,
                    HOUR,
                );
            }
            if let Some(limits) = &route.rate_limit {
                if route.access == Access::Public && limits.per_user.is_some() {
                    error(
                        format!("{at}.rate_limit.per_user"),
                        "needs access: protected (a public route has no user)".into(),
                    );
                }
                for (key, rate) in [
                    ("per_ip", &limits.per_ip),
                    ("per_user", &limits.per_user),
                    ("route", &limits.route),
                ] {
                    let Some(rate) = rate else { continue };
                    let at = format!("{at}.rate_limit.{key}");
                    let count = |error: &mut dyn FnMut(String, String), key: &str, value: u32| {
                        if !(1..=1_000_000).contains(&value) {
                            error(
                                format!("{at}.{key}"),
                                "must be between 1 and 1000000".into(),
                            );
                        }
                    };
                    count(&mut error, "requests", rate.requests);
                    if rate.store == LimitStore::Local && rate.fallback != LimitFallback::Local {
                        error(
                            format!("{at}.fallback"),
                            "applies to store: redis only".into(),
                        );
                    }
                    within(&mut error, format!("{at}.per"), rate.per.0, MS, DAY);
                    if let Some(burst) = rate.burst {
                        count(&mut error, "burst", burst);
                    }
                    // The bucket's depth in time: how far ahead of now a
                    // client may be, and how long an idle bucket is kept.
                    match rate.depth() {
                        Some(depth) if depth <= 7 * DAY => {}
                        depth => error(
                            at.clone(),
                            format!(
                                "burst × per / requests is {}; at most 7 days are allowed",
                                depth.map_or_else(|| "too long".into(), Dur::text)
                            ),
                        ),
                    }
                }
            }
            if route.roles.len() > bounds::ROLES {
                error(
                    format!("{at}.roles"),
                    format!(
                        "has {} entries; at most {} are allowed",
                        route.roles.len(),
                        bounds::ROLES
                    ),
                );
            }
            for role in &route.roles {
                if role.is_empty()
                    || role.len() > bounds::ROLE_BYTES
                    || !role.bytes().all(|b| b.is_ascii_graphic())
                {
                    let shown: String = role.chars().take(32).collect();
                    error(
                        format!("{at}.roles"),
                        format!(
                            "invalid role {shown:?}: 1 to {} printable ASCII characters",
                            bounds::ROLE_BYTES
                        ),
                    );
                    break;
                }
            }
        }
        overlap::claims(&self.routes, &mut error);
        errors
    }

    /// A route is answered by exactly one of `upstream`, `redirect` and
    /// `respond`; what only a proxied request uses needs `upstream`.
    fn check_answer(&self, route: &RouteSettings, at: &str, error: &mut dyn FnMut(String, String)) {
        let answers = [
            route.upstream.is_some(),
            route.redirect.is_some(),
            route.respond.is_some(),
        ];
        if answers.iter().filter(|a| **a).count() != 1 {
            error(
                at.to_owned(),
                "needs exactly one of upstream, redirect and respond".into(),
            );
        }
        if let Some(upstream) = &route.upstream
            && !self.upstreams.contains_key(upstream)
        {
            error(
                format!("{at}.upstream"),
                format!("unknown upstream {upstream:?}"),
            );
        }
        if let Some(redirect) = &route.redirect {
            for (key, problem) in crate::answers::redirect_problems(redirect) {
                error(format!("{at}.redirect.{key}"), problem);
            }
        }
        if let Some(respond) = &route.respond {
            for (key, problem) in crate::answers::respond_problems(respond) {
                error(format!("{at}.respond.{key}"), problem);
            }
        }
        if route.upstream.is_none() {
            let upstream_only = [
                ("rewrite", route.rewrite.is_some()),
                ("websocket", route.websocket),
                ("forward_authorization", route.forward_authorization),
                ("stale_if_error", route.stale_if_error.is_some()),
                ("compression", route.compression.is_some()),
                ("request_headers", !route.request_headers.is_empty()),
            ];
            for (key, set) in upstream_only {
                if set {
                    error(
                        format!("{at}.{key}"),
                        "applies only to a route with an upstream".into(),
                    );
                }
            }
        }
    }

    /// The SNI certificates: files named, hosts listed, no host claimed by
    /// two certificates.
    fn check_certificates(&self, tls: &Tls, error: &mut dyn FnMut(String, String)) {
        if tls.certificates.len() > bounds::CERTIFICATES {
            error(
                "tls.certificates".into(),
                format!("at most {} certificates", bounds::CERTIFICATES),
            );
        }
        let mut claimed = std::collections::HashMap::new();
        for (i, cert) in tls.certificates.iter().enumerate() {
            let at = format!("tls.certificates[{i}]");
            for (key, value) in [("cert", &cert.cert), ("key", &cert.key)] {
                if value.is_empty() {
                    error(format!("{at}.{key}"), "needs a file path".into());
                }
            }
            if cert.hosts.is_empty() {
                error(format!("{at}.hosts"), "needs at least one host".into());
            }
            for host in &cert.hosts {
                if let Some(other) = claimed.insert(host.clone(), i) {
                    error(
                        format!("{at}.hosts"),
                        format!(
                            "{} already has a certificate: tls.certificates[{other}]",
                            host.text()
                        ),
                    );
                }
            }
        }
    }
}

/// Every problem of the jwks-mode keys of `auth` (`jwks.rs`), as (key,
/// message).
fn jwks_problems(auth: &Auth) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    let mut problem = |key: &str, message: String| problems.push((format!("auth.{key}"), message));
    if auth.mode != AuthMode::Jwks {
        for key in auth.jwks_keys_set() {
            problem(key, "is only read in jwks mode (auth.mode: jwks)".into());
        }
        return problems;
    }
    match &auth.jwks_url {
        None => problem("jwks_url", "is required in jwks mode".into()),
        Some(url) if !crate::jwks::url_ok(url) => problem(
            "jwks_url",
            format!("{url:?} must be an http:// or https:// URL"),
        ),
        _ => {}
    }
    match &auth.issuer {
        None => problem(
            "issuer",
            "is required in jwks mode: tokens whose `iss` is not this are refused".into(),
        ),
        Some(issuer) if issuer.is_empty() || issuer.len() > 1024 => {
            problem("issuer", "must be 1 to 1024 characters".into())
        }
        _ => {}
    }
    match &auth.audiences {
        None => problem(
            "audiences",
            "is required in jwks mode: tokens whose `aud` names none of these are refused".into(),
        ),
        Some(list) if list.is_empty() || list.len() > 32 => {
            problem("audiences", "must list 1 to 32 audiences".into())
        }
        Some(list) if list.iter().any(|a| a.is_empty() || a.len() > 1024) => {
            problem("audiences", "each must be 1 to 1024 characters".into())
        }
        _ => {}
    }
    if auth.algorithms.as_ref().is_some_and(Vec::is_empty) {
        problem("algorithms", "must list at least one algorithm".into());
    }
    let refresh = auth.jwks_min_refresh();
    if refresh < Duration::from_secs(1) || refresh > Duration::from_secs(3600) {
        problem(
            "jwks_min_refresh",
            format!("must be between 1s and 1h (is {})", Dur::text(refresh)),
        );
    }
    problems
}
