//! What `ratelimiter -t` checks beyond the config itself (contract §17): every file the config
//! names, taken as the start takes it, so a check that passes means the start fails on no
//! file.
//!
//! Loading the config already reads the files it names (the HTTPS certificate and key, the
//! CAs, Redis's client certificate, the JWT key file) and reports each that cannot be read
//! with its file:line:col. What only the start does with them is done here: the access log
//! opened for append, the HTTPS certificate loaded with its key, the upstream CA's
//! certificates parsed, Redis's TLS material handed to the Redis client. Every problem is
//! reported, each with the config key that names the file.

use std::fmt;
use std::fs::OpenOptions;
use std::io::ErrorKind;
use std::path::Path;

use crate::config::{AccessLog, Config};

/// A file the start would fail on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The config key naming the file, as config errors name it (`[log] access`).
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Every file of `config` the start would fail on; empty when none.
pub fn files(config: &Config) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut fail = |key: &str, message: String| {
        problems.push(Problem {
            key: key.to_string(),
            message,
        })
    };
    if let AccessLog::File(path) = &config.log.access {
        if let Err(e) = access_log(path) {
            fail("[log] access", e);
        }
    }
    if let Some(path) = &config.server.pid_file {
        if let Err(e) = crate::process::check_pid_file(path) {
            fail("[server] pid_file", e);
        }
    }
    if let Some(tls) = &config.proxy.tls {
        if let Err(e) = crate::tls::certified_key(tls) {
            fail("[proxy] tls_cert_file, tls_key_file", e);
        }
    }
    if let Some(ca) = &config.proxy.upstream_tls_ca_file {
        if let Err(e) = crate::tls::upstream_ca(ca) {
            fail("[proxy] upstream_tls_ca_file", e);
        }
    }
    if let Some(redis) = &config.redis {
        let t = &redis.tls;
        let named: Vec<&str> = [
            ("tls_ca_file", t.ca_file.is_some()),
            ("tls_cert_file", t.cert_file.is_some()),
            ("tls_key_file", t.key_file.is_some()),
        ]
        .into_iter()
        .filter_map(|(key, set)| set.then_some(key))
        .collect();
        // Builds the clients as the start does, without connecting (only when files are
        // named: the URLs were checked with the config).
        let built = match named.is_empty() {
            true => Ok(()),
            false => crate::redis_conn::Redis::new(redis).map(|_| ()),
        };
        if let Err(e) = built {
            let why = match e {
                crate::redis_conn::Error::Connection(why)
                | crate::redis_conn::Error::Reply(why) => why,
                other => other.to_string(),
            };
            fail(
                &format!("[redis] {}", named.join(", ")),
                format!("the Redis client cannot use them: {why}"),
            );
        }
    }
    problems
}

/// Opens the access log as the start does (appending, never truncating), and leaves no file
/// behind that was not there: a check changes nothing.
fn access_log(path: &Path) -> Result<(), String> {
    let cannot = |e: std::io::Error| format!("cannot open the access log {}: {e}", path.display());
    match OpenOptions::new().append(true).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            OpenOptions::new()
                .append(true)
                .create_new(true)
                .open(path)
                .map_err(cannot)?;
            let _ = std::fs::remove_file(path);
            Ok(())
        }
        Err(e) => Err(cannot(e)),
    }
}
