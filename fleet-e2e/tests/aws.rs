//! The daemon on the EC2 provider, end to end except for the virtual
//! machine itself: the daemon (a real process) launches an instance on
//! `moto_server` (the AWS API emulator) through aws-sdk-ec2, with
//! credentials from a shared config file's profile and user data rendered
//! from its template; this test plays the instance's first
//! boot — it reads that user data back from the emulator and starts a real
//! `fleet-agent` with it — and the node then serves a claim.

mod common;

use common::*;
use fleet_core::PoolName;
use fleet_core::provider::{Provider, TagFilter};
use fleet_core::transport::ClaimClient;
use fleet_provider_aws::moto::Moto;
use fleet_provider_aws::{Ec2Config, Ec2Provider};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ec2_instance_boots_an_agent_that_serves_a_claim() {
    let moto = Moto::start();
    let ami = moto.some_ami().await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let node_dir = dir.path().join("instance");
    std::fs::create_dir_all(&node_dir).unwrap_or_else(|e| panic!("{e}"));
    let template_file = dir.path().join("user-data");
    std::fs::write(&template_file, cloud::template(&node_dir)).unwrap_or_else(|e| panic!("{e}"));
    // Region and keys from a profile in a shared config file, as
    // `aws configure --profile fleet-e2e` would write it.
    let aws_config = dir.path().join("aws-config");
    std::fs::write(
        &aws_config,
        "[profile fleet-e2e]\nregion = us-east-1\n\
         aws_access_key_id = AKIDE2E\naws_secret_access_key = e2e-secret\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let no_credentials_file = dir.path().join("no-credentials");
    let url = moto.url();
    let mut daemon = Daemon::start_with_env(
        dir.path(),
        |ws| {
            format!(
                "kind = \"aws\"\nprofile = \"fleet-e2e\"\nendpoint = {url:?}\n\
                 daemon_url = \"wss://127.0.0.1:{ws}\"\nuser_data = {template:?}\n\
                 instance_types = [\"c7i.large\", \"c7i.xlarge\"]\n",
                template = template_file.display().to_string(),
            )
        },
        &format!(
            "[[pool]]\nname = \"ec2\"\ninstance_types = [\"c7i.large\"]\nimage = {ami:?}\n\
             strategy = {{ kind = \"cold_image\", idle_timeout_ms = 600000 }}\n"
        ),
        &[
            ("AWS_CONFIG_FILE", &aws_config.display().to_string()),
            (
                "AWS_SHARED_CREDENTIALS_FILE",
                &no_credentials_file.display().to_string(),
            ),
        ],
    );

    let client = daemon.claim_client().await;
    let identity = age::x25519::Identity::generate();
    let mut req = request("ec2-1", Some(identity.to_public().to_string()));
    req.pool = PoolName::new("ec2").unwrap_or_else(|e| panic!("{e}"));
    let claiming = tokio::spawn({
        let client = client.clone();
        async move { client.claim(req).await }
    });

    // What the daemon launched, seen through the emulator.
    let mut cfg = Ec2Config::new("us-east-1");
    cfg.aws = moto.settings();
    let ec2 = Ec2Provider::new(cfg)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let instance = eventually(30, || async {
        ec2.list(&TagFilter::default())
            .await
            .ok()
            .and_then(|l| l.into_iter().next())
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "no instance launched; see {}/daemon.log",
            dir.path().display()
        )
    });
    assert_eq!(instance.instance_type.as_str(), "c7i.large");
    assert_eq!(
        instance.tags.get("fleet-pool").map(String::as_str),
        Some("ec2")
    );

    let user_data = moto.user_data(&instance.provider_id).await;
    let mut agent = cloud::first_boot(&node_dir, &user_data);
    let grant = cloud::grant_and_echo(&daemon, claiming, &identity, "on ec2").await;
    assert_eq!(grant.node, instance.node);

    client
        .release(&grant.workspace, &grant.claim_id)
        .await
        .unwrap_or_else(|e| panic!("release: {e}"));
    let _ = agent.kill();
    let _ = agent.wait();
    assert_eq!(daemon.stop(), Some(0), "clean exit on SIGTERM");
}

/// Two daemons of different namespaces on one account, with the same pool
/// names: each launches and keeps only its own instance; neither adopts,
/// stops nor terminates the other's — also across a restart, when a
/// daemon reconciles with everything the account runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_fleets_on_one_account_keep_to_their_own_instances() {
    let moto = Moto::start();
    let ami = moto.some_ami().await;
    let url = moto.url();
    let mut cfg = Ec2Config::new("us-east-1");
    cfg.aws = moto.settings();
    let ec2 = Ec2Provider::new(cfg)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    two_fleets::keep_apart(
        |dir, ws| {
            let key_file = dir.join("aws.key");
            std::fs::write(&key_file, "AKIDE2E\n").unwrap_or_else(|e| panic!("{e}"));
            let secret_file = dir.join("aws.secret");
            std::fs::write(&secret_file, "e2e-secret\n").unwrap_or_else(|e| panic!("{e}"));
            format!(
                "kind = \"aws\"\nregion = \"us-east-1\"\nendpoint = {url:?}\n\
                 access_key_id_file = {key:?}\nsecret_access_key_file = {secret:?}\n\
                 daemon_url = \"wss://127.0.0.1:{ws}\"\nuser_data = {template:?}\n\
                 instance_types = [\"c7i.large\"]\n",
                key = key_file.display().to_string(),
                secret = secret_file.display().to_string(),
                template = two_fleets::user_data(dir),
            )
        },
        &format!("instance_types = [\"c7i.large\"]\nimage = {ami:?}\n"),
        || async {
            ec2.list(&TagFilter::default())
                .await
                .unwrap_or_else(|e| panic!("{e}"))
                .into_iter()
                .map(|i| two_fleets::Seen {
                    id: i.provider_id,
                    running: i.state == fleet_core::provider::InstanceState::Running,
                    tags: i.tags,
                })
                .collect()
        },
    )
    .await;
}
