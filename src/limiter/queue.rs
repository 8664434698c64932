//! Waiting in line for a concurrency slot (contract §14, `queue`). A request refused only by
//! concurrency rules with a queue waits in the line of the first such key on this node, first
//! in, first out, for at most that queue's `max_wait_ms`; a line already `max_waiting` long
//! refuses at once. A request for a key others already wait for goes behind them without
//! asking, so a newcomer never takes the slot the head of the line is about to ask for.
//!
//! Only the head of a line asks the store again, when it is woken: by a slot of that key
//! freed on this node, by another node freeing one on a full key (heard through
//! [`super::Decide::freed`]), or at the latest every [`POLL`] should a message be missed.
//! When the head gets in (or gives up) it leaves, and the next one asks at once.
//!
//! A waiting request is a future parked on a [`Notify`]: it holds no worker thread and no
//! upstream connection. Lines are per node: across nodes, requests get slots in the order
//! their nodes ask.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::algo::concurrency::RETRY_MS;
use super::{Check, Decision, Limiter, Mode, Queue, StoreError};
use crate::sync::lock;

/// How often the head of a line asks again when nothing woke it.
pub const POLL: Duration = Duration::from_millis(100);

/// One key's line.
#[derive(Default)]
struct Line {
    tickets: Mutex<VecDeque<u64>>,
    notify: Notify,
}

/// Every line of this node, by counter key.
#[derive(Default)]
pub struct Lines {
    lines: Mutex<HashMap<String, Arc<Line>>>,
    last_ticket: AtomicU64,
    /// Whether the task that hears other nodes' freed slots runs.
    following: AtomicBool,
}

impl Lines {
    /// Joins the line of `key`, unless `max` are in it already.
    fn join(&self, key: &str, max: u32) -> Option<(Arc<Line>, u64)> {
        let mut lines = lock(&self.lines);
        let line = lines.entry(key.to_string()).or_default().clone();
        let mut tickets = lock(&line.tickets);
        // (A line made just now is empty, and `max` is at least 1: it is never left empty.)
        if tickets.len() >= max as usize {
            return None;
        }
        let ticket = self.last_ticket.fetch_add(1, Ordering::Relaxed) + 1;
        tickets.push_back(ticket);
        drop(tickets);
        Some((line, ticket))
    }

    /// Leaves the line (admitted, refused or gone), and wakes the rest: the next may ask.
    fn leave(&self, key: &str, line: &Line, ticket: u64) {
        let mut lines = lock(&self.lines);
        let mut tickets = lock(&line.tickets);
        tickets.retain(|t| *t != ticket);
        if tickets.is_empty() {
            lines.remove(key);
        }
        drop(tickets);
        line.notify.notify_waiters();
    }

    /// The check of these whose key has requests waiting in line on this node, with its
    /// queue: a new request goes behind them rather than take a slot first.
    pub fn waited_for<'c>(&self, checks: &'c [Check]) -> Option<(&'c Check, Queue)> {
        let mut queued = checks
            .iter()
            .filter(|c| !c.shadow && c.is_concurrency())
            .filter_map(|c| c.wait.queue.map(|q| (c, q)))
            .peekable();
        queued.peek()?;
        let lines = lock(&self.lines);
        queued.find(|(c, _)| lines.contains_key(c.key.as_str()))
    }

    /// A slot of `key` may have freed: its line's head asks again.
    pub fn wake(&self, key: &str) {
        if let Some(line) = lock(&self.lines).get(key) {
            line.notify.notify_waiters();
        }
    }
}

/// Leaves the line however the wait ends (the request may be dropped while it waits).
struct Place<'a> {
    limiter: &'a Limiter,
    rule: &'static str,
    key: &'a str,
    line: Arc<Line>,
    ticket: u64,
    since: Instant,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.limiter.lines.leave(self.key, &self.line, self.ticket);
        let waits = &self.limiter.metrics.waits;
        waits.waiting(self.rule, -1);
        waits.waited(self.rule, self.since.elapsed());
    }
}

