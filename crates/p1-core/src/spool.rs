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
//! # A failing disk
//!
//! An SD card fills up, is remounted read-only by the kernel after corruption, or fails with
//! `EIO`. None of that stops the spool or loses a reading in silence:
//!
//! * **Every storage error is seen.** It is sorted into a [`StorageKind`] (no space, read-only,
//!   I/O error, file too large), counted in `p1gw_storage_errors_total{sink,kind}`, logged at
//!   WARN once per new kind, and reported by [`Spool::fault`] in words
//!   (`disk full: /var/lib/p1gw has 0 bytes free`), which the sink worker puts in `/readyz`.
//! * **The file is reopened by itself.** redb latches an I/O error (every later transaction
//!   fails with `PreviousIo`), so after one the database is closed, and the next write or
//!   [`Spool::heal`] opens it again, with backoff from 0.5 s to 4 s, until that works.
//! * **New records are held in memory meanwhile**, at most [`SpoolConfig::memory_bytes`]
//!   (beyond it the oldest held ones are evicted, counted with reason `memory_full`). Peeks
//!   return them, so a backend that is up still gets the live readings; the records already in
//!   the file wait for the disk. Acks of records in the file are remembered and applied once it
//!   can be written. The first commit that succeeds writes the held records with their seqs.
//!   Records still held when the spool is dropped are written if possible, else counted
//!   (`unwritable_at_exit`) and logged at ERROR.
//! * **A nearly full disk is handled before it fails.** With [`SpoolConfig::reserve_bytes`]
//!   set, an append that would leave less free space than that on the file system does not
//!   grow the spool: it evicts the oldest records instead (counted, reason `disk_reserve`), as
//!   at `max_bytes`.
//!
//! A spool whose file cannot be opened at start for one of these reasons starts holding in
//! memory rather than failing.
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
//! | `p1gw_spool_evicted_total` | counter | records evicted, by `reason`: `max_bytes`, `disk_reserve`, `memory_full`, `unwritable_at_exit` |
//! | `p1gw_spool_held_records` | gauge | records held in memory while the file cannot be written |
//! | `p1gw_spool_corrupt_total` | counter | spool files found corrupt, moved aside and restarted empty |
//! | `p1gw_spool_records` | gauge | records currently spooled |
//! | `p1gw_spool_bytes` | gauge | payload bytes currently spooled |

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs;
use std::num::NonZeroU32;
use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::storage::{self, StorageFault, StorageKind};

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
        "Spooled records evicted, oldest first, by reason (max_bytes, disk_reserve, \
         memory_full, unwritable_at_exit)."
    );
    metrics::describe_counter!(
        "p1gw_spool_corrupt_total",
        "Spool files found corrupt, moved aside and restarted empty."
    );
    metrics::describe_gauge!(
        "p1gw_spool_records",
        "Records currently spooled (in the file or held in memory)."
    );
    metrics::describe_gauge!(
        "p1gw_spool_held_records",
        "Records held in memory because the spool's file cannot be written."
    );
    storage::describe_metrics();
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
    /// Free space to leave on the spool's file system: while less is free, the spool stops
    /// growing and each append evicts the oldest records instead (counted, reason
    /// `disk_reserve`). 0 turns the check off.
    pub reserve_bytes: u64,
    /// The most payload bytes held in memory while the spool's file cannot be written (see the
    /// [module docs](self#a-failing-disk)); beyond it the oldest held records are evicted
    /// (counted, reason `memory_full`).
    pub memory_bytes: u64,
}

/// [`SpoolConfig::memory_bytes`] unless set: a few hours of readings of one meter.
pub const DEFAULT_MEMORY_BYTES: u64 = 8 << 20;

