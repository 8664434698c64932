//! Following one pub/sub channel for as long as its owner lives: subscribed on a node that
//! hears every publication (the server, the Sentinel's master, any cluster node), and
//! subscribed again, elsewhere if need be, whenever the subscription drops or the topology
//! changes.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use super::Redis;

/// What the follower tells its owner.
pub trait Listener: Send + Sync {
    /// Whether messages are being heard now (while not, some may be missed).
    fn live(&self, live: bool);
    /// A message on the channel.
    fn message(&self, payload: &str);
}

/// Follows `channel` until the task is dropped, with back-off between attempts.
pub async fn follow(redis: Arc<Redis>, channel: &'static str, listener: Arc<dyn Listener>) {
    let mut backoff = Duration::from_millis(50);
    let mut attempt = 0usize;
    loop {
        // A node that hangs keeps the subscription open and silent: leave it when the
        // topology changes (watched from before subscribing, so no change is missed).
        let moved = redis.on_topology_change();
        let subscribed = async {
            let client = redis
                .subscriber(attempt)
                .await
                .map_err(|e| redis::RedisError::from((redis::ErrorKind::Io, "", e.to_string())))?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        match tokio::time::timeout(Duration::from_secs(2), subscribed).await {
            Ok(Ok(pubsub)) => {
                backoff = Duration::from_millis(50);
                listener.live(true);
                let mut messages = pubsub.into_on_message();
                tokio::pin!(moved);
                loop {
                    tokio::select! {
                        msg = messages.next() => match msg {
                            Some(msg) => {
                                if let Ok(payload) = msg.get_payload::<String>() {
                                    listener.message(&payload);
                                }
                            }
                            None => {
                                log::warn!("lost the Redis subscription to {channel}; subscribing again");
                                break;
                            }
                        },
                        _ = &mut moved => {
                            log::info!("the Redis topology changed; subscribing to {channel} again");
                            break;
                        }
                    }
                }
            }
            Ok(Err(e)) => log::debug!("cannot subscribe to {channel}: {e}"),
            Err(_) => log::debug!("subscribing to {channel} timed out"),
        }
        listener.live(false);
        attempt += 1;
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}
