//! The generic worker against a scripted backend: what is acknowledged is
//! deleted, what is not stays spooled, in order, across failures and restarts.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::{ComponentKind, Registry, SpoolConfig};

fn reading(i: u64) -> Arc<Reading> {
    let text = format!("/X5\r\n\r\n1-0:1.8.0({i:010}.000*kWh)\r\n!\r\n");
    let t = p1_telegram::Telegram::parse(text.as_bytes(), p1_telegram::ParseOptions::default())
        .expect("telegram");
    Arc::new(Reading::from_telegram(
        Arc::from("m"),
        Arc::from("test"),
        &t,
        &jiff::tz::TimeZone::UTC,
        jiff::Timestamp::UNIX_EPOCH,
    ))
}

/// Encodes the import total as the record.
struct Total;
impl Encode for Total {
    fn encode(&mut self, reading: &Reading) -> Option<Vec<u8>> {
        Some(format!("{}", reading.number("energy_import_total")? as u64).into_bytes())
    }
}

/// A backend that answers from a script, then accepts everything.
#[derive(Clone, Default)]
struct Backend {
    script: Arc<Mutex<VecDeque<Result<usize, DeliveryError>>>>,
    got: Arc<Mutex<Vec<String>>>,
}

impl Deliver for Backend {
    fn max_batch(&self) -> usize {
        4
    }
    fn deliver<'a>(
        &'a mut self,
        records: &'a [(u64, Vec<u8>)],
    ) -> BoxFuture<'a, Result<usize, DeliveryError>> {
        Box::pin(async move {
            let answer = self
                .script
                .lock()
                .expect("lock")
                .pop_front()
                .unwrap_or(Ok(records.len()));
            if let Ok(n) = answer {
                let mut got = self.got.lock().expect("lock");
                for (_, r) in records.iter().take(n) {
                    got.push(String::from_utf8_lossy(r).into_owned());
                }
            }
            answer
        })
    }
}

async fn cx(dir: &std::path::Path, registry: &Registry) -> SinkContext {
    SinkContext {
        name: "test".into(),
        health: registry
            .register("sink:test", ComponentKind::Sink)
            .expect("register"),
        spool: AsyncSpool::open(dir.join("s.redb"), "test", SpoolConfig::new(1 << 20))
            .await
            .expect("spool"),
        stop: CancellationToken::new(),
        hard: CancellationToken::new(),
    }
}

fn numbers(got: &Mutex<Vec<String>>) -> Vec<u64> {
    got.lock()
        .expect("lock")
        .iter()
        .map(|s| s.parse().expect("number"))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn failures_partial_acks_and_rejections_keep_order_and_lose_nothing_else() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = Registry::new();
    let cx = cx(dir.path(), &registry).await;
    let spool = cx.spool.clone();
    let backend = Backend::default();
    {
        let mut s = backend.script.lock().expect("lock");
        s.push_back(Err(DeliveryError::Transient {
            message: "down".into(),
            retry_after: None,
        }));
        s.push_back(Err(DeliveryError::Transient {
            message: "still down".into(),
            retry_after: Some(Duration::from_secs(5)),
        }));
        s.push_back(Ok(1)); // a partial ack
        s.push_back(Err(DeliveryError::Permanent {
            message: "bad point".into(),
            records: 1,
        }));
    }
    let (tx, rx) = broadcast::channel(64);
    let sink = Box::new(Spooled::new("test", Total, backend.clone()));
    let run = tokio::spawn(sink.run(rx, cx));
    for i in 1..=10 {
        tx.send(reading(i)).expect("receiver");
    }
    drop(tx);
    tokio::time::timeout(Duration::from_secs(600), run)
        .await
        .expect("ends")
        .expect("task")
        .expect("ok");
    // 1 acked alone, 2 rejected (dropped, counted), the rest delivered in order.
    assert_eq!(numbers(&backend.got), [1, 3, 4, 5, 6, 7, 8, 9, 10]);
    assert!(spool.is_empty());
    let status = registry.statuses().into_iter().next().expect("sink");
    assert_eq!(
        status.last_error.map(|e| e.message),
        Some("bad point".to_owned())
    );
}

