//! Every name fleet puts on a wire or in a store: NATS subjects, WebSocket
//! message routes and KV keys. Nothing else in the workspace formats one.
//!
//! The namespace is a dot-separated prefix, `fleet` by default; set it to
//! `fleet.libre-forge` and every subject and key moves under that prefix. Claim
//! subjects are `<ns>.claim.<verb>.<workspace>.<claim_id>`, so a NATS
//! permission on `<ns>.claim.*.<workspace>.>` confines a caller to its
//! workspace.

use crate::ids::{ClaimId, IdError, JobId, NodeId, PoolName, Workspace, validate_token};
use crate::store::Key;

/// The default namespace.
pub const DEFAULT_NAMESPACE: &str = "fleet";

/// A claim-plane verb.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ClaimVerb {
    /// Caller → control plane.
    Request,
    /// Control plane → caller.
    Granted,
    /// Caller → control plane.
    Renew,
    /// Caller → control plane.
    Release,
    /// Control plane → caller (confirmation).
    Released,
    /// Control plane → caller.
    Revoked,
}

impl ClaimVerb {
    /// The subject token.
    pub fn token(self) -> &'static str {
        match self {
            ClaimVerb::Request => "request",
            ClaimVerb::Granted => "granted",
            ClaimVerb::Renew => "renew",
            ClaimVerb::Release => "release",
            ClaimVerb::Released => "released",
            ClaimVerb::Revoked => "revoked",
        }
    }

    /// Parses a subject token.
    pub fn from_token(s: &str) -> Option<ClaimVerb> {
        Some(match s {
            "request" => ClaimVerb::Request,
            "granted" => ClaimVerb::Granted,
            "renew" => ClaimVerb::Renew,
            "release" => ClaimVerb::Release,
            "released" => ClaimVerb::Released,
            "revoked" => ClaimVerb::Revoked,
            _ => return None,
        })
    }
}

/// The verb token of a job-plane subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobVerb {
    /// Caller → control plane: `JobMsg` `submit`.
    Submit,
    /// Caller → control plane: `JobMsg` `cancel`.
    Cancel,
    /// Caller → control plane: `JobMsg` `verdict`.
    Verdict,
    /// Caller → control plane: `JobMsg` `submit_run` and `run` (the
    /// subject's last token is the run id).
    Run,
    /// Control plane → watchers: every `JobReply` about the job.
    Events,
}

impl JobVerb {
    /// The verbs a caller sends on.
    pub const REQUESTS: [JobVerb; 4] = [
        JobVerb::Submit,
        JobVerb::Cancel,
        JobVerb::Verdict,
        JobVerb::Run,
    ];

    /// The subject token.
    pub fn token(self) -> &'static str {
        match self {
            JobVerb::Submit => "submit",
            JobVerb::Cancel => "cancel",
            JobVerb::Verdict => "verdict",
            JobVerb::Run => "run",
            JobVerb::Events => "events",
        }
    }

    /// Parses a subject token.
    pub fn from_token(s: &str) -> Option<JobVerb> {
        Some(match s {
            "submit" => JobVerb::Submit,
            "cancel" => JobVerb::Cancel,
            "verdict" => JobVerb::Verdict,
            "run" => JobVerb::Run,
            "events" => JobVerb::Events,
            _ => return None,
        })
    }

    /// The verb a job message travels under.
    pub fn of(msg: &crate::protocol::JobMsg) -> JobVerb {
        use crate::protocol::JobMsg;
        match msg {
            JobMsg::Submit(_) => JobVerb::Submit,
            JobMsg::Cancel { .. } => JobVerb::Cancel,
            JobMsg::Verdict { .. } => JobVerb::Verdict,
            JobMsg::SubmitRun(_) | JobMsg::Run { .. } => JobVerb::Run,
        }
    }
}

/// Builds names under one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    ns: String,
}

impl Default for Subjects {
    fn default() -> Self {
        Subjects {
            ns: DEFAULT_NAMESPACE.to_owned(),
        }
    }
}

impl Subjects {
    /// Names under `namespace` (one or more tokens joined by `.`).
    pub fn new(namespace: &str) -> Result<Subjects, IdError> {
        for part in namespace.split('.') {
            validate_token("namespace segment", part)?;
        }
        Ok(Subjects {
            ns: namespace.to_owned(),
        })
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.ns
    }

