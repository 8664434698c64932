//! The proxy path (contract §3), as a pingora `ProxyHttp`: key the request, decide, then
//! either proxy it (round-robin over the upstreams) with the limit headers added, or answer
//! 429 (blocked) or 503 (store down, fail closed) from the gateway itself.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};

use crate::config::{Config, DirectResponse, KeySource, Quota};
use crate::key::request_key;
use crate::limiter::{Decision, Limiter, Verdict};
use crate::response::{decision_json, limit_headers, store_unavailable_json};
use ipnet::IpNet;

pub struct Gateway {
    /// `None` when `limits.enabled = false`: a plain pass-through proxy.
    limiter: Option<Arc<Limiter>>,
    key_source: KeySource,
    trusted_proxies: Vec<IpNet>,
    quota: Quota,
    peers: Vec<HttpPeer>,
    next_peer: AtomicUsize,
    direct_response: Option<DirectResponse>,
}

/// Per-request state.
#[derive(Default)]
pub struct RequestCtx {
    /// The decision of an allowed request, whose headers go on the response.
    decision: Option<Decision>,
}

impl Gateway {
    pub fn new(config: &Config, limiter: Option<Arc<Limiter>>) -> Self {
        let peers = config
            .proxy
            .upstreams
            .iter()
            .map(|u| HttpPeer::new(u.addr, false, String::new()))
            .collect();
        Gateway {
            limiter,
            key_source: config.limits.key.clone(),
            trusted_proxies: config.limits.trusted_proxies.clone(),
            quota: config.limits.default,
            peers,
            next_peer: AtomicUsize::new(0),
            direct_response: config.proxy.direct_response.clone(),
        }
    }

    fn peer_ip(session: &Session) -> Option<std::net::IpAddr> {
        session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip())
    }
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
        if let Some(limiter) = &self.limiter {
            let key = request_key(
                &self.key_source,
                Self::peer_ip(session),
                &session.req_header().headers,
                &self.trusted_proxies,
            );
            match limiter.check(&key, self.quota).await {
                Verdict::Decided(d) if d.allowed => ctx.decision = Some(d),
                Verdict::Decided(d) => {
                    let body = Bytes::from(decision_json(&d));
                    respond(session, 429, &limit_headers(&d), "application/json", body).await?;
                    return Ok(true);
                }
                Verdict::FailOpen => {}
                Verdict::FailClosed => {
                    let body = Bytes::from(store_unavailable_json());
                    respond(session, 503, &[], "application/json", body).await?;
                    return Ok(true);
                }
            }
        }
        if let Some(direct) = &self.direct_response {
            let headers = ctx.decision.as_ref().map(limit_headers).unwrap_or_default();
            let body = Bytes::from(direct.body.clone());
            respond(session, direct.status, &headers, &direct.content_type, body).await?;
            return Ok(true);
        }
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        if self.peers.is_empty() {
            return Error::e_explain(ErrorType::ConnectNoRoute, "no upstream configured");
        }
        let i = self.next_peer.fetch_add(1, Ordering::Relaxed) % self.peers.len();
        Ok(Box::new(self.peers[i].clone()))
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
        if let Some(d) = &ctx.decision {
            for (name, value) in limit_headers(d) {
                upstream_response.insert_header(name, value)?;
            }
        }
        Ok(())
    }
}
