//! The conformance suites against the in-memory store and provider, and the
//! fault injection those in-memory impls offer to every other test.

#![expect(clippy::unwrap_used, reason = "a failed unwrap is a failed test")]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fleet_core::memory::faulty::FaultyStore;
use fleet_core::memory::provider::{DelayFn, MemoryProvider, OpKind};
use fleet_core::memory::store::MemoryStore;
use fleet_core::provider::{
    BootSource, Capabilities, InstanceRef, InstanceState, Market, NodeSpec, Provider,
    ProviderError, TAG_NAMESPACE, TagFilter,
};
use fleet_core::store::{Key, Revision, Store, StoreError, WatchEvent};
use fleet_core::testkit::provider::provider_suite;
use fleet_core::testkit::store::store_suite;
use fleet_core::{InstanceType, NodeId, PoolName};
use futures_util::StreamExt;

fn key(s: &str) -> Key {
    Key::new(s).unwrap()
}

fn spec(node: &str, ty: &str, market: Market) -> NodeSpec {
    NodeSpec {
        node: NodeId::new(node).unwrap(),
        pool: PoolName::new("p").unwrap(),
        instance_type: InstanceType::new(ty).unwrap(),
        market,
        source: BootSource::Image {
            image: "img".to_owned(),
        },
        tags: BTreeMap::from([(TAG_NAMESPACE.to_owned(), "t".to_owned())]),
        bootstrap_token: None,
    }
}

// ---- suites ----

#[tokio::test]
async fn store_suite_memory() {
    let store = MemoryStore::new();
    store_suite(&store, "conformance.one").await;
    // A second run under another prefix on the same store: suites must
    // coexist on a shared server.
    store_suite(&store, "conformance.two").await;
    assert!(store.is_empty(), "the suite must clean up after itself");
}

#[tokio::test]
async fn store_suite_through_faulty_wrapper_without_faults() {
    let store = FaultyStore::new(MemoryStore::new());
    store_suite(&store, "conformance").await;
    assert!(store.calls() > 0);
}

#[tokio::test]
async fn provider_suite_ec2_like() {
    provider_suite(&MemoryProvider::ec2_like(), "ec2", "ami-0").await;
}

#[tokio::test]
async fn provider_suite_hetzner_like() {
    provider_suite(&MemoryProvider::hetzner_like(), "hetzner", "ubuntu-24.04").await;
}

#[tokio::test]
async fn provider_suite_with_no_capabilities() {
    let provider = MemoryProvider::builder()
        .capabilities(Capabilities {
            stop_start: false,
            resize: false,
            resize_requires_stop: false,
            snapshot: false,
            spot: false,
            max_instances: None,
        })
        .offerings(MemoryProvider::hetzner_like().offerings().await.unwrap())
        .build();
    provider_suite(&provider, "bare", "img").await;
}

#[tokio::test]
async fn provider_suite_resizing_while_running() {
    let provider = MemoryProvider::builder()
        .capabilities(Capabilities::all())
        .build();
    provider_suite(&provider, "all", "img").await;
    // A shared provider: a second run must not trip over the first.
    provider_suite(&provider, "all-2", "img").await;
}

// ---- store ----

#[tokio::test]
async fn store_revisions_are_global_and_start_at_one() {
    let store = MemoryStore::new();
    assert_eq!(store.last_revision(), Revision(0));
    let a = store.create(&key("a"), Bytes::new()).await.unwrap();
    let b = store.create(&key("b"), Bytes::new()).await.unwrap();
    let a2 = store.update(&key("a"), Bytes::new(), a).await.unwrap();
    store.delete(&key("b"), b).await.unwrap();
    assert_eq!((a, b, a2), (Revision(1), Revision(2), Revision(3)));
    // The delete took revision 4.
    assert_eq!(store.last_revision(), Revision(4));
}

