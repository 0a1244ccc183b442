//! What the source tests share: a seeded random source, a metrics recorder
//! the tests can read, simulated telegrams that say which they are, and a
//! reader to run them through.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use metrics::{
    Counter, CounterFn, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use p1_core::{ComponentKind, HealthHandle, Reading, Registry, State};
use p1_reader::{Profile, ReaderConfig, ReaderHandle, SimulatedMeter, SourceConfig};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// splitmix64: small, seedable, and the same on every platform.
pub(crate) struct Rng {
    state: u64,
    pub(crate) seed: u64,
}

impl Rng {
    /// Seeded from `P1GW_TEST_SEED` if set, else from the clock; prints the
    /// seed so that a failing run can be repeated.
    pub(crate) fn new(test: &str) -> Rng {
        let seed = std::env::var("P1GW_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
        eprintln!("{test}: seed {seed} (repeat with P1GW_TEST_SEED={seed})");
        Rng { state: seed, seed }
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub(crate) fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }

    /// True with probability `1 / n`.
    pub(crate) fn one_in(&mut self, n: u64) -> bool {
        self.next().is_multiple_of(n)
    }

    /// Splits `bytes` into chunks of 1..=`max` bytes, each with the pause
    /// before the next write: mostly 0–15 ms, one in ten 40–150 ms (so that
    /// reads also end inside lines and telegrams, not only between them).
    pub(crate) fn chunks(&mut self, bytes: &[u8], max: usize) -> Vec<(Vec<u8>, Duration)> {
        let mut out = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            let n = self.range(1, max).min(rest.len());
            let (chunk, tail) = rest.split_at(n);
            let pause = if self.one_in(10) {
                self.range(40, 150)
            } else {
                self.range(0, 15)
            };
            out.push((chunk.to_vec(), Duration::from_millis(pause as u64)));
            rest = tail;
        }
        out
    }
}

/// The meter time of telegram `i` (UTC; a winter day, so no DST question).
pub(crate) fn meter_time(i: usize) -> jiff::Timestamp {
    let base: jiff::Timestamp = "2026-01-15T10:00:00Z".parse().expect("timestamp");
    base + jiff::SignedDuration::from_secs(10 * i as i64)
}

/// `n` DSMR 5 telegrams (valid CRC, so a telegram glued to part of another
/// cannot pass), telegram `i` stamped [`meter_time`]`(i)`: the meter time
/// of a reading says which telegram it came from.
pub(crate) fn telegrams(n: usize, seed: u64) -> Vec<Vec<u8>> {
    let zone = jiff::tz::db()
        .get(Profile::Dsmr5.time_zone())
        .expect("zone");
    let mut meter = SimulatedMeter::new(Profile::Dsmr5, seed);
    (0..n)
        .map(|i| meter.telegram(meter_time(i), 10.0, &zone))
        .collect()
}

/// Where a telegram of `bytes` may be cut: inside a line, right after a whole
/// line (the frame then looks like a telegram without its `!` line), right
/// after `!` (CRC missing), inside the CRC, and before the `!` line's line
/// end. Byte offsets into `bytes`, each leaving at least the header.
pub(crate) fn cut_points(bytes: &[u8], rng: &mut Rng) -> Vec<(&'static str, usize)> {
    let bang = bytes
        .windows(2)
        .position(|w| w == b"\n!")
        .expect("a '!' line")
        + 1;
    let header_end = bytes.iter().position(|&b| b == b'\n').expect("header") + 1;
    let line_ends: Vec<usize> = bytes[..bang]
        .iter()
        .enumerate()
        .filter(|&(i, &b)| b == b'\n' && i + 1 > header_end)
        .map(|(i, _)| i + 1)
        .collect();
    let line_end = line_ends[rng.range(0, line_ends.len() - 1)];
    let mid_line = rng.range(header_end + 1, bang - 2);
    vec![
        ("inside a line", mid_line),
        ("after a whole line", line_end),
        ("right after '!'", bang + 1),
        ("inside the CRC", bang + 3),
        ("before the '!' line's line end", bytes.len() - 2),
    ]
}

