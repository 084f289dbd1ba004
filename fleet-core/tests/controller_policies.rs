//! Pool policies through the controller: `max_uses` recycles a node once it
//! has served its share, and a schedule period keeps spare nodes only while
//! it is in force (the controller plans again when it starts and ends).
#![expect(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use common::*;
use fleet_core::NodeId;
use fleet_core::harness::World;
use fleet_core::ids::Millis;
use fleet_core::protocol::{ClaimReply, NodeState, Record};
use fleet_core::schedule::{PeriodSpec, ScaleFactor, SchedulePeriod};
use fleet_core::strategy::{ColdImage, StrategyConfig};

/// An EC2 image boot (240 s in the billing model) and a little.
const BOOT: Millis = 250_000;
const MINUTE: Millis = 60_000;
const HOUR: Millis = 60 * MINUTE;
/// 2024-01-01T00:00Z, a Monday.
const MONDAY: Millis = 1_704_067_200_000;

fn granted_node(w: &World, id: &str) -> Option<NodeId> {
    w.claim_messages(&cid(id)).iter().find_map(|m| match m {
        ClaimReply::Granted(g) => Some(g.node.clone()),
        _ => None,
    })
}

/// Cold boots that stay up an hour idle: only recycling deletes a node.
fn patient() -> StrategyConfig {
    StrategyConfig::ColdImage(ColdImage {
        idle_timeout_ms: HOUR,
    })
}

fn stored_uses(w: &World, node: &NodeId) -> Option<u32> {
    w.records().into_iter().find_map(|(_, _, r)| match r {
        Record::Node(n) if &n.node == node => Some(n.uses),
        _ => None,
    })
}

#[test]
fn a_node_is_recycled_after_max_uses_claims() {
    let mut spec = pool(patient(), 4);
    spec.max_uses = Some(2);
    let mut w = World::new(config(spec), T0, true);

    w.claim_for(request("c1"), MINUTE);
    w.run_for(BOOT).unwrap();
    let first = granted_node(&w, "c1").expect("c1 granted");
    w.run_for(2 * MINUTE).unwrap();
    w.claim_for(request("c2"), MINUTE);
    w.run_for(10_000).unwrap();
    assert_eq!(
        granted_node(&w, "c2"),
        Some(first.clone()),
        "the second use"
    );
    assert_eq!(stored_uses(&w, &first), Some(2), "written as it is counted");
    // Held: the node is retiring but keeps its claim.
    let n = w.controller().node(&first).unwrap();
    assert_eq!(n.record.state, NodeState::Ready);
    assert!(w.instances().contains_key(&first));

    w.claim_for(request("c3"), MINUTE);
    w.run_for(BOOT + 2 * MINUTE).unwrap();
    let second = granted_node(&w, "c3").expect("c3 granted on a fresh node");
    assert_ne!(second, first);
    assert!(
        !w.instances().contains_key(&first),
        "the used-up node was deleted once idle, long before its idle timeout"
    );
    w.check_invariants().unwrap();
}

fn working_hours() -> SchedulePeriod {
    SchedulePeriod::new(PeriodSpec {
        periods: vec!["* 9-16 * * mon-fri".to_owned()],
        timezone: "UTC".to_owned(),
        min_idle: 2,
        scale_factor: ScaleFactor::default(),
        scale_factor_limit: None,
        idle_time_ms: Some(5 * MINUTE),
    })
    .unwrap()
}

fn running(w: &World) -> usize {
    w.instances().len()
}

#[test]
fn a_schedule_period_keeps_spare_nodes_only_while_in_force() {
    let mut spec = pool(StrategyConfig::default(), 4);
    spec.schedule = vec![working_hours()];
    let mut w = World::new(config(spec), MONDAY + 8 * HOUR, true);

    w.run_until(MONDAY + 9 * HOUR - MINUTE).unwrap();
    assert_eq!(running(&w), 0, "nothing before the period");
    // The controller wakes at 09:00 by itself: no event is needed.
    w.run_until(MONDAY + 9 * HOUR + BOOT).unwrap();
    assert_eq!(running(&w), 2, "two spare nodes from 09:00");

    // A claim in the period lands on a spare node at once, and a third
    // node comes up to keep two spare.
    w.claim_for(request("c1"), 30 * MINUTE);
    w.run_for(1_000).unwrap();
    assert!(granted_node(&w, "c1").is_some(), "no boot wait");
    w.run_for(BOOT).unwrap();
    assert_eq!(running(&w), 3);

    // After 17:00 the spares go after the default 60 s idle timeout.
    w.run_until(MONDAY + 17 * HOUR + 2 * MINUTE).unwrap();
    assert_eq!(running(&w), 0, "no spare nodes after the period");
    w.run_until(MONDAY + 24 * HOUR + 8 * HOUR).unwrap();
    assert_eq!(running(&w), 0);
    w.check_invariants().unwrap();
}