#[tokio::test]
async fn store_watch_order_prefix_and_drop() {
    let store = MemoryStore::new();
    let mut nodes = store.watch("nodes.").await.unwrap();
    let all = store.watch("").await.unwrap();
    assert_eq!(store.watcher_count(), 2);

    let r1 = store
        .create(&key("nodes.n1"), Bytes::from("x"))
        .await
        .unwrap();
    store
        .create(&key("claims.c1"), Bytes::from("c"))
        .await
        .unwrap();
    let r2 = store
        .update(&key("nodes.n1"), Bytes::from("y"), r1)
        .await
        .unwrap();
    store.delete(&key("nodes.n1"), r2).await.unwrap();

    let got: Vec<WatchEvent> = (&mut nodes).take(3).collect().await;
    assert_eq!(
        got,
        vec![
            WatchEvent::Put {
                key: key("nodes.n1"),
                value: Bytes::from("x"),
                revision: r1
            },
            WatchEvent::Put {
                key: key("nodes.n1"),
                value: Bytes::from("y"),
                revision: r2
            },
            WatchEvent::Delete {
                key: key("nodes.n1"),
                revision: Revision(4)
            },
        ]
    );
    // A closed watcher is dropped at the next write to its prefix.
    drop(all);
    store.create(&key("other"), Bytes::new()).await.unwrap();
    assert_eq!(store.watcher_count(), 1);
    // ...and an idle closed watcher at the next watch call.
    drop(nodes);
    let _w = store.watch("x.").await.unwrap();
    assert_eq!(store.watcher_count(), 1);
}

#[tokio::test]
async fn store_refuses_values_over_its_limit() {
    let store = MemoryStore::with_max_value_bytes(4);
    let k = key("k");
    let err = store.create(&k, Bytes::from("12345")).await.unwrap_err();
    assert_eq!(err, StoreError::TooLarge { len: 5, max: 4 });
    let r = store.create(&k, Bytes::from("1234")).await.unwrap();
    let err = store.update(&k, Bytes::from("12345"), r).await.unwrap_err();
    assert_eq!(err.kind(), "too_large");
    assert_eq!(store.get(&k).await.unwrap().unwrap().revision, r);
}

#[tokio::test]
async fn store_clones_share_state() {
    let a = MemoryStore::new();
    let b = a.clone();
    a.create(&key("k"), Bytes::from("v")).await.unwrap();
    assert_eq!(
        b.get(&key("k")).await.unwrap().unwrap().value,
        Bytes::from("v")
    );
}

#[tokio::test]
async fn faulty_store_fails_next_calls_then_recovers() {
    let store = FaultyStore::new(MemoryStore::new());
    let handle = store.clone();
    handle.fail_next(2);
    let k = key("k");
    for _ in 0..2 {
        let err = store.create(&k, Bytes::new()).await.unwrap_err();
        assert!(err.is_retryable(), "{err}");
    }
    assert!(
        store.inner().is_empty(),
        "a refused call must not reach the store"
    );
    store.create(&k, Bytes::new()).await.unwrap();
    assert_eq!(handle.calls(), 3);
}

#[tokio::test]
async fn faulty_store_can_fail_after_applying_a_write() {
    let store = FaultyStore::new(MemoryStore::new());
    store.fail_next_after_apply(1);
    let k = key("k");
    let err = store.create(&k, Bytes::from("v")).await.unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)));
    // The write landed: a retry of the create sees it.
    let err = store.create(&k, Bytes::from("v")).await.unwrap_err();
    assert!(matches!(
        err,
        StoreError::AlreadyExists {
            current: Revision(1),
            ..
        }
    ));
}

// ---- provider ----

#[tokio::test]
async fn create_is_idempotent_and_ids_are_deterministic() {
    let p = MemoryProvider::ec2_like();
    p.set_now(1_000);
    let a = p
        .create(&spec("a", "c7g.large", Market::OnDemand))
        .await
        .unwrap();
    let b = p
        .create(&spec("b", "c7g.large", Market::OnDemand))
        .await
        .unwrap();
    let a2 = p
        .create(&spec("a", "c7g.large", Market::OnDemand))
        .await
        .unwrap();
    assert_eq!(
        (a.provider_id.as_str(), b.provider_id.as_str()),
        ("i-000001", "i-000002")
    );
    assert_eq!(a, a2);
    assert_eq!(a.created_at, 1_000);
    assert_eq!(a.state, InstanceState::Running);
    assert!(a.address.as_deref().unwrap().starts_with("127.0.0.1:"));

    // Same node, another type: a conflicting use of the idempotency key.
    let err = p
        .create(&spec("a", "c7i.large", Market::OnDemand))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "already_exists");
    // Node ids are single-use: a deleted node is not re-created.
    p.delete(&a.as_ref()).await.unwrap();
    let err = p
        .create(&spec("a", "c7g.large", Market::OnDemand))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "already_exists");
    assert_eq!(p.calls(OpKind::Create), 5);
}

