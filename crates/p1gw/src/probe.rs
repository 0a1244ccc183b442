//! `p1gw probe`: which line settings make a port yield telegrams
//! (docs/contracts.md §3, docs/markets.md §a).
//!
//! For each preset (veitur 9600 7N1, veitur-7e1 and dsmr22 9600 7E1, dsmr4
//! 115200 8N1) it opens the port, drives the request line and listens for
//! `--seconds` (at least 12: a Veitur meter answers every 10 s), then prints
//! per preset the bytes, frames, telegrams by CRC result, rejects, and
//! parity and framing errors; the bit-7 analysis of the bytes read at 9600
//! 8N1; and the preset to use — or, when nothing arrived, what to check.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use p1_reader::probe::{PresetReport, bit7_at_9600, probe_preset, recommend};
use p1_reader::{LineKind, Preset, RequestConfig, RequestMode};
use tokio_util::sync::CancellationToken;

use crate::exit::{Coded, Exit};

/// The shortest listening time per preset: a Veitur meter answers every
/// 10 s (docs/markets.md §a).
const MIN_SECONDS: u64 = 12;

/// What to print when no byte arrived at any setting.
pub(crate) const NO_DATA: &str = "no data at any setting: check the request line wiring (pin 2 must be raised) and the signal inversion (Veitur's data line is inverted: use an inverting cable or an inverter)";

/// Arguments of `p1gw probe`.
#[derive(Debug, Args)]
pub(crate) struct ProbeArgs {
    /// The serial device, e.g. /dev/ttyUSB0 or a /dev/serial/by-id/ name.
    #[arg(long, value_name = "DEV", required_unless_present = "list")]
    port: Option<PathBuf>,
    /// List the serial ports (/dev/serial/by-id/) with their USB ids, marking Zigbee, Z-Wave
    /// and Thread radios; opens no port.
    #[arg(long, conflicts_with = "port")]
    list: bool,
    /// Once a preset yields telegrams, set `port` (as given) and `preset` in this
    /// configuration file's [source] table (checked before it is replaced).
    #[arg(long, value_name = "FILE")]
    write_config: Option<PathBuf>,
    /// Probe a port even though it looks like a Zigbee/Z-Wave/Thread radio (opening one can
    /// reset it into its bootloader).
    #[arg(long)]
    force: bool,
    /// Where /dev and /sys are (for tests).
    #[arg(long, value_name = "DIR", default_value = "/dev", hide = true)]
    dev_root: PathBuf,
    #[arg(long, value_name = "DIR", default_value = "/sys", hide = true)]
    sys_root: PathBuf,
    /// Seconds to listen at each preset (at least 12).
    #[arg(long, value_name = "N", default_value_t = MIN_SECONDS)]
    seconds: u64,
    /// Listen this long per preset instead, below the minimum (for tests).
    #[arg(long, value_name = "DURATION", value_parser = crate::parse_duration, hide = true)]
    listen_for: Option<Duration>,
    #[command(flatten)]
    request: RequestArgs,
}

/// The request-line options shared by `probe` and `record`.
#[derive(Debug, Args)]
pub(crate) struct RequestArgs {
    /// The data request line (P1 pin 2): rts, dtr, none or gpio:<chip>:<offset>.
    #[arg(long, value_name = "LINE", default_value = "rts")]
    request: String,
    /// How to drive it: hold (raise and keep raised), pulse or poll.
    #[arg(long, value_enum, default_value_t = ModeArg::Hold)]
    mode: ModeArg,
    /// Request interval of pulse and poll modes.
    #[arg(long, value_name = "DURATION", value_parser = crate::parse_duration, default_value = "10s")]
    interval: Duration,
    /// Drive the request line inverted (for RTS/DTR wired to pin 2 without
    /// an inverting transistor: an asserted RTS is low on most adapters).
    #[arg(long)]
    invert_request: bool,
}

impl RequestArgs {
    /// The request line's settings.
    pub(crate) fn config(&self) -> anyhow::Result<RequestConfig> {
        let line = LineKind::parse(&self.request)
            .map_err(|e| Coded::error(Exit::USAGE, format!("--request: {e}")))?;
        if self.interval.is_zero() {
            return Err(Coded::error(
                Exit::USAGE,
                "--interval must be longer than 0s",
            ));
        }
        Ok(RequestConfig {
            line,
            mode: match self.mode {
                ModeArg::Hold => RequestMode::Hold,
                ModeArg::Pulse => RequestMode::Pulse,
                ModeArg::Poll => RequestMode::Poll,
            },
            pulse: Duration::from_millis(50).min(self.interval / 2),
            interval: self.interval,
            invert: self.invert_request,
        })
    }
}

