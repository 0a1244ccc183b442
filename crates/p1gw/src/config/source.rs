//! `[meter]` + `[source]`, or `[[meters]]`: which meters to read and how.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use p1_reader::{
    GuardConfig, LineKind, LineSettings, Pace, Parity, Preset, Profile, RequestMode,
};

use super::codes::CodeOverride;
use super::locate::{KeyPath, Problems};
use super::value::{
    RawDuration, RawSize, check_name, format_duration, parse_duration, parse_flow, parse_host_port,
    parse_power, parse_size, parse_time_zone, spelled,
};

/// The smallest `max_telegram_bytes`: a DSMR 5 telegram with a text message is about 1.5 KiB.
pub const MIN_TELEGRAM_BYTES: u64 = 1024;
/// The largest `max_telegram_bytes`.
pub const MAX_TELEGRAM_BYTES: u64 = 1 << 20;
/// The shortest request interval for a Veitur meter (docs/markets.md §a: default and minimum
/// 10 s; faster is unverified).
pub const VEITUR_MIN_INTERVAL: Duration = Duration::from_secs(10);

/// `[meter]` (or one entry of `[[meters]]` without its `source`): what the meter is called and
/// which clock it keeps.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MeterTable {
    /// The meter's name, used in MQTT topics, InfluxDB tags and Home Assistant device names:
    /// ASCII letters, digits, `-` and `_`. Each meter needs its own.
    pub name: String,
    /// The IANA time zone the meter's clock shows, used to read its timestamps:
    /// `"Atlantic/Reykjavik"` for Veitur (UTC all year), `"Europe/Amsterdam"` for DSMR,
    /// `"Europe/Brussels"` for Fluvius.
    pub tz: String,
    /// The spike guard: readings whose totals go backwards (a "zero spike") or grow faster
    /// than the meter can count are held back from the sinks and counted. On by default;
    /// `spike_guard = { enabled = false }` turns it off.
    #[serde(default)]
    pub spike_guard: SpikeGuardConfig,
    /// `[meter.codes."0-1:24.2.5"]`: the user's rules for the meter's codes, by code
    /// (`A-B:C.D.E`, or `A-n:C.D.E` for any M-Bus channel).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub codes: BTreeMap<String, CodeOverride>,
}

/// `spike_guard = { … }` of a meter: the bounds beyond which a reading's cumulative totals are
/// implausible. A total that falls is always held back while the guard is on.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SpikeGuardConfig {
    /// `false` forwards every decoded reading, however its totals move. Default `true`.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The most power the meter can count: an energy total (kWh, kvarh, a heat meter's GJ) may
    /// grow by at most this times the time since the last reading forwarded, plus a minute.
    /// `"W"`, `"kW"` or `"MW"`; default `"100kW"`, above any household connection. Raise it
    /// for a meter behind current transformers.
    #[serde(default = "default_max_power")]
    pub max_power: String,
    /// The largest flow a gas, water or hot-water submeter can count, as `max_power` for
    /// volumes: `"m3/h"`, `"l/h"` or `"l/min"`; default `"25m3/h"` (a G16 gas meter's
    /// maximum).
    #[serde(default = "default_max_flow")]
    pub max_flow: String,
}

impl Default for SpikeGuardConfig {
    fn default() -> Self {
        SpikeGuardConfig {
            enabled: true,
            max_power: default_max_power(),
            max_flow: default_max_flow(),
        }
    }
}

impl SpikeGuardConfig {
    /// Validates the bounds (also when the guard is off, so that turning it on later cannot
    /// surprise); `Ok(None)` when it is off.
    fn validate(&self, at: &KeyPath, problems: &mut Problems) -> Option<Option<GuardConfig>> {
        let power = problems.ok(&at.key("max_power"), parse_power(&self.max_power));
        let flow = problems.ok(&at.key("max_flow"), parse_flow(&self.max_flow));
        let guard = GuardConfig {
            max_power_kw: power?,
            max_flow_m3_per_h: flow?,
        };
        Some(self.enabled.then_some(guard))
    }
}

