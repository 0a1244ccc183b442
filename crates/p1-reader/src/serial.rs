//! The serial source: line settings and presets, the port, bit-7 masking, and
//! the session loop that reads while it drives the request line.
//!
//! # Line settings
//!
//! A 7-bit setting with parity (7E1, DSMR 2.2/3 and perhaps Veitur) is
//! opened as the 8-bit, no-parity setting of the same frame length (7E1 as
//! 8N1: start, 7 data bits, parity, stop = start, 8 data bits, stop). The
//! kernel then never zeroes nor drops a byte whose parity is wrong (termios
//! `INPCK`, which the serialport crate turns on with parity); the
//! [`LineFilter`] checks the parity bit in software, counts mismatches and
//! masks it off. A 7-bit setting without parity (7N1, Veitur's) is opened as
//! such and bit 7 is masked too: some USB adapters ignore `CS7` and deliver
//! the stop bit as bit 7. A byte the OS marks as a framing or parity error
//! arrives as NUL (never part of a telegram) and is counted as a line error;
//! with parity none, termios `IGNPAR` makes the kernel drop such bytes
//! silently, so they cannot be counted.
//!
//! # Disconnects
//!
//! A read that returns `Ok(0)` or an error means the device is gone
//! (docs/dependencies.md §2.4: after an unplug, `read` returns `Ok(0)` forever).
//! The session ends, the port is closed, and the reader reopens it after a
//! capped, jittered backoff ([`p1_core::Backoff`]), without restarting the
//! process. So does silence: no byte for six request intervals (at least
//! 30 s) reopens the port and re-toggles the request line.

use std::fmt;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use p1_core::{Backoff, HealthHandle};
use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::handle::{Command, Control};
use crate::request::{Driver, LineKind, ModemLine, ModemPin, NoLine, RequestConfig, RequestLine};
use crate::{Error, Pipeline};

/// Serial parity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parity {
    /// No parity bit.
    None,
    /// Even parity.
    Even,
    /// Odd parity.
    Odd,
}

/// Serial line settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LineSettings {
    /// Baud rate.
    pub baud: u32,
    /// Data bits, 5–8.
    pub data_bits: u8,
    /// Parity.
    pub parity: Parity,
    /// Stop bits, 1 or 2.
    pub stop_bits: u8,
}

impl fmt::Display for LineSettings {
    /// `9600 7E1`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parity = match self.parity {
            Parity::None => 'N',
            Parity::Even => 'E',
            Parity::Odd => 'O',
        };
        write!(
            f,
            "{} {}{}{}",
            self.baud, self.data_bits, parity, self.stop_bits
        )
    }
}

impl LineSettings {
    /// What the port is actually opened with: a 7-bit (or shorter) setting
    /// with parity becomes one more data bit without parity, so the parity
    /// bit arrives as the top data bit (see the [module docs](self)).
    pub fn opened_as(&self) -> LineSettings {
        if self.data_bits < 8 && self.parity != Parity::None {
            LineSettings {
                data_bits: self.data_bits + 1,
                parity: Parity::None,
                ..*self
            }
        } else {
            *self
        }
    }
}

/// Line-settings presets (docs/markets.md §a).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Preset {
    /// Veitur (Iceland), Iskra IE.5: 9600 7N1.
    Veitur,
    /// Veitur with even parity: 9600 7E1.
    Veitur7e1,
    /// DSMR 2.2/3, IEC 62056-21: 9600 7E1.
    Dsmr22,
    /// DSMR 4/5: 115200 8N1.
    Dsmr4,
}

impl Preset {
    /// Every preset, in the order `p1gw probe` tries them.
    pub const ALL: [Preset; 4] = [
        Preset::Veitur,
        Preset::Veitur7e1,
        Preset::Dsmr22,
        Preset::Dsmr4,
    ];

    /// The config name: `veitur`, `veitur-7e1`, `dsmr22`, `dsmr4`.
    pub fn as_str(self) -> &'static str {
        match self {
            Preset::Veitur => "veitur",
            Preset::Veitur7e1 => "veitur-7e1",
            Preset::Dsmr22 => "dsmr22",
            Preset::Dsmr4 => "dsmr4",
        }
    }

    /// Parses a config name.
    pub fn from_name(name: &str) -> Option<Preset> {
        Preset::ALL.into_iter().find(|p| p.as_str() == name)
    }

    /// The preset's line settings.
    pub fn settings(self) -> LineSettings {
        let (baud, data_bits, parity) = match self {
            Preset::Veitur => (9600, 7, Parity::None),
            Preset::Veitur7e1 | Preset::Dsmr22 => (9600, 7, Parity::Even),
            Preset::Dsmr4 => (115_200, 8, Parity::None),
        };
        LineSettings {
            baud,
            data_bits,
            parity,
            stop_bits: 1,
        }
    }
}

