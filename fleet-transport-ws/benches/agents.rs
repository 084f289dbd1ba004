//! N concurrent agent sessions at 1 heartbeat/s each against the WS server;
//! reports the server's CPU % and RSS.
//!
//! `cargo bench -p fleet-transport-ws --bench agents` runs N = 1 000,
//! 10 000 and 50 000 for 20 s each (override with `FLEET_BENCH_N=1000,5000`
//! and `FLEET_BENCH_SECS=10`). The server runs in a child process (this
//! binary, re-executed with `FLEET_BENCH_ROLE=server`) so its CPU time and
//! RSS are read alone from `/proc/<pid>`; the clients share the same 2-core
//! machine, so their CPU is reported too. Each process needs N + a few
//! descriptors: the fd limit is raised to that (past the hard limit when
//! the process may, as root), else to the hard limit. An N the limit cannot
//! hold is skipped and says so; the largest N it can hold (a multiple of
//! 1 000) is measured in its place, and the skipped N's figures are
//! extrapolated from it and the smallest N, labelled as estimates.
//! Sessions dial from 127.0.0.1, 127.0.0.2, … in turn, 10 000 per address
//! (each source address has its own ephemeral ports, about 28 000, and a
//! run's closed sessions hold theirs in TIME_WAIT for a minute).
//!
//! `FLEET_BENCH_SERVER_WRAPPER=heaptrack` runs the server under a profiler
//! (any command that takes the program as its argument); the CPU and RSS
//! printed are then the wrapper's, only the profile is meaningful.
//!
//! Measured on the 2-core dev machine (TLS 1.3, ring, release build; the
//! client process ran on the same two cores). "Before" is the previous
//! commit, "after" this one, both measured in the same session (15 s
//! steady state; a CI run shared the machine, so CPU is noisy):
//!
//! | N      | server CPU before/after | server RSS before/after | client CPU |
//! |--------|-------------------------|-------------------------|------------|
//! | 1 000  | 3.3 % / 1.7 % of a core | 18.4 MB / 14.3 MB       | 3-6 %      |
//! | 10 000 | 17.0 % / 10.4 % of a core | 118.4 MB / 79.3 MB    | 19-23 %    |
//!
//! A 20 s run of this commit gave the same (14.4 MB, 79.3 MB; 1.7 % and
//! 10.2 %). Both targets are met: CPU well under one core, RSS under 100 MB at
//! 10 000 (~7.4 KB per idle TLS connection, down from ~11.3 KB). This step:
//! the server's TLS is rustls' unbuffered API behind our own stream
//! (`src/utls.rs`) instead of tokio-rustls. The buffered `ServerConnection`
//! resizes its record deframer's read buffer to 4 KiB before every read
//! and never frees it, so every idle connection held ~4 KB of it; now
//! socket reads go through a stack buffer and the incoming, decrypted and
//! outgoing buffers are released whenever they are empty. (Nothing in the
//! buffered API shrinks that buffer: `set_buffer_limit` is only about
//! plaintext to send, and reading until `WouldBlock` still resizes first.)
//!
//! Earlier steps at N = 10 000 (heaptrack on the server at N = 1 000 for
//! the allocation sites), from ~22 KB per connection: boxing the handshake
//! and Hello futures so the connection task no longer reserves ~10 KB for
//! them for its whole life, 222.7 -> 144.9 MB; a boxed send-queue item
//! (tokio's first channel block of 32 slots was ~1.8 KB) and a non-waiting
//! inbox fast path, -> 124.7 MB; boxing the driver's rare timed writes,
//! -> 123.6 MB; tungstenite read buffer 1 KiB -> 256 B, -> 118.6 MB. No
//! effect: `MALLOC_ARENA_MAX=1` (124.3 vs 124.7 MB: not fragmentation),
//! `send_tls13_tickets = 0` (118.3 vs 118.6 MB; not kept). What is left per
//! connection is mostly the rustls connection state (~3 KB: the
//! connection inside the WebSocket stream, its boxed state and AEAD keys),
//! the task (~1.2 KB) and small items.

