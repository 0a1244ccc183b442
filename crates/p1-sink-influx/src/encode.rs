//! A reading as InfluxDB points (pure; the schema of `docs/influx.md`).
//!
//! * One point for the meter's own values, measurement `electricity`, and one per M-Bus
//!   submeter that has values, measurement = its kind: `gas`, `water`, `heat`, `hot_water`,
//!   `cooling` (`unknown` when the telegram does not tell).
//! * Tags: `meter` (the configured name), `equipment_id` (the meter's id on `electricity`, the
//!   submeter's on its point; left out when the telegram has none, or when it holds a backslash,
//!   which InfluxDB 1.x cannot always store), `channel` (the M-Bus channel, submeters only).
//! * Fields: every line with a canonical name and a numeric value, as a float in the canonical
//!   unit of its quantity ([`p1_core::reading::canonical_scale`]: W → kW, Wh → kWh, …), the
//!   first line of a name per point; left out are text values (messages, ids), timestamps, empty
//!   values, event logs, and the names that identify rather than measure ([`IDENTITY_NAMES`]).
//! * Timestamp: the meter's clock when the telegram has one, else the time received
//!   ([`p1_core::Reading::timestamp`]), in the configured precision.
//!
//! The same reading always gives the same bytes: InfluxDB keeps one point per series and
//! timestamp, so writing a reading twice (a retry after a lost acknowledgement, a spool replayed
//! after a crash) leaves one point.

use p1_core::Reading;

use crate::config::Precision;
use crate::line::{FieldValue, write_point};

/// The measurement of the meter's own values.
pub const ELECTRICITY: &str = "electricity";

/// Canonical names that are numeric on some meters but identify or describe the device rather
/// than measure anything; they are not written as fields.
pub const IDENTITY_NAMES: [&str; 7] = [
    "p1_version",
    "equipment_id",
    "meter_serial",
    "meter_id",
    "mbus_equipment_id",
    "mbus_device_type",
    "logical_device_name",
];

/// Appends the points of `reading` to `out`, each ending in a line feed; returns how many.
/// A reading without a single numeric value gives none.
pub fn write_reading(out: &mut String, reading: &Reading, precision: Precision) -> usize {
    let timestamp = Some(precision.timestamp(reading.timestamp()));

    // The points in order: the meter (channel 0) first, then the channels in the order their
    // first value appears. Fields keep telegram order; the first line of a name wins.
    let mut points: Vec<(u8, Vec<(&'static str, f64)>)> = Vec::new();
    for m in &reading.objects {
        let (Some(name), Some(value)) = (m.name, m.value.as_f64()) else {
            continue;
        };
        if IDENTITY_NAMES.contains(&name) {
            continue;
        }
        let value = p1_core::reading::canonical_scale(Some(name), m.unit.as_deref()) * value;
        let channel = m.channel.unwrap_or(0);
        let index = match points.iter().position(|(c, _)| *c == channel) {
            Some(i) => i,
            None => {
                points.push((channel, Vec::new()));
                points.len() - 1
            }
        };
        let fields = &mut points[index].1;
        if !fields.iter().any(|(n, _)| *n == name) {
            fields.push((name, value));
        }
    }
    points.sort_by_key(|(channel, _)| *channel != 0);

    let mut written = 0;
    for (channel, fields) in &points {
        let fields: Vec<(&str, FieldValue<'_>)> = fields
            .iter()
            .map(|(n, v)| (*n, FieldValue::Float(*v)))
            .collect();
        let channel_text = channel.to_string();
        let (measurement, equipment_id) = if *channel == 0 {
            (ELECTRICITY, reading.meter_id.as_deref())
        } else {
            let submeter = reading.submeters.iter().find(|s| s.channel == *channel);
            let kind = submeter.map(|s| s.kind).or_else(|| {
                reading
                    .objects
                    .iter()
                    .find(|m| m.channel == Some(*channel))
                    .and_then(|m| m.kind)
            });
            (
                kind.map_or("unknown", |k| k.as_str()),
                submeter.and_then(|s| s.equipment_id.as_deref()),
            )
        };
        let equipment_id = equipment_id.filter(|id| !id.contains('\\')).unwrap_or("");
        let mut tags = vec![("meter", &*reading.meter), ("equipment_id", equipment_id)];
        if *channel != 0 {
            tags.push(("channel", channel_text.as_str()));
        }
        if write_point(out, measurement, &tags, &fields, timestamp) {
            written += 1;
        }
    }
    written
}

/// The spool record of a reading: its points as line protocol.
#[derive(Debug, Clone, Copy)]
pub struct LineEncoder {
    precision: Precision,
}

impl LineEncoder {
    /// An encoder writing timestamps in `precision`.
    pub fn new(precision: Precision) -> Self {
        LineEncoder { precision }
    }
}

impl p1_core::Encode for LineEncoder {
    /// The reading's points; `None` (skipped, not a drop) when it has no numeric value at all.
    fn encode(&mut self, reading: &Reading) -> Option<Vec<u8>> {
        let mut out = String::with_capacity(1024);
        (write_reading(&mut out, reading, self.precision) > 0).then(|| out.into_bytes())
    }
}
