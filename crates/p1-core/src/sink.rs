//! The [`Sink`] trait, the spool-backed worker every sink runs on
//! ([`Spooled`]), and the supervisor that restarts a failed sink.
//!
//! # Delivery guarantee
//!
//! A sink worker has two halves joined by its spool:
//!
//! * **intake** receives `Arc<Reading>`s from the broadcast channel, encodes
//!   each with the sink's [`Encode`] and appends the record to the spool. It
//!   does no network I/O, so it keeps up with the reader even while the
//!   backend is down; a reading it could not take (`Lagged`) is counted, never
//!   silently lost.
//! * **delivery** peeks the oldest records, hands them to the sink's
//!   [`Deliver`], and deletes exactly the prefix the backend acknowledged.
//!   Transient failures back off (capped, jittered, or the backend's
//!   `Retry-After`); refusals an operator must fix (wrong credentials, a
//!   missing database) keep the records spooled and retry with backoff, logged
//!   once; permanent rejections (a 400 for a malformed point) are logged and
//!   dropped with a counter, so one bad record cannot block the queue forever.
//!
//! [`Pipelined`] is the same worker for backends that take whole batches, each
//! request independent and idempotent (InfluxDB): its delivery keeps up to
//! [`Batches::max_in_flight`] requests in flight and deletes each batch when
//! its own request succeeded, in whatever order they complete.
//!
//! A record is deleted only after the backend's ack, so a crash between send
//! and ack re-sends it: delivery is at-least-once, and sinks whose backend is
//! idempotent (InfluxDB points keyed by series + timestamp) make it exact.
//!
//! # Shutdown
//!
//! When the reader stops, its sender drops and intake sees `Closed`; delivery
//! then drains the spool until it is empty or the hard-stop token fires, and
//! whatever the backend has not taken stays spooled for the next start.
//!
//! # Metrics
//!
//! Labelled `sink` (the instance name): `p1gw_sink_spooled_total`,
//! `p1gw_sink_sent_total`, `p1gw_sink_failed_total{reason}` (failed delivery
//! attempts: `transient`, or a refusal's reason such as `auth`),
//! `p1gw_sink_dropped_total{reason}` (`lagged`, `rejected`, `too_large`,
//! `spool_error`), `p1gw_storage_errors_total{kind}` (see [`crate::storage`]),
//! `p1gw_sink_restarts_total`. Spool depth comes from
//! [`crate::spool`] (`p1gw_spool_records`, `p1gw_spool_bytes`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;

use crate::storage::{self, StorageFault, StorageKind};
use crate::{AsyncSpool, Backoff, Batch, HealthHandle, Reading};

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What a sink worker gets from the daemon.
#[derive(Debug, Clone)]
pub struct SinkContext {
    /// The instance name: the metrics' `sink` label and the health name.
    pub name: String,
    /// Where the sink reports its state.
    pub health: HealthHandle,
    /// The sink's own spool.
    pub spool: AsyncSpool,
    /// Fires when the daemon stops (for information; intake ends when the
    /// reader's sender is dropped).
    pub stop: CancellationToken,
    /// Fires when the shutdown grace period is over: stop at once, leave
    /// what is not delivered in the spool.
    pub hard: CancellationToken,
}

/// A sink: consumes readings until the channel closes, then flushes what its
/// backend takes within the grace period.
///
/// Implement it directly only when the generic [`Spooled`] worker does not
/// fit (a protocol with its own event loop); most sinks implement [`Encode`]
/// and [`Deliver`] and run as `Spooled`.
pub trait Sink: Send + 'static {
    /// The sink kind as spelled in config (`jsonl`, `mqtt`, `influx`, …).
    fn kind(&self) -> &'static str;

    /// Runs the sink to its end.
    ///
    /// # Errors
    /// A returned error (or a panic) makes the supervisor restart the sink with
    /// backoff; /readyz shows it failed meanwhile.
    fn run(
        self: Box<Self>,
        input: broadcast::Receiver<Arc<Reading>>,
        cx: SinkContext,
    ) -> BoxFuture<'static, Result<(), SinkError>>;
}

/// Turns a reading into the record a sink spools and later sends.
pub trait Encode: Send + 'static {
    /// The record for `reading`, or `None` to skip it on purpose (a rate
    /// limit, a filter). Skips are not errors and are not counted as drops.
    fn encode(&mut self, reading: &Reading) -> Option<Vec<u8>>;
}

