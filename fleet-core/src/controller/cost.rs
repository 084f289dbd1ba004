//! The cost ledger: what each pool has cost so far, priced with the
//! provider's billing model as nodes move between states.
//!
//! A node bills as running from the moment its create or start call is
//! issued until its stop or delete completes ([`NodeState::bills_running`]);
//! each such interval is priced on its own, so per-start minimums (EC2's
//! 60 s) and started hours (Hetzner) apply per start, as the providers do.
//! A stopped node bills its disk or its full price per the model. Snapshot
//! storage bills per GB-month while the pool keeps a snapshot.
//!
//! The controller's side is here too: pricing a node from its pool's
//! offerings, keeping the ledger in step as nodes change state, and the
//! report of what every pool has cost.

use std::collections::BTreeMap;

use super::Controller;
use crate::billing::{BillingModel, BootPath};
use crate::ids::{Millis, NodeId, PoolName};
use crate::money::HourlyPrice;
use crate::protocol::{CostReport, NodeRecord, NodeState, PoolCost};
use crate::provider::{BootSource, Offering};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Meter {
    Running,
    Stopped,
}

#[derive(Debug, Clone)]
struct Open {
    pool: PoolName,
    meter: Meter,
    since: Millis,
    price: HourlyPrice,
    disk_gb: u64,
}

#[derive(Debug, Clone)]
struct OpenSnapshot {
    since: Millis,
    gb: u64,
}

/// Accrues cost as nodes change state.
#[derive(Debug, Default)]
pub(super) struct Ledger {
    closed: BTreeMap<PoolName, PoolCost>,
    open: BTreeMap<NodeId, Open>,
    snapshots: BTreeMap<PoolName, OpenSnapshot>,
}

fn meter_of(state: NodeState) -> Option<Meter> {
    match state {
        NodeState::Stopped => Some(Meter::Stopped),
        s if s.bills_running() => Some(Meter::Running),
        _ => None,
    }
}

impl Ledger {
    /// A node moved from `from` to `to` at `now`.
    #[expect(
        clippy::too_many_arguments,
        reason = "one call site; a struct would only rename them"
    )]
    pub(super) fn transition(
        &mut self,
        billing: &BillingModel,
        node: &NodeId,
        pool: &PoolName,
        from: NodeState,
        to: NodeState,
        price: HourlyPrice,
        disk_gb: u64,
        now: Millis,
    ) {
        let (old, new) = (meter_of(from), meter_of(to));
        let price_changed = self.open.get(node).is_some_and(|o| o.price != price);
        if old == new && !price_changed {
            return;
        }
        self.close(billing, node, now);
        if let Some(meter) = new {
            self.open.insert(
                node.clone(),
                Open {
                    pool: pool.clone(),
                    meter,
                    since: now,
                    price,
                    disk_gb,
                },
            );
        }
    }

    fn close(&mut self, billing: &BillingModel, node: &NodeId, now: Millis) {
        if let Some(open) = self.open.remove(node) {
            let entry = self.closed.entry(open.pool.clone()).or_default();
            add_interval(entry, billing, &open, now);
        }
    }

    /// A node of `pool` came up via `path`.
    pub(super) fn boot(&mut self, pool: &PoolName, path: BootPath) {
        *self
            .closed
            .entry(pool.clone())
            .or_default()
            .boots
            .entry(path)
            .or_default() += 1;
    }

    /// A spot node of `pool` was interrupted.
    pub(super) fn interrupted(&mut self, pool: &PoolName) {
        self.closed.entry(pool.clone()).or_default().interruptions += 1;
    }

    /// A node of `pool` was lost.
    pub(super) fn lost(&mut self, pool: &PoolName) {
        self.closed.entry(pool.clone()).or_default().lost += 1;
    }

    /// The pool now keeps a snapshot of `gb` (replacing any previous one).
    pub(super) fn snapshot_kept(
        &mut self,
        billing: &BillingModel,
        pool: &PoolName,
        gb: u64,
        now: Millis,
    ) {
        self.snapshot_closed(billing, pool, now);
        self.snapshots
            .insert(pool.clone(), OpenSnapshot { since: now, gb });
    }

    fn snapshot_closed(&mut self, billing: &BillingModel, pool: &PoolName, now: Millis) {
        if let Some(s) = self.snapshots.remove(pool) {
            let entry = self.closed.entry(pool.clone()).or_default();
            entry.snapshots += billing.snapshot_cost(s.gb, now.saturating_sub(s.since));
        }
    }

    /// Costs so far, with open intervals priced as if they ended at `now`.
    pub(super) fn report(&self, billing: &BillingModel, now: Millis) -> CostReport {
        let mut pools = self.closed.clone();
        for open in self.open.values() {
            add_interval(
                pools.entry(open.pool.clone()).or_default(),
                billing,
                open,
                now,
            );
        }
        for (pool, s) in &self.snapshots {
            pools.entry(pool.clone()).or_default().snapshots +=
                billing.snapshot_cost(s.gb, now.saturating_sub(s.since));
        }
        CostReport { at: now, pools }
    }
}

