//! The pool in force, kept up to date: its health checks and the re-resolution of its names
//! on their schedules, started afresh when a reload brings a new pool.

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
        let mut next_check = Instant::now();
        let mut next_resolve = Instant::now() + RESOLVE_EVERY;
        loop {
            let live = self.live.load();
            if current.as_ref().is_none_or(|c| !Arc::ptr_eq(c, &live)) {
                // A new pool: check it at once.
                next_check = Instant::now();
                next_resolve = Instant::now() + RESOLVE_EVERY;
                current = Some(live.clone());
                self.metrics.upstreams.set_upstreams(live.pool.health());
            }
            let pool = &live.pool;
            let now = Instant::now();
            if let Some(health) = &pool.health {
                if now >= next_check {
                    pool.check_health().await;
                    next_check = Instant::now() + health.interval;
                    self.metrics.upstreams.set_health(pool.health());
                }
            }
            if pool.has_names && now >= next_resolve {
                pool.resolve_again().await;
                // A name may resolve now that did not, or to other addresses.
                self.metrics.upstreams.set_health(pool.health());
                next_resolve = Instant::now() + RESOLVE_EVERY;
            }
            // Look again at least every 250 ms, so a reload's new pool is checked promptly.
            let mut wake = Instant::now() + Duration::from_millis(250);
            if pool.has_names {
                wake = wake.min(next_resolve);
            }
            if pool.health.is_some() {
                wake = wake.min(next_check);
            }
            let sleep = wake.saturating_duration_since(Instant::now());
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
