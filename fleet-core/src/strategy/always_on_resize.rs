//! [`AlwaysOnResize`]: one long-lived node, resized between baseline and peak.

use serde::{Deserialize, Serialize};

use super::kit::{self, Draft};
use super::{Action, IdleCost, Param, Plan, PoolView, Reason, Strategy, StrategyInfo};
use crate::billing::BootPath;
use crate::ids::{InstanceType, Millis};
use crate::money::Money;
use crate::protocol::NodeState;
use crate::provider::{Market, Offering};

/// Keeps `max(min_nodes, 1)` on-demand nodes always on at the baseline type
/// and resizes one to the peak type when a waiting claim needs more cpu or
/// memory than the baseline has, back to baseline after
/// `scale_down_after_ms` idle.
///
/// Rules:
/// - A resize restarts the machine, so a node is resized only while it is
///   `ready` with zero claims: a claim that needs the peak waits until the
///   node has drained, then the resize serves it. Busy nodes are never touched.
/// - Without the provider's resize capability nothing is ever resized and
///   nothing extra is created: claims larger than the baseline wait (pick
///   [`Hybrid`](super::Hybrid) for burst capacity).
/// - It never deletes its always-on nodes (only lost/interrupted ones, which
///   it replaces, and extra idle nodes beyond the always-on count).
/// - A stopped always-on node is started when the provider can.
/// - On a provider that resizes only stopped machines
///   (`resize_requires_stop`: EC2, Hetzner) a resize is three steps: the
///   idle node is stopped, the stopped node resized, the resized node
///   started. A stopped always-on node is therefore resized before it is
///   started when waiting claims need the peak (or, stopped at the peak
///   with nothing waiting, back to the baseline). Without stop/start such
///   a provider cannot resize at all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlwaysOnResize {
    /// Type kept while quiet (default: the pool's first instance type).
    pub baseline: Option<InstanceType>,
    /// Type for demand the baseline cannot serve (default: the pool's type
    /// with the most cpus, then memory).
    pub peak: Option<InstanceType>,
    /// Idle time at peak before resizing back to baseline (default 5 min:
    /// long enough that a burst of large claims does not pay a resize each).
    pub scale_down_after_ms: Millis,
}

impl Default for AlwaysOnResize {
    fn default() -> AlwaysOnResize {
        AlwaysOnResize {
            baseline: None,
            peak: None,
            scale_down_after_ms: 300_000,
        }
    }
}

impl AlwaysOnResize {
    fn always_on(pool: &PoolView<'_>) -> u32 {
        pool.spec.min_nodes.max(1).min(pool.spec.max_nodes)
    }

    /// Always-on nodes now: the configured count, or enough nodes for the
    /// claims held plus the spare slots the schedule asks for, if more.
    fn always_on_now(d: &Draft<'_>) -> u32 {
        let pool = &d.view;
        let held: u32 = pool
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, n)| !d.is_removed(*i) && kit::is_live(n))
            .filter(|(_, n)| !matches!(n.state, NodeState::Lost | NodeState::Interrupted))
            .map(|(_, n)| n.claims)
            .sum();
        let slots = held.saturating_add(pool.capacity.spare(held));
        let scheduled = slots.div_ceil(pool.spec.slots_per_node.max(1));
        Self::always_on(pool)
            .max(scheduled)
            .min(pool.spec.max_nodes)
    }
}

/// The configured peak if sold, else the largest type.
pub(super) fn peak_offering<'a>(
    pool: &PoolView<'a>,
    wanted: Option<&InstanceType>,
) -> Option<&'a Offering> {
    wanted.and_then(|t| pool.offering(t)).or_else(|| {
        pool.offerings
            .iter()
            .rev()
            .max_by_key(|o| (o.cpus, o.memory_mb))
    })
}