/// What the [`LineFilter`] has seen on the line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LineStats {
    /// Bytes read from the port.
    pub bytes: u64,
    /// Bytes whose parity bit (checked in software) was wrong.
    pub parity_errors: u64,
    /// NUL bytes: what the OS delivers for a byte with a framing or parity
    /// error (never part of a telegram).
    pub line_errors: u64,
    /// Of the bytes read as 8 bits: those with bit 7 set.
    pub bit7_set: u64,
    /// Of the bytes read as 8 bits: those whose bit 7 equals the even parity
    /// of the low 7 bits.
    pub bit7_even: u64,
    /// Bytes read as 8 bits (the port opened with 8 data bits).
    pub bytes_8bit: u64,
}

impl LineStats {
    /// What `self` counted beyond `earlier`.
    pub(crate) fn since(&self, earlier: &LineStats) -> LineStats {
        LineStats {
            bytes: self.bytes.saturating_sub(earlier.bytes),
            parity_errors: self.parity_errors.saturating_sub(earlier.parity_errors),
            line_errors: self.line_errors.saturating_sub(earlier.line_errors),
            bit7_set: self.bit7_set.saturating_sub(earlier.bit7_set),
            bit7_even: self.bit7_even.saturating_sub(earlier.bit7_even),
            bytes_8bit: self.bytes_8bit.saturating_sub(earlier.bytes_8bit),
        }
    }

    /// Adds `other`'s counts.
    pub(crate) fn add(&mut self, other: &LineStats) {
        self.bytes += other.bytes;
        self.parity_errors += other.parity_errors;
        self.line_errors += other.line_errors;
        self.bit7_set += other.bit7_set;
        self.bit7_even += other.bit7_even;
        self.bytes_8bit += other.bytes_8bit;
    }
}

/// Turns the bytes the port delivers into the data bits the meter sent:
/// checks and strips a parity bit carried as the top data bit, masks bit 7 on
/// 7-bit settings, counts errors. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct LineFilter {
    /// The data bits the meter sends.
    data_bits: u8,
    /// The parity checked in software (the port was opened one bit wider).
    soft_parity: Option<Parity>,
    /// Whether bytes arrive as 8 bits (bit-7 statistics are meaningful).
    eight_bit: bool,
    stats: LineStats,
}

impl LineFilter {
    /// The filter for a port opened for `settings` (with
    /// [`LineSettings::opened_as`]).
    pub fn new(settings: &LineSettings) -> LineFilter {
        let opened = settings.opened_as();
        LineFilter {
            data_bits: settings.data_bits,
            soft_parity: (opened.parity != settings.parity).then_some(settings.parity),
            eight_bit: opened.data_bits == 8,
            stats: LineStats::default(),
        }
    }

    /// What was seen so far.
    pub fn stats(&self) -> LineStats {
        self.stats
    }

    /// Filters `bytes` in place.
    pub fn apply(&mut self, bytes: &mut [u8]) {
        self.stats.bytes += bytes.len() as u64;
        let data_mask = if self.data_bits >= 8 {
            0xFF
        } else {
            (1u8 << self.data_bits) - 1
        };
        for b in bytes.iter_mut() {
            if self.eight_bit {
                self.stats.bytes_8bit += 1;
                let high = *b & 0x80 != 0;
                if high {
                    self.stats.bit7_set += 1;
                }
                if high == even_parity_bit(*b & 0x7F) {
                    self.stats.bit7_even += 1;
                }
            }
            if *b == 0 {
                self.stats.line_errors += 1;
            }
            if let Some(parity) = self.soft_parity {
                let data = *b & data_mask;
                let bit = *b & (1 << self.data_bits) != 0;
                let expected = match parity {
                    Parity::Even => even_parity_bit(data),
                    Parity::Odd => !even_parity_bit(data),
                    Parity::None => bit,
                };
                if bit != expected {
                    self.stats.parity_errors += 1;
                }
            }
            *b &= data_mask;
        }
    }
}

