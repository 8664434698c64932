//! The raw layer: a walk over the document (the format-neutral tree of [`super::document`])
//! that keeps every value's span.
//!
//! serde stops at the first bad value; an operator fixing a config wants them all. So each
//! section is read key by key: unknown keys and wrong types are recorded in the
//! [`Collector`] and reading goes on.

use super::document::{Spanned, Table, Value};
use super::error::Collector;

pub(crate) use super::document::Span;

/// How errors name the document's top level.
const ROOT: &str = "the top level";

/// A value as written in the file, with where it was written.
pub(crate) struct At<T> {
    pub value: T,
    pub span: Span,
}

/// One TOML table being read: `name` is how errors refer to it (`[proxy]`).
pub(crate) struct Section<'a> {
    pub name: String,
    table: Option<&'a Table>,
}

impl<'a> Section<'a> {
    /// Reads a table, reporting every key that is not in `known`.
    pub(crate) fn new(
        name: impl Into<String>,
        table: Option<&'a Table>,
        known: &[&str],
        errors: &mut Collector,
    ) -> Self {
        let name = name.into();
        if let Some(table) = table {
            for key in table.keys() {
                if !known.contains(&key.value.as_str()) {
                    let what = match name.as_str() {
                        ROOT => format!("unknown section [{}]", key.value),
                        _ => format!("unknown key `{}` in {name}", key.value),
                    };
                    errors.at(
                        key.span.clone(),
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
        table: &'a Table,
        tables: &[&str],
        arrays: &[&str],
        errors: &mut Collector,
    ) -> Self {
        let known: Vec<&str> = tables.iter().chain(arrays).copied().collect();
        let section = Section::new(ROOT, Some(table), &known, errors);
        for (key, value) in table.iter() {
            let name = key.value.as_str();
            let v = &value.value;
            if tables.contains(&name) && v.as_table().is_none() {
                errors.at(
                    value.span.clone(),
                    format!(
                        "`{name}` must be a table ([{name}]), found {}",
                        v.type_str()
                    ),
                );
            }
            let array_of_tables = v
                .as_array()
                .is_some_and(|a| a.iter().all(|t| t.value.as_table().is_some()));
            if arrays.contains(&name) && !array_of_tables {
                errors.at(
                    value.span.clone(),
                    format!(
                        "`{name}` must be an array of tables ([[{name}]]), found {}",
                        v.type_str()
                    ),
                );
            }
        }
        section
    }

    fn raw(&self, key: &str) -> Option<&'a Spanned<Value>> {
        self.table?.get(key)
    }

    /// Whether the key is written at all (used for tables whose presence means something).
    pub(crate) fn has(&self, key: &str) -> bool {
        self.raw(key).is_some()
    }

    /// An `IP:port`; `default` when not written.
    pub(crate) fn socket_addr(
        &self,
        key: &str,
        default: &str,
        errors: &mut Collector,
    ) -> Option<std::net::SocketAddr> {
        match self.string(key, errors) {
            None => default.parse().ok(),
            Some(At { value, span }) => match value.parse() {
                Ok(a) => Some(a),
                Err(_) => {
                    errors.at(
                        span,
                        format!(
                            "{} {key}: expected an IP address and port like \"127.0.0.1:8080\", found {value:?}",
                            self.name
                        ),
                    );
                    None
                }
            },
        }
    }

    /// Where the key's value is written (for a key that is).
    pub(crate) fn span_of(&self, key: &str) -> Span {
        self.raw(key).map(|v| v.span.clone()).unwrap_or_default()
    }

    /// Whether the key's value is a string.
    pub(crate) fn is_string(&self, key: &str) -> bool {
        self.raw(key).is_some_and(|v| v.value.as_str().is_some())
    }

    /// Whether the key's value is an array.
    pub(crate) fn is_array(&self, key: &str) -> bool {
        self.raw(key).is_some_and(|v| v.value.as_array().is_some())
    }

    /// Where the key's value is written.
    pub(crate) fn span(&self, key: &str) -> Option<Span> {
        self.raw(key).map(|v| v.span.clone())
    }

    /// A nested table, e.g. `[proxy.direct_response]`.
    pub(crate) fn table(
        &self,
        key: &str,
        known: &[&str],
        errors: &mut Collector,
    ) -> Option<Section<'a>> {
        let name = format!(
            "[{}.{key}]",
            self.name.trim_matches(|c| c == '[' || c == ']')
        );
        self.table_named(key, name, known, errors)
    }

    /// An inline table of a key (`queue = { max_waiting = 16 }`), read as a section named
    /// after the key (`[[rules]] #2 queue`).
    pub(crate) fn inline_table(
        &self,
        key: &str,
        known: &[&str],
        errors: &mut Collector,
    ) -> Option<Section<'a>> {
        self.table_named(key, format!("{} {key}", self.name), known, errors)
    }

    fn table_named(
        &self,
        key: &str,
        name: String,
        known: &[&str],
        errors: &mut Collector,
    ) -> Option<Section<'a>> {
        let raw = self.raw(key)?;
        match raw.value.as_table() {
            Some(t) => Some(Section::new(name, Some(t), known, errors)),
            None => {
                errors.at(raw.span.clone(), self.expected(key, "a table", raw));
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
    ) -> Vec<(Section<'a>, Span)> {
        let Some(items) = self.raw(key).and_then(|v| v.value.as_array()) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let Some(table) = item.value.as_table() else {
                continue;
            };
            let name = format!("[[{key}]] #{}", i + 1);
            out.push((
                Section::new(name, Some(table), known, errors),
                item.span.clone(),
            ));
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
        let Some(table) = raw.value.as_table() else {
            errors.at(raw.span.clone(), self.expected(key, "a table", raw));
            return None;
        };
        let mut out = Vec::with_capacity(table.len());
        for (k, v) in table.iter() {
            match v.value.as_integer() {
                Some(n) if (min..=max).contains(&n) => out.push((
                    At {
                        value: k.value.clone(),
                        span: k.span.clone(),
                    },
                    At {
                        value: n,
                        span: v.span.clone(),
                    },
                )),
                _ => errors.at(
                    v.span.clone(),
                    format!(
                        "{} {key}: {:?}: expected {what}, found {}",
                        self.name,
                        k.value,
                        v.value.describe()
                    ),
                ),
            }
        }
        Some(out)
    }

    /// A table of string keys to strings (`headers = { "A" = "b" }`), in file order; each value
    /// that is not a string is reported on its own.
    pub(crate) fn string_table(
        &self,
        key: &str,
        errors: &mut Collector,
    ) -> Option<Vec<(At<String>, At<String>)>> {
        let raw = self.raw(key)?;
        let Some(table) = raw.value.as_table() else {
            errors.at(raw.span.clone(), self.expected(key, "a table", raw));
            return None;
        };
        let mut out = Vec::with_capacity(table.len());
        for (k, v) in table.iter() {
            match v.value.as_str() {
                Some(s) => out.push((
                    At {
                        value: k.value.clone(),
                        span: k.span.clone(),
                    },
                    At {
                        value: s.to_string(),
                        span: v.span.clone(),
                    },
                )),
                None => errors.at(
                    v.span.clone(),
                    format!(
                        "{} {key}: {:?}: expected a string, found {}",
                        self.name,
                        k.value,
                        v.value.describe()
                    ),
                ),
            }
        }
        Some(out)
    }

    /// A sub-section of the root (`[proxy]`); `None` in the file gives an empty section.
    pub(crate) fn section(&self, key: &str, known: &[&str], errors: &mut Collector) -> Self {
        let table = self.raw(key).and_then(|v| v.value.as_table());
        Section::new(format!("[{key}]"), table, known, errors)
    }

    fn expected(&self, key: &str, what: &str, raw: &Spanned<Value>) -> String {
        format!(
            "{} {key}: expected {what}, found {}",
            self.name,
            raw.value.describe()
        )
    }

    pub(crate) fn string(&self, key: &str, errors: &mut Collector) -> Option<At<String>> {
        let raw = self.raw(key)?;
        match raw.value.as_str() {
            Some(s) => Some(At {
                value: s.to_string(),
                span: raw.span.clone(),
            }),
            None => {
                errors.at(raw.span.clone(), self.expected(key, "a string", raw));
                None
            }
        }
    }

    /// One of a few words (`"allow"` or `"deny"`), as its value. `None` when the key is not
    /// set, or when it is set to anything else, which is reported (`has` tells the two apart).
    pub(crate) fn choice<T: Copy>(
        &self,
        key: &str,
        options: &[(&str, T)],
        errors: &mut Collector,
    ) -> Option<T> {
        let At { value, span } = self.string(key, errors)?;
        if let Some((_, v)) = options.iter().find(|(name, _)| *name == value) {
            return Some(*v);
        }
        let names: Vec<String> = options.iter().map(|(n, _)| format!("{n:?}")).collect();
        let listed = match names.split_last() {
            Some((last, [])) => last.clone(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => String::new(),
        };
        errors.at(
            span,
            format!("{} {key}: expected {listed}, found {value:?}", self.name),
        );
        None
    }

    pub(crate) fn boolean(&self, key: &str, errors: &mut Collector) -> Option<At<bool>> {
        let raw = self.raw(key)?;
        match raw.value.as_bool() {
            Some(b) => Some(At {
                value: b,
                span: raw.span.clone(),
            }),
            None => {
                errors.at(raw.span.clone(), self.expected(key, "true or false", raw));
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
        match raw.value.as_integer() {
            Some(n) if (min..=max).contains(&n) => Some(At {
                value: n,
                span: raw.span.clone(),
            }),
            _ => {
                errors.at(raw.span.clone(), self.expected(key, what, raw));
                None
            }
        }
    }

    /// An array of strings; each bad element is reported on its own.
    pub(crate) fn strings(&self, key: &str, errors: &mut Collector) -> Option<Vec<At<String>>> {
        let raw = self.raw(key)?;
        let Some(items) = raw.value.as_array() else {
            errors.at(
                raw.span.clone(),
                self.expected(key, "an array of strings", raw),
            );
            return None;
        };
        self.string_items(key, items, errors)
    }

    /// A string or an array of strings (a composite key); each bad element is reported on
    /// its own.
    pub(crate) fn string_or_strings(
        &self,
        key: &str,
        errors: &mut Collector,
    ) -> Option<At<Vec<At<String>>>> {
        let raw = self.raw(key)?;
        let items = match &raw.value {
            Value::String(s) => vec![At {
                value: s.clone(),
                span: raw.span.clone(),
            }],
            Value::Array(items) => self.string_items(key, items, errors)?,
            _ => {
                errors.at(
                    raw.span.clone(),
                    self.expected(key, "a string or an array of strings", raw),
                );
                return None;
            }
        };
        Some(At {
            value: items,
            span: raw.span.clone(),
        })
    }

    fn string_items(
        &self,
        key: &str,
        items: &[Spanned<Value>],
        errors: &mut Collector,
    ) -> Option<Vec<At<String>>> {
        let mut out = Vec::with_capacity(items.len());
        for item in items.iter() {
            match item.value.as_str() {
                Some(s) => out.push(At {
                    value: s.to_string(),
                    span: item.span.clone(),
                }),
                None => errors.at(
                    item.span.clone(),
                    format!(
                        "{} {key}: expected a string element, found {}",
                        self.name,
                        item.value.describe()
                    ),
                ),
            }
        }
        Some(out)
    }
}

/// Parses a TOML document into the neutral tree, turning its syntax errors into located
/// errors.
pub(crate) fn parse(source: &str, errors: &mut Collector) -> Option<Table> {
    match super::document::from_toml(source) {
        Ok(table) => Some(table),
        Err(syntax) => {
            for (span, message) in syntax {
                errors.at(span, message);
            }
            None
        }
    }
}
