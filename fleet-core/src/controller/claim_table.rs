//! The controller's claims by id, the pending ones kept apart.
//!
//! Every decision round walks the pending claims (arbitration, the demand
//! each pool plans for, budgets, affinity). Kept as a set of ids beside
//! one map, each step of that walk was a lookup by id: string compares
//! down a tree: 14 % of a simulated year where claims queue (always_on_resize).
//! Here the walk reads the pending map itself. A claim moves between the
//! two maps when its record is written in or out of state pending (as the
//! id set was updated before), so membership means the same as before.

use std::collections::BTreeMap;
use std::collections::btree_map;

use super::Claim;
use crate::ids::ClaimId;

#[derive(Debug, Default)]
pub(super) struct ClaimTable {
    /// Claims in state pending (as last written or accepted).
    pending: BTreeMap<ClaimId, Box<Claim>>,
    /// Every other claim: holding a node, or ended and retained a while.
    /// Both maps box their claims: a claim is 700 bytes, and a tree's leaf
    /// shifts its neighbours' values on every insert and remove.
    rest: BTreeMap<ClaimId, Box<Claim>>,
}

impl ClaimTable {
    pub(super) fn get(&self, id: &ClaimId) -> Option<&Claim> {
        self.pending
            .get(id)
            .or_else(|| self.rest.get(id))
            .map(|c| &**c)
    }

    pub(super) fn get_mut(&mut self, id: &ClaimId) -> Option<&mut Claim> {
        match self.pending.get_mut(id) {
            Some(c) => Some(c),
            None => self.rest.get_mut(id).map(|c| &mut **c),
        }
    }

    /// Adds (or replaces) a claim, pending or not.
    pub(super) fn insert(&mut self, id: ClaimId, claim: Claim, pending: bool) {
        self.remove(&id);
        if pending {
            self.pending.insert(id, Box::new(claim));
        } else {
            self.rest.insert(id, Box::new(claim));
        }
    }

    pub(super) fn remove(&mut self, id: &ClaimId) -> Option<Claim> {
        self.pending
            .remove(id)
            .or_else(|| self.rest.remove(id))
            .map(|c| *c)
    }

    /// Moves a known claim in or out of the pending ones.
    pub(super) fn set_pending(&mut self, id: &ClaimId, pending: bool) {
        let (from, to) = if pending {
            (&mut self.rest, &mut self.pending)
        } else {
            (&mut self.pending, &mut self.rest)
        };
        if let Some((id, claim)) = from.remove_entry(id) {
            to.insert(id, claim);
        }
    }

    /// The pending claims, by id.
    pub(super) fn pending(&self) -> btree_map::Iter<'_, ClaimId, Box<Claim>> {
        self.pending.iter()
    }

    /// The pending claims, by id, to change in place.
    pub(super) fn pending_mut(&mut self) -> btree_map::IterMut<'_, ClaimId, Box<Claim>> {
        self.pending.iter_mut()
    }

    pub(super) fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Every claim, by id.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&ClaimId, &Box<Claim>)> {
        let mut a = self.pending.iter().peekable();
        let mut b = self.rest.iter().peekable();
        std::iter::from_fn(move || match (a.peek(), b.peek()) {
            (Some((x, _)), Some((y, _))) if x < y => a.next(),
            (Some(_), None) => a.next(),
            _ => b.next(),
        })
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &Claim> {
        self.iter().map(|(_, c)| &**c)
    }

    pub(super) fn keys(&self) -> impl Iterator<Item = &ClaimId> {
        self.iter().map(|(id, _)| id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{Epoch, PoolName, Workspace};
    use crate::protocol::{ClaimRecord, ClaimRequest, ClaimState, Requirements};

    fn cid(s: &str) -> ClaimId {
        ClaimId::new(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn claim(id: &str) -> (ClaimId, Claim) {
        let id = cid(id);
        let rec = ClaimRecord {
            request: ClaimRequest {
                claim_id: id.clone(),
                workspace: Workspace::new("ws").unwrap_or_else(|e| panic!("{e}")),
                pool: PoolName::new("ci").unwrap_or_else(|e| panic!("{e}")),
                requirements: Requirements::default(),
                priority: 0,
                lease_ttl_ms: 1_000,
                max_wait_ms: None,
                recipient: None,
                affinity: None,
            },
            state: ClaimState::Pending,
            enqueued_at: 0,
            node: None,
            endpoint: None,
            granted_at: None,
            expires_at: None,
            credentials: None,
            pending_reason: None,
            ended_at: None,
            epoch: Epoch(1),
        };
        (id, Claim::stored_record(rec))
    }

    fn ids<'a>(it: impl Iterator<Item = &'a ClaimId>) -> Vec<&'a str> {
        it.map(ClaimId::as_str).collect()
    }

    #[test]
    fn every_claim_is_listed_once_in_id_order_whichever_map_holds_it() {
        let mut t = ClaimTable::default();
        for (name, pending) in [
            ("c", true),
            ("a", false),
            ("e", false),
            ("b", true),
            ("d", false),
        ] {
            let (id, c) = claim(name);
            t.insert(id, c, pending);
        }
        assert_eq!(ids(t.keys()), ["a", "b", "c", "d", "e"]);
        assert_eq!(ids(t.pending().map(|(id, _)| id)), ["b", "c"]);
        assert_eq!(t.pending_len(), 2);

        // Moves both ways keep every claim, once.
        let a = cid("a");
        let c = cid("c");
        t.set_pending(&a, true);
        t.set_pending(&c, false);
        assert_eq!(ids(t.pending().map(|(id, _)| id)), ["a", "b"]);
        assert_eq!(ids(t.keys()), ["a", "b", "c", "d", "e"]);

        // Setting what already holds moves nothing.
        t.set_pending(&a, true);
        assert_eq!(t.pending_len(), 2);
    }

    #[test]
    fn lookups_reach_both_maps_and_a_replaced_claim_is_not_kept_twice() {
        let mut t = ClaimTable::default();
        let (x, cx) = claim("x");
        let (y, cy) = claim("y");
        t.insert(x.clone(), cx, true);
        t.insert(y.clone(), cy, false);
        assert!(t.get(&x).is_some() && t.get(&y).is_some());
        if let Some(c) = t.get_mut(&y) {
            c.budget_held = true;
        }
        assert!(t.get(&y).is_some_and(|c| c.budget_held));

        // The same id inserted again, now not pending: one claim, not two.
        let (_, again) = claim("x");
        t.insert(x.clone(), again, false);
        assert_eq!(ids(t.keys()), ["x", "y"]);
        assert_eq!(t.pending_len(), 0);

        assert!(t.remove(&x).is_some());
        assert!(t.remove(&x).is_none());
        assert_eq!(ids(t.keys()), ["y"]);
        assert_eq!(t.values().count(), 1);
    }
}
