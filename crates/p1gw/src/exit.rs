//! Exit codes (sysexits, docs/contracts.md §3) and the one place that maps errors to them.

/// Exit codes of docs/contracts.md §3.
pub struct Exit;

impl Exit {
    /// Success.
    pub const OK: u8 = 0;
    /// Bad command line.
    pub const USAGE: u8 = 64;
    /// Some input was not a valid telegram.
    pub const DATA: u8 = 65;
    /// An input file is missing.
    pub const NO_INPUT: u8 = 66;
    /// A required service is unavailable at start.
    pub const UNAVAILABLE: u8 = 69;
    /// I/O error.
    pub const IO: u8 = 74;
    /// Configuration error.
    pub const CONFIG: u8 = 78;
}

/// An error that knows its exit code; anything else maps by its cause.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Coded {
    /// The process exit code (sysexits.h, see [`Exit`]).
    pub code: u8,
    /// What went wrong, one line, for stderr.
    pub message: String,
}

impl Coded {
    /// An `anyhow::Error` that makes `p1gw` exit with `code` after printing `message`.
    pub fn error(code: u8, message: impl Into<String>) -> anyhow::Error {
        anyhow::Error::new(Coded {
            code,
            message: message.into(),
        })
    }
}

/// The exit code for an error chain: an explicit [`Coded`] wins, then I/O
/// errors (missing file → 66, other → 74), else 70-ish software errors are
/// reported as I/O (74) since nothing else reaches here.
pub fn code_of(error: &anyhow::Error) -> u8 {
    for cause in error.chain() {
        if let Some(coded) = cause.downcast_ref::<Coded>() {
            return coded.code;
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::NotFound => Exit::NO_INPUT,
                _ => Exit::IO,
            };
        }
    }
    Exit::IO
}
