//! The health registry: what every long-running component says about itself.
//!
//! Each component (the reader of each meter, each sink worker, the HTTP server) gets a
//! [`HealthHandle`] from [`Registry::register`] and reports through it: its [`State`], successes
//! (a reader: a telegram decoded; a sink: a batch acknowledged), errors, its spool depth. The
//! HTTP layer only looks: [`Registry::snapshot`] for the live page and `/api`, and
//! [`Registry::ready`] for `/readyz` (docs/contracts.md §6).
//!
//! # How it is built, and why
//!
//! Each handle owns a `tokio::sync::watch` sender of its [`ComponentStatus`]; the registry keeps
//! the receivers. Reporting is a `send_modify` (a short write lock, no allocation for most
//! updates, never `.await`), reading is a `borrow()` clone. No lock is ever held across an
//! `.await`, and a slow HTTP client cannot slow a component down. The registry's own list is a
//! `std::sync::Mutex` taken only to register or to copy the receivers.
//!
//! When every clone of a handle is gone (its task returned or panicked) while the component
//! was not [`State::Stopped`], the registry reports it as failed ("stopped reporting"), so a
//! dead worker shows in `/readyz` even though it can no longer say so itself. Its name may then
//! be registered again by the restarted worker.
//!
//! # Time
//!
//! Each event keeps two clocks ([`Stamp`]): a `tokio::time::Instant` for ages and the readiness
//! window (monotonic, and paused in tests), and a `SystemTime` only for display, serialised as
//! RFC 3339 UTC with milliseconds.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::{Error, Result};

#[cfg(test)]
mod tests;

/// A reader is ready while its last telegram is younger than this many expected intervals.
pub const READY_INTERVALS: u32 = 3;

/// What a component is; readiness rules differ per kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ComponentKind {
    /// Reads a meter; must produce telegrams for the gateway to be ready.
    Reader,
    /// Delivers readings to a backend; must be delivering or spooling.
    Sink,
    /// The HTTP server.
    Http,
    /// Anything else; only a [`State::Failed`] one makes the gateway unready.
    Other,
}

impl ComponentKind {
    /// The lowercase name used in JSON and messages.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reader => "reader",
            Self::Sink => "sink",
            Self::Http => "http",
            Self::Other => "other",
        }
    }
}

/// A component's own view of its condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Registered, not yet working (the initial state).
    Starting,
    /// Working normally.
    Ok,
    /// Working, but not fully: a sink whose backend is down and which keeps spooling, a reader
    /// reconnecting. Still counts as ready (the data is safe).
    Degraded(String),
    /// Not working and not expected to recover by itself (e.g. its spool cannot be opened).
    Failed(String),
    /// Stopped on purpose (shutdown).
    Stopped,
}

impl State {
    /// `starting`, `ok`, `degraded`, `failed` or `stopped`.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Ok => "ok",
            Self::Degraded(_) => "degraded",
            Self::Failed(_) => "failed",
            Self::Stopped => "stopped",
        }
    }

    /// The reason given with [`State::Degraded`] or [`State::Failed`].
    #[must_use]
    pub fn reason(&self) -> Option<&str> {
        match self {
            Self::Degraded(r) | Self::Failed(r) => Some(r),
            _ => None,
        }
    }
}

/// A moment on both clocks: monotonic for ages, wall-clock for display.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// When, on tokio's (pausable) monotonic clock.
    pub at: Instant,
    /// When, on the wall clock.
    pub wall: SystemTime,
}

impl Stamp {
    /// Now, on both clocks.
    #[must_use]
    pub fn now() -> Self {
        Self {
            at: Instant::now(),
            wall: SystemTime::now(),
        }
    }
}

/// The last error a component reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorEvent {
    /// What went wrong, one line, no secrets.
    pub message: String,
    /// When.
    pub at: Stamp,
}

/// How much a sink has spooled, for the live page and `/api`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct SpoolDepth {
    /// Records waiting for the backend.
    pub records: u64,
    /// Their payload bytes.
    pub bytes: u64,
}

