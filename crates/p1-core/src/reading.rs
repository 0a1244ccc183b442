//! [`Reading`]: one telegram of one meter, owned and normalised, as every sink
//! and the HTTP layer see it.

use std::borrow::Cow;
use std::sync::{Arc, OnceLock};

use crate::codes::{CodeRule, CodeTable, raw_name};
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
    /// The meter's code table, once applied ([`Reading::with_codes`]): the JSON's names.
    codes: Option<Arc<CodeTable>>,
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
    /// The code, when the line's code is an OBIS code.
    pub code: Option<ObisCode>,
    /// The canonical name, when the code is known (to the parser, or by a rule of the
    /// meter's [`CodeTable`]).
    pub name: Option<&'static str>,
    /// The kind of the submeter this line belongs to.
    pub kind: Option<SubmeterKind>,
    /// The value.
    pub value: MeasuredValue,
    /// The unit as sent.
    pub unit: Option<String>,
    /// The capture time of a `(time)(value)` line.
    pub time: Option<Timestamp>,
    /// The rule of the meter's [`CodeTable`] for this line, if one applies.
    pub rule: Option<Arc<CodeRule>>,
}

impl Measurement {
    /// The name every value view uses: the canonical name, or for a line nobody named
    /// [`crate::codes::raw_name`] of its code (`obis_0_1_24_2_10`); `None` for a line
    /// whose code is not an OBIS code.
    pub fn label(&self) -> Option<Cow<'static, str>> {
        match (self.name, &self.code) {
            (Some(name), _) => Some(Cow::Borrowed(name)),
            (None, Some(code)) => Some(Cow::Owned(raw_name(code))),
            (None, None) => None,
        }
    }

    /// The factor from the number sent to the value in [`Measurement::unit_label`]: the
    /// rule's, else [`canonical_scale`].
    pub fn scale(&self) -> f64 {
        match &self.rule {
            Some(rule) if rule.scale.is_some() || rule.unit.is_some() => rule.scale.unwrap_or(1.0),
            _ => canonical_scale(self.name, self.unit.as_deref()),
        }
    }

    /// The value as a number in [`Measurement::unit_label`]'s unit, if it is a number.
    pub fn number(&self) -> Option<f64> {
        let v = self.value.as_f64()?;
        let scale = self.scale();
        // Divide for 0.001, so that 588 W gives exactly the `f64` nearest 0.588.
        Some(if scale == 0.001 {
            v / 1000.0
        } else {
            v * scale
        })
    }

    /// The unit of [`Measurement::number`]: the rule's, else [`canonical_unit`] of the unit
    /// sent; `None` when there is none.
    pub fn unit_label(&self) -> Option<Cow<'_, str>> {
        if let Some(unit) = self.rule.as_ref().and_then(|r| r.unit.as_deref()) {
            return Some(Cow::Borrowed(unit));
        }
        let unit = self.unit.as_deref()?;
        Some(canonical_unit(self.name, unit))
    }

    /// Whether the value views (MQTT value topics and discovery, InfluxDB, `/metrics`)
    /// show the line; only a rule's `publish = false` hides it.
    pub fn published(&self) -> bool {
        self.rule.as_ref().is_none_or(|r| r.publish)
    }
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
                    code: o.code,
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
                    rule: None,
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
            codes: None,
        }
    }

    /// The reading with the meter's code table applied: each line a rule is for takes the
    /// rule's name (if it gives one) and keeps the rule ([`Measurement::rule`]), and the JSON
    /// uses those names. An empty table changes nothing.
    pub fn with_codes(mut self, codes: &Arc<CodeTable>) -> Reading {
        if codes.is_empty() {
            return self;
        }
        for m in &mut self.objects {
            let Some(rule) = m.code.as_ref().and_then(|c| codes.rule(c)) else {
                continue;
            };
            if let Some(name) = rule.name {
                m.name = Some(name);
            }
            m.rule = Some(rule.clone());
        }
        self.codes = Some(codes.clone());
        self
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
            Ok(telegram) => match &self.codes {
                None => json::write_telegram_fields(&mut out, &telegram, &self.json.tz),
                Some(codes) => json::write_telegram_fields_named(
                    &mut out,
                    &telegram,
                    &self.json.tz,
                    |o: &p1_telegram::Object<'_>| {
                        o.code
                            .and_then(|c| codes.rule(&c))
                            .and_then(|r| r.name)
                            .or(o.name)
                    },
                ),
            },
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
        self.get(name)?.number()
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

/// The unit [`canonical_scale`] converts a value of `name` sent in `unit` to (`W` → `kW`,
/// `kV` → `V`); other units as sent. Veitur's heat "Wh" is kept (unit unverified).
pub fn canonical_unit<'a>(name: Option<&str>, unit: &'a str) -> Cow<'a, str> {
    if matches!(name, Some("heat_energy" | "heat_energy_2")) {
        return Cow::Borrowed(unit);
    }
    let canonical = match unit.to_ascii_lowercase().as_str() {
        "w" => "kW",
        "wh" => "kWh",
        "var" => "kvar",
        "varh" => "kvarh",
        "va" => "kVA",
        "vah" => "kVAh",
        "kv" => "V",
        "ka" => "A",
        "khz" => "Hz",
        _ => return Cow::Borrowed(unit),
    };
    Cow::Borrowed(canonical)
}

#[cfg(test)]
mod tests;
