//! Invariant 8: nothing accepted is lost, and no node leaks or doubles,
//! whatever instant the daemon crashes at.
#![expect(clippy::unwrap_used, reason = "tests")]

mod common;

use std::collections::BTreeSet;

use common::*;
use fleet_core::harness::World;
use fleet_core::protocol::{ClaimMsg, ClaimReply, ClaimState, Record};
use proptest::prelude::*;

fn granted_node(w: &World, id: &str) -> Option<fleet_core::NodeId> {
    w.claim_messages(&cid(id))
        .iter()
        .rev()
        .find_map(|m| match m {
            ClaimReply::Granted(g) => Some(g.node.clone()),
            _ => None,
        })
}

/// Every instance the provider runs has a node record, and no node id has
/// two instances (the provider is keyed by node id, so a second create would
/// show as a different provider id in the record).
fn no_leak_no_duplicate(w: &World) {
    let records: BTreeSet<_> = w
        .records()
        .into_iter()
        .filter_map(|(_, _, r)| match r {
            Record::Node(n) => Some((n.node.clone(), n.provider_id.clone())),
            _ => None,
        })
        .collect();
    for (node, inst) in w.instances() {
        let rec = records.iter().find(|(n, _)| n == node);
        let (_, pid) = rec.unwrap_or_else(|| panic!("instance of {node} has no record: leaked"));
        if let Some(pid) = pid {
            assert_eq!(pid, &inst.provider_id, "node {node} has two instances");
        }
    }
}

#[test]
fn crash_after_accepting_a_claim_loses_nothing() {
    let mut w = world();
    w.send_claim(ClaimMsg::Request(request("c1")));
    // Handle the request: the record is written, the ack not yet sent.
    w.step();
    assert!(
        w.records()
            .iter()
            .any(|(_, _, r)| matches!(r, Record::Claim(_)))
    );
    w.crash_and_restart();
    w.run_for(300_000).unwrap();
    assert!(
        granted_node(&w, "c1").is_some(),
        "the accepted claim was served after restart"
    );
    // The caller, who never saw an ack, retries and gets the same grant.
    let retry = w.send_claim(ClaimMsg::Request(request("c1")));
    w.run_for(1).unwrap();
    assert!(matches!(w.replies(&retry), [ClaimReply::Granted(_)]));
    assert_eq!(w.instances().len(), 1);
    no_leak_no_duplicate(&w);
}

#[test]
fn crash_mid_provision_neither_leaks_nor_duplicates() {
    let mut w = world();
    w.send_claim(ClaimMsg::Request(request("c1")));
    // Run until the provider has created the instance, not a step more.
    while w.instances().is_empty() {
        assert!(w.step());
    }
    w.crash_and_restart();
    w.run_for(300_000).unwrap();
    assert_eq!(
        w.instances().len(),
        1,
        "the re-issued create was idempotent"
    );
    assert!(granted_node(&w, "c1").is_some());
    no_leak_no_duplicate(&w);
}

#[test]
fn crash_after_grant_keeps_the_lease_and_the_node() {
    let mut w = world();
    w.send_claim(ClaimMsg::Request(request("c1")));
    w.run_for(300_000).unwrap();
    let node = granted_node(&w, "c1").unwrap();
    let before = w
        .controller()
        .claim(&cid("c1"))
        .unwrap()
        .expires_at
        .unwrap();
    // A long outage: longer than the lease itself.
    w.run_for(0).unwrap();
    w.crash_and_restart();
    w.run_for(1_000).unwrap();
    let c = w.controller().claim(&cid("c1")).unwrap();
    assert_eq!(
        c.state,
        ClaimState::Granted,
        "no mass expiry after a restart"
    );
    assert!(c.expires_at.unwrap() >= before);
    assert_eq!(c.node.as_ref(), Some(&node));
    let rel = w.send_claim(ClaimMsg::Release {
        workspace: ws(),
        claim_id: cid("c1"),
    });
    w.run_for(1).unwrap();
    assert!(matches!(w.replies(&rel), [ClaimReply::Released { .. }]));
    no_leak_no_duplicate(&w);
}

#[test]
fn a_store_outage_delays_the_ack_but_loses_nothing() {
    let mut w = world();
    w.faults().store_unavailable = 3;
    let reply = w.send_claim(ClaimMsg::Request(request("c1")));
    w.run_for(100).unwrap();
    assert!(
        w.replies(&reply).is_empty(),
        "never acknowledged before it is stored"
    );
    w.run_for(5_000).unwrap();
    assert!(matches!(w.replies(&reply), [ClaimReply::Pending { .. }]));
    w.run_for(300_000).unwrap();
    assert!(granted_node(&w, "c1").is_some());
}

