//! The node state machine: provider calls and their results, agent
//! sessions, heartbeat and boot timeouts, spot interruptions. Pools decide
//! which nodes to have in `planning.rs`; the provider's inventory is
//! reconciled in `inventory.rs`.

use std::collections::BTreeMap;

use super::persist::{Effect, TimerKey};
use super::{Alert, Command, Controller, Node, Op, ProviderCall, ProviderOutcome};
use crate::ids::{ClaimId, Millis, NodeId, PoolName};
use crate::protocol::{
    AgentMsg, ClaimState, DaemonMsg, NodeRecord, NodeState, PoolRecord, Record, RevokeReason,
};
use crate::provider::{
    InstanceRef, InstanceState, NodeSpec, ProviderError, TAG_FLEET, TAG_NAMESPACE, TAG_NODE,
    TAG_POOL,
};
use crate::subjects::Subjects;
use crate::transport::{Outbound, Peer};

/// Retryable provider failures are retried this many times before they count
/// as permanent.
const MAX_PROVIDER_ATTEMPTS: u32 = 8;

impl Controller {
    pub(super) fn restore_node(&mut self, rec: NodeRecord, now: Millis) {
        if rec.state == NodeState::Gone {
            return;
        }
        if rec.epoch == self.epoch {
            // Never mint an id this epoch already used.
            if let Some(seq) = rec
                .node
                .as_str()
                .rsplit('-')
                .next()
                .and_then(|s| s.parse::<u64>().ok())
            {
                self.next_node_seq = self.next_node_seq.max(seq + 1);
            }
        }
        // Interrupted calls are issued again; all of them are idempotent.
        let call = match rec.state {
            NodeState::Requested | NodeState::Provisioning => {
                Some(ProviderCall::Create(self.spec_of(&rec)))
            }
            NodeState::Starting => instance_ref(&rec).map(ProviderCall::Start),
            NodeState::Stopping => instance_ref(&rec).map(ProviderCall::Stop),
            NodeState::Resizing => {
                instance_ref(&rec).map(|i| ProviderCall::Resize(i, rec.instance_type.clone()))
            }
            NodeState::Snapshotting => instance_ref(&rec).map(ProviderCall::Snapshot),
            NodeState::Deleting => instance_ref(&rec).map(ProviderCall::Delete),
            _ => None,
        };
        let mut node = Node::new(rec, now, true);
        node.idle_since = (node.rec.state == NodeState::Ready).then_some(now);
        node.retry = call.map(|c| (now, c, 0));
        let (id, state) = (node.rec.node.clone(), node.rec.state);
        self.nodes.insert(id.clone(), node);
        // The ledger is not persisted: it counts from the restore on.
        self.bill_transition(&id, NodeState::Requested, state, now);
    }

    pub(super) fn spec_of(&self, rec: &NodeRecord) -> NodeSpec {
        let mut tags = BTreeMap::new();
        tags.insert(TAG_NODE.to_owned(), rec.node.to_string());
        tags.insert(TAG_POOL.to_owned(), rec.pool.to_string());
        tags.insert(TAG_NAMESPACE.to_owned(), self.namespace.clone());
        tags.insert(TAG_FLEET.to_owned(), self.fleet_id.to_string());
        NodeSpec {
            node: rec.node.clone(),
            pool: rec.pool.clone(),
            instance_type: rec.instance_type.clone(),
            market: rec.market,
            source: rec.source.clone(),
            tags,
            // The driver mints the single-use token: the core has no randomness.
            bootstrap_token: None,
        }
    }

    pub(super) fn node_deadline(&self, n: &Node) -> Option<Millis> {
        let mut at = n.retry.as_ref().map(|(t, _, _)| *t);
        let timeout = match n.rec.state {
            NodeState::Booting => Some(
                n.rec
                    .state_since
                    .saturating_add(self.timing.boot_timeout_ms),
            ),
            NodeState::Ready | NodeState::Busy | NodeState::Draining => {
                Some(n.last_seen.saturating_add(self.timing.heartbeat_timeout_ms))
            }
            _ => None,
        };
        if let Some(t) = timeout {
            at = Some(at.map_or(t, |a| a.min(t)));
        }
        at
    }

    pub(super) fn touch_node(&mut self, id: &NodeId) {
        let at = self.nodes.get(id).and_then(|n| self.node_deadline(n));
        self.timers.set_node(id, at);
    }

