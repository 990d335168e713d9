//! Value types, validated while parsing: a bad value is reported by serde
//! with its key path and line.

use serde::Deserialize;
use serde::de::{self, Deserializer};
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

/// A duration written as `250ms`, `2s`, `5m` or `1h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl Dur {
    /// No duration in the file may be longer: every configured duration can
    /// then be added to an `Instant` or multiplied by a configured count
    /// without overflow. Each key has a tighter bound of its own.
    pub const MAX: Duration = Duration::from_secs(366 * 86_400);
    const MAX_TEXT: &str = "366 days";

    /// Written back in the file's own notation, for error messages.
    pub fn text(d: Duration) -> String {
        let ms = d.as_millis();
        if ms.is_multiple_of(3_600_000) && ms > 0 {
            format!("{}h", ms / 3_600_000)
        } else if ms.is_multiple_of(60_000) && ms > 0 {
            format!("{}m", ms / 60_000)
        } else if ms.is_multiple_of(1000) && ms > 0 {
            format!("{}s", ms / 1000)
        } else {
            format!("{ms}ms")
        }
    }

    pub fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        let split = raw
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| format!("{raw:?} has no unit: write e.g. 500ms, 2s, 1m"))?;
        let (number, unit) = raw.split_at(split);
        let n: u64 = number
            .parse()
            .map_err(|_| format!("{raw:?} is not a duration like 500ms, 2s or 1m"))?;
        let millis = match unit {
            "ms" => Some(n),
            "s" => n.checked_mul(1000),
            "m" => n.checked_mul(60_000),
            "h" => n.checked_mul(3_600_000),
            _ => return Err(format!("{raw:?} has an unknown unit: use ms, s, m or h")),
        };
        match millis {
            Some(millis) if Duration::from_millis(millis) <= Dur::MAX => {
                Ok(Dur(Duration::from_millis(millis)))
            }
            _ => Err(format!(
                "{raw:?} is too long: no duration here may exceed {}",
                Dur::MAX_TEXT
            )),
        }
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Dur::parse(&raw).map_err(de::Error::custom)
    }
}

/// A size in bytes written as `512`, `16KiB`, `1MiB` or `1GiB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
        let (number, unit) = raw.split_at(split);
        let n: u64 = number
            .parse()
            .map_err(|_| format!("{raw:?} is not a size like 512, 16KiB or 1MiB"))?;
        let factor = match unit.trim() {
            "" | "B" => 1,
            "KiB" | "K" | "KB" => 1024,
            "MiB" | "M" | "MB" => 1024 * 1024,
            "GiB" | "G" | "GB" => 1024 * 1024 * 1024,
            _ => return Err(format!("{raw:?} has an unknown unit: use KiB, MiB or GiB")),
        };
        n.checked_mul(factor)
            .map(ByteSize)
            .ok_or_else(|| format!("{raw:?} is too large"))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(ByteSize(n)),
            Raw::Text(text) => ByteSize::parse(&text).map_err(de::Error::custom),
        }
    }
}

/// A path prefix: absolute, already in normal form (no empty, `.` or `..`
/// segments, no percent-encoding, no trailing slash except for `/` itself),
/// so that it can be compared with normalised request paths byte for byte.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Prefix(pub String);

impl Prefix {
    /// Longer prefixes are refused: no request path that long is routed.
    pub const MAX_LEN: usize = 1024;

