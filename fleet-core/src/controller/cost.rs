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
//! **Attribution.** While a node bills as running and holds claims or job
//! attempts, each moment of its running rate is split equally among what
//! it holds then (slots share): a segment between two changes of the node's
//! holders costs `L(end) - L(start)`, where `L(t)` is the interval's rate
//! over `t - since` rounded down to the micro-dollar, and each of the `n`
//! holders gets that divided by `n`, rounded down. Everything else the
//! pool pays is its own, attributed to no workspace: running time with
//! nothing held (booting before the first claim, idle, draining), what the
//! billing rounds up beyond the time used (per-start minimums, started
//! hours — `running_cost` never bills less than `L`), the division's
//! remainders, stopped time and snapshots. A claim's cost is therefore
//! final when it lets go of its node, and `attributed + idle + stopped +
//! snapshots` is the pool's total exactly.
//!
//! **Memory.** Per workspace and pool there is one running sum, which keeps
//! every claim and job since the leader started. Per claim or job there is
//! an entry only while the controller keeps it (`claim_retention_ms` after
//! its end, or until a job is forgotten); it is then dropped, its cost
//! already in its workspace's sum.
//!
//! The controller's side is here too: pricing a node from its pool's
//! offerings, keeping the ledger in step as nodes change state and hold
//! claims and jobs, and the report of what every pool has cost.

use std::collections::BTreeMap;

use super::Controller;
use crate::billing::{BillingModel, BootPath};
use crate::ids::{ClaimId, JobId, Millis, NodeId, PoolName, Workspace};
use crate::money::{HourlyPrice, MS_PER_HOUR, Money, Rounding};
use crate::protocol::{CostReport, HeldCost, NodeRecord, NodeState, PoolCost, WorkspaceCost};
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
    /// The running rate (price and running charges), for attribution.
    rate: HourlyPrice,
    /// Start of the segment not yet attributed.
    settled_to: Millis,
}

impl Open {
    /// The rate over `[since, at)`, rounded down: never more than the bill.
    fn linear(&self, at: Millis) -> Money {
        self.rate
            .0
            .mul_div(at.saturating_sub(self.since), MS_PER_HOUR, Rounding::Down)
            .unwrap_or(Money::MAX)
    }
}

/// What holds a slot of a node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Holder {
    /// A claim (granted or reserved for a grant).
    Claim(ClaimId),
    /// A job's attempt.
    Job(JobId),
}

/// The holders of one node, with their workspaces.
type Holders = BTreeMap<Holder, Workspace>;

/// The running sums a segment's shares go to.
#[derive(Debug, Default, Clone)]
struct Attribution {
    workspaces: BTreeMap<Workspace, WorkspaceCost>,
    /// Claims and jobs the controller keeps.
    held: BTreeMap<Holder, HeldCost>,
}

