//! The connection task: owns the device's one MQTT connection to the hub, publishes the
//! messages delivery hands it, maps PUBACKs back to them, renews the SAS token before it
//! expires, and reconnects with backoff.
//!
//! # One client per connection
//!
//! Each connection gets a fresh rumqttc `AsyncClient` + `EventLoop` whose event loop runs in
//! its own poller task ([`p1_mqtt_transport::poll_events`]) until its first error. Nothing
//! queued for an old connection can leak into a new one, and rumqttc's own resend queue is
//! never used: the spool (and, across a token renewal, this task's own queue) is the only
//! resend queue. IoT Hub allows one connection per device id; a second one would close the
//! first, so there is never more than one.
//!
//! # Token renewal
//!
//! IoT Hub closes a connection when its SAS token expires. A token is made for each connection,
//! valid `token_lifetime`; at 80 % of it the task *renews*: it hands rumqttc nothing new (new
//! messages wait in its queue), waits for the PUBACKs of the messages in flight, sends a clean
//! DISCONNECT, and connects again at once with a fresh token. A message whose PUBACK has not
//! arrived by 90 % of the lifetime is not waited for: the DISCONNECT goes out, the message goes
//! back to the front of the queue, and it is published once more on the new connection. Events
//! of the old connection are ignored from then on, so a late PUBACK cannot settle it a second
//! time: the message is re-sent exactly once (the hub may then have it twice: IoT Hub delivery
//! is at-least-once). Renewals are not failures: delivery keeps waiting for its acks and
//! nothing is logged above DEBUG.
//!
//! # Lost connections
//!
//! When the hub drops the connection (network, token expired anyway, quota, a second
//! connection for the device), every unsettled message of the current delivery attempt is
//! reported [`Report::Lost`]; delivery returns what was acknowledged and sends the rest again
//! from the spool after the reconnect, which backs off (capped, jittered) here, since rumqttc
//! would retry at once (docs/dependencies.md §2.2).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use p1_core::{Backoff, HealthHandle};
use p1_mqtt_transport::{Acks, Polled, poll_events};
use rumqttc::{AsyncClient, ConnectionError, Event, Incoming, Outgoing, QoS};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::AzureSettings;
use crate::config::{Auth, Device};

/// rumqttc's in-flight limit (packet ids 1..=this).
pub(crate) const MAX_INFLIGHT: u16 = 32;
/// rumqttc's request channel.
pub(crate) const REQUEST_CAPACITY: usize = 64;
/// Messages handed to rumqttc and not yet settled, at most (below [`MAX_INFLIGHT`], so packet
/// ids are not reused while in flight).
const WINDOW: usize = 16;
/// How long a clean stop waits for the DISCONNECT to go out.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// Renew at this share of the token's lifetime…
const RENEW_AT: f64 = 0.8;
/// …and stop waiting for PUBACKs at this share, or this long after the renewal began.
const DRAIN_UNTIL: f64 = 0.9;
const DRAIN_MAX: Duration = Duration::from_secs(10);

/// One message to publish: the readings of spool records up to `last`.
#[derive(Debug)]
pub(crate) struct Job {
    /// Delivery's attempt number; reports carry it back.
    pub(crate) epoch: u64,
    /// The last spool record in the message.
    pub(crate) last: u64,
    /// The body.
    pub(crate) payload: Vec<u8>,
}

/// What the connection task tells delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Report {
    /// The hub acknowledged the message ending with record `last`.
    Acked { epoch: u64, last: u64 },
    /// The connection was lost (or never there): the attempt's unsettled messages are not
    /// delivered.
    Lost { epoch: u64, reason: String },
}

/// The message `id` of attempt `epoch`.
type Key = (u64, u64);

/// A message waiting to be published, or in flight.
#[derive(Debug, Clone)]
struct Out {
    key: Key,
    payload: Arc<Vec<u8>>,
}

/// The live connection of the moment.
struct Live {
    client: AsyncClient,
    poller: JoinHandle<()>,
    connected: bool,
    /// When to start renewing, and when to stop waiting for PUBACKs (SAS only).
    renew_at: Option<Instant>,
    drain_until: Option<Instant>,
    /// Renewing: nothing new is handed to rumqttc.
    renewing: bool,
    /// The DISCONNECT was requested.
    disconnecting: bool,
}

