//! Walking keys by pattern on every master with SCAN, one batch at a time: never KEYS, which
//! blocks Redis for as long as it takes. SCAN may return a key more than once (while Redis
//! rehashes); callers that need each key once sort and dedup.

use super::Error;
use super::{Node, Redis};

/// Keys asked for per SCAN step.
const BATCH: usize = 1000;

/// A cursor over the keys matching one pattern, master after master.
pub struct Scan<'r> {
    redis: &'r Redis,
    pattern: String,
    nodes: Vec<Node>,
    /// The master being walked, and its cursor.
    at: usize,
    cursor: u64,
}

impl<'r> Scan<'r> {
    pub async fn new(redis: &'r Redis, pattern: String) -> Result<Scan<'r>, Error> {
        Ok(Scan {
            redis,
            pattern,
            nodes: redis.masters().await?,
            at: 0,
            cursor: 0,
        })
    }

    /// The next batch (possibly empty) with the master it lives on, or `None` once every
    /// master has been walked.
    pub async fn next(&mut self) -> Result<Option<(Node, Vec<String>)>, Error> {
        let Some(node) = self.nodes.get(self.at).cloned() else {
            return Ok(None);
        };
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(self.cursor)
            .arg("MATCH")
            .arg(&self.pattern)
            .arg("COUNT")
            .arg(BATCH);
        let (next, keys): (u64, Vec<String>) = self.redis.query_on(&node, &cmd).await?;
        self.cursor = next;
        if next == 0 {
            self.at += 1;
        }
        Ok(Some((node, keys)))
    }
}
