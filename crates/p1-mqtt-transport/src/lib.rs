//! p1-mqtt-transport: the MQTT plumbing the `mqtt` and `azure-iot` sinks share.
//!
//! Both sinks speak MQTT (3.1.1; the `mqtt` sink also 5) through rumqttc over rustls (ring), delete a spool record only
//! on the broker's acknowledgement, and run one fresh rumqttc event loop per connection. What
//! that takes, beyond each sink's own protocol, lives here once:
//!
//! * [`tls`]: [`TlsSettings`] / [`ClientIdentity`] and [`client_config`], a rustls client
//!   configuration on the ring provider with a CA file or the system's trust store and an
//!   optional client certificate.
//! * [`poll`]: [`poll_events`], which polls one connection's event loop to its first error and
//!   forwards its events, working around rumqttc dropping a PUBACK that arrives in the same
//!   read as the end of the connection.
//! * [`acks`]: [`Acks`], which maps rumqttc's packet ids back to what the caller published, so
//!   that a PUBACK (or PUBCOMP) settles exactly the message it belongs to.
//! * [`link`]: [`LinkState`], the connection as delivery sees it, with [`wait_connected`],
//!   [`mark_lost`] and [`stop_connection`].
//! * [`task`]: the skeleton both sinks run: [`wire`] (jobs, reports, link state and attempt
//!   between delivery and the connection task), [`run_beside`], [`connected`], [`transient`].
//!
//! # Place in the graph
//!
//! `p1-core <- p1-mqtt-transport <- p1-sink-mqtt | p1-sink-azure`. It knows nothing of
//! readings, spools, topics or configuration files: its callers hand it bytes (PEM), events and
//! their health handle (p1-core's `HealthHandle`) and run p1-core's delivery loop beside the
//! connection task ([`task`]: `Sink`, `SinkContext`, `DeliveryError`).
//!
//! # Never
//!
//! * No secrets in errors or logs: a client key is shown as `***`, errors name the setting.
//! * No reconnect policy: backoff is the caller's (rumqttc would retry at once,
//!   docs/dependencies.md §2.2).
#![warn(missing_docs)]

pub mod acks;
pub mod link;
pub mod poll;
pub mod task;
pub mod tls;

pub use acks::Acks;
pub use link::{LinkState, mark_lost, stop_connection, wait_connected};
pub use poll::{Polled, Polled5, poll_events, poll_events_v5};
pub use task::{DeliveryEnds, TaskEnds, connected, run_beside, transient, wire};
pub use tls::{ClientIdentity, TlsError, TlsSettings, client_config};
