//! The HTTP API: health, readiness, Prometheus metrics and the status API.
//!
//! `/healthz` and `/readyz` are open and O(1) (`/readyz` reads a flag the
//! control loop keeps), and so is the console's page (`/ui`, no data).
//! The console's reads (`/v1/console/*`, [`crate::console`]) take any
//! token and cut their answers to it. Everything else needs
//! `Authorization: Bearer <token>` with an operator's token; a missing or
//! wrong token gets a bare 401, with no detail, a token limited to
//! workspaces a 403. Bodies are limited to 64 KiB.
//!
//! Every body is a type of `fleet_core::protocol` (its `http` module lists
//! them per path), errors included ([`ApiErrorBody`]), so what this module
//! writes is what `fleetctl` reads.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use fleet_core::RunId;
use fleet_core::ids::Workspace;
use fleet_core::protocol::{
    API_BACKUP_PATH, API_CONSOLE_EVENTS_PATH, API_CONSOLE_STATE_PATH, API_LEADER_PATH,
    API_REPLAY_STATUS_PATH, BackupRequest, CONSOLE_PATH, ClaimReply, JobMsg, JobReply, LeaderInfo,
    ReplayStatus, RunAction, RunInfo, RunRecord, RunSpec,
};
use fleet_core::protocol::{
    API_CLAIMS_PATH, API_COSTS_PATH, API_HEALTHZ_PATH, API_JOBS_PATH, API_METRICS_PATH,
    API_NODES_PATH, API_POOLS_PATH, API_READYZ_PATH, API_RUNS_PATH, API_STATUS_PATH,
    API_TOKENS_PATH, ApiErrorBody, ClaimRecord, CostGrouping, CostReport, JobRecord, NewToken,
    NewTokenRequest, NodeState, NodeStatus, PoolInfo, StatusSummary,
};

use crate::auth::ApiTokens;
use fleet_runtime::{Fleet, Status};

/// The largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// The control plane, once this daemon leads (a follower has none and
    /// answers the status API with 503).
    pub fleet: Arc<std::sync::OnceLock<Arc<Fleet>>>,
    /// API tokens.
    pub tokens: Arc<ApiTokens>,
    /// Whether this daemon leads (a follower serves status read-only).
    pub leader: Arc<AtomicBool>,
    /// How alert deliveries went.
    pub alerts: Arc<crate::alerts::AlertStats>,
    /// Uploaded job artifacts.
    pub artifacts: Arc<crate::artifacts::Artifacts>,
    /// The leader lease as this daemon sees it.
    pub lease: LeaseView,
    /// How long a node may go silent before it is lost (`diagnose` warns
    /// at half of it).
    pub heartbeat_timeout_ms: u64,
    /// The data dir (a backup carries its trust files).
    pub data_dir: std::path::PathBuf,
    /// The fleet's namespace.
    pub namespace: String,
    /// The costs over time, for the console's charts.
    pub costs: Arc<crate::console::CostSeries>,
    /// Set when the daemon stops: long-lived answers (the console's event
    /// stream) end, so the server's graceful stop does not wait on them.
    pub closing: Arc<tokio::sync::watch::Sender<bool>>,
}

/// What `GET /v1/leader` reads: the store the lease lives in (once open;
/// a follower waiting on a local store's file lock never has it), this
/// daemon's name and the lease's length.
#[derive(Clone)]
pub struct LeaseView {
    /// The lease's store, once open.
    pub store: Arc<std::sync::OnceLock<Arc<dyn fleet_core::Store>>>,
    /// This daemon's name in the lease.
    pub holder: String,
    /// The lease's length.
    pub lease_ms: u64,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState").finish_non_exhaustive()
    }
}

