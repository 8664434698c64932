//! Walking Redis keys by pattern with SCAN, one batch at a time: never KEYS, which blocks
//! Redis for as long as it takes. Used to list counters and nodes.

use std::time::Duration;

use redis::aio::ConnectionManager;

use super::StoreError;

/// Keys asked for per SCAN step.
const BATCH: usize = 1000;

/// A cursor over the keys matching one pattern. SCAN may return a key more than once (while
/// Redis rehashes); callers that need each key once sort and dedup.
pub struct KeyScan {
    pattern: String,
    cursor: u64,
    done: bool,
    step_timeout: Duration,
}

impl KeyScan {
    pub fn new(pattern: String, step_timeout: Duration) -> Self {
        KeyScan {
            pattern,
            cursor: 0,
            done: false,
            step_timeout,
        }
    }

    /// The next batch (possibly empty), or `None` once the walk is complete.
    pub async fn next(
        &mut self,
        conn: &mut ConnectionManager,
    ) -> Result<Option<Vec<String>>, StoreError> {
        if self.done {
            return Ok(None);
        }
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(self.cursor)
            .arg("MATCH")
            .arg(&self.pattern)
            .arg("COUNT")
            .arg(BATCH);
        let step = cmd.query_async::<(u64, Vec<String>)>(conn);
        let (next, keys) = match tokio::time::timeout(self.step_timeout, step).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => return Err(StoreError::Connection(e.to_string())),
            Err(_) => return Err(StoreError::Timeout),
        };
        self.cursor = next;
        self.done = next == 0;
        Ok(Some(keys))
    }
}