/// `--mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ModeArg {
    /// Raise once and keep raised.
    Hold,
    /// Raise for 50 ms every interval.
    Pulse,
    /// Raise every interval until a telegram arrived.
    Poll,
}

/// `--preset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum PresetArg {
    /// Veitur (Iceland): 9600 7N1.
    Veitur,
    /// Veitur with even parity: 9600 7E1.
    #[value(name = "veitur-7e1")]
    Veitur7e1,
    /// DSMR 2.2/3: 9600 7E1.
    Dsmr22,
    /// DSMR 4/5: 115200 8N1.
    Dsmr4,
}

impl PresetArg {
    pub(crate) fn preset(self) -> Preset {
        match self {
            PresetArg::Veitur => Preset::Veitur,
            PresetArg::Veitur7e1 => Preset::Veitur7e1,
            PresetArg::Dsmr22 => Preset::Dsmr22,
            PresetArg::Dsmr4 => Preset::Dsmr4,
        }
    }
}

/// The exit code of a port that cannot be opened: 66 when it does not
/// exist, 74 otherwise (docs/contracts.md §3).
pub(crate) fn open_error(e: p1_reader::Error) -> anyhow::Error {
    match &e {
        p1_reader::Error::PortMissing { .. } => Coded::error(
            Exit::NO_INPUT,
            format!(
                "{e}; is the cable plugged in? `ls -l /dev/serial/by-id/` lists serial devices"
            ),
        ),
        p1_reader::Error::PortOpen { .. } => Coded::error(
            Exit::IO,
            format!("{e}; is p1gw run or another program using it?"),
        ),
        _ => Coded::error(Exit::IO, e.to_string()),
    }
}

/// Runs `p1gw probe`; returns the exit code.
pub(crate) fn run(args: &ProbeArgs) -> anyhow::Result<u8> {
    if args.list {
        print!(
            "{}",
            crate::ports::render(&crate::ports::list(&args.dev_root, &args.sys_root))
        );
        return Ok(Exit::OK);
    }
    let Some(port) = args.port.clone() else {
        return Err(Coded::error(Exit::USAGE, "--port or --list is needed"));
    };
    let radio = port
        .file_name()
        .and_then(|n| crate::ports::radio_mark(&n.to_string_lossy()))
        .or_else(|| {
            let real = port.canonicalize().ok()?;
            crate::ports::list(&args.dev_root, &args.sys_root)
                .into_iter()
                .find(|p| p.device == real)?
                .radio
        });
    if let (Some(what), false) = (radio, args.force) {
        return Err(Coded::error(
            Exit::USAGE,
            format!(
                "{} looks like {what}, not a P1 cable: opening it or toggling its RTS/DTR lines \
                 can reset the radio. `p1gw probe --list` shows the ports; --force probes it \
                 anyway",
                port.display()
            ),
        ));
    }
    let listen = match args.listen_for {
        Some(d) => d,
        None if args.seconds < MIN_SECONDS => {
            return Err(Coded::error(
                Exit::USAGE,
                format!(
                    "--seconds {}: listen at least {MIN_SECONDS} s per preset (a Veitur meter answers every 10 s)",
                    args.seconds
                ),
            ));
        }
        None => Duration::from_secs(args.seconds),
    };
    let request = args.request.config()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let stop = CancellationToken::new();
        let mut signals = crate::signals::Signals::new()?;
        let on_signal = stop.clone();
        let signal_task = tokio::spawn(async move {
            loop {
                if let crate::signals::Signal::Stop(_) = signals.next().await {
                    on_signal.cancel();
                    return;
                }
            }
        });
        let mut reports = Vec::new();
        for preset in Preset::ALL {
            if stop.is_cancelled() {
                break;
            }
            eprintln!(
                "p1gw probe: {} at {} ({}) for {} ...",
                port.display(),
                preset.settings(),
                preset.as_str(),
                crate::config::value::format_duration(listen)
            );
            let report = probe_preset(
                &port,
                preset,
                &request,
                listen,
                p1_telegram::DEFAULT_MAX_TELEGRAM_BYTES,
                &stop,
            )
            .await
            .map_err(open_error)?;
            reports.push(report);
        }
        signal_task.abort();
        print!("{}", render(&port, &request, listen, &reports));
        match &args.write_config {
            Some(file) => write_config(file, &port, &reports),
            None => Ok(Exit::OK),
        }
    })
}

