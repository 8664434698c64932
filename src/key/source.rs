//! From a key source to a request's key: the one dispatch from each kind of part to its value
//! in a request ([`Keys::value_of`]), pure, and what one request's rules share worked out at
//! most once (the client IP, the verified bearer token).
//!
//! - `ip`: the client ([`super::client_ip`]); `ip/N`: an IPv6 client's network, an IPv4
//!   client's address;
//! - `header:<Name>`: the header's value (a request sending it twice was refused before);
//! - `query:<name>`: the first parameter of that name, percent-decoded (`+` as a space, as
//!   forms encode it);
//! - `cookie:<name>`: the first cookie of that name over every `Cookie` header (HTTP/2
//!   sends one per cookie), without surrounding quotes;
//! - `jwt:<claim>`: that claim of the bearer token in `Authorization`, when the token
//!   verifies ([`super::jwt`]): a string, or a number or boolean as written.
//!
//! An empty value is a missing one.

use std::borrow::Cow;
use std::net::IpAddr;

use ipnet::IpNet;

use super::counter::{self, Value};
use super::jwt::{Claims, Verifier};
use super::{client_ip, KeySource, Missing, Part};
use crate::request::RequestView;

/// One request's keys, for all of its rules.
pub struct Keys<'v> {
    view: &'v RequestView<'v>,
    trusted: &'v [IpNet],
    jwt: Option<&'v Verifier>,
    /// The client IP, once worked out.
    client: Option<Option<IpAddr>>,
    /// The bearer token's claims, once verified (`None` inside: absent or invalid).
    claims: Option<Option<Claims>>,
}

/// A part's value in one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read<'v> {
    Client(Option<IpAddr>),
    Net(IpNet),
    Bytes(Cow<'v, [u8]>),
}

impl Read<'_> {
    fn value(&self) -> Value<'_> {
        match self {
            Read::Client(Some(ip)) => Value::Ip(*ip),
            Read::Client(None) => Value::UnknownIp,
            Read::Net(net) => Value::Net(*net),
            Read::Bytes(b) => Value::Bytes(b),
        }
    }

    /// The value as text, for `/api/explain`.
    pub fn text(&self) -> String {
        match self {
            Read::Client(Some(ip)) => ip.to_string(),
            Read::Client(None) => "unknown".into(),
            Read::Net(net) => net.to_string(),
            Read::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
        }
    }
}

impl<'v> Keys<'v> {
    pub fn new(
        view: &'v RequestView<'v>,
        trusted: &'v [IpNet],
        jwt: Option<&'v Verifier>,
    ) -> Keys<'v> {
        Keys {
            view,
            trusted,
            jwt,
            client: None,
            claims: None,
        }
    }

    /// The client as the limits see it (`None`: a peer that is not an IP socket).
    pub fn client(&mut self) -> Option<IpAddr> {
        let (view, trusted) = (self.view, self.trusted);
        *self
            .client
            .get_or_insert_with(|| view.peer.map(|p| client_ip(p, view.headers, trusted)))
    }

    /// The request key under `source`; when a part is missing, the client's `ip:` key, or
    /// `None` with [`Missing::Skip`] (the rule does not apply).
    pub fn request_key(&mut self, source: &KeySource, missing: Missing) -> Option<String> {
        let parts = source.parts();
        // The common case, one part, without a list.
        if let [part] = parts {
            return match self.value_of(part) {
                Some(read) => Some(counter::request_key(&[(part, read.value())])),
                None => self.fallback(missing),
            };
        }
        let mut reads = Vec::with_capacity(parts.len());
        for part in parts {
            match self.value_of(part) {
                Some(read) => reads.push(read),
                None => return self.fallback(missing),
            }
        }
        let values: Vec<(&Part, Value)> = parts.iter().zip(reads.iter().map(Read::value)).collect();
        Some(counter::request_key(&values))
    }

    fn fallback(&mut self, missing: Missing) -> Option<String> {
        match missing {
            Missing::Ip => Some(counter::ip_key(self.client())),
            Missing::Skip => None,
        }
    }

    /// A part's value in this request; `None` when it is missing or invalid.
    pub fn value_of(&mut self, part: &Part) -> Option<Read<'v>> {
        let view = self.view;
        let read = match part {
            Part::Ip => Read::Client(self.client()),
            Part::IpPrefix(len) => match self.client() {
                Some(ip) => match client_ip::network(ip, *len) {
                    Some(net) => Read::Net(net),
                    None => Read::Client(Some(ip)),
                },
                None => Read::Client(None),
            },
            Part::Header(name) => Read::Bytes(Cow::Borrowed(view.headers.get(name)?.as_bytes())),
            Part::Query(name) => Read::Bytes(query_param(view.query?, name)?),
            Part::Cookie(name) => Read::Bytes(cookie(view, name)?),
            Part::Jwt(claim) => {
                let value = self.claims()?.get(claim)?;
                Read::Bytes(Cow::Owned(claim_text(value)?.into_bytes()))
            }
        };
        match &read {
            Read::Bytes(b) if b.is_empty() => None,
            _ => Some(read),
        }
    }

    fn claims(&mut self) -> Option<&Claims> {
        let (view, jwt) = (self.view, self.jwt);
        self.claims
            .get_or_insert_with(|| {
                let authorization = view.headers.get(http::header::AUTHORIZATION)?;
                jwt?.verify(authorization.as_bytes())
            })
            .as_ref()
    }
}

