//! The subcommands.

use std::path::PathBuf;
use std::time::Duration;

use fleet_client::credentials::{self as seal, Expected, SignerKey};
use fleet_core::ids::{ClaimId, JobId, PoolName, RunId, Workspace};
use fleet_core::protocol::{
    ClaimRequest, DEFAULT_LEASE_TTL_MS, JobMsg, JobReply, NewTokenRequest, Receipt, Requirements,
    RunAction, RunInfo, RunSpec, RunStatus, Score, Scorer, SealedCredentials, TaskResult, TaskSpec,
    Verdict,
};
use fleet_core::transport::{ClaimClient, ClaimError};
use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::args::{ClaimArgs, Command, CostBy, Explain, Jobs, Runs, Token, VerdictResult};
#[cfg(feature = "doctor")]
use crate::doctor;
use crate::render::{self, now_ms};
use crate::{Context, CtlError, claimdir, exec, fail, read_text};

/// Runs one invocation; returns the process exit code (errors are printed
/// by the caller).
pub async fn run(cli: crate::Cli) -> Result<i32, CtlError> {
    let ctx = Context::new(cli.global);
    let json = ctx.global.json;
    match cli.command {
        Command::Completions { shell } => {
            crate::args::completions(shell, &mut std::io::stdout());
            Ok(0)
        }
        Command::Status => show(&ctx, ctx.api()?.status().await?, render::status),
        Command::Diagnose => {
            let d = ctx.api()?.diagnose().await?;
            let errors = d
                .findings
                .iter()
                .any(|f| f.severity == fleet_core::protocol::Severity::Error);
            show(&ctx, d, render::diagnosis)?;
            Ok(i32::from(errors))
        }
        Command::Leader => show(&ctx, ctx.api()?.leader().await?, |l| {
            render::leader(l, now_ms())
        }),
        Command::ReplayStatus => show(&ctx, ctx.api()?.replay_status().await?, |r| {
            render::replay_status(r)
        }),
        Command::Explain(Explain::Pool { name }) => {
            let pool = PoolName::new(name.clone()).map_err(|e| invalid("pool", &name, e))?;
            show(&ctx, ctx.api()?.explain_pool(&pool).await?, |e| {
                render::explain_pool(e)
            })
        }
        Command::History { claim } => {
            let id = ClaimId::new(claim.clone()).map_err(|e| invalid("claim", &claim, e))?;
            show(&ctx, ctx.api()?.claim_history(&id).await?, |h| {
                render::claim_history(h)
            })
        }
        Command::BackupKey { file } => crate::backup::keygen(&ctx, &file),
        Command::Backup {
            recipients,
            recipients_file,
            out,
        } => crate::backup::backup(&ctx, recipients, recipients_file.as_deref(), &out).await,
        Command::Restore { identity, backup } => crate::backup::restore(&ctx, &identity, &backup),
        Command::Pools => show(&ctx, ctx.api()?.pools().await?, |p| render::pools(p)),
        Command::Nodes => show(&ctx, ctx.api()?.nodes().await?, |n| {
            render::nodes(n, now_ms())
        }),
        Command::Claims => show(&ctx, ctx.api()?.claims().await?, |c| {
            render::claims(c, now_ms())
        }),
        Command::Cost { by } => {
            let by = by.unwrap_or(CostBy::Pool);
            let report = ctx.api()?.costs(by.into()).await?;
            match by {
                CostBy::Pool => show(&ctx, report, render::cost),
                CostBy::Workspace => show(&ctx, report, render::cost_by_workspace),
                CostBy::Claim => show(&ctx, report, render::cost_by_claim),
            }
        }
        Command::Jobs(Jobs::List) => show(&ctx, ctx.api()?.jobs().await?, |j| render::jobs(j)),
        Command::Runs(cmd) => runs(&ctx, cmd).await,
        Command::Token(Token::Create { name, workspaces }) => {
            let workspaces = workspaces
                .map(|w| {
                    w.iter()
                        .map(|ws| {
                            Workspace::new(ws.clone()).map_err(|e| invalid("workspace", ws, e))
                        })
                        .collect::<Result<Vec<_>, _>>()
                })
                .transpose()?;
            let minted = ctx
                .api()?
                .create_token(&NewTokenRequest { name, workspaces })
                .await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string(&minted).map_err(|e| fail(e.to_string()))?
                );
            } else {
                let name = &minted.name;
                match &minted.workspaces {
                    Some(w) => eprintln!(
                        "API token {name:?} for workspaces {} (the claim plane and the console, for those workspaces only; shown once; store it now):",
                        w.iter()
                            .map(Workspace::as_str)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    None => eprintln!("API token {name:?} (operator; shown once; store it now):"),
                }
                println!("{}", minted.token.expose());
            }
            Ok(0)
        }
        Command::Claim(args) => claim(&ctx, args).await,
        Command::Exec { id, dir, argv } => {
            let dir = dir.unwrap_or_else(|| ctx.claim_dir(&id));
            let creds = claimdir::read_credentials(&dir)?;
            if creds.info.claim_id != id {
                return Err(fail(format!(
                    "{} holds claim {:?}, not {id:?}",
                    dir.display(),
                    creds.info.claim_id
                )));
            }
            exec::run(&creds, argv).await
        }
        Command::Release { id, workspace, dir } => {
            let (claim, ws) = claim_and_workspace(&ctx, &id, workspace, dir).await?;
            let client = ctx.claim_client().await?;
            client
                .release(&ws, &claim)
                .await
                .map_err(|e| claim_error("release", &id, e))?;
            if json {
                println!("{}", json!({ "claim_id": id, "released": true }));
            } else {
                println!("released {id}");
            }
            Ok(0)
        }
        Command::Renew { id, workspace, dir } => renew(&ctx, &id, workspace, dir).await,
        Command::Jobs(Jobs::Submit {
            pool,
            workspace,
            id,
            scorer,
            spec,
            watch,
            argv,
        }) => {
            let job = NewJob {
                pool,
                workspace,
                id,
                scorer,
                spec,
                argv,
            };
            jobs_submit(&ctx, job, watch).await
        }
        Command::Jobs(Jobs::Artifacts { id, workspace }) => {
            let list = ctx
                .api()?
                .job_artifacts(&job_workspace(&workspace)?, &job_id(&id)?)
                .await?;
            show(&ctx, list, |l| render::artifacts(l))
        }
        Command::Jobs(Jobs::Artifact {
            id,
            name,
            workspace,
            output,
        }) => {
            let bytes = ctx
                .api()?
                .job_artifact(&job_workspace(&workspace)?, &job_id(&id)?, &name)
                .await?;
            match output {
                Some(path) => std::fs::write(&path, &bytes)
                    .map_err(|e| fail(format!("{}: {e}", path.display())))?,
                None => {
                    use std::io::Write as _;
                    std::io::stdout()
                        .write_all(&bytes)
                        .map_err(|e| fail(format!("stdout: {e}")))?;
                }
            }
            Ok(0)
        }
        Command::Jobs(Jobs::Cancel { id, workspace }) => {
            let msg = JobMsg::Cancel {
                workspace: job_workspace(&workspace)?,
                job: job_id(&id)?,
            };
            job_request(&ctx, "cancel", &id, msg).await
        }
        Command::Jobs(Jobs::Verdict {
            id,
            workspace,
            result,
            score,
            max,
            notes,
        }) => {
            let result = match result {
                VerdictResult::Pass => TaskResult::Pass,
                VerdictResult::Partial => TaskResult::Partial,
                VerdictResult::Fail => TaskResult::Fail,
                VerdictResult::Skip => TaskResult::Skip,
            };
            let value = score.unwrap_or(if result == TaskResult::Pass { max } else { 0.0 });
            let verdict = Verdict {
                result,
                score: Score {
                    value,
                    max: Some(max),
                    notes,
                },
            };
            if let Some(why) = verdict.invalid() {
                return Err(CtlError::Usage(why));
            }
            let msg = JobMsg::Verdict {
                workspace: job_workspace(&workspace)?,
                job: job_id(&id)?,
                verdict,
            };
            job_request(&ctx, "verdict", &id, msg).await
        }
        Command::Jobs(Jobs::Watch {
            id,
            workspace,
            interval_ms,
        }) => jobs_watch(&ctx, &id, workspace.as_deref(), interval_ms).await,
        #[cfg(feature = "doctor")]
        Command::Doctor => Ok(doctor::run(&ctx).await),
    }
}

