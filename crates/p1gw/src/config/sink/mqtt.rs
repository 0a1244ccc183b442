//! `kind = "mqtt"`: publish to an MQTT broker (p1-sink-mqtt), with Home Assistant discovery.
//!
//! Secrets: `password`, from `password_file` or `P1GW_MQTT_PASSWORD` (every `mqtt` sink).

use std::path::PathBuf;
use std::time::Duration;

use p1_sink_mqtt::{MqttSettings, Protocol, Qos, TlsSettings};
use serde::{Deserialize, Serialize};

use super::tls_message;
use super::{
    ClientCert, InlineSecret, MakeSink, PlanContext, Planned, SinkKind, client_cert, optional_path,
    optional_text, password, read_file, read_secret,
};
use crate::config::check::Checker;
use crate::config::locate::{KeyPath, Problems};
use crate::config::secret::EnvInputs;
use crate::config::source::positive;
use crate::config::value::{
    Endpoint, RawDuration, check_topic_prefix, format_duration, parse_duration,
};
use crate::exit::{Coded, Exit};

/// Environment variable for the MQTT password.
pub(super) const ENV_MQTT_PASSWORD: &str = "P1GW_MQTT_PASSWORD";

/// `kind = "mqtt"`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MqttTable {
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
    #[serde(default = "default_discovery")]
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
    #[serde(default = "default_retain")]
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
    /// From 1 to 10000. Default 200: only the state message of a reading is history (value
    /// topics get the latest value at once after a reconnect), so a day of a 1 s meter drains
    /// in about 7 minutes.
    #[serde(default = "default_backlog_rate")]
    pub backlog_rate: u32,
    /// Besides `<topic_prefix>/<meter>/state` (the whole reading), publish each value on a
    /// topic of its own: `<topic_prefix>/<meter>/<name>`, and `<topic_prefix>/<meter>/<kind>_<channel>/<name>`
    /// for submeters. Home Assistant's discovered sensors read these, so discovery needs it.
    /// Default `true`.
    #[serde(default = "default_value_topics")]
    pub value_topics: bool,
    /// Publish a value topic only when its value changed since it was last published. The state
    /// topic is not affected. Default `false`.
    #[serde(default = "default_only_on_change")]
    pub only_on_change: bool,
}

// The defaults are p1-sink-mqtt's (`MqttSettings::new`), written the way the file spells them.
fn defaults() -> MqttSettings {
    MqttSettings::new("", 0, "")
}
fn default_protocol() -> String {
    defaults().protocol.name().to_owned()
}
fn default_discovery() -> bool {
    defaults().discovery_prefix.is_some()
}
fn default_discovery_prefix() -> String {
    defaults()
        .discovery_prefix
        .unwrap_or_else(|| "homeassistant".to_owned())
}
fn default_min_interval() -> RawDuration {
    RawDuration::new(&format_duration(defaults().min_interval))
}
fn default_topic_prefix() -> String {
    defaults().topic_prefix
}
fn default_qos() -> u8 {
    defaults().qos.level()
}
fn default_retain() -> bool {
    defaults().retain
}
fn default_keep_alive() -> RawDuration {
    RawDuration::new(&format_duration(defaults().keep_alive))
}
fn default_backlog_rate() -> u32 {
    defaults().backlog_rate
}
fn default_value_topics() -> bool {
    defaults().value_topics
}
fn default_only_on_change() -> bool {
    defaults().only_on_change
}

/// TLS settings of an MQTT sink whose URL asks for TLS: the files, read when the sink is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    /// CA certificates to trust instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// Client certificate authentication.
    pub client_cert: Option<ClientCert>,
}

/// A validated MQTT sink.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidMqtt {
    /// The broker.
    pub url: Endpoint,
    /// The MQTT version.
    pub protocol: Protocol,
    /// User name.
    pub username: Option<String>,
    /// Password (only with a user name).
    pub password: Option<crate::config::SecretSource>,
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

impl SinkKind for MqttTable {
    type Valid = ValidMqtt;
    const INLINE_SECRETS: &'static [InlineSecret] =
        &[("password", "password_file", ENV_MQTT_PASSWORD)];