/// Where in the file a meter was written: `[meter]` + `[source]`, or `[[meters]]` entry `i`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeterForm {
    /// `[meter]` with a top-level `[source]`.
    Single,
    /// `[[meters]]` entry number `i`, with its own `source` table.
    Array(usize),
}

impl MeterForm {
    /// The key path of the meter's table: `meter` or `meters[i]`.
    pub fn meter_path(self) -> KeyPath {
        match self {
            MeterForm::Single => KeyPath::root().key("meter"),
            MeterForm::Array(i) => KeyPath::root().key("meters").index(i),
        }
    }

    /// The key path of the meter's source table: `source` or `meters[i].source`.
    pub fn source_path(self) -> KeyPath {
        match self {
            MeterForm::Single => KeyPath::root().key("source"),
            MeterForm::Array(_) => self.meter_path().key("source"),
        }
    }
}

/// One meter, as written; both forms of the file normalise to a list of these.
#[derive(Debug, Clone, PartialEq)]
pub struct MeterConfig {
    /// Name and time zone.
    pub meter: MeterTable,
    /// How to read it.
    pub source: SourceTable,
    /// Where it was written, to locate errors.
    pub form: MeterForm,
}

/// `[source]`: how telegrams reach p1gw, chosen by `kind`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum SourceTable {
    /// `kind = "serial"`: a P1 cable on a serial port.
    Serial(SerialConfig),
    /// `kind = "tcp"`: a serial-to-network bridge (ser2net, an ESP P1 reader) sending the raw
    /// telegrams over TCP.
    Tcp(TcpConfig),
    /// `kind = "replay"`: telegrams recorded to a file (`p1gw record`), replayed.
    Replay(ReplayConfig),
    /// `kind = "simulate"`: a made-up meter, for trying p1gw without hardware.
    Simulate(SimulateConfig),
}

/// The `kind`s of source, as spelled in the file.
pub const SOURCE_KINDS: [&str; 4] = ["serial", "tcp", "replay", "simulate"];

/// `kind = "serial"`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SerialConfig {
    /// The serial device the P1 cable is on, e.g. `"/dev/ttyUSB0"`. Prefer a name that survives
    /// replugging, from `/dev/serial/by-id/`, or a udev symlink such as `/dev/p1`.
    pub port: PathBuf,
    /// Line settings preset: `"veitur"` (9600 7N1), `"veitur-7e1"` (9600 7E1), `"dsmr22"`
    /// (9600 7E1) or `"dsmr4"` (115200 8N1, also DSMR 5). `p1gw probe` finds the right one.
    /// Without a preset, all of `baud`, `data_bits`, `parity` and `stop_bits` must be set.
    #[serde(default, with = "spelled::option")]
    pub preset: Option<Preset>,
    /// Overrides the preset's baud rate.
    pub baud: Option<u32>,
    /// Overrides the preset's data bits: 7 or 8 (5 and 6 are accepted, but no meter uses them).
    pub data_bits: Option<u8>,
    /// Overrides the preset's parity: `"none"`, `"even"` or `"odd"`.
    #[serde(default, with = "spelled::option")]
    pub parity: Option<Parity>,
    /// Overrides the preset's stop bits: 1 or 2.
    pub stop_bits: Option<u8>,
    /// The data request line (P1 pin 2), e.g. `{ line = "rts", mode = "poll" }`. Without it no
    /// line is driven, for cables that hold the request pin high themselves.
    #[serde(default)]
    pub request: RawRequest,
    /// How long to wait before reopening the port after it failed or vanished.
    #[serde(default)]
    pub reconnect: ReconnectConfig,
    /// The longest telegram accepted, in bytes or with a unit (`16384`, `"16KiB"`); longer
    /// ones are dropped and counted. From 1 KiB to 1 MiB.
    #[serde(default = "default_max_telegram_bytes")]
    pub max_telegram_bytes: RawSize,
}

