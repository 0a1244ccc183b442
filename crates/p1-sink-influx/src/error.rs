//! The crate's one error type.

/// Why an InfluxDB sink could not be built from its settings.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The base URL is not an `http://` or `https://` URL without query or credentials. (The
    /// message does not repeat the URL: it might hold a password.)
    #[error("url: {0}")]
    Url(String),
    /// A user name, password or token cannot go into an HTTP header (a control character).
    #[error("{0} holds a character that cannot be sent in an HTTP header")]
    Credentials(&'static str),
    /// The HTTP client could not be set up (TLS configuration).
    #[error("cannot set up the HTTP client: {0}")]
    Client(String),
    /// `batch_size` is 0.
    #[error("batch_size must be at least 1")]
    BatchSize,
    /// `max_in_flight` is 0.
    #[error("max_in_flight must be at least 1")]
    MaxInFlight,
}
