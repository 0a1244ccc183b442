//! Typed values: exact decimals, meter timestamps, quantities.

use std::fmt;

/// A decimal number exactly as the meter sent it: `mantissa × 10^-scale`.
///
/// `(001988.284*kWh)` is `{ mantissa: 1988284, scale: 3 }` and prints as
/// `1988.284`; `(00.000*kW)` prints as `0.000`. No float rounding happens in this
/// crate: convert with [`Decimal::to_f64`] at the edges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Decimal {
    mantissa: i64,
    scale: u8,
}

const POW10: [i64; 19] = [
    1,
    10,
    100,
    1_000,
    10_000,
    100_000,
    1_000_000,
    10_000_000,
    100_000_000,
    1_000_000_000,
    10_000_000_000,
    100_000_000_000,
    1_000_000_000_000,
    10_000_000_000_000,
    100_000_000_000_000,
    1_000_000_000_000_000,
    10_000_000_000_000_000,
    100_000_000_000_000_000,
    1_000_000_000_000_000_000,
];

impl Decimal {
    /// `mantissa × 10^-scale`; `None` when `scale > 18`.
    pub fn new(mantissa: i64, scale: u8) -> Option<Decimal> {
        (scale <= 18).then_some(Decimal { mantissa, scale })
    }

    /// `mantissa × 10^-scale` for a caller that has checked `scale <= 18`.
    #[inline(always)]
    pub(crate) const fn from_parts(mantissa: i64, scale: u8) -> Decimal {
        Decimal { mantissa, scale }
    }

    /// The digits as an integer, sign included.
    pub fn mantissa(&self) -> i64 {
        self.mantissa
    }

    /// How many digits follow the decimal point.
    pub fn scale(&self) -> u8 {
        self.scale
    }

    /// Parses `[+-]digits[.digits]` (at least one digit, 18 significant digits
    /// at most). Leading zeros do not count towards the limit.
    #[inline]
    pub fn parse(text: &[u8]) -> Option<Decimal> {
        let (negative, digits) = match text.first()? {
            b'-' => (true, &text[1..]),
            b'+' => (false, &text[1..]),
            _ => (false, text),
        };
        if digits.len() > 18 {
            return Decimal::parse_long(negative, digits);
        }
        // At most 18 digits: below i64::MAX, so no overflow check per digit;
        // and no count, as the limit cannot be reached.
        let mut rest = digits;
        let mut mantissa: i64 = 0;
        while let [c, tail @ ..] = rest {
            let d = c.wrapping_sub(b'0');
            if d > 9 {
                break;
            }
            mantissa = mantissa * 10 + i64::from(d);
            rest = tail;
        }
        let whole = digits.len() - rest.len();
        let mut scale = 0;
        if let [b'.', fraction @ ..] = rest {
            rest = fraction;
            while let [c, tail @ ..] = rest {
                let d = c.wrapping_sub(b'0');
                if d > 9 {
                    break;
                }
                mantissa = mantissa * 10 + i64::from(d);
                rest = tail;
            }
            scale = fraction.len() - rest.len();
        }
        if !rest.is_empty() || whole + scale == 0 {
            return None;
        }
        Some(Decimal {
            mantissa: if negative { -mantissa } else { mantissa },
            // At most 18 bytes, so at most 18 fraction digits.
            scale: scale as u8,
        })
    }

    /// [`Decimal::parse`] of more than 18 characters after the sign: leading
    /// zeros are skipped, and the significant digits are counted.
    #[cold]
    pub(crate) fn parse_long(negative: bool, digits: &[u8]) -> Option<Decimal> {
        // Leading zeros carry no value: skip them so that fixed-width
        // registers (`000000002.331`) count only their significant digits.
        let zeros = digits.iter().take_while(|&&c| c == b'0').count();
        let significant = &digits[zeros..];
        let mut mantissa: i64 = 0;
        let mut scale: usize = 0;
        let mut seen_point = false;
        let mut count = 0usize;
        for &c in significant {
            if c.is_ascii_digit() {
                // At most 18 significant digits: below i64::MAX, no overflow check needed.
                count += 1;
                if count > 18 {
                    return None;
                }
                mantissa = mantissa * 10 + i64::from(c - b'0');
                scale += usize::from(seen_point);
            } else if c == b'.' && !seen_point {
                seen_point = true;
            } else {
                return None;
            }
        }
        if zeros == 0 && count == 0 {
            return None;
        }
        // Zeros after the point among the leading zeros (`0.0005` has none:
        // the point stops the skip) do not exist, so `scale` is complete.
        if scale > 18 {
            return None;
        }
        Some(Decimal {
            mantissa: if negative { -mantissa } else { mantissa },
            scale: scale as u8,
        })
    }