/// The router.
pub fn router(state: ApiState) -> Router {
    let private = Router::new()
        .route(API_METRICS_PATH, get(metrics))
        .route(API_STATUS_PATH, get(status))
        .route(API_POOLS_PATH, get(pools))
        .route("/v1/pools/{pool}/explain", get(explain_pool))
        .route("/v1/claims/{claim}/history", get(claim_history))
        .route(API_NODES_PATH, get(nodes))
        .route(API_CLAIMS_PATH, get(claims))
        .route(API_JOBS_PATH, get(jobs))
        .route("/v1/jobs/{ws}/{job}/artifacts", get(job_artifacts))
        .route("/v1/jobs/{ws}/{job}/artifacts/{name}", get(job_artifact))
        .route(API_RUNS_PATH, get(runs).post(submit_run))
        .route("/v1/runs/{ws}/{run}", get(run_info))
        .route("/v1/runs/{ws}/{run}/{action}", post(run_action))
        .route(API_REPLAY_STATUS_PATH, get(replay_status))
        .route(API_LEADER_PATH, get(leader))
        .route(fleet_core::protocol::API_DIAGNOSE_PATH, get(diagnose))
        .route(API_COSTS_PATH, get(costs))
        .route(API_TOKENS_PATH, post(create_token))
        .route(API_BACKUP_PATH, post(backup))
        .route("/v1/claims/{ws}/{claim}/release", post(release_claim))
        .route("/v1/jobs/{ws}/{job}/cancel", post(cancel_job))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route(API_HEALTHZ_PATH, get(|| async { "ok\n" }))
        .route(API_READYZ_PATH, get(readyz))
        // Any token; each answer is cut to what the token may see.
        .route(API_CONSOLE_STATE_PATH, get(crate::console::state))
        .route(API_CONSOLE_EVENTS_PATH, get(crate::console::events))
        .route(
            "/v1/console/jobs/{ws}/{job}/log",
            get(crate::console::job_log),
        )
        .route(CONSOLE_PATH, get(|| crate::console::page(None)))
        .route("/ui/", get(|| crate::console::page(None)))
        .route(
            "/ui/{file}",
            get(|file: axum::extract::Path<String>| crate::console::page(Some(file))),
        )
        .merge(private)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Whose `Authorization: Bearer` token `headers` present, if it is one of
/// the daemon's (the operator API's check and the console's).
pub(crate) fn token_holder(
    state: &ApiState,
    headers: &HeaderMap,
) -> Option<crate::auth::TokenHolder> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|t| state.tokens.check(t.trim()))
}

async fn require_token(
    State(state): State<ApiState>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    match token_holder(&state, &headers) {
        Some(holder) if holder.is_operator() => next.run(req).await,
        Some(holder) => {
            tracing::info!(path = %req.uri().path(), token = %holder.name, "workspace token used on the HTTP API");
            ApiError(
                StatusCode::FORBIDDEN,
                "this token is limited to workspaces (the claim plane and the console); the HTTP API needs an operator token".into(),
            )
            .into_response()
        }
        None => {
            tracing::info!(path = %req.uri().path(), "unauthorized API request");
            ApiError(StatusCode::UNAUTHORIZED, "unauthorized".into()).into_response()
        }
    }
}

/// `POST /v1/backup`: every stored entry and the trust files, encrypted
/// with age to the request's recipients (`application/octet-stream`).
async fn backup(
    State(state): State<ApiState>,
    axum::Json(req): axum::Json<BackupRequest>,
) -> Result<Response, ApiError> {
    use crate::backup::BackupFailure;
    let to = crate::backup::recipients(&req.recipients)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
    let fleet = leading_fleet(&state)?;
    let now = fleet_core::clock::Clock::now(&fleet_runtime::SystemClock);
    let (bytes, origin) = crate::backup::take(fleet, &state.data_dir, &state.namespace, now, &to)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "backup failed");
            let code = match e {
                BackupFailure::Recipients(_) => StatusCode::BAD_REQUEST,
                BackupFailure::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            ApiError(code, e.to_string())
        })?;
    tracing::info!(
        fleet_id = %origin.fleet_id,
        records = ?origin.records,
        bytes = bytes.len(),
        recipients = to.len(),
        "backup taken"
    );
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

async fn readyz(State(state): State<ApiState>) -> Response {
    match state.fleet.get() {
        Some(f) if f.is_ready() => (StatusCode::OK, "ready\n").into_response(),
        Some(_) => (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "follower: another daemon leads\n",
        )
            .into_response(),
    }
}

/// An error answer: the status and the `ApiErrorBody`'s words.
#[derive(Debug, thiserror::Error)]
#[error("{1} ({0})")]
pub(crate) struct ApiError(pub(crate) StatusCode, pub(crate) String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, axum::Json(ApiErrorBody::new(self.1))).into_response()
    }
}

/// The control plane, or 503 on a follower.
pub(crate) fn leading_fleet(state: &ApiState) -> Result<&Arc<Fleet>, ApiError> {
    state.fleet.get().ok_or_else(|| {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "this daemon is a follower; ask the leader".into(),
        )
    })
}

