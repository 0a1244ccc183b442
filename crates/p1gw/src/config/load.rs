//! Stage one: TOML text to [`Config`]. Reports what makes the text not a p1gw configuration
//! (TOML syntax, unknown keys, wrong types, missing keys, an unknown `kind`, a secret written
//! inline), each located at the key or value at fault.
//!
//! The document is parsed once into toml's spanned tree. The tables tagged by `kind`
//! (`[source]`, `[[sink]]`) are dispatched here by hand rather than by serde's internally
//! tagged enums, which buffer their content and so lose every span inside; each section is
//! then deserialized on its own, straight from the spanned tree, so serde's errors carry exact
//! spans, and one bad section does not hide the errors of another.

use std::ops::Range;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::Config;
use super::daemon::{HttpConfig, LogConfig, SpoolConfig};
use super::error::{ConfigError, ErrorKind, Location};
use super::locate::{KeyPath, Origin, path_at};
use super::secret::{ENV_HTTP_TOKEN, EnvInputs};
use super::sink::{SINK_KINDS, Section, SinkConfig, inline_secret_keys};
use super::source::{MeterConfig, MeterForm, MeterTable, SOURCE_KINDS, SourceTable};

/// The top-level keys.
const TOP_KEYS: [&str; 7] = ["meter", "meters", "source", "sink", "http", "spool", "log"];

/// Parses `origin`'s text into a [`Config`], or every structural error found, in file order.
pub(super) fn parse(origin: Arc<Origin>, env: EnvInputs) -> Result<Config, Vec<ConfigError>> {
    let Sections {
        meters,
        sinks,
        http,
        spool,
        log,
    } = sections(&origin)?;
    Ok(Config {
        meters,
        sinks,
        http,
        spool,
        log,
        env,
        origin,
    })
}

/// The parsed sections of a document.
struct Sections {
    meters: Vec<MeterConfig>,
    sinks: Vec<SinkConfig>,
    http: HttpConfig,
    spool: SpoolConfig,
    log: LogConfig,
}

fn sections(origin: &Origin) -> Result<Sections, Vec<ConfigError>> {
    let parsed = match DeTable::parse(origin.text()) {
        Ok(root) => root,
        Err(error) => return Err(vec![syntax_error(origin, &error)]),
    };
    let root = parsed.get_ref();
    let mut shape = Shape {
        origin,
        root,
        errors: Vec::new(),
    };

    for (key, _) in root.iter() {
        let name: &str = key.get_ref();
        if !TOP_KEYS.contains(&name) {
            let hint = if SINK_KINDS.contains(&name) {
                format!("; a sink is a [[sink]] entry with kind = {name:?}")
            } else {
                String::new()
            };
            shape.at(
                key.span(),
                KeyPath::root().key(name),
                format!("unknown key, expected one of {}{hint}", TOP_KEYS.join(", ")),
            );
        }
    }

    let meters = shape.meters(root);
    let sinks = match root.get_key_value("sink") {
        None => Vec::new(),
        Some((key, value)) => shape.sinks(key.span(), value),
    };
    let http = match root.get("http") {
        None => Some(HttpConfig::default()),
        Some(value) => {
            let at = KeyPath::root().key("http");
            shape.table(value, &at).and_then(|table| {
                shape.forbid_inline(table, &at, &[("token", "token_file", ENV_HTTP_TOKEN)]);
                shape.deserialize(value.span(), table, &["token"])
            })
        }
    };
    let spool = match root.get("spool") {
        None => Some(SpoolConfig::default()),
        Some(value) => shape.deserialize_value(value, &KeyPath::root().key("spool")),
    };
    let log = match root.get("log") {
        None => Some(LogConfig::default()),
        Some(value) => shape.deserialize_value(value, &KeyPath::root().key("log")),
    };

    let mut errors = shape.errors;
    match (meters, http, spool, log) {
        (Some(meters), Some(http), Some(spool), Some(log)) if errors.is_empty() => Ok(Sections {
            meters,
            sinks,
            http,
            spool,
            log,
        }),
        _ => {
            if errors.is_empty() {
                // Every `None` above noted its error; this is a guard, not a path.
                shape_error(origin, &mut errors);
            }
            errors.sort_by_key(ConfigError::location);
            Err(errors)
        }
    }
}

