//! How providers bill, as data, and the cost math over it.
//!
//! A [`BillingModel`] is what a provider declares about itself: how running
//! time is rounded (EC2: per second with a 60 s minimum per start; Hetzner:
//! per started hour), what a stopped node costs (EC2: its disk; Hetzner: the
//! full price), what snapshots cost to keep, how long each boot path takes
//! and how long the calls that end a billed interval take (a stop is billed
//! running until it completes). Strategies, the controller's cost ledger and
//! the simulator all price through these functions, so they agree to the
//! micro-dollar.
//!
//! A node's bill is more than its instance price: [`NodeCharges`] adds what
//! a real bill lists beside it (EC2's root EBS volume, billed while the
//! volume exists; a public IPv4 address), so that strategies compare what
//! the provider will actually charge.

use serde::{Deserialize, Serialize};

use crate::ids::Millis;
use crate::money::{GbMonthPrice, HourlyPrice, MS_PER_HOUR, Money};

/// How running time is rounded before it is priced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Granularity {
    /// Billed per second, each start billed for at least `minimum_secs`.
    PerSecond {
        /// The minimum billed per start (EC2: 60).
        minimum_secs: u32,
    },
    /// Every started hour billed in full.
    PerStartedHour,
}

/// What a node costs while stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum StoppedBilling {
    /// Only its disk is billed (EC2 EBS).
    DiskOnly,
    /// The full running price is billed (Hetzner keeps the server reserved).
    FullPrice,
}

// The cost report counts boots per path and travels on the HTTP API, so
// the type is defined in `protocol`; billing and strategies find it here.
pub use crate::protocol::BootPath;

/// Time to a ready node per boot path, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootLatency {
    /// From the base image.
    pub image_ms: Millis,
    /// From a snapshot.
    pub snapshot_ms: Millis,
    /// Starting a stopped node.
    pub stopped_ms: Millis,
    /// Resizing a node (it is unavailable for this long).
    pub resize_ms: Millis,
}

impl BootLatency {
    /// The latency of `path`.
    pub fn of(&self, path: BootPath) -> Millis {
        match path {
            BootPath::Image => self.image_ms,
            BootPath::Snapshot => self.snapshot_ms,
            BootPath::Stopped => self.stopped_ms,
            BootPath::Resize => self.resize_ms,
        }
    }
}

/// How long the provider's calls that boot nothing take, in milliseconds.
///
/// They matter to the bill: a node is billed running until its stop or
/// delete completes, and a snapshot is billed from when it exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CallLatency {
    /// A stop, start, delete or list call.
    pub api_ms: Millis,
    /// Taking a snapshot of a node until it can be booted from.
    pub snapshot_ms: Millis,
}

impl Default for CallLatency {
    /// 2 s per API call, 60 s per snapshot.
    fn default() -> CallLatency {
        CallLatency {
            api_ms: 2_000,
            snapshot_ms: 60_000,
        }
    }
}

/// What a node is charged beside its instance price.
///
/// The defaults charge nothing; [`BillingModel::ec2`] and
/// [`BillingModel::hetzner`] set the providers' published prices, and a
/// provider's config adjusts them (nodes without a public IPv4 address pay
/// none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeCharges {
    /// The root disk is billed at [`BillingModel::disk_per_gb_month`] while
    /// the node runs too, not only while stopped (EC2: the root disk is an
    /// EBS volume, billed as long as it exists). Where the instance price
    /// includes the disk (Hetzner), false.
    pub disk_while_running: bool,
    /// A public IPv4 address, per hour (EC2: $0.005 since 2024-02-01;
    /// Hetzner: a primary IPv4). Zero when nodes get none.
    pub public_ipv4: HourlyPrice,
    /// Whether the address is billed while the node is stopped too (a
    /// Hetzner primary IP stays with its server; EC2 releases an
    /// auto-assigned address at stop).
    pub ipv4_while_stopped: bool,
}

/// EC2's public IPv4 charge: $0.005 per address-hour, from 2024-02-01
/// (aws.amazon.com/vpc/pricing, "Public IPv4 address").
pub const EC2_PUBLIC_IPV4_HOURLY: HourlyPrice = HourlyPrice(Money::from_micros(5_000));

/// Hetzner's primary IPv4: €0.0008/h net (capped at €0.50 a month), as
/// published in 2024 (hetzner.com/cloud, "Primary IPv4"), at the fleet's
/// default $1.08 per euro.
pub const HETZNER_PRIMARY_IPV4_HOURLY: HourlyPrice = HourlyPrice(Money::from_micros(864));

