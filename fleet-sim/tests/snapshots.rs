//! The result of three forecasts, snapshotted: a change to any strategy,
//! the controller or a cost rule shows up here in review.

#![expect(clippy::unwrap_used, reason = "tests")]

mod common;

use insta::dynamic_redaction;

fn check(name: &str, forecast: serde_json::Value) {
    let result = common::simulate(&common::input("aws", forecast, 168));
    let value = serde_json::to_value(&result).unwrap();
    insta::assert_yaml_snapshot!(name, value, {
        // The version moves with every release.
        ".simulator" => "[version]",
        // 100 points per strategy would drown the review; the ends are kept
        // in cost.total and accounted_hours.
        ".strategies[].cost_over_time" => dynamic_redaction(|v, _| {
            format!("[{} points]", v.as_slice().map_or(0, <[_]>::len))
        }),
    });
}

#[test]
fn steady_load() {
    check("steady", common::steady());
}

#[test]
fn daytime_burst_quiet_nights() {
    check("daytime", common::daytime());
}

#[test]
fn rare_spikes() {
    check("spikes", common::spikes());
}