    /// `<ns>.claim.<verb>.<workspace>.<claim_id>`.
    pub fn claim(&self, verb: ClaimVerb, ws: &Workspace, id: &ClaimId) -> String {
        format!("{}.claim.{}.{}.{}", self.ns, verb.token(), ws, id)
    }

    /// `<ns>.claim.<verb>.<workspace>.*`: one verb, one workspace.
    pub fn claim_workspace_wildcard(&self, verb: ClaimVerb, ws: &Workspace) -> String {
        format!("{}.claim.{}.{}.*", self.ns, verb.token(), ws)
    }

    /// `<ns>.claim.<verb>.*.*`: one verb, every workspace (the daemon's
    /// subscription).
    pub fn claim_wildcard(&self, verb: ClaimVerb) -> String {
        format!("{}.claim.{}.*.*", self.ns, verb.token())
    }

    /// `<ns>.claim.*.<workspace>.>`: the permission pattern for one workspace.
    pub fn workspace_permission(&self, ws: &Workspace) -> String {
        format!("{}.claim.*.{}.>", self.ns, ws)
    }

    /// Splits a claim subject into its verb, workspace and claim id.
    pub fn parse_claim(&self, subject: &str) -> Option<(ClaimVerb, Workspace, ClaimId)> {
        let (verb, ws, id) = self.split(subject, ".claim.")?;
        Some((ClaimVerb::from_token(verb)?, ws, ClaimId::new(id).ok()?))
    }

