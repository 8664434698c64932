//! One function per admin endpoint.

use std::borrow::Cow;
use std::num::{NonZeroU32, NonZeroU64};
use std::sync::Arc;

use http::Response;
use pingora::protocols::http::ServerSession;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::router::Route;
use super::{error, json, reply, to_json, AdminApp};
use crate::config::{AdminRead, OnError, MAX_WINDOW_MS};
use crate::headers::limit_headers;
use crate::key;
use crate::limiter::{Algorithm, Check, Counter, Limit, Outcome, StoreError, SyncMode, Verdict};
use crate::live::Live;
use crate::registry::iso8601;
use crate::response::{decision_json, error_json, store_unavailable_json};
use crate::rules::calendar::Period;
use crate::rules::cost::{Cost, SettleFrom};
use crate::rules::Rule;
use crate::tenants::audit::{Change, ANONYMOUS};

/// The OpenAPI 3 description of this API.
const OPENAPI: &str = include_str!("openapi.json");

/// Bound on an admin store call that is not a check (a reset, which also waits to hear its
/// message come back from Redis): off the request path, so longer than `redis.timeout_ms`.
pub(super) const ADMIN_CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// How long a counter listing waits for the one before it.
const LISTING_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// Longest key `/check` accepts; longer keys would only bloat the store.
const MAX_CHECK_KEY: usize = 512;

/// The `rule` label of decisions made by `/check` (a `/` cannot be in a rule's name).
pub const CHECK_RULE: &str = "/check";

#[derive(Serialize)]
struct Health<'a> {
    status: &'a str,
    node_id: &'a str,
}

/// `GET /health/live`.
#[derive(Serialize)]
struct LiveOut<'a> {
    status: &'static str,
    node_id: &'a str,
}

/// Whether a load balancer should send this node traffic (`GET /health/ready`, contract §17).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Readiness {
    /// The store answers.
    Serving,
    /// The store does not answer, and requests pass without limits (`on_error = "allow"`).
    FailingOpen,
    /// The store does not answer, and requests get 503 (`on_error = "deny"`).
    FailingClosed,
    /// The node is shutting down (the store is not asked).
    Draining,
}

#[derive(Serialize)]
struct ReadyOut<'a> {
    status: &'static str,
    node_id: &'a str,
    draining: bool,
    /// `up` or `down`; left out while draining, when the store is not asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    store: Option<&'static str>,
    /// With the store down: what requests get meanwhile.
    #[serde(skip_serializing_if = "Option::is_none")]
    on_error: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'static str>,
}

impl Readiness {
    /// `store_up`: whether the store answered (`None` when not asked).
    fn of(draining: bool, store_up: Option<bool>, on_error: OnError) -> Readiness {
        match (draining, store_up, on_error) {
            (true, _, _) => Readiness::Draining,
            (false, Some(false), OnError::Allow) => Readiness::FailingOpen,
            (false, Some(false), OnError::Deny) => Readiness::FailingClosed,
            (false, _, _) => Readiness::Serving,
        }
    }

    fn status(self) -> u16 {
        match self {
            Readiness::Serving | Readiness::FailingOpen => 200,
            Readiness::FailingClosed | Readiness::Draining => 503,
        }
    }

    fn body(self, node_id: &str) -> ReadyOut<'_> {
        let (store, on_error, detail) = match self {
            Readiness::Serving => (Some("up"), None, None),
            Readiness::FailingOpen => (
                Some("down"),
                Some("allow"),
                Some("the store is unreachable; requests are served without limits (on_error = \"allow\")"),
            ),
            Readiness::FailingClosed => (
                Some("down"),
                Some("deny"),
                Some("the store is unreachable; requests get 503 (on_error = \"deny\")"),
            ),
            Readiness::Draining => (
                None,
                None,
                Some("draining: the node is shutting down and finishing the requests in flight"),
            ),
        };
        ReadyOut {
            status: if self.status() == 200 {
                "ready"
            } else {
                "unready"
            },
            node_id,
            draining: self == Readiness::Draining,
            store,
            on_error,
            detail,
        }
    }
}

