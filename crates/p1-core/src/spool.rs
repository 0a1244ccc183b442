//! A sink's on-disk, crash-safe FIFO of opaque byte records.
//!
//! Every sink worker owns one [`Spool`] (one redb file, `<spool dir>/<name>.redb`). Its intake
//! half encodes each reading and [appends](Spool::append) it *before* any network I/O; its
//! delivery half [peeks](Spool::peek) the oldest records, sends them, and
//! [acks](Spool::ack_up_to) them only once the backend has acknowledged them. A record therefore
//! leaves the spool in exactly two ways: acked by the backend, or evicted (oldest first, counted)
//! to keep the spool under its byte budget. Delivery is at-least-once: a crash between the
//! backend's ack and our [`Spool::ack_up_to`] sends that record again after the restart.
//!
//! # Records and sequence numbers
//!
//! Each record gets a sequence number (`u64`) from a counter that only grows, starts at 1 and
//! survives restarts (it is stored in the file, in the same transaction as the records, so even a
//! spool emptied by acks never hands out a seq twice). Records are returned oldest first, i.e. in
//! seq order. A spool that was found corrupt and started anew (see below) starts again at 1.
//!
//! # Byte budget
//!
//! [`Spool::bytes`] is the exact sum of the stored records' payload lengths; keys, B-tree pages
//! and free space are not counted. It is kept in memory, updated after every commit, and
//! recomputed from the records on open (so it can never drift from the file). An append that
//! would take it over `max_bytes` first evicts the oldest records, in the same transaction as the
//! insert. The file on disk is larger than `bytes()` (pages, a second copy of pages changed since
//! the last commit, free pages); redb reuses free pages but only shrinks the file on
//! `compact()`, which [`Spool::open`] runs when the file is much larger than its contents.
//!
//! # Durability
//!
//! By default ([`Durability::Immediate`]) every commit (append, batch, ack) is fsynced before the
//! call returns: an append that returned `Ok` survives a process crash and a power cut. On SD
//! cards, where each fsync costs time and wear, [`Durability::Batched`] fsyncs every n-th commit
//! only; the commits in between are *lost* (rolled back to the last fsynced one, never corrupt)
//! by a crash of the process or the machine. [`AppendOutcome::durable`] says which kind an
//! append was, and [`Spool::flush`] makes everything so far durable (call it on a timer and at
//! shutdown). Dropping the spool also makes pending commits durable. A lost ack only means a
//! record is delivered twice, which the backends tolerate (InfluxDB: same series + timestamp
//! is idempotent); a lost append is a lost reading, so batching trades safety for wear.
//!
//! # Corruption
//!
//! [`Spool::open`] checks the whole file's checksums. A file redb reports as corrupt (or that
//! makes redb panic, or that is not a spool) is renamed to `<file>.corrupt-<unix seconds>`, an
//! ERROR is logged, `p1gw_spool_corrupt_total` is incremented, and an empty spool is started in
//! its place: the daemon never refuses to start or panics over its spool. Other failures (no
//! permission, another process holds the file, disk errors) are returned as [`Error`].
//!
//! # Blocking
//!
//! Every method of [`Spool`] does blocking file I/O (an fsync may take tens of milliseconds on
//! an SD card). Async code uses [`AsyncSpool`], which runs each call on tokio's blocking pool;
//! only [`Spool::len`], [`Spool::bytes`] and [`Spool::is_empty`] (in-memory atomics) are fine to
//! call anywhere.
//!
//! # Metrics
//!
//! All labelled `sink` with the name given to [`Spool::open`]; [`describe_metrics`] registers
//! their help texts.
//!
//! | name | type | meaning |
//! |---|---|---|
//! | `p1gw_spool_evicted_total` | counter | records evicted (oldest first) to stay under `max_bytes` |
//! | `p1gw_spool_corrupt_total` | counter | spool files found corrupt, moved aside and restarted empty |
//! | `p1gw_spool_records` | gauge | records currently spooled |
//! | `p1gw_spool_bytes` | gauge | payload bytes currently spooled |

use std::fs;
use std::num::NonZeroU32;
use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use tokio::time::Instant;

use crate::error::{Error, Result};

#[cfg(test)]
mod tests;

/// Records by seq. The value is the caller's opaque payload.
const RECORDS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("records");
/// Small counters that must survive restarts; today only [`NEXT_SEQ`].
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
/// The seq the next appended record gets. Written in every append's transaction.
const NEXT_SEQ: &str = "next_seq";
/// redb's page cache. Delivery reads the oldest records once, intake writes the newest, so a
/// small cache is enough; redb's 1 GiB default would be silly on a Raspberry Pi.
const CACHE_BYTES: usize = 4 * 1024 * 1024;
/// Open compacts the file when it is larger than twice the payload plus this much.
const COMPACT_SLACK_BYTES: u64 = 4 * 1024 * 1024;
/// At most one eviction WARN per spool per this interval; the counter counts every one.
const EVICTION_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Register help texts for the spool metrics with the installed `metrics` recorder.
///
/// Call once after installing the exporter (Prometheus needs `# HELP` lines).
pub fn describe_metrics() {
    metrics::describe_counter!(
        "p1gw_spool_evicted_total",
        "Spooled records evicted, oldest first, to stay under the spool's max_bytes."
    );
    metrics::describe_counter!(
        "p1gw_spool_corrupt_total",
        "Spool files found corrupt, moved aside and restarted empty."
    );
    metrics::describe_gauge!("p1gw_spool_records", "Records currently spooled.");
    metrics::describe_gauge!(
        "p1gw_spool_bytes",
        metrics::Unit::Bytes,
        "Payload bytes currently spooled."
    );
}

