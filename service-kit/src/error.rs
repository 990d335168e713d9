//! The JSON error envelope shared by every service.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::borrow::Cow;

/// An error as the client sees it: a status, a stable machine-readable code
/// and a human-readable message, rendered as
/// `{"error": {"code": "...", "message": "..."}}`.
///
/// Every 401 carries `WWW-Authenticate: Bearer`, so clients and proxies know
/// which scheme is expected without reading the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: Cow<'static, str>,
    pub message: Cow<'static, str>,
    /// Seconds for a `Retry-After` header, for 429 and 503 answers.
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(
        status: StatusCode,
        code: impl Into<Cow<'static, str>>,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            status,
            code: code.into(),
            message: message.into(),
            retry_after: None,
        }
    }

    #[must_use]
    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such resource")
    }

    pub fn unauthenticated(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
    }

    pub fn validation(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation_failed",
            message,
        )
    }

    /// A failure that is the server's fault. The detail goes to the log only;
    /// the client learns nothing about the internals.
    pub fn internal(detail: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal server error",
        )
    }

    /// Serialises the envelope. Exposed so that non-axum code (the gateway)
    /// can produce byte-for-byte the same bodies.
    pub fn body_json(&self) -> String {
        render(&self.code, &self.message)
    }
}

/// Renders an error envelope (the one rendering, shared with the gateway).
pub use contract::envelope::render;

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            self.body_json(),
        )
            .into_response();
        let headers = response.headers_mut();
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn parts(error: ApiError) -> (StatusCode, axum::http::HeaderMap, serde_json::Value) {
        let response = error.into_response();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (
            status,
            headers,
            serde_json::from_slice(&bytes).expect("json"),
        )
    }

    #[tokio::test]
    async fn renders_the_envelope_with_auth_and_retry_headers() {
        let cases = [
            (ApiError::unauthenticated("no token"), Some("Bearer"), None),
            (ApiError::not_found(), None, None),
            (
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "throttled", "slow down")
                    .with_retry_after(30),
                None,
                Some("30"),
            ),
        ];
        for (error, www_authenticate, retry_after) in cases {
            let expected = error.clone();
            let (status, headers, body) = parts(error).await;
            assert_eq!(status, expected.status);
            assert_eq!(body["error"]["code"], *expected.code);
            assert_eq!(body["error"]["message"], *expected.message);
            assert_eq!(
                headers
                    .get("www-authenticate")
                    .map(|v| v.to_str().expect("ascii")),
                www_authenticate
            );
            assert_eq!(
                headers
                    .get("retry-after")
                    .map(|v| v.to_str().expect("ascii")),
                retry_after
            );
            assert_eq!(headers["content-type"], "application/json");
        }
    }

    #[test]
    fn messages_with_quotes_stay_valid_json() {
        let body = render("x", r#"say "hi" \ bye"#);
        let value: serde_json::Value = serde_json::from_str(&body).expect("valid json");
        assert_eq!(value["error"]["message"], r#"say "hi" \ bye"#);
    }
}
