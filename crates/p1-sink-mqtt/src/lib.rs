//! p1-sink-mqtt: readings to an MQTT broker, with Home Assistant discovery, and no reading
//! lost while the broker is away.
//!
//! # What it publishes
//!
//! For each meter (topics relative to `topic_prefix`, default `p1gw`; see `docs/mqtt.md`):
//!
//! * `<meter>/state`: the whole reading, [`p1_core::Reading::json`] (docs/contracts.md §4 JSON);
//! * `<meter>/<name>` and `<meter>/<kind>_<channel>/<name>` (with `value_topics`): one value
//!   per topic, in the canonical unit of docs/obis.md (`1988.284`, `0.588`, `2`);
//! * `<gateway>/status`: `online` (retained) while connected, `offline` (retained) as the last
//!   will and on a clean stop;
//! * with discovery, `<discovery_prefix>/sensor/p1gw_<meter>/<object>/config` (retained): one
//!   Home Assistant entity per value ([`discovery`]).
//!
//! # Delivery
//!
//! [`MqttSink`] runs on p1-core's spool-backed worker ([`p1_core::Spooled`]): intake encodes
//! each reading into one spool record holding all its messages ([`encode`]), and delivery hands
//! the oldest records to a connection task that owns the MQTT client. A record is deleted from
//! the spool only when the broker has acknowledged *every* message of it (PUBACK for QoS 1,
//! PUBCOMP for QoS 2; for QoS 0, once the message was written to the socket). `publish()`
//! returning `Ok` is never taken as an ack. On a lost connection the unacknowledged records
//! stay spooled and are sent again, oldest first, after the reconnect, at most `backlog_rate`
//! messages per second; delivery is therefore at-least-once (a reading whose PUBACK was lost
//! with the connection arrives twice).
//!
//! # MQTT session
//!
//! MQTT 3.1.1 (or 5, [`Protocol`]) through rumqttc, persistent session (`clean_session = false`;
//! over MQTT 5 `clean_start = false` with a session that never expires) under a fixed client
//! id, keep-alive, last will `offline` (retained). rumqttc's own in-memory resend queue is not
//! used: each connection gets a fresh client and event loop, and the spool is the only resend
//! queue, so a broker restarted without persistence (CONNACK `session_present = false`) loses
//! nothing (docs/dependencies.md §2.1). Reconnects back off (capped, jittered) in this crate,
//! since rumqttc's event loop would retry at once (§2.2).
//!
//! Over MQTT 5 a PUBACK with a failure reason code is not an ack: a message the broker will
//! never take (too large, bad payload format) is dropped, logged at ERROR and counted in
//! `p1gw_sink_dropped_total`; any other refusal keeps the reading spooled and backs off
//! (module `connection`).
//!
//! # Place in the graph
//!
//! `p1-core <- p1-sink-mqtt <- p1gw`. It reads no configuration files or environment: p1gw
//! validates the `[[sink]]` entry, reads the password, CA and client certificate files, and
//! hands over an [`MqttSettings`]. The only files it reads itself are the system's trusted CA
//! certificates (for `mqtts://` without a CA file).
//!
//! # Never
//!
//! * No reading leaves the spool before the broker acknowledged it.
//! * No blocking of the runtime, no lock across `.await`; time from `tokio::time`.
//! * No secrets in logs: the password and the client key print as `***`.
#![warn(missing_docs)]

mod config;
mod connection;
pub mod discovery;
pub mod encode;
mod error;
pub mod latest;
mod sink;

pub use config::{ClientIdentity, MqttSettings, Protocol, Qos, TlsSettings};
pub use error::BuildError;
pub use p1_mqtt_transport::TlsError;
pub use sink::{KIND, MqttSink, build};

/// Registers the `# HELP` texts of the MQTT sink's own metrics with the installed recorder.
pub fn describe_metrics() {
    metrics::describe_counter!(
        "p1gw_mqtt_values_superseded_total",
        "Value-topic values replaced by a newer one before they were sent (the latest value \
         wins; the state topic keeps every reading)."
    );
}

#[cfg(test)]
mod tests;
