//! `p1gw parse`: decode recorded telegrams (docs/contracts.md §3, §4).
//!
//! Every input is its own stream: a file, each file of a directory (sorted by
//! name), or `-` for standard input. Good telegrams go to stdout, one result
//! each; a rejected one gets one line on stderr naming the source, the byte
//! offset and why, and makes the exit code 65. Reading is chunked, so memory
//! does not grow with the input.

use std::collections::HashMap;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use jiff::tz::TimeZone;
use p1_telegram::{CrcStatus, Decoder, Frame, ParseOptions, Telegram, Value, json};

use crate::exit::{Coded, Exit};

/// Arguments of `p1gw parse`.
#[derive(Debug, Args)]
pub(crate) struct ParseArgs {
    /// Recordings to decode: files, directories (their files, sorted) or `-`
    /// for standard input. None: standard input.
    #[arg(value_name = "FILE|DIR|-")]
    inputs: Vec<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Jsonl)]
    format: Format,
    /// Time zone in which to read the meter's local timestamps (IANA name).
    /// Default: the zone of the meter's country, guessed from the telegram
    /// (Atlantic/Reykjavik for Veitur, Europe/Brussels for Fluvius, …).
    #[arg(long, value_name = "ZONE")]
    tz: Option<String>,
    /// Print telegrams whose CRC does not match too (`"crc":"mismatch"`).
    #[arg(long)]
    no_crc: bool,
    /// Largest telegram accepted, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = p1_telegram::DEFAULT_MAX_TELEGRAM_BYTES)]
    max_telegram_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// One JSON object per telegram per line (docs/contracts.md §4).
    Jsonl,
    /// A human-readable table per telegram.
    Table,
}

/// Runs `p1gw parse`; returns the exit code.
pub(crate) fn run(args: &ParseArgs) -> anyhow::Result<u8> {
    let fixed_tz =
        match &args.tz {
            Some(name) => Some(jiff::tz::db().get(name).map_err(|_| {
                Coded::error(Exit::USAGE, format!("--tz: unknown time zone {name:?}"))
            })?),
            None => None,
        };
    let mut parser = Parser {
        decoder: Decoder::new(args.max_telegram_bytes),
        emitter: Emitter {
            format: args.format,
            options: ParseOptions {
                check_crc: !args.no_crc,
            },
            fixed_tz,
            zones: HashMap::new(),
            line: String::with_capacity(4096),
            out: BufWriter::with_capacity(64 * 1024, io::stdout().lock()),
            rejected: 0,
            warnings: Warnings::default(),
        },
    };
    let inputs: Vec<String> = if args.inputs.is_empty() {
        vec!["-".to_owned()]
    } else {
        args.inputs.clone()
    };
    let mut worst = Exit::OK;
    for input in &inputs {
        match parser.input(input) {
            Ok(()) => {}
            Err(error) if is_broken_pipe(&error) => return Ok(Exit::OK),
            Err(error) => {
                eprintln!("p1gw: {error:#}");
                worst = worst.max(crate::exit::code_of(&error));
            }
        }
    }
    match parser.emitter.out.flush() {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(Exit::OK),
        other => other.context("writing to standard output")?,
    }
    if worst == Exit::OK && parser.emitter.rejected > 0 {
        worst = Exit::DATA;
    }
    Ok(worst)
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error
        .chain()
        .filter_map(|c| c.downcast_ref::<io::Error>())
        .any(|e| e.kind() == io::ErrorKind::BrokenPipe)
}

struct Parser<W: Write> {
    decoder: Decoder,
    emitter: Emitter<W>,
}

/// Everything but the decoder, so that results can be written while the
/// decoder's frame is borrowed.
struct Emitter<W: Write> {
    format: Format,
    options: ParseOptions,
    fixed_tz: Option<TimeZone>,
    zones: HashMap<&'static str, TimeZone>,
    line: String,
    out: W,
    rejected: u64,
    warnings: Warnings,
}

/// Oddities of good telegrams, said on stderr without failing: the first of
/// each kind per input with its offset, then at the input's end how many
/// telegrams had it.
#[derive(Default)]
struct Warnings {
    /// DSMR 4/5 telegrams without a CRC: the first offset and the count.
    no_crc: Option<(u64, u64)>,
    /// Telegrams whose S/W flag contradicts the zone: the first offset and the count.
    dst_flag: Option<(u64, u64)>,
}