/// Sends spooled records to a backend.
pub trait Deliver: Send + 'static {
    /// How many records one [`Deliver::deliver`] call may take.
    fn max_batch(&self) -> usize {
        1
    }

    /// Sends `records`, oldest first. `Ok(n)`: the backend acknowledged the
    /// first `n` (they are deleted). `n` may be less than `records.len()`.
    fn deliver<'a>(
        &'a mut self,
        records: &'a [(u64, Vec<u8>)],
    ) -> BoxFuture<'a, Result<usize, DeliveryError>>;

    /// Called once when the worker ends (flush files, close connections).
    fn close(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// Why a delivery attempt failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DeliveryError {
    /// Try again later: the backend is down, slow or asked to wait.
    #[error("{message}")]
    Transient {
        /// What happened, for the log and /readyz (no secrets).
        message: String,
        /// The backend's `Retry-After`, when it sent one.
        retry_after: Option<Duration>,
    },
    /// The backend refuses until an operator acts: wrong or expired credentials
    /// (HTTP 401/403), a database that does not exist (404). The records stay
    /// spooled and are retried with backoff; the first refusal of a run of them
    /// is logged at ERROR, the repeats at DEBUG, and each attempt is counted in
    /// `p1gw_sink_failed_total{reason}`.
    #[error("{message}")]
    Refused {
        /// The metric's `reason` label: `auth`, `not_found`, ….
        reason: &'static str,
        /// What the backend said and what to fix (no secrets).
        message: String,
    },
    /// A local file the sink writes (jsonl) cannot be written: the disk is
    /// full, read-only or failing. The records stay spooled and are retried
    /// every [`STORAGE_RETRY`] at most, so that a disk that is back is used
    /// again within seconds; each attempt is counted in
    /// `p1gw_storage_errors_total{kind}` and `p1gw_sink_failed_total{reason}`
    /// (the kind), the first of each new kind is logged at WARN, and the fault
    /// is shown in `/readyz` until a write succeeds.
    #[error("{fault}")]
    Storage {
        /// What failed, sorted and in words.
        fault: StorageFault,
    },
    /// The backend will never take the first `records` records (a parse error,
    /// a rejected payload): they are logged, counted and dropped.
    #[error("{message}")]
    Permanent {
        /// What the backend said.
        message: String,
        /// How many records, from the front of the batch, to drop.
        records: usize,
    },
}

/// Why a sink stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The spool failed (disk full, I/O error).
    #[error("spool: {0}")]
    Spool(#[from] crate::Error),
    /// Anything else the sink reports.
    #[error("{0}")]
    Other(String),
}

/// The generic spool-backed worker: intake → spool → delivery.
pub struct Spooled<E, D> {
    kind: &'static str,
    encoder: E,
    deliver: D,
    backoff: (Duration, Duration),
}

impl<E: Encode, D: Deliver> Spooled<E, D> {
    /// A worker for sink `kind` with retry backoff from 1 s to 60 s.
    pub fn new(kind: &'static str, encoder: E, deliver: D) -> Self {
        Spooled {
            kind,
            encoder,
            deliver,
            backoff: (Duration::from_secs(1), Duration::from_secs(60)),
        }
    }

    /// Overrides the retry backoff bounds.
    pub fn with_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff = (min, max);
        self
    }
}

impl<E: Encode, D: Deliver> Sink for Spooled<E, D> {
    fn kind(&self) -> &'static str {
        self.kind
    }

    fn run(
        self: Box<Self>,
        input: broadcast::Receiver<Arc<Reading>>,
        cx: SinkContext,
    ) -> BoxFuture<'static, Result<(), SinkError>> {
        let Spooled {
            encoder,
            deliver,
            backoff,
            ..
        } = *self;
        Box::pin(run_spooled(encoder, deliver, backoff, input, cx))
    }
}

/// Sends whole batches of spooled records to a backend, several at once: for backends where
/// each request stands alone and a batch written twice does no harm (InfluxDB keeps one point
/// per series and timestamp), so batches may complete in any order. Runs as [`Pipelined`].
pub trait Batches: Send + Sync + 'static {
    /// The most records in one batch (at least 1).
    fn max_batch(&self) -> usize;

    /// How many batches may be in flight at once (at least 1).
    fn max_in_flight(&self) -> usize {
        1
    }

    /// How long fewer than [`Batches::max_batch`] waiting records wait for more before they go
    /// as a smaller batch; zero sends at once. The wait ends early when the daemon stops.
    fn linger(&self) -> Duration {
        Duration::ZERO
    }

    /// Sends one batch, whole. `Ok`: the backend acknowledged every record in it (p1-core then
    /// deletes the batch). A [`DeliveryError::Permanent`] ends the batch too: its `records`
    /// (at most the batch's) are the ones the backend refused, dropped and counted as
    /// `rejected`; the others it took and are counted as sent. `Transient` and `Refused` keep
    /// the whole batch spooled.
    ///
    /// The future runs as its own task, beside the other batches in flight; it is dropped
    /// (cancelled) on the hard stop, which leaves its batch spooled.
    fn send(&self, batch: Batch) -> BoxFuture<'static, Result<(), DeliveryError>>;
}

