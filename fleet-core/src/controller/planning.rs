//! Pool planning: runs each pool's strategy over a view of its nodes and
//! the demand waiting for it, checks every action it returns, and turns it
//! into a persisted node record whose write issues the provider call.

use super::nodes::instance_ref;
use super::persist::Effect;
use super::{Alert, Claim, Command, Controller, Job, Node, ProviderCall};
use crate::ids::{ClaimId, Epoch, FleetId, IdError, Millis, NodeId, PoolName};
use crate::protocol::{ClaimState, JobState, NodeRecord, NodeState};
use crate::provider::{BootSource, Market};
use crate::strategy::{Action, Demand, NodeView, PoolView, SourceKind};

/// The longest node id minted: a DNS label (providers make host names of
/// node ids, and EC2 takes one as its 64-byte `ClientToken`).
const MAX_NODE_ID_LEN: usize = 63;

/// A new node's id: `<pool prefix>-<fleet id>-<epoch>-<seq>`. The fleet id
/// keeps fleets sharing an account apart, the epoch (a new one each
/// leadership term) keeps restarts apart, the sequence the nodes of one
/// term. The pool name is cut to what the rest leaves of
/// [`MAX_NODE_ID_LEN`]; it is only there for people to read.
pub(super) fn node_id(
    pool: &PoolName,
    fleet: &FleetId,
    epoch: Epoch,
    seq: u64,
) -> Result<NodeId, IdError> {
    let suffix = format!("-{fleet}-{}-{seq}", epoch.0);
    // At most 1 + 16 + 1 + 20 + 1 + 20 bytes: at least 4 are left.
    let room = MAX_NODE_ID_LEN.saturating_sub(suffix.len()).max(1);
    let prefix: String = pool.as_str().chars().take(room).collect();
    NodeId::new(format!("{prefix}{suffix}"))
}

/// `n` as its pool's strategy sees it. `last` is the view at the same
/// place in the last round: its ids are kept when they are still `n`'s.
/// A clone of an id and its drop are an atomic add and subtract on a
/// shared count; rebuilding every view from clones each round was 3 % of a
/// simulated year's time.
fn node_view(n: &Node, slots: u32, retiring: bool, last: Option<NodeView>) -> NodeView {
    let (node, instance_type) = match last {
        Some(v) if v.node.same(&n.rec.node) && v.instance_type.same(&n.rec.instance_type) => {
            (v.node, v.instance_type)
        }
        _ => (n.rec.node.clone(), n.rec.instance_type.clone()),
    };
    NodeView {
        node,
        state: super::live_state(n),
        state_since: n.rec.state_since,
        instance_type,
        market: n.rec.market,
        claims: u32::try_from(n.occupied()).unwrap_or(u32::MAX),
        slots,
        idle_since: n.idle_since,
        retiring,
    }
}

/// The demand of a waiting claim, keeping `last`'s copies if it was this
/// claim's (as [`node_view`]).
fn claim_demand(c: &Claim, last: Option<Demand>) -> Demand {
    let req = &c.rec.request;
    match last {
        Some(d) if d.claim.same(&req.claim_id) && d.requirements == req.requirements => Demand {
            enqueued_at: c.rec.enqueued_at,
            ..d
        },
        _ => Demand {
            claim: req.claim_id.clone(),
            requirements: req.requirements.clone(),
            enqueued_at: c.rec.enqueued_at,
        },
    }
}

/// The demand of a queued job, under its job id (none if that id is no
/// claim id), keeping `last`'s copies if it was this job's.
fn job_demand(j: &Job, last: Option<Demand>) -> Option<Demand> {
    let spec = &j.rec.spec;
    match last {
        Some(d) if d.claim.as_str() == spec.id.as_str() && d.requirements == spec.requirements => {
            Some(Demand {
                enqueued_at: j.rec.submitted_at,
                ..d
            })
        }
        _ => Some(Demand {
            claim: ClaimId::new(spec.id.as_str()).ok()?,
            requirements: spec.requirements.clone(),
            enqueued_at: j.rec.submitted_at,
        }),
    }
}

