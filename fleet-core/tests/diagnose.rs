//! `Diagnosis::build` on the state of the real controller: an
//! unsatisfiable claim is an error that names why, a node's agent version
//! and silence are reported, provider failures and failed escalation
//! deliveries are findings, errors come first.
#![expect(clippy::unwrap_used, reason = "tests")]

mod common;

use std::collections::BTreeMap;

use common::*;
use fleet_core::protocol::{
    ClaimMsg, Diagnosis, DiagnosisInputs, NodeState, PendingReason, Severity,
};

fn diagnose(
    w: &fleet_core::harness::World,
    provider_errors: &BTreeMap<String, u64>,
    deliveries: &BTreeMap<String, u64>,
) -> Diagnosis {
    let c = w.controller();
    let nodes: Vec<_> = c.nodes().collect();
    let claims: Vec<_> = c.accepted_claims().cloned().collect();
    Diagnosis::build(DiagnosisInputs {
        now: w.now(),
        epoch: c.epoch(),
        nodes: &nodes,
        claims: &claims,
        provider_errors,
        alerts: &BTreeMap::new(),
        alert_deliveries: deliveries,
        heartbeat_timeout_ms: 30_000,
    })
}

#[test]
fn the_diagnosis_names_what_is_wrong_and_why_errors_first() {
    let mut w = world();
    let granted = w.send_claim(ClaimMsg::Request(request("ok")));
    let mut huge = request("huge");
    huge.requirements.cpus = 512;
    let _ = w.send_claim(ClaimMsg::Request(huge));
    // Until the first claim's node has booted and serves it.
    for _ in 0..600 {
        w.run_for(1_000).unwrap();
        if w.controller().nodes().any(|n| n.state == NodeState::Busy) {
            break;
        }
    }
    let _ = granted;

    let quiet = diagnose(&w, &BTreeMap::new(), &BTreeMap::new());
    let node = quiet
        .nodes
        .iter()
        .find(|n| n.state == NodeState::Busy)
        .unwrap_or_else(|| panic!("{quiet:?}"));
    assert_eq!(node.agent_version.as_deref(), Some("world"));
    assert!(node.connected && node.silent_ms < 30_000, "{node:?}");
    let waiting: Vec<_> = quiet.waiting.iter().map(|c| c.claim.as_str()).collect();
    assert_eq!(waiting, ["huge"], "the other one is granted");
    assert!(matches!(
        quiet.waiting[0].reason,
        PendingReason::Unsatisfiable { .. }
    ));
    let first = &quiet.findings[0];
    assert_eq!(first.severity, Severity::Error);
    assert!(first.subject.contains("claim huge"), "{first:?}");
    assert!(first.what.contains("can never be granted"), "{first:?}");
    assert_eq!(quiet.findings.len(), 1, "{:?}", quiet.findings);

    // Provider failures and failed deliveries are warnings, after errors.
    let errors = BTreeMap::from([("create,capacity".to_owned(), 3)]);
    let deliveries = BTreeMap::from([("failed".to_owned(), 2), ("dropped".to_owned(), 0)]);
    let noisy = diagnose(&w, &errors, &deliveries);
    let words: Vec<String> = noisy
        .findings
        .iter()
        .map(|f| format!("{:?} {}: {}", f.severity, f.subject, f.what))
        .collect();
    assert_eq!(
        words[1..],
        [
            "Warning provider create: failed 3 time(s): capacity".to_owned(),
            "Warning alerts: 2 escalation deliveries failed".to_owned(),
        ],
        "{words:?}"
    );
    assert!(words[0].starts_with("Error claim huge"), "{words:?}");
}