/// The even-parity bit of `data`: set when `data` has an odd number of ones.
fn even_parity_bit(data: u8) -> bool {
    data.count_ones() % 2 == 1
}

/// What a serial session does with the bytes it reads (already filtered).
pub trait Consume: Send {
    /// Takes `bytes`; returns how many telegrams (their `!` lines) they
    /// completed, which ends a poll early.
    fn consume(&mut self, bytes: &[u8]) -> u64;

    /// Telegrams decoded and rejected so far, for a status request.
    fn counters(&self) -> (u64, u64) {
        (0, 0)
    }
}

impl Consume for Pipeline {
    fn consume(&mut self, bytes: &[u8]) -> u64 {
        let before = self.telegrams_done();
        self.feed(bytes);
        self.telegrams_done() - before
    }

    fn counters(&self) -> (u64, u64) {
        (self.telegrams_ok(), self.telegrams_rejected())
    }
}

/// An open meter port: the byte stream, its request line and its filter.
pub struct Port<S = tokio_serial::SerialStream> {
    stream: S,
    line: Box<dyn RequestLine>,
    filter: LineFilter,
    name: String,
}

impl<S> fmt::Debug for Port<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Port")
            .field("name", &self.name)
            .field("line", &self.line.describe())
            .field("filter", &self.filter)
            .finish_non_exhaustive()
    }
}

