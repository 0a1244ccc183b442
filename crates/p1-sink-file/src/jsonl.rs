//! Appends readings as JSON lines to a file.

use std::path::{Path, PathBuf};

use p1_core::sink::BoxFuture;
use std::io::Write as _;

use p1_core::{Deliver, DeliveryError, Sink, Spooled, StorageFault};

use crate::JsonLine;

/// The sink kind in config.
pub const KIND: &str = "jsonl";

/// Writes spooled lines to the end of a file. The file is opened for each
/// batch, so a log rotator may move it away at any time; every batch is
/// synced (`fdatasync`) before the spool forgets it.
///
/// A batch the disk does not take (full, read-only, I/O error, file too large)
/// is cut off again, so the file holds only whole lines; the error is a
/// [`DeliveryError::Storage`], and the readings stay spooled and are written
/// once the disk takes them.
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
            let mut buf = Vec::with_capacity(records.iter().map(|r| r.1.len()).sum());
            for (_, line) in records {
                buf.extend_from_slice(line);
            }
            let path = self.path.clone();
            // Plain blocking file I/O on the blocking pool: tokio's `File` acknowledges a write
            // when it has copied the bytes into its own buffer and reports that write's error
            // (disk full, EIO) only on a later call, which a dropped file never makes.
            let written = tokio::task::spawn_blocking(move || append_lines(&path, &buf))
                .await
                .map_err(|e| DeliveryError::Transient {
                    message: format!("jsonl write task failed: {e}"),
                    retry_after: None,
                })??;
            // Each record is one line (the encoder ends each with a newline).
            Ok(written.min(records.len()))
        })
    }
}

/// Appends `lines` (whole lines) to `path` and syncs it; returns how many of the records
/// (whole lines, in order) are now in the file: all of them, or, when the disk took only part
/// of the batch (full, or at the file-size limit), the whole lines it took, so that a batch
/// larger than the room left never blocks the records that fit. On any error the file is cut
/// back to its last whole line, so it never keeps a torn one, and the error says what the disk
/// did.
///
/// A torn last line found on opening (a crash, or a cut that failed) is cut off first: its
/// records were not acknowledged, so they are still in the spool and this write or a later one
/// brings them.
fn append_lines(path: &Path, lines: &[u8]) -> Result<usize, DeliveryError> {
    let fault = |e: std::io::Error| DeliveryError::Storage {
        fault: StorageFault::new(path, &e),
    };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(path)
        .map_err(fault)?;
    let len = file.metadata().map_err(fault)?.len();
    let start = whole_lines_end(&file, len).map_err(fault)?;
    if start < len {
        file.set_len(start).map_err(fault)?;
    }
    let Err(e) = file.write_all(lines).and_then(|()| file.sync_data()) else {
        return Ok(lines.iter().filter(|&&b| b == b'\n').count());
    };
    // What the disk took of this batch, up to its last whole line, may stay (once synced);
    // the rest is cut off again.
    let mut fault = StorageFault::new(path, &e);
    let written = file
        .metadata()
        .map(|m| m.len().saturating_sub(start))
        .unwrap_or(0)
        .min(lines.len() as u64) as usize;
    let keep = lines[..written]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let kept = match file.set_len(start + keep as u64) {
        Ok(()) if keep > 0 && file.sync_data().is_ok() => {
            lines[..keep].iter().filter(|&&b| b == b'\n').count()
        }
        Ok(()) => 0,
        Err(cut) => {
            fault.message = format!(
                "{}; cutting the torn batch off failed: {cut}",
                fault.message
            );
            0
        }
    };
    if kept > 0 {
        return Ok(kept);
    }
    if keep > 0 {
        // Kept but not synced: not acknowledged, so cut it off too (best effort: the next
        // write cuts a torn line anyway, and whole lines sent twice are duplicates, not loss).
        if let Err(cut) = file.set_len(start) {
            fault.message = format!("{}; cutting the batch off failed: {cut}", fault.message);
        }
    }
    Err(DeliveryError::Storage { fault })
}

/// The length of `file` without a torn last line: `len` when it is empty or ends in `\n`, else
/// just past its last `\n` (0 when it has none).
fn whole_lines_end(file: &std::fs::File, len: u64) -> std::io::Result<u64> {
    use std::os::unix::fs::FileExt as _;
    const CHUNK: u64 = 8192;
    let mut end = len;
    let mut buf = vec![0u8; CHUNK as usize];
    let mut last = true;
    while end > 0 {
        let from = end.saturating_sub(CHUNK);
        let chunk = &mut buf[..(end - from) as usize];
        file.read_exact_at(chunk, from)?;
        if last && chunk.last() == Some(&b'\n') {
            return Ok(len);
        }
        last = false;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            return Ok(from + i as u64 + 1);
        }
        end = from;
    }
    Ok(0)
}
