//! A rule's `cost`, `max_cost`, `settle` and `count_status` (contract §13), each mistake
//! reported where it is written.

use http::HeaderName;

use super::error::Collector;
use super::reader::Section;
use crate::limiter::SyncMode;
use crate::rules::cost::{Cost, Costing, JsonPath, SettleFrom, StatusSet};

/// The rule's costing, given its limit (`None`: unlimited) and sync mode; `None` when
/// something is wrong.
pub(super) fn read(
    s: &Section,
    limit: Option<u32>,
    sync: Option<SyncMode>,
    errors: &mut Collector,
) -> Option<Costing> {
    let mut ok = true;
    let cost = cost(s, errors);
    ok &= cost.is_some() || !s.has("cost");
    let max_cost = s.integer(
        "max_cost",
        1,
        i64::from(u32::MAX),
        "an integer 1..=4294967295",
        errors,
    );
    ok &= max_cost.is_some() || !s.has("max_cost");
    let settle = settle(s, errors);
    ok &= settle.is_some() || !s.has("settle");
    let count_status = count_status(s, errors);
    ok &= count_status.is_some() || !s.has("count_status");

    let written: Vec<&str> = ["cost", "max_cost", "settle", "count_status"]
        .into_iter()
        .filter(|k| s.has(k))
        .collect();
    let Some(limit) = limit else {
        // An unlimited rule counts nothing, so nothing weighs anything under it.
        if let Some(first) = written.first() {
            errors.at(
                s.span_of(first),
                format!(
                    "{} {first}: an unlimited rule counts nothing; remove {first} or unlimited",
                    s.name
                ),
            );
            return None;
        }
        return ok.then(|| Costing::one(1));
    };
    if matches!(sync, Some(SyncMode::Lease { .. })) {
        for key in ["settle", "count_status"] {
            if s.has(key) {
                ok = false;
                errors.at(
                    s.span_of(key),
                    format!(
                        "{} {key}: settling needs sync = \"exact\" (a lease's slots are spent on the node, before any response)",
                        s.name
                    ),
                );
            }
        }
    }
    let max_cost = max_cost.map_or(limit, |m| m.value as u32);
    if let Some(Cost::Units(n)) = &cost {
        let why = if *n > limit {
            Some(format!(
                "it is over the limit ({limit}), so no request would ever fit"
            ))
        } else if *n > max_cost {
            Some(format!("it is over max_cost ({max_cost})"))
        } else {
            None
        };
        if let Some(why) = why {
            ok = false;
            errors.at(s.span_of("cost"), format!("{} cost: {n}: {why}", s.name));
        }
    }
    ok.then(|| Costing {
        cost: cost.unwrap_or(Cost::Units(1)),
        max_cost,
        settle,
        count_status,
    })
}

/// `cost = 3` or `cost = "header:X-Cost"`.
fn cost(s: &Section, errors: &mut Collector) -> Option<Cost> {
    if !s.is_string("cost") {
        let n = s.integer(
            "cost",
            1,
            i64::from(u32::MAX),
            "an integer 1..=4294967295 or \"header:<Name>\"",
            errors,
        )?;
        return Some(Cost::Units(n.value as u32));
    }
    let at = s.string("cost", errors)?;
    match header(&at.value) {
        Some(name) => Some(Cost::Header(name)),
        None => {
            errors.at(
                at.span,
                format!(
                    "{} cost: expected an integer 1..=4294967295 or \"header:<Name>\", found {:?}",
                    s.name, at.value
                ),
            );
            None
        }
    }
}

/// `settle = "header:X-Usage"` or `settle = "json:usage.total_tokens"`.
fn settle(s: &Section, errors: &mut Collector) -> Option<SettleFrom> {
    let at = s.string("settle", errors)?;
    let read = if at.value.starts_with("header:") {
        header(&at.value).map(SettleFrom::Header)
    } else {
        at.value
            .strip_prefix("json:")
            .and_then(JsonPath::parse)
            .map(SettleFrom::Json)
    };
    if read.is_none() {
        errors.at(
            at.span,
            format!(
                "{} settle: expected \"header:<Name>\" or \"json:<dotted.path>\" (like \"json:usage.total_tokens\"), found {:?}",
                s.name, at.value
            ),
        );
    }
    read
}

/// `count_status = ["401", "4xx"]`.
fn count_status(s: &Section, errors: &mut Collector) -> Option<StatusSet> {
    let items = s.strings("count_status", errors)?;
    let mut ok = true;
    for item in &items {
        if StatusSet::parse([item.value.as_str()]).is_err() {
            ok = false;
            errors.at(
                item.span.clone(),
                format!(
                    "{} count_status: expected a status like \"401\" or a class like \"4xx\", found {:?}",
                    s.name, item.value
                ),
            );
        }
    }
    if items.is_empty() && ok {
        errors.at(
            s.span_of("count_status"),
            format!(
                "{} count_status: name at least one status, or remove it (every response counts)",
                s.name
            ),
        );
        return None;
    }
    let set = StatusSet::parse(items.iter().map(|i| i.value.as_str())).ok()?;
    ok.then_some(set)
}

/// `header:<Name>`: a valid header name.
fn header(written: &str) -> Option<HeaderName> {
    let name = written.strip_prefix("header:")?;
    HeaderName::from_bytes(name.as_bytes()).ok()
}
