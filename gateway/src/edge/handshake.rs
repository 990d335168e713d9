//! The HTTPS listener's handshakes. The listener never holds a certificate
//! of its own: every handshake asks the resolver, which answers with the
//! certificate of the generation in force. A reload reads the files again
//! while building the new generation (a bad file refuses the reload, and the
//! old certificate stays), and the swap that installs the routes installs the
//! certificate too, so a rotation needs no restart and drops no connection.

use super::generation::Gateway;
use pingora::listeners::tls::TlsSettings;
use pingora::tls::sign::CertifiedKey;
use pingora::tls::{ClientHello, ResolvesServerCert};
use std::sync::Arc;

/// Answers every handshake with the current generation's certificate for
/// the name the client sent (SNI).
pub struct Resolver {
    pub gateway: Arc<Gateway>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Resolver")
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let current = self.gateway.current.load();
        Some(current.certificate.as_ref()?.pick(hello.server_name()))
    }
}

/// The HTTPS listener's settings: TLS 1.2 and 1.3 (rustls offers nothing
/// older), the resolver's certificate, and ALPN h2 then http/1.1 when
/// `http2`.
pub fn settings(gateway: Arc<Gateway>, http2: bool) -> Result<TlsSettings, String> {
    let mut settings =
        TlsSettings::intermediate("", "").map_err(|e| format!("TLS settings: {e}"))?;
    settings.set_cert_resolver(Arc::new(Resolver { gateway }));
    if http2 {
        settings.enable_h2();
    }
    Ok(settings)
}
