//! Per-key limits (tiers, allow-lists; contract §7, §12), looked up by a request key's value
//! as [`crate::key::counter::override_key`] reads it. An entry that is an IP address (or, for
//! `ip/N`, a network) applies only to requests keyed by that client IP (`ip:` keys, a
//! fall-back included); any other entry only to requests whose key parts hold that value (a
//! composite's values joined by `|`). So a client cannot claim an IP's override by sending the
//! IP as a header value, nor another customer's by splitting values differently.

use std::borrow::Cow;
use std::collections::HashMap;
use std::num::NonZeroU32;

use crate::key::counter::{display_override, override_key, OverrideKey};
use crate::key::Part;

/// What an override applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Entry {
    /// Requests keyed by this client IP (or `ip/N` network), as keys print it.
    Ip(String),
    /// Requests whose key holds this value (a composite's values joined by `|`).
    Value(String),
}

impl Entry {
    /// As written in `overrides` and the admin API.
    pub fn written(&self) -> &str {
        match self {
            Entry::Ip(s) | Entry::Value(s) => s,
        }
    }
}

/// What a request key is, as an override (or a ban) names it; `None` for `global`.
pub fn entry_of(request_key: &str) -> Option<Entry> {
    Some(match override_key(request_key)? {
        OverrideKey::Ip(ip) => Entry::Ip(ip.to_string()),
        OverrideKey::Value(v) => Entry::Value(v.into_owned()),
    })
}

#[derive(Debug, Clone, Default)]
pub struct Overrides {
    by_ip: HashMap<String, NonZeroU32>,
    by_value: HashMap<String, NonZeroU32>,
}

impl Overrides {
    /// An entry for a client IP or network, written the way keys print it (`::1`, not
    /// `0::1`; a network truncated).
    pub fn insert_ip(&mut self, ip: String, limit: NonZeroU32) {
        self.by_ip.insert(ip, limit);
    }

    /// An entry for a key value, as written in the key (a composite's values joined by `|`).
    pub fn insert_value(&mut self, value: String, limit: NonZeroU32) {
        self.by_value.insert(value, limit);
    }

    pub fn insert(&mut self, entry: Entry, limit: NonZeroU32) {
        match entry {
            Entry::Ip(ip) => self.insert_ip(ip, limit),
            Entry::Value(v) => self.insert_value(v, limit),
        }
    }

    /// The override for a request key, if any.
    pub fn get(&self, request_key: &str) -> Option<NonZeroU32> {
        match override_key(request_key)? {
            OverrideKey::Ip(ip) => self.by_ip.get(ip),
            OverrideKey::Value(v) => self.by_value.get(v.as_ref()),
        }
        .copied()
    }

    pub fn is_empty(&self) -> bool {
        self.by_ip.is_empty() && self.by_value.is_empty()
    }

    /// Every entry, sorted, for a rule keyed by `parts`: the values of private parts
    /// digested unless `clear` (contract §17), addresses and networks as written.
    pub fn shown(&self, parts: &[Part], clear: bool) -> Vec<(Cow<'_, str>, NonZeroU32)> {
        let ips = self
            .by_ip
            .iter()
            .map(|(k, v)| (Cow::Borrowed(k.as_str()), *v));
        let values = self.by_value.iter().map(|(k, v)| match clear {
            true => (Cow::Borrowed(k.as_str()), *v),
            false => (display_override(k, parts), *v),
        });
        let mut all: Vec<_> = ips.chain(values).collect();
        all.sort();
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(v: u32) -> NonZeroU32 {
        NonZeroU32::new(v).unwrap()
    }

    #[test]
    fn ip_entries_and_value_entries_never_mix() {
        let mut o = Overrides::default();
        o.insert_ip("10.0.0.7".into(), n(1000));
        o.insert_ip("2001:db8::/48".into(), n(50));
        o.insert_value("premium-1".into(), n(10_000));
        o.insert_value("acme|p1".into(), n(500));
        assert_eq!(o.get("ip:10.0.0.7"), Some(n(1000)));
        assert_eq!(o.get("ip:2001:db8::/48"), Some(n(50)));
        assert_eq!(o.get("x-api-key:10.0.0.7"), None);
        assert_eq!(o.get("header(ip):10.0.0.7"), None);
        assert_eq!(o.get("x-api-key:premium-1"), Some(n(10_000)));
        assert_eq!(o.get("jwt(org):premium-1"), Some(n(10_000)));
        assert_eq!(o.get("[jwt(org):acme|x-project:p1]"), Some(n(500)));
        // A value that holds the separator is escaped in the key: not the same entry.
        assert_eq!(o.get("[jwt(org):acme%7Cp1|x-project:x]"), None);
        assert_eq!(o.get("global"), None);
    }
}
