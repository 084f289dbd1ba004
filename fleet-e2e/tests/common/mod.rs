//! Runs the real `fleet-daemon` (and through its local provider, real
//! `fleet-agent` processes) on loopback, in a temp data dir.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_client::credentials::{Expected, SignerKey};
use fleet_core::protocol::Discovery;
use fleet_core::protocol::{
    ClaimGrant, ClaimRequest, CredentialsBundle, Requirements, SealedCredentials,
};
use fleet_core::subjects::Subjects;
use fleet_core::{ClaimId, PoolName, Workspace};
use fleet_transport_ws::{ClientTlsConfig, WsClaimClient, WsConfig};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A binary of this workspace, built with every feature (the daemon's
/// NATS and cloud providers) before its first use in this test process.
///
/// Always asking cargo (a no-op when it is fresh) rather than trusting a
/// binary that exists: the target dir is shared, and another build (an
/// example, a `cargo build -p fleet-daemon` without features, another
/// checkout) may have left one built from other sources or features.
///
/// The build is the workspace's, with the features `scripts/test` resolves
/// (`cargo test --workspace --all-features`: every test target, so
/// dev-dependencies' features too), and so it is fresh under the README's
/// test command. A `-p <package>` build resolves other features for shared
/// dependencies and compiled a second copy of 40-odd crates (aws-sdk-ec2
/// among them): four minutes and a gigabyte per CI run.
pub(crate) fn bin(name: &str) -> PathBuf {
    build_once(&[
        "build",
        "--workspace",
        "--all-features",
        "--tests",
        "--bins",
    ]);
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("{e}"));
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| panic!("no target dir above {}", exe.display()))
        .to_owned();
    let path = dir.join(name);
    assert!(path.exists(), "{} missing after build", path.display());
    path
}

