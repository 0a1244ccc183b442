//! The sources a reader can own, and the reader loop for each.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use jiff::tz::TimeZone;
use p1_core::{Backoff, HealthHandle, Reading};
use tokio::io::AsyncReadExt as _;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::handle::{Command, Control};
use crate::serial::{SerialOpener, SerialSource};
use crate::{GuardConfig, Pipeline, Profile, SimulatedMeter};

/// A fast replay waits while more readings than this wait on the channel
/// (a quarter of its capacity in p1gw), so the sinks keep up and nothing is
/// dropped as lagged.
const FAST_REPLAY_BACKLOG: usize = 256;

/// The longest wait between two connection attempts of a `tcp` source,
/// whatever `reconnect.max` says (both `reconnect` bounds are capped at it;
/// the jitter stays): a ser2net or ESP bridge that comes back is connected
/// within this much, 2 s at most with the connect itself.
pub const TCP_RETRY_CAP: Duration = Duration::from_millis(1500);

/// How long one connection attempt of a `tcp` source (name lookup included)
/// may take before it is given up and retried: a bridge whose address does
/// not answer at all would otherwise hold an attempt for the kernel's two
/// minutes of SYN retries.
pub const TCP_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// A P1 cable on a serial port, with its line settings and request line.
    Serial(SerialSource),
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
            SourceConfig::Serial(serial) => format!("serial:{}", serial.port.display()),
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
    /// The spike guard's bounds; `None` turns it off (see [`crate::guard`]).
    pub guard: Option<GuardConfig>,
    /// The meter's code table (`[meter.codes]`), applied to every reading.
    pub codes: Arc<p1_core::CodeTable>,
}

/// Runs a meter's reader until its source ends (a recording without
/// `repeat`) or `stop` fires. Returns when done; the caller drops the
/// broadcast sender then, which tells the sinks to drain.
///
/// This is the reader task without a handle; [`crate::ReaderHandle::spawn`]
/// runs the same task with one.
pub async fn run_reader(
    cfg: ReaderConfig,
    tx: broadcast::Sender<Arc<Reading>>,
    latest: watch::Sender<Option<Arc<Reading>>>,
    health: HealthHandle,
    stop: CancellationToken,
) {
    run(cfg, tx, latest, health, stop, None).await;
}

/// The reader task: one per meter. `requests`: its handle's requests, if it
/// has one.
pub(crate) async fn run(
    cfg: ReaderConfig,
    tx: broadcast::Sender<Arc<Reading>>,
    latest: watch::Sender<Option<Arc<Reading>>>,
    health: HealthHandle,
    stop: CancellationToken,
    requests: Option<mpsc::Receiver<Command>>,
) {
    let source = Arc::<str>::from(cfg.source.describe());
    let mut control = Control::new(
        requests,
        cfg.meter.clone(),
        source.to_string(),
        health.clone(),
    );
    health.set_expected_interval(cfg.expected_interval);
    let mut pipeline = Pipeline::new(
        cfg.meter.clone(),
        source.clone(),
        cfg.tz.clone(),
        cfg.max_telegram_bytes,
        tx,
        latest.clone(),
        health.clone(),
    )
    .with_guard(cfg.guard)
    .with_codes(cfg.codes.clone());
    tracing::info!(meter = %cfg.meter, source = %source, "Reader started.");
    match &cfg.source {
        SourceConfig::Simulate { profile, interval } => {
            control.status.connected = true;
            simulate(
                &mut pipeline,
                *profile,
                *interval,
                cfg.tz.as_ref(),
                &stop,
                &mut control,
            )
            .await;
        }
        SourceConfig::Replay { path, pace, repeat } => {
            control.status.connected = true;
            let mut replay = Replay {
                pipeline: &mut pipeline,
                latest: &latest,
                stop: &stop,
                control: &mut control,
            };
            replay.run(path, *pace, *repeat, &health).await;
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
                &mut control,
            )
            .await;
        }
        SourceConfig::Serial(serial) => {
            let mut opener = SerialOpener {
                path: serial.port.clone(),
                settings: serial.settings,
                request: serial.request.clone(),
            };
            crate::serial::serial_loop(
                &mut pipeline,
                &mut opener,
                &serial.port.display().to_string(),
                &serial.request,
                (serial.reconnect_min, serial.reconnect_max),
                &health,
                &stop,
                &mut control,
            )
            .await;
        }
    }
    tracing::info!(meter = %cfg.meter, ok = pipeline.telegrams_ok(), rejected = pipeline.telegrams_rejected(), held_back = pipeline.readings_rejected(), "Reader stopped.");
    health.stopped();
}

