//! What `fleet-sim --tune` prints is a `[[pool]]` block the daemon reads
//! as-is, and reads as the pool that was tuned: an operator pastes it into
//! daemon.toml and runs what was simulated.

use fleet_daemon::config::DaemonConfig;
use fleet_sim::tune::{self, Tuning};

/// Half a day of builds with a burst, all six strategies, a pool of up to
/// five nodes: small enough to tune in a debug build in seconds.
const SIM_INPUT: &str = r#"{
    "horizon_hours": 12,
    "seed": 11,
    "forecast": { "profile": {
        "rate_per_hour": 4,
        "spikes": { "per_week": 14, "duration_minutes": 30, "rate_per_hour": 20 }
    } },
    "jobs": { "duration": { "kind": "uniform", "min_ms": 120000, "max_ms": 900000 } },
    "pool": {
        "name": "builds",
        "instance_types": ["c7i.large", "c7i.xlarge"],
        "labels": { "team": "ci" },
        "max_nodes": 5
    },
    "provider": { "price_book": "aws" },
    "sla": { "percentile": 90, "max_wait_ms": 90000 }
}"#;

/// The daemon.toml an operator would write around the block: settings of
/// their own before it, another pool after it.
fn daemon_toml(block: &str) -> String {
    format!(
        "namespace = \"ci\"\n\n[http]\nlisten = \"127.0.0.1:7070\"\n\n{block}\n\
         [[pool]]\nname = \"other\"\ninstance_types = [\"c7i.large\"]\n"
    )
}

fn tuned() -> Tuning {
    let scenario = fleet_sim::input::parse(SIM_INPUT.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    tune::tune(&scenario, 2, None).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn the_printed_pool_block_is_read_by_the_daemon_as_the_tuned_pool() {
    let t = tuned();
    let winner = t
        .result
        .ranking
        .first()
        .and_then(|r| t.tuned.iter().find(|x| x.id == r.strategy))
        .unwrap_or_else(|| panic!("no winner: {t:?}"));
    // What `fleet-sim --tune` prints after its table.
    let printed = tune::winner_toml(&t)
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("nothing printed"));
    let cfg =
        DaemonConfig::parse(&daemon_toml(&printed)).unwrap_or_else(|e| panic!("{e}\n{printed}"));
    assert_eq!(cfg.namespace, "ci");
    assert_eq!(cfg.pools.len(), 2, "{printed}");
    assert_eq!(cfg.pools[0], winner.pool, "{printed}");

    // The --pool-out file: the same winner, the others commented out.
    let file = tune::daemon_toml(&t).unwrap_or_else(|e| panic!("{e}"));
    let cfg = DaemonConfig::parse(&file).unwrap_or_else(|e| panic!("{e}\n{file}"));
    assert_eq!(cfg.pools, std::slice::from_ref(&winner.pool), "{file}");
}

#[test]
fn every_tuned_strategys_block_is_a_valid_daemon_pool() {
    let t = tuned();
    assert_eq!(t.tuned.len(), 6);
    for x in &t.tuned {
        let block = tune::pool_toml(&x.pool).unwrap_or_else(|e| panic!("{e}"));
        let cfg = DaemonConfig::parse(&daemon_toml(&block))
            .unwrap_or_else(|e| panic!("{}: {e}\n{block}", x.id));
        assert_eq!(cfg.pools[0], x.pool, "{}: {block}", x.id);
        assert_eq!(
            cfg.pools[0].labels.get("team").map(String::as_str),
            Some("ci")
        );
    }
}

/// Two days of weekday-daytime builds: the tuner keeps nodes warm in the
/// busy hours only, and the daemon reads that schedule back.
const DAYTIME_INPUT: &str = r#"{
    "horizon_hours": 48,
    "seed": 7,
    "forecast": { "profile": {
        "rate_per_hour": 10,
        "hour_of_day": [0,0,0,0,0,0,0,0.3,0.8,1,1,1,0.7,1,1,1,0.8,0.4,0.1,0,0,0,0,0]
    } },
    "jobs": { "duration": { "kind": "lognormal", "median_ms": 300000, "sigma": 0.5 } },
    "pool": { "name": "builds", "instance_types": ["c7i.xlarge"], "max_nodes": 6 },
    "provider": { "price_book": "aws" },
    "sla": { "percentile": 95, "max_wait_ms": 60000 },
    "strategies": [{ "kind": "cold_image" }]
}"#;

#[test]
fn a_tuned_busy_hours_schedule_is_read_by_the_daemon() {
    let scenario =
        fleet_sim::input::parse(DAYTIME_INPUT.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    let t = tune::tune(&scenario, 2, None).unwrap_or_else(|e| panic!("{e}"));
    let pool = &t.tuned[0].pool;
    assert_eq!(pool.schedule.len(), 1, "warm in busy hours only: {pool:?}");
    let printed = tune::winner_toml(&t)
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("nothing printed"));
    assert!(printed.contains("[[pool.schedule]]"), "{printed}");
    let cfg =
        DaemonConfig::parse(&daemon_toml(&printed)).unwrap_or_else(|e| panic!("{e}\n{printed}"));
    assert_eq!(&cfg.pools[0], pool, "{printed}");
}
