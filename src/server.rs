//! The composition root: builds the store, the limiter and the pingora services from a
//! validated [`Config`], and runs them until a signal stops the process; SIGHUP reloads the
//! config meanwhile ([`crate::reload`]).

use std::sync::Arc;
use std::time::Duration;

use pingora::apps::HttpServerOptions;
use pingora::protocols::http::v2::server::default_h2_options;
use pingora::proxy::http_proxy_service;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};
use pingora::services::background::background_service;
use pingora::services::listening::Service;

use crate::access_log::AccessLog;
use crate::admin::AdminApp;
use crate::config::{ClientLimits, Config};
use crate::limiter::backend::memory::MemoryStore;
use crate::limiter::backend::redis::RedisStore;
use crate::limiter::{Counters, Decide, Limiter};
use crate::live::LiveConfig;
use crate::metrics::Metrics;
use crate::process;
use crate::proxy::Gateway;
use crate::registry::{Heartbeat, Registry};
use crate::reload::Reloader;
use crate::shutdown::{Handlers, Signals, UpgradeSocket};
use crate::slot_keeper::SlotKeeper;
use crate::tenants::store::{MemoryTenants, RedisTenants, TenantStore};
use crate::tenants::{TenantSync, Tenants};
use crate::upstreams;

/// Everything the services share, built once.
pub struct Shared {
    /// The config in force, swapped on reload.
    pub live: Arc<LiveConfig>,
    pub metrics: Arc<Metrics>,
    pub limiter: Arc<Limiter>,
    /// The store's admin side (the limiter has its hot path).
    pub counters: Arc<dyn Counters>,
    pub registry: Arc<Registry>,
    pub access: Arc<AccessLog>,
    /// Whether the node is draining.
    pub lifecycle: Arc<crate::lifecycle::Lifecycle>,
    /// Overrides set at runtime and the audit log (contract §15).
    pub tenants: Arc<Tenants>,
}

/// The store, by role, with what the limiter needs to know of it.
struct Stores {
    decide: Arc<dyn Decide>,
    counters: Arc<dyn Counters>,
    registry: Registry,
    tenants: Arc<dyn TenantStore>,
    /// `None` for the embedded store, which cannot hang.
    timeout: Option<Duration>,
    on_error: crate::config::OnError,
}

impl Shared {
    pub fn new(config: Config) -> Result<Shared, String> {
        let metrics = Arc::new(
            Metrics::new(&config.node.id, config.metrics.max_key_labels)
                .map_err(|e| format!("cannot set up metrics: {e}"))?,
        );
        metrics.set_clear_keys(config.privacy.clear_keys);
        // One store, seen by role: the limiter decides, the admin side lists and resets.
        let Stores {
            decide,
            counters,
            registry,
            tenants,
            timeout,
            on_error,
        } = match &config.redis {
            Some(redis) => {
                let store =
                    RedisStore::new(redis).map_err(|e| format!("cannot set up Redis: {e}"))?;
                store.leases().count_calls_in(metrics.lease_calls.clone());
                let registry = Registry::new(&config.node, Some(store.redis()));
                let tenants = Arc::new(RedisTenants::new(store.redis()));
                let store = Arc::new(store);
                Stores {
                    decide: store.clone(),
                    counters: store,
                    registry,
                    tenants,
                    timeout: Some(redis.timeout),
                    on_error: redis.on_error,
                }
            }
            None => {
                let store = Arc::new(MemoryStore::default());
                Stores {
                    decide: store.clone(),
                    counters: store,
                    registry: Registry::new(&config.node, None),
                    tenants: Arc::new(MemoryTenants::default()),
                    timeout: None,
                    on_error: crate::config::OnError::Allow,
                }
            }
        };
        let tenants = Arc::new(Tenants::new(tenants, config.node.id.clone()));
        let limiter = Arc::new(Limiter::new(decide, timeout, on_error, metrics.clone()));
        let access = Arc::new(AccessLog::open(&config.log)?);
        let live = Arc::new(LiveConfig::new(config)?);
        metrics.config_loaded_at(live.load().loaded_at);
        Ok(Shared {
            live,
            metrics,
            limiter,
            counters,
            registry: Arc::new(registry),
            access,
            lifecycle: Arc::default(),
            tenants,
        })
    }
}

