use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::sync::Mutex as StdMutex;

use proptest::prelude::*;

use super::*;
use crate::storage::StorageKind;

const CHILD_ENV: &str = "P1_SPOOL_CRASH_CHILD";
const CHILD_MODE_ENV: &str = "P1_SPOOL_CRASH_MODE";
const CHILD_RUN_ENV: &str = "P1_SPOOL_CRASH_RUN";
/// How many kill-and-reopen runs [`spool_survives_sigkill`] makes (default 100, about 12 s on
/// two cores; scripts/reliability asks for more).
const RUNS_ENV: &str = "P1_SPOOL_CRASH_RUNS";

fn open(path: &Path, max_bytes: u64) -> Spool {
    Spool::open(path, "test", SpoolConfig::new(max_bytes)).expect("open spool")
}

fn all(spool: &Spool) -> Vec<(u64, Vec<u8>)> {
    spool.peek(usize::MAX).expect("peek")
}

fn seqs(spool: &Spool) -> Vec<u64> {
    all(spool).into_iter().map(|(s, _)| s).collect()
}

fn corrupt_files(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.to_string_lossy().contains(".corrupt-"))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// A minimal `metrics` recorder, so tests can see what the spool counted.

#[derive(Default)]
struct TestRecorder {
    values: Arc<StdMutex<BTreeMap<String, f64>>>,
}

struct Cell {
    key: String,
    values: Arc<StdMutex<BTreeMap<String, f64>>>,
}

impl Cell {
    fn update(&self, f: impl FnOnce(&mut f64)) {
        let mut map = self.values.lock().expect("recorder lock");
        f(map.entry(self.key.clone()).or_insert(0.0));
    }
}

impl metrics::CounterFn for Cell {
    #[expect(clippy::cast_precision_loss, reason = "test counters are small")]
    fn increment(&self, value: u64) {
        self.update(|v| *v += value as f64);
    }
    #[expect(clippy::cast_precision_loss, reason = "test counters are small")]
    fn absolute(&self, value: u64) {
        self.update(|v| *v = value as f64);
    }
}

impl metrics::GaugeFn for Cell {
    fn increment(&self, value: f64) {
        self.update(|v| *v += value);
    }
    fn decrement(&self, value: f64) {
        self.update(|v| *v -= value);
    }
    fn set(&self, value: f64) {
        self.update(|v| *v = value);
    }
}

impl TestRecorder {
    fn cell(&self, key: &metrics::Key) -> Arc<Cell> {
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        Arc::new(Cell {
            key: format!("{}{{{}}}", key.name(), labels.join(",")),
            values: Arc::clone(&self.values),
        })
    }

    fn get(&self, key: &str) -> Option<f64> {
        self.values.lock().expect("recorder lock").get(key).copied()
    }
}

impl metrics::Recorder for TestRecorder {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        metrics::Counter::from_arc(self.cell(key))
    }
    fn register_gauge(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::from_arc(self.cell(key))
    }
    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

// ---------------------------------------------------------------------------------------------
// Plain behaviour.

#[test]
fn fifo_order_and_peek_does_not_remove() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = open(&dir.path().join("s.redb"), 1 << 20);
    assert!(spool.is_empty());
    assert_eq!(spool.peek(10).expect("peek"), vec![]);

    let a = spool.append(b"one").expect("append");
    let b = spool.append(b"two").expect("append");
    let batch = spool
        .append_batch(&[b"three".as_slice(), b"", b"five"])
        .expect("batch");
    assert_eq!((a.seq, b.seq), (1, 2));
    assert_eq!(batch.seqs, 3..6);
    assert!(a.durable && batch.durable);
    assert_eq!((a.evicted, batch.evicted), (0, 0));

    let expected: Vec<(u64, Vec<u8>)> = vec![
        (1, b"one".to_vec()),
        (2, b"two".to_vec()),
        (3, b"three".to_vec()),
        (4, b"".to_vec()),
        (5, b"five".to_vec()),
    ];
    assert_eq!(spool.peek(2).expect("peek"), expected[..2].to_vec());
    assert_eq!(spool.peek(100).expect("peek"), expected);
    assert_eq!(
        spool.peek_from(3, 2).expect("peek"),
        expected[2..4].to_vec()
    );
    assert_eq!(spool.peek(0).expect("peek"), vec![]);
    // Peeking removed nothing.
    assert_eq!(spool.len(), 5);
    assert_eq!(spool.bytes(), 3 + 3 + 5 + 4);

    // An empty batch takes no seq and writes nothing.
    let empty = spool.append_batch::<&[u8]>(&[]).expect("empty batch");
    assert_eq!(empty.seqs, 6..6);
    assert_eq!(spool.append(b"six").expect("append").seq, 6);
}

#[test]
fn seq_survives_reopen_even_when_emptied() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sub/dir/s.redb"); // parent directories are created
    {
        let spool = open(&path, 1 << 20);
        for i in 0..3u8 {
            spool.append(&[i]).expect("append");
        }
        assert_eq!(spool.ack_up_to(3).expect("ack"), 3);
        assert!(spool.is_empty());
    }
    let spool = open(&path, 1 << 20);
    assert!(spool.is_empty());
    assert_eq!(spool.append(b"x").expect("append").seq, 4);
}