    /// The nearest `f64`.
    pub fn to_f64(&self) -> f64 {
        // Both conversions are exact for every mantissa below 2^53; beyond that
        // the division rounds once, which is the best f64 can do.
        self.mantissa as f64 / POW10[usize::from(self.scale)] as f64
    }

    /// The value as an integer when it has no fractional digits.
    pub fn as_integer(&self) -> Option<i64> {
        (self.scale == 0).then_some(self.mantissa)
    }
}

impl fmt::Display for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 24];
        f.write_str(self.format(&mut buf))
    }
}

impl Decimal {
    /// Writes the canonical text (`-12.340`) into `buf` and returns it; no
    /// allocation. Used by the JSON writer on the hot path.
    pub fn format<'b>(&self, buf: &'b mut [u8; 24]) -> &'b str {
        let mut magnitude = self.mantissa.unsigned_abs();
        let scale = usize::from(self.scale);
        // Fill from the right: fraction digits, point, integer digits, sign.
        let mut at = buf.len();
        for _ in 0..scale {
            at -= 1;
            buf[at] = b'0' + (magnitude % 10) as u8;
            magnitude /= 10;
        }
        if scale > 0 {
            at -= 1;
            buf[at] = b'.';
        }
        loop {
            at -= 1;
            buf[at] = b'0' + (magnitude % 10) as u8;
            magnitude /= 10;
            if magnitude == 0 {
                break;
            }
        }
        if self.mantissa < 0 {
            at -= 1;
            buf[at] = b'-';
        }
        // Only ASCII digits, '.' and '-' were written.
        std::str::from_utf8(&buf[at..]).unwrap_or("0")
    }
}

/// A meter timestamp (`TST`): `YYMMDDhhmmss` in the meter's local time, with
/// the DST flag when the meter sends one (`S` summer, `W` winter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MeterTime {
    /// Full year (2000 + YY).
    pub year: i16,
    /// 1..=12.
    pub month: i8,
    /// 1..=31, checked against the month.
    pub day: i8,
    /// 0..=23.
    pub hour: i8,
    /// 0..=59.
    pub minute: i8,
    /// 0..=59.
    pub second: i8,
    /// `Some(true)` for `S`, `Some(false)` for `W`, `None` when absent.
    pub dst: Option<bool>,
}

/// What a `TST` group held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stamp {
    /// A real date and time.
    Valid(MeterTime),
    /// A placeholder: a time in the year 2000 (an unset clock: `000101000000W`,
    /// `000101010000W`, `000101000001W`), 1 January '70 (`700101010000W`), or
    /// an impossible date (`632525252525S`, all zeros): "no time", never an
    /// error.
    Placeholder,
}

impl MeterTime {
    /// Parses `YYMMDDhhmmss[S|W]`. Returns `None` if the text does not have that
    /// shape at all, `Some(Stamp::Placeholder)` if it has the shape but no real
    /// time.
    pub fn parse(text: &[u8]) -> Option<Stamp> {
        let (digits, dst) = match text.len() {
            12 => (text, None),
            13 => match text[12] {
                b'S' | b's' => (&text[..12], Some(true)),
                b'W' | b'w' => (&text[..12], Some(false)),
                _ => return None,
            },
            _ => return None,
        };
        if !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let two = |i: usize| ((digits[i] - b'0') * 10 + (digits[i + 1] - b'0')) as i8;
        let t = MeterTime {
            year: 2000 + i16::from(two(0)),
            month: two(2),
            day: two(4),
            hour: two(6),
            minute: two(8),
            second: two(10),
            dst,
        };
        // Placeholders (docs/telegram-values.md): any time in the year 2000 is
        // a clock that was never set and counts up from 2000-01-01 00:00
        // (`000101000000W`, `000101010000W`, Kaifa's `000101000001W`,
        // `000102000003W`: no P1 meter ran in 2000); 1 January of '70 is
        // the Unix epoch (`700101010000W`); and impossible dates
        // (`632525252525S`, `000000000000W`). Two compares on the common
        // path; the rest only for a stamp on 1 January.
        if t.year == 2000 || (t.month == 1 && t.day == 1 && t.year == 2070) || !t.is_possible() {
            return Some(Stamp::Placeholder);
        }
        Some(Stamp::Valid(t))
    }

