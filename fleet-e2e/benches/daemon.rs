//! The path users take: the real `fleet-daemon` process with its durable
//! redb store (every record committed before the answer), driven by this
//! process as its client over WebSocket and over NATS.
//!
//! - **Sequential**: claim → grant → release, one at a time, over each
//!   transport; p50/p99 of claim→grant and of release→released. In the same
//!   rounds (interleaved, so machine load affects all alike): a raw
//!   request-reply over WebSocket (an in-process `fleet-transport-ws`
//!   server answering renewals at once: the daemon's TLS stack, rustls on
//!   ring, and a pool CA certificate), a raw NATS request-reply (an echo
//!   responder task on the same nats-server), and a 4 KiB write +
//!   `fdatasync` in the daemon's data dir. The target: durable
//!   claim→grant p50 ≤ 2 × raw round trip p50 + one `fdatasync` p50.
//! - **Burst**: N claims issued at once over 50 connections (per
//!   transport) → time until the last answer, and grants/s (target ≥
//!   10 000 grants/s at N = 10 000); claims that fail (a client's request
//!   timeout) are counted, not fatal. Released afterwards, untimed.
//!
//! The pool: always-on local nodes (real `fleet-agent` processes, idle
//! but for their heartbeats) of 1 000 slots each, enough for the largest
//! burst at once. The daemon runs its default timing and `FLEET_LOG=info`;
//! claims carry no recipient (no credentials are sealed).
//!
//! `cargo bench -p fleet-e2e --bench daemon` (needs `nats-server` on PATH
//! or `NATS_SERVER_BIN`; `scripts/bench` finds one). It first builds the
//! two binaries it runs, optimized and with only the NATS feature:
//! `cargo build --profile bench -p fleet-daemon --features
//! fleet-daemon/nats -p fleet-agent`. Knobs: `FLEET_BENCH_SEQ_N` timed sequential rounds
//! (default 1000, plus 10 % warm-up), `FLEET_BENCH_BURST` burst sizes
//! (default `1000,10000`), `FLEET_BENCH_CLIENTS` connections per burst
//! (default 50).
//!
//! Besides the table it prints `BENCH <name> <value> <unit> <baseline>
//! <ratio> <target>` lines for `scripts/bench`; see BENCHMARKS.md.
#![expect(
    clippy::expect_used,
    reason = "bench harness: a failure ends the run, saying what failed"
)]

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../../fleet-transport-nats/tests/common/server.rs"]
mod nats_server;

use std::future::Future;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Daemon, free_port, request};
use fleet_core::protocol::{
    API_NODES_PATH, ClaimMsg, ClaimReply, NodeState, NodeStatus, Renewal, encode,
};
use fleet_core::strategy::PoolSpec;
use fleet_core::subjects::Subjects;
use fleet_core::transport::{ClaimClient, Inbound, Outbound, Peer, Transport};
use fleet_core::{ClaimId, Workspace};
use fleet_transport_nats::{NatsClaimClient, NatsConfig};
use fleet_transport_ws::{ClientTlsConfig, ServerTlsConfig, WsClaimClient, WsConfig, WsServer};
use futures_util::StreamExt;

/// The binaries this bench runs, optimized, with the daemon's NATS feature
/// and nothing else (the cloud providers would compile their SDKs). The
/// `bench` profile is `release` under the name `cargo bench` builds with:
/// under `--release` the crates both builds share were rebuilt by each in
/// turn (their fingerprints name the profile, their file names do not).
const BUILD: &[&str] = &[
    "build",
    "--profile",
    "bench",
    "-p",
    "fleet-daemon",
    "--features",
    "fleet-daemon/nats",
    "-p",
    "fleet-agent",
];

/// Claims one local node holds at once: the most a pool allows.
const SLOTS_PER_NODE: usize = PoolSpec::MAX_SLOTS_LIMIT as usize;

/// Longest a burst may take before the run is declared stuck.
const BURST_TIMEOUT: Duration = Duration::from_secs(300);