#[test]
fn ack_deletes_only_what_was_acked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = open(&dir.path().join("s.redb"), 1 << 20);
    for i in 1..=6u8 {
        spool.append(&vec![i; usize::from(i)]).expect("append");
    }
    assert_eq!(spool.bytes(), 21);

    assert_eq!(spool.ack_up_to(2).expect("ack"), 2);
    assert_eq!(seqs(&spool), vec![3, 4, 5, 6]);
    assert_eq!((spool.len(), spool.bytes()), (4, 3 + 4 + 5 + 6));

    assert_eq!(spool.ack(&[5, 3, 42]).expect("ack"), 2, "42 never existed");
    assert_eq!(seqs(&spool), vec![4, 6]);
    assert_eq!((spool.len(), spool.bytes()), (2, 4 + 6));

    // Acking what is gone already changes nothing and is not an error.
    assert_eq!(spool.ack_up_to(3).expect("ack"), 0);
    assert_eq!(spool.ack(&[1, 2, 3, 5]).expect("ack"), 0);
    assert_eq!(seqs(&spool), vec![4, 6]);

    // A record appended after a peek survives an ack of what the peek returned.
    let peeked = spool.peek(10).expect("peek");
    let late = spool.append(b"late").expect("append").seq;
    let last = peeked.last().expect("non-empty").0;
    assert_eq!(spool.ack_up_to(last).expect("ack"), 2);
    assert_eq!(all(&spool), vec![(late, b"late".to_vec())]);
}

#[test]
fn batches_are_consecutive_records_in_one_buffer_and_ack_range_deletes_exactly_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = open(&dir.path().join("s.redb"), 1 << 20);
    assert_eq!(spool.peek_batch(0, 10).expect("peek"), None);
    for i in 1..=7u8 {
        spool.append(format!("r{i}\n").as_bytes()).expect("append");
    }
    let a = spool.peek_batch(0, 3).expect("peek").expect("records");
    assert_eq!((a.first, a.last, a.records), (1, 3, 3));
    assert_eq!(a.bytes, b"r1\nr2\nr3\n");
    let b = spool
        .peek_batch(a.last + 1, 3)
        .expect("peek")
        .expect("records");
    assert_eq!((b.first, b.last, b.records), (4, 6, 3));
    assert_eq!(spool.peek_batch(0, 0).expect("peek"), None);

    // The later batch is acknowledged first: only its records go.
    assert_eq!(spool.ack_range(b.first, b.last).expect("ack"), 3);
    assert_eq!(seqs(&spool), vec![1, 2, 3, 7]);
    assert_eq!((spool.len(), spool.bytes()), (4, 12));
    // A batch read over the gap holds exactly what is left.
    let c = spool.peek_batch(2, 10).expect("peek").expect("records");
    assert_eq!((c.first, c.last, c.records), (2, 7, 3));
    assert_eq!(c.bytes, b"r2\nr3\nr7\n");
    assert_eq!(spool.ack_range(a.first, a.last).expect("ack"), 3);
    assert_eq!(
        spool.ack_range(a.first, a.last).expect("ack"),
        0,
        "gone already"
    );
    assert_eq!(spool.ack_range(9, 8).expect("ack"), 0, "an empty range");
    assert_eq!(seqs(&spool), vec![7]);
}

#[test]
fn eviction_is_oldest_first_and_counted() {
    let recorder = TestRecorder::default();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.redb");
    metrics::with_local_recorder(&recorder, || {
        let spool = Spool::open(&path, "mqtt", SpoolConfig::new(100)).expect("open");
        for i in 1..=3u8 {
            assert_eq!(spool.append(&[i; 30]).expect("append").evicted, 0);
        }
        assert_eq!(spool.bytes(), 90);

        // 90 + 30 > 100: exactly the oldest one goes.
        let out = spool.append(&[4; 30]).expect("append");
        assert_eq!((out.seq, out.evicted), (4, 1));
        assert_eq!(seqs(&spool), vec![2, 3, 4]);

        // A small record that still fits evicts nothing.
        assert_eq!(spool.append(&[5; 10]).expect("append").evicted, 0);
        assert_eq!(spool.bytes(), 100);

        // A record of exactly max_bytes evicts everything else.
        let out = spool.append(&[6; 100]).expect("append");
        assert_eq!(out.evicted, 4);
        assert_eq!(seqs(&spool), vec![6]);

        // One record over the budget is refused, and nothing changes.
        let err = spool.append(&[7; 101]).expect_err("too large");
        assert!(matches!(
            err,
            Error::RecordTooLarge {
                len: 101,
                max_bytes: 100,
                ..
            }
        ));
        assert!(
            err.to_string()
                .contains("record of 101 bytes exceeds max_bytes 100")
        );
        assert_eq!(seqs(&spool), vec![6]);
        assert_eq!(
            spool.append(b"").expect("append").seq,
            7,
            "no seq was used up"
        );

        // A batch larger than the budget evicts its own first records too.
        let batch: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 40]).collect();
        let out = spool.append_batch(&batch).expect("batch");
        assert_eq!(out.seqs, 8..13);
        assert_eq!(out.evicted, 2 + 3, "6 and 7, then 8, 9 and 10 of the batch");
        assert_eq!(seqs(&spool), vec![11, 12]);
        assert_eq!(spool.bytes(), 80);

        assert_eq!(
            recorder.get("p1gw_spool_evicted_total{sink=mqtt,reason=max_bytes}"),
            Some(10.0)
        );
        assert_eq!(recorder.get("p1gw_spool_records{sink=mqtt}"), Some(2.0));
        assert_eq!(recorder.get("p1gw_spool_bytes{sink=mqtt}"), Some(80.0));
    });

    // A smaller budget after a restart applies from the next append on.
    let spool = open(&path, 50);
    assert_eq!(spool.bytes(), 80);
    let out = spool.append(&[9; 10]).expect("append");
    assert_eq!(out.evicted, 1);
    assert_eq!(seqs(&spool), vec![12, 13]);
}

