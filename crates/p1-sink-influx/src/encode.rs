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
//! * Timestamp: [`write_reading`] writes [`p1_core::Reading::timestamp`] (the meter's clock when
//!   the telegram has one, else the time received). The spooling [`LineEncoder`] applies the
//!   timestamp rule of `docs/influx.md` on top: the meter's clock unless it is more than
//!   [`CLOCK_AHEAD_LIMIT`] ahead of the time received, and every reading of a meter strictly
//!   later than the one before (when its clock went back or stood still: the time received,
//!   or one unit of the precision after the one before), so each reading stays its own point.
//!
//! The stamp is fixed when the reading is encoded, i.e. when it is spooled: InfluxDB keeps one
//! point per series and timestamp, so writing a record twice (a retry after a lost
//! acknowledgement, a spool replayed after a crash) leaves one point.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

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

/// How far the meter's clock may run ahead of the time p1gw received the telegram before the
/// [`LineEncoder`] stamps the reading with the time received instead: more than transmission
/// delay and drift, less than a wrong time zone's hour (the reader flags the same readings as
/// `future` clock anomalies).
pub const CLOCK_AHEAD_LIMIT: jiff::SignedDuration = jiff::SignedDuration::from_mins(5);

/// Appends the points of `reading` to `out`, each ending in a line feed, stamped with
/// [`Reading::timestamp`]; returns how many. A reading without a single numeric value gives
/// none. (The spooling [`LineEncoder`] stamps by the rule in the module doc instead.)
pub fn write_reading(out: &mut String, reading: &Reading, precision: Precision) -> usize {
    let timestamp = precision.timestamp(reading.timestamp());
    write_reading_with(out, reading, timestamp, &mut Vec::new())
}

/// The `equipment_id` tag of a reading's `electricity` point (empty: none).
fn meter_tag(reading: &Reading) -> &str {
    reading
        .meter_id
        .as_deref()
        .filter(|id| !id.contains('\\'))
        .unwrap_or("")
}

/// A point's fields, in the order written.
type Fields = Vec<(Cow<'static, str>, FieldValue<'static>)>;

/// [`write_reading`] with a buffer for the fields that the caller keeps from one reading to the
/// next (one allocation fewer per reading; the encoder runs for every reading).
fn write_reading_with(
    out: &mut String,
    reading: &Reading,
    timestamp: i128,
    fields: &mut Fields,
) -> usize {
    let timestamp = Some(timestamp);

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
            (ELECTRICITY, Some(meter_tag(reading)))
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

/// The spool record of a reading: its points as line protocol, stamped by the rule in the
/// module doc. One encoder serves one run of the sink; it remembers the last stamp of each
/// meter (its name and id: the `electricity` series) for that run, and, through
/// [`LineEncoder::with_floor`], the latest stamp of the runs before.
#[derive(Debug, Clone)]
pub struct LineEncoder {
    precision: Precision,
    /// Kept from one reading to the next: the fields of the point being written.
    fields: Fields,
    /// The last stamp given to each meter (name, id), in the precision's units.
    last: Vec<(Arc<str>, String, i128)>,
    /// The latest stamp of an earlier run, in the precision's units: a meter's first reading
    /// in this run is stamped after it.
    floor: Option<i128>,
    /// The latest stamp given, in nanoseconds (shared with whoever stores it).
    given: Arc<AtomicU64>,
}

impl LineEncoder {
    /// An encoder writing timestamps in `precision`.
    pub fn new(precision: Precision) -> Self {
        LineEncoder {
            precision,
            fields: Vec::new(),
            last: Vec::new(),
            floor: None,
            given: Arc::default(),
        }
    }

    /// Stamps every meter's readings after `latest_ns` (nanoseconds since the Unix epoch: the
    /// latest stamp an earlier run gave, as [`LineEncoder::given`] kept it), so that a meter
    /// clock that went back before a restart cannot land on a point written before it.
    #[must_use]
    pub fn with_floor(mut self, latest_ns: Option<u64>) -> Self {
        self.floor = latest_ns.map(|ns| i128::from(ns / self.precision.unit_ns()));
        if let Some(ns) = latest_ns {
            self.given.fetch_max(ns, Ordering::Relaxed);
        }
        self
    }

    /// The latest stamp given so far (or the floor), in nanoseconds since the Unix epoch; it
    /// moves as readings are encoded.
    pub fn given(&self) -> Arc<AtomicU64> {
        self.given.clone()
    }

    /// The stamp of `reading`, in the precision's units: its meter time unless that is missing
    /// or more than [`CLOCK_AHEAD_LIMIT`] ahead of the time received (then the time received);
    /// when that is not later than the previous stamp of the same meter (or the floor), the
    /// time received if that is later, else one unit after the previous stamp. Remembered for
    /// the meter's next reading.
    pub fn stamp(&mut self, reading: &Reading) -> i128 {
        let (stamp, slot) = self.next_stamp(reading);
        self.remember(reading, slot, stamp);
        stamp
    }

    /// The stamp [`LineEncoder::stamp`] would give, and where the meter's last one is kept.
    fn next_stamp(&self, reading: &Reading) -> (i128, Option<usize>) {
        let received = reading.received_at;
        let time = match reading.meter_time {
            Some(t) if t.duration_since(received) <= CLOCK_AHEAD_LIMIT => t,
            _ => received,
        };
        let stamp = self.precision.timestamp(time);
        let id = meter_tag(reading);
        let slot = self
            .last
            .iter()
            .position(|(meter, meter_id, _)| **meter == *reading.meter && meter_id == id);
        match slot.map(|i| self.last[i].2).or(self.floor) {
            // The meter's clock went back or stands still: the time received (the gateway's
            // clock keeps the points in real time), unless that is not later either.
            Some(last) if stamp <= last => {
                let received = self.precision.timestamp(received);
                (if received > last { received } else { last + 1 }, slot)
            }
            _ => (stamp, slot),
        }
    }

    fn remember(&mut self, reading: &Reading, slot: Option<usize>, stamp: i128) {
        let ns = stamp.saturating_mul(i128::from(self.precision.unit_ns()));
        self.given
            .fetch_max(u64::try_from(ns).unwrap_or(0), Ordering::Relaxed);
        match slot {
            Some(i) => self.last[i].2 = stamp,
            None => self
                .last
                .push((reading.meter.clone(), meter_tag(reading).to_owned(), stamp)),
        }
    }
}

impl p1_core::Encode for LineEncoder {
    /// The reading's points; `None` (skipped, not a drop) when it has no numeric value at all
    /// (such a reading takes no stamp).
    fn encode(&mut self, reading: &Reading) -> Option<Vec<u8>> {
        let mut out = String::with_capacity(1024);
        let (stamp, slot) = self.next_stamp(reading);
        if write_reading_with(&mut out, reading, stamp, &mut self.fields) == 0 {
            return None;
        }
        self.remember(reading, slot, stamp);
        Some(out.into_bytes())
    }
}
