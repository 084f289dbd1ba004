//! The six strategies' plans: snapshots of what each does in the classic
//! situations and under each pool policy (scheduled spare nodes,
//! `max_uses` recycling), and properties over random pools and policies
//! (idempotent, within `max_nodes`/`min_nodes`, capabilities respected,
//! only sensible actions: nothing touches a node holding a claim or job).
#![expect(clippy::unwrap_used, reason = "test fixtures build known-good ids")]

use std::collections::BTreeMap;

use fleet_core::billing::BillingModel;
use fleet_core::money::{HourlyPrice, MS_PER_HOUR, Money};
use fleet_core::protocol::{Arch, NodeState, Requirements};
use fleet_core::provider::{Capabilities, Market, Offering, SnapshotRef, SpotTerms};
use fleet_core::schedule::{Capacity, ScaleFactor};
use fleet_core::strategy::{
    Action, AlwaysOnResize, Demand, IdleCost, NodeView, Plan, PoolSpec, PoolView, SourceKind,
    StrategyConfig, StrategyInfo,
};
use fleet_core::{ClaimId, InstanceType, Millis, NodeId, PoolName};
use proptest::prelude::*;

const NOW: Millis = 100 * MS_PER_HOUR;
const SMALL: &str = "m7i.large";
const MID: &str = "c7i.xlarge";
const BIG: &str = "m7i.2xlarge";

fn it(s: &str) -> InstanceType {
    InstanceType::new(s).unwrap()
}

fn offering(t: &str, cpus: u32, gib: u64, on_demand: i64, spot: Option<i64>) -> Offering {
    Offering {
        instance_type: it(t),
        cpus,
        memory_mb: gib * 1024,
        arch: Arch::X86_64,
        disk_gb: 40,
        on_demand: HourlyPrice::from_micros(on_demand),
        spot: spot.map(|p| SpotTerms {
            price: HourlyPrice::from_micros(p),
            interruptions_per_1000h: 50,
        }),
    }
}

/// Everything a [`PoolView`] borrows, owned.
#[derive(Debug, Clone)]
struct Fixture {
    spec: PoolSpec,
    nodes: Vec<NodeView>,
    pending: Vec<Demand>,
    offerings: Vec<Offering>,
    caps: Capabilities,
    billing: BillingModel,
    snapshot: Option<SnapshotRef>,
    capacity: Capacity,
}

impl Fixture {
    /// EC2-like: per-second billing, everything supported, spot sold for
    /// the two m7i types (not for c7i.xlarge).
    fn ec2() -> Fixture {
        Fixture {
            spec: PoolSpec {
                name: PoolName::new("linux-x64").unwrap(),
                strategy: StrategyConfig::default(),
                instance_types: vec![it(SMALL), it(MID), it(BIG)],
                image: "ami-builder".to_owned(),
                labels: BTreeMap::new(),
                min_nodes: 0,
                max_nodes: 10,
                slots_per_node: 1,
                max_uses: None,
                schedule: Vec::new(),
                affinity_wait_ms: 0,
                revision: String::new(),
                drift_replacements: 1,
            },
            nodes: Vec::new(),
            pending: Vec::new(),
            offerings: vec![
                offering(SMALL, 2, 8, 100_800, Some(38_000)),
                offering(MID, 4, 8, 178_500, None),
                offering(BIG, 8, 32, 403_200, Some(152_000)),
            ],
            caps: Capabilities {
                resize_requires_stop: true,
                ..Capabilities::all()
            },
            billing: BillingModel::ec2(),
            snapshot: None,
            capacity: Capacity::default(),
        }
    }

    /// Hetzner-like: started hours, stopped billed in full, no spot.
    fn hetzner() -> Fixture {
        let mut f = Fixture::ec2();
        f.spec.instance_types = vec![it("cx22"), it("cx42")];
        f.offerings = vec![
            offering("cx22", 2, 4, 6_000, None),
            offering("cx42", 8, 16, 24_000, None),
        ];
        f.caps = Capabilities {
            stop_start: true,
            resize: true,
            resize_requires_stop: true,
            snapshot: true,
            spot: false,
            max_instances: None,
        };
        f.billing = BillingModel::hetzner();
        f
    }