/// A provider's billing rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BillingModel {
    /// How running time is rounded.
    pub granularity: Granularity,
    /// What a stopped node costs.
    pub stopped: StoppedBilling,
    /// Disk price (what a stopped [`StoppedBilling::DiskOnly`] node costs).
    pub disk_per_gb_month: GbMonthPrice,
    /// Snapshot storage price.
    pub snapshot_per_gb_month: GbMonthPrice,
    /// Boot latency per path.
    pub boot: BootLatency,
    /// Latency of the calls that boot nothing.
    #[serde(default)]
    pub calls: CallLatency,
    /// What a node is charged beside its instance price.
    #[serde(default)]
    pub charges: NodeCharges,
}

impl BillingModel {
    /// EC2's public rules: per second with a 60 s minimum, the root EBS
    /// volume (gp3 $0.08/GB-month) billed while the instance runs and while
    /// it is stopped (then it is all a stopped instance pays), a public
    /// IPv4 address $0.005/h while running, snapshots $0.05/GB-month.
    pub fn ec2() -> BillingModel {
        BillingModel {
            granularity: Granularity::PerSecond { minimum_secs: 60 },
            stopped: StoppedBilling::DiskOnly,
            disk_per_gb_month: GbMonthPrice(Money::from_micros(80_000)),
            snapshot_per_gb_month: GbMonthPrice(Money::from_micros(50_000)),
            boot: BootLatency {
                image_ms: 240_000,
                snapshot_ms: 45_000,
                stopped_ms: 30_000,
                resize_ms: 60_000,
            },
            calls: CallLatency::default(),
            charges: NodeCharges {
                disk_while_running: true,
                public_ipv4: EC2_PUBLIC_IPV4_HOURLY,
                ipv4_while_stopped: false,
            },
        }
    }

    /// Hetzner Cloud's public rules: every started hour billed, the disk in
    /// the server's price, a stopped server billed in full, a primary IPv4
    /// address billed while the server exists, snapshots €0.0119/GB-month
    /// (taken as $0.013).
    pub fn hetzner() -> BillingModel {
        BillingModel {
            granularity: Granularity::PerStartedHour,
            stopped: StoppedBilling::FullPrice,
            disk_per_gb_month: GbMonthPrice(Money::ZERO),
            snapshot_per_gb_month: GbMonthPrice(Money::from_micros(13_000)),
            boot: BootLatency {
                image_ms: 120_000,
                snapshot_ms: 40_000,
                stopped_ms: 20_000,
                resize_ms: 90_000,
            },
            calls: CallLatency::default(),
            charges: NodeCharges {
                disk_while_running: false,
                public_ipv4: HETZNER_PRIMARY_IPV4_HOURLY,
                ipv4_while_stopped: true,
            },
        }
    }

    /// The same rules with a public IPv4 address at `hourly` (zero: nodes
    /// get none), as a provider's config decides.
    pub fn with_public_ipv4(self, hourly: HourlyPrice) -> BillingModel {
        BillingModel {
            charges: NodeCharges {
                public_ipv4: hourly,
                ..self.charges
            },
            ..self
        }
    }

    /// The running time billed for one start-to-stop interval of `run_ms`.
    pub fn billed_millis(&self, run_ms: Millis) -> Millis {
        match self.granularity {
            Granularity::PerSecond { minimum_secs } => {
                let secs = run_ms.div_ceil(1_000).max(u64::from(minimum_secs));
                secs.saturating_mul(1_000)
            }
            Granularity::PerStartedHour => {
                // A zero-length run still started an hour.
                run_ms
                    .div_ceil(MS_PER_HOUR)
                    .max(1)
                    .saturating_mul(MS_PER_HOUR)
            }
        }
    }

    /// What a running node with instance price `price` and a root disk of
    /// `disk_gb` costs per hour: the price and the [`NodeCharges`] that
    /// apply while running.
    pub fn running_hourly(&self, price: HourlyPrice, disk_gb: u64) -> HourlyPrice {
        let disk = if self.charges.disk_while_running {
            self.disk_per_gb_month.hourly(disk_gb).0
        } else {
            Money::ZERO
        };
        HourlyPrice(price.0 + disk + self.charges.public_ipv4.0)
    }

