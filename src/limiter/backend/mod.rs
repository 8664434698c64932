//! The two places counters live, behind [`crate::limiter::Decide`] and
//! [`crate::limiter::Counters`]: [`memory`] (this node only) and [`redis`] (shared by every
//! node).

pub mod memory;
pub mod redis;