#[tokio::test]
async fn create_validates_type_market_and_snapshot() {
    let p = MemoryProvider::hetzner_like();
    let err = p
        .create(&spec("a", "nope", Market::OnDemand))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "permanent");
    let err = p
        .create(&spec("a", "cx22", Market::Spot))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "unsupported");
    let mut s = spec("a", "cx22", Market::OnDemand);
    s.source = BootSource::Snapshot(fleet_core::provider::SnapshotRef {
        id: "snap-999999".to_owned(),
        size_gb: 1,
        created_at: 0,
    });
    let err = p.create(&s).await.unwrap_err();
    assert_eq!(err.kind(), "not_found");
    assert!(p.instances().is_empty());
}

#[tokio::test]
async fn resize_needs_stop_and_a_known_type() {
    let p = MemoryProvider::ec2_like();
    let i = p
        .create(&spec("a", "c7g.large", Market::OnDemand))
        .await
        .unwrap();
    let r = i.as_ref();
    let to = InstanceType::new("c7g.2xlarge").unwrap();
    assert_eq!(p.resize(&r, &to).await.unwrap_err().kind(), "permanent");
    let stopped = p.stop(&r).await.unwrap();
    assert_eq!(
        (stopped.state, stopped.address),
        (InstanceState::Stopped, None)
    );
    let bad = InstanceType::new("m5.huge").unwrap();
    assert_eq!(p.resize(&r, &bad).await.unwrap_err().kind(), "permanent");
    assert_eq!(p.resize(&r, &to).await.unwrap().instance_type, to);
    let started = p.start(&r).await.unwrap();
    assert_eq!(started.state, InstanceState::Running);
    assert_eq!(
        started.address, i.address,
        "a restarted instance keeps its address"
    );
    let snap = p.snapshot(&r).await.unwrap();
    assert_eq!((snap.id.as_str(), snap.size_gb), ("snap-000002", 20));
}

#[tokio::test]
async fn delete_is_idempotent_and_ignores_stale_refs() {
    let p = MemoryProvider::ec2_like();
    let never = InstanceRef {
        node: NodeId::new("ghost").unwrap(),
        provider_id: "i-424242".to_owned(),
    };
    p.delete(&never).await.unwrap();
    let i = p
        .create(&spec("a", "c7g.large", Market::OnDemand))
        .await
        .unwrap();
    // A ref with the right node but another provider id names nothing.
    let stale = InstanceRef {
        node: i.node.clone(),
        provider_id: "i-999999".to_owned(),
    };
    p.delete(&stale).await.unwrap();
    assert_eq!(p.list(&TagFilter::default()).await.unwrap().len(), 1);
    assert_eq!(p.stop(&stale).await.unwrap_err().kind(), "not_found");
    p.delete(&i.as_ref()).await.unwrap();
    p.delete(&i.as_ref()).await.unwrap();
    assert!(p.list(&TagFilter::default()).await.unwrap().is_empty());
    assert_eq!(
        p.instance(&i.node).unwrap().state,
        InstanceState::Terminated
    );
    assert_eq!(p.start(&i.as_ref()).await.unwrap_err().kind(), "not_found");
}

#[tokio::test]
async fn list_is_sorted_by_node_id() {
    let p = MemoryProvider::ec2_like();
    for n in ["c", "a", "b"] {
        p.create(&spec(n, "c7g.large", Market::OnDemand))
            .await
            .unwrap();
    }
    let nodes: Vec<String> = p
        .list(&TagFilter::default())
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.node.to_string())
        .collect();
    assert_eq!(nodes, ["a", "b", "c"]);
}

#[tokio::test]
async fn fail_next_fails_without_effect_then_recovers() {
    let p = MemoryProvider::ec2_like();
    let handle = p.clone();
    handle.fail_next(OpKind::Create, ProviderError::Transient("boom".into()), 2);
    handle.fail_next(OpKind::Create, ProviderError::RateLimited("slow".into()), 1);
    let s = spec("a", "c7g.large", Market::OnDemand);
    assert_eq!(p.create(&s).await.unwrap_err().kind(), "transient");
    assert_eq!(p.create(&s).await.unwrap_err().kind(), "transient");
    assert_eq!(p.create(&s).await.unwrap_err().kind(), "rate_limited");
    assert!(
        p.instances().is_empty(),
        "an injected failure must have no effect"
    );
    let i = p.create(&s).await.unwrap();
    assert_eq!(i.provider_id, "i-000001", "failed calls must not mint ids");
    assert_eq!(handle.calls(OpKind::Create), 4);
    assert_eq!(handle.calls(OpKind::Delete), 0);
}

