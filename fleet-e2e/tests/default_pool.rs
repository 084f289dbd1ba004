//! The pool the daemon runs and the pool the simulator ranks strategies
//! for are one type with one set of defaults: an operator who simulates
//! before configuring gets what the daemon will run.

use fleet_core::strategy::PoolSpec;
use fleet_daemon::config::DaemonConfig;

/// The smallest simulator input: no `pool` at all.
const SIM_INPUT: &str = r#"{
    "horizon_hours": 1,
    "forecast": { "profile": { "rate_per_hour": 1 } },
    "jobs": { "duration": { "kind": "fixed", "ms": 60000 } },
    "provider": { "price_book": "aws" },
    "sla": { "max_wait_ms": 60000 }
}"#;

fn sim_pool(input: &str) -> PoolSpec {
    fleet_sim::input::parse(input.as_bytes())
        .unwrap_or_else(|e| panic!("{e}"))
        .input
        .pool
}

#[test]
fn the_daemons_default_pool_is_the_simulators_default_pool() {
    let daemon = DaemonConfig::parse("").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(daemon.pools, [sim_pool(SIM_INPUT)]);
    assert_eq!(daemon.pools, [PoolSpec::default()]);
    assert_eq!(DaemonConfig::default().pools, daemon.pools);
}

#[test]
fn a_pool_written_for_the_daemon_reads_the_same_in_the_simulator() {
    let toml = r#"
        [[pool]]
        name = "builds"
        instance_types = ["c7i.large", "c7i.xlarge"]
        min_nodes = 1
        max_nodes = 8
        slots_per_node = 2
    "#;
    let daemon = DaemonConfig::parse(toml).unwrap_or_else(|e| panic!("{e}"));
    let mut input: serde_json::Value =
        serde_json::from_str(SIM_INPUT).unwrap_or_else(|e| panic!("{e}"));
    input["pool"] = serde_json::json!({
        "name": "builds",
        "instance_types": ["c7i.large", "c7i.xlarge"],
        "min_nodes": 1,
        "max_nodes": 8,
        "slots_per_node": 2
    });
    assert_eq!(daemon.pools, [sim_pool(&input.to_string())]);

    // And both refuse the same bad pool, naming the same key.
    let bad_daemon = DaemonConfig::parse("[[pool]]\nmax_nodes = 0")
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    input["pool"] = serde_json::json!({ "max_nodes": 0 });
    let bad_sim = fleet_sim::input::parse(input.to_string().as_bytes())
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(bad_daemon.contains("pool[0].max_nodes"), "{bad_daemon}");
    assert!(bad_sim.contains("$.pool.max_nodes"), "{bad_sim}");
}
