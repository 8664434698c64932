//! Following failovers that no call notices. A master that dies is noticed by the calls to
//! it (refused connections), and both the cluster client and the Sentinel connection then
//! look again by themselves. A master that hangs (a partition, a stopped machine) leaves its
//! connections open and calls to it merely time out, which tells neither to look elsewhere.
//!
//! So every second a watcher asks who serves the data: a cluster node's `CLUSTER NODES`
//! (reduced to the masters that serve slots) or the sentinels' master address. When the
//! answer changes, it bumps the layer's topology epoch; every thread then replaces its
//! connection on its next call, which waits for the new one, and the subscription to
//! resets moves too. Slots moving between masters (resharding) change nothing here: the
//! cluster client follows those redirects by itself. The watcher asks on plain connections
//! of its own, one per node.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Cmd, FromRedisValue};

use super::{tls, ClusterTarget, Node, Redis, Target};

/// How often the watcher asks.
const EVERY: Duration = Duration::from_secs(1);

/// Watches who serves the data for as long as the task lives (a standalone server has no
/// one else to fail over to: the task ends at once).
pub async fn follow(redis: Arc<Redis>) {
    let mut probe = Probe::new(super::connect_timeout(redis.timeout()));
    let mut known: Vec<redis::Client> = Vec::new();
    let mut last: Option<String> = None;
    loop {
        let (now, masters) = match &redis.target {
            Target::Standalone(_) => return,
            Target::Cluster(cluster) => cluster_view(cluster, &mut probe, &mut known)
                .await
                .map_or((None, Vec::new()), |(now, masters)| (Some(now), masters)),
            Target::Sentinel(sentinels) => (sentinels.master_addr(&mut probe).await, Vec::new()),
        };
        if let Some(now) = now {
            if last.as_ref().is_some_and(|last| *last != now) {
                log::warn!("Redis failover seen: now served by {now}");
                if let Target::Cluster(cluster) = &redis.target {
                    cluster.reseed(&masters);
                }
                redis.topology_changed();
            }
            last = Some(now);
        }
        tokio::time::sleep(EVERY).await;
    }
}

/// The cluster's masters and their slots, one line each in a stable order, asked of the
/// nodes it listed last time (else the seeds); and the masters serving, none suspected of
/// failing.
async fn cluster_view(
    cluster: &ClusterTarget,
    probe: &mut Probe,
    known: &mut Vec<redis::Client>,
) -> Option<(String, Vec<(String, u16)>)> {
    let seeds = || -> Vec<redis::Client> {
        cluster
            .seeds
            .iter()
            .filter_map(|seed| cluster.tls.client(seed.clone()).ok())
            .collect()
    };
    let mut cmd = redis::cmd("CLUSTER");
    cmd.arg("NODES");
    // The nodes listed last time, else (none answers: they may all have moved) the seeds.
    let text: String = match probe.ask(known, &cmd).await {
        Some(text) => text,
        None => probe.ask(&seeds(), &cmd).await?,
    };
    let nodes: Vec<redis::Client> = cluster_nodes(&text)
        .iter()
        .filter_map(|(host, port)| {
            let info = tls::at(&cluster.seeds[0], host, *port);
            cluster.tls.client(info).ok()
        })
        .collect();
    if !nodes.is_empty() {
        *known = nodes;
        probe.keep_only(known);
    }
    Some((fingerprint(&text), sound_masters(&text)))
}

/// Plain connections to single nodes (cluster nodes, sentinels), kept between rounds.
pub struct Probe {
    conns: HashMap<String, MultiplexedConnection>,
    /// The node that answered last, asked first next time.
    last: Option<String>,
    timeout: Duration,
}

impl Probe {
    pub fn new(timeout: Duration) -> Probe {
        Probe {
            conns: HashMap::new(),
            last: None,
            timeout,
        }
    }

    /// Closes the connections to nodes no longer listed.
    fn keep_only(&mut self, nodes: &[redis::Client]) {
        let listed: Vec<String> = nodes.iter().map(address).collect();
        self.conns.retain(|addr, _| listed.contains(addr));
    }

    /// Asks each node in turn, the last to answer first, until one answers in time.
    pub async fn ask<T: FromRedisValue>(
        &mut self,
        nodes: &[redis::Client],
        cmd: &Cmd,
    ) -> Option<T> {
        let mut order: Vec<&redis::Client> = nodes.iter().collect();
        order.sort_by_key(|c| Some(address(c)) != self.last);
        for client in order {
            let addr = address(client);
            match self.ask_one(client, &addr, cmd).await {
                Some(value) => {
                    self.last = Some(addr);
                    return Some(value);
                }
                None => {
                    self.conns.remove(&addr);
                }
            }
        }
        None
    }

    async fn ask_one<T: FromRedisValue>(
        &mut self,
        client: &redis::Client,
        addr: &str,
        cmd: &Cmd,
    ) -> Option<T> {
        let conn = match self.conns.get(addr) {
            Some(conn) => conn.clone(),
            None => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(Some(self.timeout));
                let conn = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map_err(|e| log::debug!("topology watch: cannot reach {addr}: {e}"))
                    .ok()?;
                self.conns.insert(addr.to_string(), conn.clone());
                conn
            }
        };
        let mut conn = conn;
        cmd.query_async(&mut conn)
            .await
            .map_err(|e| log::debug!("topology watch: {addr}: {e}"))
            .ok()
    }
}

fn address(client: &redis::Client) -> String {
    client.get_connection_info().addr().to_string()
}

