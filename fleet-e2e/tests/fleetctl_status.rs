//! `fleetctl status`, `pools`, `nodes`, `claims`, `jobs list` and `cost`
//! against the real daemon, as its state changes: a fresh fleet, a job run
//! to completion, a granted claim on its node, the claim released. The
//! tables are read back cell by cell and checked against the daemon's state
//! (the same command's `--json`, the claim's grant), so what is asserted is
//! what the daemon did, not canned answers.

mod common;

use common::*;
use fleet_core::protocol::{ClaimRecord, CostReport, JobRecord, NodeStatus, StatusSummary};

/// `fleetctl ARGS`'s output; it must succeed.
fn run_ok(daemon: &Daemon, args: &[&str]) -> String {
    ok(&fleetctl(daemon, args, 60))
}

/// `fleetctl --json ARGS`, decoded.
fn json<T: serde::de::DeserializeOwned>(daemon: &Daemon, args: &[&str]) -> T {
    let mut argv = vec!["--json"];
    argv.extend_from_slice(args);
    let out = run_ok(daemon, &argv);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("--json {args:?}: {e}: {out}"))
}

/// A table's header and rows, cells split where two or more spaces
/// separate them (no cell holds two spaces in a row).
fn table(text: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let split = |l: &str| -> Vec<String> {
        l.split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let mut lines = text.lines();
    let header = lines.next().map(split).unwrap_or_default();
    (header, lines.map(split).collect())
}

/// The `name value` lines of `fleetctl status`.
fn status_lines(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(|l| {
            let (k, v) = l.split_once(' ').unwrap_or((l, ""));
            (k.to_owned(), v.trim().to_owned())
        })
        .collect()
}

fn counts(c: &std::collections::BTreeMap<String, u64>) -> String {
    if c.is_empty() {
        return "-".to_owned();
    }
    c.iter()
        .map(|(k, n)| format!("{k}={n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `fleetctl status` says what `/v1/status` holds, line by line.
fn check_status(daemon: &Daemon) -> StatusSummary {
    let text = run_ok(daemon, &["status"]);
    let s: StatusSummary = json(daemon, &["status"]);
    let fleet = s.fleet_id.as_ref().map(ToString::to_string);
    assert_eq!(
        status_lines(&text),
        vec![
            (
                "fleet".to_owned(),
                fleet.unwrap_or_else(|| panic!("no fleet id"))
            ),
            ("epoch".to_owned(), s.epoch.0.to_string()),
            ("leader".to_owned(), "yes".to_owned()),
            ("pools".to_owned(), "1".to_owned()),
            ("nodes".to_owned(), counts(&s.nodes)),
            ("claims".to_owned(), counts(&s.claims)),
            ("jobs".to_owned(), counts(&s.jobs)),
            ("cost".to_owned(), "$0.000000".to_owned()),
        ],
        "{text}"
    );
    s
}

const NODE_HEADER: [&str; 9] = [
    "NODE",
    "POOL",
    "STATE",
    "TYPE",
    "MARKET",
    "CONNECTED",
    "CLAIMS",
    "ENDPOINT",
    "LAST SEEN",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_commands_show_the_daemons_state() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut daemon = Daemon::start(dir.path(), "");

    // A fresh fleet: one pool, nothing else.
    let s = check_status(&daemon);
    assert!(s.leader);
    assert!(s.nodes.is_empty() && s.claims.is_empty() && s.jobs.is_empty());
    let (header, rows) = table(&run_ok(&daemon, &["pools"]));
    assert_eq!(
        header,
        ["POOL", "STRATEGY", "INSTANCE TYPES", "MIN", "MAX", "SLOTS"]
    );
    // The default pool, its type resolved from the local provider.
    assert_eq!(
        rows,
        [["default", "cold_image", "local.node", "0", "4", "1"]]
    );
    for (what, first) in [("nodes", "NODE"), ("claims", "CLAIM"), ("jobs", "JOB")] {
        let args: &[&str] = if what == "jobs" {
            &["jobs", "list"]
        } else {
            &[what]
        };
        let (header, rows) = table(&run_ok(&daemon, args));
        assert_eq!(header.first().map(String::as_str), Some(first));
        assert!(rows.is_empty(), "{what}: {rows:?}");
    }

    // A job, run to its end on a node the pool boots for it.
    let out = run_ok(
        &daemon,
        &[
            "jobs",
            "submit",
            "--pool",
            "default",
            "--workspace",
            "ci",
            "--id",
            "job-1",
            "--watch",
            "--",
            "sh",
            "-c",
            "echo from-the-node",
        ],
    );
    assert!(out.contains("accepted job-1"), "{out}");
    assert!(out.contains("from-the-node"), "{out}");
    assert!(
        out.contains("finished job-1: pass after 1 attempt(s), exit code 0"),
        "{out}"
    );
    let (header, rows) = table(&run_ok(&daemon, &["jobs", "list"]));
    assert_eq!(
        header,
        [
            "JOB",
            "WORKSPACE",
            "POOL",
            "STATE",
            "ATTEMPTS",
            "RESULT",
            "SCORE",
            "EXIT",
            "COMMAND"
        ]
    );
    assert_eq!(
        rows,
        [[
            "job-1",
            "ci",
            "default",
            "done",
            "1",
            "pass",
            "-",
            "0",
            "sh -c echo from-the-node"
        ]]
    );
    let jobs: Vec<JobRecord> = json(&daemon, &["jobs", "list"]);
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].receipt.as_ref().and_then(|r| r.exit_code), Some(0));

    // A claim, granted on a node; the node shows it, and the claim the node.
    let out = run_ok(
        &daemon,
        &[
            "claim",
            "--pool",
            "default",
            "--workspace",
            "ci",
            "--id",
            "st-1",
        ],
    );
    assert!(out.contains("st-1"), "{out}");
    let claim = json::<Vec<ClaimRecord>>(&daemon, &["claims"])
        .into_iter()
        .find(|c| c.request.claim_id.as_str() == "st-1")
        .unwrap_or_else(|| panic!("st-1 is not listed"));
    let node = claim
        .node
        .clone()
        .unwrap_or_else(|| panic!("granted on no node"));
    let endpoint = claim
        .endpoint
        .clone()
        .unwrap_or_else(|| panic!("granted with no endpoint"));
    let (header, rows) = table(&run_ok(&daemon, &["claims"]));
    assert_eq!(
        header,
        [
            "CLAIM",
            "WORKSPACE",
            "POOL",
            "STATE",
            "NODE",
            "ENDPOINT",
            "EXPIRES"
        ]
    );
    let row = rows
        .iter()
        .find(|r| r[0] == "st-1")
        .unwrap_or_else(|| panic!("{rows:?}"));
    assert_eq!(row[..3], ["st-1", "ci", "default"]);
    assert_eq!(row[3], claim.state.name());
    assert!(matches!(row[3].as_str(), "granted" | "active"), "{row:?}");
    assert_eq!(row[4], node.as_str());
    assert_eq!(row[5], endpoint);
    assert!(row[6].contains(" (in "), "a live lease: {row:?}");

    let nodes: Vec<NodeStatus> = json(&daemon, &["nodes"]);
    let (header, rows) = table(&run_ok(&daemon, &["nodes"]));
    assert_eq!(header, NODE_HEADER);
    assert_eq!(rows.len(), nodes.len(), "{rows:?}");
    let row = rows
        .iter()
        .find(|r| r[0] == node.as_str())
        .unwrap_or_else(|| panic!("the claim's node {node} is not listed: {rows:?}"));
    assert_eq!(
        row[..8],
        [
            node.as_str(),
            "default",
            "busy",
            "local.node",
            "on_demand",
            "yes",
            "st-1",
            endpoint.as_str()
        ]
    );
    assert!(row[8].ends_with(" ago"), "heard from: {row:?}");

    let s = check_status(&daemon);
    assert_eq!(s.claims.get(claim.state.name()), Some(&1), "{:?}", s.claims);
    assert_eq!(s.jobs.get("done"), Some(&1), "{:?}", s.jobs);
    assert_eq!(
        s.nodes.values().sum::<u64>(),
        nodes.len() as u64,
        "{:?}",
        s.nodes
    );

    // The pool's cost: local nodes are free, but they booted and ran.
    let costs: CostReport = json(&daemon, &["cost"]);
    let text = run_ok(&daemon, &["cost"]);
    let (header, rows) = table(&text);
    assert_eq!(
        header[..5],
        ["POOL", "RUNNING", "STOPPED", "SNAPSHOTS", "TOTAL"]
    );
    let pool = costs
        .pools
        .values()
        .next()
        .unwrap_or_else(|| panic!("no pool in the cost report"));
    let boots: u64 = pool.boots.values().sum();
    assert!(boots >= 1, "{pool:?}");
    assert_eq!(
        rows[0][..5],
        [
            "default",
            "$0.000000",
            "$0.000000",
            "$0.000000",
            "$0.000000"
        ]
    );
    assert_eq!(rows[0][7], boots.to_string(), "{text}");
    assert!(
        text.lines()
            .last()
            .is_some_and(|l| l.starts_with("total $0.000000 at ")),
        "{text}"
    );

    // Released: the claim says so and when, the node is free again.
    assert_eq!(run_ok(&daemon, &["release", "st-1"]), "released st-1\n");
    let (_, rows) = table(&run_ok(&daemon, &["claims"]));
    let row = rows
        .iter()
        .find(|r| r[0] == "st-1")
        .unwrap_or_else(|| panic!("{rows:?}"));
    assert_eq!(row[3], "released");
    assert!(row[6].starts_with("ended "), "{row:?}");
    let (_, rows) = table(&run_ok(&daemon, &["nodes"]));
    let row = rows
        .iter()
        .find(|r| r[0] == node.as_str())
        .unwrap_or_else(|| panic!("{rows:?}"));
    assert_eq!(row[2], "ready", "{row:?}");
    assert_eq!(row[6], "-", "{row:?}");
    let s = check_status(&daemon);
    assert_eq!(s.claims.get("released"), Some(&1), "{:?}", s.claims);
    assert_eq!(daemon.stop(), Some(0));
}
