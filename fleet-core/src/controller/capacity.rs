//! Capacity shortages: a create that fails because the provider has no
//! capacity for its instance type in its market makes the pool's new nodes
//! avoid that type in that market for `capacity_cooldown_ms`, then try it
//! again.
//!
//! Meanwhile a new node the strategy asks for of a short type gets the
//! cheapest other type of the pool that is at least as large (same
//! architecture, no fewer cpus, no less memory: whatever the node was meant
//! to serve still fits) and sold in the same market, skipping types that are
//! short too. The strategy keeps planning over the pool as configured; the
//! substitution happens where its `Create` becomes a node record, so plans
//! stay a function of the pool's view and the choice is deterministic. With
//! no such type the create is retried as any passing failure is. A resize
//! refused for capacity fails at once (the node keeps its type) and makes
//! its target type short too; a resize to a short type waits for the
//! shortage to end (the pool wakes then).
//! Shortages live in memory only: a restarted controller tries every type
//! again.

use std::collections::BTreeMap;

use super::persist::Effect;
use super::{Alert, Command, Controller};
use crate::ids::{InstanceType, Millis, NodeId, PoolName};
use crate::protocol::{CapacityShortage, Market, NodeState};
use crate::provider::{NodeSpec, Offering};

/// One type out of capacity in one market.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Shortage {
    /// When a create first failed (of this run of failures).
    pub(super) since: Millis,
    /// When new nodes try the type again.
    pub(super) until: Millis,
    /// The provider's words.
    pub(super) error: String,
}

/// Shortages of a pool, by type and market.
pub(super) type Shortages = BTreeMap<(InstanceType, Market), Shortage>;

/// Whether `t` is short in `market` at `now`.
pub(super) fn is_short(
    shortages: &Shortages,
    t: &InstanceType,
    market: Market,
    now: Millis,
) -> bool {
    shortages
        .get(&(t.clone(), market))
        .is_some_and(|s| s.until > now)
}

/// The type a new node of `wanted` in `market` gets at `now`: `wanted`
/// unless it is short and the pool has a replacement (see the module docs).
pub(super) fn available<'a>(
    offerings: &'a [Offering],
    shortages: &Shortages,
    wanted: &'a InstanceType,
    market: Market,
    now: Millis,
) -> &'a InstanceType {
    if !is_short(shortages, wanted, market, now) {
        return wanted;
    }
    replacement(offerings, shortages, wanted, market, now).unwrap_or(wanted)
}

/// The cheapest type of the pool other than `wanted`, at least as large,
/// sold in `market` and not short there.
fn replacement<'a>(
    offerings: &'a [Offering],
    shortages: &Shortages,
    wanted: &InstanceType,
    market: Market,
    now: Millis,
) -> Option<&'a InstanceType> {
    let w = offerings.iter().find(|o| &o.instance_type == wanted)?;
    offerings
        .iter()
        .filter(|o| {
            o.instance_type != w.instance_type
                && o.arch == w.arch
                && o.cpus >= w.cpus
                && o.memory_mb >= w.memory_mb
                && !is_short(shortages, &o.instance_type, market, now)
        })
        .filter_map(|o| o.price(market).map(|p| (p, o)))
        .min_by(|a, b| {
            a.0.cmp(&b.0)
                .then_with(|| a.1.instance_type.cmp(&b.1.instance_type))
        })
        .map(|(_, o)| &o.instance_type)
}

/// When the next shortage in force ends, if any.
pub(super) fn next_end(shortages: &Shortages, now: Millis) -> Option<Millis> {
    shortages
        .values()
        .map(|s| s.until)
        .filter(|t| *t > now)
        .min()
}

/// Drops shortages whose cooldown is over.
pub(super) fn forget_past(shortages: &mut Shortages, now: Millis) {
    shortages.retain(|_, s| s.until > now);
}

/// The shortages in force at `now`, as the status API shows them.
pub(super) fn shortages(
    offerings: &[Offering],
    shortages: &Shortages,
    now: Millis,
) -> Vec<CapacityShortage> {
    shortages
        .iter()
        .filter(|(_, s)| s.until > now)
        .map(|((t, market), s)| CapacityShortage {
            instance_type: t.clone(),
            market: *market,
            since: s.since,
            until: s.until,
            using: replacement(offerings, shortages, t, *market, now).cloned(),
            error: s.error.clone(),
        })
        .collect()
}