impl Controller {
    /// Runs every pool's strategy and applies what it asks for.
    pub(super) fn plan_pools(&mut self, now: Millis, out: &mut Vec<Command>) {
        let over_budget = self.over_budget(now);
        // By position: `apply` changes the pools, never the set of them.
        for at in 0..self.pools.len() {
            let Some(name) = self.pools.keys().nth(at).cloned() else {
                break;
            };
            let Some(pool) = self.pools.get_mut(&name) else {
                continue;
            };
            let capacity = pool.capacity_at(now);
            // The last round's views: their ids are kept where they still
            // hold (see `node_view`).
            let mut last_views = std::mem::take(&mut pool.views).into_iter();
            let mut last_demand = std::mem::take(&mut pool.demand).into_iter();
            let Some(pool) = self.pools.get(&name) else {
                continue;
            };
            let retiring = self.retiring(pool);
            let slots = pool.spec.slots_per_node;
            let views: Vec<NodeView> = self
                .nodes
                .values()
                .filter(|n| n.rec.pool == name && n.rec.state != NodeState::Gone)
                .map(|n| {
                    let retiring = retiring.contains(&n.rec.node);
                    node_view(n, slots, retiring, last_views.next())
                })
                .collect();
            let waiting = self.claims.pending().map(|(_, c)| c).filter(|c| {
                c.rec.request.pool == name
                    && c.durable
                    && c.reserved.is_none()
                    && c.rec.state == ClaimState::Pending
                    // Waiting for an affine node: no node is bought for it yet.
                    && c.affinity_until.is_none_or(|t| t <= now)
                    && !c.budget_held
            });
            let queued = self
                .queued
                .iter()
                .filter_map(|id| self.jobs.get(id))
                .filter(|j| {
                    j.durable
                        && j.rec.spec.pool == name
                        && matches!(j.rec.state, JobState::Queued { not_before } if not_before <= now)
                        && !over_budget.contains_key(&j.rec.spec.workspace)
                });
            let mut demand: Vec<Demand> = Vec::new();
            for c in waiting {
                demand.push(claim_demand(c, last_demand.next()));
            }
            for j in queued {
                demand.extend(job_demand(j, last_demand.next()));
            }
            let view = PoolView {
                spec: &pool.spec,
                nodes: &views,
                pending: &demand,
                offerings: &pool.offerings,
                capabilities: &self.capabilities,
                billing: &self.billing,
                snapshot: pool.snapshot.as_ref(),
                capacity,
            };
            let plan = pool.strategy.plan(&view, now);
            let inputs = self.history_on().then(|| {
                let short_of = pool
                    .shortages
                    .iter()
                    .filter(|(_, s)| s.until > now)
                    .map(|((t, _), _)| t.clone())
                    .collect();
                let backoff =
                    (pool.create_backoff_until > now).then_some(pool.create_backoff_until);
                super::history::plan_inputs(&views, &demand, short_of, backoff, now)
            });
            if let Some(p) = self.pools.get_mut(&name) {
                p.views = views;
                p.demand = demand;
                p.plan_wake = plan.wake_at;
            }
            if let Some(inputs) = inputs {
                self.note_plan(&name, inputs, plan.wake_at, now);
            }
            for (i, action) in plan.actions.iter().enumerate() {
                let outcome = self.apply(&name, action, now, out);
                if self.history_on() {
                    self.note_decision(&name, action, plan.reason(i), &outcome, now);
                }
                if let Err(why) = outcome {
                    out.push(Command::Alert(Alert::InvalidAction {
                        pool: name.clone(),
                        detail: format!("{action:?}: {why}"),
                    }));
                }
            }
        }
    }