/// A claim's value as a key part: a string, or a number or boolean as written.
fn claim_text(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The first parameter `name` of a query string, percent-decoded, `+` as a space.
pub fn query_param<'q>(query: &'q [u8], name: &str) -> Option<Cow<'q, [u8]>> {
    for pair in query.split(|b| *b == b'&') {
        let (k, v) = match pair.iter().position(|b| *b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &[][..]),
        };
        if form_decode(k).as_ref() == name.as_bytes() {
            return Some(form_decode(v));
        }
    }
    None
}

fn form_decode(s: &[u8]) -> Cow<'_, [u8]> {
    if !s.contains(&b'%') && !s.contains(&b'+') {
        return Cow::Borrowed(s);
    }
    let plus: Vec<u8> = s
        .iter()
        .map(|b| if *b == b'+' { b' ' } else { *b })
        .collect();
    Cow::Owned(percent_encoding::percent_decode(&plus).collect())
}

/// The first cookie `name` over every `Cookie` header, without surrounding quotes.
fn cookie<'v>(view: &RequestView<'v>, name: &str) -> Option<Cow<'v, [u8]>> {
    for header in view.headers.get_all(http::header::COOKIE) {
        for pair in header.as_bytes().split(|b| *b == b';') {
            let pair = pair.trim_ascii();
            let Some(i) = pair.iter().position(|b| *b == b'=') else {
                continue;
            };
            if pair[..i].trim_ascii() == name.as_bytes() {
                let value = pair[i + 1..].trim_ascii();
                let value = value
                    .strip_prefix(b"\"")
                    .and_then(|v| v.strip_suffix(b"\""))
                    .unwrap_or(value);
                return Some(Cow::Borrowed(value));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderName, HeaderValue, Method};
    use sha2::Digest;

    fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_bytes(v).unwrap(),
            );
        }
        h
    }

    fn key(
        source: &str,
        peer: &str,
        query: Option<&str>,
        h: &HeaderMap,
        missing: Missing,
    ) -> Option<String> {
        let view = RequestView {
            peer: Some(peer.parse().unwrap()),
            method: &Method::GET,
            host: None,
            path: "/",
            query: query.map(str::as_bytes),
            headers: h,
        };
        let source = KeySource::parse(source).unwrap();
        Keys::new(&view, &[], None).request_key(&source, missing)
    }

    #[test]
    fn each_source_reads_its_part() {
        let none = HeaderMap::new();
        assert_eq!(
            key("ip", "10.0.0.1", None, &none, Missing::Ip).unwrap(),
            "ip:10.0.0.1"
        );
        assert_eq!(
            key("global", "10.0.0.1", None, &none, Missing::Ip).unwrap(),
            "global"
        );
        assert_eq!(
            key("ip/64", "2001:db8:1:2:3::9", None, &none, Missing::Ip).unwrap(),
            "ip:2001:db8:1:2::/64"
        );
        assert_eq!(
            key("ip/64", "10.0.0.1", None, &none, Missing::Ip).unwrap(),
            "ip:10.0.0.1"
        );
        let h = headers(&[("X-Api-Key", b"abc")]);
        assert_eq!(
            key("header:X-Api-Key", "10.0.0.1", None, &h, Missing::Ip).unwrap(),
            "x-api-key:abc"
        );
        assert_eq!(
            key(
                "query:api_key",
                "10.0.0.1",
                Some("a=1&api_key=k%2D1+x&api_key=2"),
                &none,
                Missing::Ip
            )
            .unwrap(),
            format!("query(api_key):sha256:{:x}", sha2::Sha256::digest(b"k-1 x"))
        );
        assert_eq!(
            key(
                "query:api_key",
                "10.0.0.1",
                Some("api_key=k-1"),
                &none,
                Missing::Ip
            )
            .unwrap(),
            "query(api_key):k-1"
        );
        let c = headers(&[
            ("cookie", b"a=1; session=\"s1\""),
            ("cookie", b"session=s2"),
        ]);
        assert_eq!(
            key("cookie:session", "10.0.0.1", None, &c, Missing::Ip).unwrap(),
            "cookie(session):s1"
        );
    }

    #[test]
    fn a_missing_or_empty_part_falls_back_to_the_ip_or_skips() {
        let none = HeaderMap::new();
        let empty = headers(&[("x-api-key", b"")]);
        for h in [&none, &empty] {
            assert_eq!(
                key("header:x-api-key", "10.0.0.1", Some("x=1"), h, Missing::Ip).unwrap(),
                "ip:10.0.0.1"
            );
            assert_eq!(
                key("header:x-api-key", "10.0.0.1", None, h, Missing::Skip),
                None
            );
        }
        assert_eq!(
            key("query:k", "10.0.0.1", Some("k="), &none, Missing::Skip),
            None
        );
        assert_eq!(
            key("jwt:sub", "10.0.0.1", None, &none, Missing::Ip).unwrap(),
            "ip:10.0.0.1"
        );
    }

    #[test]
    fn composite_keys_need_every_part() {
        let view_headers = headers(&[("x-org", b"acme"), ("x-project", b"p1")]);
        let view = RequestView {
            peer: Some("10.0.0.1".parse().unwrap()),
            method: &Method::GET,
            host: None,
            path: "/",
            query: None,
            headers: &view_headers,
        };
        let both = KeySource::composite(vec![
            Part::parse("header:X-Org").unwrap(),
            Part::parse("header:X-Project").unwrap(),
        ])
        .unwrap();
        let mut keys = Keys::new(&view, &[], None);
        assert_eq!(
            keys.request_key(&both, Missing::Ip).unwrap(),
            "[x-org:acme|x-project:p1]"
        );
        let partly = KeySource::composite(vec![
            Part::parse("header:X-Org").unwrap(),
            Part::parse("header:X-Team").unwrap(),
        ])
        .unwrap();
        assert_eq!(
            keys.request_key(&partly, Missing::Ip).unwrap(),
            "ip:10.0.0.1"
        );
        assert_eq!(keys.request_key(&partly, Missing::Skip), None);
    }

    #[test]
    fn the_client_is_worked_out_once_for_all_rules_and_trusted_proxies_apply() {
        let h = headers(&[("x-forwarded-for", b"1.2.3.4")]);
        let view = RequestView {
            peer: Some("10.0.0.1".parse().unwrap()),
            method: &Method::GET,
            host: None,
            path: "/",
            query: None,
            headers: &h,
        };
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut keys = Keys::new(&view, &trusted, None);
        assert_eq!(keys.client(), Some("1.2.3.4".parse().unwrap()));
        assert_eq!(
            keys.request_key(&KeySource::parse("header:x-api-key").unwrap(), Missing::Ip)
                .unwrap(),
            "ip:1.2.3.4"
        );
    }
}