/// `request = { … }` of a serial source.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RawRequest {
    /// Which line asks the meter for data: `"none"`, `"rts"`, `"dtr"`, or a GPIO line of the
    /// computer as `"gpio:<chip>:<offset>"` (`"gpio:gpiochip0:17"`).
    #[serde(default = "default_request_line")]
    pub line: String,
    /// How the line is driven: `"hold"` (raise it and keep it raised), `"pulse"` (raise it for
    /// `pulse` every `interval`) or `"poll"` (raise it every `interval` until a telegram has
    /// arrived). Default `"poll"`, the safest with a Veitur meter; needs a `line`.
    #[serde(default, with = "spelled::option")]
    pub mode: Option<RequestMode>,
    /// How long the line stays raised in `"pulse"` mode. Default `"50ms"`.
    pub pulse: Option<RawDuration>,
    /// How often a telegram is requested in `"pulse"` and `"poll"` modes. Default `"10s"`,
    /// also the minimum with the Veitur presets (their meters answer at most every 10 s).
    #[serde(default = "default_request_interval")]
    pub interval: RawDuration,
    /// Drive the line inverted: `true` keeps RTS/DTR de-asserted (or the GPIO line low) while
    /// the meter is asked for data. For RTS/DTR wired straight to pin 2: an asserted RTS or DTR
    /// is *low* on FTDI and most other TTL adapters, and the meter wants +5 V; with an NPN
    /// transistor stage in between (which inverts once more) leave it `false`. `p1gw probe
    /// --invert-request` tries it. Default `false`; needs a `line`.
    #[serde(default)]
    pub invert: bool,
}

impl Default for RawRequest {
    fn default() -> Self {
        RawRequest {
            line: default_request_line(),
            mode: None,
            pulse: None,
            interval: default_request_interval(),
            invert: false,
        }
    }
}

/// `reconnect = { min, max }`: the backoff between attempts to reopen a source.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReconnectConfig {
    /// The first wait after a failure. Default `"1s"`.
    #[serde(default = "default_reconnect_min")]
    pub min: RawDuration,
    /// The longest wait; each failure doubles the wait up to this. Default `"60s"`.
    #[serde(default = "default_reconnect_max")]
    pub max: RawDuration,
}

impl Default for ReconnectConfig {
    fn default() -> Self {
        ReconnectConfig {
            min: default_reconnect_min(),
            max: default_reconnect_max(),
        }
    }
}

/// `kind = "tcp"`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TcpConfig {
    /// The bridge's `host:port`, e.g. `"192.168.1.20:8088"` or `"p1reader.local:23"`.
    pub address: String,
    /// How long to wait before connecting again after the connection failed or closed. For
    /// tcp both bounds are capped at 1.5 s (an attempt is one SYN; a bridge that comes back is
    /// connected within 2 s), so only values below that change anything.
    #[serde(default)]
    pub reconnect: ReconnectConfig,
    /// The longest telegram accepted, as for a serial source.
    #[serde(default = "default_max_telegram_bytes")]
    pub max_telegram_bytes: RawSize,
}

/// `kind = "replay"`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayConfig {
    /// The recording: raw bytes as `p1gw record` writes them or telegrams in a text file, a
    /// directory of such files (replayed in name order), or `"-"` for standard input.
    pub path: PathBuf,
    /// The pace: a duration between telegrams (`"10s"`), `"recorded"` to keep the recording's
    /// own timing, or `"0s"` for as fast as possible. Default `"10s"`.
    #[serde(default = "default_interval")]
    pub interval: RawDuration,
    /// Start again from the beginning at the end of the recording. Default `false`: the source
    /// ends, the sinks drain, and the daemon keeps serving HTTP (/readyz then answers 503) until
    /// it is stopped.
    #[serde(default, rename = "loop")]
    pub repeat: bool,
}