#[test]
fn reopen_after_drop_keeps_unacked_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.redb");
    let before = {
        let spool = open(&path, 1 << 20);
        for i in 0..10u8 {
            spool.append(&[i; 7]).expect("append");
        }
        spool.ack(&[1, 5]).expect("ack");
        spool.ack_up_to(3).expect("ack");
        all(&spool)
    };
    assert_eq!(before.len(), 6);
    let spool = open(&path, 1 << 20);
    assert_eq!(all(&spool), before);
    assert_eq!((spool.len(), spool.bytes()), (6, 42));
}

#[test]
fn batched_durability_fsyncs_every_nth_commit_and_on_flush() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.redb");
    let config = SpoolConfig {
        reserve_bytes: 0,
        memory_bytes: crate::spool::DEFAULT_MEMORY_BYTES,
        max_bytes: 1 << 20,
        durability: Durability::Batched {
            every: NonZeroU32::new(3).expect("3 > 0"),
        },
    };
    {
        let spool = Spool::open(&path, "test", config).expect("open");
        let durable: Vec<bool> = (0..7u8)
            .map(|i| spool.append(&[i]).expect("append").durable)
            .collect();
        assert_eq!(durable, [false, false, true, false, false, true, false]);
        // Acks count as commits too.
        assert_eq!(spool.ack_up_to(1).expect("ack"), 1);
        assert!(spool.append(b"x").expect("append").durable);
        assert!(!spool.append(b"y").expect("append").durable);
        spool.flush().expect("flush");
        assert!(spool.append_batch::<&[u8]>(&[]).expect("empty").durable);
        assert!(!spool.append(b"z").expect("append").durable);
        // Dropping the spool makes the last, non-durable commit durable.
    }
    let spool = Spool::open(&path, "test", config).expect("reopen");
    assert_eq!(seqs(&spool), (2..=10).collect::<Vec<_>>());
}

#[test]
fn invalid_config_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = Spool::open(dir.path().join("s.redb"), "t", SpoolConfig::new(0)).expect_err("0");
    assert_eq!(
        err.to_string(),
        "spool max_bytes: must be greater than zero"
    );
}

// ---------------------------------------------------------------------------------------------
// Corruption.

#[test]
fn garbage_file_is_moved_aside_and_spool_starts_empty() {
    let recorder = TestRecorder::default();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.redb");
    let garbage: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(&path, &garbage).expect("write garbage");

    let spool = metrics::with_local_recorder(&recorder, || {
        Spool::open(&path, "influx", SpoolConfig::new(1 << 20)).expect("open despite garbage")
    });
    assert!(spool.is_empty());
    assert_eq!(spool.append(b"fresh").expect("append").seq, 1);
    assert_eq!(
        recorder.get("p1gw_spool_corrupt_total{sink=influx}"),
        Some(1.0)
    );

    let aside = corrupt_files(dir.path());
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(
        fs::read(&aside[0]).expect("read aside"),
        garbage,
        "kept for a post mortem"
    );
}

#[test]
fn redb_file_of_another_shape_is_moved_aside() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.redb");
    {
        // Same table name, other types: a redb file, but not a spool.
        let other: TableDefinition<'_, &str, &str> = TableDefinition::new("records");
        let db = Database::create(&path).expect("create");
        let txn = db.begin_write().expect("begin");
        txn.open_table(other)
            .expect("table")
            .insert("a", "b")
            .expect("insert");
        txn.commit().expect("commit");
    }
    let spool = open(&path, 1 << 20);
    assert!(spool.is_empty());
    assert_eq!(corrupt_files(dir.path()).len(), 1);
}

