//! Claim → grant → release cycles per second through the in-process
//! transport and the real driver, controller and memory store, against a raw
//! in-process request/reply round trip measured in the same run.
//!
//! `cargo bench -p fleet-runtime --bench claim_cycles`

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_core::memory::provider::MemoryProvider;
use fleet_core::memory::store::MemoryStore;
use fleet_core::memory::transport::InProcTransport;
use fleet_core::protocol::{
    AgentMsg, Arch, ClaimReply, ClaimRequest, NodeResources, Renewal, Requirements,
};
use fleet_core::provider::InstanceState;
use fleet_core::strategy::{ColdImage, PoolSpec, StrategyConfig};
use fleet_core::transport::{ClaimClient, Inbound, Outbound, Peer, Transport};
use fleet_core::{ClaimId, InstanceType, PoolName, Workspace};
use fleet_runtime::Fleet;

const CYCLES: usize = 20_000;
const CLIENTS: usize = 8;

fn request(id: usize) -> ClaimRequest {
    ClaimRequest {
        claim_id: ClaimId::new(format!("b{id}")).unwrap_or_else(|e| panic!("{e}")),
        workspace: Workspace::new("bench").unwrap_or_else(|e| panic!("{e}")),
        pool: PoolName::new("linux").unwrap_or_else(|e| panic!("{e}")),
        requirements: Requirements::default(),
        priority: 0,
        lease_ttl_ms: 600_000,
        max_wait_ms: None,
        recipient: None,
        affinity: None,
    }
}

/// Answers every claim-plane request at once with a `Renewed`: the raw
/// round trip of a transport, with no control plane behind it.
fn echo_renewals(server: Arc<dyn Transport>) {
    tokio::spawn(async move {
        while let Ok(Inbound::Claim { msg, reply }) = server.recv().await {
            let renewal = Renewal {
                claim_id: msg.claim_id().clone(),
                expires_at: 0,
                credentials: None,
            };
            let _ = server
                .send(
                    &Peer::Reply(reply),
                    Outbound::Claim(ClaimReply::Renewed(renewal)),
                )
                .await;
        }
    });
}

/// Times `n` sequential renew round trips.
async fn time_renewals(client: &dyn ClaimClient, n: usize) -> Duration {
    let ws = Workspace::new("bench").unwrap_or_else(|e| panic!("{e}"));
    let start = Instant::now();
    for i in 0..n {
        let id = ClaimId::new(format!("r{i}")).unwrap_or_else(|e| panic!("{e}"));
        let _ = client.renew(&ws, &id).await;
    }
    start.elapsed()
}

async fn raw_round_trips(n: usize) -> Duration {
    let t = Arc::new(InProcTransport::new(4_096));
    echo_renewals(t.clone());
    time_renewals(&t.claim_client(), n).await
}

/// A fleet with one warm node of 1 000 slots and an in-process agent.
async fn warm_fleet(extra: Option<Arc<dyn Transport>>) -> (Arc<Fleet>, MemoryProvider) {
    let provider = MemoryProvider::ec2_like();
    let mut builder = Fleet::builder();
    if let Some(t) = extra {
        builder = builder.transport(t);
    }
    let fleet = Arc::new(
        builder
            .store(Arc::new(MemoryStore::new()))
            .provider(Arc::new(provider.clone()))
            .pool(PoolSpec {
                name: PoolName::new("linux").unwrap_or_else(|e| panic!("{e}")),
                strategy: StrategyConfig::ColdImage(ColdImage {
                    idle_timeout_ms: 3_600_000,
                }),
                instance_types: vec![
                    InstanceType::new("c7i.large").unwrap_or_else(|e| panic!("{e}")),
                ],
                image: "ami".to_owned(),
                labels: BTreeMap::new(),
                min_nodes: 1,
                max_nodes: 1,
                slots_per_node: 1_000,
                max_uses: None,
                schedule: Vec::new(),
                affinity_wait_ms: 0,
                revision: String::new(),
                drift_replacements: 1,
            })
            .start()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    );
    // One warm node with an in-process agent.
    let node = loop {
        if let Some(i) = provider
            .instances()
            .into_iter()
            .find(|i| i.state == InstanceState::Running)
        {
            break i.node;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let agent = fleet.connect_agent(node.clone());
    let _ = agent
        .send(AgentMsg::Hello {
            node,
            agent_version: "bench".into(),
            bootstrap_token: None,
            resources: NodeResources {
                cpus: 2,
                memory_mb: 4096,
                arch: Arch::X86_64,
                labels: BTreeMap::new(),
            },
            gateway: Some("127.0.0.1:1".into()),
            seen_commands: Vec::new(),
        })
        .await;
    // Drain agent messages so its queue never fills.
    let mut agent = agent;
    tokio::spawn(async move { while agent.recv().await.is_some() {} });
    (fleet, provider)
}

/// A TLS WebSocket server on loopback with a fresh pool CA; returns the
/// server, its URL and the client TLS config trusting it.
async fn ws_server() -> (
    fleet_transport_ws::WsServer,
    String,
    fleet_transport_ws::ClientTlsConfig,
    tempfile::TempDir,
) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let now = fleet_runtime::SystemClock.now_ms();
    let ca = fleet_runtime::ca::PoolCa::load_or_create(dir.path(), now)
        .unwrap_or_else(|e| panic!("{e}"));
    let cert = ca
        .issue_server_cert(&["127.0.0.1".to_owned()], now, now + 3_600_000)
        .unwrap_or_else(|e| panic!("{e}"));
    let tls = fleet_transport_ws::ServerTlsConfig {
        cert_chain_pem: cert.cert_pem,
        key_pem: cert.key_pem,
        client_ca_pem: None,
    };
    let (server, addr) = fleet_transport_ws::WsServer::bind(
        "127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}")),
        &tls,
        Arc::new(fleet_transport_ws::StaticAgentAuth::new()),
        fleet_transport_ws::WsConfig::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let client_tls = fleet_transport_ws::ClientTlsConfig {
        ca_pem: ca.ca_pem().to_owned(),
        identity: None,
        server_name: None,
    };
    (
        server,
        format!("wss://{addr}{}", fleet_transport_ws::CLAIMS_PATH),
        client_tls,
        dir,
    )
}

