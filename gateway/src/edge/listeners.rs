//! Client connections as they are accepted: each admitted under
//! [`Limits`] before a TLS handshake or a byte read, its places held until
//! it closes.

use crate::connections::{Admitted, Limits, Refused};
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use std::sync::Arc;

/// One open connection: its places, and its count in the gauge, given
/// back however its task ends.
struct Open {
    _admitted: Admitted,
}

impl Drop for Open {
    fn drop(&mut self) {
        crate::metrics::get().connections_open.dec();
    }
}

/// A Pingora application that admits each client connection under
/// [`Limits`] as it is accepted (before a TLS handshake or a byte read),
/// and holds its places until it closes.
pub struct Limited<A> {
    pub inner: Arc<A>,
    pub limits: Arc<Limits>,
}

#[async_trait::async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Limited<A> {
    fn admit(
        &self,
        peer: Option<&pingora::protocols::l4::socket::SocketAddr>,
    ) -> Option<Box<dyn std::any::Any + Send>> {
        let ip = peer.and_then(|a| a.as_inet()).map(|a| a.ip());
        let metrics = crate::metrics::get();
        match self.limits.admit(ip) {
            Ok(admitted) => {
                metrics.connections_open.inc();
                Some(Box::new(Open {
                    _admitted: admitted,
                }))
            }
            Err(reason) => {
                let label = match reason {
                    Refused::Total => "max_connections",
                    Refused::PerIp => "max_connections_per_ip",
                };
                metrics
                    .connections_refused
                    .with_label_values(&[label])
                    .inc();
                None
            }
        }
    }

    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        self.inner.process_new(stream, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}
