//! Runs through the real controller: a group of jobs with one lifecycle —
//! status from its tasks, pause and resume, a per-pool limit, cancel,
//! validation, a crash, retention.
#![expect(clippy::unwrap_used, reason = "tests")]

mod common;

use common::*;
use fleet_core::harness::World;
use fleet_core::protocol::{
    JobMsg, JobReply, JobState, RunAction, RunInfo, RunSpec, RunStatus, Scorer, TaskResult,
    TaskSpec, WorkerSpec,
};
use fleet_core::transport::ReplyTo;
use fleet_core::{JobId, PoolName, RunId};

fn run(id: &str, tasks: Vec<TaskSpec>) -> RunSpec {
    RunSpec {
        id: RunId::new(id).unwrap(),
        workspace: ws(),
        name: format!("{id} nightly"),
        labels: [("commit".to_owned(), "abc123".to_owned())].into(),
        tasks,
        workers: Vec::new(),
        paused: false,
    }
}

fn submit(w: &mut World, spec: RunSpec) -> ReplyTo {
    w.send_job(JobMsg::SubmitRun(Box::new(spec)))
}

fn act(w: &mut World, id: &str, action: RunAction) -> ReplyTo {
    w.send_job(JobMsg::Run {
        workspace: ws(),
        run: RunId::new(id).unwrap(),
        action,
    })
}

/// The run statuses its submitter heard, in order.
fn statuses(w: &World, reply: &ReplyTo) -> Vec<RunStatus> {
    w.job_replies(reply)
        .iter()
        .filter_map(|r| match r {
            JobReply::Run { status, .. } => Some(*status),
            _ => None,
        })
        .collect()
}

fn info(w: &World, id: &str) -> RunInfo {
    let c = w.controller();
    RunInfo::new(c.run(&RunId::new(id).unwrap()).unwrap(), |j| c.job(j))
}

fn state(w: &World, id: &str) -> JobState {
    w.controller()
        .job(&JobId::new(id).unwrap())
        .unwrap()
        .state
        .clone()
}

fn on_nodes(w: &World, ids: &[&str]) -> usize {
    ids.iter()
        .filter(|id| {
            matches!(
                state(w, id),
                JobState::Leased { .. } | JobState::Running { .. }
            )
        })
        .count()
}

#[test]
fn a_run_of_three_tasks_ends_failed_when_one_fails_with_every_receipt() {
    let mut w = world();
    let mut scored = task("t-scored", &["sleep", "5"]);
    scored.scorer = Some(Scorer::ExitCode);
    let reply = submit(
        &mut w,
        run(
            "r1",
            vec![
                task("t-pass", &["sleep", "10"]),
                task("t-fail", &["exit", "2"]),
                scored,
            ],
        ),
    );
    w.run_for(900_000).unwrap();
    assert_eq!(
        statuses(&w, &reply),
        [
            RunStatus::Pending,
            RunStatus::Queued,
            RunStatus::Running,
            RunStatus::Failed
        ]
    );
    let receipts: Vec<_> = w
        .job_replies(&reply)
        .iter()
        .filter_map(|r| match r {
            JobReply::Finished(r) => Some((r.job.as_str().to_owned(), r.result)),
            _ => None,
        })
        .collect();
    assert_eq!(receipts.len(), 3, "{receipts:?}");
    // The run ends after its tasks' receipts, never ahead of them.
    let replies = w.job_replies(&reply);
    let last_receipt = replies
        .iter()
        .rposition(|r| matches!(r, JobReply::Finished(_)));
    let ended = replies.iter().position(|r| {
        matches!(
            r,
            JobReply::Run {
                status: RunStatus::Failed,
                ..
            }
        )
    });
    assert!(last_receipt < ended, "{replies:?}");
    let i = info(&w, "r1");
    assert_eq!(i.status, RunStatus::Failed);
    assert!(i.completed_at.is_some());
    assert_eq!(i.labels["commit"], "abc123");
    let by_task: Vec<_> = i
        .tasks
        .iter()
        .map(|t| (t.job.as_str(), t.state.as_str(), t.result))
        .collect();
    assert_eq!(
        by_task,
        [
            ("t-pass", "done", Some(TaskResult::Pass)),
            ("t-fail", "done", Some(TaskResult::Fail)),
            ("t-scored", "done", Some(TaskResult::Pass)),
        ]
    );
    assert_eq!(i.tasks[2].score.as_ref().map(|s| s.value), Some(1.0));
    // Every task is a job of the run.
    let job = w.controller().job(&JobId::new("t-pass").unwrap()).unwrap();
    assert_eq!(job.run.as_ref().map(|r| r.as_str()), Some("r1"));
}

#[test]
fn a_run_of_passing_tasks_completes() {
    let mut w = world();
    let reply = submit(
        &mut w,
        run(
            "r1",
            vec![task("a", &["sleep", "5"]), task("b", &["sleep", "5"])],
        ),
    );
    w.run_for(900_000).unwrap();
    assert_eq!(statuses(&w, &reply).last(), Some(&RunStatus::Completed));
}

