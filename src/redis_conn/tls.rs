//! Building redis-rs clients from the config: the URL's address, ACL user, password and
//! database, and TLS as `rediss://` with `tls_ca_file` (else the system's roots),
//! `tls_cert_file`/`tls_key_file` (mutual TLS) and `tls_insecure`. TLS is rustls with the
//! ring provider.

use super::Error;
use std::time::Duration;

use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::{ClientTlsConfig, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, TlsCertificates};

use super::error;
use crate::config::{RedisTls, RedisUrl};

/// The TLS material, read once.
#[derive(Clone)]
pub struct Tls {
    certs: Option<TlsCertificates>,
    insecure: bool,
}

impl Tls {
    pub fn load(config: &RedisTls) -> Result<Tls, Error> {
        let read = |path: &std::path::Path| {
            std::fs::read(path)
                .map_err(|e| Error::Connection(format!("cannot read {}: {e}", path.display())))
        };
        let root_cert = config.ca_file.as_deref().map(read).transpose()?;
        let client_tls = match (&config.cert_file, &config.key_file) {
            (Some(cert), Some(key)) => Some(ClientTlsConfig {
                client_cert: read(cert)?,
                client_key: read(key)?,
            }),
            _ => None,
        };
        let certs = (root_cert.is_some() || client_tls.is_some()).then_some(TlsCertificates {
            client_tls,
            root_cert,
        });
        Ok(Tls {
            certs,
            insecure: config.insecure,
        })
    }

    /// A client for `info`, with the TLS material when the address is TLS.
    pub fn client(&self, info: ConnectionInfo) -> Result<redis::Client, Error> {
        let info = self.with_insecure(info);
        let tls = matches!(info.addr(), ConnectionAddr::TcpTls { .. });
        match (&self.certs, tls) {
            (Some(certs), true) => redis::Client::build_with_tls(info, certs.clone()),
            _ => redis::Client::open(info),
        }
        .map_err(error)
    }

    fn with_insecure(&self, info: ConnectionInfo) -> ConnectionInfo {
        match info.addr().clone() {
            ConnectionAddr::TcpTls {
                host,
                port,
                tls_params,
                ..
            } if self.insecure => info.set_addr(ConnectionAddr::TcpTls {
                host,
                port,
                insecure: true,
                tls_params,
            }),
            _ => info,
        }
    }
}

/// The connection info of a URL (its address, user, password, database and scheme).
pub fn info(url: &RedisUrl) -> Result<ConnectionInfo, Error> {
    url.expose().into_connection_info().map_err(error)
}

/// The same connection settings at another address (a Sentinel's master, a cluster node).
pub fn at(base: &ConnectionInfo, host: &str, port: u16) -> ConnectionInfo {
    let addr = match base.addr() {
        ConnectionAddr::TcpTls { insecure, .. } => ConnectionAddr::TcpTls {
            host: host.to_string(),
            port,
            insecure: *insecure,
            tls_params: None,
        },
        _ => ConnectionAddr::Tcp(host.to_string(), port),
    };
    base.clone().set_addr(addr)
}

/// A Redis Cluster client over these seeds, with one attempt per call (the caller bounds
/// and retries; a cluster client's own retries would outlive the caller's time bound).
/// `response` bounds what no caller bounds: the client's own slot refreshes and checks of
/// new connections, which would otherwise wait forever on a node that hangs.
pub fn cluster_client(
    seeds: &[RedisUrl],
    tls: &Tls,
    connect: Duration,
    response: Duration,
) -> Result<ClusterClient, Error> {
    let infos: Vec<ConnectionInfo> = seeds.iter().map(info).collect::<Result<_, _>>()?;
    cluster_client_at(infos, tls, connect, response)
}

/// As [`cluster_client`], from the seeds' connection settings.
pub fn cluster_client_at(
    infos: Vec<ConnectionInfo>,
    tls: &Tls,
    connect: Duration,
    response: Duration,
) -> Result<ClusterClient, Error> {
    let secure = infos
        .iter()
        .any(|i| matches!(i.addr(), ConnectionAddr::TcpTls { .. }));
    let mut builder = ClusterClientBuilder::new(infos)
        .connection_timeout(connect)
        .response_timeout(response)
        .retries(1)
        .min_retry_wait(10)
        .max_retry_wait(100);
    if secure {
        builder = builder.tls(if tls.insecure {
            redis::TlsMode::Insecure
        } else {
            redis::TlsMode::Secure
        });
        if let Some(certs) = &tls.certs {
            builder = builder.certs(certs.clone());
        }
    }
    builder.build().map_err(error)
}