/// Sleeps `d`, serving the handle's requests meanwhile; false when `stop`
/// fired or the last handle was dropped first.
pub(crate) async fn pause(
    d: Duration,
    stop: &CancellationToken,
    control: &mut Control,
    pipeline: &Pipeline,
) -> bool {
    let wake = tokio::time::Instant::now() + d;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(wake) => return true,
            () = stop.cancelled() => return false,
            command = control.recv() => match command {
                Some(command) => control.serve(command, counters(pipeline)),
                None => return false,
            },
        }
    }
}

fn counters(pipeline: &Pipeline) -> (u64, u64) {
    (pipeline.telegrams_ok(), pipeline.telegrams_rejected())
}

async fn simulate(
    pipeline: &mut Pipeline,
    profile: Profile,
    interval: Duration,
    tz: Option<&TimeZone>,
    stop: &CancellationToken,
    control: &mut Control,
) {
    let zone = tz.cloned().unwrap_or_else(|| {
        jiff::tz::db()
            .get(profile.time_zone())
            .unwrap_or(TimeZone::UTC)
    });
    let seed = jiff::Timestamp::now().as_nanosecond() as u64;
    let mut meter = SimulatedMeter::new(profile, seed);
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = stop.cancelled() => return,
            command = control.recv() => {
                match command {
                    Some(command) => control.serve(command, counters(pipeline)),
                    None => return,
                }
                continue;
            }
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

/// How much of a recording is read at a time.
pub(crate) const REPLAY_BLOCK: usize = 64 * 1024;

/// Where a paced replay is, carried from one block to the next.
struct Paced {
    /// The meter time of the last reading, for [`Pace::Recorded`].
    previous_time: Option<jiff::Timestamp>,
    /// Telegrams the pipeline had finished at the last pause.
    done: u64,
}

/// A replay in progress.
struct Replay<'a> {
    pipeline: &'a mut Pipeline,
    latest: &'a watch::Sender<Option<Arc<Reading>>>,
    stop: &'a CancellationToken,
    control: &'a mut Control,
}

