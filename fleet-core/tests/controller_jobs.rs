//! The job plane through the real controller: events, receipts, retries,
//! requeue on node loss, no duplicate execution across a daemon crash.
#![expect(clippy::unwrap_used, reason = "tests")]

mod common;

use common::*;
use fleet_core::controller::Alert;
use fleet_core::harness::World;
use fleet_core::protocol::{
    AlertChannel, AlertPolicy, JobMsg, JobReply, JobState, Score, Scorer, TaskResult, TaskSpec,
    Verdict, WorkerEvent,
};
use fleet_core::transport::ReplyTo;
use fleet_core::{JobId, PoolName};

fn receipt(w: &World, reply: &ReplyTo) -> Option<fleet_core::protocol::Receipt> {
    w.job_replies(reply).iter().find_map(|r| match r {
        JobReply::Finished(rec) => Some(rec.clone()),
        _ => None,
    })
}

fn events(w: &World, reply: &ReplyTo) -> Vec<String> {
    w.job_replies(reply)
        .iter()
        .map(|r| match r {
            JobReply::Accepted { .. } => "accepted".to_owned(),
            JobReply::Event { event, .. } => format!("{event:?}")
                .split([' ', '{', '('])
                .next()
                .unwrap_or_default()
                .to_lowercase(),
            JobReply::Finished(_) => "finished".to_owned(),
            JobReply::Output { data, .. } => format!("output {}", data.trim()),
            other => format!("{other:?}"),
        })
        .collect()
}

#[test]
fn a_job_runs_and_gets_a_passing_receipt() {
    let mut w = world();
    let reply = w.submit_job(task("j1", &["sleep", "30"]));
    w.run_for(600_000).unwrap();
    assert_eq!(
        events(&w, &reply),
        [
            "accepted",
            "queued",
            "leased",
            "output + sleep 30",
            "starting",
            "running",
            "completed",
            "finished"
        ]
    );
    let r = receipt(&w, &reply).unwrap();
    assert_eq!(r.result, TaskResult::Pass);
    assert_eq!(r.exit_code, Some(0));
    assert_eq!(r.attempts, 1);
    assert!(r.node.is_some());
    let job = w.controller().job(&JobId::new("j1").unwrap()).unwrap();
    assert_eq!(job.state, JobState::Done);
}

#[test]
fn a_failing_exit_code_is_a_failed_receipt_without_retry() {
    let mut w = world();
    let reply = w.submit_job(task("j1", &["exit", "3"]));
    w.run_for(600_000).unwrap();
    let r = receipt(&w, &reply).unwrap();
    assert_eq!(
        (r.result, r.exit_code, r.attempts),
        (TaskResult::Fail, Some(3), 1)
    );
}

#[test]
fn recoverable_failures_retry_with_backoff_then_escalate_and_fail() {
    let mut w = world();
    let mut spec = task("j1", &["flaky"]);
    spec.alert = Some(AlertPolicy {
        after_attempts: Some(2),
        ..AlertPolicy::default()
    });
    let reply = w.submit_job(spec);
    w.run_for(900_000).unwrap();
    let r = receipt(&w, &reply).unwrap();
    assert_eq!(
        (r.result, r.attempts),
        (TaskResult::Fail, 3),
        "3 attempts by default"
    );
    let restarts = w
        .job_replies(&reply)
        .iter()
        .filter(|e| {
            matches!(
                e,
                JobReply::Event {
                    event: WorkerEvent::Restarted { .. },
                    ..
                }
            )
        })
        .count();
    assert_eq!(restarts, 2);
    assert!(
        w.alerts()
            .iter()
            .any(|a| matches!(a, Alert::JobEscalated { attempts: 2, .. }))
    );
}

