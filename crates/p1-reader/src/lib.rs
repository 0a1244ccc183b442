//! p1-reader: the reader actor that owns a meter's source, decodes its
//! telegrams and broadcasts readings.
//!
//! One reader runs per configured meter. It is the only thing that touches
//! the meter: it opens the source ([`SourceConfig`]: a simulated meter, a
//! recording, a TCP stream), feeds the bytes to `p1_telegram::Decoder`, turns
//! every good telegram into a [`p1_core::Reading`] and sends it as
//! `Arc<Reading>` on the broadcast channel and into the `latest` watch that
//! HTTP reads. Rejected telegrams are counted by reason and logged at most
//! once per reason per minute; they never stop the reader.
//!
//! Place in the graph: `p1-telegram <- p1-core <- p1-reader <- p1gw`. It
//! never depends on a sink or on p1-http.
//!
//! # Metrics
//!
//! Labelled `meter`: `p1gw_telegrams_total` (good telegrams),
//! `p1gw_telegrams_rejected_total{reason}` (`crc`, `truncated`, `oversize`,
//! `invalid_crc`, `no_header`), `p1gw_bytes_read_total`,
//! `p1gw_reconnects_total`, gauge `p1gw_last_telegram_timestamp_seconds`.
//! Health counters (for the live page): `telegrams_ok`, `telegrams_rejected`,
//! `reconnects`.

#![warn(missing_docs)]

mod pipeline;
pub mod simulate;
mod source;

pub use crate::pipeline::Pipeline;
pub use crate::simulate::{Profile, SimulatedMeter};
pub use crate::source::{Pace, ReaderConfig, SourceConfig, run_reader};

/// Registers the `# HELP` texts of the reader metrics with the installed recorder.
pub fn describe_metrics() {
    metrics::describe_counter!(
        "p1gw_telegrams_total",
        "Telegrams decoded and delivered to the sinks."
    );
    metrics::describe_counter!(
        "p1gw_telegrams_rejected_total",
        "Telegrams rejected, by reason (crc, truncated, oversize, invalid_crc, no_header)."
    );
    metrics::describe_counter!(
        "p1gw_bytes_read_total",
        "Bytes read from the meter's source."
    );
    metrics::describe_counter!(
        "p1gw_reconnects_total",
        "Times the source was reopened after a disconnect."
    );
    metrics::describe_gauge!(
        "p1gw_last_telegram_timestamp_seconds",
        "Unix time at which the last good telegram arrived."
    );
}

#[cfg(test)]
mod tests;
