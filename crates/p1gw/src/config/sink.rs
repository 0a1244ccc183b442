//! `[[sink]]`: where readings go, each entry chosen by `kind`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::locate::{KeyPath, Problems};
use super::secret::{
    ENV_AZURE_CONNECTION_STRING, ENV_INFLUX_PASSWORD, ENV_INFLUX_TOKEN, ENV_MQTT_PASSWORD,
    EnvInputs, SecretSource,
};
use super::source::{non_empty_path, positive};
use super::value::{
    Endpoint, RawDuration, RawSize, check_name, check_topic_prefix, format_duration, format_size,
    parse_duration, parse_size,
};

/// The `kind`s of sink, as spelled in the file (and in the metrics' `sink` label).
pub const SINK_KINDS: [&str; 5] = ["mqtt", "influx", "azure-iot", "jsonl", "stdout"];

/// Keys that would hold a secret inline, per sink kind: the key, the `*_file` key to use
/// instead, and the environment variable.
pub fn inline_secret_keys(kind: &str) -> &'static [(&'static str, &'static str, &'static str)] {
    match kind {
        "mqtt" => &[("password", "password_file", ENV_MQTT_PASSWORD)],
        "influx" => &[
            ("password", "password_file", ENV_INFLUX_PASSWORD),
            ("token", "token_file", ENV_INFLUX_TOKEN),
        ],
        "azure-iot" => &[(
            "connection_string",
            "connection_string_file",
            ENV_AZURE_CONNECTION_STRING,
        )],
        _ => &[],
    }
}

/// One `[[sink]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind")]
pub enum SinkConfig {
    /// `kind = "mqtt"`: publish to an MQTT broker, with Home Assistant discovery.
    #[serde(rename = "mqtt")]
    Mqtt(MqttConfig),
    /// `kind = "influx"`: write to InfluxDB, v1 or v2 API.
    #[serde(rename = "influx")]
    Influx(InfluxConfig),
    /// `kind = "azure-iot"`: send to Azure IoT Hub as a device.
    #[serde(rename = "azure-iot")]
    AzureIot(AzureIotConfig),
    /// `kind = "jsonl"`: append one JSON reading per line to a file.
    #[serde(rename = "jsonl")]
    Jsonl(JsonlConfig),
    /// `kind = "stdout"`: print one JSON reading per line on standard output.
    #[serde(rename = "stdout")]
    Stdout(StdoutConfig),
}

impl SinkConfig {
    /// The `kind` as spelled in the file.
    pub fn kind(&self) -> &'static str {
        match self {
            SinkConfig::Mqtt(_) => "mqtt",
            SinkConfig::Influx(_) => "influx",
            SinkConfig::AzureIot(_) => "azure-iot",
            SinkConfig::Jsonl(_) => "jsonl",
            SinkConfig::Stdout(_) => "stdout",
        }
    }

    fn name(&self) -> Option<&String> {
        match self {
            SinkConfig::Mqtt(c) => c.name.as_ref(),
            SinkConfig::Influx(c) => c.name.as_ref(),
            SinkConfig::AzureIot(c) => c.name.as_ref(),
            SinkConfig::Jsonl(c) => c.name.as_ref(),
            SinkConfig::Stdout(c) => c.name.as_ref(),
        }
    }
}

/// `kind = "mqtt"`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// A name for this sink, for logs, metrics and its spool file. Default: the kind, so two
    /// sinks of one kind need names of their own.
    pub name: Option<String>,
    /// The broker: `mqtt://host:1883` or `tcp://…` in the clear, `mqtts://host:8883` or
    /// `ssl://…` with TLS. No credentials in the URL.
    pub url: String,
    /// The MQTT version: `"3.1.1"` (every broker) or `"5"` (the broker says when it refuses
    /// a message, e.g. one too large, instead of acknowledging and dropping it). Default
    /// `"3.1.1"`.
    #[serde(default = "default_protocol")]
    pub protocol: String,
    /// The user name to log in with.
    pub username: Option<String>,
    /// A file holding the password (one line), readable by p1gw only. `P1GW_MQTT_PASSWORD`
    /// overrides it. Needs `username`.
    pub password_file: Option<PathBuf>,
    /// The MQTT client id. Default: `p1gw-` and the first meter's name.
    pub client_id: Option<String>,
    /// Publish Home Assistant MQTT discovery messages, so the meter's sensors appear in Home
    /// Assistant by themselves. Default `true`.
    #[serde(default = "default_true")]
    pub discovery: bool,
    /// The topic prefix Home Assistant listens on for discovery. Default `"homeassistant"`.
    #[serde(default = "default_discovery_prefix")]
    pub discovery_prefix: String,
    /// The shortest time between two publications on one topic; readings in between are not
    /// published to this broker (they are kept by the other sinks). Default `"0s"`: every
    /// reading.
    #[serde(default = "default_min_interval")]
    pub min_interval: RawDuration,
    /// The first level of every topic p1gw publishes: `<topic_prefix>/<meter>/…`. Default
    /// `"p1gw"`.
    #[serde(default = "default_topic_prefix")]
    pub topic_prefix: String,
    /// MQTT quality of service, 0, 1 or 2. Default 1: the broker acknowledges each message,
    /// and only then is it removed from the spool.
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// Publish readings as retained messages. Default `false` (discovery messages are always
    /// retained).
    #[serde(default)]
    pub retain: bool,
    /// A PEM file of CA certificates to trust instead of the system's, for `mqtts://`.
    pub ca_file: Option<PathBuf>,
    /// A PEM client certificate, for brokers that authenticate clients by certificate; needs
    /// `client_key_file`.
    pub client_cert_file: Option<PathBuf>,
    /// The PEM private key of `client_cert_file`.
    pub client_key_file: Option<PathBuf>,
    /// MQTT keep-alive: the broker drops the connection (and publishes p1gw's last will,
    /// `offline`) after 1.5 times this without a packet. From `"1s"` to `"18h"`. Default `"30s"`.
    #[serde(default = "default_keep_alive")]
    pub keep_alive: RawDuration,
    /// After a reconnect, readings spooled meanwhile are sent oldest first at this many MQTT
    /// messages per second at most (bursts of one second's worth), then live readings resume.
    /// From 1 to 10000. Default 50.
    #[serde(default = "default_backlog_rate")]
    pub backlog_rate: u32,
    /// Besides `<topic_prefix>/<meter>/state` (the whole reading), publish each value on a
    /// topic of its own: `<topic_prefix>/<meter>/<name>`, and `<topic_prefix>/<meter>/<kind>_<channel>/<name>`
    /// for submeters. Home Assistant's discovered sensors read these, so discovery needs it.
    /// Default `true`.
    #[serde(default = "default_true")]
    pub value_topics: bool,
    /// Publish a value topic only when its value changed since it was last published. The state
    /// topic is not affected. Default `false`.
    #[serde(default)]
    pub only_on_change: bool,
}