/// The spool-backed worker for [`Batches`]: intake → spool → up to
/// [`Batches::max_in_flight`] batches in flight.
///
/// # Delivery
///
/// Batches are consecutive runs of spooled records ([`AsyncSpool::peek_batch`]), handed out
/// oldest first; the delivery loop remembers the first seq not yet handed out, so the batches in
/// flight never overlap. Each batch is deleted ([`AsyncSpool::ack_range`]) only when its own
/// request succeeded — possibly before an older batch, which is fine for an idempotent backend.
/// When a request fails (transient or refused), no new batch is handed out; once the others in
/// flight are done (their successes deleted), the worker waits (backoff or `Retry-After`) and
/// starts again from the oldest spooled record, so a failed batch is retried and nothing is
/// ever in flight twice.
pub struct Pipelined<E, B> {
    kind: &'static str,
    encoder: E,
    batches: Arc<B>,
    backoff: (Duration, Duration),
}

impl<E: Encode, B: Batches> Pipelined<E, B> {
    /// A worker for sink `kind` with retry backoff from 1 s to 60 s.
    pub fn new(kind: &'static str, encoder: E, batches: B) -> Self {
        Pipelined {
            kind,
            encoder,
            batches: Arc::new(batches),
            backoff: (Duration::from_secs(1), Duration::from_secs(60)),
        }
    }

    /// Overrides the retry backoff bounds.
    #[must_use]
    pub fn with_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff = (min, max);
        self
    }
}

impl<E: Encode, B: Batches> Sink for Pipelined<E, B> {
    fn kind(&self) -> &'static str {
        self.kind
    }

    fn run(
        self: Box<Self>,
        input: broadcast::Receiver<Arc<Reading>>,
        cx: SinkContext,
    ) -> BoxFuture<'static, Result<(), SinkError>> {
        let Pipelined {
            encoder,
            batches,
            backoff: (min, max),
            ..
        } = *self;
        Box::pin(async move {
            let intake = Intake::start(encoder, input, &cx);
            let delivered = pipelined(
                &*batches,
                Backoff::new(min, max),
                &cx,
                &intake.wake,
                &intake.done,
            )
            .await;
            intake.finish(&cx, delivered).await
        })
    }
}

/// What a batch in flight reports when done: its seq range, its size, the outcome.
type Done = (u64, u64, usize, Result<(), DeliveryError>);

