//! [`History`]: the last hour (or so) of chart points, in memory.
//!
//! One [`Point`] per reading: power import/export, hot-water flow and the import register,
//! in canonical units. A fixed-capacity ring: when full, the oldest point goes. Nothing is
//! written to disk; after a restart the chart fills again from live readings.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use jiff::Timestamp;
use p1_core::Reading;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;

/// Points kept by [`History::default`]: one hour at one reading per second (six hours of
/// Veitur's 10 s telegrams).
pub const DEFAULT_HISTORY_CAPACITY: usize = 3600;

/// One reading, reduced to what the page's charts draw.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// The reading's meter.
    pub meter: Arc<str>,
    /// When the gateway received it (the page's live points use the same clock).
    pub t: Timestamp,
    /// `power_import`, kW.
    pub power_import: Option<f64>,
    /// `power_export`, kW.
    pub power_export: Option<f64>,
    /// Veitur's hot-water flow (`heat_flow`, `0-1:24.2.2`), m³/h.
    pub hot_water_flow: Option<f64>,
    /// `energy_import_total`, or the sum of the import tariff registers when the meter sends
    /// no total, kWh (the page's "used today" baseline).
    pub energy_import_total: Option<f64>,
}

impl Point {
    /// The point of a reading.
    pub fn from_reading(reading: &Reading) -> Self {
        let energy_import_total = reading.number("energy_import_total").or_else(|| {
            (1..=4)
                .filter_map(|i| reading.number(&format!("energy_import_tariff{i}")))
                .reduce(|a, b| a + b)
        });
        Self {
            meter: reading.meter.clone(),
            t: reading.received_at,
            power_import: reading.number("power_import"),
            power_export: reading.number("power_export"),
            hot_water_flow: reading.number("heat_flow"),
            energy_import_total,
        }
    }
}

/// A fixed-capacity ring of [`Point`]s, oldest first. Cheap to clone (an `Arc` inside): the
/// recorder and the HTTP state share one.
///
/// The mutex is held only to push one point or copy some out, never across an `.await`.
#[derive(Debug, Clone)]
pub struct History {
    points: Arc<Mutex<VecDeque<Point>>>,
    capacity: usize,
}

impl Default for History {
    fn default() -> Self {
        Self::new(DEFAULT_HISTORY_CAPACITY)
    }
}

impl History {
    /// An empty history keeping at most `capacity` points (at least 1). The memory is taken
    /// up front: about 80 bytes a point.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            points: Arc::new(Mutex::new(VecDeque::with_capacity(capacity))),
            capacity,
        }
    }

    /// The most points kept.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The points kept now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no point is kept.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Appends a point; when full, the oldest point is dropped first.
    pub fn push(&self, point: Point) {
        let mut points = self.lock();
        while points.len() >= self.capacity {
            points.pop_front();
        }
        points.push_back(point);
    }

    /// Appends the point of a reading.
    pub fn record(&self, reading: &Reading) {
        self.push(Point::from_reading(reading));
    }

    /// The points of `meter` (every meter's when `None`) received at or after `since`, oldest
    /// first (in arrival order).
    pub fn points(&self, meter: Option<&str>, since: Timestamp) -> Vec<Point> {
        self.lock()
            .iter()
            .filter(|p| p.t >= since && meter.is_none_or(|m| *p.meter == *m))
            .cloned()
            .collect()
    }

    /// Records every reading from `readings` until the channel closes (the reader dropped its
    /// sender). A lag (this task starved for longer than the channel's capacity) loses chart
    /// points only; it is counted in `p1gw_http_history_lagged_total` and logged.
    ///
    /// For p1gw's task tracker; [`spawn_recorder`] spawns it directly.
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: a reading is either recorded or still in the channel.
    pub async fn run_recorder(self, mut readings: broadcast::Receiver<Arc<Reading>>) {
        loop {
            match readings.recv().await {
                Ok(reading) => self.record(&reading),
                Err(RecvError::Lagged(missed)) => {
                    metrics::counter!(crate::exposition::HISTORY_LAGGED).increment(missed);
                    tracing::warn!(
                        missed,
                        "History recorder fell behind the readings channel; chart points lost."
                    );
                }
                Err(RecvError::Closed) => break,
            }
        }
        tracing::debug!("Readings channel closed; history recorder stops.");
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Point>> {
        // A panic while holding the lock cannot leave the deque inconsistent (push/pop only).
        self.points.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Spawns [`History::run_recorder`] on the current runtime; the task ends when the readings
/// channel closes.
///
/// # Panics
///
/// Outside a tokio runtime (as `tokio::spawn`).
pub fn spawn_recorder(
    history: History,
    readings: broadcast::Receiver<Arc<Reading>>,
) -> JoinHandle<()> {
    tokio::spawn(history.run_recorder(readings))
}