impl Controller {
    /// The provider had no capacity for `t` in `market` (a create or a
    /// resize of a node of `pool`): the type is short from now for the
    /// cooldown. Returns when it ends.
    fn note_shortage(
        &mut self,
        pool: &PoolName,
        t: &InstanceType,
        market: Market,
        error: &str,
        now: Millis,
    ) -> Millis {
        let until = now.saturating_add(self.timing.capacity_cooldown_ms);
        if let Some(pool) = self.pools.get_mut(pool) {
            let key = (t.clone(), market);
            let since = match pool.shortages.get(&key) {
                Some(s) if s.until > now => s.since,
                _ => now,
            };
            let error = error.to_owned();
            pool.shortages.insert(
                key,
                Shortage {
                    since,
                    until,
                    error,
                },
            );
        }
        until
    }

    /// The resize of node `id` to `to` failed for lack of capacity: the type
    /// is short (no new node gets it, no other resize goes to it, until the
    /// cooldown ends). The caller fails the call (the node keeps its type).
    pub(super) fn resize_short(
        &mut self,
        id: &NodeId,
        to: &InstanceType,
        error: &str,
        now: Millis,
        out: &mut Vec<Command>,
    ) {
        let Some((pool, market)) = self
            .nodes
            .get(id)
            .map(|n| (n.rec.pool.clone(), n.rec.market))
        else {
            return;
        };
        let until = self.note_shortage(&pool, to, market, error, now);
        out.push(Command::Alert(Alert::CapacityShortage {
            pool,
            node: id.clone(),
            instance_type: to.clone(),
            market,
            using: None,
            until,
            error: error.to_owned(),
        }));
    }

