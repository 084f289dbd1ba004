//! Supply against demand: which pending claims the pool's nodes (up, coming
//! up, or created by the plan) will serve, and which are left uncovered.

use super::Draft;
use crate::ids::InstanceType;
use crate::protocol::Requirements;
use crate::provider::Offering;
use crate::strategy::{Demand, PoolView};

/// Whether a node of type `t` can serve `req`. A type the pool no longer
/// sells is assumed to fit: over-counting supply at worst delays a claim,
/// under-counting it would buy machines on every plan.
pub(in crate::strategy) fn fits(view: &PoolView<'_>, t: &InstanceType, req: &Requirements) -> bool {
    view.offering(t)
        .is_none_or(|o| o.serves(req, &view.spec.labels))
}

/// Orders types small to large (unknown types last), for best fit. Borrows
/// the type: a sort calls this for every compare, and a cloned type's
/// count was 2 % of a simulated year.
pub(in crate::strategy) fn size_key<'t>(
    view: &PoolView<'_>,
    t: &'t InstanceType,
) -> (bool, u32, u64, &'t InstanceType) {
    match view.offering(t) {
        Some(o) => (false, o.cpus, o.memory_mb, t),
        None => (true, u32::MAX, u64::MAX, t),
    }
}

/// Pending claims against supply.
#[derive(Debug)]
pub(in crate::strategy) struct Matching {
    /// Pending claims (indices into `view.pending`) no free or coming
    /// slot covers, oldest first.
    pub(in crate::strategy) unmatched: Vec<usize>,
    /// Per node: a pending claim is expected to land on it.
    pub(in crate::strategy) needed: Vec<bool>,
}

impl Matching {
    pub(in crate::strategy) fn demands<'a>(&self, view: &PoolView<'a>) -> Vec<&'a Demand> {
        self.unmatched.iter().map(|&i| &view.pending[i]).collect()
    }
}

/// The slots of one instance type.
struct Group<'v> {
    /// Its [`size_key`], which ends with the type.
    key: (bool, u32, u64, &'v InstanceType),
    // (node index or None for a node this plan creates, free slots)
    members: Vec<(Option<usize>, u32)>,
}

/// Groups in the order they are met; [`by_size`] orders them. A pool runs
/// a handful of types, so a list searched by type beats a map keyed by an
/// owned type, which cloned the type's name for every node of every plan.
type Groups<'v> = Vec<Group<'v>>;

fn add_slots<'v>(
    view: &PoolView<'_>,
    groups: &mut Groups<'v>,
    ty: &'v InstanceType,
    who: Option<usize>,
    free: u32,
) {
    if free == 0 {
        return;
    }
    if let Some(g) = groups.iter_mut().find(|g| g.key.3 == ty) {
        g.members.push((who, free));
        return;
    }
    groups.push(Group {
        key: size_key(view, ty),
        members: vec![(who, free)],
    });
}

/// Small types first, as [`size_key`] orders them.
fn by_size(mut groups: Groups<'_>) -> Groups<'_> {
    groups.sort_by(|a, b| a.key.cmp(&b.key));
    groups
}

/// Matches pending claims first to free slots of up nodes (where
/// arbitration will actually put them now), then to the slots of nodes
/// on their way up, including those this draft starts or creates.
/// Within each, largest claims first, each into the smallest type that
/// fits, so that the nodes a previous plan created for these claims are
/// found again (this is what makes re-planning idempotent).
pub(in crate::strategy) fn match_pending(d: &Draft<'_>) -> Matching {
    let view = &d.view;
    let mut up = Groups::new();
    let mut coming = Groups::new();
    for (i, n) in view.nodes.iter().enumerate() {
        // A retiring node takes no new claim, up or not.
        if d.is_removed(i) || n.retiring {
            continue;
        }
        if d.is_started(i) || n.state.is_coming_up() {
            add_slots(
                view,
                &mut coming,
                &n.instance_type,
                Some(i),
                n.slots.saturating_sub(n.claims),
            );
        } else {
            add_slots(view, &mut up, &n.instance_type, Some(i), n.free_slots());
        }
    }
    let new_slots = view.spec.slots_per_node.max(1);
    for t in &d.planned {
        add_slots(view, &mut coming, t, None, new_slots);
    }

    // Most constrained claims first: those no type the pool sells fits
    // (only a node of a retired type can take them), then by the
    // smallest type that fits, largest first. Matching them first leaves
    // over exactly the claims a new node can serve.
    let mut sizes: Vec<&Offering> = view.offerings.iter().collect();
    sizes.sort_by_key(|&o| size_key(view, &o.instance_type));
    let constraint = |req: &Requirements| {
        let smallest = sizes.iter().position(|o| o.serves(req, &view.spec.labels));
        (smallest.is_none(), smallest, req.cpus, req.memory_mb)
    };
    let mut order: Vec<usize> = (0..view.pending.len()).collect();
    order.sort_by_cached_key(|&c| {
        (
            std::cmp::Reverse(constraint(&view.pending[c].requirements)),
            c,
        )
    });

    let mut needed = vec![false; view.nodes.len()];
    for groups in [up, coming] {
        let mut groups = by_size(groups);
        order.retain(|&c| {
            let req = &view.pending[c].requirements;
            let slot = groups.iter_mut().find_map(|g| {
                if !fits(view, g.key.3, req) {
                    return None;
                }
                g.members.iter_mut().find(|m| m.1 > 0)
            });
            match slot {
                Some(m) => {
                    m.1 -= 1;
                    if let Some(i) = m.0 {
                        needed[i] = true;
                    }
                    false
                }
                None => true,
            }
        });
    }
    let mut unmatched = order;
    unmatched.sort_unstable();
    Matching { unmatched, needed }
}