/// Runs `cargo <args>` once per process: the first call builds (the others
/// wait for it), later calls, whatever their arguments, do nothing. A bench
/// calls it first with its own release build (`benches/daemon.rs`), so
/// [`bin`] then finds that build's binaries in the bench's target dir.
pub(crate) fn build_once(args: &[&str]) {
    // Held through the build: the first caller builds, the others wait.
    static BUILT: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut built = BUILT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !*built {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let mut build = Command::new(cargo);
        // Not the variables cargo set for this test or bench (its manifest
        // dir, package name and version, …): build scripts that track them
        // (ring's) would see them differ from the outer `cargo test` or
        // `cargo bench`, and each build would redo ring and every crate
        // above it in turn.
        for (key, _) in std::env::vars_os() {
            if key.to_str().is_some_and(|k| {
                k.starts_with("CARGO_PKG_")
                    || k.starts_with("CARGO_MANIFEST_")
                    || matches!(
                        k,
                        "CARGO_CRATE_NAME"
                            | "CARGO_BIN_NAME"
                            | "CARGO_PRIMARY_PACKAGE"
                            | "CARGO_TARGET_TMPDIR"
                            | "OUT_DIR"
                    )
            }) {
                build.env_remove(key);
            }
        }
        let status = build
            .args(args)
            .status()
            .unwrap_or_else(|e| panic!("cargo {args:?}: {e}"));
        assert!(status.success(), "cargo {args:?} failed");
        *built = true;
    }
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The body of `table` (a header line such as `[timing]`) in a config
/// fragment, and the fragment without it.
fn take_table(extra: &str, table: &str) -> (String, String) {
    let header = format!("{table}\n");
    match extra.find(&header) {
        Some(at) => {
            let body = &extra[at + header.len()..];
            let end = body.find("\n[").map_or(body.len(), |i| i + 1);
            (
                body[..end].to_owned(),
                format!("{}{}", &extra[..at], &body[end..]),
            )
        }
        None => (String::new(), extra.to_owned()),
    }
}

/// A daemon process with its config and data dir.
pub(crate) struct Daemon {
    pub(crate) dir: PathBuf,
    pub(crate) config: PathBuf,
    /// Extra environment of the daemon process (kept across restarts).
    env: Vec<(String, String)>,
    child: Option<Child>,
    pub(crate) discovery: Discovery,
    pub(crate) token: String,
}

impl Daemon {
    /// Writes a config (fixed WS port so agents can reconnect across a
    /// restart) and starts the daemon.
    pub(crate) fn start(dir: &Path, extra: &str) -> Daemon {
        let agent = bin("fleet-agent").display().to_string();
        Daemon::start_with(
            dir,
            |_| format!("kind = \"local\"\nagent_bin = {agent:?}\nmax_nodes = 3\n"),
            extra,
        )
    }

    /// Like [`Daemon::start`] with the `[provider]` section `provider`
    /// writes, given the daemon's WebSocket port.
    pub(crate) fn start_with(
        dir: &Path,
        provider: impl FnOnce(u16) -> String,
        extra: &str,
    ) -> Daemon {
        Daemon::start_with_env(dir, provider, extra, &[])
    }

    /// Like [`Daemon::start_with`], with more environment variables.
    pub(crate) fn start_with_env(
        dir: &Path,
        provider: impl FnOnce(u16) -> String,
        extra: &str,
        env: &[(&str, &str)],
    ) -> Daemon {
        let data = dir.join("data");
        let config = dir.join("daemon.toml");
        let ws = free_port();
        // Top-level keys in `extra` (before its first table) go first.
        let split = if extra.starts_with('[') {
            0
        } else {
            extra.find("\n[").map_or(extra.len(), |i| i + 1)
        };
        let (top, extra) = extra.split_at(split);
        // Keys of a `[timing]` table in `extra` join the one written here; a
        // `[leader]` table in `extra` replaces the tests' short lease.
        let (timing, extra) = take_table(extra, "[timing]");
        let (leader, extra) = take_table(&extra, "[leader]");
        let leader = if leader.is_empty() {
            "lease_ms = 3000\n".to_owned()
        } else {
            leader
        };
        let text = format!(
            "data_dir = {data:?}\n{top}\
             [http]\nlisten = \"127.0.0.1:{http}\"\n\
             [transport.ws]\nlisten = \"127.0.0.1:{ws}\"\n\
             [provider]\n{provider}\
             [timing]\nheartbeat_interval_ms = 500\nheartbeat_timeout_ms = 10000\n{timing}\
             [leader]\n{leader}\
             {extra}",
            data = data.display().to_string(),
            http = free_port(),
            provider = provider(ws),
        );
        std::fs::write(&config, text).unwrap_or_else(|e| panic!("{e}"));
        let env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Daemon::launch(dir, config, env)
    }

    /// Starts the daemon on `config` (a file the caller wrote, whose
    /// `data_dir` is `dir/data`) and waits for its discovery file.
    pub(crate) fn launch(dir: &Path, config: PathBuf, env: Vec<(String, String)>) -> Daemon {
        let mut d = Daemon::launch_unwaited(dir, config, env);
        d.await_discovery();
        d
    }

    /// Spawns the daemon; `discovery` is a placeholder until
    /// [`Daemon::await_discovery`].
    fn launch_unwaited(dir: &Path, config: PathBuf, env: Vec<(String, String)>) -> Daemon {
        let data = dir.join("data");
        let _ = std::fs::remove_file(data.join("daemon.json"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("daemon.log"))
            .unwrap_or_else(|e| panic!("{e}"));
        let err = log.try_clone().unwrap_or_else(|e| panic!("{e}"));
        let child = Command::new(bin("fleet-daemon"))
            .env("FLEET_DAEMON_CONFIG", &config)
            .env("FLEET_LOG", "debug")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning the daemon: {e}"));
        Daemon {
            dir: dir.to_owned(),
            config,
            env,
            child: Some(child),
            discovery: Discovery {
                http: String::new(),
                ws: String::new(),
                ca_file: PathBuf::new(),
                signer_file: PathBuf::new(),
                namespace: String::new(),
                pid: 0,
            },
            token: String::new(),
        }
    }

    /// Waits for the running daemon's `daemon.json` and admin token.
    fn await_discovery(&mut self) {
        let data = self.dir.join("data");
        let pid = self.child.as_ref().map_or(0, Child::id);
        let deadline = Instant::now() + Duration::from_secs(60);
        self.discovery = loop {
            if let Ok(bytes) = std::fs::read(data.join("daemon.json"))
                && let Ok(d) = serde_json::from_slice::<Discovery>(&bytes)
                && d.pid == pid
            {
                break d;
            }
            if Instant::now() >= deadline {
                // The log's directory is a tempdir the failing test drops:
                // its end goes into the failure itself.
                let log = self.dir.join("daemon.log");
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(40)..].join("\n");
                panic!(
                    "daemon did not come up in 60 s; the end of {}:\n{tail}",
                    log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let token = std::fs::read_to_string(data.join("admin.token")).unwrap_or_default();
        self.token = token.trim().to_owned();
    }

    /// kill -9 the daemon and start it again on the same config.
    pub(crate) fn crash_and_restart(&mut self) {
        self.kill9();
        let restarted = Daemon::launch(&self.dir.clone(), self.config.clone(), self.env.clone());
        self.adopt(restarted);
    }

    /// kill -9 the daemon, start it again on the same config, and return
    /// how long the new process took from its spawn to `/readyz` 200.
    pub(crate) async fn crash_and_restart_timed(&mut self) -> Duration {
        self.kill9();
        let base = self.discovery.http.clone();
        let began = Instant::now();
        let mut restarted =
            Daemon::launch_unwaited(&self.dir.clone(), self.config.clone(), self.env.clone());
        let ready = loop {
            let listening = tokio::net::TcpStream::connect(base.trim_start_matches("http://"))
                .await
                .is_ok();
            if listening && http(&base, "GET", "/readyz", None).await.0 == 200 {
                break began.elapsed();
            }
            assert!(
                began.elapsed() < Duration::from_secs(60),
                "daemon never ready; see {}",
                self.dir.join("daemon.log").display()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        restarted.await_discovery();
        self.adopt(restarted);
        ready
    }

    /// Takes over a restarted process's child and discovery.
    fn adopt(&mut self, mut restarted: Daemon) {
        self.child = restarted.child.take();
        self.discovery = restarted.discovery.clone();
        self.token = restarted.token.clone();
        // `restarted` has no child now; its drop must not kill our agents.
        std::mem::forget(restarted);
    }

    /// A second daemon on this one's config and data dir, on its own HTTP
    /// port (logging to `dir/daemon-b.log`), once it listens: its process
    /// and its API's base URL.
    pub(crate) async fn follower(&self, dir: &Path) -> (Child, String) {
        let text = std::fs::read_to_string(&self.config).unwrap_or_default();
        let http_b = free_port();
        let text_b = text.replacen(
            self.discovery.http.trim_start_matches("http://"),
            &format!("127.0.0.1:{http_b}"),
            1,
        );
        let config_b = dir.join("daemon-b.toml");
        std::fs::write(&config_b, text_b).unwrap_or_else(|e| panic!("{e}"));
        let log = std::fs::File::create(dir.join("daemon-b.log")).unwrap_or_else(|e| panic!("{e}"));
        let b = Command::new(bin("fleet-daemon"))
            .env("FLEET_DAEMON_CONFIG", &config_b)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap_or_else(|e| panic!("{e}")))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{e}"));
        let base_b = format!("http://127.0.0.1:{http_b}");
        let up = eventually(30, || async {
            let s = tokio::net::TcpStream::connect(base_b.trim_start_matches("http://")).await;
            s.ok().map(|_| ())
        })
        .await;
        assert!(up.is_some(), "the second daemon's HTTP never came up");
        (b, base_b)
    }

    /// A daemon on a data dir `dir/data` that `fleetctl restore` filled
    /// from this (stopped) daemon's backup: this one's config with the new
    /// data dir, `replace`'s substitutions, and the local provider's nodes
    /// where they live (this daemon's `local/`); this one's admin token
    /// (restored with the hashed tokens).
    pub(crate) fn restored(&self, dir: &Path, replace: &[(&str, &str)]) -> Daemon {
        let data_a = self.dir.join("data").display().to_string();
        let data_b = dir.join("data").display().to_string();
        let mut text = std::fs::read_to_string(&self.config).unwrap_or_else(|e| panic!("{e}"));
        text = text.replace(&data_a, &data_b);
        for (from, to) in replace {
            text = text.replace(from, to);
        }
        let text = text.replacen(
            "[provider]\n",
            &format!("[provider]\ndir = {:?}\n", format!("{data_a}/local")),
            1,
        );
        let config = dir.join("daemon.toml");
        std::fs::write(&config, text).unwrap_or_else(|e| panic!("{e}"));
        let mut b = Daemon::launch(dir, config, Vec::new());
        b.token = self.token.clone();
        b
    }

    pub(crate) fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait; returns the exit code.
    pub(crate) fn stop(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let pid = Pid::from_raw(i32::try_from(c.id()).ok()?);
        let _ = kill(pid, Signal::SIGTERM);
        c.wait().ok()?.code()
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// GET an API path with the admin token; returns (status, body).
    pub(crate) async fn get(&self, path: &str) -> (u16, String) {
        http(&self.discovery.http, "GET", path, Some(&self.token)).await
    }

    /// A claim client over WebSocket with the admin token.
    pub(crate) async fn claim_client(&self) -> WsClaimClient {
        self.claim_client_with(Some(&self.token))
            .await
            .unwrap_or_else(|e| panic!("claim client: {e}"))
    }

    /// A claim client over WebSocket presenting `token`.
    pub(crate) async fn claim_client_with(
        &self,
        token: Option<&str>,
    ) -> Result<WsClaimClient, fleet_transport_ws::WsError> {
        let ca = std::fs::read_to_string(&self.discovery.ca_file).unwrap_or_else(|e| panic!("{e}"));
        let tls = ClientTlsConfig {
            ca_pem: ca,
            identity: None,
            server_name: None,
        };
        let url = format!("{}{}", self.discovery.ws, fleet_transport_ws::CLAIMS_PATH);
        let mut cfg = WsConfig::default();
        cfg.bearer_token = token.map(fleet_core::protocol::Secret::new);
        WsClaimClient::connect(&url, &tls, cfg).await
    }

    /// A claim's state as the HTTP API shows it (`"released"`, …).
    pub(crate) async fn claim_state(&self, id: &str) -> Option<serde_json::Value> {
        let (_, claims) = self.get("/v1/claims").await;
        let v: serde_json::Value = serde_json::from_str(&claims).ok()?;
        v.as_array()?
            .iter()
            .find(|c| c["request"]["claim_id"] == id)
            .map(|c| c["state"]["state"].clone())
    }

    /// The local nodes' agent pids.
    pub(crate) fn agent_pids(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        let nodes = self.dir.join("data/local/nodes");
        if let Ok(entries) = std::fs::read_dir(nodes) {
            for e in entries.flatten() {
                if let Ok(bytes) = std::fs::read(e.path().join("instance.json"))
                    && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes)
                    && let Some(pid) = v.get("pid").and_then(serde_json::Value::as_i64)
                {
                    pids.push(pid as i32);
                }
            }
        }
        pids
    }

    /// Node directories the local provider has (one per created node).
    pub(crate) fn node_dirs(&self) -> usize {
        std::fs::read_dir(self.dir.join("data/local/nodes")).map_or(0, |e| e.count())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        for pid in self.agent_pids() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// A minimal HTTP/1.1 client for the loopback API.
pub(crate) async fn http(
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, String) {
    let host = base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(host)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

pub(crate) fn request(id: &str, recipient: Option<String>) -> ClaimRequest {
    ClaimRequest {
        claim_id: ClaimId::new(id).unwrap_or_else(|e| panic!("{e}")),
        workspace: Workspace::new("ci").unwrap_or_else(|e| panic!("{e}")),
        pool: PoolName::new("default").unwrap_or_else(|e| panic!("{e}")),
        requirements: Requirements::default(),
        priority: 0,
        lease_ttl_ms: 120_000,
        max_wait_ms: None,
        recipient,
        affinity: None,
    }
}

/// Verifies and decrypts a grant's credentials.
pub(crate) fn open_grant(
    d: &Discovery,
    grant: &ClaimGrant,
    identity: &age::x25519::Identity,
) -> CredentialsBundle {
    let sealed = grant
        .credentials
        .as_ref()
        .unwrap_or_else(|| panic!("grant has no credentials"));
    open_sealed(d, &grant.claim_id, sealed, identity)
}

/// Verifies and decrypts credentials sealed for `claim`.
pub(crate) fn open_sealed(
    d: &Discovery,
    claim: &ClaimId,
    sealed: &SealedCredentials,
    identity: &age::x25519::Identity,
) -> CredentialsBundle {
    let signer = std::fs::read_to_string(&d.signer_file).unwrap_or_else(|e| panic!("{e}"));
    let signer = SignerKey::from_base64(signer.trim()).unwrap_or_else(|e| panic!("{e}"));
    let recipient = identity.to_public().to_string();
    fleet_client::credentials::open(
        sealed,
        identity,
        &Expected {
            claim_id: claim,
            recipient: &recipient,
            expires_at: sealed.expires_at,
            signer: &signer,
        },
    )
    .unwrap_or_else(|e| panic!("opening the credentials: {e}"))
}

/// Connects to the node's gateway with the claim's certificate.
pub(crate) async fn gateway(
    bundle: &CredentialsBundle,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(bundle.ca_pem.as_bytes()) {
        roots
            .add(c.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(bundle.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::from_pem_slice(bundle.key_pem.expose().as_bytes())
        .map_err(|e| e.to_string())?;
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from(Subjects::node_server_name(&bundle.node))
        .map_err(|e| e.to_string())?;
    let tcp = tokio::net::TcpStream::connect(&bundle.endpoint)
        .await
        .map_err(|e| e.to_string())?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())
}

/// Polls `f` until it returns Some, up to `secs`.
pub(crate) async fn eventually<T, F, Fut>(secs: u64, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if let Some(v) = f().await {
            return Some(v);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

/// Cloud nodes in these tests: a user data template whose rendering holds
/// the pool CA, then the agent's config (a real template is a script that
/// writes both; see fleet-provider-hetzner/examples/cloud-init.sh), and the
/// test playing a server's first boot from it.
pub(crate) mod cloud {
    use std::path::Path;
    use std::process::{Child, Command, Stdio};

    use std::time::Duration;

    use fleet_client::{ExecClient as Client, ExecRequest};
    use fleet_core::protocol::ClaimGrant;
    use fleet_core::transport::ClaimError;

    use super::{Daemon, bin, gateway, open_grant};

    /// Between the CA and the agent config in the rendered user data.
    const SPLIT: &str = "----- agent.toml -----\n";

    /// A template for an agent whose files live in `node_dir`.
    pub(crate) fn template(node_dir: &Path) -> String {
        format!(
            "{{{{ca_pem}}}}\n{SPLIT}\
             node_id = \"{{{{node}}}}\"\n\
             daemon_url = \"{{{{daemon_url}}}}\"\n\
             ca_file = {ca:?}\n\
             bootstrap_token_file = {token:?}\n\
             identity_dir = {identity:?}\n\
             work_dir = {work:?}\n\
             gateway_listen = \"127.0.0.1:0\"\n\
             reconnect_min_ms = 100\n\
             reconnect_max_ms = 1000\n\
             [labels]\npool = \"{{{{pool}}}}\"\n\
             # token: {{{{bootstrap_token}}}}\n",
            ca = node_dir.join("ca.pem").display().to_string(),
            token = node_dir.join("bootstrap.token").display().to_string(),
            identity = node_dir.join("identity").display().to_string(),
            work = node_dir.join("work").display().to_string(),
        )
    }

    /// What cloud-init would do with `user_data` on first boot: write the
    /// CA, the token and the config into `node_dir` and start the agent.
    pub(crate) fn first_boot(node_dir: &Path, user_data: &str) -> Child {
        let (ca_pem, agent_toml) = user_data
            .split_once(SPLIT)
            .unwrap_or_else(|| panic!("user data: {user_data}"));
        assert!(
            ca_pem.contains("BEGIN CERTIFICATE"),
            "the pool CA is filled in"
        );
        let token = agent_toml
            .lines()
            .find_map(|l| l.strip_prefix("# token: "))
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| panic!("no bootstrap token in the user data"));
        let write = |name: &str, text: &str| {
            std::fs::write(node_dir.join(name), text).unwrap_or_else(|e| panic!("{e}"));
        };
        write("ca.pem", ca_pem);
        write("bootstrap.token", token);
        write("agent.toml", agent_toml);
        let log =
            std::fs::File::create(node_dir.join("agent.log")).unwrap_or_else(|e| panic!("{e}"));
        Command::new(bin("fleet-agent"))
            .env("FLEET_AGENT_CONFIG", node_dir.join("agent.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap_or_else(|e| panic!("{e}")))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting the agent: {e}"))
    }

    /// Waits for `claiming`'s grant, opens its credentials and runs
    /// `echo say` on the node through its mTLS gateway.
    pub(crate) async fn grant_and_echo(
        daemon: &Daemon,
        claiming: tokio::task::JoinHandle<Result<ClaimGrant, ClaimError>>,
        identity: &age::x25519::Identity,
        say: &str,
    ) -> ClaimGrant {
        let grant = tokio::time::timeout(Duration::from_secs(60), claiming)
            .await
            .unwrap_or_else(|_| panic!("no grant; see {}", daemon.dir.display()))
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("claim: {e}"));
        let bundle = open_grant(&daemon.discovery, &grant, identity);
        let tls = gateway(&bundle)
            .await
            .unwrap_or_else(|e| panic!("gateway: {e}"));
        let out = Client::new(tls)
            .exec(&ExecRequest {
                argv: vec!["echo".into(), say.into()],
                env: Default::default(),
                cwd: None,
                timeout_ms: Some(10_000),
            })
            .await
            .unwrap_or_else(|e| panic!("exec: {e}"));
        assert_eq!(out.code, Some(0));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), say);
        grant
    }
}

/// Two fleets on one cloud account: the same pool names, different
/// namespaces, one claim each.
pub(crate) mod two_fleets {
    use std::collections::BTreeMap;
    use std::path::Path;

    use fleet_core::PoolName;
    use fleet_core::provider::{TAG_FLEET, TAG_NAMESPACE, TAG_NODE};
    use fleet_core::transport::ClaimClient;

    use super::{Daemon, cloud, eventually, request};

    /// An instance as the cloud lists it.
    #[derive(Debug, Clone)]
    pub(crate) struct Seen {
        pub(crate) id: String,
        pub(crate) running: bool,
        pub(crate) tags: BTreeMap<String, String>,
    }

    /// Writes a user data template under `dir`; its path.
    pub(crate) fn user_data(dir: &Path) -> String {
        let file = dir.join("user-data");
        std::fs::write(&file, cloud::template(&dir.join("instance")))
            .unwrap_or_else(|e| panic!("{e}"));
        file.display().to_string()
    }

    /// Starts fleets `fleet.x` and `fleet.y` with `provider(dir, ws_port)`
    /// as their `[provider]` and one pool `ec2` (`pool` adds its type and
    /// image keys); each claims once. Each must launch its own instance,
    /// tagged with its own namespace and fleet id under its own node id,
    /// and after `y` restarts (reconciling with the account) both
    /// instances must still run.
    pub(crate) async fn keep_apart<F, Fut>(
        provider: impl Fn(&Path, u16) -> String,
        pool: &str,
        list: F,
    ) where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Vec<Seen>>,
    {
        let start = |dir: &Path, namespace: &str| {
            Daemon::start_with(
                dir,
                |ws| provider(dir, ws),
                &format!(
                    "namespace = {namespace:?}\n\
                     [[pool]]\nname = \"ec2\"\n{pool}\
                     strategy = {{ kind = \"cold_image\", idle_timeout_ms = 600000 }}\n"
                ),
            )
        };
        /// A claim in pool `ec2`, left waiting for its node.
        async fn claim(
            d: &Daemon,
            name: &str,
        ) -> tokio::task::JoinHandle<
            Result<fleet_core::protocol::ClaimGrant, fleet_core::transport::ClaimError>,
        > {
            let client = d.claim_client().await;
            let mut req = request(name, None);
            req.pool = PoolName::new("ec2").unwrap_or_else(|e| panic!("{e}"));
            tokio::spawn(async move { client.claim(req).await })
        }
        let dir_x = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let dir_y = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut x = start(dir_x.path(), "fleet.x");
        let _x_claim = claim(&x, "x-1").await;
        let from_x = eventually(30, || async { list().await.into_iter().next() })
            .await
            .unwrap_or_else(|| panic!("x launched nothing; see {}", dir_x.path().display()));
        let mut y = start(dir_y.path(), "fleet.y");
        let _y_claim = claim(&y, "y-1").await;
        let both = eventually(30, || async {
            let l = list().await;
            (l.len() == 2).then_some(l)
        })
        .await;
        let Some(both) = both else {
            panic!(
                "y did not launch its own instance (it adopted x's?): {:?}; see {}",
                list().await,
                dir_y.path().display()
            )
        };
        let from_y = both
            .iter()
            .find(|i| i.id != from_x.id)
            .unwrap_or_else(|| panic!("{both:?}"))
            .clone();
        let tag = |i: &Seen, k: &str| i.tags.get(k).cloned().unwrap_or_default();
        assert_ne!(
            tag(&from_x, TAG_NODE),
            tag(&from_y, TAG_NODE),
            "node ids are unique across fleets"
        );
        assert_eq!(tag(&from_x, TAG_NAMESPACE), "fleet.x");
        assert_eq!(tag(&from_y, TAG_NAMESPACE), "fleet.y");
        assert!(!tag(&from_x, TAG_FLEET).is_empty(), "{:?}", from_x.tags);
        assert_ne!(tag(&from_x, TAG_FLEET), tag(&from_y, TAG_FLEET));

        // y restarts: its startup inventory sees the whole account and must
        // leave x's instance alone (and keep its own).
        y.crash_and_restart();
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
        let after = list().await;
        let mut ids: Vec<&str> = after.iter().map(|i| i.id.as_str()).collect();
        ids.sort_unstable();
        let mut want = vec![from_x.id.as_str(), from_y.id.as_str()];
        want.sort_unstable();
        assert_eq!(ids, want, "an instance was terminated: {after:?}");
        assert!(
            after.iter().all(|i| i.running),
            "an instance was stopped: {after:?}"
        );
        assert_eq!(x.stop(), Some(0));
        assert_eq!(y.stop(), Some(0));
    }
}

/// `fleetctl --data-dir <the daemon's> ARGS`, killed after `secs`.
/// A new API token limited to `workspaces` (comma-separated), made with
/// `fleetctl token create NAME --workspaces …`.
pub(crate) fn workspace_token(daemon: &Daemon, name: &str, workspaces: &str) -> String {
    let args = [
        "--json",
        "token",
        "create",
        name,
        "--workspaces",
        workspaces,
    ];
    let out = ok(&fleetctl(daemon, &args, 30));
    let made: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    made["token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token in {out}"))
        .to_owned()
}

pub(crate) fn fleetctl(daemon: &Daemon, args: &[&str], secs: u64) -> Output {
    let child = spawn_fleetctl(daemon, args, Stdio::piped());
    wait_for(child, secs, args)
}

/// `fleetctl ARGS` with no daemon behind it (restore works on files).
pub(crate) fn fleetctl_offline(args: &[&str]) -> std::process::Output {
    std::process::Command::new(bin("fleetctl"))
        .args(args)
        .env_remove("FLEET_TOKEN")
        .env_remove("FLEET_DAEMON_CONFIG")
        .output()
        .unwrap_or_else(|e| panic!("fleetctl: {e}"))
}

/// `fleetctl --data-dir <the daemon's> ARGS`, started.
pub(crate) fn spawn_fleetctl(daemon: &Daemon, args: &[&str], out: Stdio) -> Child {
    Command::new(bin("fleetctl"))
        .arg("--data-dir")
        .arg(daemon.dir.join("data"))
        .args(args)
        .env_remove("FLEET_TOKEN")
        .env_remove("FLEET_DAEMON_CONFIG")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("fleetctl: {e}"))
}

/// `child`'s output once it exits; killed (and the test failed) after `secs`.
pub(crate) fn wait_for(mut child: Child, secs: u64, args: &[&str]) -> Output {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while child.try_wait().ok().flatten().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output();
            panic!("fleetctl {args:?} still running after {secs} s: {out:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("fleetctl {args:?}: {e}"))
}

/// The stdout of a fleetctl run that must have succeeded (else its exit
/// and stderr fail the test).
pub(crate) fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
