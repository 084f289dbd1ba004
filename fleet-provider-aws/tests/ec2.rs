//! The EC2 provider against `moto_server` on loopback: the provider
//! conformance suite, then what is particular to EC2 (tags and idempotent
//! create, spot, user data, pagination-free inventory by tag, resize only
//! when stopped, AMIs, errors).

#![expect(clippy::unwrap_used, reason = "tests")]

use std::collections::BTreeMap;
use std::time::Duration;

use fleet_core::ids::{InstanceType, NodeId, PoolName};
use fleet_core::protocol::{Arch, Secret};
use fleet_core::provider::{
    BootSource, InstanceState, Market, NodeSpec, Provider, ProviderError, TAG_NAMESPACE, TAG_NODE,
    TAG_POOL, TagFilter,
};
use fleet_core::testkit::provider::provider_suite;
use fleet_provider_aws::moto::Moto;
use fleet_provider_aws::{Credentials, Ec2Config, Ec2Provider};

fn provider(moto: &Moto) -> Ec2Provider {
    let creds = Credentials {
        access_key_id: "AKIDTEST".into(),
        secret_access_key: "secret".into(),
        session_token: None,
    };
    let mut cfg = Ec2Config::new("us-east-1", creds);
    cfg.endpoint = moto.url();
    cfg.instance_types = vec!["c7i.large".into(), "c7i.xlarge".into(), "m7g.large".into()];
    cfg.poll_interval = Duration::from_millis(20);
    cfg.wait_timeout = Duration::from_secs(20);
    cfg.user_data =
        Some("#!/bin/sh\n# node={{node}} token={{bootstrap_token}} url={{daemon_url}}\n".into());
    cfg.user_data_vars.insert(
        "daemon_url".into(),
        "wss://fleet.example:7443/v1/agent".into(),
    );
    Ec2Provider::new(cfg).unwrap()
}

