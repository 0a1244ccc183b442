//! [`AzureSink`]: p1-core's spool-backed worker with an IoT Hub [`Deliver`], plus the
//! connection task it feeds.
//!
//! # Batching
//!
//! Intake spools every reading on its own (its JSON, as p1-core renders it), so nothing waits
//! in memory. Delivery sends one message per `interval`: when p1-core hands it the oldest
//! records, it waits until `interval` has passed since the last message (the first goes at
//! once), reads the records spooled meanwhile with `peek_from`, and sends them all, split into
//! messages under the size limit ([`crate::encode::batch`]). A backlog that fills a whole
//! message is sent without waiting; a stop sends what is there at once. Messages go one at a
//! time: the next one only after the hub's PUBACK for the previous one.
//!
//! p1-core acknowledges only the records it handed over, so the deliverer remembers the last
//! record the hub acknowledged: when p1-core hands those over next, they are acknowledged at
//! once, without sending (as the InfluxDB sink does). A crash in between sends them again.
//!
//! # Daily budget
//!
//! Before each message the budget ([`crate::budget`]) is asked; a message that does not fit
//! waits, spooled, for the next UTC day (the budget is checked every second, so a clock that
//! jumps is noticed). WARN at 80 % and at 100 %; `p1gw_azure_messages_today` shows the count.
//! The count is stored in the spool file (p1-core's sink state) before each message and read at
//! the start of each run, so restarts do not reset it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use p1_core::sink::BoxFuture;
use p1_core::{
    AsyncSpool, Deliver, DeliveryError, Encode, HealthHandle, Reading, Sink, SinkContext,
    SinkError, Spooled,
};
use p1_mqtt_transport::{LinkState, connected, run_beside, transient, wire};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::budget::{Budget, Crossed};
use crate::config::{Device, tls_settings};
use crate::connection::{Connection, Job, Report};
use crate::connection_string::ConnectionString;
use crate::encode::{Topic, batch, fills_a_message, metered};
use crate::{AzureSettings, BuildError};

/// The sink kind in config (and the metrics' `sink` label's kind).
pub const KIND: &str = "azure-iot";

/// Records p1-core hands over at most per delivery attempt (more than a message holds).
const MAX_BATCH: usize = 2048;
/// How long one delivery attempt waits for a connection before it reports a failure (it
/// returns earlier when a connection attempt fails).
const CONNECT_WAIT: Duration = Duration::from_secs(30);
/// How long delivery waits for the hub's PUBACK before giving up on a message (it is sent
/// again: a duplicate, never a loss).
const ACK_WAIT: Duration = Duration::from_secs(30);
/// How long the sink waits for the connection task's clean stop.
const STOP_WAIT: Duration = Duration::from_secs(3);
/// How often a used-up budget looks at the clock again.
const BUDGET_POLL: Duration = Duration::from_secs(1);

/// A configured IoT Hub sink; [`AzureSink::make`] gives a fresh instance for each (re)start.
#[derive(Clone)]
pub struct AzureSink {
    settings: Arc<AzureSettings>,
    pub(crate) device: Device,
    pub(crate) tls: Arc<rustls::ClientConfig>,
    topic: Topic,
}

impl std::fmt::Debug for AzureSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureSink")
            .field("settings", &self.settings)
            .field("device", &self.device)
            .field("topic", &self.topic.topic)
            .finish_non_exhaustive()
    }
}

/// Parses the connection string, checks `settings` and builds the TLS configuration (reading
/// the system's CA certificates when no CA was given).
///
/// # Errors
/// A malformed connection string (the message names the field, never the key), key and
/// certificate that do not fit together, settings out of range, no usable CA certificate, an
/// unusable client certificate or key.
pub fn build(settings: AzureSettings) -> Result<AzureSink, BuildError> {
    settings.check()?;
    let conn = ConnectionString::parse(&settings.connection_string)?;
    let device = Device::resolve(conn, settings.client.as_ref())?;
    let tls = p1_mqtt_transport::client_config(&tls_settings(&settings))?;
    let topic = Topic::new(&device.events_topic(), &settings.properties);
    if topic.property_bytes + 1024 > settings.max_message_bytes {
        return Err(BuildError::Settings(
            "the application properties leave no room for readings in a message".to_owned(),
        ));
    }
    Ok(AzureSink {
        settings: Arc::new(settings),
        device,
        tls,
        topic,
    })
}

