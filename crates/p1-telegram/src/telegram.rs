//! One telegram: header, CRC, data lines with typed values.

use crate::crc::{crc16_arc, crc16_arc_crlf, parse_crc_text};
use crate::names::{SubmeterKind, channel_name, meter_name, unit_is};
use crate::obis::trim_ascii;
use crate::scan::{group_end, leading_digits};
use crate::value::{Decimal, Group, MeterTime, Quantity, Stamp, decode_hex_text, unit_str};
use crate::{Error, ObisCode};

/// What the CRC check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrcStatus {
    /// A CRC was present and matches.
    Valid,
    /// A CRC was present and matches the frame with CR put back before each
    /// LF: a recording whose CRs were all stripped (no line kept one). A frame
    /// where only some lines lost their CR is a [`CrcStatus::Mismatch`].
    ValidCrLfRestored,
    /// No CRC after `!` (Veitur, DSMR ≤ 3, IEC 62056-21), or no `!` line at all.
    Absent,
    /// A CRC was present and does not match; only with [`ParseOptions::check_crc`] off.
    Mismatch {
        /// The CRC printed by the meter.
        expected: u16,
        /// The CRC of the bytes received.
        computed: u16,
    },
}

impl CrcStatus {
    /// `"valid"`, `"valid_crlf_restored"`, `"absent"` or `"mismatch"`, as in
    /// the JSON output.
    pub fn as_str(&self) -> &'static str {
        match self {
            CrcStatus::Valid => "valid",
            CrcStatus::ValidCrLfRestored => "valid_crlf_restored",
            CrcStatus::Absent => "absent",
            CrcStatus::Mismatch { .. } => "mismatch",
        }
    }
}

/// How [`Telegram::parse`] treats a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseOptions {
    /// Reject a telegram whose CRC does not match (default). Off, it is kept
    /// with [`CrcStatus::Mismatch`].
    pub check_crc: bool,
}

impl Default for ParseOptions {
    fn default() -> Self {
        ParseOptions { check_crc: true }
    }
}

/// The offset of the first byte that is not printable ASCII, tab, CR or LF. The common case
/// (all text) is one branch-free pass the compiler vectorises.
fn first_non_text(frame: &[u8]) -> Option<usize> {
    let is_text = |b: u8| (0x20..0x7f).contains(&b) || matches!(b, b'\r' | b'\n' | b'\t');
    if frame.iter().fold(true, |all, &b| all & is_text(b)) {
        return None;
    }
    frame.iter().position(|&b| !is_text(b))
}

/// A typed value of a data line.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    /// `()`: no value (not zero), or a line with no group at all.
    Empty,
    /// A number, with its unit when one was sent.
    Number(Quantity<'a>),
    /// Text as sent. For known text codes (ids, messages) [`Object::text`]
    /// decodes hex where it yields printable ASCII.
    Text(&'a [u8]),
    /// A timestamp (`0-0:1.0.0`).
    Time(Stamp),
    /// Veitur's legacy `1-0:0.9.1(hhmmss)` local time of day.
    TimeOfDay {
        /// 0..=23.
        hour: i8,
        /// 0..=59.
        minute: i8,
        /// 0..=59.
        second: i8,
    },
    /// Veitur's legacy `1-0:0.9.2(YYMMDD)` local date.
    Date {
        /// Full year.
        year: i16,
        /// 1..=12.
        month: i8,
        /// 1..=31.
        day: i8,
    },
    /// `(capture time)(reading)`: DSMR 4/5 M-Bus readings, Belgian `24.2.3`
    /// gas and `1.6.0` monthly peak, DSMR ≤ 3 `24.3.0` gas with its value on
    /// the next line. `time` is `None` when the line has no stamp;
    /// `Some(Stamp::Placeholder)` when it has a "no time" stamp.
    Reading {
        /// When the submeter captured the value.
        time: Option<Stamp>,
        /// The value, `None` when empty.
        quantity: Option<Quantity<'a>>,
    },
    /// The power-failure log `(n)(log code)` + n × `(end)(duration)`.
    FailureLog {
        /// The count the meter printed.
        count: Option<i64>,
        /// The entries, in the order sent.
        events: Vec<FailureEvent<'a>>,
    },
    /// Belgian monthly peak history `0-0:98.1.0(n)(code)(code)` + n ×
    /// `(month)(peak time)(value)`.
    PeakHistory {
        /// The count the meter printed.
        count: Option<i64>,
        /// The entries, in the order sent.
        peaks: Vec<Peak<'a>>,
    },
    /// A billing snapshot `0-0:98.1.0(stamp)(register)(register)…` (Hungary:
    /// the registers of the last billing period, closed at `time`). Told from
    /// Belgium's [`Value::PeakHistory`] by its shape, never by market.
    BillingSnapshot {
        /// When the billing period closed.
        time: Option<Stamp>,
        /// The registers, in the order sent (`None` for an empty group).
        values: Vec<Option<Quantity<'a>>>,
    },
    /// Several groups in no layout we know (Luxembourg's
    /// `1-1:31.4.0(100*A)(-063*A)`, or a `0-0:98.1.0` line that is neither a
    /// peak history nor a billing snapshot): each group as a number when it
    /// is one (the JSON shows the others as sent).
    Groups(Vec<Option<Quantity<'a>>>),
}

/// One entry of the power-failure log.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FailureEvent<'a> {
    /// When the failure ended.
    pub end: Option<Stamp>,
    /// How long it lasted (64-bit: Kaifa sends more than 2³¹ s).
    pub duration: Option<Quantity<'a>>,
}

/// One month of the Belgian peak history.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Peak<'a> {
    /// The month (its first day).
    pub month: Option<Stamp>,
    /// When the peak happened.
    pub time: Option<Stamp>,
    /// The peak demand.
    pub quantity: Option<Quantity<'a>>,
}

/// One data line of a telegram, kept whether or not its code is known.
#[derive(Debug, Clone, PartialEq)]
pub struct Object<'a> {
    /// The parsed code; `None` when the code part is not a valid OBIS code
    /// (`1,0:2.7.0` line noise) or missing (a bare `(…)` line).
    pub code: Option<ObisCode>,
    /// The code part as written, trimmed.
    pub code_text: &'a [u8],
    /// The value part as sent: everything after the code on the line,
    /// junk after the last group included. An unset text buffer (one group
    /// of nothing but 0xFF bytes) is `()`.
    pub raw: &'a [u8],
    /// DSMR ≤ 3 gas: the `(value)` line that followed this line.
    pub continuation: Option<&'a [u8]>,
    /// The typed value.
    pub value: Value<'a>,
    /// The canonical name (docs/obis.md), `None` for codes we do not know.
    pub name: Option<&'static str>,
    /// Number of `(…)` groups on the line.
    pub groups: u16,
}

