//! Decisions an operator can read: each action a strategy asked for, with
//! its reason, what the strategy saw and what the controller made of it;
//! each claim transition with its reason. Bounded (the newest
//! [`HISTORY_DECISIONS`] and [`HISTORY_TRANSITIONS`]) and in memory: what
//! `fleetctl explain pool` and `fleetctl history` read.

use std::collections::{BTreeMap, VecDeque};

use super::Controller;
use crate::ids::{ClaimId, Millis, PoolName};
use crate::protocol::{
    ClaimHistory, ClaimRecord, ClaimState, ClaimTransition, ConsoleIdleCost, ConsolePool, Decision,
    HISTORY_DECISIONS, HISTORY_TRANSITIONS, PendingReason, PlanInputs, PoolExplain, RevokeReason,
};
use crate::provider::Market;
use crate::schedule::Capacity;
use crate::strategy::{Action, Demand, NodeView, PoolView, Reason};

/// The kept history.
#[derive(Debug)]
pub(super) struct History {
    /// Off: nothing is recorded (a simulator running a year of claims).
    on: bool,
    decisions: VecDeque<Decision>,
    transitions: VecDeque<ClaimTransition>,
    /// Per pool: when it last planned, what it saw, when it asked again.
    last_plan: BTreeMap<PoolName, (Millis, PlanInputs, Option<Millis>)>,
}

impl Default for History {
    fn default() -> History {
        History {
            on: true,
            decisions: VecDeque::new(),
            transitions: VecDeque::new(),
            last_plan: BTreeMap::new(),
        }
    }
}

/// What a claim was last recorded as: its state and why it waited.
pub(super) type Noted = (&'static str, Option<PendingReason>);

impl History {
    fn push_decision(&mut self, d: Decision) {
        if self.decisions.len() == HISTORY_DECISIONS {
            self.decisions.pop_front();
        }
        self.decisions.push_back(d);
    }

    fn push_transition(&mut self, t: ClaimTransition) {
        if self.transitions.len() == HISTORY_TRANSITIONS {
            self.transitions.pop_front();
        }
        self.transitions.push_back(t);
    }
}

/// What a strategy saw: the numbers `explain` shows next to its actions.
pub(super) fn plan_inputs(
    nodes: &[NodeView],
    demand: &[Demand],
    short_of: Vec<crate::ids::InstanceType>,
    create_backoff_until: Option<Millis>,
    now: Millis,
) -> PlanInputs {
    let mut by_state = BTreeMap::<String, u64>::new();
    for n in nodes {
        *by_state.entry(n.state.name().to_owned()).or_default() += 1;
    }
    PlanInputs {
        waiting: u32::try_from(demand.len()).unwrap_or(u32::MAX),
        oldest_wait_ms: demand
            .iter()
            .map(|d| d.enqueued_at)
            .min()
            .map(|t| now.saturating_sub(t)),
        nodes: by_state,
        free_slots: nodes.iter().map(NodeView::free_slots).sum(),
        short_of,
        create_backoff_until,
    }
}

/// An action's verb.
fn verb(a: &Action) -> &'static str {
    match a {
        Action::Create { .. } => "create",
        Action::Start { .. } => "start",
        Action::Stop { .. } => "stop",
        Action::Resize { .. } => "resize",
        Action::Snapshot { .. } => "snapshot",
        Action::Delete { .. } => "delete",
    }
}

