//! The claim lifecycle through the real controller in the virtual world.
#![expect(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use common::*;
use fleet_core::controller::Alert;
use fleet_core::protocol::{
    ClaimMsg, ClaimRejection, ClaimReply, ClaimState, DaemonMsg, NodeState, PendingReason,
    Requirements, RevokeReason,
};

fn granted(w: &fleet_core::harness::World, id: &str) -> Option<fleet_core::protocol::ClaimGrant> {
    w.claim_messages(&cid(id)).iter().find_map(|m| match m {
        ClaimReply::Granted(g) => Some(g.clone()),
        _ => None,
    })
}

#[test]
fn a_claim_is_acknowledged_granted_after_boot_and_released() {
    let mut w = world();
    let reply = w.send_claim(ClaimMsg::Request(request("c1")));
    w.run_for(1).unwrap();
    assert!(matches!(
        w.replies(&reply),
        [ClaimReply::Pending {
            reason: PendingReason::WaitingForCapacity,
            ..
        }]
    ));
    assert!(granted(&w, "c1").is_none(), "no node yet");
    assert_eq!(w.instances().len(), 1, "cold start creates one node");

    // EC2 image boot is 240 s in the billing model.
    w.run_for(250_000).unwrap();
    let g = granted(&w, "c1").expect("granted once the agent said hello");
    assert!(g.endpoint.ends_with(":7443"));
    let sealed = g.credentials.as_ref().expect("sealed to the recipient");
    assert!(
        sealed.ciphertext.contains(&format!("-at-{}-", g.endpoint)),
        "the credentials command carries the node's endpoint: {}",
        sealed.ciphertext
    );
    assert!(
        w.agent_messages(&g.node)
            .iter()
            .any(|m| matches!(m, DaemonMsg::Activate { .. }))
    );
    let trace = &w.traces()[&cid("c1")];
    assert!(trace.granted_at.unwrap() - trace.requested_at >= 240_000);

    let rel = w.send_claim(ClaimMsg::Release {
        workspace: ws(),
        claim_id: cid("c1"),
    });
    w.run_for(1).unwrap();
    assert!(matches!(w.replies(&rel), [ClaimReply::Released { .. }]));
    // The release is announced where the grant went, once, and is no
    // revocation.
    assert!(
        matches!(
            w.claim_messages(&cid("c1")),
            [ClaimReply::Granted(_), ClaimReply::Released { claim_id }] if *claim_id == cid("c1")
        ),
        "{:?}",
        w.claim_messages(&cid("c1"))
    );
    let again = w.send_claim(ClaimMsg::Release {
        workspace: ws(),
        claim_id: cid("c1"),
    });
    w.run_for(1).unwrap();
    assert!(matches!(w.replies(&again), [ClaimReply::Released { .. }]));
    assert_eq!(w.claim_messages(&cid("c1")).len(), 2, "announced once");
    assert_eq!(
        w.controller().claim(&cid("c1")).unwrap().state,
        ClaimState::Released
    );
    assert!(
        w.agent_messages(&g.node)
            .iter()
            .any(|m| matches!(m, DaemonMsg::Deactivate { .. }))
    );

    // ColdImage deletes the idle node after its idle timeout.
    w.run_for(120_000).unwrap();
    assert!(w.instances().is_empty(), "idle node deleted");
    w.check_invariants().unwrap();
}

#[test]
fn a_retried_request_gets_the_same_grant_and_a_reused_id_is_refused() {
    let mut w = world();
    w.send_claim(ClaimMsg::Request(request("c1")));
    w.run_for(300_000).unwrap();
    let first = granted(&w, "c1").unwrap();
    let again = w.send_claim(ClaimMsg::Request(request("c1")));
    w.run_for(1).unwrap();
    assert_eq!(w.replies(&again), &[ClaimReply::Granted(first.clone())]);

    let mut other = request("c1");
    other.priority = 7;
    let reused = w.send_claim(ClaimMsg::Request(other));
    w.run_for(1).unwrap();
    assert!(matches!(
        w.replies(&reused),
        [ClaimReply::Rejected {
            error: ClaimRejection::IdReused,
            ..
        }]
    ));
    assert_eq!(w.instances().len(), 1, "a retry never provisions again");
}

