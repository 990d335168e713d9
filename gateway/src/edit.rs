//! Header edits: what the plain decisions ask the edge to do to a request
//! or response head, in order.

use http::HeaderName;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// Remove every value of the header.
    Remove(HeaderName),
    /// Replace every value of the header with this one.
    Set(HeaderName, String),
}

impl Edit {
    pub fn set(name: &'static str, value: impl Into<String>) -> Edit {
        Edit::Set(HeaderName::from_static(name), value.into())
    }

    pub fn remove(name: &'static str) -> Edit {
        Edit::Remove(HeaderName::from_static(name))
    }
}

/// Applies edits to a plain header map, as the edge does to the proxy's
/// heads; for tests.
pub fn apply(headers: &mut http::HeaderMap, edits: &[Edit]) {
    for edit in edits {
        match edit {
            Edit::Remove(name) => {
                headers.remove(name);
            }
            Edit::Set(name, value) => {
                if let Ok(value) = http::HeaderValue::from_str(value) {
                    headers.insert(name.clone(), value);
                }
            }
        }
    }
}