    /// Moves a node to `to`, keeping the cost ledger in step, and has the
    /// round decide again unless the node only took a step on its way up
    /// (requested → provisioning → booting, starting → booting): such a
    /// step adds no free slot and no live node, so arbitration has nothing
    /// new, and a strategy counts a node on its way up the same in each of
    /// these states (see [`crate::strategy::Strategy::plan`]).
    pub(super) fn set_state(&mut self, id: &NodeId, to: NodeState, now: Millis) {
        let Some(from) = self.move_node(id, to, now) else {
            return;
        };
        if !(from.is_coming_up() && to.is_coming_up()) {
            self.decide_again();
        }
    }

    /// Moves a node to `to`, keeping the cost ledger in step; returns the
    /// state it left. Asks for no decision by itself.
    fn move_node(&mut self, id: &NodeId, to: NodeState, now: Millis) -> Option<NodeState> {
        let from = self.nodes.get(id).map(|n| n.rec.state)?;
        self.bill_transition(id, from, to, now);
        if let Some(n) = self.nodes.get_mut(id) {
            n.rec.state = to;
            n.rec.state_since = now;
            n.rec.epoch = self.epoch;
            n.idle_since = (to == NodeState::Ready && n.occupied() == 0).then_some(now);
        }
        Some(from)
    }

    /// Queues the write of a node's record.
    pub(super) fn save_node(
        &mut self,
        id: &NodeId,
        effects: Vec<Effect>,
        now: Millis,
        out: &mut Vec<Command>,
    ) {
        let epoch = self.epoch;
        let Some(n) = self.nodes.get_mut(id) else {
            return;
        };
        // Every write carries its writer's epoch (a driver tells its own
        // writes from another leader's by it).
        n.rec.epoch = epoch;
        // Judged again only when the record's type, source or revision
        // changed: comparing the image names on every write of every node
        // was 3 % of a simulated year (cold strings). The pool's own
        // changes judge its nodes again (`refresh_pool_drift`).
        if n.drift_stale {
            n.drifted = super::drift::drifted_in(&self.pools, n);
            n.drift_stale = false;
        }
        debug_assert_eq!(
            n.drifted,
            super::drift::drifted_in(&self.pools, n),
            "node {id}: its type, source or revision changed without drift_stale"
        );
        let key = Subjects::node_key(&n.rec.pool, id);
        let value = if n.rec.state == NodeState::Gone {
            None
        } else {
            Some(Record::Node(n.rec.clone()))
        };
        if let Some(done) = self.writes.write(key, value, effects, out) {
            self.run_effects(done, now, out);
        }
        self.touch_node(id);
    }

    pub(super) fn node_effect(&mut self, effect: Effect, now: Millis, out: &mut Vec<Command>) {
        match effect {
            Effect::NodeCall { node, call } => {
                let Some(n) = self.nodes.get_mut(&node) else {
                    return;
                };
                n.durable = true;
                if n.rec.state == NodeState::Requested {
                    self.set_state(&node, NodeState::Provisioning, now);
                }
                self.issue(call, 1, out);
            }
            Effect::NodeForgotten { node }
                if self
                    .nodes
                    .get(&node)
                    .is_some_and(|n| n.rec.state == NodeState::Gone) =>
            {
                self.nodes.remove(&node);
                self.ledger.forget_node(&node, now);
                self.timers.set(TimerKey::Node(node), None);
            }
            _ => {}
        }
    }

    fn issue(&mut self, call: ProviderCall, attempt: u32, out: &mut Vec<Command>) {
        let op = self.next_op_id();
        if let Some(n) = self.nodes.get_mut(call.node()) {
            n.op = Some(op);
            n.retry = None;
        }
        self.ops.insert(
            op,
            Op {
                call: call.clone(),
                attempt,
            },
        );
        out.push(Command::Provider { op, call });
    }

    pub(super) fn node_timer(&mut self, id: &NodeId, now: Millis, out: &mut Vec<Command>) {
        let Some(n) = self.nodes.get_mut(id) else {
            return;
        };
        if n.retry.as_ref().is_some_and(|(at, _, _)| *at <= now)
            && let Some((_, call, attempt)) = n.retry.take()
        {
            self.issue(call, attempt.max(1), out);
        }
        let Some(n) = self.nodes.get(id) else {
            return;
        };
        let timed_out = match n.rec.state {
            NodeState::Booting => {
                n.rec
                    .state_since
                    .saturating_add(self.timing.boot_timeout_ms)
                    <= now
            }
            NodeState::Ready | NodeState::Busy | NodeState::Draining => {
                n.last_seen.saturating_add(self.timing.heartbeat_timeout_ms) <= now
            }
            _ => false,
        };
        if timed_out {
            self.node_lost(id, now, out);
        } else {
            self.touch_node(id);
        }
    }

