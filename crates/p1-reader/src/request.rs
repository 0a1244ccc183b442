//! The data request line (P1 pin 2) and the modes that drive it.
//!
//! A P1 meter sends only while its request pin is raised. What raises it is a
//! [`RequestLine`]: the serial port's RTS or DTR, a GPIO line of the computer,
//! nothing at all (a cable that ties the pin high), or, in tests, a
//! [`FakeLine`] that records every call. How it is raised is a
//! [`RequestMode`] (docs/markets.md §a):
//!
//! * **hold**: raise once and keep it raised; the meter sends on its own
//!   schedule (DSMR practice).
//! * **pulse**: raise it for `pulse` every `interval` (gardart's Veitur
//!   reader: 50 ms every 10 s).
//! * **poll**: every `interval`, raise it and keep it raised until a whole
//!   telegram (its `!` line) has arrived, then drop it; if none arrives, drop
//!   it [`poll_window`] after raising, so the meter sees a falling edge before
//!   the next request.
//!
//! The schedule is a small state machine (`Driver`) that the serial session
//! steps at its deadlines, so every mode runs under tokio's clock and
//! paused-time tests see exact instants.

use std::fmt;
use std::io;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// How long the line stays low when a retrigger
/// ([`crate::ReaderHandle::retrigger`]) re-toggles it, and the least time it
/// is low between two polls.
pub const RETOGGLE_LOW: Duration = Duration::from_millis(500);

/// A line that asks the meter for data.
///
/// `set(true)` raises the request (the meter may send), `set(false)` drops it.
/// Implementations apply any polarity inversion themselves, so callers always
/// speak of the meter's view of pin 2.
pub trait RequestLine: Send {
    /// Raises (`true`) or drops (`false`) the request.
    ///
    /// # Errors
    /// The OS refused: a pty has no modem lines (`ENOTTY`), the GPIO line went
    /// away, the port was unplugged.
    fn set(&mut self, high: bool) -> io::Result<()>;

    /// What the line is, for logs: `none`, `rts`, `dtr`, `gpio:gpiochip0:17`.
    fn describe(&self) -> String;
}

/// Which line to drive, as configured.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LineKind {
    /// No line: the cable holds the request pin high itself.
    #[default]
    None,
    /// The serial port's RTS output.
    Rts,
    /// The serial port's DTR output.
    Dtr,
    /// A GPIO line (Linux GPIO character device).
    Gpio {
        /// `gpiochip0` (meaning `/dev/gpiochip0`) or a path.
        chip: String,
        /// The line's offset on the chip.
        offset: u32,
    },
}

impl fmt::Display for LineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LineKind::None => f.write_str("none"),
            LineKind::Rts => f.write_str("rts"),
            LineKind::Dtr => f.write_str("dtr"),
            LineKind::Gpio { chip, offset } => write!(f, "gpio:{chip}:{offset}"),
        }
    }
}

impl LineKind {
    /// Parses `none`, `rts`, `dtr` or `gpio:<chip>:<offset>`.
    ///
    /// # Errors
    /// A message saying what is expected.
    pub fn parse(text: &str) -> Result<LineKind, String> {
        let usage = "expected \"none\", \"rts\", \"dtr\" or \"gpio:<chip>:<offset>\" (e.g. \"gpio:gpiochip0:17\")";
        match text {
            "none" => Ok(LineKind::None),
            "rts" => Ok(LineKind::Rts),
            "dtr" => Ok(LineKind::Dtr),
            _ => {
                let (chip, offset) = text
                    .strip_prefix("gpio:")
                    .and_then(|g| g.rsplit_once(':'))
                    .ok_or_else(|| format!("{text:?}: {usage}"))?;
                if chip.is_empty() {
                    return Err(format!("{text:?}: no GPIO chip named; {usage}"));
                }
                let offset = offset
                    .parse()
                    .map_err(|_| format!("{text:?}: the line offset must be a number; {usage}"))?;
                Ok(LineKind::Gpio {
                    chip: chip.to_owned(),
                    offset,
                })
            }
        }
    }
}

