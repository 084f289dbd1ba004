//! Integer money.
//!
//! All amounts are whole micro-dollars (`1 $ = 1_000_000`). Every division
//! says how it rounds; nothing in fleet touches a float on the way to a bill.

use std::fmt;
use std::iter::Sum;
use std::ops::{Add, AddAssign, Sub};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ids::Millis;

/// Micro-dollars in one dollar.
pub const MICROS_PER_DOLLAR: i64 = 1_000_000;
/// Milliseconds in one hour.
pub const MS_PER_HOUR: u64 = 3_600_000;
/// Hours in a billing month (the 730-hour month AWS and Hetzner both use).
pub const HOURS_PER_MONTH: u64 = 730;

/// How a division that does not come out even is rounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Rounding {
    /// Towards positive infinity: what a provider bills.
    Up,
    /// Towards negative infinity.
    Down,
    /// To the nearest; halves away from zero.
    HalfUp,
}

/// An amount of money in whole micro-dollars. Arithmetic saturates rather
/// than wrapping.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(transparent)]
pub struct Money(i64);

impl Money {
    /// No money.
    pub const ZERO: Money = Money(0);
    /// The largest amount.
    pub const MAX: Money = Money(i64::MAX);

    /// `micros` micro-dollars.
    pub const fn from_micros(micros: i64) -> Money {
        Money(micros)
    }

    /// Whole cents.
    pub const fn from_cents(cents: i64) -> Money {
        Money(cents.saturating_mul(10_000))
    }

    /// The amount in micro-dollars.
    pub const fn micros(self) -> i64 {
        self.0
    }

    /// The amount in dollars, for display and charts only.
    pub fn as_dollars_f64(self) -> f64 {
        self.0 as f64 / MICROS_PER_DOLLAR as f64
    }

    /// `self × num ÷ den`, rounded as asked; `None` when `den` is zero or the
    /// result does not fit.
    pub fn mul_div(self, num: u64, den: u64, rounding: Rounding) -> Option<Money> {
        if den == 0 {
            return None;
        }
        let product = i128::from(self.0).checked_mul(i128::from(num))?;
        let den = i128::from(den);
        let q = div_round(product, den, rounding);
        i64::try_from(q).ok().map(Money)
    }

    /// Saturating sum.
    pub fn saturating_add(self, other: Money) -> Money {
        Money(self.0.saturating_add(other.0))
    }

    /// Saturating difference.
    pub fn saturating_sub(self, other: Money) -> Money {
        Money(self.0.saturating_sub(other.0))
    }

    /// Saturating product with a count.
    pub fn times(self, n: u64) -> Money {
        let product = i128::from(self.0) * i128::from(n);
        Money(i64::try_from(product).unwrap_or(if product < 0 { i64::MIN } else { i64::MAX }))
    }
}

fn div_round(n: i128, d: i128, rounding: Rounding) -> i128 {
    let q = n.div_euclid(d);
    let r = n.rem_euclid(d);
    if r == 0 {
        return q;
    }
    match rounding {
        Rounding::Down => q,
        Rounding::Up => q + 1,
        Rounding::HalfUp => {
            // q is the floor; r/d is the positive fraction above it.
            let twice = 2 * r;
            if twice > d || (twice == d && n >= 0) {
                q + 1
            } else {
                q
            }
        }
    }
}

impl Add for Money {
    type Output = Money;
    fn add(self, rhs: Money) -> Money {
        self.saturating_add(rhs)
    }
}

impl AddAssign for Money {
    fn add_assign(&mut self, rhs: Money) {
        *self = self.saturating_add(rhs);
    }
}

impl Sub for Money {
    type Output = Money;
    fn sub(self, rhs: Money) -> Money {
        self.saturating_sub(rhs)
    }
}

impl Sum for Money {
    fn sum<I: Iterator<Item = Money>>(iter: I) -> Money {
        iter.fold(Money::ZERO, Money::saturating_add)
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        let per = MICROS_PER_DOLLAR.unsigned_abs();
        write!(f, "{sign}${}.{:06}", abs / per, abs % per)
    }
}

impl fmt::Debug for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Why a dollar string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a dollar amount with at most 6 decimal places: {why}")]
pub struct ParseMoneyError {
    input: String,
    why: &'static str,
}

impl FromStr for Money {
    type Err = ParseMoneyError;

