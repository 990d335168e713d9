//! `compression`: responses compressed with gzip, brotli or zstd.
//!
//! `server.compression` holds the defaults; a route writes `compression:
//! true|false`, or the settings it changes (which turns it on).
//!
//! Public routes are compressed by default and protected routes are not:
//! a response that holds a secret and reflects what a request sent can let
//! an attacker who can both send requests as the victim and watch the
//! sizes on the wire guess the secret one byte at a time (BREACH). A
//! protected route is turned on with `compression: true` where its answers
//! do not mix the two.

use crate::values::ByteSize;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use std::fmt;

/// `server.compression`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompressionDefaults {
    /// Whether public routes compress when they do not say.
    #[serde(default = "yes")]
    pub public: bool,
    /// Whether protected routes compress when they do not say (see the
    /// module's note on BREACH).
    #[serde(default)]
    pub protected: bool,
    /// Responses declaring a smaller `Content-Length` go as they are.
    #[serde(default = "min_size")]
    pub min_size: ByteSize,
    /// Media types compressed (`text/html`, or `text/*`); others go as they are.
    #[serde(default = "types")]
    pub types: Vec<String>,
    /// Levels: gzip 1–9, brotli 1–11, zstd 1–19.
    #[serde(default = "gzip")]
    pub gzip: u32,
    #[serde(default = "brotli")]
    pub brotli: u32,
    #[serde(default = "zstd")]
    pub zstd: u32,
}

impl Default for CompressionDefaults {
    fn default() -> Self {
        let s = CompressionSettings::default();
        CompressionDefaults {
            public: true,
            protected: false,
            min_size: s.min_size,
            types: s.types,
            gzip: s.gzip,
            brotli: s.brotli,
            zstd: s.zstd,
        }
    }
}

impl CompressionDefaults {
    /// The settings of a route that changes none.
    pub fn settings(&self) -> CompressionSettings {
        CompressionSettings {
            min_size: self.min_size,
            types: self.types.clone(),
            gzip: self.gzip,
            brotli: self.brotli,
            zstd: self.zstd,
        }
    }
}

/// What is compressed, and how hard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompressionSettings {
    pub min_size: ByteSize,
    pub types: Vec<String>,
    pub gzip: u32,
    pub brotli: u32,
    pub zstd: u32,
}

impl Default for CompressionSettings {
    fn default() -> Self {
        CompressionSettings {
            min_size: min_size(),
            types: types(),
            gzip: gzip(),
            brotli: brotli(),
            zstd: zstd(),
        }
    }
}

/// A route's `compression`: a switch, or the settings it changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteCompression {
    Switch(bool),
    Settings(RouteCompressionSettings),
}

/// A route's own settings; what it leaves out comes from `server.compression`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteCompressionSettings {
    #[serde(default)]
    pub min_size: Option<ByteSize>,
    #[serde(default)]
    pub types: Option<Vec<String>>,
    #[serde(default)]
    pub gzip: Option<u32>,
    #[serde(default)]
    pub brotli: Option<u32>,
    #[serde(default)]
    pub zstd: Option<u32>,
}

impl<'de> Deserialize<'de> for RouteCompression {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Either;
        impl<'de> Visitor<'de> for Either {
            type Value = RouteCompression;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("true, false, or settings such as {min_size: 1KiB, gzip: 6}")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(RouteCompression::Switch(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                RouteCompressionSettings::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RouteCompression::Settings)
            }
        }
        d.deserialize_any(Either)
    }
}

/// The settings a route compresses with, or `None` when it does not.
pub fn effective(
    defaults: &CompressionDefaults,
    route: Option<&RouteCompression>,
    protected: bool,
) -> Option<CompressionSettings> {
    let base = defaults.settings();
    match route {
        None if (protected && defaults.protected) || (!protected && defaults.public) => Some(base),
        None | Some(RouteCompression::Switch(false)) => None,
        Some(RouteCompression::Switch(true)) => Some(base),
        Some(RouteCompression::Settings(own)) => Some(CompressionSettings {
            min_size: own.min_size.unwrap_or(base.min_size),
            types: own.types.clone().unwrap_or_else(|| base.types.clone()),
            gzip: own.gzip.unwrap_or(base.gzip),
            brotli: own.brotli.unwrap_or(base.brotli),
            zstd: own.zstd.unwrap_or(base.zstd),
        }),
    }
}

