//! A trace replayed through the billing rules directly matches the
//! simulator's bill within 1 %.
//!
//! The trace is built so that each node's life is known without the
//! controller: jobs far apart, each on a fresh node (ColdImage) that runs
//! from its create call through boot, the job and the idle timeout until
//! its delete completes; or (StoppedPool, one node) runs, stops, and
//! starts again per job. Two more bills are worked out by hand, in
//! dollars, from the providers' published prices (noted with their dates).

mod common;

use fleet_core::billing::BillingModel;
use fleet_core::money::{GbMonthPrice, HourlyPrice, Money};
use serde_json::json;

const API_MS: u64 = 2_000; // the world's provider API latency (delete, stop)
const DISK_GB: u64 = 50; // the EC2 book's root volume (Hetzner's is in the price)

fn run(book: &str, strategy: serde_json::Value, trace: &[(u64, u64)], hours: u64) -> (i64, i64) {
    let t: Vec<_> = trace
        .iter()
        .map(|(a, d)| json!({"at_ms": a, "duration_ms": d}))
        .collect();
    let mut v = common::input(book, json!({ "trace": t }), hours);
    v["strategies"] = json!([strategy]);
    // No jitter: the direct replay uses the mean latencies.
    v["provider"]["boot"] =
        json!({"image_spread_ms": 0, "snapshot_spread_ms": 0, "stopped_spread_ms": 0});
    let r = common::simulate(&v);
    let s = &r.strategies[0];
    (s.cost.total_micros, s.cost.stopped_micros)
}

fn within_1pct(sim: i64, direct: Money) {
    let d = direct.micros() as f64;
    assert!(
        (sim as f64 - d).abs() <= d * 0.01,
        "simulator {sim} vs direct {d}"
    );
}

/// Jobs 2 h apart, 10 / 25 / 70 min long.
const TRACE: [(u64, u64); 3] = [
    (0, 600_000),
    (7_200_000, 1_500_000),
    (14_400_000, 4_200_000),
];

#[test]
fn cold_image_on_ec2_per_second_billing() {
    let b = BillingModel::ec2();
    let price = HourlyPrice::from_micros(178_500); // c7i.xlarge
    let direct: Money = TRACE
        .iter()
        .map(|(_, d)| b.running_cost(price, DISK_GB, b.boot.image_ms + d + 60_000 + API_MS))
        .sum();
    let (sim, _) = run("aws", json!({"kind": "cold_image"}), &TRACE, 8);
    within_1pct(sim, direct);
}

#[test]
fn cold_image_on_hetzner_per_started_hour() {
    let b = BillingModel::hetzner();
    let price = HourlyPrice::from_micros(11_880); // cx32: €0.0110 × 1.08
    let direct: Money = TRACE
        .iter()
        .map(|(_, d)| b.running_cost(price, DISK_GB, b.boot.image_ms + d + 60_000 + API_MS))
        .sum();
    // 10 min, 25 min, 70 min (+ boot and idle) → 1 + 1 + 2 started hours,
    // each with the server's primary IPv4.
    assert_eq!(direct, (price.0 + Money::from_micros(864)).times(4));
    let (sim, _) = run("hetzner", json!({"kind": "cold_image"}), &TRACE, 8);
    within_1pct(sim, direct);
}

#[test]
fn stopped_pool_on_ec2_pays_disk_while_stopped() {
    let b = BillingModel::ec2();
    let price = HourlyPrice::from_micros(178_500);
    let idle = 300_000;
    // The node is created at 0, boots, serves job 0 at once (it waits for
    // the boot), idles, stops; each later job starts it again.
    let mut running = Money::ZERO;
    let mut up_ms = 0;
    for (i, (_, d)) in TRACE.iter().enumerate() {
        let boot = if i == 0 {
            b.boot.image_ms
        } else {
            b.boot.stopped_ms
        };
        let run_ms = boot + d + idle + API_MS;
        running += b.running_cost(price, 50, run_ms);
        up_ms += run_ms;
    }
    let total_ms = 8 * 3_600_000;
    let disk = GbMonthPrice(Money::from_micros(80_000));
    let stopped = disk.for_millis(50, total_ms - up_ms);
    let (sim, sim_stopped) = run("aws", json!({"kind": "stopped_pool", "size": 1}), &TRACE, 8);
    within_1pct(sim, running + stopped);
    within_1pct(sim_stopped, stopped);
}

fn within_1pct_of_dollars(sim_micros: i64, dollars: f64) {
    let sim = sim_micros as f64 / 1e6;
    assert!(
        (sim - dollars).abs() <= dollars * 0.01,
        "simulator ${sim:.6} vs by hand ${dollars:.6}"
    );
}

/// The bill for [`TRACE`] worked out by hand, in dollars, from EC2's
/// published us-east-1 prices as of June 2026: c7i.xlarge $0.1785/h (per
/// second, 60 s minimum), gp3 storage $0.08 per GB-month of a 730-hour
/// month for as long as the volume exists, and a public IPv4 address
/// $0.005/h while the instance runs (charged since 2024-02-01).
#[test]
fn ec2_stopped_pool_bill_by_hand_from_published_prices() {
    // One node, stopped after 5 idle minutes. Each job runs it from its
    // start (a 240 s first boot from the image, then 30 s starts) through
    // the job, the 300 s idle wait and the 2 s stop call.
    let running_secs = (240 + 600 + 300 + 2) + (30 + 1_500 + 300 + 2) + (30 + 4_200 + 300 + 2);
    let running_hours = f64::from(running_secs) / 3600.0;
    let instance = 0.1785 * running_hours;
    let address = 0.005 * running_hours;
    // The 50 GB root volume exists for all 8 hours, running or stopped.
    let volume = 0.08 * 50.0 * 8.0 / 730.0;
    let (sim, _) = run("aws", json!({"kind": "stopped_pool", "size": 1}), &TRACE, 8);
    within_1pct_of_dollars(sim, instance + address + volume);
}

/// The same by hand for Hetzner's published prices (Germany, net, as of
/// 2024, at $1.08 per euro): cx32 €0.0110/h and its primary IPv4
/// €0.0008/h, every started hour billed in full, the disk in the price.
#[test]
fn hetzner_cold_image_bill_by_hand_from_published_prices() {
    // A server per job, alive 10 + 25 + 70 minutes plus boot, idle and
    // delete: 1 + 1 + 2 started hours.
    let dollars = (0.0110 + 0.0008) * 1.08 * 4.0;
    let (sim, _) = run("hetzner", json!({"kind": "cold_image"}), &TRACE, 8);
    within_1pct_of_dollars(sim, dollars);
}
