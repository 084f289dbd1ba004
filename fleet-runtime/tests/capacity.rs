//! Instance-type capacity fallback through the real driver: the memory
//! provider has no capacity for the pool's preferred type, the node comes
//! up on the next cheapest type, the status and metrics say why, and after
//! the cooldown new nodes are of the preferred type again.

#![expect(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod support;

use std::sync::Arc;
use std::time::Duration;

use fleet_core::controller::Timing;
use fleet_core::memory::provider::{MemoryProvider, OpKind};
use fleet_core::protocol::{ClaimGrant, ClaimRequest, Market};
use fleet_core::transport::ClaimClient;
use fleet_core::{InstanceType, PoolName};
use fleet_runtime::Fleet;
use support::*;

const COOLDOWN_MS: u64 = 1_000;

fn it(s: &str) -> InstanceType {
    InstanceType::new(s).unwrap()
}

fn request(id: &str) -> ClaimRequest {
    request_for(id, 600_000)
}

async fn claim(fleet: &Fleet, id: &str) -> ClaimGrant {
    tokio::time::timeout(Duration::from_secs(10), fleet.client().claim(request(id)))
        .await
        .expect("granted in time")
        .unwrap()
}

async fn type_of(fleet: &Fleet, g: &ClaimGrant) -> InstanceType {
    let status = fleet.status().await.unwrap();
    let n = status
        .nodes
        .iter()
        .find(|n| n.record.node == g.node)
        .unwrap();
    n.record.instance_type.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sold_out_type_gives_way_to_the_next_cheapest_until_the_cooldown_ends() {
    let provider = MemoryProvider::ec2_like();
    let (small, big) = (it("c7i.large"), it("c7i.4xlarge"));
    provider.set_sold_out(&small, Market::OnDemand, true);
    let mut spec = pool(1, 4);
    spec.instance_types = vec![small.clone(), big.clone()];
    let fleet = Arc::new(
        Fleet::builder()
            .provider(Arc::new(provider.clone()))
            .pool(spec)
            .timing(Timing {
                capacity_cooldown_ms: COOLDOWN_MS,
                ..Timing::default()
            })
            .start()
            .await
            .unwrap(),
    );
    boot_agents(&fleet, provider.clone());

    let g1 = claim(&fleet, "c1").await;
    assert_eq!(
        type_of(&fleet, &g1).await,
        big,
        "up on the next cheapest type"
    );
    assert_eq!(
        provider.calls(OpKind::Create),
        2,
        "the sold-out type once, then the next"
    );

    // Why, for an operator: the pool's shortage, the alert counter and the
    // provider error counter.
    let status = fleet.status().await.unwrap();
    let shortages = &status.shortages[&PoolName::new("linux").unwrap()];
    assert_eq!(shortages.len(), 1);
    assert_eq!(shortages[0].instance_type, small);
    assert_eq!(shortages[0].market, Market::OnDemand);
    assert_eq!(shortages[0].using.as_ref(), Some(&big));
    assert!(
        shortages[0].error.contains("capacity"),
        "{}",
        shortages[0].error
    );
    assert_eq!(status.metrics.alerts.get("capacity_shortage"), Some(&1));
    assert_eq!(
        status.metrics.provider_errors.get("create,capacity"),
        Some(&1)
    );

    // Capacity is back, and the cooldown over: the next new node (c1 still
    // holds its own) is of the preferred type.
    provider.set_sold_out(&small, Market::OnDemand, false);
    tokio::time::sleep(Duration::from_millis(COOLDOWN_MS + 200)).await;
    assert!(fleet.status().await.unwrap().shortages.is_empty());
    let g2 = claim(&fleet, "c2").await;
    assert_ne!(g2.node, g1.node);
    assert_eq!(
        type_of(&fleet, &g2).await,
        small,
        "the preferred type again"
    );
}

/// Spot prices move: the runtime reads the provider's offerings again every
/// `offerings_every` (beside the read at start).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_offerings_are_read_again_while_the_fleet_runs() {
    let provider = MemoryProvider::ec2_like();
    let fleet = Fleet::builder()
        .provider(Arc::new(provider.clone()))
        .pool(pool(1, 2))
        .offerings_every(Duration::from_millis(100))
        .start()
        .await
        .unwrap();
    let at_start = provider.calls(OpKind::Offerings);
    assert!(at_start >= 1);
    tokio::time::sleep(Duration::from_millis(550)).await;
    let later = provider.calls(OpKind::Offerings);
    assert!(later >= at_start + 3, "{at_start} then {later}");
    drop(fleet);
}
