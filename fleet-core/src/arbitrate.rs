//! Arbitration: which pending claim gets which node.
//!
//! [`arbitrate`] is a pure, deterministic function of its inputs: no clock,
//! no I/O, no randomness, and the same result whatever order the inputs come
//! in.
//!
//! How a round works, and why it is fast enough for 10 000 claims × 10 000
//! nodes (DESIGN.md, performance targets):
//!
//! 1. Claims are put in service order (priority desc, `enqueued_at` asc, id
//!    asc) and served one at a time, greedily: each takes its best-fit node
//!    among those with a free slot at its turn.
//! 2. Instead of scanning every node for every claim, usable nodes are indexed
//!    once: grouped by what a claim matches exactly (pool, arch, label set),
//!    and inside a group by shape `(cpus, memory_mb)`. A shape keeps its nodes
//!    sorted by (per-claim price, node id) with a cursor at the cheapest one
//!    that still has a slot, so taking a slot is O(1); used-up shapes are
//!    dropped from their group in batches. A claim scans the shapes of the groups it can use
//!    from its cpu requirement upwards and stops at the first fit; real fleets
//!    have a handful of shapes, so this is a short scan.
//!
//! Cost: two sorts (claims, nodes), one pass to build the index, then per
//! claim a scan over the shapes of its matching groups — one binary search
//! per cpu count whose memory is too small, one step per shape over budget
//! or used up. The `arbitrate` bench measures the target case (a few shapes)
//! and a stress case where nearly every node is its own shape.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

use serde::{Deserialize, Serialize};

use crate::ids::{ClaimId, Millis, NodeId, PoolName, Workspace};
use crate::money::{HourlyPrice, Money, Rounding};
use crate::protocol::{Arch, NodeResources, PendingReason, Requirements};

/// A claim waiting for a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingClaim {
    /// The claim.
    pub id: ClaimId,
    /// Its workspace.
    pub workspace: Workspace,
    /// Its pool.
    pub pool: PoolName,
    /// What it needs.
    pub requirements: Requirements,
    /// Higher first.
    pub priority: i32,
    /// When it arrived.
    pub enqueued_at: Millis,
}

/// A node that can take claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCapacity {
    /// The node.
    pub id: NodeId,
    /// Its pool.
    pub pool: PoolName,
    /// What it offers.
    pub resources: NodeResources,
    /// Claims it can serve at once.
    pub slots: u32,
    /// Free slots now.
    pub free_slots: u32,
    /// Its hourly price (a claim is charged `price / slots`).
    pub price: HourlyPrice,
}

/// Limits of one workspace, on the node slots it holds: claims and jobs
/// count alike.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    /// Most claims held at once.
    #[serde(default)]
    pub max_claims: Option<u32>,
    /// Most spend per hour across held claims.
    #[serde(default)]
    pub max_hourly_spend: Option<Money>,
    /// Most spend attributed to the workspace in one UTC hour
    /// (micro-dollars); past it new claims and jobs wait for the next hour
    /// (or are rejected, see `over_budget`). Enforced by the controller.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hourly_budget: Option<Money>,
    /// Most spend attributed to the workspace in one UTC day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_budget: Option<Money>,
    /// What a claim beyond a budget gets: `wait` (default) for the next
    /// window, or `reject` at once.
    #[serde(default)]
    pub over_budget: OverBudget,
}

/// What a claim past its workspace's budget gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OverBudget {
    /// It waits until the window resets.
    #[default]
    Wait,
    /// It is rejected, naming the budget.
    Reject,
}

/// What a workspace holds now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Claims held.
    pub claims: u32,
    /// Hourly spend of the claims held.
    pub hourly_spend: Money,
}

/// Inputs of one arbitration round.
#[derive(Debug, Clone, Copy)]
pub struct ArbitrationInput<'a> {
    /// Pending claims (any order).
    pub claims: &'a [PendingClaim],
    /// Nodes (any order).
    pub nodes: &'a [NodeCapacity],
    /// Per-workspace limits; absent means unlimited.
    pub quotas: &'a BTreeMap<Workspace, Quota>,
    /// Per-workspace current holdings; absent means none.
    pub usage: &'a BTreeMap<Workspace, Usage>,
}

/// One grant decided.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Assignment {
    /// The claim.
    pub claim: ClaimId,
    /// The node.
    pub node: NodeId,
}

