//! A build tool using fleet: start a real `fleet-daemon`, then with
//! `fleet-client` alone claim a node, run a command on it with its output
//! streamed back, upload an input, build from it, download the result,
//! renew the claim and release it.
//!
//! `cargo run -p fleet-examples --example claim_and_exec`
//!
//! The nodes are real: the daemon's local provider runs each one as a
//! `fleet-agent` process on this host, which dials back to the daemon and
//! serves commands through its per-claim mTLS gateway. All of it listens on
//! loopback only, in a temporary data dir; the daemon and its agents are
//! stopped at the end, whatever happens in between.
//!
//! The part a build tool would contain is `use_a_node`: everything it needs
//! is the daemon's data dir (`daemon.json` names the daemon's address, its
//! CA and the key grants are signed with) and an API token.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fleet_client::{ClientConfig, ExecRequest, FleetClient};
use fleet_core::protocol::{ClaimRequest, OutputStream, Requirements};
use fleet_core::time::Utc;
use fleet_core::{ClaimId, PoolName, Workspace};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

type Error = Box<dyn std::error::Error>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let bin = binaries()?;
    let dir = tempfile::tempdir()?;
    let daemon = Daemon::start(dir.path(), &bin)?;
    println!(
        "daemon up (pid {}), data dir {}",
        daemon.pid(),
        daemon.data.display()
    );

    // Bounded: a claim that is never granted fails the example.
    let result = tokio::time::timeout(Duration::from_secs(120), use_a_node(&daemon.data))
        .await
        .unwrap_or_else(|_| Err("timed out after 120 s".into()));
    if result.is_err() {
        // The temp dir goes with us: show the daemon's side first.
        eprintln!("daemon log:\n{}", daemon.log_text());
    }
    // Stop the daemon and its agents (`Daemon`'s drop, which also runs on
    // every early return above).
    drop(daemon);
    result
}

/// What a program that claims nodes does, given the daemon's data dir.
async fn use_a_node(data_dir: &Path) -> Result<(), Error> {
    let token = std::fs::read_to_string(data_dir.join("admin.token"))?;
    let config = ClientConfig::from_discovery(&fleet_client::read_discovery(data_dir)?)?
        .token(token.trim().to_owned());
    let fleet = FleetClient::connect(config).await?;

    let started = Instant::now();
    let claim = fleet
        .claim(ClaimRequest {
            claim_id: ClaimId::new("example-build-1")?,
            workspace: Workspace::new("ci")?,
            pool: PoolName::new("default")?, // the daemon's one pool without a [[pool]]
            requirements: Requirements::default(),
            priority: 0,
            lease_ttl_ms: 60_000,
            max_wait_ms: Some(60_000),
            // FleetClient puts a fresh age key here and opens the sealed
            // credentials in the grant (after checking the daemon's signature).
            recipient: None,
            affinity: None,
        })
        .await?;
    println!(
        "granted {} on node {} at {} in {} ms, lease until {}",
        claim.id(),
        claim.node(),
        claim.endpoint(),
        started.elapsed().as_millis(),
        Utc::from_millis(claim.lease_expires_at())
    );

    // A command with its output streamed as it is produced.
    let script = "echo building on $(uname -s); for i in 1 2 3; do echo step $i; sleep 0.2; done; echo 'a warning' >&2";
    let mut stdout = Vec::new();
    let done = claim
        .exec_streaming(&ExecRequest::new(["sh", "-c", script]), |stream, bytes| {
            let text = String::from_utf8_lossy(bytes);
            for line in text.lines() {
                match stream {
                    OutputStream::Stdout => println!("  node| {line}"),
                    OutputStream::Stderr => println!("  node! {line}"),
                }
            }
            if stream == OutputStream::Stdout {
                stdout.extend_from_slice(bytes);
            }
        })
        .await?;
    check(done.code == Some(0), "the command exited 0")?;
    check(
        String::from_utf8_lossy(&stdout).contains("step 3"),
        "all of the command's output arrived",
    )?;

    // Files: upload an input, build from it on the node, download the result.
    let input = b"hello from the build tool\n";
    let stored = claim.put("src/input.txt", input).await?;
    check(stored == input.len() as u64, "the upload was stored whole")?;
    let build = claim
        .exec(&ExecRequest::new([
            "sh",
            "-c",
            "mkdir -p out && tr a-z A-Z < src/input.txt > out/result.txt",
        ]))
        .await?;
    check(build.code == Some(0), "the build step exited 0")?;
    let result = claim.get("out/result.txt").await?;
    println!(
        "downloaded out/result.txt: {}",
        String::from_utf8_lossy(&result).trim_end()
    );
    check(
        result == b"HELLO FROM THE BUILD TOOL\n",
        "the result is the input, upper-cased",
    )?;

    // Renewing extends the lease and brings a new certificate, which the
    // next connection uses. (`claim.renew_in_background()` does this on
    // its own for a long build.)
    let before = claim.lease_expires_at();
    let old_cert = claim.credentials().cert_pem;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let until = claim.renew().await?;
    println!("renewed: lease now until {}", Utc::from_millis(until));
    check(until > before, "the renewal extended the lease")?;
    check(
        claim.credentials().cert_pem != old_cert,
        "a new certificate came with it",
    )?;
    let after = claim
        .exec(&ExecRequest::new(["echo", "still mine"]))
        .await?;
    check(
        after.stdout == b"still mine\n",
        "a command runs with the new certificate",
    )?;

    claim.release().await?;
    println!("released");
    Ok(())
}

