//! The crate's error type.

use p1_mqtt_transport::TlsError;

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
    /// No usable CA certificate, an unusable client certificate or key, or a configuration
    /// rustls refused.
    #[error(transparent)]
    Tls(#[from] TlsError),
}
