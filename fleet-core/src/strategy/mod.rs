//! Strategies: how a pool's nodes live and die.
//!
//! A [`Strategy`] is a pure planner. It reads a [`PoolView`] (the pool's
//! nodes, the claims waiting, the offerings, the provider's capabilities and
//! billing) and returns [`Action`]s as data; it never calls a provider. The
//! controller turns actions into persisted node records and provider calls,
//! and the simulator runs the very same planners under virtual time.
//!
//! Six are built in, chosen per pool with [`StrategyConfig`]:
//! [`ColdImage`], [`ColdSnapshot`], [`AlwaysOnResize`], [`StoppedPool`],
//! [`Spot`] and [`Hybrid`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::billing::{BillingModel, BootPath};
use crate::ids::{ClaimId, InstanceType, Millis, NodeId, PoolName};
use crate::money::{HourlyPrice, Money};
use crate::protocol::{NodeState, Requirements};
use crate::provider::{Capabilities, Market, Offering, SnapshotRef};

mod always_on_resize;
mod cold_image;
mod cold_snapshot;
mod config;
mod hybrid;
mod spot;
mod stopped_pool;

pub use always_on_resize::AlwaysOnResize;
pub use cold_image::ColdImage;
pub use cold_snapshot::ColdSnapshot;
pub use config::*;
pub use hybrid::Hybrid;
pub use spot::Spot;
pub use stopped_pool::StoppedPool;

/// A pool as configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    /// The pool.
    pub name: PoolName,
    /// How its nodes live.
    pub strategy: StrategyConfig,
    /// Instance types it may run, in order of preference (the first is the
    /// baseline size).
    pub instance_types: Vec<InstanceType>,
    /// The base image new nodes boot from.
    pub image: String,
    /// Labels every node of the pool carries.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Nodes never fewer than this (counting stopped ones).
    #[serde(default)]
    pub min_nodes: u32,
    /// Nodes never more than this.
    #[serde(default = "default_max_nodes")]
    pub max_nodes: u32,
    /// Claims one node serves at once.
    #[serde(default = "default_slots")]
    pub slots_per_node: u32,
}

fn default_max_nodes() -> u32 {
    10
}
fn default_slots() -> u32 {
    1
}

/// One node as a strategy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    /// The node.
    pub node: NodeId,
    /// Lifecycle state.
    pub state: NodeState,
    /// When it entered that state.
    pub state_since: Millis,
    /// Its instance type.
    pub instance_type: InstanceType,
    /// Its market.
    pub market: Market,
    /// Claims it serves now.
    pub claims: u32,
    /// Claims it can serve at once.
    pub slots: u32,
    /// Since when it has had no claims, if it is up and idle.
    pub idle_since: Option<Millis>,
}

impl NodeView {
    /// Free slots if it is up and taking claims.
    pub fn free_slots(&self) -> u32 {
        match self.state {
            NodeState::Ready | NodeState::Busy => self.slots.saturating_sub(self.claims),
            _ => 0,
        }
    }
}

/// A claim waiting in the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Demand {
    /// The claim.
    pub claim: ClaimId,
    /// What it needs.
    pub requirements: Requirements,
    /// When it arrived.
    pub enqueued_at: Millis,
}

/// Everything a strategy may look at.
#[derive(Debug, Clone, Copy)]
pub struct PoolView<'a> {
    /// The pool's configuration.
    pub spec: &'a PoolSpec,
    /// Its nodes (not gone), in node id order.
    pub nodes: &'a [NodeView],
    /// Claims waiting, oldest first.
    pub pending: &'a [Demand],
    /// The offerings of the pool's instance types, in the spec's order.
    pub offerings: &'a [Offering],
    /// What the provider can do.
    pub capabilities: &'a Capabilities,
    /// How it bills.
    pub billing: &'a BillingModel,
    /// The snapshot new nodes can boot from, if one exists.
    pub snapshot: Option<&'a SnapshotRef>,
}

