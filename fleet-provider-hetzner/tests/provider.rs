//! The Hetzner provider against a stateful fake of the Hetzner Cloud API on
//! loopback: the provider conformance suite, then what is particular to
//! Hetzner (labels and names, idempotent create, fleets sharing a project,
//! pagination, rate limits, capacity errors, change_type needing the server
//! off, user data).

#![expect(clippy::unwrap_used, reason = "tests")]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use fleet_core::ids::{InstanceType, NodeId, PoolName};
use fleet_core::protocol::Secret;
use fleet_core::provider::{
    BootSource, InstanceState, Market, NodeSpec, Provider, ProviderError, TAG_FLEET, TAG_NAMESPACE,
    TAG_NODE, TAG_POOL, TagFilter,
};
use fleet_core::testkit::provider::provider_suite;
use fleet_provider_hetzner::fake::FakeHetzner;
use fleet_provider_hetzner::{HetznerConfig, HetznerProvider};

const TOKEN: &str = "test-token";

fn provider(fake: &FakeHetzner) -> HetznerProvider {
    HetznerProvider::new(config(fake)).unwrap()
}

fn config(fake: &FakeHetzner) -> HetznerConfig {
    let mut cfg = HetznerConfig::new(Secret::new(TOKEN), "fsn1");
    cfg.api_url = fake.url();
    cfg.poll_interval = Duration::from_millis(5);
    cfg.action_timeout = Duration::from_secs(10);
    cfg.shutdown_timeout = Duration::from_secs(5);
    cfg.user_data =
        Some("node={{node}} pool={{pool}} token={{bootstrap_token}} url={{daemon_url}}".into());
    cfg.user_data_vars.insert(
        "daemon_url".into(),
        "wss://fleet.example:7443/v1/agent".into(),
    );
    cfg
}

fn spec(node: &str) -> NodeSpec {
    spec_in("fleet-1", node)
}

