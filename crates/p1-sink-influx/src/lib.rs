//! p1-sink-influx: readings to InfluxDB as line protocol over HTTP.
//!
//! * [`Influx`] is built once from an [`InfluxConfig`] (URL, [`Target`]: the v1 `/write` API
//!   with database, retention policy and basic authentication, or the v2 `/api/v2/write` API with
//!   org, bucket and token; precision, batching, gzip, timeout) and makes workers with
//!   [`Influx::sink`].
//! * A worker is p1-core's spool-backed [`p1_core::Pipelined`]: [`LineEncoder`] turns each
//!   reading into its points ([`encode`], the schema of `docs/influx.md`) and spools them before
//!   any network I/O; [`Writer`] sends batches of spooled records with reqwest (rustls on
//!   *ring*), gzip-compressed, several requests in flight, and maps InfluxDB's answers to
//!   p1-core's acknowledgements, retries and drops ([`sink`]). Backoff, spool, health and
//!   metrics are p1-core's.
//! * [`line`] is the line-protocol writer: escaping of measurements, tags, field keys and
//!   string values.
//!
//! Delivery is at-least-once, and exact in InfluxDB: a reading's stamp is fixed when it is
//! spooled (each reading of a meter strictly later than the one before, see [`encode`]), a
//! resend sends the spooled bytes again, and InfluxDB keeps one point per series and timestamp.
//! (VictoriaMetrics keeps duplicates unless run with `-dedup.minScrapeInterval`.) Only
//! InfluxDB's own 204 deletes readings and only its own refusal of points drops any.
//!
//! Place in the graph: `p1-core <- p1-sink-influx <- p1gw`. It never sees the reader or another
//! sink, and reads no files or environment: p1gw hands it its validated section, secrets read,
//! and a [`SecretReader`] (p1gw's code) to read the secret again after a 401/403.
#![warn(missing_docs)]

pub mod config;
pub mod encode;
pub mod error;
pub mod line;
pub mod sink;

pub use config::{
    DEFAULT_BATCH_SIZE, DEFAULT_MAX_IN_FLIGHT, InfluxConfig, Precision, Secret, Target,
};
pub use encode::{LineEncoder, write_reading};
pub use error::BuildError;
pub use sink::{Influx, KIND, SecretReader, Writer};

#[cfg(test)]
mod tests;
