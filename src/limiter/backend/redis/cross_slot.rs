//! A request whose counter keys live on several Redis Cluster slots. One script can only
//! touch one slot, so each slot's checks get their own call, all at once.
//!
//! Recording, the request is first looked at on every slot, writing nothing: a request one
//! slot refuses is refused and never holds a place on another, where it could turn away a
//! request with room and leave that key remembered as full. Then every slot records it; if
//! one refuses now (another request took the last place in between), the slots that
//! recorded take it back (`lua/release.lua`). That second step runs in a task of its own, so
//! the take-back happens even when the caller's time bound ends first.

use std::sync::Arc;

use redis::cluster_routing::Slot;

use super::scripts::{Scripts, KEY_PREFIX};
use crate::limiter::{Check, Decision, Mode, StoreError};

/// Checks grouped by cluster slot, in the order their slots first appear.
pub fn by_slot(checks: &[Check]) -> Vec<Vec<usize>> {
    let mut groups: Vec<(Slot, Vec<usize>)> = Vec::new();
    for (i, check) in checks.iter().enumerate() {
        let slot = slot_of(&check.key);
        match groups.iter_mut().find(|(s, _)| *s == slot) {
            Some((_, g)) => g.push(i),
            None => groups.push((slot, vec![i])),
        }
    }
    groups.into_iter().map(|(_, g)| g).collect()
}

/// A counter key's cluster slot.
pub fn slot_of(key: &str) -> Slot {
    Slot::for_key(format!("{KEY_PREFIX}{key}"))
}

/// Decides `checks`, grouped by slot in `groups` (more than one).
pub async fn decide(
    scripts: &Arc<Scripts>,
    checks: &[Check],
    groups: Vec<Vec<usize>>,
    mode: Mode,
    member: String,
) -> Result<Vec<Decision>, StoreError> {
    if mode.record {
        let look = Mode {
            record: false,
            ..mode
        };
        let answer = call_slots(scripts, checks, &groups, look, &member, false).await;
        if let Some(e) = answer.failure {
            return Err(e);
        }
        if refused(checks, &answer.decisions) {
            return Ok(answer.decisions.into_iter().flatten().collect());
        }
        let (scripts, checks) = (scripts.clone(), checks.to_vec());
        return tokio::spawn(
            async move { record(&scripts, &checks, &groups, mode, &member).await },
        )
        .await
        .unwrap_or_else(|e| Err(StoreError::Reply(format!("recording failed: {e}"))));
    }
    let answer = call_slots(scripts, checks, &groups, mode, &member, false).await;
    answer.into_result()
}

/// Whether an enforced check was refused.
fn refused(checks: &[Check], decisions: &[Option<Decision>]) -> bool {
    checks
        .iter()
        .zip(decisions)
        .any(|(c, d)| !c.shadow && d.is_some_and(|d| !d.allowed))
}

/// Every slot's answer: each check's decision (`None` where its slot's call failed; its mark
/// finds the record for a release), and the last failure.
struct Answer {
    decisions: Vec<Option<Decision>>,
    failure: Option<StoreError>,
}

impl Answer {
    fn into_result(self) -> Result<Vec<Decision>, StoreError> {
        match self.failure {
            Some(e) => Err(e),
            None => Ok(self.decisions.into_iter().flatten().collect()),
        }
    }
}

async fn call_slots(
    scripts: &Scripts,
    checks: &[Check],
    groups: &[Vec<usize>],
    mode: Mode,
    member: &str,
    bounded: bool,
) -> Answer {
    let calls = groups.iter().map(|group| {
        let part: Vec<&Check> = group.iter().map(|&i| &checks[i]).collect();
        async move { scripts.call(&part, mode, member, bounded).await }
    });
    let replies = futures_util::future::join_all(calls).await;
    let mut answer = Answer {
        decisions: vec![None; checks.len()],
        failure: None,
    };
    for (group, reply) in groups.iter().zip(replies) {
        match reply {
            Ok(reply) => {
                for (k, &i) in group.iter().enumerate() {
                    answer.decisions[i] = Some(reply.decisions[k]);
                }
            }
            Err(e) => answer.failure = Some(e),
        }
    }
    answer
}

/// Records on every slot; if one refuses or fails, takes back what the others recorded.
async fn record(
    scripts: &Scripts,
    checks: &[Check],
    groups: &[Vec<usize>],
    mode: Mode,
    member: &str,
) -> Result<Vec<Decision>, StoreError> {
    // A task of its own, past the caller's bound: each call bounds itself.
    let mut answer = call_slots(scripts, checks, groups, mode, member, true).await;
    if !refused(checks, &answer.decisions) && answer.failure.is_none() {
        return answer.into_result();
    }
    // Every slot that answered without an enforced refusal recorded its checks with room:
    // take those back, one release call per slot as the check calls were. (A slot whose
    // call failed may have recorded too; its record stays, counting the client once too
    // often, never more than the limit.)
    let mut back: Vec<usize> = Vec::new();
    let releases = groups.iter().filter_map(|group| {
        let answered = group.iter().all(|&i| answer.decisions[i].is_some());
        let group_refused = group
            .iter()
            .any(|&i| !checks[i].shadow && answer.decisions[i].is_some_and(|d| !d.allowed));
        if !answered || group_refused {
            return None;
        }
        let recorded: Vec<usize> = group
            .iter()
            .copied()
            .filter(|&i| answer.decisions[i].is_some_and(|d| d.allowed))
            .collect();
        if recorded.is_empty() {
            return None;
        }
        back.extend(&recorded);
        let part: Vec<&Check> = recorded.iter().map(|&i| &checks[i]).collect();
        let marks: Vec<i64> = recorded
            .iter()
            .map(|&i| answer.decisions[i].map_or(0, |d| d.mark))
            .collect();
        Some(async move { scripts.release(&part, &marks, member).await })
    });
    for result in futures_util::future::join_all(releases.collect::<Vec<_>>()).await {
        if let Err(e) = result {
            // The record stays: the limit holds, the client is counted once too often.
            log::warn!("could not take back a refused request's record: {e}");
        }
    }
    for &i in &back {
        if let Some(d) = answer.decisions[i].as_mut() {
            let cost = u64::from(checks[i].cost.max(1));
            d.count = d.count.saturating_sub(cost);
            d.remaining += cost;
            d.mark = 0;
        }
    }
    answer.into_result()
}