fn shape_error(origin: &Origin, errors: &mut Vec<ConfigError>) {
    errors.push(ConfigError::new(
        ErrorKind::Structure,
        origin.name().clone(),
        None,
        "",
        "not a p1gw configuration",
    ));
}

/// A TOML syntax error, located; the key path is given when the error sits on a key the
/// parser still recognised.
fn syntax_error(origin: &Origin, error: &toml::de::Error) -> ConfigError {
    let text = origin.text();
    let span = error.span().unwrap_or(0..0);
    let (partial, _) = DeTable::parse_recoverable(text);
    let mut path = path_at(partial.get_ref(), span.start).to_string();
    let message = error.message().to_owned();
    if message == "duplicate key"
        && let Some(key) = text.get(span.clone()).filter(|k| !k.is_empty())
    {
        // The parser keeps the first of the two, so the second has no path of its own: it is
        // the key under the table header above it.
        path = match table_header_before(text, span.start) {
            Some(table) => format!("{table}.{key}"),
            None => key.to_owned(),
        };
    }
    ConfigError::new(
        ErrorKind::Syntax,
        origin.name().clone(),
        Some(Location::of(text, span.start)),
        path,
        message,
    )
}

/// The path of the `[table]` or `[[array]]` header that the line at `offset` is under,
/// `array[i]` for the i-th entry; `None` at the top level. A line-based reading, good enough for
/// naming the place of a syntax error.
fn table_header_before(text: &str, offset: usize) -> Option<String> {
    let before = text.get(..offset)?;
    // Whole lines only: the one holding `offset` is not a header.
    let before = &before[..before.rfind('\n').map_or(0, |nl| nl + 1)];
    let mut lines = before.lines().rev().map(str::trim);
    let header = lines.find(|line| line.starts_with('['))?;
    let header = header.split('#').next().unwrap_or(header).trim();
    if let Some(name) = header
        .strip_prefix("[[")
        .and_then(|h| h.strip_suffix("]]"))
        .map(str::trim)
    {
        let index = before
            .lines()
            .map(str::trim)
            .filter(|line| line.split('#').next().unwrap_or(line).trim() == header)
            .count()
            .saturating_sub(1);
        return Some(format!("{name}[{index}]"));
    }
    header
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .map(|name| name.trim().to_owned())
}

/// The structural pass over one document.
struct Shape<'a, 'i> {
    origin: &'a Origin,
    root: &'a DeTable<'i>,
    errors: Vec<ConfigError>,
}

impl<'a, 'i> Shape<'a, 'i> {
    /// Notes a structural error at `span`.
    fn at(&mut self, span: Range<usize>, path: KeyPath, message: impl Into<String>) {
        self.errors.push(ConfigError::new(
            ErrorKind::Structure,
            self.origin.name().clone(),
            Some(Location::of(self.origin.text(), span.start)),
            path.to_string(),
            message,
        ));
    }

    /// Notes an error from serde, locating it by its span and naming the key at that span.
    fn serde_error(&mut self, error: &toml::de::Error, fallback: Range<usize>) {
        let span = error.span().unwrap_or(fallback);
        let mut path = path_at(self.root, span.start);
        let mut message = error.message().to_owned();
        if let Some(field) = message
            .strip_prefix("missing field `")
            .and_then(|rest| rest.strip_suffix('`'))
            .map(str::to_owned)
        {
            let field = field.as_str();
            path = path.key(field);
            message = "missing required key".to_owned();
            if field == "port" {
                // The packaged configuration names no port on purpose (a Zigbee stick on the
                // same chip must not be opened): say how to find the cable.
                message.push_str(
                    ": the P1 cable's serial device, best its /dev/serial/by-id/ name; \
                     `p1gw probe --list` lists the ports and `p1gw probe --port DEV \
                     --write-config FILE` fills this in",
                );
            }
        } else if message.starts_with("unknown field") {
            message = message.replacen("unknown field", "unknown key", 1);
            if path == KeyPath::root().key("meter").key("source") {
                message.push_str("; [source] is a table of its own, after [meter] (or use [[meters]] entries, which hold their source)");
            }
        } else {
            // serde names Rust types; say what they mean in the file.
            for (rust, toml) in [
                ("expected u8", "expected an integer from 0 to 255"),
                ("expected u16", "expected an integer from 0 to 65535"),
                ("expected u32", "expected an integer from 0 to 4294967295"),
                ("expected a boolean", "expected true or false"),
            ] {
                if let Some(start) = message.strip_suffix(rust) {
                    message = format!("{start}{toml}");
                    break;
                }
            }
        }
        self.at(span, path, message);
    }

