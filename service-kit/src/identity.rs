//! The caller's identity, as set by the gateway.
//!
//! Services behind the gateway never see a token: the gateway verifies it,
//! removes every client-sent copy of these headers and sets exactly one of
//! each. A service therefore trusts `x-user-id` and nothing else, and treats a
//! missing, malformed or repeated header as a request that did not come
//! through the gateway.

use crate::ApiError;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};

pub use contract::identity::parse_user_id;
pub use contract::identity::{USER_ID as USER_ID_HEADER, USER_ROLE as USER_ROLE_HEADER};

/// The authenticated user's id from `x-user-id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UserId(pub i64);

/// The authenticated user's role from `x-user-role`, when the gateway set one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRole(pub Option<String>);

impl UserRole {
    pub fn is_admin(&self) -> bool {
        self.0.as_deref() == Some("admin")
    }
}

/// Returns the single value of `name`: `Ok(None)` when absent, an error when
/// repeated or not visible ASCII.
fn single<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "ambiguous_identity",
            format!("more than one {name} header"),
        ));
    }
    first
        .to_str()
        .map(Some)
        .map_err(|_| ApiError::unauthenticated(format!("malformed {name} header")))
}

impl<S: Send + Sync> FromRequestParts<S> for UserId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let raw = single(&parts.headers, USER_ID_HEADER)?
            .ok_or_else(|| ApiError::unauthenticated("authentication required"))?;
        parse_user_id(raw)
            .map(UserId)
            .ok_or_else(|| ApiError::unauthenticated("malformed x-user-id header"))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for UserRole {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(UserRole(
            single(&parts.headers, USER_ROLE_HEADER)?.map(str::to_owned),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn extract(values: &[&str]) -> Result<UserId, ApiError> {
        let mut request = axum::http::Request::builder();
        for value in values {
            request = request.header(USER_ID_HEADER, *value);
        }
        let (mut parts, ()) = request.body(()).expect("request").into_parts();
        UserId::from_request_parts(&mut parts, &()).await
    }

    #[tokio::test]
    async fn header_count_decides_the_status() {
        assert_eq!(extract(&["7"]).await, Ok(UserId(7)));
        assert_eq!(
            extract(&[]).await.expect_err("missing").status,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            extract(&["x"]).await.expect_err("malformed").status,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            extract(&["7", "7"]).await.expect_err("repeated").status,
            StatusCode::BAD_REQUEST
        );
    }
}
