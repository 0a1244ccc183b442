//! The configuration file (docs/contracts.md §5): its types, the two stages that read it, the
//! read-only checks of `check-config`, and the built-in demo configuration.
//!
//! ```text
//! load(path) ──> Config ──validate()──> ValidConfig ──check()──> problems on this machine
//!  TOML syntax,     as written    pure: every value      (check-config only: files,
//!  shape, secrets   + defaults    typed, all errors      devices and directories named;
//!  written inline                 at once                read-only, never connects)
//! ```
//!
//! * [`load`] reads the file and turns it into a [`Config`]: the values as written, defaults
//!   filled in. It stops at what makes the text not a p1gw configuration: bad TOML, an unknown
//!   key (`#[serde(deny_unknown_fields)]` everywhere), a wrong type, a missing key, an unknown
//!   `kind`, a secret written inline. It reports every such error it finds (a bad section does
//!   not hide the others); TOML syntax errors stop it at the first.
//! * [`Config::validate`] types every value (durations, sizes, time zones, URLs, addresses,
//!   request lines) and checks them against each other (two meters on one port, an InfluxDB
//!   v2 sink without a token), reporting every problem at once. It is pure: no file system, no
//!   network, no environment (what it needs from the environment was read by `load`).
//! * [`check`] is `check-config`'s extra: files named exist and are readable, serial devices
//!   exist, directories can be created. It opens no serial port and connects to nothing.
//!
//! Every error is a [`ConfigError`] that prints as one line, `FILE:LINE:COL: KEY.PATH: what is
//! wrong`, the position being that of the offending key or value (of the table's `[header]`
//! for a key that is missing). The exit code for a list of them is [`error::exit_code`]. No
//! error message, `Debug` output or log line shows a secret: see [`secret`] for where secrets
//! come from (`*_file` keys and `P1GW_*` environment variables).
//!
//! Decisions recorded here:
//! * A request `interval` below 10 s with a Veitur preset is an error, not a warning:
//!   docs/markets.md §a makes 10 s the default and the minimum.
//! * A serial device that does not exist is a `check` error, with a hint about
//!   `/dev/serial/by-id/`; `validate` never looks.
//! * Relative paths are relative to the working directory, not to the configuration file.
//! * Each sink may have a `name` (default: its kind); names must be unique, so two sinks of
//!   one kind need names. The name is for logs and the spool file; metrics label the kind.

pub mod check;
pub mod codes;
pub mod daemon;
pub mod error;
mod load;
pub mod locate;
pub mod secret;
pub mod sink;
pub mod source;
pub mod value;

#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::Arc;

// The API the daemon is wired with; the rest is under the section modules.
pub use self::{
    check::check,
    daemon::{LogFormat, ValidHttp, ValidLog, ValidSpool},
    error::{ConfigError, ErrorKind, exit_code, report},
    secret::{Secret, SecretSource},
    sink::{ValidSink, ValidSinkKind},
    source::{ValidMeter, ValidSource},
};

use daemon::{HttpConfig, LogConfig, SpoolConfig};
use locate::{KeyPath, Origin, Problems};
use secret::EnvInputs;
use sink::SinkConfig;
use source::{MeterConfig, SourceTable};

/// The name errors in the built-in demo configuration print in place of a file name.
pub const DEMO_NAME: &str = "built-in demo config";

/// `config/demo.toml`, compiled in: what `p1gw run` uses without `--config`.
const DEMO_TOML: &str = include_str!("../../../config/demo.toml");

/// A configuration as written: parsed, defaults filled in, not yet validated (stage one).
#[derive(Debug)]
pub struct Config {
    /// The meters, from `[meter]` + `[source]` (one) or `[[meters]]` (one or more).
    pub meters: Vec<MeterConfig>,
    /// `[[sink]]` entries, in file order.
    pub sinks: Vec<SinkConfig>,
    /// `[http]`.
    pub http: HttpConfig,
    /// `[spool]`.
    pub spool: SpoolConfig,
    /// `[log]`.
    pub log: LogConfig,
    /// What was taken from the environment (secrets, the default spool directory).
    env: EnvInputs,
    /// The file, to locate errors.
    origin: Arc<Origin>,
}

/// A validated configuration (stage two): every value typed and checked. Hand each component
/// its own section (`meters[i].source`, `sinks[i]`, `http`, …), not the whole.
#[derive(Debug, Clone)]
pub struct ValidConfig {
    /// One or more meters, names unique, no two on one serial port.
    pub meters: Vec<ValidMeter>,
    /// Zero or more sinks, names unique.
    pub sinks: Vec<ValidSink>,
    /// The HTTP server.
    pub http: ValidHttp,
    /// The spool.
    pub spool: ValidSpool,
    /// Logging.
    pub log: ValidLog,
    /// The file, to locate `check` errors.
    origin: Arc<Origin>,
}