/// The check whose line a refused request waits in: every enforced check that refused it is
/// a concurrency check with a queue; the first of them.
pub fn line_of<'c>(
    checks: &'c [Check],
    decisions: &[Option<Decision>],
) -> Option<(&'c Check, Queue)> {
    let mut refusing = checks
        .iter()
        .zip(decisions)
        .filter(|(c, d)| !c.shadow && !d.is_some_and(|d| d.allowed));
    let (first, _) = refusing.next()?;
    let queue = first.wait.queue.filter(|_| first.is_concurrency())?;
    refusing
        .all(|(c, d)| d.is_some() && c.is_concurrency() && c.wait.queue.is_some())
        .then_some((first, queue))
}

impl Limiter {
    /// Waits in line for a slot of `check`'s key (`decisions`: the refusal that sent the
    /// request here; `None` when it joined others waiting before it asked), then decides the
    /// request again; returns what the last decision said (still refused: the line was full,
    /// or the wait timed out).
    pub(super) async fn wait_in_line(
        &self,
        checks: &[Check],
        mode: Mode,
        check: &Check,
        queue: Queue,
        decisions: Option<Vec<Option<Decision>>>,
    ) -> Result<Vec<Option<Decision>>, StoreError> {
        // Not asked yet: refused by this check, as far as it knows.
        let mut decisions = decisions.unwrap_or_else(|| {
            let limit = check.limit.quota.limit.get();
            checks
                .iter()
                .map(|c| (c == check).then(|| Decision::refused(u64::from(limit), limit, RETRY_MS)))
                .collect()
        });
        let Some((line, ticket)) = self.lines.join(&check.key, queue.max_waiting) else {
            return Ok(decisions);
        };
        self.follow_freed();
        self.metrics.waits.waiting(check.rule, 1);
        let place = Place {
            limiter: self,
            rule: check.rule,
            key: &check.key,
            line,
            ticket,
            since: Instant::now(),
        };
        let deadline =
            tokio::time::Instant::from_std(place.since) + Duration::from_millis(queue.max_wait_ms);
        loop {
            let woken = place.line.notify.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let head = lock(&place.line.tickets).front() == Some(&place.ticket);
            if head {
                decisions = self.decide(checks, mode).await?;
                if line_of(checks, &decisions).is_none() {
                    // Admitted, or refused by a rule no line waits for.
                    return Ok(decisions);
                }
            }
            tokio::select! {
                _ = &mut woken => {}
                _ = tokio::time::sleep(POLL), if head => {}
                _ = tokio::time::sleep_until(deadline) => return Ok(decisions),
            }
        }
    }

    /// Hears, once per node, the keys other nodes freed slots in, and wakes their lines.
    fn follow_freed(&self) {
        if self.lines.following.swap(true, Ordering::Relaxed) {
            return;
        }
        let Some(mut freed) = self.store.freed() else {
            return;
        };
        let lines = self.lines.clone();
        tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            loop {
                match freed.recv().await {
                    Ok(key) => lines.wake(&key),
                    // Missed some: every head asks again.
                    Err(RecvError::Lagged(_)) => lines.wake_all(),
                    Err(RecvError::Closed) => return,
                }
            }
        });
    }
}

impl Lines {
    /// Every head asks again.
    fn wake_all(&self) {
        for line in lock(&self.lines).values() {
            line.notify.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_first_in_first_out_and_bounded() {
        let lines = Lines::default();
        let (a, ta) = lines.join("k", 2).unwrap();
        let (_, tb) = lines.join("k", 2).unwrap();
        assert!(lines.join("k", 2).is_none(), "full");
        assert_eq!(lock(&a.tickets).front(), Some(&ta));
        lines.leave("k", &a, ta);
        assert_eq!(lock(&a.tickets).front(), Some(&tb));
        assert!(
            lines.join("other", 2).is_some(),
            "another key has its own line"
        );
        lines.leave("k", &a, tb);
        assert_eq!(lock(&lines.lines).len(), 1, "only the other key's");
        assert!(!lock(&lines.lines).contains_key("k"), "an empty line goes");
    }
}
