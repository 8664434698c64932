//! The two places counters live, behind [`crate::limiter::Backend`]: [`memory`] (this node
//! only) and [`redis`] (shared by every node, with [`blocked`] remembering keys known full).

pub mod blocked;
pub mod memory;
pub mod redis;
