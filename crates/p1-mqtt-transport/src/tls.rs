//! rustls client configuration for MQTT over TLS.

use std::fmt;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A client certificate and its private key, both PEM. `Debug` does not show the key.
#[derive(Clone)]
pub struct ClientIdentity {
    /// The certificate chain, leaf first.
    pub cert_pem: Vec<u8>,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key_pem: Vec<u8>,
}

impl fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .field("key_pem", &format_args!("***"))
            .finish()
    }
}

/// What to trust and how to present ourselves.
#[derive(Debug, Clone, Default)]
pub struct TlsSettings {
    /// PEM CA certificates to trust instead of the system's (`ca_file`). `None`: the system's
    /// trust store, read with rustls-native-certs (`/etc/ssl/certs` on Debian, kept current by
    /// the `ca-certificates` package; `SSL_CERT_FILE`/`SSL_CERT_DIR` override it).
    pub ca_pem: Option<Vec<u8>>,
    /// A client certificate, for servers that authenticate clients by certificate.
    pub client: Option<ClientIdentity>,
}

/// Why a TLS client configuration could not be built. Messages name the setting (the CA
/// certificates, the client certificate or its key), never a key's content; the caller adds
/// where it came from (p1gw: the configuration key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    /// The CA certificates (the CA file, or the system's) gave no usable certificate.
    #[error("{0}")]
    TrustAnchors(String),
    /// The client certificate cannot be used (or not with its key).
    #[error("client certificate: {0}")]
    ClientCert(String),
    /// The client certificate's private key cannot be used.
    #[error("client key: {0}")]
    ClientKey(String),
    /// rustls refused the configuration.
    #[error("TLS: {0}")]
    Tls(String),
}

/// Builds the rustls client configuration for `tls`, on the ring provider (explicitly, so it
/// works whether or not a process-wide default provider was installed).
///
/// # Errors
/// No usable CA certificate in `ca_pem` (or none in the system's store), an unusable client
/// certificate or key.
pub fn client_config(tls: &TlsSettings) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca_pem {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert
                    .map_err(|e| TlsError::TrustAnchors(format!("not a PEM certificate: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| TlsError::TrustAnchors(format!("unusable certificate: {e}")))?;
            }
            if roots.is_empty() {
                return Err(TlsError::TrustAnchors(
                    "no PEM certificate in the CA certificates".to_owned(),
                ));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map_or_else(|| "none found".to_owned(), ToString::to_string);
                return Err(TlsError::TrustAnchors(format!(
                    "no system CA certificates ({why}); install the ca-certificates package, or give CA certificates of your own"
                )));
            }
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| TlsError::Tls(e.to_string()))?
    .with_root_certificates(roots);
    let config = match &tls.client {
        None => builder.with_no_client_auth(),
        Some(id) => {
            let certs = CertificateDer::pem_slice_iter(&id.cert_pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| TlsError::ClientCert(format!("not a PEM certificate: {e}")))?;
            if certs.is_empty() {
                return Err(TlsError::ClientCert("no PEM certificate in it".to_owned()));
            }
            let key = PrivateKeyDer::from_pem_slice(&id.key_pem)
                .map_err(|e| TlsError::ClientKey(format!("no usable private key: {e}")))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| TlsError::ClientCert(e.to_string()))?
        }
    };
    Ok(Arc::new(config))
}