impl Object<'_> {
    /// A line with one group and nothing parsed yet: what the parse loop
    /// pushes for each line and the path that reads the line fills in place.
    const BLANK: Object<'static> = Object {
        code: None,
        code_text: b"",
        raw: b"",
        continuation: None,
        value: Value::Empty,
        name: None,
        groups: 1,
    };

    /// The M-Bus channel (B ≥ 1 on a `0-n:` line).
    pub fn channel(&self) -> Option<u8> {
        self.code.and_then(|c| c.channel())
    }

    /// The value as text: hex-decoded for known text codes where that gives
    /// printable ASCII, otherwise the bytes as sent (lossily as UTF-8).
    /// `None` for values that are not text.
    pub fn text(&self) -> Option<std::borrow::Cow<'_, str>> {
        let Value::Text(bytes) = self.value else {
            return None;
        };
        if self.code.is_some_and(|c| is_text_code(&c))
            && let Some(decoded) = decode_hex_text(bytes)
        {
            return Some(std::borrow::Cow::Owned(decoded));
        }
        Some(String::from_utf8_lossy(bytes))
    }

    /// The number of a [`Value::Number`] or [`Value::Reading`].
    pub fn quantity(&self) -> Option<Quantity<'_>> {
        match &self.value {
            Value::Number(q) => Some(*q),
            Value::Reading { quantity, .. } => *quantity,
            _ => None,
        }
    }
}

/// An M-Bus submeter found on a channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submeter<'a> {
    /// The channel number (B of `0-n:`).
    pub channel: u8,
    /// What it measures.
    pub kind: SubmeterKind,
    /// EN 13757-3 device type from `0-n:24.1.0`, when sent and numeric.
    pub device_type: Option<i64>,
    /// `0-n:96.1.0` / `0-n:96.1.1` as sent (hex), when sent and not empty.
    pub equipment_id: Option<&'a [u8]>,
}

/// A parsed telegram borrowing the frame's bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Telegram<'a> {
    /// The whole frame this telegram was parsed from, `/` through the `!`
    /// line: parsing it again gives this telegram.
    pub frame: &'a [u8],
    /// The identification line without `/` and line end (`ISk5\2MIE5E-200`).
    pub header: &'a [u8],
    /// What the CRC check found.
    pub crc: CrcStatus,
    /// Every data line, in order.
    pub objects: Vec<Object<'a>>,
    /// The M-Bus submeters, by channel number.
    pub submeters: Vec<Submeter<'a>>,
}

impl<'a> Telegram<'a> {
    /// Parses one frame (from `/` through the `!` line, as the
    /// [`crate::Decoder`] yields it, or without a `!` line when
    /// `terminated` is false).
    ///
    /// # Errors
    /// [`Error::CrcMismatch`] / [`Error::InvalidCrc`] for a bad CRC (unless
    /// `check_crc` is off), [`Error::NoHeader`] when `frame` does not start
    /// with `/`. Odd data lines are never errors: they are kept.
    pub fn parse(frame: &'a [u8], options: ParseOptions) -> Result<Telegram<'a>, Error> {
        if frame.first() != Some(&b'/') {
            return Err(Error::NoHeader);
        }
        let header_end = memchr::memchr(b'\n', frame).unwrap_or(frame.len());
        let header = trim_line_end(&frame[1..header_end]);

        // The '!' line: the last line of the frame when it starts with '!'.
        let body_end_guess = frame.len();
        let without_final_lf = match frame.last() {
            Some(b'\n') => &frame[..frame.len() - 1],
            _ => frame,
        };
        let last_line_start = memchr::memrchr(b'\n', without_final_lf).map_or(0, |i| i + 1);
        let (body, crc) = if last_line_start > 0 && frame.get(last_line_start) == Some(&b'!') {
            let bang = last_line_start;
            let text = trim_ascii(&frame[bang + 1..]);
            let crc = match parse_crc_text(text) {
                Ok(None) => CrcStatus::Absent,
                Ok(Some(expected)) => check(&frame[..=bang], expected),
                Err(()) => {
                    if options.check_crc {
                        return Err(Error::InvalidCrc {
                            text: String::from_utf8_lossy(text).into_owned(),
                        });
                    }
                    CrcStatus::Absent
                }
            };
            if let CrcStatus::Mismatch { expected, computed } = crc
                && options.check_crc
            {
                return Err(Error::CrcMismatch { expected, computed });
            }
            (&frame[header_end.min(bang)..bang], crc)
        } else {
            (&frame[header_end.min(body_end_guess)..], CrcStatus::Absent)
        };
        // Nothing vouches for the bytes of a telegram without a CRC: one holding a byte no
        // meter sends is noise (or half a telegram glued to garbage), not a reading.
        if options.check_crc
            && crc == CrcStatus::Absent
            && let Some(at) = first_non_text(frame)
        {
            return Err(Error::Garbled {
                at,
                byte: frame[at],
            });
        }

        // A telegram line is ~25 bytes: room for every line, in one allocation.
        let mut objects = Vec::with_capacity(body.len() / 24 + 4);
        let mut start = 0;
        while start < body.len() {
            // Every line's object is pushed here, blank, and filled in place
            // by the path that reads the line (popped again for a line that
            // makes none). One push for all paths: the compiler inlines it.
            let object = objects.push_mut(Object::BLANK);
            // Most lines are `A-B:C.D.E(value*unit)`: parsed in one pass
            // that also finds the line end.
            if let Some(next) = fast_line(body, start, object) {
                start = next;
                continue;
            }
            // The power-failure log: in most DSMR telegrams, and the dearest
            // line of all the general way (120 ns of the spec example's 900).
            // Out of `fast_line`, whose registers a call there would cost.
            if body[start..].starts_with(FAILURE_LOG)
                && let Some(len) = failure_log_line(&body[start..], object)
            {
                start += len;
                continue;
            }
            let end = memchr::memchr(b'\n', &body[start..]).map_or(body.len(), |i| start + i);
            let line = trim_line_end(&body[start..end]);
            start = end + 1;
            if line.iter().all(u8::is_ascii_whitespace) {
                objects.pop();
                continue;
            }
            if line[0] == b'(' && objects.len() >= 2 {
                // A bare group: DSMR ≤ 3 puts the gas value on the line after
                // `0-n:24.3.0(…)(m3)`. Attach it there; otherwise keep it as a
                // line without a code.
                let previous = objects.len() - 2;
                if attach_continuation(&mut objects[previous], line) {
                    objects.pop();
                    continue;
                }
            }
            if let Some(object) = objects.last_mut() {
                parse_line_into(line, object);
            }
        }

        let submeters = find_submeters(&objects);
        for object in &mut objects {
            object.name = object.code.as_ref().and_then(|code| match code.channel() {
                Some(channel) => {
                    let kind = submeters
                        .iter()
                        .find(|s| s.channel == channel)
                        .map_or(SubmeterKind::Unknown, |s| s.kind);
                    channel_name(code, kind, usize::from(object.groups))
                }
                // 98.1.0 is named by its shape (`profile_98`).
                None if code.c == 98 => match object.value {
                    Value::BillingSnapshot { .. } => Some("billing_snapshot"),
                    Value::Groups(_) if code.cde() == (98, 1, 0) => None,
                    _ => meter_name(code),
                },
                None => meter_name(code),
            });
        }
        Ok(Telegram {
            frame,
            header,
            crc,
            objects,
            submeters,
        })
    }

    /// The first object with this code (channel included).
    pub fn get(&self, code: ObisCode) -> Option<&Object<'a>> {
        self.objects.iter().find(|o| o.code == Some(code))
    }