impl Warnings {
    fn check(&mut self, source: &str, offset: u64, telegram: &Telegram<'_>, tz: &TimeZone) {
        if let Some(version) = telegram.missing_required_crc() {
            if self.no_crc.is_none() {
                eprintln!(
                    "{source}: offset {offset}: warning: a DSMR {}.{} telegram (1-3:0.2.8({version})) \
                     without the CRC its standard requires",
                    version / 10,
                    version % 10
                );
            }
            let entry = self.no_crc.get_or_insert((offset, 0));
            entry.1 += 1;
        }
        if telegram.dst_flag_contradicts(tz) {
            if self.dst_flag.is_none() {
                let flag = telegram
                    .meter_local_time()
                    .and_then(|t| t.dst)
                    .map_or(
                        "",
                        |summer| if summer { "S (summer)" } else { "W (winter)" },
                    );
                eprintln!(
                    "{source}: offset {offset}: warning: the meter's time is flagged {flag}, \
                     which {} contradicts; it is read in the zone (--tz to choose another)",
                    tz.iana_name().unwrap_or("the zone")
                );
            }
            let entry = self.dst_flag.get_or_insert((offset, 0));
            entry.1 += 1;
        }
    }

    /// The counts of one input, when a kind occurred more than once; resets.
    fn finish(&mut self, source: &str) {
        if let Some((first, n)) = self.no_crc.take()
            && n > 1
        {
            eprintln!(
                "{source}: warning: {n} DSMR 4/5 telegrams without a CRC (the first at offset {first})"
            );
        }
        if let Some((first, n)) = self.dst_flag.take()
            && n > 1
        {
            eprintln!(
                "{source}: warning: {n} telegrams whose S/W flag contradicts the zone (the first at offset {first})"
            );
        }
    }
}

impl<W: Write> Parser<W> {
    fn input(&mut self, input: &str) -> anyhow::Result<()> {
        if input == "-" {
            return self.stream("-", &mut io::stdin().lock());
        }
        let path = Path::new(input);
        let meta = std::fs::metadata(path).with_context(|| format!("cannot open {input}"))?;
        if meta.is_dir() {
            for file in dir_files(path)? {
                let name = file.to_string_lossy().into_owned();
                let mut f =
                    std::fs::File::open(&file).with_context(|| format!("cannot open {name}"))?;
                self.stream(&name, &mut f)?;
            }
            Ok(())
        } else {
            let mut f =
                std::fs::File::open(path).with_context(|| format!("cannot open {input}"))?;
            self.stream(input, &mut f)
        }
    }

    /// Decodes one stream to its end.
    fn stream(&mut self, source: &str, reader: &mut dyn Read) -> anyhow::Result<()> {
        self.emitter.warnings = Warnings::default();
        let mut chunk = vec![0u8; 256 * 1024];
        loop {
            let n = match reader.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).with_context(|| format!("reading {source}")),
            };
            let mut rest = &chunk[..n];
            while let Some(result) = self.decoder.next_frame(&mut rest) {
                self.emitter.emit(source, result)?;
            }
        }
        if let Some(result) = self.decoder.finish() {
            self.emitter.emit(source, result)?;
        }
        self.emitter.warnings.finish(source);
        Ok(())
    }
}

impl<W: Write> Emitter<W> {
    fn emit(
        &mut self,
        source: &str,
        result: Result<Frame<'_>, p1_telegram::Error>,
    ) -> anyhow::Result<()> {
        let frame = match result {
            Ok(frame) => frame,
            Err(error) => {
                // Decoder errors carry their own offset.
                eprintln!("{source}: {error}");
                self.rejected += 1;
                return Ok(());
            }
        };
        let telegram = match Telegram::parse(frame.bytes, self.options) {
            Ok(t) => t,
            Err(error) => {
                eprintln!("{source}: offset {}: {error}", frame.offset);
                self.rejected += 1;
                return Ok(());
            }
        };
        if !frame.terminated {
            eprintln!(
                "{source}: offset {}: telegram has no '!' end line; accepted at the end of the input",
                frame.offset
            );
        }
        let tz = match &self.fixed_tz {
            Some(tz) => tz,
            None => {
                let name = telegram.default_zone();
                self.zones
                    .entry(name)
                    .or_insert_with(|| jiff::tz::db().get(name).unwrap_or(TimeZone::UTC))
            }
        };
        self.warnings.check(source, frame.offset, &telegram, tz);
        self.line.clear();
        match self.format {
            Format::Jsonl => {
                json::write_telegram(&mut self.line, source, &telegram, tz);
                self.line.push('\n');
            }
            Format::Table => write_table(&mut self.line, source, frame.offset, &telegram, tz),
        }
        self.out
            .write_all(self.line.as_bytes())
            .context("writing to standard output")?;
        Ok(())
    }
}

/// Files of a directory, sorted by name; hidden files and subdirectories are
/// left out.
fn dir_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let entry = entry.with_context(|| format!("cannot read {}", dir.display()))?;
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if !hidden && entry.file_type().is_ok_and(|t| t.is_file()) {
            files.push(entry.path());
        }
    }
    files.sort();
    Ok(files)
}

