//! [`StoppedPool`]: a fixed set of nodes, stopped while idle, started per job.

use serde::{Deserialize, Serialize};

use super::kit::{self, Draft};
use super::{Action, Demand, IdleCost, Param, Plan, PoolView, Reason, Strategy, StrategyInfo};
use crate::billing::{BootPath, StoppedBilling};
use crate::ids::Millis;
use crate::money::Money;
use crate::protocol::NodeState;
use crate::provider::Market;

/// Keeps `size` on-demand nodes provisioned (at least `min_nodes`, at most
/// `max_nodes`). Idle ready nodes are stopped after `stop_after_idle_ms`;
/// waiting claims start stopped nodes first (the cheap path) and new nodes
/// are created only while fewer than `size` exist. Claims beyond the pool's
/// capacity wait: it never bursts past `size`.
///
/// Nodes are only stopped when stopping saves money: where the provider
/// cannot stop/start, or bills a stopped node in full (Hetzner), the pool
/// stays running as a warm pool — same bill, no start latency, and no new
/// started hour on every restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoppedPool {
    /// Nodes kept provisioned (default 2).
    pub size: u32,
    /// Idle time before a ready node is stopped (default 5 min: a stop/start
    /// cycle costs a boot, so short gaps between jobs keep the node up).
    pub stop_after_idle_ms: Millis,
}

impl Default for StoppedPool {
    fn default() -> StoppedPool {
        StoppedPool {
            size: 2,
            stop_after_idle_ms: 300_000,
        }
    }
}

impl StoppedPool {
    fn target(&self, pool: &PoolView<'_>) -> u32 {
        self.size.max(pool.spec.min_nodes).min(pool.spec.max_nodes)
    }

    /// Whether idle nodes are stopped at all in this pool.
    fn stops(pool: &PoolView<'_>) -> bool {
        pool.capabilities.stop_start && pool.billing.stop_saves_money()
    }

    /// Starts stopped nodes for `claims`, packing claims onto a started
    /// node's slots; returns the claims no stopped node can serve.
    fn start_for<'a>(d: &mut Draft<'_>, claims: Vec<&'a Demand>) -> Vec<&'a Demand> {
        let pool = d.view;
        if !pool.capabilities.stop_start {
            return claims;
        }
        let mut open: Vec<(usize, u32)> = Vec::new();
        let mut rest = Vec::new();
        let waiting = u32::try_from(claims.len()).unwrap_or(u32::MAX);
        for c in claims {
            let req = &c.requirements;
            let nodes = pool.nodes;
            if let Some(slot) = open
                .iter_mut()
                .filter(|(i, left)| *left > 0 && kit::fits(&pool, &nodes[*i].instance_type, req))
                .min_by_key(|(i, _)| (kit::size_key(&pool, &nodes[*i].instance_type), *i))
            {
                slot.1 -= 1;
                continue;
            }
            let stopped = nodes
                .iter()
                .enumerate()
                .filter(|(i, n)| {
                    n.state == NodeState::Stopped
                        && !d.is_removed(*i)
                        && !d.is_started(*i)
                        && kit::fits(&pool, &n.instance_type, req)
                })
                .min_by_key(|(i, n)| (kit::size_key(&pool, &n.instance_type), *i));
            match stopped {
                Some((i, n)) => {
                    let why = Reason::Demand {
                        claim: c.claim.clone(),
                        waiting,
                    };
                    d.start(i, why);
                    open.push((i, n.slots.max(1) - 1));
                }
                None => rest.push(c),
            }
        }
        rest
    }
}