    /// The first object with this canonical name.
    pub fn by_name(&self, name: &str) -> Option<&Object<'a>> {
        self.objects.iter().find(|o| o.name == Some(name))
    }

    /// The header as text (lossy for non-UTF-8 bytes).
    pub fn header_str(&self) -> std::borrow::Cow<'a, str> {
        String::from_utf8_lossy(self.header)
    }

    /// The meter's own clock: `0-0:1.0.0` (or the heat meters' `0-0:1.1.0`),
    /// else Veitur's legacy `1-0:0.9.2` date + `1-0:0.9.1` time. Placeholder
    /// stamps give `None`.
    pub fn meter_local_time(&self) -> Option<MeterTime> {
        for code in [ObisCode::new(0, 0, 1, 0, 0), ObisCode::new(0, 0, 1, 1, 0)] {
            if let Some(Object {
                value: Value::Time(stamp),
                ..
            }) = self.get(code)
            {
                return match stamp {
                    Stamp::Valid(t) => Some(*t),
                    Stamp::Placeholder => None,
                };
            }
        }
        let date = self.get(ObisCode::new(1, 0, 0, 9, 2))?;
        let time = self.get(ObisCode::new(1, 0, 0, 9, 1))?;
        match (&date.value, &time.value) {
            (
                Value::Date { year, month, day },
                Value::TimeOfDay {
                    hour,
                    minute,
                    second,
                },
            ) => Some(MeterTime {
                year: *year,
                month: *month,
                day: *day,
                hour: *hour,
                minute: *minute,
                second: *second,
                dst: None,
            }),
            _ => None,
        }
    }

    /// Whether the meter's DST flag (`S` summer, `W` winter) contradicts `tz`
    /// at the instant its clock names: summer time flagged in winter, or in a
    /// zone without summer time. No flag, no time, or the repeated autumn hour
    /// (which the flag itself resolves) never does. The time is read in the
    /// zone either way: see [`MeterTime::to_timestamp`].
    pub fn dst_flag_contradicts(&self, tz: &jiff::tz::TimeZone) -> bool {
        let Some(local) = self.meter_local_time() else {
            return false;
        };
        let (Some(summer), Some(at)) = (local.dst, local.to_timestamp(tz)) else {
            return false;
        };
        tz.to_offset_info(at).dst().is_dst() != summer
    }

    /// The DSMR version of `1-3:0.2.8` (`42`, `50`), when sent as a number.
    /// DSMR 4.0 and later require a CRC.
    pub fn dsmr_version(&self) -> Option<i64> {
        self.get(ObisCode::new(1, 3, 0, 2, 8))?
            .quantity()?
            .value
            .as_integer()
    }

    /// A DSMR 4.x or 5 telegram (`1-3:0.2.8(40)` and later) that came
    /// without the CRC its standard requires: its version.
    pub fn missing_required_crc(&self) -> Option<i64> {
        let version = self.dsmr_version()?;
        (self.crc == CrcStatus::Absent && version >= 40).then_some(version)
    }

    /// [`Telegram::meter_local_time`] as an instant, reading the local time in `tz`.
    pub fn meter_time(&self, tz: &jiff::tz::TimeZone) -> Option<jiff::Timestamp> {
        self.meter_local_time()?.to_timestamp(tz)
    }

    /// The IANA zone of the country this meter most likely stands in, for
    /// reading its local timestamps when the user configured none. From the
    /// header's maker code and the codes present:
    ///
    /// * Veitur (legacy `1-0:0.9.x` clock, no `0-0:1.0.0`): `Atlantic/Reykjavik`
    ///   (UTC all year);
    /// * Fluvius / e-MUCS (`FLU`, `0-0:96.1.4`) or an Iskra IE.5 with a
    ///   `0-0:1.0.0` clock: `Europe/Brussels`;
    /// * `Lux`: `Europe/Luxembourg`; `ESO`: `Europe/Vilnius`;
    ///   Aidon, Landis+Gyr Swedish H1, Kamstrup's Swedish meters (`ADN`, `ELL`,
    ///   `AIDON`, `KAM`): `Europe/Stockholm`; E.ON Hungary's AUX/Sanxing and
    ///   Sagemcom meters (`AUX`, `SAG`): `Europe/Budapest`; the Austrian Sagemcom
    ///   T210-D-r (`EST`): `Europe/Vienna`;
    ///   EasyMeter and other German gateways (`ESY`, `EBZ`, `EMH`): `Europe/Berlin`;
    /// * everything else (DSMR): `Europe/Amsterdam`.
    pub fn default_zone(&self) -> &'static str {
        let maker: Vec<u8> = self
            .header
            .iter()
            .take(3)
            .map(u8::to_ascii_uppercase)
            .collect();
        let has = |code| self.get(code).is_some();
        let legacy_clock = has(ObisCode::new(1, 0, 0, 9, 1)) || has(ObisCode::new(1, 0, 0, 9, 2));
        let modern_clock = has(ObisCode::new(0, 0, 1, 0, 0));
        match maker.as_slice() {
            _ if legacy_clock && !modern_clock => "Atlantic/Reykjavik",
            b"FLU" => "Europe/Brussels",
            _ if has(ObisCode::new(0, 0, 96, 1, 4)) => "Europe/Brussels",
            b"ISK"
                if self
                    .header
                    .windows(3)
                    .any(|w| w.eq_ignore_ascii_case(b"IE5")) =>
            {
                "Europe/Brussels"
            }
            b"LUX" => "Europe/Luxembourg",
            b"ESO" => "Europe/Vilnius",
            b"ADN" | b"AID" | b"ELL" | b"KAM" => "Europe/Stockholm",
            b"AUX" | b"SAG" => "Europe/Budapest",
            b"EST" => "Europe/Vienna",
            b"ESY" | b"EBZ" | b"EMH" => "Europe/Berlin",
            _ => "Europe/Amsterdam",
        }
    }

    /// The meter's identity: `0-0:96.1.1` decoded, else `0-0:96.1.0`, else
    /// `1-0:0.0.0`, else `0-0:42.0.0`.
    pub fn meter_id(&self) -> Option<String> {
        [
            ObisCode::new(0, 0, 96, 1, 1),
            ObisCode::new(0, 0, 96, 1, 0),
            ObisCode::new(1, 0, 0, 0, 0),
            ObisCode::new(0, 0, 42, 0, 0),
        ]
        .into_iter()
        .find_map(|code| {
            let text = self.get(code)?.text()?;
            let text = text.trim();
            (!text.is_empty() && !text.bytes().all(|b| b == b'0')).then(|| text.to_owned())
        })
    }
}