/// InfluxDB API version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InfluxApi {
    /// InfluxDB 1.x: `/write` with `database` (and `retention_policy`, `username`, password).
    V1,
    /// InfluxDB 2.x and later: `/api/v2/write` with `org`, `bucket` and a token.
    V2,
}

/// Timestamp precision of the line protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
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

/// `kind = "influx"`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InfluxConfig {
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
    pub precision: Precision,
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
    #[serde(default = "default_influx_timeout")]
    pub timeout: RawDuration,
}

/// `kind = "azure-iot"`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AzureIotConfig {
    /// A name for this sink, as for MQTT.
    pub name: Option<String>,
    /// A file holding the device connection string (`HostName=…;DeviceId=…;SharedAccessKey=…`,
    /// or `…;x509=true` with a client certificate). `P1GW_AZURE_CONNECTION_STRING` overrides
    /// it; one of the two is required.
    pub connection_string_file: Option<PathBuf>,
    /// X.509 authentication: the device's PEM certificate; needs `client_key_file`.
    pub client_cert_file: Option<PathBuf>,
    /// The PEM private key of `client_cert_file`.
    pub client_key_file: Option<PathBuf>,
    /// Readings are batched into one message this often. Default `"60s"`. With the free tier's
    /// 8000 messages a day, 11 s is the shortest that fits.
    #[serde(default = "default_azure_interval")]
    pub interval: RawDuration,
    /// The most messages sent in a day (UTC); `interval` must fit in it. Default 8000, the free
    /// tier's limit. Counted as the hub counts: one per started `message_chunk` of a message.
    /// When it is used up, readings stay spooled until 00:00 UTC.
    #[serde(default = "default_daily_message_budget")]
    pub daily_message_budget: u32,
    /// IoT Hub meters messages in chunks of this size: `"512B"` on the free tier (the default),
    /// `"4KiB"` on the basic and standard tiers.
    #[serde(default = "default_message_chunk")]
    pub message_chunk: RawSize,
    /// How long each SAS token is valid, from `"1m"`; the connection is renewed with a fresh
    /// token at 80 % of it. Default `"1h"`.
    #[serde(default = "default_token_lifetime")]
    pub token_lifetime: RawDuration,
    /// Application properties added to every message, for IoT Hub message routing, e.g.
    /// `properties = { meter = "home", kind = "electricity" }`. Names must not start with `$`.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// A PEM file of CA certificates to trust instead of the system's (a test hub, an IoT Edge
    /// gateway with its own CA).
    pub ca_file: Option<PathBuf>,
    /// The hub's MQTT port. Default 8883; change it only for a test hub or a TLS proxy.
    #[serde(default = "default_azure_port")]
    pub port: u16,
}

/// `kind = "jsonl"`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JsonlConfig {
    /// A name for this sink, as for MQTT.
    pub name: Option<String>,
    /// The file readings are appended to, one JSON object per line; created if missing.
    pub path: PathBuf,
}

/// `kind = "stdout"`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StdoutConfig {
    /// A name for this sink, as for MQTT.
    pub name: Option<String>,
}

/// Whether `host` (a URL's, IPv6 without brackets) is this machine's loopback interface.
fn is_loopback(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn default_true() -> bool {
    true
}
fn default_discovery_prefix() -> String {
    "homeassistant".to_owned()
}
fn default_min_interval() -> RawDuration {
    RawDuration::new("0s")
}
fn default_topic_prefix() -> String {
    "p1gw".to_owned()
}
fn default_qos() -> u8 {
    1
}
fn default_protocol() -> String {
    "3.1.1".to_owned()
}
fn default_keep_alive() -> RawDuration {
    RawDuration::new("30s")
}
fn default_backlog_rate() -> u32 {
    50
}
fn default_precision() -> Precision {
    Precision::S
}
fn default_batch_size() -> u32 {
    p1_sink_influx::DEFAULT_BATCH_SIZE as u32
}
fn default_max_in_flight() -> u32 {
    p1_sink_influx::DEFAULT_MAX_IN_FLIGHT as u32
}
fn default_batch_interval() -> RawDuration {
    RawDuration::new("10s")
}
fn default_influx_timeout() -> RawDuration {
    RawDuration::new("10s")
}
fn default_azure_interval() -> RawDuration {
    RawDuration::new("60s")
}
fn default_daily_message_budget() -> u32 {
    8000
}
fn default_message_chunk() -> RawSize {
    RawSize::new("512B")
}
fn default_token_lifetime() -> RawDuration {
    RawDuration::new("1h")
}
fn default_azure_port() -> u16 {
    8883
}

// ---------------------------------------------------------------------------------------------
// Validated.

/// A validated sink.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidSink {
    /// Its name: as configured, or the kind. Unique among the sinks.
    pub name: String,
    /// What it is.
    pub kind: ValidSinkKind,
    /// Its index in `[[sink]]`, to locate `check` errors.
    pub index: usize,
}

