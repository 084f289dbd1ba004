//! [`ColdImage`]: boot a fresh node from the provider image per demand.

use serde::{Deserialize, Serialize};

use super::kit::{self, Elastic};
use super::{IdleCost, Param, Plan, PoolView, SourceKind, Strategy, StrategyInfo};
use crate::billing::BootPath;
use crate::ids::Millis;
use crate::money::Money;
use crate::provider::Market;

/// Boots fresh on-demand nodes from the base image when claims wait and
/// deletes them after `idle_timeout_ms` without claims: the cheapest idle
/// pool, the longest boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ColdImage {
    /// How long a node may sit idle before it is deleted (default 60 s:
    /// about the EC2 minimum charge, long enough to catch a follow-up claim).
    pub idle_timeout_ms: Millis,
}

impl Default for ColdImage {
    fn default() -> ColdImage {
        ColdImage {
            idle_timeout_ms: 60_000,
        }
    }
}

impl Strategy for ColdImage {
    fn describe(&self, pool: &PoolView<'_>) -> StrategyInfo {
        let b = pool.baseline();
        let floor = pool.spec.min_nodes.min(pool.spec.max_nodes);
        let per_hour = b.map_or(Money::ZERO, |b| {
            kit::hour_of(pool.billing, b.on_demand, b.disk_gb).times(u64::from(floor))
        });
        StrategyInfo {
            name: "cold_image",
            summary: "boot fresh from the provider image per demand; cheapest idle, longest boot",
            parameters: vec![Param {
                name: "idle_timeout_ms",
                value: kit::ms(self.idle_timeout_ms),
                meaning: "an idle node is deleted after this long without claims",
            }],
            boot_path: BootPath::Image,
            idle_cost: IdleCost::steady(per_hour),
            cost_model: format!(
                "on-demand nodes ({}) bill from request to delete, a boot from image \
                 takes {} ms; {}. Idle nodes are deleted after {} ms, so a pool with no \
                 claims keeps min_nodes = {floor} node(s): {per_hour}/h.",
                kit::priced(b, Market::OnDemand),
                pool.billing.boot.image_ms,
                kit::billing_words(pool.billing),
                self.idle_timeout_ms,
            ),
        }
    }

    fn plan(&self, pool: &PoolView<'_>, now: Millis) -> Plan {
        kit::plan_elastic(
            pool,
            now,
            Elastic {
                source: SourceKind::Image,
                market: Market::OnDemand,
                on_demand_fallback: true,
                idle_timeout_ms: self.idle_timeout_ms,
                snapshot_refresh_ms: None,
            },
        )
    }
}