#[test]
fn a_job_on_a_lost_node_is_requeued_and_finishes_elsewhere() {
    let mut w = world();
    let reply = w.submit_job(task("j1", &["sleep", "600"]));
    w.run_for(300_000).unwrap();
    let job = w.controller().job(&JobId::new("j1").unwrap()).unwrap();
    let JobState::Running { node, .. } = job.state.clone() else {
        panic!("not running: {:?}", job.state)
    };
    w.kill_agent(&node);
    w.run_for(1_800_000).unwrap();
    let r = receipt(&w, &reply).unwrap();
    assert_eq!((r.result, r.attempts), (TaskResult::Pass, 2));
    assert_ne!(r.node.as_ref(), Some(&node));
}

#[test]
fn a_daemon_crash_mid_job_does_not_run_the_command_twice() {
    let mut w = world();
    let reply = w.submit_job(task("j1", &["sleep", "120"]));
    w.run_for(260_000).unwrap();
    assert_eq!(w.runs().len(), 1, "started once");
    w.crash_and_restart();
    w.run_for(600_000).unwrap();
    assert!(w.runs().values().all(|n| *n == 1), "{:?}", w.runs());
    let job = w.controller().job(&JobId::new("j1").unwrap()).unwrap();
    assert_eq!(job.state, JobState::Done);
    // The new controller does not know the old submitter's reply address
    // until it resubmits: submits are idempotent.
    let again = w.submit_job(task("j1", &["sleep", "120"]));
    w.run_for(1).unwrap();
    assert!(receipt(&w, &again).is_some());
    let _ = reply;
}

#[test]
fn submits_are_idempotent_and_validated() {
    let mut w = world();
    let a = w.submit_job(task("j1", &["sleep", "1"]));
    let b = w.submit_job(task("j1", &["sleep", "1"]));
    let c = w.submit_job(task("j1", &["sleep", "2"]));
    let mut bad_pool = task("j2", &["true"]);
    bad_pool.pool = PoolName::new("nope").unwrap();
    let d = w.submit_job(bad_pool);
    let e = w.submit_job(task("j3", &[]));
    w.run_for(600_000).unwrap();
    assert!(receipt(&w, &a).is_some() || receipt(&w, &b).is_some());
    assert_eq!(w.runs().len(), 1, "one job, one run");
    for (reply, needle) in [(&c, "different task"), (&d, "unknown pool"), (&e, "argv")] {
        assert!(
            matches!(w.job_replies(reply), [JobReply::Rejected { why, .. }] if why.contains(needle)),
            "{:?}",
            w.job_replies(reply)
        );
    }
}

#[test]
fn jobs_are_held_to_their_workspace_quota_like_claims() {
    // One slot at a time for the workspace, claims and jobs together.
    let mut config = config(pool(fleet_core::strategy::StrategyConfig::default(), 4));
    config.quotas.insert(
        ws(),
        fleet_core::arbitrate::Quota {
            max_claims: Some(1),
            max_hourly_spend: None,
            ..Default::default()
        },
    );
    let mut w = World::new(config, T0, true);
    let first = w.submit_job(task("j1", &["sleep", "120"]));
    let second = w.submit_job(task("j2", &["sleep", "120"]));
    let holding = |w: &World, id: &str| {
        let state = &w.controller().job(&JobId::new(id).unwrap()).unwrap().state;
        !matches!(
            state,
            JobState::Queued { .. } | JobState::Done | JobState::Cancelled
        )
    };
    let mut most = 0;
    for _ in 0..200 {
        w.run_for(5_000).unwrap();
        most = most.max(usize::from(holding(&w, "j1")) + usize::from(holding(&w, "j2")));
    }
    assert_eq!(most, 1, "the quota of one slot held for jobs");
    let (a, b) = (receipt(&w, &first).unwrap(), receipt(&w, &second).unwrap());
    assert_eq!((a.result, b.result), (TaskResult::Pass, TaskResult::Pass));
}

fn scored(id: &str, argv: &[&str], scorer: Scorer) -> TaskSpec {
    let mut spec = task(id, argv);
    spec.scorer = Some(scorer);
    spec
}