fn server_conf(config: &Config) -> ServerConf {
    ServerConf {
        threads: config.server.threads,
        work_stealing: config.server.work_stealing,
        grace_period_seconds: Some(config.server.grace_period.as_secs()),
        // In-flight work has had the grace period; do not wait on idle tasks after it.
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    }
}

/// How the process was started.
pub struct Start {
    /// The file given with `-c` (`None`: the built-in defaults), re-read on SIGHUP.
    pub path: Option<String>,
    /// Take the listening sockets over from the process running with this config (`-u`).
    pub upgrade: bool,
    /// In the background (`-d`): told once the node serves.
    pub ready: Option<crate::daemon::Ready>,
}

/// Runs the gateway until a signal stops it ([`crate::shutdown`]).
pub fn run(config: Config, start: Start) -> Result<(), String> {
    let Start {
        path,
        upgrade,
        ready,
    } = start;
    // Before anything registers this node: a listener that cannot open ends the process
    // here, with the address named (pingora would retry, then panic inside its service).
    // Taking over, the addresses are the running process's.
    if !upgrade {
        check_listeners(&config, |_| true)?;
    }
    let upgrade_socket = process::upgrade_socket(&config)?;
    if let Some(path) = &config.server.pid_file {
        process::check_pid_file(path)?;
    }
    // The HTTPS listener's certificate, shared with the reloader, which reads it again.
    let (tls, cert) = match &config.proxy.tls {
        Some(tls) => {
            let cert = Arc::new(crate::tls::ServerCert::load(tls)?);
            let settings = crate::tls::listener_settings(tls, cert.clone())?;
            (Some((tls.listen, settings)), Some(cert))
        }
        None => (None, None),
    };
    exit_on_listener_panic();
    let shared = Shared::new(config)?;
    let live = shared.live.load();
    let config = &live.config;
    match &config.redis {
        Some(r) => {
            log::info!("store: redis {} (timeout {:?})", r.topology, r.timeout);
            if r.tls.insecure {
                log::warn!(
                    "Redis TLS certificates are not verified ([redis] tls_insecure = true): \
                     for testing only; anyone on the path can read and change the counters"
                );
            }
        }
        None => log::info!("store: embedded in-memory (single node)"),
    }

    if !config.admin.listen.ip().is_loopback() && !config.admin.has_token() {
        log::warn!(
            "the admin port {} listens beyond loopback without [admin] token: anyone who can \
             reach it can reset counters; set a token or bind it to 127.0.0.1",
            config.admin.listen
        );
    }

    let mut conf = server_conf(config);
    conf.upgrade_sock = upgrade_socket.to_string_lossy().into_owned();
    let opt = pingora::server::configuration::Opt {
        upgrade,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    if upgrade {
        log::info!(
            "waiting for the running process's listening sockets on {}",
            upgrade_socket.display()
        );
    }
    // Taking over, this waits for the sockets (a few seconds at most; then the process exits).
    server.bootstrap();
    let upgrade_ack = server.take_upgrade_ack();
    if upgrade_ack.is_some() {
        log::info!("listening sockets taken over");
        // An address the old process did not have is bound afresh: one in use ends this
        // process here, before the old one is told to go.
        let inherited = server.inherited_addresses();
        check_listeners(config, |addr| !inherited.contains(&addr.to_string()))?;
    }

    // The overrides set at runtime are in force before the first request (a store that does
    // not answer now is read again by the sync below).
    first_sync(&shared.tenants);
    let gateway = Gateway::new(
        shared.live.clone(),
        shared.limiter.clone(),
        shared.metrics.clone(),
        shared.access.clone(),
        shared.tenants.clone(),
    );
    let clients = config.proxy.clients;
    let max_connections = connection_budget(clients.max_connections);
    let mut proxy = http_proxy_service(&server.configuration, gateway);
    if let Some(app) = proxy.app_logic_mut() {
        let mut options = client_options(&clients);
        // Cleartext HTTP/2 beside HTTP/1 on the plain listener (the preface tells them apart).
        options.h2c = config.proxy.h2c;
        options.error_response_filter = Some(crate::proxy::error_response_filter(
            shared.live.clone(),
            shared.metrics.clone(),
        ));
        // HTTP/2 connections are not closed by the per-request keep-alive of HTTP/1: pingora
        // closes them after this idle time, set once at start.
        options.h2_idle_timeout = Some(config.proxy.keepalive_timeout.max(Duration::from_secs(1)));
        // At a graceful stop, an idle keep-alive connection is still read this long, so a
        // request sent on it as the stop begins is answered (with `Connection: close`).
        options.shutdown_idle_linger = Some(SHUTDOWN_IDLE_LINGER.min(config.server.grace_period));
        app.server_options = Some(options);
        let mut h2 = default_h2_options();
        h2.max_header_list_size(u32::try_from(clients.max_header_bytes).unwrap_or(u32::MAX));
        app.h2_options = Some(h2);
    }
    proxy.set_connection_limits(Some(max_connections), clients.header_timeout);
    let open_connections = proxy.open_connections();
    proxy.add_tcp(&config.proxy.listen.to_string());
    if let Some((listen, settings)) = tls {
        proxy.add_tls_with_settings(&listen.to_string(), None, settings);
    }
    server.add_service(proxy);

    server.add_service(background_service(
        "upstreams",
        upstreams::watch::Watch {
            live: shared.live.clone(),
            metrics: shared.metrics.clone(),
        },
    ));

    let mut admin = Service::new(
        "admin".to_string(),
        AdminApp {
            live: shared.live.clone(),
            limiter: shared.limiter.clone(),
            counters: shared.counters.clone(),
            registry: shared.registry.clone(),
            metrics: shared.metrics.clone(),
            options: client_options(&clients),
            listings: tokio::sync::Semaphore::new(crate::admin::LISTINGS_AT_ONCE),
            lifecycle: shared.lifecycle.clone(),
            tenants: shared.tenants.clone(),
        },
    );
    admin.set_connection_limits(Some(ADMIN_CONNECTIONS), clients.header_timeout);
    // Answered until the process exits: while the proxy drains, `/health/ready` says so.
    admin.serve_through_shutdown();
    admin.add_tcp(&config.admin.listen.to_string());
    server.add_service(admin);

    server.add_service(background_service(
        "tenants",
        TenantSync {
            tenants: shared.tenants.clone(),
        },
    ));

    server.add_service(background_service(
        "slots",
        SlotKeeper {
            limiter: shared.limiter.clone(),
        },
    ));

    server.add_service(background_service(
        "heartbeat",
        Heartbeat {
            registry: shared.registry.clone(),
            counters: shared.counters.clone(),
            metrics: shared.metrics.clone(),
        },
    ));

    // Before the listeners open, so no signal finds the process without its handler.
    let signals = Signals::listen(
        Handlers {
            access: shared.access.clone(),
            upgrade: Arc::new(UpgradeSocket::new(upgrade_socket)),
            pid_file: config.server.pid_file.clone(),
        },
        shared.registry.clone(),
        shared.metrics.clone(),
        shared.lifecycle.clone(),
        open_connections,
    )?;
    Reloader::new(
        path,
        shared.live.clone(),
        shared.metrics.clone(),
        shared.registry.clone(),
        shared.access.clone(),
        cert,
        shared.tenants.clone(),
    )
    .listen()?;

    shared.metrics.node_up.set(1);
    let https = config.proxy.tls.as_ref().map_or_else(String::new, |t| {
        format!(", HTTPS and HTTP/2 on {}", t.listen)
    });
    log::info!(
        "node {} proxying on {}{https} (admin {})",
        config.node.id,
        config.proxy.listen,
        config.admin.listen
    );
    process::announce_serving(
        server.watch_execution_phase(),
        process::Waiting {
            upgrade: upgrade_ack,
            pid_file: config.server.pid_file.clone(),
            daemon: ready.map(|r| (r, config.proxy.listen)),
        },
    )?;
    server.run(RunArgs {
        shutdown_signal: Box::new(signals),
    });
    shared.limiter.give_back();
    if shared.lifecycle.handed_over() {
        unregister_unless_taken_over(&shared.registry);
    }
    shared.access.flush();
    if let Some(path) = &config.server.pid_file {
        process::remove_pid_file(path);
    }
    log::info!("node {} stopped", config.node.id);
    Ok(())
}

/// How long an idle keep-alive client connection is still read at a graceful stop (at most
/// the grace period).
const SHUTDOWN_IDLE_LINGER: Duration = Duration::from_secs(1);

/// Reads the overrides set at runtime once, before the node serves (at most a few seconds).
fn first_sync(tenants: &Tenants) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let done = runtime.map(|rt| {
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(3), tenants.sync(true)).await
        })
    });
    if !matches!(done, Ok(Ok(Ok(())))) {
        log::warn!(
            "could not read the overrides set at runtime yet; reading them again every {:?}",
            crate::tenants::SYNC_EVERY
        );
    }
}

