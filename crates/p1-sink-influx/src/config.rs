//! What an InfluxDB sink needs to know: the validated `[[sink]] kind = "influx"` section,
//! with its secret already read (p1gw reads files and the environment, this crate does not).

use std::fmt;
use std::time::Duration;

/// The default `batch_size`: large enough that a backlog drains in few requests (InfluxDB's
/// own advice is about 5 000 lines per write), small enough for a Raspberry Pi's memory.
pub const DEFAULT_BATCH_SIZE: usize = 5000;

/// The default `max_in_flight`.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 2;

/// An InfluxDB sink's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct InfluxConfig {
    /// The server's base URL, `http://host:8086` or `https://host/prefix`; `/write` or
    /// `/api/v2/write` is appended to its path.
    pub url: String,
    /// What to write to, and as whom.
    pub target: Target,
    /// The precision of the timestamps written.
    pub precision: Precision,
    /// The most readings in one write request (at least 1).
    pub batch_size: usize,
    /// The longest a reading waits for a batch to fill before it is written. Zero writes each
    /// reading as soon as it is spooled.
    pub batch_interval: Duration,
    /// The most write requests in flight at once (at least 1). Each holds a batch in memory
    /// (plus its compressed copy).
    pub max_in_flight: usize,
    /// Compress request bodies with gzip (`Content-Encoding: gzip`).
    pub gzip: bool,
    /// The limit for one write request, connecting included.
    pub timeout: Duration,
}

impl InfluxConfig {
    /// Settings with the defaults of the configuration file: precision `s`, batches of up to
    /// [`DEFAULT_BATCH_SIZE`] readings, waiting up to 10 s, [`DEFAULT_MAX_IN_FLIGHT`] requests in
    /// flight, gzip on, 10 s request timeout.
    pub fn new(url: impl Into<String>, target: Target) -> Self {
        InfluxConfig {
            url: url.into(),
            target,
            precision: Precision::S,
            batch_size: DEFAULT_BATCH_SIZE,
            batch_interval: Duration::from_secs(10),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            gzip: true,
            timeout: Duration::from_secs(10),
        }
    }
}

/// The API and what it writes to.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// InfluxDB 1.x: `POST /write?db=…&rp=…&precision=…`, HTTP basic authentication when a user
    /// name is given.
    V1 {
        /// The database.
        database: String,
        /// The retention policy; `None`: the database's default.
        retention_policy: Option<String>,
        /// User name and password, when authentication is on.
        credentials: Option<(String, Secret)>,
    },
    /// InfluxDB 2.x/3.x (and VictoriaMetrics, and InfluxDB 1.8's compatibility endpoint):
    /// `POST /api/v2/write?org=…&bucket=…&precision=…` with `Authorization: Token …`.
    V2 {
        /// The organisation.
        org: String,
        /// The bucket.
        bucket: String,
        /// The API token.
        token: Secret,
    },
}

impl Target {
    /// What is written to, for logs: `database "p1"`, `bucket "p1" of org "home"`.
    pub fn describe(&self) -> String {
        match self {
            Target::V1 {
                database,
                retention_policy: Some(rp),
                ..
            } => format!("database {database:?}, retention policy {rp:?}"),
            Target::V1 { database, .. } => format!("database {database:?}"),
            Target::V2 { org, bucket, .. } => format!("bucket {bucket:?} of org {org:?}"),
        }
    }
}

/// Timestamp precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// Seconds.
    S,
    /// Milliseconds.
    Ms,
    /// Microseconds.
    Us,
    /// Nanoseconds.
    Ns,
}

impl Precision {
    /// The `precision` query parameter of the v1 `/write` API: `u` for microseconds, as
    /// InfluxDB 1.x does not know `us` and reads such timestamps as nanoseconds (seen on 1.6.7).
    pub fn v1_param(self) -> &'static str {
        match self {
            Precision::S => "s",
            Precision::Ms => "ms",
            Precision::Us => "u",
            Precision::Ns => "ns",
        }
    }

    /// The `precision` query parameter of the v2 `/api/v2/write` API.
    pub fn v2_param(self) -> &'static str {
        match self {
            Precision::S => "s",
            Precision::Ms => "ms",
            Precision::Us => "us",
            Precision::Ns => "ns",
        }
    }

    /// Nanoseconds in one unit of this precision.
    pub fn unit_ns(self) -> u64 {
        match self {
            Precision::S => 1_000_000_000,
            Precision::Ms => 1_000_000,
            Precision::Us => 1_000,
            Precision::Ns => 1,
        }
    }

    /// `t` as an integer count of this precision's units since the Unix epoch (finer parts
    /// cut off).
    pub fn timestamp(self, t: jiff::Timestamp) -> i128 {
        match self {
            Precision::S => i128::from(t.as_second()),
            Precision::Ms => i128::from(t.as_millisecond()),
            Precision::Us => i128::from(t.as_microsecond()),
            Precision::Ns => t.as_nanosecond(),
        }
    }
}

/// A password or token. `Debug` prints `***`; only the request that authenticates sees it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}