#[test]
fn a_paused_run_starts_nothing_until_resumed_and_a_pause_lets_attempts_finish() {
    let mut w = world();
    let mut spec = run(
        "r1",
        vec![task("a", &["sleep", "100"]), task("b", &["sleep", "100"])],
    );
    spec.paused = true;
    spec.workers = vec![WorkerSpec {
        pool: PoolName::new("linux").unwrap(),
        max_concurrent_tasks: Some(1),
        labels: Default::default(),
    }];
    let reply = submit(&mut w, spec);
    w.run_for(600_000).unwrap();
    assert_eq!(
        statuses(&w, &reply),
        [RunStatus::Pending, RunStatus::Paused]
    );
    assert!(matches!(state(&w, "a"), JobState::Queued { .. }));
    assert!(matches!(state(&w, "b"), JobState::Queued { .. }));

    let resume = act(&mut w, "r1", RunAction::Resume);
    // Until the first task is on a node, then pause: it finishes, the
    // second does not start.
    for _ in 0..600 {
        w.run_for(1_000).unwrap();
        if on_nodes(&w, &["a", "b"]) == 1 {
            break;
        }
    }
    assert_eq!(on_nodes(&w, &["a", "b"]), 1, "one at a time (the limit)");
    let pause = act(&mut w, "r1", RunAction::Pause);
    w.run_for(900_000).unwrap();
    assert!(matches!(
        w.job_replies(&resume).first(),
        Some(JobReply::Run { .. })
    ));
    assert!(matches!(
        w.job_replies(&pause).first(),
        Some(JobReply::Run {
            status: RunStatus::Paused,
            ..
        })
    ));
    let done: Vec<_> = ["a", "b"]
        .into_iter()
        .filter(|id| state(&w, id) == JobState::Done)
        .collect();
    assert_eq!(done.len(), 1, "the attempt on a node finished: {done:?}");
    assert_eq!(info(&w, "r1").status, RunStatus::Paused);

    act(&mut w, "r1", RunAction::Resume);
    w.run_for(900_000).unwrap();
    assert_eq!(info(&w, "r1").status, RunStatus::Completed);
    assert_eq!(
        statuses(&w, &reply),
        [
            RunStatus::Pending,
            RunStatus::Paused,
            RunStatus::Queued,
            RunStatus::Running,
            RunStatus::Paused,
            RunStatus::Running,
            RunStatus::Completed
        ]
    );
}

#[test]
fn a_pool_limit_caps_the_runs_tasks_on_nodes() {
    let mut w = world();
    let mut spec = run(
        "r1",
        (0..5)
            .map(|i| task(&format!("t{i}"), &["sleep", "60"]))
            .collect(),
    );
    spec.workers = vec![WorkerSpec {
        pool: PoolName::new("linux").unwrap(),
        max_concurrent_tasks: Some(2),
        labels: Default::default(),
    }];
    let reply = submit(&mut w, spec);
    let ids = ["t0", "t1", "t2", "t3", "t4"];
    let mut most = 0;
    for _ in 0..400 {
        w.run_for(5_000).unwrap();
        most = most.max(on_nodes(&w, &ids));
    }
    assert_eq!(most, 2, "never more than the limit, and it was reached");
    assert_eq!(statuses(&w, &reply).last(), Some(&RunStatus::Completed));
}

#[test]
fn cancelling_a_run_cancels_its_unfinished_tasks() {
    let mut w = world();
    let mut spec = run(
        "r1",
        vec![
            task("long", &["sleep", "3000"]),
            task("later", &["sleep", "3000"]),
        ],
    );
    spec.workers = vec![WorkerSpec {
        pool: PoolName::new("linux").unwrap(),
        max_concurrent_tasks: Some(1),
        labels: Default::default(),
    }];
    let reply = submit(&mut w, spec);
    for _ in 0..600 {
        w.run_for(1_000).unwrap();
        if on_nodes(&w, &["long", "later"]) == 1 {
            break;
        }
    }
    let cancel = act(&mut w, "r1", RunAction::Cancel);
    w.run_for(300_000).unwrap();
    assert!(matches!(
        w.job_replies(&cancel),
        [JobReply::Run {
            status: RunStatus::Cancelled,
            ..
        }]
    ));
    assert_eq!(statuses(&w, &reply).last(), Some(&RunStatus::Cancelled));
    for id in ["long", "later"] {
        assert_eq!(state(&w, id), JobState::Cancelled, "{id}");
    }
    let i = info(&w, "r1");
    assert!(
        i.tasks.iter().all(|t| t.result == Some(TaskResult::Skip)),
        "{i:?}"
    );
    // Cancelling again is a retried request; pausing an ended run is not.
    let again = act(&mut w, "r1", RunAction::Cancel);
    let pause = act(&mut w, "r1", RunAction::Pause);
    w.run_for(1_000).unwrap();
    assert!(matches!(w.job_replies(&again), [JobReply::Run { .. }]));
    assert!(
        matches!(w.job_replies(&pause), [JobReply::Rejected { why, .. }] if why.contains("cancelled")),
        "{:?}",
        w.job_replies(&pause)
    );
}