async fn snapshot(state: &ApiState) -> Result<Status, ApiError> {
    leading_fleet(state)?
        .status()
        .await
        .map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))
}

/// Counts per state name.
fn count<'a>(names: impl Iterator<Item = &'a str>) -> std::collections::BTreeMap<String, u64> {
    let mut by_name = std::collections::BTreeMap::new();
    for name in names {
        *by_name.entry(name.to_owned()).or_default() += 1;
    }
    by_name
}

async fn status(State(state): State<ApiState>) -> Result<axum::Json<StatusSummary>, ApiError> {
    let s = snapshot(&state).await?;
    Ok(axum::Json(StatusSummary {
        fleet_id: Some(s.fleet_id.clone()),
        epoch: s.epoch,
        leader: state.leader.load(Ordering::Relaxed),
        pools: s.pools.len() as u64,
        nodes: count(s.nodes.iter().map(|n| n.state.name())),
        claims: count(s.claims.iter().map(|c| c.state.name())),
        jobs: count(s.jobs.iter().map(|j| j.state.name())),
        cost_micros: s.costs.total(),
    }))
}

impl std::fmt::Debug for LeaseView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseView")
            .field("holder", &self.holder)
            .field("lease_ms", &self.lease_ms)
            .finish_non_exhaustive()
    }
}

/// `GET /v1/leader`: the lease as the store holds it and the followers
/// that looked at it within three leases. Any daemon answers.
async fn leader(State(state): State<ApiState>) -> Result<axum::Json<LeaderInfo>, ApiError> {
    let view = &state.lease;
    let mut info = LeaderInfo {
        this_daemon: view.holder.clone(),
        leader: state.leader.load(Ordering::Relaxed),
        lease: None,
        followers: Vec::new(),
    };
    if let Some(store) = view.store.get() {
        let unavailable = |e: fleet_core::store::StoreError| {
            ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("reading the lease: {e}"),
            )
        };
        info.lease = fleet_runtime::lease::read_leader(&**store)
            .await
            .map_err(unavailable)?
            .map(|(record, _)| record);
        let since = fleet_runtime::SystemClock
            .now_ms()
            .saturating_sub(view.lease_ms.saturating_mul(3));
        info.followers = fleet_runtime::lease::followers(&**store, since)
            .await
            .map_err(unavailable)?;
    }
    Ok(axum::Json(info))
}

/// `GET /v1/diagnose`: what needs a look, from the status the leader
/// has; nothing secret in it.
async fn diagnose(
    State(state): State<ApiState>,
) -> Result<axum::Json<fleet_core::protocol::Diagnosis>, ApiError> {
    Ok(axum::Json(diagnosis(&state, &snapshot(&state).await?)))
}

/// What needs a look in status `s` (`GET /v1/diagnose`, the console).
pub(crate) fn diagnosis(state: &ApiState, s: &Status) -> fleet_core::protocol::Diagnosis {
    let deliveries = state.alerts.by_outcome();
    fleet_core::protocol::Diagnosis::build(fleet_core::protocol::DiagnosisInputs {
        now: s.at,
        epoch: s.epoch,
        nodes: &s.nodes,
        claims: &s.claims,
        provider_errors: &s.metrics.provider_errors,
        alerts: &s.metrics.alerts,
        alert_deliveries: &deliveries,
        heartbeat_timeout_ms: state.heartbeat_timeout_ms,
    })
}

/// `GET /v1/replay-status`: what this leader's start recovered.
async fn replay_status(
    State(state): State<ApiState>,
) -> Result<axum::Json<ReplayStatus>, ApiError> {
    Ok(axum::Json(snapshot(&state).await?.replay))
}

async fn pools(State(state): State<ApiState>) -> Result<axum::Json<Vec<PoolInfo>>, ApiError> {
    let s = snapshot(&state).await?;
    let pools = s
        .pools
        .iter()
        .map(|p| {
            let mut info = PoolInfo::from(p);
            info.shortages = s.shortages.get(&p.name).cloned().unwrap_or_default();
            info
        })
        .collect();
    Ok(axum::Json(pools))
}

async fn nodes(State(state): State<ApiState>) -> Result<axum::Json<Vec<NodeStatus>>, ApiError> {
    Ok(axum::Json(snapshot(&state).await?.nodes))
}

