//! Starting a fleet: what the builder refuses, and how the provider's
//! offerings are waited for (the retry comes from `Timing`).

mod support;

use std::sync::Arc;

use fleet_core::controller::Timing;
use fleet_core::memory::provider::{MemoryProvider, OpKind};
use fleet_core::provider::ProviderError;
use fleet_runtime::{Fleet, RuntimeError};

fn pool() -> fleet_core::strategy::PoolSpec {
    support::pool(1, 2)
}

fn fast(attempts: u32) -> Timing {
    Timing {
        provider_retry_initial_ms: 5,
        provider_retry_max_ms: 20,
        startup_attempts: attempts,
        ..Timing::default()
    }
}

async fn start(provider: &MemoryProvider, timing: Timing) -> Result<Fleet, RuntimeError> {
    Fleet::builder()
        .provider(Arc::new(provider.clone()))
        .pool(pool())
        .timing(timing)
        .start()
        .await
}

#[tokio::test]
async fn passing_provider_failures_are_waited_out_as_timing_says() {
    let provider = MemoryProvider::ec2_like();
    provider.fail_next(
        OpKind::Offerings,
        ProviderError::RateLimited("slow down".into()),
        2,
    );
    let fleet = start(&provider, fast(3)).await;
    assert!(fleet.is_ok(), "third attempt succeeds: {:?}", fleet.err());
}

#[tokio::test]
async fn the_last_attempt_fails_with_the_providers_words() {
    let provider = MemoryProvider::ec2_like();
    provider.fail_next(
        OpKind::Offerings,
        ProviderError::Transient("api down".into()),
        3,
    );
    let err = start(&provider, fast(3)).await.err().map(|e| e.to_string());
    let err = err.unwrap_or_default();
    assert!(
        err.contains("after 3 attempt(s)") && err.contains("api down"),
        "{err}"
    );
}

#[tokio::test]
async fn a_permanent_failure_is_not_retried() {
    let provider = MemoryProvider::ec2_like();
    provider.fail_next(
        OpKind::Offerings,
        ProviderError::Permanent("bad credentials".into()),
        1,
    );
    let err = start(&provider, fast(5)).await.err().map(|e| e.to_string());
    let err = err.unwrap_or_default();
    assert!(
        err.contains("after 1 attempt(s)") && err.contains("bad credentials"),
        "{err}"
    );
}

#[tokio::test]
async fn a_fleet_needs_a_provider_and_a_pool() {
    let err = Fleet::builder().pool(pool()).start().await.err();
    assert_eq!(err.map(|e| e.kind()), Some("config"));
    let provider = MemoryProvider::ec2_like();
    let err = Fleet::builder()
        .provider(Arc::new(provider))
        .start()
        .await
        .err();
    assert_eq!(err.map(|e| e.kind()), Some("config"));
}