/// A claim transition in words.
fn transition_words(rec: &ClaimRecord, before: Option<&'static str>) -> String {
    match &rec.state {
        ClaimState::Pending => match &rec.pending_reason {
            Some(r) => format!("waiting {}", crate::protocol::pending_words(r)),
            None => "accepted; waiting for a node".to_owned(),
        },
        ClaimState::Granted => {
            let waited = rec
                .granted_at
                .map(|g| g.saturating_sub(rec.enqueued_at))
                .unwrap_or(0);
            format!("granted after {} waiting", crate::time::duration(waited))
        }
        ClaimState::Active => "renewed: the caller is using the node".to_owned(),
        ClaimState::Released => "released by the caller".to_owned(),
        ClaimState::Expired if before == Some("pending") || rec.node.is_none() => {
            "never granted within its max wait".to_owned()
        }
        ClaimState::Expired => "the lease ran out without a renewal".to_owned(),
        ClaimState::Revoked { reason } => match reason {
            RevokeReason::Expired => "revoked: the lease ran out".to_owned(),
            RevokeReason::NodeLost => "revoked: its node stopped heartbeating".to_owned(),
            RevokeReason::SpotInterrupted { .. } => {
                "revoked: the provider reclaims its spot node".to_owned()
            }
            RevokeReason::Drained => "revoked: its node is draining".to_owned(),
            RevokeReason::WaitExceeded => "revoked: never granted within its max wait".to_owned(),
            RevokeReason::Operator { note } => format!("revoked by an operator: {note}"),
        },
    }
}

impl Controller {
    /// Records nothing from now on when `on` is false (a simulator
    /// running a year of claims has no operator to read it).
    pub fn keep_history(&mut self, on: bool) {
        self.history.on = on;
        if !on {
            self.history = History {
                on,
                ..History::default()
            };
        }
    }

    /// Whether history is kept (the caller skips building its inputs).
    pub(super) fn history_on(&self) -> bool {
        self.history.on
    }

    /// Notes that `pool` planned at `now`, seeing `inputs`.
    pub(super) fn note_plan(
        &mut self,
        pool: &PoolName,
        inputs: PlanInputs,
        wake_at: Option<Millis>,
        now: Millis,
    ) {
        self.history
            .last_plan
            .insert(pool.clone(), (now, inputs, wake_at));
    }

    /// Records what became of one action of `pool`'s plan.
    pub(super) fn note_decision(
        &mut self,
        pool: &PoolName,
        action: &Action,
        reason: &Reason,
        outcome: &Result<Option<crate::ids::NodeId>, String>,
        now: Millis,
    ) {
        let Some(p) = self.pools.get(pool) else {
            return;
        };
        let inputs = self
            .history
            .last_plan
            .get(pool)
            .map(|(_, i, _)| i.clone())
            .unwrap_or_default();
        let (node, instance_type, market) = match (action, outcome) {
            (Action::Create { .. }, Ok(Some(id))) => {
                let n = self.nodes.get(id).map(|n| &n.rec);
                (
                    Some(id.clone()),
                    n.map(|r| r.instance_type.clone()),
                    n.map_or(Market::OnDemand, |r| r.market),
                )
            }
            (Action::Create { size, market, .. }, _) => (None, Some(size.clone()), *market),
            (Action::Resize { node, to }, _) => (
                Some(node.clone()),
                Some(to.clone()),
                self.nodes
                    .get(node)
                    .map_or(Market::OnDemand, |n| n.rec.market),
            ),
            (
                Action::Start { node }
                | Action::Stop { node }
                | Action::Snapshot { node }
                | Action::Delete { node },
                _,
            ) => (Some(node.clone()), None, Market::OnDemand),
        };
        let hourly_micros = instance_type.as_ref().and_then(|t| {
            p.offerings
                .iter()
                .find(|o| &o.instance_type == t)
                .and_then(|o| o.price(market))
                .map(|h| h.0.micros())
        });
        let decision = Decision {
            at: now,
            pool: pool.clone(),
            strategy: p.spec.strategy.name().to_owned(),
            action: verb(action).to_owned(),
            node,
            instance_type,
            hourly_micros,
            reason: reason.clone(),
            why: reason.to_string(),
            refused: outcome.as_ref().err().cloned(),
            inputs,
        };
        self.history.push_decision(decision);
    }

