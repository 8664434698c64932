//! The proxy path (contract §3 and §7), as a pingora `ProxyHttp`: select the rules a request
//! owes, decide them, then either proxy it (round-robin over the upstreams) with the limit
//! headers added, or answer 429 (blocked) or 503 (store down, fail closed) from the gateway
//! itself. The config is read once per request, so a reload never changes a request midway.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};

use crate::headers::limit_headers;
use crate::key::RequestView;
use crate::limiter::{Limiter, Outcome, Verdict};
use crate::live::{Live, LiveConfig};
use crate::response::{blocked_json, store_unavailable_json};
use crate::rules::Selection;

pub struct Gateway {
    live: Arc<LiveConfig>,
    limiter: Arc<Limiter>,
    next_peer: AtomicUsize,
}

/// Per-request state.
#[derive(Default)]
pub struct RequestCtx {
    /// The config this request runs under, from its first phase to its last.
    live: Option<Arc<Live>>,
    /// The decisions of an allowed request, whose headers go on the response.
    outcome: Option<Outcome>,
}

impl Gateway {
    pub fn new(live: Arc<LiveConfig>, limiter: Arc<Limiter>) -> Self {
        Gateway {
            live,
            limiter,
            next_peer: AtomicUsize::new(0),
        }
    }

    fn peer_ip(session: &Session) -> Option<std::net::IpAddr> {
        session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip())
    }

    /// Decides the request, answering it when it may not go on.
    async fn limit(&self, session: &mut Session, live: &Live) -> Result<Limited> {
        let selection = {
            let req = session.req_header();
            let host = req
                .headers
                .get(http::header::HOST)
                .and_then(|v| v.to_str().ok())
                .or_else(|| req.uri.authority().map(|a| a.as_str()));
            live.rules.select(&RequestView {
                peer: Self::peer_ip(session),
                method: &req.method,
                host,
                path: req.uri.path(),
                headers: &req.headers,
            })
        };
        let checks = match selection {
            Selection::Unlimited { .. } => return Ok(Limited::Proceed(None)),
            Selection::Checks(checks) => checks,
        };
        let reset = live.config.headers.style.shows_reset();
        match self.limiter.check(checks, reset).await {
            Verdict::Decided(outcome) if outcome.allowed() => Ok(Limited::Proceed(Some(outcome))),
            Verdict::Decided(outcome) => {
                let body = Bytes::from(blocked_json(&outcome));
                let headers = limit_headers(&outcome, live.config.headers.style);
                respond(session, 429, &headers, "application/json", body).await?;
                Ok(Limited::Answered)
            }
            Verdict::FailOpen => Ok(Limited::Proceed(None)),
            Verdict::FailClosed => {
                let body = Bytes::from(store_unavailable_json());
                respond(session, 503, &[], "application/json", body).await?;
                Ok(Limited::Answered)
            }
        }
    }
}

/// What limiting left to do.
enum Limited {
    /// The gateway answered (429, 503).
    Answered,
    /// Go on, with the decisions to show (none: unlimited, or the store failed open).
    Proceed(Option<Outcome>),
}

/// Answers from the gateway itself, keeping the connection usable: a Content-Length is set,
/// so the client's next request can follow on the same connection.
async fn respond(
    session: &mut Session,
    status: u16,
    headers: &[(&'static str, String)],
    content_type: &str,
    body: Bytes,
) -> Result<()> {
    discard_request_body(session).await;
    let mut resp = ResponseHeader::build(status, Some(headers.len() + 2))?;
    for (name, value) in headers {
        resp.insert_header(*name, value.as_str())?;
    }
    resp.insert_header("Content-Type", content_type)?;
    resp.insert_header("Content-Length", body.len().to_string())?;
    session
        .write_response_header(Box::new(resp), body.is_empty())
        .await?;
    if !body.is_empty() {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

/// Largest request body read and dropped so that a connection answered by the gateway itself
/// (429, 503, direct response) can carry the client's next request, as nginx does.
const DISCARD_BODY_MAX: usize = 64 * 1024;
/// How long that may take before the connection is closed instead.
const DISCARD_BODY_TIME: std::time::Duration = std::time::Duration::from_secs(1);

/// Reads and drops a small request body; a large or slow one closes the connection after the
/// response instead, so a blocked client cannot make the gateway read for it.
async fn discard_request_body(session: &mut Session) {
    let downstream = session.as_downstream_mut();
    if downstream.is_body_done() || downstream.is_body_empty() {
        return;
    }
    let declared = crate::response::declared_length(&downstream.req_header().headers);
    let drained = match declared {
        Some(n) if n <= DISCARD_BODY_MAX => {
            tokio::time::timeout(DISCARD_BODY_TIME, downstream.drain_request_body())
                .await
                .is_ok_and(|r| r.is_ok())
        }
        _ => false,
    };
    if !drained {
        downstream.set_keepalive(None);
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> Self::CTX {
        RequestCtx::default()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        let live: &Live = ctx.live.insert(self.live.load());
        if live.config.limits.enabled {
            match self.limit(session, live).await? {
                Limited::Answered => return Ok(true),
                Limited::Proceed(outcome) => ctx.outcome = outcome,
            }
        }
        if let Some(direct) = &live.config.proxy.direct_response {
            let headers = match &ctx.outcome {
                Some(o) => limit_headers(o, live.config.headers.style),
                None => Vec::new(),
            };
            let body = Bytes::from(direct.body.clone());
            respond(session, direct.status, &headers, &direct.content_type, body).await?;
            return Ok(true);
        }
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        let peers = match &ctx.live {
            Some(live) => &live.peers,
            None => return Error::e_explain(ErrorType::ConnectNoRoute, "no config"),
        };
        if peers.is_empty() {
            return Error::e_explain(ErrorType::ConnectNoRoute, "no upstream configured");
        }
        let i = self.next_peer.fetch_add(1, Ordering::Relaxed) % peers.len();
        Ok(Box::new(peers[i].clone()))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        _ctx: &mut Self::CTX,
    ) -> Result<()> {
        // Tell the upstream who the client is, as every reverse proxy does.
        if let Some(ip) = Self::peer_ip(session) {
            // Every X-Forwarded-For header the client sent is one list; keep it and append.
            let mut hops: Vec<String> = upstream_request
                .headers
                .get_all("x-forwarded-for")
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect();
            hops.push(ip.to_string());
            upstream_request.insert_header("X-Forwarded-For", hops.join(", "))?;
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if let (Some(outcome), Some(live)) = (&ctx.outcome, &ctx.live) {
            for (name, value) in limit_headers(outcome, live.config.headers.style) {
                upstream_response.insert_header(name, value)?;
            }
        }
        Ok(())
    }
}
