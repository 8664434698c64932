//! What a reload may change (contract §8), behind one swappable pointer: the proxy and the
//! admin API read it once per request, so a request in flight finishes under the config it
//! started with, and the next one sees the new config at once.

use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use pingora::upstreams::peer::HttpPeer;

use crate::config::Config;
use crate::rules::RuleSet;

/// One loaded config with what is derived from it.
pub struct Live {
    pub config: Config,
    pub rules: RuleSet,
    /// The upstreams, ready for pingora (their addresses were resolved when the config loaded).
    pub peers: Vec<HttpPeer>,
    pub loaded_at: SystemTime,
}

impl Live {
    pub fn new(config: Config) -> Live {
        let peers = config
            .proxy
            .upstreams
            .iter()
            .map(|u| HttpPeer::new(u.addrs[0], false, String::new()))
            .collect();
        Live {
            rules: config.rule_set(),
            peers,
            config,
            loaded_at: SystemTime::now(),
        }
    }
}

/// The config in force.
pub struct LiveConfig(ArcSwap<Live>);

impl LiveConfig {
    pub fn new(config: Config) -> LiveConfig {
        LiveConfig(ArcSwap::from_pointee(Live::new(config)))
    }

    /// The config in force now; holding it keeps it whole for as long as it is held.
    pub fn load(&self) -> Arc<Live> {
        self.0.load_full()
    }

    /// Puts a new config in force.
    pub fn store(&self, live: Live) {
        self.0.store(Arc::new(live));
    }
}
