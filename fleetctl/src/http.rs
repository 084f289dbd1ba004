//! The daemon's HTTP API, typed: one call per path, each answer decoded
//! into its `fleet_core::protocol` type (see that module's `http` table).
//!
//! Requests go through `reqwest` with rustls on ring: `http://` for the
//! loopback API, `https://` verified against the pool CA (the daemon serves
//! its API over TLS whenever it listens beyond loopback) and the system's
//! roots (an API behind a TLS proxy). A token is never sent in clear text
//! beyond loopback: an `http://` URL naming another host is refused before
//! anything is sent. No proxy from the environment is used (the requests
//! carry the operator's token). Every request has a timeout and an answer
//! is read up to a size limit.

use std::fmt;
use std::time::Duration;

use fleet_core::ids::{JobId, RunId, Workspace};
use fleet_core::protocol::{
    API_BACKUP_PATH, API_RUNS_PATH, BackupRequest, RunAction, RunInfo, RunSpec, api_run_path,
};
use fleet_core::protocol::{
    API_CLAIMS_PATH, API_COSTS_PATH, API_JOBS_PATH, API_NODES_PATH, API_POOLS_PATH,
    API_STATUS_PATH, API_TOKENS_PATH, ApiErrorBody, ArtifactInfo, ClaimRecord, CostGrouping,
    CostReport, JobRecord, NewToken, NewTokenRequest, NodeStatus, PoolInfo, Secret, StatusSummary,
    api_job_artifacts_path,
};
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{CtlError, fail};

/// The largest response accepted.
pub const MAX_RESPONSE_BYTES: usize = 32 << 20;
/// The largest artifact `jobs artifact` downloads.
pub const MAX_ARTIFACT_BYTES: usize = 1 << 30;
/// How long one request may take, the answer's body included.
pub const TIMEOUT: Duration = Duration::from_secs(30);
/// How long connecting may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The daemon's HTTP API.
#[derive(Clone)]
pub struct Api {
    base: String,
    client: reqwest::Client,
    token: Option<Secret>,
}

impl fmt::Debug for Api {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Api")
            .field("base", &self.base)
            .field("token", &self.token.is_some())
            .finish()
    }
}

/// A response: its status and its body, read within the limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Body.
    pub body: Vec<u8>,
}

impl Api {
    /// An API client for `base` (`http[s]://host:port[/prefix]`).
    pub fn new(base: &str, token: Option<Secret>) -> Result<Api, CtlError> {
        Api::with_ca(base, token, None)
    }