/// The report, as printed.
pub(crate) fn render(
    port: &std::path::Path,
    request: &RequestConfig,
    listen: Duration,
    reports: &[PresetReport],
) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let line = match request.line {
        LineKind::None => "none".to_owned(),
        ref kind => format!(
            "{kind} ({}{})",
            request.mode.as_str(),
            if request.invert { ", inverted" } else { "" }
        ),
    };
    // Writing to a String cannot fail.
    let mut w = |s: std::fmt::Arguments<'_>| out.write_fmt(s).unwrap_or(());
    w(format_args!(
        "probe of {}: {} per preset, request line {line}\n\n",
        port.display(),
        crate::config::value::format_duration(listen)
    ));
    w(format_args!(
        "{:<11} {:<11} {:<11} {:>7} {:>6} {:>9} {:>5} {:>6} {:>8} {:>8} {:>6} {:>7}\n",
        "preset",
        "settings",
        "opened as",
        "bytes",
        "frames",
        "telegrams",
        "crc",
        "no crc",
        "crc bad",
        "rejected",
        "parity",
        "framing"
    ));
    for r in reports {
        w(format_args!(
            "{:<11} {:<11} {:<11} {:>7} {:>6} {:>9} {:>5} {:>6} {:>8} {:>8} {:>6} {:>7}\n",
            r.preset.as_str(),
            r.settings.to_string(),
            r.opened_as.to_string(),
            r.line.bytes,
            r.frames,
            r.telegrams,
            r.crc_valid,
            r.crc_absent,
            r.crc_mismatch,
            r.rejected.values().sum::<u64>(),
            r.line.parity_errors,
            r.line.line_errors,
        ));
    }
    w(format_args!("\n"));
    for r in reports {
        if let Some(e) = &r.request_error {
            w(format_args!(
                "{}: could not drive the {e}; listened anyway\n",
                r.preset.as_str()
            ));
        }
        if let Some(why) = &r.ended {
            w(format_args!(
                "{}: stopped early: {why}\n",
                r.preset.as_str()
            ));
        }
    }
    w(format_args!(
        "bit 7 at 9600 8N1: {}\n",
        bit7_at_9600(reports).explain()
    ));
    if let Some(header) = reports.iter().find_map(|r| r.header.as_deref()) {
        w(format_args!("meter: /{header}\n"));
    }
    let bytes: u64 = reports.iter().map(|r| r.line.bytes).sum();
    match recommend(reports) {
        Some((preset, why)) => {
            w(format_args!("recommended preset: {}\n", preset.as_str()));
            w(format_args!("  because {why}\n"));
            w(format_args!(
                "  in the config: [source] kind = \"serial\", preset = \"{}\"\n",
                preset.as_str()
            ));
        }
        None if bytes == 0 => w(format_args!("{NO_DATA}\n")),
        None => w(format_args!(
            "bytes arrived but no telegram decoded at any setting: the signal may not be inverted (Veitur's data line is inverted: use an inverting cable or an inverter), or the meter uses another baud rate\n"
        )),
    }
    out
}

/// `--write-config`: the recommended preset and the port into `file`'s `[source]`, the
/// result checked by the configuration loader before it replaces the file.
fn write_config(
    file: &std::path::Path,
    port: &std::path::Path,
    reports: &[PresetReport],
) -> anyhow::Result<u8> {
    let Some((preset, _)) = recommend(reports) else {
        eprintln!(
            "p1gw probe: no telegram at any setting: {} left unchanged",
            file.display()
        );
        return Ok(Exit::DATA);
    };
    let text = std::fs::read_to_string(file)
        .map_err(|e| Coded::error(Exit::NO_INPUT, format!("{}: {e}", file.display())))?;
    let edited = crate::ports::set_source(&text, port, preset.as_str())
        .map_err(|e| Coded::error(Exit::CONFIG, format!("{}: {e}", file.display())))?;
    // Checked in a file of its own beside the real one, then moved over it.
    let tmp = file.with_extension("toml.probe");
    std::fs::write(&tmp, &edited)
        .map_err(|e| Coded::error(Exit::IO, format!("{}: {e}", tmp.display())))?;
    if let Err(errors) = crate::config::load_valid(&tmp) {
        if let Err(e) = std::fs::remove_file(&tmp) {
            eprintln!("p1gw probe: {}: {e}", tmp.display());
        }
        for e in &errors {
            eprintln!("p1gw probe: {e}");
        }
        return Err(Coded::error(
            Exit::CONFIG,
            format!(
                "{} left unchanged: the edited configuration does not check out",
                file.display()
            ),
        ));
    }
    std::fs::rename(&tmp, file)
        .map_err(|e| Coded::error(Exit::IO, format!("{}: {e}", file.display())))?;
    println!(
        "wrote port = {:?} and preset = {:?} into {}; check it with `p1gw check-config {}`",
        port.display().to_string(),
        preset.as_str(),
        file.display(),
        file.display()
    );
    Ok(Exit::OK)
}
