//! The crate's error type.

/// Why an MQTT sink could not be built from its settings.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A setting is out of range.
    #[error("{0}")]
    Settings(String),
    /// No usable CA certificate, an unusable client certificate or key, or a configuration
    /// rustls refused.
    #[error(transparent)]
    Tls(#[from] p1_mqtt_transport::TlsError),
}
