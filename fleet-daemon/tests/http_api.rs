//! The HTTP API's bad-input and cost guarantees: bearer auth without
//! detail leaks, body limits, and a `/readyz` that never touches the store.

use std::sync::Arc;

use fleet_core::memory::faulty::FaultyStore;
use fleet_core::memory::provider::MemoryProvider;
use fleet_core::memory::store::MemoryStore;
use fleet_core::protocol::{
    API_CLAIMS_PATH, API_COSTS_PATH, API_JOBS_PATH, API_NODES_PATH, API_POOLS_PATH,
    API_STATUS_PATH, ApiErrorBody, ClaimRecord, CostReport, JobRecord, NewToken, NodeStatus,
    PoolInfo, StatusSummary,
};
use fleet_core::protocol::{API_LEADER_PATH, API_RUNS_PATH, LeaderInfo, RunInfo, RunStatus};
use fleet_daemon::auth::ApiTokens;
use fleet_daemon::http::{ApiState, router};
use fleet_runtime::Fleet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn request(addr: std::net::SocketAddr, raw: String) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    s.write_all(raw.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// The body of a raw response, decoded.
fn decode<T: serde::de::DeserializeOwned>(response: &str) -> T {
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {response}"))
}

fn get(path: &str, token: Option<&str>) -> String {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n")
}

/// A daemon's HTTP API on loopback over a fleet on memory backends.
struct Api {
    addr: std::net::SocketAddr,
    token: fleet_core::protocol::Secret,
    fleet: Arc<Fleet>,
    store: FaultyStore<MemoryStore>,
    _dir: tempfile::TempDir,
}

async fn serve() -> Api {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let store = FaultyStore::new(MemoryStore::new());
    let fleet = Arc::new(
        Fleet::builder()
            .store(Arc::new(store.clone()))
            .provider(Arc::new(MemoryProvider::ec2_like()))
            .pool(pool())
            .start()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    );
    let tokens = Arc::new(ApiTokens::load(dir.path()).unwrap_or_else(|e| panic!("{e}")));
    let token = tokens
        .create("admin", None, 0)
        .unwrap_or_else(|e| panic!("{e}"));
    let cell = Arc::new(std::sync::OnceLock::new());
    let _ = cell.set(fleet.clone());
    let lease_store: Arc<std::sync::OnceLock<Arc<dyn fleet_core::Store>>> =
        Arc::new(std::sync::OnceLock::new());
    let _ = lease_store.set(Arc::new(store.clone()));
    let app = router(ApiState {
        fleet: cell,
        tokens,
        leader: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        alerts: Arc::default(),
        artifacts: Arc::new(fleet_daemon::artifacts::Artifacts::new(
            dir.path().join("artifacts"),
            &Default::default(),
        )),
        lease: fleet_daemon::http::LeaseView {
            store: lease_store,
            holder: "daemon-a".to_owned(),
            lease_ms: 3_000,
        },
        heartbeat_timeout_ms: 30_000,
        data_dir: std::env::temp_dir(),
        namespace: "fleet".to_owned(),
        costs: Arc::default(),
        closing: Arc::new(tokio::sync::watch::Sender::new(false)),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Api {
        addr,
        token,
        fleet,
        store,
        _dir: dir,
    }
}

fn post(path: &str, token: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_limits_and_an_o1_readyz() {
    let Api {
        addr,
        token,
        fleet,
        store,
        _dir,
    } = serve().await;

    // Auth: no token, a wrong token, an expired-looking garbage header — a
    // bare 401 that says nothing about why.
    for t in [None, Some("wrong"), Some("")] {
        let (code, body) = request(addr, get("/v1/status", t)).await;
        assert_eq!(code, 401);
        assert!(
            !body.contains("token") || body.contains("unauthorized"),
            "{body}"
        );
        assert!(!body.contains(token.expose()));
    }
    assert_eq!(
        request(addr, get("/v1/status", Some(token.expose())))
            .await
            .0,
        200
    );
    assert_eq!(request(addr, get("/healthz", None)).await.0, 200);

    // Every body is its protocol type, errors included.
    let (_, raw) = request(addr, get("/v1/status", None)).await;
    let refused: ApiErrorBody = decode(&raw);
    assert_eq!(refused.error, "unauthorized");
    let auth = Some(token.expose());
    let s: StatusSummary = decode(&request(addr, get(API_STATUS_PATH, auth)).await.1);
    assert_eq!((s.pools, s.leader), (1, true));
    assert_eq!(
        s.fleet_id.as_ref(),
        Some(fleet.fleet_id()),
        "the status names the fleet"
    );
    let pools: Vec<PoolInfo> = decode(&request(addr, get(API_POOLS_PATH, auth)).await.1);
    assert_eq!(pools[0].strategy.kind, "cold_image");
    let _: Vec<NodeStatus> = decode(&request(addr, get(API_NODES_PATH, auth)).await.1);
    let _: Vec<ClaimRecord> = decode(&request(addr, get(API_CLAIMS_PATH, auth)).await.1);
    let _: Vec<JobRecord> = decode(&request(addr, get(API_JOBS_PATH, auth)).await.1);
    let _: CostReport = decode(&request(addr, get(API_COSTS_PATH, auth)).await.1);
    for by in ["pool", "workspace", "claim"] {
        let (code, raw) = request(addr, get(&format!("{API_COSTS_PATH}?by={by}"), auth)).await;
        assert_eq!(code, 200, "{raw}");
        let _: CostReport = decode(&raw);
    }
    let (code, raw) = request(addr, get(&format!("{API_COSTS_PATH}?by=node"), auth)).await;
    assert_eq!(code, 400, "{raw}");
    let refused: ApiErrorBody = decode(&raw);
    assert!(refused.error.contains("\"node\""), "{}", refused.error);
    let (_, metrics) = request(addr, get("/metrics", auth)).await;
    for family in [
        "fleet_cost_dollars",
        "fleet_pool_idle_cost_dollars",
        "fleet_workspace_cost_dollars",
        "fleet_affinity_grants_total",
    ] {
        assert!(
            metrics.contains(&format!("# TYPE {family} counter\n")),
            "{family}: {metrics}"
        );
    }

    assert!(
        metrics.contains("fleet_affinity_grants_total{result=\"hit\"} 0\n"),
        "{metrics}"
    );

    // Bodies over 64 KiB are refused; a malformed one gets a clear 400.
    let big = "x".repeat(70 * 1024);
    let post = |body: &str| post("/v1/tokens", token.expose(), body);
    let (code, _) = request(addr, post(&format!("{{\"name\":\"{big}\"}}"))).await;
    assert_eq!(code, 413, "oversized body");
    let (code, body) = request(addr, post("{\"nmae\":\"x\"}")).await;
    assert_eq!(code, 422, "{body}");
    assert!(
        body.contains("nmae"),
        "the error names the bad field: {body}"
    );

    // A token limited to workspaces: made by an operator, refused (403) on
    // the HTTP API, which shows every workspace.
    let (code, body) = request(addr, post("{\"name\":\"ci\",\"workspaces\":[\"team-a\"]}")).await;
    assert_eq!(code, 200, "{body}");
    let minted: NewToken = decode(&body);
    let ci = minted.token.expose();
    let team_a = fleet_core::Workspace::new("team-a").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(minted.workspaces, Some([team_a].into()));
    let (code, body) = request(addr, get("/v1/status", Some(ci))).await;
    assert_eq!(code, 403, "{body}");
    let refused: ApiErrorBody = decode(&body);
    assert!(refused.error.contains("operator token"), "{body}");
    let (code, body) = request(addr, post("{\"name\":\"x\",\"workspaces\":[\"bad ws\"]}")).await;
    assert_eq!(code, 422, "an invalid workspace: {body}");
    let (code, body) = request(addr, post("{\"name\":\"x\",\"workspaces\":[]}")).await;
    assert_eq!(code, 422, "no workspace at all: {body}");

    // /readyz reads a flag: a thousand probes never touch the store.
    let before = store.calls();
    for _ in 0..1_000 {
        assert_eq!(request(addr, get("/readyz", None)).await.0, 200);
    }
    assert_eq!(store.calls(), before, "/readyz must not read the store");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_are_submitted_paused_resumed_and_cancelled_with_clear_refusals() {
    let api = serve().await;
    let t = api.token.expose();
    let run = |id: &str, pool: &str| {
        format!(
            r#"{{"id":"{id}","workspace":"team-a","paused":true,"tasks":[{{"id":"{id}-t","workspace":"team-a","pool":"{pool}","argv":["make"]}}]}}"#
        )
    };
    let (code, raw) = request(api.addr, post(API_RUNS_PATH, t, &run("r1", "linux"))).await;
    assert_eq!(code, 202, "{raw}");
    let info: RunInfo = decode(&raw);
    assert_eq!((info.id.as_str(), info.tasks.len()), ("r1", 1));
    assert!(
        matches!(info.status, RunStatus::Pending | RunStatus::Paused),
        "{info:?}"
    );

    // Refusals say why, with the status that fits.
    let (code, raw) = request(api.addr, post(API_RUNS_PATH, t, &run("r2", "gpu"))).await;
    assert_eq!(code, 409, "{raw}");
    assert!(
        decode::<ApiErrorBody>(&raw)
            .error
            .contains("unknown pool gpu")
    );
    let (code, raw) = request(api.addr, post(API_RUNS_PATH, t, r#"{"id":"r3"}"#)).await;
    assert_eq!(code, 422, "{raw}");
    let (code, _) = request(api.addr, get("/v1/runs/team-a/nope", Some(t))).await;
    assert_eq!(code, 404);
    let (code, _) = request(api.addr, post("/v1/runs/team-a/nope/pause", t, "")).await;
    assert_eq!(code, 404);
    let (code, raw) = request(api.addr, post("/v1/runs/team-a/r1/explode", t, "")).await;
    assert_eq!(code, 404, "{raw}");

    let (code, raw) = request(api.addr, post("/v1/runs/team-a/r1/resume", t, "")).await;
    assert_eq!(code, 200, "{raw}");
    let (code, raw) = request(api.addr, post("/v1/runs/team-a/r1/cancel", t, "")).await;
    assert_eq!(code, 200, "{raw}");
    assert_eq!(decode::<RunInfo>(&raw).status, RunStatus::Cancelled);
    let (code, raw) = request(api.addr, post("/v1/runs/team-a/r1/resume", t, "")).await;
    assert_eq!(code, 409, "{raw}");
    assert!(decode::<ApiErrorBody>(&raw).error.contains("cancelled"));
    let (code, raw) = request(api.addr, get(API_RUNS_PATH, Some(t))).await;
    assert_eq!(code, 200);
    let all: Vec<RunInfo> = decode(&raw);
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].tasks[0].state, "cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_shows_the_lease_and_the_followers_seen_lately() {
    use fleet_runtime::lease::{LeaderLease, forget_follower, note_follower};
    let api = serve().await;
    let now = fleet_runtime::SystemClock.now_ms();
    let mut lease = LeaderLease::new("daemon-a", 3_000);
    let epoch = lease
        .try_acquire(&api.store, now)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("no lease"));
    for (who, at) in [
        ("daemon-b.example-41", now),
        ("daemon-c-7", now.saturating_sub(60_000)),
        ("daemon-d-8", now),
    ] {
        note_follower(&api.store, who, at)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    forget_follower(&api.store, "daemon-d-8")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (code, raw) = request(api.addr, get(API_LEADER_PATH, Some(api.token.expose()))).await;
    assert_eq!(code, 200, "{raw}");
    let info: LeaderInfo = decode(&raw);
    assert_eq!(info.this_daemon, "daemon-a");
    assert!(info.leader);
    let held = info.lease.unwrap_or_else(|| panic!("no lease in {raw}"));
    assert_eq!((held.holder.as_str(), held.epoch), ("daemon-a", epoch));
    assert!(held.expires_at > now);
    let seen: Vec<&str> = info.followers.iter().map(|f| f.holder.as_str()).collect();
    assert_eq!(
        seen,
        ["daemon-b.example-41"],
        "recent ones only, the gone one dropped"
    );
}

fn pool() -> fleet_core::strategy::PoolSpec {
    fleet_core::strategy::PoolSpec {
        name: fleet_core::PoolName::new("linux").unwrap_or_else(|e| panic!("{e}")),
        strategy: fleet_core::strategy::StrategyConfig::default(),
        instance_types: vec![
            fleet_core::InstanceType::new("c7i.large").unwrap_or_else(|e| panic!("{e}")),
        ],
        image: "ami-test".to_owned(),
        labels: std::collections::BTreeMap::new(),
        min_nodes: 0,
        max_nodes: 2,
        slots_per_node: 1,
        max_uses: None,
        schedule: Vec::new(),
        affinity_wait_ms: 0,
        revision: String::new(),
        drift_replacements: 1,
    }
}