    fn view(&self) -> PoolView<'_> {
        PoolView {
            spec: &self.spec,
            nodes: &self.nodes,
            pending: &self.pending,
            offerings: &self.offerings,
            capabilities: &self.caps,
            billing: &self.billing,
            snapshot: self.snapshot.as_ref(),
            capacity: self.capacity,
        }
    }

    fn node(mut self, id: &str, state: NodeState, t: &str, market: Market, claims: u32) -> Fixture {
        let idle = matches!(state, NodeState::Ready).then_some(NOW - 60_000);
        self.nodes.push(NodeView {
            node: NodeId::new(id).unwrap(),
            state,
            state_since: NOW - 600_000,
            instance_type: it(t),
            market,
            claims,
            slots: self.spec.slots_per_node,
            idle_since: idle,
            retiring: false,
        });
        self
    }

    fn idle_since(mut self, since: Millis) -> Fixture {
        for n in &mut self.nodes {
            if n.state == NodeState::Ready {
                n.idle_since = Some(since);
            }
        }
        self
    }

    fn claims(mut self, n: usize, cpus: u32) -> Fixture {
        for _ in 0..n {
            let i = self.pending.len();
            self.pending.push(Demand {
                claim: ClaimId::new(format!("c{i:02}")).unwrap(),
                requirements: Requirements {
                    cpus,
                    ..Requirements::default()
                },
                enqueued_at: NOW - 1_000 * (100 - i as u64),
            });
        }
        self
    }

    fn with_snapshot(mut self, created_at: Millis) -> Fixture {
        self.snapshot = Some(SnapshotRef {
            id: "snap-1".to_owned(),
            size_gb: 30,
            created_at,
        });
        self
    }
}

/// Each of the six with defaults, keyed by name.
fn plans(f: &Fixture) -> BTreeMap<&'static str, Plan> {
    StrategyConfig::all_defaults()
        .iter()
        .map(|c| (c.name(), c.build().plan(&f.view(), NOW)))
        .collect()
}

fn describes(f: &Fixture) -> BTreeMap<&'static str, StrategyInfo> {
    StrategyConfig::all_defaults()
        .iter()
        .map(|c| (c.name(), c.build().describe(&f.view())))
        .collect()
}

// ---- snapshots: one file per situation, all six strategies side by side ----

#[test]
fn cold_start() {
    let f = Fixture::ec2().claims(3, 0);
    insta::assert_yaml_snapshot!(plans(&f));
}

#[test]
fn burst() {
    let mut f = Fixture::ec2()
        .node("n1", NodeState::Busy, SMALL, Market::OnDemand, 1)
        .node("n2", NodeState::Busy, SMALL, Market::OnDemand, 1);
    f.spec.max_nodes = 4;
    // The oldest claim needs 4 cpus: only c7i.xlarge and up fit it.
    let f = f.claims(1, 4).claims(4, 0);
    insta::assert_yaml_snapshot!(plans(&f));
}

#[test]
fn idle_for_an_hour() {
    let mut f = Fixture::ec2()
        .node("n1", NodeState::Ready, SMALL, Market::OnDemand, 0)
        .node("n2", NodeState::Ready, SMALL, Market::OnDemand, 0)
        .idle_since(NOW - MS_PER_HOUR)
        .with_snapshot(NOW - 2 * MS_PER_HOUR);
    f.spec.min_nodes = 1;
    insta::assert_yaml_snapshot!(plans(&f));
}

#[test]
fn idle_for_an_hour_on_hetzner() {
    let mut f = Fixture::hetzner()
        .node("n1", NodeState::Ready, "cx22", Market::OnDemand, 0)
        .node("n2", NodeState::Ready, "cx22", Market::OnDemand, 0)
        .idle_since(NOW - MS_PER_HOUR);
    f.spec.min_nodes = 1;
    insta::assert_yaml_snapshot!(plans(&f));
}