/// When commits are fsynced. See the [module docs](self#durability).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Every commit is fsynced before it returns (the default).
    #[default]
    Immediate,
    /// Every `every`-th commit is fsynced; the ones in between are lost by a crash.
    Batched {
        /// How many commits make one fsync; 1 is the same as [`Durability::Immediate`].
        every: NonZeroU32,
    },
}

/// How a spool behaves; sizes are already typed (the config layer parses `"64MiB"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolConfig {
    /// Upper bound for [`Spool::bytes`]; appends evict the oldest records to stay under it.
    pub max_bytes: u64,
    /// When commits are fsynced.
    pub durability: Durability,
}

impl SpoolConfig {
    /// A config with the given budget and [`Durability::Immediate`].
    #[must_use]
    pub fn new(max_bytes: u64) -> Self {
        Self {
            max_bytes,
            durability: Durability::Immediate,
        }
    }
}

/// What [`Spool::append`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendOutcome {
    /// The record's sequence number.
    pub seq: u64,
    /// How many of the oldest records were evicted to make room (already counted in
    /// `p1gw_spool_evicted_total`).
    pub evicted: u64,
    /// Whether the commit was fsynced (always with [`Durability::Immediate`]).
    pub durable: bool,
}

/// What [`Spool::append_batch`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchOutcome {
    /// The records' sequence numbers, in the order given; empty for an empty batch.
    pub seqs: Range<u64>,
    /// How many of the oldest records were evicted to make room. When the batch itself is larger
    /// than `max_bytes`, its own first records are evicted too and counted here.
    pub evicted: u64,
    /// Whether everything up to and including this batch is fsynced.
    pub durable: bool,
}

/// Consecutive spooled records read as one buffer ([`Spool::peek_batch`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The seq of the first record in it.
    pub first: u64,
    /// The seq of the last record in it.
    pub last: u64,
    /// How many records it holds.
    pub records: usize,
    /// The records' payloads, concatenated oldest first.
    pub bytes: Vec<u8>,
}

/// One sink's crash-safe FIFO. See the [module docs](self).
///
/// `Spool` is `Send + Sync`: intake and delivery may call it from different threads at once.
/// Writers (append, ack, flush) are serialised by an internal lock held for the transaction
/// including its fsync; readers ([`Spool::peek`]) never wait for writers.
pub struct Spool {
    db: Database,
    path: PathBuf,
    sink: String,
    config: SpoolConfig,
    /// The authoritative in-memory mirror of the committed file state. Taken by every writer for
    /// the whole transaction: the lock, not redb's own writer lock, is what makes "compute the new
    /// state, commit, then publish it" atomic with respect to other writers.
    write: Mutex<WriteState>,
    /// Copies of `WriteState::{len, bytes}`, published after each commit, so that `len()` and
    /// `bytes()` never wait behind an fsync.
    len: AtomicU64,
    bytes: AtomicU64,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("path", &self.path)
            .field("sink", &self.sink)
            .field("config", &self.config)
            .field("len", &self.len())
            .field("bytes", &self.bytes())
            .finish_non_exhaustive()
    }
}

/// State that changes only together with a successful commit.
#[derive(Debug)]
struct WriteState {
    /// The seq the next record gets (also stored under `META[NEXT_SEQ]`).
    next_seq: u64,
    /// Records in `RECORDS`.
    len: u64,
    /// Sum of the payload lengths in `RECORDS`.
    bytes: u64,
    /// Commits since the last fsynced one (only with [`Durability::Batched`]).
    pending: u32,
    /// Evictions not yet mentioned in a WARN, and when the last WARN was.
    evicted_unlogged: u64,
    last_eviction_log: Option<Instant>,
}

/// Why an open attempt failed: corruption is handled by moving the file aside, anything else is
/// the caller's problem.
enum OpenFailure {
    Corrupt(String),
    Other(Error),
}

/// What a successful open found in the file.
struct Opened {
    db: Database,
    next_seq: u64,
    len: u64,
    bytes: u64,
}

