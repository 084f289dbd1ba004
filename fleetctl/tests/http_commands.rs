//! The HTTP commands against a small in-test server. What it serves is
//! built as `fleet_core::protocol` values and encoded as the daemon encodes
//! them, so a change to a body that the daemon would send and `fleetctl`
//! could not read fails here.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Output;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use fleet_core::ids::{ClaimId, Epoch, InstanceType, JobId, NodeId, PoolName, Workspace};
use fleet_core::money::Money;
use fleet_core::protocol::{
    API_CLAIMS_PATH, API_COSTS_PATH, API_HEALTHZ_PATH, API_JOBS_PATH, API_NODES_PATH,
    API_POOLS_PATH, API_STATUS_PATH, API_TOKENS_PATH, ApiErrorBody, BootSource, ClaimRecord,
    ClaimRequest, ClaimState, CostGrouping, CostReport, HeldCost, JobRecord, JobState, Market,
    NewToken, NewTokenRequest, NodeRecord, NodeState, NodeStatus, PoolCost, PoolInfo, Receipt,
    Requirements, Secret, StatusSummary, TaskResult, TaskSpec, WorkspaceCost,
};
use fleet_core::strategy::PoolSpec;
use tokio::net::TcpListener;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

const TOKEN: &str = "test-token-123";
/// A token limited to workspaces: the API answers it 403.
const WORKSPACE_TOKEN: &str = "ws-token-456";

fn id<T>(r: Result<T, fleet_core::ids::IdError>) -> T {
    r.unwrap_or_else(|e| panic!("{e}"))
}

/// What the daemon would answer, as protocol values.
#[derive(Clone)]
struct Answers {
    status: StatusSummary,
    pools: Vec<PoolInfo>,
    nodes: Vec<NodeStatus>,
    claims: Vec<ClaimRecord>,
    jobs: Vec<JobRecord>,
    costs: CostReport,
}

