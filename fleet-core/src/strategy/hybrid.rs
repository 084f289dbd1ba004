//! [`Hybrid`]: an always-on baseline node plus snapshot-booted overflow.

use serde::{Deserialize, Serialize};

use super::kit::{self, Draft};
use super::{Param, Plan, PoolView, Reason, SourceKind, Strategy, StrategyInfo};
use crate::billing::BootPath;
use crate::ids::{InstanceType, Millis};
use crate::money::Money;
use crate::protocol::NodeState;
use crate::provider::Market;

/// How often the overflow snapshot is refreshed from an idle node.
const SNAPSHOT_REFRESH_MS: Millis = 24 * 3_600_000;

/// Keeps `max(min_nodes, 1)` on-demand nodes of the baseline type always on
/// (never resized, never deleted for idleness) and, for claims they cannot
/// take, creates overflow nodes like [`ColdSnapshot`](super::ColdSnapshot):
/// cheapest fitting on-demand type, booted from the pool's snapshot (from the
/// image until one exists), deleted after `overflow_idle_timeout_ms` idle.
/// When the provider can snapshot and the snapshot is missing or older than
/// a day, one idle node is snapshotted, an overflow node if there is one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Hybrid {
    /// The always-on type (default: the pool's first instance type).
    pub baseline: Option<InstanceType>,
    /// How long an overflow node may sit idle before it is deleted
    /// (default 60 s).
    pub overflow_idle_timeout_ms: Millis,
}

impl Default for Hybrid {
    fn default() -> Hybrid {
        Hybrid {
            baseline: None,
            overflow_idle_timeout_ms: 60_000,
        }
    }
}

impl Hybrid {
    fn always_on(pool: &PoolView<'_>) -> u32 {
        pool.spec.min_nodes.max(1).min(pool.spec.max_nodes)
    }
}

impl Strategy for Hybrid {
    fn describe(&self, pool: &PoolView<'_>) -> StrategyInfo {
        let base = kit::offering_or_baseline(pool, self.baseline.as_ref());
        let k = Self::always_on(pool);
        let nodes = base.map_or(Money::ZERO, |b| {
            kit::hour_of(pool.billing, b.on_demand, b.disk_gb).times(u64::from(k))
        });
        // The always-on node is idle, so a snapshot gets taken even with no claims.
        let storage = if k > 0 {
            kit::snapshot_hourly(pool, true)
        } else {
            Money::ZERO
        };
        let idle_cost = kit::idle_with_snapshot(pool, nodes, storage);
        let source = kit::preferred_source(pool);
        let overflow_ms = match source {
            SourceKind::Snapshot => pool.billing.boot.snapshot_ms,
            _ => pool.billing.boot.image_ms,
        };
        StrategyInfo {
            name: "hybrid",
            summary: "always-on baseline node plus snapshot-booted overflow; low-latency baseline plus burst",
            parameters: vec![
                Param {
                    name: "baseline",
                    value: base.map_or_else(|| "none".to_owned(), |o| o.instance_type.to_string()),
                    meaning: "type of the always-on node(s)",
                },
                Param {
                    name: "overflow_idle_timeout_ms",
                    value: kit::ms(self.overflow_idle_timeout_ms),
                    meaning: "an idle overflow node is deleted after this long without claims",
                },
            ],
            boot_path: match source {
                SourceKind::Snapshot => BootPath::Snapshot,
                _ => BootPath::Image,
            },
            idle_cost,
            cost_model: format!(
                "{k} always-on on-demand node(s) ({}) serve claims with no boot; overflow nodes \
                 (cheapest fitting on-demand type) boot from the {} in {overflow_ms} ms, bill from \
                 request to delete and are deleted after {} ms idle; {}. Snapshot storage costs \
                 {storage}/h. A pool with no claims costs {}.",
                kit::priced(base, Market::OnDemand),
                if source == SourceKind::Snapshot {
                    "snapshot"
                } else {
                    "image"
                },
                self.overflow_idle_timeout_ms,
                kit::billing_words(pool.billing),
                kit::idle_words(&idle_cost),
            ),
        }
    }

    fn plan(&self, pool: &PoolView<'_>, now: Millis) -> Plan {
        let mut d = Draft::new(pool);
        d.delete_failed();
        d.delete_unstartable();
        let Some(base) = kit::offering_or_baseline(pool, self.baseline.as_ref()) else {
            return d.finish();
        };
        let k = Self::always_on(pool);
        let primary = kit::primaries(&d, k, &[&base.instance_type]);
        for (i, n) in pool.nodes.iter().enumerate() {
            if primary[i] && n.state == NodeState::Stopped && pool.capabilities.stop_start {
                d.start(i, Reason::PoolSize { size: k });
            }
        }
        let source = kit::preferred_source(pool);
        let have = primary.iter().filter(|p| **p).count();
        for _ in have..usize::try_from(k).unwrap_or(usize::MAX) {
            let why = Reason::PoolSize { size: k };
            d.create(source, Market::OnDemand, &base.instance_type, why);
        }
        let m = kit::match_pending(&d);
        let mut keep = primary.clone();
        if let Some(i) = kit::maybe_snapshot(&mut d, &m, &primary, now, SNAPSHOT_REFRESH_MS) {
            keep[i] = true;
        }
        // Deletes first: they free room under max_nodes for the creates.
        let timeout = pool.capacity.idle_timeout(self.overflow_idle_timeout_ms);
        let deleted = kit::delete_idle(&mut d, &m, &keep, now, timeout);
        let claims = m.demands(pool);
        kit::create_for(&mut d, &claims, source, Market::OnDemand, true, u32::MAX);
        // Spare nodes beyond the always-on ones are overflow nodes; they
        // count towards `min_nodes`.
        kit::keep_spare(
            &mut d,
            &deleted,
            source,
            Market::OnDemand,
            &base.instance_type,
        );
        let floor = d.floor();
        d.restore_floor(&deleted, floor);
        d.finish()
    }
}