#[tokio::test(start_paused = true)]
async fn hard_stop_leaves_the_undelivered_in_the_spool_for_the_next_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = Registry::new();
    let context = cx(dir.path(), &registry).await;
    let spool = context.spool.clone();
    let hard = context.hard.clone();
    let backend = Backend::default();
    {
        let mut s = backend.script.lock().expect("lock");
        for _ in 0..1000 {
            s.push_back(Err(DeliveryError::Transient {
                message: "down".into(),
                retry_after: None,
            }));
        }
    }
    let (tx, rx) = broadcast::channel(64);
    let run = tokio::spawn(Box::new(Spooled::new("test", Total, backend.clone())).run(rx, context));
    for i in 1..=3 {
        tx.send(reading(i)).expect("receiver");
    }
    drop(tx);
    // The backend stays down; the grace period ends.
    tokio::time::sleep(Duration::from_secs(30)).await;
    hard.cancel();
    tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("ends on hard stop")
        .expect("task")
        .expect("ok");
    assert_eq!(spool.len(), 3);
    assert!(numbers(&backend.got).is_empty());

    // Next start: the backend is back and takes the backlog first, in order.
    backend.script.lock().expect("lock").clear();
    let registry = Registry::new();
    let context = SinkContext {
        name: "test".into(),
        health: registry
            .register("sink:test", ComponentKind::Sink)
            .expect("register"),
        spool,
        stop: CancellationToken::new(),
        hard: CancellationToken::new(),
    };
    let (tx, rx) = broadcast::channel(64);
    let run = tokio::spawn(Box::new(Spooled::new("test", Total, backend.clone())).run(rx, context));
    tx.send(reading(4)).expect("receiver");
    drop(tx);
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("ends")
        .expect("task")
        .expect("ok");
    assert_eq!(numbers(&backend.got), [1, 2, 3, 4]);
}

/// A sink that panics on its first run and works on the second.
struct Flaky {
    runs: Arc<Mutex<u32>>,
}

impl Sink for Flaky {
    fn kind(&self) -> &'static str {
        "flaky"
    }
    fn run(
        self: Box<Self>,
        mut input: broadcast::Receiver<Arc<Reading>>,
        _cx: SinkContext,
    ) -> BoxFuture<'static, Result<(), SinkError>> {
        Box::pin(async move {
            let n = {
                let mut runs = self.runs.lock().expect("lock");
                *runs += 1;
                *runs
            };
            assert!(n > 1, "first run panics");
            while input.recv().await.is_ok() {}
            Ok(())
        })
    }
}

