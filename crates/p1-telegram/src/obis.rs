//! OBIS reduced identifiers (IEC 62056-61) as P1 telegrams write them.

use std::fmt;

/// An OBIS code `A-B:C.D.E` with an optional `F` group.
///
/// `F = 255` (written `.255` by the DSMR 4.x spec or `*255` by EasyMeter) means
/// "not used" and is dropped while parsing; any other `F` is kept and printed as
/// `*F`. Values are bytes: every group seen in the field fits (`E` has at most
/// two digits, channels are single digits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObisCode {
    /// Medium: 1 electricity, 0 abstract/general.
    pub a: u8,
    /// Channel: 0 for the meter itself, `n` for M-Bus channel `n` on `0-n:` lines.
    pub b: u8,
    /// Quantity (C group).
    pub c: u8,
    /// Processing (D group).
    pub d: u8,
    /// Tariff or value index (E group).
    pub e: u8,
    /// Historical value group; `None` when absent or 255.
    pub f: Option<u8>,
}

impl ObisCode {
    /// A code without an `F` group.
    pub const fn new(a: u8, b: u8, c: u8, d: u8, e: u8) -> Self {
        ObisCode {
            a,
            b,
            c,
            d,
            e,
            f: None,
        }
    }

    /// Parses the code part of a data line, tolerating the broken separators
    /// seen in the field: `:` between C, D and E (the DSMR 4 spec's
    /// `1-0:72:32.0`). Leading and trailing spaces are ignored.
    ///
    /// Returns `None` for anything else (`1,0:2.7.0` line noise, letters, a
    /// group over 255); the line is then kept with its code as written.
    pub fn parse(text: &[u8]) -> Option<ObisCode> {
        let text = trim_ascii(text);
        let mut i = 0;
        let a = number(text, &mut i)?;
        expect(text, &mut i, b'-')?;
        let b = number(text, &mut i)?;
        expect(text, &mut i, b':')?;
        let c = number(text, &mut i)?;
        separator(text, &mut i)?;
        let d = number(text, &mut i)?;
        separator(text, &mut i)?;
        let e = number(text, &mut i)?;
        let f = if i == text.len() {
            None
        } else {
            match text[i] {
                b'.' | b'*' => {
                    i += 1;
                    let f = number(text, &mut i)?;
                    (f != 255).then_some(f)
                }
                _ => return None,
            }
        };
        if i != text.len() {
            return None;
        }
        Some(ObisCode { a, b, c, d, e, f })
    }

    /// The M-Bus channel of a `0-n:` line with `n >= 1`, else `None`.
    pub fn channel(&self) -> Option<u8> {
        (self.a == 0 && self.b >= 1).then_some(self.b)
    }

    /// The code with `B` set to 0: `0-2:24.2.1` → `0-0:24.2.1`. Used to look up
    /// per-channel codes in tables.
    pub fn without_channel(&self) -> ObisCode {
        ObisCode { b: 0, ..*self }
    }

    /// `(C, D, E)`, the part that names the quantity.
    pub fn cde(&self) -> (u8, u8, u8) {
        (self.c, self.d, self.e)
    }
}

impl fmt::Display for ObisCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0; ObisCode::MAX_TEXT];
        f.write_str(self.format(&mut buf))
    }
}

impl ObisCode {
    /// The longest text [`ObisCode::format`] writes (`255-255:255.255.255*255`).
    pub const MAX_TEXT: usize = 23;

    /// Writes `A-B:C.D.E[*F]` (what `Display` prints) into `buf` and returns
    /// it, without `core::fmt`: the JSON writer and every reading name each
    /// data line's code.
    pub fn format<'b>(&self, buf: &'b mut [u8; ObisCode::MAX_TEXT]) -> &'b str {
        fn put(buf: &mut [u8], at: &mut usize, n: u8) {
            if n >= 100 {
                buf[*at] = b'0' + n / 100;
                *at += 1;
            }
            if n >= 10 {
                buf[*at] = b'0' + n / 10 % 10;
                *at += 1;
            }
            buf[*at] = b'0' + n % 10;
            *at += 1;
        }
        let mut at = 0;
        let groups = [
            (self.a, b'-'),
            (self.b, b':'),
            (self.c, b'.'),
            (self.d, b'.'),
        ];
        for (n, separator) in groups {
            put(buf, &mut at, n);
            buf[at] = separator;
            at += 1;
        }
        put(buf, &mut at, self.e);
        if let Some(f) = self.f {
            buf[at] = b'*';
            at += 1;
            put(buf, &mut at, f);
        }
        // Digits and separators only: ASCII.
        std::str::from_utf8(&buf[..at]).unwrap_or_default()
    }
}

fn number(text: &[u8], i: &mut usize) -> Option<u8> {
    let start = *i;
    let mut n: u32 = 0;
    while let Some(&c) = text.get(*i) {
        if !c.is_ascii_digit() || *i - start >= 3 {
            break;
        }
        n = n * 10 + u32::from(c - b'0');
        *i += 1;
    }
    if *i == start {
        return None;
    }
    u8::try_from(n).ok()
}

fn expect(text: &[u8], i: &mut usize, c: u8) -> Option<()> {
    (text.get(*i) == Some(&c)).then(|| *i += 1)
}

fn separator(text: &[u8], i: &mut usize) -> Option<()> {
    match text.get(*i) {
        Some(b'.' | b':') => {
            *i += 1;
            Some(())
        }
        _ => None,
    }
}

pub(crate) fn trim_ascii(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if first.is_ascii_whitespace() {
            s = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = s {
        if last.is_ascii_whitespace() {
            s = rest;
        } else {
            break;
        }
    }
    s
}
