//! [`AzureSettings`]: everything an Azure IoT Hub sink needs, read and validated by p1gw; and
//! how they become the device's identity ([`Device`]) and rumqttc options.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use p1_mqtt_transport::{ClientIdentity, TlsSettings};
use rumqttc::{MqttOptions, TlsConfiguration, Transport};

use crate::connection_string::ConnectionString;
use crate::error::BuildError;

/// The IoT Hub MQTT API version p1gw speaks (in the MQTT user name).
pub const API_VERSION: &str = "2021-04-12";

/// IoT Hub's limit for one device-to-cloud message: body plus property names and values.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// rumqttc's packet size limits: a full message plus topic and MQTT overhead, and twin
/// documents (rumqttc's 10 KiB default is too small for either, docs/dependencies.md §2.2).
pub(crate) const MAX_PACKET_BYTES: usize = MAX_MESSAGE_BYTES + 16 * 1024;

/// The wall clock: SAS token expiry and the UTC day of the message budget. Tests inject one.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> SystemTime + Send + Sync>);

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock(Arc::new(SystemTime::now))
    }

    /// A clock that asks `now`.
    pub fn from_fn(now: impl Fn() -> SystemTime + Send + Sync + 'static) -> Clock {
        Clock(Arc::new(now))
    }

    /// The time now.
    pub fn now(&self) -> SystemTime {
        (self.0)()
    }

    /// Seconds since the Unix epoch (0 before it: a clock that is not set yet).
    pub fn unix_seconds(&self) -> u64 {
        self.now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::system()
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Clock")
    }
}

/// Everything an Azure IoT Hub sink needs. p1gw builds it from a validated `[[sink]]` entry;
/// the defaults of [`AzureSettings::new`] are those of the configuration file.
#[derive(Clone)]
pub struct AzureSettings {
    /// The device connection string as read (parsed by [`crate::build`]). `Debug` prints `***`.
    pub connection_string: String,
    /// X.509 authentication: the device's certificate and key.
    pub client: Option<ClientIdentity>,
    /// PEM CA certificates to trust instead of the system's (a test hub, a gateway).
    pub ca_pem: Option<Vec<u8>>,
    /// The hub's MQTT port: 8883.
    pub port: u16,
    /// How long each SAS token is valid; the connection is renewed at 80 % of it.
    pub token_lifetime: Duration,
    /// Readings are batched into one message this often.
    pub interval: Duration,
    /// Messages (in metered chunks) per UTC day at most.
    pub daily_message_budget: u32,
    /// IoT Hub meters messages in chunks of this many bytes: 512 on the free tier, 4096 on the
    /// basic and standard tiers.
    pub message_chunk: u32,
    /// Application properties added to every message, `(name, value)`.
    pub properties: Vec<(String, String)>,
    /// The largest message (body + property names and values); IoT Hub's limit is 256 KiB.
    pub max_message_bytes: usize,
    /// MQTT keep-alive.
    pub keep_alive: Duration,
    /// Reconnect backoff bounds.
    pub reconnect_min: Duration,
    /// See `reconnect_min`.
    pub reconnect_max: Duration,
    /// The wall clock.
    pub clock: Clock,
}

impl fmt::Debug for AzureSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureSettings")
            .field("connection_string", &"***")
            .field("client", &self.client)
            .field("ca_pem", &self.ca_pem.as_ref().map(Vec::len))
            .field("port", &self.port)
            .field("token_lifetime", &self.token_lifetime)
            .field("interval", &self.interval)
            .field("daily_message_budget", &self.daily_message_budget)
            .field("message_chunk", &self.message_chunk)
            .field("properties", &self.properties)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("keep_alive", &self.keep_alive)
            .finish_non_exhaustive()
    }
}

impl AzureSettings {
    /// Settings for the device of `connection_string`, with the configuration file's defaults:
    /// port 8883, tokens valid 1 h, one message per 60 s, 8000 messages a day metered in
    /// 512-byte chunks (the free tier), no application properties, keep-alive 60 s, reconnect
    /// backoff 1 s–2 min.
    pub fn new(connection_string: impl Into<String>) -> AzureSettings {
        AzureSettings {
            connection_string: connection_string.into(),
            client: None,
            ca_pem: None,
            port: 8883,
            token_lifetime: Duration::from_secs(3600),
            interval: Duration::from_secs(60),
            daily_message_budget: 8000,
            message_chunk: 512,
            properties: Vec::new(),
            max_message_bytes: MAX_MESSAGE_BYTES,
            keep_alive: Duration::from_secs(60),
            // A hub that is reachable again is used within 2 s, whatever the outage's length,
            // and one that is down gets about one attempt a second, never more.
            reconnect_min: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(2),
            clock: Clock::system(),
        }
    }