    /// An API client for `base` that also trusts `ca_pem` (the pool CA the
    /// daemon's HTTPS certificate comes from) for `https://`.
    ///
    /// Refuses an `http://` URL whose host is not a loopback address when
    /// there is a token to send: it would cross the network in clear text.
    pub fn with_ca(
        base: &str,
        token: Option<Secret>,
        ca_pem: Option<&str>,
    ) -> Result<Api, CtlError> {
        let url = reqwest::Url::parse(base).map_err(|e| fail(format!("{base}: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(fail(format!(
                "{base}: not an http:// or https:// URL (the API listens on http://127.0.0.1:7080 by default)"
            )));
        }
        let Some(host) = url.host().filter(|h| !matches!(h, url::Host::Domain(""))) else {
            return Err(fail(format!("{base}: no host")));
        };
        if url.scheme() == "http" && token.is_some() && !is_loopback(&host) {
            return Err(fail(format!(
                "{base}: refusing to send the API token in clear text to {host}; use https:// \
                 (the daemon serves its API over TLS when it listens beyond loopback)"
            )));
        }
        // reqwest's rustls backend takes the process's crypto provider; this
        // build has ring only. Installing fails harmlessly when one already is.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            .no_proxy()
            .user_agent(concat!("fleetctl/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = ca_pem {
            for cert in reqwest::Certificate::from_pem_bundle(pem.as_bytes())
                .map_err(|e| fail(format!("the daemon's CA certificate: {}", cause(&e))))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder
            .build()
            .map_err(|e| fail(format!("cannot set up the HTTP client: {}", cause(&e))))?;
        Ok(Api {
            base: base.trim_end_matches('/').to_owned(),
            client,
            token,
        })
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET /v1/status`.
    pub async fn status(&self) -> Result<StatusSummary, CtlError> {
        self.get(API_STATUS_PATH).await
    }

    /// `GET /v1/diagnose`.
    pub async fn diagnose(&self) -> Result<fleet_core::protocol::Diagnosis, CtlError> {
        self.get(fleet_core::protocol::API_DIAGNOSE_PATH).await
    }

    /// `GET /v1/leader`.
    pub async fn leader(&self) -> Result<fleet_core::protocol::LeaderInfo, CtlError> {
        self.get(fleet_core::protocol::API_LEADER_PATH).await
    }

    /// `GET /v1/replay-status`.
    pub async fn replay_status(&self) -> Result<fleet_core::protocol::ReplayStatus, CtlError> {
        self.get(fleet_core::protocol::API_REPLAY_STATUS_PATH).await
    }

    /// `GET /v1/pools`.
    pub async fn pools(&self) -> Result<Vec<PoolInfo>, CtlError> {
        self.get(API_POOLS_PATH).await
    }

    /// `GET /v1/nodes`.
    pub async fn nodes(&self) -> Result<Vec<NodeStatus>, CtlError> {
        self.get(API_NODES_PATH).await
    }

    /// `GET /v1/claims`.
    pub async fn claims(&self) -> Result<Vec<ClaimRecord>, CtlError> {
        self.get(API_CLAIMS_PATH).await
    }

    /// `GET /v1/jobs`.
    pub async fn jobs(&self) -> Result<Vec<JobRecord>, CtlError> {
        self.get(API_JOBS_PATH).await
    }

    /// `GET /v1/runs`.
    pub async fn runs(&self) -> Result<Vec<RunInfo>, CtlError> {
        self.get(API_RUNS_PATH).await
    }

    /// `GET /v1/runs/<ws>/<run>`.
    pub async fn run(&self, ws: &Workspace, run: &RunId) -> Result<RunInfo, CtlError> {
        self.get(&api_run_path(ws, run)).await
    }

    /// `POST /v1/runs`: the run as accepted.
    pub async fn submit_run(&self, spec: &RunSpec) -> Result<RunInfo, CtlError> {
        let r = self
            .request(Method::POST, API_RUNS_PATH, Some(spec))
            .await?;
        self.decode(&Method::POST, API_RUNS_PATH, r)
    }

    /// `POST /v1/runs/<ws>/<run>/<action>`: the run after it.
    pub async fn run_action(
        &self,
        ws: &Workspace,
        run: &RunId,
        action: RunAction,
    ) -> Result<RunInfo, CtlError> {
        let path = format!("{}/{}", api_run_path(ws, run), action.name());
        let r = self.request::<()>(Method::POST, &path, None).await?;
        self.decode(&Method::POST, &path, r)
    }

    /// `GET /v1/costs?by=…`.
    pub async fn costs(&self, by: CostGrouping) -> Result<CostReport, CtlError> {
        self.get(&format!("{API_COSTS_PATH}?by={by}")).await
    }

    /// `POST /v1/tokens`.
    pub async fn create_token(&self, req: &NewTokenRequest) -> Result<NewToken, CtlError> {
        let r = self
            .request(Method::POST, API_TOKENS_PATH, Some(req))
            .await?;
        self.decode(&Method::POST, API_TOKENS_PATH, r)
    }

    /// `GET /v1/pools/<pool>/explain`.
    pub async fn explain_pool(
        &self,
        pool: &fleet_core::PoolName,
    ) -> Result<fleet_core::protocol::PoolExplain, CtlError> {
        self.get(&fleet_core::protocol::api_pool_explain_path(pool))
            .await
    }

    /// `GET /v1/claims/<claim>/history`.
    pub async fn claim_history(
        &self,
        claim: &fleet_core::ClaimId,
    ) -> Result<fleet_core::protocol::ClaimHistory, CtlError> {
        self.get(&fleet_core::protocol::api_claim_history_path(claim))
            .await
    }

    /// `POST /v1/backup`: the age-encrypted backup's bytes.
    pub async fn backup(&self, req: &BackupRequest) -> Result<Vec<u8>, CtlError> {
        let r = self
            .request_within(Method::POST, API_BACKUP_PATH, Some(req), MAX_ARTIFACT_BYTES)
            .await?;
        check_status("POST", &format!("{}{API_BACKUP_PATH}", self.base), &r)?;
        Ok(r.body)
    }

    /// `GET path`, expecting 2xx and a `T`.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, CtlError> {
        let r = self.request::<()>(Method::GET, path, None).await?;
        self.decode(&Method::GET, path, r)
    }

    /// `GET /v1/jobs/<ws>/<job>/artifacts`.
    pub async fn job_artifacts(
        &self,
        ws: &Workspace,
        job: &JobId,
    ) -> Result<Vec<ArtifactInfo>, CtlError> {
        self.get(&api_job_artifacts_path(ws, job)).await
    }

    /// `GET /v1/jobs/<ws>/<job>/artifacts/<name>`: the file's bytes.
    pub async fn job_artifact(
        &self,
        ws: &Workspace,
        job: &JobId,
        name: &str,
    ) -> Result<Vec<u8>, CtlError> {
        let path = format!("{}/{name}", api_job_artifacts_path(ws, job));
        let r = self
            .request_within::<()>(Method::GET, &path, None, MAX_ARTIFACT_BYTES)
            .await?;
        check_status("GET", &format!("{}{path}", self.base), &r)?;
        Ok(r.body)
    }

    /// Sends a request; any status is returned.
    pub async fn request<B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<Response, CtlError> {
        self.request_within(method, path, body, MAX_RESPONSE_BYTES)
            .await
    }

    /// [`Api::request`], taking at most `max` bytes of answer.
    async fn request_within<B: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        max: usize,
    ) -> Result<Response, CtlError> {
        let url = format!("{}{path}", self.base);
        let mut req = self
            .client
            .request(method.clone(), &url)
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(t) = &self.token {
            req = req.bearer_auth(t.expose());
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let failed = |e: reqwest::Error| {
            if e.is_connect() {
                fail(format!(
                    "cannot reach the daemon at {}: {} (is it running?)",
                    self.base,
                    cause(&e)
                ))
            } else if e.is_timeout() {
                fail(format!("{method} {url}: no answer within {TIMEOUT:?}"))
            } else {
                fail(format!("{method} {url}: {}", cause(&e)))
            }
        };
        let mut resp = req.send().await.map_err(failed)?;
        let too_large = || fail(format!("{method} {url}: response larger than {max} bytes"));
        if resp.content_length().is_some_and(|n| n > max as u64) {
            return Err(too_large());
        }
        let status = resp.status().as_u16();
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(failed)? {
            if body.len() + chunk.len() > max {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Response { status, body })
    }

    fn decode<T: DeserializeOwned>(
        &self,
        method: &Method,
        path: &str,
        r: Response,
    ) -> Result<T, CtlError> {
        let url = format!("{}{path}", self.base);
        check_status(method.as_str(), &url, &r)?;
        serde_json::from_slice(&r.body).map_err(|e| {
            fail(format!(
                "{method} {url}: the daemon's answer does not read as this fleetctl expects ({e}); \
                 are fleetctl and the daemon the same version?"
            ))
        })
    }
}

/// The innermost cause of a reqwest error ("Connection refused (os error
/// 111)" rather than "error sending request for url …").
fn cause(e: &reqwest::Error) -> String {
    let mut inner: &dyn std::error::Error = e;
    while let Some(next) = inner.source() {
        inner = next;
    }
    inner.to_string()
}

/// A clear error for a non-2xx answer: what the daemon said and, for the
/// answers a person can act on, what to do.
pub fn check_status(method: &str, url: &str, r: &Response) -> Result<(), CtlError> {
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if status.is_success() {
        return Ok(());
    }
    let detail = serde_json::from_slice::<ApiErrorBody>(&r.body)
        .map(|b| b.error)
        .unwrap_or_else(|_| {
            String::from_utf8_lossy(&r.body)
                .chars()
                .take(200)
                .collect::<String>()
        });
    let detail = detail.trim();
    let said = if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    };
    Err(fail(match status {
        StatusCode::UNAUTHORIZED => format!(
            "{method} {url}: the daemon refused the API token (401); pass --token, set FLEET_TOKEN, \
             or check <data dir>/admin.token"
        ),
        StatusCode::FORBIDDEN => format!(
            "{method} {url}: the daemon refused this token here (403){said}; use an operator token \
             (<data dir>/admin.token, or one made with `fleetctl token create NAME` without --workspaces)"
        ),
        StatusCode::SERVICE_UNAVAILABLE => format!(
            "{method} {url}: the daemon cannot answer now (503){said}; it may be starting or \
             stopping (retry), or be a follower (point --url at the leading daemon)"
        ),
        _ => format!("{method} {url}: HTTP {}{said}", r.status),
    }))
}

/// Whether a URL's host is this machine's loopback: `localhost` or a
/// loopback address (`127.0.0.0/8`, `::1`).
fn is_loopback(host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
        url::Host::Ipv4(ip) => ip.is_loopback(),
        url::Host::Ipv6(ip) => ip.is_loopback(),
    }
}