    /// The bill for one start-to-stop interval of `run_ms` of a node with
    /// instance price `price` and a root disk of `disk_gb`: its
    /// [`running_hourly`](Self::running_hourly) rate over the billed time
    /// (the disk and address are rounded like the instance: EBS, too, is
    /// billed per second with a 60 s minimum).
    pub fn running_cost(&self, price: HourlyPrice, disk_gb: u64, run_ms: Millis) -> Money {
        self.running_hourly(price, disk_gb)
            .for_millis(self.billed_millis(run_ms))
    }

    /// What `ms` of time stopped costs for a node of `price` with a disk of
    /// `disk_gb`: [`stopped_hourly`](Self::stopped_hourly) prorated, so
    /// that a stopped node costs exactly the hourly rate strategies declare.
    pub fn stopped_cost(&self, price: HourlyPrice, disk_gb: u64, ms: Millis) -> Money {
        self.stopped_hourly(price, disk_gb).for_millis(ms)
    }

    /// What a stopped node costs per hour: its disk (or its full price,
    /// where stopping saves nothing), and its address where that stays.
    pub fn stopped_hourly(&self, price: HourlyPrice, disk_gb: u64) -> HourlyPrice {
        let node = match self.stopped {
            StoppedBilling::DiskOnly => self.disk_per_gb_month.hourly(disk_gb).0,
            StoppedBilling::FullPrice => price.0,
        };
        let ipv4 = if self.charges.ipv4_while_stopped {
            self.charges.public_ipv4.0
        } else {
            Money::ZERO
        };
        HourlyPrice(node + ipv4)
    }

    /// Whether keeping a node stopped costs less than keeping it running.
    pub fn stop_saves_money(&self) -> bool {
        self.stopped == StoppedBilling::DiskOnly
    }

    /// What keeping a snapshot of `gb` for `ms` costs: its hourly rate
    /// (rounded up to the micro-dollar) prorated, like stopped disks.
    pub fn snapshot_cost(&self, gb: u64, ms: Millis) -> Money {
        self.snapshot_per_gb_month.hourly(gb).for_millis(ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ec2_bills_a_minute_minimum_then_per_second() {
        let b = BillingModel {
            charges: NodeCharges::default(),
            ..BillingModel::ec2()
        };
        let p = HourlyPrice::from_micros(3_600_000); // 1000 µ$/s
        assert_eq!(b.running_cost(p, 30, 1), Money::from_micros(60_000));
        assert_eq!(b.running_cost(p, 30, 60_000), Money::from_micros(60_000));
        assert_eq!(b.running_cost(p, 30, 60_001), Money::from_micros(61_000));
    }

    #[test]
    fn an_ec2_node_pays_its_volume_always_and_its_address_while_running() {
        let b = BillingModel::ec2();
        let p = HourlyPrice::from_micros(178_500); // c7i.xlarge
        // 30 GB gp3: $2.40 a 730-hour month, 3 288 µ$/h rounded up.
        let disk = 3_288;
        assert_eq!(b.running_hourly(p, 30).0.micros(), 178_500 + disk + 5_000);
        assert_eq!(
            b.running_cost(p, 30, MS_PER_HOUR).micros(),
            178_500 + disk + 5_000
        );
        assert_eq!(b.stopped_hourly(p, 30).0.micros(), disk);
        let private = b.with_public_ipv4(HourlyPrice(Money::ZERO));
        assert_eq!(private.running_hourly(p, 30).0.micros(), 178_500 + disk);
    }

    #[test]
    fn hetzner_bills_started_hours_and_stopped_in_full() {
        let b = BillingModel {
            charges: NodeCharges::default(),
            ..BillingModel::hetzner()
        };
        let p = HourlyPrice::from_micros(10_000);
        assert_eq!(b.running_cost(p, 40, 1), Money::from_micros(10_000));
        assert_eq!(
            b.running_cost(p, 40, MS_PER_HOUR),
            Money::from_micros(10_000)
        );
        assert_eq!(
            b.running_cost(p, 40, MS_PER_HOUR + 1),
            Money::from_micros(20_000)
        );
        assert_eq!(
            b.stopped_cost(p, 40, MS_PER_HOUR),
            Money::from_micros(10_000)
        );
        // The primary IPv4 is billed running and stopped; the disk never
        // on its own.
        let b = BillingModel::hetzner();
        assert_eq!(b.running_hourly(p, 40).0.micros(), 10_864);
        assert_eq!(b.stopped_hourly(p, 40).0.micros(), 10_864);
        assert!(!b.stop_saves_money());
        assert!(BillingModel::ec2().stop_saves_money());
    }
}