impl AzureSink {
    /// The settings.
    pub fn settings(&self) -> &AzureSettings {
        &self.settings
    }

    /// The MQTT client id: the device id, or `{device}/{module}`.
    pub fn client_id(&self) -> String {
        self.device.conn.client_id()
    }

    /// The topic messages are published to, with its property bag.
    pub fn topic(&self) -> &str {
        &self.topic.topic
    }

    /// A fresh sink instance for the supervisor.
    pub fn make(&self) -> Box<dyn Sink> {
        Box::new(self.clone())
    }
}

impl Sink for AzureSink {
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

/// Registers the `# HELP` text of the sink's own metric.
pub fn describe_metrics() {
    metrics::describe_gauge!(
        "p1gw_azure_messages_today",
        "IoT Hub messages used today (UTC), counted in metered chunks as the hub counts them."
    );
}

/// Intake: each reading's JSON, as it is.
struct ReadingJson;

impl Encode for ReadingJson {
    fn encode(&mut self, reading: &Reading) -> Option<Vec<u8>> {
        Some(reading.json().as_bytes().to_vec())
    }
}

async fn run(
    sink: AzureSink,
    input: broadcast::Receiver<Arc<Reading>>,
    cx: SinkContext,
) -> Result<(), SinkError> {
    describe_metrics();
    let settings = sink.settings.clone();
    let (task, ends) = wire::<Job, Report>(16, 64);
    let stop = task.stop.clone();
    let connection = Connection {
        settings: settings.clone(),
        device: sink.device.clone(),
        tls: sink.tls.clone(),
        topic: sink.topic.topic.clone(),
        jobs: task.jobs,
        reports: task.reports,
        state: task.state,
        attempt: task.attempt,
        stop: task.stop,
        hard: cx.hard.clone(),
        health: cx.health.clone(),
        name: cx.name.clone(),
    };

    let budget = stored_budget(&cx, settings.daily_message_budget).await;
    let deliver = AzureDeliver {
        max_body: settings.max_message_bytes - sink.topic.property_bytes,
        property_bytes: sink.topic.property_bytes,
        budget,
        settings: settings.clone(),
        jobs: ends.jobs,
        reports: ends.reports,
        state: ends.state,
        epoch: 0,
        attempt: ends.attempt,
        spool: cx.spool.clone(),
        stop: cx.stop.clone(),
        health: cx.health.clone(),
        name: cx.name.clone(),
        next_send: Instant::now(),
        acked_through: None,
    };
    // Delivery retries come soon: each attempt itself waits for the connection, whose own
    // backoff paces the hub.
    let worker = Spooled::new(KIND, ReadingJson, deliver)
        .with_backoff(Duration::from_millis(200), Duration::from_secs(5));
    run_beside(
        connection.run(),
        stop,
        Box::new(worker),
        input,
        cx,
        STOP_WAIT,
        "IoT Hub",
    )
    .await
}

/// The spool's sink-state keys of the budget: its UTC day and the messages used on it.
const BUDGET_DAY: &str = "azure.budget_day";
const BUDGET_USED: &str = "azure.budget_used";

/// The budget as the last run left it in the spool file; a fresh one when none is stored or it
/// cannot be read (logged).
async fn stored_budget(cx: &SinkContext, limit: u32) -> Budget {
    let read = async {
        let day = cx.spool.sink_state(BUDGET_DAY).await?;
        let used = cx.spool.sink_state(BUDGET_USED).await?;
        Ok::<_, p1_core::Error>(day.zip(used))
    };
    match read.await {
        Ok(Some((day, used))) => {
            Budget::resume(limit, day, u32::try_from(used).unwrap_or(u32::MAX))
        }
        Ok(None) => Budget::new(limit),
        Err(e) => {
            tracing::warn!(sink = %cx.name, error = %e, "Cannot read the stored daily message budget; counting from zero.");
            Budget::new(limit)
        }
    }
}

/// Batches spool records into messages, hands them to the connection task one at a time and
/// waits for the hub's PUBACKs.
struct AzureDeliver {
    settings: Arc<AzureSettings>,
    /// The largest body: the message limit less the properties.
    max_body: usize,
    property_bytes: usize,
    budget: Budget,
    jobs: mpsc::Sender<Job>,
    reports: mpsc::Receiver<Report>,
    state: watch::Receiver<LinkState>,
    /// Attempt number, so that reports of an earlier attempt are ignored.
    epoch: u64,
    /// The same, for the connection task (it drops messages of abandoned attempts).
    attempt: Arc<AtomicU64>,
    spool: AsyncSpool,
    /// The daemon is stopping: send what is there without waiting for the interval.
    stop: CancellationToken,
    health: HealthHandle,
    name: String,
    /// When the next message may go (one per interval, unless a backlog fills messages).
    next_send: Instant,
    /// The last record the hub acknowledged beyond what p1-core handed over.
    acked_through: Option<u64>,
}

impl AzureDeliver {
    /// Waits for the interval to pass (or the stop); then the records spooled after `records`.
    async fn linger(&mut self, records: &[(u64, Vec<u8>)]) -> Vec<(u64, Vec<u8>)> {
        let Some(&(last, _)) = records.last() else {
            return Vec::new();
        };
        if fills_a_message(records, self.max_body) || records.len() >= MAX_BATCH {
            return Vec::new();
        }
        tokio::select! {
            () = tokio::time::sleep_until(self.next_send) => {}
            () = self.stop.cancelled() => {}
        }
        if self.spool.len() <= records.len() as u64 {
            return Vec::new();
        }
        match self
            .spool
            .peek_from(last + 1, MAX_BATCH - records.len())
            .await
        {
            Ok(more) => more,
            Err(e) => {
                // Not fatal: the records given are sent; the rest come with the next message.
                tracing::debug!(sink = %self.name, error = %e, "Cannot read more records for the message.");
                Vec::new()
            }
        }
    }

