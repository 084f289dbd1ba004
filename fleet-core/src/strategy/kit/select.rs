//! Choosing nodes: which offering and market a new node gets, how new
//! nodes are packed, which idle nodes go, which node is snapshotted and
//! which are kept always on.

use super::{Draft, Matching, fits, idle_start, is_idle_ready, is_live, size_key};
use crate::ids::{InstanceType, Millis};
use crate::protocol::{NodeState, Requirements};
use crate::provider::{Market, Offering};
use crate::strategy::{Action, Demand, PoolView, Reason, SourceKind};

/// Which offering and market a new node for `req` gets: spot when asked
/// for and sold for a fitting type, else on-demand if allowed.
pub(in crate::strategy) fn pick<'a>(
    view: &PoolView<'a>,
    req: &Requirements,
    market: Market,
    on_demand_fallback: bool,
) -> Option<(&'a Offering, Market)> {
    if market == Market::Spot {
        if view.capabilities.spot
            && let Some(o) = view.cheapest_fitting(req, Market::Spot)
        {
            return Some((o, Market::Spot));
        }
        if !on_demand_fallback {
            return None;
        }
    }
    view.cheapest_fitting(req, Market::OnDemand)
        .map(|o| (o, Market::OnDemand))
}

/// The market a node of offering `o` is bought in under this policy.
pub(in crate::strategy) fn market_for(
    view: &PoolView<'_>,
    o: &Offering,
    market: Market,
    on_demand_fallback: bool,
) -> Option<Market> {
    match market {
        Market::Spot if view.capabilities.spot && o.spot.is_some() => Some(Market::Spot),
        Market::Spot if !on_demand_fallback => None,
        _ => Some(Market::OnDemand),
    }
}

/// Creates nodes for `claims` (oldest first), packing several claims on
/// one new node when `slots_per_node` allows, at most `limit` nodes and
/// never past `max_nodes`. Claims nothing fits are skipped (they wait,
/// and arbitration reports why).
pub(in crate::strategy) fn create_for(
    d: &mut Draft<'_>,
    claims: &[&Demand],
    source: SourceKind,
    market: Market,
    on_demand_fallback: bool,
    limit: u32,
) {
    let view = d.view;
    let slots = view.spec.slots_per_node.max(1);
    // New nodes of this call with free slots left: (type, slots left).
    let mut open: Vec<(InstanceType, u32)> = Vec::new();
    let mut made = 0u32;
    let waiting = u32::try_from(claims.len()).unwrap_or(u32::MAX);
    for c in claims {
        let req = &c.requirements;
        let best = open
            .iter_mut()
            .filter(|(t, left)| *left > 0 && fits(&view, t, req))
            .min_by(|(a, _), (b, _)| size_key(&view, a).cmp(&size_key(&view, b)));
        if let Some((_, left)) = best {
            *left -= 1;
            continue;
        }
        if made >= limit {
            continue;
        }
        let Some((o, m)) = pick(&view, req, market, on_demand_fallback) else {
            continue;
        };
        let why = Reason::Demand {
            claim: c.claim.clone(),
            waiting,
        };
        if !d.create(source, m, &o.instance_type, why) {
            break;
        }
        made += 1;
        open.push((o.instance_type.clone(), slots - 1));
    }
}

/// Deletes every idle node whose timer ran out (longest idle first) and
/// returns them in that order; `keep` nodes are never deleted. Stopped
/// nodes (not `keep`) count as expired at once: these strategies never
/// want them. Sets the wake-up for the next timer. The caller creates
/// what demand needs and then gives back deletions with
/// [`Draft::restore_floor`], so `min_nodes` is judged on the final pool.
pub(in crate::strategy) fn delete_idle(
    d: &mut Draft<'_>,
    m: &Matching,
    keep: &[bool],
    now: Millis,
    timeout: Millis,
) -> Vec<usize> {
    let nodes = d.view.nodes;
    let mut candidates: Vec<(Millis, usize)> = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| {
            !d.is_removed(*i) && !keep.get(*i).copied().unwrap_or(false) && !m.needed[*i]
        })
        .filter_map(|(i, n)| {
            if is_idle_ready(n) {
                Some((idle_start(n).saturating_add(timeout), i))
            } else if n.state == NodeState::Stopped && !d.is_started(i) {
                Some((0, i))
            } else {
                None
            }
        })
        .collect();
    candidates.sort_unstable();
    let mut deleted = Vec::new();
    for (due, i) in candidates {
        if due <= now {
            let n = &nodes[i];
            let why = if n.state == NodeState::Stopped {
                Reason::StoppedUnused
            } else {
                Reason::Idle {
                    idle_ms: now.saturating_sub(idle_start(n)),
                    timeout_ms: timeout,
                }
            };
            d.delete(i, why);
            deleted.push(i);
        } else {
            d.wake(due, now);
        }
    }
    deleted
}