/// The problems of one set of settings, as (key under `at`, message).
pub(crate) fn problems(settings: &CompressionSettings) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for (key, level, range) in [
        ("gzip", settings.gzip, 1..=9),
        ("brotli", settings.brotli, 1..=11),
        ("zstd", settings.zstd, 1..=19),
    ] {
        if !range.contains(&level) {
            found.push((
                key.to_owned(),
                format!(
                    "level {level} is out of range: {} to {}",
                    range.start(),
                    range.end()
                ),
            ));
        }
    }
    if settings.min_size.0 > 1024 * 1024 * 1024 {
        found.push(("min_size".into(), "must be at most 1GiB".into()));
    }
    if settings.types.len() > 256 {
        found.push(("types".into(), "at most 256 media types".into()));
    }
    for (i, t) in settings.types.iter().enumerate() {
        if !media_type_ok(t) {
            found.push((
                format!("types[{i}]"),
                format!("{t:?} is not a media type such as text/html or text/*"),
            ));
        } else if !encoder_takes(t) {
            found.push((
                format!("types[{i}]"),
                format!(
                    "{t:?} is not compressed by the gateway's encoder: only text/*, application/*, font/*, image/svg+xml and image/x-icon, without \"zip\" in the name"
                ),
            ));
        }
    }
    found
}

/// The media types the proxy engine's encoder agrees to compress.
fn encoder_takes(t: &str) -> bool {
    !t.contains("zip")
        && (["text/", "application/", "font/", "binary/octet-stream"]
            .iter()
            .any(|p| t.starts_with(p))
            || ["image/svg+xml", "image/x-icon"].contains(&t))
}

fn media_type_ok(t: &str) -> bool {
    let token = |s: &str| {
        !s.is_empty()
            && s.len() <= 127
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$&-^_.+".contains(&b))
    };
    match t.split_once('/') {
        Some((kind, "*")) => token(kind),
        Some((kind, sub)) => token(kind) && token(sub),
        None => false,
    }
}

fn yes() -> bool {
    true
}
/// A body that fits one TCP segment arrives no sooner compressed.
fn min_size() -> ByteSize {
    ByteSize(1024)
}
fn gzip() -> u32 {
    6
}
fn brotli() -> u32 {
    5
}
fn zstd() -> u32 {
    3
}
fn types() -> Vec<String> {
    [
        "text/html",
        "text/css",
        "text/plain",
        "text/javascript",
        "text/xml",
        "text/csv",
        "text/markdown",
        "application/javascript",
        "application/json",
        "application/problem+json",
        "application/manifest+json",
        "application/xml",
        "application/wasm",
        "image/svg+xml",
        "font/ttf",
        "font/otf",
    ]
    .map(String::from)
    .to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_routes_compress_by_default_and_protected_ones_only_when_asked() {
        let d = CompressionDefaults::default();
        assert!(effective(&d, None, false).is_some());
        assert!(effective(&d, None, true).is_none());
        assert!(effective(&d, Some(&RouteCompression::Switch(true)), true).is_some());
        assert!(effective(&d, Some(&RouteCompression::Switch(false)), false).is_none());
        let own = RouteCompression::Settings(RouteCompressionSettings {
            gzip: Some(9),
            ..Default::default()
        });
        let s = effective(&d, Some(&own), true).expect("on");
        assert_eq!((s.gzip, s.brotli, s.min_size), (9, 5, ByteSize(1024)));
    }

    #[test]
    fn media_types() {
        for ok in [
            "text/html",
            "text/*",
            "application/vnd.api+json",
            "image/svg+xml",
        ] {
            assert!(media_type_ok(ok), "{ok}");
        }
        for bad in [
            "text",
            "*/*",
            "Text/HTML",
            "text/html; charset=utf-8",
            "/x",
            "a/b/c",
        ] {
            assert!(!media_type_ok(bad), "{bad}");
        }
        assert!(encoder_takes("image/svg+xml") && encoder_takes("text/*"));
        assert!(!encoder_takes("image/png") && !encoder_takes("application/zip"));
        assert!(
            CompressionSettings::default()
                .types
                .iter()
                .all(|t| encoder_takes(t))
        );
    }
}