/// After handing the sockets over: the registry entry goes unless the successor has made it
/// its own. The services' runtimes are gone, so this runs on a runtime of its own.
fn unregister_unless_taken_over(registry: &Registry) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let done = runtime.map(|rt| {
        rt.block_on(async {
            tokio::time::timeout(
                Duration::from_secs(5),
                registry.unregister_unless_taken_over(),
            )
            .await
        })
    });
    if !matches!(done, Ok(Ok(Ok(())))) {
        log::warn!(
            "node {}: could not check its registry entry at exit",
            registry.me().id
        );
    }
}

/// Connections the admin port serves at once (the monitor, Prometheus, operators): past it,
/// new ones wait in the accept queue, so no flood of them takes the node's descriptors.
pub const ADMIN_CONNECTIONS: usize = 256;

/// Descriptors kept for everything but client connections: the admin port's, Redis, the
/// access log, health checks.
const RESERVED_FDS: u64 = ADMIN_CONNECTIONS as u64 + 256;

/// How each listener reads request headers.
fn client_options(clients: &ClientLimits) -> HttpServerOptions {
    let mut options = HttpServerOptions::default();
    options.max_request_header_bytes = Some(clients.max_header_bytes);
    options.request_header_timeout = Some(clients.header_timeout);
    options
}