/// Prints an answer of the API as a table or as its JSON.
fn show<T: serde::Serialize>(
    ctx: &Context,
    answer: T,
    human: impl Fn(&T) -> String,
) -> Result<i32, CtlError> {
    if ctx.global.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&answer).map_err(|e| fail(e.to_string()))?
        );
    } else {
        print!("{}", human(&answer));
    }
    Ok(0)
}

fn invalid(what: &str, value: &str, e: impl std::fmt::Display) -> CtlError {
    CtlError::Usage(format!("{what} {value:?}: {e}"))
}

fn claim_error(call: &str, id: &str, e: ClaimError) -> CtlError {
    fail(format!("{call} {id}: {e}"))
}

/// The claim and its workspace: `--workspace`, else the claim's files
/// (written when it was granted), else the daemon's record of it.
async fn claim_and_workspace(
    ctx: &Context,
    id: &str,
    workspace: Option<String>,
    dir: Option<PathBuf>,
) -> Result<(ClaimId, Workspace), CtlError> {
    let claim = ClaimId::new(id.to_owned()).map_err(|e| invalid("claim id", id, e))?;
    let ws = match workspace {
        Some(w) => w,
        None => {
            let dir = dir.unwrap_or_else(|| ctx.claim_dir(id));
            match claimdir::read_info(&dir) {
                Ok(info) => info.workspace,
                // Never granted (still pending, or refused), or claimed
                // elsewhere: there are no files, but the daemon has the claim.
                Err(no_files) => {
                    return Ok((claim.clone(), workspace_of(ctx, &claim, no_files).await?));
                }
            }
        }
    };
    let ws = Workspace::new(ws.clone()).map_err(|e| invalid("workspace", &ws, e))?;
    Ok((claim, ws))
}

