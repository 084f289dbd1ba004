//! Properties of `arbitrate` (DESIGN.md, fleet-core → arbitrate), checked
//! against an independent recomputation from the inputs, plus a few worked
//! examples.
//!
//! The generated inputs are small and collision-heavy on purpose: 2–3 pools,
//! 1–4 workspaces, few resource shapes and labels, priorities and arrival
//! times with ties, tight quotas and dollar caps, nodes with 0 slots or no
//! free slot, prices that land exactly on dollar caps.

use std::collections::{BTreeMap, BTreeSet};

use fleet_core::arbitrate::{
    ArbitrationInput, Assignment, NodeCapacity, Outcome, PendingClaim, Quota, Usage, arbitrate,
};
use fleet_core::ids::{ClaimId, NodeId, PoolName, Workspace};
use fleet_core::money::{HourlyPrice, Money, Rounding};
use fleet_core::protocol::{Arch, NodeResources, PendingReason, Requirements};
use proptest::prelude::*;
use proptest::sample::select;

// ---------------------------------------------------------------- inputs

#[derive(Debug, Clone)]
struct Case {
    claims: Vec<PendingClaim>,
    nodes: Vec<NodeCapacity>,
    quotas: BTreeMap<Workspace, Quota>,
    usage: BTreeMap<Workspace, Usage>,
}

impl Case {
    fn run(&self) -> Outcome {
        arbitrate(ArbitrationInput {
            claims: &self.claims,
            nodes: &self.nodes,
            quotas: &self.quotas,
            usage: &self.usage,
        })
    }
}

fn token<T: TryFrom<String>>(s: String) -> T
where
    T::Error: std::fmt::Debug,
{
    match T::try_from(s) {
        Ok(t) => t,
        Err(e) => panic!("test id is not a valid token: {e:?}"),
    }
}

fn pool(i: usize) -> PoolName {
    token(format!("p{i}"))
}
fn ws(i: usize) -> Workspace {
    token(format!("w{i}"))
}
fn claim_id(i: usize) -> ClaimId {
    token(format!("c{i}"))
}
fn node_id(i: usize) -> NodeId {
    token(format!("n{i}"))
}

fn arb_arch() -> impl Strategy<Value = Arch> {
    prop_oneof![Just(Arch::X86_64), Just(Arch::Aarch64)]
}

fn arb_labels(max: usize) -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(
        select(vec!["gpu", "zone", "tier"]).prop_map(String::from),
        select(vec!["a", "b"]).prop_map(String::from),
        0..=max,
    )
}

fn arb_requirements() -> impl Strategy<Value = Requirements> {
    (
        select(vec![0u32, 1, 2, 4, 8]),
        select(vec![0u64, 1024, 2048, 4096, 8192]),
        prop::option::of(arb_arch()),
        arb_labels(2),
    )
        .prop_map(|(cpus, memory_mb, arch, labels)| Requirements {
            cpus,
            memory_mb,
            arch,
            labels,
        })
}

fn arb_resources() -> impl Strategy<Value = NodeResources> {
    (
        select(vec![1u32, 2, 4, 8]),
        select(vec![1024u64, 2048, 4096, 8192]),
        arb_arch(),
        arb_labels(3),
    )
        .prop_map(|(cpus, memory_mb, arch, labels)| NodeResources {
            cpus,
            memory_mb,
            arch,
            labels,
        })
}

/// A random round. With `dup_ids`, claim and node ids are drawn from a small
/// range so duplicates are common; otherwise every id is distinct.
fn arb_case(dup_ids: bool) -> impl Strategy<Value = Case> {
    arb_case_sized(dup_ids, 24, 16)
}

/// Many nodes and claims in one pool with no arch or label constraints: every
/// node lands in one index group with many shapes per cpu count, which is
/// what exercises the shape scan (memory jumps, pruning, dropping used-up
/// shapes).
fn arb_dense_case() -> impl Strategy<Value = Case> {
    arb_case_sized(false, 40, 40).prop_map(|mut case| {
        for n in &mut case.nodes {
            n.pool = pool(0);
            n.resources.arch = Arch::X86_64;
            n.resources.labels.clear();
        }
        for c in &mut case.claims {
            c.pool = pool(0);
            c.requirements.arch = None;
            c.requirements.labels.clear();
        }
        case
    })
}