#[test]
fn damaged_spool_never_panics_and_never_returns_wrong_records() {
    // Flip bytes all over a real spool file. Each damaged copy must open (repaired by redb, or
    // moved aside and started empty); whatever records it still returns must be ones we wrote.
    let dir = tempfile::tempdir().expect("tempdir");
    let pristine = dir.path().join("pristine.redb");
    let written: BTreeMap<u64, Vec<u8>> = {
        let spool = open(&pristine, 1 << 20);
        let records: Vec<Vec<u8>> = (0..200u32)
            .map(|i| format!("record {i:04}").repeat(5).into_bytes())
            .collect();
        let out = spool.append_batch(&records).expect("batch");
        out.seqs.zip(records).collect()
    };
    let bytes = fs::read(&pristine).expect("read");
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    let (mut aside_rounds, mut intact_rounds) = (0u32, 0u32);
    // One flipped byte in the first rounds (often in free space or repairable), more later.
    for round in 0..24 {
        let mut damaged = bytes.clone();
        for _ in 0..(1 + round / 8) {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let at = usize::try_from(rng % damaged.len() as u64).expect("fits");
            damaged[at] ^= 0x5a;
        }
        let sub = dir.path().join(format!("round{round}"));
        fs::create_dir(&sub).expect("mkdir");
        let path = sub.join("s.redb");
        fs::write(&path, &damaged).expect("write");
        let spool = open(&path, 1 << 20);
        for (seq, data) in all(&spool) {
            assert_eq!(
                written.get(&seq),
                Some(&data),
                "round {round}: seq {seq} altered"
            );
        }
        assert_eq!(
            spool.bytes(),
            all(&spool).iter().map(|(_, d)| d.len() as u64).sum::<u64>()
        );
        if corrupt_files(&sub).is_empty() {
            intact_rounds += u32::from(all(&spool).len() == written.len());
        } else {
            assert!(
                spool.is_empty(),
                "round {round}: moved aside, yet not empty"
            );
            aside_rounds += 1;
        }
        spool.append(b"still works").expect("append after damage");
    }
    // The flips are seeded: make sure both outcomes were exercised.
    assert!(
        aside_rounds > 0 && intact_rounds > 0,
        "{aside_rounds} aside, {intact_rounds} intact"
    );
}

#[test]
fn open_compacts_a_drained_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.redb");
    {
        let spool = open(&path, 64 << 20);
        let records: Vec<Vec<u8>> = (0..64).map(|i| vec![i; 128 * 1024]).collect();
        spool.append_batch(&records).expect("8 MiB batch");
        // The newest record, near the end of the file, stays: redb can only cut free space off
        // the end of the file by itself, so the file keeps its size.
        assert_eq!(spool.ack_up_to(63).expect("ack"), 63);
    }
    let grown = fs::metadata(&path).expect("stat").len();
    assert!(grown > 8 << 20, "file grew to {grown}");
    let spool = open(&path, 64 << 20);
    let shrunk = fs::metadata(&path).expect("stat").len();
    assert!(
        shrunk < COMPACT_SLACK_BYTES,
        "compacted to {shrunk} (from {grown})"
    );
    assert_eq!(seqs(&spool), vec![64]);
    assert_eq!(spool.append(b"x").expect("append").seq, 65);
}

// ---------------------------------------------------------------------------------------------
// Async wrapper.

#[tokio::test]
async fn async_spool_clones_share_one_spool() {
    let dir = tempfile::tempdir().expect("tempdir");
    let intake = AsyncSpool::open(dir.path().join("s.redb"), "t", SpoolConfig::new(1 << 20))
        .await
        .expect("open");
    let delivery = intake.clone();
    assert_eq!(intake.append(b"a".to_vec()).await.expect("append").seq, 1);
    let batch = intake
        .append_batch(vec![b"b".to_vec(), b"c".to_vec()])
        .await
        .expect("batch");
    assert_eq!(batch.seqs, 2..4);
    assert_eq!(delivery.len(), 3);
    let peeked = delivery.peek(2).await.expect("peek");
    assert_eq!(peeked, vec![(1, b"a".to_vec()), (2, b"b".to_vec())]);
    assert_eq!(
        delivery.peek_from(3, 9).await.expect("peek"),
        vec![(3, b"c".to_vec())]
    );
    assert_eq!(delivery.ack_up_to(2).await.expect("ack"), 2);
    assert_eq!(delivery.ack(vec![3]).await.expect("ack"), 1);
    delivery.flush().await.expect("flush");
    assert!(intake.is_empty());
    assert_eq!(intake.bytes(), 0);
    assert_eq!(intake.blocking().sink(), "t");
}

// ---------------------------------------------------------------------------------------------
// Property test: the spool behaves like a VecDeque with oldest-first eviction, across reopens.

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<u8>),
    AppendBatch(Vec<Vec<u8>>),
    Peek(usize),
    /// Ack up to the n-th oldest record (modulo the length).
    AckUpTo(usize),
    /// Ack the records at these positions (modulo the length) and one that does not exist.
    AckSome(Vec<usize>),
    Flush,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    let record = proptest::collection::vec(any::<u8>(), 0..90);
    prop_oneof![
        4 => record.clone().prop_map(Op::Append),
        2 => proptest::collection::vec(record, 0..5).prop_map(Op::AppendBatch),
        2 => (0usize..8).prop_map(Op::Peek),
        2 => any::<usize>().prop_map(Op::AckUpTo),
        1 => proptest::collection::vec(any::<usize>(), 0..4).prop_map(Op::AckSome),
        1 => Just(Op::Flush),
        1 => Just(Op::Reopen),
    ]
}

struct Model {
    records: VecDeque<(u64, Vec<u8>)>,
    next_seq: u64,
    max_bytes: u64,
}

impl Model {
    fn bytes(&self) -> u64 {
        self.records.iter().map(|(_, r)| r.len() as u64).sum()
    }

