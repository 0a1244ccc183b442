//! Finding things in the configuration text: key paths (`sink[1].url`), the byte span of a key or
//! value for a path, the path at a byte offset, and [`Problems`], the collector that turns
//! "this path is wrong because…" into located [`ConfigError`]s.
//!
//! Validation works on plain values and names the offending key by its path; only when the
//! errors are reported is the text parsed again ([`Locator`]) to find where that key is. This
//! keeps the config types free of spans, and a key that was left out (a default) is located at
//! the table it is missing from.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use toml::Spanned;
use toml::de::{DeArray, DeTable, DeValue};

use super::error::{ConfigError, ErrorKind, Location};

/// A path to a key in the configuration: `source.request.line`, `sink[1].url`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPath(Vec<Segment>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

impl KeyPath {
    /// The empty path: the document itself.
    pub fn root() -> Self {
        KeyPath(Vec::new())
    }

    /// This path extended by a key.
    pub fn key(&self, key: &str) -> Self {
        let mut path = self.clone();
        path.0.push(Segment::Key(key.to_owned()));
        path
    }

    /// This path extended by an array index.
    pub fn index(&self, index: usize) -> Self {
        let mut path = self.clone();
        path.0.push(Segment::Index(index));
        path
    }

    fn push_key(&mut self, key: &str) {
        self.0.push(Segment::Key(key.to_owned()));
    }

    fn push_index(&mut self, index: usize) {
        self.0.push(Segment::Index(index));
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Key(key) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    let bare = !key.is_empty()
                        && key
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                    if bare {
                        f.write_str(key)?;
                    } else {
                        write!(f, "{key:?}")?;
                    }
                }
                Segment::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

/// Whether an error is about a key itself (unknown, forbidden) or about its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Point at the key.
    Key,
    /// Point at the value; for a table, at its `[header]`.
    Value,
}

/// Where a configuration came from: the name to print in errors and the text, kept so that
/// errors found after parsing can still be located.
pub struct Origin {
    name: Arc<str>,
    text: String,
}

impl Origin {
    /// A configuration named `name` (a file path as given, or a description) with `text`.
    pub fn new(name: impl Into<Arc<str>>, text: String) -> Self {
        Origin {
            name: name.into(),
            text,
        }
    }

    /// The name errors print: the file path as given, or `built-in demo config`.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The TOML text.
    pub fn text(&self) -> &str {
        &self.text
    }
}

impl fmt::Debug for Origin {
    /// Only the name: the text may hold anything, and is long.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Origin").field("name", &self.name).finish()
    }
}

/// The parsed text of an [`Origin`], to turn key paths into line and column.
pub struct Locator<'a> {
    origin: &'a Origin,
    root: Option<Spanned<DeTable<'a>>>,
}

impl<'a> Locator<'a> {
    /// Parses the origin's text once, for many look-ups.
    pub fn new(origin: &'a Origin) -> Self {
        Locator {
            origin,
            // The text parsed before, or the config could not exist; should it fail anyway,
            // errors simply have no position.
            root: DeTable::parse(&origin.text).ok(),
        }
    }

    /// The span of the key or value at `path`. A path that is not in the text (a key left out)
    /// gives the deepest table on the way that is: the error points at `[source]` for a
    /// missing `source.port`. `None` when even the first key is absent.
    pub fn span(&self, path: &KeyPath, target: Target) -> Option<Range<usize>> {
        let root = self.root.as_ref()?;
        let mut table: Option<&DeTable<'_>> = Some(root.get_ref());
        let mut array: Option<&DeArray<'_>> = None;
        let mut best = None;
        let last = path.0.len().saturating_sub(1);
        for (i, segment) in path.0.iter().enumerate() {
            let value = match segment {
                Segment::Key(key) => {
                    let Some((k, v)) = table.and_then(|t| t.get_key_value(key.as_str())) else {
                        break;
                    };
                    best = Some(if i == last && target == Target::Key {
                        k.span()
                    } else {
                        v.span()
                    });
                    v
                }
                Segment::Index(index) => {
                    let Some(v) = array.and_then(|a| a.get(*index)) else {
                        break;
                    };
                    best = Some(v.span());
                    v
                }
            };
            table = value.get_ref().as_table();
            array = value.get_ref().as_array();
        }
        best
    }

