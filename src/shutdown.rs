//! Signals (contract §1, §17), as nginx operators expect them:
//!
//! | signal | does |
//! |---|---|
//! | `TERM`, `QUIT`, `INT` | drain: take the node out (registry, `/health/ready`), stop accepting, finish what is in flight with `Connection: close`, exit as soon as the last connection is done (at most `grace_period_seconds`) |
//! | a second `INT` | exit at once (the access log flushed, the pid file removed) |
//! | `HUP` | reload the config ([`crate::reload`]) |
//! | `USR1` | reopen the access log (after it was rotated away) |
//! | `USR2`, `WINCH` | nothing but a log line: no signal ends the process without a drain |
//! | `PIPE` | ignored (as Rust programs do) |
//!
//! A zero-downtime upgrade needs no signal: a new process started with `-u` binds the upgrade
//! socket ([`UpgradeSocket`]), this process sees it appear, hands its listening sockets over
//! through it, and drains once the new process says it serves. The node stays registered: the
//! new process has its id. When the new process fails first, this one serves on.
//!
//! The signals are taken on a thread of their own from start, before the listeners open, so
//! none arrives while its default action (ending the process) still holds.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::{mpsc, Mutex};

use crate::access_log::AccessLog;
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
use crate::registry::Registry;

/// How often the upgrade socket is looked for.
const UPGRADE_POLL: Duration = Duration::from_millis(200);

/// Which file is at a path: a socket file deleted and made again is another one even when
/// it gets the same inode number (the change time differs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    dev: u64,
    ino: u64,
    ctime: (i64, i64),
}

/// Where a new process started with `-u` waits for this one's listening sockets.
#[derive(Debug)]
pub struct UpgradeSocket {
    path: PathBuf,
    /// The file at the path when this process last looked away from it (a leftover at start,
    /// or the socket of an upgrade that failed): only another one means a new process waits.
    seen: StdMutex<Option<Identity>>,
}

impl UpgradeSocket {
    pub fn new(path: PathBuf) -> UpgradeSocket {
        let seen = StdMutex::new(identity(&path));
        UpgradeSocket { path, seen }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether a new process of this user is waiting for the sockets: a socket file this
    /// process has not seen, owned by its user (another user's file is never handed to).
    fn requested(&self) -> bool {
        let Ok(meta) = std::fs::symlink_metadata(&self.path) else {
            return false;
        };
        let found = Some(identity_of(&meta));
        // SAFETY: geteuid has no preconditions and cannot fail.
        let ours = meta.uid() == unsafe { libc::geteuid() };
        ours && meta.file_type().is_socket() && found != *crate::sync::lock(&self.seen)
    }

    /// Takes the file at the path now as seen (after an upgrade that failed).
    fn rebase(&self) {
        *crate::sync::lock(&self.seen) = identity(&self.path);
    }
}

fn identity(path: &Path) -> Option<Identity> {
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| identity_of(&m))
}

fn identity_of(meta: &std::fs::Metadata) -> Identity {
    Identity {
        dev: meta.dev(),
        ino: meta.ino(),
        ctime: (meta.ctime(), meta.ctime_nsec()),
    }
}

/// What the signal thread tells the server.
#[derive(Debug, Clone, Copy)]
enum Stop {
    Drain(&'static str),
    Upgrade,
}

/// The server's side of the signals: pingora asks it how to stop, and, while draining,
/// whether the proxy's last connection is done.
pub struct Signals {
    stops: Mutex<mpsc::UnboundedReceiver<Stop>>,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    lifecycle: Arc<Lifecycle>,
    /// The proxy's open client connections.
    open: Arc<AtomicUsize>,
    upgrade: Arc<UpgradeSocket>,
    /// Set while a stop is under way; cleared when an upgrade fails.
    stopping: Arc<AtomicBool>,
}

/// What the signal thread acts on by itself.
pub struct Handlers {
    pub access: Arc<AccessLog>,
    pub upgrade: Arc<UpgradeSocket>,
    /// Removed on an exit at once (a second `INT`) when it still names this process.
    pub pid_file: Option<PathBuf>,
}

impl Signals {
    /// Starts taking signals, on a thread of its own. `open` counts the proxy's connections.
    pub fn listen(
        handlers: Handlers,
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
        lifecycle: Arc<Lifecycle>,
        open: Arc<AtomicUsize>,
    ) -> Result<Signals, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the signal thread: {e}"))?;
        let streams = {
            let _in_runtime = runtime.enter();
            Streams::new().map_err(|e| format!("cannot listen for signals: {e}"))?
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let stopping = Arc::new(AtomicBool::new(false));
        let upgrade = handlers.upgrade.clone();
        let thread_stopping = stopping.clone();
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || runtime.block_on(streams.serve(handlers, tx, thread_stopping)))
            .map_err(|e| format!("cannot start the signal thread: {e}"))?;
        Ok(Signals {
            stops: Mutex::new(rx),
            registry,
            metrics,
            lifecycle,
            open,
            upgrade,
            stopping,
        })
    }
}