fn job_state(w: &World, id: &str) -> JobState {
    w.controller()
        .job(&JobId::new(id).unwrap())
        .unwrap()
        .state
        .clone()
}

#[test]
fn the_agents_verdict_is_the_receipts_result_and_score() {
    let mut w = world();
    // The simulated agent runs `exit_code` scorers; a failing exit scores 0.
    let pass = w.submit_job(scored("j1", &["sleep", "5"], Scorer::ExitCode));
    let fail = w.submit_job(scored("j2", &["exit", "2"], Scorer::ExitCode));
    w.run_for(600_000).unwrap();
    let r = receipt(&w, &pass).unwrap();
    assert_eq!(r.result, TaskResult::Pass);
    let score = r.score.unwrap();
    assert_eq!((score.value, score.max), (1.0, Some(1.0)));
    assert_eq!(score.notes.as_deref(), Some("exit code 0"));
    let r = receipt(&w, &fail).unwrap();
    assert_eq!((r.result, r.score.unwrap().value), (TaskResult::Fail, 0.0));
}

#[test]
fn a_scorer_the_agent_did_not_run_is_judged_by_exit_code_and_says_so() {
    let mut w = world();
    // The simulated agent has no files: it sends no verdict for this one.
    let spec = scored(
        "j1",
        &["sleep", "5"],
        Scorer::FileExists {
            path: "out.txt".into(),
        },
    );
    let reply = w.submit_job(spec);
    w.run_for(600_000).unwrap();
    let r = receipt(&w, &reply).unwrap();
    assert_eq!((r.result, r.score), (TaskResult::Pass, None));
    assert!(r.reason.unwrap().contains("no verdict"));
}

#[test]
fn a_manual_scorer_waits_for_a_persons_verdict_without_holding_the_node() {
    let mut w = world();
    let reply = w.submit_job(scored("j1", &["sleep", "5"], Scorer::Manual));
    w.run_for(600_000).unwrap();
    let JobState::AwaitingVerdict { node, exit_code } = job_state(&w, "j1") else {
        panic!("{:?}", job_state(&w, "j1"))
    };
    assert_eq!(exit_code, Some(0));
    assert!(
        receipt(&w, &reply).is_none(),
        "no receipt before the verdict"
    );
    // The slot is free: the node is idle, or the pool already let it go.
    let busy = w.controller().node(&node).map(|s| s.state);
    assert_ne!(busy, Some(fleet_core::protocol::NodeState::Busy));

    // A verdict that cannot end a job is refused, and the job still waits.
    let verdict = |result, value: f64| Verdict {
        result,
        score: Score {
            value,
            max: Some(10.0),
            notes: Some("reviewed".into()),
        },
    };
    let msg = |v: Verdict| JobMsg::Verdict {
        workspace: ws(),
        job: JobId::new("j1").unwrap(),
        verdict: v,
    };
    let timeout = w.send_job(msg(verdict(TaskResult::Timeout, 1.0)));
    let too_high = w.send_job(msg(verdict(TaskResult::Pass, 11.0)));
    w.run_for(1_000).unwrap();
    for (r, needle) in [
        (&timeout, "pass, partial, fail or skip"),
        (&too_high, "maximum"),
    ] {
        assert!(
            matches!(w.job_replies(r), [JobReply::Rejected { why, .. }] if why.contains(needle)),
            "{:?}",
            w.job_replies(r)
        );
    }
    assert!(matches!(
        job_state(&w, "j1"),
        JobState::AwaitingVerdict { .. }
    ));

    let ok = w.send_job(msg(verdict(TaskResult::Partial, 7.0)));
    w.run_for(1_000).unwrap();
    assert!(matches!(w.job_replies(&ok), [JobReply::Accepted { .. }]));
    assert_eq!(job_state(&w, "j1"), JobState::Done);
    let r = receipt(&w, &reply).unwrap();
    assert_eq!(r.result, TaskResult::Partial);
    assert_eq!(r.exit_code, Some(0));
    assert_eq!(r.node, Some(node));
    assert_eq!(r.score.unwrap().value, 7.0);

    // The same verdict again (a retried request) is accepted; another is
    // refused.
    let again = w.send_job(msg(verdict(TaskResult::Partial, 7.0)));
    let late = w.send_job(msg(verdict(TaskResult::Pass, 10.0)));
    w.run_for(1_000).unwrap();
    assert!(matches!(w.job_replies(&again), [JobReply::Accepted { .. }]));
    assert!(
        matches!(w.job_replies(&late), [JobReply::Rejected { why, .. }] if why.contains("is done")),
        "{:?}",
        w.job_replies(&late)
    );
}

