//! `kind = "influx"`: write to InfluxDB (p1-sink-influx), v1 or v2 API.
//!
//! Secrets: v1's `password`, from `password_file` or `P1GW_INFLUX_PASSWORD`; v2's `token`, from
//! `token_file` or `P1GW_INFLUX_TOKEN`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use p1_sink_influx::Precision;
use serde::{Deserialize, Serialize};

use super::{
    InlineSecret, MakeSink, PlanContext, Planned, SinkKind, optional_path, optional_text, password,
    read_secret,
};
use crate::config::check::Checker;
use crate::config::locate::{KeyPath, Problems};
use crate::config::secret::{EnvInputs, SecretSource};
use crate::config::source::positive;
use crate::config::value::{Endpoint, RawDuration, format_duration};
use crate::exit::{Coded, Exit};

/// Environment variable for the InfluxDB v1 password.
pub(super) const ENV_INFLUX_PASSWORD: &str = "P1GW_INFLUX_PASSWORD";
/// Environment variable for the InfluxDB v2 token.
pub(super) const ENV_INFLUX_TOKEN: &str = "P1GW_INFLUX_TOKEN";

/// InfluxDB API version, as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InfluxApi {
    /// InfluxDB 1.x: `/write` with `database` (and `retention_policy`, `username`, password).
    V1,
    /// InfluxDB 2.x and later: `/api/v2/write` with `org`, `bucket` and a token.
    V2,
}

/// Timestamp precision as written; the TOML counterpart of [`p1_sink_influx::Precision`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RawPrecision {
    /// Seconds.
    S,
    /// Milliseconds.
    Ms,
    /// Microseconds.
    Us,
    /// Nanoseconds.
    Ns,
}

impl From<RawPrecision> for Precision {
    fn from(raw: RawPrecision) -> Precision {
        match raw {
            RawPrecision::S => Precision::S,
            RawPrecision::Ms => Precision::Ms,
            RawPrecision::Us => Precision::Us,
            RawPrecision::Ns => Precision::Ns,
        }
    }
}

impl From<Precision> for RawPrecision {
    fn from(precision: Precision) -> RawPrecision {
        match precision {
            Precision::S => RawPrecision::S,
            Precision::Ms => RawPrecision::Ms,
            Precision::Us => RawPrecision::Us,
            Precision::Ns => RawPrecision::Ns,
        }
    }
}

/// `kind = "influx"`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InfluxTable {
    /// A name for this sink, as for MQTT.
    pub name: Option<String>,
    /// The server: `http://localhost:8086` or `https://…`. No credentials or query in the URL.
    pub url: String,
    /// `"v1"` (InfluxDB 1.x: `database`, optional `retention_policy`, `username`,
    /// `password_file`) or `"v2"` (InfluxDB 2.x/3.x: `org`, `bucket`, `token_file`).
    pub api: InfluxApi,
    /// v1: the database to write to.
    pub database: Option<String>,
    /// v1: the retention policy; default: the database's default.
    pub retention_policy: Option<String>,
    /// v1: the user name, when authentication is on.
    pub username: Option<String>,
    /// v1: a file holding the password; `P1GW_INFLUX_PASSWORD` overrides it. Needs `username`.
    pub password_file: Option<PathBuf>,
    /// v2: the organisation.
    pub org: Option<String>,
    /// v2: the bucket.
    pub bucket: Option<String>,
    /// v2: a file holding the API token; `P1GW_INFLUX_TOKEN` overrides it. One of the two is
    /// required.
    pub token_file: Option<PathBuf>,
    /// Timestamp precision written: `"s"`, `"ms"`, `"us"` or `"ns"`. Default `"s"`.
    #[serde(default = "default_precision")]
    pub precision: RawPrecision,
    /// The most readings in one write, 1–10000. Default 5000: a backlog after an outage
    /// drains in few requests; a live meter's readings go every `batch_interval` anyway.
    #[serde(default = "default_batch_size")]
    pub batch_size: u32,
    /// The most write requests in flight at once, 1–16. Default 2: while InfluxDB stores one
    /// batch, the next is on its way. Each holds up to `batch_size` readings in memory.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: u32,
    /// The longest a reading waits for a batch to fill before it is written. Default `"10s"`.
    #[serde(default = "default_batch_interval")]
    pub batch_interval: RawDuration,
    /// Compress write requests with gzip; InfluxDB 1.x, 2.x and VictoriaMetrics all take it.
    /// Default: on, except for a server on this machine (`localhost`, `127.0.0.0/8`, `::1`),
    /// where compressing saves no bandwidth and costs CPU twice (p1gw compresses, the server
    /// decompresses). Turn it off for a proxy that cannot pass it on.
    #[serde(default)]
    pub gzip: Option<bool>,
    /// The longest one write request may take, connecting included; a request that takes longer
    /// is retried later. Default `"10s"`.
    #[serde(default = "default_timeout")]
    pub timeout: RawDuration,
}

