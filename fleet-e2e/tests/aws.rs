//! The daemon on the EC2 provider, end to end except for the virtual
//! machine itself: the daemon (a real process) launches an instance on
//! `moto_server` (the AWS API emulator) with SigV4-signed calls and user
//! data rendered from its template; this test plays the instance's first
//! boot — it reads that user data back from the emulator and starts a real
//! `fleet-agent` with it — and the node then serves a claim.

mod common;

use common::*;
use fleet_core::PoolName;
use fleet_core::provider::{Provider, TagFilter};
use fleet_core::transport::ClaimClient;
use fleet_provider_aws::moto::Moto;
use fleet_provider_aws::{Credentials, Ec2Config, Ec2Provider};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ec2_instance_boots_an_agent_that_serves_a_claim() {
    let moto = Moto::start();
    let ami = moto.some_ami().await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let node_dir = dir.path().join("instance");
    std::fs::create_dir_all(&node_dir).unwrap_or_else(|e| panic!("{e}"));
    let template_file = dir.path().join("user-data");
    std::fs::write(&template_file, cloud::template(&node_dir)).unwrap_or_else(|e| panic!("{e}"));
    let key_file = dir.path().join("aws.key");
    std::fs::write(&key_file, "AKIDE2E\n").unwrap_or_else(|e| panic!("{e}"));
    let secret_file = dir.path().join("aws.secret");
    std::fs::write(&secret_file, "e2e-secret\n").unwrap_or_else(|e| panic!("{e}"));
    let url = moto.url();
    let mut daemon = Daemon::start_with(
        dir.path(),
        |ws| {
            format!(
                "kind = \"aws\"\nregion = \"us-east-1\"\nendpoint = {url:?}\n\
                 access_key_id_file = {key:?}\nsecret_access_key_file = {secret:?}\n\
                 daemon_url = \"wss://127.0.0.1:{ws}\"\nuser_data = {template:?}\n\
                 instance_types = [\"c7i.large\", \"c7i.xlarge\"]\n",
                key = key_file.display().to_string(),
                secret = secret_file.display().to_string(),
                template = template_file.display().to_string(),
            )
        },
        &format!(
            "[[pool]]\nname = \"ec2\"\ninstance_types = [\"c7i.large\"]\nimage = {ami:?}\n\
             strategy = {{ kind = \"cold_image\", idle_timeout_ms = 600000 }}\n"
        ),
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
    let mut cfg = Ec2Config::new(
        "us-east-1",
        Credentials {
            access_key_id: "AKIDE2E".into(),
            secret_access_key: "e2e-secret".into(),
            session_token: None,
        },
    );
    cfg.endpoint = moto.url();
    let ec2 = Ec2Provider::new(cfg).unwrap_or_else(|e| panic!("{e}"));
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