#[test]
fn idle_at_peak_and_a_fresh_idle_node() {
    // n1 was resized to peak 10 min ago and is idle; n2 went idle 10 s ago.
    let f = Fixture::ec2()
        .node("n1", NodeState::Ready, BIG, Market::OnDemand, 0)
        .idle_since(NOW - 600_000)
        .node("n2", NodeState::Ready, SMALL, Market::OnDemand, 0);
    let mut f = f;
    f.nodes[1].idle_since = Some(NOW - 10_000);
    insta::assert_yaml_snapshot!(plans(&f));
}

#[test]
fn big_claim_waits_on_a_small_idle_node() {
    let f = Fixture::ec2()
        .node("n1", NodeState::Ready, SMALL, Market::OnDemand, 0)
        .claims(1, 8);
    insta::assert_yaml_snapshot!(plans(&f));
}

#[test]
fn spot_interruption() {
    let f = Fixture::ec2()
        .node("n1", NodeState::Interrupted, SMALL, Market::Spot, 1)
        .node("n2", NodeState::Busy, SMALL, Market::Spot, 1)
        .claims(1, 0);
    insta::assert_yaml_snapshot!(plans(&f));
}

#[test]
fn node_lost() {
    let f = Fixture::ec2()
        .node("n1", NodeState::Lost, SMALL, Market::OnDemand, 0)
        .claims(1, 0);
    insta::assert_yaml_snapshot!(plans(&f));
}

// ---- pool policies: the same six under a schedule period and max_uses ----

/// A working-hours period: two idle slots kept ready, plus one per two in
/// use, idle nodes kept 20 minutes.
fn working_hours() -> Capacity {
    Capacity {
        period: Some(0),
        min_idle: 2,
        scale_factor: ScaleFactor::new(0.5).unwrap(),
        scale_factor_limit: Some(4),
        idle_time_ms: Some(20 * 60_000),
    }
}

#[test]
fn scheduled_spare_capacity_on_an_empty_pool() {
    let mut f = Fixture::ec2();
    f.capacity = working_hours();
    insta::assert_yaml_snapshot!(plans(&f));
}

#[test]
fn scheduled_spare_capacity_under_load() {
    // Four busy nodes and two idle for 10 minutes (past every strategy's
    // own timeout, within the period's 20): the period wants
    // max(2, ceil(4 x 0.5)) = 2 spare slots, so both idle nodes stay.
    let mut f = Fixture::ec2()
        .node("n1", NodeState::Busy, SMALL, Market::OnDemand, 1)
        .node("n2", NodeState::Busy, SMALL, Market::OnDemand, 1)
        .node("n3", NodeState::Busy, SMALL, Market::OnDemand, 1)
        .node("n4", NodeState::Busy, SMALL, Market::OnDemand, 1)
        .node("n5", NodeState::Ready, SMALL, Market::OnDemand, 0)
        .node("n6", NodeState::Ready, SMALL, Market::OnDemand, 0)
        .idle_since(NOW - 600_000);
    f.capacity = working_hours();
    insta::assert_yaml_snapshot!(plans(&f));
}

#[test]
fn spare_nodes_go_when_the_period_ends() {
    // The same pool after the period: no spare is wanted, the strategies'
    // own timeouts apply.
    let f = Fixture::ec2()
        .node("n1", NodeState::Busy, SMALL, Market::OnDemand, 1)
        .node("n5", NodeState::Ready, SMALL, Market::OnDemand, 0)
        .node("n6", NodeState::Ready, SMALL, Market::OnDemand, 0)
        .idle_since(NOW - 600_000);
    insta::assert_yaml_snapshot!(plans(&f));
}

#[test]
fn retiring_nodes_are_replaced_once_idle() {
    // n1 served its max_uses and is idle: it goes, and a waiting claim
    // gets a fresh node. n2 served its share too but still holds a claim:
    // nothing touches it.
    let mut f = Fixture::ec2()
        .node("n1", NodeState::Ready, SMALL, Market::OnDemand, 0)
        .node("n2", NodeState::Busy, SMALL, Market::OnDemand, 1)
        .claims(1, 0);
    f.nodes[0].retiring = true;
    f.nodes[1].retiring = true;
    f.spec.max_uses = Some(3);
    let all = plans(&f);
    for (name, plan) in &all {
        assert!(
            plan.actions.contains(&Action::Delete {
                node: NodeId::new("n1").unwrap()
            }),
            "{name}: {plan:?}"
        );
        assert!(
            !plan.actions.iter().any(|a| matches!(a,
                Action::Delete { node } | Action::Stop { node } | Action::Resize { node, .. }
                    if node.as_str() == "n2")),
            "{name}: {plan:?}"
        );
    }
    insta::assert_yaml_snapshot!(all);
}