/// `kind = "simulate"`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SimulateConfig {
    /// Which meter to imitate: `"veitur"`, `"dsmr5"` or `"belgium"`. Default `"veitur"`.
    #[serde(default = "default_profile", with = "spelled")]
    pub profile: Profile,
    /// Time between telegrams. Default `"10s"`; any positive duration is allowed, since nothing
    /// real is asked.
    #[serde(default = "default_interval")]
    pub interval: RawDuration,
}

fn default_true() -> bool {
    true
}
// The spike guard's defaults are p1-reader's (`GuardConfig::default`).
fn default_max_power() -> String {
    format!("{}kW", GuardConfig::default().max_power_kw)
}
fn default_max_flow() -> String {
    format!("{}m3/h", GuardConfig::default().max_flow_m3_per_h)
}
fn default_max_telegram_bytes() -> RawSize {
    RawSize::Bytes(p1_telegram::DEFAULT_MAX_TELEGRAM_BYTES as i64)
}
// The request line's defaults are p1-reader's (`RequestConfig::default`).
fn default_request_line() -> String {
    p1_reader::RequestConfig::default().line.to_string()
}
fn default_request_interval() -> RawDuration {
    RawDuration::new(&format_duration(
        p1_reader::RequestConfig::default().interval,
    ))
}
fn default_pulse() -> RawDuration {
    RawDuration::new(&format_duration(p1_reader::RequestConfig::default().pulse))
}
fn default_reconnect_min() -> RawDuration {
    RawDuration::new("1s")
}
fn default_reconnect_max() -> RawDuration {
    RawDuration::new("60s")
}
fn default_interval() -> RawDuration {
    RawDuration::new("10s")
}
fn default_profile() -> Profile {
    Profile::Veitur
}

// ---------------------------------------------------------------------------------------------
// Validated.

/// A validated meter.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidMeter {
    /// Its name (unique among the meters).
    pub name: String,
    /// The zone its clock keeps.
    pub tz: jiff::tz::TimeZone,
    /// How to read it.
    pub source: ValidSource,
    /// The spike guard's bounds; `None` when it is turned off.
    pub spike_guard: Option<GuardConfig>,
    /// The meter's code table (`[meter.codes]`).
    pub codes: Arc<p1_core::CodeTable>,
    /// Where it was written, to locate `check` errors.
    pub form: MeterForm,
}

/// A validated source.
#[derive(Debug, Clone, PartialEq)]
pub enum ValidSource {
    /// A serial port.
    Serial(ValidSerial),
    /// A TCP bridge.
    Tcp(ValidTcp),
    /// A recording.
    Replay(ValidReplay),
    /// A simulated meter.
    Simulate(ValidSimulate),
}

impl ValidSource {
    /// How often a telegram is expected, for readiness (`/readyz` allows three times this):
    /// the interval of a simulated meter, of a paced replay, or of a serial request line in
    /// `poll` or `pulse` mode; otherwise 10 s, the slowest interval meters send at by
    /// themselves (Veitur, DSMR 4; DSMR 5 sends every second).
    pub fn expected_interval(&self) -> Duration {
        const SLOWEST: Duration = Duration::from_secs(10);
        match self {
            ValidSource::Simulate(simulate) => simulate.interval,
            ValidSource::Replay(ValidReplay {
                pace: Pace::Every(interval),
                ..
            }) => *interval,
            ValidSource::Serial(serial)
                if serial.request.line != LineKind::None
                    && serial.request.mode != RequestMode::Hold =>
            {
                serial.request.interval
            }
            ValidSource::Serial(_) | ValidSource::Tcp(_) | ValidSource::Replay(_) => SLOWEST,
        }
    }

    /// The `kind` as spelled in the file.
    pub fn kind(&self) -> &'static str {
        match self {
            ValidSource::Serial(_) => "serial",
            ValidSource::Tcp(_) => "tcp",
            ValidSource::Replay(_) => "replay",
            ValidSource::Simulate(_) => "simulate",
        }
    }
}

