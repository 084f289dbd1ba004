//! Properties of the cost math: monotone, rounded up, exact at the billing
//! boundaries of each provider.
#![expect(clippy::unwrap_used, reason = "tests")]

use fleet_core::billing::{BillingModel, Granularity};
use fleet_core::money::{GbMonthPrice, HourlyPrice, MS_PER_HOUR, Money, Rounding};
use proptest::prelude::*;

fn models() -> impl Strategy<Value = BillingModel> {
    prop_oneof![Just(BillingModel::ec2()), Just(BillingModel::hetzner())]
}

proptest! {
    #[test]
    fn running_cost_is_monotone_in_time(b in models(), price in 0i64..10_000_000, a in 0u64..10 * MS_PER_HOUR, d in 0u64..MS_PER_HOUR) {
        let p = HourlyPrice::from_micros(price);
        prop_assert!(b.running_cost(p, a) <= b.running_cost(p, a + d));
    }

    #[test]
    fn running_cost_is_monotone_in_price(b in models(), price in 0i64..10_000_000, extra in 0i64..1_000_000, ms in 0u64..10 * MS_PER_HOUR) {
        prop_assert!(
            b.running_cost(HourlyPrice::from_micros(price), ms)
                <= b.running_cost(HourlyPrice::from_micros(price + extra), ms)
        );
    }

    #[test]
    fn billing_never_undercharges_the_exact_time(b in models(), price in 0i64..10_000_000, ms in 0u64..10 * MS_PER_HOUR) {
        let p = HourlyPrice::from_micros(price);
        prop_assert!(b.billed_millis(ms) >= ms);
        // The exact pro-rata amount, rounded down, never exceeds the bill.
        let exact = Money::from_micros(price).mul_div(ms, MS_PER_HOUR, Rounding::Down).unwrap_or(Money::MAX);
        prop_assert!(b.running_cost(p, ms) >= exact);
    }

    #[test]
    fn per_second_boundaries(price in 1i64..10_000_000, secs in 60u64..100_000) {
        let b = BillingModel::ec2();
        let p = HourlyPrice::from_micros(price);
        // Whole seconds past the minimum bill exactly; one ms more bills a second more.
        prop_assert_eq!(b.billed_millis(secs * 1_000), secs * 1_000);
        prop_assert_eq!(b.billed_millis(secs * 1_000 + 1), (secs + 1) * 1_000);
        // Anything under the minimum bills the minimum.
        prop_assert_eq!(b.running_cost(p, 1), b.running_cost(p, 60_000));
    }

    #[test]
    fn per_started_hour_boundaries(price in 1i64..10_000_000, hours in 1u64..1_000) {
        let b = BillingModel::hetzner();
        let p = HourlyPrice::from_micros(price);
        prop_assert_eq!(b.running_cost(p, hours * MS_PER_HOUR), Money::from_micros(price).times(hours));
        prop_assert_eq!(b.running_cost(p, hours * MS_PER_HOUR + 1), Money::from_micros(price).times(hours + 1));
        prop_assert!(matches!(b.granularity, Granularity::PerStartedHour));
    }

    #[test]
    fn per_hour_never_cheaper_than_per_second_for_the_same_run(price in 0i64..10_000_000, ms in 60_000u64..48 * MS_PER_HOUR) {
        let p = HourlyPrice::from_micros(price);
        prop_assert!(BillingModel::hetzner().running_cost(p, ms) >= BillingModel::ec2().running_cost(p, ms));
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
        prop_assert_eq!(BillingModel::hetzner().stopped_cost(p, disk, ms), p.for_millis(ms));
        // EC2 bills the disk: its hourly rate, rounded up to the
        // micro-dollar, prorated — never below the exact GB-month share and
        // at most a micro-dollar per started hour (plus the last rounding) above.
        let ec2 = BillingModel::ec2();
        let billed = ec2.stopped_cost(p, disk, ms).micros();
        let exact = ec2.disk_per_gb_month.for_millis(disk, ms).micros();
        prop_assert_eq!(billed, ec2.disk_per_gb_month.hourly(disk).for_millis(ms).micros());
        prop_assert!(exact <= billed, "{exact} > {billed}");
        prop_assert!(billed <= exact + ms.div_ceil(MS_PER_HOUR) as i64 + 1, "{exact} vs {billed}");
    }
}
