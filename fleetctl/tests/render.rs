//! The tables `fleetctl explain pool` and `fleetctl history` print, from
//! answers of the HTTP API's shape (snapshot-tested).
#![expect(clippy::unwrap_used, reason = "tests")]

use fleet_core::protocol::{ClaimHistory, PoolExplain};

const T0: u64 = 1_767_225_600_000;

#[test]
fn explain_pool_shows_each_action_with_its_reason_price_and_inputs() {
    let json = serde_json::json!({
        "pool": "linux",
        "strategy": "cold_image",
        "summary": "boot fresh from the provider image per demand; cheapest idle, longest boot",
        "parameters": { "idle_timeout_ms": "60000 ms" },
        "planned_at": T0 + 400_000,
        "inputs": { "waiting": 0, "nodes": { "gone": 2 }, "free_slots": 0 },
        "decisions": [
            {
                "at": T0, "pool": "linux", "strategy": "cold_image", "action": "create",
                "node": "linux-3f9a0c2e-3-1", "instance_type": "c7.large", "hourly_micros": 85000,
                "reason": { "reason": "demand", "claim": "c1", "waiting": 2 },
                "why": "claim c1 waits and no node can take it (2 waiting)",
                "inputs": { "waiting": 2, "oldest_wait_ms": 0, "nodes": {}, "free_slots": 0 }
            },
            {
                "at": T0, "pool": "linux", "strategy": "cold_image", "action": "create",
                "instance_type": "c7.large", "hourly_micros": 85000,
                "reason": { "reason": "demand", "claim": "c2", "waiting": 2 },
                "why": "claim c2 waits and no node can take it (2 waiting)",
                "refused": "pool is at max_nodes 1",
                "inputs": { "waiting": 2, "oldest_wait_ms": 0, "nodes": {}, "free_slots": 0,
                            "short_of": ["c7.2xlarge"] }
            },
            {
                "at": T0 + 330_000, "pool": "linux", "strategy": "cold_image", "action": "delete",
                "node": "linux-3f9a0c2e-3-1",
                "reason": { "reason": "idle", "idle_ms": 60000, "timeout_ms": 60000 },
                "why": "idle 1m00s (timeout 1m00s)",
                "inputs": { "waiting": 0, "nodes": { "ready": 1 }, "free_slots": 1 }
            }
        ]
    });
    let e: PoolExplain = serde_json::from_value(json).unwrap();
    insta::assert_snapshot!(fleetctl::render::explain_pool(&e));
}

#[test]
fn history_shows_each_transition_with_its_time_and_reason() {
    let json = serde_json::json!({
        "claim": "c1",
        "transitions": [
            { "at": T0, "claim": "c1", "workspace": "ci", "pool": "linux", "state": "pending",
              "reason": "accepted; waiting for a node" },
            { "at": T0 + 41_000, "claim": "c1", "workspace": "ci", "pool": "linux",
              "state": "granted", "node": "linux-3f9a0c2e-3-1", "reason": "granted after 41s waiting" },
            { "at": T0 + 100_000, "claim": "c1", "workspace": "ci", "pool": "linux",
              "state": "released", "node": "linux-3f9a0c2e-3-1", "reason": "released by the caller" }
        ]
    });
    let h: ClaimHistory = serde_json::from_value(json).unwrap();
    insta::assert_snapshot!(fleetctl::render::claim_history(&h));
}
