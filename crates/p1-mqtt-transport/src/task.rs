//! The skeleton of a sink that delivers through a connection task, shared by the `mqtt` and
//! `azure-iot` sinks: p1-core's spooled delivery loop on one side, a task that owns the rumqttc
//! client on the other, joined by
//!
//! * a jobs channel (delivery → task: what to publish, tagged with delivery's attempt number,
//!   its *epoch*),
//! * a reports channel (task → delivery: acked or lost, carrying the epoch back, so that a
//!   report of an abandoned attempt is ignored),
//! * the [`LinkState`] watch ([`crate::link`]), and
//! * the current attempt, shared, so that the task drops what an abandoned attempt left queued
//!   (delivery sends it again from the spool).
//!
//! [`wire`] makes the two ends, [`run_beside`] runs the delivery loop with the task beside it
//! and stops the task when the loop ends, [`connected`] is delivery's wait for a connection as a
//! p1-core [`DeliveryError`], and [`transient`] makes such an error. What a job and a report
//! hold is each sink's own (a record's messages, a batch's body; MQTT 5's refusals).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use p1_core::{DeliveryError, Reading, Sink, SinkContext, SinkError};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::link::{LinkState, stop_connection, wait_connected};

/// The connection task's ends of the wiring.
#[derive(Debug)]
pub struct TaskEnds<J, R> {
    /// What delivery hands over to publish.
    pub jobs: mpsc::Receiver<J>,
    /// Acks and losses, for delivery.
    pub reports: mpsc::Sender<R>,
    /// The connection as delivery sees it.
    pub state: watch::Sender<LinkState>,
    /// Delivery's current attempt: jobs of older attempts are dropped, not published.
    pub attempt: Arc<AtomicU64>,
    /// A clean stop: disconnect, end. [`run_beside`] fires it when delivery ends.
    pub stop: CancellationToken,
}

/// Delivery's ends of the wiring.
#[derive(Debug)]
pub struct DeliveryEnds<J, R> {
    /// To the connection task.
    pub jobs: mpsc::Sender<J>,
    /// From the connection task.
    pub reports: mpsc::Receiver<R>,
    /// The connection, for [`connected`].
    pub state: watch::Receiver<LinkState>,
    /// The current attempt, for the connection task.
    pub attempt: Arc<AtomicU64>,
}

/// The channels between a delivery loop and its connection task: `jobs` and `reports` are the
/// channels' capacities (reports: at least what delivery can have outstanding, so a full
/// channel never blocks the task).
pub fn wire<J, R>(jobs: usize, reports: usize) -> (TaskEnds<J, R>, DeliveryEnds<J, R>) {
    let (jobs_tx, jobs_rx) = mpsc::channel(jobs);
    let (reports_tx, reports_rx) = mpsc::channel(reports);
    let (state_tx, state_rx) = watch::channel(LinkState::default());
    let attempt = Arc::new(AtomicU64::new(0));
    (
        TaskEnds {
            jobs: jobs_rx,
            reports: reports_tx,
            state: state_tx,
            attempt: attempt.clone(),
            stop: CancellationToken::new(),
        },
        DeliveryEnds {
            jobs: jobs_tx,
            reports: reports_rx,
            state: state_rx,
            attempt,
        },
    )
}

/// Runs `worker` (the sink's p1-core delivery loop) with the connection task `connection`
/// spawned beside it; when the worker ends, fires `stop` (the task's clean stop) and waits up to
/// `stop_wait` for the task (`label` names the protocol in the log: "MQTT", "IoT Hub").
///
/// # Errors
///
/// The worker's.
pub async fn run_beside(
    connection: impl Future<Output = ()> + Send + 'static,
    stop: CancellationToken,
    worker: Box<dyn Sink>,
    input: broadcast::Receiver<Arc<Reading>>,
    cx: SinkContext,
    stop_wait: Duration,
    label: &str,
) -> Result<(), SinkError> {
    let task = tokio::spawn(connection);
    let result = worker.run(input, cx.clone()).await;
    stop.cancel();
    stop_connection(task, stop_wait, &cx.name, label).await;
    result
}

/// A delivery failure worth retrying soon (the connection's own backoff paces the server).
pub fn transient(message: impl Into<String>) -> DeliveryError {
    DeliveryError::Transient {
        message: message.into(),
        retry_after: None,
    }
}

/// Waits until `state` says connected, for at most `wait`; `peer` names the other end ("the
/// broker", "IoT Hub").
///
/// # Errors
///
/// [`transient`], with why there is no connection (see [`wait_connected`]).
pub async fn connected(
    state: &mut watch::Receiver<LinkState>,
    wait: Duration,
    peer: &str,
) -> Result<(), DeliveryError> {
    wait_connected(state, wait, peer).await.map_err(transient)
}
