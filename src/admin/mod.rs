//! The admin port (contract §5 and §6), for operators and the external monitor:
//!
//! | method, path | answer |
//! |---|---|
//! | `GET /` | the status page: one self-contained HTML page reading the API below, live |
//! | `GET /health` | 200 healthy, 503 while the store is unreachable |
//! | `GET /health/live` | 200 while the process serves; asks nothing of the store |
//! | `GET /health/ready` | 200 when the node should get traffic, 503 draining or failing closed |
//! | `GET /api/nodes` | every live node in the registry |
//! | `GET /api/counters` | every live counter, with its limit and remaining |
//! | `GET /api/limits` | the limits and rules in force, and when they were loaded |
//! | `GET /api/blocks` | counters at or over their limit |
//! | `POST /api/counters/{key}/reset` | forget a counter (bearer token when `admin.token` is set) |
//! | `POST /check` | a decision as a service, with the proxy's headers; 429 when blocked (token) |
//! | `POST /api/explain` | which rules a described request would meet, and their state; records nothing |
//! | `GET /metrics` | Prometheus text format |
//! | `GET /openapi.json` | an OpenAPI 3 description of this API |
//!
//! With `admin.read = "token"` every `/api/*` read needs the admin token too, and with
//! `admin.metrics_token` set `/metrics` needs that one; `/health*` is always open.
//!
//! Every body is JSON; a bad body or parameter gets 422, an unknown path 404, a wrong method
//! 405, each with `{"error":"..."}`. `HEAD` is answered wherever `GET` is. Request headers and
//! bodies are bounded in size and in time, connections in number, and counter listings run
//! one at a time, so no client can stall or exhaust the node.

mod explain;
mod handlers;
pub mod router;
mod status;
mod tenants;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::limiter::Limiter;
use crate::live::LiveConfig;
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::response::error_json;
use router::{route, Miss};

/// Largest admin request body accepted.
const MAX_BODY: usize = 64 * 1024;
/// Longest a client may take to send a request body.
const BODY_TIMEOUT: Duration = Duration::from_secs(5);

pub struct AdminApp {
    /// The config in force: rules, limits and the token change on reload.
    pub live: Arc<LiveConfig>,
    pub limiter: Arc<Limiter>,
    /// The store's admin side: listings, resets, health.
    pub counters: Arc<dyn crate::limiter::Counters>,
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    /// How request headers are read: bounded in size and time, as on the proxy port.
    pub options: pingora::apps::HttpServerOptions,
    /// One counter listing at a time: a listing of 100,000 keys holds tens of megabytes
    /// until it is sent, and forty at once held half a gigabyte.
    pub listings: tokio::sync::Semaphore,
    /// Whether the node is draining (`/health/ready`).
    pub lifecycle: Arc<crate::lifecycle::Lifecycle>,
    /// Overrides set at runtime and the audit log (contract §15).
    pub tenants: Arc<crate::tenants::Tenants>,
}

/// Listings one at a time ([`AdminApp::listings`]).
pub const LISTINGS_AT_ONCE: usize = 1;

/// A response with the headers every admin answer carries.
pub(crate) fn reply(
    status: u16,
    content_type: &str,
    extra: &[(&str, String)],
    body: String,
) -> Response<Vec<u8>> {
    let mut builder = Response::builder()
        .status(status)
        .header("Content-Type", content_type)
        .header("Content-Length", body.len())
        .header("Cache-Control", "no-store");
    for (name, value) in extra {
        builder = builder.header(*name, value.as_str());
    }
    builder.body(body.into_bytes()).unwrap_or_else(|_| {
        // Only reachable with an invalid header value, which no handler produces.
        let mut r = Response::new(Vec::new());
        *r.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
        r
    })
}

pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "{}".to_string())
}

pub(crate) fn json(status: u16, body: String) -> Response<Vec<u8>> {
    reply(status, "application/json", &[], body)
}

pub(crate) fn error(status: u16, message: &str) -> Response<Vec<u8>> {
    json(status, error_json(message))
}

/// Reads the whole body, or answers why not (413 too large, 408 too slow, 400 broken).
async fn read_body(session: &mut ServerSession) -> Result<Vec<u8>, Response<Vec<u8>>> {
    let declared = crate::response::declared_length(&session.req_header().headers);
    if declared.is_some_and(|n| n > MAX_BODY) {
        session.set_keepalive(None);
        return Err(error(413, &format!("request body over {MAX_BODY} bytes")));
    }
    let mut body = BytesMut::new();
    let read = async {
        while let Some(chunk) = session.read_request_body().await? {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_BODY {
                return Ok(false);
            }
        }
        Ok::<bool, Box<pingora::Error>>(true)
    };
    match tokio::time::timeout(BODY_TIMEOUT, read).await {
        Ok(Ok(true)) => Ok(body.to_vec()),
        Ok(Ok(false)) => {
            session.set_keepalive(None);
            Err(error(413, &format!("request body over {MAX_BODY} bytes")))
        }
        Ok(Err(e)) => {
            session.set_keepalive(None);
            Err(error(400, &format!("cannot read the request body: {e}")))
        }
        Err(_) => {
            session.set_keepalive(None);
            Err(error(408, "the request body did not arrive in time"))
        }
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    fn server_options(&self) -> Option<&pingora::apps::HttpServerOptions> {
        Some(&self.options)
    }

    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let method = session.req_header().method.as_str().to_string();
        let target = session
            .req_header()
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        // Read any body first, so the connection stays usable whatever the answer.
        let body = match read_body(session).await {
            Ok(b) => b,
            Err(resp) => return resp,
        };
        match route(&method, &target) {
            Ok(r) => self.handle(r, session, &body).await,
            Err(Miss::NotFound) => error(
                404,
                &format!("no such endpoint: {method} {}", path_of(&target)),
            ),
            Err(Miss::MethodNotAllowed(allow)) => reply(
                405,
                "application/json",
                &[("Allow", allow.to_string())],
                error_json(&format!("{method} is not allowed here; use {allow}")),
            ),
            Err(Miss::BadKey(why)) => error(422, &why),
        }
    }
}

fn path_of(target: &str) -> &str {
    target.split('?').next().unwrap_or(target)
}