/// The workspace of `claim` as the daemon stores it (`GET /v1/claims`).
async fn workspace_of(
    ctx: &Context,
    claim: &ClaimId,
    no_files: CtlError,
) -> Result<Workspace, CtlError> {
    let claims = match ctx.api() {
        Ok(api) => api.claims().await,
        Err(e) => Err(e),
    }
    .map_err(|e| {
        fail(format!(
            "{no_files}; asking the daemon for claim {claim}: {e}; or pass --workspace"
        ))
    })?;
    claims
        .into_iter()
        .find(|c| &c.request.claim_id == claim)
        .map(|c| c.request.workspace)
        .ok_or_else(|| {
            fail(format!(
                "claim {claim}: the daemon has no such claim (it was refused before it was \
                 stored, or ended long enough ago to be forgotten), and {no_files}"
            ))
        })
}

/// Renews the lease; when the daemon sends credentials for the new lease,
/// they are verified and the claim's files rewritten, so `exec` keeps
/// working past the first certificate's expiry.
async fn renew(
    ctx: &Context,
    id: &str,
    workspace: Option<String>,
    dir: Option<PathBuf>,
) -> Result<i32, CtlError> {
    let dir = dir.unwrap_or_else(|| ctx.claim_dir(id));
    let (claim, ws) = claim_and_workspace(ctx, id, workspace, Some(dir.clone())).await?;
    let signer = daemon_signer(ctx)?;
    let client = ctx.claim_client().await?;
    let renewal = client
        .renew(&ws, &claim)
        .await
        .map_err(|e| claim_error("renew", id, e))?;
    let refreshed = match &renewal.credentials {
        Some(sealed) => {
            let pool = claimdir::read_info(&dir).ok().and_then(|i| i.pool);
            let identity = claimdir::load_age_key(&dir)?;
            open_and_store(&signer, &dir, &claim, sealed, &identity, pool)?;
            true
        }
        None => false,
    };
    if ctx.global.json {
        println!(
            "{}",
            json!({
                "claim_id": id,
                "expires_at": renewal.expires_at,
                "credentials_renewed": refreshed,
            })
        );
    } else {
        println!(
            "renewed {id}: lease expires {}{}",
            render::expiry(renewal.expires_at, now_ms()),
            if refreshed {
                format!("; new certificate in {}", dir.display())
            } else {
                String::new()
            }
        );
    }
    Ok(0)
}