/// A validated sink of each kind.
#[derive(Debug, Clone, PartialEq)]
pub enum ValidSinkKind {
    /// MQTT.
    Mqtt(ValidMqtt),
    /// InfluxDB.
    Influx(ValidInflux),
    /// Azure IoT Hub.
    AzureIot(ValidAzureIot),
    /// A JSON-lines file.
    Jsonl(ValidJsonl),
    /// Standard output.
    Stdout,
}

impl ValidSinkKind {
    /// The kind as spelled in the file, which is also the metrics' `sink` label.
    pub fn kind(&self) -> &'static str {
        match self {
            ValidSinkKind::Mqtt(_) => "mqtt",
            ValidSinkKind::Influx(_) => "influx",
            ValidSinkKind::AzureIot(_) => "azure-iot",
            ValidSinkKind::Jsonl(_) => "jsonl",
            ValidSinkKind::Stdout => "stdout",
        }
    }
}

/// A client certificate and its key, both PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    /// The certificate.
    pub cert_file: PathBuf,
    /// Its private key.
    pub key_file: PathBuf,
}

/// TLS settings of an MQTT sink whose URL asks for TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    /// CA certificates to trust instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// Client certificate authentication.
    pub client_cert: Option<ClientCert>,
}

/// MQTT quality of service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(clippy::enum_variant_names, reason = "MQTT's own names for the levels")]
pub enum Qos {
    /// At most once.
    AtMostOnce,
    /// At least once.
    AtLeastOnce,
    /// Exactly once.
    ExactlyOnce,
}

/// The MQTT version of a sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MqttProtocol {
    /// MQTT 3.1.1.
    V311,
    /// MQTT 5.
    V5,
}

/// A validated MQTT sink.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidMqtt {
    /// The broker.
    pub url: Endpoint,
    /// The MQTT version.
    pub protocol: MqttProtocol,
    /// User name.
    pub username: Option<String>,
    /// Password (only with a user name).
    pub password: Option<SecretSource>,
    /// Client id, if configured.
    pub client_id: Option<String>,
    /// Home Assistant discovery on.
    pub discovery: bool,
    /// Discovery topic prefix.
    pub discovery_prefix: String,
    /// Per-topic rate limit; zero: none.
    pub min_interval: Duration,
    /// Topic prefix.
    pub topic_prefix: String,
    /// Quality of service.
    pub qos: Qos,
    /// Retain readings.
    pub retain: bool,
    /// TLS, present exactly when the URL's scheme is `mqtts` or `ssl`.
    pub tls: Option<Tls>,
    /// Keep-alive, 1 s to 65535 s.
    pub keep_alive: Duration,
    /// Backlog pace in messages per second, 1–10000.
    pub backlog_rate: u32,
    /// One topic per value; always on with discovery.
    pub value_topics: bool,
    /// Value topics only on change.
    pub only_on_change: bool,
}

/// InfluxDB target and credentials per API version.
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

/// A validated Azure IoT Hub sink.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidAzureIot {
    /// The device connection string.
    pub connection_string: SecretSource,
    /// X.509 client certificate, if used.
    pub client_cert: Option<ClientCert>,
    /// Batch interval; fits `daily_message_budget`.
    pub interval: Duration,
    /// Messages per day at most.
    pub daily_message_budget: u32,
    /// Metering chunk, 1 B to 256 KiB.
    pub message_chunk: u32,
    /// SAS token lifetime, 1 min or more.
    pub token_lifetime: Duration,
    /// Application properties, by name.
    pub properties: BTreeMap<String, String>,
    /// CA certificates to trust instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// The hub's MQTT port.
    pub port: u16,
}

/// A validated JSON-lines sink.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidJsonl {
    /// The file appended to.
    pub path: PathBuf,
}

impl SinkConfig {
    /// Validates entry `index` of `[[sink]]`, noting problems; `None` if there were any.
    pub fn validate(
        &self,
        index: usize,
        env: &EnvInputs,
        problems: &mut Problems,
    ) -> Option<ValidSink> {
        let at = KeyPath::root().key("sink").index(index);
        let name = match self.name() {
            Some(name) => problems
                .ok(&at.key("name"), check_name(name))
                .map(|()| name.clone()),
            None => Some(self.kind().to_owned()),
        };
        let kind = match self {
            SinkConfig::Mqtt(c) => c.validate(&at, env, problems).map(ValidSinkKind::Mqtt),
            SinkConfig::Influx(c) => c.validate(&at, env, problems).map(ValidSinkKind::Influx),
            SinkConfig::AzureIot(c) => c.validate(&at, env, problems).map(ValidSinkKind::AzureIot),
            SinkConfig::Jsonl(c) => non_empty_path(&c.path, &at.key("path"), problems).map(|()| {
                ValidSinkKind::Jsonl(ValidJsonl {
                    path: c.path.clone(),
                })
            }),
            SinkConfig::Stdout(_) => Some(ValidSinkKind::Stdout),
        };
        Some(ValidSink {
            name: name?,
            kind: kind?,
            index,
        })
    }

    /// The key path of entry `index`'s name, or of the entry when it has none.
    pub fn name_path(&self, index: usize) -> KeyPath {
        let at = KeyPath::root().key("sink").index(index);
        match self.name() {
            Some(_) => at.key("name"),
            None => at,
        }
    }
}

/// An optional path that, when given, must not be empty.
fn optional_path(path: Option<&PathBuf>, at: &KeyPath, problems: &mut Problems) -> Option<()> {
    match path {
        Some(path) => non_empty_path(path, at, problems),
        None => Some(()),
    }
}

