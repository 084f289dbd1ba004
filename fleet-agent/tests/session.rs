//! The agent against an in-process daemon harness.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::{Daemon, TestResult, agent_toml, events, is_terminal, output, temp_dir};
use fleet_agent::Config;
use fleet_core::ids::CommandId;
use fleet_core::protocol::{
    AgentMsg, CommandSpec, DaemonMsg, OutputStream, Scorer, Secret, TaskResult, WorkerEvent,
};
use tokio::sync::oneshot;

const WAIT: Duration = Duration::from_secs(15);

fn spec(id: &str, script: &str) -> Result<CommandSpec, fleet_core::ids::IdError> {
    Ok(CommandSpec {
        id: CommandId::new(id)?,
        job: None,
        argv: vec!["sh".into(), "-c".into(), script.into()],
        env: BTreeMap::new(),
        cwd: None,
        timeout_ms: None,
        redact: Vec::new(),
        scorer: None,
    })
}

/// Starts the agent; dropping the returned sender drains it.
fn start(
    daemon: &Daemon,
    work: &Path,
    extra: &str,
) -> Result<oneshot::Sender<()>, fleet_agent::ConfigError> {
    let config = Config::parse(Path::new("agent.toml"), &agent_toml(work, extra))?;
    let connector = daemon.connector();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let shutdown = async move {
            let _ = stop_rx.await;
        };
        if let Err(e) = fleet_agent::run(config, connector, shutdown).await {
            eprintln!("agent ended: {e}");
        }
    });
    Ok(stop_tx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_bootstrap_token_is_refused_and_retried_with_backoff() -> TestResult {
    let work = temp_dir("refused");
    let token_file = work.join("token");
    std::fs::write(&token_file, "used-token\n")?;
    let ca = common::Ca::new("pool")?;
    let node = fleet_core::ids::NodeId::new("n1")?;
    let daemon = Daemon::start(&["fresh-token"], Some(ca.node_identity(&node)?));
    let _stop = start(
        &daemon,
        &work,
        &format!("bootstrap_token_file = \"{}\"\n", token_file.display()),
    )?;
    // Refused again and again, with the token each time, backing off.
    let t0 = tokio::time::Instant::now();
    while daemon.refusals.lock().map(|n| *n).unwrap_or(0) < 4 {
        assert!(t0.elapsed() < WAIT, "agent did not retry");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!work.join("identity").join("node.key").exists());
    // The operator fixes the token file: the next attempt is accepted and
    // the identity is stored, key 0600.
    std::fs::write(&token_file, "fresh-token\n")?;
    let key = work.join("identity").join("node.key");
    while !key.exists() {
        assert!(t0.elapsed() < WAIT, "agent never bootstrapped");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&key)?.permissions().mode() & 0o777, 0o600);
    let hellos = daemon.hellos.lock().map(|h| h.clone()).unwrap_or_default();
    assert!(hellos.iter().all(|h| matches!(
        h,
        AgentMsg::Hello {
            bootstrap_token: Some(_),
            ..
        }
    )));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scorer_runs_in_the_tasks_directory_and_its_verdict_completes_it() -> TestResult {
    let work = temp_dir("scored");
    let mut daemon = Daemon::start(&[], None);
    let _stop = start(&daemon, &work, "")?;
    // The task writes a JSON report where it runs (then fails, which the
    // scorer does not look at); the scorer grades the report.
    let mut task = spec(
        "c1",
        r#"mkdir -p t && printf '{"passed":[true,false,true,true]}' > t/report.json; exit 1"#,
    )?;
    task.scorer = Some(Scorer::JsonPath {
        path: "t/report.json".into(),
        expression: "$.passed[*]".into(),
    });
    daemon.send(DaemonMsg::Run(task)).await;
    let msgs = daemon.until(WAIT, is_terminal).await?;
    let Some(WorkerEvent::Completed {
        exit_code,
        verdict: Some(verdict),
        ..
    }) = events(&msgs).last().cloned()
    else {
        panic!("no scored completion: {:?}", events(&msgs));
    };
    assert_eq!(exit_code, Some(1));
    assert_eq!(verdict.result, TaskResult::Partial);
    assert_eq!(verdict.score.value, 0.75);
    assert_eq!(verdict.score.notes.as_deref(), Some("3 of 4 values truthy"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_reports_model_waits_and_tool_runs_through_its_events_file() -> TestResult {
    let work = temp_dir("task-events");
    let mut daemon = Daemon::start(&[], None);
    let _stop = start(&daemon, &work, "")?;
    // A forged end is refused: the attempt's lifecycle is the agent's.
    let script = r#"
        echo '{"state":"model_wait","model":"m1"}' >> "$FLEET_EVENTS_FILE"
        sleep 0.4
        echo '{"state":"running_tool","tool":"bash","call_id":"c7"}' >> "$FLEET_EVENTS_FILE"
        echo '{"state":"completed","exit_code":0}' >> "$FLEET_EVENTS_FILE"
        exit 4
    "#;
    daemon.send(DaemonMsg::Run(spec("c1", script)?)).await;
    let msgs = daemon.until(WAIT, is_terminal).await?;
    let evs: Vec<WorkerEvent> = events(&msgs)
        .into_iter()
        .filter(|e| !matches!(e, WorkerEvent::Heartbeat { .. }))
        .collect();
    assert_eq!(
        evs,
        [
            WorkerEvent::Starting,
            WorkerEvent::Running,
            WorkerEvent::ModelWait {
                model: Some("m1".into())
            },
            WorkerEvent::RunningTool {
                tool: "bash".into(),
                call_id: Some("c7".into())
            },
            WorkerEvent::Completed {
                exit_code: Some(4),
                summary: None,
                verdict: None
            }
        ]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_events_arrive_in_order_with_exit_code() -> TestResult {
    let work = temp_dir("order");
    let mut daemon = Daemon::start(&[], None);
    let _stop = start(&daemon, &work, "")?;
    daemon
        .send(DaemonMsg::Run(spec(
            "c1",
            "echo hello; echo oops >&2; exit 3",
        )?))
        .await;
    let msgs = daemon.until(WAIT, is_terminal).await?;
    let evs = events(&msgs);
    assert_eq!(evs.first(), Some(&WorkerEvent::Starting));
    assert_eq!(evs.get(1), Some(&WorkerEvent::Running));
    assert_eq!(
        evs.last(),
        Some(&WorkerEvent::Completed {
            exit_code: Some(3),
            summary: None,
            verdict: None
        })
    );
    assert_eq!(output(&msgs, OutputStream::Stdout), "hello\n");
    assert_eq!(output(&msgs, OutputStream::Stderr), "oops\n");
    let seqs: Vec<u64> = msgs
        .iter()
        .filter_map(|m| match m {
            AgentMsg::Event { seq, .. } | AgentMsg::Output { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_kills_the_process_group() -> TestResult {
    let work = temp_dir("timeout");
    let mut daemon = Daemon::start(&[], None);
    let _stop = start(&daemon, &work, "")?;
    let mut s = spec("c-timeout", "sleep 30 & echo $! > bg.pid; sleep 30")?;
    s.timeout_ms = Some(300);
    daemon.send(DaemonMsg::Run(s)).await;
    let msgs = daemon.until(WAIT, is_terminal).await?;
    match events(&msgs).last() {
        Some(WorkerEvent::Failed {
            reason,
            recoverable: false,
        }) => {
            assert!(reason.contains("timed out"), "{reason}");
        }
        other => panic!("expected a timeout failure, got {other:?}"),
    }
    // The background child of the command is gone too.
    let pid: i32 = std::fs::read_to_string(work.join("bg.pid"))?
        .trim()
        .parse()?;
    let t0 = tokio::time::Instant::now();
    loop {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit(')').next().map(|r| r.trim().chars().next()))
            .flatten();
        if matches!(state, None | Some('Z' | 'X')) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "background process {pid} survived"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_mid_command_does_not_run_it_twice() -> TestResult {
    let work = temp_dir("reconnect");
    let mut daemon = Daemon::start(&[], None);
    let _stop = start(&daemon, &work, "")?;
    let run = spec("c-once", "echo ran >> runs.txt; sleep 1; echo done")?;
    daemon.send(DaemonMsg::Run(run.clone())).await;
    daemon
        .until(WAIT, |m| {
            matches!(
                m,
                AgentMsg::Event {
                    event: WorkerEvent::Running,
                    ..
                }
            )
        })
        .await?;
    // The link drops; the agent reconnects and says what it has seen.
    let before = daemon.welcome_count();
    daemon.kick();
    daemon.wait_welcomed(before + 1).await;
    let hello = daemon
        .hellos
        .lock()
        .map(|h| h.last().cloned())
        .ok()
        .flatten();
    match hello {
        Some(AgentMsg::Hello { seen_commands, .. }) => {
            assert!(seen_commands.contains(&run.id), "{seen_commands:?}");
        }
        other => panic!("expected Hello, got {other:?}"),
    }
    // The daemon, unsure, sends the command again: it is not re-run.
    daemon.send(DaemonMsg::Run(run.clone())).await;
    let msgs = daemon.until(WAIT, is_terminal).await?;
    let last = msgs.last().cloned();
    assert!(
        matches!(
            &last,
            Some(AgentMsg::Event {
                event: WorkerEvent::Completed {
                    exit_code: Some(0),
                    ..
                },
                ..
            })
        ),
        "{last:?}"
    );
    assert_eq!(std::fs::read_to_string(work.join("runs.txt"))?, "ran\n");
    // Asked again after it finished: the same terminal event, same seq.
    daemon.send(DaemonMsg::Run(run)).await;
    let again = daemon.next(WAIT).await;
    assert_eq!(again, last);
    assert_eq!(std::fs::read_to_string(work.join("runs.txt"))?, "ran\n");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_split_across_chunks_is_redacted() -> TestResult {
    let work = temp_dir("redact");
    let mut daemon = Daemon::start(&[], None);
    let _stop = start(&daemon, &work, "")?;
    let mut s = spec(
        "c-secret",
        "printf 'token=hun'; sleep 0.3; printf 'ter2 end\\n'",
    )?;
    s.redact = vec![Secret::new("hunter2")];
    daemon.send(DaemonMsg::Run(s)).await;
    let msgs = daemon.until(WAIT, is_terminal).await?;
    let chunks: Vec<&str> = msgs
        .iter()
        .filter_map(|m| match m {
            AgentMsg::Output { data, .. } => Some(data.as_str()),
            _ => None,
        })
        .collect();
    assert!(
        chunks.len() >= 2,
        "expected the output in two chunks: {chunks:?}"
    );
    assert!(chunks.iter().all(|c| !c.contains("hun")), "{chunks:?}");
    assert_eq!(output(&msgs, OutputStream::Stdout), "token=*** end\n");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_finishes_in_flight_work_then_reports() -> TestResult {
    let work = temp_dir("drain");
    let mut daemon = Daemon::start(&[], None);
    let stop = start(&daemon, &work, "")?;
    daemon
        .send(DaemonMsg::Run(spec("c-drain", "sleep 0.5; echo finished")?))
        .await;
    daemon
        .until(WAIT, |m| {
            matches!(
                m,
                AgentMsg::Event {
                    event: WorkerEvent::Running,
                    ..
                }
            )
        })
        .await?;
    drop(stop);
    let msgs = daemon
        .until(
            WAIT,
            |m| matches!(m, AgentMsg::Draining { in_flight } if in_flight.is_empty()),
        )
        .await?;
    assert!(
        matches!(&msgs[0], AgentMsg::Draining { in_flight } if in_flight.len() == 1),
        "{msgs:?}"
    );
    assert!(msgs.iter().any(|m| matches!(
        m,
        AgentMsg::Event {
            event: WorkerEvent::Completed {
                exit_code: Some(0),
                ..
            },
            ..
        }
    )));
    Ok(())
}
