//! Response compression, decided in plain code: which coding a client
//! accepts (`Accept-Encoding` with q-values), and whether a response is
//! compressed at all (route settings, media type, size, the upstream's own
//! coding, `Cache-Control: no-transform`). The edge hands the choice to the
//! proxy engine's compressor.

use crate::config::compression::CompressionSettings;
use http::HeaderMap;
use http::header::{
    ACCEPT_ENCODING, CACHE_CONTROL, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE,
};

/// The shortest declared body the proxy engine's encoder compresses.
const ENCODER_MIN: u64 = 20;

/// Declared bodies shorter than this prefer gzip on equal weights
/// ([`negotiate`]).
pub const SMALL: u64 = 16 * 1024;

/// A coding the gateway can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Brotli,
    Zstd,
    Gzip,
}

impl Coding {
    /// The slots of [`accepted`]'s weights.
    const PREFERRED: [Coding; 3] = [Coding::Brotli, Coding::Zstd, Coding::Gzip];

    /// The server's order when a client weighs codings equally (browsers
    /// and `oha` send `gzip, deflate, br` and the like, all at q=1). Each
    /// brotli and zstd response first sets up tables of their own (about
    /// 1 MiB for brotli at level 5): measured on a 71-byte JSON answer, one
    /// core, gzip added 15 µs of CPU a response, zstd about 55 µs, brotli
    /// 72 µs (bench/results). Below [`SMALL`] that costs more than the few bytes
    /// brotli saves over gzip; above it, the smaller output pays.
    fn order(small: bool) -> [Coding; 3] {
        if small {
            [Coding::Gzip, Coding::Zstd, Coding::Brotli]
        } else {
            [Coding::Brotli, Coding::Zstd, Coding::Gzip]
        }
    }

    pub fn token(self) -> &'static str {
        match self {
            Coding::Brotli => "br",
            Coding::Zstd => "zstd",
            Coding::Gzip => "gzip",
        }
    }
}

/// A route's compression, compiled once per generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    min_size: u64,
    /// Exact media types, and `type/` for `type/*`.
    types: Vec<String>,
    levels: [u32; 3],
}

impl Policy {
    pub fn new(settings: &CompressionSettings) -> Policy {
        Policy {
            min_size: settings.min_size.0,
            types: settings
                .types
                .iter()
                .map(|t| t.strip_suffix('*').unwrap_or(t).to_owned())
                .collect(),
            levels: [settings.brotli, settings.zstd, settings.gzip],
        }
    }

    pub fn level(&self, coding: Coding) -> u32 {
        self.levels[Coding::PREFERRED
            .iter()
            .position(|c| *c == coding)
            .unwrap_or(0)]
    }

    /// Compared as written: the proxy engine's encoder takes lower-case
    /// media types only, and a type it would not encode is not promised.
    fn compressible(&self, content_type: &str) -> bool {
        let media = content_type.split(';').next().unwrap_or("").trim();
        self.types.iter().any(|t| {
            if t.ends_with('/') {
                media.starts_with(t.as_str())
            } else {
                media == t
            }
        })
    }
}

/// The client's q-value for each coding, from `Accept-Encoding` (RFC 9110
/// §12.5.3): absent or zero means not acceptable; `*` stands for codings
/// not named; `x-gzip` is gzip. Weights are in thousandths.
pub fn accepted(headers: &HeaderMap) -> [u16; 3] {
    let mut named = [None::<u16>; 3];
    let mut any = None::<u16>;
    for value in headers.get_all(ACCEPT_ENCODING) {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let mut q = Some(1000);
            for param in parts {
                if let Some((k, v)) = param.split_once('=')
                    && k.trim().eq_ignore_ascii_case("q")
                {
                    q = qvalue(v.trim());
                }
            }
            let Some(q) = q else { continue };
            let slot = match coding.as_str() {
                "br" => Some(0),
                "zstd" => Some(1),
                "gzip" | "x-gzip" => Some(2),
                "*" => {
                    any = Some(any.map_or(q, |a| a.max(q)));
                    None
                }
                _ => None,
            };
            if let Some(slot) = slot {
                named[slot] = Some(named[slot].map_or(q, |n| n.max(q)));
            }
        }
    }
    named.map(|q| q.or(any).unwrap_or(0))
}