#[test]
fn a_verdict_names_the_jobs_workspace() {
    let mut w = world();
    w.submit_job(scored("j1", &["sleep", "5"], Scorer::Manual));
    w.run_for(600_000).unwrap();
    let other = w.send_job(JobMsg::Verdict {
        workspace: fleet_core::Workspace::new("other").unwrap(),
        job: JobId::new("j1").unwrap(),
        verdict: Verdict::binary(true, "looks fine"),
    });
    w.run_for(1_000).unwrap();
    assert!(
        matches!(w.job_replies(&other), [JobReply::Rejected { why, .. }] if why == "unknown job")
    );
    assert!(matches!(
        job_state(&w, "j1"),
        JobState::AwaitingVerdict { .. }
    ));
}

#[test]
fn cancelling_a_job_awaiting_its_verdict_skips_it() {
    let mut w = world();
    let reply = w.submit_job(scored("j1", &["sleep", "5"], Scorer::Manual));
    w.run_for(600_000).unwrap();
    let cancel = w.send_job(JobMsg::Cancel {
        workspace: ws(),
        job: JobId::new("j1").unwrap(),
    });
    w.run_for(1_000).unwrap();
    assert!(matches!(
        w.job_replies(&cancel),
        [JobReply::Accepted { .. }]
    ));
    assert_eq!(job_state(&w, "j1"), JobState::Cancelled);
    assert_eq!(receipt(&w, &reply).unwrap().result, TaskResult::Skip);
}

#[test]
fn a_scorer_or_policy_that_cannot_work_is_refused_at_submit() {
    let mut w = world();
    let no_path = w.submit_job(scored(
        "j1",
        &["true"],
        Scorer::RegexMatch {
            path: String::new(),
            pattern: "ok".into(),
        },
    ));
    let no_argv = w.submit_job(scored("j2", &["true"], Scorer::Command { argv: vec![] }));
    let mut never_stale = task("j3", &["true"]);
    never_stale.alert = Some(AlertPolicy {
        after_minutes_stale: Some(0),
        ..AlertPolicy::default()
    });
    let zero = w.submit_job(never_stale);
    w.run_for(1_000).unwrap();
    for (reply, needle) in [
        (&no_path, "scorer.path"),
        (&no_argv, "scorer.argv"),
        (&zero, "after_minutes_stale"),
    ] {
        assert!(
            matches!(w.job_replies(reply), [JobReply::Rejected { why, .. }] if why.contains(needle)),
            "{:?}",
            w.job_replies(reply)
        );
    }
}

fn webhook() -> AlertChannel {
    AlertChannel::Webhook {
        url: "http://127.0.0.1:9/hook".into(),
        secret: None,
    }
}

