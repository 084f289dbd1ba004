//! The HTTP commands against a small in-test server serving canned JSON.

use std::net::SocketAddr;
use std::process::Output;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

const TOKEN: &str = "test-token-123";

fn canned(path: &str) -> Option<&'static str> {
    Some(match path {
        "/v1/status" => {
            r#"{"epoch":2,"leader":true,"pools":1,"nodes":{"ready":1},"claims":{"active":1},"jobs":{},"cost_micros":2500000}"#
        }
        "/v1/pools" => {
            r#"[{"name":"local","strategy":{"kind":"cold_image"},"instance_types":["local.node"],"image":"x","min_nodes":0,"max_nodes":4,"slots_per_node":1}]"#
        }
        "/v1/nodes" => {
            r#"[{"record":{"node":"local-1-1","pool":"local","instance_type":"local.node","market":"on_demand","source":"image","state":"ready","endpoint":"127.0.0.1:9000","created_at":0,"state_since":0,"epoch":1},"state":"busy","claims":["c1"],"connected":true,"last_seen":0}]"#
        }
        "/v1/claims" => {
            r#"[{"request":{"claim_id":"c1","workspace":"w","pool":"local"},"state":{"state":"active"},"enqueued_at":0,"node":"local-1-1","endpoint":"127.0.0.1:9000","expires_at":4102444800000,"epoch":1}]"#
        }
        "/v1/jobs" => {
            r#"[{"spec":{"id":"j1","workspace":"w","pool":"local","argv":["make","test"]},"state":{"state":"done"},"attempts":1,"submitted_at":0,"receipt":{"job":"j1","attempts":1,"completed_at":0,"result":"pass","exit_code":0},"epoch":1}]"#
        }
        "/v1/costs" => {
            r#"{"at":0,"pools":{"local":{"running":2500000,"stopped":0,"snapshots":0,"running_ms":3600000,"stopped_ms":0,"boots":{},"interruptions":0,"lost":0}}}"#
        }
        "/v1/tokens" => r#"{"name":"ci","token":"fresh-secret-token"}"#,
        _ => return None,
    })
}

/// Serves canned JSON; `/v1/*` needs `Bearer TOKEN`.
async fn server() -> std::io::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Headers, then the body by Content-Length.
                loop {
                    let Ok(n) = s.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text
                            .lines()
                            .find_map(|l| l.strip_prefix("Content-Length: "))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                let text = String::from_utf8_lossy(&buf).to_string();
                let path = text.split_whitespace().nth(1).unwrap_or("").to_owned();
                let authed = text.contains(&format!("Authorization: Bearer {TOKEN}\r\n"));
                let (status, body) = match path.as_str() {
                    "/healthz" => ("200 OK", "ok\n".to_owned()),
                    p if p.starts_with("/v1/") && !authed => {
                        ("401 Unauthorized", "unauthorized\n".to_owned())
                    }
                    p => match canned(p) {
                        Some(b) => ("200 OK", b.to_owned()),
                        None => ("404 Not Found", r#"{"error":"no such thing"}"#.to_owned()),
                    },
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    Ok(addr)
}

async fn fleetctl(args: Vec<String>) -> std::io::Result<Output> {
    let data = std::env::temp_dir().join(format!("fleetctl-http-{}", std::process::id()));
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_fleetctl"))
            .arg("--data-dir")
            .arg(&data)
            .args(args)
            .env_remove("FLEET_TOKEN")
            .env_remove("FLEET_DAEMON_CONFIG")
            .output()
    })
    .await?
}

/// `fleetctl --url … ARGS` with `FLEET_TOKEN` set to `token`.
async fn fleetctl_with_env_token(
    addr: SocketAddr,
    token: &str,
    args: &[&str],
) -> std::io::Result<Output> {
    let mut argv = vec!["--url".to_owned(), format!("http://{addr}")];
    argv.extend(args.iter().map(|a| (*a).to_owned()));
    let token = token.to_owned();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_fleetctl"))
            .args(argv)
            .env("FLEET_TOKEN", token)
            .env_remove("FLEET_DAEMON_CONFIG")
            .output()
    })
    .await?
}

fn run_args(addr: SocketAddr, rest: &str) -> Vec<String> {
    let mut v = vec![
        "--url".to_owned(),
        format!("http://{addr}"),
        "--token".to_owned(),
        TOKEN.to_owned(),
    ];
    v.extend(rest.split_whitespace().map(str::to_owned));
    v
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_and_json_from_the_api() -> TestResult {
    let addr = server().await?;

    let out = fleetctl(run_args(addr, "status")).await?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(s.contains("nodes   ready=1"), "{s}");
    assert!(s.contains("cost    $2.500000"), "{s}");

    let out = fleetctl(run_args(addr, "nodes")).await?;
    let s = text(&out.stdout);
    assert!(s.starts_with("NODE       POOL   STATE"), "{s}");
    assert!(s.contains("local-1-1  local  busy"), "{s}");

    let out = fleetctl(run_args(addr, "claims")).await?;
    assert!(
        text(&out.stdout).contains("c1     w          local  active"),
        "{}",
        text(&out.stdout)
    );
    let out = fleetctl(run_args(addr, "pools")).await?;
    assert!(
        text(&out.stdout).contains("cold_image"),
        "{}",
        text(&out.stdout)
    );
    let out = fleetctl(run_args(addr, "cost")).await?;
    assert!(
        text(&out.stdout).contains("total $2.500000"),
        "{}",
        text(&out.stdout)
    );
    let out = fleetctl(run_args(addr, "jobs list")).await?;
    assert!(
        text(&out.stdout).contains("make test"),
        "{}",
        text(&out.stdout)
    );

    // JSON is the API's JSON.
    let out = fleetctl(run_args(addr, "--json claims")).await?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(v[0]["request"]["claim_id"], "c1");

    // Job watch of a finished job: one line, the receipt, exit 0.
    let out = fleetctl(run_args(addr, "jobs watch j1 --interval-ms 50")).await?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("finished j1: pass"),
        "{}",
        text(&out.stdout)
    );

    // The token is printed once, by token create only.
    let out = fleetctl(run_args(addr, "token create ci")).await?;
    assert_eq!(text(&out.stdout), "fresh-secret-token\n");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_one_clear_line() -> TestResult {
    let addr = server().await?;

    let out = fleetctl(vec![
        "--url".into(),
        format!("http://{addr}"),
        "--token".into(),
        "wrong-token".into(),
        "status".into(),
    ])
    .await?;
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("refused the API token (401)"), "{err}");
    assert!(!err.contains("wrong-token"), "token leaked: {err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    // Daemon down.
    let dead = TcpListener::bind("127.0.0.1:0").await?.local_addr()?;
    let out = fleetctl(run_args(dead, "status")).await?;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("cannot reach the daemon"),
        "{}",
        text(&out.stderr)
    );

    // No daemon.json and no --url.
    let out = fleetctl(vec!["status".into()]).await?;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("daemon.json"),
        "{}",
        text(&out.stderr)
    );

    // Usage error.
    let out = fleetctl(vec!["status".into(), "--bogus".into(), "x".into()]).await?;
    assert_eq!(out.status.code(), Some(2));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_comes_from_fleet_token_unless_passed() -> TestResult {
    let addr = server().await?;

    // As `export FLEET_TOKEN=$(cat admin.token)` leaves it: a newline.
    let out = fleetctl_with_env_token(addr, &format!("{TOKEN}\n"), &["status"]).await?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    // --token wins over the environment.
    let out = fleetctl_with_env_token(addr, TOKEN, &["status", "--token", "wrong"]).await?;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    Ok(())
}
