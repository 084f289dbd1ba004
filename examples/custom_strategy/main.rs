//! A strategy of your own: `BusinessHours` (in `business_hours.rs`) keeps a
//! warm node during office hours and none at night, and caps how many
//! nodes boot at once. This runs it on a few hand-built pools
//! (`scenarios.rs`) and prints what it would do.
//!
//! `cargo run -p fleet-examples --example custom_strategy`
//! `cargo test -p fleet-examples` snapshot-tests the same plans with insta.
//!
//! A strategy only reads a `PoolView` and returns actions as data, so it is
//! tested without a controller, a provider or a clock. (Pools in a daemon
//! choose among the six built-in strategies by name, `StrategyConfig`; a
//! strategy like this one is what you would add there.)

mod business_hours;
mod scenarios;

use fleet_core::strategy::{Action, Plan, Strategy};
use fleet_core::time::Utc;

use business_hours::BusinessHours;

/// What each situation must produce; the example fails otherwise.
const EXPECTED: &[(&str, &str)] = &[
    ("monday_0900_empty_pool", "create c7i.large"),
    ("monday_0900_warm_node_idle", "nothing"),
    ("monday_1900_idle_for_30_min", "delete builds-1-1"),
    ("monday_1900_idle_for_2_min", "nothing"),
    (
        "monday_1000_claim_too_big_for_the_warm_node",
        "create c7i.4xlarge",
    ),
    (
        "saturday_1100_burst_of_5",
        "create c7i.large, create c7i.large, create c7i.large",
    ),
    ("saturday_1105_three_up_two_waiting", "create c7i.large"),
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let strategy = BusinessHours::default();
    let situations = scenarios::all()?;
    if let Some(first) = situations.first() {
        let info = strategy.describe(&first.view());
        println!("{}: {}", info.name, info.summary);
        for p in &info.parameters {
            println!("  {} = {} ({})", p.name, p.value, p.meaning);
        }
        println!("  cost: {}\n", info.cost_model);
    }

    for s in &situations {
        let plan = strategy.plan(&s.view(), s.now);
        let did = summary(&plan);
        println!("{} ({}): {did}", s.name, Utc::from_millis(s.now));
        if let Some(at) = plan.wake_at {
            println!("  ask again at {}", Utc::from_millis(at));
        }

        let want = EXPECTED
            .iter()
            .find(|(name, _)| *name == s.name)
            .map(|(_, want)| *want);
        if want != Some(did.as_str()) {
            return Err(format!("{}: planned {did:?}, expected {want:?}", s.name).into());
        }
        // The trait's contract: once the controller has taken the actions
        // (nodes requested, not yet up), planning again asks for nothing.
        let again = strategy.plan(&s.after(&plan)?.view(), s.now);
        if !again.actions.is_empty() {
            return Err(format!("{}: planned twice: {}", s.name, summary(&again)).into());
        }
    }
    println!("\nok: every plan as expected, and none repeated when planned again");
    Ok(())
}

/// A plan's actions in words.
fn summary(plan: &Plan) -> String {
    if plan.actions.is_empty() {
        return "nothing".to_owned();
    }
    let words: Vec<String> = plan
        .actions
        .iter()
        .map(|a| match a {
            Action::Create { size, .. } => format!("create {size}"),
            Action::Delete { node } => format!("delete {node}"),
            other => format!("{other:?}"),
        })
        .collect();
    words.join(", ")
}