fn arb_case_sized(dup_ids: bool, claims: usize, nodes: usize) -> impl Strategy<Value = Case> {
    (2usize..=3, 1usize..=4).prop_flat_map(move |(pools, workspaces)| {
        let claim = (
            0..pools,
            0..workspaces,
            arb_requirements(),
            0i32..=2,
            0u64..=3,
            0usize..6,
        );
        let node = (
            0..pools,
            arb_resources(),
            0u32..=3,
            0u32..=3,
            // Round prices so shares and caps meet exactly; 100_001 for
            // shares that round up.
            select(vec![0i64, 100_000, 200_000, 300_000, 600_000, 100_001]),
            0usize..6,
        );
        let quota = prop::option::of((
            prop::option::of(0u32..=4),
            prop::option::of((0i64..=12).prop_map(|k| k * 100_000)),
        ));
        let usage = prop::option::of((0u32..=3, (0i64..=4).prop_map(|k| k * 100_000)));
        (
            prop::collection::vec(claim, 0..=claims),
            prop::collection::vec(node, 0..=nodes),
            prop::collection::vec(quota, workspaces),
            prop::collection::vec(usage, workspaces),
        )
            .prop_map(move |(claims, nodes, quotas, usage)| Case {
                claims: claims
                    .into_iter()
                    .enumerate()
                    .map(
                        |(i, (p, w, requirements, priority, enqueued_at, dup))| PendingClaim {
                            id: claim_id(if dup_ids { dup } else { i }),
                            workspace: ws(w),
                            pool: pool(p),
                            requirements,
                            priority,
                            enqueued_at,
                        },
                    )
                    .collect(),
                nodes: nodes
                    .into_iter()
                    .enumerate()
                    .map(
                        |(i, (p, resources, slots, free, price, dup))| NodeCapacity {
                            id: node_id(if dup_ids { dup } else { i }),
                            pool: pool(p),
                            resources,
                            slots,
                            free_slots: free.min(slots),
                            price: HourlyPrice::from_micros(price),
                        },
                    )
                    .collect(),
                quotas: quotas
                    .into_iter()
                    .enumerate()
                    .filter_map(|(i, q)| {
                        q.map(|(max_claims, cap)| {
                            let quota = Quota {
                                max_claims,
                                max_hourly_spend: cap.map(Money::from_micros),
                                ..Default::default()
                            };
                            (ws(i), quota)
                        })
                    })
                    .collect(),
                usage: usage
                    .into_iter()
                    .enumerate()
                    .filter_map(|(i, u)| {
                        u.map(|(claims, spend)| {
                            let usage = Usage {
                                claims,
                                hourly_spend: Money::from_micros(spend),
                            };
                            (ws(i), usage)
                        })
                    })
                    .collect(),
            })
    })
}

// ------------------------------------------- independent recomputation

/// Per-claim share of a node, `None` when the node has no slots.
fn share(node: &NodeCapacity) -> Option<Money> {
    node.price.0.mul_div(1, u64::from(node.slots), Rounding::Up)
}

fn feasible(claim: &PendingClaim, node: &NodeCapacity) -> bool {
    claim.pool == node.pool
        && share(node).is_some()
        && claim.requirements.satisfied_by(&node.resources)
}

/// Claims in service order (ids are distinct in the cases this is used on).
fn service_order(case: &Case) -> Vec<&PendingClaim> {
    let mut order: Vec<&PendingClaim> = case.claims.iter().collect();
    order.sort_by(|a, b| {
        (-i64::from(a.priority), a.enqueued_at, &a.id).cmp(&(
            -i64::from(b.priority),
            b.enqueued_at,
            &b.id,
        ))
    });
    order
}

