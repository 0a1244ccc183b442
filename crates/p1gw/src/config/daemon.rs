//! `[http]`, `[spool]` and `[log]`: the daemon's own settings.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::locate::{KeyPath, Problems};
use super::secret::{ENV_HTTP_TOKEN, EnvInputs, SecretSource};
use super::source::{non_empty_path, positive};
use super::value::{RawDuration, RawSize, check_log_level, format_size, parse_size};

/// The smallest `[spool] max_bytes`.
pub const MIN_SPOOL_BYTES: u64 = 1 << 20;
/// The least `[spool] memory` accepted: a few large readings.
pub const MIN_SPOOL_MEMORY: u64 = 64 << 10;
/// The shortest and longest `[http] history`.
pub const HISTORY_RANGE: (Duration, Duration) =
    (Duration::from_secs(60), Duration::from_secs(86_400));

/// `[http]`: health, metrics, the JSON API and the live page.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// The address and port to serve on, `IP:port`. Default `"127.0.0.1:9600"`, this machine
    /// only; `"0.0.0.0:9600"` or `"[::]:9600"` for the whole network (then consider a token).
    #[serde(default = "default_listen")]
    pub listen: String,
    /// A file holding a bearer token that requests must carry (`Authorization: Bearer …`);
    /// `P1GW_HTTP_TOKEN` overrides it. Default: no token needed.
    pub token_file: Option<PathBuf>,
    /// How far back the live page's chart and the in-memory history reach. From `"1m"` to
    /// `"24h"`; default `"1h"`.
    #[serde(default = "default_history")]
    pub history: RawDuration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: default_listen(),
            token_file: None,
            history: default_history(),
        }
    }
}

/// `[spool]`: where each sink keeps the readings its backend has not acknowledged yet.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// The directory for the spool files, one per sink; created if missing. Default:
    /// `$STATE_DIRECTORY` (set by systemd's `StateDirectory=p1gw`), else
    /// `$XDG_STATE_HOME/p1gw`, else `~/.local/state/p1gw`, else `./p1gw-state`.
    pub dir: Option<PathBuf>,
    /// The most each sink's spool may hold; when full, the oldest readings go first (and are
    /// counted). A size in bytes or with a unit; at least `"1MiB"`, default `"64MiB"`.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: RawSize,
    /// Free space to leave on the spool directory's file system (for the system's logs and
    /// other programs): while less is free, a spool stops growing and each new reading evicts
    /// the oldest (counted). A size; `"0"` turns it off; default `"64MiB"`.
    #[serde(default = "default_reserve")]
    pub reserve: RawSize,
    /// The most each sink holds in memory while its spool file cannot be written (disk full,
    /// read-only, failing): the live readings keep flowing to a connected backend, and what
    /// was held is spooled once the disk is back; beyond it the oldest held readings are
    /// dropped (counted). A size, at least `"64KiB"`; default `"8MiB"`.
    #[serde(default = "default_memory")]
    pub memory: RawSize,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            dir: None,
            max_bytes: default_max_bytes(),
            reserve: default_reserve(),
            memory: default_memory(),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `journald` under systemd (`JOURNAL_STREAM` set), else `human`.
    #[default]
    Auto,
    /// Readable lines on standard error.
    Human,
    /// One JSON object per line on standard error.
    Json,
    /// Straight to the systemd journal, fields kept.
    Journald,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// The least severe messages shown: `"error"`, `"warn"`, `"info"`, `"debug"`, `"trace"`
    /// or `"off"`, or per module: `"info,p1_reader=debug"`. Default `"info"`.
    #[serde(default = "default_level")]
    pub level: String,
    /// `"auto"`, `"human"`, `"json"` or `"journald"`. Default `"auto"`.
    #[serde(default)]
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: default_level(),
            format: LogFormat::Auto,
        }
    }
}

