//! A create refused for capacity: the node comes up on the pool's next
//! cheapest type that is as large, the shortage is visible, and after the
//! cooldown new nodes are of the preferred type again.
#![expect(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use common::*;
use fleet_core::controller::Alert;
use fleet_core::harness::World;
use fleet_core::protocol::{ClaimReply, Market, NodeState};
use fleet_core::strategy::StrategyConfig;
use fleet_core::{InstanceType, NodeId, PoolName};

const COOLDOWN: u64 = 600_000;
/// An EC2 image boot (240 s in the billing model) and a little.
const BOOT: u64 = 250_000;
const HOLD: u64 = 3_600_000;

fn linux() -> PoolName {
    PoolName::new("linux").unwrap()
}

/// The common pool (`c7.large`, then `c7.2xlarge`), on-demand cold boots.
fn world() -> World {
    let mut config = config(pool(StrategyConfig::default(), 4));
    config.timing.capacity_cooldown_ms = COOLDOWN;
    World::new(config, T0, true)
}

/// A claim whose lease outlasts the test: it keeps its node.
fn held(id: &str) -> fleet_core::protocol::ClaimRequest {
    let mut r = request(id);
    r.lease_ttl_ms = HOLD;
    r
}

fn granted_node(w: &World, id: &str) -> Option<NodeId> {
    w.claim_messages(&cid(id)).iter().find_map(|m| match m {
        ClaimReply::Granted(g) => Some(g.node.clone()),
        _ => None,
    })
}

fn type_of(w: &World, node: &NodeId) -> InstanceType {
    w.controller().node(node).unwrap().record.instance_type
}

