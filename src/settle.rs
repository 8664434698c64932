//! Reading what a response says a request cost (contract §13), and what that means for its
//! reservation. The proxy feeds the response in as it passes ([`BodyReader`] never holds a
//! stream back, and keeps at most [`MAX_READ`] bytes); once the response has been sent (or
//! the client has gone), [`actual`] turns the status and the value read into the units to
//! settle at, or the reason the reservation stays as it is.

use http::{HeaderMap, HeaderValue};

use crate::limiter::{Outcome, Settlement};
use crate::rules::cost::{whole, Costing, JsonPath, SettleFrom};
use crate::rules::RuleSet;

/// The most of a JSON body, or of one event-stream line, kept to read a settlement from;
/// a larger one leaves the reservation as it is.
pub const MAX_READ: usize = 1 << 20;

/// Why a reservation stays as it was reserved, as the `reason` label of
/// `ratelimiter_settle_failures_total` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The header or field is not there.
    Missing,
    /// It is not a whole number (or the body is not JSON).
    Malformed,
    /// It is above the rule's `max_cost`.
    OverMaxCost,
    /// The body (or an event's line) is larger than [`MAX_READ`].
    TooLarge,
    /// No response at all: the client or the upstream went away first.
    NoResponse,
    /// The store could not settle (it failed or timed out).
    Store,
}

impl Failure {
    pub const ALL: [Failure; 6] = [
        Failure::Missing,
        Failure::Malformed,
        Failure::OverMaxCost,
        Failure::TooLarge,
        Failure::NoResponse,
        Failure::Store,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Failure::Missing => "missing",
            Failure::Malformed => "malformed",
            Failure::OverMaxCost => "over_max_cost",
            Failure::TooLarge => "too_large",
            Failure::NoResponse => "no_response",
            Failure::Store => "store",
        }
    }
}

/// What a response said about the units a request used.
pub type Reading = Result<u64, Failure>;

/// A settlement value in a response header.
pub fn header_value(value: Option<&HeaderValue>) -> Reading {
    let value = value.ok_or(Failure::Missing)?;
    whole(value.as_bytes()).ok_or(Failure::Malformed)
}

/// A settlement value in a JSON document.
fn json_value(doc: &serde_json::Value, path: &JsonPath) -> Reading {
    let v = path.find(doc).ok_or(Failure::Missing)?;
    match v {
        serde_json::Value::Number(n) => match (n.as_u64(), n.as_f64()) {
            (Some(u), _) => Ok(u),
            // `12.0` is twelve; `12.5` and negatives are not a count of units.
            (None, Some(f)) if f >= 0.0 && f.fract() == 0.0 && f < u64::MAX as f64 => Ok(f as u64),
            _ => Err(Failure::Malformed),
        },
        _ => Err(Failure::Malformed),
    }
}

/// Reads JSON fields out of a response body as it streams: the whole body when it is JSON;
/// for `text/event-stream`, each `data:` line, keeping for each field the value of the last
/// event that carries it. One reader serves every rule of a request that settles from JSON.
#[derive(Debug)]
pub struct BodyReader {
    paths: Vec<JsonPath>,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    /// A JSON body, kept up to [`MAX_READ`].
    Json { body: Vec<u8>, too_large: bool },
    /// An event stream: the line being read, and the last value found per path.
    Events {
        line: Vec<u8>,
        too_large: bool,
        found: Vec<Option<Reading>>,
    },
}

impl BodyReader {
    /// A reader for these paths of a body of this `Content-Type` (anything but an event
    /// stream is read as JSON, so an API that labels JSON loosely still settles).
    pub fn new(paths: Vec<JsonPath>, content_type: Option<&[u8]>) -> BodyReader {
        let events = content_type.is_some_and(|ct| {
            let essence = ct.split(|&b| b == b';').next().unwrap_or(ct).trim_ascii();
            essence.eq_ignore_ascii_case(b"text/event-stream")
        });
        let kind = if events {
            Kind::Events {
                line: Vec::new(),
                too_large: false,
                found: vec![None; paths.len()],
            }
        } else {
            Kind::Json {
                body: Vec::new(),
                too_large: false,
            }
        };
        BodyReader { paths, kind }
    }

