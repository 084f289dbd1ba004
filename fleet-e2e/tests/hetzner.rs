//! The daemon on the Hetzner provider, end to end except for the virtual
//! machine itself: the daemon (a real process) creates a server through a
//! fake of the Hetzner Cloud API on loopback, with user data rendered from
//! its template; this test plays the server's first boot — it reads that
//! user data from the fake and starts a real `fleet-agent` with it — and the
//! node then serves a claim through its mTLS gateway.

mod common;

use common::*;
use fleet_core::transport::ClaimClient;
use fleet_core::{ClaimId, PoolName};
use fleet_provider_hetzner::fake::FakeHetzner;

/// The `[provider]` section of a daemon on `fake` whose WebSocket port is
/// `ws`, selling `types`, with the API token in a file under `dir` and the
/// user data template at `template`.
fn provider_section(
    fake: &FakeHetzner,
    dir: &std::path::Path,
    ws: u16,
    types: &str,
    template: &str,
) -> String {
    let token_file = dir.join("hcloud.token");
    std::fs::write(&token_file, "hz-token\n").unwrap_or_else(|e| panic!("{e}"));
    format!(
        "kind = \"hetzner\"\nlocation = \"fsn1\"\napi_url = {url:?}\n\
         token_file = {token:?}\ndaemon_url = \"wss://127.0.0.1:{ws}\"\n\
         user_data = {template:?}\nserver_types = {types}\n",
        url = fake.url(),
        token = token_file.display().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hetzner_server_boots_an_agent_that_serves_a_claim() {
    let fake = FakeHetzner::start("hz-token").await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let node_dir = dir.path().join("server");
    std::fs::create_dir_all(&node_dir).unwrap_or_else(|e| panic!("{e}"));
    let template = cloud::template(&node_dir);
    let template_file = dir.path().join("user-data");
    std::fs::write(&template_file, template).unwrap_or_else(|e| panic!("{e}"));
    let mut daemon = Daemon::start_with(
        dir.path(),
        |ws| {
            provider_section(
                &fake,
                dir.path(),
                ws,
                r#"["cx22", "cx32"]"#,
                &template_file.display().to_string(),
            )
        },
        "[[pool]]\nname = \"hz\"\ninstance_types = [\"cx22\"]\nimage = \"ubuntu-24.04\"\n\
         strategy = { kind = \"cold_image\", idle_timeout_ms = 600000 }\n",
    );

    // A claim makes the daemon create a server.
    let client = daemon.claim_client().await;
    let identity = age::x25519::Identity::generate();
    let mut req = request("hz-1", Some(identity.to_public().to_string()));
    req.pool = PoolName::new("hz").unwrap_or_else(|e| panic!("{e}"));
    let claiming = tokio::spawn({
        let client = client.clone();
        async move { client.claim(req).await }
    });
    let server = eventually(30, || async { fake.servers().into_iter().next() })
        .await
        .unwrap_or_else(|| panic!("no server created; see {}/daemon.log", dir.path().display()));
    assert_eq!(server.server_type, "cx22");
    assert_eq!(server.image, "ubuntu-24.04");
    assert_eq!(
        server.labels.get("fleet-pool").map(String::as_str),
        Some("hz")
    );

    // The server's first boot: what cloud-init would do with the user data.
    let user_data = server.user_data.unwrap_or_else(|| panic!("no user data"));
    let mut agent = cloud::first_boot(&node_dir, &user_data);

    let grant = cloud::grant_and_echo(&daemon, claiming, &identity, "on hetzner").await;
    assert_eq!(
        grant.claim_id,
        ClaimId::new("hz-1").unwrap_or_else(|e| panic!("{e}"))
    );

    // The daemon knows the node as the fake's server and prices it as Hetzner does.
    let (_, nodes) = daemon.get("/v1/nodes").await;
    assert!(nodes.contains("cx22"), "{nodes}");
    client
        .release(&grant.workspace, &grant.claim_id)
        .await
        .unwrap_or_else(|e| panic!("release: {e}"));
    let _ = agent.kill();
    let _ = agent.wait();
    assert_eq!(daemon.stop(), Some(0), "clean exit on SIGTERM");
}

/// Two daemons of different namespaces on one Hetzner project, with the same
/// pool names: each creates and keeps only its own server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_fleets_on_one_project_keep_to_their_own_servers() {
    let fake = FakeHetzner::start("hz-token").await;
    two_fleets::keep_apart(
        |dir, ws| provider_section(&fake, dir, ws, r#"["cx22"]"#, &two_fleets::user_data(dir)),
        "instance_types = [\"cx22\"]\nimage = \"ubuntu-24.04\"\n",
        || async {
            fake.servers()
                .into_iter()
                .map(|s| two_fleets::Seen {
                    id: s.id.to_string(),
                    running: !matches!(s.status.as_str(), "off" | "stopping" | "deleting"),
                    tags: s.labels,
                })
                .collect()
        },
    )
    .await;
}

/// Hetzner sells out of the pool's preferred server type: the daemon creates
/// the next cheapest type that is large enough, says why in `GET
/// /v1/pools`, and once the cooldown has passed new nodes get the preferred
/// type again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sold_out_server_type_falls_back_to_the_next_cheapest() {
    use fleet_core::protocol::PoolInfo;
    let fake = FakeHetzner::start("hz-token").await;
    fake.set_capacity("cx22", false);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let daemon = Daemon::start_with(
        dir.path(),
        |ws| {
            provider_section(
                &fake,
                dir.path(),
                ws,
                r#"["cx22", "cx32"]"#,
                &two_fleets::user_data(dir.path()),
            )
        },
        "[[pool]]\nname = \"hz\"\ninstance_types = [\"cx22\", \"cx32\"]\nimage = \"ubuntu-24.04\"\n\
         strategy = { kind = \"cold_image\", idle_timeout_ms = 600000 }\n\
         [timing]\ncapacity_cooldown_ms = 3000\n",
    );
    let client = daemon.claim_client().await;
    let claim = |id: &str| {
        let mut req = request(id, None);
        req.pool = PoolName::new("hz").unwrap_or_else(|e| panic!("{e}"));
        let client = client.clone();
        tokio::spawn(async move { client.claim(req).await })
    };
    let _first = claim("hz-1");
    let fallback = eventually(30, || async { fake.servers().into_iter().next() })
        .await
        .unwrap_or_else(|| panic!("no server created; see {}/daemon.log", dir.path().display()));
    assert_eq!(fallback.server_type, "cx32", "the next cheapest type");
    let (status, body) = daemon.get("/v1/pools").await;
    assert_eq!(status, 200, "{body}");
    let pools: Vec<PoolInfo> =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    let shortage = pools
        .iter()
        .find(|p| p.name.as_str() == "hz")
        .and_then(|p| p.shortages.first())
        .unwrap_or_else(|| panic!("no shortage reported: {body}"));
    assert_eq!(shortage.instance_type.as_str(), "cx22");
    assert_eq!(shortage.using.as_ref().map(|t| t.as_str()), Some("cx32"));
    assert!(
        shortage.error.contains("resource_unavailable"),
        "{shortage:?}"
    );

    // cx22 is back and the cooldown passes: the next node is a cx22.
    fake.set_capacity("cx22", true);
    tokio::time::sleep(std::time::Duration::from_millis(3_500)).await;
    let _second = claim("hz-2");
    let preferred = eventually(30, || async {
        fake.servers().into_iter().find(|s| s.id != fallback.id)
    })
    .await
    .unwrap_or_else(|| panic!("no second server; see {}/daemon.log", dir.path().display()));
    assert_eq!(preferred.server_type, "cx22", "back to the preferred type");
}