// ---- cache affinity ----

fn repo(claim: &str, key: &str) -> fleet_core::protocol::ClaimRequest {
    let mut r = request(claim);
    r.affinity = Some(fleet_core::AffinityKey::new(key).unwrap());
    r
}

/// Two warm nodes that stay up: `min_nodes = 2`, an hour of idle time.
fn two_warm_nodes(affinity_wait_ms: Millis) -> World {
    let mut spec = pool(patient(), 4);
    spec.min_nodes = 2;
    spec.affinity_wait_ms = affinity_wait_ms;
    let mut w = World::new(config(spec), T0, true);
    w.run_for(BOOT).unwrap();
    assert_eq!(running(&w), 2);
    w
}

#[test]
fn a_claim_goes_to_the_node_that_last_served_its_key() {
    let mut w = two_warm_nodes(0);
    // Both nodes are equal: without affinity, best fit takes the lowest id.
    w.claim_for(repo("a1", "github.com/acme/a"), MINUTE);
    w.run_for(1_000).unwrap();
    w.claim_for(repo("b1", "github.com/acme/b"), MINUTE);
    w.run_for(2 * MINUTE).unwrap();
    let (na, nb) = (
        granted_node(&w, "a1").unwrap(),
        granted_node(&w, "b1").unwrap(),
    );
    assert_ne!(na, nb);
    // Both idle again; b's next build goes to b's node, a's to a's.
    w.claim_for(repo("b2", "github.com/acme/b"), MINUTE);
    w.run_for(1_000).unwrap();
    w.claim_for(repo("a2", "github.com/acme/a"), MINUTE);
    w.run_for(1_000).unwrap();
    assert_eq!(granted_node(&w, "b2"), Some(nb));
    assert_eq!(granted_node(&w, "a2"), Some(na));
    let stats = w.controller().affinity_stats();
    assert_eq!((stats.hits, stats.misses), (2, 2), "{stats:?}");
    w.check_invariants().unwrap();
}

#[test]
fn a_claim_waits_a_bounded_time_for_its_busy_node() {
    let wait = 2 * MINUTE;
    let mut w = two_warm_nodes(wait);
    w.claim_for(repo("a1", "github.com/acme/a"), MINUTE);
    w.run_for(2 * MINUTE).unwrap();
    let na = granted_node(&w, "a1").unwrap();

    // a's node is busy for a minute: a2 waits for it although the other
    // node is free, and gets it when a3 is done.
    w.claim_for(repo("a3", "github.com/acme/a"), MINUTE);
    w.run_for(1_000).unwrap();
    assert_eq!(granted_node(&w, "a3"), Some(na.clone()));
    w.claim_for(repo("a2", "github.com/acme/a"), 10 * MINUTE);
    w.run_for(1_000).unwrap();
    assert!(granted_node(&w, "a2").is_none(), "waits for its node");
    let reason = w
        .controller()
        .claim(&cid("a2"))
        .unwrap()
        .pending_reason
        .clone();
    assert!(
        matches!(
            reason,
            Some(fleet_core::protocol::PendingReason::WaitingForAffinity { .. })
        ),
        "{reason:?}"
    );
    w.run_for(MINUTE).unwrap();
    assert_eq!(
        granted_node(&w, "a2"),
        Some(na.clone()),
        "its node, once free"
    );

    // Now a's node is busy for 10 minutes: a4 waits the pool's two minutes
    // for it, no longer, and takes the other node.
    w.claim_for(repo("a4", "github.com/acme/a"), MINUTE);
    w.run_for(wait - 5_000).unwrap();
    assert!(granted_node(&w, "a4").is_none());
    w.run_for(10_000).unwrap();
    let n4 = granted_node(&w, "a4").expect("granted after the wait");
    assert_ne!(n4, na);
    assert_eq!(running(&w), 2, "no node was bought while it waited");
    w.check_invariants().unwrap();
}

// ---- drift ----

fn images(w: &World) -> Vec<String> {
    let mut v: Vec<String> = w
        .records()
        .into_iter()
        .filter_map(|(_, _, r)| match r {
            Record::Node(n) => match n.source {
                fleet_core::provider::BootSource::Image { image } => Some(image),
                _ => None,
            },
            _ => None,
        })
        .collect();
    v.sort();
    v
}