impl Strategy for StoppedPool {
    fn describe(&self, pool: &PoolView<'_>) -> StrategyInfo {
        let b = pool.baseline();
        let n = u64::from(self.target(pool));
        let source = kit::preferred_source(pool);
        let boot_ms = match source {
            super::SourceKind::Snapshot => pool.billing.boot.snapshot_ms,
            _ => pool.billing.boot.image_ms,
        };
        let stops = Self::stops(pool);
        // Each node runs once, from its create call through boot, the idle
        // wait and its stop call, then pays the stopped rate.
        let first_run_ms = boot_ms
            .saturating_add(self.stop_after_idle_ms)
            .saturating_add(pool.billing.calls.api_ms);
        let idle_cost = match b {
            None => IdleCost::steady(Money::ZERO),
            Some(b) if stops => IdleCost {
                setup: pool
                    .billing
                    .running_cost(b.on_demand, u64::from(b.disk_gb), first_run_ms)
                    .times(n),
                settle_ms: first_run_ms,
                per_hour: pool
                    .billing
                    .stopped_hourly(b.on_demand, u64::from(b.disk_gb))
                    .0
                    .times(n),
            },
            Some(b) => {
                IdleCost::steady(kit::hour_of(pool.billing, b.on_demand, b.disk_gb).times(n))
            }
        };
        let mode = if !pool.capabilities.stop_start {
            "the provider cannot stop/start: this runs as a warm pool, all nodes always running"
                .to_owned()
        } else if pool.billing.stopped == StoppedBilling::FullPrice {
            "a stopped node costs its full price here, so nodes are never stopped: a warm pool, \
             all nodes always running"
                .to_owned()
        } else {
            format!(
                "idle nodes are stopped after {} ms and started again in {} ms per job; a stopped \
                 node costs {}/h (disk {} GB)",
                self.stop_after_idle_ms,
                pool.billing.boot.stopped_ms,
                b.map_or(Money::ZERO, |b| pool
                    .billing
                    .stopped_hourly(b.on_demand, u64::from(b.disk_gb))
                    .0),
                b.map_or(0, |b| b.disk_gb),
            )
        };
        StrategyInfo {
            name: "stopped_pool",
            summary: "N provisioned nodes, stopped while idle, powered on per job; for providers with free stop/start",
            parameters: vec![
                Param {
                    name: "size",
                    value: self.size.to_string(),
                    meaning: "nodes kept provisioned (bounded by min_nodes and max_nodes)",
                },
                Param {
                    name: "stop_after_idle_ms",
                    value: kit::ms(self.stop_after_idle_ms),
                    meaning: "an idle ready node is stopped after this long without claims",
                },
            ],
            boot_path: BootPath::Stopped,
            idle_cost,
            cost_model: format!(
                "{n} on-demand node(s) ({}); {mode}; {}. With no claims the pool costs {}.",
                kit::priced(b, Market::OnDemand),
                kit::billing_words(pool.billing),
                if stops {
                    format!(
                        "{} (each node runs once: {boot_ms} ms boot, {} ms idle, {} ms stop call, \
                         billed as one run)",
                        kit::idle_words(&idle_cost),
                        self.stop_after_idle_ms,
                        pool.billing.calls.api_ms,
                    )
                } else {
                    format!("{} (nodes never stop)", kit::idle_words(&idle_cost))
                },
            ),
        }
    }

    fn plan(&self, pool: &PoolView<'_>, now: Millis) -> Plan {
        let mut d = Draft::new(pool);
        d.delete_failed();
        d.delete_unstartable();
        let target = self.target(pool);
        let m = kit::match_pending(&d);
        let rest = Self::start_for(&mut d, m.demands(pool));
        let source = kit::preferred_source(pool);
        let below = target.saturating_sub(d.live());
        kit::create_for(&mut d, &rest, source, Market::OnDemand, true, below);
        if let Some(b) = pool.baseline() {
            let why = Reason::PoolSize { size: target };
            d.fill_to(target, source, Market::OnDemand, &b.instance_type, &why);
        }
        // Too many (size lowered, or left by another strategy): stopped ones
        // go first, then the longest idle.
        let mut spare: Vec<(u8, Millis, usize)> = pool
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| !d.is_removed(*i) && !d.is_started(*i) && !m.needed[*i])
            .filter_map(|(i, n)| match n.state {
                NodeState::Stopped => Some((0, n.state_since, i)),
                _ if kit::is_idle_ready(n) => Some((1, kit::idle_start(n), i)),
                _ => None,
            })
            .collect();
        spare.sort_unstable();
        for (_, _, i) in spare {
            if d.live() <= target {
                break;
            }
            d.delete(i, Reason::BeyondSize { size: target });
        }
        // Scheduled capacity: spare nodes are started nodes, kept from
        // stopping, most recently idle first; the pool never grows past
        // its size for them.
        let after = kit::match_pending(&d);
        let want = kit::spare_target(&d, &after);
        if pool.capabilities.stop_start {
            kit::start_spare(&mut d, &after, want);
        }
        let mut idle: Vec<(Millis, usize)> = pool
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, n)| !d.is_removed(*i) && !after.needed[*i] && kit::is_idle_ready(n))
            .filter(|(_, n)| !n.retiring)
            .map(|(i, n)| (kit::idle_start(n), i))
            .collect();
        idle.sort_unstable_by(|a, b| b.cmp(a));
        // Idle nodes kept up so that, without them, the spare slots would
        // fall below what the schedule asks for.
        let idle_slots: u32 = idle.iter().map(|&(_, i)| pool.nodes[i].slots).sum();
        let mut short =
            want.saturating_sub(kit::spare_count(&d, &after).saturating_sub(idle_slots));
        let mut kept = Vec::new();
        for &(_, i) in &idle {
            if short == 0 {
                break;
            }
            short = short.saturating_sub(pool.nodes[i].slots);
            kept.push(i);
        }
        if Self::stops(pool) {
            let timeout = pool.capacity.idle_timeout(self.stop_after_idle_ms);
            for (i, n) in pool.nodes.iter().enumerate() {
                if d.is_removed(i) || m.needed[i] || !kit::is_idle_ready(n) || kept.contains(&i) {
                    continue;
                }
                let due = kit::idle_start(n).saturating_add(timeout);
                if due <= now {
                    let why = Reason::Idle {
                        idle_ms: now.saturating_sub(kit::idle_start(n)),
                        timeout_ms: timeout,
                    };
                    d.push(
                        Action::Stop {
                            node: n.node.clone(),
                        },
                        why,
                    );
                } else {
                    d.wake(due, now);
                }
            }
        }
        d.finish()
    }
}
