//! Walking keys by pattern on every master with SCAN, one batch at a time: never KEYS, which
//! blocks Redis for as long as it takes. SCAN may return a key more than once (while Redis
//! rehashes); callers that need each key once sort and dedup.

use super::{Node, Redis};
use crate::limiter::StoreError;

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
    pub async fn new(redis: &'r Redis, pattern: String) -> Result<Scan<'r>, StoreError> {
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
    pub async fn next(&mut self) -> Result<Option<(Node, Vec<String>)>, StoreError> {
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

/// The masters that serve slots, from `CLUSTER NODES`: lines of
/// `<id> <ip:port@cport[,hostname]> <flags> <master-id> ... <slots>`.
pub fn cluster_masters(text: &str) -> Vec<Node> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flags = fields.get(2)?;
            let serving = flags.split(',').any(|f| f == "master")
                && !flags.split(',').any(|f| f == "fail" || f == "handshake")
                && fields.len() > 8;
            if !serving {
                return None;
            }
            let addr = fields.get(1)?.split(['@', ',']).next()?;
            let (host, port) = addr.rsplit_once(':')?;
            Some(Node::At {
                host: host.to_string(),
                port: port.parse().ok()?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masters_with_slots_are_listed() {
        let text = "\
07c3 127.0.0.1:30004@40004 slave e7d1 0 1426238317239 4 connected
67ed 127.0.0.1:30002@40002 master - 0 1426238316232 2 connected 5461-10922
292f 127.0.0.1:30003@40003,host-3 master - 0 1426238318243 3 connected 10923-16383
6ec2 127.0.0.1:30005@40005 master,fail - 0 1426238316232 5 connected
824f 127.0.0.1:30006@40006 master - 0 1426238316232 6 connected
e7d1 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460
";
        let ports: Vec<u16> = cluster_masters(text)
            .into_iter()
            .map(|n| match n {
                Node::At { port, .. } => port,
                Node::Only => 0,
            })
            .collect();
        assert_eq!(ports, [30002, 30003, 30001]);
    }
}
