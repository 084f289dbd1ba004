//! Pools to plan on, built by hand: each [`Situation`] owns what a
//! [`PoolView`] borrows (the controller builds the same view from its
//! records). Shared by the example and its snapshot test.

use fleet_core::billing::BillingModel;
use fleet_core::ids::IdError;
use fleet_core::money::{HourlyPrice, MS_PER_HOUR};
use fleet_core::protocol::{Arch, NodeState, Requirements};
use fleet_core::provider::{Capabilities, Market, Offering};
use fleet_core::schedule::Capacity;
use fleet_core::strategy::{Action, Demand, NodeView, Plan, PoolSpec, PoolView};
use fleet_core::{ClaimId, InstanceType, Millis, NodeId, PoolName};

/// 2026-01-05T00:00Z, a Monday.
pub(crate) const MONDAY: Millis = 1_767_571_200_000;
const MINUTE: Millis = 60_000;
const DAY: Millis = 24 * MS_PER_HOUR;

pub(crate) const SMALL: &str = "c7i.large";
pub(crate) const LARGE: &str = "c7i.4xlarge";

/// One pool at one instant.
#[derive(Debug, Clone)]
pub(crate) struct Situation {
    /// A name for the output and the snapshot file.
    pub(crate) name: &'static str,
    pub(crate) now: Millis,
    spec: PoolSpec,
    nodes: Vec<NodeView>,
    pending: Vec<Demand>,
    offerings: Vec<Offering>,
    capabilities: Capabilities,
    billing: BillingModel,
}

impl Situation {
    /// An empty EC2-like pool of up to 4 one-slot nodes of two sizes.
    fn new(name: &'static str, now: Millis) -> Result<Situation, IdError> {
        let offering = |t: &str, cpus, gib: u64, micros| -> Result<Offering, IdError> {
            Ok(Offering {
                instance_type: InstanceType::new(t)?,
                cpus,
                memory_mb: gib * 1024,
                arch: Arch::X86_64,
                disk_gb: 40,
                on_demand: HourlyPrice::from_micros(micros),
                spot: None,
            })
        };
        let offerings = vec![
            offering(SMALL, 2, 4, 89_250)?,
            offering(LARGE, 16, 32, 714_000)?,
        ];
        Ok(Situation {
            name,
            now,
            spec: PoolSpec {
                name: PoolName::new("builds")?,
                instance_types: offerings.iter().map(|o| o.instance_type.clone()).collect(),
                max_nodes: 4,
                slots_per_node: 1,
                min_nodes: 0,
                ..PoolSpec::default()
            },
            nodes: Vec::new(),
            pending: Vec::new(),
            offerings,
            capabilities: Capabilities::all(),
            billing: BillingModel::ec2(),
        })
    }

    /// A ready node without claims since `idle_since`.
    fn idle_node(mut self, id: &str, idle_since: Millis) -> Result<Situation, IdError> {
        self.nodes.push(NodeView {
            node: NodeId::new(id)?,
            state: NodeState::Ready,
            state_since: idle_since,
            instance_type: InstanceType::new(SMALL)?,
            market: Market::OnDemand,
            claims: 0,
            slots: self.spec.slots_per_node,
            idle_since: Some(idle_since),
            retiring: false,
        });
        Ok(self)
    }

    /// A node serving a claim.
    fn busy_node(mut self, id: &str) -> Result<Situation, IdError> {
        self.nodes.push(NodeView {
            node: NodeId::new(id)?,
            state: NodeState::Busy,
            state_since: self.now - MINUTE,
            instance_type: InstanceType::new(SMALL)?,
            market: Market::OnDemand,
            claims: 1,
            slots: self.spec.slots_per_node,
            idle_since: None,
            retiring: false,
        });
        Ok(self)
    }

    /// `n` claims waiting, needing `cpus` each.
    fn waiting(mut self, n: usize, cpus: u32) -> Result<Situation, IdError> {
        for _ in 0..n {
            let i = self.pending.len();
            self.pending.push(Demand {
                claim: ClaimId::new(format!("c{i}"))?,
                requirements: Requirements {
                    cpus,
                    ..Requirements::default()
                },
                enqueued_at: self.now - MINUTE,
            });
        }
        Ok(self)
    }

    /// The view a strategy plans on.
    pub(crate) fn view(&self) -> PoolView<'_> {
        PoolView {
            spec: &self.spec,
            nodes: &self.nodes,
            pending: &self.pending,
            offerings: &self.offerings,
            capabilities: &self.capabilities,
            billing: &self.billing,
            snapshot: None,
            capacity: Capacity::default(),
        }
    }

    /// The pool right after the controller took `plan`'s actions: new
    /// nodes recorded as `requested`, deleted ones `deleting`.
    pub(crate) fn after(&self, plan: &Plan) -> Result<Situation, IdError> {
        let mut next = self.clone();
        for (i, action) in plan.actions.iter().enumerate() {
            match action {
                Action::Create { size, market, .. } => next.nodes.push(NodeView {
                    node: NodeId::new(format!("new-{i}"))?,
                    state: NodeState::Requested,
                    state_since: self.now,
                    instance_type: size.clone(),
                    market: *market,
                    claims: 0,
                    slots: self.spec.slots_per_node,
                    idle_since: None,
                    retiring: false,
                }),
                Action::Delete { node } => {
                    for n in next.nodes.iter_mut().filter(|n| &n.node == node) {
                        n.state = NodeState::Deleting;
                    }
                }
                // This strategy asks for nothing else.
                _ => {}
            }
        }
        Ok(next)
    }
}

/// The situations the example prints and the test snapshots.
pub(crate) fn all() -> Result<Vec<Situation>, IdError> {
    let monday = |h: u64, m: u64| MONDAY + h * MS_PER_HOUR + m * MINUTE;
    let saturday = |h: u64, m: u64| monday(h, m) + 5 * DAY;
    Ok(vec![
        Situation::new("monday_0900_empty_pool", monday(9, 0))?,
        Situation::new("monday_0900_warm_node_idle", monday(9, 0))?
            .idle_node("builds-1-1", monday(8, 0))?,
        Situation::new("monday_1900_idle_for_30_min", monday(19, 0))?
            .idle_node("builds-1-1", monday(18, 30))?,
        Situation::new("monday_1900_idle_for_2_min", monday(19, 0))?
            .idle_node("builds-1-1", monday(18, 58))?,
        Situation::new("monday_1000_claim_too_big_for_the_warm_node", monday(10, 0))?
            .idle_node("builds-1-1", monday(8, 0))?
            .waiting(1, 8)?,
        Situation::new("saturday_1100_burst_of_5", saturday(11, 0))?.waiting(5, 0)?,
        // Five minutes on: three nodes up and busy, two claims still wait,
        // room for one more node under max_nodes = 4.
        Situation::new("saturday_1105_three_up_two_waiting", saturday(11, 5))?
            .busy_node("builds-1-1")?
            .busy_node("builds-1-2")?
            .busy_node("builds-1-3")?
            .waiting(2, 0)?,
    ])
}