impl SpoolConfig {
    /// A config with the given budget, [`Durability::Immediate`], no free-space reserve and
    /// [`DEFAULT_MEMORY_BYTES`] of memory for a failing disk.
    #[must_use]
    pub fn new(max_bytes: u64) -> Self {
        Self {
            max_bytes,
            durability: Durability::Immediate,
            reserve_bytes: 0,
            memory_bytes: DEFAULT_MEMORY_BYTES,
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
    /// Whether the commit was fsynced (always with [`Durability::Immediate`]); false while the
    /// record is held in memory.
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
    /// Records written to the file by this call: the batch, plus records held in memory
    /// earlier that could now be written too. 0 while the file cannot be written.
    pub stored: u64,
    /// Records of this batch held in memory because the file cannot be written.
    pub held: u64,
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

/// How a spool file is opened: redb on the file, or (in tests) on a backend that fails on
/// command.
pub type Opener = Arc<dyn Fn(&Path) -> Result<Database, redb::DatabaseError> + Send + Sync>;

/// The opener of every real spool: redb on the file itself.
fn file_opener() -> Opener {
    Arc::new(|path: &Path| {
        redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            // Verify every page's checksum on open, not only after a crash: a plain open trusts
            // the file and may panic on one altered behind redb's back. Costs one read of the
            // file per start (64 MiB: about a second on an SD card).
            .set_check_integrity_on_open(true)
            .create(path)
    })
}

/// One sink's crash-safe FIFO. See the [module docs](self).
///
/// `Spool` is `Send + Sync`: intake and delivery may call it from different threads at once.
/// Writers (append, ack, flush, heal) are serialised by an internal lock held for the
/// transaction including its fsync; readers ([`Spool::peek`]) never wait for writers.
pub struct Spool {
    path: PathBuf,
    sink: String,
    config: SpoolConfig,
    opener: Opener,
    /// The open database, or `None` while the file cannot be used (after a storage error,
    /// until [`Spool::heal`] or the next write reopens it). Readers clone the `Arc`.
    db: RwLock<Option<Arc<Database>>>,
    /// The authoritative in-memory mirror of the committed file state. Taken by every writer for
    /// the whole transaction: the lock, not redb's own writer lock, is what makes "compute the new
    /// state, commit, then publish it" atomic with respect to other writers.
    write: Mutex<WriteState>,
    /// What readers need besides the file: records held in memory, records acked while the file
    /// could not be written. Changed only by writers (holding `write`), read by peeks.
    mem: Mutex<MemState>,
    /// Copies of the counts, published after each change, so that `len()` and `bytes()` never
    /// wait behind an fsync.
    len: AtomicU64,
    bytes: AtomicU64,
    /// The current storage fault, for [`Spool::fault`] without waiting behind a writer.
    fault: Mutex<Option<StorageFault>>,
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

/// State that changes only together with a successful commit (or a fault).
#[derive(Debug)]
struct WriteState {
    /// The seq the next record gets. Stored under `META[NEXT_SEQ]` with every commit; runs
    /// ahead of the file while records are held in memory.
    next_seq: u64,
    /// Seq → payload length of every record in the file, except those in `MemState::acked`.
    index: BTreeMap<u64, u64>,
    /// Sum of the lengths in `index`.
    disk_bytes: u64,
    /// Commits since the last fsynced one (only with [`Durability::Batched`]).
    pending: u32,
    /// Evictions not yet mentioned in a WARN, and when the last WARN was.
    evicted_unlogged: u64,
    last_eviction_log: Option<Instant>,
    /// While the file cannot be used: when to try to reopen it, and the wait after that.
    reopen_at: Option<Instant>,
    reopen_delay: Duration,
    /// The kind of the fault last logged, so that a WARN is written once per new reason.
    logged_fault: Option<StorageKind>,
    /// Whether the free-space reserve is being enforced (logged once per episode).
    low_space: bool,
}

/// Records the file does not have (yet), and acks the file has not taken (yet).
#[derive(Debug, Default)]
struct MemState {
    /// Records appended while the file could not be written, oldest first; all have larger seqs
    /// than any record in the file.
    held: VecDeque<(u64, Vec<u8>)>,
    /// Sum of the payload lengths in `held`.
    held_bytes: u64,
    /// Seqs of records in the file that the backend acknowledged while the file could not be
    /// written: skipped by peeks, deleted from the file once it can be written again.
    acked: BTreeSet<u64>,
    /// Sink state ([`Spool::set_sink_state`]) not yet in the file, by its key in `META`.
    state: BTreeMap<String, u64>,
}

/// What memory holds for the file, copied for one commit.
struct Pending {
    held: Vec<(u64, Vec<u8>)>,
    acked: Vec<u64>,
    state: Vec<(String, u64)>,
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
    index: BTreeMap<u64, u64>,
    bytes: u64,
}

/// The first wait before reopening a file that failed, and the longest: a disk that is back is
/// used again within [`REOPEN_MAX`] plus the caller's heal interval.
const REOPEN_MIN: Duration = Duration::from_millis(500);
const REOPEN_MAX: Duration = Duration::from_secs(4);

/// Why records were evicted: the `reason` label of `p1gw_spool_evicted_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Eviction {
    /// The spool reached `max_bytes`.
    MaxBytes,
    /// The file system has less free space than the reserve.
    DiskReserve,
    /// The file could not be written and the memory for held records is full.
    MemoryFull,
}

impl Eviction {
    fn as_str(self) -> &'static str {
        match self {
            Self::MaxBytes => "max_bytes",
            Self::DiskReserve => "disk_reserve",
            Self::MemoryFull => "memory_full",
        }
    }
}

impl Spool {
    /// Open (or create) the spool file at `path`; `sink` is the metrics label (the sink's name).
    ///
    /// Creates the parent directory if needed, verifies the file, recomputes `len` and `bytes`,
    /// and compacts the file when it is much larger than its contents. A corrupt file is moved
    /// aside and replaced by an empty spool (see the [module docs](self#corruption)). A file
    /// that cannot be opened because of its disk (full, read-only, I/O errors) gives a spool
    /// that holds records in memory until the disk is back (see
    /// [a failing disk](self#a-failing-disk)).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for `max_bytes == 0`; [`Error::SpoolIo`] when the directory cannot
    /// be created or a corrupt file cannot be renamed; [`Error::SpoolOpen`] when redb cannot open
    /// the file for another reason than corruption or its disk (e.g. it is open elsewhere);
    /// [`Error::SpoolStorage`] when reading it fails for such a reason.
    pub fn open(path: impl AsRef<Path>, sink: &str, config: SpoolConfig) -> Result<Self> {
        Self::open_with(path, sink, config, file_opener())
    }

    /// [`Spool::open`] with redb opened by `opener` (tests use it to put a backend that fails
    /// on command under the spool).
    ///
    /// # Errors
    ///
    /// As [`Spool::open`].
    pub fn open_with(
        path: impl AsRef<Path>,
        sink: &str,
        config: SpoolConfig,
        opener: Opener,
    ) -> Result<Self> {
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

        let spool = Self {
            path,
            sink: sink.to_owned(),
            config,
            opener,
            db: RwLock::new(None),
            write: Mutex::new(WriteState {
                next_seq: 1,
                index: BTreeMap::new(),
                disk_bytes: 0,
                pending: 0,
                evicted_unlogged: 0,
                last_eviction_log: None,
                reopen_at: None,
                reopen_delay: REOPEN_MIN,
                logged_fault: None,
                low_space: false,
            }),
            mem: Mutex::new(MemState::default()),
            len: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            fault: Mutex::new(None),
        };
        let mut st = spool.lock();
        match spool.open_file() {
            Ok(opened) => spool.install(&mut st, opened),
            Err(err) => match storage_fault(&spool.path, &err) {
                // The disk, not the file, is the problem: start holding in memory.
                Some(fault) => spool.broke(&mut st, fault),
                None => return Err(err),
            },
        }
        tracing::debug!(
            sink,
            path = %spool.path.display(),
            records = st.index.len(),
            bytes = st.disk_bytes,
            next_seq = st.next_seq,
            "Spool opened."
        );
        drop(st);
        Ok(spool)
    }

    /// Opens the file through the opener, moving a corrupt one aside.
    fn open_file(&self) -> Result<Opened> {
        let path = &self.path;
        let sink = self.sink.as_str();
        match try_open(&self.opener, path) {
            Ok(opened) => Ok(opened),
            Err(OpenFailure::Other(err)) => Err(err),
            Err(OpenFailure::Corrupt(reason)) => {
                let aside = move_aside(path)?;
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
                match try_open(&self.opener, path) {
                    Ok(opened) => Ok(opened),
                    Err(OpenFailure::Other(err)) => Err(err),
                    // A file we just created is corrupt: the disk is lying; give up loudly.
                    Err(OpenFailure::Corrupt(reason)) => Err(Error::SpoolStorage {
                        path: path.clone(),
                        op: "open",
                        source: Box::new(redb::Error::Corrupted(reason)),
                    }),
                }
            }
        }
    }

    /// Takes a freshly opened file into use: its records become the index, and whatever was
    /// held in memory or acked meanwhile is applied on the next write.
    fn install(&self, st: &mut WriteState, opened: Opened) {
        // Seqs held in memory were handed out past the file's counter; never go back.
        st.next_seq = st.next_seq.max(opened.next_seq);
        st.index = opened.index;
        st.disk_bytes = opened.bytes;
        st.pending = 0;
        {
            let mut mem = self.lock_mem();
            // Acks of records the file no longer has (a corrupt file moved aside) are void.
            let index = &st.index;
            mem.acked.retain(|seq| index.contains_key(seq));
            let mut acked_bytes = 0;
            for seq in &mem.acked {
                acked_bytes += st.index.get(seq).copied().unwrap_or(0);
            }
            for seq in &mem.acked {
                st.index.remove(seq);
            }
            st.disk_bytes -= acked_bytes;
        }
        *self.db.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(opened.db));
        self.publish(st);
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

    /// Records currently stored, in the file or held in memory (as of the last change). Never
    /// blocks on I/O.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.len.load(Ordering::Acquire)
    }

    /// Whether no record is stored. Never blocks on I/O.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Payload bytes currently stored, in the file or held in memory. Never blocks on I/O.
    #[must_use]
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Acquire)
    }

    /// Records held in memory because the file cannot be written. Never blocks on I/O.
    #[must_use]
    pub fn held(&self) -> u64 {
        self.lock_mem().held.len() as u64
    }

    /// The storage fault that keeps the file from being used, if any. Never blocks on I/O.
    #[must_use]
    pub fn fault(&self) -> Option<StorageFault> {
        self.fault
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Append one record; returns its seq and how many old records were evicted for it.
    ///
    /// When this returns `Ok` with `durable: true` the record is on disk.
    ///
    /// # Errors
    ///
    /// [`Error::RecordTooLarge`] if `record` alone exceeds `max_bytes` (nothing is changed).
    /// A failing disk is not an error: see [`Spool::append_batch`].
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
    /// When the file cannot be written (full, read-only, I/O errors), the records are held in
    /// memory instead ([`BatchOutcome::held`]), the fault is counted and reported by
    /// [`Spool::fault`], and the file is reopened with backoff by later calls and by
    /// [`Spool::heal`]; held records are written with the first commit that succeeds.
    ///
    /// # Errors
    ///
    /// [`Error::RecordTooLarge`]: a too-large record fails the whole batch before anything is
    /// written.
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
        let first = st.next_seq;
        if records.is_empty() {
            return Ok(BatchOutcome {
                seqs: first..first,
                evicted: 0,
                durable: st.pending == 0,
                stored: 0,
                held: 0,
            });
        }
        let new: Vec<(u64, &[u8])> = records
            .iter()
            .zip(first..)
            .map(|(r, seq)| (seq, r.as_ref()))
            .collect();
        st.next_seq = first + new.len() as u64;
        match self.write_through(&mut st, &new) {
            Some((stored, evicted, durable)) => Ok(BatchOutcome {
                seqs: first..st.next_seq,
                evicted,
                durable,
                stored,
                held: 0,
            }),
            None => {
                let evicted = self.hold(&mut st, &new);
                Ok(BatchOutcome {
                    seqs: first..st.next_seq,
                    evicted,
                    durable: false,
                    stored: 0,
                    held: new.len() as u64,
                })
            }
        }
    }

    /// Tries to use the file again when it failed: reopens it (when its backoff allows) and
    /// writes what is held in memory and the acks it missed. Returns how many held records
    /// were written. Cheap when there is nothing to do; call it every second or so while
    /// [`Spool::fault`] is `Some` or records are held.
    pub fn heal(&self) -> u64 {
        let mut st = self.lock();
        let nothing_pending = {
            let mem = self.lock_mem();
            mem.held.is_empty() && mem.acked.is_empty() && mem.state.is_empty()
        };
        if nothing_pending && self.current_db().is_some() {
            return 0;
        }
        self.write_through(&mut st, &[])
            .map_or(0, |(stored, _, _)| stored)
    }

    /// Commits the held records, the missed acks and `new` in one transaction, reopening the
    /// file first if it failed and its backoff allows. `Some((records stored, evicted,
    /// durable))`, or `None` when the file cannot be written (the fault is recorded).
    fn write_through(&self, st: &mut WriteState, new: &[(u64, &[u8])]) -> Option<(u64, u64, bool)> {
        let db = match self.current_db() {
            Some(db) => db,
            None => {
                let now = Instant::now();
                if st.reopen_at.is_some_and(|at| now < at) {
                    return None;
                }
                match self.open_file() {
                    Ok(opened) => {
                        self.install(st, opened);
                        self.current_db()?
                    }
                    Err(err) => {
                        // Not the disk (e.g. a reader still holds the old database, so the
                        // file lock is taken): keep the fault that closed it and try again.
                        let fault = storage_fault(&self.path, &err)
                            .or_else(|| self.fault())
                            .unwrap_or_else(|| StorageFault {
                                kind: StorageKind::Other,
                                message: format!("{}: {}", self.path.display(), chain(&err)),
                            });
                        self.broke(st, fault);
                        return None;
                    }
                }
            }
        };
        let pending = {
            let mem = self.lock_mem();
            Pending {
                held: mem.held.iter().cloned().collect(),
                acked: mem.acked.iter().copied().collect(),
                state: mem.state.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            }
        };
        let Pending { held, state, .. } = &pending;
        let budget = self.budget(
            st,
            held.iter().map(|(_, r)| r.len()).sum::<usize>()
                + new.iter().map(|(_, r)| r.len()).sum::<usize>(),
        );
        match self.commit_records(&db, st, &pending, new, budget) {
            Ok((evicted, durable)) => {
                let stored = (held.len() + new.len()) as u64;
                {
                    let mut mem = self.lock_mem();
                    // Only what this commit wrote: nothing else can have changed them, as
                    // writers hold `st`.
                    mem.held.clear();
                    mem.held_bytes = 0;
                    mem.acked.clear();
                    // Sink state set meanwhile by another writer cannot be: writers hold `st`.
                    for (key, value) in state {
                        if mem.state.get(key) == Some(value) {
                            mem.state.remove(key);
                        }
                    }
                }
                self.recovered(st, held.len() as u64);
                self.publish(st);
                Some((stored, evicted, durable))
            }
            Err(err) => {
                drop(db);
                let fault = redb_fault(&self.path, &err);
                self.broke(st, fault);
                None
            }
        }
    }

    /// How many payload bytes the file may hold after a commit adding `adding` bytes: the
    /// configured budget, less while the file system is below its free-space reserve (then
    /// the spool does not grow; the reserve keeps the rest of the machine working).
    fn budget(&self, st: &mut WriteState, adding: usize) -> (u64, Eviction) {
        let max = self.config.max_bytes;
        let reserve = self.config.reserve_bytes;
        if reserve == 0 {
            return (max, Eviction::MaxBytes);
        }
        let dir = self
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let Some(free) = storage::free_bytes(dir) else {
            return (max, Eviction::MaxBytes);
        };
        // A commit writes new pages before it frees old ones: count twice what it adds.
        let needed = reserve.saturating_add(2 * adding as u64);
        if free >= needed {
            if st.low_space {
                st.low_space = false;
                tracing::info!(
                    sink = %self.sink,
                    free,
                    reserve,
                    "Spool's disk has room again; the spool may grow up to max_bytes."
                );
            }
            return (max, Eviction::MaxBytes);
        }
        if !st.low_space {
            st.low_space = true;
            tracing::warn!(
                sink = %self.sink,
                dir = %dir.display(),
                free,
                reserve,
                "Spool's disk is below its free-space reserve: the spool stops growing and \
                 each new reading evicts the oldest (counted in p1gw_spool_evicted_total, \
                 reason disk_reserve)."
            );
        }
        (max.min(st.disk_bytes), Eviction::DiskReserve)
    }

    /// One write transaction: delete `acked`, insert `held` then `new` (evicting the oldest
    /// records to stay within `budget`), store the seq counter, commit. `st` is updated only
    /// when the commit succeeded.
    fn commit_records(
        &self,
        db: &Database,
        st: &mut WriteState,
        pending: &Pending,
        new: &[(u64, &[u8])],
        (budget, why): (u64, Eviction),
    ) -> std::result::Result<(u64, bool), redb::Error> {
        let Pending { held, acked, state } = pending;
        // Sink state is promised durable whatever the spool's durability.
        let (txn, durable) = self.begin_write(db, st, !state.is_empty())?;
        // `st` is only updated after the commit succeeded, so a failed transaction (dropped =
        // rolled back by redb) leaves memory and file in agreement: what changes is noted here
        // and applied to the index afterwards.
        let mut gone: Vec<u64> = Vec::new();
        let mut added: Vec<(u64, u64)> = Vec::new();
        let mut bytes = st.disk_bytes;
        let mut evicted = 0u64;
        let mut evicted_max = 0u64;
        {
            let mut table = txn.open_table(RECORDS)?;
            for seq in acked {
                table.remove(*seq)?;
            }
            let records = held
                .iter()
                .map(|(seq, r)| (*seq, r.as_slice()))
                .chain(new.iter().copied());
            for (seq, record) in records {
                let size = record.len() as u64;
                // Evict oldest first until the new record fits. This happens in the same
                // transaction as the insert: a crash keeps either both or neither, so a record
                // is never evicted for an append that did not happen. Below the reserve the
                // budget is what the file already holds, so at least the record itself fits.
                let limit = budget.max(size);
                while bytes + size > limit {
                    // Over max_bytes, an eviction is the budget's; under it, the reserve's.
                    let over_max = bytes + size > self.config.max_bytes;
                    let Some((k, v)) = table.pop_first()? else {
                        break;
                    };
                    let (old_seq, old_len) = (k.value(), v.value().len() as u64);
                    drop((k, v));
                    gone.push(old_seq);
                    bytes -= old_len;
                    evicted += 1;
                    if over_max {
                        evicted_max += 1;
                    }
                }
                table.insert(seq, record)?;
                added.push((seq, size));
                bytes += size;
            }
            // The counter lives in the same transaction as the records it numbered: after any
            // crash the file holds both or neither, so a seq is never handed out twice.
            let mut meta = txn.open_table(META)?;
            meta.insert(NEXT_SEQ, st.next_seq)?;
            for (key, value) in state {
                meta.insert(key.as_str(), *value)?;
            }
        }
        txn.commit()?;
        if durable {
            st.pending = 0;
        } else {
            st.pending += 1;
        }
        for seq in gone {
            // A record of this very commit may be evicted by a later one of it.
            if st.index.remove(&seq).is_none() {
                added.retain(|(s, _)| *s != seq);
            }
        }
        st.index.extend(added);
        st.disk_bytes = bytes;
        self.note_evictions(st, evicted_max, Eviction::MaxBytes);
        self.note_evictions(st, evicted - evicted_max, why);
        Ok((evicted, st.pending == 0))
    }

    /// Keeps `new` in memory while the file cannot be written, evicting the oldest held
    /// records beyond [`SpoolConfig::memory_bytes`]. Returns how many were evicted.
    fn hold(&self, st: &mut WriteState, new: &[(u64, &[u8])]) -> u64 {
        let limit = self.config.memory_bytes;
        let mut evicted = 0u64;
        {
            let mut mem = self.lock_mem();
            for (seq, record) in new {
                mem.held_bytes += record.len() as u64;
                mem.held.push_back((*seq, record.to_vec()));
            }
            // Keep at least the newest record, whatever the limit.
            while mem.held_bytes > limit && mem.held.len() > 1 {
                if let Some((_, old)) = mem.held.pop_front() {
                    mem.held_bytes -= old.len() as u64;
                    evicted += 1;
                }
            }
        }
        if evicted > 0 {
            self.note_evictions(st, evicted, Eviction::MemoryFull);
        }
        self.publish(st);
        evicted
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
    /// them: `peek_from(last_sent + 1, n)`. While the file cannot be used, only the records held
    /// in memory are returned (they are newer than those in the file, which wait for the disk).
    ///
    /// # Errors
    ///
    /// [`Error::SpoolStorage`] if the read transaction fails.
    pub fn peek_from(&self, first_seq: u64, max_records: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        let mut out = Vec::with_capacity(max_records.min(1024));
        self.scan(first_seq, max_records, |seq, payload| {
            out.push((seq, payload.to_vec()));
        })?;
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
        let mut batch: Option<Batch> = None;
        let total = usize::try_from(self.bytes()).unwrap_or(usize::MAX);
        self.scan(first_seq, max_records, |seq, payload| {
            let b = batch.get_or_insert_with(|| Batch {
                first: seq,
                last: seq,
                records: 0,
                // A guess: records of the first one's size, no more than the spool holds.
                bytes: Vec::with_capacity(payload.len().saturating_mul(max_records).min(total)),
            });
            b.last = seq;
            b.records += 1;
            b.bytes.extend_from_slice(payload);
        })?;
        Ok(batch)
    }

    /// Calls `each` for up to `max_records` records with seq ≥ `first_seq`, oldest first: those
    /// in the file (less the acked ones), then those held in memory.
    fn scan(
        &self,
        first_seq: u64,
        max_records: usize,
        mut each: impl FnMut(u64, &[u8]),
    ) -> Result<()> {
        if max_records == 0 {
            return Ok(());
        }
        let err = |e: redb::Error| Error::SpoolStorage {
            path: self.path.clone(),
            op: "peek",
            source: Box::new(e),
        };
        let db = self.current_db();
        // The file is read while `mem` is held, so that a record a writer moves from memory to
        // the file meanwhile is seen in at least one of them (and skipped in memory if seen in
        // both: held records have larger seqs than any in the file).
        let mem = self.lock_mem();
        let mut n = 0usize;
        let mut last = None;
        if let Some(db) = db {
            // A read transaction sees the last commit (durable or not) and never blocks a
            // writer.
            let txn = db.begin_read().map_err(|e| err(e.into()))?;
            let table = txn.open_table(RECORDS).map_err(|e| err(e.into()))?;
            for entry in table.range(first_seq..).map_err(|e| err(e.into()))? {
                let (k, v) = entry.map_err(|e| err(e.into()))?;
                let seq = k.value();
                last = Some(seq);
                if mem.acked.contains(&seq) {
                    continue;
                }
                each(seq, v.value());
                n += 1;
                if n == max_records {
                    return Ok(());
                }
            }
        }
        for (seq, payload) in &mem.held {
            if *seq < first_seq || last.is_some_and(|l| *seq <= l) {
                continue;
            }
            each(*seq, payload);
            n += 1;
            if n == max_records {
                break;
            }
        }
        Ok(())
    }

    /// Delete every record with seq ≤ `seq` (the backend acknowledged them); returns how many.
    ///
    /// Records appended after the peek that produced `seq` have larger seqs and stay. Acking
    /// seqs that were already evicted or acked is not an error. Nothing is written (no fsync)
    /// when nothing matches.
    ///
    /// # Errors
    ///
    /// None today: a file that cannot be written keeps the ack in memory (see
    /// [`Spool::ack_range`]). The `Result` stays for errors to come.
    pub fn ack_up_to(&self, seq: u64) -> Result<u64> {
        self.delete(0..=seq, |_| true)
    }

    /// Delete every record with `first ≤ seq ≤ last` (a [`Batch`] the backend acknowledged, in
    /// whatever order batches complete); returns how many. Nothing is written (no fsync) when
    /// nothing matches.
    ///
    /// While the file cannot be written, the acked records it holds are remembered in memory
    /// (never peeked again) and deleted from the file once it can be written; a crash before
    /// that sends them again (at-least-once).
    ///
    /// # Errors
    ///
    /// None today; see [`Spool::ack_up_to`].
    pub fn ack_range(&self, first: u64, last: u64) -> Result<u64> {
        if first > last {
            return Ok(0);
        }
        self.delete(first..=last, |_| true)
    }

    /// Delete exactly the given seqs (e.g. out-of-order acks); returns how many existed.
    ///
    /// # Errors
    ///
    /// None today; see [`Spool::ack_up_to`].
    pub fn ack(&self, seqs: &[u64]) -> Result<u64> {
        let set: BTreeSet<u64> = seqs.iter().copied().collect();
        let (Some(&first), Some(&last)) = (set.first(), set.last()) else {
            return Ok(0);
        };
        self.delete(first..=last, |s| set.contains(&s))
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
        let Some(db) = self.current_db() else {
            return Ok(());
        };
        // An empty durable commit persists all the non-durable ones before it.
        let result = db.begin_write().map_err(redb::Error::from).and_then(|txn| {
            txn.commit()?;
            Ok(())
        });
        match result {
            Ok(()) => {
                st.pending = 0;
                Ok(())
            }
            Err(e) => {
                drop(db);
                let fault = redb_fault(&self.path, &e);
                self.broke(&mut st, fault);
                Err(self.storage("flush", e))
            }
        }
    }

    /// Deletes the records in `range` whose seq matches `which`: held ones from memory, the
    /// file's in a transaction (found through the index's range, not a scan of it), or
    /// remembered as acked while the file cannot be written.
    fn delete(
        &self,
        range: std::ops::RangeInclusive<u64>,
        which: impl Fn(u64) -> bool,
    ) -> Result<u64> {
        let which = |s: u64| range.contains(&s) && which(s);
        let mut st = self.lock();
        let mut removed = 0u64;
        {
            let mut mem = self.lock_mem();
            let before = mem.held.len();
            let mut freed = 0;
            mem.held.retain(|(seq, r)| {
                let keep = !which(*seq);
                if !keep {
                    freed += r.len() as u64;
                }
                keep
            });
            mem.held_bytes -= freed;
            removed += (before - mem.held.len()) as u64;
        }
        let seqs: Vec<u64> = st
            .index
            .range(range.clone())
            .map(|(s, _)| *s)
            .filter(|s| which(*s))
            .collect();
        if seqs.is_empty() {
            if removed > 0 {
                self.publish(&st);
            }
            return Ok(removed);
        }
        removed += seqs.len() as u64;
        let written =
            self.current_db()
                .is_some_and(|db| match self.commit_deletes(&db, &mut st, &seqs) {
                    Ok(()) => true,
                    Err(e) => {
                        drop(db);
                        let fault = redb_fault(&self.path, &e);
                        self.broke(&mut st, fault);
                        false
                    }
                });
        if !written {
            // Remember the acks; peeks skip these records and the next write deletes them.
            self.lock_mem().acked.extend(seqs.iter().copied());
        }
        for seq in &seqs {
            if let Some(len) = st.index.remove(seq) {
                st.disk_bytes -= len;
            }
        }
        self.publish(&st);
        Ok(removed)
    }

    /// One transaction deleting `seqs` from the file.
    fn commit_deletes(
        &self,
        db: &Database,
        st: &mut WriteState,
        seqs: &[u64],
    ) -> std::result::Result<(), redb::Error> {
        let (txn, durable) = self.begin_write(db, st, false)?;
        {
            let mut table = txn.open_table(RECORDS)?;
            for seq in seqs {
                table.remove(*seq)?;
            }
        }
        txn.commit()?;
        if durable {
            st.pending = 0;
        } else {
            st.pending += 1;
        }
        Ok(())
    }

    /// Start a write transaction with the durability this commit should have.
    fn begin_write(
        &self,
        db: &Database,
        st: &WriteState,
        force_durable: bool,
    ) -> std::result::Result<(WriteTransaction, bool), redb::Error> {
        let mut txn = db.begin_write()?;
        let durable = force_durable
            || match self.config.durability {
                Durability::Immediate => true,
                Durability::Batched { every } => st.pending + 1 >= every.get(),
            };
        if !durable {
            txn.set_durability(redb::Durability::None)?;
        }
        Ok((txn, durable))
    }

    /// The file failed (or could not be opened): close it, remember when to try again, count
    /// the error and WARN once per new kind of fault.
    fn broke(&self, st: &mut WriteState, fault: StorageFault) {
        // redb latches an I/O error: the database must be closed and opened again. Readers
        // holding a clone finish first; the reopen waits for them (the file lock).
        *self.db.write().unwrap_or_else(PoisonError::into_inner) = None;
        let now = Instant::now();
        st.reopen_at = Some(now + st.reopen_delay);
        st.reopen_delay = (st.reopen_delay * 2).min(REOPEN_MAX);
        st.pending = 0;
        storage::count_error(&self.sink, fault.kind);
        if st.logged_fault != Some(fault.kind) {
            st.logged_fault = Some(fault.kind);
            tracing::warn!(
                sink = %self.sink,
                path = %self.path.display(),
                kind = fault.kind.as_str(),
                error = %fault.message,
                memory_bytes = self.config.memory_bytes,
                "Spool cannot be written; new readings are held in memory (and delivered from \
                 there while the backend is up) and written to the spool when the disk is back."
            );
        }
        *self.fault.lock().unwrap_or_else(PoisonError::into_inner) = Some(fault);
        self.publish(st);
    }

    /// A commit succeeded: if the file had failed, say that it works again.
    fn recovered(&self, st: &mut WriteState, written: u64) {
        st.reopen_at = None;
        st.reopen_delay = REOPEN_MIN;
        let was = self
            .fault
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(fault) = was {
            st.logged_fault = None;
            tracing::info!(
                sink = %self.sink,
                path = %self.path.display(),
                was = %fault.message,
                written,
                "Spool can be written again; the readings held in memory are in it now."
            );
        }
    }

    /// Publish the counts: the lock-free mirrors and the gauges.
    fn publish(&self, st: &WriteState) {
        let (held, held_bytes) = {
            let mem = self.lock_mem();
            (mem.held.len() as u64, mem.held_bytes)
        };
        let len = st.index.len() as u64 + held;
        let bytes = st.disk_bytes + held_bytes;
        self.len.store(len, Ordering::Release);
        self.bytes.store(bytes, Ordering::Release);
        // Gauges are f64: exact below 2^53, far beyond any spool.
        metrics::gauge!("p1gw_spool_records", "sink" => self.sink.clone()).set(len as f64);
        metrics::gauge!("p1gw_spool_bytes", "sink" => self.sink.clone()).set(bytes as f64);
        metrics::gauge!("p1gw_spool_held_records", "sink" => self.sink.clone()).set(held as f64);
    }

    /// Count evictions, and WARN about them at most once per [`EVICTION_LOG_INTERVAL`].
    fn note_evictions(&self, st: &mut WriteState, evicted: u64, why: Eviction) {
        if evicted == 0 {
            return;
        }
        metrics::counter!(
            "p1gw_spool_evicted_total",
            "sink" => self.sink.clone(),
            "reason" => why.as_str()
        )
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
                reason = why.as_str(),
                max_bytes = self.config.max_bytes,
                "Spool full: evicted the oldest readings, which will not be delivered."
            );
            st.evicted_unlogged = 0;
            st.last_eviction_log = Some(now);
        }
    }

    /// The open database, if the file is in use.
    fn current_db(&self) -> Option<Arc<Database>> {
        self.db
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The writer lock. A panic while it was held cannot have left `WriteState` half-updated:
    /// the state is only assigned after a successful commit, with plain stores that do not panic.
    fn lock(&self) -> MutexGuard<'_, WriteState> {
        self.write.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_mem(&self) -> MutexGuard<'_, MemState> {
        self.mem.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn storage(&self, op: &'static str, e: impl Into<redb::Error>) -> Error {
        Error::SpoolStorage {
            path: self.path.clone(),
            op,
            source: Box::new(e.into()),
        }
    }
}

