//! The `fleet-agent` binary: flags, config errors, and the SIGTERM drain
//! with a command in flight (a harness daemon on loopback TCP).

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{TestResult, temp_dir};
use fleet_agent::link::tcp::{read_frame, write_frame};
use fleet_core::ids::{CommandId, NodeId};
use fleet_core::protocol::{AgentMsg, CommandSpec, DaemonMsg, WorkerEvent};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::net::TcpListener;

const BIN: &str = env!("CARGO_BIN_EXE_fleet-agent");

#[test]
fn help_and_version() -> TestResult {
    let out = Command::new(BIN).arg("--help").output()?;
    assert!(out.status.success());
    assert!(String::from_utf8(out.stdout)?.contains("FLEET_AGENT_CONFIG"));
    for args in [&["--version"][..], &["queue", "-V"]] {
        let out = Command::new(BIN).args(args).output()?;
        assert!(out.status.success(), "{args:?}");
        assert_eq!(
            String::from_utf8(out.stdout)?.trim(),
            format!("fleet-agent {}", env!("CARGO_PKG_VERSION"))
        );
    }
    Ok(())
}

#[test]
fn usage_errors_exit_2() -> TestResult {
    for args in [
        &["--bogus"][..],
        &["--config"],
        &["daemon"],
        &["queue", "x"],
    ] {
        let out = Command::new(BIN)
            .args(args)
            .env_remove("FLEET_AGENT_CONFIG")
            .output()?;
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
    Ok(())
}

#[test]
fn a_config_flag_means_daemon_mode_even_with_a_queue_in_the_environment() -> TestResult {
    let dir = temp_dir("bin-config-flag");
    let path = dir.join("missing.toml");
    for args in [
        vec!["--config".to_owned(), path.display().to_string()],
        vec![format!("--config={}", path.display())],
        vec!["-c".to_owned(), path.display().to_string()],
    ] {
        let out = Command::new(BIN)
            .args(&args)
            .env_remove("FLEET_AGENT_CONFIG")
            .env("FLEET_QUEUE_DIR", &dir)
            .output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("missing.toml") && err.contains("cannot read"),
            "{args:?}: {err}"
        );
    }
    Ok(())
}

#[test]
fn config_errors_exit_nonzero_naming_the_key() -> TestResult {
    let dir = temp_dir("bin-config");
    let run = |text: Option<&str>| -> std::io::Result<(bool, String)> {
        let path = dir.join("agent.toml");
        let _ = std::fs::remove_file(&path);
        if let Some(t) = text {
            std::fs::write(&path, t)?;
        }
        let out = Command::new(BIN)
            .env("FLEET_AGENT_CONFIG", &path)
            .output()?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    };
    let (ok, err) = run(None)?;
    assert!(
        !ok && err.contains("agent.toml") && err.contains("cannot read"),
        "{err}"
    );
    let (ok, err) = run(Some("node_id = \"n1\"\ndaemon_url = \n"))?;
    assert!(!ok && err.contains("agent.toml"), "{err}");
    let (ok, err) = run(Some(
        "node_id = \"n1\"\ndaemon_url = \"wss://d:1\"\nheartbeat_intervl = 5\n",
    ))?;
    assert!(
        !ok && err.contains("unknown key \"heartbeat_intervl\""),
        "{err}"
    );
    let (ok, err) = run(Some("node_id = \"n1\"\ndaemon_url = \"gopher://x\"\n"))?;
    assert!(
        !ok && err.contains("invalid daemon_url \"gopher://x\""),
        "{err}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_work_and_exits_zero() -> TestResult {
    let work = temp_dir("bin-drain");
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let config = work.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "node_id = \"n1\"\ndaemon_url = \"fleet+tcp://{addr}\"\nwork_dir = \"{}\"\n\
             heartbeat_interval_ms = 100\n",
            work.display()
        ),
    )?;
    let child = tokio::process::Command::new(BIN)
        .args(["--config".as_ref(), config.as_os_str()])
        .env("FLEET_AGENT_BOOTSTRAP_TOKEN", "tok")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let pid = Pid::from_raw(i32::try_from(child.id().unwrap_or(0))?);

    let (stream, _) = tokio::time::timeout(Duration::from_secs(20), listener.accept()).await??;
    let (mut r, mut w) = stream.into_split();
    let hello: Option<AgentMsg> = read_frame(&mut r).await?;
    assert!(matches!(hello, Some(AgentMsg::Hello { .. })), "{hello:?}");
    write_frame(
        &mut w,
        &DaemonMsg::Welcome {
            node: NodeId::new("n1")?,
            identity: None,
            heartbeat_interval_ms: 100,
        },
    )
    .await?;
    let id = CommandId::new("in-flight")?;
    write_frame(
        &mut w,
        &DaemonMsg::Run(CommandSpec {
            id: id.clone(),
            job: None,
            argv: vec!["sh".into(), "-c".into(), "sleep 1; echo finished".into()],
            env: BTreeMap::new(),
            cwd: None,
            timeout_ms: None,
            redact: Vec::new(),
            scorer: None,
        }),
    )
    .await?;
    let mut msgs = Vec::new();
    loop {
        let m: Option<AgentMsg> =
            tokio::time::timeout(Duration::from_secs(10), read_frame(&mut r)).await??;
        let Some(m) = m else { break };
        if matches!(
            m,
            AgentMsg::Event {
                event: WorkerEvent::Running,
                ..
            }
        ) {
            kill(pid, Signal::SIGTERM)?;
        }
        msgs.push(m);
    }
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output()).await??;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {:?}; stderr:\n{stderr}",
        out.status
    );
    assert!(stderr.contains("fleet-agent: drained, exiting"), "{stderr}");
    let drain_at = msgs
        .iter()
        .position(
            |m| matches!(m, AgentMsg::Draining { in_flight } if in_flight == &vec![id.clone()]),
        )
        .ok_or("no Draining with the in-flight command")?;
    let done_at = msgs
        .iter()
        .position(|m| {
            matches!(
                m,
                AgentMsg::Event {
                    event: WorkerEvent::Completed {
                        exit_code: Some(0),
                        ..
                    },
                    ..
                }
            )
        })
        .ok_or("in-flight command did not complete")?;
    assert!(drain_at < done_at);
    assert!(matches!(msgs.last(), Some(AgentMsg::Draining { in_flight }) if in_flight.is_empty()));
    Ok(())
}
