//! [`MqttSettings`]: everything an MQTT sink needs, validated and read by p1gw; and how they
//! become rumqttc options and a rustls client configuration.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

pub use p1_mqtt_transport::{ClientIdentity, TlsSettings};
use rumqttc::{LastWill, MqttOptions, TlsConfiguration, Transport};

use crate::error::BuildError;

/// The largest MQTT packet sent or received. A state message of a three-phase meter with a
/// power-failure log is a few KiB; rumqttc's 10 KiB default would drop the connection on a
/// larger telegram (docs/dependencies.md §2.2).
pub(crate) const MAX_PACKET_BYTES: usize = 256 * 1024;

/// MQTT quality of service of every message the sink publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Qos {
    /// QoS 0: no acknowledgement; a reading leaves the spool once it was written to the
    /// socket, so a connection lost right then loses it.
    AtMostOnce,
    /// QoS 1 (the default): the broker's PUBACK deletes the reading from the spool.
    #[default]
    AtLeastOnce,
    /// QoS 2: the broker's PUBCOMP deletes the reading from the spool. Across a reconnect the
    /// spool resends like QoS 1, so it is not exactly-once either.
    ExactlyOnce,
}

impl Qos {
    /// The level's number: 0, 1 or 2.
    pub fn level(self) -> u8 {
        match self {
            Qos::AtMostOnce => 0,
            Qos::AtLeastOnce => 1,
            Qos::ExactlyOnce => 2,
        }
    }

    /// The QoS of level `level`; `None` above 2.
    pub fn from_level(level: u8) -> Option<Qos> {
        match level {
            0 => Some(Qos::AtMostOnce),
            1 => Some(Qos::AtLeastOnce),
            2 => Some(Qos::ExactlyOnce),
            _ => None,
        }
    }

    pub(crate) fn mqtt(self) -> rumqttc::QoS {
        match self {
            Qos::AtMostOnce => rumqttc::QoS::AtMostOnce,
            Qos::AtLeastOnce => rumqttc::QoS::AtLeastOnce,
            Qos::ExactlyOnce => rumqttc::QoS::ExactlyOnce,
        }
    }
}

/// The MQTT protocol version spoken with the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// MQTT 3.1.1 (the default): every broker speaks it. A broker that drops a message (too
    /// large, not allowed) still acknowledges it, and p1gw cannot tell.
    #[default]
    V311,
    /// MQTT 5: the broker's PUBACK says when it refused a message, and its CONNACK states the
    /// largest packet it takes.
    V5,
}

impl Protocol {
    /// The version as people write it: `"3.1.1"` or `"5"`.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::V311 => "3.1.1",
            Protocol::V5 => "5",
        }
    }

    /// The version written as `"3.1.1"`, `"5"` or `"5.0"`; `None` for anything else.
    pub fn from_name(name: &str) -> Option<Protocol> {
        match name {
            "3.1.1" => Some(Protocol::V311),
            "5" | "5.0" => Some(Protocol::V5),
            _ => None,
        }
    }
}