/// The result of a round.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// Grants, in service order.
    pub grants: Vec<Assignment>,
    /// Claims left waiting, with why, in service order.
    pub waiting: Vec<(ClaimId, PendingReason)>,
}

/// Assigns pending claims to free node slots.
///
/// Semantics, in the order they apply:
///
/// - **Service order**: priority descending, then `enqueued_at` ascending,
///   then claim id ascending. `grants` and `waiting` both come out in this
///   order.
/// - **Duplicate claim ids**: only the first claim of an id in service order
///   is served; the others are dropped and appear nowhere in the outcome
///   (a claim id is the idempotency key of a request, so a duplicate is a
///   retry, not a second claim). Duplicates that tie on the whole service key
///   are told apart by workspace, pool and requirements, so the pick does not
///   depend on input order.
/// - **Duplicate node ids**: the nodes are ordered by id (ties by pool,
///   resources, slots, free slots, price) and only the first of each id is
///   used; the others are ignored.
/// - **Feasible node**: same pool, [`Requirements::satisfied_by`] its
///   resources, `slots > 0` and a free slot left in this round. A node never
///   gets more grants than its `free_slots`.
/// - **Per-claim share** of a node: `price / slots`, rounded up.
/// - **Quotas** (absent = unlimited): `max_claims` bounds `usage.claims` plus
///   this round's grants; `max_hourly_spend` bounds `usage.hourly_spend` plus
///   the shares of this round's grants (equal to the cap is allowed). A claim
///   whose workspace is at `max_claims` waits with
///   [`PendingReason::QuotaExceeded`]. The dollar cap restricts which nodes a
///   claim may take: it gets the best fit among the feasible nodes it can
///   afford, and waits with [`PendingReason::DollarCapExceeded`] only when
///   feasible nodes exist but none is affordable. Later claims of other
///   workspaces are served as usual.
/// - **Best fit**: the smallest `(cpus, memory_mb)`, then the lowest
///   per-claim share, then the lowest node id.
/// - **Work-conserving**: a claim with no feasible node at its turn waits
///   with [`PendingReason::WaitingForCapacity`]; no other claim waits for
///   capacity.
///
/// The result is a function of the set of claims, nodes, quotas and usage:
/// any permutation of the inputs gives the same [`Outcome`].
pub fn arbitrate(input: ArbitrationInput<'_>) -> Outcome {
    let claims = service_order(input.claims);
    let nodes = distinct_nodes(input.nodes);
    let mut index = NodeIndex::build(&nodes);
    let mut accounts = Accounts::new(input.quotas, input.usage);
    // Many claims share a (pool, arch, labels) requirement; which groups can
    // serve it is worked out once per distinct requirement.
    let mut matching: FxHashMap<GroupKey<'_>, Vec<usize>> = FxHashMap::default();

    let mut out = Outcome {
        grants: Vec::with_capacity(claims.len().min(nodes.len())),
        waiting: Vec::new(),
    };
    for claim in claims {
        let account = accounts.get(&claim.workspace);
        if let Some(max_claims) = account.max_claims
            && account.claims >= u64::from(max_claims)
        {
            out.waiting.push((
                claim.id.clone(),
                PendingReason::QuotaExceeded { max_claims },
            ));
            continue;
        }
        let req = &claim.requirements;
        let groups = matching
            .entry((&claim.pool, req.arch, &req.labels))
            .or_insert_with(|| index.groups_matching(&claim.pool, req.arch, &req.labels));
        match index.best_fit(groups, req, account.budget()) {
            Fit::Found(at) => {
                let (node, share) = index.take(at);
                account.claims += 1;
                account.spend += i128::from(share.micros());
                out.grants.push(Assignment {
                    claim: claim.id.clone(),
                    node: nodes[node].id.clone(),
                });
            }
            Fit::Unaffordable => {
                // Only reachable with a cap: without one every node is affordable.
                let cap_micros_per_hour = account.cap.map_or(i64::MAX, Money::micros);
                out.waiting.push((
                    claim.id.clone(),
                    PendingReason::DollarCapExceeded {
                        cap_micros_per_hour,
                    },
                ));
            }
            Fit::None => out
                .waiting
                .push((claim.id.clone(), PendingReason::WaitingForCapacity)),
        }
    }
    out
}

