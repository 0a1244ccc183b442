//! p1-sink-azure: readings to Azure IoT Hub as a device, batched to fit the hub's daily quota,
//! and no reading lost while the hub is away.
//!
//! # What it sends
//!
//! Device-to-cloud messages over MQTT 3.1.1 + TLS (port 8883, QoS 1, never QoS 2, which the
//! hub refuses), as the device (or module) of the connection string:
//!
//! * client id `{device}` (or `{device}/{module}`), user name
//!   `{hub}/{device}/?api-version=2021-04-12`, password a SAS token ([`sas`]) or, with X.509,
//!   none (the client certificate authenticates);
//! * topic `devices/{device}/messages/events/` (or `…/modules/{module}/messages/events/`) with
//!   a property bag: `$.ct=application%2Fjson&$.ce=utf-8`, so that message routing can query
//!   the body, plus the configured application properties, URL-encoded ([`encode::Topic`]);
//! * body `{"readings":[…]}`: the readings of one `interval`, oldest first, each the docs/contracts.md §4
//!   JSON of [`p1_core::Reading::json`], split into messages under the hub's 256 KiB limit
//!   ([`encode::batch`]).
//!
//! # Delivery
//!
//! [`AzureSink`] runs on p1-core's spool-backed worker ([`p1_core::Spooled`]): intake spools
//! each reading, delivery batches the spooled readings once per `interval` and hands each
//! message to a connection task that owns the MQTT client. Records are deleted from the spool
//! only after the hub's PUBACK for the message that carried them. A daily message budget
//! (counted per UTC day in the hub's metered chunks) holds messages back, spooled, until the
//! next day. Delivery is at-least-once: a message whose PUBACK was lost is sent again, and the
//! hub may then have it twice.
//!
//! # Connection
//!
//! One connection per device (the hub allows no more), a fresh rumqttc event loop per
//! connection (the spool is the only resend queue), reconnects with capped, jittered backoff,
//! and SAS token renewal before expiry without losing or duplicating a message (see the
//! `connection` module). The MQTT plumbing shared with the MQTT sink (rustls
//! client configuration, the event-loop poller that keeps a PUBACK read together with the end
//! of the connection, packet-id mapping) is p1-mqtt-transport's.
//!
//! # Place in the graph
//!
//! `p1-core, p1-mqtt-transport <- p1-sink-azure <- p1gw`. It reads no configuration files or
//! environment: p1gw validates the `[[sink]]` entry, reads the connection string, CA and client
//! certificate files, and hands over an [`AzureSettings`].
//!
//! # Never
//!
//! * No reading leaves the spool before the hub acknowledged the message carrying it.
//! * No QoS 2, no second connection for the device.
//! * No secrets in logs or errors: the connection string, key and token print as `***` or not
//!   at all; connection-string errors name the field.
//! * No blocking of the runtime, no lock across `.await`; timers from `tokio::time`.
#![warn(missing_docs)]

mod budget;
mod config;
mod connection;
pub mod connection_string;
pub mod encode;
mod error;
pub mod sas;
mod sink;

#[cfg(any(test, feature = "fake-hub"))]
pub mod fake_hub;

pub use config::{API_VERSION, AzureSettings, Clock, MAX_MESSAGE_BYTES};
pub use connection_string::{ConnectionString, ConnectionStringError};
pub use error::BuildError;
pub use p1_mqtt_transport::ClientIdentity;
pub use sink::{AzureSink, KIND, build, describe_metrics};

#[cfg(test)]
mod tests;