fn default_listen() -> String {
    "127.0.0.1:9600".to_owned()
}
fn default_history() -> RawDuration {
    RawDuration::new("1h")
}
fn default_max_bytes() -> RawSize {
    RawSize::new("64MiB")
}
fn default_reserve() -> RawSize {
    RawSize::new("64MiB")
}
fn default_memory() -> RawSize {
    RawSize::new("8MiB")
}
fn default_level() -> String {
    "info".to_owned()
}

/// Validated `[http]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidHttp {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The bearer token requests need, if any.
    pub token: Option<SecretSource>,
    /// History kept, 1 min to 24 h.
    pub history: Duration,
}

/// Validated `[spool]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidSpool {
    /// The directory (the default filled in).
    pub dir: PathBuf,
    /// Bytes per sink, at least 1 MiB.
    pub max_bytes: u64,
    /// Free space to leave on the file system; 0: none.
    pub reserve: u64,
    /// Bytes per sink held in memory while the disk fails, at least 64 KiB.
    pub memory: u64,
}

/// Validated `[log]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidLog {
    /// The filter, checked: a level or `target=level` items.
    pub level: String,
    /// The format.
    pub format: LogFormat,
}

impl HttpConfig {
    /// Validates `[http]`.
    pub fn validate(&self, env: &EnvInputs, problems: &mut Problems) -> Option<ValidHttp> {
        let at = KeyPath::root().key("http");
        let listen = problems.ok(
            &at.key("listen"),
            self.listen.parse::<SocketAddr>().map_err(|_| {
                format!(
                    "{:?} is not IP:port; e.g. \"127.0.0.1:9600\", \"0.0.0.0:9600\" or \"[::]:9600\"",
                    self.listen
                )
            }),
        );
        if let Some(path) = &self.token_file {
            non_empty_path(path, &at.key("token_file"), problems)?;
        }
        let history = positive(&self.history, &at.key("history"), problems);
        if let Some(history) = history
            && !(HISTORY_RANGE.0..=HISTORY_RANGE.1).contains(&history)
        {
            problems.value(at.key("history"), "history is from \"1m\" to \"24h\"");
            return None;
        }
        Some(ValidHttp {
            listen: listen?,
            token: SecretSource::pick(
                ENV_HTTP_TOKEN,
                env.secret(ENV_HTTP_TOKEN),
                self.token_file.as_deref(),
            ),
            history: history?,
        })
    }
}

impl SpoolConfig {
    /// Validates `[spool]`, filling in the default directory from `env`.
    pub fn validate(&self, env: &EnvInputs, problems: &mut Problems) -> Option<ValidSpool> {
        let at = KeyPath::root().key("spool");
        let dir = match &self.dir {
            Some(dir) => non_empty_path(dir, &at.key("dir"), problems).map(|()| dir.clone()),
            None => Some(env.default_spool_dir.clone()),
        };
        let max_bytes = problems.ok(&at.key("max_bytes"), parse_size(&self.max_bytes));
        if let Some(bytes) = max_bytes
            && bytes < MIN_SPOOL_BYTES
        {
            problems.value(
                at.key("max_bytes"),
                format!(
                    "{} is too small for a spool; use at least \"1MiB\"",
                    format_size(bytes)
                ),
            );
            return None;
        }
        let reserve = problems.ok(&at.key("reserve"), parse_size(&self.reserve));
        let memory = problems.ok(&at.key("memory"), parse_size(&self.memory));
        if let Some(bytes) = memory
            && bytes < MIN_SPOOL_MEMORY
        {
            problems.value(
                at.key("memory"),
                format!(
                    "{} is too little to hold readings while the disk fails; use at least \"64KiB\"",
                    format_size(bytes)
                ),
            );
            return None;
        }
        Some(ValidSpool {
            dir: dir?,
            max_bytes: max_bytes?,
            reserve: reserve?,
            memory: memory?,
        })
    }
}

impl LogConfig {
    /// Validates `[log]`.
    pub fn validate(&self, problems: &mut Problems) -> Option<ValidLog> {
        let at = KeyPath::root().key("log");
        problems.ok(&at.key("level"), check_log_level(&self.level))?;
        Some(ValidLog {
            level: self.level.clone(),
            format: self.format,
        })
    }
}