/// Reconnect backoff, validated: `0 < min <= max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reconnect {
    /// The first wait.
    pub min: Duration,
    /// The longest wait.
    pub max: Duration,
}

/// A validated serial source.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidSerial {
    /// The device.
    pub port: PathBuf,
    /// The preset named, if any.
    pub preset: Option<Preset>,
    /// The line settings to open the port with.
    pub settings: LineSettings,
    /// The request line.
    pub request: p1_reader::RequestConfig,
    /// Reopen backoff.
    pub reconnect: Reconnect,
    /// Longest telegram, bytes.
    pub max_telegram_bytes: usize,
}

/// A validated TCP source.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidTcp {
    /// Host name or address (not resolved: validation does no network I/O).
    pub host: String,
    /// Port.
    pub port: u16,
    /// Reconnect backoff.
    pub reconnect: Reconnect,
    /// Longest telegram, bytes.
    pub max_telegram_bytes: usize,
}

impl ValidTcp {
    /// `host:port`, IPv6 hosts in brackets, for connecting.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// A validated replay source.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidReplay {
    /// The recording.
    pub path: PathBuf,
    /// The pace.
    pub pace: Pace,
    /// Start over at the end.
    pub repeat: bool,
}

/// A validated simulated meter.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidSimulate {
    /// What to imitate.
    pub profile: Profile,
    /// Time between telegrams, positive.
    pub interval: Duration,
}

impl MeterConfig {
    /// Validates one meter, noting problems; `None` if there were any.
    pub fn validate(&self, problems: &mut Problems) -> Option<ValidMeter> {
        let at = self.form.meter_path();
        let name = problems
            .ok(&at.key("name"), check_name(&self.meter.name))
            .map(|()| self.meter.name.clone());
        let tz = problems.ok(&at.key("tz"), parse_time_zone(&self.meter.tz));
        let guard = self
            .meter
            .spike_guard
            .validate(&at.key("spike_guard"), problems);
        let codes = super::codes::validate(&self.meter.codes, &at.key("codes"), problems);
        let source = self.source.validate(&self.form.source_path(), problems);
        Some(ValidMeter {
            codes: codes?,
            name: name?,
            tz: tz?,
            source: source?,
            spike_guard: guard?,
            form: self.form,
        })
    }
}

impl SourceTable {
    fn validate(&self, at: &KeyPath, problems: &mut Problems) -> Option<ValidSource> {
        match self {
            SourceTable::Serial(serial) => serial.validate(at, problems).map(ValidSource::Serial),
            SourceTable::Tcp(tcp) => {
                let address = problems.ok(&at.key("address"), parse_host_port(&tcp.address));
                let reconnect = tcp.reconnect.validate(&at.key("reconnect"), problems);
                let max = telegram_bytes(&tcp.max_telegram_bytes, at, problems);
                let (host, port) = address?;
                Some(ValidSource::Tcp(ValidTcp {
                    host,
                    port,
                    reconnect: reconnect?,
                    max_telegram_bytes: max?,
                }))
            }
            SourceTable::Replay(replay) => {
                let path = non_empty_path(&replay.path, &at.key("path"), problems);
                let pace = if replay.interval.0 == "recorded" {
                    Some(Pace::Recorded)
                } else {
                    problems
                        .ok(
                            &at.key("interval"),
                            parse_duration(&replay.interval.0).map_err(|e| {
                                format!("{e}; or \"recorded\" for the recording's own timing")
                            }),
                        )
                        .map(|interval| {
                            if interval.is_zero() {
                                Pace::Fast
                            } else {
                                Pace::Every(interval)
                            }
                        })
                };
                path?;
                Some(ValidSource::Replay(ValidReplay {
                    path: replay.path.clone(),
                    pace: pace?,
                    repeat: replay.repeat,
                }))
            }
            SourceTable::Simulate(simulate) => {
                let interval = positive(&simulate.interval, &at.key("interval"), problems)?;
                Some(ValidSource::Simulate(ValidSimulate {
                    profile: simulate.profile,
                    interval,
                }))
            }
        }
    }
}