/// A checked view of an outcome of a case with distinct ids.
struct View<'a> {
    case: &'a Case,
    out: &'a Outcome,
    /// Claim id → position in service order.
    pos: BTreeMap<&'a ClaimId, usize>,
    claims: BTreeMap<&'a ClaimId, &'a PendingClaim>,
    nodes: BTreeMap<&'a NodeId, &'a NodeCapacity>,
}

impl<'a> View<'a> {
    fn new(case: &'a Case, out: &'a Outcome) -> View<'a> {
        View {
            case,
            out,
            pos: service_order(case)
                .into_iter()
                .enumerate()
                .map(|(i, c)| (&c.id, i))
                .collect(),
            claims: case.claims.iter().map(|c| (&c.id, c)).collect(),
            nodes: case.nodes.iter().map(|n| (&n.id, n)).collect(),
        }
    }

    fn claim(&self, id: &ClaimId) -> &'a PendingClaim {
        match self.claims.get(id) {
            Some(c) => c,
            None => panic!("outcome names unknown claim {id}"),
        }
    }

    fn node(&self, id: &NodeId) -> &'a NodeCapacity {
        match self.nodes.get(id) {
            Some(n) => n,
            None => panic!("outcome names unknown node {id}"),
        }
    }

    /// Free slots each node has left after the round.
    fn residual(&self) -> BTreeMap<&'a NodeId, i64> {
        let mut left: BTreeMap<&NodeId, i64> = self
            .case
            .nodes
            .iter()
            .map(|n| (&n.id, i64::from(n.free_slots)))
            .collect();
        for g in &self.out.grants {
            *left.entry(&self.node(&g.node).id).or_default() -= 1;
        }
        left
    }

    /// Claims and spend a workspace holds just before the claim at service
    /// position `before` is served (`usize::MAX`: after the round).
    fn held(&self, workspace: &Workspace, before: usize) -> (u64, i128) {
        let used = self.case.usage.get(workspace);
        let mut claims = used.map_or(0, |u| u64::from(u.claims));
        let mut spend = used.map_or(0, |u| i128::from(u.hourly_spend.micros()));
        for g in &self.out.grants {
            let c = self.claim(&g.claim);
            if &c.workspace == workspace && self.pos[&c.id] < before {
                claims += 1;
                let s = share(self.node(&g.node)).map_or(0, Money::micros);
                spend += i128::from(s);
            }
        }
        (claims, spend)
    }
}

fn grant_positions(v: &View<'_>) -> Vec<usize> {
    v.out.grants.iter().map(|g| v.pos[&g.claim]).collect()
}

fn waiting_positions(v: &View<'_>) -> Vec<usize> {
    v.out.waiting.iter().map(|(id, _)| v.pos[id]).collect()
}

fn is_increasing(xs: &[usize]) -> bool {
    xs.windows(2).all(|w| w[0] < w[1])
}

/// The obvious O(claims × nodes) arbitration, written from the spec: the
/// fast index in `arbitrate` must agree with it exactly.
fn naive(case: &Case) -> Outcome {
    let mut left: BTreeMap<&NodeId, u32> =
        case.nodes.iter().map(|n| (&n.id, n.free_slots)).collect();
    let mut held: BTreeMap<&Workspace, (u64, i128)> = BTreeMap::new();
    let mut out = Outcome::default();
    for c in service_order(case) {
        let quota = case.quotas.get(&c.workspace).cloned().unwrap_or_default();
        let (claims, spend) = held.entry(&c.workspace).or_insert_with(|| {
            let u = case.usage.get(&c.workspace).cloned().unwrap_or_default();
            (u64::from(u.claims), i128::from(u.hourly_spend.micros()))
        });
        if let Some(max_claims) = quota.max_claims
            && *claims >= u64::from(max_claims)
        {
            out.waiting
                .push((c.id.clone(), PendingReason::QuotaExceeded { max_claims }));
            continue;
        }
        let free: Vec<&NodeCapacity> = case
            .nodes
            .iter()
            .filter(|n| feasible(c, n) && left[&n.id] > 0)
            .collect();
        let affordable = |n: &&NodeCapacity| {
            let s = i128::from(share(n).map_or(0, Money::micros));
            quota
                .max_hourly_spend
                .is_none_or(|cap| *spend + s <= i128::from(cap.micros()))
        };
        let best = free
            .iter()
            .copied()
            .filter(affordable)
            .min_by_key(|n| (n.resources.cpus, n.resources.memory_mb, share(n), &n.id));
        match (best, quota.max_hourly_spend) {
            (Some(n), _) => {
                *claims += 1;
                *spend += i128::from(share(n).map_or(0, Money::micros));
                if let Some(l) = left.get_mut(&n.id) {
                    *l -= 1;
                }
                out.grants.push(Assignment {
                    claim: c.id.clone(),
                    node: n.id.clone(),
                });
            }
            (None, Some(cap)) if !free.is_empty() => out.waiting.push((
                c.id.clone(),
                PendingReason::DollarCapExceeded {
                    cap_micros_per_hour: cap.micros(),
                },
            )),
            (None, _) => out
                .waiting
                .push((c.id.clone(), PendingReason::WaitingForCapacity)),
        }
    }
    out
}

