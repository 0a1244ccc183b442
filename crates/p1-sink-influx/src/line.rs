//! InfluxDB line protocol: escaping, and a writer for one point.
//!
//! ```text
//! measurement,tag_key=tag_value,… field_key=field_value,… timestamp
//! ```
//!
//! # Escaping
//!
//! As InfluxDB 2.x/3.x and VictoriaMetrics read it (the 2.x line-protocol reference):
//!
//! | element | escaped with `\` |
//! |---|---|
//! | measurement | comma, space |
//! | tag key, tag value, field key | comma, equals sign, space |
//! | string field value (in `"…"`) | double quote, backslash |
//!
//! A backslash in a measurement, tag or field key stays a literal backslash, except where a
//! reader would take it for an escape: before a character that is escaped there, before another
//! backslash, and at the end of the element. There it is written as `\\`, which the readers turn
//! back into one backslash. So every string without a line break is written losslessly (the
//! property tests parse the lines back).
//!
//! Line protocol cannot carry a line break outside a string field, and InfluxDB's 2.x reference
//! excludes it from string fields too: a carriage return or line feed anywhere is written as a
//! space (escaped where a space is).
//!
//! InfluxDB 1.x reads backslashes differently: only `\,`, `\ `, `\=` (and in string fields
//! `\"`, `\\`) are escapes, so a `\\` written for a backslash before a special character stays
//! two backslashes there, and an element that ends in a backslash makes 1.x reject the line
//! (verified on 1.6.7). The reading encoder therefore never writes a tag value that holds a
//! backslash (see [`crate::encode`]); measurement and field names are fixed ASCII words.
//!
//! # Never
//!
//! Empty measurements, keys and tag values cannot be written: a tag with an empty key or value is
//! left out (as InfluxDB does), a field with an empty key or a non-finite float too, and a point
//! left without fields writes nothing.

/// A field value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FieldValue<'a> {
    /// A 64-bit float, written as the shortest decimal that reads back to the same float
    /// (never in exponent form). NaN and infinities are left out.
    Float(f64),
    /// A signed integer, written with the `i` suffix.
    Integer(i64),
    /// A string, quoted and escaped.
    String(&'a str),
    /// A boolean, `true` or `false`.
    Boolean(bool),
}

impl FieldValue<'_> {
    fn is_writable(&self) -> bool {
        match self {
            FieldValue::Float(f) => f.is_finite(),
            _ => true,
        }
    }
}

/// Which characters an element escapes.
#[derive(Debug, Clone, Copy)]
enum Element {
    Measurement,
    Key,
}

impl Element {
    fn is_special(self, c: char) -> bool {
        match self {
            Element::Measurement => matches!(c, ',' | ' '),
            Element::Key => matches!(c, ',' | '=' | ' '),
        }
    }
}

fn is_line_break(c: char) -> bool {
    matches!(c, '\n' | '\r')
}

/// Bytes that may need escaping in some element (a superset of every element's specials): text
/// without any is written as it is.
fn needs_escaping(text: &str) -> bool {
    text.bytes()
        .any(|b| matches!(b, b',' | b'=' | b' ' | b'\\' | b'"' | b'\n' | b'\r'))
}