impl ValidConfig {
    /// The file this came from, as named (or [`DEMO_NAME`]).
    pub fn origin_name(&self) -> &str {
        self.origin.name()
    }
}

/// Reads and parses the configuration file at `path` (stage one), taking secrets from the
/// process environment.
///
/// # Errors
///
/// The file cannot be read (one error, [`ErrorKind::Io`]), or is not a p1gw configuration:
/// every structural error found, in file order.
pub fn load(path: &Path) -> Result<Config, Vec<ConfigError>> {
    load_with_env(path, &|name| std::env::var(name).ok())
}

/// [`load`] with the environment given as a function from variable name to value, for tests.
///
/// # Errors
///
/// As [`load`].
pub fn load_with_env(
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, Vec<ConfigError>> {
    let name: Arc<str> = Arc::from(path.display().to_string());
    let text = std::fs::read_to_string(path).map_err(|error| {
        vec![ConfigError::new(
            ErrorKind::Io(error.kind()),
            name.clone(),
            None,
            "",
            format!("cannot read the configuration file: {error}"),
        )]
    })?;
    parse_str(name, text, env)
}

/// Parses configuration `text`; errors name it `name`.
///
/// # Errors
///
/// As [`load`], without the I/O error.
pub fn parse_str(
    name: impl Into<Arc<str>>,
    text: String,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, Vec<ConfigError>> {
    load::parse(Arc::new(Origin::new(name, text)), EnvInputs::read(env))
}

/// [`load`] and [`Config::validate`] in one, for `run`.
///
/// # Errors
///
/// Those of [`load`], else those of [`Config::validate`].
pub fn load_valid(path: &Path) -> Result<ValidConfig, Vec<ConfigError>> {
    load(path)?.validate()
}

/// The built-in demo configuration, `config/demo.toml`: a simulated Veitur meter named `demo`
/// (Atlantic/Reykjavik, a telegram every 10 s), HTTP on 127.0.0.1:9600, no sinks, the spool in
/// the default directory (see [`daemon::SpoolConfig::dir`]). Needs no hardware, no server and
/// no setup.
pub fn demo() -> ValidConfig {
    demo_with_env(&|name| std::env::var(name).ok())
}

/// [`demo`] with the environment given as a function, for tests.
///
/// # Panics
///
/// Never: `config/demo.toml` is valid whatever the environment holds (a test checks it, and
/// the environment only supplies secrets and the default spool directory).
pub fn demo_with_env(env: &dyn Fn(&str) -> Option<String>) -> ValidConfig {
    parse_str(DEMO_NAME, DEMO_TOML.to_owned(), env)
        .and_then(|config| config.validate())
        .expect("config/demo.toml is a valid configuration")
}

impl Config {
    /// Validates every value and their consistency (stage two). Pure: reads no file, asks no
    /// server.
    ///
    /// # Errors
    ///
    /// Every problem found, in file order, each located at the offending key or value.
    pub fn validate(&self) -> Result<ValidConfig, Vec<ConfigError>> {
        let mut problems = Problems::default();
        let meters: Option<Vec<ValidMeter>> = self
            .meters
            .iter()
            .map(|meter| meter.validate(&mut problems))
            .collect::<Vec<_>>()
            .into_iter()
            .collect();
        self.unique_meter_names(&mut problems);
        self.one_meter_per_port(&mut problems);
        let sinks: Option<Vec<ValidSink>> = self
            .sinks
            .iter()
            .enumerate()
            .map(|(index, sink)| sink.validate(index, &self.env, &mut problems))
            .collect::<Vec<_>>()
            .into_iter()
            .collect();
        self.unique_sink_names(&mut problems);
        self.one_sink_per_file(&mut problems);
        let http = self.http.validate(&self.env, &mut problems);
        let spool = self.spool.validate(&self.env, &mut problems);
        let log = self.log.validate(&mut problems);
        match (meters, sinks, http, spool, log) {
            (Some(meters), Some(sinks), Some(http), Some(spool), Some(log))
                if problems.is_empty() =>
            {
                Ok(ValidConfig {
                    meters,
                    sinks,
                    http,
                    spool,
                    log,
                    origin: self.origin.clone(),
                })
            }
            _ => {
                if problems.is_empty() {
                    // Every `None` above noted its problem; this is a guard, not a path.
                    problems.value(KeyPath::root(), "invalid configuration");
                }
                Err(problems.into_errors(&self.origin, ErrorKind::Invalid))
            }
        }
    }

    /// The file this came from, as named (or [`DEMO_NAME`]).
    pub fn origin_name(&self) -> &str {
        self.origin.name()
    }

    fn unique_meter_names(&self, problems: &mut Problems) {
        for (i, meter) in self.meters.iter().enumerate() {
            if let Some(first) = self.meters[..i]
                .iter()
                .find(|other| other.meter.name == meter.meter.name)
            {
                problems.value(
                    meter.form.meter_path().key("name"),
                    format!(
                        "duplicate meter name {:?}; {} has it already",
                        meter.meter.name,
                        first.form.meter_path()
                    ),
                );
            }
        }
    }

    fn one_meter_per_port(&self, problems: &mut Problems) {
        let port = |meter: &MeterConfig| match &meter.source {
            SourceTable::Serial(serial) => Some(serial.port.clone()),
            _ => None,
        };
        for (i, meter) in self.meters.iter().enumerate() {
            let Some(mine) = port(meter) else { continue };
            if let Some(first) = self.meters[..i]
                .iter()
                .find(|other| port(other).as_ref() == Some(&mine))
            {
                problems.value(
                    meter.form.source_path().key("port"),
                    format!(
                        "two meters on one serial port: meter {:?} ({}) reads {} already",
                        first.meter.name,
                        first.form.meter_path(),
                        mine.display()
                    ),
                );
            }
        }
    }

    fn unique_sink_names(&self, problems: &mut Problems) {
        let name = |sink: &SinkConfig| {
            sink.name()
                .cloned()
                .unwrap_or_else(|| sink.kind().to_owned())
        };
        for (i, sink) in self.sinks.iter().enumerate() {
            let mine = name(sink);
            if let Some(j) = self.sinks[..i].iter().position(|other| name(other) == mine) {
                problems.value(
                    sink.name_path(i),
                    format!(
                        "sink[{j}] is named {mine:?} too; give each sink its own name = \"…\" (a sink without one is named after its kind)"
                    ),
                );
            }
        }
    }

    fn one_sink_per_file(&self, problems: &mut Problems) {
        let path = |sink: &SinkConfig| sink.output_file().map(Path::to_path_buf);
        for (i, sink) in self.sinks.iter().enumerate() {
            let Some(mine) = path(sink) else { continue };
            if let Some(j) = self.sinks[..i]
                .iter()
                .position(|other| path(other).as_ref() == Some(&mine))
            {
                problems.value(
                    KeyPath::root().key("sink").index(i).key("path"),
                    format!("sink[{j}] writes to {} already", mine.display()),
                );
            }
        }
    }

    /// The configuration as TOML, in the form it was written in (`[meter]` or `[[meters]]`),
    /// defaults written out (the fuzz target and the tests check that it validates again).
    pub fn to_toml(&self) -> String {
        use serde::Serialize;
        use source::{MeterForm, MeterTable};

        #[derive(Serialize)]
        struct MeterEntry<'a> {
            name: &'a str,
            tz: &'a str,
            spike_guard: &'a source::SpikeGuardConfig,
            source: &'a SourceTable,
        }
        #[derive(Serialize)]
        struct Document<'a> {
            #[serde(skip_serializing_if = "Option::is_none")]
            meter: Option<&'a MeterTable>,
            #[serde(skip_serializing_if = "Option::is_none")]
            source: Option<&'a SourceTable>,
            #[serde(skip_serializing_if = "Vec::is_empty")]
            meters: Vec<MeterEntry<'a>>,
            #[serde(skip_serializing_if = "<[_]>::is_empty")]
            sink: &'a [SinkConfig],
            http: &'a HttpConfig,
            spool: &'a SpoolConfig,
            log: &'a LogConfig,
        }
        let single = self.meters.first().filter(|m| m.form == MeterForm::Single);
        let document = Document {
            meter: single.map(|m| &m.meter),
            source: single.map(|m| &m.source),
            meters: match single {
                Some(_) => Vec::new(),
                None => self
                    .meters
                    .iter()
                    .map(|m| MeterEntry {
                        name: &m.meter.name,
                        tz: &m.meter.tz,
                        spike_guard: &m.meter.spike_guard,
                        source: &m.source,
                    })
                    .collect(),
            },
            sink: &self.sinks,
            http: &self.http,
            spool: &self.spool,
            log: &self.log,
        };
        toml::to_string(&document).expect("a configuration serializes")
    }
}