    /// Ends every claim a node holds with `reason`.
    fn revoke_claims_of(
        &mut self,
        id: &NodeId,
        reason: RevokeReason,
        now: Millis,
        out: &mut Vec<Command>,
    ) {
        let held: Vec<ClaimId> = self
            .nodes
            .get(id)
            .map(|n| n.claims.iter().cloned().collect())
            .unwrap_or_default();
        for claim in held {
            let state = ClaimState::Revoked {
                reason: reason.clone(),
            };
            self.end_claim(&claim, state, None, now, out);
        }
    }

    pub(super) fn node_lost(&mut self, id: &NodeId, now: Millis, out: &mut Vec<Command>) {
        let Some(n) = self.nodes.get(id) else {
            return;
        };
        let state = n.rec.state;
        let pool = n.rec.pool.clone();
        out.push(Command::Alert(Alert::NodeLost {
            node: id.clone(),
            state,
        }));
        self.ledger.lost(&pool);
        self.set_state(id, NodeState::Lost, now);
        self.save_node(id, Vec::new(), now, out);
        self.revoke_claims_of(id, RevokeReason::NodeLost, now, out);
        self.requeue_jobs_of(id, "node lost", now, out);
    }

    pub(super) fn on_agent(
        &mut self,
        id: NodeId,
        msg: AgentMsg,
        now: Millis,
        out: &mut Vec<Command>,
    ) {
        let Some(n) = self.nodes.get_mut(&id) else {
            out.push(Command::Alert(Alert::UnknownAgent { node: id.clone() }));
            out.push(Command::Send {
                to: Peer::Node(id),
                msg: Outbound::Agent(DaemonMsg::Drain),
            });
            return;
        };
        n.last_seen = now;
        match msg {
            AgentMsg::Hello {
                gateway,
                agent_version,
                ..
            } => {
                n.connected = true;
                n.agent_version = Some(agent_version);
                let endpoint_changed = gateway.is_some() && n.rec.endpoint != gateway;
                if endpoint_changed {
                    n.rec.endpoint = gateway;
                }
                let state = n.rec.state;
                let comes_up =
                    matches!(
                        state,
                        NodeState::Booting | NodeState::Lost | NodeState::Stopped
                    ) || (matches!(state, NodeState::Provisioning | NodeState::Starting)
                        && n.op.is_none());
                if comes_up {
                    self.set_state(&id, NodeState::Ready, now);
                }
                if comes_up || endpoint_changed {
                    self.save_node(&id, Vec::new(), now, out);
                }
                // A reconnecting agent may have lost its gateway state, and
                // commands sent while it was away.
                self.reactivate(&id, out);
                self.resend_commands(&id, out);
                self.decide_again();
            }
            AgentMsg::Heartbeat { .. } => {
                if n.rec.state == NodeState::Lost && n.connected {
                    self.set_state(&id, NodeState::Ready, now);
                    self.save_node(&id, Vec::new(), now, out);
                }
            }
            AgentMsg::Interrupted { deadline } => {
                if n.rec.state != NodeState::Interrupted {
                    let pool = n.rec.pool.clone();
                    self.ledger.interrupted(&pool);
                    self.set_state(&id, NodeState::Interrupted, now);
                    self.save_node(&id, Vec::new(), now, out);
                    self.revoke_claims_of(
                        &id,
                        RevokeReason::SpotInterrupted { deadline },
                        now,
                        out,
                    );
                }
            }
            AgentMsg::Draining { .. } => {
                // A drain we asked for (stop/delete) is expected; any other
                // drain means the node is going away under its claims.
                if matches!(n.rec.state, NodeState::Ready | NodeState::Busy) {
                    self.set_state(&id, NodeState::Draining, now);
                    self.save_node(&id, Vec::new(), now, out);
                    self.revoke_claims_of(&id, RevokeReason::Drained, now, out);
                    self.requeue_jobs_of(&id, "node drained", now, out);
                }
            }
            AgentMsg::Event { command, event, .. } => {
                self.on_worker_event(&id, &command, event, now, out);
            }
            AgentMsg::Output {
                command,
                stream,
                data,
                ..
            } => self.on_job_output(&command, stream, data, now, out),
            // The bytes are the driver's to store (an artifact store is
            // I/O); an upload is progress.
            AgentMsg::ArtifactChunk { command, .. } => {
                self.job_progress(&command, now);
            }
        }
        self.touch_node(&id);
    }

