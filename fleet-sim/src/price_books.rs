//! Built-in price books: instance types with public list prices, the
//! provider's billing rules, boot latency per source with its spread, and
//! the spot interruption band.
//!
//! Prices are public list prices as of early 2025 and are meant as
//! realistic defaults, not quotes; amend them in the input's
//! `provider.offerings`.
//!
//! - `aws`: EC2 us-east-1, Linux on-demand. Spot prices are taken at about
//!   35 % of on-demand (typical of the c7i/m7g families); interruptions 2–10
//!   per 1000 instance-hours (the spot advisor's "<5 %/month" band, widened).
//! - `hetzner`: Hetzner Cloud, Germany, net of VAT, hourly prices in EUR
//!   converted at the fixed rate [`EUR_TO_USD`] so results do not drift
//!   with the exchange rate. Hetzner sells no spot capacity.

use fleet_core::InstanceType;
use fleet_core::billing::{BillingModel, BootLatency};
use fleet_core::money::{HourlyPrice, Money};
use fleet_core::protocol::Arch;
use fleet_core::provider::{Capabilities, Offering, SpotTerms};

/// The fixed EUR→USD rate the Hetzner book is converted at, in micro-dollars
/// per euro (1 € = $1.08).
pub const EUR_TO_USD: i64 = 1_080_000;

/// The names of the built-in price books.
pub const NAMES: [&str; 2] = ["aws", "hetzner"];

/// A provider's prices, rules and latencies.
#[derive(Debug, Clone, PartialEq)]
pub struct PriceBook {
    /// `aws` or `hetzner`.
    pub name: String,
    /// What it sells.
    pub offerings: Vec<Offering>,
    /// How it bills, with the mean boot latency per source.
    pub billing: BillingModel,
    /// Each boot takes up to this much longer than `billing.boot`
    /// (a uniform draw, per source).
    pub boot_spread: BootLatency,
    /// What it can do.
    pub capabilities: Capabilities,
    /// Spot interruptions per 1000 instance-hours, low and high.
    pub spot_interruptions_per_1000h: [f64; 2],
    /// Create calls refused for capacity, per million (0 in the books).
    pub capacity_errors_per_million: u64,
}

/// The built-in book `name`, if there is one.
pub fn preset(name: &str) -> Option<PriceBook> {
    match name {
        "aws" => Some(aws()),
        "hetzner" => Some(hetzner()),
        _ => None,
    }
}

fn usd(micros_per_hour: i64) -> HourlyPrice {
    HourlyPrice::from_micros(micros_per_hour)
}

fn eur(micro_euros_per_hour: i64) -> HourlyPrice {
    // Rounded up to the micro-dollar, as a provider would bill it.
    HourlyPrice(
        Money::from_micros(micro_euros_per_hour)
            .mul_div(
                EUR_TO_USD as u64,
                1_000_000,
                fleet_core::money::Rounding::Up,
            )
            .unwrap_or(Money::MAX),
    )
}

#[expect(
    clippy::too_many_arguments,
    reason = "a table row; named fields would only repeat the column names"
)]
fn offering(
    t: &str,
    cpus: u32,
    memory_gb: u64,
    arch: Arch,
    disk_gb: u32,
    on_demand: HourlyPrice,
    spot: Option<HourlyPrice>,
    interruptions_per_1000h: u32,
) -> Option<Offering> {
    // The names are literals; a bad one would drop its row, which the
    // tests catch.
    Some(Offering {
        instance_type: InstanceType::new(t).ok()?,
        cpus,
        memory_mb: memory_gb * 1024,
        arch,
        disk_gb,
        on_demand,
        spot: spot.map(|price| SpotTerms {
            price,
            interruptions_per_1000h,
        }),
    })
}

/// EC2, us-east-1.
fn aws() -> PriceBook {
    let x86 = Arch::X86_64;
    let arm = Arch::Aarch64;
    let rows = [
        ("c7i.large", 2, 4, x86, 89_250, 31_200),
        ("c7i.xlarge", 4, 8, x86, 178_500, 62_500),
        ("c7i.2xlarge", 8, 16, x86, 357_000, 125_000),
        ("m7g.large", 2, 8, arm, 81_600, 28_600),
        ("m7g.xlarge", 4, 16, arm, 163_200, 57_100),
    ];
    PriceBook {
        name: "aws".to_owned(),
        offerings: rows
            .iter()
            .filter_map(|&(t, cpus, gb, arch, od, spot)| {
                offering(t, cpus, gb, arch, 50, usd(od), Some(usd(spot)), 6)
            })
            .collect(),
        billing: BillingModel::ec2(),
        boot_spread: BootLatency {
            image_ms: 60_000,
            snapshot_ms: 15_000,
            stopped_ms: 10_000,
            resize_ms: 0,
        },
        capabilities: Capabilities::all(),
        spot_interruptions_per_1000h: [2.0, 10.0],
        capacity_errors_per_million: 0,
    }
}

/// Hetzner Cloud, Germany.
fn hetzner() -> PriceBook {
    let x86 = Arch::X86_64;
    // (type, vCPUs, GB RAM, disk GB, micro-euros per hour)
    let rows = [
        ("cx22", 2, 4, 40, 6_000),
        ("cx32", 4, 8, 80, 11_000),
        ("cpx31", 4, 8, 160, 23_200),
        ("ccx23", 4, 16, 160, 38_400),
    ];
    PriceBook {
        name: "hetzner".to_owned(),
        offerings: rows
            .iter()
            .filter_map(|&(t, cpus, gb, disk, eur_h)| {
                offering(t, cpus, gb, x86, disk, eur(eur_h), None, 0)
            })
            .collect(),
        billing: BillingModel::hetzner(),
        boot_spread: BootLatency {
            image_ms: 30_000,
            snapshot_ms: 10_000,
            stopped_ms: 5_000,
            resize_ms: 0,
        },
        capabilities: Capabilities {
            stop_start: true,
            resize: true,
            resize_requires_stop: true,
            snapshot: true,
            spot: false,
            max_instances: None,
        },
        spot_interruptions_per_1000h: [0.0, 0.0],
        capacity_errors_per_million: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn books_are_well_formed() {
        for name in NAMES {
            let b = preset(name);
            assert!(b.is_some(), "{name}");
            let Some(b) = b else { continue };
            assert_eq!(b.offerings.len(), if name == "aws" { 5 } else { 4 });
            assert!(b.offerings.iter().all(|o| o.on_demand.0 > Money::ZERO));
            for o in &b.offerings {
                if let Some(s) = &o.spot {
                    assert!(s.price.0 < o.on_demand.0, "{}", o.instance_type);
                }
            }
        }
        assert!(preset("azure").is_none());
        // €0.0110/h at 1.08 is $0.01188/h exactly.
        assert_eq!(eur(11_000), HourlyPrice::from_micros(11_880));
    }
}
