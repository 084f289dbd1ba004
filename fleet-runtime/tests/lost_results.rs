//! Results the daemon never heard of — a store write that timed out after
//! it landed — do not stop the control loop. Found by `fleet-chaos`.

#![expect(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod support;

use std::sync::Arc;
use std::time::Duration;

use fleet_core::controller::Timing;
use fleet_core::memory::faulty::FaultyStore;
use fleet_core::memory::provider::MemoryProvider;
use fleet_core::memory::store::MemoryStore;
use fleet_core::transport::ClaimClient;
use fleet_runtime::Fleet;
use support::*;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_write_that_landed_does_not_stop_the_control_loop() {
    let provider = MemoryProvider::ec2_like();
    let store = FaultyStore::new(MemoryStore::new());
    let fleet = Arc::new(
        Fleet::builder()
            .store(Arc::new(store.clone()))
            .provider(Arc::new(provider.clone()))
            .pool(pool(1, 2))
            .timing(Timing {
                store_retry_ms: 20,
                ..Timing::default()
            })
            .start()
            .await
            .unwrap(),
    );
    boot_agents(&fleet, provider);
    // The claim's first write lands and is reported failed, as after a
    // timeout: its retry meets the record it wrote.
    store.fail_next_after_apply(1);
    let grant = tokio::time::timeout(WAIT, fleet.client().claim(request_for("c1", 60_000)))
        .await
        .expect("granted in time: the retry wrote on top of its own record")
        .unwrap();
    assert_eq!(grant.claim_id.as_str(), "c1");
    assert!(fleet.is_ready(), "the control loop runs on");
}