    /// The create of node `id` (`spec`) failed for lack of capacity: records
    /// the shortage and tells the operator. When a new node for the same
    /// demand would now get another type, the node is forgotten (nothing was
    /// created) and the pool plans its replacement at once; returns whether
    /// it was. Otherwise the caller retries the create.
    pub(super) fn create_short(
        &mut self,
        id: &NodeId,
        spec: &NodeSpec,
        error: &str,
        now: Millis,
        out: &mut Vec<Command>,
    ) -> bool {
        let wanted = self
            .nodes
            .get(id)
            .and_then(|n| n.wanted.clone())
            .unwrap_or_else(|| spec.instance_type.clone());
        let until = self.note_shortage(&spec.pool, &spec.instance_type, spec.market, error, now);
        let Some(pool) = self.pools.get(&spec.pool) else {
            return false;
        };
        let next = available(&pool.offerings, &pool.shortages, &wanted, spec.market, now);
        let using = (next != &spec.instance_type).then(|| next.clone());
        out.push(Command::Alert(Alert::CapacityShortage {
            pool: spec.pool.clone(),
            node: id.clone(),
            instance_type: spec.instance_type.clone(),
            market: spec.market,
            using: using.clone(),
            until,
            error: error.to_owned(),
        }));
        if using.is_none() {
            return false;
        }
        self.set_state(id, NodeState::Gone, now);
        let effect = Effect::NodeForgotten { node: id.clone() };
        self.save_node(id, vec![effect], now, out);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::money::HourlyPrice;
    use crate::protocol::Arch;
    use crate::provider::SpotTerms;

    fn it(s: &str) -> InstanceType {
        InstanceType::new(s).unwrap_or_else(|e| panic!("{e}"))
    }

    fn offering(
        t: &str,
        cpus: u32,
        gb: u64,
        arch: Arch,
        price: i64,
        spot: Option<i64>,
    ) -> Offering {
        Offering {
            instance_type: it(t),
            cpus,
            memory_mb: gb * 1024,
            arch,
            disk_gb: 20,
            on_demand: HourlyPrice::from_micros(price),
            spot: spot.map(|p| SpotTerms {
                price: HourlyPrice::from_micros(p),
                interruptions_per_1000h: 5,
            }),
        }
    }

    /// A pool of x86 types (and one arm type) in preference order.
    fn pool() -> Vec<Offering> {
        vec![
            offering("c7i.xlarge", 4, 8, Arch::X86_64, 178_500, Some(70_000)),
            offering("c7i.4xlarge", 16, 32, Arch::X86_64, 714_000, Some(280_000)),
            offering("c7i.2xlarge", 8, 16, Arch::X86_64, 357_000, None),
            offering("m7i.xlarge", 4, 16, Arch::X86_64, 201_600, Some(80_000)),
            offering("c7g.2xlarge", 8, 16, Arch::Aarch64, 290_000, Some(116_000)),
            offering("c7i.large", 2, 4, Arch::X86_64, 89_250, Some(35_000)),
        ]
    }

    fn short(list: &[(&str, Market)], until: Millis) -> Shortages {
        list.iter()
            .map(|(t, m)| {
                (
                    (it(t), *m),
                    Shortage {
                        since: 0,
                        until,
                        error: "no capacity".to_owned(),
                    },
                )
            })
            .collect()
    }

    #[test]
    fn a_type_with_capacity_is_kept() {
        let o = pool();
        let want = it("c7i.xlarge");
        let s = short(&[("c7i.xlarge", Market::Spot)], 100);
        assert_eq!(available(&o, &s, &want, Market::OnDemand, 50), &want);
        assert_eq!(
            available(&o, &Shortages::new(), &want, Market::Spot, 50),
            &want
        );
    }

    #[test]
    fn a_short_type_falls_back_to_the_next_cheapest_that_is_as_large() {
        let o = pool();
        let want = it("c7i.xlarge");
        // m7i.xlarge (4 cpus, 16 GB) is cheaper than c7i.2xlarge and as
        // large; c7i.large is cheaper but smaller, c7g.2xlarge is arm.
        let s = short(&[("c7i.xlarge", Market::OnDemand)], 100);
        assert_eq!(
            available(&o, &s, &want, Market::OnDemand, 50),
            &it("m7i.xlarge")
        );
        // Short too: the next one.
        let s = short(
            &[
                ("c7i.xlarge", Market::OnDemand),
                ("m7i.xlarge", Market::OnDemand),
            ],
            100,
        );
        assert_eq!(
            available(&o, &s, &want, Market::OnDemand, 50),
            &it("c7i.2xlarge")
        );
    }

    #[test]
    fn spot_falls_back_to_types_sold_as_spot() {
        let o = pool();
        let want = it("c7i.xlarge");
        let s = short(
            &[("c7i.xlarge", Market::Spot), ("m7i.xlarge", Market::Spot)],
            100,
        );
        // c7i.2xlarge has no spot price: the 4xlarge is next in spot.
        assert_eq!(
            available(&o, &s, &want, Market::Spot, 50),
            &it("c7i.4xlarge")
        );
    }

    #[test]
    fn nothing_left_keeps_the_wanted_type_and_the_cooldown_ends() {
        let o = pool();
        let want = it("c7i.4xlarge");
        let s = short(&[("c7i.4xlarge", Market::OnDemand)], 100);
        assert_eq!(available(&o, &s, &want, Market::OnDemand, 50), &want);
        let want = it("c7i.xlarge");
        let s = short(&[("c7i.xlarge", Market::OnDemand)], 100);
        assert_eq!(available(&o, &s, &want, Market::OnDemand, 100), &want);
        let mut s = s;
        forget_past(&mut s, 100);
        assert!(s.is_empty());
    }

    #[test]
    fn the_status_says_what_is_used_instead() {
        let o = pool();
        let s = short(
            &[
                ("c7i.xlarge", Market::OnDemand),
                ("c7i.4xlarge", Market::OnDemand),
            ],
            100,
        );
        let shown = shortages(&o, &s, 50);
        let using: Vec<Option<&str>> = shown
            .iter()
            .map(|c| c.using.as_ref().map(InstanceType::as_str))
            .collect();
        // In key order: c7i.4xlarge (nothing larger), c7i.xlarge.
        assert_eq!(using, [None, Some("m7i.xlarge")]);
        assert!(shortages(&o, &s, 100).is_empty(), "over at `until`");
    }
}
