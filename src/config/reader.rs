//! The raw layer: a walk over the parsed TOML document that keeps every value's span.
//!
//! serde stops at the first bad value; an operator fixing a config wants them all. So the
//! document is parsed into toml's spanned tree and each section is read key by key: unknown
//! keys and wrong types are recorded in the [`Collector`] and reading goes on.

use std::ops::Range;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::error::Collector;

pub(crate) type Span = Range<usize>;

/// How errors name the document's top level.
const ROOT: &str = "the top level";

/// A value as written in the file, with where it was written.
pub(crate) struct At<T> {
    pub value: T,
    pub span: Span,
}

/// One TOML table being read: `name` is how errors refer to it (`[proxy]`).
pub(crate) struct Section<'a, 'i> {
    pub name: String,
    table: Option<&'a DeTable<'i>>,
}

impl<'a, 'i> Section<'a, 'i> {
    /// Reads a table, reporting every key that is not in `known`.
    pub(crate) fn new(
        name: impl Into<String>,
        table: Option<&'a DeTable<'i>>,
        known: &[&str],
        errors: &mut Collector,
    ) -> Self {
        let name = name.into();
        if let Some(table) = table {
            for key in table.keys() {
                if !known.contains(&key.get_ref().as_ref()) {
                    let what = match name.as_str() {
                        ROOT => format!("unknown section [{}]", key.get_ref()),
                        _ => format!("unknown key `{}` in {name}", key.get_ref()),
                    };
                    errors.at(
                        key.span(),
                        format!("{what}; expected one of: {}", known.join(", ")),
                    );
                }
            }
        }
        Section { name, table }
    }

    /// The root of the document, whose keys are the section names: `tables` are written
    /// `[name]`, `arrays` `[[name]]`.
    pub(crate) fn root(
        table: &'a DeTable<'i>,
        tables: &[&str],
        arrays: &[&str],
        errors: &mut Collector,
    ) -> Self {
        let known: Vec<&str> = tables.iter().chain(arrays).copied().collect();
        let section = Section::new(ROOT, Some(table), &known, errors);
        for (key, value) in table {
            let name = key.get_ref().as_ref();
            let v = value.get_ref();
            if tables.contains(&name) && v.as_table().is_none() {
                errors.at(
                    value.span(),
                    format!(
                        "`{name}` must be a table ([{name}]), found {}",
                        v.type_str()
                    ),
                );
            }
            let array_of_tables = v
                .as_array()
                .is_some_and(|a| a.iter().all(|t| t.get_ref().as_table().is_some()));
            if arrays.contains(&name) && !array_of_tables {
                errors.at(
                    value.span(),
                    format!(
                        "`{name}` must be an array of tables ([[{name}]]), found {}",
                        v.type_str()
                    ),
                );
            }
        }
        section
    }

    fn raw(&self, key: &str) -> Option<&'a Spanned<DeValue<'i>>> {
        self.table?.get(key)
    }

    /// Whether the key is written at all (used for tables whose presence means something).
    pub(crate) fn has(&self, key: &str) -> bool {
        self.raw(key).is_some()
    }

    /// Where the key's value is written.
    pub(crate) fn span(&self, key: &str) -> Option<Span> {
        self.raw(key).map(|v| v.span())
    }

    /// A nested table, e.g. `[proxy.direct_response]`.
    pub(crate) fn table(
        &self,
        key: &str,
        known: &[&str],
        errors: &mut Collector,
    ) -> Option<Section<'a, 'i>> {
        let raw = self.raw(key)?;
        let name = format!(
            "[{}.{key}]",
            self.name.trim_matches(|c| c == '[' || c == ']')
        );
        match raw.get_ref().as_table() {
            Some(t) => Some(Section::new(name, Some(t), known, errors)),
            None => {
                errors.at(raw.span(), self.expected(key, "a table", raw));
                None
            }
        }
    }

