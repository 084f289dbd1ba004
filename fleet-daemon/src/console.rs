//! The operator console: a page at `/ui` (its files embedded in the
//! binary, nothing fetched from elsewhere) and the reads it is built from,
//! `GET /v1/console/state` and the server-sent event stream
//! `GET /v1/console/events` (PROTOCOL.md "Operator console").
//!
//! Unlike the rest of the HTTP API, these two take any API token and cut
//! what they answer to it: an operator sees the fleet, a token limited to
//! workspaces sees those workspaces' claims, jobs, runs and costs and the
//! nodes that serve them. The page itself is public (it holds no data); it
//! asks for a token and keeps it in the tab's session storage.
//!
//! The stream wakes on [`fleet_runtime::Fleet::changes`], so a claim shows
//! up as soon as the control loop decides on it, not at the next poll.

use std::collections::{BTreeSet, VecDeque};
use std::convert::Infallible;
use std::sync::Mutex;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use fleet_core::ids::Workspace;
use fleet_core::protocol::{
    CONSOLE_COST_SAMPLES, CONSOLE_MIN_INTERVAL_MS, CONSOLE_REFRESH_MS, CONSOLE_STATE_EVENT,
    ConsoleOmitted, ConsoleState, ConsoleViewer, CostReport, CostSample, JobLog, JobState,
    keep_newest_ended,
};
use futures_util::Stream;
use serde::Deserialize;

use crate::auth::TokenHolder;
use crate::http::{ApiError, ApiState, leading_fleet};

/// How often the cost charts get a point.
pub const COST_SAMPLE_EVERY: Duration = Duration::from_secs(60);

/// The costs over time, newest last, bounded at [`CONSOLE_COST_SAMPLES`].
#[derive(Debug, Default)]
pub struct CostSeries {
    samples: Mutex<VecDeque<CostSample>>,
}

impl CostSeries {
    /// Keeps `report`'s totals as a point of the series.
    pub fn push(&self, report: &CostReport) {
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        if samples.len() == CONSOLE_COST_SAMPLES {
            samples.pop_front();
        }
        samples.push_back(CostSample::of(report));
    }

    fn all(&self) -> Vec<CostSample> {
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples.iter().cloned().collect()
    }
}

/// Samples the leader's costs every [`COST_SAMPLE_EVERY`] into `series`,
/// for as long as the daemon runs (a follower's fleet is not there yet:
/// it samples nothing until it leads).
pub async fn sample_costs(api: ApiState) {
    let mut every = tokio::time::interval(COST_SAMPLE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(fleet) = api.fleet.get() else {
            continue;
        };
        match fleet.status().await {
            Ok(s) => api.costs.push(&s.costs),
            Err(e) => tracing::debug!(error = %e, "no cost sample: the control loop stopped"),
        }
    }
}

/// `?workspace=` of the console's reads.
#[derive(Debug, Deserialize)]
pub(crate) struct ConsoleQuery {
    /// Only this workspace.
    workspace: Option<String>,
}

/// What a console read may show: everything, or these workspaces.
#[derive(Debug, Clone)]
struct Scope {
    viewer: ConsoleViewer,
    /// `None`: every workspace.
    workspaces: Option<BTreeSet<Workspace>>,
    asked: Option<Workspace>,
}

impl Scope {
    fn sees(&self, ws: &Workspace) -> bool {
        self.workspaces.as_ref().is_none_or(|w| w.contains(ws))
    }
}

/// The presented token's holder, any token (401 without a valid one).
fn holder(api: &ApiState, headers: &HeaderMap) -> Result<TokenHolder, ApiError> {
    crate::http::token_holder(api, headers).ok_or_else(|| {
        tracing::info!("unauthorized console request");
        ApiError(StatusCode::UNAUTHORIZED, "unauthorized".into())
    })
}

