//! The Store on JetStream KV against a real nats-server.

#[path = "common/server.rs"]
mod server;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fleet_core::store::{Key, Revision, Store, StoreError};
use fleet_core::subjects::Subjects;
use fleet_transport_nats::{KvConfig, NatsConfig, NatsKvStore};
use server::{NatsServer, ok};

async fn open(server: &NatsServer) -> NatsKvStore {
    let conn = ok(NatsConfig::new(server.url()).connect().await, "connect");
    ok(
        NatsKvStore::open(&conn, &Subjects::default(), &KvConfig::default()).await,
        "open bucket",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_suite_passes_against_jetstream_kv() {
    let server = NatsServer::start();
    let store = open(&server).await;
    assert_eq!(store.bucket(), "fleet");
    ok(
        tokio::time::timeout(
            Duration::from_secs(120),
            fleet_core::testkit::store::store_suite(&store, "conformance.run1"),
        )
        .await,
        "store suite hung",
    );
}

/// Eight tasks, each on its own connection, race `update` on one key for
/// several rounds: each round exactly one wins and the others see its
/// revision in their `Conflict`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cas_has_one_winner_per_revision() {
    const RACERS: usize = 8;
    const ROUNDS: usize = 10;
    let server = NatsServer::start();
    let mut stores = Vec::new();
    for _ in 0..RACERS {
        stores.push(Arc::new(open(&server).await));
    }
    let k = ok(Key::new("cas.race.k"), "key");
    let mut rev = ok(
        stores[0].create(&k, Bytes::from_static(b"base")).await,
        "create",
    );
    for round in 0..ROUNDS {
        let mut tasks = Vec::new();
        for (i, s) in stores.iter().enumerate() {
            let s = Arc::clone(s);
            let k = k.clone();
            tasks.push(tokio::spawn(async move {
                s.update(&k, Bytes::from(format!("r{round}-w{i}")), rev)
                    .await
            }));
        }
        let mut results = Vec::new();
        for t in tasks {
            results.push(ok(t.await, "join"));
        }
        let winners: Vec<Revision> = results
            .iter()
            .filter_map(|r| r.as_ref().ok().copied())
            .collect();
        assert_eq!(
            winners.len(),
            1,
            "round {round}: exactly one winner, got {results:?}"
        );
        let win = winners[0];
        for r in &results {
            match r {
                Ok(_) => {}
                Err(StoreError::Conflict {
                    expected, current, ..
                }) => {
                    assert_eq!(*expected, rev);
                    assert_eq!(*current, win, "a loser's Conflict names the winner");
                }
                Err(e) => panic!("round {round}: a loser must get Conflict, got {e}"),
            }
        }
        assert!(win > rev);
        rev = win;
    }
}

/// Acknowledged writes survive a server restart (file storage), and the
/// client reconnects by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_a_server_restart() {
    let mut server = NatsServer::start();
    let store = open(&server).await;
    let k = ok(Key::new("claims.ws-a.c1"), "key");
    let rev = ok(
        store.create(&k, Bytes::from_static(b"granted")).await,
        "create",
    );
    server.restart();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let got = loop {
        match store.get(&k).await {
            Ok(v) => break v,
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing_free_sleep(e).await;
            }
            Err(e) => panic!("store did not come back after restart: {e}"),
        }
    };
    let got = got.unwrap_or_else(|| panic!("an acknowledged write vanished in a restart"));
    assert_eq!(got.revision, rev);
    assert_eq!(got.value, Bytes::from_static(b"granted"));
    let next = ok(
        store.update(&k, Bytes::from_static(b"renewed"), rev).await,
        "update after restart",
    );
    assert!(next > rev);
}

async fn tracing_free_sleep(_e: StoreError) {
    tokio::time::sleep(Duration::from_millis(100)).await;
}
