//! The one plan ColdImage, ColdSnapshot and Spot share.

use super::{
    Draft, create_for, delete_idle, keep_spare, market_for, match_pending, maybe_snapshot,
};
use crate::ids::Millis;
use crate::provider::Market;
use crate::strategy::{Plan, PoolView, Reason, SourceKind};

/// How an elastic (create on demand, delete when idle) pool buys nodes.
#[derive(Debug, Clone, Copy)]
pub(in crate::strategy) struct Elastic {
    pub(in crate::strategy) source: SourceKind,
    pub(in crate::strategy) market: Market,
    pub(in crate::strategy) on_demand_fallback: bool,
    pub(in crate::strategy) idle_timeout_ms: Millis,
    /// Take/refresh a snapshot this often (snapshot-booting strategies).
    pub(in crate::strategy) snapshot_refresh_ms: Option<Millis>,
}

/// The plan of ColdImage, ColdSnapshot and Spot: replace failed nodes,
/// keep `min_nodes` baseline nodes, snapshot when due, delete nodes idle
/// past the timeout (the schedule's, if a period sets one), create for
/// uncovered demand, keep the spare nodes the schedule asks for.
pub(in crate::strategy) fn plan_elastic(view: &PoolView<'_>, now: Millis, e: Elastic) -> Plan {
    let mut d = Draft::new(view);
    d.delete_failed();
    let m = match_pending(&d);
    let mut keep = vec![false; view.nodes.len()];
    if let Some(refresh) = e.snapshot_refresh_ms
        && let Some(i) = maybe_snapshot(&mut d, &m, &[], now, refresh)
    {
        keep[i] = true;
    }
    // Deletes first: they free room under max_nodes for the creates.
    let timeout = view.capacity.idle_timeout(e.idle_timeout_ms);
    let deleted = delete_idle(&mut d, &m, &keep, now, timeout);
    let claims = m.demands(view);
    create_for(
        &mut d,
        &claims,
        e.source,
        e.market,
        e.on_demand_fallback,
        u32::MAX,
    );
    // Spare nodes before the floor: they count towards `min_nodes`.
    let baseline = view
        .baseline()
        .and_then(|b| Some((b, market_for(view, b, e.market, e.on_demand_fallback)?)));
    if let Some((b, market)) = baseline {
        keep_spare(&mut d, &deleted, e.source, market, &b.instance_type);
    }
    let floor = d.floor();
    d.restore_floor(&deleted, floor);
    if let Some((b, market)) = baseline {
        let why = Reason::MinNodes { min_nodes: floor };
        d.fill_to(floor, e.source, market, &b.instance_type, &why);
    }
    d.finish()
}
