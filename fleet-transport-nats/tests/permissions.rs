//! The example server config's per-workspace permissions are enforced, and
//! the daemon and a workspace's caller work through them.

#[path = "common/daemon.rs"]
mod daemon;
#[path = "common/server.rs"]
mod server;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fleet_core::memory::store::MemoryStore;
use fleet_core::protocol::{ClaimRequest, Requirements};
use fleet_core::subjects::Subjects;
use fleet_core::transport::{ClaimClient, ClaimError};
use fleet_core::{ClaimId, PoolName, Workspace};
use fleet_transport_nats::{
    KvConfig, NatsClaimClient, NatsConfig, NatsKvStore, NatsTransport, NatsTransportConfig,
};
use server::{NatsServer, ok};

fn request(ws: &str, id: &str) -> ClaimRequest {
    ClaimRequest {
        claim_id: ok(ClaimId::new(id), "claim id"),
        workspace: ok(Workspace::new(ws), "workspace"),
        pool: ok(PoolName::new(daemon::POOL), "pool"),
        requirements: Requirements::default(),
        priority: 0,
        lease_ttl_ms: 60_000,
        max_wait_ms: None,
        recipient: None,
        affinity: None,
    }
}

fn is_permission(r: &Result<impl std::fmt::Debug, ClaimError>) -> bool {
    matches!(r, Err(ClaimError::Transport(e)) if e.kind() == "permission")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workspace_a_cannot_reach_workspace_b() {
    let conf = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/nats-server.conf");
    let server = NatsServer::start_with(
        Some(&conf),
        &[
            ("FLEET_DAEMON_PASSWORD", "daemon-pw"),
            ("FLEET_TEAM_A_PASSWORD", "team-a-pw"),
            ("FLEET_TEAM_B_PASSWORD", "team-b-pw"),
        ],
    );
    let daemon_conn = ok(
        NatsConfig {
            inbox_prefix: Some("_INBOX.daemon".to_owned()),
            ..NatsConfig::new(server.url_as("fleet-daemon", "daemon-pw"))
        }
        .connect()
        .await,
        "daemon connect",
    );
    let transport = Arc::new(ok(
        NatsTransport::start(
            &daemon_conn,
            Subjects::default(),
            NatsTransportConfig::default(),
        )
        .await,
        "start transport",
    ));
    // The daemon's store works through its permissions too.
    let kv = ok(
        NatsKvStore::open(&daemon_conn, &Subjects::default(), &KvConfig::default()).await,
        "open bucket as the daemon",
    );
    ok(
        fleet_core::Store::create(
            &kv,
            &ok(fleet_core::store::Key::new("perm.k"), "key"),
            bytes::Bytes::from_static(b"v"),
        )
        .await,
        "daemon writes the store",
    );
    let d = daemon::spawn(transport, Arc::new(MemoryStore::new()));

    let team_a = ok(Workspace::new("team-a"), "ws");
    let a_conn = ok(
        NatsConfig {
            inbox_prefix: Some(NatsConfig::workspace_inbox_prefix(&team_a)),
            request_timeout_ms: 2_000,
            ..NatsConfig::new(server.url_as("team-a", "team-a-pw"))
        }
        .connect()
        .await,
        "team-a connect",
    );
    let a = NatsClaimClient::new(a_conn.clone(), Subjects::default());

    // Its own workspace works end to end.
    let grant = ok(
        tokio::time::timeout(Duration::from_secs(30), a.claim(request("team-a", "a1"))).await,
        "claim timed out",
    );
    let grant = ok(grant, "team-a claims in team-a");
    assert_eq!(grant.workspace, team_a);
    let _own = ok(
        a.revocations(&team_a).await,
        "team-a hears its own revocations",
    );

    // Workspace B's subjects are refused.
    let r = a.claim(request("team-b", "b1")).await;
    assert!(
        is_permission(&r),
        "team-a claiming in team-b must be a permission error, got {r:?}"
    );
    let team_b = ok(Workspace::new("team-b"), "ws");
    let r = a.revocations(&team_b).await.map(|_| ());
    assert!(
        is_permission(&r),
        "team-a subscribing to team-b must be a permission error, got {r:?}"
    );
    // No JetStream for callers: the store is the daemon's.
    let r = NatsKvStore::open(&a_conn, &Subjects::default(), &KvConfig::default()).await;
    assert!(r.is_err(), "a workspace caller must not open the bucket");

    d.abort();
}