// ------------------------------------------------------------ properties

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// (1) No node receives more grants than its free slots.
    #[test]
    fn never_more_grants_than_free_slots(case in arb_case(false)) {
        let out = case.run();
        let v = View::new(&case, &out);
        for (node, left) in v.residual() {
            prop_assert!(left >= 0, "{node} over-granted by {}", -left);
        }
    }

    /// (2) Every grant's node is in the claim's pool and meets its
    /// requirements (and has slots at all).
    #[test]
    fn grants_meet_pool_and_requirements(case in arb_case(false)) {
        let out = case.run();
        let v = View::new(&case, &out);
        for g in &out.grants {
            let (c, n) = (v.claim(&g.claim), v.node(&g.node));
            prop_assert!(feasible(c, n), "{} granted infeasible {}", c.id, n.id);
        }
    }

    /// (3) Grants and waiting claims are each in service order, and a claim
    /// waiting for capacity has no feasible node with a slot left at the end
    /// of the round (work-conserving).
    #[test]
    fn service_order_and_work_conserving(case in arb_case(false)) {
        let out = case.run();
        let v = View::new(&case, &out);
        prop_assert!(is_increasing(&grant_positions(&v)), "grants out of order");
        prop_assert!(is_increasing(&waiting_positions(&v)), "waiting out of order");
        let left = v.residual();
        for (id, reason) in &out.waiting {
            if *reason != PendingReason::WaitingForCapacity {
                continue;
            }
            let c = v.claim(id);
            for n in &case.nodes {
                prop_assert!(
                    !(feasible(c, n) && left[&n.id] > 0),
                    "{id} waits for capacity but {} has a slot", n.id
                );
            }
        }
    }

    /// (4) A claim left waiting for capacity never sees a later claim get a
    /// node that could have served it.
    #[test]
    fn priority_respected(case in arb_case(false)) {
        let out = case.run();
        let v = View::new(&case, &out);
        for (id, reason) in &out.waiting {
            if *reason != PendingReason::WaitingForCapacity {
                continue;
            }
            let high = v.claim(id);
            for g in &out.grants {
                let low = v.claim(&g.claim);
                if v.pos[&low.id] > v.pos[&high.id] {
                    prop_assert!(
                        !feasible(high, v.node(&g.node)),
                        "{} waits while later {} got {}", high.id, low.id, g.node
                    );
                }
            }
        }
    }

    /// (5) Quotas: a workspace granted anything stays within max_claims and
    /// max_hourly_spend; a claim refused for a quota really hit it at its
    /// turn, and one refused for the dollar cap could afford no feasible node
    /// still free.
    #[test]
    fn quotas_respected(case in arb_case(false)) {
        let out = case.run();
        let v = View::new(&case, &out);
        let granted: BTreeSet<&Workspace> =
            out.grants.iter().map(|g| &v.claim(&g.claim).workspace).collect();
        for w in granted {
            let (claims, spend) = v.held(w, usize::MAX);
            let quota = case.quotas.get(w).cloned().unwrap_or_default();
            if let Some(max) = quota.max_claims {
                prop_assert!(claims <= u64::from(max), "{w}: {claims} claims > {max}");
            }
            if let Some(cap) = quota.max_hourly_spend {
                prop_assert!(spend <= i128::from(cap.micros()), "{w}: {spend} > {cap}");
            }
        }
        let left = v.residual();
        for (id, reason) in &out.waiting {
            let c = v.claim(id);
            let quota = case.quotas.get(&c.workspace).cloned().unwrap_or_default();
            let (claims, spend) = v.held(&c.workspace, v.pos[id]);
            match reason {
                PendingReason::QuotaExceeded { max_claims } => {
                    prop_assert_eq!(quota.max_claims, Some(*max_claims));
                    prop_assert!(claims >= u64::from(*max_claims));
                }
                PendingReason::DollarCapExceeded { cap_micros_per_hour } => {
                    let cap = quota.max_hourly_spend.map(Money::micros);
                    prop_assert_eq!(cap, Some(*cap_micros_per_hour));
                    for n in case.nodes.iter().filter(|n| feasible(c, n) && left[&n.id] > 0) {
                        let s = share(n).map_or(0, Money::micros);
                        prop_assert!(
                            spend + i128::from(s) > i128::from(*cap_micros_per_hour),
                            "{id} refused for its cap but could afford {}", n.id
                        );
                    }
                }
                PendingReason::WaitingForCapacity => {}
                other => prop_assert!(false, "unexpected reason {other:?}"),
            }
        }
    }

    /// Best fit, quotas and reasons all agree with the naive reference.
    #[test]
    fn matches_naive_reference(case in arb_case(false)) {
        prop_assert_eq!(case.run(), naive(&case));
    }

    /// The same on dense single-group inputs, where the shape scan does the
    /// most work.
    #[test]
    fn matches_naive_reference_dense(case in arb_dense_case()) {
        prop_assert_eq!(case.run(), naive(&case));
    }

    /// (6) Shuffling claims and nodes (duplicate ids included) changes
    /// nothing. Quotas and usage are `BTreeMap`s, so their insertion order
    /// cannot matter.
    #[test]
    fn permutation_invariant(
        (case, claims, nodes) in arb_case(true).prop_flat_map(|case| {
            let claims = Just(case.claims.clone()).prop_shuffle();
            let nodes = Just(case.nodes.clone()).prop_shuffle();
            (Just(case), claims, nodes)
        })
    ) {
        let shuffled = Case { claims, nodes, ..case.clone() };
        prop_assert_eq!(case.run(), shuffled.run());
    }

    /// (7) Deterministic: the same input twice gives the same outcome.
    #[test]
    fn deterministic(case in arb_case(true)) {
        prop_assert_eq!(case.run(), case.run());
    }

    /// (8) Every distinct claim id appears exactly once in grants ∪ waiting,
    /// and every granted node id exists.
    #[test]
    fn every_claim_exactly_once(case in arb_case(true)) {
        let out = case.run();
        let mut seen: Vec<&ClaimId> = out
            .grants
            .iter()
            .map(|g| &g.claim)
            .chain(out.waiting.iter().map(|(id, _)| id))
            .collect();
        seen.sort();
        let expected: Vec<&ClaimId> = case
            .claims
            .iter()
            .map(|c| &c.id)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        prop_assert_eq!(seen, expected);
        let nodes: BTreeSet<&NodeId> = case.nodes.iter().map(|n| &n.id).collect();
        for g in &out.grants {
            prop_assert!(nodes.contains(&g.node));
        }
    }
}

