//! What `describe()` shares: the idle-cost math and the cost model in
//! words.

use crate::billing::{BillingModel, Granularity, StoppedBilling};
use crate::ids::Millis;
use crate::money::{HourlyPrice, MS_PER_HOUR, Money};
use crate::provider::{Market, Offering};
use crate::strategy::{IdleCost, PoolView};

/// One hour of running a node of instance price `price` with a root disk
/// of `disk_gb`, as billed (with its disk and address where charged).
pub(in crate::strategy) fn hour_of(
    billing: &BillingModel,
    price: HourlyPrice,
    disk_gb: u32,
) -> Money {
    billing.running_cost(price, u64::from(disk_gb), MS_PER_HOUR)
}

/// Snapshot storage per hour for an idle pool: the snapshot that exists,
/// or, when `will_take` (the strategy will snapshot a node it keeps), one
/// the size of the baseline disk.
pub(in crate::strategy) fn snapshot_hourly(view: &PoolView<'_>, will_take: bool) -> Money {
    let gb = match (view.snapshot, view.baseline()) {
        (Some(s), _) => u64::from(s.size_gb),
        (None, Some(b)) if will_take && view.capabilities.snapshot => u64::from(b.disk_gb),
        _ => return Money::ZERO,
    };
    view.billing.snapshot_per_gb_month.hourly(gb).0
}

/// The idle cost of `nodes_per_hour` of nodes kept from the start plus
/// a snapshot costing `storage` per hour. A snapshot the pool does not
/// have yet is taken of the first kept node once it booted from the
/// image, so until then only the nodes are paid.
pub(in crate::strategy) fn idle_with_snapshot(
    view: &PoolView<'_>,
    nodes_per_hour: Money,
    storage: Money,
) -> IdleCost {
    if storage == Money::ZERO || view.snapshot.is_some() {
        return IdleCost::steady(nodes_per_hour + storage);
    }
    let settle_ms = view
        .billing
        .boot
        .image_ms
        .saturating_add(view.billing.calls.snapshot_ms);
    IdleCost {
        setup: HourlyPrice(nodes_per_hour).for_millis(settle_ms),
        settle_ms,
        per_hour: nodes_per_hour + storage,
    }
}

/// An idle cost in words: `$x/h`, or `$s over the first N ms, then $x/h`.
pub(in crate::strategy) fn idle_words(idle: &IdleCost) -> String {
    if idle.settle_ms == 0 {
        format!("{}/h", idle.per_hour)
    } else {
        format!(
            "{} over its first {} ms, then {}/h",
            idle.setup, idle.settle_ms, idle.per_hour
        )
    }
}

/// The billing rules in words.
pub(in crate::strategy) fn billing_words(b: &BillingModel) -> String {
    let running = match b.granularity {
        Granularity::PerSecond { minimum_secs } => {
            format!("running time billed per second with a {minimum_secs} s minimum per start")
        }
        Granularity::PerStartedHour => "every started hour billed in full".to_owned(),
    };
    let stopped = match b.stopped {
        StoppedBilling::DiskOnly => format!(
            "a stopped node pays only its disk ({}/GB-month)",
            b.disk_per_gb_month.0
        ),
        StoppedBilling::FullPrice => "a stopped node pays its full price".to_owned(),
    };
    let mut charges = Vec::new();
    if b.charges.disk_while_running {
        charges.push(format!(
            "the root disk ({}/GB-month) while running too",
            b.disk_per_gb_month.0
        ));
    }
    if b.charges.public_ipv4.0 != Money::ZERO {
        let when = if b.charges.ipv4_while_stopped {
            "while the node exists"
        } else {
            "while running"
        };
        charges.push(format!(
            "a public IPv4 address {}/h {when}",
            b.charges.public_ipv4.0
        ));
    }
    let charges = if charges.is_empty() {
        String::new()
    } else {
        format!("; a node also pays {}", charges.join(" and "))
    };
    format!(
        "{running}; {stopped}{charges}; snapshots {}/GB-month",
        b.snapshot_per_gb_month.0
    )
}

/// A milliseconds parameter as text.
pub(in crate::strategy) fn ms(v: Millis) -> String {
    format!("{v} ms")
}

/// `name @ $x/h` for the cost-model text.
pub(in crate::strategy) fn priced(o: Option<&Offering>, market: Market) -> String {
    match o.and_then(|o| o.price(market).map(|p| (o, p))) {
        Some((o, p)) => format!("{} at {}/h", o.instance_type, p.0),
        None => "no offering".to_owned(),
    }
}