/// One `CLUSTER NODES` line: `<id> <ip:port@cport[,hostname]> <flags> <master-id> <ping>
/// <pong> <epoch> <link> <slot ranges...>`.
struct NodeLine<'t> {
    host: String,
    port: u16,
    flags: Vec<&'t str>,
    slots: Vec<&'t str>,
}

impl NodeLine<'_> {
    fn parse(line: &str) -> Option<NodeLine<'_>> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let addr = fields.get(1)?.split(['@', ',']).next()?;
        let (host, port) = addr.rsplit_once(':')?;
        if host.is_empty() {
            return None;
        }
        Some(NodeLine {
            host: host.to_string(),
            port: port.parse().ok()?,
            flags: fields.get(2)?.split(',').collect(),
            slots: fields.iter().skip(8).copied().collect(),
        })
    }

    fn has(&self, flag: &str) -> bool {
        self.flags.contains(&flag)
    }

    /// A master that serves slots and is not failed.
    fn serving(&self) -> bool {
        self.has("master") && !self.has("fail") && !self.has("handshake") && !self.slots.is_empty()
    }
}

/// The masters that serve slots, from `CLUSTER NODES`.
pub fn cluster_masters(text: &str) -> Vec<Node> {
    text.lines()
        .filter_map(NodeLine::parse)
        .filter(NodeLine::serving)
        .map(|n| Node::At {
            host: n.host,
            port: n.port,
        })
        .collect()
}

/// The masters that serve slots and that no node suspects (`fail?`), as (host, port).
fn sound_masters(text: &str) -> Vec<(String, u16)> {
    text.lines()
        .filter_map(NodeLine::parse)
        .filter(|n| n.serving() && !n.has("fail?"))
        .map(|n| (n.host, n.port))
        .collect()
}

/// Every node the cluster lists with an address and not failed, masters first.
fn cluster_nodes(text: &str) -> Vec<(String, u16)> {
    let mut nodes: Vec<(bool, (String, u16))> = text
        .lines()
        .filter_map(NodeLine::parse)
        .filter(|n| !n.has("fail") && !n.has("noaddr"))
        .map(|n| (!n.has("master"), (n.host, n.port)))
        .collect();
    nodes.sort();
    nodes.into_iter().map(|(_, addr)| addr).collect()
}

/// The masters that serve slots, sorted: equal for two answers of one topology, whichever
/// node gave them, whatever their timings and however the slots are spread.
fn fingerprint(text: &str) -> String {
    let mut masters: Vec<String> = text
        .lines()
        .filter_map(NodeLine::parse)
        .filter(NodeLine::serving)
        .map(|n| format!("{}:{}", n.host, n.port))
        .collect();
    masters.sort();
    masters.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODES: &str = "\
07c3 127.0.0.1:30004@40004 slave e7d1 0 1426238317239 4 connected
67ed 127.0.0.1:30002@40002 master - 0 1426238316232 2 connected 5461-10922
292f 127.0.0.1:30003@40003,host-3 master - 0 1426238318243 3 connected 10923-16383
6ec2 127.0.0.1:30005@40005 master,fail - 0 1426238316232 5 connected
824f 127.0.0.1:30006@40006 master - 0 1426238316232 6 connected
e7d1 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460
";

    #[test]
    fn masters_with_slots_are_listed() {
        let ports: Vec<u16> = cluster_masters(NODES)
            .into_iter()
            .map(|n| match n {
                Node::At { port, .. } => port,
                Node::Only => 0,
            })
            .collect();
        assert_eq!(ports, [30002, 30003, 30001]);
    }

    #[test]
    fn new_connections_start_from_the_sound_masters() {
        let suspected = NODES.replace("30002@40002 master -", "30002@40002 master,fail? -");
        let ports: Vec<u16> = sound_masters(&suspected)
            .into_iter()
            .map(|(_, p)| p)
            .collect();
        assert_eq!(ports, [30003, 30001]);
    }

    #[test]
    fn nodes_to_ask_are_the_live_ones_masters_first() {
        let ports: Vec<u16> = cluster_nodes(NODES).into_iter().map(|(_, p)| p).collect();
        assert_eq!(ports, [30001, 30002, 30003, 30006, 30004]);
    }

    #[test]
    fn the_fingerprint_changes_with_a_failover_only() {
        let before = fingerprint(NODES);
        // Other timings, another node's view: the same topology.
        let elsewhere = NODES
            .replace("0 1426238316232 2", "0 1426238399999 2")
            .replace("myself,master", "master");
        assert_eq!(fingerprint(&elsewhere), before);
        // Slots moved between masters (resharding): the cluster client follows that itself.
        let resharded = NODES
            .replace("connected 5461-10922", "connected 5000-10922")
            .replace("connected 0-5460", "connected 0-4999");
        assert_eq!(fingerprint(&resharded), before);
        // The replica took over the first master's slots.
        let promoted = NODES
            .replace(
                "07c3 127.0.0.1:30004@40004 slave e7d1 0 1426238317239 4 connected",
                "07c3 127.0.0.1:30004@40004 master - 0 1426238317239 7 connected 0-5460",
            )
            .replace(
                "e7d1 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460",
                "e7d1 127.0.0.1:30001@40001 master,fail - 0 0 1 connected",
            );
        assert_ne!(fingerprint(&promoted), before);
        assert_eq!(
            fingerprint(&promoted),
            "127.0.0.1:30002 127.0.0.1:30003 127.0.0.1:30004"
        );
    }
}