// -------------------------------------------------------------- examples

fn claim(id: usize, workspace: usize, priority: i32, enqueued_at: u64, cpus: u32) -> PendingClaim {
    PendingClaim {
        id: claim_id(id),
        workspace: ws(workspace),
        pool: pool(0),
        requirements: Requirements {
            cpus,
            ..Requirements::default()
        },
        priority,
        enqueued_at,
    }
}

fn node(id: usize, cpus: u32, slots: u32, price_micros: i64) -> NodeCapacity {
    NodeCapacity {
        id: node_id(id),
        pool: pool(0),
        resources: NodeResources {
            cpus,
            memory_mb: 4096,
            arch: Arch::X86_64,
            labels: BTreeMap::new(),
        },
        slots,
        free_slots: slots,
        price: HourlyPrice::from_micros(price_micros),
    }
}

fn run(
    claims: &[PendingClaim],
    nodes: &[NodeCapacity],
    quotas: &[(usize, Quota)],
    usage: &[(usize, Usage)],
) -> Outcome {
    let quotas = quotas.iter().map(|(w, q)| (ws(*w), q.clone())).collect();
    let usage = usage.iter().map(|(w, u)| (ws(*w), u.clone())).collect();
    arbitrate(ArbitrationInput {
        claims,
        nodes,
        quotas: &quotas,
        usage: &usage,
    })
}

