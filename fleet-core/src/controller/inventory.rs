//! Reconciliation with the provider's inventory: adopting the provider ids
//! of our instances, noticing instances that vanished, and collecting
//! orphans (instances of this fleet no node record knows) once they are
//! `orphan_min_age_ms` old.
//!
//! "Ours" means tagged with this fleet's namespace *and* its fleet id: a
//! fleet sharing the account and the namespace (another daemon, another
//! store) has another fleet id, and its instances are neither adopted nor
//! collected, whatever their node ids.

use std::collections::BTreeSet;

use super::persist::Effect;
use super::{Command, Controller, Op, Orphan, ProviderCall};
use crate::ids::{Millis, NodeId};
use crate::protocol::NodeState;
use crate::provider::{Instance, InstanceRef, InstanceState, TAG_FLEET, TAG_NAMESPACE};

impl Controller {
    /// New prices for the types the pools use (a type the provider no
    /// longer lists keeps its last price; no type is added or removed).
    pub(super) fn on_offerings(&mut self, offerings: &[crate::provider::Offering]) {
        for pool in self.pools.values_mut() {
            for o in &mut pool.offerings {
                if let Some(new) = offerings
                    .iter()
                    .find(|n| n.instance_type == o.instance_type)
                {
                    o.on_demand = new.on_demand;
                    o.spot = new.spot.clone();
                }
            }
        }
    }

    /// Adopts known instances, notices vanished ones, tracks orphans.
    pub(super) fn on_inventory(
        &mut self,
        instances: Vec<Instance>,
        now: Millis,
        out: &mut Vec<Command>,
    ) {
        let mut seen = BTreeSet::new();
        for i in instances {
            if !self.is_ours(&i) || i.state == InstanceState::Terminated {
                continue;
            }
            seen.insert(i.node.clone());
            if let Some(n) = self.nodes.get_mut(&i.node) {
                if n.rec.provider_id.is_none() {
                    n.rec.provider_id = Some(i.provider_id.clone());
                    let id = i.node.clone();
                    self.save_node(&id, Vec::new(), now, out);
                }
                continue;
            }
            self.orphans.entry(i.node.clone()).or_insert(Orphan {
                instance: i,
                first_seen: now,
                deleting: false,
            });
        }
        // Orphans that vanished by themselves need no collecting.
        self.orphans.retain(|id, o| o.deleting || seen.contains(id));
        if let Some(restored) = self.restored_nodes.take() {
            // The first inventory since the start: what it recovered.
            let adopted = restored.iter().filter(|n| seen.contains(*n)).count() as u64;
            self.replay.nodes_adopted = adopted;
            self.replay.nodes_vanished = restored.len() as u64 - adopted;
            self.replay.orphans_found = self.orphans.len() as u64;
            self.replay.first_inventory_at = Some(now);
        }
        let vanished: Vec<NodeId> = self
            .nodes
            .values()
            .filter(|n| {
                n.op.is_none()
                    && n.rec.provider_id.is_some()
                    && !seen.contains(&n.rec.node)
                    && !matches!(
                        n.rec.state,
                        NodeState::Requested
                            | NodeState::Provisioning
                            | NodeState::Gone
                            | NodeState::Lost
                    )
            })
            .map(|n| n.rec.node.clone())
            .collect();
        for id in vanished {
            let stopped_or_deleting = self
                .nodes
                .get(&id)
                .is_some_and(|n| matches!(n.rec.state, NodeState::Stopped | NodeState::Deleting));
            if stopped_or_deleting {
                self.set_state(&id, NodeState::Gone, now);
                let effect = Effect::NodeForgotten { node: id.clone() };
                self.save_node(&id, vec![effect], now, out);
            } else {
                self.node_lost(&id, now, out);
            }
        }
    }

    /// Whether an instance carries this fleet's namespace and fleet id.
    fn is_ours(&self, i: &Instance) -> bool {
        i.tags.get(TAG_NAMESPACE).map(String::as_str) == Some(self.namespace.as_str())
            && i.tags.get(TAG_FLEET).map(String::as_str) == Some(self.fleet_id.as_str())
    }

    pub(super) fn orphan_due(&self, o: &Orphan) -> Millis {
        o.instance
            .created_at
            .max(o.first_seen)
            .saturating_add(self.timing.orphan_min_age_ms)
    }

    pub(super) fn orphan_timers(&mut self, now: Millis, out: &mut Vec<Command>) {
        // An id a node of ours has taken since it was listed (a store
        // rolled back hands out its epoch and sequence again, and the
        // provider's create adopts the instance by id) is ours, not an
        // orphan.
        let nodes = &self.nodes;
        self.orphans
            .retain(|id, o| o.deleting || !nodes.contains_key(id));
        let due: Vec<InstanceRef> = self
            .orphans
            .values()
            .filter(|o| !o.deleting && self.orphan_due(o) <= now)
            .map(|o| o.instance.as_ref())
            .collect();
        for r in due {
            if let Some(o) = self.orphans.get_mut(&r.node) {
                o.deleting = true;
            }
            let op = self.next_op_id();
            let call = ProviderCall::Delete(r);
            self.ops.insert(
                op,
                Op {
                    call: call.clone(),
                    attempt: 1,
                },
            );
            out.push(Command::Provider { op, call });
        }
    }

    /// The delete of an orphan finished: forgotten when `gone`, else
    /// collected again once it is old enough counting from now.
    pub(super) fn orphan_deleted(&mut self, id: &NodeId, gone: bool, now: Millis) {
        if gone {
            if self.orphans.remove(id).is_some() {
                self.replay.orphans_collected += 1;
            }
        } else if let Some(orphan) = self.orphans.get_mut(id) {
            orphan.deleting = false;
            orphan.first_seen = now;
        }
    }
}
