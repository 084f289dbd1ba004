//! The [`Provider`] conformance suite.
//!
//! Every provider backend runs it against itself from its own tests:
//!
//! ```ignore
//! #[tokio::test]
//! async fn conformance() {
//!     let provider = MyProvider::new(/* pointed at a fake or sandbox */);
//!     // `run` is unique per run so runs can share an account; `image` is a
//!     // base image the backend can boot.
//!     fleet_core::testkit::provider::provider_suite(&provider, "run42", "ami-12345678").await;
//! }
//! ```
//!
//! The suite reads [`Capabilities`] and checks that each operation works
//! when they say so and answers [`ProviderError::Unsupported`] when they do
//! not. It creates at most seven instances, never more than two at once,
//! all tagged [`TAG_NAMESPACE`]` = fleet-conformance-<run>` and a
//! [`TAG_FLEET`], and deletes them all. It accepts the in-between states
//! (`Stopping`, `Pending`) a real cloud reports right after a call; a
//! backend whose cloud needs time between a stop and a start should make
//! its `start` wait.

use std::collections::{BTreeMap, BTreeSet};

use crate::ids::{InstanceType, NodeId, PoolName};
use crate::money::Money;
use crate::provider::{
    BootSource, Capabilities, Instance, InstanceRef, InstanceState, Market, NodeSpec, Offering,
    Provider, ProviderError, TAG_FLEET, TAG_NAMESPACE, TAG_NODE, TAG_POOL, TagFilter,
};

/// The tag the suite sets to tell its instances apart.
const TAG_CASE: &str = "fleet-conformance-case";

/// The fleet id the suite's instances carry.
const FLEET: &str = "conformance-a";

/// Another fleet sharing the account and the namespace.
const OTHER_FLEET: &str = "conformance-b";

/// Runs every provider check. `run` is a token unique to this run (at most
/// 40 characters of ASCII letters, digits, `-`, `_`); `image` is the base
/// image created instances boot from.
pub async fn provider_suite(provider: &dyn Provider, run: &str, image: &str) {
    let offerings = offerings_sane(provider).await;
    billing_consistent(provider);
    let ctx = Ctx::new(run, image, offerings);
    create_idempotent_and_tags(provider, &ctx).await;
    fleets_keep_apart(provider, &ctx).await;
    lifecycle_per_capabilities(provider, &ctx).await;
    spot_per_capabilities(provider, &ctx).await;
    let left = list(provider, &ctx.namespace_filter()).await;
    assert!(
        left.is_empty(),
        "instances of this run are still listed after the suite deleted them: {left:?}"
    );
}

/// What one run needs to build specs.
struct Ctx {
    run: String,
    image: String,
    pool: PoolName,
    offerings: Vec<Offering>,
}

impl Ctx {
    fn new(run: &str, image: &str, offerings: Vec<Offering>) -> Ctx {
        Ctx {
            run: run.to_owned(),
            image: image.to_owned(),
            pool: PoolName::new("conformance")
                .unwrap_or_else(|e| panic!("the suite's pool name is invalid: {e}")),
            offerings,
        }
    }

    fn namespace(&self) -> String {
        format!("fleet-conformance-{}", self.run)
    }

    fn namespace_filter(&self) -> TagFilter {
        TagFilter(BTreeMap::from([(
            TAG_NAMESPACE.to_owned(),
            self.namespace(),
        )]))
    }

    /// What a fleet lists: its namespace and its fleet id.
    fn fleet_filter(&self, fleet: &str) -> TagFilter {
        let mut f = self.namespace_filter();
        f.0.insert(TAG_FLEET.to_owned(), fleet.to_owned());
        f
    }

    fn node(&self, case: &str) -> NodeId {
        let s = format!("{}-{case}", self.run);
        NodeId::new(s.as_str())
            .unwrap_or_else(|e| panic!("node id {s:?} from `run` is invalid: {e}"))
    }

    /// The cheapest on-demand offering: the suite's default type.
    fn cheapest(&self) -> &Offering {
        match self.offerings.iter().min_by_key(|o| o.on_demand.0) {
            Some(o) => o,
            None => panic!("no offerings (checked earlier)"),
        }
    }

    fn spec(&self, case: &str, ty: &InstanceType, market: Market, source: BootSource) -> NodeSpec {
        let node = self.node(case);
        let tags = BTreeMap::from([
            (TAG_NODE.to_owned(), node.as_str().to_owned()),
            (TAG_POOL.to_owned(), self.pool.as_str().to_owned()),
            (TAG_NAMESPACE.to_owned(), self.namespace()),
            (TAG_FLEET.to_owned(), FLEET.to_owned()),
            (TAG_CASE.to_owned(), case.to_owned()),
        ]);
        NodeSpec {
            node,
            pool: self.pool.clone(),
            instance_type: ty.clone(),
            market,
            source,
            tags,
            bootstrap_token: None,
        }
    }

