//! [`Reading`]: one telegram of one meter, owned and normalised, as every sink
//! and the HTTP layer see it.

use std::sync::{Arc, OnceLock};

use jiff::Timestamp;
use jiff::tz::TimeZone;
use p1_telegram::{Decimal, ObisCode, ParseOptions, Stamp, SubmeterKind, Telegram, Value, json};

/// One decoded telegram of one meter. Readings travel as `Arc<Reading>` on
/// the broadcast channel; nothing mutates them after construction.
///
/// The docs/contracts.md §4 JSON (plus `meter`, `meter_id`, `received_at`) is rendered
/// once, on first use of [`Reading::json`], from the telegram's frame that
/// the reading keeps: HTTP, SSE, MQTT, Azure and jsonl all send it as it is,
/// and a gateway whose sinks need none of it (InfluxDB only) never renders it.
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
    json: LazyJson,
}

/// What [`Reading::json`] is rendered from, and the rendering once done.
#[derive(Debug, Clone)]
struct LazyJson {
    /// The telegram's frame (about a third of the JSON's size).
    frame: Arc<[u8]>,
    /// The zone the meter's local times were read in.
    tz: TimeZone,
    rendered: OnceLock<Arc<str>>,
}

/// The rendering is a function of the frame, the zone and the reading's own
/// fields: whether it has happened yet does not make two readings differ.
impl PartialEq for LazyJson {
    fn eq(&self, other: &LazyJson) -> bool {
        self.frame == other.frame && self.tz == other.tz
    }
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
                    | Value::PeakHistory { .. }
                    | Value::BillingSnapshot { .. } => (MeasuredValue::None, None, None),
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
            json: LazyJson {
                frame: Arc::from(telegram.frame),
                tz: tz.clone(),
                rendered: OnceLock::new(),
            },
        }
    }

    /// The reading as docs/contracts.md §4 JSON, with `meter`, `source`, `meter_id` and
    /// `received_at` added. Rendered on first use (the frame is parsed again,
    /// which gives the same telegram), then kept; cheap to clone.
    pub fn json(&self) -> &Arc<str> {
        self.json.rendered.get_or_init(|| self.render_json())
    }

    fn render_json(&self) -> Arc<str> {
        let mut out = String::with_capacity(3 * self.json.frame.len() + 256);
        out.push_str("{\"meter\":");
        json::write_str(&mut out, &self.meter);
        out.push_str(",\"source\":");
        json::write_str(&mut out, &self.source);
        out.push_str(",\"meter_id\":");
        match &self.meter_id {
            Some(id) => json::write_str(&mut out, id),
            None => out.push_str("null"),
        }
        out.push_str(",\"received_at\":");
        json::write_time(&mut out, Some(self.received_at));
        // The frame passed this parse (and its CRC check) when the reading
        // was made; parsing is deterministic, so it cannot fail now. If it
        // ever did, the reading's own fields still make valid JSON.
        match Telegram::parse(&self.json.frame, ParseOptions { check_crc: false }) {
            Ok(telegram) => json::write_telegram_fields(&mut out, &telegram, &self.json.tz),
            Err(_) => {
                out.push_str(",\"header\":");
                json::write_str(&mut out, &self.header);
                out.push_str(",\"crc\":\"");
                out.push_str(self.crc);
                out.push_str("\",\"meter_time\":");
                json::write_time(&mut out, self.meter_time);
                out.push_str(",\"objects\":[]");
            }
        }
        out.push('}');
        Arc::from(out)
    }

    /// The first measurement with this canonical name.
    pub fn get(&self, name: &str) -> Option<&Measurement> {
        self.objects.iter().find(|m| m.name == Some(name))
    }

    /// The first numeric value with this canonical name, converted to the
    /// canonical unit of docs/obis.md: W, Wh, var, varh ÷ 1000 (to kW, kWh,
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
    let mut buf = [0; ObisCode::MAX_TEXT];
    code.format(&mut buf).to_owned()
}

/// The factor that brings a value in `unit` to the canonical unit of its
/// quantity (docs/obis.md, "Conversions").
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