impl Spool {
    /// Open (or create) the spool file at `path`; `sink` is the metrics label (the sink's name).
    ///
    /// Creates the parent directory if needed, verifies the file, recomputes `len` and `bytes`,
    /// and compacts the file when it is much larger than its contents. A corrupt file is moved
    /// aside and replaced by an empty spool (see the [module docs](self#corruption)).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for `max_bytes == 0`; [`Error::SpoolIo`] when the directory cannot
    /// be created or a corrupt file cannot be renamed; [`Error::SpoolOpen`] when redb cannot open
    /// the file for another reason than corruption (e.g. it is open elsewhere);
    /// [`Error::SpoolStorage`] when reading it fails.
    pub fn open(path: impl AsRef<Path>, sink: &str, config: SpoolConfig) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if config.max_bytes == 0 {
            return Err(Error::InvalidConfig {
                what: "spool max_bytes",
                why: "must be greater than zero",
            });
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(|source| Error::SpoolIo {
                path: dir.to_path_buf(),
                op: "cannot create directory",
                source,
            })?;
        }

        let opened = match try_open(&path) {
            Ok(opened) => opened,
            Err(OpenFailure::Other(err)) => return Err(err),
            Err(OpenFailure::Corrupt(reason)) => {
                let aside = move_aside(&path)?;
                tracing::error!(
                    sink,
                    path = %path.display(),
                    moved_to = %aside.display(),
                    reason,
                    "Spool file is corrupt; moved it aside and started an empty spool. \
                     The readings in it were not delivered."
                );
                metrics::counter!("p1gw_spool_corrupt_total", "sink" => sink.to_owned())
                    .increment(1);
                match try_open(&path) {
                    Ok(opened) => opened,
                    Err(OpenFailure::Other(err)) => return Err(err),
                    // A file we just created is corrupt: the disk is lying; give up loudly.
                    Err(OpenFailure::Corrupt(reason)) => {
                        return Err(Error::SpoolStorage {
                            path,
                            op: "open",
                            source: Box::new(redb::Error::Corrupted(reason)),
                        });
                    }
                }
            }
        };