/// An optional string that, when given, must not be empty.
fn optional_text(text: Option<&String>, at: &KeyPath, problems: &mut Problems) -> Option<()> {
    match text {
        Some(text) if text.trim().is_empty() => {
            problems.value(at.clone(), "empty value; leave the key out instead");
            None
        }
        _ => Some(()),
    }
}

/// `client_cert_file` and `client_key_file`: both or neither.
fn client_cert(
    cert: Option<&PathBuf>,
    key: Option<&PathBuf>,
    at: &KeyPath,
    problems: &mut Problems,
) -> Option<Option<ClientCert>> {
    optional_path(cert, &at.key("client_cert_file"), problems)?;
    optional_path(key, &at.key("client_key_file"), problems)?;
    match (cert, key) {
        (Some(cert), Some(key)) => Some(Some(ClientCert {
            cert_file: cert.clone(),
            key_file: key.clone(),
        })),
        (None, None) => Some(None),
        (Some(_), None) => {
            problems.value(
                at.key("client_key_file"),
                "missing required key: client_cert_file needs client_key_file",
            );
            None
        }
        (None, Some(_)) => {
            problems.value(
                at.key("client_cert_file"),
                "missing required key: client_key_file needs client_cert_file",
            );
            None
        }
    }
}

/// A password needs a user name to go with it.
fn password(
    var: &'static str,
    env: Option<&super::secret::Secret>,
    file: Option<&PathBuf>,
    username: Option<&String>,
    at: &KeyPath,
    problems: &mut Problems,
) -> Option<Option<SecretSource>> {
    optional_path(file, &at.key("password_file"), problems)?;
    let password = SecretSource::pick(var, env, file.map(PathBuf::as_path));
    if password.is_some() && username.is_none() {
        let message = match file {
            Some(_) => {
                "a password needs a username: add username, or remove password_file".to_owned()
            }
            None => format!("missing required key: {var} is set, and a password needs a username"),
        };
        let path = match file {
            Some(_) => at.key("password_file"),
            None => at.key("username"),
        };
        problems.value(path, message);
        return None;
    }
    Some(password)
}

impl MqttConfig {
    fn validate(
        &self,
        at: &KeyPath,
        env: &EnvInputs,
        problems: &mut Problems,
    ) -> Option<ValidMqtt> {
        let url = problems.ok(
            &at.key("url"),
            Endpoint::parse(&self.url, &["mqtt", "mqtts", "tcp", "ssl"]),
        );
        let username = optional_text(self.username.as_ref(), &at.key("username"), problems);
        let password = password(
            ENV_MQTT_PASSWORD,
            env.mqtt_password.as_ref(),
            self.password_file.as_ref(),
            self.username.as_ref(),
            at,
            problems,
        );
        let client_id = optional_text(self.client_id.as_ref(), &at.key("client_id"), problems);
        let discovery_prefix = problems.ok(
            &at.key("discovery_prefix"),
            check_topic_prefix(&self.discovery_prefix),
        );
        let topic_prefix = problems.ok(
            &at.key("topic_prefix"),
            check_topic_prefix(&self.topic_prefix),
        );
        let min_interval = problems.ok(
            &at.key("min_interval"),
            parse_duration(&self.min_interval.0),
        );
        let protocol = match self.protocol.as_str() {
            "3.1.1" => Some(MqttProtocol::V311),
            "5" | "5.0" => Some(MqttProtocol::V5),
            other => {
                problems.value(
                    at.key("protocol"),
                    format!("{other:?}: protocol is \"3.1.1\" or \"5\""),
                );
                None
            }
        };
        let qos = match self.qos {
            0 => Some(Qos::AtMostOnce),
            1 => Some(Qos::AtLeastOnce),
            2 => Some(Qos::ExactlyOnce),
            n => {
                problems.value(at.key("qos"), format!("{n}: qos is 0, 1 or 2"));
                None
            }
        };
        let keep_alive =
            positive(&self.keep_alive, &at.key("keep_alive"), problems).and_then(|d| {
                if (Duration::from_secs(1)..=Duration::from_secs(u64::from(u16::MAX))).contains(&d)
                {
                    Some(d)
                } else {
                    problems.value(
                    at.key("keep_alive"),
                    format!(
                        "{}: keep_alive is from \"1s\" to \"18h12m15s\" (65535 s, MQTT's limit)",
                        format_duration(d)
                    ),
                );
                    None
                }
            });
        let backlog_rate = if (1..=10_000).contains(&self.backlog_rate) {
            Some(self.backlog_rate)
        } else {
            problems.value(
                at.key("backlog_rate"),
                format!(
                    "{}: backlog_rate is from 1 to 10000 messages per second",
                    self.backlog_rate
                ),
            );
            None
        };
        let value_topics = if self.discovery && !self.value_topics {
            problems.value(
                at.key("value_topics"),
                "Home Assistant discovery needs value_topics = true (its sensors read the value topics); set discovery = false, or remove value_topics",
            );
            None
        } else {
            Some(self.value_topics)
        };
        let ca = optional_path(self.ca_file.as_ref(), &at.key("ca_file"), problems);
        let cert = client_cert(
            self.client_cert_file.as_ref(),
            self.client_key_file.as_ref(),
            at,
            problems,
        );
        let url = url?;
        let client_cert = cert?;
        ca?;
        if !url.is_tls() {
            let stray = [
                ("ca_file", self.ca_file.is_some()),
                ("client_cert_file", client_cert.is_some()),
            ];
            for (key, _) in stray.iter().filter(|(_, present)| *present) {
                problems.key(
                    at.key(key),
                    format!("{key} is only used with TLS; use an mqtts:// or ssl:// url"),
                );
            }
            if stray.iter().any(|(_, present)| *present) {
                return None;
            }
        }
        let tls = url.is_tls().then(|| Tls {
            ca_file: self.ca_file.clone(),
            client_cert,
        });
        username?;
        client_id?;
        Some(ValidMqtt {
            url,
            protocol: protocol?,
            username: self.username.clone(),
            password: password?,
            client_id: self.client_id.clone(),
            discovery: self.discovery,
            discovery_prefix: discovery_prefix.map(|()| self.discovery_prefix.clone())?,
            min_interval: min_interval?,
            topic_prefix: topic_prefix.map(|()| self.topic_prefix.clone())?,
            qos: qos?,
            retain: self.retain,
            tls,
            keep_alive: keep_alive?,
            backlog_rate: backlog_rate?,
            value_topics: value_topics?,
            only_on_change: self.only_on_change,
        })
    }
}

