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
//!   `Retry-After`); permanent rejections (a 400 for a malformed point) are
//!   logged and dropped with a counter, so one bad record cannot block the
//!   queue forever.
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
//! `p1gw_sink_sent_total`, `p1gw_sink_failed_total` (failed delivery
//! attempts), `p1gw_sink_dropped_total{reason}` (`lagged`, `rejected`,
//! `encode`), `p1gw_sink_restarts_total`. Spool depth comes from
//! [`crate::spool`] (`p1gw_spool_records`, `p1gw_spool_bytes`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;

use crate::{AsyncSpool, Backoff, HealthHandle, Reading};

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

async fn run_spooled<E: Encode, D: Deliver>(
    encoder: E,
    mut deliver: D,
    (min, max): (Duration, Duration),
    input: broadcast::Receiver<Arc<Reading>>,
    cx: SinkContext,
) -> Result<(), SinkError> {
    let wake = Arc::new(Notify::new());
    let intake_done = CancellationToken::new();
    let intake = tokio::spawn(intake(
        encoder,
        input,
        cx.clone(),
        wake.clone(),
        intake_done.clone(),
    ));
    cx.health.set_spool_depth(cx.spool.len(), cx.spool.bytes());
    cx.health.ok();
    let delivered = delivery(
        &mut deliver,
        Backoff::new(min, max),
        &cx,
        &wake,
        &intake_done,
    )
    .await;
    deliver.close().await;
    // Intake ends on Closed or on the hard stop; it holds no state to save.
    intake.abort();
    let intake_result = intake.await;
    cx.health.set_spool_depth(cx.spool.len(), cx.spool.bytes());
    delivered?;
    match intake_result {
        Ok(result) => result,
        Err(join) if join.is_cancelled() => Ok(()),
        Err(join) => Err(SinkError::Other(format!("intake task failed: {join}"))),
    }
}

/// Most readings one spool commit takes: bounds the work between two looks
/// at the hard-stop token.
const INTAKE_BATCH: usize = 512;

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
    loop {
        let received = tokio::select! {
            biased;
            () = cx.hard.cancelled() => return Ok(()),
            r = input.recv() => r,
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
        if !records.is_empty() {
            let n = records.len() as u64;
            cx.spool.append_batch(records).await?;
            metrics::counter!("p1gw_sink_spooled_total", "sink" => cx.name.clone()).increment(n);
            cx.health.set_spool_depth(cx.spool.len(), cx.spool.bytes());
            wake.notify_one();
        }
        if closed {
            return Ok(());
        }
    }
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
    let name = cx.name.as_str();
    loop {
        let batch = cx.spool.peek(deliver.max_batch().max(1)).await?;
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
                cx.spool.ack_up_to(batch[n - 1].0).await?;
                metrics::counter!("p1gw_sink_sent_total", "sink" => name.to_owned())
                    .increment(n as u64);
                backoff.reset();
                cx.health.success();
                cx.health.ok();
            }
            Err(DeliveryError::Transient {
                message,
                retry_after,
            }) => {
                metrics::counter!("p1gw_sink_failed_total", "sink" => name.to_owned()).increment(1);
                cx.health.add_counter("failed", 1);
                let wait = retry_after.unwrap_or_else(|| backoff.next_delay());
                tracing::warn!(sink = name, error = %message, backlog = cx.spool.len(), retry_in = ?wait, "Delivery failed; readings stay spooled.");
                cx.health.error(message.clone());
                cx.health.degraded(format!("delivery failing: {message}"));
                if sleep_or_hard(wait, &cx.hard).await {
                    return Ok(());
                }
            }
            Err(DeliveryError::Permanent { message, records }) => {
                let n = records.clamp(1, batch.len());
                tracing::error!(sink = name, error = %message, dropped = n, "Backend rejected readings; dropped.");
                metrics::counter!("p1gw_sink_dropped_total", "sink" => name.to_owned(), "reason" => "rejected")
                    .increment(n as u64);
                cx.health.add_counter("dropped", n as u64);
                cx.health.error(message);
                cx.spool.ack_up_to(batch[n - 1].0).await?;
            }
        }
        cx.health.set_spool_depth(cx.spool.len(), cx.spool.bytes());
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
        "Readings dropped, by reason (lagged, rejected)."
    );
    metrics::describe_counter!(
        "p1gw_sink_restarts_total",
        "Times the sink was restarted after an error or panic."
    );
}

#[cfg(test)]
mod tests;
