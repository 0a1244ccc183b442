//! The present: the latest value of every value topic and each meter's availability, kept in
//! memory and published by the connection task, apart from the spooled history.
//!
//! # Why value topics are not history
//!
//! Home Assistant cannot take a timestamp on an MQTT sensor's state: whatever arrives on a
//! value topic is shown as the value *now*. Replaying an outage's backlog into the value
//! topics would show hours-old values as current, oldest first, for as long as the backlog
//! takes. So a value topic holds state — the latest value wins — and the state topic
//! (`<meter>/state`, the whole reading with `meter_time` and `received_at`) is the history:
//! every reading, in order, through the spool.
//!
//! Each value topic's latest payload is kept here and marked *dirty* until handed to the
//! broker. After every (re)connect, every topic is dirty again, so every entity gets its
//! current value within moments of the reconnect, ahead of the backlog. A value replaced while
//! still dirty was never sent: it is counted in `p1gw_mqtt_values_superseded_total{sink}` (the
//! energy of an outage is not lost by that: `total_increasing` registers carry it in their
//! next value).
//!
//! # Availability per meter
//!
//! `<meter>/availability` is `online` (retained) while the meter sends, and `offline` once it
//! has sent nothing for [`SILENT_INTERVALS`] × its interval (a pulled cable, a dead meter);
//! Home Assistant's entities of that meter name both it and the gateway's status (the last
//! will) with `availability_mode: all`, so they go `unavailable` when either says `offline`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// A meter is `offline` after this many of its intervals without a reading.
pub const SILENT_INTERVALS: u32 = 3;

/// One value topic's latest payload.
#[derive(Debug, Clone)]
struct Entry {
    payload: Vec<u8>,
    retain: bool,
    /// Not handed to the broker since it was set (or since the last connect).
    dirty: bool,
}

/// What the sink knows of one meter's liveness.
#[derive(Debug, Clone, Copy)]
struct Meter {
    last: Instant,
    interval: Duration,
    online: bool,
}

#[derive(Debug, Default)]
struct Inner {
    values: BTreeMap<String, Entry>,
    meters: HashMap<String, Meter>,
    superseded: u64,
}

/// The latest value per topic, shared by the encoder (which sets them) and the connection
/// task (which publishes them). Every method is short and never waits for I/O.
#[derive(Debug)]
pub(crate) struct Latest {
    inner: Mutex<Inner>,
    /// Woken when a topic became dirty.
    pub(crate) changed: Notify,
    /// The sink's name, for the metric.
    sink: String,
    /// Each meter's telegram interval; meters not named get [`DEFAULT_INTERVAL`].
    intervals: BTreeMap<String, Duration>,
}

/// A meter's interval when the settings name none: Veitur's and DSMR 4's 10 s.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

impl Latest {
    pub(crate) fn new(sink: &str, intervals: BTreeMap<String, Duration>) -> Latest {
        Latest {
            inner: Mutex::new(Inner::default()),
            changed: Notify::new(),
            sink: sink.to_owned(),
            intervals,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets `topic`'s latest payload (dirty). A value replaced before it was sent is counted.
    pub(crate) fn set(&self, topic: String, payload: Vec<u8>, retain: bool) {
        let superseded = {
            let mut inner = self.lock();
            let superseded = match inner.values.get_mut(&topic) {
                Some(entry) => {
                    let was_dirty = entry.dirty;
                    entry.payload = payload;
                    entry.retain = retain;
                    entry.dirty = true;
                    was_dirty
                }
                None => {
                    inner.values.insert(
                        topic,
                        Entry {
                            payload,
                            retain,
                            dirty: true,
                        },
                    );
                    false
                }
            };
            if superseded {
                inner.superseded += 1;
            }
            superseded
        };
        if superseded {
            metrics::counter!("p1gw_mqtt_values_superseded_total", "sink" => self.sink.clone())
                .increment(1);
        }
        self.changed.notify_one();
    }

    /// A reading of `meter` arrived at `now`: it is `online` (published when that changed).
    pub(crate) fn seen(&self, meter: &str, now: Instant) {
        let interval = self
            .intervals
            .get(meter)
            .copied()
            .unwrap_or(DEFAULT_INTERVAL);
        let came_back = {
            let mut inner = self.lock();
            let m = inner.meters.entry(meter.to_owned()).or_insert(Meter {
                last: now,
                interval,
                online: false,
            });
            m.last = now;
            !std::mem::replace(&mut m.online, true)
        };
        if came_back {
            self.set(availability_topic(meter), b"online".to_vec(), true);
        }
    }

    /// Marks every meter silent for [`SILENT_INTERVALS`] × its interval `offline`; returns
    /// how many went offline now.
    pub(crate) fn check_silence(&self, now: Instant) -> usize {
        let silent: Vec<String> = {
            let mut inner = self.lock();
            inner
                .meters
                .iter_mut()
                .filter(|(_, m)| {
                    m.online
                        && now.saturating_duration_since(m.last) > m.interval * SILENT_INTERVALS
                })
                .map(|(name, m)| {
                    m.online = false;
                    name.clone()
                })
                .collect()
        };
        for meter in &silent {
            tracing::warn!(
                sink = %self.sink,
                meter,
                "Meter sent nothing for {SILENT_INTERVALS} of its intervals: its entities are marked unavailable."
            );
            self.set(availability_topic(meter), b"offline".to_vec(), true);
        }
        silent.len()
    }

    /// Every topic dirty again: after a (re)connect, all of the present is published.
    pub(crate) fn all_dirty(&self) {
        let any = {
            let mut inner = self.lock();
            for entry in inner.values.values_mut() {
                entry.dirty = true;
            }
            !inner.values.is_empty()
        };
        if any {
            self.changed.notify_one();
        }
    }

    /// The dirty topics' payloads, in topic order; they are clean afterwards.
    pub(crate) fn take_dirty(&self) -> Vec<(String, Vec<u8>, bool)> {
        let mut inner = self.lock();
        inner
            .values
            .iter_mut()
            .filter(|(_, e)| e.dirty)
            .map(|(topic, e)| {
                e.dirty = false;
                (topic.clone(), e.payload.clone(), e.retain)
            })
            .collect()
    }

    /// Values replaced before they were sent, so far.
    #[cfg(test)]
    pub(crate) fn superseded(&self) -> u64 {
        self.lock().superseded
    }
}

/// `<meter>/availability`, relative to the topic prefix.
pub fn availability_topic(meter: &str) -> String {
    format!("{meter}/availability")
}
