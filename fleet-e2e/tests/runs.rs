//! Runs through the real daemon and real agents (local provider): a run
//! of differently scored tasks and a retried one, submitted and watched
//! with `fleetctl` over the HTTP API; a paused run driven from a program
//! with fleet-client's job plane, then cancelled with `fleetctl`.

mod common;

use std::time::{Duration, Instant};

use common::*;
use fleet_client::{ClientConfig, FleetClient};
use fleet_core::protocol::{JobReply, RunAction, RunInfo, RunSpec, RunStatus, TaskResult};
use fleet_core::{RunId, Workspace};
use futures_util::StreamExt as _;

const WS: &str = "ci";

fn show(daemon: &Daemon, id: &str) -> RunInfo {
    let out = ok(&fleetctl(
        daemon,
        &["--json", "runs", "show", id, "--workspace", WS],
        30,
    ));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn await_run(daemon: &Daemon, id: &str, secs: u64, done: impl Fn(&RunInfo) -> bool) -> RunInfo {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let run = show(daemon, id);
        if done(&run) {
            return run;
        }
        assert!(
            Instant::now() < deadline,
            "run {id} never got there: {run:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_of_scored_tasks_and_a_retried_one_ends_with_every_receipt() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut daemon = Daemon::start(dir.path(), "");
    let task = |id: &str, script: &str, scorer: serde_json::Value| {
        serde_json::json!({
            "id": id, "workspace": WS, "pool": "default",
            "argv": ["sh", "-c", script], "scorer": scorer,
        })
    };
    let mut retried = task("r1-retry", "kill -KILL $$", serde_json::Value::Null);
    retried["retry"] = serde_json::json!({ "max_attempts": 2, "initial_backoff_secs": 0 });
    let run = serde_json::json!({
        "id": "r1", "workspace": WS, "name": "nightly",
        "labels": { "commit": "abc123" },
        "tasks": [
            task("r1-exit", "exit 0", serde_json::json!({ "kind": "exit_code" })),
            task(
                "r1-regex",
                "echo 'coverage 91%' > out-r1.txt",
                serde_json::json!({ "kind": "regex_match", "path": "out-r1.txt", "pattern": "coverage 9[0-9]%" }),
            ),
            task(
                "r1-cmd",
                "true",
                serde_json::json!({ "kind": "command", "argv": ["sh", "-c", "echo 8/10"] }),
            ),
            retried,
        ],
        "workers": [{ "pool": "default", "max_concurrent_tasks": 2 }],
    });
    let file = dir.path().join("run.json");
    std::fs::write(&file, run.to_string()).unwrap_or_else(|e| panic!("{e}"));
    let path = file.display().to_string();
    let out = fleetctl(&daemon, &["runs", "submit", "--watch", &path], 180);
    let text = String::from_utf8_lossy(&out.stdout);
    // One task failed: the run failed, and the watch says so by its code.
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("run r1: failed"), "{text}");
    assert!(text.contains("r1-retry: done (attempt 2) fail"), "{text}");

    let info = show(&daemon, "r1");
    assert_eq!(info.status, RunStatus::Failed);
    assert_eq!(info.labels["commit"], "abc123");
    let by_task: Vec<_> = info
        .tasks
        .iter()
        .map(|t| {
            (
                t.job.as_str(),
                t.result,
                t.attempts,
                t.score.as_ref().map(|s| (s.value, s.max)),
            )
        })
        .collect();
    assert_eq!(
        by_task,
        [
            ("r1-exit", Some(TaskResult::Pass), 1, Some((1.0, Some(1.0)))),
            (
                "r1-regex",
                Some(TaskResult::Pass),
                1,
                Some((1.0, Some(1.0)))
            ),
            (
                "r1-cmd",
                Some(TaskResult::Partial),
                1,
                Some((8.0, Some(10.0)))
            ),
            ("r1-retry", Some(TaskResult::Fail), 2, None),
        ]
    );
    // The list shows it with its tasks counted.
    let list = ok(&fleetctl(&daemon, &["runs", "list"], 30));
    assert!(list.contains("r1") && list.contains("4 done"), "{list}");
    daemon.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_pauses_resumes_and_watches_a_run_that_fleetctl_cancels() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut daemon = Daemon::start(dir.path(), "");
    let cfg = ClientConfig::from_discovery(&daemon.discovery)
        .unwrap_or_else(|e| panic!("{e}"))
        .token(daemon.token.clone());
    let fleet = FleetClient::connect(cfg)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    let jobs = fleet.jobs().unwrap_or_else(|e| panic!("{e}"));
    let spec: RunSpec = serde_json::from_value(serde_json::json!({
        "id": "r2", "workspace": WS, "paused": true,
        "tasks": [
            { "id": "r2-a", "workspace": WS, "pool": "default",
              "argv": ["sleep", "300"] },
            { "id": "r2-b", "workspace": WS, "pool": "default", "argv": ["sleep", "300"] },
        ],
        "workers": [{ "pool": "default", "max_concurrent_tasks": 1 }],
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    let mut replies = jobs
        .submit_run(spec)
        .await
        .unwrap_or_else(|e| panic!("submit: {e}"));
    assert!(matches!(
        replies.next().await,
        Some(JobReply::Run {
            status: RunStatus::Pending,
            ..
        })
    ));
    let paused = await_run(&daemon, "r2", 30, |r| r.status == RunStatus::Paused);
    assert!(
        paused.tasks.iter().all(|t| t.state == "queued"),
        "{paused:?}"
    );

    let (ws, run) = (
        Workspace::new(WS).unwrap_or_else(|e| panic!("{e}")),
        RunId::new("r2").unwrap_or_else(|e| panic!("{e}")),
    );
    let status = jobs
        .run_action(&ws, &run, RunAction::Resume)
        .await
        .unwrap_or_else(|e| panic!("resume: {e}"));
    assert!(matches!(status, RunStatus::Queued | RunStatus::Running));
    // One task at a time (the pool limit): one runs, one waits.
    let running = await_run(&daemon, "r2", 90, |r| {
        r.tasks.iter().filter(|t| t.state == "running").count() == 1
    });
    assert_eq!(running.status, RunStatus::Running);
    assert_eq!(
        running.tasks.iter().filter(|t| t.state == "queued").count(),
        1
    );

    let out = ok(&fleetctl(
        &daemon,
        &["--json", "runs", "cancel", "r2", "--workspace", WS],
        30,
    ));
    let cancelled: RunInfo = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(cancelled.status, RunStatus::Cancelled);
    let ended = await_run(&daemon, "r2", 60, |r| {
        r.tasks.iter().all(|t| t.state == "cancelled")
    });
    assert!(
        ended
            .tasks
            .iter()
            .all(|t| t.result == Some(TaskResult::Skip)),
        "{ended:?}"
    );
    // The program heard every change, ending with the cancel.
    let mut heard = Vec::new();
    while let Ok(Some(r)) = tokio::time::timeout(Duration::from_secs(5), replies.next()).await {
        if let JobReply::Run { status, .. } = r {
            heard.push(status);
        }
        if heard.last() == Some(&RunStatus::Cancelled) {
            break;
        }
    }
    assert_eq!(heard.first(), Some(&RunStatus::Paused), "{heard:?}");
    assert_eq!(heard.last(), Some(&RunStatus::Cancelled), "{heard:?}");
    // An ended run cannot be resumed: a clear refusal.
    let refused = jobs.run_action(&ws, &run, RunAction::Resume).await;
    assert!(
        matches!(&refused, Err(e) if e.to_string().contains("cancelled")),
        "{refused:?}"
    );
    let out = fleetctl(&daemon, &["runs", "resume", "r2", "--workspace", WS], 30);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cancelled"),
        "{out:?}"
    );
    daemon.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_outlives_a_kill_9_of_the_daemon_and_completes() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut daemon = Daemon::start(dir.path(), "");
    let run = serde_json::json!({
        "id": "r3", "workspace": WS,
        "tasks": [
            { "id": "r3-a", "workspace": WS, "pool": "default", "argv": ["sleep", "4"] },
            { "id": "r3-b", "workspace": WS, "pool": "default", "argv": ["sleep", "4"] },
        ],
    });
    let file = dir.path().join("run.json");
    std::fs::write(&file, run.to_string()).unwrap_or_else(|e| panic!("{e}"));
    ok(&fleetctl(
        &daemon,
        &["runs", "submit", &file.display().to_string()],
        60,
    ));
    await_run(&daemon, "r3", 60, |r| r.status == RunStatus::Running);

    daemon.crash_and_restart();
    // The restarted daemon knows the run (a resubmit is the same run) and
    // finishes it.
    let again = ok(&fleetctl(
        &daemon,
        &["--json", "runs", "submit", &file.display().to_string()],
        60,
    ));
    let again: RunInfo = serde_json::from_str(&again).unwrap_or_else(|e| panic!("{e}: {again}"));
    assert_eq!(again.id.as_str(), "r3");
    let out = fleetctl(&daemon, &["runs", "watch", "r3", "--workspace", WS], 180);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    let done = show(&daemon, "r3");
    assert_eq!(done.status, RunStatus::Completed);
    assert!(
        done.tasks
            .iter()
            .all(|t| t.result == Some(TaskResult::Pass)),
        "{done:?}"
    );
    daemon.stop();
}
