//! The sources a reader can own, and the reader loop for each.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use jiff::tz::TimeZone;
use p1_core::{Backoff, HealthHandle, Reading};
use tokio::io::AsyncReadExt as _;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::{Pipeline, Profile, SimulatedMeter};

/// How fast a recording is replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// At the pace the meter sent it (from the meter times; gaps capped at 60 s).
    Recorded,
    /// One telegram per interval.
    Every(Duration),
    /// As fast as possible.
    Fast,
}

/// Where a meter's bytes come from.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceConfig {
    /// A simulated meter.
    Simulate {
        /// Which meter to imitate.
        profile: Profile,
        /// Time between telegrams.
        interval: Duration,
    },
    /// A recording: a file, or every file of a directory (sorted), or `-` for
    /// standard input (read to its end, then replayed once).
    Replay {
        /// The file or directory.
        path: PathBuf,
        /// How fast.
        pace: Pace,
        /// Start again at the end.
        repeat: bool,
    },
    /// A raw telegram stream over TCP (ser2net, an ESPHome stream server, a
    /// P1-to-Wi-Fi bridge).
    Tcp {
        /// `host:port`.
        address: String,
        /// Reconnect backoff, first delay.
        reconnect_min: Duration,
        /// Reconnect backoff, cap.
        reconnect_max: Duration,
    },
}

impl SourceConfig {
    /// A short description for logs and the reading's `source` field.
    pub fn describe(&self) -> String {
        match self {
            SourceConfig::Simulate { profile, .. } => format!("simulate:{}", profile.as_str()),
            SourceConfig::Replay { path, .. } => format!("replay:{}", path.display()),
            SourceConfig::Tcp { address, .. } => format!("tcp:{address}"),
        }
    }
}

/// One meter's reader settings.
#[derive(Debug, Clone)]
pub struct ReaderConfig {
    /// The meter's configured name.
    pub meter: Arc<str>,
    /// Zone of the meter's local time; `None` guesses per telegram.
    pub tz: Option<TimeZone>,
    /// The source.
    pub source: SourceConfig,
    /// Largest telegram accepted.
    pub max_telegram_bytes: usize,
    /// The telegram interval /readyz expects.
    pub expected_interval: Duration,
}

/// Runs a meter's reader until its source ends (a recording without
/// `repeat`) or `stop` fires. Returns when done; the caller drops the
/// broadcast sender then, which tells the sinks to drain.
pub async fn run_reader(
    cfg: ReaderConfig,
    tx: broadcast::Sender<Arc<Reading>>,
    latest: watch::Sender<Option<Arc<Reading>>>,
    health: HealthHandle,
    stop: CancellationToken,
) {
    let source = Arc::<str>::from(cfg.source.describe());
    health.set_expected_interval(cfg.expected_interval);
    let mut pipeline = Pipeline::new(
        cfg.meter.clone(),
        source.clone(),
        cfg.tz.clone(),
        cfg.max_telegram_bytes,
        tx,
        latest.clone(),
        health.clone(),
    );
    tracing::info!(meter = %cfg.meter, source = %source, "Reader started.");
    match &cfg.source {
        SourceConfig::Simulate { profile, interval } => {
            simulate(&mut pipeline, *profile, *interval, cfg.tz.as_ref(), &stop).await;
        }
        SourceConfig::Replay { path, pace, repeat } => {
            replay(&mut pipeline, path, *pace, *repeat, &latest, &health, &stop).await;
        }
        SourceConfig::Tcp {
            address,
            reconnect_min,
            reconnect_max,
        } => {
            tcp(
                &mut pipeline,
                address,
                (*reconnect_min, *reconnect_max),
                cfg.expected_interval,
                &health,
                &stop,
            )
            .await;
        }
    }
    tracing::info!(meter = %cfg.meter, ok = pipeline.telegrams_ok(), rejected = pipeline.telegrams_rejected(), "Reader stopped.");
    health.stopped();
}

/// Sleeps `d`; false when `stop` fired first.
async fn pause(d: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(d) => true,
        () = stop.cancelled() => false,
    }
}

async fn simulate(
    pipeline: &mut Pipeline,
    profile: Profile,
    interval: Duration,
    tz: Option<&TimeZone>,
    stop: &CancellationToken,
) {
    let zone = tz.cloned().unwrap_or_else(|| {
        let name = match profile {
            Profile::Veitur => "Atlantic/Reykjavik",
            Profile::Dsmr5 => "Europe/Amsterdam",
            Profile::Belgium => "Europe/Brussels",
        };
        jiff::tz::db().get(name).unwrap_or(TimeZone::UTC)
    });
    let seed = jiff::Timestamp::now().as_nanosecond() as u64;
    let mut meter = SimulatedMeter::new(profile, seed);
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = stop.cancelled() => return,
        }
        // The simulated meter advances by the nominal interval so its energy
        // registers stay consistent with the power it reports.
        let bytes = meter.telegram(
            jiff::Timestamp::now(),
            interval.as_secs_f64().max(0.001),
            &zone,
        );
        pipeline.feed(&bytes);
    }
}