/// Everything an MQTT sink needs. p1gw builds it from a validated `[[sink]]` entry; the
/// defaults of [`MqttSettings::new`] are those of the configuration file.
#[derive(Clone)]
pub struct MqttSettings {
    /// Broker host name or address.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// MQTT 3.1.1 or 5.
    pub protocol: Protocol,
    /// TLS, for `mqtts://`.
    pub tls: Option<TlsSettings>,
    /// User name.
    pub username: Option<String>,
    /// Password (only with a user name). `Debug` prints `***`.
    pub password: Option<String>,
    /// The fixed client id of the persistent session.
    pub client_id: String,
    /// MQTT keep-alive; 1 s or more.
    pub keep_alive: Duration,
    /// Quality of service of every message.
    pub qos: Qos,
    /// Publish readings (state and value topics) retained.
    pub retain: bool,
    /// First level of every topic, e.g. `p1gw`.
    pub topic_prefix: String,
    /// Second level of the availability topic `<topic_prefix>/<gateway>/status`: the first
    /// meter's name (one connection has one last will, shared by all its meters).
    pub gateway: String,
    /// Home Assistant's discovery prefix, e.g. `homeassistant`; `None`: no discovery.
    pub discovery_prefix: Option<String>,
    /// Publish one topic per value besides the state topic (Home Assistant's sensors read
    /// these).
    pub value_topics: bool,
    /// Publish a value topic only when its value changed.
    pub only_on_change: bool,
    /// The shortest time between two messages on one topic (by the readings' receive times);
    /// zero: no limit.
    pub min_interval: Duration,
    /// MQTT messages per second at most while a backlog is sent (bursts of one second's worth
    /// are allowed); at least 1.
    pub backlog_rate: u32,
    /// Reconnect backoff bounds.
    pub reconnect_min: Duration,
    /// See `reconnect_min`.
    pub reconnect_max: Duration,
    /// p1gw's version, for the discovery messages' `origin`.
    pub sw_version: String,
    /// Each meter's telegram interval, by meter name: a meter that sends nothing for three of
    /// them is `offline` on `<meter>/availability`. Meters not named: 10 s.
    pub meter_intervals: std::collections::BTreeMap<String, Duration>,
    /// Where the user name and password come from, in the caller's words, for the message
    /// when the broker refuses them ("check …"). Default `"the user name and password"`.
    pub credentials_hint: String,
}

impl fmt::Debug for MqttSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MqttSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("protocol", &self.protocol)
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("client_id", &self.client_id)
            .field("keep_alive", &self.keep_alive)
            .field("qos", &self.qos)
            .field("retain", &self.retain)
            .field("topic_prefix", &self.topic_prefix)
            .field("gateway", &self.gateway)
            .field("discovery_prefix", &self.discovery_prefix)
            .field("value_topics", &self.value_topics)
            .field("only_on_change", &self.only_on_change)
            .field("min_interval", &self.min_interval)
            .field("backlog_rate", &self.backlog_rate)
            .finish_non_exhaustive()
    }
}

impl MqttSettings {
    /// Settings for a broker at `host:port` in the clear, for the gateway (first meter) named
    /// `gateway`, with the configuration file's defaults: client id `p1gw-<gateway>`, keep-alive
    /// 30 s, QoS 1, not retained, prefix `p1gw`, discovery under `homeassistant`, value topics
    /// on, every reading, 50 messages/s for a backlog, reconnect backoff 0.5–30 s.
    pub fn new(host: impl Into<String>, port: u16, gateway: impl Into<String>) -> Self {
        let gateway = gateway.into();
        MqttSettings {
            host: host.into(),
            port,
            protocol: Protocol::V311,
            tls: None,
            username: None,
            password: None,
            client_id: format!("p1gw-{gateway}"),
            keep_alive: Duration::from_secs(30),
            qos: Qos::AtLeastOnce,
            retain: false,
            topic_prefix: "p1gw".to_owned(),
            gateway,
            discovery_prefix: Some("homeassistant".to_owned()),
            value_topics: true,
            only_on_change: false,
            min_interval: Duration::ZERO,
            // One message per reading is spooled (the state; values are the present, not
            // history): a day's backlog of a meter sending every second, 86 400 readings, is
            // sent in 7 minutes, while live readings keep their place in the line.
            backlog_rate: 200,
            // A broker that is back is used within 1.5 s, whatever the outage's length (Home
            // Assistant users restart theirs with every add-on update), and one that is down
            // gets about one attempt a second (0.75–1.5 s apart), never more.
            reconnect_min: Duration::from_millis(500),
            reconnect_max: Duration::from_millis(1500),
            sw_version: String::new(),
            meter_intervals: std::collections::BTreeMap::new(),
            credentials_hint: "the user name and password".to_owned(),
        }
    }

    /// `<topic_prefix>/<gateway>/status`: `online`/`offline`, the last will.
    pub fn status_topic(&self) -> String {
        format!("{}/{}/status", self.topic_prefix, self.gateway)
    }