#[test]
fn stopped_nodes_start_before_any_create() {
    let f = Fixture::ec2()
        .node("n1", NodeState::Stopped, SMALL, Market::OnDemand, 0)
        .node("n2", NodeState::Stopped, SMALL, Market::OnDemand, 0)
        .claims(1, 0);
    let plan = StrategyConfig::StoppedPool(Default::default())
        .build()
        .plan(&f.view(), NOW);
    assert_eq!(
        plan.actions,
        vec![Action::Start {
            node: NodeId::new("n1").unwrap()
        }]
    );
}

#[test]
fn describe_on_ec2() {
    let mut f = Fixture::ec2().with_snapshot(NOW);
    f.spec.min_nodes = 1;
    insta::assert_yaml_snapshot!(describes(&f));
}

#[test]
fn describe_on_hetzner() {
    let mut f = Fixture::hetzner();
    f.spec.min_nodes = 1;
    insta::assert_yaml_snapshot!(describes(&f));
}

// ---- exact idle costs (what the simulator's zero-arrival check relies on) ----

#[test]
fn idle_costs_are_exact() {
    let mut f = Fixture::ec2();
    f.spec.min_nodes = 2;
    let d = describes(&f);
    let cost = |n: &str| {
        let i = d[n].idle_cost;
        (i.setup.micros(), i.settle_ms, i.per_hour.micros())
    };
    // A running node: the instance ($0.1008/h), its 40 GB gp3 root volume
    // ($0.08/GB-month over 730 h, rounded up: 4 384 µ$/h) and its public
    // IPv4 address ($0.005/h).
    let node = 100_800 + 4_384 + 5_000;
    assert_eq!(cost("cold_image"), (0, 0, 2 * node));
    // Two kept nodes, one gets snapshotted once it booted from the image
    // (240 s) and the snapshot is taken (60 s): the nodes alone for those
    // 300 s, then 40 GB × $0.05/GB-month / 730 h (rounded up) on top.
    let snapshot = (2 * node * 300 / 3600, 300_000, 2 * node + 2_740);
    assert_eq!(cost("cold_snapshot"), snapshot);
    assert_eq!(cost("hybrid"), snapshot);
    assert_eq!(cost("always_on_resize"), (0, 0, 2 * node));
    assert_eq!(cost("spot"), (0, 0, 2 * (38_000 + 4_384 + 5_000)));
    // size 2: each runs 240 s boot + 300 s idle + 2 s stop call = 542 s
    // (rounded up to the micro-dollar), then pays only its volume, 40 GB ×
    // $0.08/GB-month / 730 h per hour stopped (EC2 releases the address).
    assert_eq!(
        cost("stopped_pool"),
        (2 * ((node * 542 + 3_599) / 3_600), 542_000, 2 * 4_384)
    );

    // With a snapshot already there, it is paid from the start.
    let mut g = f.clone();
    g.snapshot = Some(SnapshotRef {
        id: "snap-1".to_owned(),
        size_gb: 40,
        created_at: 0,
    });
    let d = describes(&g);
    assert_eq!(
        d["cold_snapshot"].idle_cost,
        IdleCost::steady(Money::from_micros(2 * node + 2_740))
    );

    f.spec.min_nodes = 0;
    let d = describes(&f);
    assert_eq!(d["cold_image"].idle_cost.per_hour.micros(), 0);
    assert_eq!(d["cold_snapshot"].idle_cost.per_hour.micros(), 0);
    assert_eq!(d["spot"].idle_cost.per_hour.micros(), 0);
    assert_eq!(d["always_on_resize"].idle_cost.per_hour.micros(), node);

    let h = describes(&Fixture::hetzner());
    // Stopping saves nothing on Hetzner: a warm pool, no setup; each
    // server with its primary IPv4 (€0.0008/h at $1.08).
    assert_eq!(
        h["stopped_pool"].idle_cost,
        IdleCost::steady(Money::from_micros(2 * (6_000 + 864)))
    );
}