    /// Parses `"0.0416"`, `"12"`, `"$1.50"` exactly (no float on the way).
    fn from_str(s: &str) -> Result<Money, ParseMoneyError> {
        let err = |why| ParseMoneyError {
            input: s.chars().take(40).collect(),
            why,
        };
        let t = s.trim();
        let (neg, t) = match t.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, t),
        };
        let t = t.strip_prefix('$').unwrap_or(t);
        let (whole, frac) = t.split_once('.').unwrap_or((t, ""));
        if whole.is_empty() && frac.is_empty() {
            return Err(err("no digits"));
        }
        if frac.len() > 6 {
            return Err(err("more than 6 decimal places"));
        }
        if !whole
            .chars()
            .chain(frac.chars())
            .all(|c| c.is_ascii_digit())
        {
            return Err(err("not a number"));
        }
        let whole: i64 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| err("too large"))?
        };
        let mut frac_micros: i64 = 0;
        for (i, c) in frac.chars().enumerate() {
            let digit = i64::from(c as u8 - b'0');
            frac_micros += digit * 10_i64.pow(5 - i as u32);
        }
        let micros = whole
            .checked_mul(MICROS_PER_DOLLAR)
            .and_then(|w| w.checked_add(frac_micros))
            .ok_or_else(|| err("too large"))?;
        Ok(Money(if neg { -micros } else { micros }))
    }
}

/// A price per hour of use.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(transparent)]
pub struct HourlyPrice(pub Money);

impl HourlyPrice {
    /// A price of `micros` micro-dollars an hour.
    pub const fn from_micros(micros: i64) -> HourlyPrice {
        HourlyPrice(Money::from_micros(micros))
    }

    /// What `ms` milliseconds cost at this price, rounded up to the micro-dollar.
    pub fn for_millis(self, ms: Millis) -> Money {
        self.0
            .mul_div(ms, MS_PER_HOUR, Rounding::Up)
            .unwrap_or(Money::MAX)
    }
}

/// A price per GB-month of storage (disks, snapshots).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct GbMonthPrice(pub Money);

impl GbMonthPrice {
    /// What `gb` gigabytes stored for `ms` milliseconds cost, rounded up.
    pub fn for_millis(self, gb: u64, ms: Millis) -> Money {
        let gb_ms = u128::from(gb) * u128::from(ms);
        let per_month_ms = u128::from(HOURS_PER_MONTH) * u128::from(MS_PER_HOUR);
        let n = i128::from(self.0.micros()) * i128::try_from(gb_ms).unwrap_or(i128::MAX);
        let q = div_round(n, i128::try_from(per_month_ms).unwrap_or(1), Rounding::Up);
        Money(i64::try_from(q).unwrap_or(i64::MAX))
    }

    /// The same storage priced per hour, for `gb` gigabytes (rounded up).
    pub fn hourly(self, gb: u64) -> HourlyPrice {
        HourlyPrice(self.for_millis(gb, MS_PER_HOUR))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exact_decimal_dollars() {
        assert_eq!("0.0416".parse::<Money>(), Ok(Money::from_micros(41_600)));
        assert_eq!("$12".parse::<Money>(), Ok(Money::from_micros(12_000_000)));
        assert_eq!("-0.5".parse::<Money>(), Ok(Money::from_micros(-500_000)));
        assert!("0.0000001".parse::<Money>().is_err());
        assert!("1e3".parse::<Money>().is_err());
        assert!("".parse::<Money>().is_err());
        assert!("99999999999999999".parse::<Money>().is_err());
    }

    #[test]
    fn displays_dollars() {
        assert_eq!(Money::from_micros(1_234_567).to_string(), "$1.234567");
        assert_eq!(Money::from_micros(-5).to_string(), "-$0.000005");
    }

    #[test]
    fn rounding_is_explicit() {
        let m = Money::from_micros(10);
        assert_eq!(m.mul_div(1, 3, Rounding::Down), Some(Money::from_micros(3)));
        assert_eq!(m.mul_div(1, 3, Rounding::Up), Some(Money::from_micros(4)));
        assert_eq!(
            m.mul_div(1, 4, Rounding::HalfUp),
            Some(Money::from_micros(3))
        );
        assert_eq!(m.mul_div(1, 0, Rounding::Up), None);
        // One second of a $3.60/h machine is exactly 1000 micro-dollars.
        assert_eq!(
            HourlyPrice::from_micros(3_600_000).for_millis(1_000),
            Money::from_micros(1_000)
        );
    }
}