    fn name(&self) -> Option<&String> {
        self.name.as_ref()
    }

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
            env,
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
        let protocol = Protocol::from_name(&self.protocol);
        if protocol.is_none() {
            problems.value(
                at.key("protocol"),
                format!("{:?}: protocol is \"3.1.1\" or \"5\"", self.protocol),
            );
        }
        let qos = Qos::from_level(self.qos);
        if qos.is_none() {
            problems.value(at.key("qos"), format!("{}: qos is 0, 1 or 2", self.qos));
        }
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
    ) -> Result<MqttSettings, String> {
        let port = self
            .url
            .port()
            .unwrap_or(if self.tls.is_some() { 8883 } else { 1883 });
        let mut s = MqttSettings::new(self.url.host(), port, gateway);
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
            Some(source) => Some(read_secret("password", source)?.expose().to_owned()),
            None => None,
        };
        s.tls = match &self.tls {
            None => None,
            Some(tls) => Some(TlsSettings {
                ca_pem: tls
                    .ca_file
                    .as_deref()
                    .map(|p| read_file("ca_file", p))
                    .transpose()?,
                client: tls.client_cert.as_ref().map(ClientCert::read).transpose()?,
            }),
        };
        s.protocol = self.protocol;
        s.keep_alive = self.keep_alive;
        s.qos = self.qos;
        s.retain = self.retain;
        s.topic_prefix = self.topic_prefix.clone();
        s.discovery_prefix = self.discovery.then(|| self.discovery_prefix.clone());
        s.value_topics = self.value_topics;
        s.only_on_change = self.only_on_change;
        s.min_interval = self.min_interval;
        s.backlog_rate = self.backlog_rate;
        s.sw_version = version.to_owned();
        s.credentials_hint = format!("username and password_file or {ENV_MQTT_PASSWORD}");
        Ok(s)
    }
}

impl Planned for ValidMqtt {
    fn check(&self, checker: &mut Checker, at: &KeyPath) {
        checker.secret(self.password.as_ref(), &at.key("password_file"));
        if let Some(tls) = &self.tls {
            if let Some(ca) = &tls.ca_file {
                checker.input_file(ca, &at.key("ca_file"));
            }
            checker.client_cert(tls.client_cert.as_ref(), at);
        }
    }

    fn plan(&self, cx: &PlanContext<'_>) -> anyhow::Result<(&'static str, MakeSink)> {
        // One connection, one last will: its status topic is named for the first meter.
        let mut settings = self
            .settings(cx.name, cx.gateway, cx.version)
            .map_err(|e| Coded::error(Exit::IO, format!("sink {:?}: {e}", cx.name)))?;
        settings.meter_intervals = cx.meters.iter().cloned().collect();
        let ca_file = self.tls.as_ref().is_some_and(|tls| tls.ca_file.is_some());
        let built = p1_sink_mqtt::build(settings).map_err(|e| {
            let message = match &e {
                p1_sink_mqtt::BuildError::Tls(tls) => tls_message(tls, ca_file),
                other => other.to_string(),
            };
            Coded::error(Exit::CONFIG, format!("sink {:?}: {message}", cx.name))
        })?;
        Ok((
            p1_sink_mqtt::KIND,
            std::sync::Arc::new(move || built.make()),
        ))
    }
}

#[cfg(test)]
mod tests {
    //! The MQTT part of `[[sink]]`: defaults, the keys added for the MQTT sink, their errors,
    //! and the settings handed to p1-sink-mqtt.

    use std::time::Duration;

    use super::super::ValidSinkKind;
    use super::{Planned, Protocol, ValidMqtt};
    use crate::config::tests::{only_sink, sink_error};

    fn mqtt(sink: &[&str]) -> ValidMqtt {
        match only_sink("mqtt", sink) {
            ValidSinkKind::Mqtt(valid) => valid,
            other => panic!("not mqtt: {other:?}"),
        }
    }

    fn error(sink: &[&str]) -> String {
        sink_error("mqtt", sink)
    }

    #[test]
    fn defaults_of_the_mqtt_keys() {
        let m = mqtt(&[r#"url = "mqtt://broker.local""#]);
        assert_eq!(m.keep_alive, Duration::from_secs(30));
        assert_eq!(m.backlog_rate, 200);
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
        let built = m.plan(&super::PlanContext {
            name: "mqtt",
            gateway: "home",
            version: "v",
            meters: &[],
        });
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
        assert_eq!(mqtt(&[base]).protocol, Protocol::V311);
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
