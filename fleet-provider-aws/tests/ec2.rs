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
use fleet_provider_aws::{ConfigFile, Ec2Config, Ec2Provider};

fn config(moto: &Moto) -> Ec2Config {
    let mut cfg = Ec2Config::new("us-east-1");
    cfg.aws = moto.settings();
    cfg.instance_types = vec!["c7i.large".into(), "c7i.xlarge".into(), "m7g.large".into()];
    cfg.poll_interval = Duration::from_millis(20);
    cfg.wait_timeout = Duration::from_secs(20);
    cfg.user_data =
        Some("#!/bin/sh\n# node={{node}} token={{bootstrap_token}} url={{daemon_url}}\n".into());
    cfg.user_data_vars.insert(
        "daemon_url".into(),
        "wss://fleet.example:7443/v1/agent".into(),
    );
    cfg
}

async fn provider(moto: &Moto) -> Ec2Provider {
    Ec2Provider::new(config(moto)).await.unwrap()
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
    let p = provider(&moto).await;
    provider_suite(&p, "ec2", &ami).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offerings_come_from_describe_instance_types_and_the_price_list() {
    let moto = Moto::start();
    let offerings = provider(&moto).await.offerings().await.unwrap();
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
    // moto's DescribeSpotPriceHistory answers $0.00001 in every zone: the
    // price comes from the API, not the configured fraction (35 %: 31_238).
    assert_eq!(
        c.spot.as_ref().map(|s| s.price.0.micros()),
        Some(10),
        "the spot price EC2 reports"
    );
    assert_eq!(by("m7g.large").arch, Arch::Aarch64);

    // Another region: prices must come from the config.
    let mut cfg = Ec2Config::new("eu-west-1");
    cfg.aws = moto.settings();
    cfg.aws.region = Some("eu-west-1".into());
    cfg.instance_types = vec!["c7i.large".into(), "c7i.xlarge".into()];
    cfg.prices.insert("c7i.large".into(), "0.0999".into());
    let eu = Ec2Provider::new(cfg.clone())
        .await
        .unwrap()
        .offerings()
        .await
        .unwrap();
    assert_eq!(eu.len(), 1, "the unpriced type is left out");
    assert_eq!(eu[0].on_demand.0.micros(), 99_900);
    cfg.prices.insert("c7i.xlarge".into(), "free".into());
    assert!(matches!(
        Ec2Provider::new(cfg).await,
        Err(ProviderError::Permanent(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_are_tagged_idempotent_and_carry_the_user_data() {
    let moto = Moto::start();
    let ami = moto.some_ami().await;
    let p = provider(&moto).await;
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
    let volumes = moto.ec2().await.describe_volumes().send().await.unwrap();
    assert_eq!(
        volumes
            .volumes()
            .iter()
            .map(|v| v.size())
            .collect::<Vec<_>>(),
        [Some(30)],
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
    let mut cfg = config(&moto);
    cfg.subnet_id = Some("subnet-nope".into());
    let bad = Ec2Provider::new(cfg).await.unwrap();
    let e = bad.create(&spec("bad-subnet", &ami)).await.unwrap_err();
    assert!(!e.is_retryable(), "{e:?}");
    assert!(e.to_string().contains("InvalidSubnetID"), "{e}");
}

/// Credentials from a shared config file's profile (not the environment):
/// the provider works against the emulator with them, and says where they
/// came from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_from_a_shared_config_profile() {
    let moto = Moto::start();
    let dir = std::env::temp_dir().join(format!("fleet-aws-profile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config_file = dir.join("config");
    std::fs::write(
        &config_file,
        "[default]\nregion = eu-north-1\n\n[profile fleet-builds]\nregion = us-east-1\n\
         aws_access_key_id = AKIDPROFILE\naws_secret_access_key = from-the-profile\n",
    )
    .unwrap();
    let mut cfg = config(&moto);
    cfg.aws.static_keys = None;
    cfg.aws.region = None; // the profile's
    cfg.aws.profile = Some("fleet-builds".into());
    cfg.aws.config_files = vec![ConfigFile::Config(config_file)];
    let p = Ec2Provider::new(cfg).await.unwrap();
    assert_eq!(p.region(), "us-east-1", "the profile's region");
    assert_eq!(p.access_key_id().await.unwrap(), "AKIDPROFILE");
    let ami = moto.some_ami().await;
    let inst = p.create(&spec("profile-1", &ami)).await.unwrap();
    assert_eq!(inst.state, InstanceState::Running);
    p.delete(&inst.as_ref()).await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two fleets in one account, same namespace, pool and node ids: each
/// creates, finds and lists only its own instances.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_fleets_in_one_account_never_share_an_instance() {
    use fleet_core::provider::TAG_FLEET;
    let moto = Moto::start();
    let ami = moto.some_ami().await;
    let p = provider(&moto).await;
    let in_fleet = |fleet: &str| {
        let mut s = spec("default-1-1", &ami);
        s.tags.insert(TAG_FLEET.to_owned(), fleet.to_owned());
        s
    };
    let a = p.create(&in_fleet("aaaa1111")).await.unwrap();
    let b = p.create(&in_fleet("bbbb2222")).await.unwrap();
    assert_ne!(
        a.provider_id, b.provider_id,
        "fleet b adopted fleet a's instance"
    );
    // A retried create still finds each fleet's own.
    assert_eq!(
        p.create(&in_fleet("aaaa1111")).await.unwrap().provider_id,
        a.provider_id
    );
    let only = |fleet: &str| {
        let mut f = TagFilter::default();
        f.0.insert(TAG_NAMESPACE.to_owned(), "fleet-test".to_owned());
        f.0.insert(TAG_FLEET.to_owned(), fleet.to_owned());
        f
    };
    let listed = p.list(&only("bbbb2222")).await.unwrap();
    assert_eq!(
        listed
            .iter()
            .map(|i| i.provider_id.as_str())
            .collect::<Vec<_>>(),
        [b.provider_id.as_str()]
    );
    p.delete(&b.as_ref()).await.unwrap();
    assert_eq!(
        p.list(&only("aaaa1111")).await.unwrap().len(),
        1,
        "a's instance survives"
    );
    p.delete(&a.as_ref()).await.unwrap();
}

/// `public_ipv4` is asked for at launch and priced: without an address an
/// instance pays no IPv4 charge; with one (or when the subnet decides) it
/// pays $0.005/h while running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_ipv4_address_is_asked_for_and_priced_as_configured() {
    let moto = Moto::start();
    let ami = moto.some_ami().await;
    let ec2 = moto.ec2().await;
    let public_ip = |id: String| {
        let ec2 = ec2.clone();
        async move {
            let out = ec2
                .describe_instances()
                .instance_ids(id)
                .send()
                .await
                .unwrap();
            out.reservations()[0].instances()[0]
                .public_ip_address()
                .map(str::to_owned)
        }
    };
    for (setting, address, charge) in [
        (Some(false), false, 0),
        (Some(true), true, 5_000),
        (None, true, 5_000),
    ] {
        let mut cfg = config(&moto);
        cfg.public_ipv4 = setting;
        let p = Ec2Provider::new(cfg).await.unwrap();
        assert_eq!(
            p.billing().charges.public_ipv4.0.micros(),
            charge,
            "{setting:?}"
        );
        let node = format!(
            "ip-{}",
            setting.map_or("subnet", |s| if s { "yes" } else { "no" })
        );
        let inst = p.create(&spec(&node, &ami)).await.unwrap();
        assert_eq!(
            public_ip(inst.provider_id.clone()).await.is_some(),
            address,
            "{setting:?}"
        );
        p.delete(&inst.as_ref()).await.unwrap();
    }
}
