//! [`BusinessHours`]: a strategy written outside fleet-core, against the
//! public [`Strategy`] trait only.
//!
//! A strategy is a pure function of a [`PoolView`] and the time: it returns
//! [`Action`]s as data and never calls a provider (the controller persists
//! each action, then makes the call). So it can be tested by building views
//! by hand, as `scenarios.rs` does.

use fleet_core::Millis;
use fleet_core::billing::BootPath;
use fleet_core::money::{MS_PER_HOUR, Rounding};
use fleet_core::protocol::{NodeResources, NodeState};
use fleet_core::provider::{Market, Offering};
use fleet_core::strategy::{
    Action, IdleCost, Param, Plan, PoolView, Reason, SourceKind, Strategy, StrategyInfo,
};

const MS_PER_DAY: Millis = 24 * MS_PER_HOUR;

/// Keeps `warm` nodes up during business hours (Monday to Friday,
/// `opens_at`..`closes_at` UTC) so a claim finds a node at once; at night
/// and at weekends it keeps none (only the pool's `min_nodes`) and boots a
/// node per waiting claim, deleting it after `idle_timeout_ms` idle. At most
/// `max_booting` nodes are on their way up at once, so a burst of claims
/// ramps up instead of hitting the provider all at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BusinessHours {
    /// Nodes kept up while open.
    pub(crate) warm: u32,
    /// Opening hour, UTC (0..=23).
    pub(crate) opens_at: u32,
    /// Closing hour, UTC (after `opens_at`).
    pub(crate) closes_at: u32,
    /// How long a node beyond the floor may sit idle before it is deleted.
    pub(crate) idle_timeout_ms: Millis,
    /// Most nodes booting at once.
    pub(crate) max_booting: u32,
}

impl Default for BusinessHours {
    fn default() -> BusinessHours {
        BusinessHours {
            warm: 1,
            opens_at: 8,
            closes_at: 18,
            idle_timeout_ms: 5 * 60_000,
            max_booting: 3,
        }
    }
}

/// Monday to Friday. Day 0 of the Unix epoch was a Thursday.
fn is_weekday(day: u64) -> bool {
    (day + 3) % 7 < 5
}

impl BusinessHours {
    fn is_open(&self, now: Millis) -> bool {
        let hour = now % MS_PER_DAY / MS_PER_HOUR;
        is_weekday(now / MS_PER_DAY)
            && hour >= u64::from(self.opens_at)
            && hour < u64::from(self.closes_at)
    }

    /// When the pool next opens or closes: the plan must be asked again
    /// then even if no claim arrives.
    fn next_change(&self, now: Millis) -> Option<Millis> {
        let today = now / MS_PER_DAY;
        if self.is_open(now) {
            return Some(today * MS_PER_DAY + u64::from(self.closes_at) * MS_PER_HOUR);
        }
        (today..today + 8)
            .filter(|d| is_weekday(*d))
            .map(|d| d * MS_PER_DAY + u64::from(self.opens_at) * MS_PER_HOUR)
            .find(|t| *t > now)
    }

    /// Nodes kept regardless of claims at `now`.
    fn floor(&self, pool: &PoolView<'_>, now: Millis) -> u32 {
        let warm = if self.is_open(now) { self.warm } else { 0 };
        pool.spec.min_nodes.max(warm).min(pool.spec.max_nodes)
    }
}

/// On its way up with no further action from us.
fn booting(state: NodeState) -> bool {
    matches!(
        state,
        NodeState::Requested | NodeState::Provisioning | NodeState::Booting | NodeState::Starting
    )
}

/// Up, or on its way up.
fn serves(state: NodeState) -> bool {
    booting(state) || matches!(state, NodeState::Ready | NodeState::Busy)
}

impl Strategy for BusinessHours {
    fn describe(&self, pool: &PoolView<'_>) -> StrategyInfo {
        let price = pool.baseline().map(|o| o.on_demand.0).unwrap_or_default();
        let floor = pool.spec.min_nodes.min(pool.spec.max_nodes);
        let warm = self.warm.min(pool.spec.max_nodes).max(floor);
        // Node-hours per week with no claims at all: the floor all week,
        // the extra warm nodes while open.
        let open_hours = 5 * u64::from(self.closes_at.saturating_sub(self.opens_at));
        let node_hours = u64::from(floor) * 168 + u64::from(warm - floor) * open_hours;
        let per_hour = price
            .mul_div(node_hours, 168, Rounding::Up)
            .unwrap_or(price);
        StrategyInfo {
            name: "business_hours",
            summary: "warm nodes during business hours, cold boots at night and at weekends",
            parameters: vec![
                Param {
                    name: "warm",
                    value: self.warm.to_string(),
                    meaning: "nodes kept up while open",
                },
                Param {
                    name: "hours",
                    value: format!(
                        "Mon-Fri {:02}:00-{:02}:00 UTC",
                        self.opens_at, self.closes_at
                    ),
                    meaning: "when the warm nodes are kept",
                },
                Param {
                    name: "idle_timeout_ms",
                    value: self.idle_timeout_ms.to_string(),
                    meaning: "a node beyond the floor is deleted after this long idle",
                },
                Param {
                    name: "max_booting",
                    value: self.max_booting.to_string(),
                    meaning: "most nodes on their way up at once",
                },
            ],
            // Claims beyond the warm nodes boot from the image.
            boot_path: BootPath::Image,
            idle_cost: IdleCost::steady(per_hour),
            cost_model: format!(
                "{warm} node(s) at {price}/h for {open_hours} h a week, {floor} the rest \
                 of the week: {node_hours} node-hours a week, {per_hour}/h on average \
                 with no claims; each claim beyond them boots from the image ({} ms).",
                pool.billing.boot.image_ms
            ),
        }
    }

