//! The HTTP API: health, readiness, Prometheus metrics and the status API.
//!
//! `/healthz` and `/readyz` are open and O(1) (`/readyz` reads a flag the
//! control loop keeps). Everything else needs `Authorization: Bearer
//! <token>` with an operator's token; a missing or wrong token gets a bare
//! 401, with no detail, a token limited to workspaces a 403. Bodies are
//! limited to 64 KiB.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use fleet_core::ids::Workspace;
use fleet_core::protocol::NodeState;
use serde::{Deserialize, Serialize};

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
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState").finish_non_exhaustive()
    }
}

/// The router.
pub fn router(state: ApiState) -> Router {
    let private = Router::new()
        .route("/metrics", get(metrics))
        .route("/v1/status", get(status))
        .route("/v1/pools", get(pools))
        .route("/v1/nodes", get(nodes))
        .route("/v1/claims", get(claims))
        .route("/v1/jobs", get(jobs))
        .route("/v1/costs", get(costs))
        .route("/v1/tokens", post(create_token))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .merge(private)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn require_token(
    State(state): State<ApiState>,
    headers: HeaderMap,
    req: Request,
    next: Next,
) -> Response {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented.and_then(|t| state.tokens.check(t.trim())) {
        Some(holder) if holder.is_operator() => next.run(req).await,
        Some(holder) => {
            tracing::info!(path = %req.uri().path(), token = %holder.name, "workspace token used on the HTTP API");
            (
                StatusCode::FORBIDDEN,
                "this token is limited to workspaces (the claim plane); the HTTP API needs an operator token\n",
            )
                .into_response()
        }
        None => {
            tracing::info!(path = %req.uri().path(), "unauthorized API request");
            (StatusCode::UNAUTHORIZED, "unauthorized\n").into_response()
        }
    }
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

#[derive(Debug)]
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, axum::Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

async fn snapshot(state: &ApiState) -> Result<Status, ApiError> {
    let Some(fleet) = state.fleet.get() else {
        return Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "this daemon is a follower; ask the leader".into(),
        ));
    };
    fleet
        .status()
        .await
        .map_err(|e| ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))
}

/// `/v1/status`: counts.
#[derive(Debug, Serialize, Deserialize)]
pub struct Summary {
    /// Leader epoch.
    pub epoch: u64,
    /// Whether this daemon leads.
    pub leader: bool,
    /// Pools.
    pub pools: usize,
    /// Nodes by state.
    pub nodes: std::collections::BTreeMap<String, usize>,
    /// Claims by state.
    pub claims: std::collections::BTreeMap<String, usize>,
    /// Jobs by state.
    pub jobs: std::collections::BTreeMap<String, usize>,
    /// Total cost so far, micro-dollars.
    pub cost_micros: i64,
}

async fn status(State(state): State<ApiState>) -> Result<axum::Json<Summary>, ApiError> {
    let s = snapshot(&state).await?;
    let mut nodes = std::collections::BTreeMap::new();
    for n in &s.nodes {
        *nodes.entry(n.state.name().to_owned()).or_default() += 1;
    }
    let mut claims = std::collections::BTreeMap::new();
    for c in &s.claims {
        *claims.entry(c.state.name().to_owned()).or_default() += 1;
    }
    let mut jobs = std::collections::BTreeMap::new();
    for j in &s.jobs {
        *jobs.entry(j.state.name().to_owned()).or_default() += 1;
    }
    Ok(axum::Json(Summary {
        epoch: s.epoch.0,
        leader: state.leader.load(Ordering::Relaxed),
        pools: s.pools.len(),
        nodes,
        claims,
        jobs,
        cost_micros: s.costs.total().micros(),
    }))
}

async fn pools(State(state): State<ApiState>) -> Result<Response, ApiError> {
    Ok(axum::Json(snapshot(&state).await?.pools).into_response())
}

async fn nodes(State(state): State<ApiState>) -> Result<Response, ApiError> {
    Ok(axum::Json(snapshot(&state).await?.nodes).into_response())
}

async fn claims(State(state): State<ApiState>) -> Result<Response, ApiError> {
    // Sealed credentials are for the caller only; status never shows them.
    let mut claims = snapshot(&state).await?.claims;
    for c in &mut claims {
        c.credentials = None;
    }
    Ok(axum::Json(claims).into_response())
}

async fn jobs(State(state): State<ApiState>) -> Result<Response, ApiError> {
    Ok(axum::Json(snapshot(&state).await?.jobs).into_response())
}

async fn costs(State(state): State<ApiState>) -> Result<Response, ApiError> {
    Ok(axum::Json(snapshot(&state).await?.costs).into_response())
}

/// `POST /v1/tokens` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// A name for the token.
    pub name: String,
    /// Limit the token to these workspaces (the claim plane only); absent:
    /// an operator's token.
    #[serde(default)]
    pub workspaces: Option<Vec<Workspace>>,
}

async fn create_token(
    State(state): State<ApiState>,
    body: Result<axum::Json<NewToken>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
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
    Ok(axum::Json(serde_json::json!({
        "name": req.name,
        "token": token.expose(),
        "workspaces": workspaces,
    }))
    .into_response())
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
    out.push_str(
        "# HELP fleet_cost_dollars Cost accrued per pool.\n# TYPE fleet_cost_dollars counter\n",
    );
    for (pool, c) in &s.costs.pools {
        let _ = writeln!(
            out,
            "fleet_cost_dollars{{pool=\"{pool}\"}} {}",
            c.total().as_dollars_f64()
        );
    }
    let _ = writeln!(
        out,
        "# HELP fleet_leader Whether this daemon leads.\n# TYPE fleet_leader gauge\nfleet_leader {}",
        u8::from(state.leader.load(Ordering::Relaxed))
    );
    s.metrics.render_grants(&mut out);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response())
}