    fn append(&mut self, record: Vec<u8>) -> u64 {
        let mut evicted = 0;
        while self.bytes() + record.len() as u64 > self.max_bytes {
            self.records.pop_front();
            evicted += 1;
        }
        self.records.push_back((self.next_seq, record));
        self.next_seq += 1;
        evicted
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn spool_matches_vecdeque_model(
        ops in proptest::collection::vec(op(), 1..40),
        batched in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.redb");
        let config = SpoolConfig {
        reserve_bytes: 0,
        memory_bytes: crate::spool::DEFAULT_MEMORY_BYTES,
            max_bytes: 250,
            durability: if batched {
                Durability::Batched { every: NonZeroU32::new(4).expect("4 > 0") }
            } else {
                Durability::Immediate
            },
        };
        let mut spool = Spool::open(&path, "prop", config).expect("open");
        let mut model = Model { records: VecDeque::new(), next_seq: 1, max_bytes: 250 };

        for op in ops {
            match op {
                Op::Append(r) => {
                    let out = spool.append(&r).expect("append");
                    prop_assert_eq!(out.seq, model.next_seq);
                    prop_assert_eq!(out.evicted, model.append(r));
                }
                Op::AppendBatch(rs) => {
                    let out = spool.append_batch(&rs).expect("batch");
                    let first = model.next_seq;
                    let evicted: u64 = rs.into_iter().map(|r| model.append(r)).sum();
                    prop_assert_eq!(out.seqs, first..model.next_seq);
                    prop_assert_eq!(out.evicted, evicted);
                }
                Op::Peek(n) => {
                    let want: Vec<_> = model.records.iter().take(n).cloned().collect();
                    prop_assert_eq!(spool.peek(n).expect("peek"), want);
                }
                Op::AckUpTo(i) => {
                    let upto = if model.records.is_empty() {
                        model.next_seq.saturating_sub(1)
                    } else {
                        model.records[i % model.records.len()].0
                    };
                    let before = model.records.len();
                    model.records.retain(|(s, _)| *s > upto);
                    let removed = (before - model.records.len()) as u64;
                    prop_assert_eq!(spool.ack_up_to(upto).expect("ack"), removed);
                }
                Op::AckSome(idx) => {
                    let mut seqs: Vec<u64> = idx
                        .iter()
                        .filter(|_| !model.records.is_empty())
                        .map(|i| model.records[i % model.records.len()].0)
                        .collect();
                    seqs.push(model.next_seq + 1000);
                    let before = model.records.len();
                    model.records.retain(|(s, _)| !seqs.contains(s));
                    let removed = (before - model.records.len()) as u64;
                    prop_assert_eq!(spool.ack(&seqs).expect("ack"), removed);
                }
                Op::Flush => spool.flush().expect("flush"),
                Op::Reopen => {
                    drop(spool);
                    spool = Spool::open(&path, "prop", config).expect("reopen");
                }
            }
            prop_assert_eq!(spool.len(), model.records.len() as u64);
            prop_assert_eq!(spool.bytes(), model.bytes());
            prop_assert!(spool.bytes() <= 250);
        }
        prop_assert_eq!(all(&spool), model.records.into_iter().collect::<Vec<_>>());
    }
}

// ---------------------------------------------------------------------------------------------
// Crash test: a child process appends (and acks) until it is killed with SIGKILL; every seq it
// reported as stored must be in the file afterwards, unless it had announced acking it.

/// The payload for record `i` of crash run `run`: a header plus a filler derived from it, so a
/// torn or mixed-up record cannot pass the check. Sizes vary so records span pages.
fn crash_payload(run: u32, i: u64) -> Vec<u8> {
    let header = format!("run {run} rec {i};");
    let fill = header
        .bytes()
        .fold(0u8, |a, b| a.wrapping_mul(31).wrapping_add(b));
    let len = usize::try_from(i * 397 % 3000).expect("small");
    let mut out = header.into_bytes();
    out.extend(std::iter::repeat_n(fill, len));
    out
}

/// Recognise a payload made by [`crash_payload`].
fn crash_payload_is_whole(data: &[u8]) -> bool {
    let Some(end) = data.iter().position(|&b| b == b';') else {
        return false;
    };
    let Ok(header) = std::str::from_utf8(&data[..end]) else {
        return false;
    };
    let mut words = header.split(' ');
    let (Some("run"), Some(run), Some("rec"), Some(i), None) = (
        words.next(),
        words.next(),
        words.next(),
        words.next(),
        words.next(),
    ) else {
        return false;
    };
    match (run.parse(), i.parse()) {
        (Ok(run), Ok(i)) => crash_payload(run, i) == data,
        _ => false,
    }
}

/// Not a test of its own: the child side of [`spool_survives_sigkill`], selected by
/// `P1_SPOOL_CRASH_CHILD`. Without that variable it returns at once.
#[test]
fn crash_child_writer() {
    let Some(path) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let run: u32 = std::env::var(CHILD_RUN_ENV)
        .ok()
        .and_then(|r| r.parse().ok())
        .expect("run number");
    let batched = std::env::var(CHILD_MODE_ENV).is_ok_and(|m| m == "batched");
    let config = SpoolConfig {
        reserve_bytes: 0,
        memory_bytes: crate::spool::DEFAULT_MEMORY_BYTES,
        max_bytes: 1 << 30, // no eviction: every loss would be a bug
        durability: if batched {
            Durability::Batched {
                every: NonZeroU32::new(3).expect("3 > 0"),
            }
        } else {
            Durability::Immediate
        },
    };
    let spool = Spool::open(&path, "crash", config).expect("child: open");
    let mut out = std::io::stdout().lock();
    let mut say = |line: String| {
        out.write_all(line.as_bytes()).expect("child: stdout");
        out.flush().expect("child: flush");
    };
    // Seqs committed but not yet fsynced (batched mode): reported once a durable commit covers
    // them, since only then are they promised to survive.
    let mut unreported = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20); // in case the parent is gone
    let mut i = 0u64;
    while Instant::now() < deadline {
        if i % 5 == 4 {
            // Ack a prefix. Announce it *before* acking: after a kill the parent cannot know
            // whether the ack committed, so announced seqs may or may not be present.
            let oldest = spool.peek(3).expect("child: peek");
            if let Some(&(upto, _)) = oldest.last() {
                say(format!("acking {upto}\n"));
                spool.ack_up_to(upto).expect("child: ack");
            }
        }
        let durable = if i.is_multiple_of(3) {
            let batch = [crash_payload(run, i), crash_payload(run, i + 1)];
            let b = spool.append_batch(&batch).expect("child: append batch");
            unreported.extend(b.seqs);
            i += 2;
            b.durable
        } else {
            let a = spool.append(&crash_payload(run, i)).expect("child: append");
            unreported.push(a.seq);
            i += 1;
            a.durable
        };
        if durable {
            for seq in unreported.drain(..) {
                say(format!("stored {seq}\n"));
            }
        }
    }
}