impl SerialConfig {
    fn validate(&self, at: &KeyPath, problems: &mut Problems) -> Option<ValidSerial> {
        let port = non_empty_path(&self.port, &at.key("port"), problems);
        let settings = self.line_settings(at, problems);
        let request = self.request(at, problems);
        let reconnect = self.reconnect.validate(&at.key("reconnect"), problems);
        let max = telegram_bytes(&self.max_telegram_bytes, at, problems);
        port?;
        Some(ValidSerial {
            port: self.port.clone(),
            preset: self.preset,
            settings: settings?,
            request: request?,
            reconnect: reconnect?,
            max_telegram_bytes: max?,
        })
    }

    fn line_settings(&self, at: &KeyPath, problems: &mut Problems) -> Option<LineSettings> {
        let mut ok = true;
        if let Some(baud) = self.baud
            && !(50..=4_000_000).contains(&baud)
        {
            problems.value(
                at.key("baud"),
                format!("{baud} is not a baud rate; P1 meters use 9600 or 115200"),
            );
            ok = false;
        }
        if let Some(bits) = self.data_bits
            && !(5..=8).contains(&bits)
        {
            problems.value(
                at.key("data_bits"),
                format!("{bits} data bits: use 7 or 8 (5 to 8 are possible)"),
            );
            ok = false;
        }
        if let Some(bits) = self.stop_bits
            && !(1..=2).contains(&bits)
        {
            problems.value(at.key("stop_bits"), format!("{bits} stop bits: use 1 or 2"));
            ok = false;
        }
        let base = match self.preset {
            Some(preset) => preset.settings(),
            None => match (self.baud, self.data_bits, self.parity, self.stop_bits) {
                (Some(baud), Some(data_bits), Some(parity), Some(stop_bits)) => LineSettings {
                    baud,
                    data_bits,
                    parity,
                    stop_bits,
                },
                _ => {
                    problems.value(
                        at.key("preset"),
                        "missing required key: name a preset (veitur, veitur-7e1, dsmr22, dsmr4; `p1gw probe` finds it) or set all of baud, data_bits, parity and stop_bits",
                    );
                    return None;
                }
            },
        };
        ok.then(|| LineSettings {
            baud: self.baud.unwrap_or(base.baud),
            data_bits: self.data_bits.unwrap_or(base.data_bits),
            parity: self.parity.unwrap_or(base.parity),
            stop_bits: self.stop_bits.unwrap_or(base.stop_bits),
        })
    }