impl Port {
    /// Opens `path` exclusively with `settings` (see
    /// [`LineSettings::opened_as`]) and the request line of `request`
    /// (initially low).
    ///
    /// # Errors
    /// [`Error::PortMissing`] when nothing is at `path`,
    /// [`Error::PortOpen`] when it cannot be opened (in use, permissions, not
    /// a tty), [`Error::RequestLine`] when the request line cannot be had
    /// (an RTS/DTR or GPIO failure).
    pub fn open(
        path: &Path,
        settings: &LineSettings,
        request: &RequestConfig,
    ) -> Result<Port, Error> {
        let opened = settings.opened_as();
        let data_bits = match opened.data_bits {
            5 => tokio_serial::DataBits::Five,
            6 => tokio_serial::DataBits::Six,
            7 => tokio_serial::DataBits::Seven,
            _ => tokio_serial::DataBits::Eight,
        };
        let parity = match opened.parity {
            Parity::None => tokio_serial::Parity::None,
            Parity::Even => tokio_serial::Parity::Even,
            Parity::Odd => tokio_serial::Parity::Odd,
        };
        let stop_bits = if opened.stop_bits == 2 {
            tokio_serial::StopBits::Two
        } else {
            tokio_serial::StopBits::One
        };
        let missing = || Error::PortMissing {
            port: path.to_path_buf(),
        };
        let text = path.to_str().ok_or_else(|| Error::PortOpen {
            port: path.to_path_buf(),
            reason: "the path is not UTF-8".to_owned(),
        })?;
        let native = tokio_serial::new(text, opened.baud)
            .data_bits(data_bits)
            .parity(parity)
            .stop_bits(stop_bits)
            .flow_control(tokio_serial::FlowControl::None)
            .exclusive(true)
            .open_native()
            .map_err(|e| {
                // serialport reports ENOENT and EBUSY alike; look for the file.
                if std::fs::metadata(path).is_err() {
                    missing()
                } else {
                    Error::PortOpen {
                        port: path.to_path_buf(),
                        reason: e.to_string(),
                    }
                }
            })?;
        let line_error = |source: io::Error| Error::RequestLine {
            line: request.line.to_string(),
            source,
        };
        let modem = |pin| -> Result<Box<dyn RequestLine>, Error> {
            use tokio_serial::SerialPort as _;
            let clone = native.try_clone().map_err(|e| line_error(e.into()))?;
            Ok(Box::new(ModemLine::new(clone, pin, request.invert)))
        };
        let line: Box<dyn RequestLine> = match &request.line {
            LineKind::None => Box::new(NoLine),
            LineKind::Rts => modem(ModemPin::Rts)?,
            LineKind::Dtr => modem(ModemPin::Dtr)?,
            LineKind::Gpio { chip, offset } => {
                crate::request::open_gpio(chip, *offset, request.invert).map_err(line_error)?
            }
        };
        let stream = tokio_serial::SerialStream::try_from(native).map_err(|e| Error::PortOpen {
            port: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Ok(Port {
            stream,
            line,
            filter: LineFilter::new(settings),
            name: path.display().to_string(),
        })
    }
}

impl Port {
    /// Discards bytes the OS has buffered but not yet delivered (best
    /// effort), so what is read next arrived after this call.
    pub fn discard_input(&self) {
        use tokio_serial::SerialPort as _;
        if let Err(e) = self.stream.clear(tokio_serial::ClearBuffer::Input) {
            tracing::debug!(port = %self.name, error = %e, "Cannot discard the input buffer.");
        }
    }
}

impl<S: AsyncRead + Unpin + Send> Port<S> {
    /// A port from parts: a byte stream, a request line and the settings the
    /// meter sends with (for the filter). For tests and other transports.
    pub fn from_parts(
        stream: S,
        line: Box<dyn RequestLine>,
        settings: &LineSettings,
        name: impl Into<String>,
    ) -> Port<S> {
        Port {
            stream,
            line,
            filter: LineFilter::new(settings),
            name: name.into(),
        }
    }

    /// What the line filter has counted so far.
    pub fn line_stats(&self) -> LineStats {
        self.filter.stats()
    }

    /// The request line's description.
    pub fn request_line(&self) -> String {
        self.line.describe()
    }

    /// Reads until `until`, `stop`, end of file, a read error or silence,
    /// while driving the request line as `request` says; hands every filtered
    /// chunk to `consumer`.
    pub async fn listen(
        &mut self,
        request: &RequestConfig,
        until: Option<Instant>,
        stop: &CancellationToken,
        consumer: &mut dyn Consume,
    ) -> Session {
        let mut control = Control::detached();
        session(
            self,
            request,
            silence_timeout(request.interval),
            until,
            stop,
            &mut control,
            consumer,
        )
        .await
    }
}

/// How long without a byte before a serial session gives up: six request
/// intervals, at least 30 s (docs/markets.md §e row 20).
pub fn silence_timeout(interval: Duration) -> Duration {
    (interval * 6).max(Duration::from_secs(30))
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEnd {
    /// `stop` fired (or the reader's last handle was dropped).
    Stopped,
    /// `until` passed.
    TimeUp,
    /// The device is gone: end of file or a read error (the text).
    Gone(String),
    /// No byte within the silence timeout.
    Silent(Duration),
}

/// What a session did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Why it ended.
    pub end: SessionEnd,
    /// Bytes read.
    pub bytes: u64,
    /// The first request-line failure, if any (the session goes on reading).
    pub line_error: Option<String>,
    /// Polls that ended without a telegram.
    pub poll_timeouts: u64,
}

/// One session on an open port. See [`Port::listen`]; the reader's loop also
/// serves its handle's commands here.
pub(crate) async fn session<S: AsyncRead + Unpin + Send>(
    port: &mut Port<S>,
    request: &RequestConfig,
    silence: Duration,
    until: Option<Instant>,
    stop: &CancellationToken,
    control: &mut Control,
    consumer: &mut dyn Consume,
) -> Session {
    let mut driver = Driver::new(request);
    let mut out = Session {
        end: SessionEnd::Stopped,
        bytes: 0,
        line_error: None,
        poll_timeouts: 0,
    };
    control.begin_session();
    let r = driver.start(Instant::now(), &mut *port.line);
    line_failed(&mut out, r, &*port.line, control);
    control.status.request_high = driver.is_high();
    let mut buf = vec![0u8; 4096];
    let mut last_byte = Instant::now();
    let far = || Instant::now() + Duration::from_secs(86_400 * 365);
    let end = loop {
        let deadline = driver.deadline();
        tokio::select! {
            biased;
            () = stop.cancelled() => break SessionEnd::Stopped,
            () = tokio::time::sleep_until(until.unwrap_or_else(far)), if until.is_some() => {
                break SessionEnd::TimeUp;
            }
            command = control.recv() => match command {
                None => break SessionEnd::Stopped,
                Some(Command::Retrigger(reply)) => {
                    let result = driver.retrigger(Instant::now(), &mut *port.line);
                    let driven = result.as_ref().map_or(true, |d| *d);
                    line_failed(&mut out, result.map(|_| ()), &*port.line, control);
                    control.status.request_high = driver.is_high();
                    // The caller may have stopped waiting: nothing to do then.
                    reply.send(driven).unwrap_or(());
                }
                Some(Command::Status(reply)) => control.reply_status(reply, consumer.counters()),
            },
            () = tokio::time::sleep_until(deadline.unwrap_or_else(far)), if deadline.is_some() => {
                let r = driver.on_deadline(Instant::now(), &mut *port.line);
                line_failed(&mut out, r, &*port.line, control);
                control.status.request_high = driver.is_high();
            }
            () = tokio::time::sleep_until(last_byte + silence) => break SessionEnd::Silent(silence),
            read = port.stream.read(&mut buf) => match read {
                Ok(0) => break SessionEnd::Gone("the device reported end of file".to_owned()),
                Ok(n) => {
                    last_byte = Instant::now();
                    out.bytes += n as u64;
                    let chunk = &mut buf[..n];
                    port.filter.apply(chunk);
                    control.note_line(port.filter.stats());
                    if consumer.consume(chunk) > 0 {
                        let r = driver.on_telegram(&mut *port.line);
                        line_failed(&mut out, r, &*port.line, control);
                        control.status.request_high = driver.is_high();
                    }
                }
                Err(e) => break SessionEnd::Gone(e.to_string()),
            },
        }
    };
    // Drop the request; on a vanished device this fails, which is fine.
    if let Err(e) = driver.stop(&mut *port.line) {
        tracing::debug!(error = %e, "Dropping the request line at the end of the session failed.");
    }
    control.status.request_high = false;
    control.note_line(port.filter.stats());
    out.poll_timeouts = driver.poll_timeouts();
    out.end = end;
    out
}

/// A failing request line is reported once per session; reading goes on,
/// since a cable may hold the pin high by itself.
fn line_failed(
    out: &mut Session,
    result: io::Result<()>,
    line: &dyn RequestLine,
    control: &Control,
) {
    if let Err(e) = result
        && out.line_error.is_none()
    {
        tracing::warn!(line = %line.describe(), error = %e, "Cannot drive the request line; reading on without it.");
        let text = format!("request line {}: {e}", line.describe());
        control.report_error(&text);
        out.line_error = Some(text);
    }
}

/// Opens a meter port; the real one opens a serial device, tests hand out
/// in-memory streams and fake lines.
pub(crate) trait Open: Send {
    /// The byte stream.
    type Stream: AsyncRead + Unpin + Send;
    /// Opens the port.
    fn open(&mut self) -> impl Future<Output = Result<Port<Self::Stream>, Error>> + Send;

    /// Whether the device is there now (its path exists), or `None` when
    /// that cannot be told: then only the backoff decides when to retry.
    fn present(&self) -> impl Future<Output = Option<bool>> + Send {
        std::future::ready(None)
    }
}

/// Opens a serial device.
pub(crate) struct SerialOpener {
    pub(crate) path: PathBuf,
    pub(crate) settings: LineSettings,
    pub(crate) request: RequestConfig,
}

impl Open for SerialOpener {
    type Stream = tokio_serial::SerialStream;
    async fn open(&mut self) -> Result<Port, Error> {
        Port::open(&self.path, &self.settings, &self.request)
    }

    /// A stat of the path (following a udev symlink such as `/dev/p1` or a
    /// `/dev/serial/by-id/` name, which vanish on unplug), off the runtime.
    async fn present(&self) -> Option<bool> {
        tokio::fs::try_exists(&self.path).await.ok()
    }
}

/// How often a reader whose device path has vanished checks whether it is
/// back: a replugged adapter is opened within this (plus the open itself),
/// however long the backoff has grown.
pub const PRESENCE_POLL: Duration = Duration::from_millis(500);

/// How a wait between two open attempts ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WaitEnd {
    /// The backoff delay passed.
    Due,
    /// The device path was missing and is back: open it now.
    Reappeared,
    /// `stop` fired or the last handle was dropped.
    Stop,
}

/// Waits `delay` before the next open attempt, serving the handle, and
/// checks every [`PRESENCE_POLL`] whether the device is there. When its path
/// was missing (at the start or at any check) and exists again, the wait
/// ends at once: a replug is found within half a second, not at the next
/// backoff step. While the path exists but cannot be opened (permissions,
/// in use), nothing changes: the backoff alone paces the attempts, as it
/// does for an opener that cannot tell presence.
async fn wait_before_reopen<O: Open>(
    opener: &O,
    delay: Duration,
    stop: &CancellationToken,
    control: &mut Control,
    pipeline: &Pipeline,
) -> WaitEnd {
    let deadline = tokio::time::Instant::now() + delay;
    let Some(present) = opener.present().await else {
        return match crate::source::pause(delay, stop, control, pipeline).await {
            true => WaitEnd::Due,
            false => WaitEnd::Stop,
        };
    };
    let mut missing = !present;
    loop {
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return WaitEnd::Due;
        }
        let step = (deadline - now).min(PRESENCE_POLL);
        if !crate::source::pause(step, stop, control, pipeline).await {
            return WaitEnd::Stop;
        }
        match opener.present().await {
            Some(true) if missing => return WaitEnd::Reappeared,
            Some(false) => missing = true,
            _ => {}
        }
    }
}