// The defaults are p1-sink-influx's (`InfluxTable::new`), written the way the file spells them.
fn defaults() -> p1_sink_influx::InfluxConfig {
    p1_sink_influx::InfluxConfig::new(
        "",
        p1_sink_influx::Target::V1 {
            database: String::new(),
            retention_policy: None,
            credentials: None,
        },
    )
}
fn default_precision() -> RawPrecision {
    defaults().precision.into()
}
fn default_batch_size() -> u32 {
    u32::try_from(defaults().batch_size).unwrap_or(u32::MAX)
}
fn default_max_in_flight() -> u32 {
    u32::try_from(defaults().max_in_flight).unwrap_or(u32::MAX)
}
fn default_batch_interval() -> RawDuration {
    RawDuration::new(&format_duration(defaults().batch_interval))
}
fn default_timeout() -> RawDuration {
    RawDuration::new(&format_duration(defaults().timeout))
}

/// Whether `host` (a URL's, IPv6 without brackets) is this machine's loopback interface.
fn is_loopback(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// InfluxDB target and where its credentials come from, per API version (the library's
/// [`p1_sink_influx::Target`] holds the secrets themselves, read when the sink is built).
#[derive(Debug, Clone, PartialEq)]
pub enum InfluxTarget {
    /// `/write?db=…&rp=…`.
    V1 {
        /// Database.
        database: String,
        /// Retention policy.
        retention_policy: Option<String>,
        /// User name.
        username: Option<String>,
        /// Password.
        password: Option<SecretSource>,
    },
    /// `/api/v2/write?org=…&bucket=…`.
    V2 {
        /// Organisation.
        org: String,
        /// Bucket.
        bucket: String,
        /// API token.
        token: SecretSource,
    },
}

/// A validated InfluxDB sink.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidInflux {
    /// The server.
    pub url: Endpoint,
    /// What to write to, and as whom.
    pub target: InfluxTarget,
    /// Timestamp precision.
    pub precision: Precision,
    /// Readings per write, 1–10000.
    pub batch_size: u32,
    /// Longest wait for a batch, positive.
    pub batch_interval: Duration,
    /// Write requests in flight at once, 1–16.
    pub max_in_flight: u32,
    /// Gzip request bodies.
    pub gzip: bool,
    /// Request timeout, positive.
    pub timeout: Duration,
}

impl SinkKind for InfluxTable {
    type Valid = ValidInflux;
    const INLINE_SECRETS: &'static [InlineSecret] = &[
        ("password", "password_file", ENV_INFLUX_PASSWORD),
        ("token", "token_file", ENV_INFLUX_TOKEN),
    ];

    fn name(&self) -> Option<&String> {
        self.name.as_ref()
    }

    fn validate(
        &self,
        at: &KeyPath,
        env: &EnvInputs,
        problems: &mut Problems,
    ) -> Option<ValidInflux> {
        let url = problems.ok(
            &at.key("url"),
            Endpoint::parse(&self.url, &["http", "https"]),
        );
        let batch_size = if (1..=10_000).contains(&self.batch_size) {
            Some(self.batch_size)
        } else {
            problems.value(
                at.key("batch_size"),
                format!("{}: batch_size is from 1 to 10000", self.batch_size),
            );
            None
        };
        let max_in_flight = if (1..=16).contains(&self.max_in_flight) {
            Some(self.max_in_flight)
        } else {
            problems.value(
                at.key("max_in_flight"),
                format!("{}: max_in_flight is from 1 to 16", self.max_in_flight),
            );
            None
        };
        let batch_interval = positive(&self.batch_interval, &at.key("batch_interval"), problems);
        let timeout = positive(&self.timeout, &at.key("timeout"), problems);
        let target = self.target(at, env, problems);
        let url = url?;
        Some(ValidInflux {
            gzip: self.gzip.unwrap_or_else(|| !is_loopback(url.host())),
            url,
            target: target?,
            precision: self.precision.into(),
            batch_size: batch_size?,
            batch_interval: batch_interval?,
            max_in_flight: max_in_flight?,
            timeout: timeout?,
        })
    }
}

