//! The one place where a store failure becomes a policy (contract §3.5): every decision is
//! bounded by the store's timeout, and a failure is counted, logged at most once a second,
//! and turned into the configured fail-open or fail-closed verdict. Every decision is also
//! timed and counted here, per check.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::queue::{line_of, Lines};
use super::slots::HeldSlots;
use super::{Check, Decide, Decision, Mode, Outcome, Settlement, StoreError};
use crate::config::OnError;
use crate::metrics::Metrics;

/// What the caller does with a request.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// The store decided (allowed or blocked).
    Decided(Outcome),
    /// The store failed: fail open, proxying without limit headers.
    FailOpen,
    /// The store failed: fail closed, 503.
    FailClosed,
}

pub struct Limiter {
    pub(super) store: Arc<dyn Decide>,
    /// `None` for the embedded store, which cannot hang.
    timeout: Option<Duration>,
    on_error: OnError,
    pub(super) metrics: Arc<Metrics>,
    /// The concurrency slots this node holds (contract §14).
    pub(super) held: HeldSlots,
    /// Requests waiting for a slot, by key.
    pub(super) lines: Arc<Lines>,
    started: Instant,
    /// When the last store error was logged, in ms since `started` (+1, so 0 means never).
    last_logged_ms: AtomicU64,
}

impl Limiter {
    pub fn new(
        store: Arc<dyn Decide>,
        timeout: Option<Duration>,
        on_error: OnError,
        metrics: Arc<Metrics>,
    ) -> Self {
        Limiter {
            store,
            timeout,
            on_error,
            metrics,
            held: HeldSlots::default(),
            lines: Arc::default(),
            started: Instant::now(),
            last_logged_ms: AtomicU64::new(0),
        }
    }

    /// Decides and records a request's checks, timed and counted. `reset`: the caller shows
    /// when more quota frees up for requests that are allowed (the IETF fields).
    /// A request refused only by concurrency rules with a queue waits in line first
    /// ([`super::queue`]).
    pub async fn check(&self, checks: Vec<Check>, reset: bool) -> Verdict {
        let mode = Mode::RECORD.with_reset(reset);
        let result = match self.lines.waited_for(&checks) {
            // Others wait for a slot this request needs: it goes behind them.
            Some((check, queue)) => {
                let check = check.clone();
                self.wait_in_line(&checks, mode, &check, queue, None).await
            }
            None => match self.decide(&checks, mode).await {
                Ok(decisions) => match line_of(&checks, &decisions) {
                    Some((check, queue)) => {
                        let check = check.clone();
                        self.wait_in_line(&checks, mode, &check, queue, Some(decisions))
                            .await
                    }
                    None => Ok(decisions),
                },
                Err(e) => Err(e),
            },
        };
        match result {
            Ok(decisions) => {
                let outcome = Outcome::new(checks, decisions);
                for (check, decision) in outcome.iter() {
                    let result = outcome.result_of(check, decision);
                    self.metrics.count_decision(check, result);
                }
                Verdict::Decided(outcome)
            }
            Err(e) => {
                self.failed(&e);
                match self.on_error {
                    OnError::Allow => Verdict::FailOpen,
                    OnError::Deny => Verdict::FailClosed,
                }
            }
        }
    }

    /// One decision of a request's checks, timed: from what the store knows at once, else
    /// by asking it, under its time bound.
    pub(super) async fn decide(
        &self,
        checks: &[Check],
        mode: Mode,
    ) -> Result<Vec<Option<Decision>>, StoreError> {
        let start = Instant::now();
        let result = match self.store.decide_local(checks, mode) {
            Some(decisions) => Ok(decisions),
            None => self.bounded(self.store.decide(checks, mode)).await,
        };
        self.metrics.observe_check(start.elapsed());
        result
    }

    /// Settles recorded requests' reservations (contract §13), counting the units given
    /// back and charged; a store failure leaves them as reserved, and is counted and logged
    /// like any other. Runs off the request path: the store bounds the call itself.
    pub async fn settle(&self, settlements: Vec<Settlement>) {
        match self.store.settle(&settlements).await {
            Ok(given) => {
                for (s, given) in settlements.iter().zip(given) {
                    self.metrics.units.settled(s.check.rule, given);
                }
            }
            Err(e) => {
                self.failed(&e);
                for s in &settlements {
                    self.metrics
                        .units
                        .failed(s.check.rule, crate::settle::Failure::Store);
                }
            }
        }
    }

    /// What the checks would decide now, recording nothing and counting nothing.
    pub async fn explain(&self, checks: &[Check]) -> Result<Vec<Option<Decision>>, StoreError> {
        let result = self.bounded(self.store.decide(checks, Mode::DRY_RUN)).await;
        if let Err(e) = &result {
            self.failed(e);
        }
        result
    }

    /// Runs any store call under the store's time bound.
    pub async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match self.timeout {
            Some(limit) => tokio::time::timeout(limit, call)
                .await
                .unwrap_or(Err(StoreError::Timeout)),
            None => call.await,
        }
    }

    /// Counts and (at most once a second) logs a store failure.
    pub fn failed(&self, e: &StoreError) {
        self.metrics.count_store_error(e.kind());
        let now = self.started.elapsed().as_millis() as u64 + 1;
        let last = self.last_logged_ms.load(Ordering::Relaxed);
        if (last == 0 || now >= last + 1000)
            && self
                .last_logged_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let policy = match self.on_error {
                OnError::Allow => "allowing requests (on_error = \"allow\")",
                OnError::Deny => "denying requests with 503 (on_error = \"deny\")",
            };
            log::warn!("rate-limit store failed: {e}; {policy}");
        }
    }
}