/// A certificate cannot be extended: each renewal of a claim with a
/// recipient carries new credentials that expire with the new lease, and a
/// repeated grant hands out the newest.
#[test]
fn a_renewal_carries_credentials_for_the_new_lease() {
    let mut w = world();
    let mut req = request("c1");
    req.lease_ttl_ms = 60_000;
    w.send_claim(ClaimMsg::Request(req.clone()));
    let mut plain = request("c2");
    plain.recipient = None;
    w.send_claim(ClaimMsg::Request(plain));
    w.run_for(250_000).unwrap();
    let g = granted(&w, "c1").unwrap();
    let first = g.credentials.clone().expect("sealed to the recipient");
    assert_eq!(first.expires_at, g.lease.expires_at);

    w.run_for(30_000).unwrap();
    let renew = |w: &mut fleet_core::harness::World, id: &str| {
        let r = w.send_claim(ClaimMsg::Renew {
            workspace: ws(),
            claim_id: cid(id),
        });
        w.run_for(1).unwrap();
        match w.replies(&r) {
            [ClaimReply::Renewed(r)] => r.clone(),
            other => panic!("unexpected {other:?}"),
        }
    };
    let r = renew(&mut w, "c1");
    let fresh = r.credentials.clone().expect("new credentials");
    assert!(r.expires_at > g.lease.expires_at);
    assert_eq!(
        fresh.expires_at, r.expires_at,
        "the certificate lasts as long as the lease"
    );
    assert_ne!(fresh, first);
    assert_eq!(
        w.controller().claim(&cid("c1")).unwrap().credentials,
        Some(fresh.clone()),
        "stored with the claim"
    );
    // The caller re-sends its request (same id): the grant has the newest.
    let again = w.send_claim(ClaimMsg::Request(req));
    w.run_for(1).unwrap();
    match w.replies(&again) {
        [ClaimReply::Granted(g2)] => assert_eq!(g2.credentials, Some(fresh)),
        other => panic!("unexpected {other:?}"),
    }
    // Without a recipient there is nothing to re-issue.
    assert_eq!(renew(&mut w, "c2").credentials, None);

    // The issuer fails: the lease is renewed anyway, the old certificate
    // stays, and the operator hears about it.
    w.faults().credentials_fail = 1;
    let before = w
        .controller()
        .claim(&cid("c1"))
        .unwrap()
        .expires_at
        .unwrap();
    w.run_for(10_000).unwrap();
    let r = renew(&mut w, "c1");
    assert!(r.expires_at > before);
    assert_eq!(r.credentials, None);
    assert!(
        w.alerts()
            .iter()
            .any(|a| matches!(a, Alert::CredentialsFailed { .. }))
    );
    assert_eq!(
        w.controller().claim(&cid("c1")).unwrap().state,
        ClaimState::Active
    );
}

#[test]
fn leases_expire_unless_renewed() {
    let mut w = world();
    let mut req = request("c1");
    req.lease_ttl_ms = 60_000;
    w.send_claim(ClaimMsg::Request(req));
    w.run_for(250_000).unwrap();
    let g = granted(&w, "c1").unwrap();

    w.run_for(40_000).unwrap();
    let renew = w.send_claim(ClaimMsg::Renew {
        workspace: ws(),
        claim_id: cid("c1"),
    });
    w.run_for(1).unwrap();
    match w.replies(&renew) {
        [ClaimReply::Renewed(r)] => assert!(r.expires_at > g.lease.expires_at),
        other => panic!("unexpected {other:?}"),
    }
    w.run_for(40_000).unwrap();
    assert_eq!(
        w.controller().claim(&cid("c1")).unwrap().state,
        ClaimState::Active
    );

    w.run_for(30_000).unwrap();
    assert_eq!(
        w.controller().claim(&cid("c1")).unwrap().state,
        ClaimState::Expired
    );
    assert!(w.claim_messages(&cid("c1")).iter().any(|m| matches!(
        m,
        ClaimReply::Revoked(r) if r.reason == RevokeReason::Expired
    )));
    let late = w.send_claim(ClaimMsg::Renew {
        workspace: ws(),
        claim_id: cid("c1"),
    });
    w.run_for(1).unwrap();
    assert!(matches!(
        w.replies(&late),
        [ClaimReply::Rejected {
            error: ClaimRejection::Ended,
            ..
        }]
    ));
}