impl Drop for Spool {
    /// Records still held in memory when the spool goes are lost: write them if the file can be
    /// written now, else say how many, at ERROR.
    fn drop(&mut self) {
        let held = self.lock_mem().held.len() as u64;
        if held == 0 {
            return;
        }
        {
            let mut st = self.lock();
            st.reopen_at = None;
        }
        let written = self.heal();
        let lost = held - written.min(held);
        if lost > 0 {
            metrics::counter!(
                "p1gw_spool_evicted_total",
                "sink" => self.sink.clone(),
                "reason" => "unwritable_at_exit"
            )
            .increment(lost);
            tracing::error!(
                sink = %self.sink,
                path = %self.path.display(),
                lost,
                "Spool closed while its disk could not be written: readings held in memory \
                 were lost."
            );
        }
    }
}

/// The storage fault behind a spool error, when the disk (not the file or the program) is the
/// problem.
fn storage_fault(path: &Path, err: &Error) -> Option<StorageFault> {
    let io = match err {
        Error::SpoolIo { source, .. } => Some(source),
        Error::SpoolOpen { source, .. } => match source.as_ref() {
            redb::DatabaseError::Storage(redb::StorageError::Io(io)) => Some(io),
            _ => None,
        },
        Error::SpoolStorage { source, .. } => match source.as_ref() {
            redb::Error::Io(io) => Some(io),
            _ => None,
        },
        _ => None,
    }?;
    let fault = StorageFault::new(path, io);
    (fault.kind != StorageKind::Other).then_some(fault)
}

