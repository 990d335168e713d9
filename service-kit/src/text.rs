//! One rule for every text a client sends: no control characters.
//!
//! PostgreSQL text cannot hold NUL (a title `"a\u0000b"` was a 500 there and
//! stored fine on SQLite), and no field of any service (titles, names, SKUs,
//! emails, passwords, identifiers) has a use for the other C0 and C1 controls
//! or DEL: tabs and newlines included, they only forge log lines and break
//! what displays them. The extractors in [`crate::extract`] apply the rule
//! to every string of every JSON body, path parameter and query parameter,
//! so a handler never sees one, and the refusal (422) names the field.

use crate::ApiError;
use serde_json::Value;

/// Whether `c` is a control character: U+0000–U+001F, U+007F–U+009F.
pub fn is_control(c: char) -> bool {
    c.is_control()
}

/// Refuses `value` when it holds a control character, naming `field`.
pub fn check(field: &str, value: &str) -> Result<(), ApiError> {
    if value.chars().any(is_control) {
        return Err(refusal(field));
    }
    Ok(())
}

fn refusal(field: &str) -> ApiError {
    ApiError::validation(format!(
        "{field} must not contain control characters (U+0000-U+001F, U+007F-U+009F)"
    ))
}

/// The path (`items[2].sku`) of the first string or key in `value` that
/// holds a control character.
pub fn find_control(value: &Value) -> Option<String> {
    fn walk(value: &Value, path: &mut String) -> bool {
        match value {
            Value::String(s) => s.chars().any(is_control),
            Value::Array(items) => items.iter().enumerate().any(|(i, item)| {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                let found = walk(item, path);
                if !found {
                    path.truncate(len);
                }
                found
            }),
            Value::Object(map) => map.iter().any(|(key, item)| {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(
                    &key.chars()
                        .map(|c| if is_control(c) { '?' } else { c })
                        .collect::<String>(),
                );
                let found = key.chars().any(is_control) || walk(item, path);
                if !found {
                    path.truncate(len);
                }
                found
            }),
            _ => false,
        }
    }
    let mut path = String::new();
    walk(value, &mut path).then(|| if path.is_empty() { "body".into() } else { path })
}

/// [`find_control`] as a refusal.
pub fn check_json(value: &Value) -> Result<(), ApiError> {
    match find_control(value) {
        Some(field) => Err(refusal(&field)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn controls_are_found_with_their_field() {
        for (value, expected) in [
            (json!({"title": "a\u{0}b"}), Some("title")),
            (json!({"title": "tab\there"}), Some("title")),
            (json!({"name": "del\u{7f}"}), Some("name")),
            (json!({"name": "c1\u{85}"}), Some("name")),
            (
                json!({"items": [{"sku": "ok"}, {"sku": "x\u{1b}[31m"}]}),
                Some("items[1].sku"),
            ),
            (json!({"a\u{0}": 1}), Some("a?")),
            (json!("\u{0}"), Some("body")),
            (json!({"title": "Grüße, 日本, emoji 🎉, spaces  "}), None),
            (json!({"n": 1, "b": true, "z": null}), None),
        ] {
            assert_eq!(find_control(&value).as_deref(), expected, "{value}");
        }
        assert!(check("email", "a@b.c").is_ok());
        let refused = check("email", "a\u{0}@b.c").expect_err("NUL");
        assert_eq!(refused.status.as_u16(), 422);
        assert!(refused.message.starts_with("email must not"));
    }
}
