//! A nats-server restart in the middle of a run: acknowledged claims are
//! still in the KV store, both sides reconnect, a retried claim gets the
//! same grant and new claims are served.

#[path = "common/daemon.rs"]
mod daemon;
#[path = "common/server.rs"]
mod server;

use std::sync::Arc;
use std::time::Duration;

use fleet_core::Store;
use fleet_core::protocol::{ClaimRequest, Requirements};
use fleet_core::subjects::Subjects;
use fleet_core::transport::ClaimClient;
use fleet_core::{ClaimId, PoolName, Workspace};
use fleet_transport_nats::{
    KvConfig, NatsClaimClient, NatsConfig, NatsKvStore, NatsTransport, NatsTransportConfig,
};
use server::{NatsServer, ok};

fn request(id: &str) -> ClaimRequest {
    ClaimRequest {
        claim_id: ok(ClaimId::new(id), "claim id"),
        workspace: ok(Workspace::new("ws-a"), "workspace"),
        pool: ok(PoolName::new(daemon::POOL), "pool"),
        requirements: Requirements::default(),
        priority: 0,
        lease_ttl_ms: 600_000,
        max_wait_ms: None,
        recipient: None,
        affinity: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_survive_a_server_restart_and_clients_reconnect() {
    let mut server = NatsServer::start();
    let config = NatsConfig {
        request_timeout_ms: 1_000,
        ..NatsConfig::new(server.url())
    };
    let daemon_conn = ok(config.connect().await, "daemon connect");
    let store = Arc::new(ok(
        NatsKvStore::open(&daemon_conn, &Subjects::default(), &KvConfig::default()).await,
        "open bucket",
    ));
    let transport = Arc::new(ok(
        NatsTransport::start(
            &daemon_conn,
            Subjects::default(),
            NatsTransportConfig::default(),
        )
        .await,
        "start transport",
    ));
    let d = daemon::spawn(transport, store.clone());
    let client = NatsClaimClient::new(
        ok(config.connect().await, "client connect"),
        Subjects::default(),
    )
    .with_attempts(10);

    let within = |f| tokio::time::timeout(Duration::from_secs(30), f);
    let g1 = ok(
        ok(within(client.claim(request("r1"))).await, "claim timed out"),
        "claim r1",
    );
    let key = Subjects::claim_key(&g1.workspace, &g1.claim_id);
    assert!(
        ok(store.get(&key).await, "get").is_some(),
        "the grant is stored"
    );

    server.restart();

    // The acknowledged claim is still there once the store reconnects.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match store.get(&key).await {
            Ok(Some(_)) => break,
            Ok(None) => panic!("an acknowledged claim vanished in a server restart"),
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "store never came back: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    // A retried request (same id) gets the same grant, not a second claim.
    let again = ok(
        ok(within(client.claim(request("r1"))).await, "retry timed out"),
        "retry r1",
    );
    assert_eq!(
        again, g1,
        "a retry after reconnect must return the same grant"
    );
    let g2 = ok(
        ok(within(client.claim(request("r2"))).await, "claim timed out"),
        "claim r2",
    );
    assert_eq!(g2.claim_id.as_str(), "r2");
    let claims = ok(store.list(Subjects::CLAIMS_PREFIX).await, "list claims");
    assert_eq!(
        claims.len(),
        2,
        "exactly two claims stored, no duplicates: {claims:?}"
    );
    d.abort();
}