fn check(covered: &[u8], expected: u16) -> CrcStatus {
    let computed = crc16_arc(covered);
    if computed == expected {
        return CrcStatus::Valid;
    }
    // A recording whose CRs were all stripped: the meter computed its CRC
    // over CR LF. Only when no line kept its CR: a frame that lost a single
    // CR was damaged on the way, which is what the CRC is there to catch.
    if memchr::memchr(b'\r', covered).is_none()
        && memchr::memchr(b'\n', covered).is_some()
        && crc16_arc_crlf(covered) == expected
    {
        return CrcStatus::ValidCrLfRestored;
    }
    CrcStatus::Mismatch { expected, computed }
}

#[inline]
fn trim_line_end(line: &[u8]) -> &[u8] {
    // Lines come split at '\n': at most a CR (or, rarely, several) is left.
    match line {
        [rest @ .., b'\r'] if !rest.ends_with(b"\r") && !rest.ends_with(b"\n") => rest,
        [.., b'\r' | b'\n'] => {
            let keep = line
                .iter()
                .rposition(|&b| b != b'\r' && b != b'\n')
                .map_or(0, |i| i + 1);
            &line[..keep]
        }
        _ => line,
    }
}

/// Codes whose value is text (often hex-encoded), never a number.
pub(crate) fn is_text_code(code: &ObisCode) -> bool {
    matches!(
        (code.a, code.b, code.c, code.d, code.e),
        (0, _, 96, 1, 0)
            | (0, _, 96, 1, 1)
            | (0, 0, 96, 1, 255)
            | (0, 0, 42, 0, 0)
            | (1, 0, 0, 0, 0)
            | (0, 0, 96, 13, _)
            | (1, 0, 96, 5, 5)
    )
}

/// Iterates the `(…)` groups of a value part; stops at the first byte that
/// does not open a group (junk) or at an unclosed group.
#[derive(Clone)]
pub(crate) struct Groups<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Groups<'a> {
    type Item = Group<'a>;

    // Inlined: returned through memory, the group was stored in pieces and
    // reloaded whole, a store-forwarding stall per group.
    #[inline(always)]
    fn next(&mut self) -> Option<Group<'a>> {
        if self.rest.first() != Some(&b'(') {
            return None;
        }
        let (close, star) = group_end(&self.rest[1..], false)?;
        let inner = &self.rest[1..close + 1];
        self.rest = &self.rest[close + 2..];
        Some(Group::split_at_star(inner, star))
    }
}

pub(crate) fn groups(raw: &[u8]) -> Groups<'_> {
    Groups { rest: raw }
}

/// Fills `object`, the blank the parse loop pushed for this line, with the
/// code `code` and the value part that runs from the first `(` at
/// `line[open]` to the `)` at `line[close]`, and returns it, for the caller
/// to set the value (and the group count, if not 1). Objects are filled in
/// place: assembled on the stack and pushed, they made the CPU reload bytes
/// it had just stored narrower, a store-forwarding stall per line (18 % of
/// the time).
#[inline(always)]
fn fill_line<'o, 'a>(
    object: &'o mut Object<'a>,
    code: ObisCode,
    line: &'a [u8],
    open: usize,
    close: usize,
) -> &'o mut Object<'a> {
    object.code = Some(code);
    object.code_text = &line[..open];
    // `..close + 1`, not `..=close`: the inclusive range is an out-of-line
    // call with its own overflow check.
    object.raw = &line[open..close + 1];
    object
}

/// The common line, `A-B:C.D.E(value[*unit])` and its line end, starting at
/// `body[start]`, in one forward pass: no line search, no trimming, no second
/// look at the group. Fills the blank `object` and returns where the next
/// line starts; writes nothing when it returns `None`.
/// `None` sends the line to [`parse_line`], which handles every line and
/// gives the same result for the ones this takes (property-tested).
#[inline]
fn fast_line<'a>(body: &'a [u8], start: usize, object: &mut Object<'a>) -> Option<usize> {
    /// One code group of 1–3 digits and the byte after it, which is consumed
    /// too. `None` for no digit, a fourth digit, a value over 255, or fewer
    /// than 4 bytes left (the general path takes such a line). One length
    /// check per group, not one per byte.
    #[inline(always)]
    fn field(s: &mut &[u8]) -> Option<(u8, u8)> {
        let [c0, c1, c2, c3, ..] = **s else {
            return None;
        };
        let d0 = c0.wrapping_sub(b'0');
        if d0 > 9 {
            return None;
        }
        let d1 = c1.wrapping_sub(b'0');
        if d1 > 9 {
            *s = &s[2..];
            return Some((d0, c1));
        }
        // Two digits: at most 99, no overflow.
        let n = d0 * 10 + d1;
        let d2 = c2.wrapping_sub(b'0');
        if d2 > 9 {
            *s = &s[3..];
            return Some((n, c2));
        }
        if c3.wrapping_sub(b'0') <= 9 {
            return None; // a fourth digit: not an OBIS group
        }
        *s = &s[4..];
        let n = u8::try_from(u32::from(n) * 10 + u32::from(d2)).ok()?;
        Some((n, c3))
    }
    let line = &body[start..];
    let mut s = line;
    // `A-B:` is one digit each on nearly every line (`1-0:`, `0-0:`, `0-1:`):
    // one 4-byte compare instead of two group reads.
    let (a, b) = match line.first_chunk::<4>() {
        Some(&[a @ b'0'..=b'9', b'-', b @ b'0'..=b'9', b':']) => {
            s = &line[4..];
            (a - b'0', b - b'0')
        }
        _ => {
            let (a, t) = field(&mut s)?;
            if t != b'-' {
                return None;
            }
            let (b, t) = field(&mut s)?;
            if t != b':' {
                return None;
            }
            (a, b)
        }
    };
    let (c, t) = field(&mut s)?;
    if t != b'.' && t != b':' {
        return None;
    }
    let (d, t) = field(&mut s)?;
    if t != b'.' && t != b':' {
        return None;
    }
    let (e, t) = field(&mut s)?;
    let f = match t {
        b'(' => None,
        b'.' | b'*' => {
            let (f, t) = field(&mut s)?;
            if t != b'(' {
                return None;
            }
            (f != 255).then_some(f)
        }
        _ => return None,
    };
    // `s` starts after the '('.
    let group_and_rest = s;
    let open = line.len() - s.len() - 1;
    let code = ObisCode { a, b, c, d, e, f };
    // The line end after the group's ')' at `close_at`: its length, or `None`
    // for more groups, junk or a lone CR (the general path's lines).
    #[inline(always)]
    fn line_end(after_open: &[u8], close_at: usize) -> Option<usize> {
        match after_open.get(close_at..)? {
            [b')'] => Some(0),
            [b')', b'\n', ..] => Some(1),
            [b')', b'\r', b'\n', ..] => Some(2),
            _ => None,
        }
    }
    // Each path fills the blank object with `fill_line`.

    // An M-Bus reading, `(YYMMDDhhmmssX)(number[*unit])` (DSMR 4 and 5: the
    // gas meter of nearly every telegram), both groups in one pass too. The
    // codes whose two groups mean something else go the general way.
    if let Some(&[b')', b'(']) = group_and_rest.get(13..15)
        && !matches!(
            (a, b, c, d, e),
            (1, 0, 99, 97, 0) | (0, 0, 98, 1, 0) | (0, _, 24, 3, 0)
        )
        && let Some(stamp) = MeterTime::parse(&group_and_rest[..13])
        && let Some((number_close, mantissa, scale, unit)) = number_group(&group_and_rest[15..])
    {
        let close_at = 15 + number_close;
        let close = open + 1 + close_at;
        let next = close + 1 + line_end(group_and_rest, close_at)?;
        let object = fill_line(object, code, line, open, close);
        object.groups = 2;
        let quantity = Quantity {
            value: Decimal::from_parts(mantissa, scale),
            unit,
        };
        set_value(
            object,
            Value::Reading {
                time: Some(stamp),
                quantity: reading_quantity(stamp, Some(quantity)),
            },
        );
        return Some(start + next);
    }
    // A number first, in one pass that also finds the unit and the ')'; any
    // other value, and codes that may hold text or times, the general way.
    let number = if may_hold_text_or_time(c, d) {
        None
    } else {
        number_group(group_and_rest)
    };
    if let Some((close_at, mantissa, scale, unit)) = number {
        let close = open + 1 + close_at;
        let next = close + 1 + line_end(group_and_rest, close_at)?;
        let object = fill_line(object, code, line, open, close);
        set_value(
            object,
            Value::Number(Quantity {
                value: Decimal::from_parts(mantissa, scale),
                unit,
            }),
        );
        return Some(start + next);
    }
    // The group ends at ')'; a line end first means an unclosed group.
    let (close_at, star) = group_end(group_and_rest, true)?;
    let close = open + 1 + close_at;
    let next = close + 1 + line_end(group_and_rest, close_at)?;
    let group = Group::split_at_star(&group_and_rest[..close_at], star);
    let object = fill_line(object, code, line, open, close);
    // Only C groups 0, 1, 42 and 96 hold text, times or dates
    // (`is_text_code`, `single_typed`); every other line is a number.
    if matches!(c, 0 | 1 | 42 | 96) {
        set_single_typed(object, &code, group);
    } else {
        set_value(object, single(group));
    }
    Some(start + next)
}