impl ValidMqtt {
    /// The MQTT sink's settings: reads the password, the CA file and the client certificate
    /// (so errors name the file; the caller maps them to exit 74). `sink_name` is the sink's
    /// name, `gateway` the first meter's (the status topic and the default client id are
    /// named for it), `version` p1gw's.
    pub fn settings(
        &self,
        sink_name: &str,
        gateway: &str,
        version: &str,
    ) -> Result<p1_sink_mqtt::MqttSettings, String> {
        let port = self
            .url
            .port()
            .unwrap_or(if self.tls.is_some() { 8883 } else { 1883 });
        let mut s = p1_sink_mqtt::MqttSettings::new(self.url.host(), port, gateway);
        // Two MQTT sinks on one broker must not share a session: the second gets its name in
        // the default client id.
        s.client_id = self.client_id.clone().unwrap_or_else(|| {
            if sink_name == "mqtt" {
                format!("p1gw-{gateway}")
            } else {
                format!("p1gw-{gateway}-{sink_name}")
            }
        });
        s.username = self.username.clone();
        s.password = match &self.password {
            Some(source) => Some(
                source
                    .read()
                    .map_err(|e| format!("password: cannot read the {source}: {e}"))?
                    .expose()
                    .to_owned(),
            ),
            None => None,
        };
        let read = |key: &str, path: &std::path::Path| {
            std::fs::read(path).map_err(|e| format!("{key}: cannot read {}: {e}", path.display()))
        };
        s.tls = match &self.tls {
            None => None,
            Some(tls) => Some(p1_sink_mqtt::TlsSettings {
                ca_pem: tls
                    .ca_file
                    .as_deref()
                    .map(|p| read("ca_file", p))
                    .transpose()?,
                client: match &tls.client_cert {
                    None => None,
                    Some(c) => Some(p1_sink_mqtt::ClientIdentity {
                        cert_pem: read("client_cert_file", &c.cert_file)?,
                        key_pem: read("client_key_file", &c.key_file)?,
                    }),
                },
            }),
        };
        s.protocol = match self.protocol {
            MqttProtocol::V311 => p1_sink_mqtt::Protocol::V311,
            MqttProtocol::V5 => p1_sink_mqtt::Protocol::V5,
        };
        s.keep_alive = self.keep_alive;
        s.qos = match self.qos {
            Qos::AtMostOnce => p1_sink_mqtt::Qos::AtMostOnce,
            Qos::AtLeastOnce => p1_sink_mqtt::Qos::AtLeastOnce,
            Qos::ExactlyOnce => p1_sink_mqtt::Qos::ExactlyOnce,
        };
        s.retain = self.retain;
        s.topic_prefix = self.topic_prefix.clone();
        s.discovery_prefix = self.discovery.then(|| self.discovery_prefix.clone());
        s.value_topics = self.value_topics;
        s.only_on_change = self.only_on_change;
        s.min_interval = self.min_interval;
        s.backlog_rate = self.backlog_rate;
        s.sw_version = version.to_owned();
        Ok(s)
    }
}

impl InfluxConfig {
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
            precision: self.precision,
            batch_size: batch_size?,
            batch_interval: batch_interval?,
            max_in_flight: max_in_flight?,
            timeout: timeout?,
        })
    }

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
                    env.influx_password.as_ref(),
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
                    env.influx_token.as_ref(),
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

impl ValidInflux {
    /// The InfluxDB sink's settings, with the password or token read (errors name where it
    /// comes from, never the secret; the caller maps them to exit 74).
    pub fn settings(&self) -> Result<p1_sink_influx::InfluxConfig, String> {
        let read = |what: &str, source: &SecretSource| {
            source
                .read()
                .map(|s| p1_sink_influx::Secret::new(s.expose()))
                .map_err(|e| format!("{what}: cannot read the {source}: {e}"))
        };
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
        config.precision = match self.precision {
            Precision::S => p1_sink_influx::Precision::S,
            Precision::Ms => p1_sink_influx::Precision::Ms,
            Precision::Us => p1_sink_influx::Precision::Us,
            Precision::Ns => p1_sink_influx::Precision::Ns,
        };
        config.batch_size = self.batch_size as usize;
        config.batch_interval = self.batch_interval;
        config.max_in_flight = self.max_in_flight as usize;
        config.gzip = self.gzip;
        config.timeout = self.timeout;
        Ok(config)
    }
}

impl ValidInflux {
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
        Some(std::sync::Arc::new(move || {
            source
                .read()
                .map(|s| p1_sink_influx::Secret::new(s.expose()))
                .map_err(|e| format!("{what}: cannot read the {source}: {e}"))
        }))
    }
}