/// Claims in service order, first of each id only.
fn service_order(claims: &[PendingClaim]) -> Vec<&PendingClaim> {
    let mut sorted: Vec<&PendingClaim> = claims.iter().collect();
    // Unstable is fine: the comparison is total over every field, so equal
    // elements are identical.
    sorted.sort_unstable_by(|a, b| {
        service_key(a.priority, a.enqueued_at, &a.id)
            .cmp(&service_key(b.priority, b.enqueued_at, &b.id))
            .then_with(|| claim_tiebreak(a, b))
    });
    let mut seen: HashSet<&ClaimId, BuildFx> =
        HashSet::with_capacity_and_hasher(sorted.len(), BuildFx::default());
    sorted.retain(|c| seen.insert(&c.id));
    sorted
}

/// A claim's place in the service order: priority descending, then
/// `enqueued_at`, then claim id (the controller sorts its own claims by
/// it to feed a round only as far as free slots last).
pub(crate) fn service_key(
    priority: i32,
    enqueued_at: Millis,
    id: &ClaimId,
) -> (std::cmp::Reverse<i32>, Millis, &ClaimId) {
    (std::cmp::Reverse(priority), enqueued_at, id)
}

/// Orders claims that tie on the service key (same id, priority and age).
fn claim_tiebreak(a: &PendingClaim, b: &PendingClaim) -> Ordering {
    let (ra, rb) = (&a.requirements, &b.requirements);
    a.workspace
        .cmp(&b.workspace)
        .then_with(|| a.pool.cmp(&b.pool))
        .then(ra.cpus.cmp(&rb.cpus))
        .then(ra.memory_mb.cmp(&rb.memory_mb))
        .then(ra.arch.cmp(&rb.arch))
        .then_with(|| ra.labels.cmp(&rb.labels))
}

/// Nodes ordered by id, first of each id only. A node's position in this
/// list is its rank: comparing ranks compares ids.
fn distinct_nodes(nodes: &[NodeCapacity]) -> Vec<&NodeCapacity> {
    let mut sorted: Vec<&NodeCapacity> = nodes.iter().collect();
    sorted.sort_unstable_by(|a, b| {
        a.id.cmp(&b.id).then_with(|| {
            a.pool
                .cmp(&b.pool)
                .then(a.resources.cpus.cmp(&b.resources.cpus))
                .then(a.resources.memory_mb.cmp(&b.resources.memory_mb))
                .then(a.resources.arch.cmp(&b.resources.arch))
                .then_with(|| a.resources.labels.cmp(&b.resources.labels))
                .then(a.slots.cmp(&b.slots))
                .then(a.free_slots.cmp(&b.free_slots))
                .then(a.price.cmp(&b.price))
        })
    });
    sorted.dedup_by(|later, first| later.id == first.id);
    sorted
}

/// What a claim asks for that must match a node exactly (labels: as a
/// subset), borrowed from the inputs.
type GroupKey<'a> = (&'a PoolName, Option<Arch>, &'a BTreeMap<String, String>);

/// One node with slots left, inside a [`Shape`].
#[derive(Debug, Clone, Copy)]
struct Slot {
    /// Per-claim share of the node's price.
    share: Money,
    /// Position in the distinct node list (orders like the node id).
    rank: usize,
    /// Slots left in this round.
    free: u32,
}

/// The nodes of one group with the same `(cpus, memory_mb)`.
#[derive(Debug)]
struct Shape {
    cpus: u32,
    memory_mb: u64,
    /// Sorted by (share, rank): best fit first among equal shapes.
    slots: Vec<Slot>,
    /// Index of the first entry of `slots` that still has a free slot.
    next: usize,
}

impl Shape {
    fn cheapest(&self) -> Option<&Slot> {
        self.slots.get(self.next)
    }
}

/// Nodes of one (pool, arch, labels), by shape.
#[derive(Debug)]
struct Group<'a> {
    pool: &'a PoolName,
    arch: Arch,
    labels: &'a BTreeMap<String, String>,
    /// Sorted by (cpus, memory_mb).
    shapes: Vec<Shape>,
    /// How many of `shapes` have no slot left (removed in batches).
    used_up: usize,
}

/// Where a best fit was found: group, and shape position inside it.
#[derive(Debug, Clone, Copy)]
struct At {
    group: usize,
    shape: usize,
}