    fn image(&self) -> BootSource {
        BootSource::Image {
            image: self.image.clone(),
        }
    }
}

async fn list(provider: &dyn Provider, filter: &TagFilter) -> Vec<Instance> {
    provider
        .list(filter)
        .await
        .unwrap_or_else(|e| panic!("list({filter:?}) failed: {e}"))
}

async fn create(provider: &dyn Provider, spec: &NodeSpec) -> Instance {
    provider
        .create(spec)
        .await
        .unwrap_or_else(|e| panic!("create of node {} failed: {e}", spec.node))
}

async fn delete(provider: &dyn Provider, r: &InstanceRef) {
    provider
        .delete(r)
        .await
        .unwrap_or_else(|e| panic!("delete of node {} failed: {e}", r.node));
}

fn expect_unsupported<T: std::fmt::Debug>(what: &str, result: Result<T, ProviderError>) {
    match result {
        Err(ProviderError::Unsupported(_)) => {}
        other => {
            panic!("{what}: the capabilities say no, so it must be Unsupported; got {other:?}")
        }
    }
}

/// Offerings exist and are sane: unique types, cpus and memory above zero,
/// prices not negative, spot cheaper than on-demand and sold only when the
/// capabilities say `spot`. Returns them.
pub async fn offerings_sane(provider: &dyn Provider) -> Vec<Offering> {
    let offerings = provider
        .offerings()
        .await
        .unwrap_or_else(|e| panic!("offerings() failed: {e}"));
    assert!(!offerings.is_empty(), "offerings() must not be empty");
    let mut seen = BTreeSet::new();
    for o in &offerings {
        let ty = &o.instance_type;
        assert!(seen.insert(ty.clone()), "offering {ty} is listed twice");
        assert!(o.cpus > 0, "offering {ty} has 0 cpus");
        assert!(o.memory_mb > 0, "offering {ty} has 0 memory");
        assert!(
            o.on_demand.0 >= Money::ZERO,
            "offering {ty} has a negative price"
        );
        if let Some(spot) = &o.spot {
            assert!(
                provider.capabilities().spot,
                "offering {ty} has spot terms but the capabilities say no spot"
            );
            assert!(
                spot.price.0 >= Money::ZERO,
                "offering {ty} has a negative spot price"
            );
            assert!(
                spot.price.0 <= o.on_demand.0,
                "offering {ty}: spot price above on-demand"
            );
        }
    }
    offerings
}

/// The billing model agrees with the capabilities: no negative prices, and a
/// positive boot latency for every boot path the provider supports.
pub fn billing_consistent(provider: &dyn Provider) {
    let caps: &Capabilities = provider.capabilities();
    let billing = provider.billing();
    assert!(
        billing.disk_per_gb_month.0 >= Money::ZERO,
        "billing: negative disk price"
    );
    assert!(
        billing.snapshot_per_gb_month.0 >= Money::ZERO,
        "billing: negative snapshot price"
    );
    assert!(
        billing.boot.image_ms > 0,
        "billing: booting from an image takes 0 ms"
    );
    if caps.snapshot {
        assert!(
            billing.boot.snapshot_ms > 0,
            "billing: snapshot boots supported but take 0 ms"
        );
    }
    if caps.stop_start {
        assert!(
            billing.boot.stopped_ms > 0,
            "billing: start supported but takes 0 ms"
        );
    }
    if caps.resize {
        assert!(
            billing.boot.resize_ms > 0,
            "billing: resize supported but takes 0 ms"
        );
    }
    if caps.resize_requires_stop {
        assert!(
            caps.resize,
            "capabilities: resize_requires_stop without resize"
        );
    }
}