#[derive(Serialize)]
struct Node<'a> {
    id: &'a str,
    address: &'a str,
    state: &'a str,
    registered_at: &'a str,
}

#[derive(Serialize)]
struct CounterOut<'a> {
    key: Cow<'a, str>,
    count: u64,
    limit: u32,
    remaining: u64,
    rule: &'a str,
    /// Slots this node has leased and not yet used (contract §11), shown when non-zero.
    #[serde(skip_serializing_if = "is_zero")]
    leased: u64,
}

impl<'a> CounterOut<'a> {
    /// A counter as listed, under its rule's `limit`, its key shown as `key`.
    fn of(c: &Counter, rule: &'a str, limit: u32, key: Cow<'a, str>) -> CounterOut<'a> {
        CounterOut {
            key,
            count: c.count,
            limit,
            remaining: u64::from(limit).saturating_sub(c.count),
            rule,
            leased: c.leased,
        }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Serialize)]
struct Blocked<'a> {
    key: Cow<'a, str>,
    current_count: u64,
    limit: u32,
    rule: &'a str,
}

// Lists serialize straight from these structs: going through `serde_json::Value` would build
// a tree of 100,000 maps for a large counter listing.
#[derive(Serialize)]
struct NodesOut<'a> {
    nodes: Vec<Node<'a>>,
}

#[derive(Serialize)]
struct CountersOut<'a> {
    counters: Vec<CounterOut<'a>>,
}

#[derive(Serialize)]
struct BlocksOut<'a> {
    blocked: Vec<Blocked<'a>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckRequest {
    key: String,
    // JSON numbers: `10` and `10.0` are the same number.
    limit: Option<serde_json::Number>,
    window_ms: Option<serde_json::Number>,
    /// `sliding_log` (default), `gcra` or `sliding_window`.
    algorithm: Option<String>,
    /// Units the call reserves (contract §13); 1 when not given.
    cost: Option<serde_json::Number>,
}

/// A JSON number that is a whole number in `1..=max`.
fn whole(n: &serde_json::Number, max: u64) -> Option<u64> {
    let v = match n.as_u64() {
        Some(v) => v,
        None => {
            let f = n.as_f64()?;
            if f.fract() != 0.0 || !(0.0..=max as f64).contains(&f) {
                return None;
            }
            f as u64
        }
    };
    (1..=max).contains(&v).then_some(v)
}

/// Constant-time comparison, so the token cannot be guessed byte by byte from timings.
fn same(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(a.ct_eq(b))
}

/// A counter key as a listing shows it: private values digested unless `clear` (§17).
fn shown(key: &str, clear: bool) -> Cow<'_, str> {
    if clear {
        Cow::Borrowed(key)
    } else {
        key::counter::display(key)
    }
}

/// The parameters of `GET /api/counters` (contract §17): `key` (one key, raw or
/// percent-encoded: a counter key, or a request key looked up under every rule), `rule` (that
/// rule's counters only), `limit` (at most that many).
#[derive(Debug, Default, PartialEq, Eq)]
struct Listing {
    key: Option<String>,
    rule: Option<String>,
    limit: Option<usize>,
}

impl Listing {
    fn parse(query: &str) -> Result<Listing, String> {
        let mut out = Listing::default();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_encoding::percent_decode_str(value)
                .decode_utf8()
                .map_err(|_| format!("{name}: not valid UTF-8 once percent-decoded"))?
                .into_owned();
            match name {
                "key" if !value.is_empty() && value.len() <= 1024 => out.key = Some(value),
                "key" => return Err("key: expected 1 to 1024 characters".into()),
                "rule" => out.rule = Some(value),
                "limit" => match value.parse::<usize>() {
                    Ok(n) if (1..=1_000_000).contains(&n) => out.limit = Some(n),
                    _ => {
                        return Err(format!(
                            "limit: expected an integer 1..=1000000, found {value:?}"
                        ))
                    }
                },
                other => {
                    return Err(format!(
                        "unknown parameter {other:?}; expected key, rule or limit"
                    ))
                }
            }
        }
        Ok(out)
    }
}