#![expect(clippy::unwrap_used, reason = "bench harness: a panic is a failure")]

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use fleet_core::ids::NodeId;
use fleet_core::protocol::{AgentMsg, Arch, NodeIdentity, NodeResources, Secret};
use fleet_core::transport::{Inbound, Transport};
use fleet_transport_ws::{
    AgentAuth, AgentHelloInfo, AuthError, ClientTlsConfig, ServerTlsConfig, WsAgentClient,
    WsConfig, WsServer,
};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

/// Accepts every agent (the bench measures the transport, not auth).
struct AcceptAll;

#[async_trait]
impl AgentAuth for AcceptAll {
    async fn authenticate(&self, _: &AgentHelloInfo) -> Result<Option<NodeIdentity>, AuthError> {
        Ok(None)
    }
}

/// Raises the fd limit to `want` (a privileged process may go past the
/// hard limit, up to `fs.nr_open`), else to the hard limit.
fn raise_fd_limit(want: u64) {
    if let Ok((_, hard)) = rlimit::Resource::NOFILE.get()
        && rlimit::Resource::NOFILE
            .set(want.max(hard), want.max(hard))
            .is_err()
    {
        let _ = rlimit::Resource::NOFILE.set(hard, hard);
    }
}

/// Sessions dialed from one source address: each 127.x address has its
/// own ~28 000 ephemeral ports (`net.ipv4.ip_local_port_range`), so 50 000
/// agents come from several.
const SESSIONS_PER_SOURCE: usize = 10_000;

/// The loopback source address of the `k`-th session.
fn source(k: usize) -> std::net::IpAddr {
    let i = u8::try_from(1 + k / SESSIONS_PER_SOURCE).unwrap_or(u8::MAX);
    std::net::IpAddr::from([127, 0, 0, i])
}

fn main() {
    let ns: Vec<usize> = std::env::var("FLEET_BENCH_N")
        .unwrap_or_else(|_| "1000,10000,50000".to_owned())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    // Each process holds one descriptor per session, and a few.
    let most = ns.iter().copied().max().unwrap_or(0) as u64;
    raise_fd_limit(most + 1_000);
    if std::env::var("FLEET_BENCH_ROLE").as_deref() == Ok("server") {
        return server();
    }
    let secs: u64 = std::env::var("FLEET_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let fds = rlimit::Resource::NOFILE.get().map(|(s, _)| s).unwrap_or(0);
    println!(
        "fd soft limit {fds}; {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    let mut measured: Vec<(usize, Figures)> = Vec::new();
    for n in ns {
        match run(n, Duration::from_secs(secs)) {
            Some(f) => measured.push((n, f)),
            None => closest(n, secs, &mut measured),
        }
    }
}

/// Headroom each process keeps beyond one descriptor per session.
const FD_HEADROOM: u64 = 500;

/// The server's figures of one run.
#[derive(Debug, Clone, Copy)]
struct Figures {
    /// CPU, % of one core.
    cpu: f64,
    /// Resident set, MB.
    rss_mb: f64,
}

/// For an N the fd limit cannot hold: the largest N it can (a multiple of
/// 1 000), measured, and N's figures extrapolated from it and the smallest
/// N measured, a straight line per session — labelled as an estimate.
fn closest(n: usize, secs: u64, measured: &mut Vec<(usize, Figures)>) {
    let soft = rlimit::Resource::NOFILE.get().map(|(s, _)| s).unwrap_or(0);
    let fits = usize::try_from(soft.saturating_sub(FD_HEADROOM)).unwrap_or(0) / 1_000 * 1_000;
    if fits == 0 || measured.iter().any(|(m, _)| *m >= fits) {
        return;
    }
    println!("N={n:>6}: measuring N={fits} instead, the most the fd limit holds");
    let Some(top) = run(fits, Duration::from_secs(secs)) else {
        return;
    };
    measured.push((fits, top));
    let Some(&(low_n, low)) = measured.iter().min_by_key(|(m, _)| *m) else {
        return;
    };
    if low_n >= fits {
        return;
    }
    let per = |a: f64, b: f64| (b - a) / (fits - low_n) as f64;
    let at = |a: f64, b: f64| b + per(a, b) * (n - fits) as f64;
    let (cpu, rss) = (at(low.cpu, top.cpu), at(low.rss_mb, top.rss_mb));
    println!(
        "N={n:>6}: extrapolated (not measured) from N={low_n} and N={fits}, linear per session: \
         server CPU ~{cpu:.1}% of one core, RSS ~{rss:.0} MB ({:.2} KB per session)",
        per(low.rss_mb, top.rss_mb) * 1024.0
    );
    println!("BENCH agents.{n}.server_cpu_est {cpu:.1} %core - - extrapolated");
    println!("BENCH agents.{n}.server_rss_est {rss:.1} MB - - extrapolated");
}

/// The server process: binds, prints its address, counts inbound messages
/// until stdin closes.
fn server() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tls = ServerTlsConfig {
            cert_chain_pem: std::env::var("FLEET_BENCH_CERT").unwrap(),
            key_pem: Secret::new(std::env::var("FLEET_BENCH_KEY").unwrap()),
            client_ca_pem: None,
        };
        let (server, addr) = WsServer::bind(
            "127.0.0.1:0".parse().unwrap(),
            &tls,
            Arc::new(AcceptAll),
            WsConfig::default(),
        )
        .await
        .unwrap();
        println!("ADDR {addr}");
        let count = Arc::new(AtomicU64::new(0));
        let c = Arc::clone(&count);
        // The control plane: drain the inbox as a daemon would.
        tokio::spawn(async move {
            while let Ok(m) = server.recv().await {
                if matches!(m, Inbound::Agent { .. }) {
                    c.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        // Stdin closing is the signal to stop; report the count.
        tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
        })
        .await
        .unwrap();
        println!("INBOUND {}", count.load(Ordering::Relaxed));
    });
}

fn pki() -> (String, String, String) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

/// utime + stime of a process, in clock ticks (100/s on Linux).
fn cpu_ticks(pid: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesized command name; utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12)
}