impl<'a> PoolView<'a> {
    /// The offering of `t`, if the pool may run it.
    pub fn offering(&self, t: &InstanceType) -> Option<&'a Offering> {
        self.offerings.iter().find(|o| &o.instance_type == t)
    }

    /// The pool's baseline offering (its first instance type).
    pub fn baseline(&self) -> Option<&'a Offering> {
        self.offerings.first()
    }

    /// The cheapest offering in `market` meeting `req`.
    pub fn cheapest_fitting(&self, req: &Requirements, market: Market) -> Option<&'a Offering> {
        self.offerings
            .iter()
            .filter(|o| req.satisfied_by(&o.resources(&self.spec.labels)))
            .filter_map(|o| o.price(market).map(|p| (p, o)))
            .min_by(|a, b| {
                a.0.cmp(&b.0)
                    .then_with(|| a.1.instance_type.cmp(&b.1.instance_type))
            })
            .map(|(_, o)| o)
    }

    /// Nodes that are not gone or being deleted.
    pub fn live_nodes(&self) -> impl Iterator<Item = &'a NodeView> {
        self.nodes
            .iter()
            .filter(|n| !matches!(n.state, NodeState::Gone | NodeState::Deleting))
    }
}

/// Where a new node boots from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum SourceKind {
    /// The pool's base image.
    Image,
    /// The pool's snapshot.
    Snapshot,
}

/// What a strategy asks for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Action {
    /// A new node.
    Create {
        /// Boot source.
        source: SourceKind,
        /// Market.
        market: Market,
        /// Instance type.
        size: InstanceType,
    },
    /// Power a stopped node on.
    Start {
        /// The node.
        node: NodeId,
    },
    /// Power a node off (keeps its disk).
    Stop {
        /// The node.
        node: NodeId,
    },
    /// Change a node's type.
    Resize {
        /// The node.
        node: NodeId,
        /// New type.
        to: InstanceType,
    },
    /// Snapshot a node for faster boots.
    Snapshot {
        /// The node.
        node: NodeId,
    },
    /// Delete a node.
    Delete {
        /// The node.
        node: NodeId,
    },
}

/// A strategy's answer: actions now, and when to ask again if nothing
/// happens before then.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Actions to take now.
    pub actions: Vec<Action>,
    /// Ask again at this time even if no event arrives (an idle timer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wake_at: Option<Millis>,
}

/// What an idle pool (no claims at all) costs under a strategy, from a
/// fresh start: `setup` over its first `settle_ms` (the boots, the idle wait
/// before a stop, taking a snapshot), then `per_hour` for every hour after.
///
/// These are the numbers the controller's ledger bills for such a pool, to
/// the micro-dollar rounding of each billed interval: the simulator checks
/// it (`fleet-sim/tests/properties.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdleCost {
    /// Paid while the pool settles into its idle steady state.
    pub setup: Money,
    /// How long that takes from a fresh start, in milliseconds.
    pub settle_ms: Millis,
    /// Paid every hour of idleness after that.
    pub per_hour: Money,
}

impl IdleCost {
    /// A pool that is in its steady state from the start.
    pub fn steady(per_hour: Money) -> IdleCost {
        IdleCost {
            setup: Money::ZERO,
            settle_ms: 0,
            per_hour,
        }
    }

    /// What `ms` of no claims cost from a fresh start: the setup, then the
    /// hourly rate prorated (rounded up) over the rest. Shorter than the
    /// settling time, the whole setup is counted.
    pub fn over(&self, ms: Millis) -> Money {
        self.setup + HourlyPrice(self.per_hour).for_millis(ms.saturating_sub(self.settle_ms))
    }
}

/// A strategy parameter, for `describe()`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Param {
    /// Name.
    pub name: &'static str,
    /// Value as text.
    pub value: String,
    /// What it does.
    pub meaning: &'static str,
}

/// A strategy describing itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StrategyInfo {
    /// Name (`cold_image`, …).
    pub name: &'static str,
    /// One line.
    pub summary: &'static str,
    /// Parameters with their values.
    pub parameters: Vec<Param>,
    /// How a claim usually gets a node.
    pub boot_path: BootPath,
    /// Idle cost in this pool.
    pub idle_cost: IdleCost,
    /// The cost model in words, with this pool's numbers.
    pub cost_model: String,
}

