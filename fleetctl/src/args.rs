//! The command line, declared with clap: help, `--version`, usage errors
//! (exit code 2) and shell completions are generated from these types.
//!
//! Global flags may come before or after the subcommand; everything after
//! `--` is the command line to run (`exec`, `jobs submit`).

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use fleet_core::protocol::Secret;

/// fleetctl — the fleet command line
#[derive(Debug, Clone, PartialEq, Parser)]
#[command(
    name = "fleetctl",
    version,
    propagate_version = true,
    after_help = "exit codes: 0 success, 1 failure, 2 usage error; exec: the command's code."
)]
pub struct Cli {
    /// Flags every command accepts.
    #[command(flatten)]
    pub global: Global,
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command accepts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
pub struct Global {
    /// The daemon's data dir (default: the data_dir of $FLEET_DAEMON_CONFIG,
    /// else $XDG_DATA_HOME/fleet, else ./.fleet)
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The HTTP API (default: "http" in <data dir>/daemon.json)
    #[arg(long, global = true, value_name = "URL")]
    pub url: Option<String>,
    /// API token (default: <data dir>/admin.token)
    // The value never shows in --help or Debug: it is a credential.
    #[arg(
        long,
        global = true,
        value_name = "TOKEN",
        env = crate::TOKEN_ENV,
        hide_env_values = true,
        value_parser = token
    )]
    pub token: Option<Secret>,
    /// Machine-readable output
    #[arg(long, global = true)]
    pub json: bool,
}