/// Everything a component has reported, as the registry sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentStatus {
    /// Unique name, e.g. `reader:home` or `sink:mqtt`.
    pub name: String,
    /// What it is.
    pub kind: ComponentKind,
    /// Its condition.
    pub state: State,
    /// When `state` last changed to another variant.
    pub since: Stamp,
    /// The last success: for a reader, the last telegram; for a sink, the last acknowledged
    /// delivery.
    pub last_success: Option<Stamp>,
    /// The last error reported.
    pub last_error: Option<ErrorEvent>,
    /// For a reader: the meter's telegram interval, overriding the one given to
    /// [`Registry::ready`] (several meters may differ).
    pub expected_interval: Option<Duration>,
    /// For a sink: its spool depth.
    pub spool: Option<SpoolDepth>,
    /// Further numbers worth showing (e.g. `reconnects`, `delivered`).
    pub counters: BTreeMap<&'static str, u64>,
    /// Storage faults by where they are (`spool`, `output`): a disk that is full, read-only or
    /// failing. Each one makes the gateway unready (see [`Registry::ready`]).
    pub faults: BTreeMap<&'static str, String>,
}

impl ComponentStatus {
    fn new(name: String, kind: ComponentKind) -> Self {
        Self {
            name,
            kind,
            state: State::Starting,
            since: Stamp::now(),
            last_success: None,
            last_error: None,
            expected_interval: None,
            spool: None,
            counters: BTreeMap::new(),
            faults: BTreeMap::new(),
        }
    }
}

/// A component's reporting handle. Cheap to clone; every method is synchronous, non-blocking
/// and safe to call from async code.
///
/// Dropping the last clone without [`HealthHandle::stopped`] marks the component as failed.
#[derive(Debug, Clone)]
pub struct HealthHandle {
    tx: watch::Sender<ComponentStatus>,
}

impl HealthHandle {
    /// The component's registered name.
    #[must_use]
    pub fn name(&self) -> String {
        self.tx.borrow().name.clone()
    }

    /// A copy of what the component has reported so far.
    #[must_use]
    pub fn status(&self) -> ComponentStatus {
        self.tx.borrow().clone()
    }

    /// A receiver that sees every update (e.g. for a test or a supervisor).
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<ComponentStatus> {
        self.tx.subscribe()
    }

    /// Set the state; `since` moves only when the variant changes (a new degraded reason is not
    /// a new state).
    pub fn set_state(&self, state: State) {
        self.tx.send_if_modified(|s| {
            // A component with a storage fault is not fully working, whatever else it says.
            let state = match (state, s.faults.values().next()) {
                (State::Ok, Some(fault)) => State::Degraded(fault.clone()),
                (state, _) => state,
            };
            if s.state == state {
                return false;
            }
            if std::mem::discriminant(&s.state) != std::mem::discriminant(&state) {
                s.since = Stamp::now();
            }
            s.state = state;
            true
        });
    }

    /// [`State::Ok`].
    pub fn ok(&self) {
        self.set_state(State::Ok);
    }

    /// [`State::Degraded`] with a reason.
    pub fn degraded(&self, reason: impl Into<String>) {
        self.set_state(State::Degraded(reason.into()));
    }

    /// [`State::Failed`] with a reason.
    pub fn failed(&self, reason: impl Into<String>) {
        self.set_state(State::Failed(reason.into()));
    }

    /// [`State::Stopped`]: a deliberate end; dropping the handle afterwards is fine.
    pub fn stopped(&self) {
        self.set_state(State::Stopped);
    }

    /// Record a success now (a telegram decoded, a delivery acknowledged).
    pub fn success(&self) {
        self.tx.send_modify(|s| s.last_success = Some(Stamp::now()));
    }

    /// Record an error now. Does not change the state: the component decides whether the error
    /// makes it degraded or failed.
    pub fn error(&self, message: impl Into<String>) {
        let event = ErrorEvent {
            message: message.into(),
            at: Stamp::now(),
        };
        self.tx.send_modify(|s| s.last_error = Some(event));
    }

    /// Set (`Some`) or clear (`None`) the storage fault at `place` (`spool`, `output`). A fault
    /// makes the component degraded with the fault as the reason and the gateway unready;
    /// clearing the last one makes a component that was degraded by it ok again.
    pub fn set_fault(&self, place: &'static str, fault: Option<String>) {
        self.tx.send_if_modified(|s| {
            let changed = match &fault {
                Some(message) => s.faults.get(place) != Some(message),
                None => s.faults.contains_key(place),
            };
            if !changed {
                return false;
            }
            let old = s.faults.remove(place);
            if let Some(message) = fault {
                s.faults.insert(place, message);
            }
            let next = match (s.faults.values().next(), &s.state) {
                (Some(first), State::Ok | State::Degraded(_)) => {
                    Some(State::Degraded(first.clone()))
                }
                (None, State::Degraded(reason)) if old.as_ref() == Some(reason) => Some(State::Ok),
                _ => None,
            };
            if let Some(next) = next
                && next != s.state
            {
                if std::mem::discriminant(&next) != std::mem::discriminant(&s.state) {
                    s.since = Stamp::now();
                }
                s.state = next;
            }
            true
        });
    }