/// One rule as `/api/limits` lists it.
/// A rule's or a route's match conditions, as `/api/limits` shows them.
fn matcher_json(m: &crate::rules::Matcher) -> Map<String, Value> {
    let mut matcher = Map::new();
    if !m.methods.is_empty() {
        let methods: Vec<&str> = m.methods.iter().map(|m| m.as_str()).collect();
        matcher.insert("methods".into(), json!(methods));
    }
    if let Some(path) = &m.path {
        let (key, text) = path.describe();
        matcher.insert(key.into(), json!(text));
        if m.path_ignore_case {
            matcher.insert("path_ignore_case".into(), json!(true));
        }
    }
    if let Some(host) = &m.host {
        matcher.insert("host".into(), json!(host.as_str()));
    }
    matcher
}

/// A route as `/api/limits` shows it (contract §18).
fn route_json(route: &crate::config::RouteConfig) -> Value {
    let upstreams: Vec<String> = route
        .upstreams
        .iter()
        .map(|u| match (u.tls, u.h2) {
            (true, _) => format!("https://{}", u.name),
            (_, true) => format!("h2://{}", u.name),
            _ => u.name.clone(),
        })
        .collect();
    json!({
        "name": route.name,
        "match": matcher_json(&route.matcher),
        "upstreams": upstreams,
        "connect_timeout_ms": route.timeouts.connect.as_millis() as u64,
        "read_timeout_ms": route.timeouts.read.as_millis() as u64,
        "write_timeout_ms": route.timeouts.write.as_millis() as u64,
        "retries": route.retries,
        "health_check": route.health_check.is_some(),
    })
}

/// A rule as `/api/limits` shows it; override values of private keys digested unless
/// `clear` (contract §17).
fn rule_json(rule: &Rule, clear: bool) -> Value {
    let matcher = matcher_json(&rule.matcher);
    let overrides: Map<String, Value> = rule
        .overrides
        .shown(rule.key.parts(), clear)
        .into_iter()
        .map(|(k, v)| (k.to_string(), json!(v.get())))
        .collect();
    // As configured: lease_size 0 is automatic (a hundredth of each key's limit).
    let lease = match rule.sync {
        SyncMode::Lease { size, ms } => Some((size, ms)),
        SyncMode::Exact => None,
    };
    let c = &rule.costing;
    let cost = match &c.cost {
        Cost::Units(n) => json!(n),
        Cost::Header(name) => json!(format!("header:{name}")),
    };
    let settle = c.settle.as_ref().map(|s| match s {
        SettleFrom::Header(name) => format!("header:{name}"),
        SettleFrom::Json(path) => format!("json:{path}"),
    });
    // A concurrency rule's limit is slots, its window their ttl (contract §14).
    let slots = rule
        .limit
        .filter(|l| l.algorithm == crate::limiter::Algorithm::Concurrency);
    let rate = rule.limit.filter(|_| slots.is_none());
    json!({
        "name": rule.name,
        "limit": rate.map(|l| l.quota.limit.get()),
        "concurrency": slots.map(|l| l.quota.limit.get()),
        "slot_ttl_ms": slots.map(|l| l.quota.window_ms.get()),
        "queue": rule.wait.queue.map(|q| json!({
            "max_waiting": q.max_waiting,
            "max_wait_ms": q.max_wait_ms,
        })),
        "delay": (rule.wait.max_delay_ms > 0).then(|| json!({
            "max_delay_ms": rule.wait.max_delay_ms,
        })),
        "period": rule.calendar.as_ref().map(|c| c.period.name()),
        "timezone": rule.calendar.as_ref().map(|c| c.zone_name.as_str()),
        "anchor_day": rule.calendar.as_ref().filter(|c| c.period == Period::Month).map(|c| c.anchor_day),
        "cost": cost,
        "max_cost": rule.limit.map(|_| c.max_cost),
        "settle": settle,
        "count_status": c.count_status.as_ref().map(|s| s.names()),
        "window_ms": rate.filter(|_| rule.calendar.is_none()).map(|l| l.quota.window_ms.get()),
        "key": rule.key.to_json(),
        "missing": rule.missing.name(),
        "algorithm": rule.limit.map(|l| l.algorithm.name()),
        "sync": rule.sync.name(),
        "lease_size": lease.map(|(size, _)| size),
        "lease_ms": lease.map(|(_, ms)| ms),
        "shadow": rule.shadow,
        "skip_default": rule.skip_default,
        "unlimited": rule.unlimited(),
        "match": matcher,
        "overrides": overrides,
    })
}