#[tokio::test]
async fn fail_every_nth_fails_periodically() {
    let p = MemoryProvider::ec2_like();
    p.fail_every_nth(
        OpKind::List,
        3,
        ProviderError::Transient("every third".into()),
    );
    let f = TagFilter::default();
    let ok: Vec<bool> = futures_util::future::join_all((0..6).map(|_| p.list(&f)))
        .await
        .iter()
        .map(Result::is_ok)
        .collect();
    assert_eq!(ok, [true, true, false, true, true, false]);
    p.clear_faults();
    assert!(p.list(&f).await.is_ok());
}

#[tokio::test]
async fn capacity_and_quota_limit_live_instances() {
    let p = MemoryProvider::ec2_like();
    p.set_capacity(Some(1));
    let a = p
        .create(&spec("a", "c7g.large", Market::OnDemand))
        .await
        .unwrap();
    let err = p
        .create(&spec("b", "c7g.large", Market::OnDemand))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "capacity");
    assert!(err.is_retryable());
    // Terminated instances do not count.
    p.delete(&a.as_ref()).await.unwrap();
    p.create(&spec("b", "c7g.large", Market::OnDemand))
        .await
        .unwrap();

    let q = MemoryProvider::builder()
        .capabilities(Capabilities {
            max_instances: Some(0),
            ..Capabilities::all()
        })
        .build();
    let err = q
        .create(&spec("a", "c7g.large", Market::OnDemand))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "quota");
}

#[tokio::test]
async fn interrupt_terminates_spot_instances_only() {
    let p = MemoryProvider::ec2_like();
    let spot = p
        .create(&spec("s", "c7g.large", Market::Spot))
        .await
        .unwrap();
    let od = p
        .create(&spec("o", "c7g.large", Market::OnDemand))
        .await
        .unwrap();
    assert_eq!(p.interrupt(&od.node).unwrap_err().kind(), "permanent");
    let gone = p.interrupt(&spot.node).unwrap();
    assert_eq!(gone.state, InstanceState::Terminated);
    assert_eq!(p.interrupt(&spot.node).unwrap_err().kind(), "not_found");
    let listed = p.list(&TagFilter::default()).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].node, od.node);
    let notices = p.take_interruptions();
    assert_eq!(notices.len(), 1);
    assert_eq!(notices[0].node, spot.node);
    assert!(p.take_interruptions().is_empty());
    // The controller deleting the interrupted node still succeeds.
    p.delete(&spot.as_ref()).await.unwrap();
}

#[tokio::test]
async fn fail_after_apply_is_a_crash_between_success_and_persist() {
    let p = MemoryProvider::ec2_like();
    p.fail_after_apply(OpKind::Create, 1);
    let s = spec("a", "c7g.large", Market::OnDemand);
    let err = p.create(&s).await.unwrap_err();
    assert_eq!(err.kind(), "transient");
    // The instance exists although the caller saw a failure...
    let listed = p.list(&TagFilter::default()).await.unwrap();
    assert_eq!(listed.len(), 1);
    // ...and the retry adopts it instead of minting a second one.
    let i = p.create(&s).await.unwrap();
    assert_eq!(i.provider_id, listed[0].provider_id);

    p.fail_after_apply(OpKind::Stop, 1);
    assert!(p.stop(&i.as_ref()).await.is_err());
    assert_eq!(p.instance(&i.node).unwrap().state, InstanceState::Stopped);
}

#[tokio::test]
async fn latency_goes_through_the_injected_delay() {
    let delay: DelayFn = Arc::new(|d| Box::pin(tokio::time::sleep(d)));
    let p = MemoryProvider::builder().delay(delay).build();
    p.set_latency(OpKind::Offerings, Some(Duration::from_millis(5)));
    let start = tokio::time::Instant::now();
    p.offerings().await.unwrap();
    // Sleep never returns early, so this bound is not a timing assertion.
    assert!(start.elapsed() >= Duration::from_millis(5));
}

#[tokio::test]
async fn clock_is_shared() {
    let clock = Arc::new(std::sync::atomic::AtomicU64::new(7));
    let p = MemoryProvider::builder().clock(Arc::clone(&clock)).build();
    assert_eq!(p.now(), 7);
    clock.store(9, std::sync::atomic::Ordering::SeqCst);
    let i = p
        .create(&spec("a", "c7g.large", Market::OnDemand))
        .await
        .unwrap();
    assert_eq!(i.created_at, 9);
}