/// Where `fleet-daemon` and `fleet-agent` are: beside this example's
/// target dir (`target/<profile>/`). Under cargo they are built first
/// (a no-op when they are up to date: a binary found there may be stale, or
/// from another checkout sharing the target dir); otherwise they must exist.
fn binaries() -> Result<PathBuf, Error> {
    let exe = std::env::current_exe()?;
    // target/<profile>/examples/claim_and_exec → target/<profile>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("no target dir above this executable")?
        .to_owned();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let mut build = Command::new(cargo);
    build
        .args(["build", "-q", "-p", "fleet-daemon", "-p", "fleet-agent"])
        .arg("--manifest-path")
        .arg(&workspace);
    if let Some(target) = profile_dir.parent() {
        build.arg("--target-dir").arg(target);
    }
    if profile_dir.ends_with("release") {
        build.arg("--release");
    }
    let missing = |dir: &Path| {
        ["fleet-daemon", "fleet-agent"]
            .iter()
            .any(|b| !dir.join(b).exists())
    };
    match build.status() {
        Ok(s) if s.success() => {}
        Ok(s) => return Err(format!("building fleet-daemon and fleet-agent: {s}").into()),
        // No cargo here: use what is there.
        Err(e) if missing(&profile_dir) => {
            return Err(format!(
                "fleet-daemon/fleet-agent not in {} and cargo: {e}",
                profile_dir.display()
            )
            .into());
        }
        Err(_) => {}
    }
    Ok(profile_dir)
}

/// A `fleet-daemon` process; dropping it stops the daemon and its agents.
struct Daemon {
    child: Child,
    data: PathBuf,
    log: PathBuf,
}

impl Daemon {
    /// Writes a config (loopback, ports chosen by the OS, local nodes) and
    /// starts the daemon; returns once it has written its `daemon.json`.
    fn start(dir: &Path, bin: &Path) -> Result<Daemon, Error> {
        let data = dir.join("data");
        let config = dir.join("daemon.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = {data:?}\n\
                 [http]\nlisten = \"127.0.0.1:0\"\n\
                 [transport.ws]\nlisten = \"127.0.0.1:0\"\n\
                 [provider]\nkind = \"local\"\nagent_bin = {agent:?}\nmax_nodes = 2\n",
                data = data.display().to_string(),
                agent = bin.join("fleet-agent").display().to_string(),
            ),
        )?;
        let log = dir.join("daemon.log");
        let out = std::fs::File::create(&log)?;
        let child = Command::new(bin.join("fleet-daemon"))
            .env("FLEET_DAEMON_CONFIG", &config)
            .env("FLEET_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?;
        let mut daemon = Daemon { child, data, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(d) = fleet_client::read_discovery(&daemon.data)
                && d.pid == daemon.child.id()
            {
                return Ok(daemon);
            }
            if let Some(status) = daemon.child.try_wait()? {
                return Err(format!("the daemon exited ({status}):\n{}", daemon.log_text()).into());
            }
            if Instant::now() > deadline {
                return Err(
                    format!("the daemon did not come up in 30 s:\n{}", daemon.log_text()).into(),
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The agents the local provider started: their pids are in
    /// `<data>/local/nodes/*/instance.json`. Only processes that are still
    /// a `fleet-agent` count (a pid may have been reused since).
    fn agent_pids(&self) -> Vec<Pid> {
        let Ok(nodes) = std::fs::read_dir(self.data.join("local/nodes")) else {
            return Vec::new();
        };
        nodes
            .flatten()
            .filter_map(|node| std::fs::read(node.path().join("instance.json")).ok())
            .filter_map(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
            .filter_map(|v| i32::try_from(v.get("pid")?.as_i64()?).ok())
            .map(Pid::from_raw)
            .filter(|pid| is_agent(*pid))
            .collect()
    }
}

/// Whether `pid` is a running `fleet-agent` (an exited one has no command
/// line, and a reused pid another).
fn is_agent(pid: Pid) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| String::from_utf8_lossy(&c).contains("fleet-agent"))
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SIGTERM: the daemon and agents shut down cleanly; what has not
        // gone after 5 s is killed.
        let agents = self.agent_pids();
        let daemon = i32::try_from(self.child.id()).ok().map(Pid::from_raw);
        for pid in daemon.iter().chain(&agents) {
            let _ = kill(*pid, Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && self.child.try_wait().ok().flatten().is_none() {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in agents {
            while Instant::now() < deadline && is_agent(pid) {
                std::thread::sleep(Duration::from_millis(50));
            }
            if is_agent(pid) {
                let _ = kill(pid, Signal::SIGKILL);
            }
        }
    }
}

fn check(ok: bool, what: &str) -> Result<(), Error> {
    if ok {
        Ok(())
    } else {
        Err(format!("check failed: {what}").into())
    }
}