async fn claims(State(state): State<ApiState>) -> Result<axum::Json<Vec<ClaimRecord>>, ApiError> {
    // Sealed credentials are for the caller only; status never shows them.
    let mut claims = snapshot(&state).await?.claims;
    for c in &mut claims {
        c.credentials = None;
    }
    Ok(axum::Json(claims))
}

async fn jobs(State(state): State<ApiState>) -> Result<axum::Json<Vec<JobRecord>>, ApiError> {
    Ok(axum::Json(snapshot(&state).await?.jobs))
}

/// Every run and where each of its tasks is.
async fn runs(State(state): State<ApiState>) -> Result<axum::Json<Vec<RunInfo>>, ApiError> {
    let s = snapshot(&state).await?;
    Ok(axum::Json(run_infos(&s.runs, &s.jobs, |_| true)))
}

/// The runs `keep` picks, each with where its tasks (among `jobs`) are.
pub(crate) fn run_infos(
    runs: &[RunRecord],
    jobs: &[JobRecord],
    keep: impl Fn(&RunRecord) -> bool,
) -> Vec<RunInfo> {
    let jobs: BTreeMap<&fleet_core::JobId, &JobRecord> =
        jobs.iter().map(|j| (&j.spec.id, j)).collect();
    runs.iter()
        .filter(|r| keep(r))
        .map(|r| RunInfo::new(r, |id| jobs.get(id).copied()))
        .collect()
}

/// `GET /v1/pools/<pool>/explain`: the strategy, its last plan and the
/// pool's recent decisions with their reasons.
async fn explain_pool(
    State(state): State<ApiState>,
    axum::extract::Path(pool): axum::extract::Path<String>,
) -> Result<axum::Json<fleet_core::protocol::PoolExplain>, ApiError> {
    let pool = fleet_core::PoolName::new(pool)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
    let name = pool.clone();
    leading_fleet(&state)?
        .inspect(move |c, _| c.explain(&name))
        .await
        .map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?
        .map(axum::Json)
        .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no pool {pool}")))
}

/// `GET /v1/claims/<claim>/history`: the claim's transitions still kept.
async fn claim_history(
    State(state): State<ApiState>,
    axum::extract::Path(claim): axum::extract::Path<String>,
) -> Result<axum::Json<fleet_core::protocol::ClaimHistory>, ApiError> {
    let claim = fleet_core::ClaimId::new(claim)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?;
    let id = claim.clone();
    let history = leading_fleet(&state)?
        .inspect(move |c, _| c.claim_history(&id))
        .await
        .map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    if history.transitions.is_empty() {
        return Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no history of claim {claim} (unknown, or older than what is kept)"),
        ));
    }
    Ok(axum::Json(history))
}

/// A path's workspace and the id after it (a job's, a run's), or 400.
fn path_ids<I>(ws: &str, id: &str) -> Result<(Workspace, I), ApiError>
where
    I: TryFrom<String, Error = fleet_core::ids::IdError>,
{
    let bad = |e: fleet_core::ids::IdError| ApiError(StatusCode::BAD_REQUEST, e.to_string());
    Ok((
        Workspace::new(ws).map_err(bad)?,
        I::try_from(id.to_owned()).map_err(bad)?,
    ))
}

/// The run as it is now, or 404.
async fn one_run(state: &ApiState, ws: &Workspace, run: &RunId) -> Result<RunInfo, ApiError> {
    let s = snapshot(state).await?;
    run_infos(&s.runs, &s.jobs, |r| {
        &r.spec.id == run && &r.spec.workspace == ws
    })
    .pop()
    .ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no run {run} in {ws}")))
}

/// `GET /v1/runs/<workspace>/<run>`.
async fn run_info(
    State(state): State<ApiState>,
    axum::extract::Path((ws, run)): axum::extract::Path<(String, String)>,
) -> Result<axum::Json<RunInfo>, ApiError> {
    let (ws, run): (_, RunId) = path_ids(&ws, &run)?;
    Ok(axum::Json(one_run(&state, &ws, &run).await?))
}