/// The client connections the proxy serves at once: `proxy.max_connections`, or fewer when
/// the descriptor limit could not hold them (each may need a second one to its upstream) and
/// the rest of the node. The soft descriptor limit is raised to the hard one first, as nginx's
/// `worker_rlimit_nofile` and Go's runtime do, so the cap and not the limit is what binds.
fn connection_budget(wanted: usize) -> usize {
    let limit = raise_fd_limit();
    let budget = usize::try_from(limit.saturating_sub(RESERVED_FDS) / 2).unwrap_or(usize::MAX);
    if wanted > budget {
        log::warn!(
            "proxy.max_connections = {wanted} needs up to {} descriptors, and this process may \
             open {limit}: serving at most {} connections at once; raise the limit \
             (LimitNOFILE=, ulimit -n) for more",
            wanted as u64 * 2 + RESERVED_FDS,
            budget.max(1)
        );
        return budget.max(1);
    }
    wanted
}

/// Raises the soft limit on open descriptors to the hard limit; returns the soft limit then.
fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    lim.rlim_cur
}

/// Binds every listen address once (those `fresh` says are bound afresh), as pingora will, so
/// an address in use or not allowed is reported at once and by name.
fn check_listeners(
    config: &Config,
    fresh: impl Fn(&std::net::SocketAddr) -> bool,
) -> Result<(), String> {
    let mut listeners = vec![
        ("[proxy] listen", config.proxy.listen),
        ("[admin] listen", config.admin.listen),
    ];
    if let Some(tls) = &config.proxy.tls {
        listeners.push(("[proxy] tls_listen", tls.listen));
    }
    // All held at once, so two keys naming one address (or 0.0.0.0 and 127.0.0.1 on one
    // port) fail here too.
    let mut bound = Vec::with_capacity(listeners.len());
    for (i, (key, addr)) in listeners.iter().enumerate() {
        if let Some((other, _)) = listeners[..i].iter().find(|(_, a)| a == addr) {
            return Err(format!("cannot listen on {addr} twice ({other} and {key})"));
        }
        if !fresh(addr) {
            continue;
        }
        let listener = std::net::TcpListener::bind(addr)
            .map_err(|e| format!("cannot listen on {addr} ({key}): {e}"))?;
        bound.push(listener);
    }
    Ok(())
}

/// pingora's panic when a listener cannot be opened (after 30 s of retries), inside its
/// service: the node would serve nothing on that address yet stay registered.
const LISTENER_PANIC: &str = "Failed to build listeners";

/// That panic ends the process with exit 1. Any other panic stays what it is in tokio and
/// pingora: the end of the one task (a connection, a check) it happened in.
fn exit_on_listener_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        if info.to_string().contains(LISTENER_PANIC) {
            log::error!("fatal: {info}; exiting");
            std::process::exit(1);
        }
    }));
}