/// Stores the value of a blank object just pushed. Its old value is
/// `Value::Empty`, which owns nothing: forgetting it instead of dropping it
/// saves a call to the drop glue per line (the Vec push is out of line, so
/// the compiler cannot see the blank).
#[inline(always)]
fn set_value<'a>(object: &mut Object<'a>, value: Value<'a>) {
    debug_assert_eq!(object.value, Value::Empty);
    std::mem::forget(std::mem::replace(&mut object.value, value));
}

/// How the power-failure log's line starts.
const FAILURE_LOG: &[u8] = b"1-0:99.97.0(";

/// The power-failure log `1-0:99.97.0(n)(log code)(end)(duration)…` whose
/// ends are `YYMMDDhhmmssX` stamps and durations numbers, at the start of
/// `line`: fills the blank `object` and returns the line's length with its
/// line end; `None` (nothing written) for any other shape, which the general
/// path takes.
#[inline(never)]
fn failure_log_line<'a>(line: &'a [u8], object: &mut Object<'a>) -> Option<usize> {
    let open = FAILURE_LOG.len() - 1;
    let code = ObisCode::new(1, 0, 99, 97, 0);
    let (count_close, mantissa, scale, _) = number_group(&line[open + 1..])?;
    let count = (scale == 0).then_some(mantissa);
    // The log code's group, skipped as the general path skips it.
    let log_code = &line[open + 1 + count_close + 1..];
    if log_code.first() != Some(&b'(') {
        return None;
    }
    let (log_close, _) = group_end(&log_code[1..], true)?;
    if log_code[1 + log_close] != b')' {
        return None;
    }
    let mut rest = &log_code[1 + log_close + 1..];
    // `(YYMMDDhhmmssX)(digits*s)` is 29 bytes and more.
    let mut events = Vec::with_capacity(rest.len().min(1024) / 28 + 1);
    while rest.first() == Some(&b'(') {
        let Some(&[b')', b'(']) = rest.get(14..16) else {
            return None;
        };
        let end = MeterTime::parse(&rest[1..14])?;
        let (close, mantissa, scale, unit) = number_group(&rest[16..])?;
        events.push(FailureEvent {
            end: Some(end),
            duration: event_duration(
                Some(end),
                Some(Quantity {
                    value: Decimal::from_parts(mantissa, scale),
                    unit,
                }),
            ),
        });
        rest = &rest[16 + close + 1..];
    }
    let line_end = match rest {
        [] => 0,
        [b'\n', ..] => 1,
        [b'\r', b'\n', ..] => 2,
        _ => return None,
    };
    let len = line.len() - rest.len();
    object.code = Some(code);
    object.code_text = &line[..open];
    object.raw = &line[open..len];
    object.groups = u16::try_from(2 + 2 * events.len()).unwrap_or(u16::MAX);
    set_value(object, Value::FailureLog { count, events });
    Some(len + line_end)
}

/// How many groups the general path keeps on the stack; a line with more
/// (only a long failure log or peak history) is scanned again instead.
const STACK_GROUPS: usize = 16;

/// Whether a code with these C and D groups may hold text or a time
/// ([`is_text_code`], the time and date codes of [`single_typed`]); every
/// other code's single group is read as a number.
#[inline(always)]
fn may_hold_text_or_time(c: u8, d: u8) -> bool {
    matches!(
        (c, d),
        (0, 0) | (0, 9) | (1, 0) | (1, 1) | (42, 0) | (96, 1) | (96, 5) | (96, 13)
    )
}

/// A group holding a number, `[+-]digits[.digits][*unit])` with at most 18
/// characters after the sign, read from `rest` (the bytes after the `(`) in
/// one pass: the digits, then the unit up to the `)`. Returns the index of
/// the `)` and the number, the same as [`single`] gives for that group; `None`
/// for anything else (text, a time, a long or odd number, a non-UTF-8 unit,
/// a line end before the `)`), which the caller parses the general way.
#[inline(always)]
fn number_group(rest: &[u8]) -> Option<NumberGroup<'_>> {
    let (negative, sign, digits) = match rest {
        [b'-', tail @ ..] => (true, 1, tail),
        [b'+', tail @ ..] => (false, 1, tail),
        _ => (false, 0, rest),
    };
    // Eight bytes at a time, without a loop per digit (whose exit the branch
    // predictor misses on every value): the whole part, then what follows
    // its '.', picked or dropped without a branch.
    // 16 bytes: the whole part's word and, after at most 7 digits and a
    // point, the fraction's. Fewer only at the very end of the body.
    let Some(head) = digits.get(..16).and_then(<[u8]>::first_chunk::<8>) else {
        return number_group_scalar(rest);
    };
    let (whole, int) = leading_digits(u64::from_le_bytes(*head));
    if whole == 8 {
        return number_group_wide(rest);
    }
    let after_whole = digits[whole];
    let Some(fraction_word) = digits[whole + 1..].first_chunk::<8>() else {
        return number_group_scalar(rest);
    };
    let (scale, fraction) = leading_digits(u64::from_le_bytes(*fraction_word));
    let point = after_whole == b'.';
    if point && scale == 8 {
        return number_group_scalar(rest);
    }
    let (scale, fraction) = if point { (scale, fraction) } else { (0, 0) };
    let end = if point { whole + 1 + scale } else { whole };
    if whole + scale == 0 {
        return None;
    }
    // At most 7 + 7 digits: no overflow.
    let mantissa = (int * POW10_U64[scale] + fraction) as i64;
    finish_number_group(rest, negative, mantissa, scale, sign + end)
}