/// The connection task's inputs and outputs.
pub(crate) struct Connection {
    pub(crate) settings: Arc<AzureSettings>,
    pub(crate) device: Device,
    pub(crate) tls: Arc<rustls::ClientConfig>,
    /// The events topic with its property bag.
    pub(crate) topic: String,
    pub(crate) jobs: mpsc::Receiver<Job>,
    pub(crate) reports: mpsc::Sender<Report>,
    pub(crate) state: watch::Sender<p1_mqtt_transport::LinkState>,
    /// Delivery's current attempt: messages of older attempts (which delivery no longer waits
    /// for, and will send again) are dropped instead of published.
    pub(crate) attempt: Arc<AtomicU64>,
    /// Clean stop: disconnect, end.
    pub(crate) stop: CancellationToken,
    /// Hard stop: end at once.
    pub(crate) hard: CancellationToken,
    pub(crate) health: HealthHandle,
    pub(crate) name: String,
}

/// The task's own state, apart from its inputs.
struct Run {
    live: Option<Live>,
    /// Messages handed to rumqttc and not settled, by packet id.
    acks: Acks<Key>,
    /// Messages handed and not settled, for a resend after a renewal.
    unsettled: HashMap<Key, Out>,
    /// Messages not handed to rumqttc yet, oldest first.
    queue: VecDeque<Out>,
    /// The newest delivery attempt seen.
    epoch: u64,
    /// Attempts up to this one lost their connection: their jobs still arriving are refused.
    dead_epoch: u64,
    last_logged_error: Option<String>,
    /// The connection being set up replaces one closed for a token renewal.
    renewal: bool,
}

