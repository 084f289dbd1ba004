//! Nodes on their way out while still up: those that served their pool's
//! `max_uses`, and drifted ones chosen for replacement.
//!
//! A node has drifted when its pool would no longer launch it as it is:
//! its instance type is not among the pool's, it booted from another image,
//! from a snapshot older than the pool's current one, or under another
//! `revision` of the launch configuration. At most `drift_replacements`
//! drifted nodes are replaced at once — idle ones first, then by node id —
//! counting those already being deleted. A chosen node takes no new claim
//! (it is [`NodeView::retiring`](crate::strategy::NodeView::retiring)); the
//! strategy deletes it once idle and replaces it like any missing node, so
//! a busy node goes only after its claims end.

use std::collections::{BTreeMap, BTreeSet};

use super::{Controller, Node, Pool};
use crate::ids::{NodeId, PoolName};
use crate::protocol::NodeState;
use crate::provider::BootSource;

impl Controller {
    /// The nodes of `pool` that take no new claim.
    pub(super) fn retiring(&self, pool: &Pool) -> BTreeSet<NodeId> {
        let name = &pool.spec.name;
        let mut out = BTreeSet::new();
        // The common case, asked on every round: no use limit, no drift.
        if pool.spec.max_uses.is_none() && !self.nodes.values().any(|n| n.drifted) {
            return out;
        }
        let mut drifted: Vec<(bool, &NodeId)> = Vec::new();
        let mut replacing = 0u32;
        for n in self.nodes.values().filter(|n| &n.rec.pool == name) {
            if matches!(n.rec.state, NodeState::Gone) {
                continue;
            }
            if pool.spec.max_uses.is_some_and(|m| n.rec.uses >= m) {
                out.insert(n.rec.node.clone());
                continue;
            }
            if !n.drifted {
                continue;
            }
            if n.rec.state == NodeState::Deleting {
                replacing += 1;
            } else {
                drifted.push((n.occupied() > 0, &n.rec.node));
            }
        }
        drifted.sort_unstable();
        let room = pool.spec.drift_replacements.saturating_sub(replacing);
        for (_, node) in drifted.into_iter().take(room as usize) {
            out.insert(node.clone());
        }
        out
    }
}

impl Controller {
    /// Judges again whether `id` has drifted (its record changed). Kept on
    /// the node: arbitration and planning ask on every round, the answer
    /// changes only when the record or the pool's snapshot does.
    pub(super) fn refresh_drift(&mut self, id: &NodeId) {
        if let Some(n) = self.nodes.get_mut(id) {
            n.drifted = drifted_in(&self.pools, n);
            n.drift_stale = false;
        }
    }

    /// Judges again every node of `pool` (its snapshot changed), or of
    /// every pool.
    pub(super) fn refresh_pool_drift(&mut self, pool: Option<&PoolName>) {
        let ids: Vec<NodeId> = self
            .nodes
            .values()
            .filter(|n| pool.is_none_or(|p| &n.rec.pool == p))
            .map(|n| n.rec.node.clone())
            .collect();
        for id in ids {
            self.refresh_drift(&id);
        }
    }
}

/// Whether `n`'s pool (of `pools`) would launch it differently now.
pub(super) fn drifted_in(pools: &BTreeMap<PoolName, Pool>, n: &Node) -> bool {
    pools.get(&n.rec.pool).is_some_and(|p| has_drifted(p, n))
}

/// Whether the pool would launch `n` differently now.
fn has_drifted(pool: &Pool, n: &Node) -> bool {
    let spec = &pool.spec;
    if !spec.instance_types.contains(&n.rec.instance_type) || n.rec.revision != spec.revision {
        return true;
    }
    match &n.rec.source {
        BootSource::Image { image } => image != &spec.image,
        BootSource::Snapshot(s) => pool
            .snapshot
            .as_ref()
            .is_some_and(|now| now.id != s.id && now.created_at > s.created_at),
    }
}
