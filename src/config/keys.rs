//! What a key is read from (contract §3, §12), as `[limits]` and `[[rules]]` write it: `key`
//! (one source, or a list of them for a composite key), `missing`, and the overrides of a
//! rule, each entry checked against the kind of key it will be compared with; and `[jwt]`,
//! whose files are read here so that `ratelimiter -t` reports what would fail at start.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use ipnet::IpNet;

use super::error::Collector;
use super::reader::{At, Section, Span};
use crate::key::jwt::{parse_algorithm, JwtConfig, KeyFile, Verifier};
use crate::key::{KeySource, Missing, Part, MAX_VALUE_LEN};
use crate::rules::overrides::Entry;
use crate::rules::Overrides;

/// What every source `key` may name, for messages.
const SOURCES: &str =
    "\"ip\", \"ip/<1..=128>\", \"header:<Header-Name>\", \"query:<name>\", \"cookie:<name>\"";

/// `key`: one source, or a list of them (a composite key); `global` only where
/// `allow_global`. `Some(None)` when not written; `None` when bad (reported).
pub(super) fn source(
    s: &Section,
    allow_global: bool,
    has_jwt: bool,
    errors: &mut Collector,
) -> Option<Option<KeySource>> {
    let Some(At { value: items, span }) = s.string_or_strings("key", errors) else {
        return (!s.has("key")).then_some(None);
    };
    let list = s.is_array("key");
    let expected = if allow_global && !list {
        format!("{SOURCES}, \"jwt:<claim>\" or \"global\"")
    } else {
        format!("{SOURCES} or \"jwt:<claim>\"")
    };
    let mut parts = Vec::with_capacity(items.len());
    let mut ok = true;
    for At { value, span } in &items {
        let why = match KeySource::parse(value) {
            Ok(KeySource::Global) if allow_global && !list => {
                return Some(Some(KeySource::Global));
            }
            Ok(KeySource::Parts(p)) if !has_jwt && jwt_parts(&KeySource::Parts(p.clone())) => {
                format!("{value:?} needs a [jwt] table (jwks_file or secret_file) to verify tokens")
            }
            Ok(KeySource::Parts(p)) => {
                parts.extend(p);
                continue;
            }
            Ok(KeySource::Global) if list => "\"global\" cannot be part of a composite key".into(),
            // An unknown source: the sources this key may name.
            Ok(KeySource::Global) => format!("expected {expected}, found {value:?}"),
            Err(why) if why.starts_with("expected") => {
                format!("expected {expected}, found {value:?}")
            }
            // A known source with a bad name: what is wrong with it.
            Err(why) => why,
        };
        ok = false;
        errors.at(span.clone(), format!("{} key: {why}", s.name));
    }
    if !ok {
        return None;
    }
    if !list {
        return Some(Some(KeySource::Parts(parts)));
    }
    match KeySource::composite(parts) {
        Ok(k) => Some(Some(k)),
        Err(why) => {
            errors.at(span, format!("{} key: {why}", s.name));
            None
        }
    }
}

/// `missing`: `"ip"` (default) or `"skip"`.
pub(super) fn missing(s: &Section, errors: &mut Collector) -> Option<Missing> {
    let options = [("ip", Missing::Ip), ("skip", Missing::Skip)];
    match s.choice("missing", &options, errors) {
        None if s.has("missing") => None,
        chosen => Some(chosen.unwrap_or(Missing::Ip)),
    }
}

/// Whether a key has `jwt:` parts, which need `[jwt]`.
fn jwt_parts(key: &KeySource) -> bool {
    key.parts().iter().any(|p| matches!(p, Part::Jwt(_)))
}

/// A rule's `overrides`, each entry checked against the rule's key.
pub(super) fn overrides(
    s: &Section,
    key: Option<&KeySource>,
    errors: &mut Collector,
) -> Option<Overrides> {
    let entries = s.integer_table(
        "overrides",
        1,
        u32::MAX as i64,
        "an integer 1..=4294967295",
        errors,
    )?;
    if key.is_some_and(KeySource::is_global) {
        if let Some(span) = s.span("overrides") {
            errors.at(
                span,
                format!(
                    "{} overrides: a rule keyed by \"global\" has one counter; overrides need key = \"ip\" or \"header:<Header-Name>\"",
                    s.name
                ),
            );
        }
        return None;
    }
    let parts = key.map(KeySource::parts).unwrap_or_default();
    let mut out = Overrides::default();
    for (k, limit) in entries {
        let Some(n) = NonZeroU32::new(limit.value as u32) else {
            continue;
        };
        match override_entry(&k.value, parts) {
            Ok(entry) => out.insert(entry, n),
            Err(why) => errors.at(k.span, format!("{} overrides: {why}", s.name)),
        }
    }
    Some(out)
}