fn add_interval(entry: &mut PoolCost, billing: &BillingModel, open: &Open, now: Millis) {
    let ms = now.saturating_sub(open.since);
    match open.meter {
        Meter::Running => {
            entry.running += billing.running_cost(open.price, open.disk_gb, ms);
            entry.running_ms += ms;
        }
        Meter::Stopped => {
            entry.stopped += billing.stopped_cost(open.price, open.disk_gb, ms);
            entry.stopped_ms += ms;
        }
    }
}

impl Controller {
    /// What every pool has cost up to `now`.
    pub fn costs(&self, now: Millis) -> CostReport {
        self.ledger.report(&self.billing, now)
    }

    /// Keeps the ledger in step with node `id` moving from `from` to `to`
    /// (before its record changes), counting a boot by the path it took.
    pub(super) fn bill_transition(
        &mut self,
        id: &NodeId,
        from: NodeState,
        to: NodeState,
        now: Millis,
    ) {
        let Some(n) = self.nodes.get(id) else {
            return;
        };
        let price = self.price_of(&n.rec);
        let disk = self.disk_of(&n.rec);
        let pool = n.rec.pool.clone();
        let boot_path = match (&n.rec.source, from, to) {
            (_, NodeState::Starting, NodeState::Booting | NodeState::Ready) => {
                Some(BootPath::Stopped)
            }
            (_, NodeState::Resizing, NodeState::Booting | NodeState::Ready) => {
                Some(BootPath::Resize)
            }
            (
                BootSource::Snapshot(_),
                NodeState::Provisioning,
                NodeState::Booting | NodeState::Ready,
            ) => Some(BootPath::Snapshot),
            (_, NodeState::Provisioning, NodeState::Booting | NodeState::Ready) => {
                Some(BootPath::Image)
            }
            _ => None,
        };
        self.ledger
            .transition(&self.billing, id, &pool, from, to, price, disk, now);
        if let Some(path) = boot_path {
            self.ledger.boot(&pool, path);
        }
    }

    /// The offering a node runs, if its pool still sells its type.
    fn offering_of(&self, rec: &NodeRecord) -> Option<&Offering> {
        self.pools.get(&rec.pool).and_then(|p| {
            p.offerings
                .iter()
                .find(|o| o.instance_type == rec.instance_type)
        })
    }

    fn price_of(&self, rec: &NodeRecord) -> HourlyPrice {
        self.offering_of(rec)
            .map(|o| o.price(rec.market).unwrap_or(o.on_demand))
            .unwrap_or_default()
    }

    fn disk_of(&self, rec: &NodeRecord) -> u64 {
        self.offering_of(rec).map_or(0, |o| u64::from(o.disk_gb))
    }
}
