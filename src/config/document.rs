//! The format-neutral model every part of the config is validated on: a tree of strings,
//! integers, booleans, arrays and tables, each value with where it was written. TOML files
//! become this tree here ([`from_toml`]), and so do JSON documents ([`from_json`]), so a rule
//! or an override sent to the admin API is checked by the same code, with the same messages,
//! as one in the file.

use std::ops::Range;

use toml::de::{DeTable, DeValue};

/// Where a value was written: a byte range of the source (empty for a document that has no
/// source text, such as JSON).
pub type Span = Range<usize>;

/// A value with where it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct Spanned<T> {
    pub value: T,
    pub span: Span,
}

/// One value of a document.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    String(String),
    /// `None`: an integer that does not fit an `i64`.
    Integer(Option<i64>),
    /// As written.
    Float(String),
    Boolean(bool),
    Datetime(String),
    Array(Vec<Spanned<Value>>),
    Table(Table),
    /// JSON's `null` in an array (in an object, it is an absent key).
    Null,
}

impl Value {
    /// Its type, as messages name it.
    pub fn type_str(&self) -> &'static str {
        match self {
            Value::String(_) => "string",
            Value::Integer(_) => "integer",
            Value::Float(_) => "float",
            Value::Boolean(_) => "boolean",
            Value::Datetime(_) => "datetime",
            Value::Array(_) => "array",
            Value::Table(_) => "table",
            Value::Null => "null",
        }
    }

    /// How a found value is named in messages: its type, and the value when it is short.
    pub fn describe(&self) -> String {
        match self {
            Value::String(s) => format!("string {s:?}"),
            Value::Integer(Some(n)) => format!("integer {n}"),
            Value::Integer(None) => "an integer out of range".to_string(),
            Value::Float(f) => format!("float {f}"),
            Value::Boolean(b) => format!("boolean {b}"),
            other => other.type_str().to_string(),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Boolean(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_integer(&self) -> Option<i64> {
        match self {
            Value::Integer(n) => *n,
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Spanned<Value>]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    pub fn as_table(&self) -> Option<&Table> {
        match self {
            Value::Table(t) => Some(t),
            _ => None,
        }
    }
}

/// A table: its keys in the order written, each with where it was written.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Table(pub Vec<(Spanned<String>, Spanned<Value>)>);

impl Table {
    pub fn get(&self, key: &str) -> Option<&Spanned<Value>> {
        self.0.iter().find(|(k, _)| k.value == key).map(|(_, v)| v)
    }

    pub fn keys(&self) -> impl Iterator<Item = &Spanned<String>> {
        self.0.iter().map(|(k, _)| k)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Spanned<String>, &Spanned<Value>)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A TOML document as the neutral tree; its syntax errors, each with where it is.
pub fn from_toml(source: &str) -> Result<Table, Vec<(Span, String)>> {
    let (table, syntax) = DeTable::parse_recoverable(source);
    if !syntax.is_empty() {
        return Err(syntax
            .into_iter()
            .map(|e| {
                (
                    e.span().unwrap_or(0..0),
                    format!("invalid TOML: {}", e.message().trim()),
                )
            })
            .collect());
    }
    Ok(toml_table(table.get_ref()))
}

fn toml_table(table: &DeTable) -> Table {
    Table(
        table
            .iter()
            .map(|(k, v)| {
                (
                    Spanned {
                        value: k.get_ref().to_string(),
                        span: k.span(),
                    },
                    Spanned {
                        value: toml_value(v.get_ref()),
                        span: v.span(),
                    },
                )
            })
            .collect(),
    )
}

fn toml_value(value: &DeValue) -> Value {
    match value {
        DeValue::String(s) => Value::String(s.to_string()),
        DeValue::Integer(i) => Value::Integer(i64::from_str_radix(i.as_str(), i.radix()).ok()),
        DeValue::Float(f) => Value::Float(f.as_str().to_string()),
        DeValue::Boolean(b) => Value::Boolean(*b),
        DeValue::Datetime(d) => Value::Datetime(d.to_string()),
        DeValue::Array(a) => Value::Array(
            a.iter()
                .map(|v| Spanned {
                    value: toml_value(v.get_ref()),
                    span: v.span(),
                })
                .collect(),
        ),
        DeValue::Table(t) => Value::Table(toml_table(t)),
    }
}

/// How a config file's strings take the environment: `${NAME}` is the variable's value,
/// `${NAME:-default}` the value when it is set and not empty, else `default` (as in the
/// shell). `$${` is a literal `${`; any other `$` is itself. `NAME` is ASCII letters, digits
/// and `_`, not starting with a digit.
///
/// Only a file's strings are interpolated, never a JSON document's: a rule sent to the admin
/// API must not be able to read the gateway's environment.
pub fn interpolate(table: &mut Table, env: &dyn Fn(&str) -> Option<String>) -> Vec<(Span, String)> {
    let mut errors = Vec::new();
    interpolate_table(table, "", env, &mut errors);
    errors
}

/// `name` is how errors name the table, as the reader does (`[proxy]`, `[proxy.health_check]`,
/// `[[rules]] #2`); empty for the top level.
fn interpolate_table(
    table: &mut Table,
    name: &str,
    env: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<(Span, String)>,
) {
    for (key, value) in table.0.iter_mut() {
        let key = key.value.as_str();
        match &mut value.value {
            Value::Table(inner) => {
                let inner_name = nested(name, key);
                interpolate_table(inner, &inner_name, env, errors);
            }
            Value::Array(items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    match &mut item.value {
                        // `[[rules]]`: each table named as the reader names it.
                        Value::Table(inner) if name.is_empty() => {
                            interpolate_table(inner, &format!("[[{key}]] #{}", i + 1), env, errors)
                        }
                        Value::Table(inner) => {
                            interpolate_table(inner, &nested(name, key), env, errors)
                        }
                        _ => interpolate_value(item, &at(name, key), env, errors),
                    }
                }
            }
            _ => interpolate_value(value, &at(name, key), env, errors),
        }
    }
}

fn nested(name: &str, key: &str) -> String {
    match name {
        "" => format!("[{key}]"),
        n if n.starts_with("[[") => format!("{n} {key}"),
        n => format!("[{}.{key}]", n.trim_matches(|c| c == '[' || c == ']')),
    }
}

fn at(name: &str, key: &str) -> String {
    match name {
        "" => key.to_string(),
        n => format!("{n} {key}"),
    }
}

/// A string (and the strings of a nested array) with its references replaced; each problem
/// is reported at the string.
fn interpolate_value(
    value: &mut Spanned<Value>,
    name: &str,
    env: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<(Span, String)>,
) {
    match &mut value.value {
        Value::String(s) => match substitute(s, env) {
            Ok(done) => *s = done,
            Err(problems) => errors.extend(
                problems
                    .into_iter()
                    .map(|p| (value.span.clone(), format!("{name}: {p}"))),
            ),
        },
        Value::Array(items) => {
            for item in items {
                interpolate_value(item, name, env, errors);
            }
        }
        _ => {}
    }
}

/// `text` with every `${NAME}` and `${NAME:-default}` replaced, or every reason it cannot be.
pub fn substitute(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, Vec<String>> {
    let mut out = String::with_capacity(text.len());
    let mut problems = Vec::new();
    let mut rest = text;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let from = &rest[dollar..];
        if let Some(after) = from.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
            continue;
        }
        let Some(inside) = from.strip_prefix("${") else {
            out.push('$');
            rest = &from[1..];
            continue;
        };
        let Some(end) = inside.find('}') else {
            problems.push(bad_reference(from));
            rest = "";
            break;
        };
        let (reference, body) = (&from[..end + 3], &inside[..end]);
        rest = &inside[end + 1..];
        let (name, default) = match body.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (body, None),
        };
        if !valid_name(name) || default.is_some_and(|d| d.contains("${")) {
            problems.push(bad_reference(reference));
            continue;
        }
        match (env(name), default) {
            (Some(v), Some(d)) if v.is_empty() => out.push_str(d),
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => problems.push(format!(
                "${{{name}}} is not set in the environment; expected it set, or a default as in ${{{name}:-default}}"
            )),
        }
    }
    out.push_str(rest);
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn bad_reference(found: &str) -> String {
    format!(
        "expected ${{NAME}} or ${{NAME:-default}} (NAME: letters, digits and _, not starting with a digit; $${{ for a literal ${{), found {found:?}"
    )
}

/// A JSON document as the neutral tree (with no spans: JSON carries none). A whole number
/// that JSON writes as a float (`10.0`) is an integer, as it is a JSON number like any other.
pub fn from_json(value: &serde_json::Value) -> Value {
    let at = |value| Spanned { value, span: 0..0 };
    match value {
        serde_json::Value::String(s) => Value::String(s.clone()),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Value::Integer(Some(i)),
            (None, Some(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => {
                Value::Integer(Some(f as i64))
            }
            (None, Some(f)) if n.is_u64() || f.fract() == 0.0 => Value::Integer(None),
            _ => Value::Float(n.to_string()),
        },
        serde_json::Value::Bool(b) => Value::Boolean(*b),
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Array(a) => Value::Array(a.iter().map(|v| at(from_json(v))).collect()),
        // In an object, `null` is an absent key.
        serde_json::Value::Object(o) => Value::Table(Table(
            o.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| {
                    let key = Spanned {
                        value: k.clone(),
                        span: 0..0,
                    };
                    (key, at(from_json(v)))
                })
                .collect(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_take_the_environment() {
        let env = |name: &str| match name {
            "HOST" => Some("db.internal".to_string()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        let ok = |text: &str| substitute(text, &env).unwrap();
        assert_eq!(ok("redis://${HOST}:6379"), "redis://db.internal:6379");
        assert_eq!(ok("${HOST:-other}"), "db.internal");
        assert_eq!(ok("${UNSET:-fallback}/${UNSET_TOO:-}"), "fallback/");
        // Set but empty: the default, as in the shell; without a default, empty.
        assert_eq!(ok("[${EMPTY:-x}][${EMPTY}]"), "[x][]");
        // `$${` is a literal `${`; any other `$` is itself.
        assert_eq!(ok("$${HOST} ${HOST}"), "${HOST} db.internal");
        assert_eq!(ok("pa$$word $1 $HOST $"), "pa$$word $1 $HOST $");
        assert_eq!(ok("${HOST:-a:-b}"), "db.internal");
        assert_eq!(ok("${UNSET:-a:-b}"), "a:-b");

        let problems = substitute("${A} ${B:-ok} ${C}", &env).unwrap_err();
        assert_eq!(problems.len(), 2, "every unset variable: {problems:?}");
        assert!(problems[0].starts_with("${A} is not set"), "{problems:?}");
        assert!(problems[1].starts_with("${C} is not set"), "{problems:?}");
        for bad in [
            "${",
            "${HOST",
            "${}",
            "${1X}",
            "${A-B}",
            "${A:?x}",
            "${A:-${B}}",
            "${a b}",
        ] {
            let problems = substitute(bad, &env).unwrap_err();
            assert!(
                problems[0].starts_with("expected ${NAME} or ${NAME:-default}"),
                "{bad}: {problems:?}"
            );
        }
    }

    #[test]
    fn every_string_of_a_file_is_interpolated_and_named_as_the_reader_names_it() {
        let env = |name: &str| (name == "V").then(|| "v".to_string());
        let mut doc = from_toml(
            "[a]\ns = \"${V}\"\nlist = [\"x${V}\", 3]\n[a.b]\nt = '${V}'\n[[r]]\nn = \"${NO}\"\n[[r]]\nn = \"${V}\"\n",
        )
        .unwrap();
        let errors = interpolate(&mut doc, &env);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].1.starts_with("[[r]] #1 n: ${NO} is not set"),
            "{errors:?}"
        );
        assert_eq!(errors[0].0, 62..69);
        let a = doc.get("a").unwrap().value.as_table().unwrap();
        assert_eq!(a.get("s").unwrap().value.as_str(), Some("v"));
        assert_eq!(
            a.get("list").unwrap().value.as_array().unwrap()[0]
                .value
                .as_str(),
            Some("xv")
        );
        let b = a.get("b").unwrap().value.as_table().unwrap();
        assert_eq!(b.get("t").unwrap().value.as_str(), Some("v"));
        let mut nested = from_toml("[a.b]\nt = \"${NO}\"\n").unwrap();
        assert!(interpolate(&mut nested, &env)[0].1.starts_with("[a.b] t: "));
    }

    #[test]
    fn toml_and_json_give_the_same_tree_but_for_spans() {
        let toml = from_toml("name = \"login\"\nlimit = 5\nmethods = [\"POST\"]\nshadow = false\n")
            .unwrap();
        let json = from_json(&serde_json::json!({
            "name": "login", "limit": 5, "methods": ["POST"], "shadow": false, "gone": null
        }));
        let strip = |t: &Table| -> Vec<(String, String)> {
            let mut all: Vec<(String, String)> = t
                .iter()
                .map(|(k, v)| (k.value.clone(), v.value.describe()))
                .collect();
            all.sort();
            all
        };
        assert_eq!(strip(&toml), strip(json.as_table().unwrap()));
        assert_eq!(toml.get("limit").unwrap().span, 23..24);
        assert_eq!(
            from_json(&serde_json::json!(10.0)),
            Value::Integer(Some(10))
        );
        assert_eq!(from_json(&serde_json::json!(1.5)).type_str(), "float");
        assert_eq!(
            from_toml("a = 99999999999999999999")
                .unwrap()
                .get("a")
                .unwrap()
                .value,
            Value::Integer(None)
        );
        let errors = from_toml("a = ").unwrap_err();
        assert!(errors[0].1.starts_with("invalid TOML:"), "{errors:?}");
    }
}