async fn replay(
    pipeline: &mut Pipeline,
    path: &std::path::Path,
    pace: Pace,
    repeat: bool,
    latest: &watch::Sender<Option<Arc<Reading>>>,
    health: &HealthHandle,
    stop: &CancellationToken,
) {
    if path.as_os_str() == "-" {
        // Standard input: one pass, however `repeat` is set.
        let mut bytes = Vec::new();
        if let Err(e) = tokio::io::stdin().read_to_end(&mut bytes).await {
            health.failed(format!("cannot read standard input: {e}"));
            return;
        }
        if replay_bytes(pipeline, &bytes, pace, latest, stop).await {
            pipeline.finish();
        }
        return;
    }
    loop {
        let files = match recording_files(path).await {
            Ok(files) => files,
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "Cannot read the recording.");
                health.failed(format!("cannot read {}: {e}", path.display()));
                return;
            }
        };
        for file in files {
            let bytes = match tokio::fs::read(&file).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(path = %file.display(), error = %e, "Cannot read the recording.");
                    health.error(format!("cannot read {}: {e}", file.display()));
                    continue;
                }
            };
            if !replay_bytes(pipeline, &bytes, pace, latest, stop).await {
                return;
            }
            pipeline.finish();
        }
        if !repeat || stop.is_cancelled() {
            return;
        }
    }
}

/// Feeds a recording line by line, pausing after each telegram as `pace`
/// says. False when `stop` fired.
async fn replay_bytes(
    pipeline: &mut Pipeline,
    bytes: &[u8],
    pace: Pace,
    latest: &watch::Sender<Option<Arc<Reading>>>,
    stop: &CancellationToken,
) -> bool {
    if pace == Pace::Fast {
        for chunk in bytes.chunks(64 * 1024) {
            pipeline.feed(chunk);
            if stop.is_cancelled() {
                return false;
            }
            tokio::task::yield_now().await;
        }
        return true;
    }
    let mut previous_time = latest.borrow().as_ref().and_then(|r| r.meter_time);
    let mut done = pipeline.telegrams_ok() + pipeline.telegrams_rejected();
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        pipeline.feed(line);
        let now_done = pipeline.telegrams_ok() + pipeline.telegrams_rejected();
        if now_done == done {
            continue;
        }
        done = now_done;
        let wait = match pace {
            Pace::Every(d) => d,
            Pace::Recorded => {
                let t = latest.borrow().as_ref().and_then(|r| r.meter_time);
                let gap = match (previous_time, t) {
                    (Some(a), Some(b)) if b > a => {
                        Duration::try_from(b.duration_since(a)).unwrap_or_default()
                    }
                    _ => Duration::from_secs(1),
                };
                previous_time = t;
                gap.min(Duration::from_secs(60))
            }
            Pace::Fast => Duration::ZERO,
        };
        if !pause(wait, stop).await {
            return false;
        }
    }
    true
}

async fn recording_files(path: &std::path::Path) -> std::io::Result<Vec<PathBuf>> {
    let meta = tokio::fs::metadata(path).await?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    let mut dir = tokio::fs::read_dir(path).await?;
    while let Some(entry) = dir.next_entry().await? {
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if !hidden && entry.file_type().await.is_ok_and(|t| t.is_file()) {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files)
}

async fn tcp(
    pipeline: &mut Pipeline,
    address: &str,
    (min, max): (Duration, Duration),
    interval: Duration,
    health: &HealthHandle,
    stop: &CancellationToken,
) {
    let mut backoff = Backoff::new(min, max);
    let mut reconnects = 0u64;
    // A bridge that stops forwarding without closing: give up on the
    // connection after this much silence and reconnect.
    let silence = (interval * 6).max(Duration::from_secs(30));
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let connected = tokio::select! {
            r = tokio::net::TcpStream::connect(address) => r,
            () = stop.cancelled() => return,
        };
        match connected {
            Ok(mut stream) => {
                tracing::info!(address, "Connected to the telegram stream.");
                loop {
                    let read = tokio::select! {
                        r = tokio::time::timeout(silence, stream.read(&mut buf)) => r,
                        () = stop.cancelled() => return,
                    };
                    match read {
                        Ok(Ok(0)) => {
                            tracing::warn!(address, "The telegram stream closed; reconnecting.");
                            break;
                        }
                        Ok(Ok(n)) => {
                            backoff.reset();
                            pipeline.feed(&buf[..n]);
                        }
                        Ok(Err(e)) => {
                            tracing::warn!(address, error = %e, "Reading the telegram stream failed; reconnecting.");
                            break;
                        }
                        Err(_elapsed) => {
                            tracing::warn!(
                                address,
                                silence_s = silence.as_secs(),
                                "No bytes from the telegram stream; reconnecting."
                            );
                            break;
                        }
                    }
                }
                pipeline.finish();
            }
            Err(e) => {
                health.error(format!("cannot connect to {address}: {e}"));
                health.degraded(format!("cannot connect to {address}"));
            }
        }
        reconnects += 1;
        health.set_counter("reconnects", reconnects);
        metrics::counter!("p1gw_reconnects_total", "meter" => pipeline.meter().to_string())
            .increment(1);
        if !pause(backoff.next_delay(), stop).await {
            return;
        }
    }
}
