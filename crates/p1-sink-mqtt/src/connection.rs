//! The connection task: owns the MQTT client, maps the broker's acks back to spool records,
//! reconnects with backoff, paces backlogs, and keeps status and discovery published.
//!
//! # Acks
//!
//! Every `try_publish` hands a [`Tag`] to p1-mqtt-transport's [`Acks`], which maps rumqttc's
//! packet ids back to it: the broker's `PubAck(pkid)` (QoS 1) or `PubComp(pkid)` (QoS 2)
//! settles it; for QoS 0 the `Outgoing::Publish(0)` itself (emitted after the socket flush)
//! settles it. A record ([`Job`]) is acked to delivery when all its messages are settled.
//!
//! # One client per connection
//!
//! Each connection attempt gets a fresh `AsyncClient` + `EventLoop` pair whose event loop runs
//! in its own poller task until its first error. Nothing queued for an old connection can then
//! leak into a new one and shift the FIFO, and rumqttc's own resend queue is never used: after
//! a lost connection every unsettled record is reported [`Report::Lost`] and stays in the
//! spool, from which delivery sends it again once connected. The session itself is persistent
//! (`clean_session = false`, fixed client id), so the broker keeps our subscription to Home
//! Assistant's status topic and queues its birth message while we are away.
//!
//! # MQTT 5
//!
//! With `protocol = "5"` the same task drives rumqttc's v5 client; its events are turned into
//! the 3.1.1 events the rest of the task reads ([`Run::read_v5`]), except where MQTT 5 says
//! more:
//!
//! * A PUBACK (or PUBREC) with a failure reason code is *not* an ack. "Payload format
//!   invalid" can never succeed: the message is dropped ([`Run::drop_message`]). Every other
//!   code (not authorized, quota exceeded, topic name invalid, unspecified, …) may pass once
//!   the broker or the configuration changes: the record stays spooled and delivery backs off
//!   ([`Report::Refused`]).
//! * A message larger than the largest packet the broker's CONNACK allows is never sent (it
//!   never could be; rumqttc would end the connection over it): dropped.
//!
//! Over MQTT 3.1.1 a message larger than the largest packet p1gw sends
//! ([`crate::config::MAX_PACKET_BYTES`], rumqttc's outgoing limit as we set it) is dropped the
//! same way before it is handed to rumqttc, which would otherwise end the connection with
//! `OutgoingPacketTooLarge` after every reconnect.
//! * Mosquitto answers a message over its `message_size_limit` with PUBACK 0x95, a code
//!   rumqttc 0.25 cannot decode: the connection ends with that decode error. Mosquitto acks
//!   in order, so the refused message is the oldest one still in flight: dropped, the
//!   connection is made again and the rest resent.
//!
//! A dropped message is logged at ERROR (topic, size, the broker's reason), counted in
//! `p1gw_sink_dropped_total{reason="too_large"}` (or `"rejected"`), and remembered by spool
//! sequence number so that a resend of its record after a reconnect leaves it out; the
//! record's other messages are delivered as usual.
//!
//! # Pacing
//!
//! Data messages pass a token bucket of `backlog_rate` tokens per second holding one second's
//! worth: live readings (a few messages every 10 s) go at once, a backlog at `backlog_rate`.
//! Status and discovery messages are not paced and go before data. At most [`WINDOW`]
//! messages are unsettled at once.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use p1_core::{Backoff, HealthHandle};
use p1_mqtt_transport::{Acks, Polled, Polled5, poll_events, poll_events_v5};
use rumqttc::{AsyncClient, ConnectionError, Event, Incoming, Outgoing};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::MqttSettings;
use crate::config::Protocol;

mod v5;

use self::v5::qos5;
pub(crate) use self::v5::{describe_v5, packet_size_v5};
use crate::discovery::Configs;
use crate::encode::Message;
use crate::latest::Latest;