    /// Records `id`'s transition if its state or its waiting reason
    /// changed since it was last recorded.
    pub(super) fn note_claim(&mut self, id: &ClaimId, now: Millis) {
        if !self.history.on {
            return;
        }
        let Some(c) = self.claims.get_mut(id) else {
            return;
        };
        let state = c.rec.state.name();
        if c.noted
            .as_ref()
            .is_some_and(|(s, r)| *s == state && r.as_ref() == c.rec.pending_reason.as_ref())
        {
            return;
        }
        let before = c.noted.as_ref().map(|(s, _)| *s);
        let reason = transition_words(&c.rec, before);
        c.noted = Some((state, c.rec.pending_reason.clone()));
        let t = ClaimTransition {
            at: now,
            claim: id.clone(),
            workspace: c.rec.request.workspace.clone(),
            pool: c.rec.request.pool.clone(),
            state: state.to_owned(),
            node: c.rec.node.clone(),
            reason,
        };
        self.history.push_transition(t);
    }

    /// `GET /v1/pools/<pool>/explain`; `None` for an unknown pool.
    pub fn explain(&self, pool: &PoolName) -> Option<PoolExplain> {
        let info = self.describe(pool)?;
        let last = self.history.last_plan.get(pool);
        Some(PoolExplain {
            pool: pool.clone(),
            strategy: info.name.to_owned(),
            summary: info.summary.to_owned(),
            parameters: info
                .parameters
                .into_iter()
                .map(|p| (p.name.to_owned(), p.value))
                .collect(),
            planned_at: last.map(|(at, _, _)| *at),
            inputs: last.map(|(_, i, _)| i.clone()),
            wake_at: last.and_then(|(_, _, w)| *w),
            decisions: self
                .history
                .decisions
                .iter()
                .filter(|d| &d.pool == pool)
                .cloned()
                .collect(),
        })
    }

    /// How `pool`'s strategy describes itself in the pool's terms.
    fn describe(&self, pool: &PoolName) -> Option<crate::strategy::StrategyInfo> {
        let p = self.pools.get(pool)?;
        let view = PoolView {
            spec: &p.spec,
            nodes: &[],
            pending: &[],
            offerings: &p.offerings,
            capabilities: &self.capabilities,
            billing: &self.billing,
            snapshot: p.snapshot.as_ref(),
            capacity: Capacity::default(),
        };
        Some(p.strategy.describe(&view))
    }

    /// Every pool as the console shows it: its strategy, the idle cost
    /// the strategy declares, its nodes by state.
    pub fn console_pools(&self) -> Vec<ConsolePool> {
        let mut by_pool: BTreeMap<&PoolName, BTreeMap<String, u64>> = BTreeMap::new();
        for n in self.nodes.values() {
            *by_pool
                .entry(&n.rec.pool)
                .or_default()
                .entry(super::live_state(n).name().to_owned())
                .or_default() += 1;
        }
        self.pools
            .iter()
            .filter_map(|(name, p)| {
                let info = self.describe(name)?;
                Some(ConsolePool {
                    name: name.clone(),
                    strategy: info.name.to_owned(),
                    summary: info.summary.to_owned(),
                    idle_cost: ConsoleIdleCost {
                        setup: info.idle_cost.setup,
                        settle_ms: info.idle_cost.settle_ms,
                        per_hour: info.idle_cost.per_hour,
                    },
                    cost_model: info.cost_model,
                    instance_types: p.spec.instance_types.clone(),
                    min_nodes: p.spec.min_nodes,
                    max_nodes: p.spec.max_nodes,
                    slots_per_node: p.spec.slots_per_node,
                    nodes: by_pool.remove(name).unwrap_or_default(),
                })
            })
            .collect()
    }

    /// `GET /v1/claims/<claim>/history` (empty when none is kept).
    pub fn claim_history(&self, claim: &ClaimId) -> ClaimHistory {
        let transitions = self
            .history
            .transitions
            .iter()
            .filter(|t| &t.claim == claim)
            .cloned()
            .collect();
        ClaimHistory {
            claim: claim.clone(),
            transitions,
        }
    }
}