    fn reactivate(&self, id: &NodeId, out: &mut Vec<Command>) {
        let Some(n) = self.nodes.get(id) else {
            return;
        };
        for claim in &n.claims {
            let Some(c) = self.claims.get(claim) else {
                continue;
            };
            // A grant or renewal still being written is activated by its
            // own effect once stored.
            if self.writes.pending(&super::claims::claim_key(&c.rec)) {
                continue;
            }
            if let (true, Some(expires_at)) = (c.rec.state.holds_node(), c.rec.expires_at) {
                out.push(Command::Send {
                    to: Peer::Node(id.clone()),
                    msg: Outbound::Agent(DaemonMsg::Activate {
                        claim_id: claim.clone(),
                        expires_at,
                    }),
                });
            }
        }
    }

    pub(super) fn on_agent_gone(&mut self, id: &NodeId) {
        // Not lost yet: the heartbeat timeout gives the agent time to
        // reconnect. A disconnection only takes capacity away, so it asks
        // for no decision round of its own (a node's agent leaves at every
        // delete: a tenth of a simulation's rounds planned for nothing).
        if let Some(n) = self.nodes.get_mut(id) {
            n.connected = false;
        }
    }

    pub(super) fn on_provider_done(
        &mut self,
        op: crate::ids::OpId,
        result: Result<ProviderOutcome, ProviderError>,
        now: Millis,
        out: &mut Vec<Command>,
    ) {
        let Some(Op { call, attempt }) = self.ops.remove(&op) else {
            return;
        };
        let id = call.node().clone();
        if matches!(call, ProviderCall::Delete(_))
            && !self.nodes.contains_key(&id)
            && self.orphans.contains_key(&id)
        {
            let gone = result.is_ok() || matches!(result, Err(ProviderError::NotFound(_)));
            return self.orphan_deleted(&id, gone, now);
        }
        let Some(n) = self.nodes.get_mut(&id) else {
            return;
        };
        if n.op != Some(op) {
            return; // superseded
        }
        n.op = None;
        if let Err(ProviderError::Capacity(why)) = &result {
            match &call {
                ProviderCall::Create(spec) if self.create_short(&id, spec, why, now, out) => {
                    return;
                }
                ProviderCall::Resize(_, to) => {
                    self.resize_short(&id, to, why, now, out);
                    // A retry before the shortage ends would be refused the
                    // same way; the strategy's next resize waits for its end.
                    if let Err(e) = result {
                        return self.call_failed(&id, call, e, now, out);
                    }
                    return;
                }
                _ => {}
            }
        }
        match result {
            Ok(outcome) => self.call_succeeded(&id, call, outcome, now, out),
            Err(ProviderError::NotFound(_)) if matches!(call, ProviderCall::Delete(_)) => {
                self.call_succeeded(&id, call, ProviderOutcome::Deleted, now, out)
            }
            Err(e) if e.is_retryable() && attempt < MAX_PROVIDER_ATTEMPTS => {
                let backoff = self
                    .timing
                    .provider_retry_initial_ms
                    .saturating_mul(1 << (attempt - 1).min(16))
                    .min(self.timing.provider_retry_max_ms);
                if let Some(n) = self.nodes.get_mut(&id) {
                    n.retry = Some((now.saturating_add(backoff), call, attempt + 1));
                }
                self.touch_node(&id);
            }
            Err(e) => self.call_failed(&id, call, e, now, out),
        }
    }

    fn call_succeeded(
        &mut self,
        id: &NodeId,
        call: ProviderCall,
        outcome: ProviderOutcome,
        now: Millis,
        out: &mut Vec<Command>,
    ) {
        let Some(n) = self.nodes.get_mut(id) else {
            return;
        };
        if let ProviderOutcome::Instance(i) = &outcome {
            n.rec.provider_id = Some(i.provider_id.clone());
        }
        let connected = n.connected;
        let up = if connected {
            NodeState::Ready
        } else {
            NodeState::Booting
        };
        match call {
            // A provider that resizes only stopped machines leaves them
            // stopped: the strategy starts them when it wants them up.
            ProviderCall::Resize(..) if matches!(&outcome, ProviderOutcome::Instance(i) if i.state == InstanceState::Stopped) =>
            {
                self.set_state(id, NodeState::Stopped, now);
                if let Some(n) = self.nodes.get_mut(id) {
                    n.prev_type = None;
                }
            }
            ProviderCall::Create(_) | ProviderCall::Start(_) | ProviderCall::Resize(..) => {
                self.set_state(id, up, now);
                if let Some(n) = self.nodes.get_mut(id) {
                    n.prev_type = None;
                }
            }
            ProviderCall::Stop(_) => {
                if let Some(n) = self.nodes.get_mut(id) {
                    n.connected = false;
                }
                self.set_state(id, NodeState::Stopped, now);
            }
            ProviderCall::Snapshot(_) => {
                if let ProviderOutcome::Snapshot(snap) = outcome {
                    let pool_name = n.rec.pool.clone();
                    self.keep_snapshot(&pool_name, snap, now, out);
                }
                self.set_state(id, NodeState::Ready, now);
            }
            ProviderCall::Delete(_) => {
                self.set_state(id, NodeState::Gone, now);
                let effect = Effect::NodeForgotten { node: id.clone() };
                return self.save_node(id, vec![effect], now, out);
            }
        }
        self.save_node(id, Vec::new(), now, out);
    }