    /// When each pool plans again: when its strategy asks, the create
    /// back-off ends, a capacity shortage ends (a deferred resize), the
    /// schedule's period changes, or a claim's wait for an affine node
    /// ends (arbitration sets that one).
    pub(super) fn refresh_wakes(&mut self, now: Millis) {
        for p in self.pools.values_mut() {
            p.wake_at = [
                p.plan_wake,
                p.capacity.1,
                p.affinity_wake.filter(|t| *t > now),
                (p.create_backoff_until > now).then_some(p.create_backoff_until),
                super::capacity::next_end(&p.shortages, now),
            ]
            .into_iter()
            .flatten()
            .min();
        }
    }

    fn idle_node(&self, id: &NodeId, allowed: &[NodeState]) -> Result<&Node, String> {
        let n = self.nodes.get(id).ok_or("unknown node")?;
        if n.occupied() > 0 {
            return Err("node holds claims or jobs".into());
        }
        if n.op.is_some() || n.retry.is_some() {
            return Err("a provider call is already in flight".into());
        }
        if !allowed.contains(&n.rec.state) {
            return Err(format!("node is {}", n.rec.state.name()));
        }
        Ok(n)
    }

    fn apply(
        &mut self,
        pool_name: &PoolName,
        action: &Action,
        now: Millis,
        out: &mut Vec<Command>,
    ) -> Result<Option<NodeId>, String> {
        let pool = self.pools.get(pool_name).ok_or("unknown pool")?;
        match action {
            Action::Create {
                source,
                market,
                size: wanted,
            } => {
                if pool.create_backoff_until > now {
                    return Err("pool is backing off after a failed create".into());
                }
                let live = self
                    .nodes
                    .values()
                    .filter(|n| &n.rec.pool == pool_name && n.rec.state != NodeState::Gone)
                    .count();
                if live >= pool.spec.max_nodes as usize {
                    return Err(format!("pool is at max_nodes {}", pool.spec.max_nodes));
                }
                // A type short of capacity gives way to another (capacity.rs).
                let size = super::capacity::available(
                    &pool.offerings,
                    &pool.shortages,
                    wanted,
                    *market,
                    now,
                );
                let offering = pool
                    .offerings
                    .iter()
                    .find(|o| &o.instance_type == size)
                    .ok_or("instance type not in the pool")?;
                if *market == Market::Spot && (!self.capabilities.spot || offering.spot.is_none()) {
                    return Err("spot is not available".into());
                }
                let source = match source {
                    SourceKind::Snapshot => BootSource::Snapshot(
                        pool.snapshot.clone().ok_or("the pool has no snapshot")?,
                    ),
                    _ => BootSource::Image {
                        image: pool.spec.image.clone(),
                    },
                };
                let seq = self.next_node_seq;
                self.next_node_seq += 1;
                let id = node_id(pool_name, &self.fleet_id, self.epoch, seq)
                    .map_err(|e| e.to_string())?;
                let rec = NodeRecord {
                    node: id.clone(),
                    pool: pool_name.clone(),
                    instance_type: size.clone(),
                    market: *market,
                    source,
                    state: NodeState::Requested,
                    provider_id: None,
                    endpoint: None,
                    created_at: now,
                    state_since: now,
                    epoch: self.epoch,
                    uses: 0,
                    revision: pool.spec.revision.clone(),
                };
                let call = ProviderCall::Create(self.spec_of(&rec));
                if live + 1 >= pool.spec.max_nodes as usize {
                    // The pool is full now: the claims still waiting say so
                    // after the next round, not once this node is up.
                    self.arbitrate_due = true;
                }
                let mut node = Node::new(rec, now, false);
                node.wanted = Some(wanted.clone()).filter(|w| w != &node.rec.instance_type);
                self.nodes.insert(id.clone(), node);
                self.save_node(
                    &id,
                    vec![Effect::NodeCall {
                        node: id.clone(),
                        call,
                    }],
                    now,
                    out,
                );
                return Ok(Some(id));
            }
            Action::Start { node } => {
                if !self.capabilities.stop_start {
                    return Err("provider cannot start/stop".into());
                }
                let n = self.idle_node(node, &[NodeState::Stopped])?;
                let call = ProviderCall::Start(instance_ref(&n.rec).ok_or("no provider id")?);
                self.transition_with_call(node, NodeState::Starting, call, now, out);
            }
            Action::Stop { node } => {
                if !self.capabilities.stop_start {
                    return Err("provider cannot start/stop".into());
                }
                let n = self.idle_node(node, &[NodeState::Ready])?;
                let call = ProviderCall::Stop(instance_ref(&n.rec).ok_or("no provider id")?);
                self.transition_with_call(node, NodeState::Stopping, call, now, out);
            }
            Action::Resize { node, to } => {
                if !self.capabilities.resize {
                    return Err("provider cannot resize".into());
                }
                if !pool.offerings.iter().any(|o| &o.instance_type == to) {
                    return Err("instance type not in the pool".into());
                }
                let allowed: &[NodeState] = if self.capabilities.resize_requires_stop {
                    &[NodeState::Stopped]
                } else {
                    &[NodeState::Ready, NodeState::Stopped]
                };
                let n = self.idle_node(node, allowed)?;
                if super::capacity::is_short(&pool.shortages, to, n.rec.market, now) {
                    // Deferred, not refused: the pool wakes when the
                    // shortage ends and the strategy asks again.
                    return Ok(None);
                }
                let call =
                    ProviderCall::Resize(instance_ref(&n.rec).ok_or("no provider id")?, to.clone());
                if let Some(n) = self.nodes.get_mut(node) {
                    n.prev_type = Some(std::mem::replace(&mut n.rec.instance_type, to.clone()));
                    n.drift_stale = true;
                }
                self.transition_with_call(node, NodeState::Resizing, call, now, out);
            }
            Action::Snapshot { node } => {
                if !self.capabilities.snapshot {
                    return Err("provider cannot snapshot".into());
                }
                let n = self.idle_node(node, &[NodeState::Ready])?;
                let call = ProviderCall::Snapshot(instance_ref(&n.rec).ok_or("no provider id")?);
                self.transition_with_call(node, NodeState::Snapshotting, call, now, out);
            }
            Action::Delete { node } => {
                let n = self.idle_node(
                    node,
                    &[
                        NodeState::Ready,
                        NodeState::Stopped,
                        NodeState::Booting,
                        NodeState::Lost,
                        NodeState::Interrupted,
                        NodeState::Draining,
                    ],
                )?;
                match instance_ref(&n.rec) {
                    Some(i) => self.transition_with_call(
                        node,
                        NodeState::Deleting,
                        ProviderCall::Delete(i),
                        now,
                        out,
                    ),
                    None => {
                        // Never created as far as we know; an instance created
                        // behind our back is found as an orphan and collected.
                        self.set_state(node, NodeState::Gone, now);
                        let effect = Effect::NodeForgotten { node: node.clone() };
                        self.save_node(node, vec![effect], now, out);
                    }
                }
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(s: &str) -> PoolName {
        PoolName::new(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn node_ids_name_pool_fleet_epoch_and_sequence() {
        let fleet = FleetId::new("3f9a0c2e").unwrap_or_else(|e| panic!("{e}"));
        let id = node_id(&pool("linux"), &fleet, Epoch(3), 17).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(id.as_str(), "linux-3f9a0c2e-3-17");
    }

    #[test]
    fn long_pool_names_are_cut_so_ids_fit_a_dns_label() {
        let fleet = FleetId::new("0123456789abcdef").unwrap_or_else(|e| panic!("{e}"));
        let long = pool(&"p".repeat(64));
        for (epoch, seq) in [(1, 1), (u64::MAX, u64::MAX), (7, 123_456)] {
            let id = node_id(&long, &fleet, Epoch(epoch), seq).unwrap_or_else(|e| panic!("{e}"));
            assert!(id.as_str().len() <= MAX_NODE_ID_LEN, "{id}");
            assert!(id.as_str().starts_with("pppp"), "{id}");
            assert!(
                id.as_str().ends_with(&format!("-{fleet}-{epoch}-{seq}")),
                "{id}"
            );
        }
    }
}