/// The result of a best-fit search.
#[derive(Debug)]
enum Fit {
    /// The best fit the claim can afford.
    Found(At),
    /// Feasible nodes exist, but the claim's workspace cannot afford any.
    Unaffordable,
    /// No feasible node has a slot left.
    None,
}

/// Usable nodes, indexed for best-fit search.
#[derive(Debug)]
struct NodeIndex<'a> {
    /// One per distinct (pool, arch, labels) among usable nodes.
    groups: Vec<Group<'a>>,
}

impl<'a> NodeIndex<'a> {
    /// Indexes the nodes that can take a claim now: a slot count, a free slot
    /// and a computable share.
    fn build(nodes: &[&'a NodeCapacity]) -> NodeIndex<'a> {
        // Group keys are interned through a hash map: comparing label maps
        // in an ordered map was the most expensive part of a round.
        let mut group_of: FxHashMap<GroupKeyOwned<'a>, usize> = FxHashMap::default();
        let mut shapes_of: Vec<BTreeMap<(u32, u64), Vec<Slot>>> = Vec::new();
        let mut keys: Vec<GroupKeyOwned<'a>> = Vec::new();
        for (rank, node) in nodes.iter().enumerate() {
            if node.free_slots == 0 {
                continue;
            }
            // Slots 0 has no per-claim share: the node is unusable.
            let Some(share) = node.price.0.mul_div(1, u64::from(node.slots), Rounding::Up) else {
                continue;
            };
            let r = &node.resources;
            let key = (&node.pool, r.arch, &r.labels);
            let group = *group_of.entry(key).or_insert_with(|| {
                keys.push(key);
                shapes_of.push(BTreeMap::new());
                keys.len() - 1
            });
            shapes_of[group]
                .entry((r.cpus, r.memory_mb))
                .or_default()
                .push(Slot {
                    share,
                    rank,
                    free: node.free_slots,
                });
        }
        // Groups are numbered in node-id order of their first node, so the
        // numbering is itself independent of input order.
        let groups = keys
            .into_iter()
            .zip(shapes_of)
            .map(|((pool, arch, labels), shapes)| Group {
                pool,
                arch,
                labels,
                used_up: 0,
                // A BTreeMap iterates in (cpus, memory_mb) order.
                shapes: shapes
                    .into_iter()
                    .map(|((cpus, memory_mb), mut slots)| {
                        slots.sort_unstable_by_key(|s| (s.share, s.rank));
                        Shape {
                            cpus,
                            memory_mb,
                            slots,
                            next: 0,
                        }
                    })
                    .collect(),
            })
            .collect();
        NodeIndex { groups }
    }

    /// Groups whose nodes match a claim's pool, arch and labels (the node's
    /// labels must be a superset of the claim's).
    fn groups_matching(
        &self,
        pool: &PoolName,
        arch: Option<Arch>,
        labels: &BTreeMap<String, String>,
    ) -> Vec<usize> {
        self.groups
            .iter()
            .enumerate()
            .filter(|(_, g)| {
                g.pool == pool
                    && arch.is_none_or(|a| a == g.arch)
                    && labels.iter().all(|(k, v)| g.labels.get(k) == Some(v))
            })
            .map(|(i, _)| i)
            .collect()
    }

    /// The best fit for `req` among `groups` whose share is within `budget`
    /// (`None`: unlimited).
    fn best_fit(&self, groups: &[usize], req: &Requirements, budget: Option<i128>) -> Fit {
        // (cpus, memory_mb, share, rank) of the best so far, and where.
        let mut best: Option<((u32, u64, Money, usize), At)> = None;
        let mut unaffordable = false;
        for &group in groups {
            let shapes = &self.groups[group].shapes;
            let mut i = shapes.partition_point(|s| s.cpus < req.cpus);
            while let Some(shape) = shapes.get(i) {
                // Shapes are in (cpus, memory_mb) order: once past the best
                // shape found so far, nothing later in this group can win.
                if let Some(((cpus, memory_mb, ..), _)) = best
                    && (shape.cpus, shape.memory_mb) > (cpus, memory_mb)
                {
                    break;
                }
                if shape.memory_mb < req.memory_mb {
                    // Jump over the rest of this cpu count's too-small shapes
                    // at once: keeps the scan short when a group has many
                    // memory sizes per cpu count.
                    i += shapes[i..]
                        .partition_point(|s| s.cpus == shape.cpus && s.memory_mb < req.memory_mb);
                    continue;
                }
                let Some(slot) = shape.cheapest() else {
                    i += 1;
                    continue;
                };
                // The cheapest of the shape is over budget: so is the rest.
                if budget.is_some_and(|b| i128::from(slot.share.micros()) > b) {
                    unaffordable = true;
                    i += 1;
                    continue;
                }
                let key = (shape.cpus, shape.memory_mb, slot.share, slot.rank);
                if best.is_none_or(|(k, _)| key < k) {
                    best = Some((key, At { group, shape: i }));
                }
                // The first affordable fit is this group's best.
                break;
            }
        }
        match best {
            Some((_, at)) => Fit::Found(at),
            None if unaffordable => Fit::Unaffordable,
            None => Fit::None,
        }
    }

    /// Uses one slot of the node `best_fit` found; returns its rank and share.
    fn take(&mut self, at: At) -> (usize, Money) {
        let group = &mut self.groups[at.group];
        let shape = &mut group.shapes[at.shape];
        let slot = &mut shape.slots[shape.next];
        let taken = (slot.rank, slot.share);
        slot.free -= 1;
        if slot.free == 0 {
            shape.next += 1;
            if shape.next == shape.slots.len() {
                // Used-up shapes are dropped in batches, once they are half
                // the group: scans stay at most twice as long as needed, and
                // a group with thousands of one-node shapes does not pay a
                // Vec::remove per grant.
                group.used_up += 1;
                if group.used_up * 2 > group.shapes.len() {
                    group.shapes.retain(|s| s.cheapest().is_some());
                    group.used_up = 0;
                }
            }
        }
        taken
    }
}

/// [`GroupKey`] of a node: the arch is known.
type GroupKeyOwned<'a> = (&'a PoolName, Arch, &'a BTreeMap<String, String>);

/// A workspace's quota and what it holds, updated as the round grants.
#[derive(Debug, Default)]
struct Account {
    max_claims: Option<u32>,
    cap: Option<Money>,
    /// Claims held, including this round's grants.
    claims: u64,
    /// Hourly spend in micro-dollars, including this round's grants; i128 so
    /// the sum is exact.
    spend: i128,
}

impl Account {
    /// How much more per hour the workspace may spend; `None`: no cap.
    fn budget(&self) -> Option<i128> {
        self.cap.map(|cap| i128::from(cap.micros()) - self.spend)
    }
}

/// Accounts of the workspaces met so far in the round.
#[derive(Debug)]
struct Accounts<'a> {
    quotas: &'a BTreeMap<Workspace, Quota>,
    usage: &'a BTreeMap<Workspace, Usage>,
    open: FxHashMap<&'a Workspace, Account>,
}

impl<'a> Accounts<'a> {
    fn new(
        quotas: &'a BTreeMap<Workspace, Quota>,
        usage: &'a BTreeMap<Workspace, Usage>,
    ) -> Accounts<'a> {
        Accounts {
            quotas,
            usage,
            open: FxHashMap::default(),
        }
    }

    fn get(&mut self, workspace: &'a Workspace) -> &mut Account {
        let (quotas, usage) = (self.quotas, self.usage);
        self.open.entry(workspace).or_insert_with(|| {
            let quota = quotas.get(workspace);
            let used = usage.get(workspace);
            Account {
                max_claims: quota.and_then(|q| q.max_claims),
                cap: quota.and_then(|q| q.max_hourly_spend),
                claims: used.map_or(0, |u| u64::from(u.claims)),
                spend: used.map_or(0, |u| i128::from(u.hourly_spend.micros())),
            }
        })
    }
}

/// The multiply-rotate hash rustc uses (FxHash). The maps here are keyed by
/// ids and label sets built by this process, are only used for lookups (never
/// iterated into the outcome), and SipHash's flood resistance is not needed
/// for a round's worth of inputs; Fx is several times faster on short
/// strings, and its fixed seed keeps runs reproducible.
#[derive(Debug, Default, Clone, Copy)]
struct FxHasher(u64);

const FX_SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(FX_SEED);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type BuildFx = BuildHasherDefault<FxHasher>;
type FxHashMap<K, V> = HashMap<K, V, BuildFx>;
