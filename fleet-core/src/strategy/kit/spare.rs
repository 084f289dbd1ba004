//! Scheduled capacity's spare capacity: how many idle slots the policy in
//! force asks for ([`Capacity::spare`](crate::schedule::Capacity::spare)),
//! how many the pool has once a plan is applied, and keeping the
//! difference.
//!
//! Capacity is counted in claim slots, as GitLab's taskscaler counts it: a
//! node of `slots_per_node = 1` is one slot. Counting slots rather than
//! idle nodes makes the count independent of which node each waiting claim
//! is matched to, so planning again after a plan finds nothing to add.

use super::{Draft, Matching, is_idle_ready, is_live, match_pending};
use crate::ids::InstanceType;
use crate::protocol::NodeState;
use crate::provider::Market;
use crate::strategy::{NodeView, Reason, SourceKind};

/// Holds its claims for good: not on its way out (a lost or interrupted
/// node's claims are being revoked).
fn serving(n: &NodeView) -> bool {
    is_live(n) && !matches!(n.state, NodeState::Lost | NodeState::Interrupted)
}

/// Waiting claims the pool's nodes (up, coming up or created by the draft)
/// will serve.
fn matched(d: &Draft<'_>, m: &Matching) -> u32 {
    let n = d.view.pending.len().saturating_sub(m.unmatched.len());
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// Slots in use once the plan is applied: claims held, and the waiting
/// claims the pool will serve.
fn in_use(d: &Draft<'_>, m: &Matching) -> u32 {
    let held: u32 = d
        .view
        .nodes
        .iter()
        .enumerate()
        .filter(|(i, n)| !d.is_removed(*i) && serving(n))
        .map(|(_, n)| n.claims)
        .sum();
    held.saturating_add(matched(d, m))
}

/// Free slots once the plan is applied, before the waiting claims land: of
/// nodes up (or being snapshotted), coming up or started by the plan (none
/// of a retiring node), and of the nodes it creates.
fn supply(d: &Draft<'_>) -> u32 {
    let view = d.view;
    let existing: u32 = view
        .nodes
        .iter()
        .enumerate()
        .filter(|(i, n)| {
            // A node being snapshotted is ready again once it is taken.
            let up = matches!(
                n.state,
                NodeState::Ready | NodeState::Busy | NodeState::Snapshotting
            );
            !d.is_removed(*i) && !n.retiring && (up || n.state.is_coming_up() || d.is_started(*i))
        })
        .map(|(_, n)| n.slots.saturating_sub(n.claims))
        .sum();
    let planned = u32::try_from(d.planned_count()).unwrap_or(u32::MAX);
    existing.saturating_add(planned.saturating_mul(view.spec.slots_per_node.max(1)))
}

/// Free slots once the plan is applied and the waiting claims it covers
/// have landed.
pub(in crate::strategy) fn spare_count(d: &Draft<'_>, m: &Matching) -> u32 {
    supply(d).saturating_sub(matched(d, m))
}

/// The spare slots the policy in force asks for, with the matching `m`
/// taken after the plan's creates and starts for waiting claims.
pub(in crate::strategy) fn spare_target(d: &Draft<'_>, m: &Matching) -> u32 {
    d.view.capacity.spare(in_use(d, m))
}

/// Keeps the spare slots the policy in force asks for, once the plan has
/// covered the waiting claims: takes back this plan's idle deletions
/// (`deleted`, most recently idle first), then creates nodes of `size`,
/// never past `max_nodes`.
pub(in crate::strategy) fn keep_spare(
    d: &mut Draft<'_>,
    deleted: &[usize],
    source: SourceKind,
    market: Market,
    size: &InstanceType,
) {
    if d.view.capacity == Default::default() {
        return;
    }
    let m = match_pending(d);
    let target = spare_target(d, &m);
    // Counted once, then kept up to date as nodes are taken back and made.
    let matched = matched(d, &m);
    let mut supply = supply(d);
    let nodes = d.view.nodes;
    for &i in deleted.iter().rev() {
        if supply.saturating_sub(matched) >= target || d.room() == 0 {
            return;
        }
        let n = &nodes[i];
        if d.is_removed(i) && is_idle_ready(n) && !n.retiring {
            d.undelete(i);
            supply += n.slots.saturating_sub(n.claims);
        }
    }
    let per_node = d.view.spec.slots_per_node.max(1);
    while supply.saturating_sub(matched) < target {
        if !d.create(source, market, size, Reason::Spare { slots: target }) {
            break;
        }
        supply += per_node;
    }
}

/// Starts stopped nodes (in node order) until the spare slots reach
/// `want`, with the matching `m` taken after the plan's starts and creates
/// for waiting claims: how a pool that never grows past its size keeps
/// spare capacity.
pub(in crate::strategy) fn start_spare(d: &mut Draft<'_>, m: &Matching, want: u32) {
    let matched = matched(d, m);
    let mut supply = supply(d);
    for (i, n) in d.view.nodes.iter().enumerate() {
        if supply.saturating_sub(matched) >= want {
            return;
        }
        let startable = n.state == NodeState::Stopped && !n.retiring;
        if startable && !d.is_removed(i) && !d.is_started(i) {
            d.start(i, Reason::Spare { slots: want });
            supply += n.slots.saturating_sub(n.claims);
        }
    }
}
