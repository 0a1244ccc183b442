//! [`Reading`]: one telegram of one meter, owned and normalised, as every sink
//! and the HTTP layer see it.

use std::sync::Arc;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use p1_telegram::{Decimal, ObisCode, Stamp, SubmeterKind, Telegram, Value, json};

/// One decoded telegram of one meter. Readings travel as `Arc<Reading>` on
/// the broadcast channel; nothing mutates them after construction.
///
/// The design §4 JSON (plus `meter`, `meter_id`, `received_at`) is rendered
/// once, at construction, by [`Reading::from_telegram`]: HTTP, SSE, MQTT and
/// Azure all send [`Reading::json`] as it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// The configured meter name (`[meter] name`), used in topics and tags.
    pub meter: Arc<str>,
    /// Where the telegram came from (`serial:/dev/p1`, `simulate:veitur`, …).
    pub source: Arc<str>,
    /// The meter's own identity (equipment id decoded, or serial), if sent.
    pub meter_id: Option<String>,
    /// The identification line without `/`.
    pub header: String,
    /// `"valid"` or `"absent"` (mismatching telegrams never become readings).
    pub crc: &'static str,
    /// The meter's clock as an instant, when the telegram has one.
    pub meter_time: Option<Timestamp>,
    /// When the gateway had the whole telegram.
    pub received_at: Timestamp,
    /// Every data line, in telegram order.
    pub objects: Vec<Measurement>,
    /// The M-Bus submeters, by channel.
    pub submeters: Vec<SubmeterInfo>,
    json: Arc<str>,
}

/// One data line of a reading.
#[derive(Debug, Clone, PartialEq)]
pub struct Measurement {
    /// The code, normalised (`0-1:24.2.1`), or as written when it is not one.
    pub obis: String,
    /// The M-Bus channel for `0-n:` lines.
    pub channel: Option<u8>,
    /// The canonical name, when the code is known.
    pub name: Option<&'static str>,
    /// The kind of the submeter this line belongs to.
    pub kind: Option<SubmeterKind>,
    /// The value.
    pub value: MeasuredValue,
    /// The unit as sent.
    pub unit: Option<String>,
    /// The capture time of a `(time)(value)` line.
    pub time: Option<Timestamp>,
}

/// The value of a [`Measurement`].
#[derive(Debug, Clone, PartialEq)]
pub enum MeasuredValue {
    /// No value (`()`), or a shape with no single value (event logs).
    None,
    /// A number: exact digits and the nearest float.
    Number(Decimal),
    /// Text (decoded hex where that is printable).
    Text(String),
    /// A timestamp.
    Time(Timestamp),
}

impl MeasuredValue {
    /// The number as `f64`, if this is one.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            MeasuredValue::Number(d) => Some(d.to_f64()),
            _ => None,
        }
    }
}

/// A submeter of a reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmeterInfo {
    /// The channel number.
    pub channel: u8,
    /// What it measures.
    pub kind: SubmeterKind,
    /// EN 13757-3 device type, when sent.
    pub device_type: Option<i64>,
    /// The submeter's id (decoded when printable).
    pub equipment_id: Option<String>,
}