    fn keep_snapshot(
        &mut self,
        pool_name: &PoolName,
        snap: crate::provider::SnapshotRef,
        now: Millis,
        out: &mut Vec<Command>,
    ) {
        self.ledger
            .snapshot_kept(&self.billing, pool_name, u64::from(snap.size_gb), now);
        let Some(pool) = self.pools.get_mut(pool_name) else {
            return;
        };
        pool.snapshot = Some(snap);
        let rec = PoolRecord {
            pool: pool_name.clone(),
            snapshot: pool.snapshot.clone(),
            next_node_seq: pool.next_seq,
            epoch: self.epoch,
        };
        let key = Subjects::pool_key(pool_name);
        // Nodes booted from the previous snapshot have drifted.
        self.refresh_pool_drift(Some(pool_name));
        if let Some(done) = self
            .writes
            .write(key, Some(Record::Pool(rec)), Vec::new(), out)
        {
            self.run_effects(done, now, out);
        }
    }

    fn call_failed(
        &mut self,
        id: &NodeId,
        call: ProviderCall,
        e: ProviderError,
        now: Millis,
        out: &mut Vec<Command>,
    ) {
        out.push(Command::Alert(Alert::ProviderFailed {
            node: id.clone(),
            call: call.name().to_owned(),
            kind: e.kind().to_owned(),
            error: e.to_string(),
        }));
        let Some(n) = self.nodes.get(id) else {
            return;
        };
        let pool = n.rec.pool.clone();
        match call {
            ProviderCall::Create(_) => {
                // Nothing was created: forget the node and give the pool a
                // rest, so a capacity or quota error does not become a loop.
                if let Some(p) = self.pools.get_mut(&pool) {
                    p.create_backoff_until = now.saturating_add(self.timing.create_backoff_ms);
                    p.wake_at = Some(p.create_backoff_until);
                }
                self.set_state(id, NodeState::Gone, now);
                let effect = Effect::NodeForgotten { node: id.clone() };
                return self.save_node(id, vec![effect], now, out);
            }
            ProviderCall::Start(_) => self.set_state(id, NodeState::Stopped, now),
            ProviderCall::Stop(_) | ProviderCall::Snapshot(_) => {
                self.set_state(id, NodeState::Ready, now)
            }
            ProviderCall::Resize(..) => {
                if let Some(n) = self.nodes.get_mut(id)
                    && let Some(prev) = n.prev_type.take()
                {
                    n.rec.instance_type = prev;
                    n.drift_stale = true;
                }
                // Back to where it was resized from: stopped, when the
                // provider resizes only stopped machines.
                let back = if self.capabilities.resize_requires_stop {
                    NodeState::Stopped
                } else {
                    NodeState::Ready
                };
                self.set_state(id, back, now);
            }
            ProviderCall::Delete(_) => {
                // A node must never leak: keep trying, slowly.
                let at = now.saturating_add(self.timing.provider_retry_max_ms);
                if let Some(n) = self.nodes.get_mut(id) {
                    n.retry = Some((at, call, 1));
                }
                return self.touch_node(id);
            }
        }
        self.save_node(id, Vec::new(), now, out);
    }

    pub(super) fn transition_with_call(
        &mut self,
        id: &NodeId,
        to: NodeState,
        call: ProviderCall,
        now: Millis,
        out: &mut Vec<Command>,
    ) {
        // The plan that asked for this step counted it: it takes an idle
        // node out of service (nothing new to grant, no live node more or
        // less), and asking the strategy again would only hear it again.
        self.move_node(id, to, now);
        let effect = Effect::NodeCall {
            node: id.clone(),
            call,
        };
        self.save_node(id, vec![effect], now, out);
    }
}

pub(super) fn instance_ref(rec: &NodeRecord) -> Option<InstanceRef> {
    rec.provider_id.as_ref().map(|p| InstanceRef {
        node: rec.node.clone(),
        provider_id: p.clone(),
    })
}
