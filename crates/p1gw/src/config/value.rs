//! Typed values at the edge: durations (`"10s"`), sizes (`"64MiB"`), time zones, URLs,
//! `host:port` addresses and names, each parsed by a small pure function that returns the
//! message to show when the text is wrong.
//!
//! Messages never repeat a URL as written: it might carry a password.

use std::fmt;
use std::net::Ipv6Addr;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

const DURATION_UNITS: &str = "ms, s, m, h, d";
const SIZE_UNITS: &str = "B, KiB, MiB, GiB, kB, MB, GB";

/// A duration as written in the file: a string such as `"10s"`, `"50ms"`, `"1h30m"`; typed by
/// `validate` with [`parse_duration`]. A bare number is kept (as its text) so that validation
/// can say which unit is missing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct RawDuration(pub String);

impl RawDuration {
    /// A duration from its text, for defaults.
    pub fn new(text: &str) -> Self {
        RawDuration(text.to_owned())
    }
}

impl<'de> Deserialize<'de> for RawDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;
        impl Visitor<'_> for DurationVisitor {
            type Value = RawDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"10s\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawDuration, E> {
                Ok(RawDuration(v.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawDuration, E> {
                Ok(RawDuration(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawDuration, E> {
                Ok(RawDuration(v.to_string()))
            }
        }
        deserializer.deserialize_any(DurationVisitor)
    }
}

/// A size as written in the file: an integer number of bytes (`16384`) or a string with a unit
/// (`"64MiB"`, `"16KiB"`, `"1GB"`); typed by `validate` with [`parse_size`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum RawSize {
    /// A TOML integer: bytes.
    Bytes(i64),
    /// A TOML string: a number and a unit.
    Text(String),
}

impl RawSize {
    /// A size from its text, for defaults.
    pub fn new(text: &str) -> Self {
        RawSize::Text(text.to_owned())
    }
}

impl<'de> Deserialize<'de> for RawSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = RawSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size: a number of bytes, or a string such as \"64MiB\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawSize, E> {
                Ok(RawSize::Text(v.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawSize, E> {
                Ok(RawSize::Bytes(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawSize, E> {
                i64::try_from(v)
                    .map(RawSize::Bytes)
                    .map_err(|_| E::custom("size too large"))
            }
        }
        deserializer.deserialize_any(SizeVisitor)
    }
}

/// Parses a duration: one or more `<digits><unit>` parts, units `ms`, `s`, `m`, `h`, `d`
/// (`"50ms"`, `"10s"`, `"1m"`, `"1h30m"`, `"0s"`). No sign, no fractions, no bare numbers.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err(format!(
            "empty duration; write a number and a unit, e.g. \"10s\" (units: {DURATION_UNITS})"
        ));
    }
    if s.starts_with('-') {
        return Err(format!("{text:?}: a duration cannot be negative"));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!(
                "{text:?} is not a duration; write a number and a unit, e.g. \"10s\" (units: {DURATION_UNITS})"
            ));
        }
        let number: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{text:?} is too long a duration"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let seconds_per_unit = match unit {
            "" => {
                return Err(format!(
                    "{text:?} has no unit; write e.g. \"{number}s\" (units: {DURATION_UNITS})"
                ));
            }
            "ms" => {
                total = total
                    .checked_add(Duration::from_millis(number))
                    .ok_or_else(|| format!("{text:?} is too long a duration"))?;
                continue;
            }
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ if unit.starts_with('.') => {
                return Err(format!(
                    "{text:?}: fractions are not supported; use a smaller unit, e.g. \"1500ms\""
                ));
            }
            _ => {
                return Err(format!(
                    "{text:?}: unknown unit {unit:?} (units: {DURATION_UNITS})"
                ));
            }
        };
        total = number
            .checked_mul(seconds_per_unit)
            .map(Duration::from_secs)
            .and_then(|part| total.checked_add(part))
            .ok_or_else(|| format!("{text:?} is too long a duration"))?;
    }
    Ok(total)
}

/// Parses a power for the spike guard: a positive number and `W`, `kW` or `MW` (`"100kW"`,
/// `"2.5MW"`); the result in kW.
pub fn parse_power(text: &str) -> Result<f64, String> {
    parse_rate(
        text,
        "power",
        "\"100kW\"",
        &[("W", 0.001), ("kW", 1.0), ("MW", 1000.0)],
    )
}