impl Reading {
    /// Builds a reading from a parsed telegram. `tz` is the zone in which the
    /// meter's local timestamps are read.
    pub fn from_telegram(
        meter: Arc<str>,
        source: Arc<str>,
        telegram: &Telegram<'_>,
        tz: &TimeZone,
        received_at: Timestamp,
    ) -> Reading {
        let stamp = |s: Option<Stamp>| match s {
            Some(Stamp::Valid(t)) => t.to_timestamp(tz),
            _ => None,
        };
        let kind_of = |channel: Option<u8>| {
            channel.and_then(|c| {
                telegram
                    .submeters
                    .iter()
                    .find(|s| s.channel == c)
                    .map(|s| s.kind)
            })
        };
        let objects = telegram
            .objects
            .iter()
            .map(|o| {
                let channel = o.channel();
                let (value, unit, time) = match &o.value {
                    Value::Number(q) => (MeasuredValue::Number(q.value), q.unit, None),
                    Value::Text(_) => (
                        o.text()
                            .map_or(MeasuredValue::None, |t| MeasuredValue::Text(t.into_owned())),
                        None,
                        None,
                    ),
                    Value::Time(s) => (
                        stamp(Some(*s)).map_or(MeasuredValue::None, MeasuredValue::Time),
                        None,
                        None,
                    ),
                    Value::Reading { time, quantity } => (
                        quantity.map_or(MeasuredValue::None, |q| MeasuredValue::Number(q.value)),
                        quantity.and_then(|q| q.unit),
                        stamp(*time),
                    ),
                    Value::Groups(values) => match values.first() {
                        Some(Some(q)) => (MeasuredValue::Number(q.value), q.unit, None),
                        _ => (MeasuredValue::None, None, None),
                    },
                    Value::TimeOfDay { .. }
                    | Value::Date { .. }
                    | Value::Empty
                    | Value::FailureLog { .. }
                    | Value::PeakHistory { .. } => (MeasuredValue::None, None, None),
                };
                Measurement {
                    obis: o.code.map_or_else(
                        || String::from_utf8_lossy(o.code_text).into_owned(),
                        obis_text,
                    ),
                    channel,
                    name: o.name,
                    kind: kind_of(channel),
                    value,
                    unit: unit.map(str::to_owned),
                    time,
                }
            })
            .collect();
        let submeters = telegram
            .submeters
            .iter()
            .map(|s| SubmeterInfo {
                channel: s.channel,
                kind: s.kind,
                device_type: s.device_type,
                equipment_id: s.equipment_id.map(|id| {
                    p1_telegram::decode_hex_text(id)
                        .unwrap_or_else(|| String::from_utf8_lossy(id).into_owned())
                }),
            })
            .collect();
        let meter_id = telegram.meter_id();

        let mut out = String::with_capacity(2048);
        out.push_str("{\"meter\":");
        json::write_str(&mut out, &meter);
        out.push_str(",\"source\":");
        json::write_str(&mut out, &source);
        out.push_str(",\"meter_id\":");
        match &meter_id {
            Some(id) => json::write_str(&mut out, id),
            None => out.push_str("null"),
        }
        out.push_str(",\"received_at\":");
        json::write_time(&mut out, Some(received_at));
        json::write_telegram_fields(&mut out, telegram, tz);
        out.push('}');

        Reading {
            meter,
            source,
            meter_id,
            header: telegram.header_str().into_owned(),
            crc: telegram.crc.as_str(),
            meter_time: telegram.meter_time(tz),
            received_at,
            objects,
            submeters,
            json: Arc::from(out),
        }
    }

    /// The reading as design §4 JSON, with `meter`, `source`, `meter_id` and
    /// `received_at` added. Built once; cheap to clone.
    pub fn json(&self) -> &Arc<str> {
        &self.json
    }

    /// The first measurement with this canonical name.
    pub fn get(&self, name: &str) -> Option<&Measurement> {
        self.objects.iter().find(|m| m.name == Some(name))
    }

    /// The first numeric value with this canonical name, converted to the
    /// canonical unit of field-notes §c: W, Wh, var, varh ÷ 1000 (to kW, kWh,
    /// kvar, kvarh); kV, kA, kHz × 1000. Veitur's heat "Wh" is left as sent.
    pub fn number(&self, name: &str) -> Option<f64> {
        let m = self.get(name)?;
        let v = m.value.as_f64()?;
        Some(canonical_scale(m.name, m.unit.as_deref()) * v)
    }

    /// The meter's time, or the time received when the meter sends none: the
    /// timestamp a time series should use.
    pub fn timestamp(&self) -> Timestamp {
        self.meter_time.unwrap_or(self.received_at)
    }
}

/// `code` as `code.to_string()` writes it (`1-0:1.8.1`, `0-1:24.2.1*255`), without going
/// through `core::fmt`: every data line of every reading has one.
fn obis_text(code: ObisCode) -> String {
    fn push_u8(out: &mut String, n: u8) {
        if n >= 100 {
            out.push(char::from(b'0' + n / 100));
        }
        if n >= 10 {
            out.push(char::from(b'0' + n / 10 % 10));
        }
        out.push(char::from(b'0' + n % 10));
    }
    let mut out = String::with_capacity(23);
    push_u8(&mut out, code.a);
    out.push('-');
    push_u8(&mut out, code.b);
    out.push(':');
    push_u8(&mut out, code.c);
    out.push('.');
    push_u8(&mut out, code.d);
    out.push('.');
    push_u8(&mut out, code.e);
    if let Some(f) = code.f {
        out.push('*');
        push_u8(&mut out, f);
    }
    out
}

/// The factor that brings a value in `unit` to the canonical unit of its
/// quantity (field-notes §c "Conversions").
pub fn canonical_scale(name: Option<&str>, unit: Option<&str>) -> f64 {
    if matches!(name, Some("heat_energy" | "heat_energy_2")) {
        // Veitur's heat submeter: unit unverified, keep as sent.
        return 1.0;
    }
    // Units are compared without regard to case; none of those scaled is longer than 4 bytes.
    let Some(unit) = unit.filter(|u| u.len() <= 4) else {
        return 1.0;
    };
    let mut lower = [0u8; 4];
    lower[..unit.len()].copy_from_slice(unit.as_bytes());
    lower.make_ascii_lowercase();
    match &lower[..unit.len()] {
        b"w" | b"wh" | b"var" | b"varh" | b"va" | b"vah" => 0.001,
        b"kv" | b"ka" | b"khz" => 1000.0,
        _ => 1.0,
    }
}

#[cfg(test)]
mod tests;