impl Attribution {
    /// Splits `[from, to)` of `open` among `holders`.
    fn add_segment(&mut self, open: &Open, holders: &Holders, from: Millis, to: Millis) {
        let n = holders.len() as u64;
        if n == 0 || to <= from {
            return;
        }
        let segment = open.linear(to).saturating_sub(open.linear(from));
        let share = segment.mul_div(1, n, Rounding::Down).unwrap_or(Money::ZERO);
        let ms = to - from;
        for (holder, ws) in holders {
            let w = self.workspaces.entry(ws.clone()).or_default();
            w.cost += share;
            *w.pools.entry(open.pool.clone()).or_default() += share;
            w.held_ms = w.held_ms.saturating_add(ms);
            if let Some(h) = self.held.get_mut(holder) {
                h.cost += share;
                h.held_ms = h.held_ms.saturating_add(ms);
            }
        }
    }
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
    /// What each node holds now (nodes holding nothing have no entry).
    holders: BTreeMap<NodeId, Holders>,
    /// Settled attribution (open segments are added at report time).
    attribution: Attribution,
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
                    rate: billing.running_hourly(price, disk_gb),
                    settled_to: now,
                },
            );
        }
    }

    /// Attributes the node's running time since the last change of its
    /// holders (or of its interval) to what it holds.
    fn settle(&mut self, node: &NodeId, now: Millis) {
        let Some(open) = self.open.get_mut(node) else {
            return;
        };
        if open.meter != Meter::Running || now <= open.settled_to {
            return;
        }
        let from = std::mem::replace(&mut open.settled_to, now);
        if let Some(holders) = self.holders.get(node) {
            self.attribution.add_segment(open, holders, from, now);
        }
    }

    /// What has been attributed to `ws` until `now`, open segments
    /// included (their shares are what the next settle will add).
    pub(super) fn workspace_spend(&self, ws: &Workspace, now: Millis) -> Money {
        let settled = self
            .attribution
            .workspaces
            .get(ws)
            .map_or(Money::ZERO, |w| w.cost);
        let mut open_shares = Money::ZERO;
        for (node, holders) in &self.holders {
            let mine = holders.values().filter(|w| *w == ws).count() as u64;
            let Some(open) = self.open.get(node) else {
                continue;
            };
            if mine == 0 || open.meter != Meter::Running || now <= open.settled_to {
                continue;
            }
            let segment = open
                .linear(now)
                .saturating_sub(open.linear(open.settled_to));
            let share = segment
                .mul_div(1, holders.len() as u64, Rounding::Down)
                .unwrap_or(Money::ZERO);
            open_shares += share.times(mine);
        }
        settled + open_shares
    }

    /// `holder` of `workspace` takes a slot of `node` (of `pool`) at `now`.
    pub(super) fn hold(
        &mut self,
        node: &NodeId,
        pool: &PoolName,
        holder: Holder,
        workspace: &Workspace,
        now: Millis,
    ) {
        if self
            .holders
            .get(node)
            .is_some_and(|h| h.contains_key(&holder))
        {
            return;
        }
        self.settle(node, now);
        let w = self
            .attribution
            .workspaces
            .entry(workspace.clone())
            .or_default();
        match holder {
            Holder::Claim(_) => w.claims += 1,
            Holder::Job(_) => w.jobs += 1,
        }
        let held = self
            .attribution
            .held
            .entry(holder.clone())
            .or_insert_with(|| HeldCost {
                workspace: workspace.clone(),
                pool: pool.clone(),
                cost: Money::ZERO,
                held_ms: 0,
                holding: false,
            });
        held.holding = true;
        self.holders
            .entry(node.clone())
            .or_default()
            .insert(holder, workspace.clone());
    }

    /// `holder` gives its slot of `node` back at `now`.
    pub(super) fn release(&mut self, node: &NodeId, holder: &Holder, now: Millis) {
        if !self
            .holders
            .get(node)
            .is_some_and(|h| h.contains_key(holder))
        {
            return;
        }
        self.settle(node, now);
        if let Some(h) = self.holders.get_mut(node) {
            h.remove(holder);
            if h.is_empty() {
                self.holders.remove(node);
            }
        }
        if let Some(h) = self.attribution.held.get_mut(holder) {
            h.holding = false;
        }
    }

    /// The controller no longer keeps `holder`: its cost stays in its
    /// workspace's sum only.
    pub(super) fn forget(&mut self, holder: &Holder) {
        self.attribution.held.remove(holder);
    }

    /// The node is gone from the controller; what it still held is let go
    /// (it billed nothing since its interval closed).
    pub(super) fn forget_node(&mut self, node: &NodeId, now: Millis) {
        self.settle(node, now);
        if let Some(h) = self.holders.remove(node) {
            for holder in h.keys() {
                if let Some(held) = self.attribution.held.get_mut(holder) {
                    held.holding = false;
                }
            }
        }
    }

    fn close(&mut self, billing: &BillingModel, node: &NodeId, now: Millis) {
        self.settle(node, now);
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
        let mut attribution = self.attribution.clone();
        for (node, open) in &self.open {
            if let (Meter::Running, Some(holders)) = (open.meter, self.holders.get(node)) {
                attribution.add_segment(open, holders, open.settled_to, now);
            }
        }
        for w in attribution.workspaces.values() {
            for (pool, cost) in &w.pools {
                pools.entry(pool.clone()).or_default().attributed += *cost;
            }
        }
        for p in pools.values_mut() {
            // Never negative: a segment is attributed at most the rate
            // rounded down, and the bill is the rate over at least that
            // time, rounded up.
            p.idle = p.running.saturating_sub(p.attributed);
        }
        let mut claims = BTreeMap::new();
        let mut jobs = BTreeMap::new();
        for (holder, cost) in attribution.held {
            match holder {
                Holder::Claim(id) => claims.insert(id, cost),
                Holder::Job(id) => jobs.insert(id, cost),
            };
        }
        CostReport {
            at: now,
            pools,
            workspaces: attribution.workspaces,
            claims,
            jobs,
        }
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

    /// `holder` takes a slot of `node` at `now`: the node's running time is
    /// shared with it from now on.
    pub(super) fn bill_hold(&mut self, node: &NodeId, holder: Holder, now: Millis) {
        let Some(pool) = self.nodes.get(node).map(|n| n.rec.pool.clone()) else {
            return;
        };
        let workspace = match &holder {
            Holder::Claim(id) => self.claims.get(id).map(|c| &c.rec.request.workspace),
            Holder::Job(id) => self.jobs.get(id).map(|j| &j.rec.spec.workspace),
        };
        if let Some(workspace) = workspace.cloned() {
            self.ledger.hold(node, &pool, holder, &workspace, now);
        }
    }

    /// `holder` gives its slot of `node` back at `now`.
    pub(super) fn bill_release(&mut self, node: &NodeId, holder: &Holder, now: Millis) {
        self.ledger.release(node, holder, now);
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;
    use crate::billing::Granularity;

    fn node(i: usize) -> NodeId {
        NodeId::new(format!("n{i}")).unwrap_or_else(|e| panic!("{e}"))
    }

    fn pool(i: usize) -> PoolName {
        PoolName::new(format!("p{i}")).unwrap_or_else(|e| panic!("{e}"))
    }

    fn ws(i: usize) -> Workspace {
        Workspace::new(format!("w{i}")).unwrap_or_else(|e| panic!("{e}"))
    }

    fn claim(i: usize) -> Holder {
        Holder::Claim(ClaimId::new(format!("c{i}")).unwrap_or_else(|e| panic!("{e}")))
    }

    /// Per second, no minimum, no charges: at $3.60/h a millisecond costs
    /// exactly one micro-dollar, so the hand computations are in ms.
    fn linear_billing() -> BillingModel {
        BillingModel {
            granularity: Granularity::PerSecond { minimum_secs: 0 },
            charges: Default::default(),
            ..BillingModel::ec2()
        }
    }

    const MICRO_PER_MS: HourlyPrice = HourlyPrice::from_micros(3_600_000);

    fn up(l: &mut Ledger, b: &BillingModel, n: usize, now: Millis) {
        l.transition(
            b,
            &node(n),
            &pool(0),
            NodeState::Requested,
            NodeState::Provisioning,
            MICRO_PER_MS,
            0,
            now,
        );
    }

    fn gone(l: &mut Ledger, b: &BillingModel, n: usize, now: Millis) {
        l.transition(
            b,
            &node(n),
            &pool(0),
            NodeState::Deleting,
            NodeState::Gone,
            MICRO_PER_MS,
            0,
            now,
        );
    }

    /// Checks the reconciliation rule and returns the report.
    fn reconciled(l: &Ledger, b: &BillingModel, now: Millis) -> CostReport {
        let r = l.report(b, now);
        for (name, p) in &r.pools {
            let by_ws: Money = r
                .workspaces
                .values()
                .filter_map(|w| w.pools.get(name))
                .copied()
                .sum();
            assert_eq!(by_ws, p.attributed, "pool {name}: workspaces vs attributed");
            assert!(
                p.attributed <= p.running,
                "pool {name}: attributed beyond the bill"
            );
            assert_eq!(
                p.attributed + p.idle + p.stopped + p.snapshots,
                p.total(),
                "pool {name}: parts vs total"
            );
        }
        for w in r.workspaces.values() {
            assert_eq!(w.pools.values().copied().sum::<Money>(), w.cost);
        }
        r
    }

    #[test]
    fn two_workspaces_share_a_node_and_the_rest_is_idle() {
        let b = linear_billing();
        let mut l = Ledger::default();
        up(&mut l, &b, 0, 0);
        // Booting 0..10 s holds nothing: idle.
        l.hold(&node(0), &pool(0), claim(1), &ws(1), 10_000);
        l.hold(&node(0), &pool(0), claim(2), &ws(2), 20_000);
        l.release(&node(0), &claim(1), 30_000);
        l.release(&node(0), &claim(2), 40_000);
        gone(&mut l, &b, 0, 50_000);
        let r = reconciled(&l, &b, 60_000);
        // c1 alone 10 s, shared 10 s (half): 15 s; c2 shared 10 s, alone 10 s.
        assert_eq!(
            r.claims[&ClaimId::new("c1").unwrap_or_else(|e| panic!("{e}"))].cost,
            Money::from_micros(15_000)
        );
        assert_eq!(r.workspaces[&ws(1)].cost, Money::from_micros(15_000));
        assert_eq!(r.workspaces[&ws(2)].cost, Money::from_micros(15_000));
        assert_eq!(r.workspaces[&ws(1)].held_ms, 20_000);
        assert_eq!(r.workspaces[&ws(1)].claims, 1);
        let p = &r.pools[&pool(0)];
        assert_eq!(p.running, Money::from_micros(50_000));
        assert_eq!(p.attributed, Money::from_micros(30_000));
        assert_eq!(p.idle, Money::from_micros(20_000));
    }

    #[test]
    fn an_uneven_split_leaves_its_remainder_to_the_pool() {
        let b = linear_billing();
        let mut l = Ledger::default();
        up(&mut l, &b, 0, 0);
        for i in 0..3 {
            l.hold(&node(0), &pool(0), claim(i), &ws(i), 0);
        }
        gone(&mut l, &b, 0, 10_000);
        let r = reconciled(&l, &b, 10_000);
        for i in 0..3 {
            assert_eq!(r.workspaces[&ws(i)].cost, Money::from_micros(3_333));
        }
        assert_eq!(r.pools[&pool(0)].idle, Money::from_micros(1));
    }

    #[test]
    fn billing_minimums_are_the_pools_and_a_claim_is_final_at_release() {
        // EC2: 60 s minimum per start; a claim of 30 s pays 30 s.
        let b = BillingModel {
            charges: Default::default(),
            ..BillingModel::ec2()
        };
        let mut l = Ledger::default();
        up(&mut l, &b, 0, 0);
        l.hold(&node(0), &pool(0), claim(1), &ws(1), 0);
        l.release(&node(0), &claim(1), 30_000);
        let before = reconciled(&l, &b, 30_000).workspaces[&ws(1)].cost;
        gone(&mut l, &b, 0, 40_000);
        let r = reconciled(&l, &b, 90_000);
        assert_eq!(before, Money::from_micros(30_000));
        assert_eq!(r.workspaces[&ws(1)].cost, before);
        assert_eq!(r.pools[&pool(0)].running, Money::from_micros(60_000));
        assert_eq!(r.pools[&pool(0)].idle, Money::from_micros(30_000));
    }

    #[test]
    fn a_forgotten_claim_leaves_its_cost_in_its_workspace() {
        let b = linear_billing();
        let mut l = Ledger::default();
        up(&mut l, &b, 0, 0);
        l.hold(&node(0), &pool(0), claim(1), &ws(1), 0);
        l.release(&node(0), &claim(1), 5_000);
        let r = reconciled(&l, &b, 5_000);
        assert!(!r.claims.values().any(|c| c.holding));
        l.forget(&claim(1));
        let r = reconciled(&l, &b, 6_000);
        assert!(r.claims.is_empty());
        assert_eq!(r.workspaces[&ws(1)].cost, Money::from_micros(5_000));
        assert!(l.attribution.held.is_empty() && l.holders.is_empty());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Move(usize, usize),
        Hold(usize, usize),
        Release(usize),
        Forget(usize),
        ForgetNode(usize),
        Snapshot(usize, u64),
        Wait(u64),
    }

    const STATES: [NodeState; 6] = [
        NodeState::Provisioning,
        NodeState::Booting,
        NodeState::Ready,
        NodeState::Stopped,
        NodeState::Resizing,
        NodeState::Gone,
    ];

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..4usize, 0..STATES.len()).prop_map(|(n, s)| Op::Move(n, s)),
            (0..4usize, 0..8usize).prop_map(|(n, h)| Op::Hold(n, h)),
            (0..8usize).prop_map(Op::Release),
            (0..8usize).prop_map(Op::Forget),
            (0..4usize).prop_map(Op::ForgetNode),
            (0..2usize, 1..200u64).prop_map(|(p, gb)| Op::Snapshot(p, gb)),
            (0..7_200_000u64).prop_map(Op::Wait),
        ]
    }

    proptest! {
        /// Whatever the nodes do and whoever holds them: every pool's parts
        /// add up to its total to the micro-dollar, workspaces add up to the
        /// pool's attributed part, nothing is attributed beyond the bill,
        /// and what a workspace has cost never decreases.
        #[test]
        fn attribution_reconciles_with_the_bill(
            hetzner in any::<bool>(),
            prices in proptest::collection::vec(0i64..5_000_000, 4),
            ops in proptest::collection::vec(op(), 1..80),
        ) {
            let b = if hetzner { BillingModel::hetzner() } else { BillingModel::ec2() };
            let mut l = Ledger::default();
            let mut now: Millis = 1_000;
            let mut state = [NodeState::Requested; 4];
            // Which node each holder is on (a claim holds one node).
            let mut on: [Option<usize>; 8] = [None; 8];
            let mut forgot = BTreeSet::new();
            let mut last = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Move(n, s) => {
                        let to = STATES[s];
                        // Half the nodes are in pool 0, half in pool 1.
                        l.transition(&b, &node(n), &pool(n % 2), state[n], to,
                            HourlyPrice::from_micros(prices[n]), 30, now);
                        state[n] = to;
                    }
                    Op::Hold(n, h) if on[h].is_none() => {
                        // A holder keeps its workspace for life.
                        l.hold(&node(n), &pool(n % 2), claim(h), &ws(h % 3), now);
                        on[h] = Some(n);
                    }
                    Op::Hold(..) => {}
                    Op::Release(h) => {
                        if let Some(n) = on[h].take() {
                            l.release(&node(n), &claim(h), now);
                        }
                    }
                    Op::Forget(h) if on[h].is_none() => {
                        l.forget(&claim(h));
                        forgot.insert(h);
                    }
                    Op::Forget(_) => {}
                    Op::ForgetNode(n) if state[n] == NodeState::Gone => {
                        l.forget_node(&node(n), now);
                        for o in &mut on {
                            if *o == Some(n) {
                                *o = None;
                            }
                        }
                    }
                    Op::ForgetNode(_) => {}
                    Op::Snapshot(p, gb) => l.snapshot_kept(&b, &pool(p), gb, now),
                    Op::Wait(ms) => now += ms,
                }
                let r = reconciled(&l, &b, now);
                for (w, c) in &r.workspaces {
                    let before = last.insert(w.clone(), c.cost).unwrap_or(Money::ZERO);
                    prop_assert!(c.cost >= before, "{w} went down");
                }
                if forgot.is_empty() {
                    for (w, c) in &r.workspaces {
                        let held: Money = r.claims.values().filter(|h| &h.workspace == w).map(|h| h.cost).sum();
                        prop_assert_eq!(held, c.cost);
                    }
                }
            }
        }
    }
}
