//! The JSON shape of a telegram (docs/contracts.md §4), written by hand: it is on the
//! hot path of `p1gw parse` and the daemon, and numbers must keep exactly the
//! digits the meter sent, which a float-based serializer cannot do.

use std::fmt::Write as _;

use jiff::tz::TimeZone;

use crate::telegram::{Object, Telegram, Value, groups};
use crate::value::{Quantity, Stamp};

/// Bytes that JSON strings must escape (control characters, `"`, `\`) and
/// DEL, which we escape too.
static ESCAPE: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table[0x7f] = true;
    table
};

/// Writes `"text"` with JSON escaping.
pub fn write_str(out: &mut String, text: &str) {
    out.push('"');
    let bytes = text.as_bytes();
    // Telegram text almost never needs escaping: check once, copy once.
    let Some(first) = bytes.iter().position(|&b| ESCAPE[usize::from(b)]) else {
        out.push_str(text);
        out.push('"');
        return;
    };
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate().skip(first) {
        let escape: &str = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f | 0x7f => "",
            _ => continue,
        };
        out.push_str(&text[start..i]);
        if escape.is_empty() {
            write!(out, "\\u{b:04x}").unwrap_or(()); // a String never fails
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(&text[start..]);
    out.push('"');
}

/// Writes bytes as a JSON string, replacing invalid UTF-8 with U+FFFD.
pub fn write_bytes(out: &mut String, bytes: &[u8]) {
    // Valid UTF-8 (nearly always plain ASCII) needs no copy.
    match std::str::from_utf8(bytes) {
        Ok(text) => write_str(out, text),
        Err(_) => write_str(out, &String::from_utf8_lossy(bytes)),
    }
}

/// Writes an RFC 3339 UTC time (`2024-02-12T22:21:14Z`), or `null`.
pub fn write_time(out: &mut String, time: Option<jiff::Timestamp>) {
    match time {
        Some(t) => {
            write!(out, "\"{t}\"").unwrap_or(()); // a String never fails
        }
        None => out.push_str("null"),
    }
}

fn stamp_time(stamp: Option<Stamp>, tz: &TimeZone) -> Option<jiff::Timestamp> {
    match stamp? {
        Stamp::Valid(t) => t.to_timestamp(tz),
        Stamp::Placeholder => None,
    }
}

fn write_number(out: &mut String, q: &Quantity<'_>) {
    let mut buf = [0u8; 24];
    out.push_str(q.value.format(&mut buf));
}

/// Writes the §4 top-level object of one telegram, without a line end:
/// `{"source":…,"header":…,"crc":…,"meter_time":…,"objects":[…]}`.
pub fn write_telegram(out: &mut String, source: &str, telegram: &Telegram<'_>, tz: &TimeZone) {
    out.push_str("{\"source\":");
    write_str(out, source);
    write_telegram_fields(out, telegram, tz);
    out.push('}');
}

/// Writes `,"header":…,"crc":…,"meter_time":…,"objects":[…]`: the §4 fields
/// after `source`, for callers that put their own fields first.
pub fn write_telegram_fields(out: &mut String, telegram: &Telegram<'_>, tz: &TimeZone) {
    write_telegram_fields_named(out, telegram, tz, |object| object.name);
}

/// [`write_telegram_fields`] with each object's `name` chosen by `name_of` (the parser's
/// name is [`Object::name`]): how a caller with names of its own (the user's, for codes the
/// parser does not know) puts them into the JSON.
pub fn write_telegram_fields_named(
    out: &mut String,
    telegram: &Telegram<'_>,
    tz: &TimeZone,
    name_of: impl Fn(&Object<'_>) -> Option<&'static str>,
) {
    out.push_str(",\"header\":");
    write_bytes(out, telegram.header);
    out.push_str(",\"crc\":\"");
    out.push_str(telegram.crc.as_str());
    out.push_str("\",\"meter_time\":");
    write_time(out, telegram.meter_time(tz));
    out.push_str(",\"objects\":[");
    for (i, object) in telegram.objects.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_named_object(out, object, name_of(object), tz);
    }
    out.push(']');
}

/// Writes a byte in decimal without the formatting machinery (hot path).
fn push_u8(out: &mut String, n: u8) {
    let digits = [b'0' + n / 100, b'0' + n / 10 % 10, b'0' + n % 10];
    let skip = usize::from(n < 100) + usize::from(n < 10);
    out.push_str(std::str::from_utf8(&digits[skip..]).unwrap_or_default());
}

/// Writes `A-B:C.D.E[*F]`, as `Display` does, without `fmt`.
fn push_obis(out: &mut String, code: &crate::ObisCode) {
    let mut buf = [0; crate::ObisCode::MAX_TEXT];
    out.push_str(code.format(&mut buf));
}

/// Writes one data line as its §4 object.
pub fn write_object(out: &mut String, object: &Object<'_>, tz: &TimeZone) {
    write_named_object(out, object, object.name, tz);
}

fn write_named_object(out: &mut String, object: &Object<'_>, name: Option<&str>, tz: &TimeZone) {
    out.push_str("{\"obis\":");
    match object.code {
        Some(code) => {
            out.push('"');
            push_obis(out, &code);
            out.push('"');
        }
        None => write_bytes(out, object.code_text),
    }
    if let Some(channel) = object.channel() {
        out.push_str(",\"channel\":");
        push_u8(out, channel);
    }
    // Names need no escaping: the parser's are ASCII identifiers, and so are the user's
    // (the configuration accepts nothing else).
    if let Some(name) = name {
        out.push_str(",\"name\":\"");
        out.push_str(name);
        out.push('"');
    }
    let unit = |out: &mut String, q: &Quantity<'_>| {
        if let Some(u) = q.unit {
            out.push_str(",\"unit\":");
            write_str(out, u);
        }
    };
    match &object.value {
        Value::Empty => {}
        Value::Number(q) => {
            out.push_str(",\"value\":");
            write_number(out, q);
            unit(out, q);
        }
        Value::Text(_) => {
            if let Some(text) = object.text() {
                out.push_str(",\"value\":");
                write_str(out, &text);
            }
        }
        Value::Time(stamp) => {
            if let Some(t) = stamp_time(Some(*stamp), tz) {
                out.push_str(",\"value\":");
                write_time(out, Some(t));
            }
        }
        Value::TimeOfDay {
            hour,
            minute,
            second,
        } => {
            write!(out, ",\"value\":\"{hour:02}:{minute:02}:{second:02}\"").unwrap_or(()); // a String never fails
        }
        Value::Date { year, month, day } => {
            write!(out, ",\"value\":\"{year:04}-{month:02}-{day:02}\"").unwrap_or(()); // a String never fails
        }
        Value::Reading { time, quantity } => {
            if time.is_some() {
                out.push_str(",\"time\":");
                write_time(out, stamp_time(*time, tz));
            }
            if let Some(q) = quantity {
                out.push_str(",\"value\":");
                write_number(out, q);
                unit(out, q);
            }
        }
        Value::FailureLog { count, events } => {
            if let Some(n) = count {
                write!(out, ",\"value\":{n}").unwrap_or(()); // a String never fails
            }
            if let Some(u) = events.iter().find_map(|e| e.duration.and_then(|d| d.unit)) {
                out.push_str(",\"unit\":");
                write_str(out, u);
            }
            out.push_str(",\"events\":[");
            for (i, e) in events.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str("{\"end\":");
                write_time(out, stamp_time(e.end, tz));
                if let Some(d) = &e.duration {
                    out.push_str(",\"duration\":");
                    write_number(out, d);
                }
                out.push('}');
            }
            out.push(']');
        }
        Value::PeakHistory { count, peaks } => {
            if let Some(n) = count {
                write!(out, ",\"value\":{n}").unwrap_or(()); // a String never fails
            }
            if let Some(u) = peaks.iter().find_map(|p| p.quantity.and_then(|q| q.unit)) {
                out.push_str(",\"unit\":");
                write_str(out, u);
            }
            out.push_str(",\"events\":[");
            for (i, p) in peaks.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str("{\"month\":");
                write_time(out, stamp_time(p.month, tz));
                out.push_str(",\"time\":");
                write_time(out, stamp_time(p.time, tz));
                if let Some(q) = &p.quantity {
                    out.push_str(",\"value\":");
                    write_number(out, q);
                }
                out.push('}');
            }
            out.push(']');
        }
        Value::BillingSnapshot { time, values } => {
            out.push_str(",\"time\":");
            write_time(out, stamp_time(*time, tz));
            out.push_str(",\"values\":[");
            for (i, v) in values.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                match v {
                    Some(q) => write_number(out, q),
                    None => out.push_str("null"),
                }
            }
            out.push_str("],\"units\":[");
            for (i, v) in values.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                match v.and_then(|q| q.unit) {
                    Some(u) => write_str(out, u),
                    None => out.push_str("null"),
                }
            }
            out.push(']');
        }
        Value::Groups(values) => {
            if let Some(Some(first)) = values.first() {
                out.push_str(",\"value\":");
                write_number(out, first);
                unit(out, first);
            }
            // Every group: a number where it is one, else its text as sent
            // (`null` for an empty group).
            out.push_str(",\"values\":[");
            let mut sent = groups(object.raw);
            for (i, v) in values.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let group = sent.next();
                match (v, group) {
                    (Some(q), _) => write_number(out, q),
                    (None, Some(g)) if !g.is_empty() => {
                        let mut text = g.value.to_vec();
                        if let Some(unit) = g.unit {
                            text.push(b'*');
                            text.extend_from_slice(unit);
                        }
                        write_bytes(out, &text);
                    }
                    (None, _) => out.push_str("null"),
                }
            }
            out.push(']');
        }
    }
    out.push_str(",\"raw\":");
    match object.continuation {
        None => write_bytes(out, object.raw),
        Some(next) => {
            let mut joined = object.raw.to_vec();
            joined.extend_from_slice(next);
            write_bytes(out, &joined);
        }
    }
    out.push('}');
}