/// [`Pipelined`]'s delivery loop (see its docs).
async fn pipelined<B: Batches>(
    batches: &B,
    mut backoff: Backoff,
    cx: &SinkContext,
    wake: &Notify,
    intake_done: &CancellationToken,
) -> Result<(), SinkError> {
    let max_batch = batches.max_batch().max(1);
    let max_in_flight = batches.max_in_flight().max(1);
    let linger = batches.linger();
    let mut failures = FailureLog::default();
    // Dropped on return, which aborts the requests still in flight (their batches stay spooled).
    let mut in_flight: tokio::task::JoinSet<Done> = tokio::task::JoinSet::new();
    let mut in_flight_records = 0u64;
    // The first seq not handed out yet: everything spooled below it is in flight.
    let mut next = 0u64;
    // Set by a failed request: hand out nothing new; once the rest are done, wait this long and
    // start again from the oldest spooled record.
    let mut retry_in: Option<Duration> = None;
    // Since when fewer than a batch's worth of records have been waiting.
    let mut partial_since: Option<tokio::time::Instant> = None;
    loop {
        if in_flight.is_empty() {
            if let Some(wait) = retry_in.take()
                && sleep_or_hard(wait, &cx.hard).await
            {
                return Ok(());
            }
            // Nothing in flight: everything spooled is unsent, from the oldest on.
            next = 0;
            in_flight_records = 0;
        }
        // Hand out batches while there is room.
        let mut linger_until = None;
        while retry_in.is_none() && in_flight.len() < max_in_flight {
            let waiting = cx.spool.len().saturating_sub(in_flight_records);
            if waiting == 0 {
                partial_since = None;
                break;
            }
            if waiting < max_batch as u64
                && !linger.is_zero()
                && !cx.stop.is_cancelled()
                && !intake_done.is_cancelled()
            {
                let since = *partial_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() < linger {
                    linger_until = Some(since + linger);
                    break;
                }
            }
            let Some(batch) = cx.spool.peek_batch(next, max_batch).await? else {
                break;
            };
            partial_since = None;
            next = batch.last + 1;
            in_flight_records += batch.records as u64;
            let (first, last, records) = (batch.first, batch.last, batch.records);
            let send = batches.send(batch);
            in_flight.spawn(async move { (first, last, records, send.await) });
        }
        if in_flight.is_empty() && retry_in.is_none() && linger_until.is_none() {
            // Stopping with nothing left, or with only what a failing disk keeps unreadable
            // (it stays in the file for the next start).
            if intake_done.is_cancelled() && (cx.spool.is_empty() || cx.spool.fault().is_some()) {
                return Ok(());
            }
            if intake_done.is_cancelled() {
                // Spooled records that no peek found (evicted meanwhile): look again.
                tokio::task::yield_now().await;
                continue;
            }
        }
        let room = retry_in.is_none() && in_flight.len() < max_in_flight;
        let linger_end = linger_until.unwrap_or_else(tokio::time::Instant::now);
        tokio::select! {
            biased;
            () = cx.hard.cancelled() => return Ok(()),
            Some(done) = in_flight.join_next() => {
                let (first, last, records, result) = done.map_err(|join| {
                    SinkError::Other(format!("a delivery task failed: {join}"))
                })?;
                in_flight_records = in_flight_records.saturating_sub(records as u64);
                match result {
                    Ok(()) => {
                        cx.spool.ack_range(first, last).await?;
                        if retry_in.is_none() {
                            acknowledged(cx, records, &mut backoff, &mut failures);
                        } else {
                            // Another batch failed meanwhile: count this one, keep backing off.
                            metrics::counter!("p1gw_sink_sent_total", "sink" => cx.name.clone())
                                .increment(records as u64);
                        }
                    }
                    Err(DeliveryError::Permanent { message, records: refused }) => {
                        // The backend refused `refused` records of the batch and took the rest.
                        let refused = refused.clamp(1, records.max(1));
                        cx.spool.ack_range(first, last).await?;
                        rejected(cx, refused, message);
                        metrics::counter!("p1gw_sink_sent_total", "sink" => cx.name.clone())
                            .increment(records.saturating_sub(refused) as u64);
                    }
                    Err(error) => {
                        // The first failure of a round sets the wait; later ones only lengthen
                        // it to what a server's Retry-After asks.
                        let wait = match (retry_in, &error) {
                            (None, _) => failures.wait(&error, &mut backoff),
                            (
                                Some(w),
                                DeliveryError::Transient {
                                    retry_after: Some(r),
                                    ..
                                },
                            ) => w.max(*r),
                            (Some(w), _) => w,
                        };
                        failures.failed(cx, &error, wait);
                        retry_in = Some(wait);
                    }
                }
                cx.health.set_spool_depth(cx.spool.len(), cx.spool.bytes());
            }
            () = wake.notified(), if room => {}
            () = intake_done.cancelled(), if room && !intake_done.is_cancelled() => {}
            () = cx.stop.cancelled(), if linger_until.is_some() && !cx.stop.is_cancelled() => {}
            () = tokio::time::sleep_until(linger_end), if linger_until.is_some() => {}
        }
    }
}

async fn run_spooled<E: Encode, D: Deliver>(
    encoder: E,
    mut deliver: D,
    (min, max): (Duration, Duration),
    input: broadcast::Receiver<Arc<Reading>>,
    cx: SinkContext,
) -> Result<(), SinkError> {
    let intake = Intake::start(encoder, input, &cx);
    let delivered = delivery(
        &mut deliver,
        Backoff::new(min, max),
        &cx,
        &intake.wake,
        &intake.done,
    )
    .await;
    deliver.close().await;
    intake.finish(&cx, delivered).await
}

/// The intake task of a worker, and how delivery hears from it.
struct Intake {
    /// Notified after every append.
    wake: Arc<Notify>,
    /// Cancelled when intake has ended, however it ended.
    done: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), SinkError>>,
}