#[test]
fn always_on_resize_without_resize_capability_creates_nothing_extra() {
    let mut f = Fixture::ec2()
        .node("n1", NodeState::Ready, SMALL, Market::OnDemand, 0)
        .claims(3, 8);
    f.caps.resize = false;
    let plan = StrategyConfig::AlwaysOnResize(AlwaysOnResize::default())
        .build()
        .plan(&f.view(), NOW);
    assert_eq!(plan, Plan::default());
    // EC2 resizes only stopped machines: the resize starts with a stop.
    f.caps.resize = true;
    let plan = StrategyConfig::AlwaysOnResize(AlwaysOnResize::default())
        .build()
        .plan(&f.view(), NOW);
    assert_eq!(
        plan.actions,
        vec![Action::Stop {
            node: NodeId::new("n1").unwrap(),
        }]
    );
    // A provider that resizes running machines gets the resize itself.
    f.caps.resize_requires_stop = false;
    let plan = StrategyConfig::AlwaysOnResize(AlwaysOnResize::default())
        .build()
        .plan(&f.view(), NOW);
    assert_eq!(
        plan.actions,
        vec![Action::Resize {
            node: NodeId::new("n1").unwrap(),
            to: it(BIG)
        }]
    );
    // One that resizes only stopped machines and cannot stop them cannot
    // resize at all: nothing happens, as without the capability.
    f.caps.resize_requires_stop = true;
    f.caps.stop_start = false;
    let plan = StrategyConfig::AlwaysOnResize(AlwaysOnResize::default())
        .build()
        .plan(&f.view(), NOW);
    assert_eq!(plan, Plan::default());
}

#[test]
fn always_on_resize_stops_resizes_then_starts_where_resizing_needs_a_stop() {
    // Found by fleet-chaos: on EC2 and Hetzner (`resize_requires_stop`) the
    // strategy asked to resize a running node, which the controller refuses,
    // so a claim only the peak type serves waited for good.
    let aor = StrategyConfig::AlwaysOnResize(AlwaysOnResize::default()).build();
    let n1 = || NodeId::new("n1").unwrap();
    let step = |state: NodeState, t: &str, claims: usize| {
        let f = Fixture::ec2()
            .node("n1", state, t, Market::OnDemand, 0)
            .claims(claims, 8);
        aor.plan(&f.view(), NOW).actions
    };
    // Up at the baseline, a claim needs the peak: stop, resize, start.
    assert_eq!(
        step(NodeState::Ready, SMALL, 1),
        vec![Action::Stop { node: n1() }]
    );
    assert_eq!(
        step(NodeState::Stopped, SMALL, 1),
        vec![Action::Resize {
            node: n1(),
            to: it(BIG)
        }]
    );
    assert_eq!(
        step(NodeState::Stopped, BIG, 1),
        vec![Action::Start { node: n1() }]
    );
    // Stopped at the peak with nothing waiting (stopped to scale down):
    // back to the baseline, then up.
    assert_eq!(
        step(NodeState::Stopped, BIG, 0),
        vec![Action::Resize {
            node: n1(),
            to: it(SMALL)
        }]
    );
    assert_eq!(
        step(NodeState::Stopped, SMALL, 0),
        vec![Action::Start { node: n1() }]
    );
}

#[test]
fn spot_without_spot_creates_nothing_unless_falling_back() {
    let mut f = Fixture::hetzner().claims(2, 0);
    let strict = StrategyConfig::Spot(fleet_core::strategy::Spot {
        on_demand_fallback: false,
        ..Default::default()
    });
    assert_eq!(strict.build().plan(&f.view(), NOW), Plan::default());
    assert!(
        strict
            .build()
            .describe(&f.view())
            .cost_model
            .contains("no node is ever created")
    );
    let lenient = StrategyConfig::Spot(Default::default());
    let plan = lenient.build().plan(&f.view(), NOW);
    assert_eq!(plan.actions.len(), 2);
    assert!(plan.actions.iter().all(|a| matches!(
        a,
        Action::Create {
            market: Market::OnDemand,
            ..
        }
    )));
    // EC2 sells spot for m7i.large but not for c7i.xlarge: a 4-cpu claim
    // goes to the cheapest spot type that fits (m7i.2xlarge).
    f = Fixture::ec2().claims(1, 4);
    let plan = strict.build().plan(&f.view(), NOW);
    assert_eq!(
        plan.actions,
        vec![Action::Create {
            source: SourceKind::Image,
            market: Market::Spot,
            size: it(BIG)
        }]
    );
}

