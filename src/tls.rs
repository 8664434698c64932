//! TLS on both sides of the proxy, with rustls (pingora's `rustls` feature, ring as the one
//! crypto provider): the HTTPS listener's certificate, checked before the listener starts
//! (pingora would panic inside its service on a bad file or a key that does not match) and
//! read again on every reload, so a renewed certificate needs no restart; and the CA that
//! `https://` upstreams are verified against.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora::listeners::tls::TlsSettings;
use pingora::utils::tls::{parse_x509, WrappedX509};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::TlsListener;

/// The certificate the HTTPS listener shows, replaced in place on reload: handshakes after
/// the swap get the new one, connections already open keep theirs.
#[derive(Debug)]
pub struct ServerCert(ArcSwap<CertifiedKey>);

impl ServerCert {
    pub fn load(tls: &TlsListener) -> Result<ServerCert, String> {
        Ok(ServerCert(ArcSwap::new(certified_key(tls)?)))
    }

    /// Shows `key` from the next handshake on.
    pub fn replace(&self, key: Arc<CertifiedKey>) {
        self.0.store(key);
    }
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// The HTTPS listener's settings: `cert` for every handshake, and ALPN offering HTTP/2 then
/// HTTP/1.1.
pub fn listener_settings(tls: &TlsListener, cert: Arc<ServerCert>) -> Result<TlsSettings, String> {
    let mut settings = TlsSettings::intermediate("", "")
        .map_err(|e| format!("cannot set up TLS for {}: {e}", tls.listen))?;
    settings.set_cert_resolver(cert);
    settings.enable_h2();
    Ok(settings)
}

/// The certificate chain and its key, read and checked to match.
pub fn certified_key(tls: &TlsListener) -> Result<Arc<CertifiedKey>, String> {
    let (cert, key) = (display(&tls.cert_file), display(&tls.key_file));
    let (certs, private_key) = pingora::tls::load_certs_and_key_files(&cert, &key)
        .map_err(|e| format!("cannot read {cert} or {key}: {e}"))?
        .ok_or_else(|| format!("{cert} holds no certificate or {key} no private key"))?;
    let provider = rustls::crypto::ring::default_provider();
    let certified = CertifiedKey::from_der(
        certs.into_iter().map(|c| c.into_owned()).collect(),
        private_key.clone_key(),
        &provider,
    )
    .map_err(|e| format!("{key} does not fit the certificate in {cert}: {e}"))?;
    Ok(Arc::new(certified))
}

/// The certificates of a CA file, as pingora's peers take them.
pub fn upstream_ca(path: &Path) -> Result<Arc<[WrappedX509]>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read the CA file {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no certificate", path.display()));
    }
    let mut wrapped = Vec::with_capacity(certs.len());
    for cert in certs {
        let raw = cert.to_vec();
        // parse_x509 panics on bad DER: check first.
        if x509_parses(&raw) {
            wrapped.push(WrappedX509::new(raw, parse_x509));
        } else {
            return Err(format!(
                "{} holds a certificate that does not parse",
                path.display()
            ));
        }
    }
    Ok(Arc::from(wrapped))
}

fn x509_parses(der: &[u8]) -> bool {
    rustls::server::ParsedCertificate::try_from(&CertificateDer::from(der.to_vec())).is_ok()
}

fn display(path: &Path) -> String {
    path.display().to_string()
}
