//! Appends readings as JSON lines to a file.

use std::path::{Path, PathBuf};

use p1_core::sink::BoxFuture;
use p1_core::{Deliver, DeliveryError, Sink, Spooled};
use tokio::io::AsyncWriteExt as _;

use crate::JsonLine;

/// The sink kind in config.
pub const KIND: &str = "jsonl";

/// Writes spooled lines to the end of a file. The file is opened for each
/// batch, so a log rotator may move it away at any time; every batch is
/// synced (`fdatasync`) before the spool forgets it.
#[derive(Debug, Clone)]
pub struct JsonlFile {
    path: PathBuf,
}

impl JsonlFile {
    /// A writer appending to `path` (created when missing, never truncated).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        JsonlFile { path: path.into() }
    }

    /// The file written to.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A jsonl sink ready to run.
pub fn sink(path: impl Into<PathBuf>) -> Box<dyn Sink> {
    Box::new(Spooled::new(KIND, JsonLine, JsonlFile::new(path)))
}

impl Deliver for JsonlFile {
    fn max_batch(&self) -> usize {
        512
    }

    fn deliver<'a>(
        &'a mut self,
        records: &'a [(u64, Vec<u8>)],
    ) -> BoxFuture<'a, Result<usize, DeliveryError>> {
        Box::pin(async move {
            let transient = |what: &str, e: std::io::Error| DeliveryError::Transient {
                message: format!("{what} {}: {e}", self.path.display()),
                retry_after: None,
            };
            let mut file = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .await
                .map_err(|e| transient("cannot open", e))?;
            let mut buf = Vec::with_capacity(records.iter().map(|r| r.1.len()).sum());
            for (_, line) in records {
                buf.extend_from_slice(line);
            }
            file.write_all(&buf)
                .await
                .map_err(|e| transient("cannot write", e))?;
            file.sync_data()
                .await
                .map_err(|e| transient("cannot sync", e))?;
            Ok(records.len())
        })
    }
}
