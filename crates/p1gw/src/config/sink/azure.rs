//! `kind = "azure-iot"`: send to Azure IoT Hub as a device (p1-sink-azure).
//!
//! Secrets: the device connection string, from `connection_string_file` or
//! `P1GW_AZURE_CONNECTION_STRING`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use p1_sink_azure::AzureSettings;
use serde::{Deserialize, Serialize};

use super::tls_message;
use super::{
    ClientCert, InlineSecret, MakeSink, PlanContext, Planned, SinkKind, client_cert, optional_path,
    read_file, read_secret,
};
use crate::config::check::Checker;
use crate::config::locate::{KeyPath, Problems};
use crate::config::secret::{EnvInputs, SecretSource};
use crate::config::source::positive;
use crate::config::value::{RawDuration, RawSize, format_duration, format_size, parse_size};
use crate::exit::{Coded, Exit};

/// Environment variable for the Azure IoT Hub device connection string.
pub(super) const ENV_AZURE_CONNECTION_STRING: &str = "P1GW_AZURE_CONNECTION_STRING";

/// `kind = "azure-iot"`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AzureIotTable {
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
    #[serde(default = "default_interval")]
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
    #[serde(default = "default_port")]
    pub port: u16,
}

// The defaults are p1-sink-azure's (`AzureSettings::new`), written the way the file spells them.
fn defaults() -> AzureSettings {
    AzureSettings::new("")
}
fn default_interval() -> RawDuration {
    RawDuration::new(&format_duration(defaults().interval))
}
fn default_daily_message_budget() -> u32 {
    defaults().daily_message_budget
}
fn default_message_chunk() -> RawSize {
    RawSize::new(&format_size(u64::from(defaults().message_chunk)))
}
fn default_token_lifetime() -> RawDuration {
    RawDuration::new(&format_duration(defaults().token_lifetime))
}
fn default_port() -> u16 {
    defaults().port
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

impl SinkKind for AzureIotTable {
    type Valid = ValidAzureIot;
    const INLINE_SECRETS: &'static [InlineSecret] = &[(
        "connection_string",
        "connection_string_file",
        ENV_AZURE_CONNECTION_STRING,
    )];

    fn name(&self) -> Option<&String> {
        self.name.as_ref()
    }

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
            env.secret(ENV_AZURE_CONNECTION_STRING),
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
    pub fn settings(&self) -> Result<AzureSettings, String> {
        let connection_string = read_secret("connection string", &self.connection_string)?;
        let mut s = AzureSettings::new(connection_string.expose());
        s.ca_pem = self
            .ca_file
            .as_deref()
            .map(|p| read_file("ca_file", p))
            .transpose()?;
        s.client = self
            .client_cert
            .as_ref()
            .map(ClientCert::read)
            .transpose()?;
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

impl Planned for ValidAzureIot {
    fn check(&self, checker: &mut Checker, at: &KeyPath) {
        checker.secret(
            Some(&self.connection_string),
            &at.key("connection_string_file"),
        );
        checker.client_cert(self.client_cert.as_ref(), at);
    }

    fn plan(&self, cx: &PlanContext<'_>) -> anyhow::Result<(&'static str, MakeSink)> {
        let settings = self
            .settings()
            .map_err(|e| Coded::error(Exit::IO, format!("sink {:?}: {e}", cx.name)))?;
        // Errors name the connection string's field (never its key) and where it is.
        let ca_file = self.ca_file.is_some();
        let built = p1_sink_azure::build(settings).map_err(|e| {
            let e = match &e {
                p1_sink_azure::BuildError::Tls(tls) => tls_message(tls, ca_file),
                p1_sink_azure::BuildError::Auth(_) => {
                    format!("{e} (the client certificate: client_cert_file and client_key_file)")
                }
                other => other.to_string(),
            };
            Coded::error(
                Exit::CONFIG,
                format!(
                    "sink {:?}: {e} (connection string from the {})",
                    cx.name, self.connection_string
                ),
            )
        })?;
        Ok((p1_sink_azure::KIND, Arc::new(move || built.make())))
    }
}

#[cfg(test)]
mod tests {
    //! The Azure IoT Hub part of `[[sink]]`: defaults, the keys added for the Azure sink, their
    //! errors, and the settings handed to p1-sink-azure.

    use std::time::Duration;

    use super::super::Planned;
    use super::super::ValidSinkKind;
    use super::ValidAzureIot;
    use crate::config::tests::{env_from, only_sink, sink_config, sink_error, valid_text};

    fn azure(sink: &[&str]) -> ValidAzureIot {
        match only_sink("azure-iot", sink) {
            ValidSinkKind::AzureIot(valid) => valid,
            other => panic!("not azure-iot: {other:?}"),
        }
    }

    fn error(sink: &[&str]) -> String {
        sink_error("azure-iot", sink)
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
        let built = a.plan(&super::super::PlanContext {
            name: "azure-iot",
            gateway: "home",
            version: "v",
            meters: &[],
        });
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
        let valid = valid_text(
            &sink_config("azure-iot", &[]),
            &env_from(&[(
                "P1GW_AZURE_CONNECTION_STRING",
                "HostName=hub.azure-devices.net;SharedAccessKey=dG9wLXNlY3JldA==",
            )]),
        );
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