        let spool = Self {
            db: opened.db,
            path,
            sink: sink.to_owned(),
            config,
            write: Mutex::new(WriteState {
                next_seq: opened.next_seq,
                len: opened.len,
                bytes: opened.bytes,
                pending: 0,
                evicted_unlogged: 0,
                last_eviction_log: None,
            }),
            len: AtomicU64::new(opened.len),
            bytes: AtomicU64::new(opened.bytes),
        };
        spool.publish_gauges(opened.len, opened.bytes);
        tracing::debug!(
            sink,
            path = %spool.path.display(),
            records = opened.len,
            bytes = opened.bytes,
            next_seq = opened.next_seq,
            "Spool opened."
        );
        Ok(spool)
    }

    /// The spool file's path.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The metrics label given to [`Spool::open`].
    #[must_use]
    pub fn sink(&self) -> &str {
        &self.sink
    }

    /// The configuration given to [`Spool::open`].
    #[must_use]
    pub fn config(&self) -> SpoolConfig {
        self.config
    }

    /// Records currently stored (as of the last commit). Never blocks on I/O.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.len.load(Ordering::Acquire)
    }

    /// Whether no record is stored. Never blocks on I/O.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Payload bytes currently stored (as of the last commit). Never blocks on I/O.
    #[must_use]
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Acquire)
    }

    /// Append one record; returns its seq and how many old records were evicted for it.
    ///
    /// When this returns `Ok` with `durable: true` the record is on disk.
    ///
    /// # Errors
    ///
    /// [`Error::RecordTooLarge`] if `record` alone exceeds `max_bytes` (nothing is changed);
    /// [`Error::SpoolStorage`] if the transaction fails (nothing is changed).
    pub fn append(&self, record: &[u8]) -> Result<AppendOutcome> {
        let batch = self.append_batch(&[record])?;
        Ok(AppendOutcome {
            seq: batch.seqs.start,
            evicted: batch.evicted,
            durable: batch.durable,
        })
    }

    /// Append several records in one transaction (one fsync); all or none are stored.
    ///
    /// # Errors
    ///
    /// As [`Spool::append`]; a too-large record fails the whole batch before anything is written.
    pub fn append_batch<R: AsRef<[u8]>>(&self, records: &[R]) -> Result<BatchOutcome> {
        let max = self.config.max_bytes;
        if let Some(big) = records.iter().find(|r| r.as_ref().len() as u64 > max) {
            return Err(Error::RecordTooLarge {
                path: self.path.clone(),
                len: big.as_ref().len() as u64,
                max_bytes: max,
            });
        }
        let mut st = self.lock();
        if records.is_empty() {
            return Ok(BatchOutcome {
                seqs: st.next_seq..st.next_seq,
                evicted: 0,
                durable: st.pending == 0,
            });
        }

        let (txn, durable) = self.begin_write(&st, "append")?;
        // Work on copies; `st` is only updated after the commit succeeded, so a failed
        // transaction (dropped = rolled back by redb) leaves memory and file in agreement.
        let mut seq = st.next_seq;
        let mut len = st.len;
        let mut bytes = st.bytes;
        let mut evicted = 0u64;
        {
            let mut table = txn
                .open_table(RECORDS)
                .map_err(|e| self.storage("append", e))?;
            for record in records {
                let record = record.as_ref();
                let size = record.len() as u64;
                // Evict oldest first until the new record fits. This happens in the same
                // transaction as the insert: a crash keeps either both or neither, so a record is
                // never evicted for an append that did not happen.
                while bytes + size > max {
                    let Some((_, old)) =
                        table.pop_first().map_err(|e| self.storage("append", e))?
                    else {
                        break; // unreachable: size <= max was checked above
                    };
                    bytes -= old.value().len() as u64;
                    len -= 1;
                    evicted += 1;
                }
                table
                    .insert(seq, record)
                    .map_err(|e| self.storage("append", e))?;
                seq += 1;
                len += 1;
                bytes += size;
            }
            // The counter lives in the same transaction as the records it numbered: after any
            // crash the file holds both or neither, so a seq is never handed out twice.
            let mut meta = txn
                .open_table(META)
                .map_err(|e| self.storage("append", e))?;
            meta.insert(NEXT_SEQ, seq)
                .map_err(|e| self.storage("append", e))?;
        }
        self.commit(txn, &mut st, durable, "append")?;

        let first = st.next_seq;
        st.next_seq = seq;
        self.set_counts(&mut st, len, bytes);
        if evicted > 0 {
            self.note_evictions(&mut st, evicted);
        }
        Ok(BatchOutcome {
            seqs: first..seq,
            evicted,
            durable: st.pending == 0,
        })
    }

    /// Up to `max_records` of the oldest records, oldest first, without removing them.
    ///
    /// # Errors
    ///
    /// [`Error::SpoolStorage`] if the read transaction fails.
    pub fn peek(&self, max_records: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        self.peek_from(0, max_records)
    }

    /// Up to `max_records` records with seq ≥ `first_seq`, oldest first, without removing them.
    ///
    /// Lets a delivery loop with records in flight (sent, not yet acked) read what comes after
    /// them: `peek_from(last_sent + 1, n)`.
    ///
    /// # Errors
    ///
    /// [`Error::SpoolStorage`] if the read transaction fails.
    pub fn peek_from(&self, first_seq: u64, max_records: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        let err = |e: redb::Error| Error::SpoolStorage {
            path: self.path.clone(),
            op: "peek",
            source: Box::new(e),
        };
        if max_records == 0 {
            return Ok(Vec::new());
        }
        // A read transaction sees the last commit (durable or not) and never blocks a writer.
        let txn = self.db.begin_read().map_err(|e| err(e.into()))?;
        let table = txn.open_table(RECORDS).map_err(|e| err(e.into()))?;
        let mut out = Vec::with_capacity(max_records.min(1024));
        for entry in table.range(first_seq..).map_err(|e| err(e.into()))? {
            let (k, v) = entry.map_err(|e| err(e.into()))?;
            out.push((k.value(), v.value().to_vec()));
            if out.len() == max_records {
                break;
            }
        }
        Ok(out)
    }

    /// Up to `max_records` records with seq ≥ `first_seq`, their payloads concatenated in seq
    /// order into one buffer; `None` when there are none.
    ///
    /// What a batching sink sends (InfluxDB: each record is whole lines, so the concatenation is
    /// the request body): one allocation for the batch instead of one per record plus a copy.
    /// Records with seqs in `first..=last` that are not in the spool (evicted or acked) were not
    /// in the batch, and [`Spool::ack_range`] of the batch's range deletes exactly the batch.
    ///
    /// # Errors
    ///
    /// [`Error::SpoolStorage`] if the read transaction fails.
    pub fn peek_batch(&self, first_seq: u64, max_records: usize) -> Result<Option<Batch>> {
        let err = |e: redb::Error| Error::SpoolStorage {
            path: self.path.clone(),
            op: "peek",
            source: Box::new(e),
        };
        if max_records == 0 {
            return Ok(None);
        }
        let txn = self.db.begin_read().map_err(|e| err(e.into()))?;
        let table = txn.open_table(RECORDS).map_err(|e| err(e.into()))?;
        let mut batch: Option<Batch> = None;
        for entry in table.range(first_seq..).map_err(|e| err(e.into()))? {
            let (k, v) = entry.map_err(|e| err(e.into()))?;
            let (seq, payload) = (k.value(), v.value());
            let b = batch.get_or_insert_with(|| Batch {
                first: seq,
                last: seq,
                records: 0,
                // A guess: records of the first one's size, no more than the spool holds.
                bytes: Vec::with_capacity(
                    payload
                        .len()
                        .saturating_mul(max_records)
                        .min(usize::try_from(self.bytes()).unwrap_or(usize::MAX)),
                ),
            });
            b.last = seq;
            b.records += 1;
            b.bytes.extend_from_slice(payload);
            if b.records == max_records {
                break;
            }
        }
        Ok(batch)
    }

    /// Delete every record with seq ≤ `seq` (the backend acknowledged them); returns how many.
    ///
    /// Records appended after the peek that produced `seq` have larger seqs and stay. Acking
    /// seqs that were already evicted or acked is not an error. Nothing is written (no fsync)
    /// when nothing matches.
    ///
    /// # Errors
    ///
    /// [`Error::SpoolStorage`] if the transaction fails (nothing is deleted).
    pub fn ack_up_to(&self, seq: u64) -> Result<u64> {
        self.delete("ack", |table| {
            let mut removed = 0u64;
            let mut freed = 0u64;
            for entry in table.extract_from_if(..=seq, |_, _| true)? {
                let (_, v) = entry?;
                removed += 1;
                freed += v.value().len() as u64;
            }
            Ok((removed, freed))
        })
    }

    /// Delete every record with `first ≤ seq ≤ last` (a [`Batch`] the backend acknowledged, in
    /// whatever order batches complete); returns how many. Nothing is written (no fsync) when
    /// nothing matches.
    ///
    /// # Errors
    ///
    /// [`Error::SpoolStorage`] if the transaction fails (nothing is deleted).
    pub fn ack_range(&self, first: u64, last: u64) -> Result<u64> {
        if first > last {
            return Ok(0);
        }
        self.delete("ack", |table| {
            let mut removed = 0u64;
            let mut freed = 0u64;
            for entry in table.extract_from_if(first..=last, |_, _| true)? {
                let (_, v) = entry?;
                removed += 1;
                freed += v.value().len() as u64;
            }
            Ok((removed, freed))
        })
    }

    /// Delete exactly the given seqs (e.g. out-of-order acks); returns how many existed.
    ///
    /// # Errors
    ///
    /// [`Error::SpoolStorage`] if the transaction fails (nothing is deleted).
    pub fn ack(&self, seqs: &[u64]) -> Result<u64> {
        self.delete("ack", |table| {
            let mut removed = 0u64;
            let mut freed = 0u64;
            for &seq in seqs {
                if let Some(v) = table.remove(seq)? {
                    removed += 1;
                    freed += v.value().len() as u64;
                }
            }
            Ok((removed, freed))
        })
    }

    /// Make every commit so far durable (fsync). A no-op with [`Durability::Immediate`].
    ///
    /// # Errors
    ///
    /// [`Error::SpoolStorage`] if the commit fails.
    pub fn flush(&self) -> Result<()> {
        let mut st = self.lock();
        if st.pending == 0 {
            return Ok(());
        }
        // An empty durable commit persists all the non-durable ones before it.
        let txn = self
            .db
            .begin_write()
            .map_err(|e| self.storage("flush", e))?;
        self.commit(txn, &mut st, true, "flush")
    }

    /// Run a deleting transaction: `f` removes records and returns (records, bytes) removed.
    fn delete(
        &self,
        op: &'static str,
        f: impl FnOnce(&mut redb::Table<'_, u64, &'static [u8]>) -> Result<(u64, u64), redb::Error>,
    ) -> Result<u64> {
        let mut st = self.lock();
        let (txn, durable) = self.begin_write(&st, op)?;
        let (removed, freed) = {
            let mut table = txn.open_table(RECORDS).map_err(|e| self.storage(op, e))?;
            f(&mut table).map_err(|e| self.storage(op, e))?
        };
        if removed == 0 {
            // Nothing to delete: roll back instead of paying for a commit.
            txn.abort().map_err(|e| self.storage(op, e))?;
            return Ok(0);
        }
        self.commit(txn, &mut st, durable, op)?;
        let (len, bytes) = (st.len - removed, st.bytes - freed);
        self.set_counts(&mut st, len, bytes);
        Ok(removed)
    }

    /// Start a write transaction with the durability this commit should have.
    fn begin_write(&self, st: &WriteState, op: &'static str) -> Result<(WriteTransaction, bool)> {
        let mut txn = self.db.begin_write().map_err(|e| self.storage(op, e))?;
        let durable = match self.config.durability {
            Durability::Immediate => true,
            Durability::Batched { every } => st.pending + 1 >= every.get(),
        };
        if !durable {
            txn.set_durability(redb::Durability::None)
                .map_err(|e| self.storage(op, e))?;
        }
        Ok((txn, durable))
    }

    /// Commit and account for it in `pending`. On error the transaction is rolled back by redb.
    fn commit(
        &self,
        txn: WriteTransaction,
        st: &mut WriteState,
        durable: bool,
        op: &'static str,
    ) -> Result<()> {
        txn.commit().map_err(|e| self.storage(op, e))?;
        if durable {
            st.pending = 0;
        } else {
            st.pending += 1;
        }
        Ok(())
    }

    /// Store new counts in the state, the lock-free mirrors and the gauges.
    fn set_counts(&self, st: &mut WriteState, len: u64, bytes: u64) {
        st.len = len;
        st.bytes = bytes;
        self.len.store(len, Ordering::Release);
        self.bytes.store(bytes, Ordering::Release);
        self.publish_gauges(len, bytes);
    }

    fn publish_gauges(&self, len: u64, bytes: u64) {
        // Gauges are f64: exact below 2^53, far beyond any spool.
        metrics::gauge!("p1gw_spool_records", "sink" => self.sink.clone()).set(len as f64);
        metrics::gauge!("p1gw_spool_bytes", "sink" => self.sink.clone()).set(bytes as f64);
    }

    /// Count evictions, and WARN about them at most once per [`EVICTION_LOG_INTERVAL`].
    fn note_evictions(&self, st: &mut WriteState, evicted: u64) {
        metrics::counter!("p1gw_spool_evicted_total", "sink" => self.sink.clone())
            .increment(evicted);
        st.evicted_unlogged += evicted;
        let now = Instant::now();
        if st
            .last_eviction_log
            .is_none_or(|last| now.duration_since(last) >= EVICTION_LOG_INTERVAL)
        {
            tracing::warn!(
                sink = %self.sink,
                evicted = st.evicted_unlogged,
                max_bytes = self.config.max_bytes,
                "Spool full: evicted the oldest readings, which will not be delivered."
            );
            st.evicted_unlogged = 0;
            st.last_eviction_log = Some(now);
        }
    }

    /// The writer lock. A panic while it was held cannot have left `WriteState` half-updated:
    /// the state is only assigned after a successful commit, with plain stores that do not panic.
    fn lock(&self) -> MutexGuard<'_, WriteState> {
        self.write.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn storage(&self, op: &'static str, e: impl Into<redb::Error>) -> Error {
        Error::SpoolStorage {
            path: self.path.clone(),
            op,
            source: Box::new(e.into()),
        }
    }
}

