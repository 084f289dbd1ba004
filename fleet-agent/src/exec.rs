//! Running commands: each in its own process group, with env, cwd and a
//! timeout that kills the whole group; stdout/stderr streamed as redacted
//! `Output` messages and the command's life as `Event`s, both numbered by one
//! per-command sequence.
//!
//! The [`Executor`] remembers every command id it ran (bounded, persisted in
//! `work_dir`), so a `Run` resent after a reconnect — or after an agent
//! restart — is never executed again; the agent re-reports the command's last
//! known event instead.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use fleet_core::ids::CommandId;
use fleet_core::protocol::{
    AgentMsg, ArtifactKind, ArtifactRef, CommandSpec, OutputStream, WorkerEvent,
};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio::sync::{Notify, mpsc, watch};

use crate::redact::{Redactor, Utf8Chunker};
use crate::score::{DEFAULT_SCORER_TIMEOUT, Scoring, judge};
use crate::task_events::{EVENTS_FILE_ENV, TaskEvents};

/// How often the agent looks for events a task appended to its file.
const TASK_EVENTS_EVERY: Duration = Duration::from_millis(200);

/// How many command ids the agent remembers.
pub const SEEN_CAPACITY: usize = 1024;
/// Largest output chunk read at once.
const CHUNK: usize = 16 * 1024;
/// Environment variables of the agent never passed to a command.
const HIDDEN_ENV_PREFIX: &str = "FLEET_AGENT_";
/// Where a command may drop files to be reported as artifacts.
pub const ARTIFACT_DIR_ENV: &str = "FLEET_ARTIFACT_DIR";
/// The largest artifact the agent sends to the daemon.
pub const MAX_ARTIFACT_UPLOAD: u64 = 64 * 1024 * 1024;
/// Bytes per `artifact_chunk` (base64 keeps a piece well under a
/// message's 1 MiB).
const ARTIFACT_CHUNK: usize = 256 * 1024;

/// A process to run.
#[derive(Debug, Clone)]
pub struct ProcessSpec {
    /// Command line; `argv[0]` is looked up on `PATH`.
    pub argv: Vec<String>,
    /// Extra environment (the agent's own `FLEET_AGENT_*` variables are
    /// removed).
    pub env: BTreeMap<String, String>,
    /// Working directory.
    pub cwd: PathBuf,
    /// Kill the process group after this long.
    pub timeout: Option<Duration>,
}

/// Why a process should stop early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Keep running.
    No,
    /// Cancelled by the daemon or the client.
    Cancel,
    /// The agent is draining and ran out of time.
    Drain,
}

/// How a process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It exited with a code.
    Exited(i32),
    /// A signal it did not get from us killed it.
    Signaled(String),
    /// The timeout fired; the group was killed.
    TimedOut(Duration),
    /// Stopped on request; the group was killed.
    Stopped(Stop),
}

/// Kills the process group when dropped, so nothing a command started
/// outlives it (or the connection that asked for it).
#[derive(Debug)]
struct GroupGuard(Option<Pid>);

impl GroupGuard {
    fn kill(&self) {
        if let Some(pgid) = self.0 {
            // ESRCH (group already gone) is the normal case after exit.
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A started process: its output arrives on the channel given to
/// [`spawn_process`]; [`RunningProcess::wait`] ends it.
#[derive(Debug)]
pub struct RunningProcess {
    child: Child,
    group: GroupGuard,
    timeout: Option<Duration>,
    pumps: Vec<tokio::task::JoinHandle<()>>,
}

/// Starts `spec` in a new process group; its stdout and stderr chunks are
/// sent to `out` until both close.
pub fn spawn_process(
    spec: &ProcessSpec,
    out: mpsc::Sender<(OutputStream, Vec<u8>)>,
) -> std::io::Result<RunningProcess> {
    let (program, args) = spec
        .argv
        .split_first()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty argv"))?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir(&spec.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with(HIDDEN_ENV_PREFIX) {
            cmd.env_remove(k);
        }
    }
    cmd.envs(&spec.env);
    let mut child = cmd.spawn()?;
    let group = GroupGuard(
        child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .map(Pid::from_raw),
    );
    let mut pumps = Vec::new();
    if let Some(r) = child.stdout.take() {
        pumps.push(tokio::spawn(pump(r, OutputStream::Stdout, out.clone())));
    }
    if let Some(r) = child.stderr.take() {
        pumps.push(tokio::spawn(pump(r, OutputStream::Stderr, out)));
    }
    Ok(RunningProcess {
        child,
        group,
        timeout: spec.timeout,
        pumps,
    })
}

async fn pump<R: AsyncRead + Unpin>(
    mut r: R,
    stream: OutputStream,
    tx: mpsc::Sender<(OutputStream, Vec<u8>)>,
) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx.send((stream, buf[..n].to_vec())).await.is_err() {
                    return;
                }
            }
        }
    }
}