/// [`number_group`] for a whole part of 8 to 15 digits (the failure log's
/// `0000000240` seconds, Kaifa's counters): two words for the whole part,
/// then the fraction's word as there.
#[inline(never)]
fn number_group_wide(rest: &[u8]) -> Option<NumberGroup<'_>> {
    let (negative, sign, digits) = match rest {
        [b'-', tail @ ..] => (true, 1, tail),
        [b'+', tail @ ..] => (false, 1, tail),
        _ => (false, 0, rest),
    };
    let (Some(high), Some(low)) = (
        digits.first_chunk::<8>(),
        digits.get(8..).and_then(<[u8]>::first_chunk::<8>),
    ) else {
        return number_group_scalar(rest);
    };
    let (high_digits, high) = leading_digits(u64::from_le_bytes(*high));
    let (low_digits, low) = leading_digits(u64::from_le_bytes(*low));
    if high_digits != 8 || low_digits == 8 {
        return number_group_scalar(rest);
    }
    let whole = 8 + low_digits;
    // At most 15 digits.
    let int = high * POW10_U64[low_digits] + low;
    let after_whole = digits[whole];
    let Some(fraction_word) = digits[whole + 1..].first_chunk::<8>() else {
        return number_group_scalar(rest);
    };
    let (scale, fraction) = leading_digits(u64::from_le_bytes(*fraction_word));
    let point = after_whole == b'.';
    let (scale, fraction) = if point { (scale, fraction) } else { (0, 0) };
    // 18 digits at most, as the general path reads them.
    if whole + scale > 18 || scale == 8 {
        return number_group_scalar(rest);
    }
    let end = if point { whole + 1 + scale } else { whole };
    // At most 18 digits: no overflow.
    let mantissa = (int * POW10_U64[scale] + fraction) as i64;
    finish_number_group(rest, negative, mantissa, scale, sign + end)
}

/// What [`number_group`] found: the index of the `)`, the mantissa and scale
/// of the [`Decimal`], and the unit. Scalars, not a [`Value`]: see `fast_line`.
type NumberGroup<'a> = (usize, i64, u8, Option<&'a str>);

/// 10^n for the digit counts [`number_group`] sees.
const POW10_U64: [u64; 8] = [1, 10, 100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000];

/// After the number of a group (`rest[..value_end]`): a `)`, or a `*`, the
/// unit and the `)`.
#[inline(always)]
fn finish_number_group(
    rest: &[u8],
    negative: bool,
    mantissa: i64,
    scale: usize,
    value_end: usize,
) -> Option<NumberGroup<'_>> {
    let mantissa = if negative { -mantissa } else { mantissa };
    // At most 18 digits: the scale fits.
    let scale = scale as u8;
    match *rest.get(value_end)? {
        b')' => Some((value_end, mantissa, scale, None)),
        b'*' => {
            let unit_start = value_end + 1;
            let len = rest
                .get(unit_start..)?
                .iter()
                .position(|&b| b == b')' || b == b'\n')?;
            let close = unit_start + len;
            if rest[close] != b')' {
                return None;
            }
            let unit = match &rest[unit_start..close] {
                [] => None,
                u => Some(unit_str(u)?),
            };
            Some((close, mantissa, scale, unit))
        }
        _ => None,
    }
}

/// [`number_group`] a byte at a time, for the rare group it does not take
/// word-wise (8 or more digits in a row, or the end of the body near).
#[cold]
fn number_group_scalar(rest: &[u8]) -> Option<NumberGroup<'_>> {
    let (negative, sign, digits) = match rest {
        [b'-', tail @ ..] => (true, 1, tail),
        [b'+', tail @ ..] => (false, 1, tail),
        _ => (false, 0, rest),
    };
    // 19 bytes: 18 characters at most, and the byte after them. Nineteen
    // digits in a row overflow the mantissa (hence the wrapping arithmetic),
    // but then no byte follows within the window and the group is refused.
    let window = &digits[..digits.len().min(19)];
    let mut mantissa: i64 = 0;
    let mut i = 0;
    while let Some(&ch) = window.get(i) {
        let d = ch.wrapping_sub(b'0');
        if d > 9 {
            break;
        }
        mantissa = mantissa.wrapping_mul(10).wrapping_add(i64::from(d));
        i += 1;
    }
    let whole = i;
    let mut scale = 0;
    if window.get(i) == Some(&b'.') {
        i += 1;
        let first = i;
        while let Some(&ch) = window.get(i) {
            let d = ch.wrapping_sub(b'0');
            if d > 9 {
                break;
            }
            mantissa = mantissa.wrapping_mul(10).wrapping_add(i64::from(d));
            i += 1;
        }
        scale = i - first;
    }
    // No byte after the digits within 19: too long (or the body ended).
    let &after = window.get(i)?;
    if whole + scale == 0 {
        return None;
    }
    // At most 18 characters: at most 18 digits, no overflow, scale <= 18.
    let _ = after;
    finish_number_group(rest, negative, mantissa, scale, sign + i)
}

/// Parses any line (the general path; [`fast_line`] takes the common ones).
#[cfg(test)]
fn parse_line(line: &[u8]) -> Object<'_> {
    let mut object = Object::BLANK;
    parse_line_into(line, &mut object);
    object
}

/// [`parse_line`] into a blank object.
fn parse_line_into<'a>(line: &'a [u8], object: &mut Object<'a>) {
    let open = line.iter().position(|&b| b == b'(').unwrap_or(line.len());
    let code_text = trim_ascii(&line[..open]);
    let raw = &line[open..];
    let code = ObisCode::parse(code_text);
    // Scan the groups once, keeping the first STACK_GROUPS.
    let mut kept = [Group::EMPTY; STACK_GROUPS];
    let mut count = 0;
    for g in groups(raw) {
        if let Some(slot) = kept.get_mut(count) {
            *slot = g;
        }
        count += 1;
    }
    let value = if count <= STACK_GROUPS {
        let kept = kept[..count].iter().copied();
        match code {
            Some(code) => typed_value(&code, kept, count),
            None => untyped_value(kept, count),
        }
    } else {
        match code {
            Some(code) => typed_value(&code, groups(raw), count),
            None => untyped_value(groups(raw), count),
        }
    };
    // An unset text buffer is shown as empty (`set_single_typed` does the same).
    let raw = if count == 1 && matches!(value, Value::Empty) && is_unset_buffer(kept[0].value) {
        UNSET_RAW
    } else {
        raw
    };
    object.code = code;
    object.code_text = code_text;
    object.raw = raw;
    object.groups = u16::try_from(count).unwrap_or(u16::MAX);
    set_value(object, value);
}