/// Open the file, make sure both tables exist, and read `next_seq`, `len` and `bytes` from it.
///
/// Runs under `catch_unwind`: redb may panic on some malformed files, and a spool must never take
/// the daemon down, so a panic counts as corruption.
fn try_open(path: &Path) -> Result<Opened, OpenFailure> {
    match catch_unwind(AssertUnwindSafe(|| try_open_inner(path))) {
        Ok(result) => result,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "redb panicked".to_owned());
            Err(OpenFailure::Corrupt(format!("redb panicked: {msg}")))
        }
    }
}

fn try_open_inner(path: &Path) -> Result<Opened, OpenFailure> {
    let mut db = redb::Builder::new()
        .set_cache_size(CACHE_BYTES)
        // Verify every page's checksum on open, not only after a crash: a plain open trusts the
        // file and may panic on one altered behind redb's back. Costs one read of the file per
        // start (64 MiB: about a second on an SD card).
        .set_check_integrity_on_open(true)
        .create(path)
        .map_err(|e| classify_open(path, e))?;

    let storage = |e: redb::Error| classify(path, "open", e);

    // Create the tables (a fresh file has none) so that readers never see "no such table".
    let txn = db.begin_write().map_err(|e| storage(e.into()))?;
    let stored_next = {
        txn.open_table(RECORDS).map_err(|e| storage(e.into()))?;
        let meta = txn.open_table(META).map_err(|e| storage(e.into()))?;
        let v = meta.get(NEXT_SEQ).map_err(|e| storage(e.into()))?;
        v.map(|g| g.value())
    };
    txn.commit().map_err(|e| storage(e.into()))?;

    // Recompute len and bytes from the records themselves: nothing to keep in sync, nothing to
    // drift after a crash. One sequential read, done once per start.
    let (len, bytes, last) = {
        let txn = db.begin_read().map_err(|e| storage(e.into()))?;
        let table = txn.open_table(RECORDS).map_err(|e| storage(e.into()))?;
        let (mut len, mut bytes, mut last) = (0u64, 0u64, None);
        for entry in table.iter().map_err(|e| storage(e.into()))? {
            let (k, v) = entry.map_err(|e| storage(e.into()))?;
            len += 1;
            bytes += v.value().len() as u64;
            last = Some(k.value());
        }
        (len, bytes, last)
    };
    // NEXT_SEQ is written with every append, so it is always past the last key; the max() only
    // guards against a file written by something else.
    let next_seq = stored_next
        .unwrap_or(1)
        .max(last.map_or(1, |l| l.saturating_add(1)));

    // redb reuses free pages but never gives them back to the file system by itself. After a
    // long outage filled the spool and delivery drained it, give the space back once, here,
    // where we hold the database exclusively.
    let file_len = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if file_len > 2 * bytes + COMPACT_SLACK_BYTES {
        match db.compact() {
            Ok(_) => tracing::info!(
                path = %path.display(),
                before = file_len,
                after = fs::metadata(path).map(|m| m.len()).unwrap_or(0),
                "Spool file compacted."
            ),
            // Compaction is an optimisation; the spool works without it.
            Err(err) => tracing::warn!(
                path = %path.display(), error = %err, "Spool compaction failed."
            ),
        }
    }
    Ok(Opened {
        db,
        next_seq,
        len,
        bytes,
    })
}