/// One override entry for a key of these parts, as the file's `overrides` and the admin API
/// (contract §15) take it alike: a client IP (or an `ip/N` network), or the value(s) of the
/// key as the key writes them.
pub fn override_entry(written: &str, parts: &[Part]) -> Result<Entry, String> {
    let as_ip = |text: &str, part: &Part| -> Option<String> {
        if let Ok(ip) = text.parse::<IpAddr>() {
            // Written the way keys print it (`::1`, not `0::1`). Under `ip/N` an IPv6 client
            // is keyed by its network, never by its address: such an entry would never apply.
            let ip = crate::key::canonical(ip);
            return match (part, ip) {
                (Part::IpPrefix(_), IpAddr::V6(_)) => None,
                _ => Some(ip.to_string()),
            };
        }
        match (part, text.parse::<IpNet>()) {
            (Part::IpPrefix(len), Ok(IpNet::V6(net))) if net.prefix_len() == *len => {
                Some(net.trunc().to_string())
            }
            _ => None,
        }
    };
    match parts {
        [part @ (Part::Ip | Part::IpPrefix(_))] => as_ip(written, part).map(Entry::Ip).ok_or_else(|| {
            match part {
                Part::IpPrefix(len) => format!(
                    "expected an IPv4 address or an IPv6 network /{len} (this rule keys IPv6 clients by their /{len}), found {written:?}"
                ),
                _ => format!("{written:?} is not an IP address, and this rule is keyed by ip"),
            }
        }),
        [_] => {
            // An IP address is the fall-back key's (no header sent).
            if let Ok(ip) = written.parse::<IpAddr>() {
                return Ok(Entry::Ip(crate::key::canonical(ip).to_string()));
            }
            value(written).map(|v| Entry::Value(v.to_string()))
        }
        _ => {
            if !written.contains('|') {
                if let Ok(ip) = written.parse::<IpAddr>() {
                    return Ok(Entry::Ip(crate::key::canonical(ip).to_string()));
                }
            }
            let fields: Vec<&str> = written.split('|').collect();
            if fields.len() != parts.len() {
                return Err(format!(
                    "{written:?}: expected {} values joined by \"|\", one per part of the key (or the client IP)",
                    parts.len()
                ));
            }
            let mut joined = Vec::with_capacity(fields.len());
            for (field, part) in fields.iter().zip(parts) {
                let v = match part {
                    Part::Ip | Part::IpPrefix(_) => as_ip(field, part).ok_or_else(|| match part {
                        Part::IpPrefix(len) => format!("{written:?}: expected an IPv4 address or an IPv6 network /{len} for the ip/{len} part, found {field:?}"),
                        _ => format!("{written:?}: {field:?} is not an IP address, and that part is keyed by ip"),
                    })?,
                    _ => value(field)?.to_string(),
                };
                joined.push(v);
            }
            Ok(Entry::Value(joined.join("|")))
        }
    }
}

/// A key value as requests send it.
fn value(v: &str) -> Result<&str, String> {
    let printable = v.bytes().all(|b| b.is_ascii_graphic());
    if v.is_empty() || v.len() > MAX_VALUE_LEN || !printable {
        return Err(format!(
            "{v:?}: expected 1 to {MAX_VALUE_LEN} visible ASCII characters (a key value as requests send it)"
        ));
    }
    Ok(v)
}

pub(super) const JWT_KEYS: &[&str] = &[
    "jwks_file",
    "secret_file",
    "algorithms",
    "issuer",
    "audience",
    "leeway_seconds",
];

/// `[jwt]`, its key file read; `None` when absent (`Some(None)` when bad: reported).
pub(super) fn jwt(
    s: &Section,
    at: Option<Span>,
    errors: &mut Collector,
) -> Option<Option<Arc<Verifier>>> {
    let at = at?;
    let jwks = s.string("jwks_file", errors);
    let secret = s.string("secret_file", errors);
    let keys = match (jwks, secret) {
        (Some(j), None) => Some(KeyFile::Jwks(j.value.into())),
        (None, Some(f)) => Some(KeyFile::Secret(f.value.into())),
        (Some(_), Some(f)) => {
            errors.at(
                f.span,
                format!(
                    "{} secret_file: give jwks_file or secret_file, not both",
                    s.name
                ),
            );
            None
        }
        (None, None) => {
            if !s.has("jwks_file") && !s.has("secret_file") {
                errors.at(
                    at.clone(),
                    format!(
                        "{}: needs jwks_file (a JWKS of public keys) or secret_file (an HS256 secret)",
                        s.name
                    ),
                );
            }
            None
        }
    };
    let hs = matches!(keys, Some(KeyFile::Secret(_)));
    let mut algorithms = Vec::new();
    let mut ok = true;
    match s.strings("algorithms", errors) {
        None if s.has("algorithms") => ok = false,
        None if hs => algorithms.push(jsonwebtoken::Algorithm::HS256),
        None => algorithms.extend([
            jsonwebtoken::Algorithm::RS256,
            jsonwebtoken::Algorithm::ES256,
        ]),
        Some(list) => {
            for At { value, span } in list {
                match parse_algorithm(&value) {
                    Some(a) => algorithms.push(a),
                    None => {
                        ok = false;
                        errors.at(
                            span,
                            format!(
                                "{} algorithms: expected HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384 or EdDSA (never none), found {value:?}",
                                s.name
                            ),
                        );
                    }
                }
            }
            if ok && algorithms.is_empty() {
                ok = false;
                errors.at(
                    s.span("algorithms").unwrap_or(at.clone()),
                    format!("{} algorithms: name at least one", s.name),
                );
            }
        }
    }
    let leeway = s
        .integer("leeway_seconds", 0, 3600, "an integer 0..=3600", errors)
        .map_or(30, |v| v.value as u64);
    let text = |k: &str, errors: &mut Collector| s.string(k, errors).map(|v| v.value);
    let (issuer, audience) = (text("issuer", errors), text("audience", errors));
    let (Some(keys), true) = (keys, ok) else {
        return Some(None);
    };
    let config = JwtConfig {
        keys,
        algorithms,
        issuer,
        audience,
        leeway_seconds: leeway,
    };
    match Verifier::load(&config) {
        Ok(v) => Some(Some(Arc::new(v))),
        Err(why) => {
            let key = if hs { "secret_file" } else { "jwks_file" };
            errors.at(
                s.span(key).unwrap_or(at),
                format!("{} {key}: {why}", s.name),
            );
            Some(None)
        }
    }
}