/// `create` is idempotent by node id, tags round-trip, and [`TagFilter`]
/// selects by them; deleting removes an instance from `list`, and deleting
/// twice succeeds.
async fn create_idempotent_and_tags(provider: &dyn Provider, ctx: &Ctx) {
    let ty = ctx.cheapest().instance_type.clone();
    let spec_a = ctx.spec("a", &ty, Market::OnDemand, ctx.image());
    let spec_b = ctx.spec("b", &ty, Market::OnDemand, ctx.image());

    let a = create(provider, &spec_a).await;
    assert_eq!(
        a.node, spec_a.node,
        "create returned another node's instance"
    );
    assert_eq!(a.instance_type, ty, "create returned the wrong type");
    assert_eq!(
        a.market,
        Market::OnDemand,
        "create returned the wrong market"
    );
    assert!(
        matches!(a.state, InstanceState::Pending | InstanceState::Running),
        "a new instance must be Pending or Running, got {:?}",
        a.state
    );
    for (k, v) in &spec_a.tags {
        assert_eq!(
            a.tags.get(k),
            Some(v),
            "tag {k} did not round-trip through create"
        );
    }
    let again = create(provider, &spec_a).await;
    assert_eq!(
        again.provider_id, a.provider_id,
        "create twice for node {} made two instances; create must be idempotent by node id",
        a.node
    );

    let b = create(provider, &spec_b).await;
    assert_ne!(
        b.provider_id, a.provider_id,
        "two nodes got the same provider id"
    );

    let all = list(provider, &ctx.namespace_filter()).await;
    let nodes: Vec<&str> = all.iter().map(|i| i.node.as_str()).collect();
    assert_eq!(all.len(), 2, "list must show each node once; got {nodes:?}");
    assert!(
        all.iter().any(|i| i.provider_id == a.provider_id),
        "list is missing node a"
    );
    for i in &all {
        let spec = if i.node == spec_a.node {
            &spec_a
        } else {
            &spec_b
        };
        for (k, v) in &spec.tags {
            assert_eq!(
                i.tags.get(k),
                Some(v),
                "tag {k} did not round-trip through list"
            );
        }
    }

    let mut only_a = ctx.namespace_filter();
    only_a.0.insert(TAG_CASE.to_owned(), "a".to_owned());
    let got = list(provider, &only_a).await;
    assert!(
        got.len() == 1 && got[0].node == spec_a.node,
        "list by tags {only_a:?} must return only node a, got {got:?}"
    );
    let mut none = ctx.namespace_filter();
    none.0
        .insert(TAG_CASE.to_owned(), "no-such-case".to_owned());
    let got = list(provider, &none).await;
    assert!(
        got.is_empty(),
        "list by tags matching nothing returned {got:?}"
    );

    delete(provider, &a.as_ref()).await;
    let got = list(provider, &ctx.namespace_filter()).await;
    assert!(
        got.iter().all(|i| i.node != spec_a.node),
        "a deleted instance is still listed: {got:?}"
    );
    delete(provider, &a.as_ref()).await;
    delete(provider, &b.as_ref()).await;
}

/// Two fleets sharing the account and the namespace never share an
/// instance: a `create` for a node id that fleet A's instance already has,
/// made by fleet B (another [`TAG_FLEET`]), must not return A's instance —
/// it creates B's own or fails with [`ProviderError::AlreadyExists`] — and
/// listing by B's tags never shows A's instance.
async fn fleets_keep_apart(provider: &dyn Provider, ctx: &Ctx) {
    let ty = ctx.cheapest().instance_type.clone();
    let spec_a = ctx.spec("fleets", &ty, Market::OnDemand, ctx.image());
    let mut spec_b = spec_a.clone();
    spec_b
        .tags
        .insert(TAG_FLEET.to_owned(), OTHER_FLEET.to_owned());

    let a = create(provider, &spec_a).await;
    let b = match provider.create(&spec_b).await {
        Ok(b) => {
            assert_ne!(
                b.provider_id, a.provider_id,
                "create for node {} by another fleet returned the first fleet's instance; \
                 create must adopt only an instance with the same node, namespace and fleet tags",
                spec_a.node
            );
            assert_eq!(
                b.tags.get(TAG_FLEET).map(String::as_str),
                Some(OTHER_FLEET),
                "the other fleet's instance must carry its own fleet tag"
            );
            Some(b)
        }
        Err(ProviderError::AlreadyExists(_)) => None,
        Err(e) => panic!(
            "create for node {} by another fleet must create its own instance or answer \
             AlreadyExists; got {e}",
            spec_a.node
        ),
    };

    let seen_b = list(provider, &ctx.fleet_filter(OTHER_FLEET)).await;
    assert!(
        seen_b.iter().all(|i| i.provider_id != a.provider_id),
        "list by the other fleet's tags shows the first fleet's instance: {seen_b:?}"
    );
    assert_eq!(
        seen_b.len(),
        usize::from(b.is_some()),
        "list by the other fleet's tags must show its own instance only: {seen_b:?}"
    );
    let seen_a = list(provider, &ctx.fleet_filter(FLEET)).await;
    assert!(
        seen_a.len() == 1 && seen_a[0].provider_id == a.provider_id,
        "list by the first fleet's tags must show its instance only: {seen_a:?}"
    );

    if let Some(b) = &b {
        delete(provider, &b.as_ref()).await;
    }
    // The other fleet's create or delete left the first fleet's instance be.
    let still = list(provider, &ctx.fleet_filter(FLEET)).await;
    assert!(
        still.iter().any(|i| i.provider_id == a.provider_id),
        "the first fleet's instance is gone after the other fleet's create/delete: {still:?}"
    );
    delete(provider, &a.as_ref()).await;
}