#[test]
fn spool_survives_sigkill() {
    let runs: u32 = std::env::var(RUNS_ENV)
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(100);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("crash.redb");
    let exe = std::env::current_exe().expect("test binary path");
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    let mut reported: Vec<u64> = Vec::new(); // every seq any child said was stored
    let mut acked_upto = 0u64; // highest prefix any child announced acking

    for run in 0..runs {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let kill_after = 1 + usize::try_from(rng % 40).expect("small");
        let mut child = Command::new(&exe)
            .args(["--exact", "spool::tests::crash_child_writer", "--nocapture"])
            .args(["--test-threads=1", "--quiet"])
            .env(CHILD_ENV, &path)
            .env(CHILD_RUN_ENV, run.to_string())
            .env(
                CHILD_MODE_ENV,
                if run % 2 == 1 { "batched" } else { "immediate" },
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn child");

        // Read the child's lines on a thread so the wait below has a deadline.
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut handle = |line: &str, stored: &mut usize| {
            // `split_once`, not `strip_prefix`: libtest may print its own text before ours.
            if let Some((_, seq)) = line.split_once("stored ") {
                reported.push(seq.trim().parse().expect("seq"));
                *stored += 1;
            } else if let Some((_, seq)) = line.split_once("acking ") {
                acked_upto = acked_upto.max(seq.trim().parse().expect("seq"));
            }
        };
        let mut stored = 0usize;
        let deadline = Instant::now() + Duration::from_secs(20);
        while stored < kill_after {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => handle(&line, &mut stored),
                Err(_) => {
                    let killed = child.kill();
                    let mut err = String::new();
                    let read = child.stderr.take().map(|mut e| e.read_to_string(&mut err));
                    panic!(
                        "run {run}: child stopped or stalled after {stored} records \
                         (kill: {killed:?}, stderr: {read:?}): {err}"
                    );
                }
            }
        }
        child.kill().expect("SIGKILL child"); // Child::kill is SIGKILL on Unix
        child.wait().expect("reap child");
        // Lines the child printed before it died are promises too.
        reader.join().expect("reader thread");
        while let Ok(line) = rx.try_recv() {
            handle(&line, &mut stored);
        }

        let spool = open(&path, 1 << 30);
        let present = all(&spool);
        assert!(
            corrupt_files(dir.path()).is_empty(),
            "run {run}: file was corrupt"
        );
        for (seq, data) in &present {
            assert!(crash_payload_is_whole(data), "run {run}: seq {seq} is torn");
        }
        let present_seqs: Vec<u64> = present.iter().map(|(s, _)| *s).collect();
        // Only prefixes are acked and nothing is evicted, so what is left is one run of seqs.
        if let (Some(first), Some(last)) = (present_seqs.first(), present_seqs.last()) {
            assert_eq!(
                present_seqs,
                (*first..=*last).collect::<Vec<_>>(),
                "run {run}: a gap"
            );
        }
        for seq in reported.iter().filter(|&&s| s > acked_upto) {
            assert!(
                present_seqs.binary_search(seq).is_ok(),
                "run {run}: seq {seq} was reported stored, not acked, and is gone"
            );
        }
        assert_eq!(spool.len(), present.len() as u64);
        assert_eq!(
            spool.bytes(),
            present.iter().map(|(_, d)| d.len() as u64).sum::<u64>()
        );
        // Seqs never go backwards across a crash.
        let max_seen = reported
            .iter()
            .chain(&present_seqs)
            .max()
            .copied()
            .unwrap_or(0);
        // (The record stays: acking it here would leave a gap the next run cannot explain.)
        let next = spool
            .append(&crash_payload(9999, 0))
            .expect("append after crash")
            .seq;
        assert!(
            next > max_seen,
            "run {run}: seq {next} reused (seen {max_seen})"
        );
    }
    assert!(
        reported.len() >= runs as usize,
        "children stored too little to mean much"
    );
}