#[tokio::test(start_paused = true)]
async fn supervisor_restarts_a_panicking_sink_and_shows_it_failed_meanwhile() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = Registry::new();
    let context = cx(dir.path(), &registry).await;
    let runs = Arc::new(Mutex::new(0));
    let (tx, first) = broadcast::channel::<Arc<Reading>>(8);
    let make = {
        let runs = runs.clone();
        move || -> Box<dyn Sink> { Box::new(Flaky { runs: runs.clone() }) }
    };
    let task = tokio::spawn(supervise(make, first, tx.downgrade(), context));
    // Wait for the failure to show, then for the second run.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let failed = registry
            .statuses()
            .iter()
            .any(|s| matches!(s.state, crate::State::Failed(_)));
        if failed {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never shown failed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    while *runs.lock().expect("lock") < 2 {
        assert!(tokio::time::Instant::now() < deadline, "never restarted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(tx);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("supervisor ends with the sink")
        .expect("task");
    assert_eq!(registry.statuses()[0].state, crate::State::Stopped);
}

// ---------------------------------------------------------------------------------------------
// Pipelined: several batches in flight.

/// Encodes the import total as one line.
struct Line;
impl Encode for Line {
    fn encode(&mut self, reading: &Reading) -> Option<Vec<u8>> {
        Some(format!("{}\n", reading.number("energy_import_total")? as u64).into_bytes())
    }
}

/// A call of [`Pipe::send`]: its records and when it started.
type Call = (Vec<u64>, tokio::time::Instant);

/// What one call of [`Pipe::send`] does: how long it takes, then its answer.
type Step = (Duration, Result<(), DeliveryError>);

/// A backend taking whole batches, several at once; each call follows the script (then takes
/// 1 s and succeeds). Records what it saw.
#[derive(Clone)]
struct Pipe {
    max_batch: usize,
    max_in_flight: usize,
    linger: Duration,
    script: Arc<Mutex<VecDeque<Step>>>,
    /// Records of the batches acknowledged, in the order they completed.
    acked: Arc<Mutex<Vec<Vec<u64>>>>,
    /// Every call: its records and when it started.
    calls: Arc<Mutex<Vec<Call>>>,
    /// Records in flight now; a record handed out twice at once fails the test.
    flying: Arc<Mutex<Vec<u64>>>,
    most_flying_batches: Arc<Mutex<(usize, usize)>>,
}

impl Pipe {
    fn new(max_batch: usize, max_in_flight: usize, linger: Duration) -> Pipe {
        Pipe {
            max_batch,
            max_in_flight,
            linger,
            script: Arc::default(),
            acked: Arc::default(),
            calls: Arc::default(),
            flying: Arc::default(),
            most_flying_batches: Arc::default(),
        }
    }

    fn script(&self, steps: impl IntoIterator<Item = Step>) {
        self.script.lock().expect("lock").extend(steps);
    }

    fn acked(&self) -> Vec<u64> {
        self.acked.lock().expect("lock").concat()
    }
}

impl Batches for Pipe {
    fn max_batch(&self) -> usize {
        self.max_batch
    }
    fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }
    fn linger(&self) -> Duration {
        self.linger
    }
    fn send(&self, batch: Batch) -> BoxFuture<'static, Result<(), DeliveryError>> {
        let records: Vec<u64> = String::from_utf8_lossy(&batch.bytes)
            .lines()
            .map(|l| l.parse().expect("number"))
            .collect();
        assert_eq!(records.len(), batch.records);
        let (took, answer) = self
            .script
            .lock()
            .expect("lock")
            .pop_front()
            .unwrap_or((Duration::from_secs(1), Ok(())));
        let this = self.clone();
        Box::pin(async move {
            this.calls
                .lock()
                .expect("lock")
                .push((records.clone(), tokio::time::Instant::now()));
            {
                let mut flying = this.flying.lock().expect("lock");
                for r in &records {
                    assert!(!flying.contains(r), "record {r} in flight twice");
                }
                flying.extend(&records);
                let mut most = this.most_flying_batches.lock().expect("lock");
                most.0 += 1;
                most.1 = most.1.max(most.0);
            }
            tokio::time::sleep(took).await;
            this.flying
                .lock()
                .expect("lock")
                .retain(|r| !records.contains(r));
            this.most_flying_batches.lock().expect("lock").0 -= 1;
            if answer.is_ok() {
                this.acked.lock().expect("lock").push(records);
            }
            answer
        })
    }
}

async fn run_pipe(pipe: &Pipe, readings: u64) -> (AsyncSpool, Registry) {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = Registry::new();
    let context = cx(dir.path(), &registry).await;
    let spool = context.spool.clone();
    let (tx, rx) = broadcast::channel(256);
    // All readings are spooled before delivery starts handing out batches of them.
    for i in 1..=readings {
        tx.send(reading(i)).expect("receiver");
    }
    drop(tx);
    let sink = Box::new(Pipelined::new("test", Line, pipe.clone()));
    tokio::time::timeout(Duration::from_secs(3600), sink.run(rx, context))
        .await
        .expect("ends")
        .expect("ok");
    (spool, registry)
}

#[tokio::test(start_paused = true)]
async fn batches_fly_together_complete_in_any_order_and_each_is_deleted_once() {
    let pipe = Pipe::new(3, 3, Duration::ZERO);
    // The oldest batch is the slowest: the two after it are acknowledged first.
    pipe.script([
        (Duration::from_secs(30), Ok(())),
        (Duration::from_secs(1), Ok(())),
        (Duration::from_secs(2), Ok(())),
    ]);
    let (spool, _registry) = run_pipe(&pipe, 10).await;
    assert!(spool.is_empty());
    let mut acked = pipe.acked();
    let order = acked.clone();
    acked.sort_unstable();
    assert_eq!(acked, (1..=10).collect::<Vec<_>>(), "each once");
    assert_ne!(order, acked, "completed out of order: {order:?}");
    assert_eq!(order[..3], [4, 5, 6], "{order:?}");
    assert_eq!(pipe.most_flying_batches.lock().expect("lock").1, 3);
}

