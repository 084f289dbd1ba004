//! The spot watcher against a local fake IMDS (IMDSv2 token flow).

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::{Daemon, TestResult, agent_toml, temp_dir};
use fleet_agent::Config;
use fleet_core::protocol::AgentMsg;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Default)]
struct FakeImds {
    action: AtomicBool,
    tokens_issued: AtomicUsize,
    unauthorized: AtomicUsize,
}

async fn serve_imds(state: Arc<FakeImds>) -> std::io::Result<std::net::SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let state = Arc::clone(&state);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut b = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut b).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&b[..n]),
                    }
                }
                let req = String::from_utf8_lossy(&buf).to_ascii_lowercase();
                let (status, body) = if req.starts_with("put /latest/api/token ")
                    && req.contains("x-aws-ec2-metadata-token-ttl-seconds: 21600")
                {
                    state.tokens_issued.fetch_add(1, Ordering::SeqCst);
                    ("200 OK", "sekrit-token".to_owned())
                } else if req.starts_with("get /latest/meta-data/spot/instance-action ") {
                    if !req.contains("x-aws-ec2-metadata-token: sekrit-token") {
                        state.unauthorized.fetch_add(1, Ordering::SeqCst);
                        ("401 Unauthorized", String::new())
                    } else if state.action.load(Ordering::SeqCst) {
                        (
                            "200 OK",
                            r#"{"action":"terminate","time":"2030-01-02T03:04:05Z"}"#.to_owned(),
                        )
                    } else {
                        ("404 Not Found", String::new())
                    }
                } else {
                    ("400 Bad Request", String::new())
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    Ok(addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spot_notice_is_reported_with_its_deadline() -> TestResult {
    let state = Arc::new(FakeImds::default());
    let addr = serve_imds(Arc::clone(&state)).await?;
    let work = temp_dir("imds");
    let mut daemon = Daemon::start(&[], None);
    let extra = format!("imds_url = \"http://{addr}\"\nimds_poll_interval_ms = 50\n");
    let config = Config::parse(Path::new("agent.toml"), &agent_toml(&work, &extra))?;
    let connector = daemon.connector();
    tokio::spawn(fleet_agent::run(config, connector, std::future::pending()));
    daemon.wait_welcomed(1).await;
    // A few polls with no action: nothing reported.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(state.tokens_issued.load(Ordering::SeqCst) >= 1);
    state.action.store(true, Ordering::SeqCst);
    let msgs = daemon
        .until(Duration::from_secs(10), |m| {
            matches!(m, AgentMsg::Interrupted { .. })
        })
        .await?;
    assert_eq!(
        msgs.last(),
        Some(&AgentMsg::Interrupted {
            deadline: 1_893_553_445_000
        })
    );
    assert_eq!(state.unauthorized.load(Ordering::SeqCst), 0);
    // Reported once, not at every poll.
    assert!(daemon.next(Duration::from_millis(400)).await.is_none());
    Ok(())
}