/// A metrics recorder whose counters the tests read back. Process-wide (the
/// `metrics` facade has one recorder), so every test names its meter apart.
#[derive(Clone, Default)]
pub(crate) struct Metrics {
    counters: Arc<Mutex<HashMap<String, Arc<Count>>>>,
}

#[derive(Default)]
struct Count(AtomicU64);

impl CounterFn for Count {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::SeqCst);
    }
    fn absolute(&self, value: u64) {
        self.0.fetch_max(value, Ordering::SeqCst);
    }
}

/// `name{k="v",…}`, labels sorted.
fn render(key: &Key) -> String {
    let mut labels: Vec<String> = key
        .labels()
        .map(|l| format!("{}=\"{}\"", l.key(), l.value()))
        .collect();
    labels.sort();
    format!("{}{{{}}}", key.name(), labels.join(","))
}

impl Recorder for Metrics {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let count = self
            .counters
            .lock()
            .expect("lock")
            .entry(render(key))
            .or_default()
            .clone();
        Counter::from_arc(count)
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

impl Metrics {
    /// The recorder, installed on first use.
    pub(crate) fn get() -> &'static Metrics {
        static METRICS: OnceLock<Metrics> = OnceLock::new();
        METRICS.get_or_init(|| {
            let metrics = Metrics::default();
            metrics::set_global_recorder(metrics.clone())
                .unwrap_or_else(|_| panic!("another metrics recorder is installed"));
            metrics
        })
    }

    /// A counter's value, as Prometheus would name it:
    /// `p1gw_reconnects_total{meter="pty"}`.
    pub(crate) fn counter(&self, rendered: &str) -> u64 {
        self.counters
            .lock()
            .expect("lock")
            .get(rendered)
            .map_or(0, |c| c.0.load(Ordering::SeqCst))
    }
}

/// A running reader and what the test watches of it.
pub(crate) struct Reader {
    pub(crate) handle: ReaderHandle,
    pub(crate) rx: broadcast::Receiver<Arc<Reading>>,
    pub(crate) health: HealthHandle,
    pub(crate) stop: CancellationToken,
    pub(crate) task: JoinHandle<()>,
    pub(crate) metrics: &'static Metrics,
}

impl Reader {
    /// Starts the reader of meter `meter` on `source`.
    pub(crate) fn start(meter: &str, source: SourceConfig) -> Reader {
        let metrics = Metrics::get();
        let (tx, rx) = broadcast::channel(1024);
        let (latest, _) = watch::channel(None);
        let registry = Registry::new();
        let health = registry
            .register(format!("reader:{meter}"), ComponentKind::Reader)
            .expect("register");
        let stop = CancellationToken::new();
        let zone = jiff::tz::db()
            .get(Profile::Dsmr5.time_zone())
            .expect("zone");
        let cfg = ReaderConfig {
            meter: Arc::from(meter),
            tz: Some(zone),
            source,
            max_telegram_bytes: 16 * 1024,
            expected_interval: Duration::from_secs(10),
            guard: Some(p1_reader::GuardConfig::default()),
            codes: Default::default(),
        };
        let (handle, task) = ReaderHandle::spawn(cfg, tx, latest, health.clone(), stop.clone());
        Reader {
            handle,
            rx,
            health,
            stop,
            task,
            metrics,
        }
    }

    /// Waits (at most `limit`) until the reader's health state is `state`.
    pub(crate) async fn wait_state(&self, limit: Duration, what: &str, state: fn(&State) -> bool) {
        let mut watch = self.health.subscribe();
        tokio::time::timeout(limit, watch.wait_for(|s| state(&s.state)))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{what}: not within {limit:?}; health {:?}",
                    self.health.status()
                )
            })
            .expect("health watch");
    }

    /// The next reading, at most `limit` away.
    pub(crate) async fn next(&mut self, limit: Duration, what: &str) -> Arc<Reading> {
        tokio::time::timeout(limit, self.rx.recv())
            .await
            .unwrap_or_else(|_| panic!("{what}: no reading within {limit:?}"))
            .expect("the channel is open")
    }

    /// Stops the reader and waits for it.
    pub(crate) async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the reader stops within 10 s")
            .expect("the reader task");
    }
}