fn write_table(
    out: &mut String,
    source: &str,
    offset: u64,
    telegram: &Telegram<'_>,
    tz: &TimeZone,
) {
    use std::fmt::Write as _;
    let time = telegram
        .meter_time(tz)
        .map_or_else(|| "-".to_owned(), |t| t.to_string());
    let crc = match telegram.crc {
        CrcStatus::Mismatch { expected, computed } => {
            format!("mismatch (says {expected:04X}, computed {computed:04X})")
        }
        other => other.as_str().to_owned(),
    };
    writeln!(
        out,
        "{source} @ {offset}: {}  crc {crc}  meter time {time} ({})",
        telegram.header_str(),
        tz.iana_name().unwrap_or("UTC"),
    )
    .unwrap_or(()); // a String never fails
    for s in &telegram.submeters {
        writeln!(
            out,
            "  channel {}: {}{}",
            s.channel,
            s.kind.as_str(),
            s.device_type.map_or_else(
                || " (no device type)".to_owned(),
                |t| format!(" (device type {t})")
            )
        )
        .unwrap_or(()); // a String never fails
    }
    writeln!(
        out,
        "  {:<14} {:<28} {:>16}  {:<6} raw",
        "obis", "name", "value", "unit"
    )
    .unwrap_or(()); // a String never fails
    let mut unnamed: Vec<String> = Vec::new();
    for o in &telegram.objects {
        let code = o.code.map_or_else(
            || String::from_utf8_lossy(o.code_text).into_owned(),
            |c| c.to_string(),
        );
        let (value, unit) = table_value(o, tz);
        // A code no table names: marked, under the name InfluxDB and /metrics give it.
        let name = match (o.name, o.code) {
            (Some(name), _) => name.to_owned(),
            (None, Some(c)) => {
                unnamed.push(code.clone());
                format!("? {}", p1_core::codes::raw_name(&c))
            }
            (None, None) => "-".to_owned(),
        };
        writeln!(
            out,
            "  {:<14} {:<28} {:>16}  {:<6} {}",
            code,
            name,
            value,
            unit,
            String::from_utf8_lossy(o.raw)
        )
        .unwrap_or(()); // a String never fails
    }
    if let Some(first) = unnamed.first() {
        writeln!(
            out,
            "  ? = a code p1gw has no name for ({}); name it in the meter's configuration:\n      \
             [meter.codes.\"{first}\"]  name = \"…\"  unit = \"…\"  kind = \"…\"   \
             (docs/obis.md, \"Your own codes\")",
            unnamed.join(", ")
        )
        .unwrap_or(()); // a String never fails
    }
    out.push('\n');
}

fn table_value(o: &p1_telegram::Object<'_>, tz: &TimeZone) -> (String, String) {
    let unit = |q: &p1_telegram::Quantity<'_>| q.unit.unwrap_or("").to_owned();
    match &o.value {
        Value::Empty => (String::new(), String::new()),
        Value::Number(q) => (q.value.to_string(), unit(q)),
        Value::Text(_) => (
            o.text().map(|t| t.into_owned()).unwrap_or_default(),
            String::new(),
        ),
        Value::Time(p1_telegram::Stamp::Valid(t)) => (
            t.to_timestamp(tz)
                .map(|t| t.to_string())
                .unwrap_or_default(),
            String::new(),
        ),
        Value::Time(p1_telegram::Stamp::Placeholder) => ("(no time)".to_owned(), String::new()),
        Value::TimeOfDay {
            hour,
            minute,
            second,
        } => (format!("{hour:02}:{minute:02}:{second:02}"), String::new()),
        Value::Date { year, month, day } => {
            (format!("{year:04}-{month:02}-{day:02}"), String::new())
        }
        Value::Reading { quantity, .. } => quantity
            .as_ref()
            .map_or((String::new(), String::new()), |q| {
                (q.value.to_string(), unit(q))
            }),
        Value::FailureLog { count, events } => (
            format!("{} events", count.unwrap_or(events.len() as i64)),
            String::new(),
        ),
        Value::PeakHistory { count, peaks } => (
            format!("{} months", count.unwrap_or(peaks.len() as i64)),
            String::new(),
        ),
        Value::BillingSnapshot { values, .. } => {
            (format!("{} registers", values.len()), String::new())
        }
        Value::Groups(values) => (
            values
                .iter()
                .map(|v| v.as_ref().map_or("-".to_owned(), |q| q.value.to_string()))
                .collect::<Vec<_>>()
                .join(" "),
            values
                .iter()
                .flatten()
                .find_map(|q| q.unit)
                .unwrap_or("")
                .to_owned(),
        ),
    }
}
