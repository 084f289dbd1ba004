//! The custom_strategy example's `BusinessHours` planner, snapshot-tested
//! with insta on the example's situations: one file per situation in
//! `tests/snapshots/`, so a change in what the strategy does shows up as a
//! diff in review. Times are fixed in the situations, so nothing needs a
//! redaction.

#[path = "../custom_strategy/business_hours.rs"]
mod business_hours;
#[path = "../custom_strategy/scenarios.rs"]
mod scenarios;

use business_hours::BusinessHours;
use fleet_core::ids::IdError;
use fleet_core::strategy::{Action, Strategy};
use fleet_core::time::Utc;

#[test]
fn plans() -> Result<(), IdError> {
    let strategy = BusinessHours::default();
    for s in scenarios::all()? {
        let plan = strategy.plan(&s.view(), s.now);
        // The wake-up time as a date, so the snapshot reads without a
        // calculator.
        let shown = serde_json::json!({
            "now": Utc::from_millis(s.now).to_string(),
            "actions": plan.actions,
            "wake_at": plan.wake_at.map(|t| Utc::from_millis(t).to_string()),
        });
        insta::assert_yaml_snapshot!(s.name, shown);
    }
    Ok(())
}

#[test]
fn describe() -> Result<(), IdError> {
    let situations = scenarios::all()?;
    let Some(s) = situations.first() else {
        panic!("no situations");
    };
    insta::assert_yaml_snapshot!(BusinessHours::default().describe(&s.view()));
    Ok(())
}

/// What the `Strategy` trait asks of every planner: once the controller has
/// taken a plan's actions, planning again asks for nothing new; and no plan
/// goes past `max_nodes` (4 in every situation).
#[test]
fn plans_are_not_repeated_and_stay_within_max_nodes() -> Result<(), IdError> {
    let strategy = BusinessHours::default();
    for s in scenarios::all()? {
        let plan = strategy.plan(&s.view(), s.now);
        let after = s.after(&plan)?;
        let again = strategy.plan(&after.view(), s.now);
        assert!(again.actions.is_empty(), "{}: {again:?}", s.name);
        let live = after.view().live_nodes().count();
        assert!(live <= 4, "{}: {live} nodes", s.name);
        let creates = plan
            .actions
            .iter()
            .filter(|a| matches!(a, Action::Create { .. }))
            .count();
        assert!(creates <= 3, "{}: {creates} nodes booting at once", s.name);
    }
    Ok(())
}