/// The daemon's signing key, from its discovery file.
fn daemon_signer(ctx: &Context) -> Result<SignerKey, CtlError> {
    let discovery = ctx.discovery()?;
    let signer_text = read_text(&discovery.signer_file, "daemon signer key")?;
    SignerKey::from_base64(&signer_text).map_err(|e| {
        fail(format!(
            "daemon signer key {}: {e}",
            discovery.signer_file.display()
        ))
    })
}

/// Verifies `sealed` (the daemon's signature, this claim, this recipient),
/// decrypts it with `identity` and writes the claim's files into `dir`.
fn open_and_store(
    signer: &SignerKey,
    dir: &std::path::Path,
    claim_id: &ClaimId,
    sealed: &SealedCredentials,
    identity: &age::x25519::Identity,
    pool: Option<String>,
) -> Result<(), CtlError> {
    let recipient = identity.to_public().to_string();
    let bundle = seal::open(
        sealed,
        identity,
        &Expected {
            claim_id,
            recipient: &recipient,
            // The certificate expiry the seal names (a lease may outlive it).
            expires_at: sealed.expires_at,
            signer,
        },
    )
    .map_err(|e| {
        fail(format!(
            "claim {claim_id}: the credentials do not verify: {e}"
        ))
    })?;
    claimdir::write_claim(dir, &bundle, pool)
}

async fn claim(ctx: &Context, a: ClaimArgs) -> Result<i32, CtlError> {
    let id = match a.id {
        Some(id) => id,
        None => crate::random_id("c")?,
    };
    let claim_id = ClaimId::new(id.clone()).map_err(|e| invalid("claim id", &id, e))?;
    let workspace =
        Workspace::new(a.workspace.clone()).map_err(|e| invalid("workspace", &a.workspace, e))?;
    let pool = PoolName::new(a.pool.clone()).map_err(|e| invalid("pool", &a.pool, e))?;
    let signer = daemon_signer(ctx)?;
    let dir = a.out.clone().unwrap_or_else(|| ctx.claim_dir(&id));
    claimdir::create_dir(&dir)?;
    // Kept (0600) before the request: a retry with the same id gets the
    // same grant, sealed to this key.
    let age_identity = claimdir::load_or_create_age_key(&dir)?;
    let recipient = age_identity.to_public().to_string();
    let req = ClaimRequest {
        claim_id: claim_id.clone(),
        workspace,
        pool,
        requirements: Requirements {
            cpus: a.cpus,
            memory_mb: a.memory_mb,
            ..Requirements::default()
        },
        priority: a.priority,
        lease_ttl_ms: a.lease_ms.unwrap_or(DEFAULT_LEASE_TTL_MS),
        max_wait_ms: a.wait_ms,
        recipient: Some(recipient.clone()),
        affinity: None,
    };
    let client = ctx.claim_client().await?;
    if !ctx.global.json {
        eprintln!("claiming {id} in pool {} …", a.pool);
    }
    let grant = client
        .claim(req)
        .await
        .map_err(|e| claim_error("claim", &id, e))?;
    let sealed = grant.credentials.as_ref().ok_or_else(|| {
        fail(format!(
            "claim {id} was granted on {} without credentials",
            grant.node
        ))
    })?;
    open_and_store(
        &signer,
        &dir,
        &claim_id,
        sealed,
        &age_identity,
        Some(a.pool.clone()),
    )?;
    if ctx.global.json {
        println!(
            "{}",
            json!({
                "claim_id": id,
                "workspace": a.workspace,
                "pool": a.pool,
                "node": grant.node.to_string(),
                "endpoint": grant.endpoint,
                "expires_at": grant.lease.expires_at,
                "epoch": grant.epoch.0,
                "dir": dir.display().to_string(),
            })
        );
    } else {
        let rows = vec![
            vec!["claim".to_owned(), id.clone()],
            vec!["node".to_owned(), grant.node.to_string()],
            vec!["endpoint".to_owned(), grant.endpoint.clone()],
            vec![
                "expires".to_owned(),
                render::expiry(grant.lease.expires_at, now_ms()),
            ],
            vec!["files".to_owned(), dir.display().to_string()],
        ];
        for r in rows {
            println!("{:<10}{}", r[0], r[1]);
        }
    }
    Ok(0)
}