impl AdminApp {
    pub(super) async fn handle(
        &self,
        route: Route,
        session: &mut ServerSession,
        body: &[u8],
    ) -> Response<Vec<u8>> {
        let live = self.live.load();
        if let Some(denied) = gate(&route, &live, session) {
            return denied;
        }
        match route {
            Route::Status => reply(
                200,
                "text/html; charset=utf-8",
                &super::status::HEADERS,
                super::status::page(&live.config.admin),
            ),
            Route::Health => self.health(&live).await,
            Route::Live => json(
                200,
                to_json(&LiveOut {
                    status: "live",
                    node_id: &live.config.node.id,
                }),
            ),
            Route::Ready => self.ready(&live).await,
            Route::Nodes => self.nodes().await,
            Route::Counters | Route::Blocks => {
                let clear = clear_keys(&live, session);
                let query = session.req_header().uri.query().unwrap_or("");
                let listing = match (&route, Listing::parse(query)) {
                    (Route::Counters, Ok(l)) => l,
                    (Route::Counters, Err(why)) => return error(422, &why),
                    _ => Listing::default(),
                };
                if let Some(rule) = listing
                    .rule
                    .as_deref()
                    .filter(|r| live.rules.get(r).is_none())
                {
                    return error(404, &format!("rule: no rule is named {rule:?}"));
                }
                if let Some(key) = &listing.key {
                    return self.counters_of(&live, key, listing.rule.as_deref()).await;
                }
                let Ok(Ok(_turn)) =
                    tokio::time::timeout(LISTING_WAIT, self.listings.acquire()).await
                else {
                    return reply(
                        503,
                        "application/json",
                        &[("Retry-After", "1".to_string())],
                        error_json("counter listings are busy; try again"),
                    );
                };
                match route {
                    Route::Counters => self.counters(&live, &listing, clear).await,
                    _ => self.blocks(&live, clear).await,
                }
            }
            Route::Limits => self.limits(&live, clear_keys(&live, session)),
            Route::Reset(key) => {
                let actor = actor(&live, session).unwrap_or(ANONYMOUS);
                self.reset(&key, actor).await
            }
            Route::Check => self.check(&live, body).await,
            Route::Explain => self.explain(&live, body).await,
            Route::Metrics => reply(
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                &[],
                self.metrics.render(),
            ),
            Route::OpenApi => json(200, OPENAPI.to_string()),
            Route::Overrides => {
                let clear = clear_keys(&live, session);
                self.list_overrides(&live, clear).await
            }
            Route::Override { put, rule, value } => {
                let actor = actor(&live, session).unwrap_or(ANONYMOUS);
                match put {
                    true => self.put_override(&live, actor, &rule, &value, body).await,
                    false => self.delete_override(&live, actor, &rule, &value).await,
                }
            }
            Route::Audit => {
                let clear = clear_keys(&live, session);
                let query = session.req_header().uri.query().unwrap_or("");
                self.audit(&live, query, clear).await
            }
            Route::Bans => {
                let clear = clear_keys(&live, session);
                self.list_bans(&live, clear).await
            }
            Route::Ban { put, rule, value } => {
                let actor = actor(&live, session).unwrap_or(ANONYMOUS);
                match put {
                    true => self.put_ban(&live, actor, &rule, &value, body).await,
                    false => self.delete_ban(&live, actor, &rule, &value).await,
                }
            }
        }
    }

