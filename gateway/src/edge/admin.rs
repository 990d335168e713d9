//! The admin listener: revocations reported by the auth service when there
//! is no Redis between them, and the status page. The decision is
//! `revocations::admin_request`; the page is `status`.

use super::generation::Gateway;
use crate::metrics;
use crate::status::{
    self, CacheRow, RevocationRow, RouteRow, ServerRow, Status, TracesRow, UpstreamRow,
};
use async_trait::async_trait;
use std::sync::Arc;

/// The admin listener: revocations reported by the auth service when there
/// is no Redis between them, and `GET /status`.
pub struct Admin {
    pub gateway: Arc<Gateway>,
    pub token: String,
}

/// The state of the generation in force, for the status page.
fn gather(gateway: &Gateway) -> Status {
    let generation = gateway.current.load_full();
    let routes = generation
        .config
        .routes
        .iter()
        .map(|route| RouteRow {
            prefix: route.prefix.as_str().to_owned(),
            hosts: route.hosts.iter().map(|h| h.text()).collect(),
            methods: route.methods.iter().map(|m| m.0.clone()).collect(),
            access: route.access.name(),
            roles: route.roles.clone(),
            target: match (&route.upstream, &route.redirect, &route.respond) {
                (Some(upstream), _, _) => upstream.clone(),
                (None, Some(redirect), _) => format!("redirect to {}", redirect.to),
                (None, None, Some(respond)) => format!("respond {}", respond.status),
                _ => String::new(),
            },
        })
        .collect();
    let mut upstreams: Vec<UpstreamRow> = generation
        .pools
        .iter()
        .map(|(name, pool)| {
            let servers: Vec<ServerRow> = pool
                .health()
                .into_iter()
                .map(|(address, healthy)| ServerRow { address, healthy })
                .collect();
            UpstreamRow {
                name: name.clone(),
                healthy: servers.iter().filter(|s| s.healthy).count(),
                servers,
            }
        })
        .collect();
    upstreams.sort_by(|a, b| a.name.cmp(&b.name));
    let m = metrics::get();
    let (hits, misses) = m.verify_counts();
    let tracing = generation.config.tracing.as_ref();
    Status {
        generation: generation.number,
        loaded_at: status::timestamp(generation.loaded_at),
        routes,
        upstreams,
        verdict_cache: CacheRow::new(generation.verifier.cached(), hits, misses),
        revocations: RevocationRow {
            redis: match (m.revocation_configured.get(), m.revocation_subscribed.get()) {
                (0, _) => "not configured",
                (_, 1) => "subscribed",
                _ => "down",
            },
            admin_listener: true,
        },
        traces: TracesRow {
            otlp_endpoint: tracing.map(|t| t.otlp_endpoint.clone()),
            sampling_ratio: tracing.map(|t| t.sampling_ratio),
            exported: m.trace_spans_exported.get(),
            dropped: m.trace_spans_dropped.get(),
        },
        reloads: gateway.reloads.newest_first(),
    }
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
        let accept = request
            .headers
            .get(http::header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let head = request.method == http::Method::HEAD;
        let mut content_type = "application/json";
        let (status, json) = match decision {
            AdminRequest::Status => {
                let page = gather(&self.gateway);
                if status::wants_json(accept.as_deref()) {
                    (200, serde_json::to_string(&page).unwrap_or_default())
                } else {
                    content_type = "text/html; charset=utf-8";
                    (200, status::html(&page))
                }
            }
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
        let body = if head { Vec::new() } else { json.into_bytes() };
        let mut response = http::Response::new(body);
        *response.status_mut() =
            http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_REQUEST);
        let headers = response.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(content_type),
        );
        // The page holds the deployment's shape: never cached, never framed,
        // no script, styles inline only.
        headers.insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("no-store"),
        );
        if status == 401 {
            headers.insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
        }
        headers.insert(
            http::header::X_CONTENT_TYPE_OPTIONS,
            http::HeaderValue::from_static("nosniff"),
        );
        headers.insert(
            http::header::CONTENT_SECURITY_POLICY,
            http::HeaderValue::from_static(
                "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
            ),
        );
        headers.insert(
            http::header::CONTENT_LENGTH,
            http::HeaderValue::from(length),
        );
        response
    }
}
