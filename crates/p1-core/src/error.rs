//! The crate's one error type.
//!
//! Messages are lowercase, have no final period and say where: the spool file, the component.
//! The underlying cause is kept as `source()`, never repeated in the message, so the binary's
//! `{:#}` chain prints each part once.

use std::path::PathBuf;

/// Everything that can go wrong in p1-core.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The spool's directory could not be created, or a corrupt file could not be moved aside.
    #[error("spool {path}: {op}")]
    SpoolIo {
        /// The spool file (or its directory) concerned.
        path: PathBuf,
        /// What was being done, e.g. `cannot create directory`.
        op: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// redb could not open the spool file for a reason other than corruption (corrupt files are
    /// moved aside instead, see [`crate::spool::Spool::open`]), e.g. another process holds it.
    #[error("spool {path}: cannot open")]
    SpoolOpen {
        /// The spool file.
        path: PathBuf,
        /// redb's error (boxed: redb's errors are large).
        #[source]
        source: Box<redb::DatabaseError>,
    },

    /// A read or write transaction on an open spool failed.
    #[error("spool {path}: {op} failed")]
    SpoolStorage {
        /// The spool file.
        path: PathBuf,
        /// The operation: `append`, `peek`, `ack`, `open`, `flush`.
        op: &'static str,
        /// redb's error (boxed: redb's errors are large).
        #[source]
        source: Box<redb::Error>,
    },

    /// A single record larger than the spool's whole budget can never be stored.
    #[error("spool {path}: record of {len} bytes exceeds max_bytes {max_bytes}")]
    RecordTooLarge {
        /// The spool file.
        path: PathBuf,
        /// The record's length in bytes.
        len: u64,
        /// The configured budget.
        max_bytes: u64,
    },

    /// The blocking task running a spool operation panicked or was cancelled because the runtime
    /// is shutting down; whether the operation took effect is unknown.
    #[error("spool {path}: background {op} did not finish")]
    SpoolTask {
        /// The spool file.
        path: PathBuf,
        /// The operation.
        op: &'static str,
        /// Tokio's join error.
        #[source]
        source: tokio::task::JoinError,
    },

    /// A configuration value p1-core cannot work with.
    #[error("{what}: {why}")]
    InvalidConfig {
        /// The setting, e.g. `spool max_bytes`.
        what: &'static str,
        /// Why it is refused.
        why: &'static str,
    },

    /// A component name is registered twice in the health registry while the first is alive.
    #[error("health registry: component {name:?} is already registered")]
    DuplicateComponent {
        /// The name.
        name: String,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