    async fn health(&self, live: &Live) -> Response<Vec<u8>> {
        // The store's own bound for a ping (at least 250 ms, connecting included), not the
        // hot path's `timeout_ms`: a node whose admin thread has not connected yet, or is
        // busy, is not unhealthy.
        let up = self.counters.ping().await.is_ok();
        let (status, word) = if up {
            (200, "healthy")
        } else {
            (503, "unhealthy")
        };
        json(
            status,
            to_json(&Health {
                status: word,
                node_id: &live.config.node.id,
            }),
        )
    }

    async fn ready(&self, live: &Live) -> Response<Vec<u8>> {
        let draining = self.lifecycle.is_draining();
        let store_up = match draining {
            true => None,
            // The store's own bound for a ping, as `/health` (not the hot path's timeout_ms).
            false => Some(self.counters.ping().await.is_ok()),
        };
        let on_error = live
            .config
            .redis
            .as_ref()
            .map_or(OnError::Allow, |r| r.on_error);
        let readiness = Readiness::of(draining, store_up, on_error);
        json(
            readiness.status(),
            to_json(&readiness.body(&live.config.node.id)),
        )
    }

    async fn nodes(&self) -> Response<Vec<u8>> {
        match self.registry.nodes().await {
            Ok(nodes) => {
                let out: Vec<Node> = nodes
                    .iter()
                    .map(|n| Node {
                        id: &n.id,
                        address: &n.address,
                        state: "Up",
                        registered_at: &n.registered_at,
                    })
                    .collect();
                json(200, to_json(&NodesOut { nodes: out }))
            }
            Err(e) => self.store_down(&e),
        }
    }

    /// Every live counter, with the rule it belongs to and the limit that rule gives it.
    async fn live_counters(
        &self,
        live: &Live,
    ) -> Result<Vec<(Counter, &'static str, u32)>, Response<Vec<u8>>> {
        let limit_of = |key: &str| self.describe(live, key).1;
        match self.counters.counters(&limit_of).await {
            Ok(c) => {
                self.metrics.active_counters.set(c.len() as i64);
                Ok(c.into_iter()
                    .map(|c| {
                        let (rule, limit) = self.describe(live, &c.key);
                        (c, rule.name, limit.quota.limit.get())
                    })
                    .collect())
            }
            Err(e) => Err(self.store_down(&e)),
        }
    }

    async fn counters(&self, live: &Live, listing: &Listing, clear: bool) -> Response<Vec<u8>> {
        let counters = match self.live_counters(live).await {
            Ok(c) => c,
            Err(resp) => return resp,
        };
        let mut chosen: Vec<_> = counters
            .iter()
            .filter(|(_, rule, _)| listing.rule.as_deref().is_none_or(|r| r == *rule))
            .collect();
        // Fullest first (count over limit, then count), so `?limit=N` gives the N keys nearest
        // their limits: what an operator looks for in an incident.
        chosen.sort_by(|(a, _, la), (b, _, lb)| {
            let (fa, fb) = (
                u128::from(a.count) * u128::from(*lb),
                u128::from(b.count) * u128::from(*la),
            );
            fb.cmp(&fa)
                .then(b.count.cmp(&a.count))
                .then(a.key.cmp(&b.key))
        });
        let out: Vec<CounterOut> = chosen
            .into_iter()
            .take(listing.limit.unwrap_or(usize::MAX))
            .map(|(c, rule, limit)| CounterOut::of(c, rule, *limit, shown(&c.key, clear)))
            .collect();
        json(200, to_json(&CountersOut { counters: out }))
    }