/// `1`, `0.8`, `0.125`, … in thousandths; `None` when malformed (the
/// entry is then ignored).
fn qvalue(raw: &str) -> Option<u16> {
    let (whole, frac) = raw.split_once('.').unwrap_or((raw, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac_value = format!("{frac:0<3}").parse::<u16>().ok()?;
    match whole {
        "0" => Some(frac_value),
        "1" if frac_value == 0 => Some(1000),
        _ => None,
    }
}

/// The coding a client prefers among those the gateway makes: the highest
/// weight, ties broken by the server's order: br, zstd, gzip; for a body
/// declared `small` (under [`SMALL`]), gzip, zstd, br, as brotli's and
/// zstd's set-up per response costs more there than their smaller output
/// saves.
pub fn negotiate(headers: &HeaderMap, small: bool) -> Option<Coding> {
    let weights = accepted(headers);
    let weight = |c: Coding| weights[Coding::PREFERRED.iter().position(|p| *p == c).unwrap_or(0)];
    let best = *weights.iter().max()?;
    (best > 0).then(|| {
        Coding::order(small)
            .into_iter()
            .find(|c| weight(*c) == best)
            .unwrap_or(Coding::Gzip)
    })
}

/// What the response side does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The coding to compress with, and its level.
    pub compress: Option<(Coding, u32)>,
    /// Whether the answer depended on `Accept-Encoding` (`Vary` says so).
    pub vary: bool,
}

/// Whether and how to compress a response to a request on a route with
/// `policy`. `head` is a HEAD request (nothing to compress, but the same
/// headers as its GET: `Vary` still set).
pub fn decide(
    policy: Option<&Policy>,
    request: &HeaderMap,
    head: bool,
    status: u16,
    response: &HeaderMap,
) -> Decision {
    let none = Decision {
        compress: None,
        vary: false,
    };
    let Some(policy) = policy else { return none };
    let header = |name| response.get(name).and_then(|v| v.to_str().ok());
    let no_body = matches!(status, 100..=199 | 204 | 206 | 304);
    let already = response.contains_key(CONTENT_ENCODING) || response.contains_key(CONTENT_RANGE);
    let no_transform = response.get_all(CACHE_CONTROL).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|d| d.trim().eq_ignore_ascii_case("no-transform"))
        })
    });
    if already || no_transform {
        return none;
    }
    if no_body {
        // A 304 varies as its 200 did; nothing else without a body does.
        return Decision {
            compress: None,
            vary: status == 304,
        };
    }
    let eligible_type = header(CONTENT_TYPE).is_some_and(|t| policy.compressible(t));
    let length = header(CONTENT_LENGTH).and_then(|l| l.parse::<u64>().ok());
    // The encoder never compresses a declared length under 20 bytes.
    let big_enough = length.is_none_or(|length| length >= policy.min_size.max(ENCODER_MIN));
    if !eligible_type || !big_enough {
        return none;
    }
    let coding = negotiate(request, length.is_some_and(|l| l < SMALL));
    Decision {
        compress: coding.filter(|_| !head).map(|c| (c, policy.level(c))),
        vary: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::header_map;

    fn policy() -> Policy {
        Policy::new(&CompressionSettings::default())
    }

    #[test]
    fn negotiation_follows_q_values_then_the_servers_order() {
        // (Accept-Encoding values, choice for a large body)
        let cases: [(&[&str], Option<Coding>); 14] = [
            (&[], None),
            (&["gzip"], Some(Coding::Gzip)),
            (&["gzip, br"], Some(Coding::Brotli)),
            (&["gzip, deflate, br, zstd"], Some(Coding::Brotli)),
            (&["br;q=0.5, gzip"], Some(Coding::Gzip)),
            (&["br;q=0, gzip;q=0"], None),
            (&["identity"], None),
            (&["*"], Some(Coding::Brotli)),
            (&["*;q=0.1, gzip;q=0.2"], Some(Coding::Gzip)),
            (&["*, br;q=0"], Some(Coding::Zstd)),
            (&["x-gzip"], Some(Coding::Gzip)),
            (&["GZIP;Q=0.9, zstd;q=0.95"], Some(Coding::Zstd)),
            (&["gzip;q=2, br;q=0.x"], None),
            (&["gzip", "br"], Some(Coding::Brotli)),
        ];
        for (values, expected) in cases {
            let pairs: Vec<(&str, &str)> = values.iter().map(|v| ("accept-encoding", *v)).collect();
            assert_eq!(
                negotiate(&header_map(&pairs), false),
                expected,
                "{values:?}"
            );
        }
        // A small body: gzip first on equal weights, never against them.
        for (value, expected) in [
            ("gzip, deflate, br, zstd", Some(Coding::Gzip)),
            ("gzip, compress, deflate, br", Some(Coding::Gzip)),
            ("br, zstd", Some(Coding::Zstd)),
            ("br", Some(Coding::Brotli)),
            ("gzip;q=0.5, br", Some(Coding::Brotli)),
        ] {
            let headers = header_map(&[("accept-encoding", value)]);
            assert_eq!(negotiate(&headers, true), expected, "{value}");
        }
    }

    #[test]
    fn q_values() {
        for (raw, q) in [
            ("1", Some(1000)),
            ("1.000", Some(1000)),
            ("0", Some(0)),
            ("0.5", Some(500)),
            ("0.125", Some(125)),
            ("0.1234", None),
            ("1.5", None),
            ("2", None),
            ("", None),
            ("-1", None),
        ] {
            assert_eq!(qvalue(raw), q, "{raw:?}");
        }
    }

    #[test]
    fn what_is_compressed() {
        let gzip = header_map(&[("accept-encoding", "gzip")]);
        let nothing = header_map::<&str>(&[]);
        let json = [
            ("content-type", "application/json"),
            ("content-length", "5000"),
        ];
        let on = |headers: &[(&str, &str)], status, request: &HeaderMap, head| {
            decide(Some(&policy()), request, head, status, &header_map(headers))
        };
        let yes = Decision {
            compress: Some((Coding::Gzip, 6)),
            vary: true,
        };
        let no = Decision {
            compress: None,
            vary: false,
        };
        let varies = Decision {
            compress: None,
            vary: true,
        };
        assert_eq!(on(&json, 200, &gzip, false), yes);
        assert_eq!(on(&json, 404, &gzip, false), yes);
        assert_eq!(
            on(&json, 200, &nothing, false),
            varies,
            "no Accept-Encoding"
        );
        assert_eq!(on(&json, 200, &gzip, true), varies, "HEAD");
        assert_eq!(on(&json, 204, &gzip, false), no);
        assert_eq!(
            on(&json, 304, &gzip, false),
            varies,
            "a 304 varies as its 200"
        );
        assert_eq!(on(&json, 206, &gzip, false), no);
        let cases: [&[(&str, &str)]; 6] = [
            &[
                ("content-type", "application/json"),
                ("content-length", "100"),
            ],
            &[("content-type", "image/png"), ("content-length", "5000")],
            &[("content-length", "5000")],
            &[("content-type", "text/html"), ("content-encoding", "br")],
            &[
                ("content-type", "text/html"),
                ("cache-control", "public, No-Transform"),
            ],
            &[
                ("content-type", "text/html"),
                ("content-range", "bytes 0-9/100"),
            ],
        ];
        for headers in cases {
            assert_eq!(on(headers, 200, &gzip, false), no, "{headers:?}");
        }
        // Streams without a length, and parameters after the media type.
        assert_eq!(
            on(
                &[("content-type", "text/html; charset=utf-8")],
                200,
                &gzip,
                false
            ),
            yes
        );
        // What the engine's encoder would not take is not promised: an
        // upper-case type, a declared length under 20 bytes.
        assert_eq!(on(&[("content-type", "Text/HTML")], 200, &gzip, false), no);
        let tiny = Policy::new(&CompressionSettings {
            min_size: crate::config::ByteSize(0),
            ..CompressionSettings::default()
        });
        let short = header_map(&[
            ("content-type", "application/json"),
            ("content-length", "19"),
        ]);
        assert_eq!(decide(Some(&tiny), &gzip, false, 200, &short), no);
        assert_eq!(
            decide(None, &gzip, false, 200, &header_map(&json)),
            no,
            "compression off"
        );
        let wildcard = Policy::new(&CompressionSettings {
            types: vec!["text/*".into()],
            ..CompressionSettings::default()
        });
        let css = header_map(&[("content-type", "text/css")]);
        assert!(
            decide(Some(&wildcard), &gzip, false, 200, &css)
                .compress
                .is_some()
        );
        let js = header_map(&[("content-type", "application/javascript")]);
        assert!(
            decide(Some(&wildcard), &gzip, false, 200, &js)
                .compress
                .is_none()
        );
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever a client sends, the choice is a coding it gave a
        /// weight above zero (directly or through `*`).
        #[test]
        fn the_chosen_coding_is_one_the_client_accepts(value in "[ -~]{0,80}", small in any::<bool>()) {
            let Ok(header) = http::HeaderValue::from_str(&value) else { return Ok(()) };
            let mut headers = HeaderMap::new();
            headers.insert(ACCEPT_ENCODING, header);
            let weights = accepted(&headers);
            if let Some(coding) = negotiate(&headers, small) {
                let slot = Coding::PREFERRED.iter().position(|c| *c == coding).unwrap();
                prop_assert!(weights[slot] > 0);
                prop_assert!(weights.iter().all(|w| *w <= weights[slot]));
            } else {
                prop_assert!(weights.iter().all(|w| *w == 0));
            }
        }
    }
}
