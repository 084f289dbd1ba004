//! Argument parsing and human rendering.

use std::path::PathBuf;

use clap::error::ErrorKind;
use fleet_core::protocol::{ClaimRecord, CostReport, PoolInfo, StatusSummary};
use fleetctl::args::{ClaimArgs, Command, CostBy, Jobs, Token, VerdictResult, parse};
use fleetctl::exec;
use fleetctl::render;
use serde_json::json;

fn args(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_owned).collect()
}

fn cmd(s: &str) -> Result<Command, clap::Error> {
    parse(args(s)).map(|i| i.command)
}

#[test]
fn the_clap_definition_is_consistent() {
    fleetctl::args::command().debug_assert();
}

#[test]
fn global_flags_anywhere_and_redacted_token() -> Result<(), clap::Error> {
    let inv = parse(args(
        "--data-dir /tmp/d status --json --url http://127.0.0.1:9 --token=sekrit",
    ))?;
    assert_eq!(inv.command, Command::Status);
    assert_eq!(inv.global.data_dir, Some(PathBuf::from("/tmp/d")));
    assert_eq!(inv.global.url.as_deref(), Some("http://127.0.0.1:9"));
    assert!(inv.global.json);
    assert_eq!(
        inv.global.token.as_ref().map(|t| t.expose()),
        Some("sekrit")
    );
    assert!(!format!("{inv:?}").contains("sekrit"), "token in Debug");
    Ok(())
}

#[test]
fn claim_flags() -> Result<(), clap::Error> {
    assert_eq!(
        cmd(
            "claim --pool p --workspace w --id c1 --priority -3 --lease-ms 60000 --cpus 2 \
             --memory-mb 512 --wait-ms 1000 --out /tmp/c"
        )?,
        Command::Claim(ClaimArgs {
            pool: "p".into(),
            workspace: "w".into(),
            id: Some("c1".into()),
            priority: -3,
            lease_ms: Some(60_000),
            cpus: 2,
            memory_mb: 512,
            wait_ms: Some(1000),
            out: Some(PathBuf::from("/tmp/c")),
        })
    );
    assert_eq!(
        cmd("claim --pool p --workspace w")?,
        Command::Claim(ClaimArgs {
            pool: "p".into(),
            workspace: "w".into(),
            ..ClaimArgs::default()
        })
    );
    Ok(())
}

#[test]
fn commands_after_double_dash() -> Result<(), clap::Error> {
    assert_eq!(
        cmd("exec c1 --dir /x -- sh -c --json")?,
        Command::Exec {
            id: "c1".into(),
            dir: Some(PathBuf::from("/x")),
            argv: args("sh -c --json"),
        }
    );
    assert_eq!(
        cmd("jobs submit --pool p --workspace w --watch -- make test")?,
        Command::Jobs(Jobs::Submit {
            pool: "p".into(),
            workspace: "w".into(),
            id: None,
            scorer: None,
            spec: None,
            watch: true,
            argv: args("make test"),
        })
    );
    assert_eq!(
        cmd("jobs verdict j1 --workspace w --result partial --score 7 --max 10")?,
        Command::Jobs(Jobs::Verdict {
            id: "j1".into(),
            workspace: "w".into(),
            result: VerdictResult::Partial,
            score: Some(7.0),
            max: 10.0,
            notes: None,
        })
    );
    assert!(cmd("jobs verdict j1 --workspace w --result timeout").is_err());
    assert_eq!(
        cmd("jobs cancel j1 --workspace w")?,
        Command::Jobs(Jobs::Cancel {
            id: "j1".into(),
            workspace: "w".into(),
        })
    );
    assert_eq!(cmd("jobs list")?, Command::Jobs(Jobs::List));
    assert_eq!(cmd("job list")?, Command::Jobs(Jobs::List));
    assert_eq!(
        cmd("jobs watch j1 --interval-ms 10")?,
        Command::Jobs(Jobs::Watch {
            id: "j1".into(),
            workspace: None,
            // The 50 ms floor is applied where the watch polls.
            interval_ms: 10,
        })
    );
    assert_eq!(
        cmd("jobs watch j1")?,
        Command::Jobs(Jobs::Watch {
            id: "j1".into(),
            workspace: None,
            interval_ms: 1_000,
        })
    );
    assert_eq!(
        cmd("release c1 --workspace w")?,
        Command::Release {
            id: "c1".into(),
            workspace: Some("w".into()),
            dir: None,
        }
    );
    assert_eq!(
        cmd("renew c1 --dir /x")?,
        Command::Renew {
            id: "c1".into(),
            workspace: None,
            dir: Some(PathBuf::from("/x")),
        }
    );
    assert_eq!(
        cmd("token create ci")?,
        Command::Token(Token::Create {
            name: "ci".into(),
            workspaces: None
        })
    );
    assert_eq!(
        cmd("tokens create ci --workspaces team-a,team-b")?,
        Command::Token(Token::Create {
            name: "ci".into(),
            workspaces: Some(vec!["team-a".into(), "team-b".into()])
        })
    );
    assert_eq!(cmd("costs")?, Command::Cost { by: None });
    assert_eq!(
        cmd("cost --by workspace")?,
        Command::Cost {
            by: Some(CostBy::Workspace)
        }
    );
    assert!(cmd("cost --by node").is_err());
    #[cfg(feature = "doctor")]
    assert_eq!(cmd("doctor")?, Command::Doctor);
    Ok(())
}

