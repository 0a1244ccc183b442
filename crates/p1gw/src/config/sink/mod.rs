//! `[[sink]]`: where readings go, each entry chosen by `kind`.
//!
//! A sink kind is one file in this directory: its raw type (the keys as written, with serde's
//! defaults), its validated type, the validation, its secrets (the keys that would hold one
//! inline and the `P1GW_*` variables that supply one), what `check-config` looks at, and how the
//! running sink is built from it (the plan). Its tests sit in the same file, on the helpers of
//! `config/tests.rs`. The `sink_kinds!` table below lists the kinds; the loader, `validate`,
//! `check` and the plan loop over it instead of matching by hand.
//!
//! Adding a sink: its crate, one file here implementing [`SinkKind`] (and [`ValidSinkKind`]'s
//! [`Planned`]), one line in the table, and the Cargo edits (ARCHITECTURE.md, "Adding a sink").

mod azure;
mod file;
mod influx;
mod mqtt;

use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use self::azure::{AzureIotTable, ValidAzureIot};
pub use self::file::{JsonlTable, StdoutTable, ValidJsonl, ValidStdout};
pub use self::influx::{InfluxApi, InfluxTable, InfluxTarget, RawPrecision, ValidInflux};
pub use self::mqtt::{MqttTable, ValidMqtt};
pub use p1_sink_mqtt::{Protocol as MqttProtocol, Qos};

use super::check::Checker;
use super::locate::{KeyPath, Problems};
use super::secret::{EnvInputs, Secret, SecretSource};
use super::source::non_empty_path;
use super::value::check_name;

/// A key that would hold a secret inline: the key, the `*_file` key to use instead, and the
/// environment variable that may supply it.
pub type InlineSecret = (&'static str, &'static str, &'static str);

/// What the daemon calls to build a sink (again, after a failure).
pub type MakeSink = Arc<dyn Fn() -> Box<dyn p1_core::Sink> + Send + Sync>;

/// What a sink's plan gets besides its own section.
#[derive(Debug, Clone, Copy)]
pub struct PlanContext<'a> {
    /// The sink's name (unique among the sinks).
    pub name: &'a str,
    /// The first meter's name: an MQTT connection's status topic and default client id are
    /// named for it.
    pub gateway: &'a str,
    /// p1gw's version, for Home Assistant's device registry.
    pub version: &'a str,
    /// Every meter's name and telegram interval (an MQTT sink marks a silent meter offline).
    pub meters: &'a [(String, std::time::Duration)],
}

/// A sink kind's raw `[[sink]]` entry: the keys as written, defaults filled in by serde.
pub trait SinkKind: Debug + Clone + PartialEq + Serialize + DeserializeOwned {
    /// The validated form.
    type Valid: Planned + Debug + Clone + PartialEq;
    /// Keys that would hold a secret inline: refused by the loader, never read.
    const INLINE_SECRETS: &'static [InlineSecret] = &[];

    /// The entry's `name`, if it has one.
    fn name(&self) -> Option<&String>;

    /// Validates the entry at `at`, noting every problem; `None` if there were any.
    fn validate(
        &self,
        at: &KeyPath,
        env: &EnvInputs,
        problems: &mut Problems,
    ) -> Option<Self::Valid>;

    /// The file this sink appends to, if it writes one: two sinks must not share it.
    fn output_file(&self) -> Option<&Path> {
        None
    }
}

/// What `check-config` and the daemon do with a validated sink.
pub trait Planned {
    /// `check-config`'s look at the files this sink names (read-only).
    fn check(&self, _checker: &mut Checker, _at: &KeyPath) {}

    /// The running sink: its metrics `kind` and how to build it. Reads the sink's secrets and
    /// certificates (exit 74 when one cannot be read) and builds the library's settings (exit
    /// 78 when the library refuses them).
    ///
    /// # Errors
    ///
    /// As said; the error is a [`crate::exit::Coded`] that names the sink, never a secret.
    fn plan(&self, cx: &PlanContext<'_>) -> anyhow::Result<(&'static str, MakeSink)>;
}

/// A library's section deserializer, for the loader: `[[sink]]` entries are read by kind.
pub trait Section {
    /// The entry as `T`, or `None` after noting the error.
    fn read<T: DeserializeOwned>(&mut self) -> Option<T>;
}

