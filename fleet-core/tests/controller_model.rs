//! A proptest state-machine test of the controller against a reference
//! model: random claims, renewals, releases, time, agent loss, spot
//! interruptions, store and provider faults and crashes. After every step:
//! no node double-granted, no accepted claim lost, no grant sent for a
//! claim the caller released; at the end every granted claim was released,
//! expired or revoked.
#![expect(clippy::unwrap_used, reason = "tests")]

mod common;

use std::collections::BTreeSet;

use common::*;
use fleet_core::harness::World;
use fleet_core::protocol::{ClaimMsg, ClaimReply, ClaimState, Record};
use fleet_core::provider::ProviderError;
use proptest::prelude::*;
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest, prop_state_machine};

#[derive(Debug, Clone)]
enum Op {
    Request(u8),
    Renew(u8),
    Release(u8),
    Advance(u32),
    KillAgent(u8),
    Interrupt(u8),
    Crash,
    StoreOutage(u8),
    ProviderOutage(u8),
}

/// What the callers did, which is all the model needs to judge the system.
#[derive(Debug, Clone, Default)]
struct Model {
    requested: BTreeSet<u8>,
    released: BTreeSet<u8>,
}

struct Reference;

impl ReferenceStateMachine for Reference {
    type State = Model;
    type Transition = Op;

    fn init_state() -> BoxedStrategy<Model> {
        Just(Model::default()).boxed()
    }

    fn transitions(_: &Model) -> BoxedStrategy<Op> {
        prop_oneof![
            4 => (0u8..8).prop_map(Op::Request),
            2 => (0u8..8).prop_map(Op::Renew),
            3 => (0u8..8).prop_map(Op::Release),
            4 => (1u32..400).prop_map(Op::Advance),
            1 => (0u8..4).prop_map(Op::KillAgent),
            1 => (0u8..4).prop_map(Op::Interrupt),
            1 => Just(Op::Crash),
            1 => (1u8..4).prop_map(Op::StoreOutage),
            1 => (1u8..3).prop_map(Op::ProviderOutage),
        ]
        .boxed()
    }

    fn apply(mut state: Model, op: &Op) -> Model {
        match op {
            Op::Request(id) if !state.released.contains(id) => {
                state.requested.insert(*id);
            }
            Op::Release(id) if state.requested.contains(id) => {
                state.released.insert(*id);
            }
            _ => {}
        }
        state
    }
}

struct ControllerUnderTest;

fn claim_name(id: u8) -> String {
    format!("m{id}")
}

fn nth_node(w: &World, i: u8) -> Option<fleet_core::NodeId> {
    let nodes: Vec<_> = w.controller().nodes().map(|n| n.record.node).collect();
    if nodes.is_empty() {
        return None;
    }
    Some(nodes[usize::from(i) % nodes.len()].clone())
}

impl StateMachineTest for ControllerUnderTest {
    type SystemUnderTest = World;
    type Reference = Reference;

    fn init_test(_: &Model) -> World {
        world()
    }

    fn apply(mut w: World, model: &Model, op: Op) -> World {
        match op {
            Op::Request(id) => {
                // A caller never reuses an id it released.
                if !model.released.contains(&id) {
                    let mut req = request(&claim_name(id));
                    // A retry repeats the request exactly, so priority and
                    // lease derive from the id alone.
                    req.priority = i32::from(id % 3);
                    req.lease_ttl_ms = if id % 2 == 0 { 90_000 } else { 600_000 };
                    w.send_claim(ClaimMsg::Request(req));
                }
            }
            Op::Renew(id) => {
                w.send_claim(ClaimMsg::Renew {
                    workspace: ws(),
                    claim_id: cid(&claim_name(id)),
                });
            }
            Op::Release(id) => {
                w.send_claim(ClaimMsg::Release {
                    workspace: ws(),
                    claim_id: cid(&claim_name(id)),
                });
            }
            Op::Advance(secs) => {
                w.run_for(u64::from(secs) * 1_000).unwrap();
            }
            Op::KillAgent(i) => {
                if let Some(n) = nth_node(&w, i) {
                    w.kill_agent(&n);
                }
            }
            Op::Interrupt(i) => {
                if let Some(n) = nth_node(&w, i) {
                    w.interrupt(&n);
                }
            }
            Op::Crash => w.crash_and_restart(),
            Op::StoreOutage(n) => w.faults().store_unavailable += u32::from(n),
            Op::ProviderOutage(n) => {
                w.faults().provider_error =
                    Some((ProviderError::Transient("injected".into()), u32::from(n)))
            }
        }
        w.run_for(1).unwrap();
        w
    }

    fn check_invariants(w: &World, model: &Model) {
        w.check_invariants().unwrap();
        // A released claim never holds a node once the release is stored
        // (until then it must: the slot is freed write-ahead).
        let stored = w.records();
        for id in &model.released {
            let cid = cid(&claim_name(*id));
            let released_in_store = stored.iter().any(|(_, _, r)| {
                matches!(
                    r,
                    Record::Claim(c) if c.request.claim_id == cid && c.state == ClaimState::Released
                )
            });
            if released_in_store
                && !w.controller().is_fenced()
                && w.controller().writes_in_flight() == 0
            {
                assert!(
                    !w.controller().nodes().any(|n| n.claims.contains(&cid)),
                    "released claim {cid} still occupies a node"
                );
            }
        }
        // Every acknowledged claim is known.
        for id in &model.requested {
            let cid = cid(&claim_name(*id));
            let acked = w
                .claim_messages(&cid)
                .iter()
                .any(|m| matches!(m, ClaimReply::Granted(_)));
            if acked {
                assert!(
                    w.controller().claim(&cid).is_some(),
                    "granted claim {cid} lost"
                );
            }
        }
    }

    fn teardown(mut w: World) {
        // Let every lease run out and every fault clear.
        w.faults().store_unavailable = 0;
        w.faults().provider_error = None;
        w.run_for(4 * 3_600_000).unwrap();
        w.check_invariants().unwrap();
        for c in w.controller().claims() {
            assert!(
                c.state.is_terminal() || c.state == ClaimState::Pending,
                "claim {} still {:?} long after its lease",
                c.request.claim_id,
                c.state
            );
        }
        assert!(
            w.controller().nodes().all(|n| n.claims.is_empty()),
            "a node still holds claims after every lease ended"
        );
    }
}

prop_state_machine! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn controller_matches_the_reference_model(sequential 1..40 => ControllerUnderTest);
}