fn shortage_alerts(w: &World) -> Vec<(InstanceType, Option<InstanceType>)> {
    w.alerts()
        .iter()
        .filter_map(|a| match a {
            Alert::CapacityShortage {
                instance_type,
                using,
                ..
            } => Some((instance_type.clone(), using.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_sold_out_type_falls_back_to_the_next_cheapest_and_returns_after_the_cooldown() {
    let mut w = world();
    let small = it("c7.large");
    let big = it("c7.2xlarge");
    w.faults()
        .sold_out
        .insert((small.clone(), Market::OnDemand));

    // Claims hold their nodes for an hour: each needs a node of its own.
    w.claim_for(held("c1"), HOLD);
    w.run_for(BOOT).unwrap();
    let n1 = granted_node(&w, "c1").expect("granted on the fallback type");
    assert_eq!(type_of(&w, &n1), big);
    assert_eq!(w.capacity_refusals(), 1, "the sold-out type was tried once");
    assert_eq!(shortage_alerts(&w), [(small.clone(), Some(big.clone()))]);
    // The failed node left nothing behind: one instance, one record.
    assert_eq!(w.instances().len(), 1);
    w.check_invariants().unwrap();

    // The pool's status says why.
    let shown = w.controller().capacity_shortages(&linux(), w.now());
    assert_eq!(shown.len(), 1);
    assert_eq!(
        (&shown[0].instance_type, shown[0].market, &shown[0].using),
        (&small, Market::OnDemand, &Some(big.clone()))
    );
    // Since the refusal (one API call after the request), for the cooldown.
    assert!((T0..T0 + 10_000).contains(&shown[0].since));
    assert_eq!(shown[0].until, shown[0].since + COOLDOWN);
    assert!(shown[0].error.contains("capacity"), "{}", shown[0].error);

    // Within the cooldown a new node goes straight to the fallback type,
    // even with capacity back: the preferred type is not retried early.
    w.faults().sold_out.clear();
    w.claim_for(held("c2"), HOLD);
    w.run_for(BOOT).unwrap();
    let n2 = granted_node(&w, "c2").expect("granted");
    assert_eq!(type_of(&w, &n2), big);
    assert_eq!(w.capacity_refusals(), 1);

    // After the cooldown the preferred type is back, and the pool's status
    // says nothing more.
    w.run_until(T0 + 10_000 + COOLDOWN).unwrap();
    assert!(
        w.controller()
            .capacity_shortages(&linux(), w.now())
            .is_empty()
    );
    w.claim_for(held("c3"), HOLD);
    w.run_for(BOOT).unwrap();
    let n3 = granted_node(&w, "c3").expect("granted");
    assert_eq!(
        type_of(&w, &n3),
        small,
        "new nodes use the preferred type again"
    );
    w.check_invariants().unwrap();
}

#[test]
fn without_another_type_that_fits_the_create_is_retried() {
    let mut spec = pool(StrategyConfig::default(), 4);
    spec.instance_types = vec![it("c7.large")];
    let mut config = config(spec);
    config.timing.capacity_cooldown_ms = COOLDOWN;
    config.timing.provider_retry_initial_ms = 1_000;
    let mut w = World::new(config, T0, true);
    let small = it("c7.large");
    w.faults()
        .sold_out
        .insert((small.clone(), Market::OnDemand));

    w.claim_for(held("c1"), HOLD);
    w.run_for(5_000).unwrap();
    assert!(w.capacity_refusals() >= 2, "retried, not dropped");
    assert!(
        shortage_alerts(&w)
            .iter()
            .all(|(t, using)| t == &small && using.is_none()),
        "{:?}",
        w.alerts()
    );
    let shown = w.controller().capacity_shortages(&linux(), w.now());
    assert_eq!(shown.len(), 1);
    assert_eq!(shown[0].using, None, "nothing else fits");
    let nodes: Vec<_> = w.controller().nodes().collect();
    assert_eq!(nodes.len(), 1, "the same node is retried");
    assert_eq!(nodes[0].state, NodeState::Provisioning);

    // Capacity comes back: the retried create succeeds on the same type.
    w.faults().sold_out.clear();
    w.run_for(BOOT + 120_000).unwrap();
    let n1 = granted_node(&w, "c1").expect("granted once capacity is back");
    assert_eq!(type_of(&w, &n1), small);
    w.check_invariants().unwrap();
}

#[test]
fn a_type_short_in_spot_only_keeps_its_on_demand_nodes() {
    let mut w = world();
    let small = it("c7.large");
    // Sold out in the spot market; the pool buys on-demand.
    w.faults().sold_out.insert((small.clone(), Market::Spot));
    w.claim_for(request("c1"), 60_000);
    w.run_for(BOOT).unwrap();
    let n1 = granted_node(&w, "c1").expect("granted");
    assert_eq!(type_of(&w, &n1), small);
    assert_eq!(w.capacity_refusals(), 0);
    assert!(shortage_alerts(&w).is_empty());
}

#[test]
fn a_resize_to_a_sold_out_type_waits_for_the_cooldown() {
    let mut config = config(pool(StrategyConfig::AlwaysOnResize(Default::default()), 4));
    config.timing.capacity_cooldown_ms = COOLDOWN;
    config.timing.provider_retry_initial_ms = 1_000;
    config.timing.provider_retry_max_ms = 2_000;
    let mut w = World::new(config, T0, true);
    w.run_for(BOOT).unwrap();
    let node = w
        .controller()
        .nodes()
        .next()
        .expect("the always-on node")
        .record
        .node;
    assert_eq!(type_of(&w, &node), it("c7.large"));

    // A claim only the peak type serves; the peak is sold out.
    let big = it("c7.2xlarge");
    w.faults().sold_out.insert((big.clone(), Market::OnDemand));
    let mut req = held("big");
    req.requirements.cpus = 8;
    w.claim_for(req, HOLD);
    w.run_for(120_000).unwrap();
    // Refused once: the node keeps its type and the peak is short.
    assert_eq!(shortage_alerts(&w).len(), 1, "{:?}", w.alerts());
    assert!(
        shortage_alerts(&w)
            .iter()
            .all(|(t, using)| t == &big && using.is_none()),
        "{:?}",
        w.alerts()
    );
    // Short now: the strategy's resize waits instead of failing again.
    w.run_for(300_000).unwrap();
    assert_eq!(shortage_alerts(&w).len(), 1, "no resize while short");
    assert_eq!(type_of(&w, &node), it("c7.large"));
    assert!(granted_node(&w, "big").is_none());

    // Capacity back and the cooldown over: the resize goes through.
    w.faults().sold_out.clear();
    w.run_until(T0 + BOOT + 120_000 + COOLDOWN + 120_000)
        .unwrap();
    assert_eq!(granted_node(&w, "big"), Some(node.clone()));
    assert_eq!(type_of(&w, &node), big);
    w.check_invariants().unwrap();
}

/// Offerings read again (spot prices move) reprice the types a pool runs;
/// a type the provider no longer lists keeps its price, and none is added.
#[test]
fn offerings_read_again_reprice_the_pools_types() {
    use fleet_core::controller::{Controller, Event};
    use fleet_core::money::{HourlyPrice, Money};
    let cfg = config(pool(StrategyConfig::default(), 4));
    let mut c = Controller::restore(cfg.clone(), Vec::new(), T0);
    let before = c.pool_offerings(&linux()).to_vec();
    assert!(before.len() >= 2, "{before:?}");
    let mut newer = offerings();
    newer.retain(|o| o.instance_type != before[1].instance_type);
    for o in &mut newer {
        o.on_demand = HourlyPrice(Money::from_micros(o.on_demand.0.micros() * 2));
        if let Some(s) = &mut o.spot {
            s.price = HourlyPrice(Money::from_micros(7));
        }
    }
    c.handle(
        Event::Offerings {
            offerings: newer.clone(),
        },
        T0 + 1,
    );
    let after = c.pool_offerings(&linux());
    assert_eq!(after.len(), before.len(), "no type added or removed");
    let repriced = newer
        .iter()
        .find(|o| o.instance_type == before[0].instance_type)
        .unwrap();
    assert_eq!(after[0].on_demand, repriced.on_demand);
    assert_eq!(after[0].spot, repriced.spot);
    assert_eq!(after[1], before[1], "unlisted now: the last price stays");
}