/// One line for a worker event; heartbeats are not shown.
fn event_line(attempt: u32, event: &fleet_core::protocol::WorkerEvent) -> Option<String> {
    let mut v = serde_json::to_value(event).unwrap_or(Value::Null);
    let state = render::label(v.get("state"));
    if state == "heartbeat" {
        return None;
    }
    if let Some(o) = v.as_object_mut() {
        o.remove("state");
    }
    let detail = match &v {
        Value::Object(o) if o.is_empty() => String::new(),
        other => format!(" {other}"),
    };
    Some(format!("attempt {attempt}: {state}{detail}"))
}

fn receipt_code(r: &Receipt) -> i32 {
    match r.result {
        TaskResult::Pass => 0,
        _ => 1,
    }
}

fn receipt_line(r: &Receipt) -> String {
    let v = serde_json::to_value(r).unwrap_or(Value::Null);
    let mut s = format!(
        "finished {}: {} after {} attempt(s)",
        r.job,
        render::label(v.get("result")),
        r.attempts
    );
    if let Some(c) = r.exit_code {
        s.push_str(&format!(", exit code {c}"));
    }
    if let Some(score) = &r.score {
        s.push_str(&format!(", score {}", render::score(score)));
        if let Some(notes) = &score.notes {
            s.push_str(&format!(" ({notes})"));
        }
    }
    if let Some(why) = &r.reason {
        s.push_str(&format!(" ({why})"));
    }
    s
}

/// `jobs submit`'s task.
struct NewJob {
    pool: String,
    workspace: String,
    id: Option<String>,
    scorer: Option<String>,
    spec: Option<std::path::PathBuf>,
    argv: Vec<String>,
}

fn job_workspace(w: &str) -> Result<Workspace, CtlError> {
    Workspace::new(w).map_err(|e| CtlError::Usage(format!("--workspace: {e}")))
}

fn job_id(id: &str) -> Result<JobId, CtlError> {
    JobId::new(id).map_err(|e| CtlError::Usage(format!("job id: {e}")))
}

/// Sends a job message that the daemon answers once (`accepted` or
/// `rejected`).
async fn job_request(ctx: &Context, call: &str, id: &str, msg: JobMsg) -> Result<i32, CtlError> {
    let client = ctx.claim_client().await?;
    let mut replies = client
        .job(msg)
        .await
        .map_err(|e| fail(format!("{call} {id}: {e}")))?;
    match replies.next().await {
        Some(JobReply::Accepted { job }) => {
            if ctx.global.json {
                println!("{}", json!({ "job": job, call: "accepted" }));
            } else {
                println!("{call} accepted for {job}");
            }
            Ok(0)
        }
        Some(JobReply::Rejected { why, .. }) => Err(fail(format!("{call} {id} rejected: {why}"))),
        Some(other) => Err(fail(format!("{call} {id}: unexpected answer {other:?}"))),
        None => Err(fail(format!(
            "{call} {id}: the connection closed before the daemon answered"
        ))),
    }
}