impl Connection {
    /// Runs until a clean stop (after the DISCONNECT went out, or [`STOP_GRACE`]) or the hard
    /// stop.
    pub(crate) async fn run(mut self) {
        let (events_tx, mut events) = mpsc::channel::<Polled>(256);
        let mut run = Run {
            live: None,
            acks: Acks::new(),
            unsettled: HashMap::new(),
            queue: VecDeque::new(),
            epoch: 0,
            dead_epoch: 0,
            last_logged_error: None,
            renewal: false,
        };
        let mut backoff = Backoff::new(self.settings.reconnect_min, self.settings.reconnect_max);
        let mut generation = 0_u64;
        let mut reconnect_at = Instant::now();
        let mut stopping: Option<Instant> = None;
        let mut jobs_open = true;

        loop {
            run.pump(&self);
            let connected = run.live.as_ref().is_some_and(|l| l.connected);
            let renew_at = run
                .live
                .as_ref()
                .filter(|l| l.connected && !l.renewing)
                .and_then(|l| l.renew_at);
            let drain_until = run
                .live
                .as_ref()
                .filter(|l| l.renewing && !l.disconnecting)
                .and_then(|l| l.drain_until);
            let take_jobs = jobs_open && stopping.is_none();
            tokio::select! {
                biased;
                () = self.hard.cancelled() => break,
                () = self.stop.cancelled(), if stopping.is_none() => {
                    stopping = Some(Instant::now() + STOP_GRACE);
                    match &run.live {
                        Some(live) if connected => {
                            if live.client.try_disconnect().is_err() {
                                break;
                            }
                        }
                        _ => break,
                    }
                }
                () = tokio::time::sleep_until(stopping.unwrap_or_else(Instant::now)), if stopping.is_some() => break,
                Some((g, event)) = events.recv() => {
                    if g != generation {
                        continue;
                    }
                    let renewing = run.live.as_ref().is_some_and(|l| l.disconnecting);
                    match event {
                        Ok(Event::Outgoing(Outgoing::Disconnect)) if stopping.is_some() => break,
                        Ok(Event::Outgoing(Outgoing::Disconnect)) if renewing => {
                            run.renewed(&self);
                            reconnect_at = Instant::now();
                        }
                        Ok(event) => {
                            if run.handle(event, &self) {
                                backoff.reset();
                            }
                        }
                        // The hub may close first; the DISCONNECT was on its way anyway.
                        Err(_) if renewing => {
                            run.renewed(&self);
                            reconnect_at = Instant::now();
                        }
                        Err(e) => {
                            let reason = describe(&e, &self.device);
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
                    run.live = Some(self.connect(generation, &events_tx));
                }
                () = tokio::time::sleep_until(renew_at.unwrap_or_else(Instant::now)), if renew_at.is_some() => {
                    tracing::debug!(sink = %self.name, "Renewing the SAS token: finishing in-flight messages, then reconnecting.");
                    if let Some(live) = &mut run.live {
                        live.renewing = true;
                    }
                }
                () = tokio::time::sleep_until(drain_until.unwrap_or_else(Instant::now)), if drain_until.is_some() => {
                    tracing::debug!(sink = %self.name, unacked = run.acks.len(), "No PUBACK before the token renewal; those messages are sent again.");
                    run.disconnect_for_renewal(&self);
                }
            }
        }
        if let Some(live) = run.live.take() {
            live.poller.abort();
        }
        self.state.send_modify(|s| s.connected = false);
    }

    /// Starts connection `generation`: a fresh token, client and event loop.
    fn connect(&self, generation: u64, events: &mpsc::Sender<Polled>) -> Live {
        let (password, renew_at, drain_until) = match &self.device.auth {
            Auth::Key(key) => {
                let now = self.settings.clock.now();
                let now_secs = now
                    .duration_since(std::time::SystemTime::UNIX_EPOCH)
                    .unwrap_or_default();
                let expiry = (now_secs + self.settings.token_lifetime).as_secs();
                // Whole seconds: the token may live up to a second less than configured.
                let left = Duration::from_secs(expiry).saturating_sub(now_secs);
                let token = crate::sas::token(&self.device.conn.resource_uri(), key, expiry);
                let start = Instant::now();
                let renew = start + left.mul_f64(RENEW_AT);
                let drain = (start + left.mul_f64(DRAIN_UNTIL)).min(renew + DRAIN_MAX);
                (Some(token), Some(renew), Some(drain))
            }
            Auth::X509 => (None, None, None),
        };
        let options = self.device.options(&self.settings, &self.tls, password);
        let (client, eventloop) = AsyncClient::new(options, REQUEST_CAPACITY);
        let poller = tokio::spawn(poll_events(generation, eventloop, events.clone()));
        tracing::debug!(sink = %self.name, host = self.device.conn.connect_host(), port = self.settings.port, "Connecting to IoT Hub.");
        Live {
            client,
            poller,
            connected: false,
            renew_at,
            drain_until,
            renewing: false,
            disconnecting: false,
        }
    }
}

impl Run {
    /// Hands queued messages to rumqttc, unless renewing; asks for the renewal's DISCONNECT
    /// once nothing is in flight.
    fn pump(&mut self, cx: &Connection) {
        let Some(live) = self.live.as_ref().filter(|l| l.connected) else {
            return;
        };
        if live.renewing {
            if !live.disconnecting && self.acks.is_empty() {
                self.disconnect_for_renewal(cx);
            }
            return;
        }
        while self.acks.len() < WINDOW {
            let Some(out) = self.queue.pop_front() else {
                break;
            };
            if out.key.0 < cx.attempt.load(Ordering::Acquire) {
                // Abandoned by delivery, which sends it again: never publish it ahead.
                continue;
            }
            match live.client.try_publish(
                cx.topic.clone(),
                QoS::AtLeastOnce,
                false,
                out.payload.as_ref().clone(),
            ) {
                Ok(()) => {
                    self.acks.handed(out.key);
                    self.unsettled.insert(out.key, out);
                }
                Err(_) => {
                    // The request channel is full (or the event loop just ended, which its
                    // error event reports): try again after the next event.
                    self.queue.push_front(out);
                    break;
                }
            }
        }
    }

    /// Sends the renewal's DISCONNECT (now, whatever is still in flight).
    fn disconnect_for_renewal(&mut self, cx: &Connection) {
        let Some(live) = &mut self.live else { return };
        live.renewing = true;
        live.disconnecting = true;
        if live.client.try_disconnect().is_err() {
            // The event loop is gone; its error event ends the connection as a renewal.
            tracing::debug!(sink = %cx.name, "Could not request the renewal's DISCONNECT.");
        }
    }

    /// The renewal's DISCONNECT went out (or the connection ended meanwhile): forget this
    /// connection, put the messages still in flight back in front of the queue.
    fn renewed(&mut self, cx: &Connection) {
        if let Some(live) = self.live.take() {
            live.poller.abort();
        }
        let mut resend: Vec<Out> = self
            .acks
            .clear()
            .into_iter()
            .filter_map(|key| self.unsettled.remove(&key))
            .collect();
        self.unsettled.clear();
        resend.sort_by_key(|o| o.key);
        for out in resend.into_iter().rev() {
            self.queue.push_front(out);
        }
        self.renewal = true;
        cx.state.send_modify(|s| s.connected = false);
    }

    /// Takes a job from delivery.
    fn accept(&mut self, job: Job, cx: &Connection) {
        self.epoch = self.epoch.max(job.epoch);
        if job.epoch < cx.attempt.load(Ordering::Acquire) {
            // Delivery gave up on this attempt; it sends the record again.
            return;
        }
        // A connection that is up, renewing or being set up takes the message into its queue
        // (a failure then reports it lost); without one, it is lost to this attempt at once.
        if self.live.is_none() || job.epoch <= self.dead_epoch {
            let reason = cx
                .state
                .borrow()
                .last_error
                .clone()
                .unwrap_or_else(|| "not connected to IoT Hub yet".to_owned());
            report(
                cx,
                Report::Lost {
                    epoch: job.epoch,
                    reason,
                },
            );
            return;
        }
        self.queue.push_back(Out {
            key: (job.epoch, job.last),
            payload: Arc::new(job.payload),
        });
    }

    /// Handles one event of the live connection; true on a CONNACK.
    fn handle(&mut self, event: Event, cx: &Connection) -> bool {
        if let Some(key) = self.acks.on_event(&event) {
            if self.unsettled.remove(&key).is_some() {
                report(
                    cx,
                    Report::Acked {
                        epoch: key.0,
                        last: key.1,
                    },
                );
            }
            return false;
        }
        if let Event::Incoming(Incoming::ConnAck(_)) = event {
            let renewal = std::mem::take(&mut self.renewal);
            if let Some(live) = &mut self.live {
                live.connected = true;
            }
            if renewal {
                tracing::debug!(sink = %cx.name, "Reconnected to IoT Hub with a fresh token.");
            } else {
                tracing::info!(sink = %cx.name, host = cx.device.conn.connect_host(), device = %cx.device.conn.client_id(), "Connected to IoT Hub.");
            }
            self.last_logged_error = None;
            cx.state.send_modify(|s| {
                s.connected = true;
                s.last_error = None;
            });
            cx.health.ok();
            return true;
        }
        false
    }

    /// The connection failed: every unsettled message of the attempt is lost to this
    /// connection (it stays spooled), state and health say why.
    fn lost(&mut self, cx: &Connection, reason: String) {
        if let Some(live) = self.live.take() {
            live.poller.abort();
        }
        let had_data = !self.unsettled.is_empty() || !self.queue.is_empty();
        self.dead_epoch = self.epoch;
        self.renewal = false;
        self.acks.clear();
        self.unsettled.clear();
        self.queue.clear();
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
            "IoT Hub",
            &reason,
        );
    }
}

fn report(cx: &Connection, report: Report) {
    // The channel holds more than delivery can have outstanding; a full one would mean a
    // message is resent (a duplicate), never lost.
    if cx.reports.try_send(report).is_err() {
        tracing::debug!(sink = %cx.name, "Delivery is not listening for IoT Hub acks.");
    }
}

/// A one-line reason for a failed connection, with a hint where one helps. No secrets.
pub(crate) fn describe(e: &ConnectionError, device: &Device) -> String {
    use rumqttc::ConnectReturnCode as Code;
    let hub = device.conn.connect_host();
    let id = device.conn.client_id();
    let credentials = match device.auth {
        Auth::Key(_) => {
            "check DeviceId and SharedAccessKey in the connection string, and the system clock (tokens carry an expiry time)"
        }
        Auth::X509 => "check DeviceId and that the device's certificate is registered with the hub",
    };
    match e {
        ConnectionError::ConnectionRefused(Code::NotAuthorized | Code::BadUserNamePassword) => {
            format!("IoT Hub {hub} refused device {id:?}: not authorized ({credentials})")
        }
        ConnectionError::ConnectionRefused(Code::BadClientId) => {
            format!("IoT Hub {hub} refused the client id {id:?}")
        }
        ConnectionError::ConnectionRefused(Code::ServiceUnavailable) => {
            format!("IoT Hub {hub} is unavailable (or the hub's daily message quota is used up)")
        }
        ConnectionError::ConnectionRefused(code) => {
            format!("IoT Hub {hub} refused the connection: {code:?}")
        }
        ConnectionError::Io(io) => format!("cannot reach IoT Hub {hub}: {io}"),
        ConnectionError::Tls(tls) => format!("TLS with IoT Hub {hub} failed: {tls}"),
        ConnectionError::NetworkTimeout => format!("no answer from IoT Hub {hub} in time"),
        ConnectionError::MqttState(rumqttc::StateError::AwaitPingResp) => {
            format!("IoT Hub {hub} stopped answering (keep-alive ping not acknowledged)")
        }
        ConnectionError::MqttState(state) => {
            format!("connection to IoT Hub {hub} lost: {state}")
        }
        other => format!("connection to IoT Hub {hub} failed: {other}"),
    }
}