fn status_kb(pid: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn hello(i: usize) -> AgentMsg {
    AgentMsg::Hello {
        node: NodeId::new(format!("bench-{i}")).unwrap(),
        agent_version: "bench".to_owned(),
        bootstrap_token: None,
        resources: NodeResources {
            cpus: 2,
            memory_mb: 4096,
            arch: Arch::X86_64,
            labels: Default::default(),
        },
        gateway: None,
        seen_commands: Vec::new(),
    }
}

/// One run at N sessions; `None` when the fd limit cannot hold them.
fn run(n: usize, duration: Duration) -> Option<Figures> {
    let (soft, hard) = rlimit::Resource::NOFILE.get().unwrap_or((0, 0));
    if n as u64 + FD_HEADROOM > soft {
        println!(
            "N={n:>6}: skipped: each process needs about {} descriptors, the limit is {soft} \
             (hard {hard}); raise it (`ulimit -Hn`, systemd LimitNOFILE, or run with \
             CAP_SYS_RESOURCE) to measure it",
            n as u64 + FD_HEADROOM
        );
        println!("BENCH agents.{n}.skipped {soft} fd_limit - - -");
        return None;
    }
    let (ca, cert, key) = pki();
    // `FLEET_BENCH_SERVER_WRAPPER=heaptrack` (or any command that runs its
    // argument) profiles the server process; its CPU and RSS are then the
    // wrapper's, so only the profile is meaningful.
    let exe = std::env::current_exe().unwrap();
    let mut cmd = match std::env::var("FLEET_BENCH_SERVER_WRAPPER") {
        Ok(w) if !w.is_empty() => {
            let mut parts = w.split_whitespace();
            let mut c = Command::new(parts.next().unwrap());
            c.args(parts).arg(&exe);
            c
        }
        _ => Command::new(&exe),
    };
    let mut child = cmd
        .env("FLEET_BENCH_ROLE", "server")
        .env("FLEET_BENCH_CERT", &cert)
        .env("FLEET_BENCH_KEY", &key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    // Skip whatever a wrapper prints before the server's address.
    let addr: SocketAddr = loop {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "server exited");
        if let Some(a) = line.trim().strip_prefix("ADDR ") {
            break a.parse().unwrap();
        }
    };
    let rss_idle = status_kb(&pid, "VmRSS:");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let tls = ClientTlsConfig {
        ca_pem: ca,
        identity: None,
        server_name: None,
    };
    let url = format!("wss://{addr}/v1/agent");
    let sent = Arc::new(AtomicU64::new(0));
    let connect_start = Instant::now();
    let (sessions, failed) = rt.block_on(async {
        // Dial in waves so the TLS handshakes do not all time out at once.
        let mut sessions = Vec::with_capacity(n);
        let mut failed = 0usize;
        let mut first_error = None;
        let mut i = 0;
        while i < n {
            let wave: Vec<_> = (i..(i + 100).min(n))
                .map(|k| {
                    let (url, tls) = (url.clone(), tls.clone());
                    tokio::spawn(async move {
                        let mut cfg = WsConfig::default();
                        cfg.hello_timeout = Duration::from_secs(30);
                        cfg.local_address = Some(source(k));
                        WsAgentClient::connect(&url, &tls, hello(k), cfg).await
                    })
                })
                .collect();
            for h in wave {
                let dialed = h
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()));
                match dialed {
                    Ok(s) => sessions.push(s),
                    Err(e) => {
                        failed += 1;
                        first_error.get_or_insert(e);
                    }
                }
            }
            i += 100;
        }
        if let Some(e) = first_error {
            println!("N={n:>6}: {failed} sessions failed to connect; the first: {e}");
        }
        (sessions, failed)
    });
    let connect_time = connect_start.elapsed();
    let rss_connected = status_kb(&pid, "VmRSS:");

    // Steady state: 1 heartbeat/s per agent, phases spread over the second.
    let self_pid = std::process::id().to_string();
    let (srv0, cli0, t0) = (cpu_ticks(&pid), cpu_ticks(&self_pid), Instant::now());
    rt.block_on(async {
        let deadline = tokio::time::Instant::now() + duration;
        let mut tasks = Vec::with_capacity(sessions.len());
        for (k, s) in sessions.iter().enumerate() {
            let sender = s.sender();
            let sent = Arc::clone(&sent);
            let phase = Duration::from_micros((k as u64 * 1_000_000 / n.max(1) as u64) % 1_000_000);
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval_at(
                    tokio::time::Instant::now() + phase,
                    Duration::from_secs(1),
                );
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = tokio::time::sleep_until(deadline) => return,
                    }
                    let hb = AgentMsg::Heartbeat {
                        cpu_percent: 12.5,
                        memory_mb: 512,
                        running: Vec::new(),
                    };
                    if sender.send(&hb).await.is_ok() {
                        sent.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
    let wall = t0.elapsed().as_secs_f64();
    let (srv1, cli1) = (cpu_ticks(&pid), cpu_ticks(&self_pid));
    let rss = status_kb(&pid, "VmRSS:");
    let hwm = status_kb(&pid, "VmHWM:");
    drop(sessions);
    rt.shutdown_timeout(Duration::from_secs(5));
    let stdin = child.stdin.take();
    if let Some(mut s) = stdin {
        let _ = s.write_all(b"stop\n");
    }
    line.clear();
    while out.read_line(&mut line).unwrap_or(0) > 0 && !line.starts_with("INBOUND") {
        line.clear();
    }
    let _ = child.wait();

    let srv_pct = (srv1 - srv0) as f64 / wall; // ticks/s = % of one core
    let cli_pct = (cli1 - cli0) as f64 / wall;
    println!(
        "N={n:>6}: connected {} ({} failed) in {:.1} s | steady {:.0} s, {} heartbeats sent, server {} | \
         server CPU {:.1}% of one core, RSS {:.1} MB (idle {:.1} MB, after connect {:.1} MB, peak {:.1} MB) | client CPU {:.1}%",
        n - failed,
        failed,
        connect_time.as_secs_f64(),
        wall,
        sent.load(Ordering::Relaxed),
        line.trim(),
        srv_pct,
        rss as f64 / 1024.0,
        rss_idle as f64 / 1024.0,
        rss_connected as f64 / 1024.0,
        hwm as f64 / 1024.0,
        cli_pct,
    );
    // For scripts/bench: name, figure, (no baseline), target (the
    // targets are for up to 10 000 agents).
    let target = if n <= 10_000 {
        ("<100%core", "<100MB")
    } else {
        ("-", "-")
    };
    println!(
        "BENCH agents.{n}.server_cpu {srv_pct:.1} %core - - {}",
        target.0
    );
    println!(
        "BENCH agents.{n}.server_rss {:.1} MB - - {}",
        rss as f64 / 1024.0,
        target.1
    );
    Some(Figures {
        cpu: srv_pct,
        rss_mb: rss as f64 / 1024.0,
    })
}
