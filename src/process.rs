//! The process as service managers and upgrades see it: where the upgrade socket lives, the
//! pid file, and telling whoever waits that this process serves (the old process of an
//! upgrade, which drains only then; the command that started `-d`, which returns only then).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pingora::server::{ExecutionPhase, UpgradeAck};
use tokio::sync::broadcast;

use crate::config::Config;

/// The longest path a Unix socket address holds.
const MAX_SOCKET_PATH: usize = crate::config::MAX_SOCKET_PATH;

/// How long `-d` waits for the proxy port to accept once the services run.
const READY_PROBE: Duration = Duration::from_secs(10);

/// `server.upgrade_socket`, or `<temp dir>/ratelimiter-<uid>/<proxy.listen>.upgrade.sock`: a
/// directory of this user's alone (made with mode 0700, and refused when another user owns
/// it or others may write in it), named after the proxy's address so nodes on one host never
/// meet on it. Whoever may create the socket file may ask for the listening sockets.
pub fn upgrade_socket(config: &Config) -> Result<PathBuf, String> {
    if let Some(path) = &config.server.upgrade_socket {
        return Ok(path.clone());
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    let dir = std::env::temp_dir().join(format!("ratelimiter-{uid}"));
    let made = std::fs::DirBuilder::new().mode(0o700).create(&dir);
    if let Err(e) = made {
        if e.kind() != std::io::ErrorKind::AlreadyExists {
            return Err(format!("cannot make {}: {e}", dir.display()));
        }
    }
    let meta = std::fs::symlink_metadata(&dir)
        .map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    if !meta.is_dir() || meta.uid() != uid || meta.permissions().mode() & 0o022 != 0 {
        return Err(format!(
            "{} is not a directory of this user's alone, so the upgrade socket cannot be kept \
             in it; remove it or set [server] upgrade_socket",
            dir.display()
        ));
    }
    let name: String = config
        .proxy
        .listen
        .to_string()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let path = dir.join(format!("{name}.upgrade.sock"));
    if path.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(format!(
            "the upgrade socket {} is longer than a Unix socket allows ({MAX_SOCKET_PATH} \
             bytes); set [server] upgrade_socket to a shorter path",
            path.display()
        ));
    }
    Ok(path)
}

/// Whether the pid file can be written, asked before taking sockets over (the file is
/// written only once the process serves, when failing would be too late).
pub fn check_pid_file(path: &Path) -> Result<(), String> {
    let probe = probe_path(path);
    std::fs::write(&probe, b"")
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|e| format!("cannot write [server] pid_file {}: {e}", path.display()))
}

fn probe_path(path: &Path) -> PathBuf {
    path.with_extension("pid.new")
}

/// Writes the pid file whole (through a rename), replacing a predecessor's.
fn write_pid_file(path: &Path) -> std::io::Result<()> {
    let tmp = probe_path(path);
    std::fs::write(&tmp, format!("{}\n", std::process::id()))?;
    std::fs::rename(&tmp, path)
}

/// Removes the pid file when it still names this process (after an upgrade it names the
/// successor, which keeps it).
pub fn remove_pid_file(path: &Path) {
    let ours =
        std::fs::read_to_string(path).is_ok_and(|s| s.trim() == std::process::id().to_string());
    if ours {
        let _ = std::fs::remove_file(path);
    }
}

/// Who is told once this process serves.
pub struct Waiting {
    /// The old process of an upgrade.
    pub upgrade: Option<UpgradeAck>,
    /// Written once serving.
    pub pid_file: Option<PathBuf>,
    /// The command that started `-d`, with the address to see accepting first.
    pub daemon: Option<(crate::daemon::Ready, SocketAddr)>,
}

/// Once the services run (`phases` says so): writes the pid file, tells the old process of an
/// upgrade, then tells the command of `-d` once the proxy port accepts. On a thread of its
/// own; a process that dies first tells them by closing their connections.
pub fn announce_serving(
    mut phases: broadcast::Receiver<ExecutionPhase>,
    waiting: Waiting,
) -> Result<(), String> {
    std::thread::Builder::new()
        .name("serving".into())
        .spawn(move || {
            loop {
                match phases.blocking_recv() {
                    Ok(ExecutionPhase::Running) => break,
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
            // The pid file first: the old process of an upgrade removes it at exit when it
            // still names the old one, which it must no longer do once told to drain (written
            // after, a rename between its read and its removal would lose the file).
            if let Some(path) = &waiting.pid_file {
                if let Err(e) = write_pid_file(path) {
                    log::error!("cannot write [server] pid_file {}: {e}", path.display());
                }
            }
            if let Some(ack) = waiting.upgrade {
                match ack.acknowledge() {
                    Ok(()) => log::info!("serving: the old process drains now"),
                    Err(e) => log::warn!("cannot tell the old process that this one serves: {e}"),
                }
            }
            if let Some((ready, listen)) = waiting.daemon {
                let probe = local(listen);
                let deadline = Instant::now() + READY_PROBE;
                while std::net::TcpStream::connect_timeout(&probe, Duration::from_secs(1)).is_err()
                {
                    if Instant::now() > deadline {
                        log::error!("the proxy port {listen} does not accept: not serving");
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                ready.notify();
            }
        })
        .map(|_| ())
        .map_err(|e| format!("cannot start the serving thread: {e}"))
}

/// An address to connect to for a listen address (the unspecified address: loopback).
fn local(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, listen.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, listen.port()).into(),
        _ => listen,
    }
}