/// Sort redb's open errors into "move the file aside" and "report".
fn classify_open(path: &Path, e: redb::DatabaseError) -> OpenFailure {
    match e {
        redb::DatabaseError::Storage(redb::StorageError::Corrupted(reason)) => {
            OpenFailure::Corrupt(reason)
        }
        // Not a redb file at all ("magic number mismatch"), or cut short.
        redb::DatabaseError::Storage(redb::StorageError::Io(io))
            if matches!(
                io.kind(),
                std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
            ) =>
        {
            OpenFailure::Corrupt(io.to_string())
        }
        redb::DatabaseError::RepairAborted => OpenFailure::Corrupt("repair aborted".to_owned()),
        redb::DatabaseError::UpgradeRequired(v) => {
            OpenFailure::Corrupt(format!("unsupported redb file format version {v}"))
        }
        other => OpenFailure::Other(Error::SpoolOpen {
            path: path.to_path_buf(),
            source: Box::new(other),
        }),
    }
}

/// Sort errors from the first transactions on a freshly opened file.
fn classify(path: &Path, op: &'static str, e: redb::Error) -> OpenFailure {
    match e {
        redb::Error::Corrupted(reason) => OpenFailure::Corrupt(reason),
        // A redb file, but not a spool (other tables, other types): unusable as a spool.
        redb::Error::TableTypeMismatch { .. }
        | redb::Error::TypeDefinitionChanged { .. }
        | redb::Error::TableIsMultimap(_) => OpenFailure::Corrupt(e.to_string()),
        other => OpenFailure::Other(Error::SpoolStorage {
            path: path.to_path_buf(),
            op,
            source: Box::new(other),
        }),
    }
}