    fn plan(&self, pool: &PoolView<'_>, now: Millis) -> Plan {
        let resources = |o: &Offering| -> NodeResources { o.resources(&pool.spec.labels) };
        // How many nodes this plan may create: within max_nodes, and within
        // max_booting counting the ones already booting. (A cap per plan
        // would not do: the controller plans again at the next event.)
        let live = pool.live_nodes().count() as u32;
        let in_flight = pool.live_nodes().filter(|n| booting(n.state)).count() as u32;
        let mut room = pool
            .spec
            .max_nodes
            .saturating_sub(live)
            .min(self.max_booting.saturating_sub(in_flight));

        // Free slots, counting nodes still booting: asked again before they
        // are up, the plan must not create them twice.
        let mut slots: Vec<(NodeResources, u32)> = pool
            .live_nodes()
            .filter(|n| serves(n.state))
            .filter_map(|n| {
                let free = match n.state {
                    NodeState::Ready | NodeState::Busy => n.free_slots(),
                    _ => n.slots,
                };
                Some((resources(pool.offering(&n.instance_type)?), free))
            })
            .collect();
        let serving = slots.len() as u32;

        // Each waiting claim, oldest first, takes a slot that fits it, or
        // gets a new node of the cheapest type that fits (whose other slots
        // the next claims may take). A claim nothing fits is left to the
        // controller, which tells its caller why.
        // Why each action: `fleetctl explain pool` shows these words.
        let mut actions = Vec::new();
        let mut reasons = Vec::new();
        let waiting = pool.pending.len() as u32;
        for demand in pool.pending {
            let req = &demand.requirements;
            if let Some(slot) = slots
                .iter_mut()
                .find(|(r, free)| *free > 0 && req.satisfied_by(r))
            {
                slot.1 -= 1;
                continue;
            }
            let Some(offering) = pool.cheapest_fitting(req, Market::OnDemand) else {
                continue;
            };
            if room == 0 {
                break;
            }
            room -= 1;
            slots.push((
                resources(offering),
                pool.spec.slots_per_node.saturating_sub(1),
            ));
            actions.push(create(offering));
            reasons.push(Reason::Demand {
                claim: demand.claim.clone(),
                waiting,
            });
        }

        // The floor: warm nodes while open, min_nodes always.
        let floor = self.floor(pool, now);
        let mut kept = serving + actions.len() as u32;
        if let Some(baseline) = pool.baseline() {
            while kept < floor && room > 0 {
                actions.push(create(baseline));
                reasons.push(Reason::Custom {
                    detail: format!("{floor} warm node(s) now (business hours, or min_nodes)"),
                });
                kept += 1;
                room -= 1;
            }
        }

        // Idle nodes above the floor go, longest idle first — unless claims
        // wait (they may be about to take them).
        let mut wake_at = self.next_change(now);
        if pool.pending.is_empty() {
            let mut idle: Vec<_> = pool
                .live_nodes()
                .filter(|n| n.state == NodeState::Ready && n.claims == 0)
                .filter_map(|n| Some((n.idle_since?, n)))
                .collect();
            idle.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.node.cmp(&b.1.node)));
            for (since, n) in idle {
                if kept <= floor {
                    break;
                }
                let due = since.saturating_add(self.idle_timeout_ms);
                if due <= now {
                    actions.push(Action::Delete {
                        node: n.node.clone(),
                    });
                    reasons.push(Reason::Idle {
                        idle_ms: now.saturating_sub(since),
                        timeout_ms: self.idle_timeout_ms,
                    });
                    kept -= 1;
                } else {
                    wake_at = wake_at.map_or(Some(due), |w| Some(w.min(due)));
                }
            }
        }
        Plan {
            actions,
            wake_at,
            reasons,
        }
    }
}

fn create(offering: &Offering) -> Action {
    Action::Create {
        source: SourceKind::Image,
        market: Market::OnDemand,
        size: offering.instance_type.clone(),
    }
}
