//! `-d`: the process forks; the parent stays in the foreground until the child serves, then
//! exits 0 (1 when the child failed first), as nginx does and as a systemd unit of
//! `Type=forking` with a `PIDFile=` expects. The child leaves the terminal's session, reads
//! nothing from stdin and writes nothing to stdout; it keeps stderr (the log: redirect it, or
//! let systemd take it) and the working directory (relative paths in the config).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};

/// The child's promise to say when it serves.
pub struct Ready(File);

impl Ready {
    /// Tells the waiting parent that the node serves; it then exits 0.
    pub fn notify(mut self) {
        let _ = self.0.write_all(b"ready");
    }
}

/// Forks. Returns in the child only; the parent exits when the child is ready or gone.
/// Call before any thread is started: only the calling thread lives on in the child.
pub fn daemonize() -> Result<Ready, String> {
    let mut fds = [0; 2];
    // SAFETY: pipe writes two descriptors into the array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("cannot fork: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: the descriptors were just opened and are owned here alone.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: no other thread runs yet (the caller's duty); the child only goes on with this
    // one.
    match unsafe { libc::fork() } {
        -1 => Err(format!("cannot fork: {}", std::io::Error::last_os_error())),
        0 => {
            drop(read);
            // SAFETY: plain system calls on the child's own process and descriptor 0.
            unsafe {
                libc::setsid();
                // Nothing reads from the terminal or writes to stdout; stderr stays the log.
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
                if null >= 0 {
                    libc::dup2(null, 0);
                    libc::dup2(null, 1);
                    libc::close(null);
                }
            }
            Ok(Ready(File::from(write)))
        }
        _ => {
            drop(write);
            let mut said = Vec::new();
            let _ = File::from(read).read_to_end(&mut said);
            std::process::exit(if said == b"ready" { 0 } else { 1 });
        }
    }
}
