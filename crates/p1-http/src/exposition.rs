//! What `/metrics` shows beyond the recorder: the meter's own values, the age of its latest
//! reading, the build; and this crate's own counters.
//!
//! # Families written at scrape time
//!
//! Rendered from the latest reading of each meter on every scrape and appended to
//! `PrometheusHandle::render()` (not kept in the recorder: a value the meter stops sending
//! disappears instead of going stale, and no recorder has to be global):
//!
//! * `p1gw_meter_value{meter,name,unit,channel}` (gauge): every named numeric value of the
//!   meter's latest reading, in the canonical unit of its quantity — kW, kWh, kvar, kvarh,
//!   kVA, kVAh, V, A, Hz, m3, m3/h, degC; other units as the meter sends them, `""` when it
//!   sends none (Veitur's heat "Wh" registers are kept as sent, their unit being unverified).
//!   `name` is the name in the meter's code table (`energy_import_total`, `hot_water_volume`,
//!   the user's name from `[meter.codes]`, or `obis_0_1_24_2_10` for a code nobody named:
//!   [`p1_core::Measurement::label`]), `channel` the M-Bus channel, `"0"` for the meter
//!   itself; a user's rule sets the unit and scale. One family rather than one per quantity,
//!   so that a new quantity needs no new metric; select with `{name="power_import"}`. Lines
//!   the user set `publish = false` are left out; when a name occurs twice on one channel,
//!   the first counts (as [`p1_core::Reading::number`]).
//! * `p1gw_last_reading_age_seconds{meter}` (gauge): seconds since the latest reading was
//!   received, on the wall clock (as `received_at`).
//! * `p1gw_build_info{version}` (gauge, always 1).
//!
//! # Families in the recorder (see [`describe_metrics`])
//!
//! * `p1gw_http_sse_clients` (gauge): open `/api/v1/events` streams.
//! * `p1gw_http_sse_rejected_total` (counter): event-stream requests refused at the client cap.
//! * `p1gw_http_sse_lagged_total` (counter): readings skipped for event-stream clients that
//!   fell behind the broadcast (the client missed them; no reading is lost elsewhere).
//! * `p1gw_http_history_lagged_total` (counter): readings the history recorder missed.

use std::fmt::Write as _;

use jiff::Timestamp;
use p1_core::Reading;

use crate::HttpState;

/// Gauge: open event streams.
pub const SSE_CLIENTS: &str = "p1gw_http_sse_clients";
/// Counter: event-stream requests refused because of the client cap.
pub const SSE_REJECTED: &str = "p1gw_http_sse_rejected_total";
/// Counter: readings skipped for event-stream clients that fell behind.
pub const SSE_LAGGED: &str = "p1gw_http_sse_lagged_total";
/// Counter: readings the history recorder missed.
pub const HISTORY_LAGGED: &str = "p1gw_http_history_lagged_total";
/// Gauge family written at scrape time: the meter's own values.
pub const METER_VALUE: &str = "p1gw_meter_value";
/// Gauge family written at scrape time: the age of each meter's latest reading.
pub const LAST_READING_AGE: &str = "p1gw_last_reading_age_seconds";
/// Gauge family written at scrape time: the version, value 1.
pub const BUILD_INFO: &str = "p1gw_build_info";

/// Registers the `# HELP` texts of this crate's recorder metrics with the installed recorder
/// and sets them to zero, so that they are exported (and can be alerted on) before the first
/// event. Call once, after installing the recorder (a `describe` before that is lost).
pub fn describe_metrics() {
    metrics::describe_gauge!(
        SSE_CLIENTS,
        "Open /api/v1/events (server-sent events) streams."
    );
    metrics::describe_counter!(
        SSE_REJECTED,
        "Event-stream requests refused because the client limit was reached."
    );
    metrics::describe_counter!(
        SSE_LAGGED,
        "Readings skipped for event-stream clients that fell behind the readings broadcast."
    );
    metrics::describe_counter!(
        HISTORY_LAGGED,
        "Readings the in-memory chart history missed because its recorder fell behind."
    );
    metrics::gauge!(SSE_CLIENTS).set(0.0);
    metrics::counter!(SSE_REJECTED).increment(0);
    metrics::counter!(SSE_LAGGED).increment(0);
    metrics::counter!(HISTORY_LAGGED).increment(0);
}

/// The scrape-time families for `state`'s meters, as of `now`; empty before any reading
/// (only `p1gw_build_info`).
pub(crate) fn render_own(state: &HttpState, now: Timestamp) -> String {
    let readings: Vec<_> = state
        .shared
        .meters
        .iter()
        .filter_map(|(_, latest)| latest.borrow().clone())
        .collect();
    let mut out = String::with_capacity(256 + readings.len() * 2048);

    family(
        &mut out,
        BUILD_INFO,
        "The running p1gw's version; always 1.",
    );
    sample(
        &mut out,
        BUILD_INFO,
        &[("version", &state.shared.version)],
        1.0,
    );

    if readings.is_empty() {
        return out;
    }
    family(
        &mut out,
        LAST_READING_AGE,
        "Seconds since the meter's latest reading was received (wall clock).",
    );
    for reading in &readings {
        let age = now
            .duration_since(reading.received_at)
            .as_secs_f64()
            .max(0.0);
        sample(
            &mut out,
            LAST_READING_AGE,
            &[("meter", &reading.meter)],
            age,
        );
    }
    family(
        &mut out,
        METER_VALUE,
        "The meter's own values from its latest reading, in the canonical unit of each \
         quantity (label unit: kW, kWh, kvar, kvarh, V, A, Hz, m3, m3/h, degC, or as sent).",
    );
    for reading in &readings {
        meter_values(&mut out, reading);
    }
    out
}

fn meter_values(out: &mut String, reading: &Reading) {
    let mut seen: Vec<(std::borrow::Cow<'static, str>, u8)> = Vec::new();
    for m in reading.objects.iter().filter(|m| m.published()) {
        let (Some(name), Some(value)) = (m.label(), m.number()) else {
            continue;
        };
        let channel = m.channel.unwrap_or(0);
        if seen.iter().any(|(n, c)| *n == name && *c == channel) {
            continue;
        }
        let unit = m.unit_label();
        let channel_text = channel.to_string();
        sample(
            out,
            METER_VALUE,
            &[
                ("meter", &reading.meter),
                ("name", &name),
                ("unit", unit.as_deref().unwrap_or("")),
                ("channel", &channel_text),
            ],
            value,
        );
        seen.push((name, channel));
    }
}

fn family(out: &mut String, name: &str, help: &str) {
    // HELP text escapes only backslash and newline; ours have neither.
    out.push_str("# HELP ");
    out.push_str(name);
    out.push(' ');
    out.push_str(help);
    out.push_str("\n# TYPE ");
    out.push_str(name);
    out.push_str(" gauge\n");
}

fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: f64) {
    if !value.is_finite() {
        return; // a meter value is always finite; never write Rust's "inf"/"NaN" spelling
    }
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (key, val)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(key);
            out.push_str("=\"");
            escape_label(out, val);
            out.push('"');
        }
        out.push('}');
    }
    // f64's Display is the shortest form that reads back exactly, never exponent notation.
    writeln!(out, " {value}").unwrap_or(()); // writing to a String never fails
}

fn escape_label(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}
