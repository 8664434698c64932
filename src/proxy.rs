//! The proxy path (contract §3, §7, §10 and §17), as a pingora `ProxyHttp`: refuse badly framed
//! requests, select the rules a request owes and decide them, then either proxy it to a
//! healthy upstream (another one if connecting fails) with the limit and forwarding headers,
//! or answer 429 (blocked) or 503 (store down, fail closed) from the gateway itself. Upstream
//! failures become 502, and 504 past the read or write timeout; a body over
//! `proxy.max_body_bytes` 413. The gateway's own answers carry the `[response] headers`. Every
//! request carries its ID ([`crate::request_id`]) to the upstream and back, is counted, and,
//! when enabled, written to the access log. The config is read once per request, so a reload
//! never changes a request midway.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderValue, Method, Version};
use pingora::apps::ErrorResponseFilter;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};

use crate::access_log::{self, AccessLog, Entry};
use crate::config::Preflight;
use crate::forwarding;
use crate::grpc;
use crate::headers::{insert_limit_headers, limit_headers};
use crate::key::{canonical, client_ip};
use crate::limiter::slots::Slots;
use crate::limiter::{Limiter, Outcome, Verdict};
use crate::live::{Live, LiveConfig};
use crate::metrics::{Metrics, UpstreamError};
use crate::request::{self, Refusal, RequestView};
use crate::request_id::{self, X_REQUEST_ID};
use crate::response::{
    add_own_headers, banned_json, blocked_json, blocked_problem_json, error_json, problem_json,
    store_unavailable_json,
};

/// The media type of a problem+json body (RFC 9457).
const PROBLEM_JSON: &str = "application/problem+json";
use crate::rules::Selection;
use crate::settle::Owed;
use crate::tenants::{bans, Tenants};

pub struct Gateway {
    live: Arc<LiveConfig>,
    limiter: Arc<Limiter>,
    metrics: Arc<Metrics>,
    access: Arc<AccessLog>,
    /// Overrides set at runtime (contract §15).
    tenants: Arc<Tenants>,
}

/// Per-request state.
pub struct RequestCtx {
    /// The config this request runs under, from its first phase to its last.
    live: Option<Arc<Live>>,
    /// When the request's header was read.
    started: Instant,
    /// Its ID (none until its first phase: pingora's own answers have none).
    request_id: Option<HeaderValue>,
    /// The decisions, whose headers go on the response (allowed) or on a gateway error.
    outcome: Option<Outcome>,
    /// What its rules settle from the response (contract §13), gathered as it passes.
    owed: Option<Owed>,
    /// The concurrency slots it holds while in flight (contract §14): freed in its last
    /// phase (or, should it never come, when dropped).
    slots: Option<Slots>,
    /// What limiting made of the request, for the access log.
    decision: &'static str,
    /// The rule that decided without a counter, for the access log: the one that let it
    /// through unlimited, or the one that bans its key.
    decided_by: Option<&'static str>,
    /// The client as the limits see it (for the upstream's `X-Real-IP` and the access log).
    client: Option<IpAddr>,
    /// The route it takes (its index in the config in force); `None`: `[proxy]`'s upstreams.
    route: Option<usize>,
    /// Upstreams this request failed to connect to, skipped when it is tried again.
    tried: Vec<SocketAddr>,
    /// The upstream it went to (its address and configured name), and when the connection
    /// was ready.
    upstream: Option<Connected>,
    /// The status the upstream answered (none for an interim `1xx`).
    upstream_status: Option<u16>,
    /// The target to send the upstream instead of the client's: its normal form, when that
    /// differs ([`crate::request`]).
    target: Option<Vec<u8>>,
    /// The `Host` to send the upstream instead of the client's: the host the rules judged.
    forward_host: Option<String>,
}

/// The upstream a request is connected to.
struct Connected {
    /// As configured (`host:port`), looked up once: for the `Host` it may be sent, the
    /// metrics and the access log.
    name: Option<Arc<str>>,
    at: Instant,
}

impl Gateway {
    pub fn new(
        live: Arc<LiveConfig>,
        limiter: Arc<Limiter>,
        metrics: Arc<Metrics>,
        access: Arc<AccessLog>,
        tenants: Arc<Tenants>,
    ) -> Self {
        Gateway {
            live,
            limiter,
            metrics,
            access,
            tenants,
        }
    }