/// The claim's stored record, as a restarted daemon would read it.
fn stored_claim(w: &World, id: &str) -> Option<fleet_core::protocol::ClaimRecord> {
    w.records().into_iter().find_map(|(_, _, r)| match r {
        Record::Claim(c) if c.request.claim_id.as_str() == id => Some(c),
        _ => None,
    })
}

#[test]
fn a_retried_request_is_not_answered_with_a_grant_that_is_not_stored() {
    // Found by fleet-chaos: a retry arriving while the grant's write was in
    // flight was answered from memory; a crash before the write landed left
    // the caller holding a node the store never gave it.
    let mut w = world();
    let mut req = request("c1");
    req.recipient = None;
    w.send_claim(ClaimMsg::Request(req.clone()));
    // Until the node is booting and every write has landed: the next two
    // writes are the node's `ready` and the grant, both at the agent's hello.
    while !(w
        .controller()
        .nodes()
        .any(|n| n.state == fleet_core::protocol::NodeState::Booting)
        && w.controller().writes_in_flight() == 0)
    {
        assert!(w.step());
    }
    w.faults().store_unavailable = 2;
    while w.controller().claim(&cid("c1")).unwrap().state != ClaimState::Granted {
        assert!(w.step());
    }
    assert_eq!(stored_claim(&w, "c1").unwrap().state, ClaimState::Pending);
    let retry = w.send_claim(ClaimMsg::Request(req));
    // The failed writes come back and the retry is handled; the writes are
    // retried later.
    w.run_for(1).unwrap();
    assert_eq!(stored_claim(&w, "c1").unwrap().state, ClaimState::Pending);
    assert!(
        w.replies(&retry).is_empty(),
        "answered before the grant was stored: {:?}",
        w.replies(&retry)
    );
    w.run_for(5_000).unwrap();
    assert_eq!(stored_claim(&w, "c1").unwrap().state, ClaimState::Granted);
    assert!(
        matches!(w.replies(&retry), [ClaimReply::Granted(_)]),
        "{:?}",
        w.replies(&retry)
    );
}

#[test]
fn a_stale_epoch_write_fences_the_old_leader() {
    use fleet_core::controller::{Command, Event};
    use fleet_core::store::StoreError;
    let mut c = fleet_core::controller::Controller::new(config(pool(Default::default(), 4)), T0);
    let cmds = c.handle(
        Event::Claim {
            msg: ClaimMsg::Request(request("c1")),
            reply: fleet_core::transport::ReplyTo("r".into()),
        },
        T0,
    );
    let key = cmds
        .iter()
        .find_map(|c| match c {
            Command::Persist { key, .. } => Some(key.clone()),
            _ => None,
        })
        .unwrap();
    let out = c.handle(
        Event::Persisted {
            key,
            result: Err(StoreError::Fenced {
                writer: 1,
                current: 2,
            }),
        },
        T0,
    );
    assert!(c.is_fenced());
    assert!(
        out.iter().all(|c| matches!(c, Command::Alert(_))),
        "{out:?}"
    );
    assert!(c.handle(Event::Tick, T0 + 1).is_empty());
    assert_eq!(c.next_deadline(), None);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Crash at any step of a busy stretch: every accepted claim is still
    /// known, no instance is leaked or doubled, and after the dust settles
    /// every claim was served.
    #[test]
    fn crash_at_any_step(crash_at in 0usize..400, claims in 1usize..5) {
        let mut w = world();
        for i in 0..claims {
            let mut req = request(&format!("c{i}"));
            req.recipient = None;
            w.claim_for(req, 120_000);
        }
        for _ in 0..crash_at {
            if !w.step() { break; }
        }
        let acked: Vec<_> = w.records().into_iter().filter_map(|(_, _, r)| match r {
            Record::Claim(c) => Some(c.request.claim_id),
            _ => None,
        }).collect();
        w.crash_and_restart();
        for id in &acked {
            prop_assert!(w.controller().claim(id).is_some(), "claim {id} lost in the crash");
        }
        // Callers whose request never reached the store retry.
        for i in 0..claims {
            let id = format!("c{i}");
            if !acked.iter().any(|a| a.as_str() == id) {
                let mut req = request(&id);
                req.recipient = None;
                w.send_claim(ClaimMsg::Request(req));
            }
        }
        w.run_for(1_200_000).unwrap();
        w.check_invariants().map_err(TestCaseError::fail)?;
        no_leak_no_duplicate(&w);
        for i in 0..claims {
            prop_assert!(granted_node(&w, &format!("c{i}")).is_some(), "c{i} never served");
        }
    }
}
