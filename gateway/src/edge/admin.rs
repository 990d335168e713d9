//! The admin listener: revocations reported by the auth service when there
//! is no Redis between them. The decision is `revocations::admin_request`.

use super::generation::Gateway;
use crate::metrics;
use async_trait::async_trait;
use std::sync::Arc;

/// The admin listener: revocations reported by the auth service when there
/// is no Redis between them. The decision is `revocations::admin_request`.
pub struct Admin {
    pub gateway: Arc<Gateway>,
    pub token: String,
}

/// Admin request bodies are one small JSON object.
const ADMIN_BODY_LIMIT: usize = 4096;

#[async_trait]
impl pingora::apps::http_app::ServeHttp for Admin {
    async fn response(
        &self,
        session: &mut pingora::protocols::http::ServerSession,
    ) -> http::Response<Vec<u8>> {
        use crate::revocations::{AdminRequest, admin_request};
        let mut body = Vec::new();
        let mut too_large = false;
        while let Ok(Some(chunk)) = session.read_request_body().await {
            body.extend_from_slice(&chunk);
            if body.len() > ADMIN_BODY_LIMIT {
                too_large = true;
                break;
            }
        }
        let request = session.req_header();
        let decision = if too_large {
            AdminRequest::Refused(413, "payload_too_large", "the body is too large")
        } else {
            admin_request(
                request.method.as_str(),
                request.uri.path(),
                request
                    .headers
                    .get(http::header::AUTHORIZATION)
                    .map(|v| v.as_bytes()),
                &body,
                &self.token,
            )
        };
        let (status, json) = match decision {
            AdminRequest::Revoke(message) => {
                metrics::get().revocations.inc();
                let purged = crate::revocations::apply(
                    &self.gateway.current.load().verifier,
                    &message,
                    "admin listener",
                )
                .await;
                (200, format!(r#"{{"purged":{purged}}}"#))
            }
            AdminRequest::Refused(status, code, message) => {
                (status, contract::envelope::render(code, message))
            }
        };
        let length = json.len();
        let mut response = http::Response::new(json.into_bytes());
        *response.status_mut() =
            http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_REQUEST);
        let headers = response.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        headers.insert(
            http::header::CONTENT_LENGTH,
            http::HeaderValue::from(length),
        );
        response
    }
}