    pub fn parse(raw: &str) -> Result<Self, String> {
        if raw.len() > Prefix::MAX_LEN {
            return Err(format!(
                "prefix is {} bytes long; at most {} are allowed",
                raw.len(),
                Prefix::MAX_LEN
            ));
        }
        if !raw.starts_with('/') {
            return Err(format!("prefix {raw:?} must start with /"));
        }
        if raw == "/" {
            return Ok(Prefix(raw.into()));
        }
        let trimmed = raw.strip_suffix('/').unwrap_or(raw);
        for segment in trimmed[1..].split('/') {
            if segment.is_empty() || segment == "." || segment == ".." {
                return Err(format!(
                    "prefix {raw:?} has an empty, \".\" or \"..\" segment"
                ));
            }
            if segment
                .bytes()
                .any(|b| b == b'%' || b == b'\\' || b == b'?' || b == b'#' || !b.is_ascii_graphic())
            {
                return Err(format!(
                    "prefix {raw:?} may only hold printable ASCII without %, \\, ? or #"
                ));
            }
        }
        Ok(Prefix(trimmed.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `other` lies strictly inside this prefix, on whole segments
    /// (`/api` contains `/api/tasks`, never `/apix`).
    pub fn contains(&self, other: &Prefix) -> bool {
        let (outer, inner) = (self.0.as_str(), other.0.as_str());
        if outer == inner {
            return false;
        }
        outer == "/"
            || inner
                .strip_prefix(outer)
                .is_some_and(|rest| rest.starts_with('/'))
    }
}

impl<'de> Deserialize<'de> for Prefix {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Prefix::parse(&raw).map_err(de::Error::custom)
    }
}

/// An HTTP method token, upper-cased.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MethodName(pub String);

impl<'de> Deserialize<'de> for MethodName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        const KNOWN: [&str; 9] = [
            "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT",
        ];
        let upper = raw.to_ascii_uppercase();
        if KNOWN.contains(&upper.as_str()) {
            Ok(MethodName(upper))
        } else {
            Err(de::Error::custom(format!(
                "unknown method {raw:?}: expected one of {}",
                KNOWN.join(", ")
            )))
        }
    }
}

/// The longest path a Unix socket address holds (`sun_path` less its NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// Where an upstream server listens: `host:port`, or `unix:/absolute/path`
/// for a service on the same machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerAddr {
    Tcp(HostPort),
    Unix(String),
}

impl ServerAddr {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let Some(path) = raw.strip_prefix("unix:") else {
            return HostPort::parse(raw).map(ServerAddr::Tcp);
        };
        if !path.starts_with('/') {
            return Err(format!("{raw:?}: a Unix socket path must be absolute"));
        }
        if path.len() > MAX_SOCKET_PATH {
            return Err(format!(
                "{raw:?}: a Unix socket path holds at most {MAX_SOCKET_PATH} bytes"
            ));
        }
        if path.contains('\0') {
            return Err(format!("{raw:?}: a Unix socket path cannot hold a NUL"));
        }
        Ok(ServerAddr::Unix(path.to_owned()))
    }

    /// The host and port, for a TCP server.
    pub fn host_port(&self) -> Option<&HostPort> {
        match self {
            ServerAddr::Tcp(host_port) => Some(host_port),
            ServerAddr::Unix(_) => None,
        }
    }
}

impl fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerAddr::Tcp(host_port) => host_port.fmt(f),
            ServerAddr::Unix(path) => write!(f, "unix:{path}"),
        }
    }
}

impl<'de> Deserialize<'de> for ServerAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        ServerAddr::parse(&raw).map_err(de::Error::custom)
    }
}

/// An upstream server, `host:port`. Names are resolved when the table is
/// built, never per request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl HostPort {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let (host, port) = raw
            .rsplit_once(':')
            .ok_or_else(|| format!("{raw:?} must be host:port"))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("{raw:?} has an invalid port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains(['/', ' ', '@']) {
            return Err(format!("{raw:?} has an invalid host"));
        }
        Ok(HostPort {
            host: host.into(),
            port,
        })
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl<'de> Deserialize<'de> for HostPort {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        HostPort::parse(&raw).map_err(de::Error::custom)
    }
}

/// An address or network (`10.0.0.0/8`, `::1`), for trusted proxies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    pub addr: IpAddr,
    pub bits: u8,
}

impl Network {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let (addr, bits) = match raw.split_once('/') {
            Some((addr, bits)) => (addr, Some(bits)),
            None => (raw, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{raw:?} is not an IP address or network"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let bits = match bits {
            Some(bits) => bits
                .parse::<u8>()
                .ok()
                .filter(|b| *b <= max)
                .ok_or_else(|| format!("{raw:?} has an invalid prefix length"))?,
            None => max,
        };
        Ok(Network { addr, bits })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V6(v6)) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            _ => ip,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.bits))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl<'de> Deserialize<'de> for Network {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        Network::parse(&raw).map_err(de::Error::custom)
    }
}
