//! The pools in force (`[proxy]`'s and each route's), kept up to date: their health checks
//! and the re-resolution of their names on their schedules, started afresh when a reload
//! brings new pools.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::RESOLVE_EVERY;
use crate::live::{Live, LiveConfig};
use crate::metrics::Metrics;

/// Runs the health checks and the re-resolution of the pool in force, restarting its
/// schedule when a reload brings a new pool, and shows each upstream's health in the metrics.
pub struct Watch {
    pub live: Arc<LiveConfig>,
    pub metrics: Arc<Metrics>,
}

#[async_trait]
impl BackgroundService for Watch {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut current: Option<Arc<Live>> = None;
        // Per pool of the config in force (`[proxy]`'s, then each route's): when its checks
        // and its names are due.
        let mut next_check: Vec<Instant> = Vec::new();
        let mut next_resolve = Instant::now() + RESOLVE_EVERY;
        loop {
            let live = self.live.load();
            if current.as_ref().is_none_or(|c| !Arc::ptr_eq(c, &live)) {
                // New pools: check them at once.
                next_check = live.pools().map(|_| Instant::now()).collect();
                next_resolve = Instant::now() + RESOLVE_EVERY;
                current = Some(live.clone());
                self.metrics.upstreams.set_upstreams(health(&live));
            }
            let now = Instant::now();
            // The pools due are checked all at once: one slow to answer holds up no other.
            let due: Vec<usize> = live
                .pools()
                .zip(&next_check)
                .enumerate()
                .filter(|(_, (pool, next))| pool.health.is_some() && now >= **next)
                .map(|(i, _)| i)
                .collect();
            let mut checked = !due.is_empty();
            let pools: Vec<_> = live.pools().collect();
            futures_util::future::join_all(due.iter().map(|&i| pools[i].check_health())).await;
            for &i in &due {
                if let Some(health) = &pools[i].health {
                    next_check[i] = Instant::now() + health.interval;
                }
            }
            let has_names = live.pools().any(|p| p.has_names);
            if has_names && now >= next_resolve {
                for pool in live.pools().filter(|p| p.has_names) {
                    pool.resolve_again().await;
                }
                // A name may resolve now that did not, or to other addresses.
                checked = true;
                next_resolve = Instant::now() + RESOLVE_EVERY;
            }
            if checked {
                self.metrics.upstreams.set_health(health(&live));
            }
            // Look again at least every 250 ms, so a reload's new pools are checked promptly.
            let mut wake = Instant::now() + Duration::from_millis(250);
            if has_names {
                wake = wake.min(next_resolve);
            }
            for (pool, next) in live.pools().zip(&next_check) {
                if pool.health.is_some() {
                    wake = wake.min(*next);
                }
            }
            let sleep = wake.saturating_duration_since(Instant::now());
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// Every upstream of the config in force, by route, and whether it gets requests.
fn health(live: &Live) -> Vec<(&str, &str, bool)> {
    live.named_pools()
        .flat_map(|(route, pool)| pool.health().into_iter().map(move |(n, h)| (route, n, h)))
        .collect()
}