impl Replay<'_> {
    async fn run(
        &mut self,
        path: &std::path::Path,
        pace: Pace,
        repeat: bool,
        health: &HealthHandle,
    ) {
        if path.as_os_str() == "-" {
            // Standard input: one pass, however `repeat` is set.
            match self.stream(tokio::io::stdin(), pace).await {
                Ok(true) => self.pipeline.finish(),
                Ok(false) => {}
                Err(e) => health.failed(format!("cannot read standard input: {e}")),
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
                let read = match tokio::fs::File::open(&file).await {
                    Ok(f) => self.stream(f, pace).await,
                    Err(e) => Err(e),
                };
                match read {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(e) => {
                        tracing::error!(path = %file.display(), error = %e, "Cannot read the recording.");
                        health.error(format!("cannot read {}: {e}", file.display()));
                    }
                }
                // A telegram cut by the file's end (or a read error) is
                // counted as truncated, not glued to the next file's first.
                self.pipeline.finish();
            }
            if !repeat || self.stop.is_cancelled() {
                return;
            }
            // Starting over is not a meter going backwards.
            self.pipeline.source_restarted();
        }
    }

    /// Feeds a recording from `reader` in blocks of [`REPLAY_BLOCK`] bytes,
    /// so memory stays flat however large the recording is. `Ok(false)`
    /// when `stop` fired or the last handle was dropped.
    async fn stream(
        &mut self,
        mut reader: impl tokio::io::AsyncRead + Unpin,
        pace: Pace,
    ) -> std::io::Result<bool> {
        let mut block = vec![0; REPLAY_BLOCK];
        let mut paced = Paced {
            previous_time: self.latest.borrow().as_ref().and_then(|r| r.meter_time),
            done: self.pipeline.telegrams_done(),
        };
        loop {
            let n = reader.read(&mut block).await?;
            if n == 0 {
                return Ok(true);
            }
            if !self.bytes(&block[..n], pace, &mut paced).await {
                return Ok(false);
            }
        }
    }

    /// Feeds one block of a recording line by line, pausing after each
    /// telegram as `pace` says. False when `stop` fired or the last handle
    /// was dropped.
    async fn bytes(&mut self, bytes: &[u8], pace: Pace, paced: &mut Paced) -> bool {
        if pace == Pace::Fast {
            // Small chunks, and room on the channel before each: a recording
            // replayed as fast as possible must not outrun the sinks (a live
            // meter never does), or readings would be dropped as lagged.
            for chunk in bytes.chunks(8 * 1024) {
                // At most a second per chunk: a stalled consumer (an SSE
                // client that stopped reading) must not stop the replay.
                let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
                while self.pipeline.channel_backlog() > FAST_REPLAY_BACKLOG
                    && tokio::time::Instant::now() < deadline
                {
                    if self.stop.is_cancelled() {
                        return false;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                self.pipeline.feed(chunk);
                if self.stop.is_cancelled() || !self.control.serve_waiting(counters(self.pipeline))
                {
                    return false;
                }
                tokio::task::yield_now().await;
            }
            return true;
        }
        // A block's last piece may be part of a line; the decoder does not
        // mind, and a telegram still ends (and pauses) at its own line end.
        for line in bytes.split_inclusive(|&b| b == b'\n') {
            self.pipeline.feed(line);
            let now_done = self.pipeline.telegrams_done();
            if now_done == paced.done {
                continue;
            }
            paced.done = now_done;
            let wait = match pace {
                Pace::Every(d) => d,
                Pace::Recorded => {
                    let t = self.latest.borrow().as_ref().and_then(|r| r.meter_time);
                    let gap = match (paced.previous_time, t) {
                        (Some(a), Some(b)) if b > a => {
                            Duration::try_from(b.duration_since(a)).unwrap_or_default()
                        }
                        _ => Duration::from_secs(1),
                    };
                    paced.previous_time = t;
                    gap.min(Duration::from_secs(60))
                }
                Pace::Fast => Duration::ZERO,
            };
            if !pause(wait, self.stop, self.control, self.pipeline).await {
                return false;
            }
        }
        true
    }
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

/// The backoff of a `tcp` source: `reconnect` with both bounds capped at
/// [`TCP_RETRY_CAP`].
pub(crate) fn tcp_backoff(min: Duration, max: Duration) -> Backoff {
    Backoff::new(min.min(TCP_RETRY_CAP), max.min(TCP_RETRY_CAP))
}

async fn tcp(
    pipeline: &mut Pipeline,
    address: &str,
    (min, max): (Duration, Duration),
    interval: Duration,
    health: &HealthHandle,
    stop: &CancellationToken,
    control: &mut Control,
) {
    // Capped: a connection attempt costs one SYN, and a bridge that comes back
    // must be found within 2 s, not at the end of a grown backoff step.
    let mut backoff = tcp_backoff(min, max);
    let mut connected_before = false;
    // A bridge that stops forwarding without closing: give up on the
    // connection after this much silence and reconnect.
    let silence = (interval * 6).max(Duration::from_secs(30));
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let connected = tokio::select! {
            r = tokio::time::timeout(TCP_CONNECT_TIMEOUT, tokio::net::TcpStream::connect(address)) => {
                r.unwrap_or_else(|_elapsed| Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {} s", TCP_CONNECT_TIMEOUT.as_secs()),
                )))
            }
            () = stop.cancelled() => return,
        };
        match connected {
            Ok(mut stream) => {
                tracing::info!(address, "Connected to the telegram stream.");
                if connected_before {
                    control.status.reconnects += 1;
                    health.set_counter("reconnects", control.status.reconnects);
                    metrics::counter!("p1gw_reconnects_total", "meter" => pipeline.meter().to_string())
                        .increment(1);
                }
                connected_before = true;
                control.status.connected = true;
                loop {
                    let read = tokio::select! {
                        r = tokio::time::timeout(silence, stream.read(&mut buf)) => r,
                        () = stop.cancelled() => return,
                        command = control.recv() => {
                            match command {
                                Some(command) => control.serve(command, counters(pipeline)),
                                None => return,
                            }
                            continue;
                        }
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
                control.status.connected = false;
                // Half a telegram from the closed connection: counted as
                // truncated, never published nor merged with the next one.
                pipeline.disconnected();
                health.degraded(format!("{address}: disconnected; reconnecting"));
            }
            Err(e) => {
                health.error(format!("cannot connect to {address}: {e}"));
                health.degraded(format!("cannot connect to {address}"));
            }
        }
        if !pause(backoff.next_delay(), stop, control, pipeline).await {
            return;
        }
    }
}