    /// `GET /api/counters?key=...`: the counters of one key, under every rule (or the one
    /// asked); the key is the caller's own, so it is shown as given.
    async fn counters_of(&self, live: &Live, key: &str, rule: Option<&str>) -> Response<Vec<u8>> {
        let candidates: Vec<String> = match (key::counter::split_rule(key), rule) {
            ((Some(_), _), _) => vec![key.to_string()],
            ((None, _), Some(rule)) => {
                let named = (rule != crate::rules::DEFAULT_RULE).then_some(rule);
                vec![key::counter::counter_key(named, key.to_string())]
            }
            ((None, _), None) => live
                .rules
                .iter()
                .map(|r| r.counter_key(key.to_string()))
                .collect(),
        };
        let mut found = Vec::new();
        for counter_key in candidates {
            let (r, limit) = self.describe(live, &counter_key);
            let call = self.counters.count(&counter_key, limit);
            match tokio::time::timeout(ADMIN_CALL_TIMEOUT, call).await {
                Ok(Ok(Some(c))) => found.push((c, r.name, limit.quota.limit.get())),
                Ok(Ok(None)) => {}
                Ok(Err(e)) => return self.store_down(&e),
                Err(_) => return self.store_down(&StoreError::Timeout),
            }
        }
        let out: Vec<CounterOut> = found
            .iter()
            .map(|(c, rule, limit)| CounterOut::of(c, rule, *limit, Cow::Borrowed(&c.key)))
            .collect();
        json(200, to_json(&CountersOut { counters: out }))
    }

    async fn blocks(&self, live: &Live, clear: bool) -> Response<Vec<u8>> {
        let counters = match self.live_counters(live).await {
            Ok(c) => c,
            Err(resp) => return resp,
        };
        let out: Vec<Blocked> = counters
            .iter()
            .filter(|(c, _, limit)| c.count >= u64::from(*limit))
            .map(|(c, rule, limit)| Blocked {
                key: shown(&c.key, clear),
                current_count: c.count,
                limit: *limit,
                rule,
            })
            .collect();
        json(200, to_json(&BlocksOut { blocked: out }))
    }

    fn limits(&self, live: &Live, clear: bool) -> Response<Vec<u8>> {
        let config = &live.config;
        let l = &config.limits;
        let (store, on_error) = match &config.redis {
            Some(r) => (
                "redis",
                Some(match r.on_error {
                    OnError::Allow => "allow",
                    OnError::Deny => "deny",
                }),
            ),
            None => ("memory", None),
        };
        let rules: Vec<Value> = live.rules.iter().map(|r| rule_json(r, clear)).collect();
        json(
            200,
            to_json(&json!({
                "default_limit": l.default.limit.get(),
                "default_window_ms": l.default.window_ms.get(),
                "enabled": l.enabled,
                "key": l.key.to_json(),
                "store": store,
                "on_error": on_error,
                "headers": config.headers.style.name(),
                "config_loaded_at": iso8601(live.loaded_at),
                "rules": rules,
                "routes": config.routes.iter().map(route_json).collect::<Vec<_>>(),
            })),
        )
    }

    async fn reset(&self, key: &str, actor: &str) -> Response<Vec<u8>> {
        let bounded = tokio::time::timeout(ADMIN_CALL_TIMEOUT, self.counters.reset(key));
        match bounded.await.unwrap_or(Err(StoreError::Timeout)) {
            Ok(existed) => {
                self.audited(Change {
                    actor,
                    action: "counter.reset",
                    target: key.to_string(),
                    before: json!({ "existed": existed }),
                    after: Value::Null,
                })
                .await;
                json(200, to_json(&json!({ "key": key, "reset": true })))
            }
            Err(e) => self.store_down(&e),
        }
    }

