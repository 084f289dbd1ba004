//! [`Spot`]: spot nodes per claim, replaced when interrupted.

use serde::{Deserialize, Serialize};

use super::kit::{self, Elastic};
use super::{IdleCost, Param, Plan, PoolView, SourceKind, Strategy, StrategyInfo};
use crate::billing::BootPath;
use crate::ids::Millis;
use crate::money::Money;
use crate::provider::Market;

/// Creates a spot node per waiting claim (cheapest fitting spot type) and
/// deletes it after `idle_timeout_ms` idle.
///
/// Interrupted and lost nodes are deleted by the plan; they then no longer
/// count against `max_nodes`, so the same plan creates their replacement
/// for the claims still waiting. Where spot is not sold (the provider has
/// no spot market, or no fitting type has spot terms) a node is bought
/// on-demand when `on_demand_fallback`, otherwise nothing is created and the
/// claim waits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Spot {
    /// How long a node may sit idle before it is deleted (default 60 s).
    pub idle_timeout_ms: Millis,
    /// Buy on-demand where spot is not sold (default true: a claim should
    /// not wait forever on a provider without spot).
    pub on_demand_fallback: bool,
}

impl Default for Spot {
    fn default() -> Spot {
        Spot {
            idle_timeout_ms: 60_000,
            on_demand_fallback: true,
        }
    }
}

impl Spot {
    fn elastic(&self, pool: &PoolView<'_>) -> Elastic {
        Elastic {
            source: kit::preferred_source(pool),
            market: Market::Spot,
            on_demand_fallback: self.on_demand_fallback,
            idle_timeout_ms: self.idle_timeout_ms,
            snapshot_refresh_ms: None,
        }
    }
}

impl Strategy for Spot {
    fn describe(&self, pool: &PoolView<'_>) -> StrategyInfo {
        let b = pool.baseline();
        let floor = pool.spec.min_nodes.min(pool.spec.max_nodes);
        // The min_nodes nodes are baseline nodes bought exactly as plan() buys them.
        let market =
            b.and_then(|b| kit::market_for(pool, b, Market::Spot, self.on_demand_fallback));
        let priced = b
            .zip(market)
            .and_then(|(b, m)| Some((b.price(m)?, b.disk_gb)));
        let per_hour = priced.map_or(Money::ZERO, |(p, disk_gb)| {
            kit::hour_of(pool.billing, p, disk_gb).times(u64::from(floor))
        });
        let availability = match (pool.capabilities.spot, b.and_then(|b| b.spot.as_ref())) {
            (false, _) if self.on_demand_fallback => {
                "the provider sells no spot capacity: every node is bought on-demand".to_owned()
            }
            (false, _) => {
                "the provider sells no spot capacity and on-demand fallback is off: no node is ever created".to_owned()
            }
            (true, Some(t)) => format!(
                "spot {} ({} interruptions per 1000 h; interrupted nodes are deleted and replaced)",
                kit::priced(b, Market::Spot),
                t.interruptions_per_1000h
            ),
            (true, None) => format!(
                "the baseline type has no spot price: {} where no fitting type is sold as spot",
                if self.on_demand_fallback { "bought on-demand" } else { "nothing is created" }
            ),
        };
        let source = kit::preferred_source(pool);
        StrategyInfo {
            name: "spot",
            summary: "spot nodes per claim, replaced on interruption; cheapest rate, interruption risk",
            parameters: vec![
                Param {
                    name: "idle_timeout_ms",
                    value: kit::ms(self.idle_timeout_ms),
                    meaning: "an idle node is deleted after this long without claims",
                },
                Param {
                    name: "on_demand_fallback",
                    value: self.on_demand_fallback.to_string(),
                    meaning: "buy on-demand where spot is not sold instead of creating nothing",
                },
            ],
            boot_path: match source {
                SourceKind::Snapshot => BootPath::Snapshot,
                _ => BootPath::Image,
            },
            idle_cost: IdleCost::steady(per_hour),
            cost_model: format!(
                "{availability}; on-demand would be {}; {}. Idle nodes are deleted after {} ms, \
                 so a pool with no claims keeps min_nodes = {floor} node(s): {per_hour}/h \
                 (not counting replacements after interruptions).",
                kit::priced(b, Market::OnDemand),
                kit::billing_words(pool.billing),
                self.idle_timeout_ms,
            ),
        }
    }

    fn plan(&self, pool: &PoolView<'_>, now: Millis) -> Plan {
        kit::plan_elastic(pool, now, self.elastic(pool))
    }
}