    /// One more piece of the body.
    pub fn feed(&mut self, mut chunk: &[u8]) {
        match &mut self.kind {
            Kind::Json { body, too_large } => {
                if body.len() + chunk.len() > MAX_READ {
                    *too_large = true;
                    body.clear();
                } else if !*too_large {
                    body.extend_from_slice(chunk);
                }
            }
            Kind::Events {
                line,
                too_large,
                found,
            } => {
                while let Some(end) = chunk.iter().position(|&b| b == b'\n') {
                    if !*too_large {
                        line.extend_from_slice(&chunk[..end]);
                        event_line(line, &self.paths, found);
                    }
                    line.clear();
                    *too_large = false;
                    chunk = &chunk[end + 1..];
                }
                if line.len() + chunk.len() > MAX_READ {
                    *too_large = true;
                    line.clear();
                } else if !*too_large {
                    line.extend_from_slice(chunk);
                }
            }
        }
    }

    /// What the whole body said, per path (in the order given).
    pub fn finish(mut self) -> Vec<Reading> {
        match &mut self.kind {
            Kind::Json { body, too_large } => {
                if *too_large {
                    return vec![Err(Failure::TooLarge); self.paths.len()];
                }
                match serde_json::from_slice::<serde_json::Value>(body) {
                    Ok(doc) => self.paths.iter().map(|p| json_value(&doc, p)).collect(),
                    Err(_) if body.is_empty() => vec![Err(Failure::Missing); self.paths.len()],
                    Err(_) => vec![Err(Failure::Malformed); self.paths.len()],
                }
            }
            Kind::Events {
                line,
                too_large,
                found,
            } => {
                // A last line without its newline still counts.
                if !*too_large && !line.is_empty() {
                    event_line(line, &self.paths, found);
                }
                std::mem::take(found)
                    .into_iter()
                    .map(|f| f.unwrap_or(Err(Failure::Missing)))
                    .collect()
            }
        }
    }
}

/// One line of an event stream: a `data:` line holding JSON updates each path it carries.
/// Other lines (`event:`, comments, `data: [DONE]`) carry nothing.
fn event_line(line: &[u8], paths: &[JsonPath], found: &mut [Option<Reading>]) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Some(data) = line.strip_prefix(b"data:") else {
        return;
    };
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(data.trim_ascii()) else {
        return;
    };
    for (path, slot) in paths.iter().zip(found.iter_mut()) {
        if path.find(&doc).is_some() {
            *slot = Some(json_value(&doc, path));
        }
    }
}

/// The units a reservation settles at, from the final status (`None`: no response) and what
/// the response said for this rule (`None`: nothing was read), or why it stays as reserved.
pub fn actual(
    costing: &Costing,
    reserved: u32,
    status: Option<u16>,
    reading: Option<Reading>,
) -> Result<u32, Failure> {
    if let Some(counted) = &costing.count_status {
        match status {
            None => return Err(Failure::NoResponse),
            Some(s) if !counted.contains(s) => return Ok(0),
            Some(_) => {}
        }
    }
    if costing.settle.is_none() {
        return Ok(reserved);
    }
    match reading.unwrap_or(Err(match status {
        None => Failure::NoResponse,
        Some(_) => Failure::Missing,
    })) {
        Ok(n) if n <= u64::from(costing.max_cost) => Ok(n as u32),
        Ok(_) => Err(Failure::OverMaxCost),
        Err(f) => Err(f),
    }
}

/// The JSON paths of a rule's settlement, when it settles from JSON.
pub fn json_path(costing: &Costing) -> Option<&JsonPath> {
    match &costing.settle {
        Some(SettleFrom::Json(path)) => Some(path),
        _ => None,
    }
}