/// A recipient the sealer would refuse is refused with the request: not
/// accepted, no node started for it, and no revocation later.
#[test]
fn a_recipient_that_is_not_an_x25519_age_key_is_rejected_at_request_time() {
    let mut w = world();
    let plugin =
        "age1yubikey1qgpsgpgxquyqjzstpsxsurcszyfpx9q4zct3sxg6rvwp68slyqsjyg52myc".to_owned();
    let mut replies = Vec::new();
    // The report's string, a real recipient missing its last character, and
    // a plugin recipient (the sealer takes X25519 only).
    for (i, bad) in [
        "age1notarecipient".to_owned(),
        RECIPIENT[..61].to_owned(),
        plugin,
    ]
    .into_iter()
    .enumerate()
    {
        let mut req = request(&format!("bad{i}"));
        req.recipient = Some(bad.clone());
        replies.push((bad, w.send_claim(ClaimMsg::Request(req))));
    }
    w.run_for(300_000).unwrap();
    for (i, (bad, reply)) in replies.iter().enumerate() {
        match w.replies(reply) {
            [
                ClaimReply::Rejected {
                    claim_id: Some(id),
                    error: ClaimRejection::Invalid { why },
                },
            ] => {
                assert_eq!(id, &cid(&format!("bad{i}")));
                assert!(why.contains("recipient"), "{why}");
            }
            other => panic!("{bad}: expected Rejected{{invalid}} alone, got {other:?}"),
        }
        assert!(w.controller().claim(&cid(&format!("bad{i}"))).is_none());
        assert!(w.claim_messages(&cid(&format!("bad{i}"))).is_empty());
    }
    assert!(
        w.instances().is_empty(),
        "no node is started for a refused claim"
    );
    assert!(
        w.records()
            .iter()
            .all(|(k, _, _)| !k.as_str().starts_with("claims.")),
        "nothing is stored for a refused claim"
    );

    // The same request with a well-formed recipient, upper-case too, is served.
    let mut ok = request("good");
    ok.recipient = Some(RECIPIENT.to_uppercase());
    let reply = w.send_claim(ClaimMsg::Request(ok));
    w.run_for(1).unwrap();
    assert!(matches!(w.replies(&reply), [ClaimReply::Pending { .. }]));
}

/// A claim granted in the round that accepted it is not acknowledged
/// `pending` first: the grant is the request's answer (and is published
/// where grants go). One that waits is told `pending`.
#[test]
fn a_claim_granted_at_once_gets_no_pending_first() {
    let mut w = world();
    let first = w.send_claim(ClaimMsg::Request(request("c1")));
    w.run_for(250_000).unwrap();
    assert!(matches!(w.replies(&first), [ClaimReply::Pending { .. }]));
    assert!(granted(&w, "c1").is_some());
    w.send_claim(ClaimMsg::Release {
        workspace: ws(),
        claim_id: cid("c1"),
    });
    w.run_for(1).unwrap();

    // The node is free now: the next claim is granted at once.
    let second = w.send_claim(ClaimMsg::Request(request("c2")));
    w.run_for(1).unwrap();
    assert!(granted(&w, "c2").is_some(), "granted on the free node");
    assert!(
        matches!(w.replies(&second), [ClaimReply::Granted(g)] if g.claim_id == cid("c2")),
        "the grant answers the request, with no pending before it: {:?}",
        w.replies(&second)
    );
    assert!(matches!(
        w.claim_messages(&cid("c2")),
        [ClaimReply::Granted(_)]
    ));

    // A third one waits (the node is held): it is told so.
    let third = w.send_claim(ClaimMsg::Request(request("c3")));
    w.run_for(1).unwrap();
    assert!(
        matches!(w.replies(&third), [ClaimReply::Pending { .. }]),
        "{:?}",
        w.replies(&third)
    );
}

