//! The scale-out path as it would run: a three-node JetStream cluster
//! (three `nats-server` processes on loopback, routes between them) holding
//! the fleet's records in a bucket with three replicas, and two daemons
//! contending for the lease. In the middle of a stream of claims the
//! leading daemon and one NATS server are killed with SIGKILL: the other
//! daemon leads within the lease (it lapses at most one lease after the
//! kill, and the follower looks every third of a lease), every claim a
//! caller was told about is
//! granted exactly once (a retry with the same id gets the same grant) and
//! released, and no claim is lost.
//!
//! The lease is 10 s: longer than JetStream takes to re-elect the leaders
//! of a stream whose leader's server died (4-6 s here, during which the
//! bucket answers "503 no responders" or "no stream found", and the
//! follower keeps waiting rather than giving up). With a lease shorter
//! than that, takeover is that election instead (2.8-9.7 s with 3 s).
//!
//! The two daemons share a data dir: what a real pair shares by other means
//! — the pool CA and sealing key (copied), and the provider's view of the
//! nodes (one cloud account) — the local provider keeps there.

mod common;
#[path = "../../fleet-transport-nats/tests/common/server.rs"]
mod nats_server;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use fleet_core::protocol::{ClaimGrant, ClaimRecord, ClaimState};
use fleet_core::subjects::Subjects;
use fleet_core::transport::ClaimClient;
use fleet_transport_nats::{KvConfig, NatsClaimClient, NatsConfig, NatsKvStore};