/// How the request line is driven.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestMode {
    /// Raise once, keep raised.
    Hold,
    /// Raise for `pulse` every `interval`.
    Pulse,
    /// Every `interval`: raise, read until the telegram's `!` line (or
    /// [`poll_window`] passed), drop.
    Poll,
}

impl RequestMode {
    /// `hold`, `pulse` or `poll`.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestMode::Hold => "hold",
            RequestMode::Pulse => "pulse",
            RequestMode::Poll => "poll",
        }
    }
}

/// The request line's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestConfig {
    /// Which line.
    pub line: LineKind,
    /// How it is driven (unused with [`LineKind::None`]).
    pub mode: RequestMode,
    /// How long a pulse lasts ([`RequestMode::Pulse`]).
    pub pulse: Duration,
    /// How often a telegram is requested ([`RequestMode::Pulse`],
    /// [`RequestMode::Poll`]); also sets the silence timeout of a serial
    /// source (6 × interval, at least 30 s).
    pub interval: Duration,
    /// Drive the line inverted: "raised" de-asserts it. For RTS/DTR wired to
    /// pin 2 without an inverting transistor (an asserted RTS is *low* on
    /// FTDI and most TTL adapters), or a GPIO behind an inverting stage.
    pub invert: bool,
}

impl Default for RequestConfig {
    /// No line; poll every 10 s (the Veitur default) once a line is set.
    fn default() -> Self {
        RequestConfig {
            line: LineKind::None,
            mode: RequestMode::Poll,
            pulse: Duration::from_millis(50),
            interval: Duration::from_secs(10),
            invert: false,
        }
    }
}

/// How long the line stays raised in poll mode when no telegram arrives:
/// the interval less a tenth of it (at most 1 s, at least
/// [`RETOGGLE_LOW`] when the interval allows), so the meter sees the line
/// drop before the next request.
pub fn poll_window(interval: Duration) -> Duration {
    let gap = (interval / 10)
        .min(Duration::from_secs(1))
        .max(RETOGGLE_LOW.min(interval / 2));
    interval.saturating_sub(gap)
}

/// No line to drive: every call succeeds and does nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoLine;

impl RequestLine for NoLine {
    fn set(&mut self, _high: bool) -> io::Result<()> {
        Ok(())
    }
    fn describe(&self) -> String {
        "none".to_owned()
    }
}

/// A line for tests: records every call with its `tokio::time::Instant`, so
/// paused-time tests can check the exact sequence a real line would see.
///
/// Used where nothing real can run: a pty has no RTS/DTR (`ENOTTY`,
/// docs/dependencies.md §2.5) and CI has no GPIO chip. Clones share the record.
#[derive(Debug, Clone, Default)]
pub struct FakeLine {
    calls: Arc<Mutex<Vec<(Instant, bool)>>>,
    fail: Arc<Mutex<Option<io::ErrorKind>>>,
}

impl FakeLine {
    /// A fresh line with no calls.
    pub fn new() -> FakeLine {
        FakeLine::default()
    }

    /// Every `set` so far: when, and the level asked for.
    pub fn calls(&self) -> Vec<(Instant, bool)> {
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The last level set, if any.
    pub fn level(&self) -> Option<bool> {
        self.calls().last().map(|(_, high)| *high)
    }

    /// Makes every later `set` fail with `kind` (still recorded), or succeed
    /// again with `None`.
    pub fn fail_with(&self, kind: Option<io::ErrorKind>) {
        *self.fail.lock().unwrap_or_else(PoisonError::into_inner) = kind;
    }
}

impl RequestLine for FakeLine {
    fn set(&mut self, high: bool) -> io::Result<()> {
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((Instant::now(), high));
        match *self.fail.lock().unwrap_or_else(PoisonError::into_inner) {
            Some(kind) => Err(io::Error::new(kind, "fake line failure")),
            None => Ok(()),
        }
    }
    fn describe(&self) -> String {
        "fake".to_owned()
    }
}

/// Which modem-control output of a serial port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ModemPin {
    Rts,
    Dtr,
}