/// rumqttc's in-flight limit (packet ids 1..=this).
pub(crate) const MAX_INFLIGHT: u16 = 1024;
/// rumqttc's request channel; more than [`WINDOW`] plus status and subscribe requests.
pub(crate) const REQUEST_CAPACITY: usize = 640;
/// Messages handed to rumqttc and not yet settled, at most. Below [`MAX_INFLIGHT`], so that
/// packet ids are not reused while in flight when the broker acks in order.
pub(crate) const WINDOW: usize = 512;
/// Data messages queued here at most before more jobs are taken from delivery.
const QUEUE_LIMIT: usize = 1024;
/// How long a clean stop waits for the broker to take `offline` and the DISCONNECT.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// One spool record to publish: all messages of one reading.
#[derive(Debug)]
pub(crate) struct Job {
    /// Delivery's attempt number; reports carry it back.
    pub(crate) epoch: u64,
    /// The record's spool sequence number.
    pub(crate) seq: u64,
    /// Its messages (topics relative to the prefix).
    pub(crate) messages: Vec<Message>,
}

/// What the connection task tells delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Report {
    /// Every message of record `seq` was settled by the broker.
    Acked { epoch: u64, seq: u64 },
    /// The connection was lost (or never there): the attempt's unsettled records are not
    /// delivered.
    Lost { epoch: u64, reason: String },
    /// MQTT 5: the broker refused a message of record `seq` with a reason code that may pass
    /// later: the record stays spooled, delivery backs off.
    Refused {
        epoch: u64,
        seq: u64,
        /// The metrics' `reason` label.
        reason: &'static str,
        message: String,
    },
}

/// What a published message is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag {
    /// Message `idx` of spool record `seq`, sent in delivery attempt `epoch`.
    Data { epoch: u64, seq: u64, idx: u32 },
    /// Status or discovery: nobody waits for its ack.
    Control,
    /// The latest value of a value topic or a meter's availability ([`crate::latest`]):
    /// nobody waits for its ack either; a lost one is published again after the reconnect.
    Value,
}

/// A message handed to rumqttc: what [`Acks`] gives back when the broker answers.
#[derive(Debug, Clone)]
struct Sent {
    tag: Tag,
    topic: String,
    bytes: usize,
}

impl Sent {
    fn control() -> Sent {
        Sent {
            tag: Tag::Control,
            topic: String::new(),
            bytes: 0,
        }
    }
}