    /// `value` as a table, or an error.
    fn table(
        &mut self,
        value: &'a Spanned<DeValue<'i>>,
        path: &KeyPath,
    ) -> Option<&'a DeTable<'i>> {
        match value.get_ref() {
            DeValue::Table(table) => Some(table),
            other => {
                self.at(
                    value.span(),
                    path.clone(),
                    format!("invalid type: {}, expected a table", other.type_str()),
                );
                None
            }
        }
    }

    /// Deserializes a whole value.
    fn deserialize_value<T: DeserializeOwned>(
        &mut self,
        value: &'a Spanned<DeValue<'i>>,
        path: &KeyPath,
    ) -> Option<T> {
        let table = self.table(value, path)?;
        self.deserialize(value.span(), table, &[])
    }

    /// Deserializes `table` (whose span is `span`) without the keys in `skip`.
    fn deserialize<T: DeserializeOwned>(
        &mut self,
        span: Range<usize>,
        table: &DeTable<'i>,
        skip: &[&str],
    ) -> Option<T> {
        let rest: DeTable<'i> = table
            .iter()
            .filter(|(key, _)| !skip.contains(&&**key.get_ref()))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        let value = Spanned::new(span.clone(), DeValue::Table(rest));
        match T::deserialize(ValueDeserializer::from(value)) {
            Ok(value) => Some(value),
            Err(error) => {
                self.serde_error(&error, span);
                None
            }
        }
    }

    /// The `kind` of a tagged table, checked against `kinds`.
    fn kind(
        &mut self,
        value: &'a Spanned<DeValue<'i>>,
        path: &KeyPath,
        kinds: &[&str],
    ) -> Option<(&'a str, &'a DeTable<'i>)> {
        let table = self.table(value, path)?;
        let expected = kinds.join(", ");
        let Some(kind) = table.get("kind") else {
            self.at(
                value.span(),
                path.key("kind"),
                format!("missing required key, expected one of {expected}"),
            );
            return None;
        };
        match kind.get_ref().as_str() {
            Some(name) if kinds.contains(&name) => Some((name, table)),
            Some(name) => {
                self.at(
                    kind.span(),
                    path.key("kind"),
                    format!("unknown variant {name:?}, expected one of {expected}"),
                );
                None
            }
            None => {
                self.at(
                    kind.span(),
                    path.key("kind"),
                    format!(
                        "invalid type: {}, expected a string, one of {expected}",
                        kind.get_ref().type_str()
                    ),
                );
                None
            }
        }
    }

    /// Reports keys that would hold a secret inline; `keys` lists (key, file key, variable).
    fn forbid_inline(&mut self, table: &DeTable<'i>, path: &KeyPath, keys: &[(&str, &str, &str)]) {
        for (key, file_key, var) in keys {
            if let Some((found, _)) = table.get_key_value(*key) {
                // The value is never looked at, so it cannot end up in the message.
                self.at(
                    found.span(),
                    path.key(key),
                    format!(
                        "secrets are not accepted in the configuration file; put it in a file named by {file_key}, or set {var}"
                    ),
                );
            }
        }
    }

    /// `[source]` or `meters[i].source`.
    fn source(&mut self, value: &'a Spanned<DeValue<'i>>, path: &KeyPath) -> Option<SourceTable> {
        let (kind, table) = self.kind(value, path, &SOURCE_KINDS)?;
        let span = value.span();
        let skip = ["kind"];
        match kind {
            "serial" => self
                .deserialize(span, table, &skip)
                .map(SourceTable::Serial),
            "tcp" => self.deserialize(span, table, &skip).map(SourceTable::Tcp),
            "replay" => self
                .deserialize(span, table, &skip)
                .map(SourceTable::Replay),
            _ => self
                .deserialize(span, table, &skip)
                .map(SourceTable::Simulate),
        }
    }