    /// For a reader: the meter's telegram interval (see [`Registry::ready`]).
    pub fn set_expected_interval(&self, interval: Duration) {
        self.tx
            .send_if_modified(|s| replace_if_changed(&mut s.expected_interval, Some(interval)));
    }

    /// For a sink: the current spool depth.
    pub fn set_spool_depth(&self, records: u64, bytes: u64) {
        let depth = Some(SpoolDepth { records, bytes });
        self.tx
            .send_if_modified(|s| replace_if_changed(&mut s.spool, depth));
    }

    /// Set a named counter to `value`.
    pub fn set_counter(&self, name: &'static str, value: u64) {
        self.tx
            .send_if_modified(|s| s.counters.insert(name, value) != Some(value));
    }

    /// Add `by` to a named counter (starting from 0).
    pub fn add_counter(&self, name: &'static str, by: u64) {
        self.tx.send_modify(|s| {
            let c = s.counters.entry(name).or_insert(0);
            *c = c.saturating_add(by);
        });
    }
}

fn replace_if_changed<T: PartialEq>(slot: &mut T, value: T) -> bool {
    if *slot == value {
        return false;
    }
    *slot = value;
    true
}

/// All components' health. Cheap to clone (an `Arc` inside); give one to p1-http.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// One receiver per registered component, in registration order.
    components: Mutex<Vec<watch::Receiver<ComponentStatus>>>,
    /// Set by [`Registry::set_shutting_down`]; readiness drops at once.
    shutting_down: AtomicBool,
}

impl Registry {
    /// An empty registry.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Register a component; it starts in [`State::Starting`].
    ///
    /// # Errors
    ///
    /// [`Error::DuplicateComponent`] if a component of that name is registered and its handle is
    /// still alive. A name whose handles are all dropped may be registered again (a restarted
    /// worker); the new entry replaces the old one in place.
    pub fn register(&self, name: impl Into<String>, kind: ComponentKind) -> Result<HealthHandle> {
        let name = name.into();
        let mut list = self
            .inner
            .components
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (tx, rx) = watch::channel(ComponentStatus::new(name.clone(), kind));
        match list.iter().position(|r| r.borrow().name == name) {
            Some(i) if list[i].has_changed().is_ok() => {
                return Err(Error::DuplicateComponent { name });
            }
            Some(i) => list[i] = rx, // the old handle is gone: a restart
            None => list.push(rx),
        }
        Ok(HealthHandle { tx })
    }

    /// Drop readiness for good: the daemon is shutting down (style: phase 1 of shutdown).
    pub fn set_shutting_down(&self) {
        self.inner.shutting_down.store(true, Ordering::Release);
    }

    /// Whether [`Registry::set_shutting_down`] was called.
    #[must_use]
    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutting_down.load(Ordering::Acquire)
    }

    /// Every component's status, in registration order. A component whose handles were all
    /// dropped before it said [`State::Stopped`] appears as [`State::Failed`].
    #[must_use]
    pub fn statuses(&self) -> Vec<ComponentStatus> {
        // Copy the receivers out so the registry lock is not held while cloning statuses.
        let receivers: Vec<_> = self
            .inner
            .components
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        receivers
            .iter()
            .map(|rx| {
                let mut status = rx.borrow().clone();
                let handle_gone = rx.has_changed().is_err();
                if handle_gone && status.state != State::Stopped {
                    status.state = State::Failed("stopped reporting (its task ended)".to_owned());
                }
                status
            })
            .collect()
    }

    /// A serialisable view of every component, with ages as of now.
    #[must_use]
    pub fn snapshot(&self) -> Snapshot {
        self.snapshot_at(Instant::now())
    }

    /// A serialisable view of every component, with ages as of `now`.
    #[must_use]
    pub fn snapshot_at(&self, now: Instant) -> Snapshot {
        Snapshot {
            shutting_down: self.is_shutting_down(),
            components: self
                .statuses()
                .iter()
                .map(|s| ComponentView::new(s, now))
                .collect(),
        }
    }

    /// The `/readyz` check (docs/contracts.md §6): ready when every reader's last telegram is younger than
    /// [`READY_INTERVALS`] × its expected interval (its own, if it set one, else
    /// `expected_interval`) and every sink is delivering or spooling ([`State::Ok`] or
    /// [`State::Degraded`]). A failed component of any kind, a storage fault ([`HealthHandle::set_fault`]), no reader at all, or a shutdown
    /// in progress also make it unready. Returns every reason, not just the first.
    #[must_use]
    pub fn ready(&self, now: Instant, expected_interval: Duration) -> Readiness {
        let mut reasons = Vec::new();
        if self.is_shutting_down() {
            reasons.push("shutting down".to_owned());
        }
        let statuses = self.statuses();
        if !statuses.iter().any(|s| s.kind == ComponentKind::Reader) {
            reasons.push("no meter reader registered".to_owned());
        }
        for s in &statuses {
            let who = format!("{} {}", s.kind.as_str(), s.name);
            match (&s.state, s.kind) {
                (State::Failed(reason), _) => reasons.push(format!("{who}: failed: {reason}")),
                (State::Stopped, ComponentKind::Reader | ComponentKind::Sink) => {
                    reasons.push(format!("{who}: stopped"));
                }
                (State::Starting, ComponentKind::Sink) => {
                    reasons.push(format!("{who}: starting"));
                }
                _ => {}
            }
            for fault in s.faults.values() {
                reasons.push(format!("{who}: {fault}"));
            }
            if s.kind == ComponentKind::Reader {
                let limit = s.expected_interval.unwrap_or(expected_interval) * READY_INTERVALS;
                match s.last_success {
                    None => reasons.push(format!("{who}: no telegram yet")),
                    Some(last) => {
                        let age = now.saturating_duration_since(last.at);
                        if age > limit {
                            reasons.push(format!(
                                "{who}: last telegram {} s ago (limit {} s)",
                                age.as_secs(),
                                limit.as_secs()
                            ));
                        }
                    }
                }
            }
        }
        Readiness {
            ready: reasons.is_empty(),
            reasons,
        }
    }
}

