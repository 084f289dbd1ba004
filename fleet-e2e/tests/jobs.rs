//! Jobs through the real daemon and real agents (local provider), driven
//! by `fleetctl`: scorers run on the node and their verdicts land in the
//! receipts; a manual scorer waits for a person's verdict; a cancelled
//! job's process is gone.

mod common;

use std::time::{Duration, Instant};

use common::*;
use fleet_core::protocol::{JobRecord, JobState, TaskResult};

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
    // A second verdict is refused, with the reason.
    let again = fleetctl(&daemon, &verdict, 30);
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