/// Parses a flow for the spike guard: a positive number and `m3/h` (or `m³/h`), `l/h` or
/// `l/min` (`"25m3/h"`, `"400l/min"`); the result in m³/h.
pub fn parse_flow(text: &str) -> Result<f64, String> {
    parse_rate(
        text,
        "flow",
        "\"25m3/h\"",
        &[
            ("m3/h", 1.0),
            ("m³/h", 1.0),
            ("l/h", 0.001),
            ("l/min", 0.06),
        ],
    )
}

/// A positive decimal number followed by one of `units` (matched case-insensitively, spaces
/// between allowed), times the unit's factor.
fn parse_rate(text: &str, what: &str, example: &str, units: &[(&str, f64)]) -> Result<f64, String> {
    let names = units.iter().map(|(u, _)| *u).collect::<Vec<_>>().join(", ");
    let s = text.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = (&s[..split], s[split..].trim());
    if number.is_empty() {
        return Err(format!(
            "{text:?} is not a {what}; write a number and a unit, e.g. {example} (units: {names})"
        ));
    }
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?}: {number:?} is not a number"))?;
    if unit.is_empty() {
        return Err(format!(
            "{text:?} has no unit; write e.g. {example} (units: {names})"
        ));
    }
    let Some((_, factor)) = units.iter().find(|(u, _)| u.eq_ignore_ascii_case(unit)) else {
        return Err(format!("{text:?}: unknown unit {unit:?} (units: {names})"));
    };
    if !(value.is_finite() && value > 0.0) {
        return Err(format!("{text:?}: the {what} must be more than 0"));
    }
    Ok(value * factor)
}

/// A duration as the configuration writes it: `"1h30m"`, `"50ms"`, `"0s"`.
pub fn format_duration(duration: Duration) -> String {
    let millis = duration.subsec_millis();
    let mut secs = duration.as_secs();
    if secs == 0 && millis == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    if millis > 0 {
        out.push_str(&format!("{millis}ms"));
    }
    out
}

/// Parses a size: an integer number of bytes, or a string of digits and an optional unit
/// (`B`, `KiB`, `MiB`, `GiB` = powers of 1024; `kB`/`KB`, `MB`, `GB` = powers of 1000).
pub fn parse_size(raw: &RawSize) -> Result<u64, String> {
    let text = match raw {
        RawSize::Bytes(bytes) => {
            return u64::try_from(*bytes)
                .map_err(|_| format!("{bytes}: a size cannot be negative"));
        }
        RawSize::Text(text) => text,
    };
    let s = text.trim();
    if s.starts_with('-') {
        return Err(format!("{text:?}: a size cannot be negative"));
    }
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if digits == 0 {
        return Err(format!(
            "{text:?} is not a size; write a number and a unit, e.g. \"64MiB\" (units: {SIZE_UNITS})"
        ));
    }
    let number: u64 = s[..digits]
        .parse()
        .map_err(|_| format!("{text:?} is too large"))?;
    let multiplier: u64 = match s[digits..].trim_start() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        unit if unit.starts_with('.') => {
            return Err(format!(
                "{text:?}: fractions are not supported; use a smaller unit, e.g. \"1536KiB\""
            ));
        }
        unit => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?} (units: {SIZE_UNITS})"
            ));
        }
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// A size as the configuration writes it: `"64MiB"` when it is a whole number of KiB, MiB or
/// GiB, else bytes.
pub fn format_size(bytes: u64) -> String {
    for (unit, size) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if bytes >= size && bytes.is_multiple_of(size) {
            return format!("{}{unit}", bytes / size);
        }
    }
    format!("{bytes}B")
}

/// Looks up an IANA time zone (`Atlantic/Reykjavik`, `Europe/Amsterdam`) in the bundled tz
/// database.
pub fn parse_time_zone(name: &str) -> Result<jiff::tz::TimeZone, String> {
    if name.trim().is_empty() {
        return Err("empty time zone; use an IANA name such as \"Atlantic/Reykjavik\"".to_owned());
    }
    jiff::tz::db().get(name).map_err(|_| {
        format!(
            "unknown time zone {name:?}; use an IANA name such as \"Atlantic/Reykjavik\" or \"Europe/Amsterdam\""
        )
    })
}

/// A checked URL of a server: scheme, host, optional port and path; no credentials, query or
/// fragment (credentials belong in `username` and a `*_file` key or `P1GW_*` variable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    url: String,
    scheme: String,
    host: String,
    port: Option<u16>,
    path: String,
}