    fn request(&self, at: &KeyPath, problems: &mut Problems) -> Option<p1_reader::RequestConfig> {
        let at = at.key("request");
        let raw = &self.request;
        let line = problems.ok(&at.key("line"), parse_request_line(&raw.line));
        let mode = raw.mode.unwrap_or(p1_reader::RequestConfig::default().mode);
        if line == Some(LineKind::None)
            && let Some(mode) = raw.mode
            && mode != RequestMode::Hold
        {
            problems.value(
                at.key("mode"),
                format!(
                    "mode = {:?} needs a request line: set line to \"rts\", \"dtr\" or \"gpio:<chip>:<offset>\"",
                    mode.as_str()
                ),
            );
        }
        if line == Some(LineKind::None) && raw.invert {
            problems.value(
                at.key("invert"),
                "invert = true needs a request line to invert: set line to \"rts\", \"dtr\" or \"gpio:<chip>:<offset>\", or drop invert",
            );
        }
        if raw.pulse.is_some() && mode != RequestMode::Pulse {
            problems.key(
                at.key("pulse"),
                format!(
                    "pulse is only used with mode = \"pulse\" (mode is {:?})",
                    mode.as_str()
                ),
            );
        }
        let interval = positive(&raw.interval, &at.key("interval"), problems);
        if let (Some(interval), Some(preset)) = (interval, self.preset)
            && is_veitur(preset)
            && interval < VEITUR_MIN_INTERVAL
        {
            problems.value(
                at.key("interval"),
                format!(
                    "{} is below the 10s minimum of a Veitur meter (preset {:?}); use \"10s\" or more",
                    format_duration(interval),
                    preset.as_str()
                ),
            );
        }
        let pulse_raw = raw.pulse.clone().unwrap_or_else(default_pulse);
        let pulse = positive(&pulse_raw, &at.key("pulse"), problems);
        if let (Some(pulse), Some(interval)) = (pulse, interval)
            && mode == RequestMode::Pulse
            && pulse >= interval
        {
            problems.value(
                at.key("pulse"),
                format!(
                    "a pulse of {} does not fit in the interval of {}",
                    format_duration(pulse),
                    format_duration(interval)
                ),
            );
        }
        Some(p1_reader::RequestConfig {
            line: line?,
            mode,
            pulse: pulse?,
            interval: interval?,
            invert: raw.invert,
        })
    }
}

impl ReconnectConfig {
    fn validate(&self, at: &KeyPath, problems: &mut Problems) -> Option<Reconnect> {
        let min = positive(&self.min, &at.key("min"), problems);
        let max = positive(&self.max, &at.key("max"), problems);
        let (min, max) = (min?, max?);
        if max < min {
            problems.value(
                at.key("max"),
                format!(
                    "max ({}) is shorter than min ({})",
                    format_duration(max),
                    format_duration(min)
                ),
            );
            return None;
        }
        Some(Reconnect { min, max })
    }
}

/// Parses `none`, `rts`, `dtr` or `gpio:<chip>:<offset>` (p1-reader's [`LineKind::parse`]),
/// refusing white space in a chip's name.
pub fn parse_request_line(text: &str) -> Result<LineKind, String> {
    let line = LineKind::parse(text)?;
    if let LineKind::Gpio { chip, .. } = &line
        && chip.chars().any(char::is_whitespace)
    {
        return Err(format!(
            "{text:?}: no GPIO chip named; expected \"none\", \"rts\", \"dtr\" or \"gpio:<chip>:<offset>\" (e.g. \"gpio:gpiochip0:17\")"
        ));
    }
    Ok(line)
}

/// Whether `preset` is one of the Veitur presets, whose meters answer at most every 10 s.
fn is_veitur(preset: Preset) -> bool {
    matches!(preset, Preset::Veitur | Preset::Veitur7e1)
}

/// A duration that must be more than zero.
pub fn positive(raw: &RawDuration, path: &KeyPath, problems: &mut Problems) -> Option<Duration> {
    let duration = problems.ok(path, parse_duration(&raw.0))?;
    if duration.is_zero() {
        problems.value(path.clone(), "must be longer than 0s");
        return None;
    }
    Some(duration)
}

/// A path that must not be empty.
pub fn non_empty_path(path: &std::path::Path, at: &KeyPath, problems: &mut Problems) -> Option<()> {
    if path.as_os_str().is_empty() {
        problems.value(at.clone(), "empty path");
        return None;
    }
    Some(())
}

fn telegram_bytes(raw: &RawSize, at: &KeyPath, problems: &mut Problems) -> Option<usize> {
    let path = at.key("max_telegram_bytes");
    let bytes = problems.ok(&path, parse_size(raw))?;
    if !(MIN_TELEGRAM_BYTES..=MAX_TELEGRAM_BYTES).contains(&bytes) {
        problems.value(
            path,
            format!("{bytes} bytes: must be from 1KiB (1024) to 1MiB (1048576)"),
        );
        return None;
    }
    usize::try_from(bytes).ok()
}