/// What `holder` may see of `asked`: 400 for a malformed workspace, 403
/// for one the token is not limited to.
fn scope(holder: TokenHolder, asked: Option<String>) -> Result<Scope, ApiError> {
    let asked = asked
        .filter(|w| !w.is_empty())
        .map(Workspace::new)
        .transpose()
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("workspace: {e}")))?;
    let viewer = ConsoleViewer {
        name: holder.name.clone(),
        operator: holder.is_operator(),
        workspaces: holder.workspaces.iter().flatten().cloned().collect(),
    };
    let workspaces = match (&asked, holder.workspaces) {
        (Some(ws), Some(allowed)) if !allowed.contains(ws) => {
            tracing::info!(token = %holder.name, workspace = %ws, "console: workspace refused");
            return Err(ApiError(
                StatusCode::FORBIDDEN,
                format!(
                    "this token is limited to workspaces {}; not {ws}",
                    viewer
                        .workspaces
                        .iter()
                        .map(Workspace::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        (Some(ws), _) => Some(BTreeSet::from([ws.clone()])),
        (None, allowed) => allowed,
    };
    Ok(Scope {
        viewer,
        workspaces,
        asked,
    })
}

/// The console's state as `scope` may see it.
async fn read(api: &ApiState, scope: &Scope) -> Result<ConsoleState, ApiError> {
    let fleet = leading_fleet(api)?;
    let unavailable =
        |e: fleet_runtime::RuntimeError| ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string());
    let s = fleet.status().await.map_err(unavailable)?;
    let pools = fleet
        .inspect(|c, _| c.console_pools())
        .await
        .map_err(unavailable)?;
    let diagnosis = scope
        .viewer
        .operator
        .then(|| crate::http::diagnosis(api, &s));
    let mut claims: Vec<_> = s
        .claims
        .into_iter()
        .filter(|c| scope.sees(&c.request.workspace))
        .collect();
    // Sealed credentials are for the caller only.
    for c in &mut claims {
        c.credentials = None;
    }
    let mut jobs: Vec<_> = s
        .jobs
        .iter()
        .filter(|j| scope.sees(&j.spec.workspace))
        .cloned()
        .collect();
    let runs = crate::http::run_infos(&s.runs, &s.jobs, |r| scope.sees(&r.spec.workspace));
    let omitted = ConsoleOmitted {
        claims: keep_newest_ended(
            &mut claims,
            |c| c.state.is_terminal(),
            |c| c.ended_at.unwrap_or(c.enqueued_at),
        ),
        jobs: keep_newest_ended(
            &mut jobs,
            |j| matches!(j.state, JobState::Done | JobState::Cancelled),
            |j| {
                j.receipt
                    .as_ref()
                    .map_or(j.submitted_at, |r| r.completed_at)
            },
        ),
    };
    let mut costs = s.costs;
    let mut cost_series = api.costs.all();
    cost_series.push(CostSample::of(&costs));
    let mut nodes = s.nodes;
    if scope.workspaces.is_some() {
        // A limited view: the nodes that serve what it sees, and no pool's
        // totals (they are the other workspaces' too).
        let held: BTreeSet<&fleet_core::NodeId> = claims
            .iter()
            .filter_map(|c| c.node.as_ref())
            .chain(jobs.iter().filter_map(|j| j.state.node()))
            .collect();
        nodes.retain(|n| held.contains(&n.record.node));
        costs.pools.clear();
        costs.workspaces.retain(|w, _| scope.sees(w));
        costs.claims.retain(|_, c| scope.sees(&c.workspace));
        costs.jobs.retain(|_, c| scope.sees(&c.workspace));
        cost_series = cost_series
            .iter()
            .map(|c| c.only(|w| scope.sees(w)))
            .collect();
    }
    Ok(ConsoleState {
        at: s.at,
        fleet_id: s.fleet_id,
        epoch: s.epoch,
        viewer: scope.viewer.clone(),
        workspace: scope.asked.clone(),
        pools,
        nodes,
        claims,
        jobs,
        omitted,
        runs,
        costs,
        cost_series,
        diagnosis,
    })
}

/// `GET /v1/console/state[?workspace=W]`.
pub(crate) async fn state(
    State(api): State<ApiState>,
    headers: HeaderMap,
    Query(q): Query<ConsoleQuery>,
) -> Result<axum::Json<ConsoleState>, ApiError> {
    let scope = scope(holder(&api, &headers)?, q.workspace)?;
    Ok(axum::Json(read(&api, &scope).await?))
}

/// `GET /v1/console/jobs/<workspace>/<job>/log`: what the job reported
/// and printed, for a token that may see the workspace; 404 when nothing
/// is kept of it.
pub(crate) async fn job_log(
    State(api): State<ApiState>,
    headers: HeaderMap,
    axum::extract::Path((ws, job)): axum::extract::Path<(String, String)>,
) -> Result<axum::Json<JobLog>, ApiError> {
    let scope = scope(holder(&api, &headers)?, Some(ws))?;
    let workspace = scope
        .asked
        .clone()
        .ok_or_else(|| ApiError(StatusCode::BAD_REQUEST, "no workspace".into()))?;
    let job = fleet_core::JobId::new(job)
        .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("job: {e}")))?;
    leading_fleet(&api)?
        .job_log(&workspace, &job)
        .map(axum::Json)
        .ok_or_else(|| {
            ApiError(
                StatusCode::NOT_FOUND,
                format!("nothing is kept of job {job} in {workspace} (unknown, not started yet, or forgotten)"),
            )
        })
}

/// `GET /v1/console/events[?workspace=W]`: a `state` event at once, then
/// after each change of the control plane (at most every
/// [`CONSOLE_MIN_INTERVAL_MS`]) and every [`CONSOLE_REFRESH_MS`]; a state
/// equal to the last one sent is not sent again.
pub(crate) async fn events(
    State(api): State<ApiState>,
    headers: HeaderMap,
    Query(q): Query<ConsoleQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let scope = scope(holder(&api, &headers)?, q.workspace)?;
    let changes = leading_fleet(&api)?.changes();
    struct Watch {
        closing: tokio::sync::watch::Receiver<bool>,
        api: ApiState,
        scope: Scope,
        changes: tokio::sync::watch::Receiver<u64>,
        last: Option<String>,
    }
    let watch = Watch {
        closing: api.closing.subscribe(),
        api,
        scope,
        changes,
        last: None,
    };
    let stream = futures_util::stream::unfold(watch, |mut w| async move {
        loop {
            if w.last.is_some() {
                // Wait for a change (or the refresh), then let the rest of
                // a burst land before reading.
                let refresh = Duration::from_millis(CONSOLE_REFRESH_MS);
                tokio::select! {
                    changed = tokio::time::timeout(refresh, w.changes.changed()) => {
                        if let Ok(Err(_)) = changed {
                            return None; // the control loop stopped
                        }
                    }
                    _ = w.closing.wait_for(|c| *c) => return None,
                }
                tokio::time::sleep(Duration::from_millis(CONSOLE_MIN_INTERVAL_MS)).await;
            }
            if *w.closing.borrow() {
                return None;
            }
            w.changes.mark_unchanged();
            let state = match read(&w.api, &w.scope).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(error = %e.1, "console stream ends");
                    return None;
                }
            };
            let Ok(json) = serde_json::to_string(&state) else {
                return None;
            };
            if w.last.as_deref() == Some(json.as_str()) {
                continue;
            }
            w.last = Some(json.clone());
            let event = Event::default().event(CONSOLE_STATE_EVENT).data(json);
            return Some((Ok(event), w));
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// The page and its files, compiled in.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_bytes!("../ui/index.html"),
    ),
    (
        "console.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../ui/console.js"),
    ),
    (
        "console.css",
        "text/css; charset=utf-8",
        include_bytes!("../ui/console.css"),
    ),
    (
        "chart.umd.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../ui/vendor/chart.umd.min.js"),
    ),
];