/// `claim` arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq, Args)]
pub struct ClaimArgs {
    /// The pool to claim a node from
    #[arg(long, value_name = "P")]
    pub pool: String,
    /// The workspace the claim belongs to
    #[arg(long, value_name = "W")]
    pub workspace: String,
    /// The claim id (default: random); a retry with the same id gets the
    /// same grant
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
    /// Higher claims are served first
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    pub priority: i32,
    /// Lease length in ms (default: the daemon's)
    #[arg(long, value_name = "MS")]
    pub lease_ms: Option<u64>,
    /// CPUs the node must have
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub cpus: u32,
    /// Memory the node must have, in MiB
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub memory_mb: u64,
    /// How long the claim may wait for a node, in ms
    #[arg(long, value_name = "MS")]
    pub wait_ms: Option<u64>,
    /// Where to write the node's credentials (default: <data dir>/claims/<id>/)
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

/// A subcommand.
#[derive(Debug, Clone, PartialEq, Subcommand)]
#[non_exhaustive]
pub enum Command {
    /// Counts of nodes, claims and jobs; cost so far
    Status,
    /// Who leads: the lease's holder, epoch and expiry, whether this daemon
    /// leads, and the followers waiting
    Leader,
    /// What needs a look: silent nodes and their agent versions, claims
    /// waiting and why (an unsatisfiable requirement, a quota or cap),
    /// failing provider calls, alert deliveries; no secrets; exits 1 when
    /// something is an error
    Diagnose,
    /// What the leading daemon recovered when it last started: records
    /// loaded, nodes adopted or gone, orphans, grants published again,
    /// jobs requeued, and how long each step took
    ReplayStatus,
    /// Write a new age identity (owner-only) for backups; prints its
    /// recipient, what `backup --recipient` takes
    BackupKey {
        /// The identity file to write (must not exist)
        file: PathBuf,
    },
    /// Back up the running daemon: every record, the fleet identity, the
    /// pool CA, the sealing key and the hashed API tokens, read at one
    /// point of its commit order and encrypted (by the daemon) with age
    Backup {
        /// An age recipient (age1…) to encrypt to; repeat for more
        #[arg(long = "recipient", value_name = "AGE1…")]
        recipients: Vec<String>,
        /// A file of recipients, one per line
        #[arg(long, value_name = "FILE")]
        recipients_file: Option<PathBuf>,
        /// Where to write the backup (must not exist; written owner-only)
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Restore a backup into an empty data dir (--data-dir) on this host;
    /// the daemon started on it writes the records into its store (which
    /// must be empty) and its nodes' agents reconnect: same CA
    Restore {
        /// The age identity file the backup is encrypted to
        #[arg(long, value_name = "FILE")]
        identity: PathBuf,
        /// The backup file
        backup: PathBuf,
    },
    /// Why the control plane did what it did
    #[command(subcommand)]
    Explain(Explain),
    /// A claim's life: each transition with its time and reason
    History {
        /// The claim
        claim: String,
    },
    /// Configured pools
    Pools,
    /// Nodes and their live state
    Nodes,
    /// Claims and their state
    Claims,
    /// Cost report per pool, workspace or claim
    #[command(alias = "costs")]
    Cost {
        /// Break the cost down per pool (default), per workspace, or per
        /// claim and job
        #[arg(long, value_enum, value_name = "GROUP")]
        by: Option<CostBy>,
    },
    /// Claim a node; writes its credentials to --out
    Claim(ClaimArgs),
    /// Run a command on a claimed node (its exit code propagates)
    Exec {
        /// The claim
        id: String,
        /// Its credentials dir (default: <data dir>/claims/<id>/)
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// The command line, after --
        #[arg(last = true, required = true, value_name = "CMD")]
        argv: Vec<String>,
    },
    /// Release a claim
    Release {
        /// The claim
        id: String,
        /// Its workspace (default: from the claim dir)
        #[arg(long, value_name = "W")]
        workspace: Option<String>,
        /// Its credentials dir (default: <data dir>/claims/<id>/)
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Extend a claim's lease and rewrite its certificate
    Renew {
        /// The claim
        id: String,
        /// Its workspace (default: from the claim dir)
        #[arg(long, value_name = "W")]
        workspace: Option<String>,
        /// Its credentials dir (default: <data dir>/claims/<id>/)
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Submit, watch and list jobs
    #[command(subcommand, alias = "job")]
    Jobs(Jobs),
    /// Runs: groups of jobs with one lifecycle (submit, watch, pause, resume, cancel)
    #[command(subcommand)]
    Runs(Runs),
    /// API tokens
    #[command(subcommand, alias = "tokens")]
    Token(Token),
    /// Check the local installation and the daemon
    ///
    /// One line per check, `✓` passed or `✗` failed with what to do: the
    /// data dir and its secret files are owner-only, daemon.json names a
    /// running daemon, the pool CA certificate is valid, the signer key
    /// parses, the config in $FLEET_DAEMON_CONFIG parses, its store works
    /// (redb: every record decodes, unless the running daemon holds the
    /// file; JetStream KV: a NATS server answers), and the HTTP API is
    /// alive, ready and takes the token. Exit 0 when every check passed,
    /// 1 when any failed.
    #[cfg(feature = "doctor")]
    Doctor,
    /// Print a shell completion script
    Completions {
        /// The shell
        shell: clap_complete::Shell,
    },
}

/// `explain` subcommands.
#[derive(Debug, Clone, PartialEq, Subcommand)]
#[non_exhaustive]
pub enum Explain {
    /// A pool: its strategy, what it saw when it last planned, and its
    /// recent actions (create, start, stop, resize, snapshot, delete) each
    /// with its reason and the inputs that mattered
    Pool {
        /// The pool
        name: String,
    },
}

/// `jobs` subcommands.
#[derive(Debug, Clone, PartialEq, Subcommand)]
#[non_exhaustive]
pub enum Jobs {
    /// Submit a job (a command line run on a node of the pool)
    Submit {
        /// The pool to run it in
        #[arg(long, value_name = "P")]
        pool: String,
        /// The workspace it belongs to
        #[arg(long, value_name = "W")]
        workspace: String,
        /// The job id (default: random)
        #[arg(long, value_name = "ID")]
        id: Option<String>,
        /// How its result is judged, as JSON: {"kind":"exit_code"},
        /// {"kind":"file_exists","path":P}, {"kind":"regex_match","path":P,"pattern":RE},
        /// {"kind":"json_path","path":P,"expression":JSONPATH},
        /// {"kind":"command","argv":[..]} or {"kind":"manual"}
        #[arg(long, value_name = "JSON")]
        scorer: Option<String>,
        /// The rest of the task as a JSON file (env, cwd, timeout_ms, retry,
        /// alert, priority, requirements: PROTOCOL.md "submit"); the flags
        /// and the command line win over it
        #[arg(long, value_name = "FILE")]
        spec: Option<std::path::PathBuf>,
        /// Stream its events and output until it finishes; exit with its code
        #[arg(long)]
        watch: bool,
        /// The command line, after --
        #[arg(last = true, required = true, value_name = "CMD")]
        argv: Vec<String>,
    },
    /// Follow a job's state until it finishes
    Watch {
        /// The job
        id: String,
        /// Only this workspace's job of that id
        #[arg(long, value_name = "W")]
        workspace: Option<String>,
        /// Poll interval in ms (at least 50)
        #[arg(long, value_name = "MS", default_value_t = 1_000)]
        interval_ms: u64,
    },
    /// List jobs
    List,
    /// Cancel a job: a queued one never runs, a running one's process group is killed
    Cancel {
        /// The job
        id: String,
        /// Its workspace
        #[arg(long, value_name = "W")]
        workspace: String,
    },
    /// List the files a job's latest attempt uploaded as artifacts
    Artifacts {
        /// The job
        id: String,
        /// Its workspace
        #[arg(long, value_name = "W")]
        workspace: String,
    },
    /// Download one artifact of a job (to stdout, or --output)
    Artifact {
        /// The job
        id: String,
        /// The file's name (as `jobs artifacts` lists it)
        name: String,
        /// Its workspace
        #[arg(long, value_name = "W")]
        workspace: String,
        /// Write it here instead of stdout
        #[arg(long, short = 'o', value_name = "FILE")]
        output: Option<std::path::PathBuf>,
    },
    /// Judge a job whose scorer is manual (it is awaiting_verdict)
    Verdict {
        /// The job
        id: String,
        /// Its workspace
        #[arg(long, value_name = "W")]
        workspace: String,
        /// pass, partial, fail or skip
        #[arg(long, value_name = "RESULT")]
        result: VerdictResult,
        /// The score (default: 1 for pass, 0 otherwise)
        #[arg(long, value_name = "N")]
        score: Option<f64>,
        /// The score's maximum
        #[arg(long, value_name = "N", default_value_t = 1.0)]
        max: f64,
        /// What the reviewer saw
        #[arg(long, value_name = "TEXT")]
        notes: Option<String>,
    },
}

/// `runs` subcommands (through the HTTP API).
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
#[non_exhaustive]
pub enum Runs {
    /// Submit a run from a JSON file (PROTOCOL.md "Runs": id, workspace,
    /// tasks, workers, labels, paused)
    Submit {
        /// The run, as JSON (`-` reads stdin)
        file: std::path::PathBuf,
        /// Follow it until it ends; exit 0 if it completed, 1 otherwise
        #[arg(long)]
        watch: bool,
    },
    /// List runs with their status and task counts
    List,
    /// Show one run and each of its tasks
    Show {
        /// The run
        id: String,
        /// Its workspace
        #[arg(long, value_name = "W")]
        workspace: String,
    },
    /// Follow a run until it ends: each status and task change; exit 0 if
    /// it completed, 1 if it failed or was cancelled
    Watch {
        /// The run
        id: String,
        /// Its workspace
        #[arg(long, value_name = "W")]
        workspace: String,
        /// Poll interval in ms (at least 50)
        #[arg(long, value_name = "MS", default_value_t = 1_000)]
        interval_ms: u64,
    },
    /// Start no new attempt of the run's tasks (those on nodes go on)
    Pause {
        /// The run
        id: String,
        /// Its workspace
        #[arg(long, value_name = "W")]
        workspace: String,
    },
    /// Let a paused run's tasks start again
    Resume {
        /// The run
        id: String,
        /// Its workspace
        #[arg(long, value_name = "W")]
        workspace: String,
    },
    /// Cancel every unfinished task of the run
    Cancel {
        /// The run
        id: String,
        /// Its workspace
        #[arg(long, value_name = "W")]
        workspace: String,
    },
}

/// A person's verdict (`jobs verdict --result`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum VerdictResult {
    /// It passed
    Pass,
    /// It partly passed
    Partial,
    /// It failed
    Fail,
    /// It was not judged
    Skip,
}

/// `token` subcommands.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
#[non_exhaustive]
pub enum Token {
    /// Create an API token (printed once): an operator's, or one that can
    /// only claim in the listed workspaces
    Create {
        /// The token's name
        name: String,
        /// Limit it to these workspaces (comma-separated)
        #[arg(long, value_name = "W1,W2", value_delimiter = ',', value_parser = trimmed)]
        workspaces: Option<Vec<String>>,
    },
}

/// A token from `--token` or the environment, without the newline a file
/// or `$(cat …)` leaves.
fn token(s: &str) -> Result<Secret, std::convert::Infallible> {
    Ok(Secret::new(s.trim()))
}

fn trimmed(s: &str) -> Result<String, std::convert::Infallible> {
    Ok(s.trim().to_owned())
}

/// The clap command: [`Cli`]'s, with every subcommand's display name set to
/// `fleetctl` so `fleetctl status -V` prints `fleetctl 0.1.0` (clap would
/// say `fleetctl-status 0.1.0`).
pub fn command() -> clap::Command {
    fn named(cmd: clap::Command) -> clap::Command {
        cmd.mut_subcommands(|sc| named(sc.display_name("fleetctl")))
    }
    named(Cli::command())
}

/// Parses the arguments after the program name. A `clap::Error` is a usage
/// error (exit code 2) or a request for help or the version (exit code 0,
/// printed to stdout); `Error::print` and `Error::exit_code` say which.
pub fn parse<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let argv = std::iter::once(OsString::from("fleetctl")).chain(args.into_iter().map(Into::into));
    let mut matches = command().try_get_matches_from(argv)?;
    Cli::from_arg_matches_mut(&mut matches).map_err(|e| e.format(&mut command()))
}

/// Writes the completion script for `shell` to `out`.
pub fn completions(shell: clap_complete::Shell, out: &mut dyn std::io::Write) {
    clap_complete::generate(shell, &mut command(), "fleetctl", out);
}

/// `fleetctl cost --by`: the breakdown, as the API's `by` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CostBy {
    /// Per pool: what is attributed to workspaces and what is not
    Pool,
    /// Per workspace and pool, and each pool's unattributed rest
    Workspace,
    /// Per claim and job the daemon still keeps
    Claim,
}

impl From<CostBy> for fleet_core::protocol::CostGrouping {
    fn from(by: CostBy) -> Self {
        match by {
            CostBy::Pool => Self::Pool,
            CostBy::Workspace => Self::Workspace,
            CostBy::Claim => Self::Claim,
        }
    }
}
