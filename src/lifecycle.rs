//! Where the process is in its life (draining, or handing its sockets to a new process), for
//! whoever must answer differently: `/health/ready` (503 once draining, so load balancers take
//! the node out) and the end of a hand-over (the registry entry).

use std::sync::atomic::{AtomicBool, Ordering};

/// Shared by the services. Draining, once set, stays; a hand-over may be taken back.
#[derive(Debug, Default)]
pub struct Lifecycle {
    draining: AtomicBool,
    handed_over: AtomicBool,
}

impl Lifecycle {
    /// From now on the node takes no new connections and finishes what it has.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// The listening sockets are being handed to a new process (`-u`).
    pub fn hand_over(&self) {
        self.handed_over.store(true, Ordering::Release);
    }

    /// The hand-over failed: this process serves on.
    pub fn take_back(&self) {
        self.handed_over.store(false, Ordering::Release);
    }

    pub fn handed_over(&self) -> bool {
        self.handed_over.load(Ordering::Acquire)
    }
}