fn grant(c: usize, n: usize) -> Assignment {
    Assignment {
        claim: claim_id(c),
        node: node_id(n),
    }
}

fn cap(micros: i64) -> Quota {
    Quota {
        max_claims: None,
        max_hourly_spend: Some(Money::from_micros(micros)),
        ..Default::default()
    }
}

#[test]
fn priority_beats_age() {
    let claims = [claim(1, 0, 0, 10, 1), claim(2, 0, 5, 99, 1)];
    let out = run(&claims, &[node(1, 2, 1, 100)], &[], &[]);
    assert_eq!(out.grants, vec![grant(2, 1)]);
    assert_eq!(
        out.waiting,
        vec![(claim_id(1), PendingReason::WaitingForCapacity)]
    );
}

#[test]
fn age_then_id_break_priority_ties() {
    let claims = [
        claim(3, 0, 1, 5, 1),
        claim(2, 0, 1, 7, 1),
        claim(1, 0, 1, 5, 1),
    ];
    let out = run(&claims, &[node(1, 2, 2, 100)], &[], &[]);
    assert_eq!(out.grants, vec![grant(1, 1), grant(3, 1)]);
    assert_eq!(
        out.waiting,
        vec![(claim_id(2), PendingReason::WaitingForCapacity)]
    );
}

#[test]
fn best_fit_picks_smaller_node() {
    // The big node is listed first and is cheaper: size still wins.
    let nodes = [node(1, 8, 1, 10), node(2, 2, 1, 1_000)];
    let claims = [claim(1, 0, 9, 0, 2), claim(2, 0, 0, 0, 4)];
    let out = run(&claims, &nodes, &[], &[]);
    assert_eq!(out.grants, vec![grant(1, 2), grant(2, 1)]);
    assert!(out.waiting.is_empty());
}

#[test]
fn best_fit_breaks_ties_by_share_then_node_id() {
    // Same shape: per-claim share 500 (1000 / 2) beats 600, then id.
    let nodes = [
        node(3, 4, 1, 600),
        node(2, 4, 2, 1_000),
        node(1, 4, 2, 1_000),
    ];
    let claims: Vec<_> = (0..5).map(|i| claim(i, 0, 0, i as u64, 1)).collect();
    let out = run(&claims, &nodes, &[], &[]);
    assert_eq!(
        out.grants,
        vec![
            grant(0, 1),
            grant(1, 1),
            grant(2, 2),
            grant(3, 2),
            grant(4, 3)
        ]
    );
}

#[test]
fn dollar_cap_exact_boundary() {
    // Share of 1_000_001 over 2 slots rounds up to 500_001.
    let nodes = [node(1, 2, 2, 1_000_001)];
    let claims = [claim(1, 0, 0, 0, 1)];
    let used = |spend| Usage {
        claims: 1,
        hourly_spend: Money::from_micros(spend),
    };

    let at_cap = run(
        &claims,
        &nodes,
        &[(0, cap(1_000_000))],
        &[(0, used(499_999))],
    );
    assert_eq!(
        at_cap.grants,
        vec![grant(1, 1)],
        "spend equal to the cap is allowed"
    );

    let over = run(
        &claims,
        &nodes,
        &[(0, cap(1_000_000))],
        &[(0, used(500_000))],
    );
    assert!(over.grants.is_empty());
    assert_eq!(
        over.waiting,
        vec![(
            claim_id(1),
            PendingReason::DollarCapExceeded {
                cap_micros_per_hour: 1_000_000
            }
        )]
    );
}

