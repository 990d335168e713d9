//! Header edits: what the plain decisions ask the edge to do to a request
//! or response head, in order.

use http::{HeaderName, HeaderValue};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// Remove every value of the header.
    Remove(HeaderName),
    /// Replace every value of the header with this one. The name is
    /// written as spelled here (HTTP/1 keeps a header's case): a static
    /// name costs no copy when the head is written.
    Set(&'static str, HeaderValue),
    /// Replace every value, for a name known only at run time (a route's
    /// header rules).
    Put(HeaderName, HeaderValue),
    /// Add a value beside those the header has.
    Append(HeaderName, HeaderValue),
}

/// A value the gateway made could not be a header value (a bug, never a
/// client's doing: every value is built from checked parts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsendable;

impl Edit {
    /// Sets `name` to `value`, taken over without a copy.
    pub fn set(name: &'static str, value: impl Into<String>) -> Result<Edit, Unsendable> {
        let value = HeaderValue::try_from(value.into()).map_err(|_| Unsendable)?;
        Ok(Edit::Set(name, value))
    }

    /// Sets `name` to a value known at compile time.
    pub fn set_static(name: &'static str, value: &'static str) -> Edit {
        Edit::Set(name, HeaderValue::from_static(value))
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
                if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
                    headers.insert(name, value.clone());
                }
            }
            Edit::Put(name, value) => {
                headers.insert(name.clone(), value.clone());
            }
            Edit::Append(name, value) => {
                headers.append(name.clone(), value.clone());
            }
        }
    }
}