impl Intake {
    fn start<E: Encode>(
        encoder: E,
        input: broadcast::Receiver<Arc<Reading>>,
        cx: &SinkContext,
    ) -> Intake {
        let wake = Arc::new(Notify::new());
        let done = CancellationToken::new();
        let task = tokio::spawn(intake(
            encoder,
            input,
            cx.clone(),
            wake.clone(),
            done.clone(),
        ));
        cx.health.set_spool_depth(cx.spool.len(), cx.spool.bytes());
        cx.health.ok();
        Intake { wake, done, task }
    }

    /// Ends intake once delivery has returned `delivered`; the worker's result.
    async fn finish(
        self,
        cx: &SinkContext,
        delivered: Result<(), SinkError>,
    ) -> Result<(), SinkError> {
        // Intake ends on Closed or on the hard stop; it holds no state to save.
        self.task.abort();
        let intake_result = self.task.await;
        cx.health.set_spool_depth(cx.spool.len(), cx.spool.bytes());
        delivered?;
        match intake_result {
            Ok(result) => result,
            Err(join) if join.is_cancelled() => Ok(()),
            Err(join) => Err(SinkError::Other(format!("intake task failed: {join}"))),
        }
    }
}

/// Most readings one spool commit takes: bounds the work between two looks
/// at the hard-stop token.
const INTAKE_BATCH: usize = 512;

/// How often intake asks a spool whose file failed to try again (the spool's
/// own backoff, 0.5–4 s, decides when it really reopens), and the longest wait
/// between two attempts to write a sink's own output file after a storage
/// fault. Together they bring a sink back within seconds of the disk.
pub const STORAGE_RETRY: Duration = Duration::from_secs(1);

/// The longest wait between two attempts after a transient failure (the backend down, a
/// connection refused or timed out) without the backend's own `Retry-After`: a backend that
/// is reachable again is used within this plus the request's own time.
pub const TRANSIENT_RETRY: Duration = Duration::from_secs(2);

async fn intake<E: Encode>(
    mut encoder: E,
    mut input: broadcast::Receiver<Arc<Reading>>,
    cx: SinkContext,
    wake: Arc<Notify>,
    done: CancellationToken,
) -> Result<(), SinkError> {
    use broadcast::error::{RecvError, TryRecvError};
    // Tell delivery when intake ends, however it ends.
    let _done = done.drop_guard();
    let mut lag = LagLog::default();
    let max_record = cx.spool.blocking().config().max_bytes;
    // While the spool's file has failed, ask it to try again every second, readings or not,
    // so that a disk that is back is used within seconds even for a meter that is slow.
    let mut heal = tokio::time::interval(STORAGE_RETRY);
    heal.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    report_spool(&cx);
    loop {
        let failing = cx.spool.fault().is_some() || cx.spool.held() > 0;
        let received = tokio::select! {
            biased;
            () = cx.hard.cancelled() => return Ok(()),
            r = input.recv() => r,
            _ = heal.tick(), if failing => {
                let stored = cx.spool.heal().await;
                stored_now(&cx, stored, &wake);
                continue;
            }
        };
        let first = match received {
            Ok(reading) => reading,
            Err(RecvError::Lagged(missed)) => {
                lag.missed(&cx, missed);
                continue;
            }
            Err(RecvError::Closed) => return Ok(()),
        };
        // Take whatever else is already waiting, without waiting, and store it
        // all in one commit: a commit is an fsync, and one per reading caps a
        // busy sink at a few thousand readings a second on an SD card.
        let mut records = Vec::new();
        records.extend(encoder.encode(&first));
        let mut closed = false;
        while records.len() < INTAKE_BATCH {
            match input.try_recv() {
                Ok(reading) => records.extend(encoder.encode(&reading)),
                Err(TryRecvError::Lagged(missed)) => lag.missed(&cx, missed),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Closed) => {
                    closed = true;
                    break;
                }
            }
        }
        // A record larger than the whole spool can never be kept: drop it, counted, rather
        // than refuse the batch it came with.
        let before = records.len();
        records.retain(|r| r.len() as u64 <= max_record);
        if records.len() < before {
            dropped(
                &cx,
                "too_large",
                (before - records.len()) as u64,
                format!("a reading's record is larger than the spool's max_bytes ({max_record})"),
            );
        }
        if !records.is_empty() {
            let n = records.len() as u64;
            match cx.spool.append_batch(records).await {
                Ok(outcome) => stored_now(&cx, outcome.stored, &wake),
                // Only a runtime that is going away gets here (a too-large record was taken
                // out above; a failing disk holds the records in memory): counted, never silent.
                Err(err) => dropped(&cx, "spool_error", n, format!("{err:#}")),
            }
            wake.notify_one();
        }
        if closed {
            return Ok(());
        }
    }
}