/// Rename a corrupt spool file to `<file>.corrupt-<unix seconds>[-n]`, keeping it for a post
/// mortem. Returns the new path.
fn move_aside(path: &Path) -> Result<PathBuf> {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let base = format!("{}.corrupt-{secs}", path.display());
    let mut aside = PathBuf::from(&base);
    let mut n = 1u32;
    while aside.exists() {
        aside = PathBuf::from(format!("{base}-{n}"));
        n += 1;
    }
    fs::rename(path, &aside).map_err(|source| Error::SpoolIo {
        path: path.to_path_buf(),
        op: "cannot move corrupt file aside",
        source,
    })?;
    Ok(aside)
}

/// A cloneable async face of a [`Spool`]: each call runs on tokio's blocking pool
/// (`spawn_blocking`), so fsyncs never stall the runtime.
///
/// Intake and delivery each hold a clone. The file is closed when the last clone is dropped
/// *and* no blocking call is still running.
///
/// # Cancel safety
///
/// None of the async methods is cancel safe in the usual sense: dropping the future does not stop
/// the blocking call, which may still commit. Appends that were cancelled may therefore be stored
/// (and delivered) anyway; acks that were cancelled may or may not have happened. Both are fine
/// for at-least-once delivery; do not rely on either outcome.
#[derive(Debug, Clone)]
pub struct AsyncSpool {
    inner: Arc<Spool>,
}

impl From<Spool> for AsyncSpool {
    fn from(spool: Spool) -> Self {
        Self {
            inner: Arc::new(spool),
        }
    }
}

impl AsyncSpool {
    /// [`Spool::open`] on the blocking pool.
    ///
    /// # Errors
    ///
    /// As [`Spool::open`], plus [`Error::SpoolTask`] if the blocking task panicked or the
    /// runtime is shutting down.
    pub async fn open(path: impl Into<PathBuf>, sink: &str, config: SpoolConfig) -> Result<Self> {
        let path = path.into();
        let sink = sink.to_owned();
        let p = path.clone();
        tokio::task::spawn_blocking(move || Spool::open(p, &sink, config))
            .await
            .map_err(|source| Error::SpoolTask {
                path,
                op: "open",
                source,
            })?
            .map(Self::from)
    }

    /// The synchronous spool, for callers already on a blocking thread.
    #[must_use]
    pub fn blocking(&self) -> &Spool {
        &self.inner
    }