    fn now(&self) -> u64 {
        self.settings.clock.unix_seconds()
    }

    /// Waits until the budget has room for `cost` messages (the next UTC day, if need be).
    async fn budget_for(&mut self, cost: u32) {
        let mut waited = false;
        loop {
            let now = self.now();
            let remaining = self.budget.remaining(now);
            // A message larger than the whole budget goes first thing in the day.
            let fits = remaining >= cost || (remaining == self.budget.limit() && remaining > 0);
            if fits {
                if waited {
                    tracing::info!(sink = %self.name, "A new UTC day: sending again within the message budget.");
                    self.health.ok();
                }
                self.publish_used(now);
                return;
            }
            if self.budget.exhausted(now).is_some() {
                tracing::warn!(
                    sink = %self.name,
                    used = self.budget.used(now),
                    budget = self.budget.limit(),
                    backlog = self.spool.len(),
                    resume_in_s = crate::budget::Budget::until_tomorrow(now),
                    "The daily IoT Hub message budget is used up; readings stay spooled until 00:00 UTC."
                );
            }
            self.publish_used(now);
            self.health.degraded(format!(
                "daily message budget used up ({}/{}); readings stay spooled until 00:00 UTC",
                self.budget.used(now),
                self.budget.limit()
            ));
            waited = true;
            let until = Duration::from_secs(crate::budget::Budget::until_tomorrow(now));
            tokio::time::sleep(until.min(BUDGET_POLL)).await;
        }
    }

    fn publish_used(&mut self, now: u64) {
        let used = self.budget.used(now);
        metrics::gauge!("p1gw_azure_messages_today", "sink" => self.name.clone())
            .set(f64::from(used));
        self.health.set_counter("messages_today", u64::from(used));
    }

    /// Counts a message, stored beside the spool before it goes (so that a restart goes on from
    /// it); WARN when it crosses 80 % or 100 %.
    async fn spend(&mut self, cost: u32) {
        let now = self.now();
        let crossed = self.budget.spend(now, cost);
        let (day, used) = self.budget.stored();
        if let Err(e) = self
            .spool
            .set_sink_state(vec![(BUDGET_DAY, day), (BUDGET_USED, u64::from(used))])
            .await
        {
            // The count in memory still holds for this run.
            tracing::warn!(sink = %self.name, error = %e, "Cannot store the daily message budget beside the spool.");
        }
        match crossed {
            Some(Crossed::Most) => tracing::warn!(
                sink = %self.name,
                used = self.budget.used(now),
                budget = self.budget.limit(),
                "80 % of the daily IoT Hub message budget is used."
            ),
            Some(Crossed::All) => tracing::warn!(
                sink = %self.name,
                used = self.budget.used(now),
                budget = self.budget.limit(),
                "The daily IoT Hub message budget is used up; readings stay spooled until 00:00 UTC."
            ),
            None => {}
        }
        self.publish_used(now);
    }

