//! The auth service's one error type.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use service_kit::ApiError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Unknown email and wrong password are deliberately the same error.
    #[error("invalid email or password")]
    InvalidCredentials,
    #[error("invalid or expired token")]
    InvalidToken,
    #[error("authentication required")]
    Unauthenticated,
    #[error("this action requires the admin role")]
    Forbidden,
    #[error("an account with this email already exists")]
    EmailTaken,
    #[error("{0}")]
    Validation(String),
    #[error("no such user")]
    UserNotFound,
    #[error("{0}")]
    Conflict(&'static str),
    #[error("too many failed logins for this account; retry later")]
    TooManyAttempts { retry_after: u64 },
    #[error("the database is unavailable")]
    Unavailable,
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<sqlx::Error> for Error {
    fn from(error: sqlx::Error) -> Self {
        match error {
            // Pool exhaustion or a lost connection is a temporary condition the
            // client can retry, not a bug.
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
                tracing::warn!(error = %error, "database unavailable");
                Error::Unavailable
            }
            other => Error::Internal(other.to_string()),
        }
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        let message = error.to_string();
        match error {
            Error::InvalidCredentials => {
                ApiError::new(StatusCode::UNAUTHORIZED, "invalid_credentials", message)
            }
            Error::InvalidToken => {
                ApiError::new(StatusCode::UNAUTHORIZED, "invalid_token", message)
            }
            Error::Unauthenticated => ApiError::unauthenticated(message),
            Error::Forbidden => ApiError::new(StatusCode::FORBIDDEN, "forbidden", message),
            Error::EmailTaken => ApiError::new(StatusCode::CONFLICT, "email_taken", message),
            Error::Validation(_) => ApiError::validation(message),
            Error::UserNotFound => ApiError::new(StatusCode::NOT_FOUND, "not_found", message),
            Error::Conflict(_) => ApiError::new(StatusCode::CONFLICT, "conflict", message),
            Error::TooManyAttempts { retry_after } => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too_many_attempts", message)
                    .with_retry_after(retry_after)
            }
            Error::Unavailable => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
                    .with_retry_after(1)
            }
            Error::Api(api) => api,
            Error::Internal(detail) => ApiError::internal(&detail),
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        ApiError::from(self).into_response()
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