fn escape(out: &mut String, text: &str, element: Element) {
    if !needs_escaping(text) {
        out.push_str(text);
        return;
    }
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        let c = if is_line_break(c) { ' ' } else { c };
        if element.is_special(c) {
            out.push('\\');
            out.push(c);
        } else if c == '\\' {
            // A literal backslash, doubled only where a reader would otherwise take it
            // (and what follows it) for an escape.
            let next = chars
                .peek()
                .map(|&n| if is_line_break(n) { ' ' } else { n });
            match next {
                None => out.push_str("\\\\"),
                Some(n) if n == '\\' || element.is_special(n) => out.push_str("\\\\"),
                Some(_) => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
}

/// Appends `text` escaped as a measurement name.
pub fn escape_measurement(out: &mut String, text: &str) {
    escape(out, text, Element::Measurement);
}

/// Appends `text` escaped as a tag key, tag value or field key.
pub fn escape_key(out: &mut String, text: &str) {
    escape(out, text, Element::Key);
}

/// Appends `text` as a string field value: quoted, with `"` and `\` escaped.
pub fn escape_string_field(out: &mut String, text: &str) {
    out.push('"');
    if !needs_escaping(text) {
        out.push_str(text);
        out.push('"');
        return;
    }
    for c in text.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if is_line_break(c) => out.push(' '),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Appends one point and its line end to `out`; returns whether it wrote one.
///
/// Tags are written sorted by key (InfluxDB's advice, and what makes the same point the same
/// bytes), leaving out those with an empty key or value; fields in the order given, leaving out
/// empty keys and non-finite floats. Without any field left, nothing is written. `timestamp` is
/// in the precision the write request names; `None` lets the server use its clock.
///
/// `measurement` must not be empty or start with `#` (a comment line).
pub fn write_point(
    out: &mut String,
    measurement: &str,
    tags: &[(&str, &str)],
    fields: &[(impl AsRef<str>, FieldValue<'_>)],
    timestamp: Option<i128>,
) -> bool {
    debug_assert!(!measurement.is_empty() && !measurement.starts_with('#'));
    if !fields
        .iter()
        .any(|(k, v)| !k.as_ref().is_empty() && v.is_writable())
    {
        return false;
    }
    escape_measurement(out, measurement);
    let mut write_tag = |(key, value): &(&str, &str)| {
        if !key.is_empty() && !value.is_empty() {
            out.push(',');
            escape_key(out, key);
            out.push('=');
            escape_key(out, value);
        }
    };
    if tags.is_sorted_by(|a, b| a.0 <= b.0) {
        // The usual case (the reading encoder gives them sorted): no copy to sort.
        tags.iter().for_each(&mut write_tag);
    } else {
        let mut sorted: Vec<&(&str, &str)> = tags.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(b.0));
        sorted.into_iter().for_each(write_tag);
    }
    let mut first = true;
    for (key, value) in fields {
        let key = key.as_ref();
        if key.is_empty() || !value.is_writable() {
            continue;
        }
        out.push(if first { ' ' } else { ',' });
        first = false;
        escape_key(out, key);
        out.push('=');
        match value {
            FieldValue::Float(f) => write_float(out, *f),
            FieldValue::Integer(i) => {
                out.push_str(itoa::Buffer::new().format(*i));
                out.push('i');
            }
            FieldValue::String(s) => escape_string_field(out, s),
            FieldValue::Boolean(b) => out.push_str(if *b { "true" } else { "false" }),
        }
    }
    if let Some(t) = timestamp {
        out.push(' ');
        out.push_str(itoa::Buffer::new().format(t));
    }
    out.push('\n');
    true
}

/// Appends a finite `f` exactly as `format!("{f}")` does — the shortest decimal that reads back
/// to the same float, never in exponent form (`2`, `0.588`, `0.0000001`,
/// `10000000000000000`) — but several times faster: zmij finds the digits, and its exponent form
/// (`2.0`, `1e-7`, `1e+16`) is rewritten here. A property test holds the two to the same text.
///
/// Only floats that need 16 or 17 digits can be an exact tie between two shortest candidates
/// (`2020163013628192.25`: `…192.2` or `…192.3`), which zmij breaks to even and `Display` up;
/// those, rare in meter values, are written by `Display` itself.
pub(crate) fn write_float(out: &mut String, f: f64) {
    debug_assert!(f.is_finite());
    let mut buffer = zmij::Buffer::new();
    let text = buffer.format_finite(f);
    let significant = text
        .bytes()
        .take_while(|&b| b != b'e')
        .filter(u8::is_ascii_digit)
        .count();
    if significant >= 16 {
        use std::fmt::Write as _;
        write!(out, "{f}").unwrap_or(());
        return;
    }
    let Some((mantissa, exponent)) = text.split_once('e') else {
        // Plain decimal: zmij writes integers with ".0", Display without.
        out.push_str(text.strip_suffix(".0").unwrap_or(text));
        return;
    };
    // `[-]d[.ddd]e[+|-]n`: the digits, and the exponent of the first one.
    let (negative, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let (first, rest) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let exponent: i32 = exponent
        .strip_prefix('+')
        .unwrap_or(exponent)
        .parse()
        .unwrap_or(0);
    if negative {
        out.push('-');
    }
    let digits = first.len() + rest.len();
    if exponent < 0 {
        // 0.000ddd
        out.push_str("0.");
        for _ in 1..exponent.unsigned_abs() {
            out.push('0');
        }
        out.push_str(first);
        out.push_str(rest);
    } else {
        // ddd000, or ddd.ddd when the digits reach past the point
        let int_digits = exponent.unsigned_abs() as usize + 1;
        out.push_str(first);
        if rest.len() < int_digits - first.len() {
            out.push_str(rest);
            for _ in digits..int_digits {
                out.push('0');
            }
        } else {
            let (int_rest, fraction) = rest.split_at(int_digits - first.len());
            out.push_str(int_rest);
            if !fraction.is_empty() {
                out.push('.');
                out.push_str(fraction);
            }
        }
    }
}