    fn is_possible(&self) -> bool {
        (1..=12).contains(&self.month)
            && self.day >= 1
            && self.day <= days_in_month(self.year, self.month)
            && (0..24).contains(&self.hour)
            && (0..60).contains(&self.minute)
            && (0..60).contains(&self.second)
    }

    /// The civil date and time, without a zone.
    pub fn to_civil(&self) -> Option<jiff::civil::DateTime> {
        jiff::civil::DateTime::new(
            self.year,
            self.month,
            self.day,
            self.hour,
            self.minute,
            self.second,
            0,
        )
        .ok()
    }

    /// The instant this local time names in `tz`. An hour that occurs twice
    /// (autumn) is resolved by the DST flag: `S` is the first, `W` the second;
    /// without a flag the earlier one is taken. A local time skipped by a
    /// spring-forward gap is shifted forward (jiff's "compatible" rule).
    pub fn to_timestamp(&self, tz: &jiff::tz::TimeZone) -> Option<jiff::Timestamp> {
        let civil = self.to_civil()?;
        let ambiguous = tz.to_ambiguous_timestamp(civil);
        let resolved = match self.dst {
            Some(true) if ambiguous.is_ambiguous() => ambiguous.earlier(),
            Some(false) if ambiguous.is_ambiguous() => ambiguous.later(),
            _ => ambiguous.compatible(),
        };
        resolved.ok()
    }
}

fn days_in_month(year: i16, month: i8) -> i8 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => 0,
    }
}

/// A number with its unit as sent (`(0366.475*m3)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quantity<'a> {
    /// The number, exactly.
    pub value: Decimal,
    /// The unit as sent (`kWh`, `m3`, `degC`, `kvar`, …), `None` when absent.
    pub unit: Option<&'a str>,
}

/// One parsed `(…)` group: `value` and `unit` split at the first `*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Group<'a> {
    pub(crate) value: &'a [u8],
    pub(crate) unit: Option<&'a [u8]>,
}

impl<'a> Group<'a> {
    /// `()`, a placeholder for arrays of groups.
    pub(crate) const EMPTY: Group<'static> = Group {
        value: &[],
        unit: None,
    };

    /// Splits a group's contents `inner` at its first `*`, which the caller
    /// has found already (`star` indexes `inner`).
    #[inline(always)]
    pub(crate) fn split_at_star(inner: &'a [u8], star: Option<usize>) -> Group<'a> {
        match star {
            Some(star) => Group {
                value: &inner[..star],
                unit: Some(&inner[star + 1..]),
            },
            None => Group {
                value: inner,
                unit: None,
            },
        }
    }

    #[inline]
    pub(crate) fn quantity(&self) -> Option<Quantity<'a>> {
        let value = Decimal::parse(self.value)?;
        let unit = match self.unit {
            None => None,
            Some([]) => None,
            Some(u) => Some(unit_str(u)?),
        };
        Some(Quantity { value, unit })
    }

    pub(crate) fn stamp(&self) -> Option<Stamp> {
        if self.unit.is_some() {
            return None;
        }
        MeterTime::parse(self.value)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.value.is_empty() && self.unit.is_none_or(<[u8]>::is_empty)
    }
}

/// A unit as text: the common spellings without a UTF-8 check (the `&'static
/// str` has the same bytes), anything else checked; `None` when not UTF-8.
#[inline]
pub(crate) fn unit_str(unit: &[u8]) -> Option<&str> {
    Some(match unit {
        b"kW" => "kW",
        b"kWh" => "kWh",
        b"A" => "A",
        b"V" => "V",
        b"kvar" => "kvar",
        b"kvarh" => "kvarh",
        b"m3" => "m3",
        b"s" => "s",
        b"W" => "W",
        b"Wh" => "Wh",
        _ => return std::str::from_utf8(unit).ok(),
    })
}

/// Decodes hex-encoded text the way P1 meters use it (`96.1.1`, `96.13.0`, …):
/// only even-length hex that decodes to printable ASCII counts as text.
/// Returns `None` otherwise (Kaifa ids, plain digits of the IE.5 serial, odd
/// lengths): the caller keeps the value as sent.
pub fn decode_hex_text(text: &[u8]) -> Option<String> {
    if text.is_empty() || !text.len().is_multiple_of(2) {
        return None;
    }
    let mut out = String::with_capacity(text.len() / 2);
    for pair in text.chunks_exact(2) {
        let byte = (hex_digit(pair[0])? << 4) | hex_digit(pair[1])?;
        if !(0x20..0x7f).contains(&byte) {
            return None;
        }
        out.push(char::from(byte));
    }
    Some(out)
}

pub(crate) fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}
