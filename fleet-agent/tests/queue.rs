//! Queue mode: specs move pending → claimed → completed | failed through a
//! real supervisor process with records saying how they ended; a spec runs
//! once among racing agents; leases are renewed, lapsed ones taken over
//! with the next fencing number (or failed at the attempt limit), a run
//! that lost its lease records nothing; settled claims and leftover
//! pending copies left by dead agents are cleaned up; the supervisor's
//! process group dies with a `kill -9`ed agent; the stores' conditional
//! writes, on a directory and on S3 (moto_server).

#![expect(clippy::unwrap_used, reason = "tests")]

mod queue_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

#[cfg(feature = "s3")]
use fleet_agent::queue::store::S3Store;
use fleet_agent::queue::store::{DirStore, ObjectStore, StoreError};
use fleet_agent::queue::{Outcome, run};
use fleet_core::protocol::{QueueClaim, QueueLease, QueueOutcome};
use queue_support::*;

async fn put(store: &dyn ObjectStore, key: &str, body: &str) {
    store.put(key, body.as_bytes()).await.unwrap();
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn specs_move_through_the_states_by_exit_code_and_pool() {
    let tmp = tempfile::tempdir().unwrap();
    let marks_dir = tmp.path().join("marks");
    let sup = marking_supervisor(tmp.path(), &marks_dir);
    let root = tmp.path().join("queue");
    let store: Arc<dyn ObjectStore> = Arc::new(DirStore::new(&root));
    put(
        &*store,
        "fleet/gpu/pending/ok.json",
        r#"{"spec":{"placement":{"poolId":"gpu"}},"exit":0}"#,
    )
    .await;
    put(
        &*store,
        "fleet/gpu/pending/bad.json",
        r#"{"spec":{},"exit":3}"#,
    )
    .await;
    put(&*store, "fleet/gpu/pending/garbage.json", "not json").await;
    put(
        &*store,
        "fleet/gpu/pending/cpu.json",
        r#"{"spec":{"placement":{"poolId":"cpu"}}}"#,
    )
    .await;
    put(&*store, "fleet/other/pending/elsewhere.json", "{}").await;
    let cfg = config(
        &agent_binary(tmp.path()),
        &[
            ("FLEET_QUEUE_DIR", &root.display().to_string()),
            ("FLEET_QUEUE_SUPERVISOR", &sup),
            ("CELLOS_FLEET_QUEUE_NAME", "gpu"),
            ("CELLOS_FLEET_POOL_ID", "gpu"),
        ],
    );
    let started = now_ms();
    let outcomes = run_until(&cfg, store.clone(), |s| async move {
        s.list("fleet/gpu/pending/").await.unwrap() == ["fleet/gpu/pending/cpu.json"]
            && count(&*s, "fleet/gpu", "claimed").await == 0
    })
    .await;
    let mut outcomes: Vec<String> = outcomes.iter().map(|o| format!("{o:?}")).collect();
    outcomes.sort();
    assert_eq!(
        outcomes,
        [
            r#"Completed("ok")"#,
            r#"Failed("bad")"#,
            r#"Failed("garbage")"#
        ]
    );
    let completed = records(&*store, "fleet/gpu", "completed").await;
    let failed = records(&*store, "fleet/gpu", "failed").await;
    assert_eq!(completed.keys().collect::<Vec<_>>(), ["ok"]);
    assert_eq!(failed.keys().collect::<Vec<_>>(), ["bad", "garbage"]);
    let ok = &completed["ok"];
    assert_eq!(ok.outcome, QueueOutcome::Completed { exit_code: 0 });
    assert_eq!(ok.fencing, 1);
    assert_eq!(ok.agent, format!("test-node/{}", std::process::id()));
    assert!(started <= ok.started_at && ok.started_at <= ok.ended_at && ok.ended_at <= now_ms());
    assert_eq!(
        ok.spec,
        serde_json::json!({"spec":{"placement":{"poolId":"gpu"}},"exit":0})
    );
    assert_eq!(
        failed["bad"].outcome,
        QueueOutcome::Failed {
            exit_code: Some(3),
            reason: "the supervisor exited with 3".into()
        }
    );
    // The garbage spec never reached the supervisor; its text is kept.
    let garbage = &failed["garbage"];
    assert_eq!(garbage.spec, serde_json::json!("not json"));
    assert!(
        matches!(&garbage.outcome, QueueOutcome::Failed { exit_code: None, reason } if reason.starts_with("the spec is not JSON")),
        "{garbage:?}"
    );
    assert_eq!(count(&*store, "fleet/gpu", "claimed").await, 0);
    // The other lane is untouched.
    assert_eq!(count(&*store, "fleet/other", "pending").await, 1);
    assert_eq!(marks(&marks_dir), [("bad".into(), 1), ("ok".into(), 1)]);
    // The supervisor got the spec on stdin and the agent id in its environment.
    let mark = std::fs::read_to_string(marks_dir.join("ok.1")).unwrap();
    let (agent, spec) = mark.trim_end().split_once(' ').unwrap();
    assert_eq!(agent, ok.agent);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(spec).unwrap(),
        ok.spec
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_agents_run_each_spec_once() {
    let tmp = tempfile::tempdir().unwrap();
    let marks_dir = tmp.path().join("marks");
    let sup = marking_supervisor(tmp.path(), &marks_dir);
    let root = tmp.path().join("queue");
    let store: Arc<dyn ObjectStore> = Arc::new(DirStore::new(&root));
    for i in 0..24 {
        put(&*store, &format!("fleet/pending/s{i:02}.json"), "{}").await;
    }
    let cfg = config(
        &agent_binary(tmp.path()),
        &[
            ("FLEET_QUEUE_DIR", &root.display().to_string()),
            ("FLEET_QUEUE_SUPERVISOR", &sup),
        ],
    );
    let (stop, rx) = tokio::sync::watch::channel(false);
    let agents: Vec<_> = (0..3)
        .map(|_| {
            let (cfg, store, rx) = (cfg.clone(), store.clone(), rx.clone());
            tokio::spawn(async move { run(&cfg, store, rx).await })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while count(&*store, "fleet", "completed").await < 24 {
        assert!(Instant::now() < deadline, "not all specs completed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(true).unwrap();
    let mut total = 0;
    for a in agents {
        total += a.await.unwrap().len();
    }
    assert_eq!(total, 24, "each spec ran in exactly one agent");
    let ran = marks(&marks_dir);
    assert_eq!(ran.len(), 24, "no spec ran twice: {ran:?}");
    assert!(ran.iter().all(|(_, fencing)| *fencing == 1));
}

/// A claim of `id` held by `agent` since `at`, lapsing at `expires_at`.
fn held(id: &str, agent: &str, fencing: u64, at: u64, expires_at: u64) -> QueueClaim {
    QueueClaim {
        spec_id: id.into(),
        spec: serde_json::json!({"spec": {}}),
        lease: QueueLease {
            agent: agent.into(),
            fencing,
            acquired_at: at,
            renewed_at: at,
            expires_at,
        },
        result: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_dead_agents_leave_behind_is_taken_over_failed_filed_or_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let marks_dir = tmp.path().join("marks");
    let sup = marking_supervisor(tmp.path(), &marks_dir);
    let root = tmp.path().join("queue");
    let store: Arc<dyn ObjectStore> = Arc::new(DirStore::new(&root));
    let now = now_ms();
    let claim = |c: &QueueClaim| claim_body(c);
    // A lease that lapsed: taken over, run again under fencing 2.
    let lapsed = held("lapsed", "dead/1", 1, now - 5_000, now - 1_000);
    store
        .create("fleet/claimed/lapsed.json", &claim(&lapsed))
        .await
        .unwrap()
        .unwrap();
    // A lease that lapsed at the last attempt: failed, not run.
    let last = held("last", "dead/2", 3, now - 5_000, now - 1_000);
    store
        .create("fleet/claimed/last.json", &claim(&last))
        .await
        .unwrap()
        .unwrap();
    // A lease still held by a live agent: left alone.
    let live = held("live", "alive/3", 1, now, now + 600_000);
    store
        .create("fleet/claimed/live.json", &claim(&live))
        .await
        .unwrap()
        .unwrap();
    // A claim settled by an agent that died before filing it: filed as is.
    let mut settled = held("settled", "dead/4", 2, now - 5_000, now + 600_000);
    settled.result = Some(fleet_core::protocol::QueueResult {
        outcome: QueueOutcome::Completed { exit_code: 0 },
        started_at: now - 4_000,
        ended_at: now - 3_000,
    });
    store
        .create("fleet/claimed/settled.json", &claim(&settled))
        .await
        .unwrap()
        .unwrap();
    // A pending copy left by an agent that died between claiming and
    // deleting it, of a spec filed since: dropped without running.
    put(&*store, "fleet/pending/settled.json", "{}").await;
    let cfg = config(
        &agent_binary(tmp.path()),
        &[
            ("FLEET_QUEUE_DIR", &root.display().to_string()),
            ("FLEET_QUEUE_SUPERVISOR", &sup),
            ("FLEET_QUEUE_LEASE_MS", "1000"),
            ("FLEET_QUEUE_RENEW_INTERVAL_MS", "100"),
        ],
    );
    let outcomes = run_until(&cfg, store.clone(), |s| async move {
        count(&*s, "fleet", "claimed").await == 1 && count(&*s, "fleet", "pending").await == 0
    })
    .await;
    let completed = records(&*store, "fleet", "completed").await;
    let failed = records(&*store, "fleet", "failed").await;
    assert_eq!(completed.keys().collect::<Vec<_>>(), ["lapsed", "settled"]);
    assert_eq!(failed.keys().collect::<Vec<_>>(), ["last"]);
    assert_eq!(completed["lapsed"].fencing, 2);
    assert_eq!(
        completed["lapsed"].agent,
        format!("test-node/{}", std::process::id())
    );
    assert_eq!(
        (
            completed["settled"].agent.as_str(),
            completed["settled"].fencing
        ),
        ("dead/4", 2),
        "filed as its holder settled it"
    );
    let QueueOutcome::Failed { reason, .. } = &failed["last"].outcome else {
        panic!("{:?}", failed["last"]);
    };
    assert!(
        reason.contains("lease lapsed at attempt 3 of 3") && reason.contains("dead/2"),
        "{reason}"
    );
    assert_eq!(failed["last"].fencing, 4);
    assert_eq!(
        store.list("fleet/claimed/").await.unwrap(),
        ["fleet/claimed/live.json"]
    );
    assert_eq!(
        marks(&marks_dir),
        [("lapsed".into(), 2)],
        "only the lapsed spec ran"
    );
    let mut outcomes: Vec<String> = outcomes.iter().map(|o| format!("{o:?}")).collect();
    outcomes.sort();
    assert_eq!(outcomes, [r#"Completed("lapsed")"#, r#"Failed("last")"#]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_take_over_a_lapsed_lease_is_left_for_an_operator() {
    let tmp = tempfile::tempdir().unwrap();
    let sup = marking_supervisor(tmp.path(), &tmp.path().join("marks"));
    let root = tmp.path().join("queue");
    let store: Arc<dyn ObjectStore> = Arc::new(DirStore::new(&root));
    let now = now_ms();
    let lapsed = held("lapsed", "dead/1", 1, now - 5_000, now - 1_000);
    store
        .create("fleet/claimed/lapsed.json", &claim_body(&lapsed))
        .await
        .unwrap()
        .unwrap();
    put(&*store, "fleet/pending/new.json", "{}").await;
    let cfg = config(
        &agent_binary(tmp.path()),
        &[
            ("FLEET_QUEUE_DIR", &root.display().to_string()),
            ("FLEET_QUEUE_SUPERVISOR", &sup),
            ("FLEET_QUEUE_TAKE_OVER", "false"),
            ("FLEET_QUEUE_RENEW_INTERVAL_MS", "50"),
        ],
    );
    let outcomes = run_until(&cfg, store.clone(), |s| async move {
        count(&*s, "fleet", "completed").await == 1
    })
    .await;
    // Several looks at claimed/ later, the lapsed claim is still there.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(outcomes, [Outcome::Completed("new".into())]);
    assert_eq!(
        store.list("fleet/claimed/").await.unwrap(),
        ["fleet/claimed/lapsed.json"]
    );
}

/// `the_late_runner_*`'s supervisor: sleeps, then marks (spec id, fencing).
fn slow_supervisor(dir: &std::path::Path, marks: &std::path::Path) -> String {
    std::fs::create_dir_all(marks).unwrap();
    script(
        dir,
        "slow.sh",
        &format!(
            "#!/bin/sh\ncat > /dev/null\nsleep 2\n\
             echo \"$FLEET_QUEUE_AGENT_ID\" > {marks:?}/\"$FLEET_QUEUE_SPEC_ID.$FLEET_QUEUE_FENCING\"\n"
        ),
    )
}

#[test]
fn a_late_runner_whose_lease_was_taken_over_records_nothing() {
    use nix::sys::signal::Signal;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("queue");
    let marks_dir = tmp.path().join("marks");
    let sup = slow_supervisor(tmp.path(), &marks_dir);
    std::fs::create_dir_all(root.join("fleet/pending")).unwrap();
    std::fs::write(root.join("fleet/pending/job.json"), "{}").unwrap();
    let env = |node: &str| {
        vec![
            ("FLEET_QUEUE_DIR", root.display().to_string()),
            ("FLEET_QUEUE_SUPERVISOR", sup.clone()),
            ("FLEET_QUEUE_POLL_INTERVAL_MS", "50".into()),
            ("FLEET_QUEUE_LEASE_MS", "800".into()),
            ("FLEET_QUEUE_RENEW_INTERVAL_MS", "200".into()),
            ("FLEET_QUEUE_NODE_ID", node.into()),
        ]
    };
    let bin = agent_binary(tmp.path());
    let first_log = tmp.path().join("first.log");
    let mut first = Agent(spawn_agent(&bin, &env("first"), &first_log));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !root.join("fleet/claimed/job.json").exists() {
        assert!(Instant::now() < deadline, "never claimed");
        std::thread::sleep(Duration::from_millis(10));
    }
    // The first agent stalls (its supervisor runs on); its lease lapses and
    // the second takes the spec over.
    signal(first.0.id(), Signal::SIGSTOP);
    let mut second = Agent(spawn_agent(
        &bin,
        &env("second"),
        &tmp.path().join("second.log"),
    ));
    while !root.join("fleet/completed/job.json").exists() {
        assert!(Instant::now() < deadline, "never completed");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Back late: its supervisor has finished, and the result is not its.
    signal(first.0.id(), Signal::SIGCONT);
    let text = loop {
        let text = std::fs::read_to_string(&first_log).unwrap();
        // Stopped while it ran the spec, it finds its lease lost or its
        // result not wanted; stopped between taking the spec and starting
        // it, it finds the spec already filed and runs nothing.
        if text.contains("lease lost")
            || text.contains("result not recorded")
            || text.contains("spec already filed")
        {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "the first agent never noticed: {text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    for agent in [&mut first, &mut second] {
        signal(agent.0.id(), Signal::SIGTERM);
        assert!(agent.0.wait().unwrap().success());
    }
    let body = std::fs::read(root.join("fleet/completed/job.json")).unwrap();
    let record: fleet_core::protocol::QueueRecord = fleet_core::protocol::decode(&body).unwrap();
    assert_eq!(record.fencing, 2, "{record:?}");
    assert_eq!(record.agent, format!("second/{}", second.0.id()));
    assert!(!root.join("fleet/failed/job.json").exists(), "{text}");
    assert!(
        std::fs::read_dir(root.join("fleet/claimed"))
            .unwrap()
            .all(|e| { e.unwrap().file_name().to_string_lossy().starts_with('.') })
    );
    // The late run got to its end too (or was stopped when the first agent
    // found its lease lost); the supervisor tells them apart by the fencing.
    let ran = marks(&marks_dir);
    assert!(ran.contains(&("job".into(), 2)), "{ran:?}");
    assert!(ran.iter().all(|(_, f)| [1, 2].contains(f)), "{ran:?}");
}

#[test]
fn the_supervisors_process_group_dies_with_a_killed_agent() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("queue");
    let pid_file = tmp.path().join("supervisor.pid");
    // The supervisor starts a child of its own, then waits.
    let sup = script(
        tmp.path(),
        "forks.sh",
        &format!("#!/bin/sh\ncat > /dev/null\nsleep 300 &\necho $$ > {pid_file:?}\nwait\n"),
    );
    std::fs::create_dir_all(root.join("fleet/pending")).unwrap();
    std::fs::write(root.join("fleet/pending/long.json"), "{}").unwrap();
    let mut agent = Agent(spawn_agent(
        &agent_binary(tmp.path()),
        &[
            ("FLEET_QUEUE_DIR", root.display().to_string()),
            ("FLEET_QUEUE_SUPERVISOR", sup),
            ("FLEET_QUEUE_POLL_INTERVAL_MS", "50".into()),
        ],
        &tmp.path().join("agent.log"),
    ));
    let deadline = Instant::now() + Duration::from_secs(20);
    let pgid = loop {
        if let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            break pid;
        }
        assert!(Instant::now() < deadline, "the supervisor never started");
        std::thread::sleep(Duration::from_millis(10));
    };
    // Killed whatever the test's outcome, so a failure leaves nothing behind.
    struct KillGroup(i32);
    impl Drop for KillGroup {
        fn drop(&mut self) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(self.0),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    let _group = KillGroup(pgid);
    // Its own group (it leads it), with the shell and its child in it.
    while live_in_group(pgid).len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the supervisor's child never started"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let agent_pgid = nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(agent.0.id() as i32)))
        .unwrap()
        .as_raw();
    assert_ne!(pgid, agent_pgid, "the supervisor has a group of its own");
    agent.0.kill().unwrap(); // SIGKILL
    agent.0.wait().unwrap();
    while !live_in_group(pgid).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the supervisor's group outlived its agent: {:?}",
            live_in_group(pgid)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_binary_drains_on_sigterm_with_the_running_spec_finished() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("queue");
    let sup = script(
        tmp.path(),
        "slow.sh",
        "#!/bin/sh\ncat > /dev/null\nsleep 1\nexit 0\n",
    );
    std::fs::create_dir_all(root.join("fleet/pending")).unwrap();
    std::fs::write(root.join("fleet/pending/long.json"), "{}").unwrap();
    let log = tmp.path().join("agent.log");
    let mut child = Agent(spawn_agent(
        &agent_binary(tmp.path()),
        &[
            ("CELLOS_FLEET_DIR", root.display().to_string()),
            ("CELLOS_FLEET_SUPERVISOR", sup),
            ("CELLOS_FLEET_POLL_INTERVAL_MS", "50".into()),
        ],
        &log,
    ));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !root.join("fleet/claimed/long.json").exists() {
        assert!(Instant::now() < deadline, "never claimed");
        std::thread::sleep(Duration::from_millis(10));
    }
    signal(child.0.id(), nix::sys::signal::Signal::SIGTERM);
    let status = child.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        root.join("fleet/completed/long.json").exists(),
        "the running spec finished"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("drained"), "{text}");
}

/// The conditional writes leases rest on, as every store must do them.
async fn conditional_writes(store: &dyn ObjectStore) {
    let key = "fleet/claimed/a b.json";
    let v1 = store.create(key, b"1").await.unwrap().unwrap();
    assert_eq!(
        store.create(key, b"2").await.unwrap(),
        None,
        "the second create loses"
    );
    let read = store.get(key, 16).await.unwrap();
    assert_eq!((read.body.as_slice(), &read.version), (&b"1"[..], &v1));
    let v2 = store.replace(key, b"22", &v1).await.unwrap().unwrap();
    assert_ne!(v1, v2);
    assert_eq!(
        store.replace(key, b"3", &v1).await.unwrap(),
        None,
        "a stale version loses"
    );
    assert_eq!(store.get(key, 16).await.unwrap().body, b"22");
    assert!(matches!(
        store.get(key, 1).await,
        Err(StoreError::TooLarge { len: 2, max: 1, .. })
    ));
    assert!(
        !store.delete_if(key, &v1).await.unwrap(),
        "a stale delete loses"
    );
    assert!(store.delete_if(key, &v2).await.unwrap());
    assert!(!store.delete_if(key, &v2).await.unwrap(), "gone");
    assert_eq!(store.replace(key, b"4", &v2).await.unwrap(), None, "gone");
    assert!(matches!(
        store.get(key, 16).await,
        Err(StoreError::NotFound(_))
    ));
    for i in 0..3 {
        store
            .put(&format!("fleet/pending/p{i}.json"), b"{}")
            .await
            .unwrap();
    }
    assert_eq!(
        store.list("fleet/pending/").await.unwrap(),
        [
            "fleet/pending/p0.json",
            "fleet/pending/p1.json",
            "fleet/pending/p2.json"
        ]
    );
    store.delete("fleet/pending/p1.json").await.unwrap();
    store.delete("fleet/pending/p1.json").await.unwrap(); // already gone: fine
}

/// Many writers racing on one version: exactly one wins each round.
async fn one_winner_per_version(store: Arc<dyn ObjectStore>) {
    let key = "fleet/claimed/race.json";
    let mut version = store.create(key, b"start").await.unwrap().unwrap();
    for round in 0..20 {
        let tasks: Vec<_> = (0..6)
            .map(|w| {
                let (store, version) = (store.clone(), version.clone());
                tokio::spawn(async move {
                    let body = format!("round {round} writer {w}");
                    store.replace(key, body.as_bytes(), &version).await
                })
            })
            .collect();
        let mut winners = Vec::new();
        for t in tasks {
            if let Some(v) = t.await.unwrap().unwrap() {
                winners.push(v);
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
        version = winners.remove(0);
        assert_eq!(store.get(key, 64).await.unwrap().version, version);
    }
    assert!(store.delete_if(key, &version).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_directory_store_writes_conditionally() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(DirStore::new(tmp.path()));
    conditional_writes(&*store).await;
    one_winner_per_version(store).await;
}

#[cfg(feature = "s3")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_s3_store_writes_conditionally_and_runs_the_queue() {
    let moto = fleet_provider_aws::moto::Moto::start();
    let settings = moto.settings();
    let sdk = fleet_aws::load(&settings).await;
    let admin = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(true)
            .build(),
    );
    admin
        .create_bucket()
        .bucket("fleet-queue")
        .send()
        .await
        .unwrap();
    let s3: Arc<dyn ObjectStore> = Arc::new(S3Store::new(&settings, "fleet-queue").await);
    conditional_writes(&*s3).await;
    one_winner_per_version(s3.clone()).await;

    // The whole queue on S3.
    let tmp = tempfile::tempdir().unwrap();
    let marks_dir = tmp.path().join("marks");
    let sup = marking_supervisor(tmp.path(), &marks_dir);
    let mut cfg = config(
        &agent_binary(tmp.path()),
        &[
            ("FLEET_QUEUE_DIR", "/unused"),
            ("FLEET_QUEUE_SUPERVISOR", &sup),
        ],
    );
    cfg.backend = fleet_agent::queue::Backend::S3 {
        bucket: "fleet-queue".into(),
        region: Some("us-east-1".into()),
        endpoint: Some(moto.url()),
    };
    let outcomes = run_until(&cfg, s3.clone(), |s| async move {
        count(&*s, "fleet", "pending").await == 0 && count(&*s, "fleet", "claimed").await == 0
    })
    .await;
    assert_eq!(outcomes.len(), 2);
    let completed = records(&*s3, "fleet", "completed").await;
    assert_eq!(completed.keys().collect::<Vec<_>>(), ["p0", "p2"]);
    assert!(completed.values().all(|r| r.fencing == 1));
    assert_eq!(marks(&marks_dir).len(), 2);
}