    /// The TCP peer; an IPv4 client of an IPv6 listener as the IPv4 address it is.
    fn peer_ip(session: &Session) -> Option<IpAddr> {
        session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| canonical(a.ip()))
    }

    /// The client as the limits see it: the peer, or the address a trusted proxy forwarded.
    fn client(session: &Session, live: &Live) -> Option<IpAddr> {
        Self::peer_ip(session).map(|peer| {
            client_ip(
                peer,
                &session.req_header().headers,
                &live.config.limits.trusted_proxies,
            )
        })
    }

    fn is_tls(session: &Session) -> bool {
        session.digest().is_some_and(|d| d.ssl_digest.is_some())
    }

    /// Accepts the request in its normal form ([`crate::request`]) and selects the rules it
    /// owes (`None` with limiting off), or says why it is refused.
    fn admit(
        session: &Session,
        live: &Live,
        ctx: &mut RequestCtx,
    ) -> std::result::Result<Option<Selection>, Refusal> {
        let req = session.req_header();
        let policy = request::Policy {
            paths: live.config.proxy.paths,
            allowed_hosts: &live.config.proxy.allowed_hosts,
            key_headers: live.rules.key_headers(),
            max_body_bytes: live.config.proxy.max_body_bytes,
        };
        let admitted = request::admit(req, &policy)?;
        ctx.target = admitted.target;
        ctx.forward_host = admitted.forward_host.map(str::to_string);
        let view = RequestView {
            peer: Self::peer_ip(session),
            method: &req.method,
            host: admitted.host,
            path: &admitted.path,
            query: admitted.query,
            headers: &req.headers,
        };
        // Routes apply whatever the limits say (contract §18).
        ctx.route = live.route(&view);
        if !live.config.limits.enabled {
            return Ok(None);
        }
        if Self::exempt_preflight(req, live) {
            ctx.decision = "preflight";
            return Ok(None);
        }
        Ok(Some(live.rules.select(&view)))
    }

    /// Decides the request, answering it when it may not go on.
    async fn limit(
        &self,
        session: &mut Session,
        live: &Live,
        ctx: &mut RequestCtx,
        selection: Selection,
    ) -> Result<bool> {
        let checks = match selection {
            Selection::Unlimited { rule } => {
                ctx.decision = "unlimited";
                ctx.decided_by = Some(rule);
                return Ok(false);
            }
            Selection::Skipped => {
                ctx.decision = "skipped";
                return Ok(false);
            }
            Selection::Checks(mut checks) => {
                self.tenants.apply(&mut checks);
                checks
            }
            Selection::BadCost { rule, why } => {
                ctx.decision = "rejected";
                let body = Bytes::from(error_json(&format!("rule {rule}: {why}")));
                respond(session, ctx, 400, &[], "application/json", body).await?;
                return Ok(true);
            }
        };
        // A banned key is answered from memory: no store call, no upstream.
        if let Some((rule, left)) = self.tenants.banned(&checks) {
            ctx.decision = "banned";
            ctx.decided_by = Some(rule);
            self.metrics.count_refusal(rule, "ban");
            let secs = bans::retry_after_secs(left);
            let (body, content_type) = match live.config.headers.problem {
                true => (
                    problem_json(
                        &[rule],
                        secs,
                        &format!("banned by rule {rule}; retry after {secs} s"),
                    ),
                    PROBLEM_JSON,
                ),
                false => (banned_json(rule, secs), "application/json"),
            };
            let headers = [("Retry-After", secs.to_string())];
            respond(session, ctx, 429, &headers, content_type, Bytes::from(body)).await?;
            return Ok(true);
        }
        let reset = live.config.headers.style.shows_reset();
        match self.limiter.check(checks, reset).await {
            Verdict::Decided(outcome) if outcome.allowed() => {
                ctx.decision = "allowed";
                ctx.owed = Owed::of(&outcome, &live.rules);
                ctx.slots = self.limiter.hold(&outcome);
                let delay = outcome.delay();
                ctx.outcome = Some(outcome);
                if !delay.is_zero() {
                    self.wait(ctx, delay).await;
                }
                Ok(false)
            }
            Verdict::Decided(outcome) => {
                ctx.decision = "blocked";
                self.count_refusals(&outcome, live);
                if let Some(check) = outcome.refused_by() {
                    self.metrics.count_refusal(check.rule, "limit");
                }
                let (body, content_type) = match live.config.headers.problem {
                    true => (blocked_problem_json(&outcome), PROBLEM_JSON),
                    false => (blocked_json(&outcome), "application/json"),
                };
                let headers = limit_headers(&outcome, live.config.headers.style);
                ctx.outcome = Some(outcome);
                respond(session, ctx, 429, &headers, content_type, Bytes::from(body)).await?;
                Ok(true)
            }
            Verdict::FailOpen => {
                ctx.decision = "fail_open";
                Ok(false)
            }
            Verdict::FailClosed => {
                ctx.decision = "fail_closed";
                let body = Bytes::from(store_unavailable_json());
                respond(session, ctx, 503, &[], "application/json", body).await?;
                Ok(true)
            }
        }
    }

    /// Counts a refusal towards the bans of its rules (contract §15); a key that reaches a
    /// rule's `after` is banned, on every node, in a task of its own.
    fn count_refusals(&self, outcome: &Outcome, live: &Live) {
        for (check, d) in outcome.visible() {
            let policy = live.rules.get(check.rule).and_then(|r| r.ban);
            let (Some(policy), false) = (policy, d.allowed) else {
                continue;
            };
            let Some((entry, until_ms)) = self.tenants.refused(check, policy) else {
                continue;
            };
            self.metrics.tenants.banned(check.rule, bans::AUTO);
            let (tenants, rule) = (self.tenants.clone(), check.rule);
            // The log names the key as the listings do: private values digested.
            let shown = crate::key::counter::display(&check.key).into_owned();
            tokio::spawn(async move {
                if let Err(e) = tenants.record_ban(rule, &entry, until_ms).await {
                    log::warn!("could not write the ban of {shown} to the store: {e}");
                }
            });
        }
    }

    /// Holds a request its rules delayed (contract §14, `delay`): its place was reserved
    /// when it arrived; it goes on after the wait.
    async fn wait(&self, ctx: &RequestCtx, delay: Duration) {
        tokio::time::sleep(delay).await;
        if let Some(outcome) = &ctx.outcome {
            for (check, d) in outcome.visible() {
                if d.delay_ms > 0 {
                    self.metrics.waits.waited(check.rule, delay);
                }
            }
        }
    }

    /// A CORS preflight that `[limits] preflight = "exempt"` lets through uncounted. A
    /// browser's preflight has no body; an `OPTIONS` that sends one is counted, so the
    /// exemption is no unlimited way to the upstream.
    fn exempt_preflight(req: &RequestHeader, live: &Live) -> bool {
        let h = &req.headers;
        live.config.limits.preflight == Preflight::Exempt
            && req.method == Method::OPTIONS
            && h.contains_key(http::header::ORIGIN)
            && h.contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD)
            && !h.contains_key(http::header::TRANSFER_ENCODING)
            && h.get(http::header::CONTENT_LENGTH)
                .is_none_or(|v| v.as_bytes().trim_ascii() == b"0")
    }

    /// Settles what the request's rules owe, in a task of its own: the response has been
    /// sent, and the connection's next request does not wait for the store.
    fn settle(&self, session: &Session, ctx: &mut RequestCtx) {
        let (Some(owed), Some(outcome), Some(live)) = (ctx.owed.take(), &ctx.outcome, &ctx.live)
        else {
            return;
        };
        let status = ctx.upstream_status.or_else(|| final_status(session));
        let (settlements, failures) = owed.settle(outcome, &live.rules, status);
        for (rule, why) in failures {
            self.metrics.units.failed(rule, why);
        }
        if !settlements.is_empty() {
            let limiter = self.limiter.clone();
            tokio::spawn(async move { limiter.settle(settlements).await });
        }
    }

    /// The name of the request's route (`""`: `[proxy] upstreams`), for the metrics.
    fn route_name(ctx: &RequestCtx) -> &'static str {
        ctx.live.as_ref().map_or("", |l| l.route_name(ctx.route))
    }

    /// The upstream at `addr`, by its configured name.
    fn upstream_name(ctx: &RequestCtx, addr: &SocketAddr) -> Option<Arc<str>> {
        ctx.live
            .as_ref()
            .and_then(|live| live.pool_of(ctx.route).name_of(addr))
    }

    fn limit_headers(ctx: &RequestCtx) -> Vec<(&'static str, String)> {
        match (&ctx.outcome, &ctx.live) {
            (Some(outcome), Some(live)) => limit_headers(outcome, live.config.headers.style),
            _ => Vec::new(),
        }
    }
}