/// Sends one job-plane message through the fleet and waits for its first
/// answer (503 if none comes in 30 s).
async fn first_job_reply(state: &ApiState, msg: JobMsg) -> Result<JobReply, ApiError> {
    use fleet_core::transport::JobClient as _;
    use futures_util::StreamExt as _;
    let fleet = leading_fleet(state)?;
    let unavailable = |e: String| ApiError(StatusCode::SERVICE_UNAVAILABLE, e);
    let mut replies = fleet
        .job_client()
        .send(msg)
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    tokio::time::timeout(std::time::Duration::from_secs(30), replies.next())
        .await
        .map_err(|_| unavailable("the control plane did not answer in 30 s".into()))?
        .ok_or_else(|| unavailable("the control plane closed the reply stream".into()))
}

/// A refusal of the job plane as an error answer: 404 when it names
/// nothing known (`unknown <what>`), else 409.
fn refused(why: String, what: &str) -> ApiError {
    if why.starts_with(&format!("unknown {what}")) {
        ApiError(StatusCode::NOT_FOUND, why)
    } else {
        ApiError(StatusCode::CONFLICT, why)
    }
}

/// Sends one run message and waits for its first answer: the run's
/// status, or the refusal as 409 (404 for an unknown run).
async fn run_call(state: &ApiState, msg: JobMsg) -> Result<(), ApiError> {
    match first_job_reply(state, msg).await? {
        JobReply::Run { .. } => Ok(()),
        JobReply::Rejected { why, .. } => Err(refused(why, "run")),
        other => Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unexpected answer: {other:?}"),
        )),
    }
}

/// `POST /v1/runs` with a `RunSpec`: the run as accepted.
async fn submit_run(
    State(state): State<ApiState>,
    body: Result<axum::Json<RunSpec>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, axum::Json<RunInfo>), ApiError> {
    let axum::Json(spec) = body.map_err(|e| ApiError(e.status(), e.body_text()))?;
    let (ws, run) = (spec.workspace.clone(), spec.id.clone());
    run_call(&state, JobMsg::SubmitRun(Box::new(spec))).await?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(one_run(&state, &ws, &run).await?),
    ))
}

/// `POST /v1/runs/<workspace>/<run>/pause|resume|cancel`.
async fn run_action(
    State(state): State<ApiState>,
    axum::extract::Path((ws, run, action)): axum::extract::Path<(String, String, String)>,
) -> Result<axum::Json<RunInfo>, ApiError> {
    let (ws, run): (_, RunId) = path_ids(&ws, &run)?;
    let action = match action.as_str() {
        "pause" => RunAction::Pause,
        "resume" => RunAction::Resume,
        "cancel" => RunAction::Cancel,
        other => {
            return Err(ApiError(
                StatusCode::NOT_FOUND,
                format!("no run action {other:?}: pause, resume or cancel"),
            ));
        }
    };
    let msg = JobMsg::Run {
        workspace: ws.clone(),
        run: run.clone(),
        action,
    };
    run_call(&state, msg).await?;
    Ok(axum::Json(one_run(&state, &ws, &run).await?))
}

/// `POST /v1/claims/<workspace>/<claim>/release`: an operator gives a
/// claim's node back (the console's button); answers `released`.
async fn release_claim(
    State(state): State<ApiState>,
    axum::extract::Path((ws, claim)): axum::extract::Path<(String, String)>,
) -> Result<axum::Json<ClaimReply>, ApiError> {
    use fleet_core::transport::{ClaimClient as _, ClaimError};
    let (ws, claim): (_, fleet_core::ClaimId) = path_ids(&ws, &claim)?;
    let fleet = leading_fleet(&state)?;
    fleet
        .client()
        .release(&ws, &claim)
        .await
        .map_err(|e| match e {
            ClaimError::Transport(e) => ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
            other => ApiError(StatusCode::CONFLICT, other.to_string()),
        })?;
    tracing::info!(workspace = %ws, claim = %claim, "claim released through the HTTP API");
    Ok(axum::Json(ClaimReply::Released { claim_id: claim }))
}

/// `POST /v1/jobs/<workspace>/<job>/cancel`: an operator cancels a job
/// (the console's button); answers the control plane's `accepted`, or its
/// refusal as 409 (404 for an unknown job).
async fn cancel_job(
    State(state): State<ApiState>,
    axum::extract::Path((ws, job)): axum::extract::Path<(String, String)>,
) -> Result<axum::Json<JobReply>, ApiError> {
    let (workspace, job): (_, fleet_core::JobId) = path_ids(&ws, &job)?;
    let msg = JobMsg::Cancel {
        workspace: workspace.clone(),
        job: job.clone(),
    };
    match first_job_reply(&state, msg).await? {
        reply @ JobReply::Accepted { .. } => {
            tracing::info!(workspace = %workspace, job = %job, "job cancelled through the HTTP API");
            Ok(axum::Json(reply))
        }
        JobReply::Rejected { why, .. } => Err(refused(why, "job")),
        other => Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unexpected answer: {other:?}"),
        )),
    }
}