impl AzureIotConfig {
    fn validate(
        &self,
        at: &KeyPath,
        env: &EnvInputs,
        problems: &mut Problems,
    ) -> Option<ValidAzureIot> {
        let file = optional_path(
            self.connection_string_file.as_ref(),
            &at.key("connection_string_file"),
            problems,
        );
        let connection_string = SecretSource::pick(
            ENV_AZURE_CONNECTION_STRING,
            env.azure_connection_string.as_ref(),
            self.connection_string_file.as_deref(),
        );
        if connection_string.is_none() {
            problems.value(
                at.key("connection_string_file"),
                format!("missing required key: set connection_string_file, or {ENV_AZURE_CONNECTION_STRING}"),
            );
        }
        let cert = client_cert(
            self.client_cert_file.as_ref(),
            self.client_key_file.as_ref(),
            at,
            problems,
        );
        let interval = positive(&self.interval, &at.key("interval"), problems);
        let budget = if self.daily_message_budget == 0 {
            problems.value(at.key("daily_message_budget"), "must be at least 1");
            None
        } else {
            Some(self.daily_message_budget)
        };
        if let (Some(interval), Some(budget)) = (interval, budget) {
            let per_day = Duration::from_secs(86_400)
                .as_millis()
                .div_ceil(interval.as_millis());
            if per_day > u128::from(budget) {
                let shortest = Duration::from_secs(86_400_u64.div_ceil(u64::from(budget)));
                problems.value(
                    at.key("interval"),
                    format!(
                        "an interval of {} sends {per_day} messages a day, more than daily_message_budget = {budget}; use \"{}\" or more",
                        format_duration(interval),
                        format_duration(shortest)
                    ),
                );
                return None;
            }
        }
        let chunk = problems
            .ok(&at.key("message_chunk"), parse_size(&self.message_chunk))
            .and_then(|bytes| {
                if (1..=256 * 1024).contains(&bytes) {
                    u32::try_from(bytes).ok()
                } else {
                    problems.value(
                        at.key("message_chunk"),
                        format!(
                            "{}: message_chunk is from 1B to 256KiB (\"512B\" free tier, \"4KiB\" paid tiers)",
                            format_size(bytes)
                        ),
                    );
                    None
                }
            });
        let lifetime = positive(&self.token_lifetime, &at.key("token_lifetime"), problems)
            .and_then(|d| {
                if d < Duration::from_secs(60) {
                    problems.value(
                        at.key("token_lifetime"),
                        format!("{}: token_lifetime is \"1m\" or more", format_duration(d)),
                    );
                    None
                } else {
                    Some(d)
                }
            });
        let mut properties_ok = true;
        for name in self.properties.keys() {
            if name.is_empty() || name.starts_with('$') {
                problems.value(
                    at.key("properties"),
                    format!("{name:?}: property names must not be empty or start with '$' (IoT Hub's system properties)"),
                );
                properties_ok = false;
            }
        }
        let ca = optional_path(self.ca_file.as_ref(), &at.key("ca_file"), problems);
        let port = if self.port == 0 {
            problems.value(at.key("port"), "must not be 0");
            None
        } else {
            Some(self.port)
        };
        file?;
        ca?;
        Some(ValidAzureIot {
            connection_string: connection_string?,
            client_cert: cert?,
            interval: interval?,
            daily_message_budget: budget?,
            message_chunk: chunk?,
            token_lifetime: lifetime?,
            properties: properties_ok.then(|| self.properties.clone())?,
            ca_file: self.ca_file.clone(),
            port: port?,
        })
    }
}

impl ValidAzureIot {
    /// The Azure IoT Hub sink's settings, with the connection string, the CA file and the
    /// client certificate read (errors name where they come from, never a secret; the caller
    /// maps them to exit 74). The connection string is parsed by `p1_sink_azure::build`.
    pub fn settings(&self) -> Result<p1_sink_azure::AzureSettings, String> {
        let connection_string = self.connection_string.read().map_err(|e| {
            format!(
                "connection string: cannot read the {}: {e}",
                self.connection_string
            )
        })?;
        let read = |key: &str, path: &std::path::Path| {
            std::fs::read(path).map_err(|e| format!("{key}: cannot read {}: {e}", path.display()))
        };
        let mut s = p1_sink_azure::AzureSettings::new(connection_string.expose());
        s.ca_pem = self
            .ca_file
            .as_deref()
            .map(|p| read("ca_file", p))
            .transpose()?;
        s.client = match &self.client_cert {
            None => None,
            Some(c) => Some(p1_sink_azure::ClientIdentity {
                cert_pem: read("client_cert_file", &c.cert_file)?,
                key_pem: read("client_key_file", &c.key_file)?,
            }),
        };
        s.port = self.port;
        s.token_lifetime = self.token_lifetime;
        s.interval = self.interval;
        s.daily_message_budget = self.daily_message_budget;
        s.message_chunk = self.message_chunk;
        s.properties = self
            .properties
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(s)
    }
}

#[cfg(test)]
mod mqtt_tests {
    //! The MQTT part of `[[sink]]`: defaults, the keys added for the MQTT sink, their errors,
    //! and the settings handed to p1-sink-mqtt.

    use std::time::Duration;

    use super::super::{ValidConfig, parse_str};
    use super::ValidSinkKind;

    fn config(sink: &[&str]) -> String {
        let mut text = String::from(
            "[meter]\nname = \"home\"\ntz = \"Atlantic/Reykjavik\"\n[source]\nkind = \"simulate\"\n[[sink]]\nkind = \"mqtt\"\n",
        );
        for line in sink {
            text.push_str(line);
            text.push('\n');
        }
        text
    }

    fn check(sink: &[&str]) -> Result<ValidConfig, Vec<String>> {
        parse_str("test.toml", config(sink), &|_| None)
            .and_then(|c| c.validate())
            .map_err(|errors| errors.iter().map(ToString::to_string).collect())
    }

