//! The crate's error type.

use crate::connection_string::ConnectionStringError;

/// Why an Azure IoT Hub sink could not be built from its settings. Messages name the setting
/// or the connection string's field, never a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// The connection string is malformed.
    #[error("connection string: {0}")]
    ConnectionString(#[from] ConnectionStringError),
    /// Key and certificate do not fit together.
    #[error("{0}")]
    Auth(String),
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