/// What pingora's own answers get (a request header that is malformed, too large or too
/// slow, which no phase of the proxy sees): the `[response] headers` in force; and they are
/// counted, as no `logging` phase will.
pub fn error_response_filter(live: Arc<LiveConfig>, metrics: Arc<Metrics>) -> ErrorResponseFilter {
    ErrorResponseFilter(Arc::new(move |resp: &mut ResponseHeader| {
        metrics.count_response(resp.status.as_u16());
        if let Err(e) = add_own_headers(resp, &live.load().config.response) {
            log::debug!("could not add the [response] headers: {e}");
        }
    }))
}

/// Answers from the gateway itself, keeping the connection usable: a Content-Length is set,
/// so the client's next request can follow on the same connection. A `HEAD` gets the same
/// header and no body. The answer carries the `[response] headers`.
async fn respond(
    session: &mut Session,
    ctx: &RequestCtx,
    status: u16,
    headers: &[(&'static str, String)],
    content_type: &str,
    body: Bytes,
) -> Result<()> {
    discard_request_body(session).await;
    let own = ctx.live.as_ref().map(|l| &l.config.response);
    // A gRPC call over HTTP/2 gets its answer the gRPC way: 200, then a grpc-status in the
    // trailers (HTTP/1 and grpc-web clients cannot read trailers: they get the HTTP answer).
    let grpc = status >= 400
        && session.as_downstream().is_http2()
        && grpc::is_grpc(&session.req_header().headers);
    let mut resp = ResponseHeader::build(
        if grpc { 200 } else { status },
        Some(headers.len() + 6 + own.map_or(0, |o| o.headers.len() + 1)),
    )?;
    for (name, value) in headers {
        resp.insert_header(*name, value.as_str())?;
    }
    if let Some(id) = &ctx.request_id {
        resp.insert_header(X_REQUEST_ID, id)?;
    }
    if grpc {
        resp.insert_header("Content-Type", "application/grpc")?;
        if let Some(own) = own {
            add_own_headers(&mut resp, own)?;
        }
        // The status goes in the trailers, where a gRPC client reads it.
        let mut trailers = http::HeaderMap::new();
        let code = grpc::status_of(status).to_string();
        let message = grpc::message(&grpc_message(&body));
        for (name, value) in [("grpc-status", code), ("grpc-message", message)] {
            if let Ok(v) = http::HeaderValue::from_str(&value) {
                trailers.insert(name, v);
            }
        }
        session.write_response_header(Box::new(resp), false).await?;
        return session
            .as_downstream_mut()
            .write_response_trailers(trailers)
            .await;
    } else {
        resp.insert_header("Content-Type", content_type)?;
        resp.insert_header("Content-Length", body.len().to_string())?;
    }
    if let Some(own) = own {
        add_own_headers(&mut resp, own)?;
    }
    let no_body = grpc || body.is_empty() || session.req_header().method == Method::HEAD;
    session
        .write_response_header(Box::new(resp), no_body)
        .await?;
    if !no_body {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

/// What a gRPC client is told of one of the gateway's own answers (its JSON body): the rule
/// that refused or banned it, or the error.
fn grpc_message(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    if let Some(detail) = v["detail"].as_str() {
        return detail.to_string();
    }
    match (
        v["rule"].as_str(),
        v["banned"].as_bool(),
        v["error"].as_str(),
    ) {
        (Some(rule), Some(true), _) => format!(
            "banned by rule {rule}; retry after {} s",
            v["retry_after_seconds"]
        ),
        (Some(rule), _, _) => format!(
            "rate limited by rule {rule}; retry after {} s",
            v["retry_after_seconds"]
        ),
        (_, _, Some(error)) => error.to_string(),
        _ => "refused by the gateway".to_string(),
    }
}

/// Largest request body read and dropped so that a connection answered by the gateway itself
/// (429, 503, direct response) can carry the client's next request, as nginx does.
const DISCARD_BODY_MAX: usize = 64 * 1024;
/// How long that may take before the connection is closed instead.
const DISCARD_BODY_TIME: Duration = Duration::from_secs(1);

/// Reads and drops a small request body, so the connection can carry the client's next
/// request, and so that closing it (or, for HTTP/2, ending the stream) does not reset a
/// client still sending: a large or slow body is not read, and the connection is closed after
/// the response instead, so a refused client cannot make the gateway read for it.
async fn discard_request_body(session: &mut Session) {
    let downstream = session.as_downstream_mut();
    if downstream.is_body_done() || downstream.is_body_empty() {
        return;
    }
    // The client waits for a `100 Continue` before sending its body: answer at once, and
    // close.
    let expects_continue = downstream
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue {
        downstream.set_keepalive(None);
        return;
    }
    let declared = crate::response::declared_length(&downstream.req_header().headers);
    // A gRPC call's body (framed messages, with no declared length) is read too, within the
    // same bounds, so that a unary call's stream ends cleanly rather than being reset.
    let readable = match declared {
        Some(n) => n <= DISCARD_BODY_MAX,
        None => downstream.is_http2() && grpc::is_grpc(&downstream.req_header().headers),
    };
    let drained = readable
        && tokio::time::timeout(
            DISCARD_BODY_TIME,
            drain_at_most(downstream, DISCARD_BODY_MAX),
        )
        .await
        .unwrap_or(false);
    if !drained {
        downstream.set_keepalive(None);
    }
}

/// Reads a request body to its end and drops it; false when it holds more than `max` bytes
/// (the rest is left unread) or cannot be read.
async fn drain_at_most(
    downstream: &mut pingora::protocols::http::ServerSession,
    max: usize,
) -> bool {
    let mut read = 0;
    loop {
        match downstream.read_request_body().await {
            Ok(Some(chunk)) => {
                read += chunk.len();
                if read > max {
                    return false;
                }
            }
            Ok(None) => return true,
            Err(_) => return false,
        }
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    /// None: pingora's default adds a response compression module, disabled, that every
    /// request still passes through.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    fn new_ctx(&self) -> Self::CTX {
        RequestCtx {
            live: None,
            started: Instant::now(),
            request_id: None,
            outcome: None,
            owed: None,
            slots: None,
            decision: "off",
            decided_by: None,
            client: None,
            route: None,
            tried: Vec::new(),
            upstream: None,
            upstream_status: None,
            target: None,
            forward_host: None,
        }
    }

    async fn early_request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<()> {
        let live = ctx.live.insert(self.live.load());
        // An idle client connection is closed after the keep-alive timeout (none: after this
        // response), unless the client did not ask to keep it (HTTP/1.0 without
        // `Connection: keep-alive`, or `Connection: close`), which pingora has already
        // seen; pipelined requests are answered in order.
        if session.get_keepalive().is_some() {
            let idle = live.config.proxy.keepalive_timeout.as_secs();
            session.set_keepalive((idle > 0).then_some(idle));
        }
        session.set_pipelining_enabled(true);
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        let live = match &ctx.live {
            Some(live) => live.clone(),
            None => ctx.live.insert(self.live.load()).clone(),
        };
        ctx.client = Self::client(session, &live);
        ctx.request_id = Some(request_id::of(&session.req_header().headers));
        let selection = match Self::admit(session, &live, ctx) {
            Ok(selection) => selection,
            Err(refusal) => {
                ctx.decision = "rejected";
                refuse(session, ctx, refusal).await?;
                return Ok(true);
            }
        };
        if let Some(selection) = selection {
            if self.limit(session, &live, ctx, selection).await? {
                return Ok(true);
            }
        }
        if let Some(direct) = &live.config.proxy.direct_response {
            let headers = Self::limit_headers(ctx);
            let body = Bytes::from(direct.body.clone());
            respond(
                session,
                ctx,
                direct.status,
                &headers,
                &direct.content_type,
                body,
            )
            .await?;
            return Ok(true);
        }
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        let Some(live) = &ctx.live else {
            return Error::e_explain(ErrorType::ConnectNoRoute, "no config");
        };
        match live.pool_of(ctx.route).select(&ctx.tried) {
            Some(mut peer) => {
                // An upgrade (a WebSocket) needs HTTP/1.1 to the upstream: HTTP/2 has no
                // `Upgrade`, so an https:// upstream is not offered h2 for it.
                if session.is_upgrade_req() {
                    peer.options.alpn = pingora::protocols::ALPN::H1;
                }
                Ok(peer)
            }
            // Answered 502, as nginx does when no upstream is live.
            None => Err(Error::explain(
                ErrorType::ConnectNoRoute,
                "no healthy upstream (every one failed its health check)",
            )
            .into_up()),
        }
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut Self::CTX,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let name = peer
            ._address
            .as_inet()
            .and_then(|addr| Self::upstream_name(ctx, addr));
        if let Some(addr) = peer._address.as_inet() {
            ctx.tried.push(*addr);
        }
        // A connection of an earlier try is no longer this request's.
        ctx.upstream = None;
        let kind = match e.etype() {
            ErrorType::ConnectTimedout => UpstreamError::ConnectTimeout,
            ErrorType::TLSHandshakeFailure
            | ErrorType::TLSHandshakeTimedout
            | ErrorType::InvalidCert
            | ErrorType::HandshakeError => UpstreamError::Tls,
            _ => UpstreamError::Connect,
        };
        // Nothing was sent: another upstream, if one is left, may take the request.
        if let Some(live) = &ctx.live {
            let retry = ctx.tried.len() <= live.retries_of(ctx.route)
                && live.pool_of(ctx.route).select(&ctx.tried).is_some();
            e.set_retry(retry);
        }
        if let Some(name) = &name {
            let route = Self::route_name(ctx);
            self.metrics.upstreams.count_error(route, name, kind);
            if e.retry() {
                self.metrics.upstreams.count_retry(route, name);
            }
        }
        e
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        _reused: bool,
        peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        #[cfg(windows)] _sock: std::os::windows::io::RawSocket,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if let Some(addr) = peer._address.as_inet() {
            ctx.upstream = Some(Connected {
                name: Self::upstream_name(ctx, addr),
                at: Instant::now(),
            });
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if let Some(target) = &ctx.target {
            upstream_request.set_raw_path(target)?;
        }
        // Called again for each retry: the host stays in the context.
        if let Some(host) = &ctx.forward_host {
            upstream_request.insert_header(http::header::HOST, host.as_str())?;
        }
        // An HTTP/1.0 request may come without a Host; the upstream gets HTTP/1.1, which
        // needs one: the upstream's own name, as nginx sends by default.
        if !upstream_request.headers.contains_key(http::header::HOST)
            && upstream_request.uri.authority().is_none()
        {
            if let Some(name) = ctx.upstream.as_ref().and_then(|c| c.name.as_ref()) {
                upstream_request.insert_header(http::header::HOST, &**name)?;
            }
        }
        if let Some(id) = &ctx.request_id {
            upstream_request.insert_header(X_REQUEST_ID, id)?;
        }
        let proto = forwarding::proto(Self::is_tls(session));
        forwarding::set_forwarded(upstream_request, Self::peer_ip(session), ctx.client, proto)
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        forwarding::strip_hop_by_hop(upstream_response);
        // An interim answer (`100 Continue`, `103 Early Hints`) is not the response: the
        // limit fields and the ID go on the one that follows. A `101` is the response.
        let status = upstream_response.status;
        if status.is_informational() && status != http::StatusCode::SWITCHING_PROTOCOLS {
            return Ok(());
        }
        ctx.upstream_status = Some(status.as_u16());
        if let (Some(outcome), Some(live)) = (&ctx.outcome, &ctx.live) {
            if let Some(owed) = &mut ctx.owed {
                owed.response_header(outcome, &live.rules, &upstream_response.headers);
            }
            insert_limit_headers(upstream_response, outcome, live.config.headers.style)?;
        }
        if let Some(id) = &ctx.request_id {
            upstream_response.insert_header(X_REQUEST_ID, id)?;
        }
        // Unbuffered (contract §18): over HTTP/1, a response with a length is written in as
        // few writes as it fills, so it goes chunked (HTTP/1.0: until the close), which pingora
        // sends as it arrives.
        let buffering = ctx.live.as_ref().is_none_or(|l| l.buffering_of(ctx.route));
        if !buffering
            && !status.is_informational()
            && !session.was_upgraded()
            && !session.as_downstream().is_http2()
            && session.req_header().method != Method::HEAD
            && upstream_response
                .headers
                .contains_key(http::header::CONTENT_LENGTH)
            && !matches!(status.as_u16(), 204 | 304)
        {
            upstream_response.remove_header(&http::header::CONTENT_LENGTH);
            if session.req_header().version != Version::HTTP_10 {
                upstream_response.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
            }
        }
        // An HTTP/1.0 client cannot read chunked framing: without a length, the body ends
        // when the connection closes.
        if session.req_header().version == Version::HTTP_10
            && !upstream_response
                .headers
                .contains_key(http::header::CONTENT_LENGTH)
        {
            upstream_response.remove_header(&http::header::TRANSFER_ENCODING);
            session.set_keepalive(None);
        }
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Self::CTX,
    ) -> FailToProxy {
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            // No byte from the upstream (or none taken) within the timeout.
            ErrorType::ReadTimedout | ErrorType::WriteTimedout
                if e.esource() == &ErrorSource::Upstream =>
            {
                504
            }
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                ErrorSource::Downstream => match e.etype() {
                    // The client is gone or cannot read: nothing to answer.
                    ErrorType::WriteError
                    | ErrorType::ReadError
                    | ErrorType::ConnectionClosed
                    | ErrorType::WriteTimedout => 0,
                    // Its body stalled: 408, as nginx answers.
                    ErrorType::ReadTimedout => 408,
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        };
        if e.esource() == &ErrorSource::Upstream {
            // A failure to connect was counted as it happened.
            if let Some(name) = ctx.upstream.as_ref().and_then(|c| c.name.as_ref()) {
                let kind = match e.etype() {
                    ErrorType::ReadTimedout | ErrorType::WriteTimedout => UpstreamError::Timeout,
                    ErrorType::ConnectionClosed
                    | ErrorType::ConnectError
                    | ErrorType::ReadError
                    | ErrorType::WriteError => UpstreamError::Closed,
                    ErrorType::InvalidHTTPHeader | ErrorType::H1Error | ErrorType::H2Error => {
                        UpstreamError::Protocol
                    }
                    _ => UpstreamError::Other,
                };
                let route = Self::route_name(ctx);
                self.metrics.upstreams.count_error(route, name, kind);
            }
        }
        if code > 0 && final_status(session).is_none() {
            let message = match code {
                502 => "bad gateway: the upstream could not be reached or failed",
                413 => request::admit::BODY_TOO_LARGE,
                504 => "gateway timeout: the upstream did not answer in time",
                408 => "request timeout: the request body did not arrive in time",
                400 => "bad request",
                _ => "internal error",
            };
            let headers = Self::limit_headers(ctx);
            session.set_keepalive(None);
            let body = Bytes::from(error_json(message));
            if let Err(e) = respond(session, ctx, code, &headers, "application/json", body).await {
                log::debug!("could not send the {code} response: {e}");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// A client that went away or sent something broken is the client's affair: logged at
    /// debug, not as the server's error (pingora logs every failure at error).
    fn suppress_error_log(&self, _session: &Session, _ctx: &Self::CTX, error: &Error) -> bool {
        if error.esource() == &ErrorSource::Downstream {
            log::debug!("client failure: {error}");
            return true;
        }
        false
    }

    /// Holds a body without a declared length (chunked, HTTP/2) to `proxy.max_body_bytes`:
    /// past it the request is cut, and answered 413 when no response has started.
    /// The count is of bytes read from the client (a retry sends the same bytes again), and
    /// the bytes of an upgraded connection (a WebSocket) are no request body.
    async fn request_body_filter(
        &self,
        session: &mut Session,
        _body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        let max = ctx
            .live
            .as_ref()
            .map_or(0, |l| l.config.proxy.max_body_bytes);
        if max > 0
            && !session.was_upgraded()
            && session.as_downstream().body_bytes_read() as u64 > max
        {
            return Err(
                Error::explain(ErrorType::HTTPStatus(413), request::admit::BODY_TOO_LARGE)
                    .into_down(),
            );
        }
        Ok(())
    }

    /// Feeds the body to the rules that settle from it (contract §13), as it passes.
    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<Option<Duration>> {
        if let (Some(owed), Some(chunk)) = (&mut ctx.owed, body.as_ref()) {
            owed.body(chunk);
        }
        Ok(None)
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Self::CTX) {
        // The response has ended (or the client left, or the upstream failed): its slots free
        // before the connection's next request is read.
        if let Some(slots) = ctx.slots.take() {
            slots.free().await;
        }
        self.settle(session, ctx);
        let status = final_status(session).unwrap_or(0);
        if status > 0 {
            self.metrics.count_response(status);
        }
        let took = ctx.started.elapsed();
        self.metrics.observe_request(took);
        let upstream_ms = ctx.upstream.as_ref().map(|c| {
            let took = c.at.elapsed();
            self.metrics.observe_upstream(took);
            access_log::millis(took)
        });
        let upstream = ctx.upstream.as_ref().and_then(|c| c.name.as_deref());
        if let (Some(name), Some(code)) = (upstream, ctx.upstream_status) {
            let route = Self::route_name(ctx);
            self.metrics.upstreams.count_response(route, name, code);
        }
        if !self.access.enabled() {
            return;
        }
        let req = session.req_header();
        let rule = ctx
            .outcome
            .as_ref()
            .and_then(|o| o.headline())
            .map(|(check, _)| check.rule)
            .or(ctx.decided_by);
        let downstream = session.as_downstream();
        let protocol = match req.version {
            _ if downstream.is_http2() => "HTTP/2",
            Version::HTTP_10 => "HTTP/1.0",
            Version::HTTP_09 => "HTTP/0.9",
            _ => "HTTP/1.1",
        };
        self.access.write(&Entry {
            time: SystemTime::now(),
            client: ctx.client,
            host: request::admit::host(req).0,
            method: req.method.as_str(),
            path: req.uri.path(),
            protocol,
            tls: Self::is_tls(session),
            status,
            rule,
            decision: ctx.decision,
            upstream,
            route: Some(Self::route_name(ctx)).filter(|name| !name.is_empty()),
            upstream_status: ctx.upstream_status,
            upstream_ms,
            duration_ms: access_log::millis(took),
            request_bytes: downstream.body_bytes_read(),
            bytes: session.body_bytes_sent(),
            user_agent: req
                .headers
                .get(http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok()),
            request_id: ctx.request_id.as_ref().and_then(|v| v.to_str().ok()),
            trace_id: request_id::trace_id(&req.headers),
        });
    }
}

/// The status of the response the client was sent, if any: an interim `100 Continue` (or
/// `103`) is not one, and a final answer can still follow it.
fn final_status(session: &Session) -> Option<u16> {
    session
        .response_written()
        .map(|r| r.status)
        .filter(|s| !s.is_informational() || *s == http::StatusCode::SWITCHING_PROTOCOLS)
        .map(|s| s.as_u16())
}

/// Answers a badly framed request and closes the connection, whose framing cannot be
/// trusted for a next request.
async fn refuse(session: &mut Session, ctx: &RequestCtx, refusal: Refusal) -> Result<()> {
    session.set_keepalive(None);
    let body = Bytes::from(error_json(&refusal.message()));
    // HTTP/2 has no `Connection` field (RFC 9113 §8.2.2): its stream ends with the answer.
    let close = [("Connection", "close".to_string())];
    let headers: &[(&str, String)] = if session.as_downstream().is_http2() {
        &[]
    } else {
        &close
    };
    respond(
        session,
        ctx,
        refusal.status(),
        headers,
        "application/json",
        body,
    )
    .await
}
