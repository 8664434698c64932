//! What a request weighs (contract §13): the units a rule reserves at admission (`cost`, a
//! constant or a request header), the bound on any one request (`max_cost`), and how the
//! response settles the reservation (`settle`, `count_status`). Pure: the proxy reads the
//! values ([`crate::settle`]) and the store gives back or charges the difference.

use http::{HeaderMap, HeaderName};

/// The units a request reserves under a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cost {
    Units(u32),
    /// Read from this request header: a whole number 1..=`max_cost`.
    Header(HeaderName),
}

/// Where a response says what the request really cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettleFrom {
    /// A response header holding a whole number.
    Header(HeaderName),
    /// A field of a JSON body, or of the last `data:` event of a `text/event-stream` that
    /// carries it.
    Json(JsonPath),
}

/// A dotted path into a JSON document: object fields by name, array items by index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonPath(Vec<String>);

impl JsonPath {
    /// `usage.total_tokens`, `choices.0.usage.tokens`; `None` for an empty segment.
    pub fn parse(path: &str) -> Option<JsonPath> {
        let parts: Vec<String> = path.split('.').map(str::to_string).collect();
        parts
            .iter()
            .all(|p| !p.is_empty())
            .then_some(JsonPath(parts))
    }

    /// The value at this path, if there is one.
    pub fn find<'v>(&self, doc: &'v serde_json::Value) -> Option<&'v serde_json::Value> {
        self.0.iter().try_fold(doc, |v, part| match v {
            serde_json::Value::Object(map) => map.get(part),
            serde_json::Value::Array(items) => items.get(part.parse::<usize>().ok()?),
            _ => None,
        })
    }
}

impl std::fmt::Display for JsonPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join("."))
    }
}

/// Statuses a rule counts: exact codes (`"401"`) and classes (`"4xx"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusSet(Vec<StatusMatch>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StatusMatch {
    Exact(u16),
    Class(u16),
}

impl StatusSet {
    /// Each item `"100"`..`"599"` or `"1xx"`..`"5xx"`; the first that is not, as `Err`.
    pub fn parse<'a>(items: impl IntoIterator<Item = &'a str>) -> Result<StatusSet, &'a str> {
        let mut set = Vec::new();
        for item in items {
            let b = item.as_bytes();
            let m = match b {
                [c @ b'1'..=b'5', b'x' | b'X', b'x' | b'X'] => {
                    StatusMatch::Class(u16::from(c - b'0'))
                }
                [b'1'..=b'5', b'0'..=b'9', b'0'..=b'9'] => {
                    StatusMatch::Exact(item.parse().map_err(|_| item)?)
                }
                _ => return Err(item),
            };
            set.push(m);
        }
        Ok(StatusSet(set))
    }

    pub fn contains(&self, status: u16) -> bool {
        self.0.iter().any(|m| match *m {
            StatusMatch::Exact(s) => s == status,
            StatusMatch::Class(c) => status / 100 == c,
        })
    }

    /// As written: `["401", "4xx"]`.
    pub fn names(&self) -> Vec<String> {
        self.0
            .iter()
            .map(|m| match *m {
                StatusMatch::Exact(s) => s.to_string(),
                StatusMatch::Class(c) => format!("{c}xx"),
            })
            .collect()
    }
}

/// A rule's costs: what it reserves and how it settles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Costing {
    pub cost: Cost,
    /// Bound on any one request's reservation and settlement.
    pub max_cost: u32,
    pub settle: Option<SettleFrom>,
    pub count_status: Option<StatusSet>,
}

impl Costing {
    /// One unit per request, settled never: the rule of every request before costs.
    pub fn one(max_cost: u32) -> Costing {
        Costing {
            cost: Cost::Units(1),
            max_cost,
            settle: None,
            count_status: None,
        }
    }

    /// Whether the response settles the reservation.
    pub fn settles(&self) -> bool {
        self.settle.is_some() || self.count_status.is_some()
    }

    /// The units a request reserves, or why its cost header is refused (a `400`).
    pub fn units(&self, headers: &HeaderMap) -> Result<u32, String> {
        let name = match &self.cost {
            Cost::Units(n) => return Ok(*n),
            Cost::Header(name) => name,
        };
        let mut values = headers.get_all(name).iter();
        let value = match (values.next(), values.next()) {
            (None, _) => return Err(format!("the {name} header is required")),
            (Some(_), Some(_)) => return Err(format!("more than one {name} header")),
            (Some(v), None) => v,
        };
        let n = whole(value.as_bytes())
            .ok_or_else(|| format!("{name}: expected a whole number 1..={}", self.max_cost))?;
        if n == 0 || n > u64::from(self.max_cost) {
            return Err(format!(
                "{name}: {n} is outside 1..={} (max_cost)",
                self.max_cost
            ));
        }
        Ok(n as u32)
    }
}

/// A whole number written in ASCII digits (surrounding spaces allowed), up to `u64::MAX`.
pub fn whole(bytes: &[u8]) -> Option<u64> {
    let digits = bytes.trim_ascii();
    if digits.is_empty() || digits.len() > 20 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn statuses_by_code_and_class() {
        let s = StatusSet::parse(["401", "403", "5xx"]).unwrap();
        assert!(s.contains(401) && s.contains(403) && s.contains(503));
        assert!(!s.contains(200) && !s.contains(404));
        assert_eq!(s.names(), ["401", "403", "5xx"]);
        for bad in ["600", "4x", "40", "4xxx", "abc", "099", ""] {
            assert_eq!(StatusSet::parse([bad]), Err(bad), "{bad}");
        }
    }

    #[test]
    fn json_paths_walk_objects_and_arrays() {
        let doc: serde_json::Value =
            serde_json::from_str(r#"{"usage":{"total_tokens":42},"choices":[{"n":7}]}"#).unwrap();
        let p = JsonPath::parse("usage.total_tokens").unwrap();
        assert_eq!(p.find(&doc), Some(&serde_json::json!(42)));
        assert_eq!(
            JsonPath::parse("choices.0.n").unwrap().find(&doc),
            Some(&serde_json::json!(7))
        );
        assert_eq!(JsonPath::parse("usage.missing").unwrap().find(&doc), None);
        assert!(JsonPath::parse("usage..x").is_none());
        assert!(JsonPath::parse("").is_none());
    }

    #[test]
    fn a_cost_header_is_one_whole_number_within_max_cost() {
        let costing = Costing {
            cost: Cost::Header(HeaderName::from_static("x-cost")),
            ..Costing::one(100)
        };
        let of = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append("x-cost", HeaderValue::from_str(v).unwrap());
            }
            costing.units(&h)
        };
        assert_eq!(of(&["7"]), Ok(7));
        assert_eq!(of(&[" 100 "]), Ok(100));
        for bad in [
            &[][..],
            &["0"],
            &["101"],
            &["-1"],
            &["1.5"],
            &["1e3"],
            &["abc"],
            &[""],
            &["99999999999999999999999"],
            &["1", "1"],
        ] {
            assert!(of(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Costing::one(5).units(&HeaderMap::new()), Ok(1));
    }
}