fn spec(node: &str, ami: &str) -> NodeSpec {
    let mut tags = BTreeMap::new();
    tags.insert(TAG_NAMESPACE.to_owned(), "fleet-test".to_owned());
    NodeSpec {
        node: NodeId::new(node).unwrap(),
        pool: PoolName::new("builds").unwrap(),
        instance_type: InstanceType::new("c7i.large").unwrap(),
        market: Market::OnDemand,
        source: BootSource::Image {
            image: ami.to_owned(),
        },
        tags,
        bootstrap_token: Some(Secret::new("tok-123")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_against_moto() {
    let moto = Moto::start();
    let ami = moto.some_ami().await;
    let p = provider(&moto);
    provider_suite(&p, "ec2", &ami).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offerings_come_from_describe_instance_types_and_the_price_list() {
    let moto = Moto::start();
    let offerings = provider(&moto).offerings().await.unwrap();
    assert_eq!(offerings.len(), 3);
    let by = |t: &str| {
        offerings
            .iter()
            .find(|o| o.instance_type.as_str() == t)
            .unwrap()
    };
    let c = by("c7i.large");
    assert_eq!((c.cpus, c.memory_mb, c.arch), (2, 4096, Arch::X86_64));
    assert_eq!(c.on_demand.0.micros(), 89_250, "the us-east-1 list price");
    assert_eq!(
        c.spot.as_ref().map(|s| s.price.0.micros()),
        Some(31_238),
        "35 % of on-demand"
    );
    assert_eq!(by("m7g.large").arch, Arch::Aarch64);

    // Another region: prices must come from the config.
    let mut cfg = Ec2Config::new(
        "eu-west-1",
        Credentials {
            access_key_id: "AKIDTEST".into(),
            secret_access_key: "secret".into(),
            session_token: None,
        },
    );
    cfg.endpoint = moto.url();
    cfg.instance_types = vec!["c7i.large".into(), "c7i.xlarge".into()];
    cfg.prices.insert("c7i.large".into(), "0.0999".into());
    let eu = Ec2Provider::new(cfg.clone())
        .unwrap()
        .offerings()
        .await
        .unwrap();
    assert_eq!(eu.len(), 1, "the unpriced type is left out");
    assert_eq!(eu[0].on_demand.0.micros(), 99_900);
    cfg.prices.insert("c7i.xlarge".into(), "free".into());
    assert!(matches!(
        Ec2Provider::new(cfg),
        Err(ProviderError::Permanent(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_are_tagged_idempotent_and_carry_the_user_data() {
    let moto = Moto::start();
    let ami = moto.some_ami().await;
    let p = provider(&moto);
    let inst = p.create(&spec("Build_1-7", &ami)).await.unwrap();
    assert_eq!(inst.state, InstanceState::Running);
    assert_eq!(
        inst.tags.get(TAG_NODE).map(String::as_str),
        Some("Build_1-7")
    );
    assert_eq!(inst.tags.get(TAG_POOL).map(String::as_str), Some("builds"));
    assert!(inst.address.is_some());
    assert_eq!(
        moto.user_data(&inst.provider_id).await,
        "#!/bin/sh\n# node=Build_1-7 token=tok-123 url=wss://fleet.example:7443/v1/agent\n"
    );
    // A retried create (after a crash) finds the instance instead of launching another.
    // The root volume has the size the stopped-disk price assumes.
    assert_eq!(
        moto.first("Action=DescribeVolumes", "size").await,
        "30",
        "root_volume_gb"
    );
    let again = p.create(&spec("Build_1-7", &ami)).await.unwrap();
    assert_eq!(again.provider_id, inst.provider_id);
    let mut filter = TagFilter::default();
    filter.0.insert(TAG_POOL.to_owned(), "builds".to_owned());
    assert_eq!(p.list(&filter).await.unwrap().len(), 1);

    let mut spot = spec("spot-1", &ami);
    spot.market = Market::Spot;
    let s = p.create(&spot).await.unwrap();
    assert_eq!(s.market, Market::Spot);

    // Resize needs the instance stopped.
    let to = InstanceType::new("c7i.xlarge").unwrap();
    let e = p.resize(&inst.as_ref(), &to).await.unwrap_err();
    assert!(matches!(e, ProviderError::Transient(_)), "{e:?}");
    p.stop(&inst.as_ref()).await.unwrap();
    assert_eq!(
        p.resize(&inst.as_ref(), &to).await.unwrap().instance_type,
        to
    );

    let snap = p.snapshot(&inst.as_ref()).await.unwrap();
    assert!(snap.id.starts_with("ami-"), "{snap:?}");
    let from = p
        .create(&NodeSpec {
            source: BootSource::Snapshot(snap),
            ..spec("from-snap", &ami)
        })
        .await
        .unwrap();
    assert_eq!(from.state, InstanceState::Running);

    for i in [inst, s, from] {
        p.delete(&i.as_ref()).await.unwrap();
        p.delete(&i.as_ref()).await.unwrap(); // terminating twice succeeds
    }
    assert!(p.list(&TagFilter::default()).await.unwrap().is_empty());

    // A missing instance is NotFound; a configuration EC2 refuses (here a
    // subnet that does not exist) is not retried.
    let gone = fleet_core::provider::InstanceRef {
        node: NodeId::new("x").unwrap(),
        provider_id: "i-0123456789abcdef0".into(),
    };
    assert!(matches!(
        p.start(&gone).await,
        Err(ProviderError::NotFound(_))
    ));
    let creds = Credentials {
        access_key_id: "AKIDTEST".into(),
        secret_access_key: "secret".into(),
        session_token: None,
    };
    let mut cfg = Ec2Config::new("us-east-1", creds);
    cfg.endpoint = moto.url();
    cfg.subnet_id = Some("subnet-nope".into());
    let bad = Ec2Provider::new(cfg).unwrap();
    let e = bad.create(&spec("bad-subnet", &ami)).await.unwrap_err();
    assert!(!e.is_retryable(), "{e:?}");
    assert!(e.to_string().contains("InvalidSubnetID"), "{e}");
}