/// `GET /v1/jobs/<workspace>/<job>/artifacts`.
async fn job_artifacts(
    State(state): State<ApiState>,
    axum::extract::Path((ws, job)): axum::extract::Path<(String, String)>,
) -> Result<axum::Json<Vec<fleet_core::protocol::ArtifactInfo>>, ApiError> {
    let (ws, job): (_, fleet_core::JobId) = path_ids(&ws, &job)?;
    Ok(axum::Json(state.artifacts.list(&ws, &job)))
}

/// `GET /v1/jobs/<workspace>/<job>/artifacts/<name>`: the file's bytes.
async fn job_artifact(
    State(state): State<ApiState>,
    axum::extract::Path((ws, job, name)): axum::extract::Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    let (ws, job): (_, fleet_core::JobId) = path_ids(&ws, &job)?;
    let not_found = || {
        ApiError(
            StatusCode::NOT_FOUND,
            format!("job {job} has no artifact {name:?}"),
        )
    };
    let path = state
        .artifacts
        .file(&ws, &job, &name)
        .ok_or_else(not_found)?;
    let bytes = tokio::fs::read(&path).await.map_err(|_| not_found())?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response())
}

/// `GET /v1/costs?by=pool|workspace|claim` (default `workspace`).
async fn costs(
    State(state): State<ApiState>,
    query: Result<
        axum::extract::Query<BTreeMap<String, String>>,
        axum::extract::rejection::QueryRejection,
    >,
) -> Result<axum::Json<CostReport>, ApiError> {
    let axum::extract::Query(query) = query.map_err(|e| ApiError(e.status(), e.body_text()))?;
    let by = match query.get("by") {
        Some(by) => by
            .parse::<CostGrouping>()
            .map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.to_string()))?,
        None => CostGrouping::default(),
    };
    Ok(axum::Json(snapshot(&state).await?.costs.grouped(by)))
}

async fn create_token(
    State(state): State<ApiState>,
    body: Result<axum::Json<NewTokenRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<axum::Json<NewToken>, ApiError> {
    let axum::Json(req) = body.map_err(|e| ApiError(e.status(), e.body_text()))?;
    if req.name.is_empty() || req.name.len() > 64 {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            "name must be 1..=64 characters".into(),
        ));
    }
    let workspaces: Option<std::collections::BTreeSet<Workspace>> =
        req.workspaces.map(|w| w.into_iter().collect());
    if workspaces.as_ref().is_some_and(|w| w.is_empty()) {
        return Err(ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            "workspaces: give at least one, or leave it out for an operator token".into(),
        ));
    }
    let now = fleet_runtime::SystemClock.now_ms();
    let token = state
        .tokens
        .create(&req.name, workspaces.clone(), now)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(axum::Json(NewToken {
        name: req.name,
        token,
        workspaces,
    }))
}

async fn metrics(State(state): State<ApiState>) -> Result<Response, ApiError> {
    let s = snapshot(&state).await?;
    let mut out = String::new();
    out.push_str("# HELP fleet_claims Claims by state.\n# TYPE fleet_claims gauge\n");
    let mut by_state = std::collections::BTreeMap::<&str, usize>::new();
    for c in &s.claims {
        *by_state.entry(c.state.name()).or_default() += 1;
    }
    for name in [
        "pending", "granted", "active", "released", "expired", "revoked",
    ] {
        let n = by_state.get(name).copied().unwrap_or(0);
        let _ = writeln!(out, "fleet_claims{{state=\"{name}\"}} {n}");
    }
    out.push_str("# HELP fleet_nodes Nodes by state.\n# TYPE fleet_nodes gauge\n");
    for st in NodeState::ALL {
        let n = s.nodes.iter().filter(|n| n.state == st).count();
        let _ = writeln!(out, "fleet_nodes{{state=\"{}\"}} {n}", st.name());
    }
    render_costs(&mut out, &s.costs);
    out.push_str("# HELP fleet_alerts_total Deliveries of job escalations to alert channels, by outcome.\n# TYPE fleet_alerts_total counter\n");
    for (outcome, n) in state.alerts.by_outcome() {
        let _ = writeln!(out, "fleet_alerts_total{{outcome=\"{outcome}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "# HELP fleet_affinity_grants_total Grants of claims with an affinity key, by whether the node last served the same key.\n# TYPE fleet_affinity_grants_total counter\nfleet_affinity_grants_total{{result=\"hit\"}} {}\nfleet_affinity_grants_total{{result=\"miss\"}} {}",
        s.affinity.hits, s.affinity.misses
    );
    let _ = writeln!(
        out,
        "# HELP fleet_leader Whether this daemon leads.\n# TYPE fleet_leader gauge\nfleet_leader {}",
        u8::from(state.leader.load(Ordering::Relaxed))
    );
    s.metrics.render_grants(&mut out);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response())
}

