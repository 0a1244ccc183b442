//! p1-reader: the reader actor that owns a meter's source, decodes its
//! telegrams and broadcasts readings.
//!
//! One reader runs per configured meter. It is the only thing that touches
//! the meter: it opens the source ([`SourceConfig`]), feeds the bytes to
//! `p1_telegram::Decoder` (through [`Pipeline`]), turns every good telegram
//! into a [`p1_core::Reading`] and sends it as `Arc<Reading>` on the
//! broadcast channel and into the `latest` watch that HTTP reads. Rejected
//! telegrams are counted by reason and logged at most once per reason per
//! minute; they never stop the reader.
//!
//! # Sources
//!
//! * **serial** ([`SerialSource`]): a P1 cable on a serial port, opened
//!   exclusively with [`LineSettings`] (usually from a [`Preset`]: `veitur`
//!   9600 7N1, `veitur-7e1` and `dsmr22` 9600 7E1, `dsmr4` 115200 8N1).
//!   7-bit settings are read with parity checks off and bit 7 masked
//!   ([`LineFilter`]), parity and framing errors counted. The data request
//!   line (P1 pin 2) is a [`RequestLine`] — RTS or DTR on the port, a GPIO
//!   line, none, or a [`FakeLine`] in tests — driven in [`RequestMode`]
//!   `hold`, `pulse` or `poll`. A read of `Ok(0)` or an error is an unplug:
//!   the port is closed and reopened with backoff, and so it is after six
//!   intervals of silence, re-toggling the request line. While the device
//!   path is gone the reader stats it every [`serial::PRESENCE_POLL`] and
//!   opens it as soon as it is back, whatever the backoff.
//! * **tcp**: a raw telegram stream from ser2net or a Wi-Fi bridge,
//!   reconnected with backoff (capped at [`TCP_RETRY_CAP`]) and after
//!   silence.
//! * **replay**: a recording (`p1gw record`'s output, or telegram text
//!   files), at a fixed pace, the recorded pace or as fast as possible.
//! * **simulate** ([`SimulatedMeter`]): Veitur, DSMR 5 or Belgian telegrams
//!   whose totals never decrease and whose energy deltas match the power.
//!
//! [`Port`] and [`Port::listen`] also serve `p1gw probe` and `p1gw record`,
//! which open a port without a reader; [`probe`] analyses what a port
//! delivers under each preset.
//!
//! # The actor
//!
//! [`ReaderHandle::spawn`] starts a reader and returns a `Clone` handle
//! (a bounded `mpsc` of requests, answered on `oneshot`s):
//! [`ReaderHandle::status`] and [`ReaderHandle::retrigger`] (re-toggle the
//! request line). [`run_reader`] is the same task without a handle; the
//! daemon runs one per meter and stops them with its cancellation token.
//!
//! Place in the graph: `p1-telegram <- p1-core <- p1-reader <- p1gw`. It
//! never depends on a sink or on p1-http, and it reads no configuration file:
//! p1gw hands it a [`ReaderConfig`].
//!
//! # Health and metrics
//!
//! Labelled `meter`: `p1gw_telegrams_total` (good telegrams),
//! `p1gw_telegrams_rejected_total{reason}` (`crc`, `truncated`, `oversize`,
//! `invalid_crc`, `garbled`, `no_header`), `p1gw_bytes_read_total`,
//! `p1gw_reconnects_total` (successful reopens after a disconnect),
//! `p1gw_serial_errors_total{kind}` (`parity`, `framing`),
//! `p1gw_meter_clock_anomalies_total{kind}` (`backwards`, `future`, `dst_flag`: see
//! [`ClockCheck`]; the readings are kept),
//! `p1gw_readings_rejected_total{reason}` (`backwards`, `implausible_jump`:
//! good telegrams the [`guard`] held back), gauge
//! `p1gw_last_telegram_timestamp_seconds`. Health counters (for the live
//! page): `telegrams_ok` (forwarded readings), `telegrams_rejected`,
//! `readings_rejected`, `reconnects`, `parity_errors`, `line_errors`.
//!
//! # The spike guard
//!
//! Before a reading is broadcast, the [`SpikeGuard`] compares its cumulative
//! registers (energy, reactive energy, gas/water/hot-water volumes, heat
//! energy) with the last reading forwarded: a total that falls (the "zero
//! spike") or grows faster than the configured `max_power` / `max_flow`
//! allows holds the reading back; three consistent held-back readings in a
//! row are a replaced meter and become the new baseline. See [`guard`]. While a serial or TCP source is
//! disconnected, the reader's health state is degraded with the reason.

#![warn(missing_docs)]

mod error;
pub mod guard;
mod handle;
mod pipeline;
pub mod probe;
pub mod request;
pub mod serial;
pub mod simulate;
mod source;

pub use crate::error::Error;
pub use crate::guard::{GuardConfig, SpikeGuard};
pub use crate::handle::{ReaderHandle, ReaderStatus};
pub use crate::pipeline::{CLOCK_AHEAD_TOLERANCE, ClockCheck, Pipeline};
pub use crate::request::{FakeLine, LineKind, RequestConfig, RequestLine, RequestMode};
pub use crate::serial::{
    Consume, LineFilter, LineSettings, LineStats, Parity, Port, Preset, SerialSource, Session,
    SessionEnd,
};
pub use crate::simulate::{MeterPty, Profile, SimulatedMeter};
pub use crate::source::{
    Pace, ReaderConfig, SourceConfig, TCP_CONNECT_TIMEOUT, TCP_RETRY_CAP, run_reader,
};

/// Registers the `# HELP` texts of the reader metrics with the installed recorder.
pub fn describe_metrics() {
    metrics::describe_counter!(
        "p1gw_telegrams_total",
        "Telegrams decoded and delivered to the sinks (not those the spike guard held back)."
    );
    metrics::describe_counter!(
        "p1gw_telegrams_rejected_total",
        "Telegrams rejected, by reason (crc, truncated, oversize, invalid_crc, garbled, no_header)."
    );
    metrics::describe_counter!(
        "p1gw_bytes_read_total",
        "Bytes read from the meter's source."
    );
    metrics::describe_counter!(
        "p1gw_reconnects_total",
        "Times the source was reopened after a disconnect."
    );
    metrics::describe_counter!(
        "p1gw_serial_errors_total",
        "Serial line errors, by kind (parity: parity bit wrong, checked in software; framing: bytes the OS marked as errors)."
    );
    metrics::describe_counter!(
        "p1gw_meter_clock_anomalies_total",
        "Readings whose meter clock was odd, by kind (backwards: earlier than the previous reading; future: more than 5 min ahead of the gateway; dst_flag: the S/W flag contradicts the zone). The readings are kept."
    );
    metrics::describe_counter!(
        "p1gw_readings_rejected_total",
        "Good telegrams the spike guard held back from the sinks, by reason (backwards: a cumulative total fell, a zero spike included; implausible_jump: it grew faster than the meter's max_power or max_flow allows)."
    );
    metrics::describe_gauge!(
        "p1gw_last_telegram_timestamp_seconds",
        "Unix time at which the last good telegram arrived."
    );
}

#[cfg(test)]
mod tests;
