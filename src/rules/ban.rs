//! A rule's penalty box (contract §15, `ban`): a key refused `after` times within `within`
//! is banned for `for_`, on every node.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BanPolicy {
    /// Refusals that ban a key...
    pub after: u32,
    /// ...when they come within this long.
    pub within: Duration,
    /// How long the ban lasts.
    pub lasts: Duration,
}