/// Accounts for records the spool wrote to its file (a batch, or records held in memory
/// until now), and shows the spool's condition.
fn stored_now(cx: &SinkContext, stored: u64, wake: &Notify) {
    if stored > 0 {
        metrics::counter!("p1gw_sink_spooled_total", "sink" => cx.name.clone()).increment(stored);
        wake.notify_one();
    }
    report_spool(cx);
}

/// Puts the spool's depth and storage fault (if any) into the sink's health.
fn report_spool(cx: &SinkContext) {
    cx.health.set_spool_depth(cx.spool.len(), cx.spool.bytes());
    let fault = cx.spool.fault().map(|f| {
        let held = cx.spool.held();
        format!("spool: {}; {held} readings held in memory", f.message)
    });
    cx.health.set_fault("spool", fault);
}

/// Accounts for `n` readings intake could not keep: counted under `reason`, logged.
fn dropped(cx: &SinkContext, reason: &'static str, n: u64, why: String) {
    metrics::counter!("p1gw_sink_dropped_total", "sink" => cx.name.clone(), "reason" => reason)
        .increment(n);
    cx.health.add_counter("dropped", n);
    tracing::error!(sink = %cx.name, reason, dropped = n, error = %why, "Readings dropped.");
}

/// Counts readings a sink could not take off the channel (every one, in the
/// metric) and logs them at most once a minute, with the sum.
#[derive(Default)]
struct LagLog {
    last: Option<tokio::time::Instant>,
    unlogged: u64,
}

impl LagLog {
    fn missed(&mut self, cx: &SinkContext, missed: u64) {
        metrics::counter!("p1gw_sink_dropped_total", "sink" => cx.name.clone(), "reason" => "lagged")
            .increment(missed);
        cx.health.add_counter("dropped", missed);
        self.unlogged += missed;
        let now = tokio::time::Instant::now();
        if self
            .last
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(60))
        {
            tracing::warn!(
                sink = %cx.name,
                missed = self.unlogged,
                "Sink fell behind the reader; readings were dropped (logged at most once a minute)."
            );
            self.last = Some(now);
            self.unlogged = 0;
        }
    }
}

async fn delivery<D: Deliver>(
    deliver: &mut D,
    mut backoff: Backoff,
    cx: &SinkContext,
    wake: &Notify,
    intake_done: &CancellationToken,
) -> Result<(), SinkError> {
    let mut failures = FailureLog::default();
    loop {
        let batch = match cx.spool.peek(deliver.max_batch().max(1)).await {
            Ok(batch) => batch,
            Err(err) => {
                // The spool's file cannot be read (an I/O error): try again shortly; the
                // spool reopens the file by itself once a write fails too.
                failures.unreadable(cx, &err);
                if sleep_or_hard(STORAGE_RETRY, &cx.hard).await {
                    return Ok(());
                }
                continue;
            }
        };
        if batch.is_empty() {
            if intake_done.is_cancelled() {
                return Ok(());
            }
            tokio::select! {
                () = wake.notified() => continue,
                () = intake_done.cancelled() => continue,
                () = cx.hard.cancelled() => return Ok(()),
            }
        }
        let result = tokio::select! {
            r = deliver.deliver(&batch) => r,
            () = cx.hard.cancelled() => return Ok(()),
        };
        match result {
            Ok(0) => {
                // Nothing taken and no error: treat as a transient refusal.
                let wait = backoff.next_delay();
                cx.health.degraded("backend accepted nothing");
                if sleep_or_hard(wait, &cx.hard).await {
                    return Ok(());
                }
            }
            Ok(n) => {
                let n = n.min(batch.len());
                // Exactly what was peeked: while the spool's file cannot be used, a peek
                // returns only records held in memory, and older ones must stay.
                cx.spool.ack_range(batch[0].0, batch[n - 1].0).await?;
                acknowledged(cx, n, &mut backoff, &mut failures);
            }
            Err(DeliveryError::Permanent { message, records }) => {
                let n = records.clamp(1, batch.len());
                rejected(cx, n, message);
                cx.spool.ack_range(batch[0].0, batch[n - 1].0).await?;
            }
            Err(error) => {
                let wait = failures.wait(&error, &mut backoff);
                failures.failed(cx, &error, wait);
                if sleep_or_hard(wait, &cx.hard).await {
                    return Ok(());
                }
            }
        }
        cx.health.set_spool_depth(cx.spool.len(), cx.spool.bytes());
    }
}