/// Stop, start, resize and snapshot each work when the capabilities say so
/// and are `Unsupported` when they do not; a snapshot can be booted from.
async fn lifecycle_per_capabilities(provider: &dyn Provider, ctx: &Ctx) {
    let caps = provider.capabilities().clone();
    let base = ctx.cheapest();
    let ty = base.instance_type.clone();
    let spec = ctx.spec("life", &ty, Market::OnDemand, ctx.image());
    let inst = create(provider, &spec).await;
    let r = inst.as_ref();

    // Another type of the same architecture to resize to, if one is sold.
    let target = ctx
        .offerings
        .iter()
        .find(|o| o.instance_type != ty && o.arch == base.arch)
        .map(|o| o.instance_type.clone());

    if caps.stop_start {
        if caps.resize
            && caps.resize_requires_stop
            && let Some(to) = &target
        {
            let res = provider.resize(&r, to).await;
            assert!(
                res.is_err(),
                "resize of a running instance must fail when resize_requires_stop; got {res:?}"
            );
        }
        let stopped = provider
            .stop(&r)
            .await
            .unwrap_or_else(|e| panic!("stop failed though capabilities allow it: {e}"));
        assert!(
            matches!(
                stopped.state,
                InstanceState::Stopping | InstanceState::Stopped
            ),
            "after stop the state must be Stopping or Stopped, got {:?}",
            stopped.state
        );
        if caps.resize
            && let Some(to) = &target
        {
            let resized = provider
                .resize(&r, to)
                .await
                .unwrap_or_else(|e| panic!("resize of a stopped instance to {to} failed: {e}"));
            assert_eq!(&resized.instance_type, to, "resize did not change the type");
        }
        let started = provider
            .start(&r)
            .await
            .unwrap_or_else(|e| panic!("start failed though capabilities allow it: {e}"));
        assert!(
            matches!(
                started.state,
                InstanceState::Pending | InstanceState::Running
            ),
            "after start the state must be Pending or Running, got {:?}",
            started.state
        );
    } else {
        expect_unsupported("stop", provider.stop(&r).await);
        expect_unsupported("start", provider.start(&r).await);
    }
    if !caps.resize {
        expect_unsupported("resize", provider.resize(&r, &ty).await);
    } else if !caps.resize_requires_stop
        && let Some(to) = &target
    {
        let resized = provider
            .resize(&r, to)
            .await
            .unwrap_or_else(|e| panic!("resize of a running instance to {to} failed: {e}"));
        assert_eq!(&resized.instance_type, to, "resize did not change the type");
    }

    if caps.snapshot {
        let snap = provider
            .snapshot(&r)
            .await
            .unwrap_or_else(|e| panic!("snapshot failed though capabilities allow it: {e}"));
        assert!(!snap.id.is_empty(), "snapshot returned an empty id");
        assert!(snap.size_gb > 0, "snapshot {} has size 0 GB", snap.id);
        let from_snap = ctx.spec(
            "snap",
            &ty,
            Market::OnDemand,
            BootSource::Snapshot(snap.clone()),
        );
        let booted = create(provider, &from_snap).await;
        assert_eq!(
            booted.node, from_snap.node,
            "create from a snapshot returned another node"
        );
        delete(provider, &booted.as_ref()).await;
    } else {
        expect_unsupported("snapshot", provider.snapshot(&r).await);
    }

    delete(provider, &r).await;
}

/// Spot instances can be created when the capabilities say `spot` (on an
/// offering with spot terms) and are `Unsupported` otherwise.
async fn spot_per_capabilities(provider: &dyn Provider, ctx: &Ctx) {
    if provider.capabilities().spot {
        let Some(o) = ctx.offerings.iter().find(|o| o.spot.is_some()) else {
            // Spot allowed but nothing sold as spot right now: nothing to try.
            return;
        };
        let spec = ctx.spec("spot", &o.instance_type, Market::Spot, ctx.image());
        let inst = create(provider, &spec).await;
        assert_eq!(
            inst.market,
            Market::Spot,
            "a spot create returned an on-demand instance"
        );
        delete(provider, &inst.as_ref()).await;
    } else {
        let ty = ctx.cheapest().instance_type.clone();
        let spec = ctx.spec("spot", &ty, Market::Spot, ctx.image());
        expect_unsupported("create in the spot market", provider.create(&spec).await);
    }
}
