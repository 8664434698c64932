//! The store's Lua scripts and their calls: `lua/check.lua` decides a set of checks in one
//! call, `lua/release.lua` takes back what a check call recorded, `lua/count.lua` counts a
//! key for listings, `lua/lease.lua` takes a lease of slots and gives back what it left,
//! `lua/settle.lua` settles recorded requests' reservations once their responses are known.
//! Each is the algorithm files followed by its driver, embedded at build time, sent with
//! `EVALSHA` and loaded again on `NOSCRIPT`.

use std::sync::{Arc, LazyLock};

use redis::Script;

use super::blocked::RESET_CHANNEL;
use crate::limiter::algo::lua_dispatch;
use crate::limiter::{Check, Decision, Mode, Settlement, StoreError};
use crate::redis_conn::{Conn, Redis};

/// Prefix of every counter key in Redis (contract §4).
pub const KEY_PREFIX: &str = "ratelimit:";

/// A script: the protected call the algorithm files share, every registered algorithm and
/// the `ALGORITHMS` table generated from the registry ([`lua_dispatch`]), then the driver.
fn script(driver: &str) -> String {
    let mut text = String::from(include_str!("../../../../lua/typed.lua"));
    text.push_str(&lua_dispatch());
    text.push_str(driver);
    text
}

/// The check script: decides a request's checks.
pub static SCRIPT: LazyLock<String> =
    LazyLock::new(|| script(include_str!("../../../../lua/check.lua")));

/// Counts one key's live entries, for listing counters.
pub static COUNT_SCRIPT: LazyLock<String> =
    LazyLock::new(|| script(include_str!("../../../../lua/count.lua")));

/// Takes back a request's records on the slots that allowed it, when another refused it.
static RELEASE_SCRIPT: LazyLock<String> =
    LazyLock::new(|| script(include_str!("../../../../lua/release.lua")));

/// Settles reservations: gives back or charges the difference.
static SETTLE_SCRIPT: LazyLock<String> =
    LazyLock::new(|| script(include_str!("../../../../lua/settle.lua")));

/// Takes a lease of a counter's slots, and gives back the unused ones.
static LEASE_SCRIPT: LazyLock<String> =
    LazyLock::new(|| script(include_str!("../../../../lua/lease.lua")));

/// What a lease call got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Slots reserved for this node: at most the slots wanted.
    pub granted: u64,
    /// The counter before the lease.
    pub count: u64,
    /// Slots left to others after it.
    pub remaining: u64,
    /// When nothing was granted: how long until a slot frees.
    pub retry_after_ms: u64,
    /// When the lease ends, on the Redis server's clock (ms since the Unix epoch); at most
    /// the lease asked for.
    pub ends_ms: u64,
    /// What giving back needs to find the slots again.
    pub mark: i64,
    /// How long the lease lasts from the server's answer.
    pub left_ms: u64,
}

/// Integers per check in the check script's reply.
const REPLY_FIELDS: usize = 6;

/// One script call's answer for its checks: the decisions (each with its record's mark, for
/// a release or a settlement).
pub struct Reply {
    pub decisions: Vec<Decision>,
}

/// The check and release calls, on the Redis layer; shared with tasks that outlive a request.
pub struct Scripts {
    pub redis: Arc<Redis>,
    check: Script,
    release: Script,
    lease: Script,
    settle: Script,
}

impl Scripts {
    pub fn new(redis: Arc<Redis>) -> Scripts {
        Scripts {
            redis,
            check: Script::new(&SCRIPT),
            release: Script::new(&RELEASE_SCRIPT),
            lease: Script::new(&LEASE_SCRIPT),
            settle: Script::new(&SETTLE_SCRIPT),
        }
    }