/// The answer to `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Readiness {
    /// Whether the gateway is ready.
    pub ready: bool,
    /// Why not, one sentence per problem; empty when ready.
    pub reasons: Vec<String>,
}

/// The registry as JSON for the live page and `/api`: see [`Registry::snapshot`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Snapshot {
    /// Whether the daemon is shutting down.
    pub shutting_down: bool,
    /// Every component, in registration order.
    pub components: Vec<ComponentView>,
}

/// One component in a [`Snapshot`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ComponentView {
    /// Its name.
    pub name: String,
    /// Its kind.
    pub kind: ComponentKind,
    /// [`State::name`].
    pub state: &'static str,
    /// [`State::reason`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the state last changed (RFC 3339).
    #[serde(serialize_with = "ser_rfc3339")]
    pub since: SystemTime,
    /// The last success (RFC 3339), if any.
    #[serde(serialize_with = "ser_opt_rfc3339")]
    pub last_success: Option<SystemTime>,
    /// Seconds since the last success.
    pub last_success_age_seconds: Option<f64>,
    /// The last error, if any.
    pub last_error: Option<ErrorView>,
    /// For a sink: its spool depth.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spool: Option<SpoolDepth>,
    /// Further counters.
    pub counters: BTreeMap<&'static str, u64>,
    /// Storage faults by place (`spool`, `output`), when there are any.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub faults: BTreeMap<&'static str, String>,
}

impl ComponentView {
    fn new(s: &ComponentStatus, now: Instant) -> Self {
        let age = |st: &Stamp| now.saturating_duration_since(st.at).as_secs_f64();
        Self {
            name: s.name.clone(),
            kind: s.kind,
            state: s.state.name(),
            reason: s.state.reason().map(str::to_owned),
            since: s.since.wall,
            last_success: s.last_success.map(|st| st.wall),
            last_success_age_seconds: s.last_success.as_ref().map(age),
            last_error: s.last_error.as_ref().map(|e| ErrorView {
                message: e.message.clone(),
                at: e.at.wall,
                age_seconds: age(&e.at),
            }),
            spool: s.spool,
            counters: s.counters.clone(),
            faults: s.faults.clone(),
        }
    }
}

/// The last error in a [`ComponentView`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ErrorView {
    /// What went wrong.
    pub message: String,
    /// When (RFC 3339).
    #[serde(serialize_with = "ser_rfc3339")]
    pub at: SystemTime,
    /// Seconds ago.
    pub age_seconds: f64,
}

/// RFC 3339 UTC with milliseconds, e.g. `2024-02-12T22:21:14.123Z`.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    match jiff::Timestamp::try_from(t) {
        Ok(ts) => format!("{ts:.3}"),
        // Only for times outside jiff's range (years beyond ±9999): say so rather than lie.
        Err(_) => "out-of-range".to_owned(),
    }
}

fn ser_rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(*t))
}

fn ser_opt_rfc3339<S: serde::Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&rfc3339(*t)),
        None => s.serialize_none(),
    }
}