    /// `[meter]` + `[source]`, or `[[meters]]`, as a list.
    fn meters(&mut self, root: &'a DeTable<'i>) -> Option<Vec<MeterConfig>> {
        let meter = root.get_key_value("meter");
        let source = root.get_key_value("source");
        let meters = root.get_key_value("meters");
        if let Some((key, value)) = meters {
            if meter.is_some() || source.is_some() {
                self.at(
                    key.span(),
                    KeyPath::root().key("meters"),
                    "use either [meter] with [source], or [[meters]], not both",
                );
                return None;
            }
            return self.meter_array(value);
        }
        let meter_table = meter.and_then(|(_, value)| {
            self.deserialize_value::<MeterTable>(value, &KeyPath::root().key("meter"))
        });
        let source_config =
            source.and_then(|(_, value)| self.source(value, &KeyPath::root().key("source")));
        match (meter, source) {
            (Some(_), Some(_)) => Some(vec![MeterConfig {
                meter: meter_table?,
                source: source_config?,
                form: MeterForm::Single,
            }]),
            (Some((_, value)), None) => {
                self.at(
                    value.span(),
                    KeyPath::root().key("source"),
                    "missing required table: add [source] with kind = \"serial\", \"tcp\", \"replay\" or \"simulate\"",
                );
                None
            }
            (None, Some((_, value))) => {
                self.at(
                    value.span(),
                    KeyPath::root().key("meter"),
                    "missing required table: add [meter] with name and tz",
                );
                None
            }
            (None, None) => {
                self.at(
                    0..0,
                    KeyPath::root(),
                    "no meter configured: add [meter] and [source], or [[meters]] entries",
                );
                None
            }
        }
    }

    /// `[[meters]]`.
    fn meter_array(&mut self, value: &'a Spanned<DeValue<'i>>) -> Option<Vec<MeterConfig>> {
        let at = KeyPath::root().key("meters");
        let Some(array) = value.get_ref().as_array() else {
            self.at(
                value.span(),
                at,
                "expected [[meters]] entries (an array of tables)",
            );
            return None;
        };
        if array.is_empty() {
            self.at(value.span(), at, "no meter configured: the list is empty");
            return None;
        }
        let mut list = Some(Vec::new());
        for (index, element) in array.iter().enumerate() {
            let path = at.index(index);
            let meter = self.table(element, &path).and_then(|table| {
                let meter = self.deserialize::<MeterTable>(element.span(), table, &["source"]);
                let source = match table.get("source") {
                    Some(source) => self.source(source, &path.key("source")),
                    None => {
                        self.at(
                            element.span(),
                            path.key("source"),
                            "missing required key: each meter needs its own source table",
                        );
                        None
                    }
                };
                Some(MeterConfig {
                    meter: meter?,
                    source: source?,
                    form: MeterForm::Array(index),
                })
            });
            match (meter, list.as_mut()) {
                (Some(meter), Some(list)) => list.push(meter),
                _ => list = None,
            }
        }
        list
    }

    /// `[[sink]]`.
    fn sinks(&mut self, key: Range<usize>, value: &'a Spanned<DeValue<'i>>) -> Vec<SinkConfig> {
        let at = KeyPath::root().key("sink");
        let Some(array) = value.get_ref().as_array() else {
            self.at(
                key,
                at,
                "a sink is a [[sink]] entry (an array of tables), not [sink]",
            );
            return Vec::new();
        };
        let mut sinks = Vec::new();
        for (index, element) in array.iter().enumerate() {
            let path = at.index(index);
            let Some((kind, table)) = self.kind(element, &path, SINK_KINDS) else {
                continue;
            };
            let secrets = inline_secret_keys(kind);
            self.forbid_inline(table, &path, secrets);
            let mut skip = vec!["kind"];
            skip.extend(secrets.iter().map(|(key, _, _)| *key));
            let mut section = SectionReader {
                shape: self,
                span: element.span(),
                table,
                skip: &skip,
            };
            let sink = SinkConfig::read(kind, &mut section);
            sinks.extend(sink);
        }
        sinks
    }
}

/// One `[[sink]]` entry, read as the type its `kind` names.
struct SectionReader<'s, 'a, 'i> {
    shape: &'s mut Shape<'a, 'i>,
    span: Range<usize>,
    table: &'a DeTable<'i>,
    skip: &'s [&'s str],
}

impl Section for SectionReader<'_, '_, '_> {
    fn read<T: DeserializeOwned>(&mut self) -> Option<T> {
        self.shape
            .deserialize(self.span.clone(), self.table, self.skip)
    }
}