#[test]
fn help_and_version_are_not_errors() {
    for (line, kind) in [
        ("--help", ErrorKind::DisplayHelp),
        ("help", ErrorKind::DisplayHelp),
        ("claim -h", ErrorKind::DisplayHelp),
        ("-V", ErrorKind::DisplayVersion),
        ("status -V", ErrorKind::DisplayVersion),
    ] {
        match parse(args(line)) {
            Err(e) => {
                assert_eq!(e.kind(), kind, "{line:?}");
                assert_eq!(e.exit_code(), 0, "{line:?}");
            }
            Ok(cli) => panic!("{line:?} parsed as {cli:?}"),
        }
    }
    // As before clap: the program's name, not `fleetctl-status`.
    let version = parse(args("status -V")).err().map(|e| e.to_string());
    assert_eq!(
        version,
        Some(format!("fleetctl {}\n", env!("CARGO_PKG_VERSION")))
    );
}

#[test]
fn usage_errors() {
    for bad in [
        "",
        "frobnicate",
        "status extra",
        "status --pool p",
        "claim --pool p",
        "claim --pool p --workspace w --cpus many",
        "exec c1",
        "exec c1 ls",
        "exec -- ls",
        "jobs",
        "jobs submit --pool p --workspace w",
        "token delete x",
        "status --url",
        "status -x",
        "status --json --json --url a --url b",
        "status --url a --url b",
        "status -- ls",
        "completions tcsh",
    ] {
        let r = parse(args(bad));
        assert!(
            matches!(&r, Err(e) if e.exit_code() == 2),
            "{bad:?} → {r:?}"
        );
    }
}

#[test]
fn tables_align_columns_without_trailing_spaces() {
    let t = render::table(
        &["A", "LONG HEADER", "C"],
        &[
            vec!["xxxx".into(), "1".into(), "".into()],
            vec!["y".into(), "22".into(), "z".into()],
        ],
    );
    assert_eq!(t, "A     LONG HEADER  C\nxxxx  1\ny     22           z\n");
}

#[test]
fn money_times_and_labels() {
    assert_eq!(render::money(1_234_567), "$1.234567");
    assert_eq!(render::money(-5), "-$0.000005");
    assert_eq!(render::utc(0), "1970-01-01T00:00:00Z");
    assert_eq!(render::utc(1_709_210_096_000), "2024-02-29T12:34:56Z");
    assert_eq!(render::duration(245_000), "4m05s");
    assert_eq!(render::duration(3_720_000), "1h02m");
    assert_eq!(
        render::label(Some(&json!({"state": "revoked", "reason": "x"}))),
        "revoked"
    );
    assert_eq!(render::label(Some(&json!({"hybrid": {"a": 1}}))), "hybrid");
    assert_eq!(render::label(Some(&json!(["a", "b"]))), "a,b");
    assert_eq!(render::label(None), "-");
}