impl Strategy for AlwaysOnResize {
    fn describe(&self, pool: &PoolView<'_>) -> StrategyInfo {
        let base = kit::offering_or_baseline(pool, self.baseline.as_ref());
        let peak = peak_offering(pool, self.peak.as_ref());
        let k = Self::always_on(pool);
        let per_hour = base.map_or(Money::ZERO, |b| {
            kit::hour_of(pool.billing, b.on_demand, b.disk_gb).times(u64::from(k))
        });
        let resize_words = if pool.capabilities.resize {
            format!(
                "a claim larger than the baseline waits for the node to drain, then a resize \
                 to {} ({} ms of downtime); back to baseline after {} ms idle",
                kit::priced(peak, Market::OnDemand),
                pool.billing.boot.resize_ms,
                self.scale_down_after_ms
            )
        } else {
            "the provider cannot resize: the node stays at baseline and claims larger than \
             it wait; nothing extra is created"
                .to_owned()
        };
        StrategyInfo {
            name: "always_on_resize",
            summary: "one long-lived node resized between peak and baseline; zero boot latency",
            parameters: vec![
                Param {
                    name: "baseline",
                    value: base.map_or_else(|| "none".to_owned(), |o| o.instance_type.to_string()),
                    meaning: "type kept while quiet",
                },
                Param {
                    name: "peak",
                    value: peak.map_or_else(|| "none".to_owned(), |o| o.instance_type.to_string()),
                    meaning: "type for claims the baseline cannot serve",
                },
                Param {
                    name: "scale_down_after_ms",
                    value: kit::ms(self.scale_down_after_ms),
                    meaning: "idle time at peak before resizing back to baseline",
                },
            ],
            boot_path: BootPath::Resize,
            idle_cost: IdleCost::steady(per_hour),
            cost_model: format!(
                "{k} on-demand node(s) at {} run all the time; {resize_words}; {}. A pool with \
                 no claims costs {per_hour}/h.",
                kit::priced(base, Market::OnDemand),
                kit::billing_words(pool.billing),
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
        let peak = peak_offering(pool, self.peak.as_ref()).unwrap_or(base);
        let k = Self::always_on_now(&d);
        let primary = kit::primaries(&d, k, &[&base.instance_type, &peak.instance_type]);
        let caps = pool.capabilities;
        // The provider resizes only stopped machines: stop, resize, start.
        let stop_first = caps.resize_requires_stop;
        let can_resize = caps.resize && (!stop_first || caps.stop_start);
        // What waits before any stopped node comes back.
        let before = kit::match_pending(&d);
        let waiting_now = before.demands(pool);
        for (i, n) in pool.nodes.iter().enumerate() {
            if !(primary[i] && n.state == NodeState::Stopped && caps.stop_start) {
                continue;
            }
            let to = if !(can_resize && stop_first) {
                None
            } else if n.instance_type != peak.instance_type
                && waiting_now.iter().any(|c| {
                    !kit::fits(pool, &n.instance_type, &c.requirements)
                        && kit::fits(pool, &peak.instance_type, &c.requirements)
                })
            {
                Some(&peak.instance_type)
            } else if n.instance_type != base.instance_type && waiting_now.is_empty() {
                // Stopped for a scale-down.
                Some(&base.instance_type)
            } else {
                None
            };
            let size = Reason::PoolSize { size: k };
            match to {
                Some(to) => {
                    let why = if to == &peak.instance_type {
                        Reason::PeakDemand {
                            waiting: u32::try_from(waiting_now.len()).unwrap_or(u32::MAX),
                        }
                    } else {
                        Reason::ScaleDown
                    };
                    d.push(
                        Action::Resize {
                            node: n.node.clone(),
                            to: to.clone(),
                        },
                        why,
                    );
                }
                None => d.start(i, size),
            }
        }
        let m = kit::match_pending(&d);
        // Nodes beyond the always-on count (left by another strategy or a
        // lowered min_nodes) go once they are idle.
        for (i, n) in pool.nodes.iter().enumerate() {
            let spare = !primary[i] && !d.is_removed(i) && !m.needed[i];
            if spare && (kit::is_idle_ready(n) || n.state == NodeState::Stopped) {
                d.delete(i, Reason::BeyondSize { size: k });
            }
        }
        let have = primary.iter().filter(|p| **p).count();
        let source = kit::preferred_source(pool);
        for _ in have..usize::try_from(k).unwrap_or(usize::MAX) {
            let why = Reason::PoolSize { size: k };
            d.create(source, Market::OnDemand, &base.instance_type, why);
        }
        if !can_resize {
            return d.finish();
        }
        let waiting = m.demands(pool);
        // Claims only the peak can serve, still to be covered by a resize.
        let mut need_peak = waiting
            .iter()
            .filter(|c| !kit::fits(pool, &base.instance_type, &c.requirements))
            .filter(|c| kit::fits(pool, &peak.instance_type, &c.requirements))
            .count();
        for (i, n) in pool.nodes.iter().enumerate() {
            if !primary[i] || d.is_removed(i) || !kit::is_idle_ready(n) {
                continue;
            }
            let too_small = waiting.iter().any(|c| {
                !kit::fits(pool, &n.instance_type, &c.requirements)
                    && kit::fits(pool, &peak.instance_type, &c.requirements)
            });
            // A stopped node is resized (above) and then started.
            let resize = |to: &InstanceType| {
                if stop_first {
                    Action::Stop {
                        node: n.node.clone(),
                    }
                } else {
                    Action::Resize {
                        node: n.node.clone(),
                        to: to.clone(),
                    }
                }
            };
            if need_peak > 0 && too_small && n.instance_type != peak.instance_type {
                let why = Reason::PeakDemand {
                    waiting: u32::try_from(need_peak).unwrap_or(u32::MAX),
                };
                need_peak = need_peak.saturating_sub(usize::try_from(n.slots.max(1)).unwrap_or(1));
                d.push(resize(&peak.instance_type), why);
            } else if n.instance_type != base.instance_type && !m.needed[i] && need_peak == 0 {
                let after = pool.capacity.idle_timeout(self.scale_down_after_ms);
                let due = kit::idle_start(n).saturating_add(after);
                if due <= now {
                    let why = Reason::Idle {
                        idle_ms: now.saturating_sub(kit::idle_start(n)),
                        timeout_ms: after,
                    };
                    d.push(resize(&base.instance_type), why);
                } else {
                    d.wake(due, now);
                }
            }
        }
        d.finish()
    }
}
