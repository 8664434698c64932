//! One function per admin endpoint.

use http::Response;
use pingora::protocols::http::ServerSession;
use serde::{Deserialize, Serialize};
use std::num::{NonZeroU32, NonZeroU64};

use super::router::Route;
use super::{error, json, reply, AdminApp};
use crate::config::{KeySource, OnError, Quota};
use crate::limiter::{Counter, Verdict};
use crate::response::{decision_json, limit_headers};

/// The OpenAPI 3 description of this API.
const OPENAPI: &str = include_str!("openapi.json");

/// Bound on an admin store call that is not a check (a reset, which also waits to hear its
/// message come back from Redis): off the request path, so longer than `redis.timeout_ms`.
const ADMIN_CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Longest key `/check` accepts; longer keys would only bloat the store.
const MAX_CHECK_KEY: usize = 512;

#[derive(Serialize)]
struct Health<'a> {
    status: &'a str,
    node_id: &'a str,
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
    key: &'a str,
    count: u64,
    limit: u32,
    remaining: u64,
}

#[derive(Serialize)]
struct Blocked<'a> {
    key: &'a str,
    current_count: u64,
    limit: u32,
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
    limit: Option<u32>,
    window_ms: Option<u64>,
}

fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "{}".to_string())
}

/// Constant-time comparison, so the token cannot be guessed byte by byte from timings.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl AdminApp {
    pub(super) async fn handle(
        &self,
        route: Route,
        session: &mut ServerSession,
        body: &[u8],
    ) -> Response<Vec<u8>> {
        match route {
            Route::Health => self.health().await,
            Route::Nodes => self.nodes().await,
            Route::Counters => self.counters().await,
            Route::Limits => self.limits(),
            Route::Blocks => self.blocks().await,
            Route::Reset(key) if self.authorized(session) => self.reset(&key).await,
            Route::Reset(_) => reply(
                401,
                "application/json",
                &[("WWW-Authenticate", "Bearer".to_string())],
                crate::response::error_json(
                    "this endpoint needs Authorization: Bearer <admin.token>",
                ),
            ),
            Route::Check => self.check(body).await,
            Route::Metrics => reply(
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                &[],
                self.metrics.render(),
            ),
            Route::OpenApi => json(200, OPENAPI.to_string()),
        }
    }

    /// Whether the request may mutate: no token configured, or the right bearer token.
    fn authorized(&self, session: &ServerSession) -> bool {
        let Some(token) = &self.config.admin.token else {
            return true;
        };
        session
            .req_header()
            .headers
            .get("authorization")
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .is_some_and(|given| same(given, token.as_bytes()))
    }

    async fn health(&self) -> Response<Vec<u8>> {
        let store = self.limiter.store();
        let up = self.limiter.bounded(store.ping()).await.is_ok();
        let (status, word) = if up {
            (200, "healthy")
        } else {
            (503, "unhealthy")
        };
        json(
            status,
            to_json(&Health {
                status: word,
                node_id: &self.config.node.id,
            }),
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

    async fn live_counters(&self) -> Result<Vec<Counter>, Response<Vec<u8>>> {
        match self.limiter.store().counters().await {
            Ok(c) => {
                self.metrics.active_counters.set(c.len() as i64);
                Ok(c)
            }
            Err(e) => Err(self.store_down(&e)),
        }
    }

    fn limit(&self) -> u32 {
        self.config.limits.default.limit.get()
    }

    async fn counters(&self) -> Response<Vec<u8>> {
        let counters = match self.live_counters().await {
            Ok(c) => c,
            Err(resp) => return resp,
        };
        let limit = self.limit();
        let out: Vec<CounterOut> = counters
            .iter()
            .map(|c| CounterOut {
                key: &c.key,
                count: c.count,
                limit,
                remaining: u64::from(limit).saturating_sub(c.count),
            })
            .collect();
        json(200, to_json(&CountersOut { counters: out }))
    }

    async fn blocks(&self) -> Response<Vec<u8>> {
        let counters = match self.live_counters().await {
            Ok(c) => c,
            Err(resp) => return resp,
        };
        let limit = self.limit();
        let out: Vec<Blocked> = counters
            .iter()
            .filter(|c| c.count >= u64::from(limit))
            .map(|c| Blocked {
                key: &c.key,
                current_count: c.count,
                limit,
            })
            .collect();
        json(200, to_json(&BlocksOut { blocked: out }))
    }

    fn limits(&self) -> Response<Vec<u8>> {
        let l = &self.config.limits;
        let key = match &l.key {
            KeySource::Ip => "ip".to_string(),
            KeySource::Header(h) => format!("header:{h}"),
        };
        let (store, on_error) = match &self.config.redis {
            Some(r) => (
                "redis",
                Some(match r.on_error {
                    OnError::Allow => "allow",
                    OnError::Deny => "deny",
                }),
            ),
            None => ("memory", None),
        };
        json(
            200,
            to_json(&serde_json::json!({
                "default_limit": l.default.limit.get(),
                "default_window_ms": l.default.window_ms.get(),
                "enabled": l.enabled,
                "key": key,
                "store": store,
                "on_error": on_error,
            })),
        )
    }

    async fn reset(&self, key: &str) -> Response<Vec<u8>> {
        let store = self.limiter.store();
        let bounded = tokio::time::timeout(ADMIN_CALL_TIMEOUT, store.reset(key));
        match bounded
            .await
            .unwrap_or(Err(crate::limiter::StoreError::Timeout))
        {
            Ok(_) => json(
                200,
                to_json(&serde_json::json!({ "key": key, "reset": true })),
            ),
            Err(e) => self.store_down(&e),
        }
    }

    async fn check(&self, body: &[u8]) -> Response<Vec<u8>> {
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
        let default = self.config.limits.default;
        let limit = match req.limit {
            None => default.limit,
            Some(n) => match NonZeroU32::new(n) {
                Some(n) => n,
                None => return error(422, "limit: expected an integer > 0"),
            },
        };
        let window_ms = match req.window_ms {
            None => default.window_ms,
            Some(n) if n <= 365 * 24 * 3600 * 1000 => match NonZeroU64::new(n) {
                Some(n) => n,
                None => return error(422, "window_ms: expected an integer > 0"),
            },
            Some(_) => return error(422, "window_ms: expected at most a year (31536000000)"),
        };
        match self
            .limiter
            .check(&req.key, Quota { limit, window_ms })
            .await
        {
            Verdict::Decided(d) => reply(
                if d.allowed { 200 } else { 429 },
                "application/json",
                &limit_headers(&d),
                decision_json(&d),
            ),
            // Fail open: allowed, without limit headers, as on the proxy path.
            Verdict::FailOpen => json(
                200,
                to_json(&serde_json::json!({
                    "allowed": true,
                    "current_count": 0,
                    "remaining": limit.get(),
                    "retry_after_seconds": 0,
                })),
            ),
            Verdict::FailClosed => json(503, crate::response::store_unavailable_json()),
        }
    }

    fn store_down(&self, e: &crate::limiter::StoreError) -> Response<Vec<u8>> {
        self.limiter.failed(e);
        error(503, &format!("rate limit store unavailable: {e}"))
    }
}