    async fn check(&self, live: &Live, body: &[u8]) -> Response<Vec<u8>> {
        let req: CheckRequest = match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => return error(422, &format!("invalid body: {e}")),
        };
        if req.key.is_empty()
            || req.key.len() > MAX_CHECK_KEY
            || !req.key.bytes().all(|b| b.is_ascii_graphic())
        {
            return error(
                422,
                &format!("key: expected 1 to {MAX_CHECK_KEY} visible ASCII characters"),
            );
        }
        let default = live.config.limits.default;
        let limit = match &req.limit {
            None => default.limit,
            Some(n) => {
                match whole(n, u64::from(u32::MAX)).and_then(|n| NonZeroU32::new(n as u32)) {
                    Some(n) => n,
                    None => return error(422, "limit: expected an integer 1..=4294967295"),
                }
            }
        };
        let window_ms = match &req.window_ms {
            None => default.window_ms,
            Some(n) => match whole(n, MAX_WINDOW_MS as u64).and_then(NonZeroU64::new) {
                Some(n) => n,
                None => {
                    return error(
                        422,
                        "window_ms: expected an integer 1..=31536000000 (a year at most)",
                    )
                }
            },
        };
        let algorithm = match req.algorithm.as_deref().map(str::parse::<Algorithm>) {
            None => Algorithm::SlidingLog,
            Some(Ok(a)) => a,
            Some(Err(why)) => return error(422, &format!("algorithm: {why}")),
        };
        let cost = match &req.cost {
            None => 1,
            Some(n) => match whole(n, u64::from(u32::MAX)) {
                Some(n) => n as u32,
                None => return error(422, "cost: expected an integer 1..=4294967295"),
            },
        };
        let check = Check {
            cost,
            ..Check::new(CHECK_RULE, req.key, Limit::new(algorithm, limit, window_ms))
        };
        let reset = live.config.headers.style.shows_reset();
        match self.limiter.check(vec![check], reset).await {
            Verdict::Decided(outcome) => check_reply(&outcome, live),
            // Fail open: allowed, without limit headers, as on the proxy path.
            Verdict::FailOpen => json(
                200,
                to_json(&json!({
                    "allowed": true,
                    "current_count": 0,
                    "remaining": limit.get(),
                    "retry_after_seconds": 0,
                })),
            ),
            Verdict::FailClosed => json(503, store_unavailable_json()),
        }
    }

    async fn explain(&self, live: &Live, body: &[u8]) -> Response<Vec<u8>> {
        let request = match super::explain::ExplainRequest::parse(body, live.config.proxy.paths) {
            Ok(r) => r,
            Err(why) => return error(422, &why),
        };
        let mut plan = request.plan(&live.rules, &live.routes);
        self.tenants.apply(&mut plan.checks);
        plan.banned = self.tenants.banned(&plan.checks);
        let decisions = match self.limiter.explain(&plan.checks).await {
            Ok(d) => d,
            Err(e) => return self.store_down(&e),
        };
        json(200, plan.answer(decisions))
    }

    /// The rule a counter key belongs to, and the limit it is judged by now: the rule's,
    /// or an override's (the file's, or one set at runtime).
    fn describe<'l>(&self, live: &'l Live, counter_key: &str) -> (&'l Rule, Limit) {
        let (rule, limit) = live.rules.describe(counter_key);
        (rule, self.tenants.limit_for(rule.name, counter_key, limit))
    }

    pub(super) fn store_down(&self, e: &StoreError) -> Response<Vec<u8>> {
        self.limiter.failed(e);
        error(503, &format!("rate limit store unavailable: {e}"))
    }
}

fn check_reply(outcome: &Outcome, live: &Live) -> Response<Vec<u8>> {
    let Some((_, d)) = outcome.iter().next().and_then(|(c, d)| Some((c, d?))) else {
        return error(500, "no decision");
    };
    reply(
        if d.allowed { 200 } else { 429 },
        "application/json",
        &limit_headers(outcome, live.config.headers.style),
        decision_json(d),
    )
}

/// Who may call what (contract §17), in one place: the 401 a route gets, if any. Changes
/// need an admin token (`admin.token` or one of `admin.tokens`) when one is set; `/api/*`
/// reads need one too with `admin.read = "token"`; `/metrics` needs `admin.metrics_token`
/// when that is set. `/health*` and `/openapi.json` (which describes the API and holds no
/// data) are always open.
fn gate(route: &Route, live: &Arc<Live>, session: &ServerSession) -> Option<Response<Vec<u8>>> {
    let admin = &live.config.admin;
    let needs_admin = match route {
        Route::Reset(_) | Route::Check | Route::Override { .. } | Route::Ban { .. } => true,
        Route::Nodes
        | Route::Counters
        | Route::Limits
        | Route::Blocks
        | Route::Explain
        | Route::Overrides
        | Route::Bans
        | Route::Audit => admin.read == AdminRead::Token,
        Route::Metrics => {
            let token = admin.metrics_token.as_deref()?;
            return (!bearer(session, token)).then(|| unauthorized("admin.metrics_token"));
        }
        _ => false,
    };
    if !needs_admin || !admin.has_token() {
        return None;
    }
    actor(live, session)
        .is_none()
        .then(|| unauthorized("admin.token"))
}