async fn jobs_submit(ctx: &Context, job: NewJob, watch: bool) -> Result<i32, CtlError> {
    let id = match job.id {
        Some(id) => id,
        None => crate::random_id("j")?,
    };
    let scorer: Option<Scorer> = job
        .scorer
        .as_deref()
        .map(serde_json::from_str)
        .transpose()
        .map_err(|e| CtlError::Usage(format!("--scorer: {e}")))?;
    let mut fields = match &job.spec {
        Some(path) => {
            let text = read_text(path, "task spec")?;
            match serde_json::from_str::<Value>(&text) {
                Ok(Value::Object(o)) => o,
                Ok(_) => {
                    return Err(CtlError::Usage(format!(
                        "--spec {}: not a JSON object",
                        path.display()
                    )));
                }
                Err(e) => return Err(CtlError::Usage(format!("--spec {}: {e}", path.display()))),
            }
        }
        None => serde_json::Map::new(),
    };
    fields.insert("id".into(), json!(id));
    fields.insert("workspace".into(), json!(job.workspace));
    fields.insert("pool".into(), json!(job.pool));
    fields.insert("argv".into(), json!(job.argv));
    if let Some(scorer) = scorer {
        fields.insert("scorer".into(), json!(scorer));
    }
    let spec: TaskSpec = serde_json::from_value(Value::Object(fields))
        .map_err(|e| CtlError::Usage(format!("job: {e}")))?;
    let client = ctx.claim_client().await?;
    let mut replies = client
        .job(JobMsg::Submit(Box::new(spec)))
        .await
        .map_err(|e| fail(format!("submit {id}: {e}")))?;
    let json = ctx.global.json;
    let mut accepted = false;
    while let Some(reply) = replies.next().await {
        if json {
            println!(
                "{}",
                serde_json::to_string(&reply).map_err(|e| fail(e.to_string()))?
            );
        }
        match reply {
            JobReply::Accepted { job } => {
                accepted = true;
                if !json {
                    println!("accepted {job}");
                }
                if !watch {
                    return Ok(0);
                }
            }
            JobReply::Event { attempt, event, .. } if !json => {
                if let Some(line) = event_line(attempt, &event) {
                    println!("{line}");
                }
            }
            JobReply::Output { stream, data, .. } if !json => {
                use std::io::Write as _;
                let _ = match stream {
                    fleet_core::protocol::OutputStream::Stderr => {
                        std::io::stderr().write_all(data.as_bytes())
                    }
                    _ => std::io::stdout().write_all(data.as_bytes()),
                };
            }
            JobReply::Finished(receipt) => {
                if !json {
                    println!("{}", receipt_line(&receipt));
                }
                return Ok(receipt_code(&receipt));
            }
            JobReply::Rejected { why, .. } => {
                return Err(fail(format!("job {id} rejected: {why}")));
            }
            _ => {}
        }
    }
    Err(fail(if accepted {
        format!("lost the connection while watching {id}; continue with `fleetctl jobs watch {id}`")
    } else {
        format!("submit {id}: the connection closed before the daemon answered")
    }))
}