    /// One script call over these checks (all in one slot on a cluster). `bounded`: within
    /// `timeout_ms` of its own; else the caller bounds it (a check runs under the limiter's).
    pub async fn call(
        &self,
        checks: &[&Check],
        mode: Mode,
        member: &str,
        bounded: bool,
    ) -> Result<Reply, StoreError> {
        let mut invocation = self.check.prepare_invoke();
        for check in checks {
            invocation.key(format!("{KEY_PREFIX}{}", check.key));
        }
        invocation
            .arg(u8::from(mode.record) | (u8::from(mode.reset) << 1))
            .arg(member);
        for check in checks {
            algorithm_args(&mut invocation, check);
            invocation
                .arg(u8::from(check.shadow))
                .arg(check.cost.max(1))
                .arg(check.wait.max_delay_ms);
        }
        // Once more on a broken connection: after an outage each thread's connection heals on
        // its next call, and this way that call is not lost. (A script that ran before the
        // connection broke may then count twice: never more than the limit, only less.)
        let invocation = &invocation;
        let call = |mut conn| async move { invocation.invoke_async(&mut conn).await };
        let reply: Vec<i64> = if bounded {
            self.redis.retried(self.redis.timeout(), call).await?
        } else {
            self.redis.attempts(call).await?
        };
        parse_reply(checks, &reply)
    }

    /// Takes back the records of checks that allowed a request another slot refused, and
    /// tells every node to forget those keys as blocked (a request racing this one may have
    /// been refused by the record being taken back).
    pub async fn release(
        &self,
        checks: &[&Check],
        marks: &[i64],
        member: &str,
    ) -> Result<(), StoreError> {
        let mut invocation = self.release.prepare_invoke();
        for check in checks {
            invocation.key(format!("{KEY_PREFIX}{}", check.key));
        }
        invocation.arg(member).arg(RESET_CHANNEL).arg(KEY_PREFIX);
        for (check, mark) in checks.iter().zip(marks) {
            algorithm_args(&mut invocation, check);
            invocation.arg(mark).arg(check.cost.max(1));
        }
        // Off the request path (in the recording task): the longer bound, so a take-back is
        // not given up on under load. Never retried: a sliding window's take-back that ran
        // twice (its reply lost) would free a place in use; one that failed only counts the
        // client once too often.
        let invocation = &invocation;
        self.redis
            .once(self.redis.slow_timeout(), |mut conn| async move {
                invocation.invoke_async::<i64>(&mut conn).await
            })
            .await
            .map(|_| ())
            .map_err(StoreError::from)
    }

    /// Settles these reservations (all in one slot on a cluster) in one call; returns the
    /// units given back per settlement (negative: charged). Off the request path, with the
    /// longer bound; never retried (a settlement that ran twice would give back twice).
    /// `owner`: the instance part of this node's member ids, which names a concurrency slot
    /// again with its mark.
    pub async fn settle(
        &self,
        settlements: &[&Settlement],
        owner: &str,
    ) -> Result<Vec<i64>, StoreError> {
        let mut invocation = self.settle.prepare_invoke();
        for s in settlements {
            invocation.key(format!("{KEY_PREFIX}{}", s.check.key));
        }
        invocation.arg(RESET_CHANNEL).arg(KEY_PREFIX).arg(owner);
        for s in settlements {
            algorithm_args(&mut invocation, &s.check);
            invocation
                .arg(s.mark)
                .arg(s.check.cost.max(1))
                .arg(s.actual)
                .arg(s.max_cost.max(1));
        }
        let invocation = &invocation;
        let given: Vec<i64> = self
            .redis
            .once(self.redis.slow_timeout(), |mut conn| async move {
                invocation.invoke_async(&mut conn).await
            })
            .await?;
        if given.len() != settlements.len() {
            return Err(StoreError::Reply(format!(
                "unexpected settle reply {given:?} for {} settlements",
                settlements.len()
            )));
        }
        Ok(given)
    }