#[test]
fn resource_tables() -> Result<(), serde_json::Error> {
    let claims: Vec<ClaimRecord> = serde_json::from_value(json!([{
        "request": {"claim_id": "c1", "workspace": "w", "pool": "p"},
        "state": {"state": "revoked", "reason": {"kind": "node_lost"}},
        "node": "n1", "endpoint": "127.0.0.1:9", "expires_at": 1_000, "enqueued_at": 0,
        "ended_at": 1_500, "epoch": 1
    }]))?;
    let out = render::claims(&claims, 2_000);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].starts_with("CLAIM  WORKSPACE  POOL  STATE"),
        "{out}"
    );
    assert!(lines[1].contains("revoked (node_lost)"), "{out}");
    assert!(
        lines[1].ends_with("ended 1970-01-01T00:00:01Z (500ms ago)"),
        "{out}"
    );

    let status: StatusSummary = serde_json::from_value(json!({
        "epoch": 3, "leader": true, "pools": 1,
        "nodes": {"ready": 2}, "claims": {}, "jobs": {"done": 1}, "cost_micros": 1500
    }))?;
    assert_eq!(
        render::status(&status),
        "epoch   3\nleader  yes\npools   1\nnodes   ready=2\nclaims  -\njobs    done=1\ncost    $0.001500\n"
    );
    let named: StatusSummary = serde_json::from_value(json!({"fleet_id": "3f9a0c2e", "epoch": 3}))?;
    assert!(
        render::status(&named).starts_with("fleet   3f9a0c2e\nepoch   3\n"),
        "{}",
        render::status(&named)
    );

    // A pool short of capacity says why its nodes are of another type.
    let pools: Vec<PoolInfo> = serde_json::from_value(json!([{
        "name": "linux", "strategy": {"kind": "spot"},
        "instance_types": ["c7i.xlarge", "c7i.2xlarge"],
        "shortages": [{"instance_type": "c7i.xlarge", "market": "spot", "since": 0,
            "until": 600_000, "using": "c7i.2xlarge", "error": "no capacity"}]
    }]))?;
    let out = render::pools(&pools);
    assert!(
        out.ends_with(
            "linux: c7i.xlarge (spot): insufficient capacity since 1970-01-01T00:00:00Z, \
             using c7i.2xlarge until 1970-01-01T00:10:00Z\n"
        ),
        "{out}"
    );

    let cost: CostReport = serde_json::from_value(json!({"at": 0, "pools": {"p": {
        "running": 2_000_000, "stopped": 0, "snapshots": 500_000,
        "running_ms": 7_200_000, "stopped_ms": 0, "boots": {"image": 2}, "interruptions": 0, "lost": 1
    }}}))?;
    let cost = render::cost(&cost);
    assert!(cost.contains("$2.500000"), "{cost}");
    assert!(cost.contains("2.00"), "{cost}");
    assert!(
        cost.ends_with("total $2.500000 at 1970-01-01T00:00:00Z\n"),
        "{cost}"
    );
    Ok(())
}

/// An ended claim keeps the lease end it had; the table shows when it
/// ended instead, and a live one when its lease runs out.
#[test]
fn an_ended_claim_does_not_show_a_lease() -> Result<(), serde_json::Error> {
    let claim = |state: serde_json::Value, ended_at: Option<u64>| {
        serde_json::from_value::<ClaimRecord>(json!({
            "request": {"claim_id": "c1", "workspace": "w", "pool": "p"},
            "state": state, "node": "n1", "expires_at": 300_000, "enqueued_at": 0,
            "ended_at": ended_at, "epoch": 1
        }))
    };
    let now = 1_000;
    let live = claim(json!({"state": "granted"}), None)?;
    assert_eq!(
        render::claim_expiry(&live, now),
        "1970-01-01T00:05:00Z (in 4m59s)"
    );
    for (state, name) in [
        (json!({"state": "released"}), "released"),
        (json!({"state": "expired"}), "expired"),
        (
            json!({"state": "revoked", "reason": {"kind": "drained"}}),
            "revoked (drained)",
        ),
    ] {
        let ended = claim(state, Some(500))?;
        assert_eq!(render::claim_state(&ended.state), name);
        assert_eq!(
            render::claim_expiry(&ended, now),
            "ended 1970-01-01T00:00:00Z (500ms ago)"
        );
        let unknown_end = claim(json!({"state": "released"}), None)?;
        assert_eq!(render::claim_expiry(&unknown_end, now), "-");
    }
    Ok(())
}

#[test]
fn exit_codes_of_remote_commands() {
    assert_eq!(exec::exit_code(Some(7), None, false), 7);
    assert_eq!(exec::exit_code(None, None, true), 124);
    assert_eq!(exec::exit_code(None, Some("SIGKILL"), false), 137);
    assert_eq!(exec::exit_code(None, Some("15"), false), 143);
    assert_eq!(exec::exit_code(None, Some("weird"), false), 1);
}

#[test]
fn claims_url_gets_its_path() {
    assert_eq!(
        fleetctl::ws_claims_url("wss://127.0.0.1:7443"),
        "wss://127.0.0.1:7443/v1/claims"
    );
    assert_eq!(
        fleetctl::ws_claims_url("wss://h:1/v1/claims"),
        "wss://h:1/v1/claims"
    );
}
