//! Jobs through the real daemon and real agents (local provider), driven
//! by `fleetctl`: scorers run on the node and their verdicts land in the
//! receipts; a manual scorer waits for a person's verdict; a cancelled
//! job's process is gone; escalations reach a webhook on loopback.

mod common;

use std::time::{Duration, Instant};

use common::*;
use fleet_core::protocol::{
    Escalation, JobMsg, JobRecord, JobReply, JobState, TaskResult, TaskSpec, WorkerEvent,
};

const WS: &str = "ci";

fn jobs(daemon: &Daemon) -> Vec<JobRecord> {
    let out = ok(&fleetctl(daemon, &["--json", "jobs", "list"], 30));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn job(daemon: &Daemon, id: &str) -> Option<JobRecord> {
    jobs(daemon).into_iter().find(|j| j.spec.id.as_str() == id)
}

/// Polls the daemon until `id` satisfies `done`, for at most `secs`.
fn await_job(daemon: &Daemon, id: &str, secs: u64, done: impl Fn(&JobRecord) -> bool) -> JobRecord {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let found = job(daemon, id);
        if let Some(j) = found.as_ref().filter(|j| done(j)) {
            return j.clone();
        }
        assert!(
            Instant::now() < deadline,
            "job {id} never got there: {found:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn submit(
    daemon: &Daemon,
    id: &str,
    scorer: &str,
    script: &str,
    watch: bool,
) -> std::process::Output {
    let mut args = vec![
        "jobs",
        "submit",
        "--pool",
        "default",
        "--workspace",
        WS,
        "--id",
        id,
    ];
    if !scorer.is_empty() {
        args.extend(["--scorer", scorer]);
    }
    if watch {
        args.push("--watch");
    }
    args.extend(["--", "sh", "-c", script]);
    fleetctl(daemon, &args, 120)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scorers_judge_on_the_node_and_a_person_judges_a_manual_one() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut daemon = Daemon::start(dir.path(), "");

    // json_path: three of four tests passed → partial, 0.75 of 1. A
    // receipt that does not pass exits 1.
    let report = r#"printf '{"passed":[true,true,false,true]}' > report-j1.json"#;
    let scorer = r#"{"kind":"json_path","path":"report-j1.json","expression":"$.passed[*]"}"#;
    let out = submit(&daemon, "j1", scorer, report, true);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("finished j1: partial after 1 attempt(s), exit code 0, score 0.75/1 (3 of 4 values truthy)"),
        "{text}"
    );

    // regex_match over what the task wrote, and a command scorer that
    // prints its score: both pass.
    let regex =
        r#"{"kind":"regex_match","path":"log-j2","pattern":"test result: ok\\. \\d+ passed"}"#;
    let out = submit(
        &daemon,
        "j2",
        regex,
        "echo 'test result: ok. 12 passed' > log-j2",
        true,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let command = r#"{"kind":"command","argv":["sh","-c","test -s out-j3 && echo 10/10"]}"#;
    let out = submit(&daemon, "j3", command, "echo built > out-j3", true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    for (id, result, score) in [
        ("j1", TaskResult::Partial, 0.75),
        ("j2", TaskResult::Pass, 1.0),
        ("j3", TaskResult::Pass, 10.0),
    ] {
        let receipt = job(&daemon, id)
            .and_then(|j| j.receipt)
            .unwrap_or_else(|| panic!("{id}: no receipt"));
        assert_eq!(receipt.result, result, "{id}");
        assert_eq!(receipt.score.map(|s| s.value), Some(score), "{id}");
    }

    // manual: the job waits for a verdict, which fleetctl gives.
    let out = submit(
        &daemon,
        "j4",
        r#"{"kind":"manual"}"#,
        "echo please review",
        false,
    );
    ok(&out);
    let waiting = await_job(&daemon, "j4", 60, |j| {
        matches!(j.state, JobState::AwaitingVerdict { .. })
    });
    assert!(waiting.receipt.is_none());
    let row = ok(&fleetctl(&daemon, &["jobs", "list"], 30));
    assert!(
        row.lines()
            .any(|l| l.starts_with("j4") && l.contains("awaiting_verdict")),
        "{row}"
    );
    let verdict = [
        "jobs",
        "verdict",
        "j4",
        "--workspace",
        WS,
        "--result",
        "partial",
        "--score",
        "4",
        "--max",
        "5",
        "--notes",
        "good, one nit",
    ];
    assert_eq!(
        ok(&fleetctl(&daemon, &verdict, 30)),
        "verdict accepted for j4\n"
    );
    let done = await_job(&daemon, "j4", 30, |j| j.state == JobState::Done);
    let receipt = done.receipt.unwrap_or_else(|| panic!("no receipt"));
    assert_eq!(receipt.result, TaskResult::Partial);
    let score = receipt.score.unwrap_or_else(|| panic!("no score"));
    assert_eq!(
        (score.value, score.max, score.notes.as_deref()),
        (4.0, Some(5.0), Some("good, one nit"))
    );
    // The same verdict again (a retry) is accepted; another is refused,
    // with the reason.
    assert_eq!(
        ok(&fleetctl(&daemon, &verdict, 30)),
        "verdict accepted for j4\n"
    );
    let other = [
        "jobs",
        "verdict",
        "j4",
        "--workspace",
        WS,
        "--result",
        "pass",
    ];
    let again = fleetctl(&daemon, &other, 30);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("the job is done, not awaiting a verdict")
    );
    daemon.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_jobs_process_group_is_gone() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut daemon = Daemon::start(dir.path(), "");
    let pids = dir.path().join("pids");
    // The task and a child it starts in the background: both must go.
    let script = format!(
        "sleep 300 & echo $! > {p}.child; echo $$ > {p}; wait",
        p = pids.display()
    );
    ok(&submit(&daemon, "c1", "", &script, false));
    await_job(&daemon, "c1", 90, |j| {
        matches!(j.state, JobState::Running { .. })
    });
    let read_pid = |path: &std::path::Path| -> i32 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(pid) = std::fs::read_to_string(path)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                return pid;
            }
            assert!(Instant::now() < deadline, "no pid in {}", path.display());
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let task = read_pid(&pids);
    let child = read_pid(&pids.with_extension("child"));
    assert!(alive(task) && alive(child));

    assert_eq!(
        ok(&fleetctl(
            &daemon,
            &["jobs", "cancel", "c1", "--workspace", WS],
            30
        )),
        "cancel accepted for c1\n"
    );
    let ended = await_job(&daemon, "c1", 30, |j| j.state == JobState::Cancelled);
    let receipt = ended.receipt.unwrap_or_else(|| panic!("no receipt"));
    assert_eq!(receipt.result, TaskResult::Skip);
    assert_eq!(receipt.reason.as_deref(), Some("cancelled by daemon"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(task) || alive(child) {
        assert!(
            Instant::now() < deadline,
            "the task's processes outlived the cancel"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Cancelling what has ended is answered, and changes nothing.
    ok(&fleetctl(
        &daemon,
        &["jobs", "cancel", "c1", "--workspace", WS],
        30,
    ));
    let unknown = fleetctl(&daemon, &["jobs", "cancel", "nope", "--workspace", WS], 30);
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("unknown job"));
    daemon.stop();
}

/// Whether a process with this pid exists (and is not a zombie).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

/// What the webhook receiver got: signature header and body.
type Hooks = std::sync::Arc<std::sync::Mutex<Vec<(Option<String>, Vec<u8>)>>>;

/// A webhook receiver on loopback that answers 200.
async fn webhook_receiver() -> (String, Hooks) {
    let hooks: Hooks = Default::default();
    let app = axum::Router::new().fallback({
        let hooks = hooks.clone();
        move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let hooks = hooks.clone();
            async move {
                let sig = headers
                    .get("X-Fleet-Signature")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                if let Ok(mut h) = hooks.lock() {
                    h.push((sig, body.to_vec()));
                }
                "ok"
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/hooks/fleet"), hooks)
}

/// Submits `spec` (JSON of a `TaskSpec`) on the claim plane and collects
/// its replies until `done` says so.
async fn run_job(
    daemon: &Daemon,
    spec: serde_json::Value,
    secs: u64,
    done: impl Fn(&[JobReply]) -> bool,
) -> Vec<JobReply> {
    use futures_util::StreamExt as _;
    let ca = std::fs::read_to_string(&daemon.discovery.ca_file).unwrap_or_else(|e| panic!("{e}"));
    let url = fleet_client::claims_url(&daemon.discovery.ws);
    let token = Some(fleet_core::protocol::Secret::new(daemon.token.clone()));
    let client = fleet_client::connect_claim_plane(&url, &ca, token, 5)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let spec: TaskSpec = serde_json::from_value(spec).unwrap_or_else(|e| panic!("{e}"));
    let mut replies = client
        .job(JobMsg::Submit(Box::new(spec)))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !done(&seen) {
        match tokio::time::timeout_at(deadline, replies.next()).await {
            Ok(Some(r)) => seen.push(r),
            Ok(None) => panic!("the reply stream ended: {seen:?}"),
            Err(_) => panic!("timed out: {seen:?}"),
        }
    }
    seen
}

fn escalations(hooks: &Hooks) -> Vec<(Option<String>, Vec<u8>, Escalation)> {
    let hooks = hooks.lock().map(|h| h.clone()).unwrap_or_default();
    hooks
        .into_iter()
        .map(|(sig, body)| {
            let e: Escalation = serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{e}"));
            (sig, body, e)
        })
        .collect()
}

/// What the webhook got, once it got something (within 30 s).
async fn await_escalations(hooks: &Hooks) -> Vec<(Option<String>, Vec<u8>, Escalation)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = escalations(hooks);
        if !got.is_empty() {
            return got;
        }
        assert!(Instant::now() < deadline, "the webhook got nothing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn has_event(replies: &[JobReply], f: impl Fn(&WorkerEvent) -> bool) -> bool {
    replies
        .iter()
        .any(|r| matches!(r, JobReply::Event { event, .. } if f(event)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_keeps_failing_escalates_to_a_signed_webhook() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut daemon = Daemon::start(dir.path(), "");
    let (url, hooks) = webhook_receiver().await;
    // Killed by a signal: an interruption, retried; after the first the
    // policy escalates.
    let spec = serde_json::json!({
        "id": "e1", "workspace": WS, "pool": "default",
        "argv": ["sh", "-c", "kill -KILL $$"],
        "retry": { "max_attempts": 2, "initial_backoff_secs": 0 },
        "alert": {
            "channels": [{ "kind": "webhook", "url": url, "secret": "s3cr3t" }],
            "after_attempts": 1
        }
    });
    let replies = run_job(&daemon, spec, 120, |r| {
        r.iter().any(|r| matches!(r, JobReply::Finished(_)))
    })
    .await;
    assert!(has_event(&replies, |e| matches!(e, WorkerEvent::Queued)));
    assert!(has_event(&replies, |e| matches!(e,
        WorkerEvent::Escalated { channel, alert_id: Some(id) } if channel == "webhook" && id == "e1-1-attempts")));
    let Some(JobReply::Finished(receipt)) = replies.last() else {
        panic!("{replies:?}")
    };
    assert_eq!((receipt.result, receipt.attempts), (TaskResult::Fail, 2));

    let got = await_escalations(&hooks).await;
    assert_eq!(got.len(), 1, "one escalation, delivered once");
    let (sig, body, e) = &got[0];
    assert_eq!(
        sig.as_deref(),
        Some(fleet_daemon::alerts::sign("s3cr3t", body).as_str())
    );
    assert_eq!(e.alert_id, "e1-1-attempts");
    assert_eq!(
        (e.job.as_str(), e.workspace.as_str(), e.attempts),
        ("e1", WS, 1)
    );
    assert_eq!(e.reason, "interrupted (SIGKILL)");
    // The delivery is counted once it is answered (just after the POST).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, metrics) = daemon.get("/metrics").await;
        if metrics.contains("fleet_alerts_total{outcome=\"delivered\"} 1") {
            break;
        }
        assert!(Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    daemon.stop();
}

/// Takes a minute: the policy's unit is minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_job_goes_stale_and_escalates_to_the_webhook() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut daemon = Daemon::start(dir.path(), "");
    let (url, hooks) = webhook_receiver().await;
    // It prints once, then nothing: heartbeats keep coming, progress not.
    let spec = serde_json::json!({
        "id": "s1", "workspace": WS, "pool": "default",
        "argv": ["sh", "-c", "echo working; sleep 300"],
        "alert": {
            "channels": [{ "kind": "slack", "webhook_url": url }],
            "after_minutes_stale": 1
        }
    });
    let started = Instant::now();
    let replies = run_job(&daemon, spec, 150, |r| {
        has_event(r, |e| matches!(e, WorkerEvent::Escalated { .. }))
    })
    .await;
    assert!(started.elapsed() >= Duration::from_secs(60));
    assert!(has_event(&replies, |e| matches!(
        e,
        WorkerEvent::Stale {
            last_heartbeat_at: Some(_)
        }
    )));
    let (sig, _, e) = &await_escalations(&hooks).await[0];
    assert_eq!(*sig, None);
    assert_eq!(e.alert_id, "s1-1-stale");
    assert!(e.reason.starts_with("no progress for "), "{}", e.reason);
    assert!(
        e.text.starts_with("fleet: job s1 (ci) needs a look"),
        "{}",
        e.text
    );
    // Stale is a warning: the job still runs until it is cancelled.
    assert!(matches!(
        job(&daemon, "s1").map(|j| j.state),
        Some(JobState::Running { .. })
    ));
    ok(&fleetctl(
        &daemon,
        &["jobs", "cancel", "s1", "--workspace", WS],
        30,
    ));
    await_job(&daemon, "s1", 30, |j| j.state == JobState::Cancelled);
    daemon.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_are_uploaded_and_downloaded_whole() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut daemon = Daemon::start(dir.path(), "");
    // A small text and a 600 KiB file (three pieces on the wire).
    // The rest of the task (its environment here) comes from --spec.
    let spec = dir.path().join("task.json");
    std::fs::write(
        &spec,
        r#"{"env":{"SUMMARY":"ok: 12 passed"},"timeout_ms":60000}"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let script = r#"echo "$SUMMARY" > "$FLEET_ARTIFACT_DIR/summary.txt"; head -c 614400 /dev/urandom > "$FLEET_ARTIFACT_DIR/blob.bin"; cp "$FLEET_ARTIFACT_DIR/blob.bin" blob-a1.bin"#;
    let spec_arg = spec.display().to_string();
    let args = [
        "jobs",
        "submit",
        "--pool",
        "default",
        "--workspace",
        WS,
        "--id",
        "a1",
        "--spec",
        &spec_arg,
        "--watch",
        "--",
        "sh",
        "-c",
        script,
    ];
    let out = fleetctl(&daemon, &args, 120);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let a1 = job(&daemon, "a1").unwrap_or_else(|| panic!("no job"));
    assert_eq!(a1.spec.timeout_ms, Some(60_000), "from --spec");
    let receipt = a1.receipt.unwrap_or_else(|| panic!("no receipt"));
    assert_eq!(receipt.artifacts.len(), 2, "{:?}", receipt.artifacts);

    let listed = ok(&fleetctl(
        &daemon,
        &["jobs", "artifacts", "a1", "--workspace", WS],
        30,
    ));
    let rows: Vec<Vec<&str>> = listed
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        [
            vec!["NAME", "BYTES", "ATTEMPT"],
            vec!["blob.bin", "614400", "1"],
            vec!["summary.txt", "14", "1"]
        ]
    );
    let text = ok(&fleetctl(
        &daemon,
        &["jobs", "artifact", "a1", "summary.txt", "--workspace", WS],
        30,
    ));
    assert_eq!(text, "ok: 12 passed\n");
    let got = dir.path().join("blob.bin");
    let got_arg = got.display().to_string();
    ok(&fleetctl(
        &daemon,
        &[
            "jobs",
            "artifact",
            "a1",
            "blob.bin",
            "--workspace",
            WS,
            "-o",
            &got_arg,
        ],
        30,
    ));
    let downloaded = std::fs::read(&got).unwrap_or_else(|e| panic!("{e}"));
    // The task copied what it wrote into its working directory on the
    // node: the download is the same bytes.
    let copy = find(dir.path(), "blob-a1.bin").unwrap_or_else(|| panic!("no copy on the node"));
    assert_eq!(
        downloaded,
        std::fs::read(copy).unwrap_or_else(|e| panic!("{e}"))
    );
    assert_eq!(downloaded.len(), 614_400);
    let missing = fleetctl(
        &daemon,
        &["jobs", "artifact", "a1", "nope", "--workspace", WS],
        30,
    );
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("has no artifact"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
    daemon.stop();
}

/// The first file called `name` under `dir`.
fn find(dir: &std::path::Path, name: &str) -> Option<std::path::PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if let Some(found) = find(&path, name) {
                return Some(found);
            }
        } else if entry.file_name() == name {
            return Some(path);
        }
    }
    None
}
