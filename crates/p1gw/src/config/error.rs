//! [`ConfigError`]: one problem with a configuration, located by file, line, column and key path.

use std::fmt;
use std::sync::Arc;

use crate::exit::Exit;

/// What kind of problem a [`ConfigError`] reports; it decides the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The configuration file could not be read (exit 66 when it is missing, 74 otherwise).
    Io(std::io::ErrorKind),
    /// Not valid TOML: a syntax error or a duplicate key (exit 78).
    Syntax,
    /// Valid TOML, but not the shape of a p1gw configuration: an unknown key, a wrong type, a
    /// missing key, an unknown `kind` (exit 78).
    Structure,
    /// The shape is right but a value is not: a bad duration, an unknown time zone, two meters on
    /// one port (exit 78).
    Invalid,
    /// `check-config`'s read-only look at this machine: a file or device named in the
    /// configuration is missing or unreadable (exit 78).
    Check,
}

/// A position in a configuration file, both 1-based; the column counts characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Location {
    /// Line number, from 1.
    pub line: usize,
    /// Column number in characters, from 1.
    pub column: usize,
}

impl Location {
    /// The location of byte `offset` in `text` (clamped to the end of the text).
    pub fn of(text: &str, offset: usize) -> Self {
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &text[..offset];
        let line_start = before.rfind('\n').map_or(0, |nl| nl + 1);
        Location {
            line: before.matches('\n').count() + 1,
            column: before[line_start..].chars().count() + 1,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// One problem with a configuration.
///
/// Displays as one line, `FILE:LINE:COL: KEY.PATH: what is wrong`, for example
/// `config/x.toml:12:7: sink[1].kind: unknown variant "mqq", expected one of mqtt, influx, …`.
/// `:LINE:COL` is left out when there is no position (the file could not be read), `KEY.PATH: `
/// when the problem is with the file as a whole. The message never contains a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    file: Arc<str>,
    location: Option<Location>,
    key: String,
    message: String,
    kind: ErrorKind,
}

impl ConfigError {
    /// A new error; `key` is the key path (`sink[1].url`), empty for the file as a whole.
    pub fn new(
        kind: ErrorKind,
        file: Arc<str>,
        location: Option<Location>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        ConfigError {
            file,
            location,
            key: one_line(key.into()),
            message: one_line(message.into()),
            kind,
        }
    }

    /// The file the error is in, as it was named (`config/x.toml`), or `built-in demo config`.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// Line and column of the offending key or value, when known.
    pub fn location(&self) -> Option<Location> {
        self.location
    }

    /// The key path, `sink[1].url`; empty when the error is about the file as a whole.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// What is wrong, without file, position or key path.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// What kind of problem this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The docs/contracts.md §3 exit code for this error: 66 when the configuration file is missing, 74
    /// when it cannot be read for another reason, 78 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self.kind {
            ErrorKind::Io(std::io::ErrorKind::NotFound) => Exit::NO_INPUT,
            ErrorKind::Io(_) => Exit::IO,
            ErrorKind::Syntax | ErrorKind::Structure | ErrorKind::Invalid | ErrorKind::Check => {
                Exit::CONFIG
            }
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some(location) = self.location {
            write!(f, ":{location}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// `text` with control characters escaped (`\n`, `\u{1b}`): messages quote values from the
/// file (`unknown variant `...``), and a multi-line string there must not break the one-line
/// error (found by the property tests of `config/tests.rs`).
fn one_line(text: String) -> String {
    if !text.chars().any(char::is_control) {
        return text;
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// The exit code for a list of errors: that of the first one, 78 (configuration error) for an
/// empty list.
pub fn exit_code(errors: &[ConfigError]) -> u8 {
    errors.first().map_or(Exit::CONFIG, ConfigError::exit_code)
}

/// All errors, one per line (no trailing newline), as check-config prints them.
pub fn report(errors: &[ConfigError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}
