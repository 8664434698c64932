//! Where the process is in its life, for whoever must answer differently while it drains:
//! `/health/ready` (503 once draining, so load balancers take the node out), responses
//! (`Connection: close`), and the shutdown that waits for the last connection.

use std::sync::atomic::{AtomicBool, Ordering};

/// Shared by the services; set once, never cleared.
#[derive(Debug, Default)]
pub struct Lifecycle {
    draining: AtomicBool,
}

impl Lifecycle {
    /// From now on the node takes no new connections and finishes what it has.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}
