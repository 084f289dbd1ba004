//! Shared by the queue mode tests: supervisors, agents (in-process and the
//! real binary), the records a store holds.
#![allow(dead_code, unreachable_pub)]
#![expect(clippy::unwrap_used, reason = "tests")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_agent::queue::store::ObjectStore;
use fleet_agent::queue::{Outcome, QueueConfig, run};
use fleet_core::protocol::{MAX_QUEUE_RECORD_BYTES, QueueClaim, QueueRecord, decode};

/// The agent binary cargo built (also the supervisor guard).
const AGENT: &str = env!("CARGO_BIN_EXE_fleet-agent");

/// This build's agent binary, hard-linked into `dir`: the tests run that
/// file, which stays this build even when cargo (or a build of another
/// checkout sharing the target directory) replaces `target/debug/fleet-agent`
/// meanwhile. Panics when the binary is not this version.
pub fn agent_binary(dir: &Path) -> PathBuf {
    let bin = dir.join("fleet-agent");
    if !bin.exists() {
        std::fs::hard_link(AGENT, &bin)
            .or_else(|_| std::fs::copy(AGENT, &bin).map(|_| ()))
            .unwrap();
    }
    let out = std::process::Command::new(&bin)
        .arg("--version")
        .output()
        .unwrap();
    let version = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        version.trim(),
        format!("fleet-agent {}", env!("CARGO_PKG_VERSION")),
        "{AGENT} is not this build (another checkout built it into the shared target dir?)"
    );
    bin
}

/// An executable shell script at `dir/name`.
pub fn script(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.display().to_string()
}

/// A supervisor that sleeps the spec's `"sleep"` (seconds, default none),
/// writes `<marks>/<spec id>.<fencing>` holding its agent id and the spec,
/// and exits with the spec's `"exit"` (default 0). Its stdin is the spec.
pub fn marking_supervisor(dir: &Path, marks: &Path) -> String {
    std::fs::create_dir_all(marks).unwrap();
    script(
        dir,
        "supervisor.sh",
        &format!(
            "#!/bin/sh\nspec=$(cat)\n\
             pause=$(printf '%s' \"$spec\" | sed -n 's/.*\"sleep\": *\\([0-9.]*\\).*/\\1/p')\n\
             [ -n \"$pause\" ] && sleep \"$pause\"\n\
             printf '%s %s\\n' \"$FLEET_QUEUE_AGENT_ID\" \"$spec\" > {marks:?}/\"$FLEET_QUEUE_SPEC_ID.$FLEET_QUEUE_FENCING\"\n\
             code=$(printf '%s' \"$spec\" | sed -n 's/.*\"exit\": *\\([0-9]*\\).*/\\1/p')\n\
             exit ${{code:-0}}\n"
        ),
    )
}

/// The markers: `(spec id, fencing)` of every run that got to its end.
pub fn marks(marks: &Path) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = std::fs::read_dir(marks)
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter_map(|n| {
            let (id, f) = n.rsplit_once('.')?;
            Some((id.to_owned(), f.parse().ok()?))
        })
        .collect();
    out.sort();
    out
}

/// A queue config over `env` plus test defaults: a fast poll, the real
/// guard (`bin`, from [`agent_binary`]).
pub fn config(bin: &Path, extra: &[(&str, &str)]) -> QueueConfig {
    let mut env: BTreeMap<String, String> = [
        ("FLEET_QUEUE_POLL_INTERVAL_MS", "20"),
        ("FLEET_QUEUE_NODE_ID", "test-node"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    for (k, v) in extra {
        env.insert((*k).to_owned(), (*v).to_owned());
    }
    let mut cfg = QueueConfig::from_env(&env).unwrap();
    cfg.guard = bin.to_owned();
    cfg
}

/// Runs `cfg` in this process until `done` holds for the store (or 30 s),
/// then stops it.
pub async fn run_until<F, Fut>(
    cfg: &QueueConfig,
    store: Arc<dyn ObjectStore>,
    done: F,
) -> Vec<Outcome>
where
    F: Fn(Arc<dyn ObjectStore>) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let (stop, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn({
        let (cfg, store) = (cfg.clone(), store.clone());
        async move { run(&cfg, store, rx).await }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done(store.clone()).await {
        assert!(Instant::now() < deadline, "the queue did not get there");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(true).unwrap();
    task.await.unwrap()
}

/// The records under `<prefix>/<state>/`, by spec id.
pub async fn records(
    store: &dyn ObjectStore,
    prefix: &str,
    state: &str,
) -> BTreeMap<String, QueueRecord> {
    let mut out = BTreeMap::new();
    for key in store.list(&format!("{prefix}/{state}/")).await.unwrap() {
        let body = store.get(&key, MAX_QUEUE_RECORD_BYTES).await.unwrap().body;
        let record: QueueRecord = decode(&body)
            .unwrap_or_else(|e| panic!("{key}: {e}: {:?}", String::from_utf8_lossy(&body)));
        assert_eq!(
            key,
            format!("{prefix}/{state}/{}.json", record.spec_id),
            "a record is filed under its spec id"
        );
        out.insert(record.spec_id.clone(), record);
    }
    out
}

/// A claim as an agent writes it (to set up a store by hand).
pub fn claim_body(claim: &QueueClaim) -> Vec<u8> {
    fleet_core::protocol::encode(claim).unwrap()
}

/// The number of objects under `<prefix>/<state>/`.
pub async fn count(store: &dyn ObjectStore, prefix: &str, state: &str) -> usize {
    store
        .list(&format!("{prefix}/{state}/"))
        .await
        .unwrap()
        .len()
}

/// A `fleet-agent queue` process (`bin`, from [`agent_binary`]), its
/// stderr in `log`.
pub fn spawn_agent(bin: &Path, env: &[(&str, String)], log: &Path) -> std::process::Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut cmd = std::process::Command::new(bin);
    cmd.arg("queue")
        .env_remove("FLEET_AGENT_CONFIG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

/// An agent process, killed (SIGKILL) when dropped, so a failed test
/// leaves none behind.
pub struct Agent(pub std::process::Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends `sig` to `pid`.
pub fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
}

/// Processes (not zombies) in process group `pgid`.
pub fn live_in_group(pgid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid pgrp …; comm may hold spaces and parens.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.first() != Some(&"Z") && fields.get(2).and_then(|g| g.parse().ok()) == Some(pgid)
        {
            out.push(pid);
        }
    }
    out
}
