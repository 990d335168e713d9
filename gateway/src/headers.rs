//! Header rules that do not depend on the proxy engine.

use crate::config::header_rules::{CLIENT_ADDRESS, URL_OVERRIDE};
use http::HeaderMap;
use std::net::IpAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

pub use contract::identity::{AUTH_EXPIRES, REQUEST_ID, USER_ID, USER_ROLE};

/// Whether a client-sent header name is a spelling of an identity header:
/// any case, with `-` or `_` as separators. All of them are removed, so that
/// no backend framework can be tricked into reading a client's copy.
pub fn is_identity_header(name: &str) -> bool {
    let normalised = |target: &str| {
        name.len() == target.len()
            && name
                .bytes()
                .zip(target.bytes())
                .all(|(a, b)| a.to_ascii_lowercase() == b || (a == b'_' && b == b'-'))
    };
    normalised(USER_ID) || normalised(USER_ROLE) || normalised(AUTH_EXPIRES)
}

/// Whether a `Connection` option names a header the gateway sets itself. A
/// client may not use `Connection` to make the gateway drop those: such
/// options are removed before the request is forwarded, and the rest of the
/// header stays in force.
pub fn is_gateway_set_header(name: &str) -> bool {
    is_identity_header(name)
        || [
            REQUEST_ID,
            "x-forwarded-for",
            "x-forwarded-host",
            "x-forwarded-proto",
            "forwarded",
            "host",
        ]
        .iter()
        .any(|h| h.eq_ignore_ascii_case(name))
}

/// `value` without the options that name gateway-set headers, or `None`
/// when nothing needs removing.
pub fn scrub_connection(value: &str) -> Option<String> {
    let options: Vec<&str> = value
        .split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .collect();
    if !options.iter().any(|o| is_gateway_set_header(o)) {
        return None;
    }
    Some(
        options
            .into_iter()
            .filter(|o| !is_gateway_set_header(o))
            .collect::<Vec<_>>()
            .join(", "),
    )
}