// ---- properties over random pools ----

/// The pool after the controller carried `plan` out (up to the provider
/// calls): created nodes are requested, the rest enter the matching
/// in-flight state.
fn apply(f: &Fixture, plan: &Plan) -> Fixture {
    let mut next = f.clone();
    let find =
        |next: &mut Fixture, id: &NodeId| next.nodes.iter().position(|n| &n.node == id).unwrap();
    for (k, a) in plan.actions.iter().enumerate() {
        match a {
            Action::Create { market, size, .. } => next.nodes.push(NodeView {
                node: NodeId::new(format!("z{k:03}")).unwrap(),
                state: NodeState::Requested,
                state_since: NOW,
                instance_type: size.clone(),
                market: *market,
                claims: 0,
                slots: f.spec.slots_per_node,
                idle_since: None,
                retiring: false,
            }),
            Action::Start { node } => {
                let i = find(&mut next, node);
                next.nodes[i].state = NodeState::Starting;
            }
            Action::Stop { node } => {
                let i = find(&mut next, node);
                next.nodes[i].state = NodeState::Stopping;
            }
            Action::Resize { node, to } => {
                let i = find(&mut next, node);
                next.nodes[i].state = NodeState::Resizing;
                next.nodes[i].instance_type = to.clone();
            }
            Action::Snapshot { node } => {
                let i = find(&mut next, node);
                next.nodes[i].state = NodeState::Snapshotting;
            }
            Action::Delete { node } => {
                let i = find(&mut next, node);
                next.nodes[i].state = NodeState::Deleting;
            }
            other => panic!("unexpected action {other:?}"),
        }
    }
    next
}

fn live(f: &Fixture) -> u32 {
    f.view().live_nodes().count() as u32
}

fn strategies() -> impl proptest::strategy::Strategy<Value = StrategyConfig> {
    let mut all = StrategyConfig::all_defaults();
    all.push(StrategyConfig::Spot(fleet_core::strategy::Spot {
        on_demand_fallback: false,
        ..Default::default()
    }));
    all.push(StrategyConfig::StoppedPool(
        fleet_core::strategy::StoppedPool {
            size: 4,
            stop_after_idle_ms: 0,
        },
    ));
    all.push(StrategyConfig::AlwaysOnResize(AlwaysOnResize {
        baseline: Some(it(MID)),
        peak: Some(it(BIG)),
        scale_down_after_ms: 0,
    }));
    proptest::sample::select(all)
}

prop_compose! {
    fn node_view(slots: u32)(
        state in proptest::sample::select(NodeState::ALL.to_vec()),
        ty in proptest::sample::select(vec![SMALL, MID, BIG, "x9.retired"]),
        spot in any::<bool>(),
        claims in 0u32..=2,
        since_ago in 0u64..2 * MS_PER_HOUR,
        idle_ago in proptest::option::of(0u64..2 * MS_PER_HOUR),
        retiring in proptest::bool::weighted(0.2),
    ) -> NodeView {
        let claims = match state {
            NodeState::Ready => 0,
            NodeState::Busy => claims.clamp(1, slots),
            NodeState::Draining | NodeState::Lost | NodeState::Interrupted => claims.min(slots),
            _ => 0,
        };
        NodeView {
            node: NodeId::new("placeholder").unwrap(),
            state,
            state_since: NOW - since_ago,
            instance_type: it(ty),
            market: if spot { Market::Spot } else { Market::OnDemand },
            claims,
            slots,
            idle_since: if state == NodeState::Ready { idle_ago.map(|a| NOW - a) } else { None },
            retiring,
        }
    }
}