async fn jobs_watch(
    ctx: &Context,
    id: &str,
    workspace: Option<&str>,
    interval_ms: u64,
) -> Result<i32, CtlError> {
    // A floor, so a typo cannot turn the watch into a busy loop on the API.
    let interval_ms = interval_ms.max(50);
    let api = ctx.api()?;
    let mut last: Option<(String, String)> = None;
    let mut seen = false;
    let started = now_ms();
    loop {
        let jobs = api.jobs().await?;
        let found = jobs.iter().find(|j| {
            j.spec.id.as_str() == id && workspace.is_none_or(|w| j.spec.workspace.as_str() == w)
        });
        match found {
            None if seen => return Err(fail(format!("job {id} is no longer listed"))),
            None if now_ms().saturating_sub(started) > 10_000 => {
                return Err(fail(format!("no job {id}")));
            }
            None => {}
            Some(j) => {
                seen = true;
                let state = j.state.name().to_owned();
                let attempts = j.attempts.to_string();
                let now = (state.clone(), attempts.clone());
                if last.as_ref() != Some(&now) {
                    if ctx.global.json {
                        println!(
                            "{}",
                            serde_json::to_string(j).map_err(|e| fail(e.to_string()))?
                        );
                    } else {
                        println!(
                            "{} {id}: {state} (attempt {attempts})",
                            render::utc(now_ms())
                        );
                    }
                    last = Some(now);
                }
                if matches!(state.as_str(), "done" | "cancelled") {
                    return Ok(match &j.receipt {
                        Some(r) => {
                            if !ctx.global.json {
                                println!("{}", receipt_line(r));
                            }
                            receipt_code(r)
                        }
                        None => 1,
                    });
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(interval_ms)).await;
    }
}

/// `fleetctl runs …`, through the HTTP API.
async fn runs(ctx: &Context, cmd: Runs) -> Result<i32, CtlError> {
    let api = ctx.api()?;
    let target = |id: &str, ws: &str| -> Result<(Workspace, RunId), CtlError> {
        let run = RunId::new(id).map_err(|e| CtlError::Usage(format!("run id: {e}")))?;
        Ok((job_workspace(ws)?, run))
    };
    let (id, workspace, action) = match cmd {
        Runs::List => return show(ctx, api.runs().await?, |r| render::runs(r)),
        Runs::Show { id, workspace } => {
            let (ws, run) = target(&id, &workspace)?;
            return show(ctx, api.run(&ws, &run).await?, render::run);
        }
        Runs::Submit { file, watch } => {
            let text = if file.as_os_str() == "-" {
                let mut text = String::new();
                let mut stdin = std::io::Read::take(std::io::stdin(), 4 << 20);
                std::io::Read::read_to_string(&mut stdin, &mut text)
                    .map_err(|e| fail(format!("run from stdin: {e}")))?;
                text
            } else {
                read_text(&file, "run")?
            };
            let spec: RunSpec = serde_json::from_str(&text)
                .map_err(|e| CtlError::Usage(format!("run {}: {e}", file.display())))?;
            let info = api.submit_run(&spec).await?;
            if !watch {
                return show(ctx, info, render::run);
            }
            return runs_watch(ctx, &info.workspace, &info.id, 1_000).await;
        }
        Runs::Watch {
            id,
            workspace,
            interval_ms,
        } => {
            let (ws, run) = target(&id, &workspace)?;
            return runs_watch(ctx, &ws, &run, interval_ms).await;
        }
        Runs::Pause { id, workspace } => (id, workspace, RunAction::Pause),
        Runs::Resume { id, workspace } => (id, workspace, RunAction::Resume),
        Runs::Cancel { id, workspace } => (id, workspace, RunAction::Cancel),
    };
    let (ws, run) = target(&id, &workspace)?;
    let info = api.run_action(&ws, &run, action).await?;
    show(ctx, info, render::run)
}

/// Polls a run until it ends, printing each change of its status or of a
/// task's state; 0 if it completed, 1 otherwise.
async fn runs_watch(
    ctx: &Context,
    ws: &Workspace,
    run: &RunId,
    interval_ms: u64,
) -> Result<i32, CtlError> {
    let interval_ms = interval_ms.max(50);
    let api = ctx.api()?;
    let mut last: Option<RunInfo> = None;
    loop {
        let info = api.run(ws, run).await?;
        if ctx.global.json {
            if last.as_ref() != Some(&info) {
                println!(
                    "{}",
                    serde_json::to_string(&info).map_err(|e| fail(e.to_string()))?
                );
            }
        } else {
            let at = render::utc(now_ms());
            if last.as_ref().is_none_or(|l| l.status != info.status) {
                println!("{at} run {run}: {}", info.status);
            }
            for t in &info.tasks {
                let before = last
                    .as_ref()
                    .and_then(|l| l.tasks.iter().find(|o| o.job == t.job));
                if before.is_none_or(|b| (&b.state, b.attempts) != (&t.state, t.attempts)) {
                    let result = t.result.as_ref().map(|r| format!(" {}", render::tag(r)));
                    println!(
                        "{at}   {}: {} (attempt {}){}",
                        t.job,
                        t.state,
                        t.attempts,
                        result.unwrap_or_default()
                    );
                }
            }
        }
        if info.status.is_terminal() {
            return Ok(i32::from(info.status != RunStatus::Completed));
        }
        last = Some(info);
        tokio::time::sleep(Duration::from_millis(interval_ms)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_task_spec_builds_from_the_flags() {
        let spec: Result<TaskSpec, _> = serde_json::from_value(json!({
            "id": "j-1", "workspace": "w", "pool": "p", "argv": ["echo", "hi"],
        }));
        assert!(spec.is_ok(), "{spec:?}");
    }
}