#[tokio::test(start_paused = true)]
async fn a_failed_batch_stops_new_ones_and_is_sent_again_once_the_others_are_done() {
    let pipe = Pipe::new(2, 2, Duration::ZERO);
    pipe.script([
        (
            Duration::from_secs(1),
            Err(DeliveryError::Transient {
                message: "down".into(),
                retry_after: Some(Duration::from_secs(20)),
            }),
        ),
        (Duration::from_secs(5), Ok(())),
    ]);
    let (spool, _registry) = run_pipe(&pipe, 6).await;
    assert!(spool.is_empty());
    let calls = pipe.calls.lock().expect("lock").clone();
    let batches: Vec<Vec<u64>> = calls.iter().map(|(r, _)| r.clone()).collect();
    // [1,2] fails; [3,4] (in flight) completes; nothing new meanwhile; after Retry-After the
    // oldest spooled, [1,2], goes again, then [5,6].
    assert_eq!(batches, [vec![1, 2], vec![3, 4], vec![1, 2], vec![5, 6]]);
    let t0 = calls[0].1;
    assert!(
        calls[2].1 - t0 >= Duration::from_secs(20),
        "waited as asked"
    );
    let mut acked = pipe.acked();
    acked.sort_unstable();
    assert_eq!(acked, (1..=6).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn a_refusal_keeps_the_batch_and_a_rejection_drops_only_its_own() {
    let pipe = Pipe::new(2, 1, Duration::ZERO);
    let refused = || {
        (
            Duration::from_secs(1),
            Err(DeliveryError::Refused {
                reason: "auth",
                message: "bad token".into(),
            }),
        )
    };
    pipe.script([
        refused(),
        refused(),
        refused(),
        (Duration::from_secs(1), Ok(())),
        (
            Duration::from_secs(1),
            Err(DeliveryError::Permanent {
                message: "bad point".into(),
                records: 1,
            }),
        ),
    ]);
    let (spool, registry) = run_pipe(&pipe, 6).await;
    assert!(spool.is_empty());
    // [1,2] refused three times, then taken; [3,4] ended with one of its records refused
    // (dropped, counted) and the other taken; [5,6].
    assert_eq!(pipe.acked(), [1, 2, 5, 6]);
    let status = registry.statuses().into_iter().next().expect("sink");
    assert_eq!(
        status.counters.get("dropped"),
        Some(&1),
        "only the refused record counts as dropped"
    );
    assert_eq!(
        status.last_error.map(|e| e.message),
        Some("bad point".to_owned())
    );
}

#[tokio::test(start_paused = true)]
async fn a_partial_batch_lingers_then_goes_with_what_came_meanwhile() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = Registry::new();
    let context = cx(dir.path(), &registry).await;
    let pipe = Pipe::new(100, 2, Duration::from_secs(10));
    let (tx, rx) = broadcast::channel(64);
    let start = tokio::time::Instant::now();
    let run = tokio::spawn(Box::new(Pipelined::new("test", Line, pipe.clone())).run(rx, context));
    tx.send(reading(1)).expect("receiver");
    tokio::time::sleep(Duration::from_secs(4)).await;
    tx.send(reading(2)).expect("receiver");
    tokio::time::sleep(Duration::from_secs(20)).await;
    tx.send(reading(3)).expect("receiver");
    drop(tx);
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("ends")
        .expect("task")
        .expect("ok");
    let calls = pipe.calls.lock().expect("lock").clone();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[0].0, [1, 2], "one request for both");
    assert!(
        calls[0].1 - start >= Duration::from_secs(10),
        "not before the linger"
    );
    // The reader is gone: the last one goes without lingering.
    assert_eq!(calls[1].0, [3]);
    assert!(calls[1].1 - start < Duration::from_secs(30));
}
