//! TLS files, through Pingora's rustls: the certificate the HTTPS listener
//! presents (read with each generation), and the roots an upstream pool's
//! certificates are checked against. The handshake itself is in
//! `handshake.rs`.

use pingora::tls::sign::CertifiedKey;

use crate::config::{HostPattern, Tls};
use pingora::tls::{CryptoProvider, RootCertStore};
use pingora::utils::tls::{WrappedX509, parse_x509};
use std::collections::HashMap;
use std::sync::Arc;

/// The HTTPS listener's certificates: one per SNI name (exact, or a
/// `*.` wildcard over one label), and the default for a client that names
/// no host or one with no certificate of its own.
pub struct Certificates {
    default: Arc<CertifiedKey>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// By suffix with its dot: `.example.com` for `*.example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

impl Certificates {
    /// Reads every certificate `tls` names; the first unusable one refuses
    /// the whole set, with its key path.
    pub fn load(tls: &Tls) -> Result<Certificates, String> {
        let default =
            load_certificate(&tls.cert, &tls.key).map_err(|e| format!("tls.cert/tls.key: {e}"))?;
        let mut set = Certificates {
            default,
            exact: HashMap::new(),
            wildcard: HashMap::new(),
        };
        for (i, entry) in tls.certificates.iter().enumerate() {
            let certified = load_certificate(&entry.cert, &entry.key)
                .map_err(|e| format!("tls.certificates[{i}]: {e}"))?;
            for host in &entry.hosts {
                let slot = match host {
                    HostPattern::Exact(name) => set.exact.entry(name.clone()),
                    HostPattern::Wildcard(suffix) => set.wildcard.entry(suffix.clone()),
                };
                slot.or_insert_with(|| Arc::clone(&certified));
            }
        }
        Ok(set)
    }

    /// The certificate for a client's SNI name: exact, then the wildcard
    /// one label up (a certificate's `*.` covers exactly one label, RFC 6125
    /// §6.4.3, so a deeper name gets the default rather than a certificate
    /// that cannot be valid for it), then the default.
    pub fn pick(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = sni.and_then(crate::config::normal_host) else {
            return Arc::clone(&self.default);
        };
        let found = self.exact.get(&name).or_else(|| {
            let dot = name.find('.')?;
            self.wildcard.get(&name[dot..])
        });
        Arc::clone(found.unwrap_or(&self.default))
    }
}

/// Reads a PEM certificate chain (leaf first) and its private key.
pub fn load_certificate(cert: &str, key: &str) -> Result<Arc<CertifiedKey>, String> {
    for path in [cert, key] {
        std::fs::metadata(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    }
    let (chain, private) = pingora::tls::load_certs_and_key_files(cert, key)
        .map_err(|e| format!("cannot read {cert} or {key}: {e}"))?
        .ok_or_else(|| format!("{cert} holds no PEM certificate or {key} no PEM private key"))?;
    pingora::tls::install_default_crypto_provider();
    let provider = CryptoProvider::get_default().ok_or("no TLS crypto provider")?;
    let signing = provider
        .key_provider
        .load_private_key(private)
        .map_err(|e| format!("{key}: unusable private key: {e}"))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| format!("{key} does not belong to the certificate in {cert}: {e}"))?;
    Ok(Arc::new(certified))
}

/// What `--check` adds to the file's own checks: that every certificate,
/// key and CA file it names can be read and used, each problem with its
/// key path.
pub fn check_files(config: &crate::config::Config) -> Vec<String> {
    let mut problems = Vec::new();
    if let Some(tls) = &config.tls {
        if let Err(e) = load_certificate(&tls.cert, &tls.key) {
            problems.push(format!("tls.cert/tls.key: {e}"));
        }
        for (i, entry) in tls.certificates.iter().enumerate() {
            if let Err(e) = load_certificate(&entry.cert, &entry.key) {
                problems.push(format!("tls.certificates[{i}]: {e}"));
            }
        }
    }
    for (name, upstream) in &config.upstreams {
        if let Some(ca) = upstream.tls.as_ref().and_then(|t| t.ca.as_deref())
            && let Err(e) = load_roots(ca)
        {
            problems.push(format!("upstreams.{name}.tls.ca: {e}"));
        }
    }
    problems
}

/// Reads PEM CA certificates for checking an upstream pool's servers.
pub fn load_roots(path: &str) -> Result<Arc<[WrappedX509]>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let mut checked = RootCertStore::empty();
    let mut roots = Vec::new();
    for block in pem_blocks(&pem, "CERTIFICATE") {
        let der = block.map_err(|e| format!("{path}: {e}"))?;
        // Added to a store first: a certificate that does not parse is an
        // error here, not a panic when the first connection is made.
        checked
            .add(pingora::tls::CertificateDer::from(der.clone()))
            .map_err(|e| format!("{path}: not a usable CA certificate: {e}"))?;
        roots.push(WrappedX509::new(der, parse_x509));
    }
    if roots.is_empty() {
        return Err(format!("{path} holds no PEM certificate"));
    }
    Ok(roots.into())
}

/// The base64 bodies of `label` blocks in a PEM file, decoded.
fn pem_blocks<'a>(
    pem: &'a [u8],
    label: &'a str,
) -> impl Iterator<Item = Result<Vec<u8>, String>> + 'a {
    use base64::Engine;
    let text = String::from_utf8_lossy(pem).into_owned();
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let mut blocks = Vec::new();
    let mut rest = text.as_str();
    while let Some(start) = rest.find(&begin) {
        let after = &rest[start + begin.len()..];
        let Some(stop) = after.find(&end) else {
            blocks.push(Err(format!("a {label} block is not closed")));
            break;
        };
        let body: String = after[..stop]
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        blocks.push(
            base64::engine::general_purpose::STANDARD
                .decode(body)
                .map_err(|e| format!("a {label} block is not base64: {e}")),
        );
        rest = &after[stop + end.len()..];
    }
    blocks.into_iter()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_blocks_are_found_and_checked() {
        let pem = b"junk\n-----BEGIN CERTIFICATE-----\nAQID\nBA==\n-----END CERTIFICATE-----\n\
                    -----BEGIN PRIVATE KEY-----\nBQY=\n-----END PRIVATE KEY-----\n\
                    -----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n\
                    -----BEGIN CERTIFICATE-----\nAQ==";
        let blocks: Vec<Result<Vec<u8>, String>> = pem_blocks(pem, "CERTIFICATE").collect();
        assert_eq!(blocks.len(), 3);
        assert_eq!(blocks[0], Ok(vec![1, 2, 3, 4]));
        assert!(blocks[1].as_ref().is_err_and(|e| e.contains("base64")));
        assert!(blocks[2].as_ref().is_err_and(|e| e.contains("not closed")));
    }

    #[test]
    fn unreadable_or_mismatched_files_are_refused_with_their_names() {
        let dir = tempfile::tempdir().expect("dir");
        let missing = dir.path().join("missing.pem").display().to_string();
        let error = load_certificate(&missing, &missing).expect_err("missing");
        assert!(error.contains("missing.pem"), "{error}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "nothing here").expect("write");
        let empty = empty.display().to_string();
        let error = load_certificate(&empty, &empty).expect_err("empty");
        assert!(error.contains("no PEM"), "{error}");
        let error = load_roots(&empty).expect_err("empty");
        assert!(error.contains("no PEM certificate"), "{error}");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\nAQID\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let error = load_roots(&garbage.display().to_string()).expect_err("garbage");
        assert!(error.contains("not a usable CA certificate"), "{error}");
    }
}