    /// `<ns><plane><verb>.<workspace>.<id>` into its verb token, workspace
    /// and id token.
    fn split<'a>(&self, subject: &'a str, plane: &str) -> Option<(&'a str, Workspace, &'a str)> {
        let rest = subject.strip_prefix(&self.ns)?.strip_prefix(plane)?;
        let mut parts = rest.split('.');
        let verb = parts.next()?;
        let ws = Workspace::new(parts.next()?).ok()?;
        let id = parts.next()?;
        if parts.next().is_some() {
            return None;
        }
        Some((verb, ws, id))
    }

    /// `<ns>.job.<verb>.<workspace>.<job_id>`.
    pub fn job(&self, verb: JobVerb, ws: &Workspace, job: &str) -> String {
        format!("{}.job.{}.{}.{}", self.ns, verb.token(), ws, job)
    }

    /// The subject a job message travels on (its verb, workspace and job).
    pub fn job_msg(&self, msg: &crate::protocol::JobMsg) -> String {
        let (ws, job) = msg.target();
        self.job(JobVerb::of(msg), ws, job)
    }

    /// `<ns>.job.<verb>.*.*`: one verb, every workspace (the daemon's
    /// subscription).
    pub fn job_wildcard(&self, verb: JobVerb) -> String {
        format!("{}.job.{}.*.*", self.ns, verb.token())
    }

    /// `<ns>.job.*.<workspace>.>`: the job plane's permission pattern for
    /// one workspace.
    pub fn job_workspace_permission(&self, ws: &Workspace) -> String {
        format!("{}.job.*.{}.>", self.ns, ws)
    }

    /// Splits a job subject into its verb, workspace and target: the job
    /// id, or for verb `run` the run id (the token must be a valid id of
    /// its kind).
    pub fn parse_job(&self, subject: &str) -> Option<(JobVerb, Workspace, String)> {
        let (verb, ws, id) = self.split(subject, ".job.")?;
        let verb = JobVerb::from_token(verb)?;
        let valid = match verb {
            JobVerb::Run => crate::ids::RunId::new(id).is_ok(),
            _ => JobId::new(id).is_ok(),
        };
        valid.then(|| (verb, ws, id.to_owned()))
    }

    /// `<ns>.agent.<node_id>`: the control plane's messages to one agent.
    pub fn agent(&self, node: &NodeId) -> String {
        format!("{}.agent.{}", self.ns, node)
    }

    /// The URI SAN of a claim's client certificate: `fleet://claim/<id>`.
    pub fn claim_cert_uri(claim: &ClaimId) -> String {
        format!("fleet://claim/{claim}")
    }

    /// The claim id in a claim certificate's URI SAN, if it is one.
    pub fn parse_claim_cert_uri(uri: &str) -> Option<ClaimId> {
        ClaimId::new(uri.strip_prefix("fleet://claim/")?).ok()
    }

    /// The URI SAN of a node's (agent's) certificate: `fleet://node/<id>`.
    pub fn node_cert_uri(node: &NodeId) -> String {
        format!("fleet://node/{node}")
    }

    /// The node id in a node certificate's URI SAN, if it is one.
    pub fn parse_node_cert_uri(uri: &str) -> Option<NodeId> {
        NodeId::new(uri.strip_prefix("fleet://node/")?).ok()
    }

    /// The DNS name a node's gateway certificate is issued for and a
    /// claimant verifies: `<node id, lowercase, '_' as '-'>.node.fleet`.
    pub fn node_server_name(node: &NodeId) -> String {
        let label: String = node
            .as_str()
            .chars()
            .map(|c| {
                if c == '_' {
                    '-'
                } else {
                    c.to_ascii_lowercase()
                }
            })
            .collect();
        format!("{label}.node.fleet")
    }

    /// The KV bucket name for this namespace (`.` is not allowed in NATS
    /// bucket names, so it becomes `_`).
    pub fn kv_bucket(&self) -> String {
        self.ns.replace('.', "_")
    }

    /// Store key of a claim: `claims.<workspace>.<claim_id>`.
    pub fn claim_key(ws: &Workspace, id: &ClaimId) -> Key {
        Key::from_tokens(&["claims", ws.as_str(), id.as_str()])
    }

    /// Store key of a node: `nodes.<pool>.<node_id>`.
    pub fn node_key(pool: &PoolName, node: &NodeId) -> Key {
        Key::from_tokens(&["nodes", pool.as_str(), node.as_str()])
    }

    /// Store key of a job: `jobs.<workspace>.<job_id>`.
    pub fn job_key(ws: &Workspace, job: &JobId) -> Key {
        Key::from_tokens(&["jobs", ws.as_str(), job.as_str()])
    }

    /// Store key of a run: `runs.<workspace>.<run>`.
    pub fn run_key(ws: &Workspace, run: &crate::ids::RunId) -> Key {
        Key::from_tokens(&["runs", ws.as_str(), run.as_str()])
    }

    /// Store key of a pool: `pools.<pool>`.
    pub fn pool_key(pool: &PoolName) -> Key {
        Key::from_tokens(&["pools", pool.as_str()])
    }

    /// Store key of the leader lease.
    pub fn leader_key() -> Key {
        Key::from_tokens(&["leader"])
    }

    /// Prefix of the followers' records.
    pub const FOLLOWERS_PREFIX: &'static str = "followers.";

    /// Store key of a follower's record: `followers.<holder>`, the holder's
    /// characters outside `[A-Za-z0-9_-]` made `-`.
    pub fn follower_key(holder: &str) -> Key {
        let token: String = holder
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        Key::from_tokens(&["followers", &token])
    }

    /// Store key of the fleet's identity
    /// ([`FleetRecord`](crate::protocol::FleetRecord)): `fleet.id`. Outside
    /// the controller's prefixes, like the lease: it is read before the
    /// controller is built.
    pub fn fleet_key() -> Key {
        Key::from_tokens(&["fleet", "id"])
    }

    /// Store key of a node's bootstrap token digests
    /// ([`BootstrapRecord`](crate::protocol::BootstrapRecord)):
    /// `bootstrap.<node>`. Outside the controller's prefixes: the runtime
    /// and the agent authenticator own it.
    pub fn bootstrap_key(node: &NodeId) -> Key {
        Key::from_tokens(&["bootstrap", node.as_str()])
    }

    /// Prefix of every bootstrap key.
    pub const BOOTSTRAP_PREFIX: &'static str = "bootstrap.";
    /// Prefix of every claim key.
    pub const CLAIMS_PREFIX: &'static str = "claims.";
    /// Prefix of every node key.
    pub const NODES_PREFIX: &'static str = "nodes.";
    /// Prefix of every job key.
    pub const JOBS_PREFIX: &'static str = "jobs.";
    /// Prefix of every pool key.
    pub const POOLS_PREFIX: &'static str = "pools.";
    /// Prefix of every run key.
    pub const RUNS_PREFIX: &'static str = "runs.";
    /// The prefixes of every key holding a controller [`Record`](crate::protocol::Record):
    /// what a restart loads (one list, so a new kind cannot be missed).
    pub const RECORD_PREFIXES: [&'static str; 5] = [
        Self::CLAIMS_PREFIX,
        Self::NODES_PREFIX,
        Self::JOBS_PREFIX,
        Self::RUNS_PREFIX,
        Self::POOLS_PREFIX,
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_record_key_is_under_a_prefix_a_restart_loads() {
        let ws = Workspace::new("team-a").unwrap_or_else(|_| unreachable!());
        let pool = PoolName::new("linux").unwrap_or_else(|_| unreachable!());
        let keys = [
            Subjects::claim_key(&ws, &ClaimId::new("c1").unwrap_or_else(|_| unreachable!())),
            Subjects::node_key(&pool, &NodeId::new("n1").unwrap_or_else(|_| unreachable!())),
            Subjects::job_key(&ws, &JobId::new("j1").unwrap_or_else(|_| unreachable!())),
            Subjects::run_key(
                &ws,
                &crate::ids::RunId::new("r1").unwrap_or_else(|_| unreachable!()),
            ),
            Subjects::pool_key(&pool),
        ];
        for key in keys {
            assert!(
                Subjects::RECORD_PREFIXES
                    .iter()
                    .any(|p| key.as_str().starts_with(p)),
                "{key} would not be loaded at a restart"
            );
        }
    }

    #[test]
    fn claim_subjects_round_trip_under_a_custom_namespace() {
        let s = Subjects::new("fleet.libre-forge").unwrap_or_default();
        let ws = Workspace::new("team-a").unwrap_or_else(|_| unreachable!());
        let id = ClaimId::new("c1").unwrap_or_else(|_| unreachable!());
        let subj = s.claim(ClaimVerb::Request, &ws, &id);
        assert_eq!(subj, "fleet.libre-forge.claim.request.team-a.c1");
        assert_eq!(
            s.parse_claim(&subj),
            Some((ClaimVerb::Request, ws.clone(), id))
        );
        assert_eq!(
            s.workspace_permission(&ws),
            "fleet.libre-forge.claim.*.team-a.>"
        );
        assert_eq!(s.parse_claim("fleet.libre-forge.claim.request.a.b.c"), None);
        assert!(Subjects::new("bad..ns").is_err());
        assert!(Subjects::new("ns>").is_err());
    }

    #[test]
    fn job_subjects_round_trip_and_follow_the_message() {
        let s = Subjects::new("fleet.libre-forge").unwrap_or_default();
        let ws = Workspace::new("team-a").unwrap_or_else(|_| unreachable!());
        let job = JobId::new("nightly-7").unwrap_or_else(|_| unreachable!());
        for verb in JobVerb::REQUESTS.into_iter().chain([JobVerb::Events]) {
            let subj = s.job(verb, &ws, job.as_str());
            assert_eq!(
                s.parse_job(&subj),
                Some((verb, ws.clone(), job.as_str().to_owned()))
            );
        }
        let pause = crate::protocol::JobMsg::Run {
            workspace: ws.clone(),
            run: crate::ids::RunId::new("nightly").unwrap_or_else(|_| unreachable!()),
            action: crate::protocol::RunAction::Pause,
        };
        assert_eq!(
            s.job_msg(&pause),
            "fleet.libre-forge.job.run.team-a.nightly"
        );
        let cancel = crate::protocol::JobMsg::Cancel {
            workspace: ws.clone(),
            job: job.clone(),
        };
        assert_eq!(
            s.job_msg(&cancel),
            "fleet.libre-forge.job.cancel.team-a.nightly-7"
        );
        assert_eq!(
            s.job_wildcard(JobVerb::Submit),
            "fleet.libre-forge.job.submit.*.*"
        );
        assert_eq!(
            s.job_workspace_permission(&ws),
            "fleet.libre-forge.job.*.team-a.>"
        );
        assert_eq!(s.parse_job("fleet.libre-forge.job.granted.team-a.j"), None);
        assert_eq!(s.parse_job("fleet.libre-forge.job.submit.team-a.j.x"), None);
    }
}