    /// The line and column of [`Locator::span`]'s start; line 1 column 1 when nothing on the
    /// path is in the text.
    pub fn location(&self, path: &KeyPath, target: Target) -> Option<Location> {
        self.root.as_ref()?;
        let start = self.span(path, target).map_or(0, |span| span.start);
        Some(Location::of(&self.origin.text, start))
    }

    /// A located error about `path`.
    pub fn error(
        &self,
        kind: ErrorKind,
        path: &KeyPath,
        target: Target,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError::new(
            kind,
            self.origin.name.clone(),
            self.location(path, target),
            path.to_string(),
            message,
        )
    }
}

/// The path of the innermost key or value whose span holds byte `offset`, for errors that come
/// with a span but no path (serde's).
pub fn path_at(root: &DeTable<'_>, offset: usize) -> KeyPath {
    let mut path = KeyPath::root();
    find_in_table(root, offset, &mut path);
    path
}

fn holds(span: &Range<usize>, offset: usize) -> bool {
    span.contains(&offset) || (span.is_empty() && span.start == offset)
}

fn find_in_table(table: &DeTable<'_>, offset: usize, path: &mut KeyPath) -> bool {
    for (key, value) in table.iter() {
        if holds(&key.span(), offset) {
            path.push_key(key.get_ref());
            return true;
        }
        // A table's span is only its `[header]` (or its inline `{ … }`), so its keys are looked
        // for even when the offset is outside it.
        path.push_key(key.get_ref());
        if find_in_value(value, offset, path) {
            return true;
        }
        if holds(&value.span(), offset) {
            return true;
        }
        path.0.pop();
    }
    false
}

fn find_in_value(value: &Spanned<DeValue<'_>>, offset: usize, path: &mut KeyPath) -> bool {
    match value.get_ref() {
        DeValue::Table(table) => find_in_table(table, offset, path),
        DeValue::Array(array) => {
            for (index, element) in array.iter().enumerate() {
                path.push_index(index);
                if find_in_value(element, offset, path) || holds(&element.span(), offset) {
                    return true;
                }
                path.0.pop();
            }
            false
        }
        _ => false,
    }
}

/// Semantic problems found by `validate` and `check`, each named by key path; located in one
/// go by [`Problems::into_errors`].
#[derive(Debug, Default)]
pub struct Problems {
    items: Vec<(KeyPath, Target, String)>,
}

impl Problems {
    /// The value at `path` is wrong (or missing: then the table it belongs in is pointed at).
    pub fn value(&mut self, path: KeyPath, message: impl Into<String>) {
        self.items.push((path, Target::Value, message.into()));
    }

    /// The key at `path` should not be there.
    pub fn key(&mut self, path: KeyPath, message: impl Into<String>) {
        self.items.push((path, Target::Key, message.into()));
    }

    /// `Some(value)`, or `None` after noting the error against the value at `path`.
    pub fn ok<T>(&mut self, path: &KeyPath, result: Result<T, String>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(message) => {
                self.value(path.clone(), message);
                None
            }
        }
    }

    /// Whether nothing was found.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The problems as errors of `kind`, located in `origin`'s text, in file order.
    pub fn into_errors(self, origin: &Origin, kind: ErrorKind) -> Vec<ConfigError> {
        let locator = Locator::new(origin);
        let mut errors: Vec<ConfigError> = self
            .items
            .into_iter()
            .map(|(path, target, message)| locator.error(kind, &path, target, message))
            .collect();
        // Stable: problems at one place keep the order they were found in.
        errors.sort_by_key(|e| e.location());
        errors
    }
}
