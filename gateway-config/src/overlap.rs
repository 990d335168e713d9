//! The rules on overlapping routes, in one place: which methods a route
//! claims, two routes claiming the same prefix and method (an error), and a
//! route nested inside one of the other access (a warning).

use crate::hosts::HostPattern;
use crate::schema::{Access, Config, RouteSettings};
use crate::values::Prefix;
use crate::{ConfigError, bounds};
use std::collections::{HashMap, HashSet};

/// The methods a route listing `listed` admits: a route that admits GET also
/// admits HEAD (RFC 9110 §9.3.2). Upper case, in the order listed, HEAD
/// last when implied.
pub fn implied_methods<'a>(listed: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let mut methods: Vec<&str> = listed.into_iter().collect();
    if methods.contains(&"GET") && !methods.contains(&"HEAD") {
        methods.push("HEAD");
    }
    methods
}

/// A prefix's segments (none for `/`).
fn segments(prefix: &Prefix) -> impl Iterator<Item = &str> {
    prefix.as_str().split('/').filter(|s| !s.is_empty())
}

/// Two routes may not claim the same host, prefix and method; a route
/// without `methods` claims every method, one that lists GET claims HEAD too
/// ([`implied_methods`]), and one without `hosts` claims the prefix for
/// every host not named by another route. One lookup per route, host and
/// method, whatever the number of routes.
/// What each (host, prefix) is claimed for: every method, or these.
type Claims<'a> = HashMap<(Option<&'a HostPattern>, &'a str), (bool, HashSet<&'a str>)>;

pub(crate) fn claims(routes: &[RouteSettings], error: &mut dyn FnMut(String, String)) {
    let mut claimed: Claims = HashMap::new();
    for (i, route) in routes.iter().enumerate() {
        // A host listed twice by one route is one claim.
        let hosts: Vec<Option<&HostPattern>> = if route.hosts.is_empty() {
            vec![None]
        } else {
            let unique: std::collections::BTreeSet<&HostPattern> = route.hosts.iter().collect();
            unique.into_iter().map(Some).collect()
        };
        for host in hosts {
            claim(&mut claimed, i, route, host, error);
        }
    }
}

fn claim<'a>(
    claimed: &mut Claims<'a>,
    i: usize,
    route: &'a RouteSettings,
    host: Option<&'a HostPattern>,
    error: &mut dyn FnMut(String, String),
) {
    let methods: Vec<Option<&str>> = if route.methods.is_empty() {
        vec![None]
    } else {
        implied_methods(route.methods.iter().map(|m| m.0.as_str()))
            .into_iter()
            .map(Some)
            .collect()
    };
    let (any, taken) = claimed.entry((host, route.prefix.as_str())).or_default();
    for method in methods {
        let overlaps = *any
            || match method {
                None => !taken.is_empty(),
                Some(method) => taken.contains(method),
            };
        if overlaps {
            error(
                format!("routes[{i}].prefix"),
                format!(
                    "{:?} is already routed{}{}",
                    route.prefix.as_str(),
                    host.map(|h| format!(" on host {}", h.text()))
                        .unwrap_or_default(),
                    method.map(|m| format!(" for {m}")).unwrap_or_default()
                ),
            );
            return;
        }
        match method {
            None => *any = true,
            Some(method) => {
                taken.insert(method);
            }
        }
    }
}

impl Config {
    /// Routes nested inside a route of the other access: a public route
    /// inside a protected one opens part of it to anyone; a protected route
    /// inside a public one closes part of it. Both can be meant, neither is
    /// an error, and both are worth a second look, so `--check` and every
    /// load report them with both lines.
    ///
    /// The routes' prefixes go into a tree of segments once; each route then
    /// walks down its own segments, meeting exactly the routes whose prefix
    /// contains its own: the cost grows with the total length of the
    /// prefixes and the pairs found, never with routes × routes. At most
    /// [`bounds::WARNINGS`] pairs are kept (the first, in file order); one
    /// more line counts the rest.
    pub fn shadowing(&self) -> Vec<ConfigError> {
        let line = |i: usize| self.lines.line(&format!("routes[{i}].prefix"));
        // Node 0 is `/`; each node: its children by segment, the routes
        // whose prefix ends there.
        let mut nodes: Vec<(std::collections::HashMap<&str, usize>, Vec<usize>)> =
            vec![Default::default()];
        let mut ends = Vec::with_capacity(self.routes.len());
        for (i, route) in self.routes.iter().enumerate() {
            let mut node = 0;
            for segment in segments(&route.prefix) {
                node = match nodes[node].0.get(segment) {
                    Some(&child) => child,
                    None => {
                        nodes.push(Default::default());
                        let child = nodes.len() - 1;
                        nodes[node].0.insert(segment, child);
                        child
                    }
                };
            }
            nodes[node].1.push(i);
            ends.push(node);
        }
        // The first pairs in (outer, inner) order, in a bounded max-heap.
        let mut kept = std::collections::BinaryHeap::new();
        let mut total = 0usize;
        for (i, inner) in self.routes.iter().enumerate() {
            let mut node = 0;
            let mut path = segments(&inner.prefix);
            while node != ends[i] {
                for &o in &nodes[node].1 {
                    let outer = &self.routes[o];
                    if outer.access != inner.access
                        && crate::hosts::lists_overlap(&outer.hosts, &inner.hosts)
                    {
                        total += 1;
                        kept.push((o, i));
                        if kept.len() > bounds::WARNINGS {
                            kept.pop();
                        }
                    }
                }
                let Some(next) = path.next().and_then(|s| nodes[node].0.get(s)) else {
                    break;
                };
                node = *next;
            }
        }
        let pairs = kept.into_sorted_vec();
        let at = |i: usize| line(i).map(|l| format!(" (line {l})")).unwrap_or_default();
        let mut found: Vec<ConfigError> = pairs
            .into_iter()
            .take(bounds::WARNINGS)
            .map(|(o, i)| {
                let (outer, inner) = (&self.routes[o], &self.routes[i]);
                let effect = match inner.access {
                    Access::Public => "requests under it skip authentication",
                    Access::Protected => "requests under it need a token",
                };
                ConfigError {
                    path: format!("routes[{i}].prefix"),
                    message: format!(
                        "{} route {}{} lies inside {} route {}{}: {effect}",
                        inner.access.name(),
                        inner.prefix.as_str(),
                        at(i),
                        outer.access.name(),
                        outer.prefix.as_str(),
                        at(o),
                    ),
                    line: None,
                }
            })
            .collect();
        if total > bounds::WARNINGS {
            found.push(ConfigError {
                path: "routes".into(),
                message: format!(
                    "{} more routes lie inside a route of the other access",
                    total - bounds::WARNINGS
                ),
                line: None,
            });
        }
        found
    }
}
