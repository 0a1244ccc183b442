//! [`MqttSink`]: the generic spool-backed worker with an MQTT [`Deliver`], plus the connection
//! task it feeds.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use p1_core::sink::BoxFuture;
use p1_core::{Deliver, DeliveryError, Reading, Sink, SinkContext, SinkError, Spooled};
use p1_mqtt_transport::{LinkState, connected, run_beside, transient, wire};
use tokio::sync::{broadcast, mpsc, watch};

use crate::config::client_config;
use crate::connection::{Connection, Job, Report};
use crate::discovery::Discovery;
use crate::encode::{Publisher, decode_record};
use crate::latest::Latest;
use crate::{BuildError, MqttSettings};

/// The sink kind in config (and the metrics' `sink` label's kind).
pub const KIND: &str = "mqtt";

/// Records per delivery attempt, at most. An attempt waits for every ack of its batch, and
/// stock Mosquitto holds its last small PUBACKs under Nagle's algorithm until our delayed ACK
/// (40 ms): a batch of 64 drained 1 370 readings/s, one of 512 drains 10 000/s
/// (docs/performance.md, "MQTT drain").
const MAX_BATCH: usize = 512;
/// Records per delivery attempt, at least.
const MIN_BATCH: usize = 16;

/// Records per delivery attempt for a backlog sent at `backlog_rate` messages/s: about one
/// second's worth, so that a slow backlog still advances the spool (and `sent_total`) every
/// second and a crash repeats at most a second of it, while a fast one gets big batches.
pub(crate) fn batch_for(backlog_rate: u32) -> usize {
    usize::try_from(backlog_rate)
        .unwrap_or(MAX_BATCH)
        .clamp(MIN_BATCH, MAX_BATCH)
}
/// How long one delivery attempt waits for a connection before it reports a failure (it
/// returns earlier when a connection attempt fails).
const CONNECT_WAIT: Duration = Duration::from_secs(30);
/// How long one delivery attempt waits for the broker's next ack, beyond the time the next
/// record's messages need to pass the `backlog_rate` bucket ([`ack_wait`]), before giving up
/// on the rest (they are sent again: a duplicate, never a loss).
const ACK_WAIT: Duration = Duration::from_secs(30);

/// How long to wait for the acks of a record of `messages` messages sent at `backlog_rate`
/// messages/s: [`ACK_WAIT`] plus the time its messages take to pass the bucket. A fixed wait
/// would give up on a reading of more messages than `backlog_rate` × 30 s every time and send
/// it again from its first message, for ever.
pub(crate) fn ack_wait(messages: usize, backlog_rate: u32) -> Duration {
    let pacing = messages as f64 / f64::from(backlog_rate.max(1));
    ACK_WAIT + Duration::from_secs_f64(pacing.min(86_400.0))
}
/// How long the sink waits for the connection task's clean stop (`offline`, DISCONNECT).
const STOP_WAIT: Duration = Duration::from_secs(3);

/// A configured MQTT sink; [`MqttSink::make`] gives a fresh instance for each (re)start.
#[derive(Clone)]
pub struct MqttSink {
    settings: Arc<MqttSettings>,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for MqttSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttSink")
            .field("settings", &self.settings)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// Checks `settings` and builds the TLS configuration (reading the system's CA certificates
/// when no CA file was given).
///
/// # Errors
/// Settings out of range, no usable CA certificate, an unusable client certificate or key.
pub fn build(settings: MqttSettings) -> Result<MqttSink, BuildError> {
    settings.check()?;
    let tls = settings.tls.as_ref().map(client_config).transpose()?;
    Ok(MqttSink {
        settings: Arc::new(settings),
        tls,
    })
}

impl MqttSink {
    /// The settings.
    pub fn settings(&self) -> &MqttSettings {
        &self.settings
    }

    /// A fresh sink instance for the supervisor.
    pub fn make(&self) -> Box<dyn Sink> {
        Box::new(self.clone())
    }
}

impl Sink for MqttSink {
    fn kind(&self) -> &'static str {
        KIND
    }

    fn run(
        self: Box<Self>,
        input: broadcast::Receiver<Arc<Reading>>,
        cx: SinkContext,
    ) -> BoxFuture<'static, Result<(), SinkError>> {
        Box::pin(run(*self, input, cx))
    }
}