    /// Sends one message and waits for its PUBACK; `Err` with the reason when it is lost.
    async fn send(&mut self, epoch: u64, last: u64, payload: Vec<u8>) -> Result<(), String> {
        let job = Job {
            epoch,
            last,
            payload,
        };
        if self.jobs.send(job).await.is_err() {
            return Err("the IoT Hub connection task ended".to_owned());
        }
        loop {
            match tokio::time::timeout(ACK_WAIT, self.reports.recv()).await {
                Ok(Some(Report::Acked { epoch: e, last: l })) if e == epoch && l == last => {
                    return Ok(());
                }
                Ok(Some(Report::Lost { epoch: e, reason })) if e == epoch => return Err(reason),
                Ok(Some(_)) => {}
                Ok(None) => return Err("the IoT Hub connection task ended".to_owned()),
                Err(_) => {
                    return Err(format!(
                        "no acknowledgement from IoT Hub within {} s",
                        ACK_WAIT.as_secs()
                    ));
                }
            }
        }
    }
}

impl Deliver for AzureDeliver {
    fn max_batch(&self) -> usize {
        MAX_BATCH
    }

    fn deliver<'a>(
        &'a mut self,
        records: &'a [(u64, Vec<u8>)],
    ) -> BoxFuture<'a, Result<usize, DeliveryError>> {
        Box::pin(async move {
            // Records the hub took with an earlier message: acknowledge them.
            if let Some(through) = self.acked_through {
                let done = records
                    .iter()
                    .take_while(|(seq, _)| *seq <= through)
                    .count();
                if done > 0 {
                    return Ok(done);
                }
                self.acked_through = None;
            }
            if records.is_empty() {
                return Ok(0);
            }
            let more = self.linger(records).await;
            let all = records
                .iter()
                .chain(&more)
                .map(|(seq, r)| (*seq, r.as_slice()));
            let batch = batch(all, self.max_body);
            if batch.messages.is_empty() {
                let size = records[0].1.len();
                return Err(DeliveryError::Permanent {
                    message: format!(
                        "a reading of {size} bytes does not fit in one IoT Hub message ({} bytes at most)",
                        self.max_body
                    ),
                    records: 1,
                });
            }
            connected(&mut self.state, CONNECT_WAIT, "IoT Hub").await?;

            self.epoch += 1;
            let epoch = self.epoch;
            self.attempt.store(epoch, Ordering::Release);
            // Reports of an earlier, abandoned attempt.
            while self.reports.try_recv().is_ok() {}

            let mut acked: Option<u64> = None;
            let mut failure = None;
            for message in batch.messages {
                let cost = metered(
                    message.body.len() + self.property_bytes,
                    self.settings.message_chunk,
                );
                self.budget_for(cost).await;
                self.spend(cost).await;
                let (last, readings) = (message.last, message.readings);
                match self.send(epoch, last, message.body).await {
                    Ok(()) => {
                        tracing::debug!(sink = %self.name, readings, metered = cost, "Message acknowledged by IoT Hub.");
                        acked = Some(last);
                    }
                    Err(reason) => {
                        failure = Some(reason);
                        break;
                    }
                }
            }
            // This attempt is over: the connection task drops what it still holds of it.
            self.attempt.store(epoch + 1, Ordering::Release);
            let Some(through) = acked else {
                return Err(transient(
                    failure.unwrap_or_else(|| "nothing was sent".to_owned()),
                ));
            };
            self.next_send = Instant::now() + self.settings.interval;
            let handed = records
                .iter()
                .take_while(|(seq, _)| *seq <= through)
                .count();
            if records.last().is_some_and(|(seq, _)| *seq < through) {
                self.acked_through = Some(through);
            }
            Ok(handed)
        })
    }
}
