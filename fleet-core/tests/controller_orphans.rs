//! Orphan collection on the virtual world: an instance carrying this
//! fleet's namespace and fleet id that no node record knows is deleted once
//! it has been untracked for `orphan_min_age_ms`; a younger one waits its
//! turn; one of another namespace, of another fleet, or with no fleet id
//! is never touched; one that vanished, or that a node of ours comes to
//! own, is not deleted.
#![expect(clippy::unwrap_used, reason = "tests")]

mod common;

use std::collections::BTreeMap;

use common::*;
use fleet_core::NodeId;
use fleet_core::controller::Timing;
use fleet_core::harness::World;
use fleet_core::provider::{
    Instance, InstanceState, Market, TAG_FLEET, TAG_NAMESPACE, TAG_NODE, TAG_POOL,
};
use fleet_core::strategy::StrategyConfig;

const MIN_AGE: u64 = 600_000;

fn node(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

/// A running instance of `node` created at `created_at`, tagged with
/// `namespace` and `fleet` (`None`: no fleet-id tag, as instances made
/// before fleet ids existed).
fn stray(node: &NodeId, namespace: &str, fleet: Option<&str>, created_at: u64) -> Instance {
    let mut tags = BTreeMap::from([
        (TAG_NODE.to_owned(), node.to_string()),
        (TAG_POOL.to_owned(), "linux".to_owned()),
        (TAG_NAMESPACE.to_owned(), namespace.to_owned()),
    ]);
    if let Some(f) = fleet {
        tags.insert(TAG_FLEET.to_owned(), f.to_owned());
    }
    Instance {
        node: node.clone(),
        provider_id: format!("i-stray-{node}"),
        instance_type: it("c7.large"),
        market: Market::OnDemand,
        state: InstanceState::Running,
        address: None,
        tags,
        created_at,
    }
}

fn exists(w: &World, n: &NodeId) -> bool {
    w.instances().contains_key(n)
}

/// The world's config has `orphan_min_age_ms` = 600 s (the default) and
/// fleet `f1` in namespace `fleet`.
fn world_with_min_age() -> World {
    let mut config = config(pool(StrategyConfig::default(), 4));
    config.timing = Timing {
        orphan_min_age_ms: MIN_AGE,
        ..config.timing
    };
    World::new(config, T0, true)
}

#[test]
fn an_old_enough_orphan_of_ours_is_deleted_and_nothing_else() {
    let mut w = world_with_min_age();
    let old = node("linux-f1-7-1");
    let other_ns = node("linux-f1-7-2");
    let other_fleet = node("linux-f2-7-1");
    let untagged = node("linux-7-1");
    // Created long ago: the age counts from when this fleet first saw it.
    w.add_instance(stray(&old, "fleet", Some("f1"), T0 - 86_400_000));
    w.add_instance(stray(&other_ns, "fleet.other", Some("f1"), T0 - 86_400_000));
    w.add_instance(stray(&other_fleet, "fleet", Some("f2"), T0 - 86_400_000));
    w.add_instance(stray(&untagged, "fleet", None, T0 - 86_400_000));
    w.inventory();
    w.run_for(1_000).unwrap();
    let first_seen = T0;

    // Inventories keep coming (the driver's period is 5 min); just before
    // the minimum age, everything still runs.
    w.run_until(first_seen + MIN_AGE / 2).unwrap();
    w.inventory();
    w.run_until(first_seen + MIN_AGE - 1).unwrap();
    for n in [&old, &other_ns, &other_fleet, &untagged] {
        assert!(exists(&w, n), "{n} was deleted before the minimum age");
    }

    // At the minimum age, ours is deleted (one provider call away).
    w.run_until(first_seen + MIN_AGE + 1_000).unwrap();
    assert!(!exists(&w, &old), "the orphan of ours was not collected");

    // Much later, with more inventories: the others are never touched.
    for _ in 0..6 {
        w.inventory();
        w.run_for(MIN_AGE).unwrap();
    }
    for n in [&other_ns, &other_fleet, &untagged] {
        assert!(exists(&w, n), "{n} is not ours and was deleted");
    }
    assert!(
        w.controller().nodes().next().is_none(),
        "no stray was adopted as a node"
    );
}

#[test]
fn a_younger_orphan_waits_for_its_own_age() {
    let mut w = world_with_min_age();
    let older = node("linux-f1-7-1");
    let younger = node("linux-f1-7-2");
    w.add_instance(stray(&older, "fleet", Some("f1"), T0));
    w.inventory();
    w.run_for(MIN_AGE / 2).unwrap();
    // Created half the minimum age later (and listed at once).
    let born = w.now();
    w.add_instance(stray(&younger, "fleet", Some("f1"), born));
    w.inventory();
    w.run_until(T0 + MIN_AGE + 1_000).unwrap();
    assert!(!exists(&w, &older), "the older orphan is collected");
    assert!(exists(&w, &younger), "the younger one is not old enough");
    w.inventory();
    w.run_until(born + MIN_AGE - 1).unwrap();
    assert!(exists(&w, &younger), "deleted before its minimum age");
    w.run_until(born + MIN_AGE + 1_000).unwrap();
    assert!(!exists(&w, &younger), "collected once old enough");
}

#[test]
fn the_age_counts_from_creation_when_the_instance_is_newer_than_its_sighting() {
    // A provider clock ahead of the daemon's: created "later" than seen.
    let mut w = world_with_min_age();
    let ahead = node("linux-f1-7-1");
    w.add_instance(stray(&ahead, "fleet", Some("f1"), T0 + 120_000));
    w.inventory();
    w.run_until(T0 + MIN_AGE + 60_000).unwrap();
    assert!(
        exists(&w, &ahead),
        "deleted before its creation + minimum age"
    );
    w.run_until(T0 + 120_000 + MIN_AGE + 1_000).unwrap();
    assert!(!exists(&w, &ahead));
}

#[test]
fn an_orphan_that_vanished_is_not_deleted() {
    let mut w = world_with_min_age();
    let gone = node("linux-f1-7-1");
    w.add_instance(stray(&gone, "fleet", Some("f1"), T0));
    w.inventory();
    w.run_for(MIN_AGE / 2).unwrap();
    // Deleted by someone else; the next inventory no longer lists it, and
    // a new instance of the same id later starts its age from zero.
    let mut reborn = w.remove_instance(&gone).unwrap();
    w.inventory();
    w.run_for(MIN_AGE / 2 + 1_000).unwrap();
    reborn.created_at = w.now();
    w.add_instance(reborn);
    w.inventory();
    w.run_for(MIN_AGE - 1_000).unwrap();
    assert!(exists(&w, &gone), "its age counted from before it vanished");
    w.run_for(2_000).unwrap();
    assert!(!exists(&w, &gone));
}

/// A store rolled back to a backup forgets nodes whose instances still
/// run, and hands out their epoch and sequence again: the controller's
/// next node can get the id of a known orphan, and the provider's create
/// (idempotent by node id) hands it that instance. Ours now: not deleted.
#[test]
fn an_orphan_a_node_of_ours_comes_to_own_is_not_deleted() {
    let mut spec = pool(StrategyConfig::default(), 4);
    spec.min_nodes = 1;
    let mut config = config(spec);
    config.timing.orphan_min_age_ms = MIN_AGE;
    let mut w = World::new(config, T0, true);
    // The id the controller's first node (epoch 1, sequence 1) gets.
    let first = node("linux-f1-1-1");
    w.add_instance(stray(&first, "fleet", Some("f1"), T0));
    w.inventory();
    // The pool's minimum: one node, created now, with that id.
    w.run_for(MIN_AGE + 60_000).unwrap();
    let nodes: Vec<NodeId> = w.controller().nodes().map(|n| n.record.node).collect();
    assert_eq!(nodes, vec![first.clone()]);
    assert!(
        exists(&w, &first),
        "the orphan timer deleted a node of ours"
    );
}