    /// `host:port`, for messages.
    pub(crate) fn broker(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    pub(crate) fn check(&self) -> Result<(), BuildError> {
        if self.host.is_empty() {
            return Err(BuildError::Settings("empty broker host".to_owned()));
        }
        if self.client_id.is_empty() {
            return Err(BuildError::Settings("empty client id".to_owned()));
        }
        if self.keep_alive < Duration::from_secs(1) {
            return Err(BuildError::Settings(
                "keep_alive must be 1 s or more".to_owned(),
            ));
        }
        if self.backlog_rate == 0 {
            return Err(BuildError::Settings(
                "backlog_rate must be at least 1".to_owned(),
            ));
        }
        if self.password.is_some() && self.username.is_none() {
            return Err(BuildError::Settings(
                "a password needs a username".to_owned(),
            ));
        }
        Ok(())
    }

    /// The rumqttc options of every connection: persistent session under the fixed client id,
    /// keep-alive, last will, credentials, TLS.
    pub(crate) fn options(&self, tls: Option<&Arc<rustls::ClientConfig>>) -> MqttOptions {
        let mut o = MqttOptions::new(self.client_id.clone(), self.host.clone(), self.port);
        o.set_clean_session(false);
        o.set_keep_alive(self.keep_alive.max(Duration::from_secs(1)));
        o.set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
        o.set_inflight(crate::connection::MAX_INFLIGHT);
        o.set_request_channel_capacity(crate::connection::REQUEST_CAPACITY);
        o.set_last_will(LastWill::new(
            self.status_topic(),
            "offline",
            rumqttc::QoS::AtLeastOnce,
            true,
        ));
        if let Some(user) = &self.username {
            o.set_credentials(user.clone(), self.password.clone().unwrap_or_default());
        }
        if let Some(tls) = tls {
            o.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls.clone())));
        }
        o
    }
}

/// The session expiry interval asked for over MQTT 5: "never expires", as an MQTT 3.1.1
/// persistent session, so the broker keeps the subscription to Home Assistant's status while
/// p1gw is away (MQTT 5's default, 0, would end the session with the connection).
const SESSION_NEVER_EXPIRES: u32 = u32::MAX;

impl MqttSettings {
    /// The rumqttc MQTT 5 options of every connection: what [`MqttSettings::options`] sets for
    /// 3.1.1, with MQTT 5's spelling of a persistent session (`clean_start = false` plus a
    /// session expiry interval) and `TCP_NODELAY` (the v5 event loop reads it from here).
    pub(crate) fn options_v5(
        &self,
        tls: Option<&Arc<rustls::ClientConfig>>,
    ) -> rumqttc::v5::MqttOptions {
        use rumqttc::v5::mqttbytes::QoS;
        use rumqttc::v5::mqttbytes::v5::LastWill;
        let mut o =
            rumqttc::v5::MqttOptions::new(self.client_id.clone(), self.host.clone(), self.port);
        o.set_clean_start(false);
        o.set_session_expiry_interval(Some(SESSION_NEVER_EXPIRES));
        o.set_keep_alive(self.keep_alive.max(Duration::from_secs(1)));
        // What we accept from the broker; what it accepts comes in its CONNACK.
        o.set_max_packet_size(u32::try_from(MAX_PACKET_BYTES).ok());
        o.set_outgoing_inflight_upper_limit(crate::connection::MAX_INFLIGHT);
        o.set_request_channel_capacity(crate::connection::REQUEST_CAPACITY);
        o.set_last_will(LastWill::new(
            self.status_topic(),
            "offline",
            QoS::AtLeastOnce,
            true,
            None,
        ));
        if let Some(user) = &self.username {
            o.set_credentials(user.clone(), self.password.clone().unwrap_or_default());
        }
        if let Some(tls) = tls {
            o.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls.clone())));
        }
        let mut network = o.network_options();
        network.set_tcp_nodelay(true);
        o.set_network_options(network);
        o
    }
}

/// Builds the rustls client configuration for `tls` (see [`p1_mqtt_transport::client_config`]).
pub(crate) fn client_config(tls: &TlsSettings) -> Result<Arc<rustls::ClientConfig>, BuildError> {
    p1_mqtt_transport::client_config(tls).map_err(BuildError::from)
}
