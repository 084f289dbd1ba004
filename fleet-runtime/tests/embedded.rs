//! An embedder links the SDK and claims with no network hop: the real
//! driver, controller, strategy and arbitration over the in-process
//! transport, a memory store and a memory provider.

#![expect(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod support;

use std::sync::Arc;
use std::time::Duration;

use fleet_core::PoolName;
use fleet_core::memory::provider::MemoryProvider;
use fleet_core::memory::store::MemoryStore;
use fleet_core::protocol::{ClaimRejection, ClaimRequest, ClaimState, PendingReason};
use fleet_core::transport::{ClaimClient, ClaimError};
use fleet_runtime::Fleet;
use support::*;

fn request(id: &str) -> ClaimRequest {
    request_for(id, 60_000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_and_release_in_process() {
    let provider = MemoryProvider::ec2_like();
    let store = MemoryStore::new();
    let fleet = Arc::new(
        Fleet::builder()
            .store(Arc::new(store.clone()))
            .provider(Arc::new(provider.clone()))
            .pool(pool(1, 2))
            .start()
            .await
            .unwrap(),
    );
    boot_agents(&fleet, provider.clone());
    let client = fleet.client();
    let grant = tokio::time::timeout(Duration::from_secs(10), client.claim(request("c1")))
        .await
        .expect("granted in time")
        .unwrap();
    assert!(grant.endpoint.starts_with("127.0.0.1:"));
    let status = fleet.status().await.unwrap();
    let c = status
        .claims
        .iter()
        .find(|c| c.request.claim_id.as_str() == "c1")
        .unwrap();
    assert_eq!(c.state, ClaimState::Granted);
    assert_eq!(status.metrics.grants, 1);

    // A retry gets the same grant.
    let again = client.claim(request("c1")).await.unwrap();
    assert_eq!(again, grant);

    client
        .release(&grant.workspace, &grant.claim_id)
        .await
        .unwrap();
    let status = fleet.status().await.unwrap();
    let c = status
        .claims
        .iter()
        .find(|c| c.request.claim_id.as_str() == "c1")
        .unwrap();
    assert_eq!(c.state, ClaimState::Released);
    // The record is in the store, not only in memory.
    assert!(store.len() >= 2, "claim and node records stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_claims_get_clear_answers() {
    let provider = MemoryProvider::ec2_like();
    let fleet = Arc::new(
        Fleet::builder()
            .provider(Arc::new(provider.clone()))
            .pool(pool(1, 2))
            .start()
            .await
            .unwrap(),
    );
    let client = fleet.client();
    let mut unknown = request("c1");
    unknown.pool = PoolName::new("nope").unwrap();
    assert!(matches!(
        client.claim(unknown).await,
        Err(ClaimError::Rejected(_))
    ));

    let mut impossible = request("c2");
    impossible.requirements.cpus = 512;
    impossible.max_wait_ms = Some(300);
    let mut reasons = Vec::new();
    let r = client
        .claim_observed(impossible, |reason| reasons.push(reason.clone()))
        .await;
    assert!(matches!(r, Err(ClaimError::Revoked(_))), "{r:?}");
    assert!(
        matches!(reasons.first(), Some(PendingReason::Unsatisfiable { why }) if why.contains("cpus>=512")),
        "{reasons:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recipient_without_an_issuer_is_refused_with_a_note() {
    let provider = MemoryProvider::ec2_like();
    let fleet = Arc::new(
        Fleet::builder()
            .provider(Arc::new(provider.clone()))
            .pool(pool(1, 2))
            .start()
            .await
            .unwrap(),
    );
    boot_agents(&fleet, provider);
    let mut req = request("c1");
    req.recipient = Some(age::x25519::Identity::generate().to_public().to_string());
    let r = tokio::time::timeout(Duration::from_secs(10), fleet.client().claim(req))
        .await
        .unwrap();
    match r {
        Err(ClaimError::Revoked(rev)) => {
            assert!(format!("{:?}", rev.reason).contains("credentials"))
        }
        other => panic!("{other:?}"),
    }
}

/// A recipient the sealer could never use is refused with the request,
/// before any node is asked for, not revoked once one has been started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_recipient_is_rejected_before_a_node_starts() {
    let provider = MemoryProvider::ec2_like();
    let fleet = Fleet::builder()
        .provider(Arc::new(provider.clone()))
        .pool(pool(1, 2))
        .start()
        .await
        .unwrap();
    let mut req = request("c1");
    req.recipient = Some("age1notarecipient".to_owned());
    let r = tokio::time::timeout(Duration::from_secs(10), fleet.client().claim(req))
        .await
        .unwrap();
    match r {
        Err(ClaimError::Rejected(ClaimRejection::Invalid { why })) => {
            assert!(why.contains("recipient"), "{why}")
        }
        other => panic!("expected Rejected{{invalid}}, got {other:?}"),
    }
    assert!(fleet.status().await.unwrap().claims.is_empty());
    assert!(provider.instances().is_empty(), "no node was started");
}

/// The provider's offerings at start: a passing failure (a cloud API
/// hiccup) is retried, a permanent one stops the start with its words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_retries_a_passing_provider_failure_only() {
    use fleet_core::memory::provider::OpKind;
    use fleet_core::provider::ProviderError;
    let provider = MemoryProvider::ec2_like();
    provider.fail_next(
        OpKind::Offerings,
        ProviderError::RateLimited("slow down".into()),
        1,
    );
    let fleet = Fleet::builder()
        .provider(Arc::new(provider.clone()))
        .pool(pool(1, 2))
        .start()
        .await;
    assert!(fleet.is_ok(), "a rate limit at start is waited out");

    provider.fail_next(
        OpKind::Offerings,
        ProviderError::Permanent("bad token".into()),
        1,
    );
    let err = match Fleet::builder()
        .provider(Arc::new(provider))
        .pool(pool(1, 2))
        .start()
        .await
    {
        Ok(_) => panic!("a permanent failure stops the start"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("bad token") && err.contains("1 attempt"),
        "{err}"
    );
}