/// The table of sink kinds: `Variant("kind", module::RawType)`, the raw type implementing
/// [`SinkKind`]. Generates [`SinkConfig`], [`ValidSinkKind`], [`SINK_KINDS`] and the loops.
macro_rules! sink_kinds {
    ($($(#[$doc:meta])* $variant:ident($kind:literal, $raw:ty);)+) => {
        /// The `kind`s of sink, as spelled in the file (and in the metrics' `sink` label).
        pub const SINK_KINDS: &[&str] = &[$($kind),+];

        /// One `[[sink]]` entry.
        #[derive(Debug, Clone, PartialEq, Serialize)]
        #[serde(tag = "kind")]
        pub enum SinkConfig {
            $($(#[$doc])* #[serde(rename = $kind)] $variant($raw),)+
        }

        /// A validated sink of each kind.
        #[derive(Debug, Clone, PartialEq)]
        pub enum ValidSinkKind {
            $($(#[$doc])* $variant(<$raw as SinkKind>::Valid),)+
        }

        /// Keys that would hold a secret inline, per sink kind.
        pub fn inline_secret_keys(kind: &str) -> &'static [InlineSecret] {
            match kind {
                $($kind => <$raw as SinkKind>::INLINE_SECRETS,)+
                _ => &[],
            }
        }

        impl SinkConfig {
            /// The `kind` as spelled in the file.
            pub fn kind(&self) -> &'static str {
                match self { $(SinkConfig::$variant(_) => $kind,)+ }
            }

            /// The entry's `name`, if it has one.
            pub fn name(&self) -> Option<&String> {
                match self { $(SinkConfig::$variant(c) => c.name(),)+ }
            }

            /// The file the sink appends to, if any.
            pub fn output_file(&self) -> Option<&Path> {
                match self { $(SinkConfig::$variant(c) => c.output_file(),)+ }
            }

            /// Reads an entry of `kind` (one of [`SINK_KINDS`]); `None` after an error.
            pub(crate) fn read(kind: &str, section: &mut impl Section) -> Option<SinkConfig> {
                match kind {
                    $($kind => section.read().map(SinkConfig::$variant),)+
                    _ => None,
                }
            }

            fn validate_kind(
                &self,
                at: &KeyPath,
                env: &EnvInputs,
                problems: &mut Problems,
            ) -> Option<ValidSinkKind> {
                match self {
                    $(SinkConfig::$variant(c) => c.validate(at, env, problems).map(ValidSinkKind::$variant),)+
                }
            }
        }

        impl ValidSinkKind {
            /// The kind as spelled in the file, which is also the metrics' `sink` label.
            pub fn kind(&self) -> &'static str {
                match self { $(ValidSinkKind::$variant(_) => $kind,)+ }
            }

            fn planned(&self) -> &dyn Planned {
                match self { $(ValidSinkKind::$variant(v) => v,)+ }
            }
        }
    };
}

sink_kinds! {
    /// `kind = "mqtt"`: publish to an MQTT broker, with Home Assistant discovery.
    Mqtt("mqtt", MqttTable);
    /// `kind = "influx"`: write to InfluxDB, v1 or v2 API.
    Influx("influx", InfluxTable);
    /// `kind = "azure-iot"`: send to Azure IoT Hub as a device.
    AzureIot("azure-iot", AzureIotTable);
    /// `kind = "jsonl"`: append one JSON reading per line to a file.
    Jsonl("jsonl", JsonlTable);
    /// `kind = "stdout"`: print one JSON reading per line on standard output.
    Stdout("stdout", StdoutTable);
}

/// Every environment variable a sink may take a secret from.
pub fn secret_vars() -> impl Iterator<Item = &'static str> {
    SINK_KINDS
        .iter()
        .flat_map(|kind| inline_secret_keys(kind).iter().map(|(_, _, var)| *var))
}

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

impl ValidSink {
    /// `check-config`'s look at what this sink names.
    pub(crate) fn check(&self, checker: &mut Checker) {
        let at = KeyPath::root().key("sink").index(self.index);
        self.kind.planned().check(checker, &at);
    }

    /// The running sink's `kind` label and its constructor; `gateway` is the first meter's
    /// name, `version` p1gw's.
    ///
    /// # Errors
    ///
    /// See [`Planned::plan`].
    pub fn plan(
        &self,
        gateway: &str,
        version: &str,
        meters: &[(String, std::time::Duration)],
    ) -> anyhow::Result<(&'static str, MakeSink)> {
        self.kind.planned().plan(&PlanContext {
            name: &self.name,
            gateway,
            version,
            meters,
        })
    }
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
        let kind = self.validate_kind(&at, env, problems);
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

// ---------------------------------------------------------------------------------------------
// What several sink kinds share.

/// A client certificate and its key, both PEM files (read when the sink is built).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    /// The certificate.
    pub cert_file: PathBuf,
    /// Its private key.
    pub key_file: PathBuf,
}

impl ClientCert {
    /// Reads both files, for the library's TLS settings.
    fn read(&self) -> Result<p1_sink_mqtt::ClientIdentity, String> {
        Ok(p1_sink_mqtt::ClientIdentity {
            cert_pem: read_file("client_cert_file", &self.cert_file)?,
            key_pem: read_file("client_key_file", &self.key_file)?,
        })
    }
}

/// A library's TLS error, with the configuration key it is about (the libraries speak of their
/// settings, not of p1gw's keys). `ca_file`: whether the sink names a CA file.
fn tls_message(error: &p1_sink_mqtt::TlsError, ca_file: bool) -> String {
    use p1_sink_mqtt::TlsError;
    match error {
        TlsError::TrustAnchors(_) if ca_file => format!("ca_file: {error}"),
        TlsError::TrustAnchors(_) => format!("{error} (ca_file)"),
        TlsError::ClientCert(_) => format!("client_cert_file: {error}"),
        TlsError::ClientKey(_) => format!("client_key_file: {error}"),
        TlsError::Tls(_) => error.to_string(),
    }
}

/// Reads a certificate or key file named by `key`; the error names the key and the file.
fn read_file(key: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{key}: cannot read {}: {e}", path.display()))
}

/// Reads a secret; the error names `what` and where the secret comes from, never the secret.
fn read_secret(what: &str, source: &SecretSource) -> Result<Secret, String> {
    source
        .read()
        .map_err(|e| format!("{what}: cannot read the {source}: {e}"))
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
    env: &EnvInputs,
    file: Option<&PathBuf>,
    username: Option<&String>,
    at: &KeyPath,
    problems: &mut Problems,
) -> Option<Option<SecretSource>> {
    optional_path(file, &at.key("password_file"), problems)?;
    let password = SecretSource::pick(var, env.secret(var), file.map(PathBuf::as_path));
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