/// The settlements a request owes, gathered as its response passes: one per check that
/// recorded the request under a rule with `settle` or `count_status`.
#[derive(Debug)]
pub struct Owed {
    /// The check's place in the outcome, and what the response said for it.
    pending: Vec<(usize, Option<Reading>)>,
    /// Reads the body, when a rule settles from JSON.
    body: Option<BodyReader>,
}

impl Owed {
    /// What an allowed request owes; `None` when no rule of it settles.
    pub fn of(outcome: &Outcome, rules: &RuleSet) -> Option<Owed> {
        if !rules.settles() || !outcome.allowed() {
            return None;
        }
        let pending: Vec<(usize, Option<Reading>)> = outcome
            .iter()
            .enumerate()
            .filter(|(_, (c, d))| {
                d.is_some_and(|d| d.allowed)
                    && rules.get(c.rule).is_some_and(|r| r.costing.settles())
            })
            .map(|(i, _)| (i, None))
            .collect();
        (!pending.is_empty()).then_some(Owed {
            pending,
            body: None,
        })
    }

    fn costing<'r>(outcome: &Outcome, rules: &'r RuleSet, index: usize) -> Option<&'r Costing> {
        let (check, _) = outcome.iter().nth(index)?;
        rules.get(check.rule).map(|r| &r.costing)
    }

    /// The response's header: settlement headers are read, and a body reader is made for
    /// the rules that settle from JSON.
    pub fn response_header(&mut self, outcome: &Outcome, rules: &RuleSet, headers: &HeaderMap) {
        let mut paths = Vec::new();
        for (index, reading) in self.pending.iter_mut() {
            match Self::costing(outcome, rules, *index).and_then(|c| c.settle.as_ref()) {
                Some(SettleFrom::Header(name)) => *reading = Some(header_value(headers.get(name))),
                Some(SettleFrom::Json(path)) => paths.push(path.clone()),
                None => {}
            }
        }
        if !paths.is_empty() {
            let content_type = headers
                .get(http::header::CONTENT_TYPE)
                .map(HeaderValue::as_bytes);
            self.body = Some(BodyReader::new(paths, content_type));
        }
    }

    /// One more piece of the response body.
    pub fn body(&mut self, chunk: &[u8]) {
        if let Some(reader) = &mut self.body {
            reader.feed(chunk);
        }
    }

    /// Once the response has been sent (or the client has gone): the settlements to make,
    /// and the reservations that stay as reserved, with why. `status`: the final status
    /// the upstream answered, else the one the client was sent; `None`: no response.
    pub fn settle(
        self,
        outcome: &Outcome,
        rules: &RuleSet,
        status: Option<u16>,
    ) -> (Vec<Settlement>, Vec<(&'static str, Failure)>) {
        let mut from_body = self
            .body
            .map(BodyReader::finish)
            .unwrap_or_default()
            .into_iter();
        let (mut settlements, mut failures) = (Vec::new(), Vec::new());
        for (index, reading) in self.pending {
            let Some((check, Some(decision))) = outcome.iter().nth(index) else {
                continue;
            };
            let Some(costing) = rules.get(check.rule).map(|r| &r.costing) else {
                continue;
            };
            let reading = match json_path(costing) {
                Some(_) => from_body.next(),
                None => reading,
            };
            match actual(costing, check.cost, status, reading) {
                Ok(units) if units == check.cost => {}
                Ok(units) => settlements.push(Settlement {
                    check: check.clone(),
                    mark: decision.mark,
                    actual: units,
                    max_cost: costing.max_cost,
                }),
                Err(why) => failures.push((check.rule, why)),
            }
        }
        (settlements, failures)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::cost::{Cost, StatusSet};

    fn path(p: &str) -> JsonPath {
        JsonPath::parse(p).unwrap()
    }

    fn read(ct: &str, chunks: &[&str], p: &str) -> Reading {
        let mut r = BodyReader::new(vec![path(p)], Some(ct.as_bytes()));
        for c in chunks {
            r.feed(c.as_bytes());
        }
        r.finish().remove(0)
    }

    #[test]
    fn a_json_body_in_pieces() {
        let body = ["{\"usage\":{\"total", "_tokens\": 42}}"];
        assert_eq!(
            read("application/json", &body, "usage.total_tokens"),
            Ok(42)
        );
        assert_eq!(
            read("application/json", &body, "usage.prompt_tokens"),
            Err(Failure::Missing)
        );
        assert_eq!(
            read("application/json", &["{\"usage\":"], "usage.total_tokens"),
            Err(Failure::Malformed)
        );
        for bad in ["-3", "1.5", "\"12\"", "null"] {
            let body = format!("{{\"n\":{bad}}}");
            assert_eq!(
                read("application/json", &[&body], "n"),
                Err(Failure::Malformed),
                "{bad}"
            );
        }
        assert_eq!(read("application/json", &["{\"n\":12.0}"], "n"), Ok(12));
        let huge = "x".repeat(MAX_READ + 1);
        assert_eq!(
            read("application/json", &["{\"n\":1,", &huge], "n"),
            Err(Failure::TooLarge)
        );
    }

    #[test]
    fn an_event_stream_settles_from_its_last_event_with_the_field() {
        let stream = [
            "data: {\"choices\":[{\"delta\":\"a\"}]}\n\n",
            "data: {\"choices\":[{\"delta\":\"b\"}],\"usage\":{\"total_",
            "tokens\":7}}\r\n\r\n: a comment\nevent: x\n",
            "data: {\"choices\":[],\"usage\":{\"total_tokens\":31}}\n\ndata: [DONE]\n\n",
        ];
        let ct = "text/event-stream; charset=utf-8";
        assert_eq!(read(ct, &stream, "usage.total_tokens"), Ok(31));
        assert_eq!(
            read(ct, &stream[..2], "usage.total_tokens"),
            Err(Failure::Missing)
        );
        assert_eq!(
            read(ct, &["data: {\"n\":5}"], "n"),
            Ok(5),
            "no final newline"
        );
        assert_eq!(
            read(ct, &["data: {\"n\":-5}\n"], "n"),
            Err(Failure::Malformed)
        );
    }

    #[test]
    fn what_a_reservation_settles_at() {
        let login = Costing {
            count_status: Some(StatusSet::parse(["401", "403"]).unwrap()),
            ..Costing::one(5)
        };
        assert_eq!(actual(&login, 1, Some(200), None), Ok(0));
        assert_eq!(actual(&login, 1, Some(401), None), Ok(1));
        assert_eq!(actual(&login, 1, None, None), Err(Failure::NoResponse));
        let tokens = Costing {
            cost: Cost::Units(100),
            max_cost: 1000,
            settle: Some(SettleFrom::Json(path("usage.total_tokens"))),
            count_status: None,
        };
        assert_eq!(actual(&tokens, 100, Some(200), Some(Ok(40))), Ok(40));
        assert_eq!(actual(&tokens, 100, Some(200), Some(Ok(900))), Ok(900));
        assert_eq!(
            actual(&tokens, 100, Some(200), Some(Ok(1001))),
            Err(Failure::OverMaxCost)
        );
        assert_eq!(
            actual(&tokens, 100, Some(200), Some(Err(Failure::Malformed))),
            Err(Failure::Malformed)
        );
        assert_eq!(actual(&tokens, 100, Some(502), None), Err(Failure::Missing));
        assert_eq!(actual(&tokens, 100, None, None), Err(Failure::NoResponse));
        let both = Costing {
            count_status: Some(StatusSet::parse(["2xx"]).unwrap()),
            ..tokens
        };
        assert_eq!(actual(&both, 100, Some(500), None), Ok(0));
        assert_eq!(actual(&both, 100, Some(200), Some(Ok(3))), Ok(3));
    }
}