/// Raw WebSocket round trips: a responder answers each renew at once.
async fn raw_ws_round_trips(n: usize) -> Duration {
    let (server, url, tls, _dir) = ws_server().await;
    echo_renewals(Arc::new(server));
    let client = fleet_transport_ws::WsClaimClient::connect(
        &url,
        &tls,
        fleet_transport_ws::WsConfig::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    time_renewals(&client, n).await
}

/// Claim → grant → release through the daemon driver over WebSocket.
async fn fleet_ws_cycles(n: usize) -> Duration {
    let (server, url, tls, _dir) = ws_server().await;
    let (fleet, _provider) = warm_fleet(Some(Arc::new(server))).await;
    let client = fleet_transport_ws::WsClaimClient::connect(
        &url,
        &tls,
        fleet_transport_ws::WsConfig::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let g = client
        .claim(request(usize::MAX / 3))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let _ = client.release(&g.workspace, &g.claim_id).await;
    let start = Instant::now();
    for i in 0..n {
        let g = client
            .claim(request(i))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        client
            .release(&g.workspace, &g.claim_id)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let t = start.elapsed();
    drop(fleet);
    t
}

async fn fleet_cycles(n: usize, clients: usize) -> Duration {
    let (fleet, _provider) = warm_fleet(None).await;
    // Warm-up: the first grant waits for the node to be ready.
    let c = fleet.client();
    let g = c
        .claim(request(usize::MAX / 2))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let _ = c.release(&g.workspace, &g.claim_id).await;

    let start = Instant::now();
    let mut tasks = Vec::new();
    for k in 0..clients {
        let client = fleet.client();
        tasks.push(tokio::spawn(async move {
            for i in (k..n).step_by(clients) {
                let g = client
                    .claim(request(i))
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
                client
                    .release(&g.workspace, &g.claim_id)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    start.elapsed()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    rt.block_on(async {
        let raw = raw_round_trips(CYCLES).await;
        println!(
            "raw in-process request/reply: {CYCLES} round trips in {:.3} s = {:.0}/s ({:.1} µs each)",
            raw.as_secs_f64(),
            CYCLES as f64 / raw.as_secs_f64(),
            raw.as_secs_f64() * 1e6 / CYCLES as f64
        );
        let ws_n = CYCLES / 4;
        let raw_ws = raw_ws_round_trips(ws_n).await;
        let ws = fleet_ws_cycles(ws_n).await;
        let per_raw = raw_ws.as_secs_f64() * 1e6 / ws_n as f64;
        // A cycle is two round trips (claim, release), each with a store write.
        let per_rt = ws.as_secs_f64() * 1e6 / (2 * ws_n) as f64;
        println!("raw WebSocket request/reply: {ws_n} round trips, {per_raw:.1} µs each ({:.0}/s)", ws_n as f64 / raw_ws.as_secs_f64());
        println!(
            "claim→grant→release over WebSocket: {ws_n} cycles in {:.3} s = {:.0} cycles/s; {per_rt:.1} µs per round trip = {:.2}× raw",
            ws.as_secs_f64(),
            ws_n as f64 / ws.as_secs_f64(),
            per_rt / per_raw
        );
        // For scripts/bench: name, figure, the raw baseline, ratio, target.
        let raw_per_s = CYCLES as f64 / raw.as_secs_f64();
        println!(
            "BENCH claim_cycles.ws.round_trip {per_rt:.1} µs {per_raw:.1} {:.2} -",
            per_rt / per_raw
        );
        for clients in [1, CLIENTS] {
            let t = fleet_cycles(CYCLES, clients).await;
            let per_s = CYCLES as f64 / t.as_secs_f64();
            println!(
                "claim→grant→release via the daemon driver, {clients} client(s): {CYCLES} cycles in {:.3} s = {per_s:.0} cycles/s",
                t.as_secs_f64(),
            );
            println!(
                "BENCH claim_cycles.in_process.{clients}_clients {per_s:.0} cycles/s {raw_per_s:.0} {:.2} >=10000/s",
                per_s / raw_per_s
            );
        }
    });
}
