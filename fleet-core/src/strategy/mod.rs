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

use serde::{Deserialize, Serialize};

use crate::billing::{BillingModel, BootPath};
use crate::ids::{ClaimId, InstanceType, Millis, NodeId};
use crate::money::{HourlyPrice, Money};
use crate::protocol::{NodeState, Requirements};
use crate::provider::{Capabilities, Market, Offering, SnapshotRef};
use crate::schedule::Capacity;

mod always_on_resize;
mod cold_image;
mod cold_snapshot;
mod config;
mod hybrid;
mod kit;
mod pool;
mod spot;
mod stopped_pool;

pub use always_on_resize::AlwaysOnResize;
pub use cold_image::ColdImage;
pub use cold_snapshot::ColdSnapshot;
pub use config::*;
pub use hybrid::Hybrid;
pub use pool::PoolSpec;
pub use spot::Spot;
pub use stopped_pool::StoppedPool;

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
    /// It takes no new claims and is to be replaced once idle: it has
    /// served the pool's `max_uses`.
    pub retiring: bool,
}

impl NodeView {
    /// Free slots if it is up and taking claims.
    pub fn free_slots(&self) -> u32 {
        if self.retiring {
            return 0;
        }
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
    /// The idle-capacity policy in force now (the pool's schedule read at
    /// the controller's clock; the default when it has none).
    pub capacity: Capacity,
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
            .filter(|o| o.serves(req, &self.spec.labels))
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
    /// Why: `reasons[i]` is why `actions[i]` (what `fleetctl explain pool`
    /// shows). A strategy that gives none (or fewer) leaves the rest
    /// [`Reason::Unstated`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<Reason>,
}

impl Plan {
    /// Why the plan asks for `actions[i]`.
    pub fn reason(&self, i: usize) -> &Reason {
        static UNSTATED: Reason = Reason::Unstated;
        self.reasons.get(i).unwrap_or(&UNSTATED)
    }
}

/// Why a strategy asks for an action: the input that decided it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "reason", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Reason {
    /// A claim (or job) waits that no node can take; `waiting` wait in all.
    Demand {
        /// The oldest claim the action is for.
        claim: ClaimId,
        /// Claims waiting that no node covers.
        waiting: u32,
    },
    /// Claims wait that only the pool's peak type fits.
    PeakDemand {
        /// How many.
        waiting: u32,
    },
    /// The pool keeps at least `min_nodes`.
    MinNodes {
        /// The pool's `min_nodes`.
        min_nodes: u32,
    },
    /// The strategy keeps this many nodes (always-on count, stopped-pool
    /// size).
    PoolSize {
        /// The size.
        size: u32,
    },
    /// More nodes than the strategy keeps, and this one is not needed.
    BeyondSize {
        /// The size.
        size: u32,
    },
    /// The capacity policy in force asks for free slots.
    Spare {
        /// Free slots it asks for.
        slots: u32,
    },
    /// Idle past the timeout.
    Idle {
        /// How long it has been idle.
        idle_ms: Millis,
        /// The timeout in force.
        timeout_ms: Millis,
    },
    /// Stopped, and the strategy keeps no stopped nodes.
    StoppedUnused,
    /// Lost or interrupted: it serves nothing and is replaced.
    Failed {
        /// Its state.
        state: NodeState,
    },
    /// It served the pool's `max_uses`.
    Retired,
    /// Stopped on a provider that cannot start it.
    Unstartable,
    /// The pool's snapshot is missing or older than the refresh period.
    SnapshotDue {
        /// How old the current one is (none: there is none).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        age_ms: Option<Millis>,
        /// The refresh period.
        refresh_ms: Millis,
    },
    /// Back to the base type, stopped for it earlier.
    ScaleDown,
    /// A strategy's own words.
    Custom {
        /// What decided it.
        detail: String,
    },
    /// The strategy gave no reason.
    Unstated,
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = crate::time::duration;
        match self {
            Reason::Demand { claim, waiting } => write!(
                f,
                "claim {claim} waits and no node can take it ({waiting} waiting)"
            ),
            Reason::PeakDemand { waiting } => {
                write!(f, "{waiting} claim(s) wait that only the peak type fits")
            }
            Reason::MinNodes { min_nodes } => write!(f, "the pool keeps min_nodes = {min_nodes}"),
            Reason::PoolSize { size } => write!(f, "the strategy keeps {size} node(s)"),
            Reason::BeyondSize { size } => {
                write!(f, "more nodes than the {size} the strategy keeps, and idle")
            }
            Reason::Spare { slots } => {
                write!(f, "the capacity policy asks for {slots} free slot(s)")
            }
            Reason::Idle {
                idle_ms,
                timeout_ms,
            } => write!(f, "idle {} (timeout {})", s(*idle_ms), s(*timeout_ms)),
            Reason::StoppedUnused => write!(f, "stopped, and this strategy keeps none stopped"),
            Reason::Failed { state } => write!(f, "{}: serves nothing, replaced", state.name()),
            Reason::Retired => write!(f, "served the pool's max_uses"),
            Reason::Unstartable => write!(f, "stopped, and the provider cannot start it"),
            Reason::SnapshotDue {
                age_ms: Some(age),
                refresh_ms,
            } => write!(
                f,
                "the snapshot is {} old (refreshed every {})",
                s(*age),
                s(*refresh_ms)
            ),
            Reason::SnapshotDue { age_ms: None, .. } => write!(f, "the pool has no snapshot yet"),
            Reason::ScaleDown => write!(f, "back to the base type"),
            Reason::Custom { detail } => f.write_str(detail),
            Reason::Unstated => write!(f, "no reason given by the strategy"),
        }
    }
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
    ///
    /// The controller asks again after a round in which something that can
    /// change a decision happened: demand came or went (a claim is demand
    /// once stored; one granted at once never is), a node became ready,
    /// busy, idle, stopped, lost or gone, a provider call failed, or
    /// [`Plan::wake_at`] came. It does not ask again for the steps a
    /// node takes on its way up (requested → provisioning → booting,
    /// starting → booting: the node counts as coming up in each), nor for
    /// the step this plan's own action starts (an idle node entering
    /// deleting, stopping, snapshotting or resizing, a stopped one
    /// starting); the next view shows them all.
    fn plan(&self, pool: &PoolView<'_>, now: Millis) -> Plan;
}