async fn run(
    sink: MqttSink,
    input: broadcast::Receiver<Arc<Reading>>,
    cx: SinkContext,
) -> Result<(), SinkError> {
    let settings = sink.settings.clone();
    // Reports: every one delivery can have outstanding (one per job) twice over.
    let (task, ends) = wire::<Job, Report>(MAX_BATCH, 4 * MAX_BATCH);
    let (discovery, discovery_rx) = match &settings.discovery_prefix {
        Some(prefix) => {
            let (d, rx) = Discovery::new(&settings, prefix);
            (Some(d), Some(rx))
        }
        None => (None, None),
    };
    let stop = task.stop.clone();
    let latest = Arc::new(Latest::new(&cx.name, settings.meter_intervals.clone()));
    let connection = Connection {
        settings: settings.clone(),
        tls: sink.tls.clone(),
        jobs: task.jobs,
        reports: task.reports,
        state: task.state,
        discovery: discovery_rx,
        attempt: task.attempt,
        stop: task.stop,
        hard: cx.hard.clone(),
        health: cx.health.clone(),
        name: cx.name.clone(),
        latest: latest.clone(),
    };

    let publisher = Publisher::new(settings.clone(), discovery).with_latest(latest);
    let deliver = MqttDeliver {
        batch: batch_for(settings.backlog_rate),
        backlog_rate: settings.backlog_rate,
        jobs: ends.jobs,
        reports: ends.reports,
        state: ends.state,
        epoch: 0,
        attempt: ends.attempt,
    };
    // Delivery retries come soon: each attempt itself waits for the connection, whose own
    // backoff paces the broker.
    let worker = Spooled::new(KIND, publisher, deliver)
        .with_backoff(Duration::from_millis(200), Duration::from_secs(5));
    run_beside(
        connection.run(),
        stop,
        Box::new(worker),
        input,
        cx,
        STOP_WAIT,
        "MQTT",
    )
    .await
}

/// Hands spool records to the connection task and waits for the broker's acks.
struct MqttDeliver {
    /// Records per delivery attempt ([`batch_for`]).
    batch: usize,
    /// Messages per second while a backlog is sent: paces the wait for acks ([`ack_wait`]).
    backlog_rate: u32,
    jobs: mpsc::Sender<Job>,
    reports: mpsc::Receiver<Report>,
    state: watch::Receiver<LinkState>,
    /// Attempt number, so that reports of an earlier attempt are ignored.
    epoch: u64,
    /// The same, for the connection task (it drops data of abandoned attempts).
    attempt: Arc<AtomicU64>,
}

impl Deliver for MqttDeliver {
    fn max_batch(&self) -> usize {
        self.batch
    }

    fn deliver<'a>(
        &'a mut self,
        records: &'a [(u64, Vec<u8>)],
    ) -> BoxFuture<'a, Result<usize, DeliveryError>> {
        Box::pin(async move {
            self.epoch += 1;
            let epoch = self.epoch;
            self.attempt.store(epoch, Ordering::Release);
            // Reports of an earlier, abandoned attempt.
            while self.reports.try_recv().is_ok() {}
            connected(&mut self.state, CONNECT_WAIT, "the broker").await?;

            let mut sent = Vec::with_capacity(records.len());
            // Messages per record sent, for the wait for its acks.
            let mut counts = Vec::with_capacity(records.len());
            for (seq, record) in records {
                let messages = match decode_record(record) {
                    Ok(messages) => messages,
                    Err(e) if sent.is_empty() => {
                        return Err(DeliveryError::Permanent {
                            message: format!("spool record {seq} is not an MQTT record: {e}"),
                            records: 1,
                        });
                    }
                    // Deliver the good ones first; the bad one leads the next batch.
                    Err(_) => break,
                };
                counts.push(messages.len());
                let job = Job {
                    epoch,
                    seq: *seq,
                    messages,
                };
                if self.jobs.send(job).await.is_err() {
                    return Err(transient("the MQTT connection task ended"));
                }
                sent.push(*seq);
            }

            // Acks come in order; count the acknowledged prefix.
            let mut acked: HashSet<u64> = HashSet::with_capacity(sent.len());
            let mut prefix = 0;
            let failure = loop {
                while prefix < sent.len() && acked.contains(&sent[prefix]) {
                    prefix += 1;
                }
                if prefix == sent.len() {
                    return Ok(prefix);
                }
                let wait = ack_wait(counts[prefix], self.backlog_rate);
                match tokio::time::timeout(wait, self.reports.recv()).await {
                    Ok(Some(Report::Acked { epoch: e, seq })) if e == epoch => {
                        acked.insert(seq);
                    }
                    Ok(Some(Report::Lost { epoch: e, reason })) if e == epoch => {
                        break transient(reason);
                    }
                    Ok(Some(Report::Refused {
                        epoch: e,
                        reason,
                        message,
                        ..
                    })) if e == epoch => {
                        // MQTT 5: the broker refused a message with a code that may pass
                        // later. The records from the refused one on stay spooled.
                        break DeliveryError::Refused { reason, message };
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => break transient("the MQTT connection task ended"),
                    Err(_) => {
                        break transient(format!(
                            "no acknowledgement from the broker within {} s",
                            wait.as_secs()
                        ));
                    }
                }
            };
            // This attempt is over: the connection task drops what it still holds of it, so
            // that nothing of it is published after (ahead of) the resend.
            self.attempt.store(epoch + 1, Ordering::Release);
            if prefix > 0 { Ok(prefix) } else { Err(failure) }
        })
    }
}