#[test]
fn a_silent_attempt_goes_stale_once_and_escalates_to_its_channels() {
    let mut w = world();
    let mut spec = task("j1", &["sleep", "600"]);
    spec.alert = Some(AlertPolicy {
        channels: vec![
            webhook(),
            AlertChannel::PagerDuty {
                routing_key: fleet_core::protocol::Secret::new("rk"),
                severity: "error".into(),
            },
        ],
        after_minutes_stale: Some(2),
        ..AlertPolicy::default()
    });
    let reply = w.submit_job(spec);
    w.run_for(900_000).unwrap();
    let seen = events(&w, &reply);
    let stale = seen
        .iter()
        .position(|e| e == "stale")
        .unwrap_or_else(|| panic!("{seen:?}"));
    assert_eq!(
        seen[stale + 1..stale + 3],
        ["escalated", "escalated"],
        "{seen:?}"
    );
    assert_eq!(
        seen.iter().filter(|e| *e == "stale").count(),
        1,
        "once per attempt"
    );
    let escalated: Vec<_> = w
        .job_replies(&reply)
        .iter()
        .filter_map(|r| match r {
            JobReply::Event {
                event: WorkerEvent::Escalated { channel, alert_id },
                ..
            } => Some((channel.clone(), alert_id.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        escalated,
        [
            ("webhook".to_owned(), Some("j1-1-stale".to_owned())),
            ("pager_duty".to_owned(), Some("j1-1-stale".to_owned()))
        ]
    );
    let alert = w
        .alerts()
        .iter()
        .find_map(|a| match a {
            Alert::JobEscalated {
                alert_id,
                reason,
                channels,
                ..
            } => Some((alert_id.clone(), reason.clone(), channels.len())),
            _ => None,
        })
        .unwrap();
    // The simulated agent's last sign of progress is `running`, at start.
    assert_eq!(
        alert,
        (
            "j1-1-stale".to_owned(),
            "no progress for 120 s".to_owned(),
            2
        )
    );
    // Stale is a warning, not an end: the attempt runs to completion.
    assert_eq!(receipt(&w, &reply).unwrap().result, TaskResult::Pass);
}

#[test]
fn the_stale_clock_starts_when_the_attempt_is_dispatched() {
    let mut w = world();
    // 90 s of work, but the node boots first: submit to end is longer than
    // the 2 min policy, the attempt itself is not.
    let mut spec = task("j1", &["sleep", "90"]);
    spec.alert = Some(AlertPolicy {
        channels: vec![webhook()],
        after_minutes_stale: Some(2),
        ..AlertPolicy::default()
    });
    let reply = w.submit_job(spec);
    w.run_for(900_000).unwrap();
    let job = w.controller().job(&JobId::new("j1").unwrap()).unwrap();
    let r = receipt(&w, &reply).unwrap();
    assert!(r.completed_at - job.submitted_at > 120_000, "{r:?}");
    assert!(!events(&w, &reply).contains(&"stale".to_owned()));
    assert!(
        !w.alerts()
            .iter()
            .any(|a| matches!(a, Alert::JobEscalated { .. }))
    );
}

#[test]
fn a_requeued_attempt_is_queued_again_and_escalation_names_its_channels() {
    let mut w = world();
    let mut spec = task("j1", &["flaky"]);
    spec.alert = Some(AlertPolicy {
        channels: vec![webhook()],
        after_attempts: Some(1),
        ..AlertPolicy::default()
    });
    let reply = w.submit_job(spec);
    w.run_for(900_000).unwrap();
    let seen = events(&w, &reply);
    let restarted = seen
        .iter()
        .position(|e| e == "restarted")
        .unwrap_or_else(|| panic!("{seen:?}"));
    assert_eq!(
        seen[restarted + 1..restarted + 3],
        ["escalated", "queued"],
        "{seen:?}"
    );
    assert!(w.alerts().iter().any(|a| matches!(a,
        Alert::JobEscalated { alert_id, attempts: 1, .. } if alert_id == "j1-1-attempts")));
}

#[test]
fn a_finished_job_is_forgotten_after_its_retention_and_the_driver_is_told() {
    let mut w = world();
    let retention = 86_400_000; // common::config's claim_retention_ms
    w.submit_job(task("j1", &["sleep", "5"]));
    w.run_for(600_000).unwrap();
    assert!(w.forgotten_jobs().is_empty(), "kept while retained");
    w.run_for(retention + 60_000).unwrap();
    assert_eq!(w.forgotten_jobs(), [JobId::new("j1").unwrap()]);
    assert!(w.controller().job(&JobId::new("j1").unwrap()).is_none());
}