impl Endpoint {
    /// Parses `text` as `scheme://host[:port][/path]` with a scheme from `schemes` (compared
    /// without regard to case). Error messages do not repeat the URL.
    pub fn parse(text: &str, schemes: &[&str]) -> Result<Self, String> {
        let expected = schemes.join(", ");
        let Some((scheme, rest)) = text.split_once("://") else {
            return Err(format!(
                "not a URL; write {}://host:port",
                schemes.first().copied().unwrap_or("scheme")
            ));
        };
        let scheme = scheme.to_ascii_lowercase();
        if !schemes.contains(&scheme.as_str()) {
            return Err(format!(
                "unsupported scheme {scheme:?}, expected one of {expected}"
            ));
        }
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        if authority.contains('@') {
            return Err("credentials in the URL are not accepted; use the username key and a password file or environment variable".to_owned());
        }
        if tail.contains(['?', '#']) {
            return Err(
                "a query or fragment in the URL is not accepted; use the sink's own keys"
                    .to_owned(),
            );
        }
        let (host, port) = split_host_port(authority, false)?;
        Ok(Endpoint {
            url: text.to_owned(),
            scheme,
            host,
            port,
            path: tail.to_owned(),
        })
    }

    /// The URL as written.
    pub fn as_str(&self) -> &str {
        &self.url
    }

    /// The scheme, lower case (`mqtts`).
    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// The host name or address (IPv6 without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port, when the URL names one.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// The path, `""` or starting with `/`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Whether the scheme means TLS: `mqtts`, `ssl`, `https`.
    pub fn is_tls(&self) -> bool {
        matches!(self.scheme.as_str(), "mqtts" | "ssl" | "https")
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

/// Parses `host:port` (a name, an IPv4 address or a bracketed IPv6 address, and a port).
pub fn parse_host_port(text: &str) -> Result<(String, u16), String> {
    if text.contains("://") {
        return Err(format!(
            "{text:?}: write host:port without a scheme, e.g. \"192.168.1.20:8088\""
        ));
    }
    match split_host_port(text, true)? {
        (host, Some(port)) => Ok((host, port)),
        (_, None) => Err(format!(
            "{text:?} has no port; write host:port, e.g. \"192.168.1.20:8088\""
        )),
    }
}

/// Splits `host[:port]`; `echo` says whether messages may repeat the text.
fn split_host_port(text: &str, echo: bool) -> Result<(String, Option<u16>), String> {
    let shown = if echo {
        format!("{text:?}: ")
    } else {
        String::new()
    };
    let (host, port) = if let Some(inner) = text.strip_prefix('[') {
        let Some((address, after)) = inner.split_once(']') else {
            return Err(format!("{shown}unclosed '[' in an IPv6 address"));
        };
        if address.parse::<Ipv6Addr>().is_err() {
            return Err(format!("{shown}not an IPv6 address between '[' and ']'"));
        }
        let port =
            match after {
                "" => None,
                _ => Some(after.strip_prefix(':').ok_or_else(|| {
                    format!("{shown}expected ':' and a port after the IPv6 address")
                })?),
            };
        (address, port)
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    if host.is_empty() {
        return Err(format!("{shown}no host name"));
    }
    if !host.contains(':')
        && !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
    {
        return Err(format!(
            "{shown}the host name may hold only letters, digits, '-', '.' and '_'"
        ));
    }
    let port = match port {
        None => None,
        Some(port) => match port.parse::<u16>() {
            Ok(0) | Err(_) => {
                return Err(format!("{shown}the port must be a number from 1 to 65535"));
            }
            Ok(port) => Some(port),
        },
    };
    Ok((host.to_owned(), port))
}

/// Checks a meter or sink name: 1–64 ASCII letters, digits, `-` or `_` (it becomes part of MQTT
/// topics, InfluxDB tags, file names and Home Assistant ids).
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty name".to_owned());
    }
    if name.len() > 64 {
        return Err(format!("{name:?} is longer than 64 characters"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(format!(
            "{name:?}: a name may hold only ASCII letters, digits, '-' and '_'"
        ));
    }
    Ok(())
}

/// Checks an MQTT topic prefix: not empty, no wildcards, no leading or trailing `/`.
pub fn check_topic_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() {
        return Err("empty topic prefix".to_owned());
    }
    if prefix.contains(['+', '#', '\0']) {
        return Err(format!(
            "{prefix:?}: a topic prefix cannot hold the wildcards '+' or '#'"
        ));
    }
    if prefix.starts_with('/') || prefix.ends_with('/') || prefix.contains("//") {
        return Err(format!(
            "{prefix:?}: no leading, trailing or doubled '/' in a topic prefix"
        ));
    }
    Ok(())
}

/// Checks a log filter: a level (`off`, `error`, `warn`, `info`, `debug`, `trace`) or a
/// comma-separated list of `level` and `target=level` items (`"info,p1_reader=debug"`).
pub fn check_log_level(filter: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let bad = |item: &str| {
        format!(
            "{item:?} is not a log level; use one of off, error, warn, info, debug, trace, or target=level items separated by commas"
        )
    };
    if filter.trim().is_empty() {
        return Err(bad(filter));
    }
    for item in filter.split(',').map(str::trim) {
        let (target, level) = match item.split_once('=') {
            Some((target, level)) => (Some(target), level),
            None => (None, item),
        };
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(bad(item));
        }
        if let Some(target) = target {
            let ok = !target.is_empty()
                && target
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':' || c == '-');
            if !ok {
                return Err(format!("{item:?}: {target:?} is not a module path"));
            }
        }
    }
    Ok(())
}