impl InfluxTable {
    fn target(
        &self,
        at: &KeyPath,
        env: &EnvInputs,
        problems: &mut Problems,
    ) -> Option<InfluxTarget> {
        let v1_keys = [
            ("database", self.database.is_some()),
            ("retention_policy", self.retention_policy.is_some()),
            ("username", self.username.is_some()),
            ("password_file", self.password_file.is_some()),
        ];
        let v2_keys = [
            ("org", self.org.is_some()),
            ("bucket", self.bucket.is_some()),
            ("token_file", self.token_file.is_some()),
        ];
        let (other, this) = match self.api {
            InfluxApi::V1 => (v2_keys.as_slice(), "\"v2\""),
            InfluxApi::V2 => (v1_keys.as_slice(), "\"v1\""),
        };
        let mut stray = false;
        for (key, present) in other {
            if *present {
                problems.key(at.key(key), format!("{key} is only used with api = {this}"));
                stray = true;
            }
        }
        let required = |value: Option<&String>, key: &str, problems: &mut Problems| match value {
            None => {
                problems.value(
                    at.key(key),
                    format!(
                        "missing required key for api = {:?}",
                        match self.api {
                            InfluxApi::V1 => "v1",
                            InfluxApi::V2 => "v2",
                        }
                    ),
                );
                None
            }
            Some(value) if value.trim().is_empty() => {
                problems.value(at.key(key), "empty value");
                None
            }
            Some(value) => Some(value.clone()),
        };
        match self.api {
            InfluxApi::V1 => {
                let database = required(self.database.as_ref(), "database", problems);
                let rp = optional_text(
                    self.retention_policy.as_ref(),
                    &at.key("retention_policy"),
                    problems,
                );
                let user = optional_text(self.username.as_ref(), &at.key("username"), problems);
                let password = password(
                    ENV_INFLUX_PASSWORD,
                    env,
                    self.password_file.as_ref(),
                    self.username.as_ref(),
                    at,
                    problems,
                );
                let (database, password) = (database?, password?);
                rp?;
                user?;
                (!stray).then(|| InfluxTarget::V1 {
                    database,
                    retention_policy: self.retention_policy.clone(),
                    username: self.username.clone(),
                    password,
                })
            }
            InfluxApi::V2 => {
                let org = required(self.org.as_ref(), "org", problems);
                let bucket = required(self.bucket.as_ref(), "bucket", problems);
                optional_path(self.token_file.as_ref(), &at.key("token_file"), problems)?;
                let token = SecretSource::pick(
                    ENV_INFLUX_TOKEN,
                    env.secret(ENV_INFLUX_TOKEN),
                    self.token_file.as_deref(),
                );
                if token.is_none() {
                    problems.value(
                        at.key("token_file"),
                        format!("missing required key: api = \"v2\" needs a token; set token_file, or {ENV_INFLUX_TOKEN}"),
                    );
                }
                let (org, bucket, token) = (org?, bucket?, token?);
                (!stray).then_some(InfluxTarget::V2 { org, bucket, token })
            }
        }
    }
}

/// Reads a secret for the library.
fn read(what: &str, source: &SecretSource) -> Result<p1_sink_influx::Secret, String> {
    read_secret(what, source).map(|s| p1_sink_influx::Secret::new(s.expose()))
}

impl ValidInflux {
    /// The InfluxDB sink's settings, with the password or token read (errors name where it
    /// comes from, never the secret; the caller maps them to exit 74).
    pub fn settings(&self) -> Result<p1_sink_influx::InfluxConfig, String> {
        let target = match &self.target {
            InfluxTarget::V1 {
                database,
                retention_policy,
                username,
                password,
            } => p1_sink_influx::Target::V1 {
                database: database.clone(),
                retention_policy: retention_policy.clone(),
                credentials: match (username, password) {
                    (Some(user), Some(source)) => Some((user.clone(), read("password", source)?)),
                    (Some(user), None) => Some((user.clone(), p1_sink_influx::Secret::new(""))),
                    _ => None,
                },
            },
            InfluxTarget::V2 { org, bucket, token } => p1_sink_influx::Target::V2 {
                org: org.clone(),
                bucket: bucket.clone(),
                token: read("token", token)?,
            },
        };
        let mut config = p1_sink_influx::InfluxConfig::new(self.url.as_str(), target);
        config.precision = self.precision;
        config.batch_size = self.batch_size as usize;
        config.batch_interval = self.batch_interval;
        config.max_in_flight = self.max_in_flight as usize;
        config.gzip = self.gzip;
        config.timeout = self.timeout;
        Ok(config)
    }

    /// Reads the password (v1) or token (v2) again from where it came from, for the sink to call
    /// after InfluxDB refused the one in use (401/403): a user fixes a wrong or expired secret by
    /// rewriting its file, without a restart. `None` without a secret.
    pub fn secret_reader(&self) -> Option<p1_sink_influx::SecretReader> {
        let (what, source) = match &self.target {
            InfluxTarget::V1 {
                password: Some(source),
                ..
            } => ("password", source.clone()),
            InfluxTarget::V2 { token, .. } => ("token", token.clone()),
            InfluxTarget::V1 { password: None, .. } => return None,
        };
        Some(Arc::new(move || read(what, &source)))
    }
}

impl Planned for ValidInflux {
    fn check(&self, checker: &mut Checker, at: &KeyPath) {
        match &self.target {
            InfluxTarget::V1 { password, .. } => {
                checker.secret(password.as_ref(), &at.key("password_file"));
            }
            InfluxTarget::V2 { token, .. } => checker.secret(Some(token), &at.key("token_file")),
        }
    }

    fn plan(&self, cx: &PlanContext<'_>) -> anyhow::Result<(&'static str, MakeSink)> {
        let settings = self
            .settings()
            .map_err(|e| Coded::error(Exit::IO, format!("sink {:?}: {e}", cx.name)))?;
        let mut built = p1_sink_influx::Influx::new(settings)
            .map_err(|e| Coded::error(Exit::CONFIG, format!("sink {:?}: {e}", cx.name)))?;
        if let Some(reader) = self.secret_reader() {
            built = built.with_secret_reader(reader);
        }
        Ok((p1_sink_influx::KIND, Arc::new(move || built.sink())))
    }
}
