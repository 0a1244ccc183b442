//! The crate's error type.

/// Why an MQTT sink could not be built from its settings.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A setting is out of range.
    #[error("{0}")]
    Settings(String),
    /// The CA certificates (the CA file, or the system's) gave no usable certificate.
    #[error("{0}")]
    TrustAnchors(String),
    /// The client certificate or key cannot be used.
    #[error("client certificate: {0}")]
    ClientCert(String),
    /// rustls refused the configuration.
    #[error("TLS: {0}")]
    Tls(String),
}

impl From<p1_mqtt_transport::TlsError> for BuildError {
    fn from(e: p1_mqtt_transport::TlsError) -> Self {
        use p1_mqtt_transport::TlsError;
        match e {
            TlsError::TrustAnchors(m) => BuildError::TrustAnchors(m),
            TlsError::ClientCert(m) => BuildError::ClientCert(m),
            TlsError::Tls(m) => BuildError::Tls(m),
        }
    }
}