/// The storage fault a failed transaction is. redb reports an I/O error once, then
/// `PreviousIo` until the database is reopened; anything but an I/O error is `other`.
fn redb_fault(path: &Path, err: &redb::Error) -> StorageFault {
    match err {
        redb::Error::Io(io) => StorageFault::new(path, io),
        redb::Error::PreviousIo => StorageFault {
            kind: StorageKind::Io,
            message: format!("I/O error on {} (an earlier one)", path.display()),
        },
        other => StorageFault {
            kind: StorageKind::Other,
            message: format!("{}: {other}", path.display()),
        },
    }
}

/// An error with its sources, as one line.
fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Open the file, make sure both tables exist, and read `next_seq`, `len` and `bytes` from it.
///
/// Runs under `catch_unwind`: redb may panic on some malformed files, and a spool must never take
/// the daemon down, so a panic counts as corruption.
fn try_open(opener: &Opener, path: &Path) -> Result<Opened, OpenFailure> {
    match catch_unwind(AssertUnwindSafe(|| try_open_inner(opener, path))) {
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

fn try_open_inner(opener: &Opener, path: &Path) -> Result<Opened, OpenFailure> {
    let mut db = opener(path).map_err(|e| classify_open(path, e))?;

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
    let (index, bytes) = {
        let txn = db.begin_read().map_err(|e| storage(e.into()))?;
        let table = txn.open_table(RECORDS).map_err(|e| storage(e.into()))?;
        let (mut index, mut bytes) = (BTreeMap::new(), 0u64);
        for entry in table.iter().map_err(|e| storage(e.into()))? {
            let (k, v) = entry.map_err(|e| storage(e.into()))?;
            let len = v.value().len() as u64;
            bytes += len;
            index.insert(k.value(), len);
        }
        (index, bytes)
    };
    let last = index.last_key_value().map(|(k, _)| *k);
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
        index,
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

    /// [`Spool::held`]; never waits for I/O.
    #[must_use]
    pub fn held(&self) -> u64 {
        self.inner.held()
    }

    /// [`Spool::fault`]; never waits for I/O.
    #[must_use]
    pub fn fault(&self) -> Option<StorageFault> {
        self.inner.fault()
    }

    /// [`Spool::heal`] on the blocking pool; 0 if the blocking task failed.
    pub async fn heal(&self) -> u64 {
        self.run("heal", |s| Ok(s.heal())).await.unwrap_or(0)
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
    /// [`Error::SpoolStorage`] if reading fails, or the file cannot be used and the number is
    /// not in memory.
    pub fn sink_state(&self, key: &str) -> Result<Option<u64>> {
        let key = format!("{SINK_STATE_PREFIX}{key}");
        if let Some(v) = self.lock_mem().state.get(&key) {
            return Ok(Some(*v));
        }
        let Some(db) = self.current_db() else {
            return Err(self.storage("state", redb::Error::PreviousIo));
        };
        let txn = db.begin_read().map_err(|e| self.storage("state", e))?;
        let meta = txn.open_table(META).map_err(|e| self.storage("state", e))?;
        let value = meta
            .get(key.as_str())
            .map_err(|e| self.storage("state", e))?;
        Ok(value.map(|v| v.value()))
    }

    /// Stores `entries` (key, number) in one transaction, durably (fsynced before it returns,
    /// whatever the spool's [`Durability`]): after a crash either all of them are there or the
    /// previous values are. While the file cannot be written they are kept in memory (and
    /// returned by [`Spool::sink_state`]) and written with the first commit that works, as
    /// held records are.
    ///
    /// # Errors
    ///
    /// None today; the `Result` stays for errors to come.
    pub fn set_sink_state(&self, entries: &[(&str, u64)]) -> Result<()> {
        let mut st = self.lock();
        {
            let mut mem = self.lock_mem();
            for (key, value) in entries {
                mem.state
                    .insert(format!("{SINK_STATE_PREFIX}{key}"), *value);
            }
        }
        if self.current_db().is_some() {
            // One commit of what memory holds (the state, and any held records); a commit
            // with sink state in it is always fsynced.
            self.write_through(&mut st, &[]);
        }
        Ok(())
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