    /// The tables of an array of tables (`[[rules]]`), each read as a section named
    /// `[[key]] #n` (from 1), with the span of its `[[key]]` header.
    pub(crate) fn tables(
        &self,
        key: &str,
        known: &[&str],
        errors: &mut Collector,
    ) -> Vec<(Section<'a, 'i>, Span)> {
        let Some(items) = self.raw(key).and_then(|v| v.get_ref().as_array()) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let Some(table) = item.get_ref().as_table() else {
                continue;
            };
            let name = format!("[[{key}]] #{}", i + 1);
            out.push((Section::new(name, Some(table), known, errors), item.span()));
        }
        out
    }

    /// A table of string keys to integers in `min..=max` (`overrides = { "k" = 10 }`); each bad
    /// value is reported on its own.
    pub(crate) fn integer_table(
        &self,
        key: &str,
        min: i64,
        max: i64,
        what: &str,
        errors: &mut Collector,
    ) -> Option<Vec<(At<String>, At<i64>)>> {
        let raw = self.raw(key)?;
        let Some(table) = raw.get_ref().as_table() else {
            errors.at(raw.span(), self.expected(key, "a table", raw));
            return None;
        };
        let mut out = Vec::with_capacity(table.len());
        for (k, v) in table {
            match integer_of(v.get_ref()) {
                Some(n) if (min..=max).contains(&n) => out.push((
                    At {
                        value: k.get_ref().to_string(),
                        span: k.span(),
                    },
                    At {
                        value: n,
                        span: v.span(),
                    },
                )),
                _ => errors.at(
                    v.span(),
                    format!(
                        "{} {key}: {:?}: expected {what}, found {}",
                        self.name,
                        k.get_ref(),
                        describe(v.get_ref())
                    ),
                ),
            }
        }
        Some(out)
    }

    /// A sub-section of the root (`[proxy]`); `None` in the file gives an empty section.
    pub(crate) fn section(&self, key: &str, known: &[&str], errors: &mut Collector) -> Self {
        let table = self.raw(key).and_then(|v| v.get_ref().as_table());
        Section::new(format!("[{key}]"), table, known, errors)
    }

    fn expected(&self, key: &str, what: &str, raw: &Spanned<DeValue>) -> String {
        format!(
            "{} {key}: expected {what}, found {}",
            self.name,
            describe(raw.get_ref())
        )
    }

    pub(crate) fn string(&self, key: &str, errors: &mut Collector) -> Option<At<String>> {
        let raw = self.raw(key)?;
        match raw.get_ref().as_str() {
            Some(s) => Some(At {
                value: s.to_string(),
                span: raw.span(),
            }),
            None => {
                errors.at(raw.span(), self.expected(key, "a string", raw));
                None
            }
        }
    }

    pub(crate) fn boolean(&self, key: &str, errors: &mut Collector) -> Option<At<bool>> {
        let raw = self.raw(key)?;
        match raw.get_ref().as_bool() {
            Some(b) => Some(At {
                value: b,
                span: raw.span(),
            }),
            None => {
                errors.at(raw.span(), self.expected(key, "true or false", raw));
                None
            }
        }
    }

    /// An integer in `min..=max`; `what` describes the range for the message.
    pub(crate) fn integer(
        &self,
        key: &str,
        min: i64,
        max: i64,
        what: &str,
        errors: &mut Collector,
    ) -> Option<At<i64>> {
        let raw = self.raw(key)?;
        match integer_of(raw.get_ref()) {
            Some(n) if (min..=max).contains(&n) => Some(At {
                value: n,
                span: raw.span(),
            }),
            _ => {
                errors.at(raw.span(), self.expected(key, what, raw));
                None
            }
        }
    }

    /// An array of strings; each bad element is reported on its own.
    pub(crate) fn strings(&self, key: &str, errors: &mut Collector) -> Option<Vec<At<String>>> {
        let raw = self.raw(key)?;
        let Some(items) = raw.get_ref().as_array() else {
            errors.at(raw.span(), self.expected(key, "an array of strings", raw));
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        for item in items.iter() {
            match item.get_ref().as_str() {
                Some(s) => out.push(At {
                    value: s.to_string(),
                    span: item.span(),
                }),
                None => errors.at(
                    item.span(),
                    format!(
                        "{} {key}: expected a string element, found {}",
                        self.name,
                        describe(item.get_ref())
                    ),
                ),
            }
        }
        Some(out)
    }
}

/// The value as an `i64`, when it is an integer that fits.
fn integer_of(value: &DeValue) -> Option<i64> {
    value
        .as_integer()
        .and_then(|i| i64::from_str_radix(i.as_str(), i.radix()).ok())
}

/// How a found value is named in messages: its type, and the value when it is short.
fn describe(value: &DeValue) -> String {
    match value {
        DeValue::String(s) => format!("string {s:?}"),
        DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
            Ok(n) => format!("integer {n}"),
            Err(_) => "an integer out of range".to_string(),
        },
        DeValue::Float(f) => format!("float {}", f.as_str()),
        DeValue::Boolean(b) => format!("boolean {b}"),
        other => other.type_str().to_string(),
    }
}

/// Parses a document, turning toml's syntax errors into located errors.
pub(crate) fn parse<'i>(source: &'i str, errors: &mut Collector) -> Option<DeTable<'i>> {
    let (table, syntax) = DeTable::parse_recoverable(source);
    if syntax.is_empty() {
        return Some(table.into_inner());
    }
    for e in syntax {
        let span = e.span().unwrap_or(0..0);
        errors.at(span, format!("invalid TOML: {}", e.message().trim()));
    }
    None
}
