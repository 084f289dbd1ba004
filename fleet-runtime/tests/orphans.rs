//! Orphan collection through the real driver: its periodic inventory
//! (filtered by namespace and fleet id) and the controller's timer delete
//! an untracked instance of this fleet once it is `orphan_min_age_ms` old,
//! not before, and never one of another namespace or fleet. The clock is
//! the memory provider's, moved by hand, so ages are exact.

#![expect(clippy::unwrap_used, reason = "tests")]

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fleet_core::clock::Clock;
use fleet_core::controller::Timing;
use fleet_core::memory::provider::{MemoryProvider, OpKind};
use fleet_core::provider::{
    BootSource, InstanceState, Market, NodeSpec, Provider, TAG_FLEET, TAG_NAMESPACE, TAG_NODE,
    TAG_POOL,
};
use fleet_core::{FleetId, InstanceType, Millis, NodeId, PoolName};
use fleet_runtime::Fleet;
use support::pool;

const T0: Millis = 1_700_000_000_000;
const MIN_AGE: Millis = 600_000;

/// The provider's settable time, read by the driver too.
struct Shared(Arc<AtomicU64>);

impl Clock for Shared {
    fn now(&self) -> Millis {
        self.0.load(Ordering::SeqCst)
    }
}

async fn create(provider: &MemoryProvider, node: &str, namespace: &str, fleet: &str) -> NodeId {
    let node = NodeId::new(node).unwrap();
    provider
        .create(&NodeSpec {
            node: node.clone(),
            pool: PoolName::new("linux").unwrap(),
            instance_type: InstanceType::new("c7i.large").unwrap(),
            market: Market::OnDemand,
            source: BootSource::Image {
                image: "ami-test".to_owned(),
            },
            tags: BTreeMap::from([
                (TAG_NODE.to_owned(), node.to_string()),
                (TAG_POOL.to_owned(), "linux".to_owned()),
                (TAG_NAMESPACE.to_owned(), namespace.to_owned()),
                (TAG_FLEET.to_owned(), fleet.to_owned()),
            ]),
            bootstrap_token: None,
        })
        .await
        .unwrap();
    node
}

fn running(provider: &MemoryProvider, node: &NodeId) -> bool {
    provider
        .instance(node)
        .is_some_and(|i| i.state == InstanceState::Running)
}

/// Waits until the driver has listed the provider `n` more times.
async fn inventories(provider: &MemoryProvider, n: u32) {
    let target = provider.calls(OpKind::List) + n;
    let deadline = Instant::now() + Duration::from_secs(10);
    while provider.calls(OpKind::List) < target {
        assert!(Instant::now() < deadline, "the driver stopped listing");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_driver_collects_its_own_old_orphans_only() {
    let provider = MemoryProvider::ec2_like();
    provider.set_now(T0);
    let fleet = Fleet::builder()
        .provider(Arc::new(provider.clone()))
        .pool(pool(1, 2))
        .fleet_id(FleetId::new("f1").unwrap())
        .clock(Arc::new(Shared(provider.clock())))
        .timing(Timing {
            orphan_min_age_ms: MIN_AGE,
            ..Timing::default()
        })
        .inventory_every(Duration::from_millis(20))
        .start()
        .await
        .unwrap();

    // Instances no node record of this fleet knows, created now.
    let ours = create(&provider, "linux-f1-9-1", "fleet", "f1").await;
    let other_ns = create(&provider, "linux-f1-9-2", "fleet.other", "f1").await;
    let other_fleet = create(&provider, "linux-f2-9-1", "fleet", "f2").await;
    let all = [&ours, &other_ns, &other_fleet];

    // Listed, and listed again just before the minimum age: all kept.
    inventories(&provider, 3).await;
    provider.set_now(T0 + MIN_AGE - 1);
    inventories(&provider, 3).await;
    for n in all {
        assert!(running(&provider, n), "{n} deleted before the minimum age");
    }
    assert_eq!(provider.calls(OpKind::Delete), 0);

    // At the minimum age the orphan of ours goes.
    provider.set_now(T0 + MIN_AGE);
    let deadline = Instant::now() + Duration::from_secs(10);
    while running(&provider, &ours) {
        assert!(Instant::now() < deadline, "the orphan was not collected");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Much later, still: the others are not this fleet's.
    provider.set_now(T0 + 10 * MIN_AGE);
    inventories(&provider, 5).await;
    assert!(
        running(&provider, &other_ns),
        "another namespace's instance"
    );
    assert!(running(&provider, &other_fleet), "another fleet's instance");
    assert_eq!(provider.calls(OpKind::Delete), 1, "one delete: the orphan");
    assert!(
        fleet.status().await.unwrap().nodes.is_empty(),
        "nothing was adopted"
    );
    fleet.shutdown().await;
}
