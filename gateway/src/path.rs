//! Request path normalisation.
//!
//! Routing decisions are made on one canonical spelling of the path, and
//! exactly that spelling is sent upstream, so that the gateway and the
//! backend can never disagree about which resource was asked for. Anything
//! that cannot be normalised without guessing is refused.

/// Why a path was refused (answered 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path must start with /")]
    NotAbsolute,
    #[error("encoded / or \\ in the path")]
    EncodedSeparator,
    #[error("backslash in the path")]
    Backslash,
    #[error("control character or NUL in the path")]
    ControlByte,
    #[error("malformed percent-encoding in the path")]
    BadEscape,
    #[error("the path climbs above the root")]
    AboveRoot,
    #[error("non-ASCII byte in the path (percent-encode it)")]
    NonAscii,
    #[error("a dot segment with parameters (\"..;\") in the path")]
    DotSegmentParameter,
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Normalises the path part of a request target (no query):
///
/// - percent-encoded unreserved characters are decoded (`%7E` → `~`,
///   `%2e` → `.`), other escapes are kept with upper-case hex;
/// - an encoded `/` or `\`, a raw `\`, NUL or any control byte is refused;
/// - repeated slashes collapse, `.` segments vanish and `..` removes the
///   segment before it; `..` above the root is refused.
///
/// A trailing slash is kept: `/a/` and `/a` may be different resources.
pub fn normalize(raw: &str) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    // First pass: decode escapes into a byte string, segment by segment.
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    bytes.get(i + 1).copied().and_then(hex_value),
                    bytes.get(i + 2).copied().and_then(hex_value),
                ) else {
                    return Err(PathError::BadEscape);
                };
                let value = hi * 16 + lo;
                match value {
                    b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                    v if v < 0x20 || v == 0x7f => return Err(PathError::ControlByte),
                    v if is_unreserved(v) => decoded.push(v),
                    v => {
                        const HEX: &[u8; 16] = b"0123456789ABCDEF";
                        decoded.extend_from_slice(&[
                            b'%',
                            HEX[usize::from(v >> 4)],
                            HEX[usize::from(v & 15)],
                        ]);
                    }
                }
                i += 3;
            }
            b'\\' => return Err(PathError::Backslash),
            b if b >= 0x80 => return Err(PathError::NonAscii),
            b if b < 0x20 || b == 0x7f => return Err(PathError::ControlByte),
            b => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    // Second pass: resolve segments. Only ASCII was produced above, so
    // splitting on '/' is exact.
    let text = String::from_utf8(decoded).map_err(|_| PathError::ControlByte)?;
    let trailing_slash = text.len() > 1 && text.ends_with('/');
    let mut segments: Vec<&str> = Vec::new();
    for segment in text.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                if segments.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
            }
            // Servlet containers read "..;x" as "..": refuse rather than let
            // a backend climb where the gateway did not.
            s if s.starts_with("..;") || s.starts_with(".;") => {
                return Err(PathError::DotSegmentParameter);
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(text.len());
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    let ends_with_dots = text
        .rsplit('/')
        .next()
        .is_some_and(|last| last == "." || last == "..");
    if out.is_empty() || ((trailing_slash || ends_with_dots) && !segments.is_empty()) {
        out.push('/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_forms() {
        let cases = [
            ("/", Ok("/")),
            ("/api/tasks", Ok("/api/tasks")),
            ("/api/tasks/", Ok("/api/tasks/")),
            ("//api/tasks", Ok("/api/tasks")),
            ("/api//tasks///7", Ok("/api/tasks/7")),
            ("/api/./tasks", Ok("/api/tasks")),
            ("/api/auth/../tasks", Ok("/api/tasks")),
            ("/api/auth/%2e%2e/tasks", Ok("/api/tasks")),
            ("/api/auth/%2E%2E/tasks", Ok("/api/tasks")),
            ("/api/auth/.%2e/tasks", Ok("/api/tasks")),
            ("/api/tasks/..", Ok("/api/")),
            ("/api/tasks/.", Ok("/api/tasks/")),
            ("/api/%7euser", Ok("/api/~user")),
            ("/api/%61bc", Ok("/api/abc")),
            ("/api/a%20b", Ok("/api/a%20b")),
            ("/api/a%3bb", Ok("/api/a%3Bb")),
            ("/api/tasks;x", Ok("/api/tasks;x")),
            ("/..", Err(PathError::AboveRoot)),
            ("/api/../../etc", Err(PathError::AboveRoot)),
            ("/api/%2e%2e/%2e%2e/x", Err(PathError::AboveRoot)),
            ("/api/auth%2ftasks", Err(PathError::EncodedSeparator)),
            ("/api/auth%2Ftasks", Err(PathError::EncodedSeparator)),
            ("/api/auth%5ctasks", Err(PathError::EncodedSeparator)),
            ("/api\\tasks", Err(PathError::Backslash)),
            ("/api/%00", Err(PathError::ControlByte)),
            ("/api/%0a", Err(PathError::ControlByte)),
            ("/api/%7f", Err(PathError::ControlByte)),
            ("/api/caf\u{e9}", Err(PathError::NonAscii)),
            ("/api/public/..;/tasks", Err(PathError::DotSegmentParameter)),
            ("/api/public/.;x/tasks", Err(PathError::DotSegmentParameter)),
            ("/api/%2e%2e;/tasks", Err(PathError::DotSegmentParameter)),
            ("/api/a;b/c", Ok("/api/a;b/c")),
            ("/api/\u{1}", Err(PathError::ControlByte)),
            ("/api/%", Err(PathError::BadEscape)),
            ("/api/%zz", Err(PathError::BadEscape)),
            ("/api/%2", Err(PathError::BadEscape)),
            ("api/tasks", Err(PathError::NotAbsolute)),
            ("*", Err(PathError::NotAbsolute)),
            ("", Err(PathError::NotAbsolute)),
        ];
        for (raw, expected) in cases {
            assert_eq!(
                normalize(raw).as_deref().map_err(|e| *e),
                expected,
                "{raw:?}"
            );
        }
    }

    #[test]
    fn normalising_twice_changes_nothing() {
        for raw in ["/a/b/../c/", "/x/%7e/%20", "//a//./b", "/a/%41"] {
            let once = normalize(raw).expect("valid");
            assert_eq!(normalize(&once).expect("valid"), once, "{raw}");
        }
    }
}

/// Property tests: the normaliser against a plain reading of RFC 3986
/// §5.2.4 (dot-segment removal), after the documented extras (unreserved
/// escapes decoded, repeated slashes collapsed, climbing above the root
/// refused).
#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// RFC 3986 §5.2.4, step by step, on an input buffer.
    fn remove_dot_segments(path: &str) -> String {
        let mut input = path.to_owned();
        let mut output = String::new();
        let pop = |output: &mut String| {
            let cut = output.rfind('/').unwrap_or(0);
            output.truncate(cut);
        };
        while !input.is_empty() {
            if let Some(rest) = input.strip_prefix("../") {
                input = rest.to_owned();
            } else if let Some(rest) = input.strip_prefix("./") {
                input = rest.to_owned();
            } else if let Some(rest) = input.strip_prefix("/./") {
                input = format!("/{rest}");
            } else if input == "/." {
                input = "/".into();
            } else if let Some(rest) = input.strip_prefix("/../") {
                input = format!("/{rest}");
                pop(&mut output);
            } else if input == "/.." {
                input = "/".into();
                pop(&mut output);
            } else if input == "." || input == ".." {
                input.clear();
            } else {
                let start = usize::from(input.starts_with('/'));
                let end = input[start..].find('/').map_or(input.len(), |i| i + start);
                output.push_str(&input[..end]);
                input = input[end..].to_owned();
            }
        }
        output
    }

    /// The reference: `Err(AboveRoot)` when a `..` would climb above the
    /// root, else the RFC's answer.
    fn reference(raw: &str) -> Result<String, PathError> {
        let decoded = raw
            .replace("%2e", ".")
            .replace("%2E", ".")
            .replace("%61", "a")
            .replace("%7E", "~")
            .replace("%7e", "~");
        let mut collapsed = String::new();
        for c in decoded.chars() {
            if !(c == '/' && collapsed.ends_with('/')) {
                collapsed.push(c);
            }
        }
        let mut depth = 0usize;
        for segment in collapsed.split('/') {
            match segment {
                "" | "." => {}
                ".." => depth = depth.checked_sub(1).ok_or(PathError::AboveRoot)?,
                _ => depth += 1,
            }
        }
        let out = remove_dot_segments(&collapsed);
        Ok(if out.is_empty() { "/".into() } else { out })
    }

    fn segment() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "a", "b", "ab", ".", "..", "", "%2e", "%2E", "%2e%2e", ".%2e", "%61", "x%20y", "~",
            "%7E",
        ])
    }

    proptest! {
        #![proptest_config(ProptestConfig::default())]

        #[test]
        fn normalising_agrees_with_rfc_3986(segments in prop::collection::vec(segment(), 0..8)) {
            let raw = format!("/{}", segments.join("/"));
            prop_assert_eq!(normalize(&raw), reference(&raw), "{}", raw);
        }

        #[test]
        fn normal_forms_are_fixed_points(raw in "/[a-z./%0-9A-F;~-]{0,40}") {
            if let Ok(once) = normalize(&raw) {
                prop_assert_eq!(normalize(&once), Ok(once.clone()), "{}", raw);
                prop_assert!(once.starts_with('/'));
                prop_assert!(!once.contains("//"));
                prop_assert!(once.split('/').all(|s| s != "." && s != ".."));
            }
        }

        #[test]
        fn any_input_is_answered_without_a_panic(raw in "(?s).{0,80}") {
            let _ = normalize(&raw);
        }
    }
}