    pub(crate) fn check(&self) -> Result<(), BuildError> {
        let bad = |m: &str| Err(BuildError::Settings(m.to_owned()));
        if self.token_lifetime < Duration::from_secs(2) {
            return bad("token_lifetime must be 2 s or more");
        }
        if self.interval.is_zero() {
            return bad("interval must be longer than 0s");
        }
        if self.daily_message_budget == 0 {
            return bad("daily_message_budget must be at least 1");
        }
        if self.message_chunk == 0 {
            return bad("message_chunk must be at least 1 byte");
        }
        if self.max_message_bytes > MAX_MESSAGE_BYTES || self.max_message_bytes < 1024 {
            return bad("max_message_bytes is from 1 KiB to 256 KiB");
        }
        if self.keep_alive < Duration::from_secs(1) || self.keep_alive > Duration::from_secs(1177) {
            return bad("keep_alive is from 1 s to 1177 s (IoT Hub's limit)");
        }
        for (name, _) in &self.properties {
            if name.is_empty() || name.starts_with('$') {
                return Err(BuildError::Settings(format!(
                    "application property {name:?}: names must not be empty or start with '$' (system properties)"
                )));
            }
        }
        Ok(())
    }
}

/// How the device proves who it is.
#[derive(Clone)]
pub(crate) enum Auth {
    /// SAS tokens signed with this (decoded) key.
    Key(Vec<u8>),
    /// A client certificate (in the TLS configuration).
    X509,
}

/// The device, as the connection uses it.
#[derive(Clone)]
pub(crate) struct Device {
    pub(crate) conn: ConnectionString,
    pub(crate) auth: Auth,
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Device")
            .field("conn", &self.conn)
            .field(
                "auth",
                &match self.auth {
                    Auth::Key(_) => "sas",
                    Auth::X509 => "x509",
                },
            )
            .finish()
    }
}

impl Device {
    /// The device and how it authenticates, from the connection string and the certificate.
    pub(crate) fn resolve(
        conn: ConnectionString,
        client: Option<&ClientIdentity>,
    ) -> Result<Device, BuildError> {
        let auth = match (&conn.shared_access_key, conn.x509, client) {
            (Some(_), _, Some(_)) | (Some(_), true, None) => {
                return Err(BuildError::Auth(
                    "the connection string has a SharedAccessKey and asks for X.509 too; use one: remove SharedAccessKey, or the client certificate and x509=true".to_owned(),
                ));
            }
            (Some(key), false, None) => Auth::Key(key.clone()),
            (None, _, Some(_)) => Auth::X509,
            (None, true, None) => {
                return Err(BuildError::Auth(
                    "x509=true needs a client certificate and its key".to_owned(),
                ));
            }
            (None, false, None) => {
                return Err(BuildError::Auth(
                    "the connection string has no SharedAccessKey; add it, or use x509=true with a client certificate and its key".to_owned(),
                ));
            }
        };
        Ok(Device { conn, auth })
    }

    /// `{host}/{device}/?api-version=…` or `{host}/{device}/{module}/?api-version=…`.
    pub(crate) fn username(&self) -> String {
        format!(
            "{}/{}/?api-version={API_VERSION}",
            self.conn.host_name,
            self.conn.client_id()
        )
    }

    /// `devices/{device}/messages/events/` or `devices/{device}/modules/{module}/messages/events/`.
    pub(crate) fn events_topic(&self) -> String {
        match &self.conn.module_id {
            Some(module) => format!(
                "devices/{}/modules/{module}/messages/events/",
                self.conn.device_id
            ),
            None => format!("devices/{}/messages/events/", self.conn.device_id),
        }
    }

    /// rumqttc options for one connection; `password` is a fresh SAS token (none for X.509).
    pub(crate) fn options(
        &self,
        settings: &AzureSettings,
        tls: &Arc<rustls::ClientConfig>,
        password: Option<String>,
    ) -> MqttOptions {
        let mut o = MqttOptions::new(
            self.conn.client_id(),
            self.conn.connect_host(),
            settings.port,
        );
        // Our spool is the resend queue and every connection subscribes anew: no session.
        o.set_clean_session(true);
        o.set_keep_alive(settings.keep_alive);
        o.set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
        o.set_inflight(crate::connection::MAX_INFLIGHT);
        o.set_request_channel_capacity(crate::connection::REQUEST_CAPACITY);
        o.set_credentials(self.username(), password.unwrap_or_default());
        o.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls.clone())));
        o
    }
}

/// The TLS settings of `settings`.
pub(crate) fn tls_settings(settings: &AzureSettings) -> TlsSettings {
    TlsSettings {
        ca_pem: settings.ca_pem.clone(),
        client: settings.client.clone(),
    }
}