fn answers() -> Answers {
    let pool = id(PoolName::new("local"));
    let node = id(NodeId::new("local-1-1"));
    let ws = id(Workspace::new("w"));
    let endpoint = "127.0.0.1:9000".to_owned();
    let request = |claim: &str| ClaimRequest {
        claim_id: id(ClaimId::new(claim)),
        workspace: ws.clone(),
        pool: pool.clone(),
        requirements: Requirements::default(),
        priority: 0,
        lease_ttl_ms: 300_000,
        max_wait_ms: None,
        recipient: None,
        affinity: None,
    };
    let claim = |claim: &str, state: ClaimState, ended_at: Option<u64>| ClaimRecord {
        request: request(claim),
        state,
        enqueued_at: 0,
        node: Some(node.clone()),
        endpoint: Some(endpoint.clone()),
        granted_at: Some(0),
        // Far in the future: a live lease shows "in …", an ended one must not.
        expires_at: Some(4_102_444_800_000),
        credentials: None,
        pending_reason: None,
        ended_at,
        epoch: Epoch(1),
    };
    let spec: TaskSpec = serde_json::from_value(serde_json::json!({
        "id": "j1", "workspace": "w", "pool": "local", "argv": ["make", "test"],
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    let job = id(JobId::new("j1"));
    // $2.50 of running: $1.75 attributed ($1.50 to w's claim c1, $0.25 to
    // job j1), $0.75 idle.
    let mut costs = CostReport::default();
    costs.pools.insert(
        pool.clone(),
        PoolCost {
            running: Money::from_micros(2_500_000),
            attributed: Money::from_micros(1_750_000),
            idle: Money::from_micros(750_000),
            running_ms: 3_600_000,
            ..PoolCost::default()
        },
    );
    let held = |cost: i64, holding: bool| HeldCost {
        workspace: ws.clone(),
        pool: pool.clone(),
        cost: Money::from_micros(cost),
        held_ms: 1_800_000,
        holding,
    };
    costs
        .claims
        .insert(id(ClaimId::new("c1")), held(1_500_000, true));
    costs
        .jobs
        .insert(id(JobId::new("j1")), held(250_000, false));
    costs.workspaces.insert(
        ws.clone(),
        WorkspaceCost {
            cost: Money::from_micros(1_750_000),
            pools: BTreeMap::from([(pool.clone(), Money::from_micros(1_750_000))]),
            held_ms: 3_600_000,
            claims: 1,
            jobs: 1,
        },
    );
    let mut spec_pool = PoolSpec {
        name: pool.clone(),
        ..PoolSpec::default()
    };
    spec_pool.instance_types = vec![id(InstanceType::new("local.node"))];
    Answers {
        status: StatusSummary {
            fleet_id: None,
            epoch: Epoch(2),
            leader: true,
            pools: 1,
            nodes: [("ready".to_owned(), 1)].into(),
            claims: [("active".to_owned(), 1), ("released".to_owned(), 1)].into(),
            jobs: BTreeMap::new(),
            cost_micros: Money::from_micros(2_500_000),
        },
        pools: vec![PoolInfo::from(&spec_pool)],
        nodes: vec![NodeStatus {
            record: NodeRecord {
                node: node.clone(),
                pool: pool.clone(),
                instance_type: id(InstanceType::new("local.node")),
                market: Market::OnDemand,
                source: BootSource::Image {
                    image: "x".to_owned(),
                },
                state: NodeState::Ready,
                provider_id: None,
                endpoint: Some(endpoint.clone()),
                created_at: 0,
                state_since: 0,
                epoch: Epoch(1),
                uses: 1,
                revision: String::new(),
            },
            state: NodeState::Busy,
            claims: vec![id(ClaimId::new("c1"))],
            connected: true,
            last_seen: 0,
            agent_version: None,
        }],
        claims: vec![
            claim("c1", ClaimState::Active, None),
            claim("c2", ClaimState::Released, Some(1_000)),
        ],
        jobs: vec![JobRecord {
            spec,
            state: JobState::Done,
            attempts: 1,
            submitted_at: 0,
            last_event_at: None,
            escalated: false,
            receipt: Some(Receipt {
                job,
                node: None,
                attempts: 1,
                completed_at: 0,
                result: TaskResult::Pass,
                exit_code: Some(0),
                reason: None,
                artifacts: Vec::new(),
                score: None,
            }),
            run: None,
            epoch: Epoch(1),
        }],
        costs,
    }
}

/// How the test daemon behaves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Answers.
    Leader,
    /// Answers every `/v1` path 503, as a follower does.
    Follower,
    /// Answers the claims with a body over fleetctl's limit.
    Huge,
}

async fn require_token(State(mode): State<Mode>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let refuse = |code: StatusCode, why: &str| (code, axum::Json(ApiErrorBody::new(why)));
    match presented {
        Some(TOKEN) if mode == Mode::Follower => refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "this daemon is a follower; ask the leader",
        )
        .into_response(),
        Some(TOKEN) => next.run(req).await,
        Some(WORKSPACE_TOKEN) => refuse(
            StatusCode::FORBIDDEN,
            "this token is limited to workspaces (the claim plane and the console); the HTTP API needs an operator token",
        )
        .into_response(),
        _ => refuse(StatusCode::UNAUTHORIZED, "unauthorized").into_response(),
    }
}

/// Serves [`answers`] as the daemon would.
async fn server(mode: Mode) -> std::io::Result<SocketAddr> {
    let a = Arc::new(answers());
    let json = |v: serde_json::Result<Vec<u8>>| {
        (
            [(header::CONTENT_TYPE, "application/json")],
            v.unwrap_or_else(|e| panic!("{e}")),
        )
    };
    let claims = {
        let a = Arc::clone(&a);
        move || async move {
            if mode == Mode::Huge {
                // Valid JSON, over the 32 MiB limit.
                let mut big = vec![b' '; 33 << 20];
                big[0] = b'[';
                big.push(b']');
                return json(Ok(big));
            }
            json(serde_json::to_vec(&a.claims))
        }
    };
    let v1 =
        Router::new()
            .route(
                API_STATUS_PATH,
                get({
                    let a = Arc::clone(&a);
                    move || async move { json(serde_json::to_vec(&a.status)) }
                }),
            )
            .route(
                API_POOLS_PATH,
                get({
                    let a = Arc::clone(&a);
                    move || async move { json(serde_json::to_vec(&a.pools)) }
                }),
            )
            .route(
                API_NODES_PATH,
                get({
                    let a = Arc::clone(&a);
                    move || async move { json(serde_json::to_vec(&a.nodes)) }
                }),
            )
            .route(API_CLAIMS_PATH, get(claims))
            .route(
                API_JOBS_PATH,
                get({
                    let a = Arc::clone(&a);
                    move || async move { json(serde_json::to_vec(&a.jobs)) }
                }),
            )
            .route(
                API_COSTS_PATH,
                get({
                    let a = Arc::clone(&a);
                    // Grouped as the daemon groups it, so a missing or wrong
                    // `by` shows in what fleetctl prints.
                    move |axum::extract::Query(q): axum::extract::Query<
                        BTreeMap<String, String>,
                    >| async move {
                        match q.get("by").map(|b| b.parse::<CostGrouping>()) {
                            Some(Ok(by)) => json(serde_json::to_vec(&a.costs.clone().grouped(by)))
                                .into_response(),
                            _ => (StatusCode::BAD_REQUEST, axum::Json(ApiErrorBody::new("by")))
                                .into_response(),
                        }
                    }
                }),
            )
            .route(
                API_TOKENS_PATH,
                post(|axum::Json(req): axum::Json<NewTokenRequest>| async move {
                    axum::Json(NewToken {
                        name: req.name,
                        token: Secret::new("fresh-secret-token"),
                        workspaces: req.workspaces.map(|w| w.into_iter().collect()),
                    })
                }),
            )
            .route_layer(middleware::from_fn_with_state(mode, require_token))
            .with_state(mode);
    let app = Router::new()
        .route(API_HEALTHZ_PATH, get(|| async { "ok\n" }))
        .merge(v1);
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
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

fn run_args_with(addr: SocketAddr, token: &str, rest: &str) -> Vec<String> {
    let mut v = vec![
        "--url".to_owned(),
        format!("http://{addr}"),
        "--token".to_owned(),
        token.to_owned(),
    ];
    v.extend(rest.split_whitespace().map(str::to_owned));
    v
}

fn run_args(addr: SocketAddr, rest: &str) -> Vec<String> {
    run_args_with(addr, TOKEN, rest)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_and_json_from_the_api() -> TestResult {
    let addr = server(Mode::Leader).await?;

    let out = fleetctl(run_args(addr, "status")).await?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(s.contains("nodes   ready=1"), "{s}");
    assert!(s.contains("claims  active=1 released=1"), "{s}");
    assert!(s.contains("cost    $2.500000"), "{s}");

    let out = fleetctl(run_args(addr, "nodes")).await?;
    let s = text(&out.stdout);
    assert!(s.starts_with("NODE       POOL   STATE"), "{s}");
    assert!(
        s.contains("local-1-1  local  busy   local.node  on_demand  yes        c1"),
        "{s}"
    );

    let out = fleetctl(run_args(addr, "claims")).await?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    let line = |id: &str| {
        s.lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("no {id} in {s}"))
            .to_owned()
    };
    assert!(
        line("c1 ").contains("c1     w          local  active"),
        "{s}"
    );
    assert!(line("c1 ").contains("2100-01-01T00:00:00Z (in "), "{s}");
    // A released claim keeps its old lease end in the record; the table
    // says it ended.
    assert!(line("c2 ").contains("released"), "{s}");
    assert!(line("c2 ").contains("ended 1970-01-01T00:00:01Z ("), "{s}");
    assert!(!line("c2 ").contains("(in "), "{s}");

    let out = fleetctl(run_args(addr, "pools")).await?;
    let s = text(&out.stdout);
    assert!(s.contains("local  cold_image  local.node"), "{s}");
    let out = fleetctl(run_args(addr, "cost")).await?;
    let s = text(&out.stdout);
    assert!(s.contains("total $2.500000"), "{s}");
    assert!(s.contains("LOST  ATTRIBUTED  IDLE\n"), "{s}");
    assert!(s.contains("  0     $1.750000   $0.750000\n"), "{s}");
    assert_eq!(
        fleetctl(run_args(addr, "cost --by pool")).await?.stdout,
        out.stdout
    );
    let out = fleetctl(run_args(addr, "cost --by workspace")).await?;
    let s = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        s.starts_with("WORKSPACE       POOL   COST       HELD H  CLAIMS  JOBS\n"),
        "{s}"
    );
    assert!(
        s.contains("\nw               local  $1.750000  1.00    1       1\n"),
        "{s}"
    );
    assert!(
        s.contains("\n(unattributed)  local  $0.750000  -       -       -\n"),
        "{s}"
    );
    assert!(
        s.ends_with("total $2.500000 at 1970-01-01T00:00:00Z\n"),
        "{s}"
    );
    let out = fleetctl(run_args(addr, "cost --by claim")).await?;
    let s = text(&out.stdout);
    assert!(
        s.contains("\nclaim  c1  w          local  $1.500000  30m00s  holding\n"),
        "{s}"
    );
    assert!(
        s.contains("\njob    j1  w          local  $0.250000  30m00s  ended\n"),
        "{s}"
    );
    assert!(
        s.contains("listed $1.750000 of $1.750000 attributed"),
        "{s}"
    );
    // --json is the API's answer for that grouping.
    let out = fleetctl(run_args(addr, "--json cost --by claim")).await?;
    let report: CostReport = serde_json::from_slice(&out.stdout)?;
    assert_eq!(report, answers().costs);
    let out = fleetctl(run_args(addr, "--json cost")).await?;
    let report: CostReport = serde_json::from_slice(&out.stdout)?;
    assert!(report.workspaces.is_empty() && report.claims.is_empty() && report.pools.len() == 1);
    let out = fleetctl(run_args(addr, "cost --by node")).await?;
    assert_eq!(out.status.code(), Some(2), "a usage error");
    assert!(
        text(&out.stderr).contains("pool, workspace, claim"),
        "{}",
        text(&out.stderr)
    );
    let out = fleetctl(run_args(addr, "jobs list")).await?;
    let s = text(&out.stdout);
    assert!(
        s.contains("j1   w          local  done   1         pass    -      0     make test"),
        "{s}"
    );

    // JSON is the API's JSON: it decodes into the protocol type.
    let out = fleetctl(run_args(addr, "--json claims")).await?;
    let claims: Vec<ClaimRecord> = serde_json::from_slice(&out.stdout)?;
    assert_eq!(claims, answers().claims);
    let out = fleetctl(run_args(addr, "--json pools")).await?;
    let pools: Vec<PoolInfo> = serde_json::from_slice(&out.stdout)?;
    assert_eq!(pools, answers().pools);

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
    let out = fleetctl(run_args(addr, "--json token create ci --workspaces a,b")).await?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let minted: NewToken = serde_json::from_slice(&out.stdout)?;
    assert_eq!(minted.token.expose(), "fresh-secret-token");
    assert_eq!(minted.workspaces.map(|w| w.len()), Some(2));
    Ok(())
}

/// A claim that never ended renders the same through every path: the
/// value the daemon encodes is the value fleetctl renders.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_daemon_encodes_is_what_fleetctl_renders() -> TestResult {
    let addr = server(Mode::Leader).await?;
    let out = fleetctl(run_args(addr, "claims")).await?;
    let a = answers();
    // Rendering at slightly different instants: compare everything but the
    // relative time.
    let served = fleetctl::render::claims(&a.claims, fleetctl::render::now_ms());
    let strip = |s: &str| {
        s.lines()
            .map(|l| l.split(" (").next().unwrap_or(l).to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&text(&out.stdout)), strip(&served));
    let out = fleetctl(run_args(addr, "status")).await?;
    assert_eq!(text(&out.stdout), fleetctl::render::status(&a.status));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_one_clear_line() -> TestResult {
    let addr = server(Mode::Leader).await?;

    let out = fleetctl(run_args_with(addr, "wrong-token", "status")).await?;
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("refused the API token (401)"), "{err}");
    assert!(!err.contains("wrong-token"), "token leaked: {err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    // A workspace token: says why and which token to use instead.
    let out = fleetctl(run_args_with(addr, WORKSPACE_TOKEN, "nodes")).await?;
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("(403)"), "{err}");
    assert!(err.contains("operator token"), "{err}");
    assert!(err.contains("admin.token"), "{err}");
    assert!(!err.contains(WORKSPACE_TOKEN), "token leaked: {err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    // A follower: what the daemon said and what to do.
    let follower = server(Mode::Follower).await?;
    let out = fleetctl(run_args(follower, "claims")).await?;
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("(503)"), "{err}");
    assert!(err.contains("follower; ask the leader"), "{err}");
    assert!(err.contains("--url"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    // An answer over the size limit is refused, not decoded.
    let huge = server(Mode::Huge).await?;
    let out = fleetctl(run_args(huge, "claims")).await?;
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("larger than"), "{err}");

    // Daemon down.
    let dead = TcpListener::bind("127.0.0.1:0").await?.local_addr()?;
    let out = fleetctl(run_args(dead, "status")).await?;
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("cannot reach the daemon"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    // Not an HTTP URL.
    let out = fleetctl(vec![
        "--url".into(),
        "ftp://127.0.0.1:1".into(),
        "status".into(),
    ])
    .await?;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("not an http://"),
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
    let addr = server(Mode::Leader).await?;

    // As `export FLEET_TOKEN=$(cat admin.token)` leaves it: a newline.
    let out = fleetctl_with_env_token(addr, &format!("{TOKEN}\n"), &["status"]).await?;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    // --token wins over the environment.
    let out = fleetctl_with_env_token(addr, TOKEN, &["status", "--token", "wrong"]).await?;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    Ok(())
}

/// A token never crosses the network in clear text: `http://` to a host
/// that is not loopback is refused before anything is sent (the address is
/// TEST-NET-1, routed nowhere: a request would hang, not fail fast); the
/// loopback API and a token-less probe are fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_never_sent_in_clear_text_beyond_loopback() -> TestResult {
    let secret = || Some(fleet_core::protocol::Secret::new("t0k3n"));
    for url in [
        "http://192.0.2.1:7080",
        "http://example.com",
        "http://10.0.0.1",
    ] {
        let Err(err) = fleetctl::http::Api::new(url, secret()) else {
            panic!("{url}: a token over plain http:// beyond loopback was accepted");
        };
        let err = err.to_string();
        assert!(
            err.contains("refusing to send the API token in clear text"),
            "{err}"
        );
        assert!(!err.contains("t0k3n"), "{err}");
    }
    for url in [
        "http://127.0.0.1:7080",
        "http://127.8.9.1:7080",
        "http://localhost:7080",
        "http://[::1]:7080",
        "https://192.0.2.1:7080",
    ] {
        assert!(fleetctl::http::Api::new(url, secret()).is_ok(), "{url}");
    }
    assert!(fleetctl::http::Api::new("http://192.0.2.1:7080", None).is_ok());

    let started = std::time::Instant::now();
    let out = fleetctl(vec![
        "--url".into(),
        "http://192.0.2.1:7080".into(),
        "--token".into(),
        "t0k3n".into(),
        "status".into(),
    ])
    .await?;
    assert_ne!(out.status.code(), Some(0));
    let err = text(&out.stderr);
    assert!(err.contains("use https://"), "{err}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "refused without connecting"
    );
    Ok(())
}
