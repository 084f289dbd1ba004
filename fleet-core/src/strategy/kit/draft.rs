//! A plan being built, and the node predicates every count of capacity
//! uses.

use crate::ids::{InstanceType, Millis};
use crate::protocol::NodeState;
use crate::provider::Market;
use crate::strategy::{Action, NodeView, Plan, PoolView, Reason, SourceKind};

/// A plan being built. Tracks what the plan itself deletes, starts and
/// creates, so limits are checked against the pool *after* the plan.
#[derive(Debug)]
pub(in crate::strategy) struct Draft<'a> {
    pub(in crate::strategy) view: PoolView<'a>,
    actions: Vec<Action>,
    /// `reasons[i]` is why `actions[i]`.
    reasons: Vec<Reason>,
    removed: Vec<bool>,
    started: Vec<bool>,
    // Read by matching, which counts the slots of nodes this plan creates.
    pub(super) planned: Vec<InstanceType>,
    wake_at: Option<Millis>,
}

impl<'a> Draft<'a> {
    pub(in crate::strategy) fn new(view: &PoolView<'a>) -> Draft<'a> {
        Draft {
            view: *view,
            actions: Vec::new(),
            reasons: Vec::new(),
            removed: vec![false; view.nodes.len()],
            started: vec![false; view.nodes.len()],
            planned: Vec::new(),
            wake_at: None,
        }
    }

    /// Nodes that count against `max_nodes` once this plan is applied:
    /// every node not gone/deleting, minus the ones this plan deletes,
    /// plus the ones it creates.
    pub(in crate::strategy) fn live(&self) -> u32 {
        let existing = self
            .view
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, n)| !self.removed[*i] && is_live(n))
            .count();
        u32::try_from(existing + self.planned.len()).unwrap_or(u32::MAX)
    }

    /// How many more nodes `max_nodes` allows.
    pub(in crate::strategy) fn room(&self) -> u32 {
        self.view.spec.max_nodes.saturating_sub(self.live())
    }

    /// The fewest nodes the pool may keep (a misconfigured `min_nodes`
    /// above `max_nodes` yields to `max_nodes`).
    pub(in crate::strategy) fn floor(&self) -> u32 {
        self.view.spec.min_nodes.min(self.view.spec.max_nodes)
    }

    pub(in crate::strategy) fn is_removed(&self, i: usize) -> bool {
        self.removed[i]
    }

    pub(in crate::strategy) fn is_started(&self, i: usize) -> bool {
        self.started[i]
    }

    pub(in crate::strategy) fn delete(&mut self, i: usize, why: Reason) {
        if !self.removed[i] {
            self.removed[i] = true;
            let node = self.view.nodes[i].node.clone();
            self.push(Action::Delete { node }, why);
        }
    }

    pub(in crate::strategy) fn start(&mut self, i: usize, why: Reason) {
        if !self.started[i] {
            self.started[i] = true;
            let node = self.view.nodes[i].node.clone();
            self.push(Action::Start { node }, why);
        }
    }

    /// Creates a node if `max_nodes` allows; says whether it did.
    pub(in crate::strategy) fn create(
        &mut self,
        source: SourceKind,
        market: Market,
        size: &InstanceType,
        why: Reason,
    ) -> bool {
        if self.room() == 0 {
            return false;
        }
        self.planned.push(size.clone());
        let size = size.clone();
        self.push(
            Action::Create {
                source,
                market,
                size,
            },
            why,
        );
        true
    }

    pub(in crate::strategy) fn push(&mut self, action: Action, why: Reason) {
        self.actions.push(action);
        self.reasons.push(why);
    }

    /// Asks to be woken at `t` if that is still ahead.
    pub(in crate::strategy) fn wake(&mut self, t: Millis, now: Millis) {
        if t > now {
            self.wake_at = Some(self.wake_at.map_or(t, |w| w.min(t)));
        }
    }

    /// Lost and interrupted nodes serve nothing and are being replaced:
    /// delete them so they stop billing and stop blocking `max_nodes`.
    /// Retiring nodes (they served `max_uses`) go too, once idle: the
    /// plan then replaces them like any missing node.
    pub(in crate::strategy) fn delete_failed(&mut self) {
        for (i, n) in self.view.nodes.iter().enumerate() {
            let retired = n.retiring
                && (is_idle_ready(n) || (n.state == NodeState::Stopped && !self.started[i]));
            if retired {
                self.delete(i, Reason::Retired);
            } else if matches!(n.state, NodeState::Lost | NodeState::Interrupted) {
                self.delete(i, Reason::Failed { state: n.state });
            }
        }
    }

    /// Nodes this plan creates so far.
    pub(in crate::strategy) fn planned_count(&self) -> usize {
        self.planned.len()
    }

    /// Stopped nodes the provider cannot start (the pool moved to a
    /// provider or strategy without stop/start) serve nothing ever:
    /// delete them so always-on and fixed-size pools replace them.
    pub(in crate::strategy) fn delete_unstartable(&mut self) {
        if self.view.capabilities.stop_start {
            return;
        }
        for (i, n) in self.view.nodes.iter().enumerate() {
            if n.state == NodeState::Stopped {
                self.delete(i, Reason::Unstartable);
            }
        }
    }

    /// Creates nodes of `size` until `target` are live (used for
    /// `min_nodes` and always-on nodes), within `max_nodes`.
    pub(in crate::strategy) fn fill_to(
        &mut self,
        target: u32,
        source: SourceKind,
        market: Market,
        size: &InstanceType,
        why: &Reason,
    ) {
        while self.live() < target {
            if !self.create(source, market, size, why.clone()) {
                break;
            }
        }
    }

    /// Takes back deletions of `deleted` (most recently idle first) while
    /// the pool would end below `floor`: keeping an idle node is cheaper
    /// and faster than booting a new one for `min_nodes`.
    pub(in crate::strategy) fn restore_floor(&mut self, deleted: &[usize], floor: u32) {
        for &i in deleted.iter().rev() {
            if self.live() >= floor {
                break;
            }
            self.undelete(i);
        }
    }

    /// Takes back this plan's deletion of node `i`, if it made one.
    pub(in crate::strategy) fn undelete(&mut self, i: usize) {
        if self.removed[i] {
            self.removed[i] = false;
            let node = &self.view.nodes[i].node;
            if let Some(at) = self
                .actions
                .iter()
                .position(|a| matches!(a, Action::Delete { node: n } if n == node))
            {
                self.actions.remove(at);
                self.reasons.remove(at);
            }
        }
    }

    pub(in crate::strategy) fn finish(self) -> Plan {
        Plan {
            actions: self.actions,
            wake_at: self.wake_at,
            reasons: self.reasons,
        }
    }
}

/// Counts against `max_nodes`.
pub(in crate::strategy) fn is_live(n: &NodeView) -> bool {
    !matches!(n.state, NodeState::Gone | NodeState::Deleting)
}

/// Up, idle and taking claims: the only nodes a strategy stops, resizes,
/// snapshots or deletes for idleness.
pub(in crate::strategy) fn is_idle_ready(n: &NodeView) -> bool {
    n.state == NodeState::Ready && n.claims == 0
}

/// Since when `n` has been idle (falls back to when it became ready).
pub(in crate::strategy) fn idle_start(n: &NodeView) -> Millis {
    n.idle_since.unwrap_or(n.state_since)
}