/// The client of one connection, in the configured protocol version.
enum Client {
    V311(AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

impl Client {
    /// `try_publish`; false when the request channel is full (or the event loop ended).
    fn try_publish(
        &self,
        topic: String,
        qos: rumqttc::QoS,
        retain: bool,
        payload: Vec<u8>,
    ) -> bool {
        match self {
            Client::V311(c) => c.try_publish(topic, qos, retain, payload).is_ok(),
            Client::V5(c) => c.try_publish(topic, qos5(qos), retain, payload).is_ok(),
        }
    }

    fn try_subscribe(&self, topic: String) -> bool {
        match self {
            Client::V311(c) => c.try_subscribe(topic, rumqttc::QoS::AtLeastOnce).is_ok(),
            Client::V5(c) => c
                .try_subscribe(topic, rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
                .is_ok(),
        }
    }

    fn try_disconnect(&self) -> bool {
        match self {
            Client::V311(c) => c.try_disconnect().is_ok(),
            Client::V5(c) => c.try_disconnect().is_ok(),
        }
    }
}

/// What the pollers of either protocol send the task.
pub(crate) enum Net {
    V311(Polled),
    /// Boxed: a v5 event is more than twice the size of a 3.1.1 one.
    V5(Box<Polled5>),
}

impl From<Polled> for Net {
    fn from(p: Polled) -> Net {
        Net::V311(p)
    }
}

impl From<Polled5> for Net {
    fn from(p: Polled5) -> Net {
        Net::V5(Box::new(p))
    }
}

/// An event of either protocol, as the task reads it.
enum Step {
    /// A 3.1.1 event, or the 3.1.1 equivalent of a v5 one.
    Event(Event),
    /// MQTT 5: the broker refused the message under `pkid`.
    Refused {
        pkid: u16,
        code: u8,
        name: String,
        reason_string: Option<String>,
    },
    /// Nothing for us.
    Ignore,
}

/// A message waiting to be published.
#[derive(Debug)]
struct Out {
    topic: String,
    payload: Vec<u8>,
    retain: bool,
    tag: Tag,
}

/// Token bucket for data messages.
#[derive(Debug)]
pub(crate) struct Bucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    pub(crate) fn new(rate: u32, now: Instant) -> Bucket {
        let rate = f64::from(rate.max(1));
        Bucket {
            rate,
            capacity: rate,
            tokens: rate,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.capacity);
        self.last = now;
    }

    /// Takes one token if there is one.
    pub(crate) fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// When the next token is there.
    pub(crate) fn next_at(&self) -> Instant {
        let missing = (1.0 - self.tokens).max(0.0);
        self.last + Duration::from_secs_f64(missing / self.rate)
    }
}

/// The live connection of the moment.
struct Live {
    client: Client,
    poller: JoinHandle<()>,
    connected: bool,
}

/// The connection task's inputs and outputs.
pub(crate) struct Connection {
    pub(crate) settings: Arc<MqttSettings>,
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
    pub(crate) jobs: mpsc::Receiver<Job>,
    pub(crate) reports: mpsc::Sender<Report>,
    pub(crate) state: watch::Sender<p1_mqtt_transport::LinkState>,
    pub(crate) discovery: Option<watch::Receiver<Arc<Configs>>>,
    /// Delivery's current attempt: data of older attempts (which delivery no longer waits
    /// for, and will send again) is dropped instead of published, so that nothing overtakes
    /// the resend.
    pub(crate) attempt: Arc<AtomicU64>,
    /// Clean stop: publish `offline`, disconnect, end.
    pub(crate) stop: CancellationToken,
    /// Hard stop: end at once.
    pub(crate) hard: CancellationToken,
    pub(crate) health: HealthHandle,
    pub(crate) name: String,
    /// The present: latest values and availability ([`crate::latest`]).
    pub(crate) latest: Arc<Latest>,
}

/// The task's own state, apart from its inputs.
struct Run {
    settings: Arc<MqttSettings>,
    qos: rumqttc::QoS,
    status_topic: String,
    ha_status_topic: Option<String>,
    live: Option<Live>,
    /// Messages handed to rumqttc and not settled yet, by packet id.
    acks: Acks<Sent>,
    /// MQTT 5: the largest packet the broker takes, from its CONNACK.
    max_packet: Option<u32>,
    /// Messages dropped for good (by spool sequence number and index), left out when their
    /// record is sent again after a reconnect.
    skip: HashMap<u64, HashSet<u32>>,
    /// Status and discovery topics whose message the broker refused as too large: not sent
    /// again by this task (they would be on every connect).
    skip_control: HashSet<String>,
    control: VecDeque<Out>,
    data: VecDeque<Out>,
    /// Unsettled messages per (epoch, seq).
    remaining: HashMap<(u64, u64), usize>,
    /// The newest delivery attempt seen.
    epoch: u64,
    /// Attempts up to this one lost their connection: their jobs still arriving are refused.
    dead_epoch: u64,
    bucket: Bucket,
    /// The configs on the broker as far as we know (kept across connections, so that
    /// removals made while offline are published after the reconnect).
    published: Configs,
    last_logged_error: Option<String>,
}

impl Connection {
    /// Runs until a clean stop (after `offline` and the DISCONNECT went out, or
    /// [`STOP_GRACE`]) or the hard stop.
    pub(crate) async fn run(mut self) {
        let (events_tx, mut events) = mpsc::channel::<Net>(256);
        let mut run = Run {
            qos: self.settings.qos.mqtt(),
            status_topic: self.settings.status_topic(),
            ha_status_topic: self
                .settings
                .discovery_prefix
                .as_ref()
                .map(|p| format!("{p}/status")),
            settings: self.settings.clone(),
            live: None,
            acks: Acks::new(),
            max_packet: None,
            skip: HashMap::new(),
            skip_control: HashSet::new(),
            control: VecDeque::new(),
            data: VecDeque::new(),
            remaining: HashMap::new(),
            epoch: 0,
            dead_epoch: 0,
            bucket: Bucket::new(self.settings.backlog_rate, Instant::now()),
            published: Configs::new(),
            last_logged_error: None,
        };
        let mut backoff = Backoff::new(self.settings.reconnect_min, self.settings.reconnect_max);
        let mut generation = 0_u64;
        let mut reconnect_at = Instant::now();
        let mut stopping: Option<Instant> = None;
        let mut jobs_open = true;
        // A meter's silence is noticed within a second.
        let mut silence = tokio::time::interval(Duration::from_secs(1));
        silence.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        loop {
            run.pump(&self);
            let connected = run.live.as_ref().is_some_and(|l| l.connected);
            let paced = connected
                && run.control.is_empty()
                && !run.data.is_empty()
                && run.outstanding() < WINDOW;
            let token_at = run.bucket.next_at();
            let take_jobs = jobs_open && stopping.is_none() && run.data.len() < QUEUE_LIMIT;
            let watch_discovery = connected && self.discovery.is_some();
            tokio::select! {
                biased;
                () = self.hard.cancelled() => break,
                () = self.stop.cancelled(), if stopping.is_none() => {
                    stopping = Some(Instant::now() + STOP_GRACE);
                    match &run.live {
                        Some(live) if live.connected => {
                            // Our own retained `offline`: a clean DISCONNECT suppresses the will.
                            let offline = live.client.try_publish(
                                run.status_topic.clone(), rumqttc::QoS::AtLeastOnce, true, b"offline".to_vec());
                            if offline {
                                run.acks.handed(Sent::control());
                            }
                            if !live.client.try_disconnect() {
                                break;
                            }
                        }
                        _ => break,
                    }
                }
                () = tokio::time::sleep_until(stopping.unwrap_or_else(Instant::now)), if stopping.is_some() => break,
                Some(net) = events.recv() => {
                    let (g, step) = match net {
                        Net::V311((g, event)) => (g, event.map(Step::Event).map_err(|e| describe(&e, &self.settings))),
                        Net::V5(polled) => {
                            // Only the live connection's events may touch its acks.
                            let (g, event) = *polled;
                            (g, match event {
                                _ if g != generation => Ok(Step::Ignore),
                                Ok(event) => Ok(run.read_v5(event)),
                                Err(e) => Err(run.v5_failed(&e, &self)),
                            })
                        }
                    };
                    if g != generation {
                        continue;
                    }
                    match step {
                        Ok(Step::Event(Event::Outgoing(Outgoing::Disconnect))) if stopping.is_some() => break,
                        Ok(Step::Event(event)) => {
                            if run.handle(event, &self) {
                                backoff.reset();
                            }
                        }
                        Ok(Step::Refused { pkid, code, name, reason_string }) => {
                            run.refused(pkid, code, &name, reason_string.as_deref(), &self);
                        }
                        Ok(Step::Ignore) => {}
                        Err(reason) => {
                            run.lost(&self, reason);
                            if stopping.is_some() {
                                break;
                            }
                            reconnect_at = Instant::now() + backoff.next_delay();
                        }
                    }
                }
                job = self.jobs.recv(), if take_jobs => {
                    let Some(job) = job else {
                        // Delivery is gone (the sink is ending); wait for the stop.
                        jobs_open = false;
                        continue;
                    };
                    run.accept(job, &self);
                }
                () = tokio::time::sleep_until(reconnect_at), if run.live.is_none() && stopping.is_none() => {
                    generation += 1;
                    let (client, poller) = match self.settings.protocol {
                        Protocol::V311 => {
                            let options = self.settings.options(self.tls.as_ref());
                            let (client, eventloop) = AsyncClient::new(options, REQUEST_CAPACITY);
                            (Client::V311(client), tokio::spawn(poll_events(generation, eventloop, events_tx.clone())))
                        }
                        Protocol::V5 => {
                            let options = self.settings.options_v5(self.tls.as_ref());
                            let (client, eventloop) = rumqttc::v5::AsyncClient::new(options, REQUEST_CAPACITY);
                            (Client::V5(client), tokio::spawn(poll_events_v5(generation, eventloop, events_tx.clone())))
                        }
                    };
                    tracing::debug!(sink = %self.name, broker = %self.settings.broker(), "Connecting to the MQTT broker.");
                    run.live = Some(Live { client, poller, connected: false });
                }
                () = tokio::time::sleep_until(token_at), if paced => {}
                () = self.latest.changed.notified(), if connected => {
                    run.queue_latest(&self);
                }
                _ = silence.tick() => {
                    self.latest.check_silence(Instant::now());
                }
                changed = wait_changed(self.discovery.as_mut()), if watch_discovery => {
                    if changed {
                        run.queue_config_changes(&self);
                    } else {
                        self.discovery = None;
                    }
                }
            }
        }
        if let Some(live) = run.live.take() {
            live.poller.abort();
        }
        self.state.send_modify(|s| s.connected = false);
    }
}

/// Waits for a change of the discovery model; false when its sender is gone.
async fn wait_changed(rx: Option<&mut watch::Receiver<Arc<Configs>>>) -> bool {
    match rx {
        Some(rx) => rx.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

impl Run {
    fn outstanding(&self) -> usize {
        self.acks.len()
    }

    /// Hands queued messages to rumqttc: control first, data as the bucket allows.
    fn pump(&mut self, cx: &Connection) {
        if !self.live.as_ref().is_some_and(|l| l.connected) {
            return;
        }
        while self.outstanding() < WINDOW {
            let now = Instant::now();
            let out = if let Some(out) = self.control.pop_front() {
                if self.skip_control.contains(&out.topic) {
                    continue;
                }
                out
            } else if let Some(stale) = self.data.front().and_then(|out| match out.tag {
                Tag::Data { epoch, seq, .. } if epoch < cx.attempt.load(Ordering::Acquire) => {
                    Some((epoch, seq))
                }
                _ => None,
            }) {
                // Abandoned by delivery, which sends it again: never publish it ahead.
                self.data.pop_front();
                self.remaining.remove(&stale);
                continue;
            } else if !self.data.is_empty() && self.bucket.try_take(now) {
                match self.data.pop_front() {
                    Some(out) => out,
                    None => break,
                }
            } else {
                break;
            };
            let qos = match out.tag {
                // Status and discovery always at least once, whatever the readings use.
                Tag::Control => rumqttc::QoS::AtLeastOnce,
                Tag::Data { .. } | Tag::Value => self.qos,
            };
            if self.settings.protocol == Protocol::V311 {
                let size = packet_size_v4(&out.topic, qos, &out.payload);
                let max = crate::config::MAX_PACKET_BYTES as u64;
                if size > max {
                    // rumqttc would end the connection over it (`OutgoingPacketTooLarge`), on
                    // every reconnect: it can never be sent.
                    let sent = Sent {
                        tag: out.tag,
                        topic: out.topic,
                        bytes: out.payload.len(),
                    };
                    let why = format!(
                        "too large: a {size}-byte packet, an MQTT 3.1.1 packet p1gw sends is at most {max} bytes"
                    );
                    self.drop_message(sent, "too_large", &why, cx);
                    continue;
                }
            }
            if let Some(max) = self.max_packet {
                let size = packet_size_v5(&out.topic, qos, &out.payload);
                if size > u64::from(max) {
                    // The broker said it takes no packet this large: it never will.
                    let sent = Sent {
                        tag: out.tag,
                        topic: out.topic,
                        bytes: out.payload.len(),
                    };
                    let why = format!(
                        "too large: a {size}-byte packet, the broker takes at most {max} bytes (its CONNACK's maximum packet size)"
                    );
                    self.drop_message(sent, "too_large", &why, cx);
                    continue;
                }
            }
            if self.live.as_ref().is_some_and(|live| {
                live.client
                    .try_publish(out.topic.clone(), qos, out.retain, out.payload.clone())
            }) {
                self.acks.handed(Sent {
                    tag: out.tag,
                    topic: out.topic,
                    bytes: out.payload.len(),
                });
            } else {
                {
                    // The request channel is full (or the event loop just ended, which its
                    // error event reports): try again after the next event.
                    tracing::debug!(sink = %cx.name, "MQTT request channel full; waiting.");
                    match out.tag {
                        Tag::Control | Tag::Value => self.control.push_front(out),
                        Tag::Data { .. } => self.data.push_front(out),
                    }
                    break;
                }
            }
        }
    }

    /// Takes a job from delivery.
    fn accept(&mut self, job: Job, cx: &Connection) {
        self.epoch = self.epoch.max(job.epoch);
        let connected = self.live.as_ref().is_some_and(|l| l.connected);
        if job.epoch < cx.attempt.load(Ordering::Acquire) {
            // Delivery gave up on this attempt; it sends the record again.
            return;
        }
        if !connected || job.epoch <= self.dead_epoch {
            let reason = cx
                .state
                .borrow()
                .last_error
                .clone()
                .unwrap_or_else(|| "not connected to the broker yet".to_owned());
            report(
                cx,
                Report::Lost {
                    epoch: job.epoch,
                    reason,
                },
            );
            return;
        }
        if job.messages.is_empty() {
            report(
                cx,
                Report::Acked {
                    epoch: job.epoch,
                    seq: job.seq,
                },
            );
            return;
        }
        let skip = self.skip.get(&job.seq);
        let mut count = 0;
        for (idx, m) in job.messages.into_iter().enumerate() {
            let idx = u32::try_from(idx).unwrap_or(u32::MAX);
            if skip.is_some_and(|s| s.contains(&idx)) {
                // Dropped for good (and counted) when first refused.
                continue;
            }
            count += 1;
            self.data.push_back(Out {
                topic: format!("{}/{}", self.settings.topic_prefix, m.topic),
                payload: m.payload,
                retain: m.retain,
                tag: Tag::Data {
                    epoch: job.epoch,
                    seq: job.seq,
                    idx,
                },
            });
        }
        if count == 0 {
            self.skip.remove(&job.seq);
            report(
                cx,
                Report::Acked {
                    epoch: job.epoch,
                    seq: job.seq,
                },
            );
            return;
        }
        self.remaining.insert((job.epoch, job.seq), count);
    }

    /// Handles one event of the live connection; true on a CONNACK.
    fn handle(&mut self, event: Event, cx: &Connection) -> bool {
        if let Some(sent) = self.acks.on_event(&event) {
            self.settle(sent.tag, cx);
            return false;
        }
        match event {
            Event::Incoming(Incoming::ConnAck(ack)) => {
                if let Some(live) = &mut self.live {
                    live.connected = true;
                }
                tracing::info!(sink = %cx.name, broker = %self.settings.broker(), session_present = ack.session_present, "Connected to the MQTT broker.");
                self.last_logged_error = None;
                cx.state.send_modify(|s| s.connected = true);
                cx.health.ok();
                self.on_connect(cx);
                return true;
            }
            Event::Incoming(Incoming::Publish(p))
                if self.ha_status_topic.as_deref() == Some(p.topic.as_str())
                    && p.payload.as_ref() == b"online" =>
            {
                tracing::info!(sink = %cx.name, "Home Assistant is online; publishing discovery again.");
                self.queue_all_configs(cx);
            }
            _ => {}
        }
        false
    }

    /// One message of `tag` is settled.
    fn settle(&mut self, tag: Tag, cx: &Connection) {
        let Tag::Data { epoch, seq, .. } = tag else {
            return;
        };
        let key = (epoch, seq);
        let done = match self.remaining.get_mut(&key) {
            Some(n) => {
                *n = n.saturating_sub(1);
                *n == 0
            }
            None => false,
        };
        if done {
            self.remaining.remove(&key);
            self.skip.remove(&seq);
            report(cx, Report::Acked { epoch, seq });
        }
    }

    /// The MQTT 5 connection ended with `e`: its description, after dropping the message a
    /// PUBACK 0x95 that rumqttc could not read refused (see the module docs).
    fn v5_failed(&mut self, e: &rumqttc::v5::ConnectionError, cx: &Connection) -> String {
        use rumqttc::v5::mqttbytes::Error as MqttError;
        use rumqttc::v5::{ConnectionError as C5, StateError as S5};
        if let C5::MqttState(S5::Deserialization(MqttError::InvalidConnectReturnCode(0x95))) = e
            && let Some(sent) = self.acks.oldest_inflight().cloned()
        {
            let why = "the broker refused it: packet too large (reason code 0x95; e.g. Mosquitto's message_size_limit)".to_owned();
            let reason = format!(
                "the broker {} refused the message on {} ({} bytes) as too large (PUBACK 0x95, which ends rumqttc's connection); dropped it, reconnecting",
                cx.settings.broker(),
                sent.topic,
                sent.bytes
            );
            self.drop_message(sent, "too_large", &why, cx);
            return reason;
        }
        describe_v5(e, &cx.settings)
    }

    /// MQTT 5: the broker answered the message under `pkid` with failure reason `code`.
    fn refused(
        &mut self,
        pkid: u16,
        code: u8,
        name: &str,
        reason_string: Option<&str>,
        cx: &Connection,
    ) {
        let Some(sent) = self.acks.acked(pkid) else {
            return;
        };
        let said = match reason_string {
            Some(r) => format!("{name} (reason code 0x{code:02x}: {r})"),
            None => format!("{name} (reason code 0x{code:02x})"),
        };
        let Tag::Data { epoch, seq, .. } = sent.tag else {
            tracing::warn!(sink = %cx.name, topic = %sent.topic, reason = %said, "The broker refused a status or discovery message.");
            return;
        };
        if code == 0x99 {
            // Payload format invalid: the same bytes never pass.
            let why = format!("the broker refused it: {said}");
            self.drop_message(sent, "rejected", &why, cx);
            return;
        }
        // May pass later (ACL, quota, topic, broker trouble): keep it spooled, back off.
        self.remaining.remove(&(epoch, seq));
        let label = match code {
            0x87 => "not_authorized",
            0x97 => "quota",
            0x90 => "topic",
            _ => "refused",
        };
        let hint = match code {
            0x87 => " (check the broker's ACL for this user and topic)",
            0x90 => " (check topic_prefix)",
            _ => "",
        };
        let message = format!(
            "the broker {} refused a message on {} ({} bytes): {said}{hint}; the reading stays spooled",
            self.settings.broker(),
            sent.topic,
            sent.bytes
        );
        cx.health.degraded(format!("MQTT: {message}"));
        report(
            cx,
            Report::Refused {
                epoch,
                seq,
                reason: label,
                message,
            },
        );
    }

    /// A message the broker will never take: logged at ERROR, counted, settled, and left
    /// out of its record's resends.
    fn drop_message(&mut self, sent: Sent, reason: &'static str, why: &str, cx: &Connection) {
        let message = format!(
            "MQTT message on {} ({} bytes) dropped: {why}",
            sent.topic, sent.bytes
        );
        tracing::error!(sink = %cx.name, topic = %sent.topic, bytes = sent.bytes, reason, error = %why, "The broker will never take this MQTT message; dropped.");
        metrics::counter!("p1gw_sink_dropped_total", "sink" => cx.name.clone(), "reason" => reason)
            .increment(1);
        cx.health.add_counter("dropped", 1);
        cx.health.error(message);
        match sent.tag {
            Tag::Data { seq, idx, .. } => {
                self.skip.entry(seq).or_default().insert(idx);
                self.settle(sent.tag, cx);
            }
            Tag::Control => {
                self.skip_control.insert(sent.topic);
            }
            // The next value on the topic replaces it.
            Tag::Value => {}
        }
    }

    /// After a CONNACK: `online`, the subscription to Home Assistant's status, every config.
    fn on_connect(&mut self, cx: &Connection) {
        self.control.push_back(Out {
            topic: self.status_topic.clone(),
            payload: b"online".to_vec(),
            retain: true,
            tag: Tag::Control,
        });
        if let (Some(topic), Some(live)) = (&self.ha_status_topic, &self.live)
            && !live.client.try_subscribe(topic.clone())
        {
            tracing::warn!(sink = %cx.name, "Could not subscribe to Home Assistant's status topic.");
        }
        self.queue_all_configs(cx);
        // The present, all of it, ahead of any backlog: every entity current at once.
        cx.latest.all_dirty();
        self.queue_latest(cx);
    }

    /// The latest values not yet handed to the broker, as control messages: unpaced, ahead of
    /// the backlog, at the readings' QoS.
    fn queue_latest(&mut self, cx: &Connection) {
        for (topic, payload, retain) in cx.latest.take_dirty() {
            self.control.push_back(Out {
                topic: format!("{}/{topic}", self.settings.topic_prefix),
                payload,
                retain,
                tag: Tag::Value,
            });
        }
    }

    /// Every config, and an empty one for each removed entity not yet cleared.
    fn queue_all_configs(&mut self, cx: &Connection) {
        let Some(rx) = &cx.discovery else { return };
        let desired = rx.borrow().clone();
        let removed: Vec<String> = self
            .published
            .keys()
            .filter(|t| !desired.contains_key(*t))
            .cloned()
            .collect();
        for topic in removed {
            self.control.push_back(config_out(topic, Vec::new()));
        }
        for (topic, payload) in desired.iter() {
            self.control
                .push_back(config_out(topic.clone(), payload.as_bytes().to_vec()));
        }
        self.published = (*desired).clone();
    }

    /// Only what changed since the last publication.
    fn queue_config_changes(&mut self, cx: &Connection) {
        let Some(rx) = &cx.discovery else { return };
        let desired = rx.borrow().clone();
        for (topic, payload) in desired.iter() {
            if self.published.get(topic) != Some(payload) {
                self.control
                    .push_back(config_out(topic.clone(), payload.as_bytes().to_vec()));
            }
        }
        let removed: Vec<String> = self
            .published
            .keys()
            .filter(|t| !desired.contains_key(*t))
            .cloned()
            .collect();
        for topic in removed {
            tracing::info!(sink = %cx.name, topic, "A value is gone; removing its Home Assistant entity.");
            self.control.push_back(config_out(topic, Vec::new()));
        }
        self.published = (*desired).clone();
    }

    /// The connection failed: every unsettled record of the attempt is lost to this
    /// connection (it stays spooled), state and health say why.
    fn lost(&mut self, cx: &Connection, reason: String) {
        if let Some(live) = self.live.take() {
            live.poller.abort();
        }
        let had_data = !self.remaining.is_empty();
        self.dead_epoch = self.epoch;
        self.max_packet = None;
        self.acks.clear();
        self.control.clear();
        self.data.clear();
        self.remaining.clear();
        if had_data {
            report(
                cx,
                Report::Lost {
                    epoch: self.epoch,
                    reason: reason.clone(),
                },
            );
        }
        p1_mqtt_transport::mark_lost(
            &cx.state,
            &mut self.last_logged_error,
            &cx.health,
            &cx.name,
            "MQTT",
            &reason,
        );
    }
}

fn config_out(topic: String, payload: Vec<u8>) -> Out {
    Out {
        topic,
        payload,
        retain: true,
        tag: Tag::Control,
    }
}

fn report(cx: &Connection, report: Report) {
    // The channel holds more than delivery can have outstanding; a full one would mean a
    // record is resent (a duplicate), never lost.
    if cx.reports.try_send(report).is_err() {
        tracing::debug!(sink = %cx.name, "Delivery is not listening for MQTT acks.");
    }
}

/// A one-line reason for a failed connection, with a hint where one helps. No secrets.
pub(crate) fn describe(e: &ConnectionError, settings: &MqttSettings) -> String {
    use rumqttc::ConnectReturnCode as Code;
    let broker = settings.broker();
    match e {
        ConnectionError::ConnectionRefused(Code::BadUserNamePassword) => format!(
            "the broker {broker} refused the login: bad user name or password (check {})",
            settings.credentials_hint
        ),
        ConnectionError::ConnectionRefused(Code::NotAuthorized) => format!(
            "the broker {broker} refused the connection: not authorized (check {}, and the broker's ACL)",
            settings.credentials_hint
        ),
        ConnectionError::ConnectionRefused(Code::BadClientId) => format!(
            "the broker {broker} refused the client id {:?}",
            settings.client_id
        ),
        ConnectionError::ConnectionRefused(code) => {
            format!("the broker {broker} refused the connection: {code:?}")
        }
        ConnectionError::Io(io) => format!("cannot reach the broker {broker}: {io}"),
        ConnectionError::Tls(tls) => format!("TLS with the broker {broker} failed: {tls}"),
        ConnectionError::NetworkTimeout => {
            format!("no answer from the broker {broker} in time")
        }
        ConnectionError::MqttState(rumqttc::StateError::AwaitPingResp) => {
            format!("the broker {broker} stopped answering (keep-alive ping not acknowledged)")
        }
        ConnectionError::MqttState(state) => {
            format!("connection to the broker {broker} lost: {state}")
        }
        other => format!("connection to the broker {broker} failed: {other}"),
    }
}

/// The size of the MQTT 3.1.1 PUBLISH packet rumqttc makes of this message, as its
/// outgoing packet limit counts it.
pub(crate) fn packet_size_v4(topic: &str, qos: rumqttc::QoS, payload: &[u8]) -> u64 {
    let mut publish = rumqttc::Publish::new(topic, qos, payload.to_vec());
    if qos != rumqttc::QoS::AtMostOnce {
        publish.pkid = 1;
    }
    u64::try_from(publish.size()).unwrap_or(u64::MAX)
}
