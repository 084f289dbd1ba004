//! `fleetctl` against the real daemon: how it shows claims that have ended,
//! and releasing claims that were never granted (no files were written for
//! them) with no more than their id.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use fleet_core::protocol::{ClaimRecord, ClaimState};

/// The daemon's records of the claims, through `fleetctl --json claims`.
fn claims(daemon: &Daemon) -> Vec<ClaimRecord> {
    let out = ok(&fleetctl(daemon, &["--json", "claims"], 30));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn state_of(daemon: &Daemon, id: &str) -> Option<ClaimState> {
    claims(daemon)
        .into_iter()
        .find(|c| c.request.claim_id.as_str() == id)
        .map(|c| c.state)
}

/// The row of `id` in `fleetctl claims`.
fn row(daemon: &Daemon, id: &str) -> String {
    let table = ok(&fleetctl(daemon, &["claims"], 30));
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(id))
        .unwrap_or_else(|| panic!("no {id} in\n{table}"))
        .to_owned()
}

fn no_bundle(daemon: &Daemon, id: &str) -> bool {
    !Path::new(&daemon.dir)
        .join("data/claims")
        .join(id)
        .join("bundle.json")
        .exists()
}

/// A released claim keeps the lease end it had in its record; the table
/// says it was released and when it ended, not that it expires in minutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_claim_shows_as_released() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut daemon = Daemon::start(dir.path(), "");
    let claim = [
        "claim",
        "--pool",
        "default",
        "--workspace",
        "ci",
        "--id",
        "shown-1",
    ];
    ok(&fleetctl(&daemon, &claim, 90));
    let live = row(&daemon, "shown-1");
    assert!(
        live.contains(" granted ") || live.contains(" active "),
        "{live}"
    );
    assert!(
        live.contains("(in "),
        "a live lease shows when it runs out: {live}"
    );

    assert_eq!(
        ok(&fleetctl(&daemon, &["release", "shown-1"], 30)),
        "released shown-1\n"
    );
    let ended = row(&daemon, "shown-1");
    assert!(ended.contains(" released "), "{ended}");
    assert!(
        !ended.contains("(in "),
        "an ended claim has no lease: {ended}"
    );
    assert!(ended.contains(" ended "), "{ended}");
    assert_eq!(state_of(&daemon, "shown-1"), Some(ClaimState::Released));
    assert_eq!(daemon.stop(), Some(0), "clean exit on SIGTERM");
}

/// A claim that was never granted has no files in its claim dir; `fleetctl
/// release ID` finds its workspace from the daemon: a pending one is
/// released, a refused one (its wait ran out: expired) is confirmed ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_never_granted_are_released_by_id_alone() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut daemon = Daemon::start(dir.path(), "");
    // No node of the pool offers this many CPUs: the claim waits for ever.
    let unsatisfiable = ["--pool", "default", "--workspace", "ci", "--cpus", "100000"];

    let mut args = vec!["claim", "--id", "pending-1"];
    args.extend(unsatisfiable);
    let waiting = spawn_fleetctl(&daemon, &args, Stdio::null());
    let pending = eventually(30, || async {
        (state_of(&daemon, "pending-1") == Some(ClaimState::Pending)).then_some(())
    })
    .await;
    let mut waiting = waiting;
    let _ = waiting.kill();
    let _ = waiting.wait();
    assert!(pending.is_some(), "the claim is stored pending");
    assert!(no_bundle(&daemon, "pending-1"));
    assert_eq!(
        ok(&fleetctl(&daemon, &["release", "pending-1"], 30)),
        "released pending-1\n"
    );
    assert_eq!(state_of(&daemon, "pending-1"), Some(ClaimState::Released));
    let shown = row(&daemon, "pending-1");
    assert!(shown.contains(" released "), "{shown}");

    let mut args = vec!["claim", "--id", "refused-1", "--wait-ms", "500"];
    args.extend(unsatisfiable);
    let refused = fleetctl(&daemon, &args, 30);
    assert_eq!(
        refused.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(no_bundle(&daemon, "refused-1"));
    assert_eq!(state_of(&daemon, "refused-1"), Some(ClaimState::Expired));
    assert_eq!(
        ok(&fleetctl(&daemon, &["release", "refused-1"], 30)),
        "released refused-1\n"
    );
    let shown = row(&daemon, "refused-1");
    assert!(shown.contains(" expired "), "{shown}");
    assert!(!shown.contains("(in "), "{shown}");

    // A claim the daemon never stored: one line saying so.
    let unknown = fleetctl(&daemon, &["release", "never-made"], 30);
    assert_eq!(unknown.status.code(), Some(1));
    let err = String::from_utf8_lossy(&unknown.stderr);
    assert!(err.contains("no such claim"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(daemon.stop(), Some(0), "clean exit on SIGTERM");
}

/// Listening beyond loopback, the daemon serves its API over HTTPS with a
/// certificate from the pool CA: `daemon.json` says `https://`, fleetctl
/// verifies it against the CA and works; a plain-HTTP request gets no
/// answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_loopback_the_api_is_https_from_the_pool_ca() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut d = Daemon::start(dir.path(), "");
    let port = d
        .discovery
        .http
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .to_owned();
    let text = std::fs::read_to_string(&d.config).unwrap_or_default();
    let loopback = format!("listen = \"127.0.0.1:{port}\"");
    assert!(text.contains(&loopback), "{text}");
    std::fs::write(
        &d.config,
        text.replacen(&loopback, &format!("listen = \"0.0.0.0:{port}\""), 1),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    d.crash_and_restart();
    assert_eq!(d.discovery.http, format!("https://127.0.0.1:{port}"));

    let status = ok(&fleetctl(&d, &["--json", "status"], 30));
    let summary: serde_json::Value =
        serde_json::from_str(&status).unwrap_or_else(|e| panic!("{e}: {status}"));
    assert_eq!(summary["leader"], true, "{status}");

    // Plain HTTP to the same port: the TLS server answers no HTTP.
    let answer = tokio::time::timeout(Duration::from_secs(20), async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}")).await?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    })
    .await
    .unwrap_or_else(|_| panic!("the server neither answered nor closed"))
    .unwrap_or_default();
    assert!(
        !String::from_utf8_lossy(&answer).starts_with("HTTP/"),
        "plain HTTP answered: {}",
        String::from_utf8_lossy(&answer)
    );
}