/// Accounts for `n` records the backend acknowledged.
fn acknowledged(cx: &SinkContext, n: usize, backoff: &mut Backoff, failures: &mut FailureLog) {
    metrics::counter!("p1gw_sink_sent_total", "sink" => cx.name.clone()).increment(n as u64);
    backoff.reset();
    failures.recovered(cx);
    cx.health.success();
    cx.health.ok();
}

/// Accounts for `n` records the backend will never take: logged, counted, dropped by the caller.
fn rejected(cx: &SinkContext, n: usize, message: String) {
    tracing::error!(sink = %cx.name, error = %message, dropped = n, "Backend rejected readings; dropped.");
    metrics::counter!("p1gw_sink_dropped_total", "sink" => cx.name.clone(), "reason" => "rejected")
        .increment(n as u64);
    cx.health.add_counter("dropped", n as u64);
    cx.health.error(message);
}

/// Failed attempts (the records stay spooled): counted each, logged so that a refusal an
/// operator must fix is one clear ERROR, not one per retry.
#[derive(Default)]
struct FailureLog {
    /// The reason of the refusal logged at ERROR, while refusals go on.
    refused: Option<&'static str>,
    /// The kind of the storage fault logged at WARN, while such faults go on.
    storage: Option<StorageKind>,
    /// Whether an unreadable spool was logged.
    unreadable: bool,
}

impl FailureLog {
    /// Counts, logs and reports a failed attempt (`Transient` or `Refused`).
    fn failed(&mut self, cx: &SinkContext, error: &DeliveryError, retry_in: Duration) {
        let name = cx.name.as_str();
        let (reason, message) = match error {
            DeliveryError::Transient { message, .. } => ("transient", message),
            DeliveryError::Refused { reason, message } => (*reason, message),
            DeliveryError::Permanent { message, .. } => ("rejected", message),
            DeliveryError::Storage { fault } => (fault.kind.as_str(), &fault.message),
        };
        metrics::counter!("p1gw_sink_failed_total", "sink" => name.to_owned(), "reason" => reason)
            .increment(1);
        cx.health.add_counter("failed", 1);
        let backlog = cx.spool.len();
        if let DeliveryError::Storage { fault } = error {
            storage::count_error(name, fault.kind);
            if self.storage != Some(fault.kind) {
                tracing::warn!(
                    sink = name,
                    kind = fault.kind.as_str(),
                    error = %fault.message,
                    backlog,
                    retry_in = ?retry_in,
                    "Sink cannot write its output; readings stay spooled and are retried (logged once per kind)."
                );
                self.storage = Some(fault.kind);
            } else {
                tracing::debug!(sink = name, error = %fault.message, backlog, "Output still cannot be written.");
            }
            cx.health.error(message.clone());
            cx.health.set_fault("output", Some(fault.message.clone()));
            return;
        }
        if matches!(error, DeliveryError::Refused { .. }) {
            if self.refused == Some(reason) {
                tracing::debug!(sink = name, reason, error = %message, backlog, retry_in = ?retry_in, "Backend still refuses; readings stay spooled.");
            } else {
                tracing::error!(
                    sink = name,
                    reason,
                    error = %message,
                    backlog,
                    retry_in = ?retry_in,
                    "Backend refuses the sink's requests; readings stay spooled and are retried with backoff until it accepts them (logged once)."
                );
                self.refused = Some(reason);
            }
        } else {
            tracing::warn!(sink = name, error = %message, backlog, retry_in = ?retry_in, "Delivery failed; readings stay spooled.");
        }
        cx.health.error(message.clone());
        // A sink that found its backend misconfigured marks itself failed (an InfluxDB URL that
        // redirects elsewhere), so /readyz names the problem; it stays so until it says
        // otherwise or a delivery succeeds.
        if !matches!(cx.health.status().state, crate::State::Failed(_)) {
            cx.health.degraded(format!("delivery failing: {message}"));
        }
    }

    /// How long to wait before the next attempt: the backend's `Retry-After`, else backoff
    /// (at most [`STORAGE_RETRY`] for a local disk, which is back as soon as space is freed).
    fn wait(&self, error: &DeliveryError, backoff: &mut Backoff) -> Duration {
        match error {
            DeliveryError::Transient {
                retry_after: Some(wait),
                ..
            } => *wait,
            DeliveryError::Storage { .. } => backoff.next_delay().min(STORAGE_RETRY),
            // A backend that is down or unreachable is tried about once a second (at most
            // TRANSIENT_RETRY apart), so that one that is back is used within seconds
            // whatever the outage's length; a refusal an operator must fix backs off further.
            DeliveryError::Transient { .. } => backoff.next_delay().min(TRANSIENT_RETRY),
            _ => backoff.next_delay(),
        }
    }

