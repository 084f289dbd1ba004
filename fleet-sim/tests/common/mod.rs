//! Inputs shared by the simulator's tests.

#![allow(dead_code, reason = "each test file uses a subset")]
#![expect(clippy::expect_used, reason = "tests")]

use fleet_sim::{Scenario, SimResult};
use serde_json::{Value, json};

/// A week-long input on `book` with `forecast`, the six default strategies,
/// on a 4-vCPU type of the book (the figures below are computed for it).
pub(crate) fn input(book: &str, forecast: Value, hours: u64) -> Value {
    let instance_type = if book == "hetzner" {
        "cx32"
    } else {
        "c7i.xlarge"
    };
    json!({
        "horizon_hours": hours,
        "seed": 7,
        "forecast": forecast,
        "jobs": { "duration": { "kind": "lognormal", "median_ms": 300000, "sigma": 0.5 } },
        "pool": { "max_nodes": 6, "instance_types": [instance_type] },
        "provider": { "price_book": book },
        "sla": { "percentile": 95, "max_wait_ms": 60000 }
    })
}

/// Steady load: 4 jobs an hour, day and night.
pub(crate) fn steady() -> Value {
    json!({ "profile": { "rate_per_hour": 4 } })
}

/// Weekday daytime bursts, quiet nights and weekends.
pub(crate) fn daytime() -> Value {
    json!({ "profile": {
        "rate_per_hour": 10,
        "hour_of_day": [0,0,0,0,0,0,0,0.3,0.8,1,1,1,0.7,1,1,1,0.8,0.4,0.1,0,0,0,0,0],
        "day_of_week": [1,1,1,1,1,0,0]
    }})
}

/// Almost nothing, with rare spikes.
pub(crate) fn spikes() -> Value {
    json!({ "profile": {
        "rate_per_hour": 0.2,
        "spikes": { "per_week": 3, "duration_minutes": 15, "rate_per_hour": 80 }
    }})
}

/// Parses an input value.
pub(crate) fn scenario(v: &Value) -> Scenario {
    fleet_sim::input::parse(v.to_string().as_bytes()).expect("valid input")
}

/// Simulates on two threads.
pub(crate) fn simulate(v: &Value) -> SimResult {
    fleet_sim::simulate(&scenario(v), 2, None).expect("simulation runs")
}
