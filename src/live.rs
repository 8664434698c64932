//! What a reload may change (contract §8), behind one swappable pointer: the proxy and the
//! admin API read it once per request, so a request in flight finishes under the config it
//! started with, and the next one sees the new config at once.

use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::request::RequestView;
use crate::rules::{intern, Matcher, RuleSet};
use crate::upstreams::Pool;

/// One loaded config with what is derived from it.
pub struct Live {
    pub config: Config,
    pub rules: RuleSet,
    /// `[proxy]`'s upstreams, their health and how to connect to them: for the requests no
    /// route takes.
    pub pool: Pool,
    /// The routes (contract §18), in file order, each with its own pool.
    pub routes: Vec<Route>,
    pub loaded_at: SystemTime,
}

/// A route in force.
pub struct Route {
    pub name: &'static str,
    pub matcher: Matcher,
    pub pool: Pool,
    /// Other upstreams a request that could not be sent tries.
    pub retries: usize,
    /// Whether its responses may be batched into fewer writes.
    pub buffering: bool,
}

impl Live {
    /// Fails only when the upstreams cannot be set up (an unusable CA file).
    pub fn new(config: Config) -> Result<Live, String> {
        let (pool, ca) = Pool::new(&config.proxy)?;
        let routes = config
            .routes
            .iter()
            .map(|r| {
                Ok(Route {
                    name: intern(&r.name),
                    matcher: r.matcher.clone(),
                    pool: Pool::of(
                        &r.upstreams,
                        ca.clone(),
                        r.timeouts,
                        r.health_check.as_ref(),
                    )?,
                    retries: r.retries,
                    buffering: r.buffering,
                })
            })
            .collect::<Result<Vec<Route>, String>>()?;
        Ok(Live {
            rules: config.rule_set(),
            pool,
            routes,
            config,
            loaded_at: SystemTime::now(),
        })
    }

    /// The route a request takes: the first whose conditions it meets; `None`: `[proxy]`'s
    /// upstreams.
    pub fn route(&self, view: &RequestView) -> Option<usize> {
        self.routes.iter().position(|r| r.matcher.matches(view))
    }

    /// The pool of a route (`None`: `[proxy]`'s).
    pub fn pool_of(&self, route: Option<usize>) -> &Pool {
        route
            .and_then(|i| self.routes.get(i))
            .map_or(&self.pool, |r| &r.pool)
    }

    /// How many other upstreams a request of this route tries when it cannot connect.
    pub fn retries_of(&self, route: Option<usize>) -> usize {
        route
            .and_then(|i| self.routes.get(i))
            .map_or(self.config.proxy.retries, |r| r.retries)
    }

    /// Whether a route's responses may be batched into fewer writes to the client.
    pub fn buffering_of(&self, route: Option<usize>) -> bool {
        route
            .and_then(|i| self.routes.get(i))
            .map_or(self.config.proxy.buffering, |r| r.buffering)
    }

    /// Every pool of the config with its route's name (`""`: `[proxy]`'s), `[proxy]`'s first.
    pub fn named_pools(&self) -> impl Iterator<Item = (&str, &Pool)> {
        std::iter::once(("", &self.pool)).chain(self.routes.iter().map(|r| (r.name, &r.pool)))
    }

    /// The name of a route (`""`: `[proxy]`'s upstreams), as the upstream metrics label it.
    pub fn route_name(&self, route: Option<usize>) -> &'static str {
        route
            .and_then(|i| self.routes.get(i))
            .map_or("", |r| r.name)
    }

    /// Every pool of the config: `[proxy]`'s, then each route's.
    pub fn pools(&self) -> impl Iterator<Item = &Pool> {
        std::iter::once(&self.pool).chain(self.routes.iter().map(|r| &r.pool))
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
