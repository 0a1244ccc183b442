//! The crate's one error type.

/// Why bytes did not make a telegram. Every variant is a rejected frame that a
/// caller counts under [`Error::reason`]; unknown or odd data lines are never
/// errors (they are kept as data).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// A frame ended before its `!` line: a new line-initial `/` arrived, or
    /// the input ended in the middle of a line.
    #[error("truncated telegram: {len} bytes from offset {offset} without a '!' end line")]
    Truncated {
        /// Stream offset of the frame's `/`.
        offset: u64,
        /// Bytes seen before the frame broke off.
        len: usize,
    },
    /// A frame grew past the configured limit; its bytes were dropped and the
    /// decoder skipped to the next line-initial `/`.
    #[error("telegram at offset {offset} exceeds the {limit}-byte limit")]
    Oversize {
        /// Stream offset of the frame's `/`.
        offset: u64,
        /// The limit in force.
        limit: usize,
    },
    /// The CRC after `!` does not match the bytes.
    #[error("CRC mismatch: telegram says {expected:04X}, computed {computed:04X}")]
    CrcMismatch {
        /// The CRC printed by the meter.
        expected: u16,
        /// The CRC of the bytes received.
        computed: u16,
    },
    /// Something other than 1–4 hex digits follows `!`.
    #[error("invalid CRC after '!': {text:?} is not 1 to 4 hex digits")]
    InvalidCrc {
        /// The text after `!`, lossily decoded.
        text: String,
    },
    /// A telegram without a CRC holds a byte no meter sends (anything but printable ASCII,
    /// tab, CR and LF): line noise, a wrong baud rate, or half a telegram glued to garbage
    /// that happened to end in a `!` line. Only when CRCs are checked; a valid CRC vouches
    /// for the bytes and skips this check.
    #[error("garbled telegram without a CRC: byte 0x{byte:02X} at frame offset {at} is not text")]
    Garbled {
        /// Offset of the first such byte in the frame.
        at: usize,
        /// The byte.
        byte: u8,
    },
    /// The bytes handed to [`crate::Telegram::parse`] do not start with `/`.
    #[error("not a telegram: the first byte is not '/'")]
    NoHeader,
}

impl Error {
    /// A short, stable label for metrics (`reason="crc"`).
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Truncated { .. } => "truncated",
            Error::Oversize { .. } => "oversize",
            Error::CrcMismatch { .. } => "crc",
            Error::InvalidCrc { .. } => "invalid_crc",
            Error::Garbled { .. } => "garbled",
            Error::NoHeader => "no_header",
        }
    }
}