    /// The spool could not be read: counted, logged once, shown.
    fn unreadable(&mut self, cx: &SinkContext, err: &crate::Error) {
        let fault = match err {
            crate::Error::SpoolStorage { source, path, .. } => match source.as_ref() {
                redb::Error::Io(io) => StorageFault::new(path, io),
                other => StorageFault {
                    kind: StorageKind::Other,
                    message: format!("cannot read {}: {other}", path.display()),
                },
            },
            other => StorageFault {
                kind: StorageKind::Other,
                message: other.to_string(),
            },
        };
        storage::count_error(&cx.name, fault.kind);
        if !self.unreadable {
            self.unreadable = true;
            tracing::warn!(sink = %cx.name, error = %fault.message, "Spool cannot be read; retrying.");
        }
        cx.health.set_fault("spool-read", Some(fault.message));
    }

    /// A request succeeded: the next refusal is news again.
    fn recovered(&mut self, cx: &SinkContext) {
        if let Some(reason) = self.refused.take() {
            tracing::info!(sink = %cx.name, reason, "Backend accepts the sink's requests again.");
        }
        if let Some(kind) = self.storage.take() {
            tracing::info!(sink = %cx.name, kind = kind.as_str(), "Sink writes its output again.");
            cx.health.set_fault("output", None);
        }
        if std::mem::take(&mut self.unreadable) {
            cx.health.set_fault("spool-read", None);
        }
    }
}

/// Sleeps `wait`; returns true when the hard stop fired first.
async fn sleep_or_hard(wait: Duration, hard: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(wait) => false,
        () = hard.cancelled() => true,
    }
}

/// Runs a sink under supervision: when it returns an error or panics, it is
/// marked failed (so /readyz shows it), and after a backoff a new instance
/// from `make` runs on a fresh subscription. Returns when the sink ends
/// cleanly, the readers are gone, or the hard-stop token fires.
///
/// `first` is subscribed before the reader starts, so the first run misses
/// nothing; restarts subscribe through `readings`, a weak sender, so the
/// supervisor never keeps the channel open after the readers have stopped.
/// Readings broadcast while a failed sink waits to restart are not in its
/// spool: they are counted as `lagged` drops by the next run's intake only if
/// the channel still holds them, otherwise lost to that sink (logged).
pub async fn supervise<F>(
    make: F,
    first: broadcast::Receiver<Arc<Reading>>,
    readings: broadcast::WeakSender<Arc<Reading>>,
    cx: SinkContext,
) where
    F: Fn() -> Box<dyn Sink>,
{
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
    let mut input = Some(first);
    loop {
        let Some(receiver) = input
            .take()
            .or_else(|| readings.upgrade().map(|tx| tx.subscribe()))
        else {
            cx.health.stopped();
            return;
        };
        let sink = make();
        let outcome = tokio::spawn(sink.run(receiver, cx.clone())).await;
        let reason = match outcome {
            Ok(Ok(())) => {
                cx.health.stopped();
                return;
            }
            Ok(Err(e)) => e.to_string(),
            Err(join) if join.is_panic() => "the sink panicked".to_owned(),
            Err(join) => join.to_string(),
        };
        metrics::counter!("p1gw_sink_restarts_total", "sink" => cx.name.clone()).increment(1);
        tracing::error!(sink = %cx.name, error = %reason, "Sink stopped; restarting.");
        cx.health.failed(reason);
        if sleep_or_hard(backoff.next_delay(), &cx.hard).await {
            cx.health.stopped();
            return;
        }
    }
}

/// Registers the `# HELP` texts of the sink metrics with the installed recorder.
pub fn describe_metrics() {
    metrics::describe_counter!(
        "p1gw_sink_spooled_total",
        "Readings written to the sink's spool."
    );
    metrics::describe_counter!("p1gw_sink_sent_total", "Readings the backend acknowledged.");
    metrics::describe_counter!(
        "p1gw_sink_failed_total",
        "Failed delivery attempts (readings stay spooled)."
    );
    metrics::describe_counter!(
        "p1gw_sink_dropped_total",
        "Readings dropped, by reason (lagged, rejected, too_large, spool_error)."
    );
    metrics::describe_counter!(
        "p1gw_sink_restarts_total",
        "Times the sink was restarted after an error or panic."
    );
}

#[cfg(test)]
mod tests;
