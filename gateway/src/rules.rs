//! A route's header rules (`request_headers`, `response_headers`) as edits:
//! removals, then values set, then values added. The names the gateway owns
//! are refused when the file is checked, so these edits never undo one of
//! the gateway's own.

use crate::config::header_rules::HeaderRules;
use crate::edit::Edit;
use http::{HeaderName, HeaderValue};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    edits: Vec<Edit>,
}

impl Rules {
    pub fn new(rules: &HeaderRules) -> Rules {
        let name = |n: &String| HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes()).ok();
        let pair = |(n, v): (&String, &String)| Some((name(n)?, HeaderValue::from_str(v).ok()?));
        let mut edits: Vec<Edit> = rules
            .remove
            .iter()
            .filter_map(name)
            .map(Edit::Remove)
            .collect();
        edits.extend(
            rules
                .set
                .iter()
                .filter_map(pair)
                .map(|(n, v)| Edit::Put(n, v)),
        );
        edits.extend(
            rules
                .add
                .iter()
                .filter_map(pair)
                .map(|(n, v)| Edit::Append(n, v)),
        );
        Rules { edits }
    }

    pub fn edits(&self) -> &[Edit] {
        &self.edits
    }

    pub fn is_empty(&self) -> bool {
        self.edits.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::header_map;

    #[test]
    fn removals_then_values_set_then_values_added() {
        let rules = Rules::new(&HeaderRules {
            remove: vec!["Server".into(), "x-powered-by".into()],
            set: [("X-Frame-Options".to_owned(), "DENY".to_owned())].into(),
            add: [("cache-control".to_owned(), "no-transform".to_owned())].into(),
        });
        let mut headers = header_map(&[
            ("server", "upstream/1.0"),
            ("x-powered-by", "php"),
            ("x-frame-options", "SAMEORIGIN"),
            ("cache-control", "max-age=60"),
            ("content-type", "text/html"),
        ]);
        crate::edit::apply(&mut headers, rules.edits());
        assert_eq!(headers.get("server"), None);
        assert_eq!(headers.get("x-powered-by"), None);
        assert_eq!(headers["x-frame-options"], "DENY");
        let cache: Vec<_> = headers.get_all("cache-control").iter().collect();
        assert_eq!(cache, ["max-age=60", "no-transform"]);
        assert_eq!(headers["content-type"], "text/html");
    }
}
