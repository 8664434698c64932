//! The admin API of tenants at runtime (contract §15): overrides and bans set, removed and
//! listed, and the audit log read. Every change is written to the audit log with its actor.

use std::num::NonZeroU32;

use http::Response;
use serde_json::{json, Value};

use super::handlers::ADMIN_CALL_TIMEOUT;
use super::{error, json, to_json, AdminApp};
use crate::config::override_entry;
use crate::key::counter::{display, display_override};
use crate::limiter::{Algorithm, StoreError};
use crate::live::Live;
use crate::rules::overrides::Entry;
use crate::rules::Rule;
use crate::tenants::audit::Change;
use crate::tenants::bans;
use crate::tenants::store::AUDIT_CAP;

/// Entries of the audit log sent when `limit` is not given.
const AUDIT_DEFAULT: usize = 100;
/// The largest concurrency an override may give (as `concurrency` in the file).
const MAX_CONCURRENCY: u64 = 1_000_000;

/// A JSON number that is a whole number (`8` and `8.0` alike).
fn whole(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| *f >= 0.0 && f.fract() == 0.0 && *f < u64::MAX as f64)
            .map(|f| f as u64)
    })
}

/// The longest ban that may be asked for (a year).
const MAX_BAN_MS: u64 = 31_536_000_000;

/// The last millisecond of the year 9999, the latest time RFC 3339 can write.
const LAST_WRITABLE_MS: u64 = 253_402_300_799_999;

/// A time in ms since the epoch, as ISO 8601 in UTC to the millisecond (a later time, which
/// only a hand-written store entry can hold, as the latest one writable).
fn iso_ms(ms: u64) -> String {
    let ms = ms.min(LAST_WRITABLE_MS);
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}

fn ban_json(rule: &str, entry: &Entry, until_ms: u64, reason: &str) -> Value {
    json!({ "rule": rule, "value": entry.written(), "until": iso_ms(until_ms), "reason": reason })
}

/// An override's or a ban's key value as the listings show it: private parts digested
/// unless `clear` (contract §17), as in `/api/limits`.
fn shown(live: &Live, rule: &str, entry: &Entry, clear: bool) -> String {
    match (entry, live.rules.get(rule)) {
        (Entry::Value(v), Some(r)) if !clear => display_override(v, r.key.parts()).into_owned(),
        _ => entry.written().to_string(),
    }
}

/// What an audit entry of an override or a ban names: `<rule>/<value>` (read back by
/// [`hide_target`]).
fn change_target(rule: &str, entry: &Entry) -> String {
    format!("{rule}/{}", entry.written())
}

/// An audit entry's target with private key values digested: the value of an override or a
/// ban, or a reset counter key.
fn hide_target(live: &Live, entry: &mut Value) {
    let (Some(action), Some(target)) = (entry["action"].as_str(), entry["target"].as_str()) else {
        return;
    };
    let hidden = match action {
        "counter.reset" => display(target).into_owned(),
        "config.reload" => return,
        _ => match target.split_once('/') {
            Some((rule, value)) => match live.rules.get(rule) {
                Some(r) => format!("{rule}/{}", display_override(value, r.key.parts())),
                None => return,
            },
            None => return,
        },
    };
    entry["target"] = json!(hidden);
}

/// Runs one store call within the admin deadline; a call that overruns is
/// reported as the store timing out.
async fn bounded<T>(
    call: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(ADMIN_CALL_TIMEOUT, call)
        .await
        .unwrap_or(Err(StoreError::Timeout))
}

/// The field an override of `rule` sets: `concurrency` or `limit`.
fn override_field(rule: &Rule) -> &'static str {
    match rule.limit.map(|l| l.algorithm) {
        Some(Algorithm::Concurrency) => "concurrency",
        _ => "limit",
    }
}

impl AdminApp {
    /// Writes a change to the audit log, and counts it; a log that cannot be written is
    /// logged, never a reason to undo the change.
    pub(super) async fn audited(&self, change: Change<'_>) {
        if let Err(e) = bounded(self.tenants.record(&change)).await {
            // Without its target, which can hold a private key value.
            log::warn!("could not write {} to the audit log: {e}", change.action);
        }
        self.metrics.tenants.changed(change.action);
    }

    /// What a removal of `value` from `rule` may name, in order: the entry the rule's key reads
    /// it as, then (for one kept from before the rule was removed or keyed otherwise) the
    /// value as an IP and as a key value; and why the rule can hold none now, if it cannot.
    fn removal_targets(live: &Live, rule: &str, value: &str) -> (Vec<Entry>, Option<String>) {
        let mut entries = Vec::with_capacity(3);
        let why = match Self::override_target(live, rule, value) {
            Ok((_, entry)) => {
                entries.push(entry);
                None
            }
            Err(why) => Some(why),
        };
        for stale in [
            Entry::Ip(value.to_string()),
            Entry::Value(value.to_string()),
        ] {
            if !entries.contains(&stale) {
                entries.push(stale);
            }
        }
        (entries, why)
    }