/// A pure planner for one pool.
pub trait Strategy: Send + Sync + std::fmt::Debug {
    /// Describes the strategy in `pool`'s terms.
    fn describe(&self, pool: &PoolView<'_>) -> StrategyInfo;
    /// Decides what to do now. Must be deterministic and must count nodes
    /// already on their way up, so that calling it again before anything
    /// changed returns no new actions.
    fn plan(&self, pool: &PoolView<'_>, now: Millis) -> Plan;
}

/// The planning kit the six strategies share: supply/demand matching, a plan
/// draft that keeps `max_nodes`/`min_nodes` honest, idle timers and packing
/// of new nodes. Kept here (not public) so every strategy counts capacity the
/// same way.
mod kit {
    use std::collections::BTreeMap;

    use super::{Action, Demand, NodeView, Plan, PoolView, SourceKind};
    use crate::billing::{BillingModel, Granularity, StoppedBilling};
    use crate::ids::{InstanceType, Millis};
    use crate::money::{HourlyPrice, MS_PER_HOUR, Money};
    use crate::protocol::{NodeResources, NodeState, Requirements};
    use crate::provider::{Market, Offering};

    /// A plan being built. Tracks what the plan itself deletes, starts and
    /// creates, so limits are checked against the pool *after* the plan.
    #[derive(Debug)]
    pub(super) struct Draft<'a> {
        pub(super) view: PoolView<'a>,
        actions: Vec<Action>,
        removed: Vec<bool>,
        started: Vec<bool>,
        planned: Vec<InstanceType>,
        wake_at: Option<Millis>,
    }

    impl<'a> Draft<'a> {
        pub(super) fn new(view: &PoolView<'a>) -> Draft<'a> {
            Draft {
                view: *view,
                actions: Vec::new(),
                removed: vec![false; view.nodes.len()],
                started: vec![false; view.nodes.len()],
                planned: Vec::new(),
                wake_at: None,
            }
        }

        /// Nodes that count against `max_nodes` once this plan is applied:
        /// every node not gone/deleting, minus the ones this plan deletes,
        /// plus the ones it creates.
        pub(super) fn live(&self) -> u32 {
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
        pub(super) fn room(&self) -> u32 {
            self.view.spec.max_nodes.saturating_sub(self.live())
        }

        /// The fewest nodes the pool may keep (a misconfigured `min_nodes`
        /// above `max_nodes` yields to `max_nodes`).
        pub(super) fn floor(&self) -> u32 {
            self.view.spec.min_nodes.min(self.view.spec.max_nodes)
        }

        pub(super) fn is_removed(&self, i: usize) -> bool {
            self.removed[i]
        }

        pub(super) fn is_started(&self, i: usize) -> bool {
            self.started[i]
        }

        pub(super) fn delete(&mut self, i: usize) {
            if !self.removed[i] {
                self.removed[i] = true;
                self.actions.push(Action::Delete {
                    node: self.view.nodes[i].node.clone(),
                });
            }
        }

        pub(super) fn start(&mut self, i: usize) {
            if !self.started[i] {
                self.started[i] = true;
                self.actions.push(Action::Start {
                    node: self.view.nodes[i].node.clone(),
                });
            }
        }

        /// Creates a node if `max_nodes` allows; says whether it did.
        pub(super) fn create(
            &mut self,
            source: SourceKind,
            market: Market,
            size: &InstanceType,
        ) -> bool {
            if self.room() == 0 {
                return false;
            }
            self.planned.push(size.clone());
            self.actions.push(Action::Create {
                source,
                market,
                size: size.clone(),
            });
            true
        }

        pub(super) fn push(&mut self, action: Action) {
            self.actions.push(action);
        }

        /// Asks to be woken at `t` if that is still ahead.
        pub(super) fn wake(&mut self, t: Millis, now: Millis) {
            if t > now {
                self.wake_at = Some(self.wake_at.map_or(t, |w| w.min(t)));
            }
        }

        /// Lost and interrupted nodes serve nothing and are being replaced:
        /// delete them so they stop billing and stop blocking `max_nodes`.
        pub(super) fn delete_failed(&mut self) {
            for (i, n) in self.view.nodes.iter().enumerate() {
                if matches!(n.state, NodeState::Lost | NodeState::Interrupted) {
                    self.delete(i);
                }
            }
        }

        /// Stopped nodes the provider cannot start (the pool moved to a
        /// provider or strategy without stop/start) serve nothing ever:
        /// delete them so always-on and fixed-size pools replace them.
        pub(super) fn delete_unstartable(&mut self) {
            if self.view.capabilities.stop_start {
                return;
            }
            for (i, n) in self.view.nodes.iter().enumerate() {
                if n.state == NodeState::Stopped {
                    self.delete(i);
                }
            }
        }

        /// Creates nodes of `size` until `target` are live (used for
        /// `min_nodes` and always-on nodes), within `max_nodes`.
        pub(super) fn fill_to(
            &mut self,
            target: u32,
            source: SourceKind,
            market: Market,
            size: &InstanceType,
        ) {
            while self.live() < target {
                if !self.create(source, market, size) {
                    break;
                }
            }
        }

        /// Takes back deletions of `deleted` (most recently idle first) while
        /// the pool would end below `floor`: keeping an idle node is cheaper
        /// and faster than booting a new one for `min_nodes`.
        pub(super) fn restore_floor(&mut self, deleted: &[usize], floor: u32) {
            for &i in deleted.iter().rev() {
                if self.live() >= floor {
                    break;
                }
                if self.removed[i] {
                    self.removed[i] = false;
                    let node = &self.view.nodes[i].node;
                    self.actions
                        .retain(|a| !matches!(a, Action::Delete { node: n } if n == node));
                }
            }
        }

        pub(super) fn finish(self) -> Plan {
            Plan {
                actions: self.actions,
                wake_at: self.wake_at,
            }
        }
    }

    /// Counts against `max_nodes`.
    pub(super) fn is_live(n: &NodeView) -> bool {
        !matches!(n.state, NodeState::Gone | NodeState::Deleting)
    }

    /// Up, idle and taking claims: the only nodes a strategy stops, resizes,
    /// snapshots or deletes for idleness.
    pub(super) fn is_idle_ready(n: &NodeView) -> bool {
        n.state == NodeState::Ready && n.claims == 0
    }

    /// Since when `n` has been idle (falls back to when it became ready).
    pub(super) fn idle_start(n: &NodeView) -> Millis {
        n.idle_since.unwrap_or(n.state_since)
    }

    /// What a node of type `t` offers, if the pool still sells `t`.
    pub(super) fn resources_of(view: &PoolView<'_>, t: &InstanceType) -> Option<NodeResources> {
        view.offering(t).map(|o| o.resources(&view.spec.labels))
    }

    /// Whether a node of type `t` can serve `req`. A type the pool no longer
    /// sells is assumed to fit: over-counting supply at worst delays a claim,
    /// under-counting it would buy machines on every plan.
    pub(super) fn fits(view: &PoolView<'_>, t: &InstanceType, req: &Requirements) -> bool {
        resources_of(view, t).is_none_or(|r| req.satisfied_by(&r))
    }

    /// Orders types small to large (unknown types last), for best fit.
    pub(super) fn size_key(
        view: &PoolView<'_>,
        t: &InstanceType,
    ) -> (bool, u32, u64, InstanceType) {
        match view.offering(t) {
            Some(o) => (false, o.cpus, o.memory_mb, t.clone()),
            None => (true, u32::MAX, u64::MAX, t.clone()),
        }
    }

    /// Pending claims against supply.
    #[derive(Debug)]
    pub(super) struct Matching {
        /// Pending claims (indices into `view.pending`) no free or coming
        /// slot covers, oldest first.
        pub(super) unmatched: Vec<usize>,
        /// Per node: a pending claim is expected to land on it.
        pub(super) needed: Vec<bool>,
    }

    impl Matching {
        pub(super) fn demands<'a>(&self, view: &PoolView<'a>) -> Vec<&'a Demand> {
            self.unmatched.iter().map(|&i| &view.pending[i]).collect()
        }
    }

    struct Group {
        ty: InstanceType,
        // (node index or None for a node this plan creates, free slots)
        members: Vec<(Option<usize>, u32)>,
    }

    type Groups = BTreeMap<(bool, u32, u64, InstanceType), Group>;

    fn add_slots(
        view: &PoolView<'_>,
        groups: &mut Groups,
        ty: &InstanceType,
        who: Option<usize>,
        free: u32,
    ) {
        if free == 0 {
            return;
        }
        groups
            .entry(size_key(view, ty))
            .or_insert_with(|| Group {
                ty: ty.clone(),
                members: Vec::new(),
            })
            .members
            .push((who, free));
    }

    /// Matches pending claims first to free slots of up nodes (where
    /// arbitration will actually put them now), then to the slots of nodes
    /// on their way up, including those this draft starts or creates.
    /// Within each, largest claims first, each into the smallest type that
    /// fits, so that the nodes a previous plan created for these claims are
    /// found again (this is what makes re-planning idempotent).
    pub(super) fn match_pending(d: &Draft<'_>) -> Matching {
        let view = &d.view;
        let mut up = Groups::new();
        let mut coming = Groups::new();
        for (i, n) in view.nodes.iter().enumerate() {
            if d.is_removed(i) {
                continue;
            }
            if d.is_started(i) || n.state.is_coming_up() {
                add_slots(
                    view,
                    &mut coming,
                    &n.instance_type,
                    Some(i),
                    n.slots.saturating_sub(n.claims),
                );
            } else {
                add_slots(view, &mut up, &n.instance_type, Some(i), n.free_slots());
            }
        }
        let new_slots = view.spec.slots_per_node.max(1);
        for t in &d.planned {
            add_slots(view, &mut coming, t, None, new_slots);
        }

        // Most constrained claims first: those no type the pool sells fits
        // (only a node of a retired type can take them), then by the
        // smallest type that fits, largest first. Matching them first leaves
        // over exactly the claims a new node can serve.
        let mut sizes: Vec<&Offering> = view.offerings.iter().collect();
        sizes.sort_by_key(|o| size_key(view, &o.instance_type));
        let constraint = |req: &Requirements| {
            let smallest = sizes
                .iter()
                .position(|o| req.satisfied_by(&o.resources(&view.spec.labels)));
            (smallest.is_none(), smallest, req.cpus, req.memory_mb)
        };
        let mut order: Vec<usize> = (0..view.pending.len()).collect();
        order.sort_by_cached_key(|&c| {
            (
                std::cmp::Reverse(constraint(&view.pending[c].requirements)),
                c,
            )
        });

        let mut needed = vec![false; view.nodes.len()];
        for groups in [up, coming] {
            let mut groups: Vec<Group> = groups.into_values().collect();
            order.retain(|&c| {
                let req = &view.pending[c].requirements;
                let slot = groups.iter_mut().find_map(|g| {
                    if !fits(view, &g.ty, req) {
                        return None;
                    }
                    g.members.iter_mut().find(|m| m.1 > 0)
                });
                match slot {
                    Some(m) => {
                        m.1 -= 1;
                        if let Some(i) = m.0 {
                            needed[i] = true;
                        }
                        false
                    }
                    None => true,
                }
            });
        }
        let mut unmatched = order;
        unmatched.sort_unstable();
        Matching { unmatched, needed }
    }

    /// Which offering and market a new node for `req` gets: spot when asked
    /// for and sold for a fitting type, else on-demand if allowed.
    pub(super) fn pick<'a>(
        view: &PoolView<'a>,
        req: &Requirements,
        market: Market,
        on_demand_fallback: bool,
    ) -> Option<(&'a Offering, Market)> {
        if market == Market::Spot {
            if view.capabilities.spot
                && let Some(o) = view.cheapest_fitting(req, Market::Spot)
            {
                return Some((o, Market::Spot));
            }
            if !on_demand_fallback {
                return None;
            }
        }
        view.cheapest_fitting(req, Market::OnDemand)
            .map(|o| (o, Market::OnDemand))
    }