/// The names of the console's files under `/ui/`.
pub fn asset_names() -> impl Iterator<Item = &'static str> {
    ASSETS.iter().map(|(name, _, _)| *name)
}

/// `GET /ui` and `GET /ui/<file>`.
pub(crate) async fn page(path: Option<axum::extract::Path<String>>) -> Response {
    let name = path.map_or_else(|| "index.html".to_owned(), |p| p.0);
    let Some((_, mime, body)) = ASSETS.iter().find(|(n, _, _)| *n == name) else {
        return (StatusCode::NOT_FOUND, "no such console file\n").into_response();
    };
    let mut r = (*body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Only the daemon's own files run, and the page talks only to it.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest as _;

    #[test]
    fn vendored_files_are_as_published() {
        // ui/vendor/README.md records where each vendored file comes from
        // and its sha256: the embedded bytes must be those.
        let readme = include_str!("../ui/vendor/README.md");
        for (name, _, body) in ASSETS {
            let Some(row) = readme
                .lines()
                .find(|l| l.starts_with(&format!("| `{name}` |")))
            else {
                continue; // not vendored: ours
            };
            let digest = hex(&sha2::Sha256::digest(body));
            assert!(
                row.contains(&format!("`{digest}`")),
                "{name}: sha256 {digest} is not the one ui/vendor/README.md records"
            );
        }
        assert!(readme.contains("| `chart.umd.min.js` |"));
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn a_limited_token_sees_only_its_workspaces() -> Result<(), Box<dyn std::error::Error>> {
        let limited = TokenHolder {
            name: "ci".into(),
            workspaces: Some(BTreeSet::from([Workspace::new("team-a")?])),
        };
        let all = scope(limited.clone(), None)?;
        assert!(all.sees(&Workspace::new("team-a")?));
        assert!(!all.sees(&Workspace::new("team-b")?));
        let refused = scope(limited.clone(), Some("team-b".into())).err();
        assert!(
            matches!(&refused, Some(ApiError(StatusCode::FORBIDDEN, why)) if why.contains("team-a")),
            "{refused:?}"
        );
        let bad = scope(limited, Some("Not A Workspace!".into())).err();
        assert!(matches!(bad, Some(ApiError(StatusCode::BAD_REQUEST, _))));
        let operator = TokenHolder {
            name: "ops".into(),
            workspaces: None,
        };
        let one = scope(operator.clone(), Some("team-b".into()))?;
        assert!(one.sees(&Workspace::new("team-b")?) && !one.sees(&Workspace::new("team-a")?));
        assert!(scope(operator, None)?.sees(&Workspace::new("anything")?));
        Ok(())
    }

    #[test]
    fn every_file_is_served_with_its_type_and_policy() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        for name in asset_names() {
            let r = rt.block_on(page(Some(axum::extract::Path(name.to_owned()))));
            assert_eq!(r.status(), StatusCode::OK, "{name}");
            assert!(r.headers().contains_key(header::CONTENT_SECURITY_POLICY));
        }
        let index = rt.block_on(page(None));
        assert_eq!(
            index.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        let missing = rt.block_on(page(Some(axum::extract::Path("../Cargo.toml".into()))));
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    }
}
