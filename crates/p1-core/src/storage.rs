//! What a failing disk looks like to p1gw: one vocabulary for the spool and for sinks that write
//! files (jsonl), so that `/readyz`, the metrics and the logs name a storage fault the same way
//! wherever it happens.
//!
//! A storage error is sorted into a [`StorageKind`] by its `errno` (no space, read-only file
//! system, I/O error, file too large, anything else), and described in words with the path and,
//! for a full disk, the free space left: `disk full: /var/lib/p1gw has 0 bytes free`. The kind is
//! the `kind` label of `p1gw_storage_errors_total` and the reason of the sink's failed
//! deliveries; the words go to `/readyz`, `/api/v1/status` and the log (once per new kind).

use std::io;
use std::path::Path;

/// What kind of storage failure an I/O error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StorageKind {
    /// `ENOSPC` (or `EDQUOT`): the file system is full.
    NoSpace,
    /// `EROFS`: the file system is mounted read-only (the kernel remounts an SD card read-only
    /// after it found corruption).
    ReadOnly,
    /// `EIO` and other device errors: the medium is failing.
    Io,
    /// `EFBIG`: the file reached the largest size allowed (file system or `RLIMIT_FSIZE`).
    FileTooLarge,
    /// Anything else (no permission, the file vanished, …).
    Other,
}

impl StorageKind {
    /// Sorts an I/O error.
    #[must_use]
    pub fn of(err: &io::Error) -> Self {
        match err.kind() {
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => Self::NoSpace,
            io::ErrorKind::ReadOnlyFilesystem => Self::ReadOnly,
            io::ErrorKind::FileTooLarge => Self::FileTooLarge,
            // EIO has no ErrorKind of its own: it is `Other` or `Uncategorized` with errno 5.
            _ if err.raw_os_error() == Some(EIO) => Self::Io,
            _ => Self::Other,
        }
    }

    /// The metric label: `no_space`, `read_only`, `io`, `file_too_large`, `other`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoSpace => "no_space",
            Self::ReadOnly => "read_only",
            Self::Io => "io",
            Self::FileTooLarge => "file_too_large",
            Self::Other => "other",
        }
    }
}

/// `EIO` on Linux (and every other Unix p1gw runs on).
const EIO: i32 = 5;

/// A storage failure: its kind and what to tell a person.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageFault {
    /// What kind of failure.
    pub kind: StorageKind,
    /// In words, with the path: `disk full: /var/lib/p1gw has 0 bytes free`.
    pub message: String,
}

impl StorageFault {
    /// The fault `err` is, for a write to `path` (a file or a directory).
    #[must_use]
    pub fn new(path: &Path, err: &io::Error) -> Self {
        let kind = StorageKind::of(err);
        let dir = if path.is_dir() {
            path
        } else {
            path.parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
        };
        let message = match kind {
            StorageKind::NoSpace => match free_bytes(dir) {
                Some(free) => format!("disk full: {} has {free} bytes free", dir.display()),
                None => format!("disk full: {}", dir.display()),
            },
            StorageKind::ReadOnly => {
                format!("file system is read-only: {}", dir.display())
            }
            StorageKind::Io => format!("I/O error on {}: {err}", path.display()),
            StorageKind::FileTooLarge => {
                format!("file too large: {}: {err}", path.display())
            }
            StorageKind::Other => format!("cannot write {}: {err}", path.display()),
        };
        Self { kind, message }
    }
}

impl std::fmt::Display for StorageFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Bytes an unprivileged process may still write on the file system holding `dir`
/// (`statvfs`'s `f_bavail × f_frsize`), or `None` when it cannot be asked.
#[must_use]
pub fn free_bytes(dir: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(dir).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Registers the `# HELP` text of the storage error counter.
pub fn describe_metrics() {
    metrics::describe_counter!(
        "p1gw_storage_errors_total",
        "Failed writes to local storage (the spool, a jsonl file), by sink and kind \
         (no_space, read_only, io, file_too_large, other)."
    );
}

/// Counts one storage error of `kind` for sink `sink`.
pub(crate) fn count_error(sink: &str, kind: StorageKind) {
    metrics::counter!(
        "p1gw_storage_errors_total",
        "sink" => sink.to_owned(),
        "kind" => kind.as_str()
    )
    .increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_sorted_by_errno() {
        let of = |errno| StorageKind::of(&io::Error::from_raw_os_error(errno));
        assert_eq!(of(28), StorageKind::NoSpace); // ENOSPC
        assert_eq!(of(122), StorageKind::NoSpace); // EDQUOT
        assert_eq!(of(30), StorageKind::ReadOnly); // EROFS
        assert_eq!(of(5), StorageKind::Io); // EIO
        assert_eq!(of(27), StorageKind::FileTooLarge); // EFBIG
        assert_eq!(of(13), StorageKind::Other); // EACCES
    }

    #[test]
    fn a_full_disk_names_its_directory_and_free_space() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("spool.redb");
        let fault = StorageFault::new(&file, &io::Error::from_raw_os_error(28));
        assert_eq!(fault.kind, StorageKind::NoSpace);
        assert!(
            fault
                .message
                .starts_with(&format!("disk full: {} has ", dir.path().display()))
                && fault.message.ends_with(" bytes free"),
            "{}",
            fault.message
        );
        assert!(free_bytes(dir.path()).is_some());
        let ro = StorageFault::new(&file, &io::Error::from_raw_os_error(30));
        assert_eq!(
            ro.message,
            format!("file system is read-only: {}", dir.path().display())
        );
    }
}