    /// The market a node of offering `o` is bought in under this policy.
    pub(super) fn market_for(
        view: &PoolView<'_>,
        o: &Offering,
        market: Market,
        on_demand_fallback: bool,
    ) -> Option<Market> {
        match market {
            Market::Spot if view.capabilities.spot && o.spot.is_some() => Some(Market::Spot),
            Market::Spot if !on_demand_fallback => None,
            _ => Some(Market::OnDemand),
        }
    }

    /// Creates nodes for `claims` (oldest first), packing several claims on
    /// one new node when `slots_per_node` allows, at most `limit` nodes and
    /// never past `max_nodes`. Claims nothing fits are skipped (they wait,
    /// and arbitration reports why).
    pub(super) fn create_for(
        d: &mut Draft<'_>,
        claims: &[&Demand],
        source: SourceKind,
        market: Market,
        on_demand_fallback: bool,
        limit: u32,
    ) {
        let view = d.view;
        let slots = view.spec.slots_per_node.max(1);
        // New nodes of this call with free slots left: (type, slots left).
        let mut open: Vec<(InstanceType, u32)> = Vec::new();
        let mut made = 0u32;
        for c in claims {
            let req = &c.requirements;
            let best = open
                .iter_mut()
                .filter(|(t, left)| *left > 0 && fits(&view, t, req))
                .min_by_key(|(t, _)| size_key(&view, t));
            if let Some((_, left)) = best {
                *left -= 1;
                continue;
            }
            if made >= limit {
                continue;
            }
            let Some((o, m)) = pick(&view, req, market, on_demand_fallback) else {
                continue;
            };
            if !d.create(source, m, &o.instance_type) {
                break;
            }
            made += 1;
            open.push((o.instance_type.clone(), slots - 1));
        }
    }