    /// [`Spool::len`]; never blocks.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.inner.len()
    }

    /// [`Spool::is_empty`]; never blocks.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// [`Spool::bytes`]; never blocks.
    #[must_use]
    pub fn bytes(&self) -> u64 {
        self.inner.bytes()
    }

    /// [`Spool::append`] on the blocking pool.
    ///
    /// # Errors
    ///
    /// As [`Spool::append`], plus [`Error::SpoolTask`].
    pub async fn append(&self, record: Vec<u8>) -> Result<AppendOutcome> {
        self.run("append", move |s| s.append(&record)).await
    }

    /// [`Spool::append_batch`] on the blocking pool.
    ///
    /// # Errors
    ///
    /// As [`Spool::append_batch`], plus [`Error::SpoolTask`].
    pub async fn append_batch(&self, records: Vec<Vec<u8>>) -> Result<BatchOutcome> {
        self.run("append", move |s| s.append_batch(&records)).await
    }

    /// [`Spool::peek`] on the blocking pool.
    ///
    /// # Errors
    ///
    /// As [`Spool::peek`], plus [`Error::SpoolTask`].
    pub async fn peek(&self, max_records: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        self.run("peek", move |s| s.peek(max_records)).await
    }

    /// [`Spool::peek_from`] on the blocking pool.
    ///
    /// # Errors
    ///
    /// As [`Spool::peek_from`], plus [`Error::SpoolTask`].
    pub async fn peek_from(
        &self,
        first_seq: u64,
        max_records: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>> {
        self.run("peek", move |s| s.peek_from(first_seq, max_records))
            .await
    }

    /// [`Spool::peek_batch`] on the blocking pool.
    ///
    /// # Errors
    ///
    /// As [`Spool::peek_batch`], plus [`Error::SpoolTask`].
    pub async fn peek_batch(&self, first_seq: u64, max_records: usize) -> Result<Option<Batch>> {
        self.run("peek", move |s| s.peek_batch(first_seq, max_records))
            .await
    }

    /// [`Spool::ack_range`] on the blocking pool.
    ///
    /// # Errors
    ///
    /// As [`Spool::ack_range`], plus [`Error::SpoolTask`].
    pub async fn ack_range(&self, first: u64, last: u64) -> Result<u64> {
        self.run("ack", move |s| s.ack_range(first, last)).await
    }

    /// [`Spool::ack_up_to`] on the blocking pool.
    ///
    /// # Errors
    ///
    /// As [`Spool::ack_up_to`], plus [`Error::SpoolTask`].
    pub async fn ack_up_to(&self, seq: u64) -> Result<u64> {
        self.run("ack", move |s| s.ack_up_to(seq)).await
    }

    /// [`Spool::ack`] on the blocking pool.
    ///
    /// # Errors
    ///
    /// As [`Spool::ack`], plus [`Error::SpoolTask`].
    pub async fn ack(&self, seqs: Vec<u64>) -> Result<u64> {
        self.run("ack", move |s| s.ack(&seqs)).await
    }

    /// [`Spool::flush`] on the blocking pool.
    ///
    /// # Errors
    ///
    /// As [`Spool::flush`], plus [`Error::SpoolTask`].
    pub async fn flush(&self) -> Result<()> {
        self.run("flush", Spool::flush).await
    }

    async fn run<T: Send + 'static>(
        &self,
        op: &'static str,
        f: impl FnOnce(&Spool) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let spool = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&spool))
            .await
            .map_err(|source| Error::SpoolTask {
                path: self.inner.path.clone(),
                op,
                source,
            })?
    }
}

// -------------------------------------------------------------------------------------------------
// Sink state: a few durable numbers a sink keeps beside its records, in the spool's file (the
// sink crates touch no disk). Stored in `META` under keys prefixed `sink.`, so they never clash
// with the spool's own. Used by the Azure IoT Hub sink for its daily message budget.

/// The prefix of sink state keys in `META`.
const SINK_STATE_PREFIX: &str = "sink.";

impl Spool {
    /// The number the sink stored under `key` with [`Spool::set_sink_state`], if any.
    ///
    /// # Errors
    ///
    /// [`Error::SpoolStorage`] if reading fails.
    pub fn sink_state(&self, key: &str) -> Result<Option<u64>> {
        let key = format!("{SINK_STATE_PREFIX}{key}");
        let txn = self.db.begin_read().map_err(|e| self.storage("state", e))?;
        let meta = txn.open_table(META).map_err(|e| self.storage("state", e))?;
        let value = meta
            .get(key.as_str())
            .map_err(|e| self.storage("state", e))?;
        Ok(value.map(|v| v.value()))
    }

    /// Stores `entries` (key, number) in one transaction, durably (fsynced before it returns,
    /// whatever the spool's [`Durability`]): after a crash either all of them are there or the
    /// previous values are.
    ///
    /// # Errors
    ///
    /// [`Error::SpoolStorage`] if the transaction fails (nothing is stored).
    pub fn set_sink_state(&self, entries: &[(&str, u64)]) -> Result<()> {
        let mut st = self.lock();
        let txn = self
            .db
            .begin_write()
            .map_err(|e| self.storage("state", e))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| self.storage("state", e))?;
            for (key, value) in entries {
                let key = format!("{SINK_STATE_PREFIX}{key}");
                meta.insert(key.as_str(), *value)
                    .map_err(|e| self.storage("state", e))?;
            }
        }
        self.commit(txn, &mut st, true, "state")
    }
}

impl AsyncSpool {
    /// [`Spool::sink_state`] on the blocking pool.
    ///
    /// # Errors
    ///
    /// As [`Spool::sink_state`], plus [`Error::SpoolTask`].
    pub async fn sink_state(&self, key: &'static str) -> Result<Option<u64>> {
        self.run("state", move |s| s.sink_state(key)).await
    }

    /// [`Spool::set_sink_state`] on the blocking pool.
    ///
    /// # Errors
    ///
    /// As [`Spool::set_sink_state`], plus [`Error::SpoolTask`].
    pub async fn set_sink_state(&self, entries: Vec<(&'static str, u64)>) -> Result<()> {
        self.run("state", move |s| s.set_sink_state(&entries)).await
    }
}