/// RTS or DTR on the open serial port. Holds a duplicate of the port's file
/// descriptor (the tokio stream cannot be shared), dropped with the session.
pub(crate) struct ModemLine {
    port: Box<dyn tokio_serial::SerialPort>,
    pin: ModemPin,
    invert: bool,
}

impl ModemLine {
    pub(crate) fn new(
        port: Box<dyn tokio_serial::SerialPort>,
        pin: ModemPin,
        invert: bool,
    ) -> ModemLine {
        ModemLine { port, pin, invert }
    }
}

impl RequestLine for ModemLine {
    fn set(&mut self, high: bool) -> io::Result<()> {
        let level = high != self.invert;
        match self.pin {
            ModemPin::Rts => self.port.write_request_to_send(level),
            ModemPin::Dtr => self.port.write_data_terminal_ready(level),
        }
        .map_err(io::Error::from)
    }
    fn describe(&self) -> String {
        let pin = match self.pin {
            ModemPin::Rts => "rts",
            ModemPin::Dtr => "dtr",
        };
        if self.invert {
            format!("{pin} (inverted)")
        } else {
            pin.to_owned()
        }
    }
}

/// A GPIO line requested as an output through the Linux GPIO character
/// device. Released (left as the kernel decides) when dropped.
#[cfg(target_os = "linux")]
pub(crate) struct GpioLine {
    request: gpiocdev::Request,
    offset: u32,
    name: String,
}

#[cfg(target_os = "linux")]
impl GpioLine {
    /// Requests `offset` on `chip` (`gpiochip0` or a path) as an output,
    /// initially low (inactive), active-low when `invert`.
    pub(crate) fn open(chip: &str, offset: u32, invert: bool) -> io::Result<GpioLine> {
        let path = if chip.contains('/') {
            std::path::PathBuf::from(chip)
        } else {
            std::path::Path::new("/dev").join(chip)
        };
        let mut builder = gpiocdev::Request::builder();
        builder
            .on_chip(&path)
            .with_consumer("p1gw")
            .with_line(offset)
            .as_output(gpiocdev::line::Value::Inactive);
        if invert {
            builder.as_active_low();
        }
        let request = builder
            .request()
            .map_err(|e| io::Error::other(format!("{}: line {offset}: {e}", path.display())))?;
        Ok(GpioLine {
            request,
            offset,
            name: format!(
                "gpio:{chip}:{offset}{}",
                if invert { " (inverted)" } else { "" }
            ),
        })
    }
}

#[cfg(target_os = "linux")]
impl RequestLine for GpioLine {
    fn set(&mut self, high: bool) -> io::Result<()> {
        let value = if high {
            gpiocdev::line::Value::Active
        } else {
            gpiocdev::line::Value::Inactive
        };
        self.request
            .set_value(self.offset, value)
            .map_err(io::Error::other)
    }
    fn describe(&self) -> String {
        self.name.clone()
    }
}

/// Opens a GPIO request line; elsewhere than Linux there is no GPIO
/// character device.
pub(crate) fn open_gpio(chip: &str, offset: u32, invert: bool) -> io::Result<Box<dyn RequestLine>> {
    #[cfg(target_os = "linux")]
    {
        Ok(Box::new(GpioLine::open(chip, offset, invert)?))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (chip, offset, invert);
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "GPIO request lines need Linux's GPIO character device",
        ))
    }
}

/// Where the schedule stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Not started, or stopped.
    Idle,
    /// The line is raised.
    High,
    /// The line is low until the next request.
    Low,
}

/// The request schedule of one session: when to raise and drop the line.
///
/// The session calls [`Driver::start`] once the port is open, then
/// [`Driver::on_deadline`] whenever [`Driver::deadline`] passes,
/// [`Driver::on_telegram`] when a telegram's `!` line arrived, and
/// [`Driver::stop`] at the end. Every method takes the current instant from
/// the caller, so the same schedule runs under real or paused time; cycles
/// are anchored to their planned start, so they do not drift.
pub(crate) struct Driver {
    /// `None`: nothing to drive ([`LineKind::None`]).
    mode: Option<RequestMode>,
    pulse: Duration,
    interval: Duration,
    phase: Phase,
    /// When the current request cycle started (pulse, poll).
    cycle: Instant,
    /// The next step, if one is planned.
    next: Option<Instant>,
    /// Polls that ended without a telegram.
    poll_timeouts: u64,
}