prop_compose! {
    /// The policy of a schedule period (or none, half the time).
    fn capacity()(
        scheduled in any::<bool>(),
        min_idle in 0u32..=3,
        factor in proptest::sample::select(vec![0.0, 0.5, 1.0, 2.0]),
        limit in proptest::option::of(0u32..=3),
        idle_time in proptest::option::of(proptest::sample::select(vec![0u64, 30_000, 3 * MS_PER_HOUR])),
    ) -> Capacity {
        if !scheduled {
            return Capacity::default();
        }
        Capacity {
            period: Some(0),
            min_idle,
            scale_factor: ScaleFactor::new(factor).unwrap(),
            scale_factor_limit: limit,
            idle_time_ms: idle_time,
        }
    }
}

prop_compose! {
    fn fixture()(slots in 1u32..=2)(
        slots in Just(slots),
        hetzner_billing in any::<bool>(),
        caps in (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()),
        snapshot_ago in proptest::option::of(0u64..48 * MS_PER_HOUR),
        min_nodes in 0u32..=3,
        capacity in capacity(),
        max_nodes in 0u32..=6,
        nodes in proptest::collection::vec(node_view(slots), 0..8),
        claims in proptest::collection::vec(
            (proptest::sample::select(vec![0u32, 1, 2, 4, 8, 16]),
             proptest::sample::select(vec![0u64, 4096, 16384, 65536])),
            0..8),
    ) -> Fixture {
        let mut f = Fixture::ec2();
        if hetzner_billing {
            f.billing = BillingModel::hetzner();
        }
        f.caps = Capabilities {
            stop_start: caps.0,
            resize: caps.1,
            resize_requires_stop: false,
            snapshot: caps.2,
            spot: caps.3,
            max_instances: None,
        };
        f.snapshot = snapshot_ago.map(|a| SnapshotRef { id: "snap".to_owned(), size_gb: 30, created_at: NOW - a });
        f.spec.min_nodes = min_nodes;
        f.capacity = capacity;
        f.spec.max_nodes = max_nodes;
        f.spec.slots_per_node = slots;
        f.nodes = nodes
            .into_iter()
            .enumerate()
            .map(|(i, mut n)| { n.node = NodeId::new(format!("n{i:02}")).unwrap(); n })
            .collect();
        f.pending = claims
            .into_iter()
            .enumerate()
            .map(|(i, (cpus, memory_mb))| Demand {
                claim: ClaimId::new(format!("c{i:02}")).unwrap(),
                requirements: Requirements { cpus, memory_mb, ..Requirements::default() },
                enqueued_at: NOW - 1_000 * (100 - i as u64),
            })
            .collect();
        f
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn plans_are_deterministic_and_idempotent(f in fixture(), s in strategies()) {
        let strategy = s.build();
        let plan = strategy.plan(&f.view(), NOW);
        prop_assert_eq!(&plan, &strategy.plan(&f.view(), NOW));
        let next = apply(&f, &plan);
        let again = strategy.plan(&next.view(), NOW);
        // Everything the first plan asked for is in flight: nothing to add.
        prop_assert!(again.actions.is_empty(), "first {:?}\nthen {:?}", plan, again);
        if let Some(w) = plan.wake_at {
            prop_assert!(w > NOW);
        }
    }

    #[test]
    fn plans_stay_within_max_and_min_nodes(f in fixture(), s in strategies()) {
        let plan = s.build().plan(&f.view(), NOW);
        let next = apply(&f, &plan);
        let creates = plan.actions.iter().any(|a| matches!(a, Action::Create { .. }));
        if creates {
            prop_assert!(live(&next) <= f.spec.max_nodes, "{:?}", plan);
        }
        prop_assert!(live(&next) <= live(&f).max(f.spec.max_nodes));
        // Failed and retiring nodes are replaced, not idle: they go even
        // where nothing can replace them.
        let idle_deletes = plan.actions.iter().any(|a| match a {
            Action::Delete { node } => f.nodes.iter().any(|n| &n.node == node
                && !n.retiring
                && !matches!(n.state, NodeState::Lost | NodeState::Interrupted)),
            _ => false,
        });
        if idle_deletes {
            prop_assert!(live(&next) >= f.spec.min_nodes.min(f.spec.max_nodes), "{:?}", plan);
        }
    }

    #[test]
    fn plans_respect_capabilities_and_node_states(f in fixture(), s in strategies()) {
        let plan = s.build().plan(&f.view(), NOW);
        let mut touched = Vec::new();
        for a in &plan.actions {
            let node = |id: &NodeId| f.nodes.iter().find(|n| &n.node == id).unwrap();
            let idle_ready = |id: &NodeId| {
                let n = node(id);
                n.state == NodeState::Ready && n.claims == 0
            };
            match a {
                Action::Create { source, market, size } => {
                    if *source == SourceKind::Snapshot {
                        prop_assert!(f.caps.snapshot && f.snapshot.is_some());
                    }
                    let o = f.offerings.iter().find(|o| &o.instance_type == size);
                    prop_assert!(o.is_some());
                    if *market == Market::Spot {
                        prop_assert!(f.caps.spot && o.unwrap().spot.is_some());
                    }
                }
                Action::Start { node: id } => {
                    prop_assert!(f.caps.stop_start);
                    prop_assert_eq!(node(id).state, NodeState::Stopped);
                }
                Action::Stop { node: id } => {
                    prop_assert!(f.caps.stop_start);
                    prop_assert!(idle_ready(id));
                }
                Action::Resize { node: id, .. } => {
                    prop_assert!(f.caps.resize);
                    prop_assert!(idle_ready(id));
                }
                Action::Snapshot { node: id } => {
                    prop_assert!(f.caps.snapshot);
                    prop_assert!(idle_ready(id));
                }
                Action::Delete { node: id } => {
                    let state = node(id).state;
                    prop_assert!(
                        idle_ready(id) || matches!(state, NodeState::Stopped | NodeState::Lost | NodeState::Interrupted),
                        "deleted a {:?} node", state
                    );
                }
                other => panic!("unexpected action {other:?}"),
            }
            if let Action::Start { node }
                | Action::Stop { node }
                | Action::Resize { node, .. }
                | Action::Delete { node } = a
            {
                prop_assert!(!touched.contains(node), "two actions on {:?}", node);
                touched.push(node.clone());
            }
        }
    }

    #[test]
    fn idle_cost_is_never_negative_and_names_match(f in fixture(), s in strategies()) {
        let info = s.build().describe(&f.view());
        prop_assert_eq!(info.name, s.name());
        prop_assert!(info.idle_cost.setup.micros() >= 0);
        prop_assert!(info.idle_cost.per_hour.micros() >= 0);
    }
}

#[test]
fn always_on_resize_scales_down_after_idle_at_peak() {
    let aor = StrategyConfig::AlwaysOnResize(AlwaysOnResize::default()).build();
    let f = Fixture::ec2()
        .node("n1", NodeState::Ready, BIG, Market::OnDemand, 0)
        .idle_since(NOW - 100_000);
    // Idle 100 s of the 300 s: ask again when the 300 s are up.
    assert_eq!(
        aor.plan(&f.view(), NOW),
        Plan {
            actions: vec![],
            wake_at: Some(NOW + 200_000),
            reasons: vec![],
        }
    );
    let mut f = f.idle_since(NOW - 300_000);
    // EC2 resizes only stopped machines: the scale-down starts with a stop
    // (and goes on above).
    assert_eq!(
        aor.plan(&f.view(), NOW).actions,
        vec![Action::Stop {
            node: NodeId::new("n1").unwrap(),
        }]
    );
    f.caps.resize_requires_stop = false;
    assert_eq!(
        aor.plan(&f.view(), NOW).actions,
        vec![Action::Resize {
            node: NodeId::new("n1").unwrap(),
            to: it(SMALL)
        }]
    );
    // A busy node at peak is never resized, whatever the wait.
    let f = Fixture::ec2()
        .node("n1", NodeState::Busy, BIG, Market::OnDemand, 1)
        .claims(2, 0);
    assert_eq!(aor.plan(&f.view(), NOW), Plan::default());
}
