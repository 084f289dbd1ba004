//! Properties of the cost math: monotone, rounded up, exact at the billing
//! boundaries of each provider, and a node's charges beside its instance
//! price added as declared.
#![expect(clippy::unwrap_used, reason = "tests")]

use fleet_core::billing::{BillingModel, Granularity, NodeCharges};
use fleet_core::money::{GbMonthPrice, HourlyPrice, MS_PER_HOUR, Money, Rounding};
use proptest::prelude::*;

fn models() -> impl Strategy<Value = BillingModel> {
    prop_oneof![Just(BillingModel::ec2()), Just(BillingModel::hetzner())]
}

/// `b` with no charges beside the instance price: the rounding rules alone.
fn bare(b: BillingModel) -> BillingModel {
    BillingModel {
        charges: NodeCharges::default(),
        ..b
    }
}

/// A root disk size.
const DISK: u64 = 30;

proptest! {
    #[test]
    fn running_cost_is_monotone_in_time(b in models(), price in 0i64..10_000_000, a in 0u64..10 * MS_PER_HOUR, d in 0u64..MS_PER_HOUR) {
        let p = HourlyPrice::from_micros(price);
        prop_assert!(b.running_cost(p, DISK, a) <= b.running_cost(p, DISK, a + d));
    }

    #[test]
    fn running_cost_is_monotone_in_price(b in models(), price in 0i64..10_000_000, extra in 0i64..1_000_000, ms in 0u64..10 * MS_PER_HOUR) {
        prop_assert!(
            b.running_cost(HourlyPrice::from_micros(price), DISK, ms)
                <= b.running_cost(HourlyPrice::from_micros(price + extra), DISK, ms)
        );
    }

    #[test]
    fn billing_never_undercharges_the_exact_time(b in models(), price in 0i64..10_000_000, ms in 0u64..10 * MS_PER_HOUR) {
        let p = HourlyPrice::from_micros(price);
        prop_assert!(b.billed_millis(ms) >= ms);
        // The exact pro-rata amount, rounded down, never exceeds the bill.
        let exact = Money::from_micros(price).mul_div(ms, MS_PER_HOUR, Rounding::Down).unwrap_or(Money::MAX);
        prop_assert!(b.running_cost(p, DISK, ms) >= exact);
    }

    #[test]
    fn per_second_boundaries(price in 1i64..10_000_000, secs in 60u64..100_000) {
        let b = bare(BillingModel::ec2());
        let p = HourlyPrice::from_micros(price);
        // Whole seconds past the minimum bill exactly; one ms more bills a second more.
        prop_assert_eq!(b.billed_millis(secs * 1_000), secs * 1_000);
        prop_assert_eq!(b.billed_millis(secs * 1_000 + 1), (secs + 1) * 1_000);
        // Anything under the minimum bills the minimum.
        prop_assert_eq!(b.running_cost(p, DISK, 1), b.running_cost(p, DISK, 60_000));
    }

    #[test]
    fn per_started_hour_boundaries(price in 1i64..10_000_000, hours in 1u64..1_000) {
        let b = bare(BillingModel::hetzner());
        let p = HourlyPrice::from_micros(price);
        prop_assert_eq!(b.running_cost(p, DISK, hours * MS_PER_HOUR), Money::from_micros(price).times(hours));
        prop_assert_eq!(b.running_cost(p, DISK, hours * MS_PER_HOUR + 1), Money::from_micros(price).times(hours + 1));
        prop_assert!(matches!(b.granularity, Granularity::PerStartedHour));
    }

    #[test]
    fn per_hour_never_cheaper_than_per_second_for_the_same_run(price in 0i64..10_000_000, ms in 60_000u64..48 * MS_PER_HOUR) {
        let p = HourlyPrice::from_micros(price);
        prop_assert!(bare(BillingModel::hetzner()).running_cost(p, DISK, ms) >= bare(BillingModel::ec2()).running_cost(p, DISK, ms));
    }

    #[test]
    fn rounding_brackets_the_true_value(m in -1_000_000_000i64..1_000_000_000, num in 0u64..1_000_000, den in 1u64..1_000_000) {
        let m = Money::from_micros(m);
        let down = m.mul_div(num, den, Rounding::Down).unwrap();
        let up = m.mul_div(num, den, Rounding::Up).unwrap();
        let half = m.mul_div(num, den, Rounding::HalfUp).unwrap();
        prop_assert!(down <= half && half <= up);
        prop_assert!(up.micros() - down.micros() <= 1);
    }

    #[test]
    fn storage_is_additive_within_a_rounding(gb in 0u64..2_000, a in 0u64..1_000 * MS_PER_HOUR, b in 0u64..1_000 * MS_PER_HOUR) {
        let p = GbMonthPrice(Money::from_micros(50_000));
        let whole = p.for_millis(gb, a + b).micros();
        let parts = p.for_millis(gb, a).micros() + p.for_millis(gb, b).micros();
        prop_assert!(whole <= parts && parts <= whole + 1);
    }

    #[test]
    fn stopped_costs_follow_the_model(price in 0i64..10_000_000, disk in 0u64..500, ms in 0u64..100 * MS_PER_HOUR) {
        let p = HourlyPrice::from_micros(price);
        prop_assert_eq!(bare(BillingModel::hetzner()).stopped_cost(p, disk, ms), p.for_millis(ms));
        // EC2 bills the disk: its hourly rate, rounded up to the
        // micro-dollar, prorated — never below the exact GB-month share and
        // at most a micro-dollar per started hour (plus the last rounding) above.
        let ec2 = BillingModel::ec2();
        let billed = ec2.stopped_cost(p, disk, ms).micros();
        prop_assert_eq!(billed, bare(BillingModel::ec2()).stopped_cost(p, disk, ms).micros(), "EC2 releases the address at stop");
        let exact = ec2.disk_per_gb_month.for_millis(disk, ms).micros();
        prop_assert_eq!(billed, ec2.disk_per_gb_month.hourly(disk).for_millis(ms).micros());
        prop_assert!(exact <= billed, "{exact} > {billed}");
        prop_assert!(billed <= exact + ms.div_ceil(MS_PER_HOUR) as i64 + 1, "{exact} vs {billed}");
    }

    #[test]
    fn a_nodes_charges_add_to_its_instance_price_over_the_billed_time(b in models(), price in 0i64..10_000_000, disk in 0u64..500, ms in 0u64..100 * MS_PER_HOUR) {
        let p = HourlyPrice::from_micros(price);
        let with = b.running_cost(p, disk, ms).micros();
        let without = bare(b.clone()).running_cost(p, disk, ms).micros();
        let billed = b.billed_millis(ms);
        let disk_part = if b.charges.disk_while_running {
            b.disk_per_gb_month.hourly(disk).for_millis(billed).micros()
        } else {
            0
        };
        let extra = disk_part + b.charges.public_ipv4.for_millis(billed).micros();
        // One rate over the billed time, rounded once: within a micro-dollar
        // per part of pricing each part on its own.
        prop_assert!(with >= without && with <= without + extra, "{with} vs {without} + {extra}");
        prop_assert!(with + 2 >= without + extra, "{with} vs {without} + {extra}");
        // A stopped node pays its address only where it keeps it.
        let stopped = b.stopped_cost(p, disk, ms).micros();
        let stopped_bare = bare(b.clone()).stopped_cost(p, disk, ms).micros();
        if b.charges.ipv4_while_stopped {
            prop_assert!(stopped >= stopped_bare + b.charges.public_ipv4.for_millis(ms).micros() - 1);
        } else {
            prop_assert_eq!(stopped, stopped_bare);
        }
    }
}