impl Driver {
    pub(crate) fn new(config: &RequestConfig) -> Driver {
        Driver {
            mode: (config.line != LineKind::None).then_some(config.mode),
            pulse: config.pulse,
            interval: config.interval,
            phase: Phase::Idle,
            cycle: Instant::now(),
            next: None,
            poll_timeouts: 0,
        }
    }

    /// When the driver next wants [`Driver::on_deadline`].
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.next
    }

    /// Whether the line is raised now (as far as the driver asked).
    pub(crate) fn is_high(&self) -> bool {
        self.phase == Phase::High
    }

    /// Polls that timed out without a telegram.
    pub(crate) fn poll_timeouts(&self) -> u64 {
        self.poll_timeouts
    }

    /// Raises the line for the first request.
    pub(crate) fn start(&mut self, now: Instant, line: &mut dyn RequestLine) -> io::Result<()> {
        if self.mode.is_none() {
            return Ok(());
        }
        self.raise(now, line)
    }

    /// Starts a request cycle at `at`: raise, and plan when to drop.
    fn raise(&mut self, at: Instant, line: &mut dyn RequestLine) -> io::Result<()> {
        self.cycle = at;
        self.phase = Phase::High;
        self.next = match self.mode {
            Some(RequestMode::Pulse) => Some(at + self.pulse),
            Some(RequestMode::Poll) => Some(at + poll_window(self.interval)),
            Some(RequestMode::Hold) | None => None,
        };
        line.set(true)
    }

    /// Drops the line and plans the next raise at `next_raise`.
    fn drop_until(&mut self, next_raise: Instant, line: &mut dyn RequestLine) -> io::Result<()> {
        self.phase = Phase::Low;
        self.next = Some(next_raise);
        line.set(false)
    }

    /// The step planned for now.
    pub(crate) fn on_deadline(
        &mut self,
        now: Instant,
        line: &mut dyn RequestLine,
    ) -> io::Result<()> {
        let Some(planned) = self.next else {
            return Ok(());
        };
        if now < planned {
            return Ok(());
        }
        match (self.mode, self.phase) {
            (Some(RequestMode::Poll), Phase::High) => {
                self.poll_timeouts += 1;
                self.drop_until(self.cycle + self.interval, line)
            }
            (Some(RequestMode::Pulse), Phase::High) => {
                self.drop_until(self.cycle + self.interval, line)
            }
            (Some(_), Phase::Low) => {
                // Anchor the new cycle to its plan, unless the runtime was so
                // late that a whole interval was missed.
                let at = if now >= planned + self.interval {
                    now
                } else {
                    planned
                };
                self.raise(at, line)
            }
            _ => {
                self.next = None;
                Ok(())
            }
        }
    }

    /// A telegram's `!` line arrived: in poll mode, drop the line until the
    /// next interval.
    pub(crate) fn on_telegram(&mut self, line: &mut dyn RequestLine) -> io::Result<()> {
        if self.mode == Some(RequestMode::Poll) && self.phase == Phase::High {
            return self.drop_until(self.cycle + self.interval, line);
        }
        Ok(())
    }

    /// Re-toggles the request now: drop the line (if raised) and raise it
    /// again [`RETOGGLE_LOW`] later, starting a fresh cycle. False when no
    /// line is driven.
    pub(crate) fn retrigger(
        &mut self,
        now: Instant,
        line: &mut dyn RequestLine,
    ) -> io::Result<bool> {
        if self.mode.is_none() {
            return Ok(false);
        }
        self.drop_until(now + RETOGGLE_LOW, line)?;
        Ok(true)
    }

    /// Ends the session: drop the line if raised, plan nothing.
    pub(crate) fn stop(&mut self, line: &mut dyn RequestLine) -> io::Result<()> {
        let was_high = self.phase == Phase::High;
        self.phase = Phase::Idle;
        self.next = None;
        if was_high { line.set(false) } else { Ok(()) }
    }
}

#[cfg(test)]
mod tests;