impl RunningProcess {
    /// The leader's pid.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Waits for the process to exit, the timeout, or `stop`; then kills
    /// whatever is left of its group and waits for its output to close.
    pub async fn wait(mut self, mut stop: watch::Receiver<Stop>) -> Outcome {
        let timeout = self.timeout;
        let deadline = async {
            match timeout {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        let stop_req = async {
            loop {
                let s = *stop.borrow_and_update();
                if s != Stop::No {
                    return s;
                }
                if stop.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        let outcome = tokio::select! {
            status = self.child.wait() => match status {
                Ok(s) => match (s.code(), s.signal()) {
                    (Some(code), _) => Outcome::Exited(code),
                    (None, Some(sig)) => Outcome::Signaled(signal_name(sig)),
                    (None, None) => Outcome::Signaled("unknown".to_owned()),
                },
                Err(e) => Outcome::Signaled(format!("wait failed: {e}")),
            },
            () = deadline => {
                self.group.kill();
                let _ = self.child.wait().await;
                Outcome::TimedOut(timeout.unwrap_or_default())
            }
            s = stop_req => {
                self.group.kill();
                let _ = self.child.wait().await;
                Outcome::Stopped(s)
            }
        };
        // Background processes of the command die with it; their pipes close.
        self.group.kill();
        for p in self.pumps.drain(..) {
            let _ = p.await;
        }
        outcome
    }
}

fn signal_name(sig: i32) -> String {
    Signal::try_from(sig)
        .map(|s| s.as_str().to_owned())
        .unwrap_or_else(|_| format!("signal {sig}"))
}

// ---------------------------------------------------------------------------
// The ledger of commands

/// What the agent remembers about one command.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    id: CommandId,
    /// Last sequence number used.
    seq: u64,
    /// Last event sent, with its sequence number.
    #[serde(default)]
    last: Option<(u64, WorkerEvent)>,
}

#[derive(Debug, Default)]
struct Ledger {
    order: VecDeque<CommandId>,
    records: HashMap<CommandId, Record>,
}

impl Ledger {
    fn insert(&mut self, id: CommandId) {
        if self.records.contains_key(&id) {
            return;
        }
        while self.order.len() >= SEEN_CAPACITY {
            if let Some(old) = self.order.pop_front() {
                self.records.remove(&old);
            }
        }
        self.order.push_back(id.clone());
        self.records.insert(
            id.clone(),
            Record {
                id,
                seq: 0,
                last: None,
            },
        );
    }

    fn snapshot(&self) -> Vec<Record> {
        self.order
            .iter()
            .filter_map(|id| self.records.get(id).cloned())
            .collect()
    }
}

struct ExecState {
    ledger: Ledger,
    running: HashMap<CommandId, watch::Sender<Stop>>,
    draining: bool,
}

struct Inner {
    outbox: mpsc::Sender<AgentMsg>,
    work_dir: PathBuf,
    ledger_path: PathBuf,
    heartbeat: Mutex<Duration>,
    state: Mutex<ExecState>,
    idle: Notify,
}

/// Runs the daemon's commands. Cheap to clone.
#[derive(Clone)]
pub struct Executor {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("work_dir", &self.inner.work_dir)
            .finish_non_exhaustive()
    }
}

impl Executor {
    /// An executor whose messages go to `outbox`, loading the ledger of
    /// commands already run from `work_dir/state/commands.json`. A command
    /// that was still running when the agent stopped is marked failed
    /// (recoverable): it is not run again.
    pub fn new(work_dir: &Path, outbox: mpsc::Sender<AgentMsg>) -> std::io::Result<Executor> {
        let state_dir = work_dir.join("state");
        std::fs::create_dir_all(&state_dir)?;
        let ledger_path = state_dir.join("commands.json");
        let mut ledger = Ledger::default();
        match std::fs::read(&ledger_path) {
            Ok(bytes) => match serde_json::from_slice::<Vec<Record>>(&bytes) {
                Ok(records) => {
                    for mut r in records {
                        if !r.last.as_ref().is_some_and(|(_, e)| e.is_terminal()) {
                            r.seq += 1;
                            r.last = Some((
                                r.seq,
                                WorkerEvent::Failed {
                                    reason: "the agent restarted while the command ran".to_owned(),
                                    recoverable: true,
                                },
                            ));
                        }
                        ledger.insert(r.id.clone());
                        ledger.records.insert(r.id.clone(), r);
                    }
                }
                Err(e) => tracing::warn!(error = %e, path = %ledger_path.display(),
                    "command ledger unreadable; starting empty"),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(Executor {
            inner: Arc::new(Inner {
                outbox,
                work_dir: work_dir.to_owned(),
                ledger_path,
                heartbeat: Mutex::new(Duration::from_millis(
                    fleet_core::protocol::DEFAULT_HEARTBEAT_INTERVAL_MS,
                )),
                state: Mutex::new(ExecState {
                    ledger,
                    running: HashMap::new(),
                    draining: false,
                }),
                idle: Notify::new(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, ExecState> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets how often a running command reports a heartbeat event.
    pub fn set_heartbeat(&self, every: Duration) {
        *self
            .inner
            .heartbeat
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = every;
    }

    /// Every command id this agent remembers (for `Hello.seen_commands`).
    pub fn seen(&self) -> Vec<CommandId> {
        self.lock().ledger.order.iter().cloned().collect()
    }

    /// The commands running now.
    pub fn running(&self) -> Vec<CommandId> {
        let mut ids: Vec<CommandId> = self.lock().running.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Handles `Run`: starts a new command, or re-reports the last event
    /// of one already seen. Never waits (the session loop calls it).
    pub fn run(&self, spec: CommandSpec) {
        let mut st = self.lock();
        if let Some(r) = st.ledger.records.get(&spec.id) {
            let last = r.last.clone();
            drop(st);
            tracing::info!(command = %spec.id, "command already seen; not running it again");
            if let Some((seq, event)) = last {
                self.spawn_send(AgentMsg::Event {
                    command: spec.id,
                    seq,
                    event,
                });
            }
        } else if st.draining {
            drop(st);
            tracing::info!(command = %spec.id, "draining; refusing command");
            self.spawn_send(AgentMsg::Event {
                command: spec.id,
                seq: 1,
                event: WorkerEvent::Failed {
                    reason: "agent is draining".to_owned(),
                    recoverable: true,
                },
            });
        } else {
            st.ledger.insert(spec.id.clone());
            let (tx, stop) = watch::channel(Stop::No);
            st.running.insert(spec.id.clone(), tx);
            drop(st);
            // Persist before starting: a crash after the spawn must not lead
            // to a second run.
            self.persist();
            let this = self.clone();
            tokio::spawn(async move { this.execute(spec, stop).await });
        }
    }

    fn spawn_send(&self, msg: AgentMsg) {
        let this = self.clone();
        tokio::spawn(async move { this.send(msg).await });
    }

    /// Handles `Cancel`.
    pub fn cancel(&self, id: &CommandId) {
        if let Some(tx) = self.lock().running.get(id) {
            let _ = tx.send(Stop::Cancel);
        }
    }

    /// Stops taking new commands.
    pub fn begin_drain(&self) {
        self.lock().draining = true;
    }

    /// Whether [`begin_drain`](Executor::begin_drain) ran.
    pub fn is_draining(&self) -> bool {
        self.lock().draining
    }

    /// Waits until no command runs, or `grace` passes; then kills what is
    /// left (reported as interrupted by SIGTERM) and waits for it to report.
    pub async fn finish_in_flight(&self, grace: Duration) {
        if tokio::time::timeout(grace, self.wait_idle()).await.is_err() {
            tracing::warn!(in_flight = ?self.running(), "drain grace over; killing commands");
            for tx in self.lock().running.values() {
                let _ = tx.send(Stop::Drain);
            }
            self.wait_idle().await;
        }
    }

    async fn wait_idle(&self) {
        loop {
            let notified = self.inner.idle.notified();
            if self.lock().running.is_empty() {
                return;
            }
            notified.await;
        }
    }

    async fn send(&self, msg: AgentMsg) {
        // The session owns the receiver for the agent's lifetime.
        let _ = self.inner.outbox.send(msg).await;
    }

    /// Sends an event for `id` with the next sequence number and records it.
    async fn event(&self, id: &CommandId, event: WorkerEvent) {
        let terminal = event.is_terminal();
        let seq = {
            let mut st = self.lock();
            match st.ledger.records.get_mut(id) {
                Some(r) => {
                    r.seq += 1;
                    r.last = Some((r.seq, event.clone()));
                    r.seq
                }
                None => 0,
            }
        };
        if terminal {
            self.persist();
        }
        self.send(AgentMsg::Event {
            command: id.clone(),
            seq,
            event,
        })
        .await;
    }

    async fn output(&self, id: &CommandId, stream: OutputStream, data: String) {
        if data.is_empty() {
            return;
        }
        let seq = {
            let mut st = self.lock();
            match st.ledger.records.get_mut(id) {
                Some(r) => {
                    r.seq += 1;
                    r.seq
                }
                None => 0,
            }
        };
        self.send(AgentMsg::Output {
            command: id.clone(),
            stream,
            seq,
            data,
        })
        .await;
    }

    fn persist(&self) {
        let snapshot = self.lock().ledger.snapshot();
        let result = serde_json::to_vec(&snapshot)
            .map_err(std::io::Error::other)
            .and_then(|bytes| {
                let tmp = self.inner.ledger_path.with_extension("json.tmp");
                std::fs::write(&tmp, bytes)?;
                std::fs::rename(&tmp, &self.inner.ledger_path)
            });
        if let Err(e) = result {
            tracing::error!(error = %e, "cannot persist the command ledger");
        }
    }

    async fn execute(&self, spec: CommandSpec, stop: watch::Receiver<Stop>) {
        let id = spec.id.clone();
        let event = self.execute_inner(spec, stop).await;
        self.event(&id, event).await;
        self.lock().running.remove(&id);
        self.inner.idle.notify_waiters();
    }

    /// Runs the command; returns its terminal event.
    async fn execute_inner(&self, spec: CommandSpec, stop: watch::Receiver<Stop>) -> WorkerEvent {
        let id = spec.id.clone();
        self.event(&id, WorkerEvent::Starting).await;
        let artifacts = self.inner.work_dir.join("artifacts").join(id.as_str());
        let mut env = spec.env.clone();
        if std::fs::create_dir_all(&artifacts).is_ok() {
            env.insert(
                ARTIFACT_DIR_ENV.to_owned(),
                artifacts.to_string_lossy().into_owned(),
            );
        }
        let events_dir = self.inner.work_dir.join("events");
        let events_file = events_dir.join(format!("{id}.jsonl"));
        if std::fs::create_dir_all(&events_dir).is_ok() {
            // A command id seen before is never run again: a file left by an
            // earlier agent under this id belongs to nothing.
            let _ = std::fs::remove_file(&events_file);
            env.insert(
                EVENTS_FILE_ENV.to_owned(),
                events_file.to_string_lossy().into_owned(),
            );
        }
        let mut task_events = TaskEvents::new(events_file);
        let cwd = match &spec.cwd {
            Some(c) => self.inner.work_dir.join(c),
            None => self.inner.work_dir.clone(),
        };
        let pspec = ProcessSpec {
            argv: spec.argv.clone(),
            env,
            cwd,
            timeout: spec.timeout_ms.map(Duration::from_millis),
        };
        let stop_scorer = stop.clone();
        let (tx, mut rx) = mpsc::channel(64);
        let proc = match spawn_process(&pspec, tx) {
            Ok(p) => p,
            Err(e) => {
                return WorkerEvent::Failed {
                    reason: format!("cannot start {:?}: {e}", spec.argv.first()),
                    recoverable: false,
                };
            }
        };
        let pid = proc.pid();
        tracing::info!(command = %id, ?pid, "command running");
        self.event(&id, WorkerEvent::Running).await;
        let secrets: Vec<&str> = spec.redact.iter().map(|s| s.expose()).collect();
        let stream_out = async {
            let mut redact = [Redactor::new(&secrets), Redactor::new(&secrets)];
            let mut text = [Utf8Chunker::default(), Utf8Chunker::default()];
            let every = *self
                .inner
                .heartbeat
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let mut beat = tokio::time::interval(every);
            beat.tick().await;
            let mut look = tokio::time::interval(TASK_EVENTS_EVERY);
            loop {
                tokio::select! {
                    chunk = rx.recv() => {
                        let Some((stream, bytes)) = chunk else { break };
                        let i = stream_index(stream);
                        let clean = redact[i].push(&bytes);
                        let t = text[i].push(&clean);
                        self.output(&id, stream, t).await;
                    }
                    _ = beat.tick() => {
                        self.event(&id, WorkerEvent::Heartbeat {
                            cpu_percent: None,
                            memory_mb: pid.and_then(crate::load::process_rss_mb),
                        }).await;
                    }
                    _ = look.tick() => {
                        for event in task_events.read_new() {
                            self.event(&id, event).await;
                        }
                    }
                }
            }
            // What the task wrote just before it ended.
            for event in task_events.read_new() {
                self.event(&id, event).await;
            }
            for stream in [OutputStream::Stdout, OutputStream::Stderr] {
                let i = stream_index(stream);
                let clean = redact[i].finish();
                let mut t = text[i].push(&clean);
                t.push_str(&text[i].finish());
                self.output(&id, stream, t).await;
            }
        };
        let (outcome, ()) = tokio::join!(proc.wait(stop), stream_out);
        self.report_artifacts(&id, &artifacts).await;
        tracing::info!(command = %id, ?outcome, "command finished");
        match outcome {
            Outcome::Exited(code) => {
                let verdict = match &spec.scorer {
                    Some(scorer) => {
                        let ctx = Scoring {
                            cwd: &pspec.cwd,
                            env: &pspec.env,
                            exit_code: code,
                            timeout: pspec.timeout.unwrap_or(DEFAULT_SCORER_TIMEOUT),
                            stop: stop_scorer.clone(),
                        };
                        judge(scorer, ctx).await
                    }
                    None => None,
                };
                if *stop_scorer.borrow() == Stop::Cancel {
                    // Cancelled while the scorer ran: the task ends cancelled.
                    return WorkerEvent::Cancelled {
                        cancelled_by: Some("daemon".to_owned()),
                    };
                }
                tracing::info!(command = %id, ?verdict, "command scored");
                WorkerEvent::Completed {
                    exit_code: Some(code),
                    summary: None,
                    verdict,
                }
            }
            Outcome::Signaled(sig) => WorkerEvent::Interrupted { signal: Some(sig) },
            Outcome::TimedOut(t) => WorkerEvent::Failed {
                reason: format!("timed out after {} ms; process group killed", t.as_millis()),
                recoverable: false,
            },
            Outcome::Stopped(Stop::Drain) => WorkerEvent::Interrupted {
                signal: Some("SIGTERM".to_owned()),
            },
            Outcome::Stopped(_) => WorkerEvent::Cancelled {
                cancelled_by: Some("daemon".to_owned()),
            },
        }
    }

    async fn report_artifacts(&self, id: &CommandId, dir: &Path) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let mut files: Vec<(PathBuf, u64)> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let meta = e.metadata().ok()?;
                meta.is_file().then(|| (e.path(), meta.len()))
            })
            .collect();
        files.sort();
        for (path, size) in files {
            self.upload(id, &path, size).await;
            self.event(
                id,
                WorkerEvent::Artifact(ArtifactRef {
                    kind: ArtifactKind::Other,
                    uri: path.to_string_lossy().into_owned(),
                    checksum: None,
                    size_bytes: Some(size),
                }),
            )
            .await;
        }
    }
}

impl Executor {
    /// Sends the file at `path` to the daemon in pieces (`artifact_chunk`),
    /// unless it is larger than [`MAX_ARTIFACT_UPLOAD`] (then only its
    /// `artifact` event tells of it).
    async fn upload(&self, id: &CommandId, path: &Path, size: u64) {
        use base64::Engine as _;
        use std::io::Read as _;
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            return;
        };
        if size > MAX_ARTIFACT_UPLOAD {
            tracing::warn!(command = %id, name, size, "artifact over the upload limit; not sent");
            return;
        }
        let mut file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(command = %id, name, error = %e, "cannot read an artifact");
                return;
            }
        };
        let mut offset = 0u64;
        let mut buf = vec![0u8; ARTIFACT_CHUNK];
        loop {
            let n = match file.read(&mut buf) {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(command = %id, name, error = %e, "artifact read failed");
                    return;
                }
            };
            let last = n == 0 || offset + n as u64 >= size;
            self.send(AgentMsg::ArtifactChunk {
                command: id.clone(),
                name: name.to_owned(),
                offset,
                data: base64::engine::general_purpose::STANDARD.encode(&buf[..n]),
                last,
            })
            .await;
            offset += n as u64;
            if last {
                return;
            }
        }
    }
}

fn stream_index(s: OutputStream) -> usize {
    match s {
        OutputStream::Stdout => 0,
        OutputStream::Stderr => 1,
    }
}