/// A spec of `node` in fleet `fleet`; every fleet uses the same namespace and pool.
fn spec_in(fleet: &str, node: &str) -> NodeSpec {
    let mut tags = BTreeMap::new();
    tags.insert(TAG_NAMESPACE.to_owned(), "fleet-test".to_owned());
    tags.insert(TAG_FLEET.to_owned(), fleet.to_owned());
    NodeSpec {
        node: NodeId::new(node).unwrap(),
        pool: PoolName::new("builds").unwrap(),
        instance_type: InstanceType::new("cx22").unwrap(),
        market: Market::OnDemand,
        source: BootSource::Image {
            image: "ubuntu-24.04".to_owned(),
        },
        tags,
        bootstrap_token: Some(Secret::new("tok-123")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_against_the_fake_api() {
    let fake = FakeHetzner::start(TOKEN).await;
    let p = provider(&fake);
    provider_suite(&p, "hz1", "ubuntu-24.04").await;
    assert!(fake.servers().is_empty(), "the suite leaves nothing behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offerings_are_priced_in_the_location_in_dollars() {
    let fake = FakeHetzner::start(TOKEN).await;
    let offerings = provider(&fake).offerings().await.unwrap();
    let cx22 = offerings
        .iter()
        .find(|o| o.instance_type.as_str() == "cx22")
        .unwrap();
    // €0.0060/h net at $1.08/€.
    assert_eq!(cx22.on_demand.0.micros(), 6_480);
    assert_eq!((cx22.cpus, cx22.memory_mb, cx22.disk_gb), (2, 4096, 40));
    assert!(
        offerings.iter().all(|o| o.spot.is_none()),
        "no spot at Hetzner"
    );
    assert!(
        offerings
            .iter()
            .any(|o| o.arch == fleet_core::protocol::Arch::Aarch64),
        "arm types are sold as aarch64"
    );

    let mut cfg = HetznerConfig::new(Secret::new(TOKEN), "fsn1");
    cfg.api_url = fake.url();
    cfg.server_types = vec!["cx32".into()];
    let only = HetznerProvider::new(cfg)
        .unwrap()
        .offerings()
        .await
        .unwrap();
    assert_eq!(only.len(), 1);
    assert_eq!(only[0].instance_type.as_str(), "cx32");

    let mut cfg = HetznerConfig::new(Secret::new(TOKEN), "mars1");
    cfg.api_url = fake.url();
    assert!(matches!(
        HetznerProvider::new(cfg).unwrap().offerings().await,
        Err(ProviderError::Permanent(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_are_named_labelled_and_given_the_agent_bootstrap() {
    let fake = FakeHetzner::start(TOKEN).await;
    let p = provider(&fake);
    let inst = p.create(&spec("Build_1-7")).await.unwrap();
    assert_eq!(inst.node.as_str(), "Build_1-7");
    assert_eq!(inst.state, InstanceState::Running);
    assert!(inst.address.is_some(), "the public IPv4 is the address");
    let servers = fake.servers();
    assert_eq!(servers.len(), 1);
    let s = &servers[0];
    assert!(
        s.name.starts_with("build-1-7-"),
        "server names are hostnames: {}",
        s.name
    );
    assert_eq!(
        s.labels.get(TAG_NODE).map(String::as_str),
        Some("Build_1-7")
    );
    assert_eq!(s.labels.get(TAG_POOL).map(String::as_str), Some("builds"));
    assert_eq!(
        s.user_data.as_deref(),
        Some("node=Build_1-7 pool=builds token=tok-123 url=wss://fleet.example:7443/v1/agent")
    );
    // A retried create (the controller after a crash) gets the same server.
    let again = p.create(&spec("Build_1-7")).await.unwrap();
    assert_eq!(again.provider_id, inst.provider_id);
    assert_eq!(fake.servers().len(), 1);
    // The inventory finds it by its labels.
    let mut filter = TagFilter::default();
    filter.0.insert(TAG_POOL.to_owned(), "builds".to_owned());
    let listed = p.list(&filter).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].node, inst.node);
    p.delete(&inst.as_ref()).await.unwrap();
    p.delete(&inst.as_ref()).await.unwrap(); // deleting a deleted server succeeds
    assert!(fake.servers().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inventory_reads_every_page() {
    let fake = FakeHetzner::start(TOKEN).await;
    let p = provider(&fake);
    for i in 0..57 {
        p.create(&spec(&format!("n-{i}"))).await.unwrap();
    }
    let listed = p.list(&TagFilter::default()).await.unwrap();
    assert_eq!(listed.len(), 57, "two pages of 50");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_errors_reach_the_controller_classified() {
    let fake = FakeHetzner::start(TOKEN).await;
    let p = provider(&fake);

    fake.fail_creates(1);
    let e = p.create(&spec("n-cap")).await.unwrap_err();
    assert!(matches!(e, ProviderError::Capacity(_)), "{e:?}");
    assert!(e.is_retryable());

    let mut bad = spec("n-bad");
    bad.instance_type = InstanceType::new("cx9000").unwrap();
    assert!(matches!(
        p.create(&bad).await,
        Err(ProviderError::Permanent(_))
    ));

    let mut spot = spec("n-spot");
    spot.market = Market::Spot;
    assert!(matches!(
        p.create(&spot).await,
        Err(ProviderError::Unsupported(_))
    ));

    // change_type needs the server off.
    let inst = p.create(&spec("n-res")).await.unwrap();
    let cx32 = InstanceType::new("cx32").unwrap();
    assert!(p.resize(&inst.as_ref(), &cx32).await.is_err());
    p.stop(&inst.as_ref()).await.unwrap();
    let resized = p.resize(&inst.as_ref(), &cx32).await.unwrap();
    assert_eq!(resized.instance_type, cx32);

    let mut cfg = HetznerConfig::new(Secret::new("wrong"), "fsn1");
    cfg.api_url = fake.url();
    assert!(matches!(
        HetznerProvider::new(cfg).unwrap().offerings().await,
        Err(ProviderError::Permanent(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_is_waited_out_until_its_reset() {
    let fake = FakeHetzner::start(TOKEN).await;
    let p = provider(&fake);
    // A 429 while the bucket still holds requests: the probe sees them and
    // the call goes again at once.
    fake.rate_limit_next(1);
    p.offerings().await.unwrap();
    assert_eq!(fake.rate_limited_requests(), 1);

    // Everything is refused until a reset 1–2 s ahead: the provider waits
    // for it instead of failing or hammering the API.
    let before = fake.requests();
    fake.rate_limit_for(Duration::from_millis(1_000));
    let start = Instant::now();
    let offerings = p.offerings().await.unwrap();
    assert!(!offerings.is_empty());
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "answered after {:?}, before the reset",
        start.elapsed()
    );
    assert_eq!(
        fake.rate_limited_requests(),
        3,
        "one refused call and one probe, then nothing until the reset"
    );
    assert_eq!(
        fake.requests() - before,
        3,
        "the call, the probe, the retry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_beyond_the_retries_reaches_the_controller() {
    let fake = FakeHetzner::start(TOKEN).await;
    let mut cfg = HetznerConfig::new(Secret::new(TOKEN), "fsn1");
    cfg.api_url = fake.url();
    cfg.max_retries = 2;
    cfg.rate_limit_max_wait = Duration::from_millis(20);
    let p = HetznerProvider::new(cfg).unwrap();
    fake.rate_limit_for(Duration::from_secs(60));
    match p.offerings().await {
        Err(e @ ProviderError::RateLimited(_)) => {
            let why = e.to_string();
            assert!(why.contains("list server types"), "{why}");
            assert!(why.contains("resets at unix time"), "{why}");
            assert!(e.is_retryable());
        }
        other => panic!("expected RateLimited, got {other:?}"),
    }
    // Three tries, each followed by a probe, waits bounded by the cap.
    assert_eq!(fake.requests(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sold_out_server_type_is_a_capacity_error() {
    let fake = FakeHetzner::start(TOKEN).await;
    let p = provider(&fake);
    fake.set_capacity("cx22", false);
    match p.create(&spec("n-1")).await {
        Err(e @ ProviderError::Capacity(_)) => {
            assert!(e.is_retryable());
            let why = e.to_string();
            assert!(why.contains("create server for node n-1"), "{why}");
            assert!(why.contains("resource_unavailable"), "{why}");
        }
        other => panic!("expected Capacity, got {other:?}"),
    }
    assert!(fake.servers().is_empty());
    // Other types still place.
    let mut cx32 = spec("n-2");
    cx32.instance_type = InstanceType::new("cx32").unwrap();
    p.create(&cx32).await.unwrap();
    fake.set_capacity("cx22", true);
    p.create(&spec("n-1")).await.unwrap();
    assert_eq!(fake.servers().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_fleets_in_one_project_never_touch_each_other() {
    let fake = FakeHetzner::start(TOKEN).await;
    // Two daemons on one project: same namespace, pool and node ids.
    let (pa, pb) = (provider(&fake), provider(&fake));
    let fleet = |id: &str| {
        let mut f = TagFilter::default();
        f.0.insert(TAG_NAMESPACE.to_owned(), "fleet-test".to_owned());
        f.0.insert(TAG_FLEET.to_owned(), id.to_owned());
        f
    };
    let ids = |v: &[fleet_core::provider::Instance]| {
        let mut ids: Vec<String> = v.iter().map(|i| i.provider_id.clone()).collect();
        ids.sort();
        ids
    };

    let a1 = pa.create(&spec_in("fleet-a", "n-1")).await.unwrap();
    let a2 = pa.create(&spec_in("fleet-a", "n-2")).await.unwrap();
    // B's node n-1 is a server of its own, not an adoption of A's.
    let b1 = pb.create(&spec_in("fleet-b", "n-1")).await.unwrap();
    assert_ne!(b1.provider_id, a1.provider_id);
    assert_eq!(b1.tags.get(TAG_FLEET).map(String::as_str), Some("fleet-b"));
    assert_eq!(fake.servers().len(), 3);
    // Retried creates find each fleet's own server.
    let again = pb.create(&spec_in("fleet-b", "n-1")).await.unwrap();
    assert_eq!(again.provider_id, b1.provider_id);
    let again = pa.create(&spec_in("fleet-a", "n-1")).await.unwrap();
    assert_eq!(again.provider_id, a1.provider_id);
    assert_eq!(fake.servers().len(), 3);

    // Each lists only its own, with every filter label applied.
    let mut want_a = vec![a1.provider_id.clone(), a2.provider_id.clone()];
    want_a.sort();
    assert_eq!(ids(&pa.list(&fleet("fleet-a")).await.unwrap()), want_a);
    assert_eq!(
        ids(&pb.list(&fleet("fleet-b")).await.unwrap()),
        vec![b1.provider_id.clone()]
    );
    let mut node_1_of_b = fleet("fleet-b");
    node_1_of_b.0.insert(TAG_NODE.to_owned(), "n-1".to_owned());
    assert_eq!(
        ids(&pb.list(&node_1_of_b).await.unwrap()),
        vec![b1.provider_id.clone()]
    );
    let mut pool = fleet("fleet-a");
    pool.0.insert(TAG_POOL.to_owned(), "builds".to_owned());
    assert_eq!(ids(&pa.list(&pool).await.unwrap()), want_a);

    // A deletes everything it lists; B's server stays.
    for i in pa.list(&fleet("fleet-a")).await.unwrap() {
        pa.delete(&i.as_ref()).await.unwrap();
    }
    assert!(pa.list(&fleet("fleet-a")).await.unwrap().is_empty());
    let left = fake.servers();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].id.to_string(), b1.provider_id);
    assert_eq!(
        ids(&pb.list(&fleet("fleet-b")).await.unwrap()),
        vec![b1.provider_id.clone()]
    );
    // A delete naming another node's server refuses.
    let mut wrong = b1.as_ref();
    wrong.node = NodeId::new("n-2").unwrap();
    assert!(matches!(
        pa.delete(&wrong).await,
        Err(ProviderError::Permanent(_))
    ));
    assert_eq!(fake.servers().len(), 1);
    pb.delete(&b1.as_ref()).await.unwrap();
    assert!(fake.servers().is_empty());
}

/// Without a primary IPv4 a server is created IPv6-only, answers on its
/// network's first host, and is priced without the address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_a_primary_ipv4_is_ipv6_only_and_pays_no_address() {
    let fake = FakeHetzner::start(TOKEN).await;
    let with = provider(&fake);
    // €0.0008/h at $1.08.
    assert_eq!(with.billing().charges.public_ipv4.0.micros(), 864);
    assert!(with.billing().charges.ipv4_while_stopped);
    let mut cfg = config(&fake);
    cfg.public_ipv4 = false;
    let without = HetznerProvider::new(cfg).unwrap();
    assert_eq!(without.billing().charges.public_ipv4.0.micros(), 0);
    let inst = without.create(&spec("v6-only")).await.unwrap();
    let address = inst.address.clone().unwrap_or_default();
    let ip: std::net::Ipv6Addr = address
        .parse()
        .unwrap_or_else(|e| panic!("{address:?}: {e}"));
    assert_eq!(ip.segments()[7], 1, "{address}");
    without.delete(&inst.as_ref()).await.unwrap();
}