/// The cost counters: per pool, the part of it attributed to no workspace,
/// and per workspace and pool (labels are validated names, which need no
/// escaping). Like the ledger they count from the leader's start.
fn render_costs(out: &mut String, costs: &CostReport) {
    out.push_str(
        "# HELP fleet_cost_dollars Cost accrued per pool.\n# TYPE fleet_cost_dollars counter\n",
    );
    for (pool, c) in &costs.pools {
        let _ = writeln!(
            out,
            "fleet_cost_dollars{{pool=\"{pool}\"}} {}",
            c.total().as_dollars_f64()
        );
    }
    out.push_str(
        "# HELP fleet_pool_idle_cost_dollars Running cost per pool attributed to no claim or job (boot, idle, billing minimums).\n# TYPE fleet_pool_idle_cost_dollars counter\n",
    );
    for (pool, c) in &costs.pools {
        let _ = writeln!(
            out,
            "fleet_pool_idle_cost_dollars{{pool=\"{pool}\"}} {}",
            c.idle.as_dollars_f64()
        );
    }
    out.push_str(
        "# HELP fleet_workspace_cost_dollars Cost attributed to a workspace's claims and jobs, per pool.\n# TYPE fleet_workspace_cost_dollars counter\n",
    );
    for (ws, w) in &costs.workspaces {
        for (pool, cost) in &w.pools {
            let _ = writeln!(
                out,
                "fleet_workspace_cost_dollars{{workspace=\"{ws}\",pool=\"{pool}\"}} {}",
                cost.as_dollars_f64()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use fleet_core::money::Money;
    use fleet_core::protocol::{PoolCost, WorkspaceCost};

    use super::*;

    #[test]
    fn cost_counters_per_pool_idle_and_workspace() -> Result<(), Box<dyn std::error::Error>> {
        let pool = fleet_core::ids::PoolName::new("linux")?;
        let mut costs = CostReport::default();
        costs.pools.insert(
            pool.clone(),
            PoolCost {
                running: Money::from_micros(1_500_000),
                attributed: Money::from_micros(1_250_000),
                idle: Money::from_micros(250_000),
                snapshots: Money::from_micros(500_000),
                ..PoolCost::default()
            },
        );
        for (ws, micros) in [("team-a", 1_000_000), ("team-b", 250_000)] {
            let mut w = WorkspaceCost {
                cost: Money::from_micros(micros),
                ..WorkspaceCost::default()
            };
            w.pools.insert(pool.clone(), Money::from_micros(micros));
            costs.workspaces.insert(Workspace::new(ws)?, w);
        }
        let mut out = String::new();
        render_costs(&mut out, &costs);
        for line in [
            "# TYPE fleet_cost_dollars counter",
            "fleet_cost_dollars{pool=\"linux\"} 2",
            "# TYPE fleet_pool_idle_cost_dollars counter",
            "fleet_pool_idle_cost_dollars{pool=\"linux\"} 0.25",
            "# TYPE fleet_workspace_cost_dollars counter",
            "fleet_workspace_cost_dollars{workspace=\"team-a\",pool=\"linux\"} 1",
            "fleet_workspace_cost_dollars{workspace=\"team-b\",pool=\"linux\"} 0.25",
        ] {
            assert!(
                out.lines().any(|l| l == line),
                "{line:?} missing from\n{out}"
            );
        }
        assert!(out.contains("# HELP fleet_workspace_cost_dollars "));
        assert!(out.contains("# HELP fleet_pool_idle_cost_dollars "));
        Ok(())
    }
}
