//! Virtual hosts: the names a route or a certificate serves.
//!
//! A pattern is an exact name (`api.example.com`) or a wildcard
//! (`*.example.com`) that matches one or more labels before the suffix
//! (`a.example.com`, `a.b.example.com`), never the bare suffix itself, as
//! Nginx's `server_name *.example.com` does. Names are compared lower-cased,
//! without port and without a trailing dot.

use serde::Deserialize;
use serde::de::{self, Deserializer};
use std::cmp::Ordering;

/// An exact host name or a `*.` wildcard, in normal form.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    Exact(String),
    /// The suffix with its leading dot: `.example.com` for `*.example.com`.
    Wildcard(String),
}

/// The longest host name (RFC 1035 §2.3.4, less the trailing dot).
const MAX_NAME: usize = 253;

fn label_ok(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl HostPattern {
    pub fn parse(raw: &str) -> Result<HostPattern, String> {
        let lower = raw.trim_end_matches('.').to_ascii_lowercase();
        let (wildcard, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        let literal_v6 = !wildcard
            && name
                .strip_prefix('[')
                .and_then(|n| n.strip_suffix(']'))
                .is_some_and(|n| n.parse::<std::net::Ipv6Addr>().is_ok());
        if name.is_empty()
            || name.len() > MAX_NAME
            || !(literal_v6 || name.split('.').all(label_ok))
        {
            return Err(format!(
                "{raw:?} is not a host name: write e.g. api.example.com or *.example.com (no port, no scheme)"
            ));
        }
        Ok(if wildcard {
            HostPattern::Wildcard(format!(".{name}"))
        } else {
            HostPattern::Exact(name.to_owned())
        })
    }

    /// Whether a host in normal form ([`normal_host`]) is served.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(name) => name == host,
            HostPattern::Wildcard(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        }
    }

    /// Whether some host is matched by both.
    pub fn overlaps(&self, other: &HostPattern) -> bool {
        match (self, other) {
            (HostPattern::Exact(a), b) | (b, HostPattern::Exact(a)) => b.matches(a),
            (HostPattern::Wildcard(a), HostPattern::Wildcard(b)) => {
                a.ends_with(b.as_str()) || b.ends_with(a.as_str())
            }
        }
    }

    /// More specific first: exact names, then wildcards by longer suffix.
    pub fn specificity(&self) -> (u8, usize) {
        match self {
            HostPattern::Exact(name) => (0, usize::MAX - name.len()),
            HostPattern::Wildcard(suffix) => (1, usize::MAX - suffix.len()),
        }
    }

    /// As written in `routes.yaml`.
    pub fn text(&self) -> String {
        match self {
            HostPattern::Exact(name) => name.clone(),
            HostPattern::Wildcard(suffix) => format!("*{suffix}"),
        }
    }
}

impl PartialOrd for HostPattern {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for HostPattern {
    fn cmp(&self, other: &Self) -> Ordering {
        self.specificity()
            .cmp(&other.specificity())
            .then_with(|| self.text().cmp(&other.text()))
    }
}

impl<'de> Deserialize<'de> for HostPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        HostPattern::parse(&raw).map_err(de::Error::custom)
    }
}

/// A request's host in the form patterns match: the name part of a `Host`
/// value (or `:authority`), lower-cased, without port or trailing dot.
/// `None` for a value that is no host name or address.
pub fn normal_host(value: &str) -> Option<String> {
    let name = if value.starts_with('[') {
        let end = value.find(']')?;
        let (name, rest) = value.split_at(end + 1);
        let port_ok = rest.is_empty()
            || rest
                .strip_prefix(':')
                .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        if !port_ok
            || name[1..name.len() - 1]
                .parse::<std::net::Ipv6Addr>()
                .is_err()
        {
            return None;
        }
        name
    } else {
        let name = match value.split_once(':') {
            Some((name, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
                name
            }
            Some(_) => return None,
            None => value,
        };
        let name = name.strip_suffix('.').unwrap_or(name);
        if name.is_empty() || name.len() > MAX_NAME || !name.split('.').all(label_ok) {
            return None;
        }
        name
    };
    Some(name.to_ascii_lowercase())
}

/// Whether two host lists can serve a common host (an empty list serves
/// every host).
pub fn lists_overlap(a: &[HostPattern], b: &[HostPattern]) -> bool {
    a.is_empty() || b.is_empty() || a.iter().any(|x| b.iter().any(|y| x.overlaps(y)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_parse_to_normal_form() {
        let cases = [
            (
                "API.Example.com",
                Ok(HostPattern::Exact("api.example.com".into())),
            ),
            ("example.com.", Ok(HostPattern::Exact("example.com".into()))),
            (
                "*.Example.com",
                Ok(HostPattern::Wildcard(".example.com".into())),
            ),
            ("*.test", Ok(HostPattern::Wildcard(".test".into()))),
            ("192.0.2.1", Ok(HostPattern::Exact("192.0.2.1".into()))),
            ("[::1]", Ok(HostPattern::Exact("[::1]".into()))),
        ];
        for (raw, expected) in cases {
            assert_eq!(HostPattern::parse(raw), expected, "{raw}");
        }
        for bad in [
            "",
            "*",
            "*.",
            "a.*.com",
            "example.com:8080",
            "http://example.com",
            "a b",
            "ex..com",
            "*example.com",
            "[::1",
            "[zz]",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad:?} accepted");
        }
        let long = format!("{}.com", "a".repeat(64));
        assert!(HostPattern::parse(&long).is_err());
    }

    #[test]
    fn wildcards_match_one_or_more_labels_never_the_bare_suffix() {
        let w = HostPattern::parse("*.example.com").expect("pattern");
        for (host, expected) in [
            ("a.example.com", true),
            ("a.b.example.com", true),
            ("example.com", false),
            ("aexample.com", false),
            ("a.example.com.evil", false),
        ] {
            assert_eq!(w.matches(host), expected, "{host}");
        }
        let e = HostPattern::parse("a.example.com").expect("pattern");
        assert!(e.overlaps(&w) && w.overlaps(&e));
        let deeper = HostPattern::parse("*.b.example.com").expect("pattern");
        assert!(deeper.overlaps(&w));
        assert!(!HostPattern::parse("*.other.com").expect("p").overlaps(&w));
        assert!(
            e < deeper && deeper < w,
            "exact, then longer wildcards first"
        );
    }

    #[test]
    fn request_hosts_are_normalised() {
        let cases = [
            ("Example.COM", Some("example.com")),
            ("example.com:8080", Some("example.com")),
            ("example.com.", Some("example.com")),
            ("example.com.:443", Some("example.com")),
            ("[::1]:8080", Some("[::1]")),
            ("192.0.2.1", Some("192.0.2.1")),
            ("", None),
            (".", None),
            ("example.com:", None),
            ("a b", None),
            ("user@host", None),
            ("evil.com/x", None),
            ("[::1]x", None),
        ];
        for (raw, expected) in cases {
            assert_eq!(normal_host(raw).as_deref(), expected, "{raw:?}");
        }
    }
}
