//! Keeps this node's concurrency slots alive while their requests run (contract §14): a
//! background task renews every slot held for a third of its `slot_ttl_ms`, so only the
//! slots of a node that died expire. It goes on through a graceful stop, whose draining
//! requests still hold theirs, until the process ends.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::limiter::Limiter;

/// How often the held slots are looked over (the shortest ttl is 500 ms, renewed every 166).
const LOOK_EVERY: Duration = Duration::from_millis(50);

pub struct SlotKeeper {
    pub limiter: Arc<Limiter>,
}

#[async_trait]
impl BackgroundService for SlotKeeper {
    async fn start(&self, _shutdown: ShutdownWatch) {
        loop {
            self.limiter.renew_slots().await;
            tokio::time::sleep(LOOK_EVERY).await;
        }
    }
}