/// The serial source's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialSource {
    /// The device, e.g. `/dev/ttyUSB0` or a `/dev/serial/by-id/` name.
    pub port: PathBuf,
    /// The line settings the meter sends with.
    pub settings: LineSettings,
    /// The request line.
    pub request: RequestConfig,
    /// Reopen backoff, first delay.
    pub reconnect_min: Duration,
    /// Reopen backoff, cap.
    pub reconnect_max: Duration,
}

/// The serial reader: open, read (driving the request line), and on a
/// disconnect or silence close, back off, reopen — until `stop`.
#[allow(
    clippy::too_many_arguments,
    reason = "internal: the reader's pieces, each used"
)]
pub(crate) async fn serial_loop<O: Open>(
    pipeline: &mut Pipeline,
    opener: &mut O,
    name: &str,
    request: &RequestConfig,
    (min, max): (Duration, Duration),
    health: &HealthHandle,
    stop: &CancellationToken,
    control: &mut Control,
) {
    let mut backoff = Backoff::new(min, max);
    let silence = silence_timeout(request.interval);
    let mut opened_before = false;
    // Open failures repeat every backoff step: log the first at WARN, the
    // rest at DEBUG until the port opens again.
    let mut open_failures = 0u64;
    loop {
        match opener.open().await {
            Ok(mut port) => {
                open_failures = 0;
                if opened_before {
                    control.status.reconnects += 1;
                    health.set_counter("reconnects", control.status.reconnects);
                    metrics::counter!("p1gw_reconnects_total", "meter" => pipeline.meter().to_string())
                        .increment(1);
                    tracing::info!(
                        port = name,
                        reconnects = control.status.reconnects,
                        "Serial port reopened."
                    );
                } else {
                    tracing::info!(port = name, line = %port.request_line(), "Serial port open.");
                }
                opened_before = true;
                control.status.connected = true;
                health.ok();
                let session =
                    session(&mut port, request, silence, None, stop, control, pipeline).await;
                control.status.connected = false;
                drop(port);
                // A frame cut off by the disconnect counts as truncated and is
                // never published, nor merged with the next session's bytes.
                pipeline.disconnected();
                if session.bytes > 0 {
                    backoff.reset();
                }
                match session.end {
                    SessionEnd::Stopped | SessionEnd::TimeUp => return,
                    SessionEnd::Gone(why) => {
                        tracing::warn!(port = name, reason = %why, "Serial port gone; reopening.");
                        health.error(format!("{name}: {why}"));
                        health.degraded(format!("{name}: disconnected ({why}); reopening"));
                    }
                    SessionEnd::Silent(after) => {
                        tracing::warn!(
                            port = name,
                            silence_s = after.as_secs(),
                            "No bytes from the meter; reopening the port and re-toggling the request line."
                        );
                        health.error(format!("{name}: no bytes for {} s", after.as_secs()));
                        health.degraded(format!(
                            "{name}: silent for {} s; reopening",
                            after.as_secs()
                        ));
                    }
                }
            }
            Err(e) => {
                open_failures += 1;
                if open_failures == 1 {
                    tracing::warn!(port = name, error = %e, "Cannot open the serial port; retrying with backoff.");
                } else {
                    tracing::debug!(port = name, error = %e, attempts = open_failures, "Cannot open the serial port.");
                }
                health.error(e.to_string());
                health.degraded(format!("{name}: cannot open: {e}"));
            }
        }
        match wait_before_reopen(opener, backoff.next_delay(), stop, control, pipeline).await {
            WaitEnd::Due => {}
            WaitEnd::Reappeared => {
                tracing::debug!(port = name, "The serial device is back; opening it now.");
                // Start the backoff afresh: should this open fail (udev may
                // not have set the permissions yet), the next try is `min`
                // away, not the long delay the unplug had grown to.
                backoff.reset();
            }
            WaitEnd::Stop => return,
        }
    }
}

#[cfg(test)]
mod tests;