/// Headers that describe the client's address, scheme or host on the way
/// in: set by the gateway itself, believed from trusted proxies only, and
/// removed when anyone else sends them (so no backend can be told a false
/// client address or host).
pub fn is_forwarding_header(name: &str) -> bool {
    name.as_bytes()
        .get(..12)
        .is_some_and(|start| start.eq_ignore_ascii_case(b"x-forwarded-"))
        || CLIENT_ADDRESS.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// Headers that some frameworks (IIS, Symfony, Zend, some PHP routers)
/// read in place of the request line's path or the `Host`, so that a
/// request routed (and authorised) for one path or host is served as
/// another. The gateway routes on the request line and `Host` alone, so
/// they are removed from every request.
pub fn is_url_override(name: &str) -> bool {
    URL_OVERRIDE.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// Header names with `_`: CGI, WSGI, PHP-FPM and others map `_` and `-`
/// alike, so `Content_Length` or `Transfer_Encoding` beside the real header
/// is a desync behind them, and `X_Forwarded_For` a forged address. Nginx
/// drops every such name by default (`underscores_in_headers off`); so does
/// the gateway, whatever the name.
pub fn has_underscore(name: &str) -> bool {
    name.contains('_')
}

/// What is wrong with a request's `Host` headers, if anything: HTTP/1.1
/// needs exactly one (RFC 9112 §3.2), and any that is sent must be a host
/// name or address with an optional port, since it becomes
/// `X-Forwarded-Host` and redirect targets.
pub fn host_problem(http11: bool, hosts: &[&[u8]]) -> Option<&'static str> {
    match hosts {
        [] if http11 => Some("an HTTP/1.1 request needs a Host header"),
        [] => None,
        [host] => std::str::from_utf8(host)
            .ok()
            .and_then(host_name)
            .is_none()
            .then_some("the Host header is not a host name or address with an optional port"),
        _ => Some("a request may carry only one Host header"),
    }
}

/// The client's address as far as rate limits go: the peer's, unless the
/// peer is a trusted proxy, in which case the right-most `X-Forwarded-For`
/// address that is not itself a trusted proxy. Addresses further left were
/// written by the client and are never believed; an entry that is not an
/// address stops the walk at the last trusted hop.
pub fn limit_address(
    peer: Option<IpAddr>,
    forwarded_for: &[&str],
    trusted: impl Fn(IpAddr) -> bool,
) -> Option<IpAddr> {
    let peer = peer?;
    if !trusted(peer) {
        return Some(peer);
    }
    let mut client = peer;
    for entry in forwarded_for.iter().rev().flat_map(|v| v.rsplit(',')) {
        match entry.trim().parse::<IpAddr>() {
            Ok(hop) if trusted(hop) => client = hop,
            Ok(hop) => return Some(hop),
            Err(_) => return Some(client),
        }
    }
    Some(client)
}

/// Whether `chunk` is exactly one WebSocket close frame, in either
/// direction: FIN and opcode 8, a payload of at most 125 bytes (as close
/// frames must be), masked or not, and nothing before or after it. Only such
/// a chunk may pass a tunnel whose grant has lapsed.
pub fn is_close_frame(chunk: &[u8]) -> bool {
    let [0x88, second, ..] = chunk else {
        return false;
    };
    let length = usize::from(second & 0x7f);
    let mask = if second & 0x80 != 0 { 4 } else { 0 };
    length <= 125 && chunk.len() == 2 + mask + length
}

/// The name part of a `Host` header value (`example.com`, `[::1]`,
/// `192.0.2.1`, without its port), when it is nothing but a host name or an
/// address: what may go into a redirect's `Location`.
pub fn host_name(host: &str) -> Option<&str> {
    let name = if host.starts_with('[') {
        let end = host.find(']')?;
        let (name, rest) = host.split_at(end + 1);
        let port_ok = rest.is_empty()
            || rest
                .strip_prefix(':')
                .is_some_and(|port| port.bytes().all(|b| b.is_ascii_digit()));
        port_ok.then_some(name)?
    } else {
        match host.split_once(':') {
            Some((name, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
                name
            }
            Some(_) => return None,
            None => host,
        }
    };
    let plain = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_');
    let ok = if let Some(inner) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        inner.parse::<std::net::Ipv6Addr>().is_ok()
    } else {
        !name.is_empty() && name.len() <= 253 && name.bytes().all(plain)
    };
    ok.then_some(name)
}

/// `Vary: {token}` added to a response whose `Vary` does not name it yet
/// (nor `*`).
pub fn vary(response: &HeaderMap, token: &'static str) -> Option<crate::edit::Edit> {
    let named = response.get_all(http::header::VARY).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .map(<[u8]>::trim_ascii)
            .any(|t| t == b"*" || t.eq_ignore_ascii_case(token.as_bytes()))
    });
    (!named).then(|| {
        crate::edit::Edit::Append(http::header::VARY, http::HeaderValue::from_static(token))
    })
}

/// Method-override headers. Some frameworks let them turn a GET into a PUT,
/// which would bypass a route that is public for GET only.
pub fn is_method_override(name: &str) -> bool {
    [
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
    ]
    .iter()
    .any(|h| h.eq_ignore_ascii_case(name))
}

