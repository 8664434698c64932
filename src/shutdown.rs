//! Signals (contract §1): SIGTERM drains, SIGINT stops fast; both first take the node out of
//! the registry (best effort), so monitors and peers stop counting on it at once.

use std::sync::Arc;

use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use tokio::signal::unix::{signal, SignalKind};

use crate::metrics::Metrics;
use crate::registry::Registry;

pub struct Signals {
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let (term, int) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        );
        let (mut term, mut int) = match (term, int) {
            (Ok(t), Ok(i)) => (t, i),
            (Err(e), _) | (_, Err(e)) => {
                log::error!("cannot listen for signals: {e}; stop the process with SIGKILL");
                return std::future::pending().await;
            }
        };
        let (kind, name) = tokio::select! {
            _ = term.recv() => (ShutdownSignal::GracefulTerminate, "SIGTERM: draining"),
            _ = int.recv() => (ShutdownSignal::FastShutdown, "SIGINT: stopping"),
        };
        log::info!("{name}");
        self.metrics.node_up.set(0);
        match self.registry.unregister().await {
            Ok(()) => log::info!("node {} unregistered", self.registry.me().id),
            Err(e) => log::warn!("node {} could not unregister: {e}", self.registry.me().id),
        }
        kind
    }
}
