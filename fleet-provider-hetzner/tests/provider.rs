//! The Hetzner provider against a stateful fake of the Hetzner Cloud API on
//! loopback: the provider conformance suite, then what is particular to
//! Hetzner (labels and names, idempotent create, pagination, rate limits,
//! capacity errors, change_type needing the server off, user data).

#![expect(clippy::unwrap_used, reason = "tests")]

use std::collections::BTreeMap;
use std::time::Duration;

use fleet_core::ids::{InstanceType, NodeId, PoolName};
use fleet_core::protocol::Secret;
use fleet_core::provider::{
    BootSource, InstanceState, Market, NodeSpec, Provider, ProviderError, TAG_NAMESPACE, TAG_NODE,
    TAG_POOL, TagFilter,
};
use fleet_core::testkit::provider::provider_suite;
use fleet_provider_hetzner::fake::FakeHetzner;
use fleet_provider_hetzner::{HetznerConfig, HetznerProvider};

const TOKEN: &str = "test-token";

fn provider(fake: &FakeHetzner) -> HetznerProvider {
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
    HetznerProvider::new(cfg).unwrap()
}

fn spec(node: &str) -> NodeSpec {
    let mut tags = BTreeMap::new();
    tags.insert(TAG_NAMESPACE.to_owned(), "fleet-test".to_owned());
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
    assert_eq!(s.name, "build-1-7", "server names are hostnames");
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

    fake.rate_limit_next(1);
    match p.offerings().await {
        Err(ProviderError::RateLimited(why)) => assert!(why.contains("resets"), "{why}"),
        other => panic!("expected RateLimited, got {other:?}"),
    }
    assert!(p.offerings().await.is_ok(), "the next call goes through");

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