    /// Deletes every idle node whose timer ran out (longest idle first) and
    /// returns them in that order; `keep` nodes are never deleted. Stopped
    /// nodes (not `keep`) count as expired at once: these strategies never
    /// want them. Sets the wake-up for the next timer. The caller creates
    /// what demand needs and then gives back deletions with
    /// [`Draft::restore_floor`], so `min_nodes` is judged on the final pool.
    pub(super) fn delete_idle(
        d: &mut Draft<'_>,
        m: &Matching,
        keep: &[bool],
        now: Millis,
        timeout: Millis,
    ) -> Vec<usize> {
        let nodes = d.view.nodes;
        let mut candidates: Vec<(Millis, usize)> = nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| {
                !d.is_removed(*i) && !keep.get(*i).copied().unwrap_or(false) && !m.needed[*i]
            })
            .filter_map(|(i, n)| {
                if is_idle_ready(n) {
                    Some((idle_start(n).saturating_add(timeout), i))
                } else if n.state == NodeState::Stopped && !d.is_started(i) {
                    Some((0, i))
                } else {
                    None
                }
            })
            .collect();
        candidates.sort_unstable();
        let mut deleted = Vec::new();
        for (due, i) in candidates {
            if due <= now {
                d.delete(i);
                deleted.push(i);
            } else {
                d.wake(due, now);
            }
        }
        deleted
    }

    /// Boots from the snapshot when the provider can and one exists.
    pub(super) fn preferred_source(view: &PoolView<'_>) -> SourceKind {
        if view.capabilities.snapshot && view.snapshot.is_some() {
            SourceKind::Snapshot
        } else {
            SourceKind::Image
        }
    }

    /// Takes a snapshot of one idle node when the provider can, none is in
    /// flight and the current one is missing or older than `refresh_ms`.
    /// Prefers nodes not in `avoid` (always-on nodes), then the longest idle.
    /// Returns the node snapshotted, so the caller does not delete it.
    pub(super) fn maybe_snapshot(
        d: &mut Draft<'_>,
        m: &Matching,
        avoid: &[bool],
        now: Millis,
        refresh_ms: Millis,
    ) -> Option<usize> {
        let view = d.view;
        if !view.capabilities.snapshot {
            return None;
        }
        if view
            .nodes
            .iter()
            .any(|n| n.state == NodeState::Snapshotting)
        {
            return None;
        }
        if let Some(s) = view.snapshot {
            let due = s.created_at.saturating_add(refresh_ms);
            if now < due {
                // Ask again when it goes stale, if there is a node to take it from.
                if view.nodes.iter().any(|n| n.state == NodeState::Ready) {
                    d.wake(due, now);
                }
                return None;
            }
        }
        let pick = view
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, n)| !d.is_removed(*i) && !m.needed[*i] && is_idle_ready(n))
            .min_by_key(|(i, n)| (avoid.get(*i).copied().unwrap_or(false), idle_start(n), *i))
            .map(|(i, _)| i)?;
        d.push(Action::Snapshot {
            node: view.nodes[pick].node.clone(),
        });
        Some(pick)
    }

    /// Picks the `k` nodes an always-on strategy keeps: by the order of
    /// their type in `prefer` (others last), then the most up, then by node id. Stopped nodes only count
    /// when the provider can start them.
    pub(super) fn primaries(d: &Draft<'_>, k: u32, prefer: &[&InstanceType]) -> Vec<bool> {
        let nodes = d.view.nodes;
        let mut order: Vec<(usize, u8, usize)> = nodes
            .iter()
            .enumerate()
            .filter(|(i, n)| !d.is_removed(*i) && is_live(n))
            // A stopped node the provider cannot start is no always-on node.
            .filter(|(_, n)| d.view.capabilities.stop_start || n.state != NodeState::Stopped)
            .map(|(i, n)| {
                let rank = match n.state {
                    // A resize keeps the node's role: it is up again soon.
                    NodeState::Ready | NodeState::Busy | NodeState::Resizing => 0,
                    NodeState::Snapshotting | NodeState::Starting => 1,
                    NodeState::Requested | NodeState::Provisioning | NodeState::Booting => 2,
                    NodeState::Stopped | NodeState::Stopping => 3,
                    _ => 4,
                };
                (
                    prefer
                        .iter()
                        .position(|p| *p == &n.instance_type)
                        .unwrap_or(prefer.len()),
                    rank,
                    i,
                )
            })
            .collect();
        order.sort_unstable();
        let mut chosen = vec![false; nodes.len()];
        for &(_, _, i) in order.iter().take(usize::try_from(k).unwrap_or(usize::MAX)) {
            chosen[i] = true;
        }
        chosen
    }

    /// The offering of `wanted` if the pool sells it, else the baseline.
    pub(super) fn offering_or_baseline<'a>(
        view: &PoolView<'a>,
        wanted: Option<&InstanceType>,
    ) -> Option<&'a Offering> {
        wanted
            .and_then(|t| view.offering(t))
            .or_else(|| view.baseline())
    }

    /// One hour of running at `price`, as billed.
    pub(super) fn hour_of(billing: &BillingModel, price: HourlyPrice) -> Money {
        billing.running_cost(price, MS_PER_HOUR)
    }

    /// Snapshot storage per hour for an idle pool: the snapshot that exists,
    /// or, when `will_take` (the strategy will snapshot a node it keeps), one
    /// the size of the baseline disk.
    pub(super) fn snapshot_hourly(view: &PoolView<'_>, will_take: bool) -> Money {
        let gb = match (view.snapshot, view.baseline()) {
            (Some(s), _) => u64::from(s.size_gb),
            (None, Some(b)) if will_take && view.capabilities.snapshot => u64::from(b.disk_gb),
            _ => return Money::ZERO,
        };
        view.billing.snapshot_per_gb_month.hourly(gb).0
    }

    /// The idle cost of `nodes_per_hour` of nodes kept from the start plus
    /// a snapshot costing `storage` per hour. A snapshot the pool does not
    /// have yet is taken of the first kept node once it booted from the
    /// image, so until then only the nodes are paid.
    pub(super) fn idle_with_snapshot(
        view: &PoolView<'_>,
        nodes_per_hour: Money,
        storage: Money,
    ) -> super::IdleCost {
        if storage == Money::ZERO || view.snapshot.is_some() {
            return super::IdleCost::steady(nodes_per_hour + storage);
        }
        let settle_ms = view
            .billing
            .boot
            .image_ms
            .saturating_add(view.billing.calls.snapshot_ms);
        super::IdleCost {
            setup: HourlyPrice(nodes_per_hour).for_millis(settle_ms),
            settle_ms,
            per_hour: nodes_per_hour + storage,
        }
    }

    /// An idle cost in words: `$x/h`, or `$s over the first N ms, then $x/h`.
    pub(super) fn idle_words(idle: &super::IdleCost) -> String {
        if idle.settle_ms == 0 {
            format!("{}/h", idle.per_hour)
        } else {
            format!(
                "{} over its first {} ms, then {}/h",
                idle.setup, idle.settle_ms, idle.per_hour
            )
        }
    }

    /// The billing rules in words.
    pub(super) fn billing_words(b: &BillingModel) -> String {
        let running = match b.granularity {
            Granularity::PerSecond { minimum_secs } => {
                format!("running time billed per second with a {minimum_secs} s minimum per start")
            }
            Granularity::PerStartedHour => "every started hour billed in full".to_owned(),
        };
        let stopped = match b.stopped {
            StoppedBilling::DiskOnly => format!(
                "a stopped node pays only its disk ({}/GB-month)",
                b.disk_per_gb_month.0
            ),
            StoppedBilling::FullPrice => "a stopped node pays its full price".to_owned(),
        };
        format!(
            "{running}; {stopped}; snapshots {}/GB-month",
            b.snapshot_per_gb_month.0
        )
    }

    /// A milliseconds parameter as text.
    pub(super) fn ms(v: Millis) -> String {
        format!("{v} ms")
    }

    /// `name @ $x/h` for the cost-model text.
    pub(super) fn priced(o: Option<&Offering>, market: Market) -> String {
        match o.and_then(|o| o.price(market).map(|p| (o, p))) {
            Some((o, p)) => format!("{} at {}/h", o.instance_type, p.0),
            None => "no offering".to_owned(),
        }
    }

    /// How an elastic (create on demand, delete when idle) pool buys nodes.
    #[derive(Debug, Clone, Copy)]
    pub(super) struct Elastic {
        pub(super) source: SourceKind,
        pub(super) market: Market,
        pub(super) on_demand_fallback: bool,
        pub(super) idle_timeout_ms: Millis,
        /// Take/refresh a snapshot this often (snapshot-booting strategies).
        pub(super) snapshot_refresh_ms: Option<Millis>,
    }

    /// The plan of ColdImage, ColdSnapshot and Spot: replace failed nodes,
    /// keep `min_nodes` baseline nodes, snapshot when due, delete nodes idle
    /// past the timeout, create for uncovered demand.
    pub(super) fn plan_elastic(view: &PoolView<'_>, now: Millis, e: Elastic) -> Plan {
        let mut d = Draft::new(view);
        d.delete_failed();
        let m = match_pending(&d);
        let mut keep = vec![false; view.nodes.len()];
        if let Some(refresh) = e.snapshot_refresh_ms
            && let Some(i) = maybe_snapshot(&mut d, &m, &[], now, refresh)
        {
            keep[i] = true;
        }
        // Deletes first: they free room under max_nodes for the creates.
        let deleted = delete_idle(&mut d, &m, &keep, now, e.idle_timeout_ms);
        let claims = m.demands(view);
        create_for(
            &mut d,
            &claims,
            e.source,
            e.market,
            e.on_demand_fallback,
            u32::MAX,
        );
        let floor = d.floor();
        d.restore_floor(&deleted, floor);
        if let Some(b) = view.baseline()
            && let Some(market) = market_for(view, b, e.market, e.on_demand_fallback)
        {
            d.fill_to(floor, e.source, market, &b.instance_type);
        }
        d.finish()
    }
}