/// The value of a line without a valid code: its `count` groups are `groups`.
fn untyped_value<'a>(mut groups: impl Iterator<Item = Group<'a>>, count: usize) -> Value<'a> {
    match count {
        0 => Value::Empty,
        1 => groups.next().map_or(Value::Empty, |g| single(g)),
        _ => Value::Groups(groups.map(|g| g.quantity()).collect()),
    }
}

#[inline(always)]
fn single(g: Group<'_>) -> Value<'_> {
    if g.is_empty() {
        return Value::Empty;
    }
    match g.quantity() {
        Some(q) => Value::Number(q),
        None => Value::Text(g.value),
    }
}

/// [`single_typed`] written into a blank object's value. Out of line, with
/// the value built in place: returned from a call, it came back through
/// memory the caller then reloaded wider (a store-forwarding stall).
#[inline(never)]
fn set_single_typed<'a>(object: &mut Object<'a>, code: &ObisCode, first: Group<'a>) {
    // An unset text buffer: no value, shown as `()`. Decided before the value
    // is stored: reading the stored value back would stall (see `fill_line`).
    if is_unset_buffer(first.value) && is_text_code(code) {
        object.raw = UNSET_RAW;
        return;
    }
    set_value(object, single_typed(code, first));
}

/// What an unset text buffer's value part is shown as.
const UNSET_RAW: &[u8] = b"()";

/// A text buffer the meter never wrote: nothing but 0xFF bytes (erased
/// flash), which is no text at all.
fn is_unset_buffer(value: &[u8]) -> bool {
    !value.is_empty() && value.iter().all(|&b| b == 0xFF)
}

/// The value of a `(stamp)(value)` reading: none when a placeholder stamp
/// comes with a zero (an M-Bus slot with no meter, `(000101010000W)(00000000)`).
#[inline(always)]
fn reading_quantity<'a>(stamp: Stamp, quantity: Option<Quantity<'a>>) -> Option<Quantity<'a>> {
    match (stamp, quantity) {
        (Stamp::Placeholder, Some(q)) if q.value.mantissa() == 0 => None,
        (_, q) => q,
    }
}

/// A failure-log entry's duration: none for an empty slot, a placeholder end
/// with a placeholder duration: zero (MCS's `(000000000000W)(00000000)`) or
/// 2³¹ − 1 s and more (Kaifa's `(000101000001W)(2147483647*s)`, 68 years).
/// A real duration whose end the meter did not know is kept.
#[inline(always)]
fn event_duration<'a>(end: Option<Stamp>, duration: Option<Quantity<'a>>) -> Option<Quantity<'a>> {
    match (end, duration) {
        (Some(Stamp::Placeholder), Some(q))
            if q.value.mantissa() == 0 || q.value.as_integer() >= Some(i64::from(i32::MAX)) =>
        {
            None
        }
        (_, d) => d,
    }
}

/// `0-0:98.1.0` by its shape: Belgium's peak history `(n)(code)(code)` + whole
/// `(month)(peak time)(value)` triples; a billing snapshot `(stamp)` +
/// registers; anything else keeps every group ([`Value::Groups`]).
fn profile_98<'a>(all: impl Iterator<Item = Group<'a>> + Clone, count: usize) -> Value<'a> {
    let stamp_or_empty = |g: &Group<'_>| g.is_empty() || g.stamp().is_some();
    let number_or_empty = |g: &Group<'_>| g.is_empty() || g.quantity().is_some();
    let mut groups = all.clone();
    let first = groups.next();
    let n = first
        .filter(|g| g.unit.is_none())
        .and_then(|g| g.quantity())
        .and_then(|q| q.value.as_integer());
    let is_code = |g: Option<Group<'_>>| g.is_some_and(|g| ObisCode::parse(g.value).is_some());
    if n.is_some() && count >= 3 && (count - 3).is_multiple_of(3) {
        let mut rest = groups.clone();
        if is_code(rest.next()) && is_code(rest.next()) {
            let triples: Vec<Group<'a>> = rest.collect();
            let fits = triples
                .chunks(3)
                .all(|t| stamp_or_empty(&t[0]) && stamp_or_empty(&t[1]) && number_or_empty(&t[2]));
            if fits {
                let peaks = triples
                    .chunks(3)
                    .map(|t| {
                        let time = t[1].stamp();
                        let quantity = t[2].quantity();
                        Peak {
                            month: t[0].stamp(),
                            time,
                            quantity: match time {
                                Some(stamp) => reading_quantity(stamp, quantity),
                                None => quantity,
                            },
                        }
                    })
                    .collect();
                return Value::PeakHistory { count: n, peaks };
            }
        }
    }
    if let Some(time) = first.and_then(|g| g.stamp())
        && count >= 2
        && groups.clone().all(|g| number_or_empty(&g))
    {
        return Value::BillingSnapshot {
            time: Some(time),
            values: groups.map(|g| g.quantity()).collect(),
        };
    }
    Value::Groups(all.map(|g| g.quantity()).collect())
}

/// The value of a line with exactly one group.
#[inline(always)]
fn single_typed<'a>(code: &ObisCode, first: Group<'a>) -> Value<'a> {
    if first.is_empty() {
        return Value::Empty;
    }
    if is_text_code(code) {
        if is_unset_buffer(first.value) {
            return Value::Empty;
        }
        return Value::Text(first.value);
    }
    match (code.a, code.b, code.cde()) {
        (0, 0, (1, 0, 0) | (1, 1, 0)) => {
            if let Some(stamp) = first.stamp() {
                return Value::Time(stamp);
            }
        }
        (1, 0, (0, 9, 1)) => {
            if let Some([h, m, s]) = six_digits(first.value) {
                return Value::TimeOfDay {
                    hour: h,
                    minute: m,
                    second: s,
                };
            }
        }
        (1, 0, (0, 9, 2)) => {
            if let Some([y, m, d]) = six_digits(first.value) {
                return Value::Date {
                    year: 2000 + i16::from(y),
                    month: m,
                    day: d,
                };
            }
        }
        _ => {}
    }
    single(first)
}