struct Streams {
    term: Signal,
    quit: Signal,
    int: Signal,
    usr1: Signal,
    usr2: Signal,
    winch: Signal,
}

impl Streams {
    fn new() -> std::io::Result<Streams> {
        Ok(Streams {
            term: signal(SignalKind::terminate())?,
            quit: signal(SignalKind::quit())?,
            int: signal(SignalKind::interrupt())?,
            usr1: signal(SignalKind::user_defined1())?,
            usr2: signal(SignalKind::user_defined2())?,
            winch: signal(SignalKind::window_change())?,
        })
    }

    async fn serve(
        mut self,
        handlers: Handlers,
        stops: mpsc::UnboundedSender<Stop>,
        stopping: Arc<AtomicBool>,
    ) {
        let mut poll = tokio::time::interval(UPGRADE_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stop = tokio::select! {
                _ = self.term.recv() => Stop::Drain("SIGTERM"),
                _ = self.quit.recv() => Stop::Drain("SIGQUIT"),
                _ = self.int.recv() => Stop::Drain("SIGINT"),
                _ = self.usr1.recv() => {
                    log::info!("SIGUSR1: reopening the access log");
                    handlers.access.reopen();
                    continue;
                }
                _ = self.usr2.recv() => {
                    log::info!("SIGUSR2 ignored: to replace the binary, start the new one with -u");
                    continue;
                }
                _ = self.winch.recv() => {
                    log::info!("SIGWINCH ignored");
                    continue;
                }
                _ = poll.tick() => {
                    if stopping.load(Ordering::Acquire) || !handlers.upgrade.requested() {
                        continue;
                    }
                    Stop::Upgrade
                }
            };
            if stopping.load(Ordering::Acquire) {
                match stop {
                    Stop::Drain("SIGINT") => {
                        log::warn!("SIGINT while stopping: exiting now, cutting what is in flight");
                        handlers.access.flush();
                        if let Some(path) = &handlers.pid_file {
                            crate::process::remove_pid_file(path);
                        }
                        std::process::exit(0);
                    }
                    _ => {
                        log::info!("already stopping (a second SIGINT exits at once)");
                        continue;
                    }
                }
            }
            stopping.store(true, Ordering::Release);
            if stops.send(stop).is_err() {
                return;
            }
        }
    }
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let stop = self.stops.lock().await.recv().await;
        // Without the signal thread, nothing stops the process but SIGKILL.
        let Some(stop) = stop else {
            return std::future::pending().await;
        };
        let kind = match stop {
            Stop::Drain(name) => {
                log::info!("{name}: draining");
                ShutdownSignal::GracefulTerminate
            }
            Stop::Upgrade => {
                log::info!(
                    "a new process asks for the listening sockets: handing them over, then draining once it serves"
                );
                // The new process has this node's id and keeps its entry alive; it answers on
                // the same sockets, so this one does not say it is going either.
                self.registry.hand_over();
                self.lifecycle.hand_over();
                return ShutdownSignal::GracefulUpgrade;
            }
        };
        self.lifecycle.start_draining();
        self.metrics.node_up.set(0);
        match self.registry.unregister().await {
            Ok(()) => log::info!("node {} unregistered", self.registry.me().id),
            Err(e) => log::warn!("node {} could not unregister: {e}", self.registry.me().id),
        }
        kind
    }

    fn drained(&self) -> bool {
        self.open.load(Ordering::Acquire) == 0
    }

    fn upgrade_failed(&self) {
        log::warn!("the upgrade failed: serving on");
        self.registry.resume();
        self.lifecycle.take_back();
        self.upgrade.rebase();
        self.stopping.store(false, Ordering::Release);
    }
}
