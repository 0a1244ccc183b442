//! The crate's one error type.

use std::path::PathBuf;
use std::sync::Arc;

/// What can go wrong when opening a meter port or talking to a reader.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Nothing is at the port's path (unplugged, or a udev name not created).
    #[error("{}: no such serial port", port.display())]
    PortMissing {
        /// The path.
        port: PathBuf,
    },
    /// The port exists but cannot be opened: in use by another program (it is
    /// opened exclusively), no permission, not a tty.
    #[error("{}: cannot open the serial port: {reason}", port.display())]
    PortOpen {
        /// The path.
        port: PathBuf,
        /// The OS's reason.
        reason: String,
    },
    /// The request line cannot be had: RTS/DTR on a port without modem lines,
    /// a GPIO chip or line that does not exist or is in use.
    #[error("request line {line}: {source}")]
    RequestLine {
        /// The line, as configured (`rts`, `gpio:gpiochip0:17`).
        line: String,
        /// The OS's error.
        #[source]
        source: std::io::Error,
    },
    /// The reader behind a [`crate::ReaderHandle`] has stopped.
    #[error("the reader of meter {meter:?} has stopped")]
    ReaderGone {
        /// The meter's name.
        meter: Arc<str>,
    },
}