    /// Reserves up to `wanted` of `check`'s slots for lease `id` (unique across nodes) of
    /// `lease_ms`, within `timeout_ms`; none unless at least the check's cost is left.
    pub async fn take(
        &self,
        check: &Check,
        wanted: u64,
        lease_ms: u64,
        id: &str,
    ) -> Result<Grant, StoreError> {
        // Retried after a broken connection: a take that ran twice only holds more slots.
        let reply = self
            .lease_call(check, "take", self.redis.timeout(), true, |i| {
                let least = u64::from(check.cost.max(1));
                i.arg(wanted.max(least))
                    .arg(lease_ms.max(1))
                    .arg(id)
                    .arg(least);
            })
            .await?;
        let n = |v: i64| v.max(0) as u64;
        match reply[..] {
            [granted, count, remaining, retry, ends, mark, left] => Ok(Grant {
                granted: n(granted),
                count: n(count),
                remaining: n(remaining),
                retry_after_ms: n(retry),
                ends_ms: n(ends),
                mark,
                left_ms: n(left),
            }),
            _ => Err(StoreError::Reply(format!(
                "unexpected lease reply {reply:?}"
            ))),
        }
    }

    /// Gives back `unused` of the `granted` slots of lease `id`; returns how many went back
    /// (with GCRA, none once another lease has been taken after this one).
    pub async fn give(
        &self,
        check: &Check,
        id: &str,
        grant: &Grant,
        unused: u64,
    ) -> Result<u64, StoreError> {
        // Never retried: a give that ran twice could free slots in use. One that failed
        // only keeps its slots out until they leave the window.
        let reply = self
            .lease_call(check, "give", self.redis.slow_timeout(), false, |i| {
                i.arg(id)
                    .arg(grant.granted)
                    .arg(unused.min(grant.granted))
                    .arg(grant.mark)
                    .arg(grant.ends_ms);
            })
            .await?;
        Ok(reply.first().map_or(0, |v| (*v).max(0) as u64))
    }

    /// One call of the lease script on `check`'s key: `op`, the algorithm's arguments, then
    /// what `args` adds; within `limit`, once more after a broken connection if `retry`.
    async fn lease_call(
        &self,
        check: &Check,
        op: &str,
        limit: std::time::Duration,
        retry: bool,
        args: impl FnOnce(&mut redis::ScriptInvocation<'_>),
    ) -> Result<Vec<i64>, StoreError> {
        let mut invocation = self.lease.prepare_invoke();
        invocation.key(format!("{KEY_PREFIX}{}", check.key)).arg(op);
        algorithm_args(&mut invocation, check);
        args(&mut invocation);
        let invocation = &invocation;
        let call = |mut conn: Conn| async move { invocation.invoke_async(&mut conn).await };
        if retry {
            Ok(self.redis.retried(limit, call).await?)
        } else {
            Ok(self.redis.once(limit, call).await?)
        }
    }
}

/// A check's algorithm, limit and window, as the scripts take them.
fn algorithm_args(invocation: &mut redis::ScriptInvocation<'_>, check: &Check) {
    invocation
        .arg(check.limit.algorithm.script_id())
        .arg(check.limit.quota.limit.get())
        .arg(check.limit.quota.window_ms.get());
}

fn parse_reply(checks: &[&Check], reply: &[i64]) -> Result<Reply, StoreError> {
    if reply.len() != checks.len() * REPLY_FIELDS {
        return Err(StoreError::Reply(format!(
            "unexpected script reply {reply:?} for {} checks",
            checks.len()
        )));
    }
    let n = |v: i64| v.max(0) as u64;
    let mut out = Reply {
        decisions: Vec::with_capacity(checks.len()),
    };
    for (check, r) in checks.iter().zip(reply.chunks_exact(REPLY_FIELDS)) {
        let allowed = r[0] == 1;
        // For a request with room, the fourth field is how long it is delayed.
        let (retry_after_ms, delay_ms) = if allowed { (0, n(r[3])) } else { (n(r[3]), 0) };
        out.decisions.push(Decision {
            allowed,
            count: n(r[1]),
            limit: check.limit.quota.limit.get(),
            remaining: n(r[2]),
            retry_after_ms,
            reset_ms: n(r[4]),
            mark: r[5],
            delay_ms,
        });
    }
    Ok(out)
}
