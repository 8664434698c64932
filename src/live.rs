//! What a reload may change (contract §8), behind one swappable pointer: the proxy and the
//! admin API read it once per request, so a request in flight finishes under the config it
//! started with, and the next one sees the new config at once.

use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::rules::RuleSet;
use crate::upstreams::Pool;

/// One loaded config with what is derived from it.
pub struct Live {
    pub config: Config,
    pub rules: RuleSet,
    /// The upstreams, their health and how to connect to them.
    pub pool: Pool,
    pub loaded_at: SystemTime,
}

impl Live {
    /// Fails only when the upstreams cannot be set up (an unusable CA file).
    pub fn new(config: Config) -> Result<Live, String> {
        Ok(Live {
            rules: config.rule_set(),
            pool: Pool::new(&config.proxy)?,
            config,
            loaded_at: SystemTime::now(),
        })
    }
}

/// The config in force.
pub struct LiveConfig(ArcSwap<Live>);

impl LiveConfig {
    pub fn new(config: Config) -> Result<LiveConfig, String> {
        Ok(LiveConfig(ArcSwap::from_pointee(Live::new(config)?)))
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