/// A library's enum as the file spells it: by name, one of [`Spelled::NAMES`]. The TOML side of
/// a library type lives here, so the validated configuration holds the library's own type
/// (ARCHITECTURE.md, "Serialization").
pub trait Spelled: Sized + Copy {
    /// Every name, in the order error messages list them.
    const NAMES: &'static [&'static str];
    /// The value named `name`.
    fn from_name(name: &str) -> Option<Self>;
    /// The value's name.
    fn name(self) -> &'static str;
}

/// `#[serde(with = "spelled")]` for a [`Spelled`] field.
pub mod spelled {
    use serde::{Deserialize, Deserializer, Serializer, de};

    use super::Spelled;

    /// Writes the name.
    pub fn serialize<T: Spelled, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(value.name())
    }

    /// Reads a name, refusing others as serde refuses an unknown enum variant.
    pub fn deserialize<'de, T: Spelled, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
        let name = String::deserialize(d)?;
        T::from_name(&name).ok_or_else(|| de::Error::unknown_variant(&name, T::NAMES))
    }

    /// The same for an `Option` field (with `#[serde(default)]`).
    pub mod option {
        use serde::{Deserialize, Deserializer, Serializer, de};

        use super::super::Spelled;

        /// Writes the name, or nothing.
        pub fn serialize<T: Spelled, S: Serializer>(
            value: &Option<T>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match value {
                Some(value) => s.serialize_some(value.name()),
                None => s.serialize_none(),
            }
        }

        /// Reads a name.
        pub fn deserialize<'de, T: Spelled, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<T>, D::Error> {
            let name = String::deserialize(d)?;
            T::from_name(&name)
                .map(Some)
                .ok_or_else(|| de::Error::unknown_variant(&name, T::NAMES))
        }
    }
}

impl Spelled for p1_reader::Preset {
    const NAMES: &'static [&'static str] = &["veitur", "veitur-7e1", "dsmr22", "dsmr4"];
    fn from_name(name: &str) -> Option<Self> {
        p1_reader::Preset::from_name(name)
    }
    fn name(self) -> &'static str {
        self.as_str()
    }
}

impl Spelled for p1_reader::Parity {
    const NAMES: &'static [&'static str] = &["none", "even", "odd"];
    fn from_name(name: &str) -> Option<Self> {
        [Self::None, Self::Even, Self::Odd]
            .into_iter()
            .find(|p| p.name() == name)
    }
    fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Even => "even",
            Self::Odd => "odd",
        }
    }
}

impl Spelled for p1_reader::RequestMode {
    const NAMES: &'static [&'static str] = &["hold", "pulse", "poll"];
    fn from_name(name: &str) -> Option<Self> {
        [Self::Hold, Self::Pulse, Self::Poll]
            .into_iter()
            .find(|m| m.as_str() == name)
    }
    fn name(self) -> &'static str {
        self.as_str()
    }
}

impl Spelled for p1_reader::Profile {
    const NAMES: &'static [&'static str] = &["veitur", "dsmr5", "belgium"];
    fn from_name(name: &str) -> Option<Self> {
        p1_reader::Profile::from_name(name)
    }
    fn name(self) -> &'static str {
        self.as_str()
    }
}
