//! Decisions an operator can read: a pool driven through a burst and an
//! idle period records, for every create and delete, the reason its
//! strategy gave and what it saw; each claim's life is kept with reasons.
#![expect(clippy::unwrap_used, reason = "tests")]

mod common;

use common::*;
use fleet_core::PoolName;
use fleet_core::strategy::Reason;

#[test]
fn a_burst_and_an_idle_period_record_why_each_node_was_made_and_deleted() {
    let mut w = world();
    for id in ["c1", "c2", "c3"] {
        w.claim_for(request(id), 30_000);
    }
    // Boot, serve 30 s, then sit idle past the 60 s timeout.
    w.run_for(10 * 60_000).unwrap();
    let pool = PoolName::new("linux").unwrap();
    let e = w.controller().explain(&pool).unwrap();
    assert_eq!(e.strategy, "cold_image");
    assert!(e.parameters.contains_key("idle_timeout_ms"), "{e:?}");
    let creates: Vec<_> = e
        .decisions
        .iter()
        .filter(|d| d.action == "create")
        .collect();
    let deletes: Vec<_> = e
        .decisions
        .iter()
        .filter(|d| d.action == "delete")
        .collect();
    assert_eq!((creates.len(), deletes.len()), (3, 3), "{:#?}", e.decisions);
    for (d, claim) in creates.iter().zip(["c1", "c2", "c3"]) {
        assert_eq!(
            d.reason,
            Reason::Demand {
                claim: cid(claim),
                waiting: 3,
            },
            "{d:?}"
        );
        assert!(d.refused.is_none(), "{d:?}");
        assert!(d.node.is_some() && d.hourly_micros.is_some(), "{d:?}");
        assert_eq!(d.inputs.waiting, 3, "the strategy saw the burst: {d:?}");
    }
    // The strategy asked for all three in one plan, before any node booted.
    assert!(creates.iter().all(|d| d.at == creates[0].at));
    for d in &deletes {
        match d.reason {
            Reason::Idle {
                idle_ms,
                timeout_ms,
            } => {
                assert_eq!(timeout_ms, 60_000, "{d:?}");
                assert!(idle_ms >= timeout_ms, "{d:?}");
            }
            ref other => panic!("a delete for {other:?}"),
        }
        assert_eq!(d.why, d.reason.to_string());
        assert!(d.why.starts_with("idle 1m0"), "{}", d.why);
        assert_eq!(d.inputs.waiting, 0, "{d:?}");
        assert!(creates.iter().any(|c| c.node == d.node), "{d:?}");
    }
    insta::assert_yaml_snapshot!(
        "burst_then_idle",
        e.decisions
            .iter()
            .map(|d| format!(
                "+{}s {} {}: {}",
                (d.at - creates[0].at) / 1000,
                d.action,
                d.instance_type.as_ref().map_or("-", |t| t.as_str()),
                d.why
            ))
            .collect::<Vec<_>>()
    );

    // The claim's life, with reasons.
    let h = w.controller().claim_history(&cid("c1"));
    let states: Vec<&str> = h.transitions.iter().map(|t| t.state.as_str()).collect();
    assert_eq!(states.first(), Some(&"pending"), "{h:#?}");
    assert!(states.contains(&"granted"), "{h:#?}");
    assert_eq!(states.last(), Some(&"released"), "{h:#?}");
    let granted = h.transitions.iter().find(|t| t.state == "granted").unwrap();
    assert!(granted.node.is_some() && granted.reason.starts_with("granted after"));
    assert!(
        h.transitions
            .windows(2)
            .all(|p| p[0].at <= p[1].at && p[0] != p[1]),
        "{h:#?}"
    );
    assert!(
        w.controller()
            .claim_history(&cid("nope"))
            .transitions
            .is_empty()
    );
}

#[test]
fn history_can_be_switched_off() {
    let mut w = world();
    w.keep_history(false);
    w.claim_for(request("c1"), 1_000);
    w.run_for(5 * 60_000).unwrap();
    let pool = PoolName::new("linux").unwrap();
    assert!(w.controller().explain(&pool).unwrap().decisions.is_empty());
    assert!(
        w.controller()
            .claim_history(&cid("c1"))
            .transitions
            .is_empty()
    );
    assert!(
        w.controller()
            .explain(&PoolName::new("other").unwrap())
            .is_none()
    );
}

/// The strategy is asked again when something it acts on changes, not at
/// every step a node takes on its way up: provisioning → booting adds no
/// slot and no live node (`Controller::set_state`). The node's arrival
/// (ready) is asked about at once.
#[test]
fn a_node_on_its_way_up_is_planned_again_only_once_it_is_up() {
    use fleet_core::protocol::NodeState;
    let mut w = world();
    let pool = PoolName::new("linux").unwrap();
    w.claim_for(request("c1"), 30_000);
    let planned_at =
        |w: &fleet_core::harness::World| w.controller().explain(&pool).unwrap().planned_at.unwrap();
    let state = |w: &fleet_core::harness::World| w.controller().nodes().next().map(|n| n.state);
    // Up to the create: the round that bought the node planned.
    while state(&w) != Some(NodeState::Provisioning) {
        assert!(w.step(), "the node was never created");
    }
    let created = planned_at(&w);
    let mut booted_at = None;
    while state(&w) != Some(NodeState::Ready) && state(&w) != Some(NodeState::Busy) {
        assert!(w.step(), "the node never came up");
        if state(&w) == Some(NodeState::Booting) && booted_at.is_none() {
            booted_at = Some(w.now());
            assert_eq!(planned_at(&w), created, "booting asked the strategy");
        }
    }
    let booted_at = booted_at.unwrap();
    assert!(booted_at > created, "create took no time: nothing tested");
    assert_eq!(planned_at(&w), w.now(), "the node came up unplanned");
    w.run_for(5 * 60_000).unwrap();
    assert!(
        w.traces()
            .get(&cid("c1"))
            .is_some_and(|t| t.granted_at.is_some())
    );
}
