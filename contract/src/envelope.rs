//! The JSON error envelope: `{"error": {"code": "...", "message": "..."}}`.

use serde::Serialize;

#[derive(Serialize)]
struct Envelope<'a> {
    error: Body<'a>,
}

#[derive(Serialize)]
struct Body<'a> {
    code: &'a str,
    message: &'a str,
}

/// Renders an error envelope. Serialisation of two strings cannot fail, but
/// a fixed fallback keeps this infallible without a panic path.
pub fn render(code: &str, message: &str) -> String {
    serde_json::to_string(&Envelope {
        error: Body { code, message },
    })
    .unwrap_or_else(|_| r#"{"error":{"code":"internal","message":"internal server error"}}"#.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_and_escapes() {
        assert_eq!(
            render("not_found", "no such resource"),
            r#"{"error":{"code":"not_found","message":"no such resource"}}"#
        );
        let text = render("bad", "a \"quoted\"\nline");
        let value: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(value["error"]["message"], "a \"quoted\"\nline");
    }
}