// ---- a failing disk ------------------------------------------------------------------------

/// redb's file backend with a switch: while it is on, every write, resize and sync fails with
/// `errno` (reads too, with `fail_reads`), as a failing SD card, a full or a read-only file
/// system would answer.
#[derive(Debug)]
struct Flaky {
    file: std::fs::File,
    switch: Arc<FaultSwitch>,
}

#[derive(Debug, Default)]
struct FaultSwitch {
    errno: std::sync::atomic::AtomicI32,
    fail_reads: std::sync::atomic::AtomicBool,
}

impl FaultSwitch {
    fn fail(&self, errno: i32, reads: bool) {
        self.errno.store(errno, Ordering::SeqCst);
        self.fail_reads.store(reads, Ordering::SeqCst);
    }

    fn heal(&self) {
        self.fail(0, false);
    }

    fn check(&self, read: bool) -> std::io::Result<()> {
        let errno = self.errno.load(Ordering::SeqCst);
        if errno != 0 && (!read || self.fail_reads.load(Ordering::SeqCst)) {
            return Err(std::io::Error::from_raw_os_error(errno));
        }
        Ok(())
    }
}

impl redb::StorageBackend for Flaky {
    fn len(&self) -> std::io::Result<u64> {
        self.switch.check(true)?;
        Ok(self.file.metadata()?.len())
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt as _;
        self.switch.check(true)?;
        self.file.read_exact_at(out, offset)
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.switch.check(false)?;
        self.file.set_len(len)
    }

    fn sync_data(&self) -> std::io::Result<()> {
        self.switch.check(false)?;
        self.file.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt as _;
        self.switch.check(false)?;
        self.file.write_all_at(data, offset)
    }
}

/// A spool on a [`Flaky`] file, and its switch. Opening fails too while the switch is on (a
/// read-only file system refuses to open the file for writing).
fn flaky(path: &Path, config: SpoolConfig) -> (Spool, Arc<FaultSwitch>) {
    let switch = Arc::new(FaultSwitch::default());
    let s = Arc::clone(&switch);
    let opener: Opener = Arc::new(move |path: &Path| {
        s.check(false)
            .map_err(|e| redb::DatabaseError::Storage(e.into()))?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| redb::DatabaseError::Storage(e.into()))?;
        redb::Builder::new()
            .set_check_integrity_on_open(true)
            .create_with_backend(Flaky {
                file,
                switch: Arc::clone(&s),
            })
    });
    let spool = Spool::open_with(path, "test", config, opener).expect("open flaky spool");
    (spool, switch)
}

/// Waits out the spool's reopen backoff (at most 4 s) by healing until it works.
fn heal_until_written(spool: &Spool) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let written = spool.heal();
        if spool.fault().is_none() {
            return written;
        }
        assert!(
            Instant::now() < deadline,
            "the spool did not recover within 10 s: {:?}",
            spool.fault()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn an_io_error_holds_new_records_in_memory_and_the_reopened_file_takes_them() {
    let recorder = TestRecorder::default();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.redb");
    metrics::with_local_recorder(&recorder, || {
        let (spool, switch) = flaky(&path, SpoolConfig::new(1 << 20));
        for i in 1..=3u8 {
            assert_eq!(spool.append(&[i; 10]).expect("append").seq, u64::from(i));
        }

        // The disk fails (EIO on writes): appends are held, nothing is an error.
        switch.fail(5, false);
        let out = spool.append_batch(&[[4u8; 10], [5u8; 10]]).expect("held");
        assert_eq!((out.seqs.clone(), out.held, out.stored), (4..6, 2, 0));
        assert!(!out.durable);
        let fault = spool.fault().expect("a fault is reported");
        assert_eq!(fault.kind, StorageKind::Io);
        assert!(
            fault.message.starts_with("I/O error on "),
            "{}",
            fault.message
        );
        assert_eq!(spool.held(), 2);
        assert_eq!(spool.len(), 5);
        assert_eq!(
            recorder.get("p1gw_storage_errors_total{sink=test,kind=io}"),
            Some(1.0)
        );
        assert_eq!(
            recorder.get("p1gw_spool_held_records{sink=test}"),
            Some(2.0)
        );
        // While the file is closed, peeks see only what memory holds: the live readings.
        assert_eq!(seqs(&spool), vec![4, 5]);
        // An ack of a held record forgets it; an ack of one in the file is remembered.
        assert_eq!(spool.ack_range(4, 4).expect("ack"), 1);
        assert_eq!(spool.ack_range(1, 1).expect("ack"), 1);
        assert_eq!(spool.len(), 3);
        assert_eq!(seqs(&spool), vec![5]);

        // The disk is back: the next heal reopens the file and writes what memory held.
        switch.heal();
        assert_eq!(heal_until_written(&spool), 1);
        assert_eq!(spool.held(), 0);
        assert_eq!(seqs(&spool), vec![2, 3, 5], "1 and 4 were acked");
        assert_eq!(
            spool.append(&[6; 10]).expect("append").seq,
            6,
            "no seq reused"
        );
        drop(spool);

        // And all of it is in the file.
        let spool = open(&path, 1 << 20);
        assert_eq!(seqs(&spool), vec![2, 3, 5, 6]);
    });
}

#[test]
fn a_file_that_cannot_be_opened_at_start_holds_in_memory_until_it_can() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.redb");
    let switch = Arc::new(FaultSwitch::default());
    switch.fail(30, true); // EROFS
    let s = Arc::clone(&switch);
    let opener: Opener = Arc::new(move |path: &Path| {
        s.check(false)
            .map_err(|e| redb::DatabaseError::Storage(e.into()))?;
        redb::Builder::new().create(path)
    });
    let spool = Spool::open_with(&path, "test", SpoolConfig::new(1 << 20), opener).expect("starts");
    assert_eq!(spool.fault().map(|f| f.kind), Some(StorageKind::ReadOnly));
    assert_eq!(spool.append(&[1; 10]).expect("held").seq, 1);
    assert_eq!(spool.held(), 1);
    switch.heal();
    assert_eq!(heal_until_written(&spool), 1);
    assert_eq!(seqs(&spool), vec![1]);
}