/// Three JetStream servers in one cluster, killed on drop.
struct Cluster {
    servers: Vec<Option<Child>>,
    ports: Vec<u16>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    fn start() -> Cluster {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let routes: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let mut servers = Vec::new();
        for i in 0..3 {
            let others: Vec<String> = (0..3)
                .filter(|j| *j != i)
                .map(|j| format!("nats-route://127.0.0.1:{}", routes[j]))
                .collect();
            let conf = format!(
                "server_name: n{i}\nlisten: 127.0.0.1:{port}\n\
                 jetstream {{ store_dir: {store:?} }}\n\
                 cluster {{\n  name: fleet-e2e\n  listen: 127.0.0.1:{route}\n  routes: [{others}]\n}}\n",
                port = ports[i],
                store = dir.path().join(format!("n{i}")).display().to_string(),
                route = routes[i],
                others = others.join(", "),
            );
            let path = dir.path().join(format!("n{i}.conf"));
            std::fs::write(&path, conf).unwrap_or_else(|e| panic!("{e}"));
            let log = std::fs::File::create(dir.path().join(format!("n{i}.log")))
                .unwrap_or_else(|e| panic!("{e}"));
            let child = Command::new(nats_server::binary())
                .arg("-c")
                .arg(&path)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap_or_else(|e| panic!("{e}")))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("spawn nats-server: {e}"));
            servers.push(Some(child));
        }
        Cluster {
            servers,
            ports,
            _dir: dir,
        }
    }

    fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect()
    }

    fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.servers[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits until JetStream can create the fleet's bucket with three
    /// replicas (the cluster has formed and elected its meta leader).
    async fn await_bucket(&self) -> fleet_transport_nats::Connection {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut cfg = NatsConfig::new(self.urls()[0].clone());
            cfg.urls = self.urls();
            if let Ok(conn) = cfg.connect().await {
                let kv = KvConfig {
                    replicas: 3,
                    ..KvConfig::default()
                };
                if NatsKvStore::open(&conn, &Subjects::default(), &kv)
                    .await
                    .is_ok()
                {
                    return conn;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the JetStream cluster never formed"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.servers.len() {
            self.kill9(i);
        }
    }
}

/// The last lines of a log, for a failure message (the dir goes with it).
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

async fn readyz(base: &str) -> bool {
    tokio::net::TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .is_ok()
        && http(base, "GET", "/readyz", None).await.0 == 200
}

/// Claims `id` until granted, retrying with the same id as a caller does
/// when its request is lost; then releases it the same way.
async fn claim_and_release(client: &NatsClaimClient, id: &str) -> ClaimGrant {
    let deadline = Instant::now() + Duration::from_secs(90);
    let grant = loop {
        match tokio::time::timeout(Duration::from_secs(10), client.claim(request(id, None))).await {
            Ok(Ok(g)) => break g,
            _ => {
                assert!(Instant::now() < deadline, "{id}: never granted");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    loop {
        match tokio::time::timeout(
            Duration::from_secs(10),
            client.release(&grant.workspace, &grant.claim_id),
        )
        .await
        {
            Ok(Ok(())) => break,
            _ => {
                assert!(Instant::now() < deadline, "{id}: never released");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    grant
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_on_a_three_node_jetstream_cluster_survive_losing_the_leader_and_a_server() {
    const CALLERS: usize = 4;
    const PER_CALLER: usize = 10;
    const LEASE: Duration = Duration::from_secs(10);
    let mut cluster = Cluster::start();
    let conn = cluster.await_bucket().await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let urls: Vec<String> = cluster.urls();
    let extra = format!(
        "[transport.nats]\nurls = {urls:?}\n[store.nats]\nreplicas = 3\n\
         [leader]\nlease_ms = {lease}\n\
         [[pool]]\nname = \"default\"\ninstance_types = [\"local.node\"]\n\
         min_nodes = 1\nmax_nodes = 2\nslots_per_node = 16\n",
        lease = LEASE.as_millis()
    );
    let mut a = Daemon::start(dir.path(), &extra);
    let (mut b, base_b) = a.follower(dir.path()).await;
    assert!(!readyz(&base_b).await, "the second daemon must follow");
    // `fleetctl leader` on the leader names it and sees the follower
    // waiting (it notes itself in the shared store every third of a lease).
    let seen = eventually(30, || async {
        let out = fleetctl(&a, &["--json", "leader"], 30);
        let info: fleet_core::protocol::LeaderInfo = serde_json::from_slice(&out.stdout).ok()?;
        (info.leader
            && info.lease.as_ref().map(|l| &l.holder) == Some(&info.this_daemon)
            && info.followers.len() == 1)
            .then_some(info)
    })
    .await;
    assert!(seen.is_some(), "the leader never saw its follower");

    let client = NatsClaimClient::new(conn, Subjects::default());
    let granted = Arc::new(Mutex::new(BTreeMap::<String, ClaimGrant>::new()));
    let callers: Vec<_> = (0..CALLERS)
        .map(|c| {
            let (client, granted) = (client.clone(), granted.clone());
            tokio::spawn(async move {
                for i in 0..PER_CALLER {
                    let id = format!("s{c}-{i}");
                    let grant = claim_and_release(&client, &id).await;
                    let again = granted
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(id.clone(), grant);
                    assert!(again.is_none(), "{id} granted twice to its caller");
                }
            })
        })
        .collect();

    // A third of the way through the stream: the leader and a NATS server die.
    let third = eventually(120, || async {
        let n = granted.lock().map(|g| g.len()).unwrap_or(0);
        (n >= CALLERS * PER_CALLER / 3).then_some(())
    })
    .await;
    assert!(third.is_some(), "the stream never got going");
    a.kill9();
    cluster.kill9(0);
    let killed = Instant::now();
    let took_over = eventually(60, || async { readyz(&base_b).await.then_some(()) }).await;
    let takeover = killed.elapsed();
    assert!(
        took_over.is_some(),
        "the follower never led; its log:\n{}",
        log_tail(&dir.path().join("daemon-b.log"))
    );
    println!("takeover after kill -9 of the leader and one of three NATS servers: {takeover:?}");
    // The lease lapses within one lease of the kill; the follower's next
    // look comes within a third of one more (and a second of slack for
    // the start itself).
    assert!(
        takeover < LEASE + LEASE / 3 + Duration::from_secs(1),
        "took over after {takeover:?}, beyond the {LEASE:?} lease and one look"
    );

    for c in callers {
        c.await.unwrap_or_else(|e| panic!("caller: {e}"));
    }
    let granted = granted
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    assert_eq!(granted.len(), CALLERS * PER_CALLER);

    // The new leader's records: every claim once, released, on the node
    // its caller was granted.
    let token = std::fs::read_to_string(dir.path().join("data/admin.token")).unwrap_or_default();
    let (status, body) = http(&base_b, "GET", "/v1/claims", Some(token.trim())).await;
    assert_eq!(status, 200, "{body}");
    let records: Vec<ClaimRecord> =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    let mut seen = BTreeSet::new();
    for r in &records {
        let id = r.request.claim_id.to_string();
        assert!(seen.insert(id.clone()), "{id} stored twice");
        if let Some(g) = granted.get(&id) {
            assert_eq!(r.node.as_ref(), Some(&g.node), "{id}: granted on two nodes");
            assert_eq!(r.state, ClaimState::Released, "{id}");
        }
    }
    for id in granted.keys() {
        assert!(seen.contains(id), "{id} lost");
    }
    let (_, status) = http(&base_b, "GET", "/v1/status", Some(token.trim())).await;
    let summary: serde_json::Value = serde_json::from_str(&status).unwrap_or_default();
    assert!(summary["epoch"].as_u64().unwrap_or(0) >= 2, "{status}");
    let _ = b.kill();
    let _ = b.wait();
}
