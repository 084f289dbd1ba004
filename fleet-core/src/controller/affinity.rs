//! Cache affinity: a claim that names an [`AffinityKey`] (a repository, a
//! cache) is sent to a node whose last claim named the same key, so its
//! caches are warm.
//!
//! Before the arbitration round, each key's claims are arbitrated over the
//! free nodes that last served that key alone (quotas and dollar caps hold
//! as in any round, with the holdings this pre-round adds). What is left
//! goes through the ordinary round. A pool with `affinity_wait_ms` lets a
//! claim whose key's nodes are all busy wait that long after it arrived
//! for one of them to free up ([`PendingReason::WaitingForAffinity`]);
//! no node is bought for it meanwhile, and the pool plans again when the
//! wait ends. Hints live in memory only: a new leader starts cold.

use std::collections::BTreeMap;

use super::Controller;
use crate::arbitrate::{
    ArbitrationInput, Assignment, NodeCapacity, PendingClaim, Usage, arbitrate,
};
use crate::ids::{AffinityKey, Millis, PoolName, Workspace};
use crate::money::Rounding;
use crate::protocol::{ClaimState, NodeState, PendingReason};

/// Per (pool, key): whether a node that served it has a free slot, and
/// whether one is busy.
#[derive(Debug, Clone, Copy, Default)]
struct Affine {
    free: bool,
    busy: bool,
}

impl Controller {
    /// Marks the pending claims that wait for a busy affine node, sets
    /// their reason, and when each pool must plan again for them. Returns
    /// whether any pool lets claims wait (then holds may have changed).
    pub(super) fn hold_for_affinity(&mut self, capacity: &[NodeCapacity], now: Millis) -> bool {
        for pool in self.pools.values_mut() {
            pool.affinity_wake = None;
        }
        let waits = self.pools.values().any(|p| p.spec.affinity_wait_ms > 0);
        if !waits {
            return false;
        }
        let free: BTreeMap<_, _> = capacity
            .iter()
            .filter(|n| n.free_slots > 0)
            .map(|n| (&n.id, n))
            .collect();
        let mut affine: BTreeMap<(PoolName, AffinityKey), Affine> = BTreeMap::new();
        for n in self.nodes.values() {
            let Some(key) = &n.last_affinity else {
                continue;
            };
            let entry = affine.entry((n.rec.pool.clone(), key.clone())).or_default();
            if free.contains_key(&n.rec.node) {
                entry.free = true;
            } else if n.rec.state == NodeState::Ready && n.occupied() > 0 {
                entry.busy = true;
            }
        }
        let pools = &mut self.pools;
        for (_, c) in self.claims.pending_mut() {
            let req = &c.rec.request;
            let wait = pools.get(&req.pool).map_or(0, |p| p.spec.affinity_wait_ms);
            let until = c.rec.enqueued_at.saturating_add(wait);
            let held = match &req.affinity {
                Some(key)
                    if wait > 0
                        && now < until
                        && (c.durable || c.fresh)
                        && c.reserved.is_none() =>
                {
                    let a = affine
                        .get(&(req.pool.clone(), key.clone()))
                        .copied()
                        .unwrap_or_default();
                    a.busy && !a.free
                }
                _ => false,
            };
            if held {
                c.affinity_until = Some(until);
                if c.rec.state == ClaimState::Pending {
                    c.rec.pending_reason = Some(PendingReason::WaitingForAffinity { until });
                }
                if let Some(p) = pools.get_mut(&c.rec.request.pool) {
                    p.affinity_wake = Some(p.affinity_wake.map_or(until, |w| w.min(until)));
                }
            } else {
                c.affinity_until = None;
            }
        }
        true
    }

    /// The grants of the affinity pre-round: per key, its claims over the
    /// free nodes that last served it. `keyed` names the claims of
    /// `pending` (by index) that carry a key. Takes their slots out of
    /// `capacity` and adds them to `usage`.
    pub(super) fn affine_grants(
        &self,
        pending: &[PendingClaim],
        keyed: &[(usize, AffinityKey)],
        capacity: &mut [NodeCapacity],
        usage: &mut BTreeMap<Workspace, Usage>,
    ) -> Vec<Assignment> {
        if keyed.is_empty() {
            return Vec::new();
        }
        let mut by_key: BTreeMap<&AffinityKey, Vec<PendingClaim>> = BTreeMap::new();
        for (i, key) in keyed {
            if let Some(p) = pending.get(*i) {
                by_key.entry(key).or_default().push(p.clone());
            }
        }
        let mut nodes_of: BTreeMap<&AffinityKey, Vec<usize>> = BTreeMap::new();
        for (i, n) in capacity.iter().enumerate() {
            if n.free_slots == 0 {
                continue;
            }
            if let Some(key) = self
                .nodes
                .get(&n.id)
                .and_then(|node| node.last_affinity.as_ref())
                && by_key.contains_key(key)
            {
                nodes_of.entry(key).or_default().push(i);
            }
        }
        let mut grants = Vec::new();
        for (key, claims) in by_key {
            let Some(at) = nodes_of.get(key) else {
                continue;
            };
            let nodes: Vec<NodeCapacity> = at.iter().map(|&i| capacity[i].clone()).collect();
            let outcome = arbitrate(ArbitrationInput {
                claims: &claims,
                nodes: &nodes,
                quotas: &self.quotas,
                usage,
            });
            for g in outcome.grants {
                let Some(&i) = at.iter().find(|&&i| capacity[i].id == g.node) else {
                    continue;
                };
                let n = &mut capacity[i];
                n.free_slots = n.free_slots.saturating_sub(1);
                let share = n
                    .price
                    .0
                    .mul_div(1, u64::from(n.slots.max(1)), Rounding::Up)
                    .unwrap_or(n.price.0);
                if let Some(c) = claims.iter().find(|c| c.id == g.claim) {
                    let u = usage.entry(c.workspace.clone()).or_default();
                    u.claims += 1;
                    u.hourly_spend = u.hourly_spend.saturating_add(share);
                }
                grants.push(g);
            }
        }
        grants
    }
}
