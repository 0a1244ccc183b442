//! A reading as InfluxDB points (pure; the schema of `docs/influx.md`).
//!
//! * One point for the meter's own values, measurement `electricity`, and one per M-Bus
//!   submeter that has values, measurement = its kind: `gas`, `water`, `heat`, `hot_water`,
//!   `cooling` (`unknown` when the telegram does not tell).
//! * Tags: `meter` (the configured name), `equipment_id` (the meter's id on `electricity`, the
//!   submeter's on its point; left out when the telegram has none, or when it holds a backslash,
//!   which InfluxDB 1.x cannot always store), `channel` (the M-Bus channel, submeters only).
//! * Fields: every line with a numeric value, under its name in the meter's code table
//!   ([`p1_core::Measurement::label`]: the canonical name, the user's name from
//!   `[meter.codes]`, or `obis_A_B_C_D_E` for a code nobody named), as a float in the unit of
//!   [`p1_core::Measurement::number`] (the canonical unit of its quantity, W → kW, Wh → kWh, …,
//!   or the user's unit and scale), the first line of a name per point; left out are text
//!   values (messages, ids), timestamps, empty values, event logs, lines whose code is not an
//!   OBIS code, lines the user set `publish = false`, and the names that identify rather than
//!   measure ([`IDENTITY_NAMES`]).
//! * Timestamp: the meter's clock when the telegram has one, else the time received
//!   ([`p1_core::Reading::timestamp`]), in the configured precision.
//!
//! The same reading always gives the same bytes: InfluxDB keeps one point per series and
//! timestamp, so writing a reading twice (a retry after a lost acknowledgement, a spool replayed
//! after a crash) leaves one point.

use std::borrow::Cow;

use p1_core::Reading;
use p1_core::reading::{MeasuredValue, Measurement};

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
    write_reading_with(out, reading, precision, &mut Vec::new())
}

/// A point's fields, in the order written.
type Fields = Vec<(Cow<'static, str>, FieldValue<'static>)>;

/// [`write_reading`] with a buffer for the fields that the caller keeps from one reading to the
/// next (one allocation fewer per reading; the encoder runs for every reading).
fn write_reading_with(
    out: &mut String,
    reading: &Reading,
    precision: Precision,
    fields: &mut Fields,
) -> usize {
    let timestamp = Some(precision.timestamp(reading.timestamp()));

    // The points in order: the meter (channel 0) first, then the channels in the order their
    // first value appears. Fields keep telegram order; the first line of a name wins.
    let numeric = |m: &Measurement| match (m.name, &m.value) {
        (_, MeasuredValue::Number(_)) if !m.published() || m.code.is_none() => false,
        (Some(name), MeasuredValue::Number(_)) => !IDENTITY_NAMES.contains(&name),
        (None, MeasuredValue::Number(_)) => true,
        _ => false,
    };
    let mut channels: Vec<u8> = Vec::new();
    for m in reading.objects.iter().filter(|m| numeric(m)) {
        let channel = m.channel.unwrap_or(0);
        if !channels.contains(&channel) {
            channels.push(channel);
        }
    }
    if let Some(i) = channels.iter().position(|c| *c == 0) {
        channels[..=i].rotate_right(1);
    }

    let mut written = 0;
    let mut channel_text = itoa::Buffer::new();
    for &channel in &channels {
        fields.clear();
        for m in reading.objects.iter() {
            if m.channel.unwrap_or(0) != channel || !numeric(m) {
                continue;
            }
            let (Some(name), Some(value)) = (m.label(), m.number()) else {
                continue;
            };
            if fields.iter().any(|(n, _)| *n == name) {
                continue;
            }
            fields.push((name, FieldValue::Float(value)));
        }
        let (measurement, equipment_id) = if channel == 0 {
            (ELECTRICITY, reading.meter_id.as_deref())
        } else {
            let submeter = reading.submeters.iter().find(|s| s.channel == channel);
            let kind = submeter.map(|s| s.kind).or_else(|| {
                reading
                    .objects
                    .iter()
                    .find(|m| m.channel == Some(channel))
                    .and_then(|m| m.kind)
            });
            (
                kind.map_or("unknown", |k| k.as_str()),
                submeter.and_then(|s| s.equipment_id.as_deref()),
            )
        };
        let equipment_id = equipment_id.filter(|id| !id.contains('\\')).unwrap_or("");
        // Sorted by key, as line protocol wants them; the channel only on submeters.
        let tags = [
            (
                "channel",
                if channel == 0 {
                    ""
                } else {
                    channel_text.format(channel)
                },
            ),
            ("equipment_id", equipment_id),
            ("meter", &*reading.meter),
        ];
        if write_point(out, measurement, &tags, fields, timestamp) {
            written += 1;
        }
    }
    written
}

/// The spool record of a reading: its points as line protocol.
#[derive(Debug, Clone)]
pub struct LineEncoder {
    precision: Precision,
    /// Kept from one reading to the next: the fields of the point being written.
    fields: Fields,
}

impl LineEncoder {
    /// An encoder writing timestamps in `precision`.
    pub fn new(precision: Precision) -> Self {
        LineEncoder {
            precision,
            fields: Vec::new(),
        }
    }
}

impl p1_core::Encode for LineEncoder {
    /// The reading's points; `None` (skipped, not a drop) when it has no numeric value at all.
    fn encode(&mut self, reading: &Reading) -> Option<Vec<u8>> {
        let mut out = String::with_capacity(1024);
        (write_reading_with(&mut out, reading, self.precision, &mut self.fields) > 0)
            .then(|| out.into_bytes())
    }
}