/// A client's `x-request-id` is kept when it is 1–128 characters of
/// `[A-Za-z0-9._:-]`; anything else is replaced.
pub fn is_valid_request_id(value: &[u8]) -> bool {
    (1..=128).contains(&value.len())
        && value
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// A new request id: a random per-process prefix and a counter, unique
/// without a system call per request.
pub fn new_request_id() -> String {
    static PREFIX: OnceLock<String> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| {
        let mut bytes = [0u8; 6];
        if getrandom::fill(&mut bytes).is_err() {
            // Without randomness ids are still unique within the process.
            bytes = std::process::id().to_be_bytes().repeat(2)[..6]
                .try_into()
                .unwrap_or_default();
        }
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{n:x}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_name_the_gateway_removes_is_refused_in_request_rules() {
        use crate::config::header_rules::{Side, refused};
        let removed = [
            "x-user-id",
            "x-user-role",
            "x-auth-expires",
            "x-forwarded-for",
            "x-forwarded-port",
            "forwarded",
            "x-real-ip",
            "true-client-ip",
            "cf-connecting-ip",
            "x-remote-addr",
            "x-original-url",
            "x-rewrite-url",
            "x-host",
            "x-http-method-override",
            "x-method-override",
            "x_custom",
            "content_length",
        ];
        for name in removed {
            assert!(
                super::is_identity_header(name)
                    || super::is_forwarding_header(name)
                    || super::is_url_override(name)
                    || super::is_method_override(name)
                    || super::has_underscore(name),
                "{name} is not removed by the gateway"
            );
            assert!(
                refused(Side::Request, name).is_some(),
                "{name} may be set by a rule"
            );
        }
    }

    use super::*;

    #[test]
    fn identity_header_spellings() {
        for name in [
            "x-user-id",
            "X-User-Id",
            "X-USER-ID",
            "x_user_id",
            "X_User-Id",
            "x-user-role",
            "X_USER_ROLE",
            "x-auth-expires",
            "X_Auth_Expires",
        ] {
            assert!(is_identity_header(name), "{name}");
        }
        for name in [
            "x-user-ids",
            "x-user",
            "user-id",
            "x-userid",
            "authorization",
            "x-user-id-x",
        ] {
            assert!(!is_identity_header(name), "{name}");
        }
    }

    #[test]
    fn connection_options_naming_gateway_headers_are_dropped() {
        let cases = [
            ("keep-alive", None),
            ("close, x-custom", None),
            ("x-user-id", Some("")),
            (
                "keep-alive, X_User_Id, x-forwarded-for, x-custom",
                Some("keep-alive, x-custom"),
            ),
            ("Host,X-Request-Id , upgrade", Some("upgrade")),
        ];
        for (value, expected) in cases {
            assert_eq!(scrub_connection(value).as_deref(), expected, "{value}");
        }
    }

    #[test]
    fn forwarding_and_override_headers() {
        for name in [
            "Forwarded",
            "x-real-ip",
            "X-Forwarded-For",
            "x-forwarded-prefix",
            "X-Forwarded-Port",
            "forwarded-for",
        ] {
            assert!(is_forwarding_header(name), "{name}");
        }
        for name in ["x-forward", "x-forwardedfor-note", "x-request-id"] {
            assert!(!is_forwarding_header(name), "{name}");
        }
        assert!(is_method_override("X-HTTP-Method-Override"));
        assert!(!is_method_override("x-http"));
    }

    #[test]
    fn the_limited_address_is_the_first_untrusted_hop_from_the_right() {
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let trusted = |ip: IpAddr| ip.to_string().starts_with("10.");
        let client = |peer: &str, xff: &[&str]| {
            limit_address(Some(peer.parse().unwrap()), xff, trusted).map(|ip| ip.to_string())
        };
        let cases: [(&str, &[&str], &str); 7] = [
            // Not a trusted proxy: its header is ignored.
            ("203.0.113.9", &["198.51.100.1"], "203.0.113.9"),
            ("10.0.0.1", &[], "10.0.0.1"),
            ("10.0.0.1", &["198.51.100.1"], "198.51.100.1"),
            // The client wrote the left part; the proxy appended its peer.
            ("10.0.0.1", &["1.2.3.4, 198.51.100.1"], "198.51.100.1"),
            (
                "10.0.0.1",
                &["1.2.3.4, 198.51.100.1, 10.0.0.7"],
                "198.51.100.1",
            ),
            ("10.0.0.1", &["1.2.3.4", "198.51.100.1"], "198.51.100.1"),
            ("10.0.0.1", &["1.2.3.4, garbage, 10.0.0.7"], "10.0.0.7"),
        ];
        for (peer, xff, expected) in cases {
            assert_eq!(
                client(peer, xff).as_deref(),
                Some(expected),
                "{peer} {xff:?}"
            );
        }
        assert_eq!(limit_address(None, &[], |_| true), None);
        assert_eq!(
            limit_address(Some(proxy), &["10.0.0.2"], trusted),
            "10.0.0.2".parse().ok()
        );
    }

    #[test]
    fn only_a_whole_close_frame_is_a_close_frame() {
        let cases: [(&[u8], bool); 9] = [
            (&[0x88, 0x00], true),
            (&[0x88, 0x02, 0x03, 0xe8], true),
            // Masked, as clients send: four mask bytes, then the payload.
            (&[0x88, 0x82, 1, 2, 3, 4, 0x03, 0xe8], true),
            (&[0x88, 0x02, 0x03], false),
            // A close frame followed by anything else.
            (&[0x88, 0x00, 0x81, 0x01, b'x'], false),
            (&[0x88, 0x80, 1, 2, 3, 4, 0x81], false),
            (&[0x81, 0x00], false),
            (&[0x88], false),
            (&[], false),
        ];
        for (chunk, expected) in cases {
            assert_eq!(is_close_frame(chunk), expected, "{chunk:?}");
        }
        let mut long = vec![0x88, 126, 0, 200];
        long.extend([0; 200]);
        assert!(
            !is_close_frame(&long),
            "close payloads are at most 125 bytes"
        );
    }

    #[test]
    fn host_names_for_redirects() {
        let cases = [
            ("example.com", Some("example.com")),
            ("example.com:8080", Some("example.com")),
            ("192.0.2.1:80", Some("192.0.2.1")),
            ("[::1]:8080", Some("[::1]")),
            ("[::1]", Some("[::1]")),
            ("", None),
            ("example.com:", None),
            ("example.com:80x", None),
            ("evil.com/path", None),
            ("a b", None),
            ("user@host", None),
            ("[not-v6]:80", None),
            ("[::1]x", None),
            ("[::1]é", None),
            ("[::1]:é", None),
        ];
        for (host, expected) in cases {
            assert_eq!(host_name(host), expected, "{host:?}");
        }
    }

    #[test]
    fn request_ids() {
        assert!(is_valid_request_id(b"abc-123_x.y:z"));
        assert!(!is_valid_request_id(b""));
        assert!(!is_valid_request_id(&[b'a'; 129]));
        assert!(!is_valid_request_id(b"a b"));
        assert!(!is_valid_request_id(b"a\r\nb"));
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        assert!(is_valid_request_id(a.as_bytes()));
    }

    #[test]
    fn headers_dropped_before_forwarding() {
        for name in [
            "Transfer_Encoding",
            "content_length",
            "X_User_Id",
            "x_forwarded_for",
            "a_b",
        ] {
            assert!(has_underscore(name), "{name}");
        }
        assert!(!has_underscore("x-custom-header"));
        for name in [
            "X-Original-URL",
            "x-rewrite-url",
            "X-Original-URI",
            "x-override-url",
        ] {
            assert!(is_url_override(name), "{name}");
        }
        assert!(!is_url_override("x-url"));
        for name in [
            "X-Client-IP",
            "True-Client-IP",
            "CF-Connecting-IP",
            "X-Real-IP",
            "X-Forwarded-Host",
        ] {
            assert!(is_forwarding_header(name), "{name}");
        }
        assert!(!is_forwarding_header("x-clientip-note"));
    }

    #[test]
    fn host_headers() {
        let cases: [(bool, &[&[u8]], bool); 10] = [
            (true, &[b"example.com"], true),
            (true, &[b"example.com:8080"], true),
            (true, &[b"my_service:9101"], true),
            (true, &[b"[::1]:80"], true),
            (false, &[], true),
            (true, &[], false),
            (true, &[b""], false),
            (true, &[b"a b"], false),
            (true, &[b"x@evil.com"], false),
            (true, &[b"a.com", b"b.com"], false),
        ];
        for (http11, hosts, ok) in cases {
            assert_eq!(host_problem(http11, hosts).is_none(), ok, "{hosts:?}");
        }
    }
}