#[test]
fn dollar_cap_counts_this_rounds_grants() {
    let nodes = [node(1, 2, 1, 400), node(2, 2, 1, 400), node(3, 2, 1, 400)];
    let claims = [
        claim(1, 0, 0, 0, 1),
        claim(2, 0, 0, 1, 1),
        claim(3, 0, 0, 2, 1),
    ];
    let out = run(&claims, &nodes, &[(0, cap(800))], &[]);
    assert_eq!(out.grants, vec![grant(1, 1), grant(2, 2)]);
    assert_eq!(
        out.waiting,
        vec![(
            claim_id(3),
            PendingReason::DollarCapExceeded {
                cap_micros_per_hour: 800
            }
        )]
    );
}

#[test]
fn capped_claim_takes_an_affordable_larger_node() {
    let nodes = [node(1, 2, 1, 900), node(2, 8, 1, 300)];
    let out = run(&[claim(1, 0, 0, 0, 1)], &nodes, &[(0, cap(500))], &[]);
    assert_eq!(out.grants, vec![grant(1, 2)]);
}

#[test]
fn claim_quota_blocks_only_its_workspace() {
    let quota = Quota {
        max_claims: Some(2),
        max_hourly_spend: None,
        ..Default::default()
    };
    let usage = Usage {
        claims: 1,
        hourly_spend: Money::ZERO,
    };
    let claims = [
        claim(1, 0, 9, 0, 1),
        claim(2, 0, 9, 1, 1),
        claim(3, 1, 0, 0, 1),
    ];
    let out = run(&claims, &[node(1, 2, 3, 100)], &[(0, quota)], &[(0, usage)]);
    assert_eq!(out.grants, vec![grant(1, 1), grant(3, 1)]);
    assert_eq!(
        out.waiting,
        vec![(claim_id(2), PendingReason::QuotaExceeded { max_claims: 2 })]
    );
}

#[test]
fn unusable_nodes_are_skipped() {
    let mut full = node(1, 2, 2, 100);
    full.free_slots = 0;
    let mut no_slots = node(2, 2, 0, 100);
    no_slots.free_slots = 1;
    let out = run(&[claim(1, 0, 0, 0, 1)], &[full, no_slots], &[], &[]);
    assert!(out.grants.is_empty());
    assert_eq!(
        out.waiting,
        vec![(claim_id(1), PendingReason::WaitingForCapacity)]
    );
}

#[test]
fn duplicate_claim_id_keeps_first_in_service_order() {
    // Same id twice: the higher-priority copy (needing 4 cpus) is the one served.
    let claims = [claim(1, 0, 0, 0, 1), claim(1, 0, 5, 0, 4)];
    let out = run(&claims, &[node(1, 2, 1, 100), node(2, 4, 1, 100)], &[], &[]);
    assert_eq!(out.grants, vec![grant(1, 2)]);
    assert!(out.waiting.is_empty());
}

#[test]
fn labels_and_arch_must_match() {
    let mut gpu = node(1, 4, 1, 100);
    gpu.resources.labels.insert("gpu".into(), "a".into());
    gpu.resources.labels.insert("zone".into(), "b".into());
    let mut arm = node(2, 2, 1, 100);
    arm.resources.arch = Arch::Aarch64;
    let mut wants_gpu = claim(1, 0, 0, 0, 1);
    wants_gpu
        .requirements
        .labels
        .insert("gpu".into(), "a".into());
    let mut wants_x86 = claim(2, 0, 0, 1, 1);
    wants_x86.requirements.arch = Some(Arch::X86_64);
    let out = run(&[wants_gpu, wants_x86], &[gpu, arm], &[], &[]);
    assert_eq!(out.grants, vec![grant(1, 1)]);
    assert_eq!(
        out.waiting,
        vec![(claim_id(2), PendingReason::WaitingForCapacity)]
    );
}
