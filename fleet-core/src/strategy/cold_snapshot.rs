//! [`ColdSnapshot`]: like [`ColdImage`](super::ColdImage), booting from a
//! pre-baked snapshot.

use serde::{Deserialize, Serialize};

use super::kit::{self, Elastic};
use super::{Param, Plan, PoolView, Strategy, StrategyInfo};
use crate::billing::BootPath;
use crate::ids::Millis;
use crate::money::Money;
use crate::provider::Market;

/// Boots fresh on-demand nodes from the pool's snapshot (5–7× faster than
/// the image) and deletes them after `idle_timeout_ms` idle.
///
/// When the provider can snapshot and there is no snapshot yet, or it is
/// older than `snapshot_refresh_ms`, the plan snapshots one idle ready node
/// (which is then kept until the snapshot is done and deleted by the idle
/// rule afterwards); until a snapshot exists nodes boot from the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ColdSnapshot {
    /// How long a node may sit idle before it is deleted (default 60 s).
    pub idle_timeout_ms: Millis,
    /// Re-take the snapshot when it is older than this (default 24 h, so
    /// nodes boot with yesterday's caches and packages at worst).
    pub snapshot_refresh_ms: Millis,
}

impl Default for ColdSnapshot {
    fn default() -> ColdSnapshot {
        ColdSnapshot {
            idle_timeout_ms: 60_000,
            snapshot_refresh_ms: 24 * 3_600_000,
        }
    }
}

impl Strategy for ColdSnapshot {
    fn describe(&self, pool: &PoolView<'_>) -> StrategyInfo {
        let b = pool.baseline();
        let floor = pool.spec.min_nodes.min(pool.spec.max_nodes);
        let nodes = b.map_or(Money::ZERO, |b| {
            kit::hour_of(pool.billing, b.on_demand, b.disk_gb).times(u64::from(floor))
        });
        // With nodes kept by min_nodes a snapshot is taken of one of them
        // even if no claim ever arrives; without, only an existing one is kept.
        let storage = kit::snapshot_hourly(pool, floor > 0);
        let idle_cost = kit::idle_with_snapshot(pool, nodes, storage);
        let source = kit::preferred_source(pool);
        let snapshot_words = match pool.snapshot {
            Some(s) if pool.capabilities.snapshot => {
                format!(
                    "boots from snapshot {} ({} GB) in {} ms",
                    s.id, s.size_gb, pool.billing.boot.snapshot_ms
                )
            }
            _ if pool.capabilities.snapshot => format!(
                "no snapshot yet: boots from the image ({} ms) until one idle node is snapshotted",
                pool.billing.boot.image_ms
            ),
            _ => format!(
                "the provider cannot snapshot: boots from the image ({} ms), like cold_image",
                pool.billing.boot.image_ms
            ),
        };
        StrategyInfo {
            name: "cold_snapshot",
            summary: "boot fresh from a pre-baked snapshot per demand; 5-7x faster boot than the image",
            parameters: vec![
                Param {
                    name: "idle_timeout_ms",
                    value: kit::ms(self.idle_timeout_ms),
                    meaning: "an idle node is deleted after this long without claims",
                },
                Param {
                    name: "snapshot_refresh_ms",
                    value: kit::ms(self.snapshot_refresh_ms),
                    meaning: "an idle node is snapshotted again when the snapshot is older than this",
                },
            ],
            boot_path: match source {
                super::SourceKind::Snapshot => BootPath::Snapshot,
                _ => BootPath::Image,
            },
            idle_cost,
            cost_model: format!(
                "on-demand nodes ({}) bill from request to delete; {snapshot_words}; {}. \
                 Snapshot storage costs {storage}/h. Idle nodes are deleted after {} ms, so a \
                 pool with no claims keeps min_nodes = {floor} node(s) ({nodes}/h) plus the \
                 snapshot: {}.",
                kit::priced(b, Market::OnDemand),
                kit::billing_words(pool.billing),
                self.idle_timeout_ms,
                kit::idle_words(&idle_cost),
            ),
        }
    }

    fn plan(&self, pool: &PoolView<'_>, now: Millis) -> Plan {
        kit::plan_elastic(
            pool,
            now,
            Elastic {
                source: kit::preferred_source(pool),
                market: Market::OnDemand,
                on_demand_fallback: true,
                idle_timeout_ms: self.idle_timeout_ms,
                snapshot_refresh_ms: Some(self.snapshot_refresh_ms),
            },
        )
    }
}