#[test]
fn memory_for_a_failing_disk_is_bounded_and_what_it_drops_is_counted() {
    let recorder = TestRecorder::default();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.redb");
    metrics::with_local_recorder(&recorder, || {
        let config = SpoolConfig {
            memory_bytes: 100,
            ..SpoolConfig::new(1 << 20)
        };
        let (spool, switch) = flaky(&path, config);
        switch.fail(28, true); // ENOSPC
        for i in 1..=25u8 {
            spool.append(&[i; 10]).expect("held");
        }
        assert_eq!(spool.fault().map(|f| f.kind), Some(StorageKind::NoSpace));
        assert_eq!(
            seqs(&spool),
            (16..=25).collect::<Vec<_>>(),
            "the newest 100 bytes"
        );
        assert_eq!(
            recorder.get("p1gw_spool_evicted_total{sink=test,reason=memory_full}"),
            Some(15.0)
        );
        // Counted once per failed attempt to write, not once per record held.
        let errors = recorder
            .get("p1gw_storage_errors_total{sink=test,kind=no_space}")
            .expect("counted");
        assert!((1.0..=25.0).contains(&errors), "{errors}");

        // Dropped while the disk still fails: the held records are lost, and counted so.
        drop(spool);
        assert_eq!(
            recorder.get("p1gw_spool_evicted_total{sink=test,reason=unwritable_at_exit}"),
            Some(10.0)
        );
    });
}

#[test]
fn below_the_free_space_reserve_the_spool_stops_growing() {
    let recorder = TestRecorder::default();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.redb");
    metrics::with_local_recorder(&recorder, || {
        // A reserve no disk here has free: the spool is always below it.
        let config = SpoolConfig {
            reserve_bytes: u64::MAX / 4,
            ..SpoolConfig::new(1 << 20)
        };
        let spool = Spool::open(&path, "test", config).expect("open");
        assert_eq!(
            spool.append(&[1; 10]).expect("append").evicted,
            0,
            "one always fits"
        );
        for i in 2..=5u8 {
            assert_eq!(spool.append(&[i; 10]).expect("append").evicted, 1);
        }
        assert_eq!(seqs(&spool), vec![5]);
        assert_eq!(spool.bytes(), 10);
        assert_eq!(
            recorder.get("p1gw_spool_evicted_total{sink=test,reason=disk_reserve}"),
            Some(4.0)
        );
        assert_eq!(spool.fault(), None, "a reserve kept is not a fault");
    });
}

// Sink state (a separate block, like the code it tests).

#[test]
fn sink_state_survives_a_reopen_and_never_touches_the_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s.redb");
    {
        let spool = open(&path, 1 << 20);
        assert_eq!(spool.sink_state("budget.day").expect("read"), None);
        spool.append(b"a").expect("append");
        spool
            .set_sink_state(&[("budget.day", 20_000), ("budget.used", 7)])
            .expect("store");
        spool.set_sink_state(&[("budget.used", 8)]).expect("store");
        assert_eq!(spool.sink_state("budget.used").expect("read"), Some(8));
        // A key like the spool's own is the sink's, apart from it.
        spool.set_sink_state(&[("next_seq", 1)]).expect("store");
    }
    let spool = open(&path, 1 << 20);
    assert_eq!(spool.sink_state("budget.day").expect("read"), Some(20_000));
    assert_eq!(spool.sink_state("budget.used").expect("read"), Some(8));
    assert_eq!(seqs(&spool), [1]);
    spool.append(b"b").expect("append");
    assert_eq!(seqs(&spool), [1, 2], "the spool's own counter untouched");
}