/// The run's sizes, from the environment.
struct Knobs {
    sequential: usize,
    bursts: Vec<usize>,
    clients: usize,
}

impl Knobs {
    fn from_env() -> Knobs {
        let number = |name: &str, default: usize| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(default)
        };
        let bursts = std::env::var("FLEET_BENCH_BURST")
            .unwrap_or_else(|_| "1000,10000".to_owned())
            .split(',')
            .filter_map(|s| s.trim().parse().ok())
            .filter(|&n| n > 0)
            .collect();
        Knobs {
            sequential: number("FLEET_BENCH_SEQ_N", 1_000).max(1),
            bursts,
            clients: number("FLEET_BENCH_CLIENTS", 50).max(1),
        }
    }

    /// Local nodes for the largest burst (plus one claim) at once.
    fn nodes(&self) -> usize {
        let most = self.bursts.iter().copied().max().unwrap_or(0) + 1;
        most.div_ceil(SLOTS_PER_NODE)
    }
}

fn main() {
    let knobs = Knobs::from_env();
    common::build_once(BUILD);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(run(&knobs));
}

async fn run(knobs: &Knobs) {
    let nats = nats_server::NatsServer::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let nodes = knobs.nodes();
    let daemon = start_daemon(dir.path(), &nats.url(), nodes);
    await_ready_nodes(&daemon, nodes).await;
    println!(
        "daemon bench: fleet-daemon (optimized, redb) + {nodes} local node(s) of {SLOTS_PER_NODE} slots; \
         nats-server on loopback; {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    let seq = sequential(&daemon, &nats.url(), knobs.sequential).await;
    seq.print(knobs.sequential);

    let mut bursts = Vec::new();
    for &n in &knobs.bursts {
        let ws = ws_clients(&daemon, knobs.clients).await;
        bursts.push(burst("ws", &ws, n, &format!("bw{n}")).await);
        let nats_clients = nats_clients(&nats.url(), knobs.clients).await;
        bursts.push(burst("nats", &nats_clients, n, &format!("bn{n}")).await);
    }
    print_bursts(knobs.clients, &bursts);
}

/// Writes a config as a user would (defaults but for the ports, the
/// NATS transport and the bench pool) and starts the daemon on it.
fn start_daemon(dir: &Path, nats_url: &str, nodes: usize) -> Daemon {
    let config = dir.join("daemon.toml");
    let text = format!(
        "data_dir = {data:?}\n\
         [http]\nlisten = \"127.0.0.1:{http}\"\n\
         [transport.ws]\nlisten = \"127.0.0.1:{ws}\"\n\
         [transport.nats]\nurls = [{nats_url:?}]\n\
         [provider]\nkind = \"local\"\nagent_bin = {agent:?}\nmax_nodes = {nodes}\n\
         [[pool]]\nname = \"default\"\nstrategy = {{ kind = \"always_on_resize\" }}\n\
         min_nodes = {nodes}\nmax_nodes = {nodes}\nslots_per_node = {SLOTS_PER_NODE}\n",
        data = dir.join("data").display().to_string(),
        http = free_port(),
        ws = free_port(),
        agent = common::bin("fleet-agent").display().to_string(),
    );
    std::fs::write(&config, text).expect("writing daemon.toml");
    Daemon::launch(dir, config, vec![("FLEET_LOG".into(), "info".into())])
}

/// Waits until `want` nodes are ready with their agents connected.
async fn await_ready_nodes(daemon: &Daemon, want: usize) {
    let ready = common::eventually(120, || async {
        let (_, body) = daemon.get(API_NODES_PATH).await;
        let nodes: Vec<NodeStatus> = serde_json::from_str(&body).ok()?;
        let ready = nodes
            .iter()
            .filter(|n| n.connected && n.state == NodeState::Ready)
            .count();
        (ready >= want).then_some(())
    })
    .await;
    assert!(
        ready.is_some(),
        "{want} nodes not ready within 120 s; see {}",
        daemon.dir.join("daemon.log").display()
    );
}

/// `f`'s output and how long it took.
async fn timed<T>(f: impl Future<Output = T>) -> (T, Duration) {
    let start = Instant::now();
    let out = f.await;
    (out, start.elapsed())
}

/// One claim → grant → release: the time to the grant, and to `Released`.
async fn cycle(client: &dyn ClaimClient, id: &str) -> (Duration, Duration) {
    let (grant, granted) = timed(client.claim(request(id, None))).await;
    let grant = grant.expect("claim");
    let (released, took) = timed(client.release(&grant.workspace, &grant.claim_id)).await;
    released.expect("release");
    (granted, took)
}

/// The sequential rounds' samples, one series per step.
#[derive(Default)]
struct Sequential {
    raw_ws: Vec<Duration>,
    ws_claim: Vec<Duration>,
    ws_release: Vec<Duration>,
    raw_nats: Vec<Duration>,
    nats_claim: Vec<Duration>,
    nats_release: Vec<Duration>,
    fsync: Vec<Duration>,
}

/// `n` timed rounds (after `n / 10` warm-up ones), each timing every step
/// once, one at a time.
async fn sequential(daemon: &Daemon, nats_url: &str, n: usize) -> Sequential {
    let echo_ws = EchoWs::start().await;
    let echo_nats = EchoNats::start(nats_url).await;
    let ws = daemon.claim_client().await;
    let nats = nats_claim_client(nats_url).await;
    let mut disk = Fsync::open(&daemon.dir.join("data"));
    let mut s = Sequential::default();
    for i in 0..n + n / 10 {
        let raw_ws = echo_ws.round_trip().await;
        let (ws_claim, ws_release) = cycle(&ws, &format!("sw{i}")).await;
        let raw_nats = echo_nats.round_trip().await;
        let (nats_claim, nats_release) = cycle(&nats, &format!("sn{i}")).await;
        let fsync = disk.write_and_sync(i);
        if i >= n / 10 {
            s.raw_ws.push(raw_ws);
            s.ws_claim.push(ws_claim);
            s.ws_release.push(ws_release);
            s.raw_nats.push(raw_nats);
            s.nats_claim.push(nats_claim);
            s.nats_release.push(nats_release);
            s.fsync.push(fsync);
        }
    }
    s
}

/// p50 and p99 of some samples.
#[derive(Clone, Copy)]
struct Percentiles {
    p50: Duration,
    p99: Duration,
}

impl Percentiles {
    fn of(samples: &[Duration]) -> Percentiles {
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        let at = |q: f64| {
            let i = ((sorted.len().saturating_sub(1)) as f64 * q).round() as usize;
            sorted.get(i).copied().unwrap_or_default()
        };
        Percentiles {
            p50: at(0.50),
            p99: at(0.99),
        }
    }

    /// The durable floor the target allows: 2 round trips + 1 fdatasync,
    /// at each percentile.
    fn floor(raw: Percentiles, fsync: Percentiles) -> Percentiles {
        Percentiles {
            p50: 2 * raw.p50 + fsync.p50,
            p99: 2 * raw.p99 + fsync.p99,
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl Sequential {
    fn print(&self, n: usize) {
        let fsync = Percentiles::of(&self.fsync);
        println!();
        println!("sequential: {n} rounds, interleaved, one request at a time");
        println!("{:<34} {:>9} {:>9}", "ms", "p50", "p99");
        let row = |name: &str, p: Percentiles| {
            println!("{name:<34} {:>9.3} {:>9.3}", ms(p.p50), ms(p.p99));
        };
        row("fdatasync 4 KiB (data dir)", fsync);
        let transports = [
            (
                "ws",
                "WS",
                "raw WS req-reply (TLS, in-process)",
                &self.raw_ws,
                &self.ws_claim,
                &self.ws_release,
            ),
            (
                "nats",
                "NATS",
                "raw NATS req-reply",
                &self.raw_nats,
                &self.nats_claim,
                &self.nats_release,
            ),
        ];
        let mut verdicts = Vec::new();
        let mut lines = vec![bench_line(
            "daemon.fdatasync.p50",
            ms(fsync.p50),
            "ms",
            None,
            "-",
        )];
        for (key, name, raw_name, raw, claim, release) in transports {
            let raw = Percentiles::of(raw);
            let claim = Percentiles::of(claim);
            let release = Percentiles::of(release);
            let floor = Percentiles::floor(raw, fsync);
            row(raw_name, raw);
            row(&format!("{name} claim→grant"), claim);
            row(&format!("{name} release→released"), release);
            let ratio = claim.p50.as_secs_f64() / floor.p50.as_secs_f64();
            verdicts.push(format!(
                "  {name:<5} p50 {:.3} ms vs 2 × {:.3} + {:.3} = {:.3} ms: {ratio:.2}× the bound, {}",
                ms(claim.p50),
                ms(raw.p50),
                ms(fsync.p50),
                ms(floor.p50),
                if ratio <= 1.0 { "holds" } else { "misses" }
            ));
            let target = "<=1x (2*raw_rtt+fdatasync, p50)";
            lines.extend([
                bench_line(
                    &format!("daemon.{key}.raw_rtt.p50"),
                    ms(raw.p50),
                    "ms",
                    None,
                    "-",
                ),
                bench_line(
                    &format!("daemon.{key}.claim_grant.p50"),
                    ms(claim.p50),
                    "ms",
                    Some(ms(floor.p50)),
                    target,
                ),
                bench_line(
                    &format!("daemon.{key}.claim_grant.p99"),
                    ms(claim.p99),
                    "ms",
                    Some(ms(floor.p99)),
                    "-",
                ),
                bench_line(
                    &format!("daemon.{key}.release.p50"),
                    ms(release.p50),
                    "ms",
                    Some(ms(floor.p50)),
                    "-",
                ),
            ]);
        }
        println!("target: durable claim→grant p50 ≤ 2 × raw round trip p50 + one fdatasync p50");
        for v in verdicts {
            println!("{v}");
        }
        for l in lines {
            println!("{l}");
        }
    }
}

/// A `BENCH` line: name, figure, unit, the baseline it is compared with
/// (measured in the same run) and the ratio, the target.
fn bench_line(name: &str, value: f64, unit: &str, baseline: Option<f64>, target: &str) -> String {
    match baseline {
        Some(b) => format!(
            "BENCH {name} {value:.3} {unit} {b:.3} {:.2} {target}",
            value / b
        ),
        None => format!("BENCH {name} {value:.3} {unit} - - {target}"),
    }
}

/// `clients` claim clients over WebSocket, each its own connection.
async fn ws_clients(daemon: &Daemon, clients: usize) -> Vec<Arc<dyn ClaimClient>> {
    let mut out: Vec<Arc<dyn ClaimClient>> = Vec::with_capacity(clients);
    for _ in 0..clients {
        out.push(Arc::new(daemon.claim_client().await));
    }
    out
}

/// `clients` claim clients over NATS, each its own connection.
async fn nats_clients(url: &str, clients: usize) -> Vec<Arc<dyn ClaimClient>> {
    let mut out: Vec<Arc<dyn ClaimClient>> = Vec::with_capacity(clients);
    for _ in 0..clients {
        out.push(Arc::new(nats_claim_client(url).await));
    }
    out
}

async fn nats_claim_client(url: &str) -> NatsClaimClient {
    let conn = NatsConfig::new(url)
        .connect()
        .await
        .expect("connecting to nats-server");
    NatsClaimClient::new(conn, Subjects::default())
}

/// What one burst achieved.
struct Burst {
    transport: &'static str,
    claims: usize,
    /// From the first claim sent to the last answer (grant or failure).
    took: Duration,
    granted: usize,
    /// Claims that failed (a client's request timeout, …) and the first
    /// error: a figure of the run, not a reason to stop it.
    failed: usize,
    first_error: Option<String>,
}

/// `n` claims issued at once, spread over `clients`: the time until the
/// last is answered. Each client first makes one untimed claim → release
/// (its connection and subscriptions are then set up, as in a client that
/// has claimed before); every claim is released afterwards, untimed.
async fn burst(
    transport: &'static str,
    clients: &[Arc<dyn ClaimClient>],
    n: usize,
    tag: &str,
) -> Burst {
    for (k, c) in clients.iter().enumerate() {
        cycle(c.as_ref(), &format!("{tag}-warm{k}")).await;
    }
    let on = |i: usize| Arc::clone(&clients[i % clients.len()]);
    let run = async {
        let start = Instant::now();
        let claims: Vec<_> = (0..n)
            .map(|i| {
                let (client, req) = (on(i), request(&format!("{tag}-{i}"), None));
                tokio::spawn(async move { client.claim(req).await })
            })
            .collect();
        let mut answers = Vec::with_capacity(n);
        for c in claims {
            answers.push(c.await.expect("claim task"));
        }
        let took = start.elapsed();
        let failed: Vec<String> = answers
            .iter()
            .filter_map(|a| a.as_ref().err().map(ToString::to_string))
            .collect();
        // A failed claim may still be granted later: release every one.
        let workspace = request(tag, None).workspace;
        let releases: Vec<_> = (0..n)
            .map(|i| {
                let (client, ws) = (on(i), workspace.clone());
                let id = ClaimId::new(format!("{tag}-{i}")).expect("claim id");
                tokio::spawn(async move { client.release(&ws, &id).await })
            })
            .collect();
        for r in releases {
            let _ = r.await.expect("release task");
        }
        Burst {
            transport,
            claims: n,
            took,
            granted: n - failed.len(),
            failed: failed.len(),
            first_error: failed.into_iter().next(),
        }
    };
    tokio::time::timeout(BURST_TIMEOUT, run)
        .await
        .expect("a burst stuck for 300 s")
}

fn print_bursts(clients: usize, bursts: &[Burst]) {
    println!();
    println!(
        "burst: claims issued at once by {clients} clients (connections); target ≥ 10000 grants/s at 10000"
    );
    println!(
        "{:<10} {:>8} {:>14} {:>10} {:>8}",
        "transport", "claims", "last answer s", "grants/s", "failed"
    );
    let mut lines = Vec::new();
    for b in bursts {
        let rate = b.granted as f64 / b.took.as_secs_f64();
        println!(
            "{:<10} {:>8} {:>14.3} {rate:>10.0} {:>8}",
            b.transport,
            b.claims,
            b.took.as_secs_f64(),
            b.failed
        );
        if let Some(e) = &b.first_error {
            println!("  first failure: {e}");
        }
        let target = if b.claims >= 10_000 { ">=10000/s" } else { "-" };
        let name = format!("daemon.burst.{}.{}", b.transport, b.claims);
        lines.push(bench_line(&name, rate, "grants/s", None, target));
        if b.failed > 0 {
            let name = format!("{name}.failed");
            lines.push(bench_line(&name, b.failed as f64, "claims", None, "0"));
        }
    }
    for l in lines {
        println!("{l}");
    }
}

/// A claim-plane WebSocket server in this process that answers every
/// request at once with `Renewed`: the raw round trip of the daemon's WS
/// stack (fleet-transport-ws, rustls on ring, a pool CA certificate), with
/// no control plane behind it.
struct EchoWs {
    client: WsClaimClient,
    workspace: Workspace,
    claim: ClaimId,
    _dir: tempfile::TempDir,
}

impl EchoWs {
    async fn start() -> EchoWs {
        let dir = tempfile::tempdir().expect("temp dir");
        let now = fleet_runtime::SystemClock.now_ms();
        let ca = fleet_runtime::ca::PoolCa::load_or_create(dir.path(), now).expect("pool CA");
        let cert = ca
            .issue_server_cert(&["127.0.0.1".to_owned()], now, now + 3_600_000)
            .expect("server certificate");
        let tls = ServerTlsConfig {
            cert_chain_pem: cert.cert_pem,
            key_pem: cert.key_pem,
            client_ca_pem: None,
        };
        let (server, addr) = WsServer::bind(
            ([127, 0, 0, 1], 0).into(),
            &tls,
            Arc::new(fleet_transport_ws::StaticAgentAuth::new()),
            WsConfig::default(),
        )
        .await
        .expect("binding the echo WS server");
        let server = Arc::new(server);
        tokio::spawn(async move {
            while let Ok(Inbound::Claim { msg, reply }) = server.recv().await {
                let renewal = Renewal {
                    claim_id: msg.claim_id().clone(),
                    expires_at: 0,
                    credentials: None,
                };
                let answer = Outbound::Claim(ClaimReply::Renewed(renewal));
                let _ = server.send(&Peer::Reply(reply), answer).await;
            }
        });
        let client_tls = ClientTlsConfig {
            ca_pem: ca.ca_pem().to_owned(),
            identity: None,
            server_name: None,
        };
        let url = format!("wss://{addr}{}", fleet_transport_ws::CLAIMS_PATH);
        let client = WsClaimClient::connect(&url, &client_tls, WsConfig::default())
            .await
            .expect("connecting to the echo WS server");
        EchoWs {
            client,
            workspace: Workspace::new("ci").expect("workspace"),
            claim: ClaimId::new("echo").expect("claim id"),
            _dir: dir,
        }
    }

    async fn round_trip(&self) -> Duration {
        let (renewed, took) = timed(self.client.renew(&self.workspace, &self.claim)).await;
        renewed.expect("echo renew");
        took
    }
}

/// A NATS responder task echoing a claim-request-sized payload, and a
/// client on its own connection: the raw request-reply round trip.
struct EchoNats {
    client: fleet_transport_nats::Connection,
    body: Bytes,
    _responder: tokio::task::JoinHandle<()>,
}

impl EchoNats {
    const SUBJECT: &str = "bench.echo";

    async fn start(url: &str) -> EchoNats {
        let connect = || async {
            NatsConfig::new(url)
                .connect()
                .await
                .expect("connecting to nats-server")
        };
        let responder = connect().await;
        let mut sub = responder
            .client()
            .subscribe(Self::SUBJECT)
            .await
            .expect("subscribing the echo responder");
        responder.sync().await.expect("flushing the subscription");
        let replies = responder.client().clone();
        let responder = tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                if let Some(reply) = m.reply {
                    let _ = replies.publish(reply, m.payload).await;
                }
            }
        });
        let body = encode(&ClaimMsg::Request(request("echo", None))).expect("encoding a request");
        EchoNats {
            client: connect().await,
            body: Bytes::from(body),
            _responder: responder,
        }
    }

    async fn round_trip(&self) -> Duration {
        let req = self
            .client
            .client()
            .request(Self::SUBJECT, self.body.clone());
        let (answered, took) = timed(req).await;
        answered.expect("echo request");
        took
    }
}

/// A 4 KiB block rewritten in place and made durable with `fdatasync`,
/// in the daemon's data dir: the disk's floor under one commit.
struct Fsync {
    file: std::fs::File,
    block: Vec<u8>,
}

impl Fsync {
    fn open(dir: &Path) -> Fsync {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(dir.join("bench-fdatasync"))
            .expect("opening the fdatasync probe file");
        Fsync {
            file,
            block: vec![0; 4096],
        }
    }

    /// Write + `fdatasync` (`File::sync_data` on Linux), timed.
    fn write_and_sync(&mut self, round: usize) -> Duration {
        self.block[..8].copy_from_slice(&round.to_le_bytes());
        let start = Instant::now();
        self.file.write_all_at(&self.block, 0).expect("probe write");
        self.file.sync_data().expect("fdatasync");
        start.elapsed()
    }
}