#[test]
fn bad_requests_get_typed_answers_not_silence() {
    let mut w = world();
    let mut unknown_pool = request("c1");
    unknown_pool.pool = fleet_core::PoolName::new("nope").unwrap();
    let r1 = w.send_claim(ClaimMsg::Request(unknown_pool));
    let mut bad_ttl = request("c2");
    bad_ttl.lease_ttl_ms = 0;
    let r2 = w.send_claim(ClaimMsg::Request(bad_ttl));
    let mut bad_recipient = request("c3");
    bad_recipient.recipient = Some("ssh-ed25519 AAAA".to_owned());
    let r3 = w.send_claim(ClaimMsg::Request(bad_recipient));
    let mut impossible = request("c4");
    impossible.requirements = Requirements {
        cpus: 128,
        ..Requirements::default()
    };
    let r4 = w.send_claim(ClaimMsg::Request(impossible));
    let r5 = w.send_claim(ClaimMsg::Release {
        workspace: ws(),
        claim_id: cid("ghost"),
    });
    w.run_for(1).unwrap();
    assert!(matches!(
        w.replies(&r1),
        [ClaimReply::Rejected {
            error: ClaimRejection::UnknownPool { .. },
            ..
        }]
    ));
    assert!(matches!(
        w.replies(&r2),
        [ClaimReply::Rejected {
            error: ClaimRejection::Invalid { .. },
            ..
        }]
    ));
    assert!(matches!(
        w.replies(&r3),
        [ClaimReply::Rejected {
            error: ClaimRejection::Invalid { .. },
            ..
        }]
    ));
    match w.replies(&r4) {
        [
            ClaimReply::Pending {
                reason: PendingReason::Unsatisfiable { why },
                ..
            },
        ] => {
            assert!(why.contains("cpus>=128"), "{why}")
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(
        w.replies(&r5),
        [ClaimReply::Rejected {
            error: ClaimRejection::UnknownClaim,
            ..
        }]
    ));
    w.run_for(600_000).unwrap();
    assert!(
        w.instances().is_empty(),
        "nothing provisioned for impossible claims"
    );
}

#[test]
fn a_claim_that_waits_too_long_expires_with_wait_exceeded() {
    let mut w = world();
    w.faults().agents_never_boot = true;
    let mut req = request("c1");
    req.max_wait_ms = Some(60_000);
    w.send_claim(ClaimMsg::Request(req));
    w.run_for(61_000).unwrap();
    assert_eq!(
        w.controller().claim(&cid("c1")).unwrap().state,
        ClaimState::Expired
    );
    assert!(w.claim_messages(&cid("c1")).iter().any(|m| matches!(
        m,
        ClaimReply::Revoked(r) if r.reason == RevokeReason::WaitExceeded
    )));
}

#[test]
fn a_node_that_stops_heartbeating_is_lost_its_claim_revoked_and_replaced() {
    let mut w = world();
    w.send_claim(ClaimMsg::Request(request("c1")));
    w.run_for(250_000).unwrap();
    let g = granted(&w, "c1").unwrap();
    w.kill_agent(&g.node);
    w.run_for(31_000).unwrap();
    // Lost, and the strategy is already replacing it.
    assert!(matches!(
        w.controller().node(&g.node).map(|n| n.state),
        Some(NodeState::Lost | NodeState::Deleting) | None
    ));
    assert!(
        w.alerts()
            .iter()
            .any(|a| matches!(a, Alert::NodeLost { .. }))
    );
    assert!(w.claim_messages(&cid("c1")).iter().any(|m| matches!(
        m,
        ClaimReply::Revoked(r) if r.reason == RevokeReason::NodeLost
    )));
    // The caller re-claims; the strategy deletes the lost node and boots another.
    w.send_claim(ClaimMsg::Request(request("c2")));
    w.run_for(300_000).unwrap();
    let g2 = granted(&w, "c2").unwrap();
    assert_ne!(g2.node, g.node);
    assert!(!w.instances().contains_key(&g.node), "lost node deleted");
    w.check_invariants().unwrap();
}

#[test]
fn a_spot_interruption_revokes_with_the_deadline() {
    let mut w = world();
    w.send_claim(ClaimMsg::Request(request("c1")));
    w.run_for(250_000).unwrap();
    let g = granted(&w, "c1").unwrap();
    w.interrupt(&g.node);
    w.run_for(1).unwrap();
    assert!(w.claim_messages(&cid("c1")).iter().any(|m| matches!(
        m,
        ClaimReply::Revoked(r) if matches!(r.reason, RevokeReason::SpotInterrupted { .. })
    )));
    assert_eq!(
        w.controller()
            .costs(w.now())
            .pools
            .values()
            .map(|p| p.interruptions)
            .sum::<u64>(),
        1
    );
}

#[test]
fn priority_decides_who_gets_the_only_node() {
    let mut w = fleet_core::harness::World::new(
        config(pool(fleet_core::strategy::StrategyConfig::default(), 1)),
        T0,
        true,
    );
    let mut low = request("low");
    low.priority = 1;
    let mut high = request("high");
    high.priority = 9;
    w.send_claim(ClaimMsg::Request(low));
    w.run_for(1_000).unwrap();
    w.send_claim(ClaimMsg::Request(high));
    w.run_for(250_000).unwrap();
    assert!(granted(&w, "high").is_some());
    assert!(granted(&w, "low").is_none());
    assert!(matches!(
        w.controller().claim(&cid("low")).unwrap().pending_reason,
        Some(PendingReason::PoolAtCapacity { max_nodes: 1 })
    ));
}

#[test]
fn cost_is_accrued_with_the_billing_model() {
    let mut w = world();
    let mut req = request("c1");
    req.recipient = None;
    w.claim_for(req, 600_000);
    w.run_for(3_600_000).unwrap();
    let report = w.controller().costs(w.now());
    let pool = &report.pools[&fleet_core::PoolName::new("linux").unwrap()];
    // Boot 240 s + hold 600 s + idle 60 s (+ API latencies), at $0.085/h
    // plus the 30 GB root volume ($0.003288/h) and the public IPv4
    // ($0.005/h).
    assert!(
        pool.running_ms >= 900_000 && pool.running_ms < 960_000,
        "{}",
        pool.running_ms
    );
    let expected = fleet_core::money::HourlyPrice::from_micros(85_000 + 3_288 + 5_000)
        .for_millis(pool.running_ms.div_ceil(1000) * 1000);
    assert_eq!(pool.running, expected);
    assert_eq!(pool.boots.values().sum::<u64>(), 1);
}

#[test]
fn a_claim_only_the_peak_serves_is_granted_after_stop_resize_start_where_resizing_needs_a_stop() {
    // Found by fleet-chaos: on EC2 and Hetzner (`resize_requires_stop`)
    // always_on_resize asked to resize its running node, the controller
    // refused, and the claim waited for good.
    use fleet_core::strategy::StrategyConfig;
    let mut config = config(pool(StrategyConfig::AlwaysOnResize(Default::default()), 1));
    config.capabilities.resize_requires_stop = true;
    let mut w = fleet_core::harness::World::new(config, T0, true);
    w.run_for(300_000).unwrap();
    let node = w
        .controller()
        .nodes()
        .next()
        .expect("the always-on node")
        .record;
    assert_eq!(node.instance_type.as_str(), "c7.large");
    let mut req = request("big");
    req.requirements.cpus = 8;
    req.recipient = None;
    w.claim_for(req, 60_000);
    let asked = w.now();
    while granted(&w, "big").is_none() {
        assert!(w.now() < asked + 600_000, "not granted: {:?}", w.alerts());
        assert!(w.step());
    }
    let g = granted(&w, "big").unwrap();
    assert_eq!(g.node, node.node);
    let now = w.controller().node(&node.node).unwrap().record;
    assert_eq!(now.instance_type.as_str(), "c7.2xlarge");
    assert!(
        !w.alerts()
            .iter()
            .any(|a| matches!(a, Alert::InvalidAction { .. })),
        "{:?}",
        w.alerts()
    );
    // Released and idle at the peak: stopped, resized back, started again.
    w.run_for(1_800_000).unwrap();
    let back = w.controller().node(&node.node).unwrap();
    assert_eq!(back.record.instance_type.as_str(), "c7.large");
    assert_eq!(back.state, NodeState::Ready);
    w.check_invariants().unwrap();
}

/// The create that fills a pool changes why the claims it cannot serve
/// wait: they say so before the node boots, not once it is up.
#[test]
fn the_create_that_fills_the_pool_tells_the_waiting_claims_at_once() {
    let mut w = fleet_core::harness::World::new(
        config(pool(fleet_core::strategy::StrategyConfig::default(), 1)),
        T0,
        true,
    );
    w.send_claim(ClaimMsg::Request(request("c1")));
    w.send_claim(ClaimMsg::Request(request("c2")));
    let state = |w: &fleet_core::harness::World| w.controller().nodes().next().map(|n| n.state);
    while state(&w) != Some(fleet_core::protocol::NodeState::Booting) {
        assert!(w.step(), "the node never booted");
    }
    assert_eq!(w.controller().nodes().count(), 1);
    assert_eq!(
        w.controller().claim(&cid("c2")).unwrap().pending_reason,
        Some(PendingReason::PoolAtCapacity { max_nodes: 1 })
    );
}

/// A claim is neither fresh nor stored while its first write is in
/// flight, so the rounds in between do not see it; once stored, it is
/// arbitrated again if a slot is free (here the one a release freed
/// meanwhile), not left until something else wakes arbitration.
#[test]
fn a_claim_stored_after_a_slot_freed_is_granted_when_stored() {
    let mut w = world();
    w.set_store_latency(100);
    w.send_claim(ClaimMsg::Request(request("c0")));
    w.run_for(600_000).unwrap();
    assert!(granted(&w, "c0").is_some(), "c0 was never granted");
    let release = w.now();
    w.send_claim(ClaimMsg::Release {
        workspace: ws(),
        claim_id: cid("c0"),
    });
    // The release's write is in flight: the slot is still c0's.
    w.run_for(50).unwrap();
    w.send_claim(ClaimMsg::Request(request("c1")));
    // c0's end is stored at +100 ms, c1's request at +150 ms.
    w.run_for(2_000).unwrap();
    let at = w.traces().get(&cid("c1")).and_then(|t| t.granted_at);
    assert!(
        at.is_some_and(|t| t < release + 2_000),
        "c1 waits beside a free node: {at:?}"
    );
    assert_eq!(
        w.controller().nodes().count(),
        1,
        "a second node was bought"
    );
}

/// Without quotas a round arbitrates only as far down the queue as free
/// slots last (`arbitrate_unlimited`); with any quota, the whole queue at
/// once. A queue of claims of mixed priority and size behind a pool of
/// two two-slot nodes is granted the same way by both.
#[test]
fn a_round_without_quotas_grants_as_arbitrating_the_whole_queue_does() {
    let run = |quota: bool| {
        let mut spec = pool(fleet_core::strategy::StrategyConfig::default(), 2);
        spec.slots_per_node = 2;
        let mut cfg = config(spec);
        if quota {
            // A quota for someone else: the round takes the general path.
            cfg.quotas.insert(
                fleet_core::Workspace::new("someone-else").unwrap(),
                fleet_core::arbitrate::Quota {
                    max_claims: Some(1),
                    ..Default::default()
                },
            );
        }
        let mut w = fleet_core::harness::World::new(cfg, T0, true);
        for i in 0..40u32 {
            let mut r = request(&format!("c{i:02}"));
            r.priority = i32::try_from(i * 7 % 3).unwrap();
            if i % 5 == 0 {
                r.requirements.cpus = 4;
            }
            w.claim_for(r, 20_000 + u64::from(i % 4) * 7_000);
            w.run_for(1_500).unwrap();
        }
        w.run_for(3_600_000).unwrap();
        w.traces()
            .iter()
            .map(|(id, t)| (id.clone(), t.granted_at))
            .collect::<Vec<_>>()
    };
    let unlimited = run(false);
    assert_eq!(unlimited.len(), 40);
    assert!(unlimited.iter().all(|(_, g)| g.is_some()), "{unlimited:?}");
    let mut order: Vec<_> = unlimited.iter().map(|(id, g)| (*g, id.clone())).collect();
    order.sort();
    let arrival: Vec<_> = unlimited.iter().map(|(id, _)| id.clone()).collect();
    assert_ne!(
        order.into_iter().map(|(_, id)| id).collect::<Vec<_>>(),
        arrival,
        "served in arrival order: priorities never decided"
    );
    assert_eq!(unlimited, run(true));
}
