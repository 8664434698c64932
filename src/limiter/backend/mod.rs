//! The two places counters live, behind [`crate::limiter::Backend`]: [`memory`] (this node
//! only) and [`redis`] (shared by every node, with [`blocked`] remembering keys known full,
//! [`scripts`] calling the Lua scripts, [`cross_slot`] deciding requests whose keys live
//! on several Redis Cluster slots, and [`lease`] holding this node's leases of counters).

pub mod blocked;
pub mod cross_slot;
pub mod lease;
pub mod memory;
pub mod redis;
pub mod scripts;