/// The value of a line with a valid code and `count` groups, `groups`.
fn typed_value<'a>(
    code: &ObisCode,
    mut groups: impl Iterator<Item = Group<'a>> + Clone,
    count: usize,
) -> Value<'a> {
    let all = groups.clone();
    let Some(first) = groups.next() else {
        return Value::Empty;
    };
    let cde = code.cde();
    if count == 1 {
        return single_typed(code, first);
    }
    match (code.a, code.b, cde) {
        (1, 0, (99, 97, 0)) => {
            let count = first.quantity().and_then(|q| q.value.as_integer());
            // (n)(log code) then pairs of (end)(duration).
            let mut rest = groups.skip(1);
            let mut events = Vec::new();
            while let Some(end) = rest.next() {
                let end = end.stamp();
                events.push(FailureEvent {
                    end,
                    duration: event_duration(end, rest.next().and_then(|g| g.quantity())),
                });
            }
            Value::FailureLog { count, events }
        }
        (0, 0, (98, 1, 0)) => profile_98(all, count),
        (0, _, (24, 3, 0)) => {
            // DSMR ≤ 3 gas: (time)(status)(period)(count)(code)(unit); the
            // value follows on its own line (see attach_continuation).
            Value::Reading {
                time: first.stamp(),
                quantity: None,
            }
        }
        _ => {
            if count == 2
                && let Some(stamp) = first.stamp()
            {
                let second = groups.next();
                return Value::Reading {
                    time: Some(stamp),
                    quantity: reading_quantity(stamp, second.and_then(|g| g.quantity())),
                };
            }
            Value::Groups(all.map(|g| g.quantity()).collect())
        }
    }
}

fn six_digits(text: &[u8]) -> Option<[i8; 3]> {
    if text.len() != 6 || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let two = |i: usize| ((text[i] - b'0') * 10 + (text[i + 1] - b'0')) as i8;
    Some([two(0), two(2), two(4)])
}

/// DSMR ≤ 3: `0-n:24.3.0(…)(m3)` is followed by `(00001.001)`. Returns whether
/// `line` was taken as that value.
fn attach_continuation<'a>(prev: &mut Object<'a>, line: &'a [u8]) -> bool {
    let is_gas_profile = prev.code.is_some_and(|c| c.a == 0 && c.cde() == (24, 3, 0));
    if !is_gas_profile || prev.continuation.is_some() {
        return false;
    }
    prev.continuation = Some(line);
    // The unit is the last group of the profile line.
    let unit = groups(prev.raw)
        .last()
        .and_then(|g| std::str::from_utf8(g.value).ok())
        .filter(|u| !u.is_empty() && Decimal::parse(u.as_bytes()).is_none());
    let quantity = groups(line)
        .next()
        .and_then(|g| g.quantity())
        .map(|q| Quantity {
            value: q.value,
            unit: q.unit.or(unit),
        });
    if let Value::Reading { quantity: slot, .. } = &mut prev.value {
        *slot = quantity;
    }
    true
}

fn find_submeters<'a>(objects: &[Object<'a>]) -> Vec<Submeter<'a>> {
    let mut found: Vec<Submeter<'a>> = Vec::new();
    for object in objects {
        let Some(channel) = object.channel() else {
            continue;
        };
        let index = match found.iter().position(|s| s.channel == channel) {
            Some(i) => i,
            None => {
                found.push(Submeter {
                    channel,
                    kind: SubmeterKind::Unknown,
                    device_type: None,
                    equipment_id: None,
                });
                found.len() - 1
            }
        };
        let entry = &mut found[index];
        let Some(code) = object.code else { continue };
        match (code.c, code.d, code.e, &object.value) {
            (24, 1, 0, Value::Number(q)) => entry.device_type = q.value.as_integer(),
            (96, 1, 0 | 1, Value::Text(id)) if !id.is_empty() => entry.equipment_id = Some(id),
            _ => {}
        }
    }
    for entry in &mut found {
        entry.kind = match entry.device_type {
            Some(t) => SubmeterKind::from_device_type(t),
            None => infer_kind(objects, entry.channel),
        };
    }
    found.sort_by_key(|s| s.channel);
    found
}

/// A channel without a device type: decide from its codes, units and groups.
fn infer_kind(objects: &[Object<'_>], channel: u8) -> SubmeterKind {
    let lines = || objects.iter().filter(move |o| o.channel() == Some(channel));
    let mut veitur_like = 0;
    let mut kind = SubmeterKind::Unknown;
    for o in lines() {
        let Some(code) = o.code else { continue };
        let unit = o.quantity().and_then(|q| q.unit);
        match (code.c, code.d, code.e) {
            (24, 3, 0) => return SubmeterKind::Gas,
            // Veitur: one numeric group per line (m3, m3/h, degC, Wh).
            (24, 2, _) if o.groups == 1 && o.quantity().is_some() => veitur_like += 1,
            (24, 2, 1 | 3) if o.groups >= 2 => {
                if unit_is(unit, "GJ") || unit_is(unit, "kWh") || unit_is(unit, "MWh") {
                    kind = SubmeterKind::Heat;
                } else if unit_is(unit, "m3") {
                    kind = SubmeterKind::Gas;
                }
            }
            _ => {}
        }
    }
    if veitur_like > 0 && kind == SubmeterKind::Unknown {
        return SubmeterKind::HotWater;
    }
    kind
}

/// For the property test: the fast path's object (if it takes the line) and
/// the general path's. `body` is the line followed by `more` bytes (another
/// line): the fast path reads whole words past the line end when they are there.
#[cfg(test)]
pub(crate) fn fast_and_general(body: &[u8], more: usize) -> (Option<Object<'_>>, Object<'_>) {
    let line = &body[..body.len() - more];
    let mut object = Object::BLANK;
    let fast = fast_line(body, 0, &mut object)
        .or_else(|| {
            body.starts_with(FAILURE_LOG)
                .then(|| failure_log_line(body, &mut object))
                .flatten()
        })
        .map(|next| {
            assert_eq!(
                next,
                line.len(),
                "the fast path ends the line where it ends"
            );
            object.clone()
        });
    if fast.is_none() {
        assert_eq!(
            object,
            Object::BLANK,
            "nothing written when the fast path declines"
        );
    }
    (fast, parse_line(trim_line_end(line)))
}

/// For the test of [`may_hold_text_or_time`]: whether a line with `code` and
/// this one group reads the same through the typed and the plain path.
#[cfg(test)]
pub(crate) fn typed_is_plain(code: &ObisCode, inner: &[u8]) -> (bool, bool) {
    let star = inner.iter().position(|&b| b == b'*');
    let group = Group::split_at_star(inner, star);
    (
        may_hold_text_or_time(code.c, code.d),
        single_typed(code, group) == single(group),
    )
}

/// For the property test of [`number_group`]: its value and [`single`]'s for
/// the group it found, when it takes `rest`.
#[cfg(test)]
pub(crate) fn number_group_and_single(rest: &[u8]) -> Option<(Value<'_>, Value<'_>)> {
    let (close, mantissa, scale, unit) = number_group(rest)?;
    let inner = &rest[..close];
    let group = Group::split_at_star(inner, inner.iter().position(|&b| b == b'*'));
    let number = Value::Number(Quantity {
        value: Decimal::from_parts(mantissa, scale),
        unit,
    });
    Some((number, single(group)))
}
