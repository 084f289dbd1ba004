//! Cost attribution through the real controller in the virtual world: two
//! workspaces share one node, and what each pays is worked out by hand.
#![expect(clippy::unwrap_used, reason = "tests")]

mod common;

use common::*;
use fleet_core::billing::BillingModel;
use fleet_core::harness::World;
use fleet_core::money::{HourlyPrice, Money};
use fleet_core::strategy::StrategyConfig;
use fleet_core::{PoolName, Workspace};

/// One node of two slots, priced so that a running millisecond costs one
/// micro-dollar ($3.60/h, no disk or address charges): the hand
/// computations below are in milliseconds.
fn shared_node_world() -> World {
    let mut spec = pool(StrategyConfig::default(), 1);
    spec.slots_per_node = 2;
    spec.instance_types = vec![it("c7.large")];
    let mut config = config(spec);
    for o in &mut config.offerings {
        o.on_demand = HourlyPrice::from_micros(3_600_000);
    }
    config.billing = BillingModel {
        charges: Default::default(),
        ..BillingModel::ec2()
    };
    World::new(config, T0, true)
}

#[test]
fn two_workspaces_sharing_a_node_pay_their_shares_and_the_pool_pays_the_rest() {
    let mut w = shared_node_world();
    let team_b = Workspace::new("team-b").unwrap();
    let mut a = request("a");
    a.recipient = None;
    let mut b = request("b");
    b.recipient = None;
    b.workspace = team_b.clone();
    // Longer than the holds: the world's callers do not renew.
    a.lease_ttl_ms = 3_600_000;
    b.lease_ttl_ms = 3_600_000;
    w.claim_for(a, 600_000);
    w.claim_for(b, 1_200_000);
    w.run_for(3_600_000).unwrap();

    let ctl = w.controller();
    let (ra, rb) = (ctl.claim(&cid("a")).unwrap(), ctl.claim(&cid("b")).unwrap());
    assert_eq!(ra.node, rb.node, "both claims on the one node");
    assert_eq!(ra.granted_at, rb.granted_at, "granted in one round");
    assert_eq!(ra.state, fleet_core::protocol::ClaimState::Released);
    assert_eq!(rb.state, fleet_core::protocol::ClaimState::Released);

    let report = ctl.costs(w.now());
    let (ca, cb) = (&report.claims[&cid("a")], &report.claims[&cid("b")]);
    assert!(!ca.holding && !cb.holding);
    // Each held its node from the grant's round to its release (plus the
    // release's store write).
    assert!((600_000..601_000).contains(&ca.held_ms), "{}", ca.held_ms);
    assert!(
        (1_200_000..1_201_000).contains(&cb.held_ms),
        "{}",
        cb.held_ms
    );
    // While both held it, each paid half; then b alone paid all.
    let shared = ca.held_ms;
    let alone = cb.held_ms - ca.held_ms;
    let expect_a = Money::from_micros((shared / 2) as i64);
    let expect_b = Money::from_micros((shared / 2 + alone) as i64);
    assert_eq!(ca.cost, expect_a);
    assert_eq!(cb.cost, expect_b);
    assert_eq!(report.workspaces[&ws()].cost, expect_a);
    assert_eq!(report.workspaces[&team_b].cost, expect_b);
    assert_eq!(report.workspaces[&team_b].claims, 1);

    // The pool: boot (240 s), the idle timeout after b (60 s) and the
    // per-second rounding are nobody's.
    let linux = PoolName::new("linux").unwrap();
    let p = &report.pools[&linux];
    assert_eq!(p.attributed, expect_a + expect_b);
    assert_eq!(p.running, p.attributed + p.idle);
    assert_eq!(p.total(), p.attributed + p.idle + p.stopped + p.snapshots);
    assert!(
        p.idle >= Money::from_micros(300_000) && p.idle < Money::from_micros(310_000),
        "{:?}",
        p.idle
    );
    w.check_invariants().unwrap();
}

#[test]
fn ended_claims_fold_into_their_workspace_when_the_controller_forgets_them() {
    let mut w = shared_node_world();
    let mut a = request("a");
    a.recipient = None;
    w.claim_for(a, 60_000);
    w.run_for(600_000).unwrap();
    let before = w.controller().costs(w.now());
    let cost = before.claims[&cid("a")].cost;
    assert!(cost > Money::ZERO);
    // Past claim_retention_ms (a day here) the claim is forgotten.
    w.run_for(86_400_000 + 60_000).unwrap();
    assert!(w.controller().claim(&cid("a")).is_none());
    let after = w.controller().costs(w.now());
    assert!(after.claims.is_empty(), "{:?}", after.claims);
    assert_eq!(after.workspaces[&ws()].cost, cost);
    assert_eq!(after.workspaces[&ws()].claims, 1);
}

#[test]
fn a_job_attempt_shares_its_node_with_a_claim_of_another_workspace() {
    let mut w = shared_node_world();
    let team_b = Workspace::new("team-b").unwrap();
    let mut a = request("a");
    a.recipient = None;
    a.lease_ttl_ms = 3_600_000;
    w.claim_for(a, 600_000);
    let spec: fleet_core::protocol::TaskSpec = serde_json::from_value(serde_json::json!({
        "id": "j1", "workspace": "team-b", "pool": "linux", "argv": ["sleep", "30"],
    }))
    .unwrap();
    w.submit_job(spec);
    w.run_for(3_600_000).unwrap();

    let report = w.controller().costs(w.now());
    let job = &report.jobs[&fleet_core::JobId::new("j1").unwrap()];
    let claim = &report.claims[&cid("a")];
    assert_eq!(job.workspace, team_b);
    assert!(!job.holding);
    // The job ran inside the claim's hold: it paid half of its time, the
    // claim half of that and all of the rest.
    assert!(
        job.held_ms >= 30_000 && job.held_ms < claim.held_ms,
        "{} {}",
        job.held_ms,
        claim.held_ms
    );
    let half = job.held_ms / 2;
    assert_eq!(job.cost, Money::from_micros(half as i64));
    assert_eq!(
        claim.cost,
        Money::from_micros((claim.held_ms - job.held_ms + half) as i64)
    );
    assert_eq!(report.workspaces[&team_b].jobs, 1);
    assert_eq!(report.workspaces[&team_b].cost, job.cost);
    let p = &report.pools[&PoolName::new("linux").unwrap()];
    assert_eq!(p.attributed, job.cost + claim.cost);
    assert_eq!(p.running, p.attributed + p.idle);
}