#[test]
fn runs_are_validated_and_idempotent() {
    let mut w = world();
    let lone = w.submit_job(task("taken", &["sleep", "1"]));
    w.run_for(1_000).unwrap();
    let cases: Vec<(RunSpec, &str)> = vec![
        (run("e", vec![]), "at least one task"),
        (
            run("d", vec![task("x", &["true"]), task("x", &["true"])]),
            "twice",
        ),
        (
            {
                let mut t = task("x", &["true"]);
                t.workspace = fleet_core::Workspace::new("other").unwrap();
                run("w", vec![t])
            },
            "workspace",
        ),
        (
            {
                let mut t = task("x", &["true"]);
                t.pool = PoolName::new("nope").unwrap();
                run("p", vec![t])
            },
            "unknown pool",
        ),
        (
            {
                let mut r = run("k", vec![task("x", &["true"])]);
                r.workers = vec![WorkerSpec {
                    pool: PoolName::new("gpu").unwrap(),
                    max_concurrent_tasks: None,
                    labels: Default::default(),
                }];
                r
            },
            "do not name",
        ),
        (run("c", vec![task("taken", &["true"])]), "already used"),
        (run("a", vec![task("x", &[])]), "argv"),
    ];
    let replies: Vec<_> = cases
        .into_iter()
        .map(|(spec, needle)| (submit(&mut w, spec), needle))
        .collect();
    let first = submit(&mut w, run("ok", vec![task("y", &["sleep", "1"])]));
    w.run_for(1_000).unwrap();
    let same = submit(&mut w, run("ok", vec![task("y", &["sleep", "1"])]));
    let other = submit(&mut w, run("ok", vec![task("z", &["sleep", "1"])]));
    w.run_for(1_000).unwrap();
    for (reply, needle) in &replies {
        assert!(
            matches!(w.job_replies(reply), [JobReply::Rejected { why, .. }] if why.contains(needle)),
            "{needle}: {:?}",
            w.job_replies(reply)
        );
    }
    assert!(matches!(
        w.job_replies(&first).first(),
        Some(JobReply::Run { .. })
    ));
    assert!(matches!(w.job_replies(&same), [JobReply::Run { .. }]));
    assert!(
        matches!(w.job_replies(&other), [JobReply::Rejected { why, .. }] if why.contains("different run"))
    );
    let unknown = act(&mut w, "nope", RunAction::Pause);
    w.run_for(1_000).unwrap();
    assert!(matches!(
        w.job_replies(&unknown),
        [JobReply::Rejected { .. }]
    ));
    let _ = lone;
}

#[test]
fn a_run_survives_a_daemon_crash_and_is_forgotten_with_its_jobs() {
    let mut w = world();
    let spec = run(
        "r1",
        vec![task("a", &["sleep", "120"]), task("b", &["sleep", "120"])],
    );
    submit(&mut w, spec.clone());
    w.run_for(200_000).unwrap();
    w.crash_and_restart();
    w.run_for(900_000).unwrap();
    assert_eq!(info(&w, "r1").status, RunStatus::Completed);
    assert!(w.runs().values().all(|n| *n == 1), "{:?}", w.runs());
    // Resubmitting after the restart hears the run's status.
    let again = submit(&mut w, spec);
    w.run_for(1).unwrap();
    assert!(matches!(
        w.job_replies(&again),
        [JobReply::Run {
            status: RunStatus::Completed,
            ..
        }]
    ));
    // The run's tasks outlive their own retention while the run is kept,
    // then go with it.
    w.run_for(2 * 86_400_000).unwrap();
    assert!(w.controller().run(&RunId::new("r1").unwrap()).is_none());
    assert!(w.controller().job(&JobId::new("a").unwrap()).is_none());
    assert!(
        w.records().is_empty()
            || w.records()
                .iter()
                .all(|(k, _, _)| !k.as_str().contains("r1")),
        "{:?}",
        w.records().iter().map(|(k, _, _)| k).collect::<Vec<_>>()
    );
    w.check_invariants().unwrap();
}

#[test]
fn a_crash_between_a_runs_record_and_its_tasks_is_mended_at_restart() {
    let mut w = world();
    submit(
        &mut w,
        run(
            "r1",
            vec![task("a", &["sleep", "5"]), task("b", &["sleep", "5"])],
        ),
    );
    // Step until the run is stored and its tasks are not yet.
    let stored = |w: &World, prefix: &str| {
        w.records()
            .iter()
            .any(|(k, _, _)| k.as_str().starts_with(prefix))
    };
    let mut caught = false;
    for _ in 0..10_000 {
        if stored(&w, "runs.") && !stored(&w, "jobs.") {
            caught = true;
            break;
        }
        if !w.step() {
            break;
        }
    }
    assert!(caught, "never between the run's write and its tasks'");
    w.crash_and_restart();
    w.run_for(900_000).unwrap();
    let i = info(&w, "r1");
    assert_eq!(i.status, RunStatus::Completed, "{i:?}");
    assert!(i.tasks.iter().all(|t| t.result == Some(TaskResult::Pass)));
    w.check_invariants().unwrap();
}