    fn mqtt(sink: &[&str]) -> super::ValidMqtt {
        match check(sink) {
            Ok(valid) => match &valid.sinks[0].kind {
                ValidSinkKind::Mqtt(m) => m.clone(),
                other => panic!("not mqtt: {other:?}"),
            },
            Err(errors) => panic!("{errors:#?}"),
        }
    }

    fn error(sink: &[&str]) -> String {
        match check(sink) {
            Ok(_) => panic!("{sink:?} should be an error"),
            Err(errors) => {
                assert_eq!(errors.len(), 1, "{errors:#?}");
                errors[0].clone()
            }
        }
    }

    #[test]
    fn defaults_of_the_mqtt_keys() {
        let m = mqtt(&[r#"url = "mqtt://broker.local""#]);
        assert_eq!(m.keep_alive, Duration::from_secs(30));
        assert_eq!(m.backlog_rate, 50);
        assert!(m.value_topics);
        assert!(!m.only_on_change);
        assert!(m.discovery);
        let s = m.settings("mqtt", "home", "v").expect("settings");
        assert_eq!((s.host.as_str(), s.port), ("broker.local", 1883));
        assert_eq!(s.client_id, "p1gw-home");
        assert_eq!(s.status_topic(), "p1gw/home/status");
        assert_eq!(s.discovery_prefix.as_deref(), Some("homeassistant"));
        assert!(s.tls.is_none());
        // A second MQTT sink gets a client id of its own.
        let second = m.settings("mqtt-backup", "home", "v").expect("settings");
        assert_eq!(second.client_id, "p1gw-home-mqtt-backup");
    }

    #[test]
    fn the_mqtt_keys_reach_the_sink_settings() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pass = dir.path().join("mqtt.pass");
        std::fs::write(&pass, "s3cret\n").expect("write");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").expect("write");
        let m = mqtt(&[
            r#"url = "mqtts://broker.local""#,
            r#"username = "p1gw""#,
            &format!("password_file = {:?}", pass.display().to_string()),
            &format!("ca_file = {:?}", ca.display().to_string()),
            r#"keep_alive = "1m""#,
            "backlog_rate = 200",
            "only_on_change = true",
            r#"min_interval = "5s""#,
            "qos = 0",
            r#"protocol = "5""#,
            "retain = true",
            r#"client_id = "gw-1""#,
            r#"topic_prefix = "house/p1""#,
        ]);
        let s = m.settings("mqtt", "home", "v").expect("settings");
        assert_eq!(s.port, 8883);
        assert_eq!(s.password.as_deref(), Some("s3cret"));
        assert_eq!(s.client_id, "gw-1");
        assert_eq!(s.keep_alive, Duration::from_secs(60));
        assert_eq!(s.backlog_rate, 200);
        assert!(s.only_on_change && s.retain && s.value_topics);
        assert_eq!(s.min_interval, Duration::from_secs(5));
        assert_eq!(s.qos, p1_sink_mqtt::Qos::AtMostOnce);
        assert_eq!(s.protocol, p1_sink_mqtt::Protocol::V5);
        assert_eq!(s.status_topic(), "house/p1/home/status");
        let tls = s.tls.expect("tls");
        assert_eq!(
            tls.ca_pem.as_deref(),
            Some(&b"-----BEGIN CERTIFICATE-----\n"[..])
        );
        // The CA file holds no certificate: building the sink says so.
        let built = p1_sink_mqtt::build(m.settings("mqtt", "home", "v").expect("settings"));
        assert!(
            built.is_err_and(|e| e.to_string().contains("ca_file")),
            "a broken CA file is reported"
        );
        // A missing password file names the file, never a content.
        std::fs::remove_file(&pass).expect("remove");
        let err = m
            .settings("mqtt", "home", "v")
            .expect_err("no password file");
        assert!(err.contains("mqtt.pass"), "{err}");
    }

    #[test]
    fn mqtt_key_errors_are_located() {
        let base = r#"url = "mqtt://broker.local""#;
        let e = error(&[base, r#"protocol = "4""#]);
        assert!(
            e.contains("sink[0].protocol") && e.contains(r#""3.1.1" or "5""#),
            "{e}"
        );
        assert_eq!(mqtt(&[base]).protocol, super::MqttProtocol::V311);
        let e = error(&[base, r#"keep_alive = "500ms""#]);
        assert!(e.contains("sink[0].keep_alive") && e.contains("1s"), "{e}");
        let e = error(&[base, r#"keep_alive = "19h""#]);
        assert!(e.contains("65535 s"), "{e}");
        let e = error(&[base, "backlog_rate = 0"]);
        assert!(
            e.contains("sink[0].backlog_rate") && e.contains("1 to 10000"),
            "{e}"
        );
        let e = error(&[base, "value_topics = false"]);
        assert!(
            e.contains("sink[0].value_topics") && e.contains("discovery"),
            "{e}"
        );
        // Without discovery, value topics may be off.
        let m = mqtt(&[base, "value_topics = false", "discovery = false"]);
        assert!(!m.value_topics);
        let e = error(&[base, "only_on_change = \"yes\""]);
        assert!(e.contains("only_on_change"), "{e}");
    }
}

#[cfg(test)]
mod azure_tests {
    //! The Azure IoT Hub part of `[[sink]]`: defaults, the keys added for the Azure sink, their
    //! errors, and the settings handed to p1-sink-azure.

    use std::time::Duration;

    use super::super::{ValidConfig, parse_str};
    use super::ValidSinkKind;

    fn config(sink: &[&str]) -> String {
        let mut text = String::from(
            "[meter]\nname = \"home\"\ntz = \"Atlantic/Reykjavik\"\n[source]\nkind = \"simulate\"\n[[sink]]\nkind = \"azure-iot\"\n",
        );
        for line in sink {
            text.push_str(line);
            text.push('\n');
        }
        text
    }

    fn check_env(sink: &[&str], env: &[(&str, &str)]) -> Result<ValidConfig, Vec<String>> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let lookup = move |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        parse_str("test.toml", config(sink), &lookup)
            .and_then(|c| c.validate())
            .map_err(|errors| errors.iter().map(ToString::to_string).collect())
    }

    fn azure(sink: &[&str]) -> super::ValidAzureIot {
        match check_env(sink, &[]) {
            Ok(valid) => match &valid.sinks[0].kind {
                ValidSinkKind::AzureIot(a) => a.clone(),
                other => panic!("not azure-iot: {other:?}"),
            },
            Err(errors) => panic!("{errors:#?}"),
        }
    }

    fn error(sink: &[&str]) -> String {
        match check_env(sink, &[]) {
            Ok(_) => panic!("{sink:?} should be an error"),
            Err(errors) => {
                assert_eq!(errors.len(), 1, "{errors:#?}");
                errors[0].clone()
            }
        }
    }

    const FILE: &str = r#"connection_string_file = "/etc/p1gw/azure.conn""#;

    #[test]
    fn defaults_of_the_azure_keys() {
        let a = azure(&[FILE]);
        assert_eq!(a.interval, Duration::from_secs(60));
        assert_eq!(a.daily_message_budget, 8000);
        assert_eq!(a.message_chunk, 512);
        assert_eq!(a.token_lifetime, Duration::from_secs(3600));
        assert_eq!(a.port, 8883);
        assert!(a.properties.is_empty() && a.ca_file.is_none() && a.client_cert.is_none());
    }

    #[test]
    fn the_azure_keys_reach_the_sink_settings() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn = dir.path().join("azure.conn");
        std::fs::write(
            &conn,
            "HostName=hub.azure-devices.net;DeviceId=meter-1;SharedAccessKey=c2VjcmV0\n",
        )
        .expect("write");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").expect("write");
        let a = azure(&[
            &format!("connection_string_file = {:?}", conn.display().to_string()),
            &format!("ca_file = {:?}", ca.display().to_string()),
            r#"interval = "5m""#,
            "daily_message_budget = 400000",
            r#"message_chunk = "4KiB""#,
            r#"token_lifetime = "30m""#,
            "port = 18883",
            r#"properties = { meter = "home", kind = "electricity" }"#,
        ]);
        let s = a.settings().expect("settings");
        assert_eq!(
            s.connection_string,
            "HostName=hub.azure-devices.net;DeviceId=meter-1;SharedAccessKey=c2VjcmV0"
        );
        assert_eq!(s.interval, Duration::from_secs(300));
        assert_eq!(s.daily_message_budget, 400_000);
        assert_eq!(s.message_chunk, 4096);
        assert_eq!(s.token_lifetime, Duration::from_secs(1800));
        assert_eq!(s.port, 18883);
        assert_eq!(
            s.properties,
            [
                ("kind".to_owned(), "electricity".to_owned()),
                ("meter".to_owned(), "home".to_owned())
            ]
        );
        assert_eq!(
            s.ca_pem.as_deref(),
            Some(&b"-----BEGIN CERTIFICATE-----\n"[..])
        );
        assert!(!format!("{s:?}").contains("c2VjcmV0"), "{s:?}");
        // The CA file holds no certificate: building the sink says so.
        let built = p1_sink_azure::build(s);
        assert!(
            built.is_err_and(|e| e.to_string().contains("ca_file")),
            "a broken CA file is reported"
        );
        // A missing connection string file names the file, never a content.
        std::fs::remove_file(&conn).expect("remove");
        let err = a.settings().expect_err("no file");
        assert!(err.contains("azure.conn"), "{err}");
    }

    #[test]
    fn a_bad_connection_string_names_the_field_never_the_key() {
        let valid = check_env(
            &[],
            &[(
                "P1GW_AZURE_CONNECTION_STRING",
                "HostName=hub.azure-devices.net;SharedAccessKey=dG9wLXNlY3JldA==",
            )],
        )
        .expect("valid");
        let ValidSinkKind::AzureIot(a) = &valid.sinks[0].kind else {
            panic!("azure-iot");
        };
        let e = p1_sink_azure::build(a.settings().expect("settings"))
            .expect_err("no DeviceId")
            .to_string();
        assert!(e.starts_with("connection string: missing DeviceId"), "{e}");
        assert!(!e.contains("dG9wLXNlY3JldA"), "{e}");
        assert_eq!(
            a.connection_string.to_string(),
            "environment variable P1GW_AZURE_CONNECTION_STRING"
        );
    }

    #[test]
    fn azure_key_errors_are_located() {
        let e = error(&[FILE, r#"message_chunk = "0B""#]);
        assert!(
            e.contains("sink[0].message_chunk") && e.contains("1B to 256KiB"),
            "{e}"
        );
        let e = error(&[FILE, r#"message_chunk = "1MiB""#]);
        assert!(e.contains("1MiB: message_chunk"), "{e}");
        let e = error(&[FILE, r#"token_lifetime = "30s""#]);
        assert!(
            e.contains("sink[0].token_lifetime") && e.contains("\"1m\" or more"),
            "{e}"
        );
        let e = error(&[FILE, r#"properties = { "$.ct" = "text/plain" }"#]);
        assert!(
            e.contains("sink[0].properties") && e.contains("\"$.ct\""),
            "{e}"
        );
        let e = error(&[FILE, "port = 0"]);
        assert!(e.contains("sink[0].port"), "{e}");
        let e = error(&[FILE, r#"ca_file = """#]);
        assert!(
            e.contains("sink[0].ca_file") && e.contains("empty path"),
            "{e}"
        );
        let e = error(&[FILE, "properties = { meter = 1 }"]);
        assert!(e.contains("properties"), "{e}");
    }
}