    /// The rule an override names and what it applies to, or why such an override cannot
    /// exist (no such rule, a rule with no per-key limit, a value the rule's key never
    /// holds): a 404.
    fn override_target<'l>(
        live: &'l Live,
        rule: &str,
        value: &str,
    ) -> Result<(&'l Rule, Entry), String> {
        let Some(r) = live.rules.get(rule) else {
            return Err(format!("no rule named {rule:?}"));
        };
        if r.unlimited() {
            return Err(format!(
                "rule {rule:?} is unlimited: it has no limit to override"
            ));
        }
        if r.key.is_global() {
            return Err(format!(
                "rule {rule:?} is keyed by \"global\": it has one counter and no per-key overrides"
            ));
        }
        let entry = override_entry(value, r.key.parts())
            .map_err(|why| format!("rule {rule:?} has no such key: {why}"))?;
        Ok((r, entry))
    }

    pub(super) async fn put_override(
        &self,
        live: &Live,
        actor: &str,
        rule: &str,
        value: &str,
        body: &[u8],
    ) -> Response<Vec<u8>> {
        let (r, entry) = match Self::override_target(live, rule, value) {
            Ok(t) => t,
            Err(why) => return error(404, &why),
        };
        let field = override_field(r);
        let max = match field {
            "concurrency" => MAX_CONCURRENCY,
            _ => u64::from(u32::MAX),
        };
        let other = match field {
            "concurrency" => "limit",
            _ => "concurrency",
        };
        let n = match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(o)) if o.len() == 1 && o.contains_key(other) => {
                return error(
                    409,
                    &format!(
                        "rule {rule:?} takes a {field}, not a {other}: send {{\"{field}\": n}}"
                    ),
                )
            }
            Ok(Value::Object(o)) if o.len() == 1 && o.contains_key(field) => whole(&o[field])
                .filter(|n| (1..=max).contains(n))
                .and_then(|n| NonZeroU32::new(n as u32)),
            _ => None,
        };
        let Some(n) = n else {
            return error(
                422,
                &format!("body: expected {{\"{field}\": n}} with n in 1..={max} (rule {rule:?} takes a {field})"),
            );
        };
        let put = self.tenants.put_override(rule, &entry, n.get());
        let before = match bounded(put).await {
            Ok(before) => before,
            Err(e) => return self.store_down(&e),
        };
        let shown = |n: Option<u32>| n.map_or(Value::Null, |n| json!({ field: n }));
        self.audited(Change {
            actor,
            action: "override.put",
            target: change_target(rule, &entry),
            before: shown(before),
            after: shown(Some(n.get())),
        })
        .await;
        json(
            200,
            to_json(&json!({
                "rule": rule,
                "value": entry.written(),
                field: n.get(),
                "before": before,
            })),
        )
    }

    pub(super) async fn delete_override(
        &self,
        live: &Live,
        actor: &str,
        rule: &str,
        value: &str,
    ) -> Response<Vec<u8>> {
        let (entries, why) = Self::removal_targets(live, rule, value);
        let mut removed = None;
        for entry in entries {
            match bounded(self.tenants.delete_override(rule, &entry)).await {
                Ok(Some(before)) => {
                    removed = Some((entry, before));
                    break;
                }
                Ok(None) => {}
                Err(e) => return self.store_down(&e),
            }
        }
        let Some((entry, before)) = removed else {
            let why = why.unwrap_or_else(|| format!("no override for {value:?} on rule {rule:?}"));
            return error(404, &why);
        };
        let field = live.rules.get(rule).map_or("limit", override_field);
        self.audited(Change {
            actor,
            action: "override.delete",
            target: change_target(rule, &entry),
            before: json!({ field: before }),
            after: Value::Null,
        })
        .await;
        json(
            200,
            to_json(&json!({
                "rule": rule,
                "value": entry.written(),
                "deleted": true,
                "before": before,
            })),
        )
    }

    pub(super) async fn list_overrides(&self, live: &Live, clear: bool) -> Response<Vec<u8>> {
        let all = match bounded(self.tenants.overrides()).await {
            Ok(all) => all,
            Err(e) => return self.store_down(&e),
        };
        let out: Vec<Value> = all
            .iter()
            .map(|(rule, entry, n)| {
                let field = live.rules.get(rule).map_or("limit", override_field);
                json!({ "rule": rule, "value": shown(live, rule, entry, clear), field: n })
            })
            .collect();
        json(200, to_json(&json!({ "overrides": out })))
    }

    pub(super) async fn put_ban(
        &self,
        live: &Live,
        actor: &str,
        rule: &str,
        value: &str,
        body: &[u8],
    ) -> Response<Vec<u8>> {
        let entry = match Self::override_target(live, rule, value) {
            Ok((_, entry)) => entry,
            Err(why) => return error(404, &why),
        };
        let for_ms = match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(o)) if o.len() == 1 => o
                .get("for_ms")
                .and_then(whole)
                .filter(|n| (1..=MAX_BAN_MS).contains(n)),
            _ => None,
        };
        let Some(for_ms) = for_ms else {
            return error(
                422,
                &format!("body: expected {{\"for_ms\": n}} with n in 1..={MAX_BAN_MS}"),
            );
        };
        let until = bans::now_ms() + for_ms;
        let put = self.tenants.put_ban(rule, &entry, until, bans::MANUAL);
        let before = match bounded(put).await {
            Ok(before) => before,
            Err(e) => return self.store_down(&e),
        };
        self.metrics.tenants.banned(rule, bans::MANUAL);
        let shown =
            |until: Option<u64>| until.map_or(Value::Null, |u| json!({ "until": iso_ms(u) }));
        self.audited(Change {
            actor,
            action: "ban.put",
            target: change_target(rule, &entry),
            before: shown(before.as_ref().map(|b| b.until_ms)),
            after: shown(Some(until)),
        })
        .await;
        json(200, to_json(&ban_json(rule, &entry, until, bans::MANUAL)))
    }

    pub(super) async fn delete_ban(
        &self,
        live: &Live,
        actor: &str,
        rule: &str,
        value: &str,
    ) -> Response<Vec<u8>> {
        let (entries, why) = Self::removal_targets(live, rule, value);
        let mut removed = None;
        for entry in entries {
            match bounded(self.tenants.delete_ban(rule, &entry)).await {
                Ok(Some(before)) if before.until_ms > bans::now_ms() => {
                    removed = Some((entry, before));
                    break;
                }
                Ok(_) => {}
                Err(e) => return self.store_down(&e),
            }
        }
        let Some((entry, before)) = removed else {
            let why = why.unwrap_or_else(|| format!("no ban of {value:?} on rule {rule:?}"));
            return error(404, &why);
        };
        self.audited(Change {
            actor,
            action: "ban.delete",
            target: change_target(rule, &entry),
            before: json!({ "until": iso_ms(before.until_ms), "reason": before.reason }),
            after: Value::Null,
        })
        .await;
        json(
            200,
            to_json(&json!({ "rule": rule, "value": entry.written(), "deleted": true })),
        )
    }

    pub(super) async fn list_bans(&self, live: &Live, clear: bool) -> Response<Vec<u8>> {
        match bounded(self.tenants.bans()).await {
            Ok(all) => {
                let out: Vec<Value> = all
                    .iter()
                    .map(|b| {
                        let mut ban = ban_json(&b.rule, &b.entry, b.until_ms, &b.reason);
                        ban["value"] = json!(shown(live, &b.rule, &b.entry, clear));
                        ban
                    })
                    .collect();
                json(200, to_json(&json!({ "bans": out })))
            }
            Err(e) => self.store_down(&e),
        }
    }

    pub(super) async fn audit(&self, live: &Live, query: &str, clear: bool) -> Response<Vec<u8>> {
        let mut limit = AUDIT_DEFAULT;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("limit", v)) => match v.parse::<usize>() {
                    Ok(n) if (1..=AUDIT_CAP).contains(&n) => limit = n,
                    _ => {
                        return error(
                            422,
                            &format!("limit: expected an integer 1..={AUDIT_CAP}, found {v:?}"),
                        )
                    }
                },
                _ => return error(422, &format!("unknown parameter {pair:?}; expected limit")),
            }
        }
        match bounded(self.tenants.audit(limit)).await {
            Ok(mut entries) => {
                if !clear {
                    for e in &mut entries {
                        hide_target(live, e);
                    }
                }
                json(200, to_json(&json!({ "entries": entries })))
            }
            Err(e) => self.store_down(&e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_written_to_the_millisecond_and_never_past_the_year_9999() {
        assert_eq!(iso_ms(1_780_000_000_123), "2026-05-28T20:26:40.123Z");
        assert_eq!(iso_ms(LAST_WRITABLE_MS), "9999-12-31T23:59:59.999Z");
        assert_eq!(iso_ms(u64::MAX), "9999-12-31T23:59:59.999Z");
    }
}
