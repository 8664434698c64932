//! PEM files named in the config (TLS certificates, keys, CAs), read when the config loads so
//! that a missing or wrong file is a config error with its position, not a failure at the
//! first connection.

use std::path::PathBuf;

use super::error::Collector;
use super::reader::{At, Section};

/// What a PEM file must hold.
#[derive(Clone, Copy)]
pub(super) enum Pem {
    Certificate,
    PrivateKey,
}

impl Pem {
    fn marker(self) -> &'static str {
        match self {
            Pem::Certificate => "-----BEGIN CERTIFICATE-----",
            Pem::PrivateKey => "PRIVATE KEY-----",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Pem::Certificate => "certificate",
            Pem::PrivateKey => "private key",
        }
    }
}

/// The file named by `key`, when it is readable and holds that kind of PEM block. `Err(())`:
/// named but bad (the error is recorded); `Ok(None)`: not named.
pub(super) fn file(
    s: &Section,
    key: &str,
    kind: Pem,
    errors: &mut Collector,
) -> Result<Option<PathBuf>, ()> {
    let Some(At { value, span }) = s.string(key, errors) else {
        return if s.has(key) { Err(()) } else { Ok(None) };
    };
    match std::fs::read_to_string(&value) {
        Ok(text) if text.contains(kind.marker()) => Ok(Some(PathBuf::from(value))),
        Ok(_) => {
            errors.at(
                span,
                format!(
                    "{} {key}: {value:?} holds no PEM {} ({})",
                    s.name,
                    kind.what(),
                    kind.marker()
                ),
            );
            Err(())
        }
        Err(e) => {
            errors.at(
                span,
                format!("{} {key}: cannot read {value:?}: {e}", s.name),
            );
            Err(())
        }
    }
}