#[test]
fn a_new_image_replaces_idle_nodes_one_at_a_time_and_busy_ones_after_their_claims() {
    let mut w = two_warm_nodes(0);
    let mut held = request("c1");
    held.lease_ttl_ms = HOUR;
    w.claim_for(held, 30 * MINUTE);
    w.run_for(1_000).unwrap();
    let busy = granted_node(&w, "c1").unwrap();
    assert_eq!(images(&w), ["ami-base", "ami-base"]);

    w.restart_with(|c| c.pools[0].image = "ami-v2".to_owned());
    // At most one drifted node is replaced at a time (the default), and
    // never the busy one while it holds its claim.
    let mut most_deleting = 0;
    for _ in 0..(2 * BOOT / 10_000) {
        w.run_for(10_000).unwrap();
        let deleting = w
            .records()
            .into_iter()
            .filter(|(_, _, r)| matches!(r, Record::Node(n) if n.state == NodeState::Deleting))
            .count();
        most_deleting = most_deleting.max(deleting);
        assert!(w.instances().contains_key(&busy), "the busy node stays");
    }
    assert!(most_deleting <= 1, "{most_deleting} replaced at once");
    assert_eq!(
        images(&w),
        ["ami-base", "ami-v2"],
        "the idle node was replaced"
    );

    // The claim ends: its node goes too, and the pool is all new.
    w.run_until(T0 + 40 * MINUTE + 2 * BOOT).unwrap();
    assert!(!w.instances().contains_key(&busy));
    assert_eq!(images(&w), ["ami-v2", "ami-v2"]);
    let ended = w.controller().claim(&cid("c1")).unwrap().state.clone();
    assert_eq!(
        ended.name(),
        "released",
        "the claim ran to its end: {ended:?}"
    );
    w.check_invariants().unwrap();
}

// ---- budgets ----

fn budgeted(over_budget: fleet_core::arbitrate::OverBudget) -> World {
    let mut config = config(pool(patient(), 4));
    config.quotas.insert(
        ws(),
        fleet_core::arbitrate::Quota {
            // Five cents a day; a c7.large costs about nine an hour.
            daily_budget: Some(fleet_core::Money::from_micros(50_000)),
            over_budget,
            ..Default::default()
        },
    );
    World::new(config, MONDAY + 20 * HOUR, true)
}

/// A claim whose lease outlasts its two-hour hold at most.
fn held(id: &str) -> fleet_core::protocol::ClaimRequest {
    let mut r = request(id);
    r.lease_ttl_ms = 2 * HOUR;
    r
}

#[test]
fn a_workspace_past_its_daily_budget_waits_for_the_next_day() {
    let mut w = budgeted(fleet_core::arbitrate::OverBudget::Wait);
    w.claim_for(held("c1"), HOUR);
    w.run_for(HOUR + BOOT + MINUTE).unwrap();
    assert!(granted_node(&w, "c1").is_some());
    let spent = w.controller().costs(w.now()).workspaces[&ws()].cost;
    assert!(spent.micros() > 50_000, "{spent}");

    w.claim_for(held("c2"), 10 * MINUTE);
    w.run_for(MINUTE).unwrap();
    assert!(granted_node(&w, "c2").is_none(), "over budget: it waits");
    let reason = w
        .controller()
        .claim(&cid("c2"))
        .unwrap()
        .pending_reason
        .clone();
    let Some(fleet_core::protocol::PendingReason::BudgetExhausted { budget }) = reason else {
        panic!("{reason:?}");
    };
    assert_eq!(budget.window, "daily");
    assert_eq!(budget.cap_micros, 50_000);
    assert_eq!(budget.resets_at, MONDAY + 24 * HOUR);
    let nodes_before = running(&w);
    w.run_until(MONDAY + 24 * HOUR - MINUTE).unwrap();
    assert!(granted_node(&w, "c2").is_none());
    assert!(running(&w) <= nodes_before, "no node is bought for it");
    // A new day: the claim goes through.
    w.run_until(MONDAY + 24 * HOUR + BOOT + MINUTE).unwrap();
    assert!(
        granted_node(&w, "c2").is_some(),
        "granted after midnight UTC"
    );
    w.check_invariants().unwrap();
}

#[test]
fn a_workspace_past_its_budget_may_be_rejected_at_once() {
    let mut w = budgeted(fleet_core::arbitrate::OverBudget::Reject);
    w.claim_for(held("c1"), HOUR);
    w.run_for(HOUR + BOOT + MINUTE).unwrap();
    let reply = w.claim_for(held("c2"), MINUTE);
    w.run_for(1_000).unwrap();
    let rejected = w.replies(&reply).iter().find_map(|m| match m {
        ClaimReply::Rejected { error, .. } => Some(error.clone()),
        _ => None,
    });
    let text = format!("{rejected:?}");
    assert!(
        text.contains("BudgetExhausted") && text.contains("daily"),
        "{text}"
    );
}