/// The name of the admin token the request carries (`admin` for `admin.token`, a name of
/// `admin.tokens`), or `None`.
pub(super) fn actor<'l>(live: &'l Live, session: &ServerSession) -> Option<&'l str> {
    live.config
        .admin
        .named_tokens()
        .find(|(_, token)| bearer(session, token))
        .map(|(name, _)| name)
}

/// Whether private key values are shown in clear: with `[privacy] clear_keys`, or to a caller
/// with an admin token (contract §17).
fn clear_keys(live: &Arc<Live>, session: &ServerSession) -> bool {
    live.config.privacy.clear_keys || actor(live, session).is_some()
}

/// Whether the request carries `Authorization: Bearer <token>`, compared in constant time.
fn bearer(session: &ServerSession, token: &str) -> bool {
    session
        .req_header()
        .headers
        .get("authorization")
        .map(|v| v.as_bytes())
        // The scheme is case-insensitive (RFC 9110 §11.1); the token is not.
        .filter(|v| v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer "))
        .is_some_and(|v| same(&v[7..], token.as_bytes()))
}

/// 401 for a route that needs the token configured as `key`.
fn unauthorized(key: &str) -> Response<Vec<u8>> {
    reply(
        401,
        "application/json",
        &[("WWW-Authenticate", "Bearer".to_string())],
        error_json(&format!(
            "this endpoint needs Authorization: Bearer <{key}>"
        )),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_follows_the_store_the_policy_and_the_drain() {
        use Readiness::*;
        for on_error in [OnError::Allow, OnError::Deny] {
            assert_eq!(Readiness::of(false, Some(true), on_error), Serving);
            assert_eq!(Readiness::of(true, None, on_error), Draining);
            assert_eq!(Readiness::of(true, Some(true), on_error), Draining);
        }
        assert_eq!(
            Readiness::of(false, Some(false), OnError::Allow),
            FailingOpen
        );
        assert_eq!(
            Readiness::of(false, Some(false), OnError::Deny),
            FailingClosed
        );
        let body = |r: Readiness| serde_json::to_value(r.body("n1")).unwrap();
        assert_eq!(
            (Serving.status(), body(Serving)),
            (
                200,
                json!({"status":"ready","node_id":"n1","draining":false,"store":"up"})
            )
        );
        assert_eq!(FailingOpen.status(), 200);
        assert_eq!(body(FailingOpen)["on_error"], "allow");
        assert_eq!(FailingClosed.status(), 503);
        assert_eq!(body(FailingClosed)["status"], "unready");
        assert_eq!(Draining.status(), 503);
        let draining = body(Draining);
        assert_eq!(draining["draining"], true);
        assert!(draining.get("store").is_none(), "not asked: {draining}");
    }

    #[test]
    fn listing_parameters() {
        assert_eq!(Listing::parse(""), Ok(Listing::default()));
        assert_eq!(
            Listing::parse("key=x-api-key%3Asecret&rule=api&limit=5"),
            Ok(Listing {
                key: Some("x-api-key:secret".into()),
                rule: Some("api".into()),
                limit: Some(5),
            })
        );
        for bad in ["keys=1", "limit=0", "limit=x", "key=", "key=%ff"] {
            assert!(Listing::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            shown("api/x-api-key:premium-1", true),
            "api/x-api-key:premium-1"
        );
        assert_eq!(
            shown("api/x-api-key:premium-1", false),
            "api/x-api-key:sha256:a32b1a51c4fda8c4"
        );
    }
}