/// Boots from the snapshot when the provider can and one exists.
pub(in crate::strategy) fn preferred_source(view: &PoolView<'_>) -> SourceKind {
    if view.capabilities.snapshot && view.snapshot.is_some() {
        SourceKind::Snapshot
    } else {
        SourceKind::Image
    }
}

/// Takes a snapshot of one idle node when the provider can, none is in
/// flight and the current one is missing or older than `refresh_ms`.
/// Prefers nodes not in `avoid` (always-on nodes), then the longest idle.
/// Returns the node snapshotted, so the caller does not delete it.
pub(in crate::strategy) fn maybe_snapshot(
    d: &mut Draft<'_>,
    m: &Matching,
    avoid: &[bool],
    now: Millis,
    refresh_ms: Millis,
) -> Option<usize> {
    let view = d.view;
    if !view.capabilities.snapshot {
        return None;
    }
    if view
        .nodes
        .iter()
        .any(|n| n.state == NodeState::Snapshotting)
    {
        return None;
    }
    if let Some(s) = view.snapshot {
        let due = s.created_at.saturating_add(refresh_ms);
        if now < due {
            // Ask again when it goes stale, if there is a node to take it from.
            if view.nodes.iter().any(|n| n.state == NodeState::Ready) {
                d.wake(due, now);
            }
            return None;
        }
    }
    let pick = view
        .nodes
        .iter()
        .enumerate()
        .filter(|(i, n)| !d.is_removed(*i) && !m.needed[*i] && is_idle_ready(n))
        .min_by_key(|(i, n)| (avoid.get(*i).copied().unwrap_or(false), idle_start(n), *i))
        .map(|(i, _)| i)?;
    d.push(
        Action::Snapshot {
            node: view.nodes[pick].node.clone(),
        },
        Reason::SnapshotDue {
            age_ms: view.snapshot.map(|s| now.saturating_sub(s.created_at)),
            refresh_ms,
        },
    );
    Some(pick)
}

/// Picks the `k` nodes an always-on strategy keeps: by the order of
/// their type in `prefer` (others last), then the most up, then by node id. Stopped nodes only count
/// when the provider can start them.
pub(in crate::strategy) fn primaries(d: &Draft<'_>, k: u32, prefer: &[&InstanceType]) -> Vec<bool> {
    let nodes = d.view.nodes;
    let mut order: Vec<(usize, u8, usize)> = nodes
        .iter()
        .enumerate()
        .filter(|(i, n)| !d.is_removed(*i) && is_live(n) && !n.retiring)
        // A stopped node the provider cannot start is no always-on node.
        .filter(|(_, n)| d.view.capabilities.stop_start || n.state != NodeState::Stopped)
        .map(|(i, n)| {
            let rank = match n.state {
                // A resize keeps the node's role: it is up again soon.
                NodeState::Ready | NodeState::Busy | NodeState::Resizing => 0,
                NodeState::Snapshotting | NodeState::Starting => 1,
                NodeState::Requested | NodeState::Provisioning | NodeState::Booting => 2,
                NodeState::Stopped | NodeState::Stopping => 3,
                _ => 4,
            };
            (
                prefer
                    .iter()
                    .position(|p| *p == &n.instance_type)
                    .unwrap_or(prefer.len()),
                rank,
                i,
            )
        })
        .collect();
    order.sort_unstable();
    let mut chosen = vec![false; nodes.len()];
    for &(_, _, i) in order.iter().take(usize::try_from(k).unwrap_or(usize::MAX)) {
        chosen[i] = true;
    }
    chosen
}

/// The offering of `wanted` if the pool sells it, else the baseline.
pub(in crate::strategy) fn offering_or_baseline<'a>(
    view: &PoolView<'a>,
    wanted: Option<&InstanceType>,
) -> Option<&'a Offering> {
    wanted
        .and_then(|t| view.offering(t))
        .or_else(|| view.baseline())
}
