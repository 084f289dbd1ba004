//! Command-line parsing (hand-written: a handful of flags and subcommands).
//!
//! Global flags may come before or after the subcommand; everything after
//! `--` is the command line to run (`exec`, `jobs submit`).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use fleet_core::protocol::Secret;

use crate::CtlError;

/// The help text.
pub const USAGE: &str = "\
fleetctl — the fleet command line

usage: fleetctl [global flags] <command> [flags] [-- command...]

global flags:
  --data-dir DIR   the daemon's data dir (default: $XDG_DATA_HOME/fleet, else ./.fleet)
  --url URL        the HTTP API (default: \"http\" in <data dir>/daemon.json)
  --token TOKEN    API token (default: $FLEET_TOKEN, else <data dir>/admin.token)
  --json           machine-readable output
  -h, --help       this help
  -V, --version    the version

commands:
  status                         counts of nodes, claims and jobs; cost so far
  pools                          configured pools
  nodes                          nodes and their live state
  claims                         claims and their state
  cost                           cost report per pool
  claim --pool P --workspace W [--id ID] [--priority N] [--lease-ms MS]
        [--cpus N] [--memory-mb N] [--wait-ms MS] [--out DIR]
                                 claim a node; writes its credentials to DIR
                                 (default <data dir>/claims/<id>/)
  exec ID [--dir DIR] -- CMD...  run a command on a claimed node (exit code propagates)
  release ID [--workspace W] [--dir DIR]
  renew ID [--workspace W] [--dir DIR]
  jobs submit --pool P --workspace W [--id ID] [--watch] -- CMD...
  jobs watch ID [--workspace W] [--interval-ms MS]
  jobs list
  token create NAME [--workspaces W1,W2]
                                 create an API token (printed once): an
                                 operator's, or one that can only claim in
                                 the listed workspaces
  doctor                         check the local installation and the daemon

exit codes: 0 success, 1 failure, 2 usage error; exec: the command's code.
";

/// Flags every command accepts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Global {
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--url`.
    pub url: Option<String>,
    /// `--token` (redacted in `Debug`).
    pub token: Option<Secret>,
    /// `--json`.
    pub json: bool,
}

/// `claim` arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimArgs {
    /// `--pool`.
    pub pool: String,
    /// `--workspace`.
    pub workspace: String,
    /// `--id` (default: random).
    pub id: Option<String>,
    /// `--priority`.
    pub priority: i32,
    /// `--lease-ms`.
    pub lease_ms: Option<u64>,
    /// `--cpus`.
    pub cpus: u32,
    /// `--memory-mb`.
    pub memory_mb: u64,
    /// `--wait-ms` (the claim's `max_wait_ms`).
    pub wait_ms: Option<u64>,
    /// `--out`.
    pub out: Option<PathBuf>,
}

/// A subcommand.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Command {
    /// `status`.
    Status,
    /// `pools`.
    Pools,
    /// `nodes`.
    Nodes,
    /// `claims`.
    Claims,
    /// `cost`.
    Cost,
    /// `claim`.
    Claim(ClaimArgs),
    /// `exec ID -- CMD…`.
    Exec {
        /// The claim.
        id: String,
        /// Its credentials dir.
        dir: Option<PathBuf>,
        /// The command line.
        argv: Vec<String>,
    },
    /// `release ID`.
    Release {
        /// The claim.
        id: String,
        /// Its workspace (else from the claim dir).
        workspace: Option<String>,
        /// Its credentials dir.
        dir: Option<PathBuf>,
    },
    /// `renew ID`.
    Renew {
        /// The claim.
        id: String,
        /// Its workspace (else from the claim dir).
        workspace: Option<String>,
        /// Its credentials dir.
        dir: Option<PathBuf>,
    },
    /// `jobs submit`.
    JobsSubmit {
        /// `--pool`.
        pool: String,
        /// `--workspace`.
        workspace: String,
        /// `--id`.
        id: Option<String>,
        /// `--watch`.
        watch: bool,
        /// The command line.
        argv: Vec<String>,
    },
    /// `jobs watch ID`.
    JobsWatch {
        /// The job.
        id: String,
        /// Only this workspace's job of that id.
        workspace: Option<String>,
        /// Poll interval.
        interval_ms: u64,
    },
    /// `jobs list`.
    JobsList,
    /// `token create NAME [--workspaces W1,W2]`.
    TokenCreate {
        /// The token's name.
        name: String,
        /// Limit it to these workspaces.
        workspaces: Option<Vec<String>>,
    },
    /// `doctor`.
    Doctor,
    /// `--help`.
    Help,
    /// `--version`.
    Version,
}

/// A parsed command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// Global flags.
    pub global: Global,
    /// The subcommand.
    pub command: Command,
}

/// Flags that take no value.
const SWITCHES: &[&str] = &["--json", "--watch", "--help", "-h", "--version", "-V"];

struct Raw {
    positionals: Vec<String>,
    opts: BTreeMap<String, String>,
    switches: Vec<String>,
    trailing: Option<Vec<String>>,
}

impl fmt::Debug for Raw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Options may hold a token.
        f.debug_struct("Raw")
            .field("positionals", &self.positionals)
            .finish_non_exhaustive()
    }
}

fn usage(msg: impl Into<String>) -> CtlError {
    CtlError::Usage(msg.into())
}

fn split(args: &[String]) -> Result<Raw, CtlError> {
    let mut raw = Raw {
        positionals: Vec::new(),
        opts: BTreeMap::new(),
        switches: Vec::new(),
        trailing: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--" {
            raw.trailing = Some(it.cloned().collect());
            break;
        }
        if SWITCHES.contains(&a.as_str()) {
            raw.switches.push(a.clone());
        } else if let Some(name) = a.strip_prefix("--") {
            let (name, value) = match name.split_once('=') {
                Some((n, v)) => (n.to_owned(), v.to_owned()),
                None => {
                    let v = it
                        .next()
                        .ok_or_else(|| usage(format!("--{name} needs a value")))?;
                    (name.to_owned(), v.clone())
                }
            };
            if raw.opts.insert(name.clone(), value).is_some() {
                return Err(usage(format!("--{name} given twice")));
            }
        } else if a.starts_with('-') && a.len() > 1 {
            return Err(usage(format!("unknown flag {a}")));
        } else {
            raw.positionals.push(a.clone());
        }
    }
    Ok(raw)
}

impl Raw {
    fn take(&mut self, name: &str) -> Option<String> {
        self.opts.remove(name)
    }

    fn required(&mut self, name: &str) -> Result<String, CtlError> {
        self.take(name)
            .ok_or_else(|| usage(format!("--{name} is required")))
    }

    fn number<T: std::str::FromStr>(&mut self, name: &str) -> Result<Option<T>, CtlError> {
        match self.take(name) {
            None => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| usage(format!("--{name}: {v:?} is not a valid number"))),
        }
    }

    fn switch(&mut self, name: &str) -> bool {
        let before = self.switches.len();
        self.switches.retain(|s| s != name);
        before != self.switches.len()
    }

    fn trailing(&mut self, what: &str) -> Result<Vec<String>, CtlError> {
        match self.trailing.take() {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(usage(format!("{what} needs a command after --"))),
        }
    }
}

/// Parses the arguments after the program name.
pub fn parse(args: &[String]) -> Result<Invocation, CtlError> {
    let mut raw = split(args)?;
    let help = raw.switch("--help") | raw.switch("-h");
    let version = raw.switch("--version") | raw.switch("-V");
    let global = Global {
        data_dir: raw.take("data-dir").map(PathBuf::from),
        url: raw.take("url"),
        token: raw.take("token").map(Secret::new),
        json: raw.switch("--json"),
    };
    if help {
        return Ok(Invocation {
            global,
            command: Command::Help,
        });
    }
    if version {
        return Ok(Invocation {
            global,
            command: Command::Version,
        });
    }
    let words: Vec<String> = raw.positionals.drain(..).collect();
    let mut words = words.into_iter();
    let Some(first) = words.next() else {
        return Err(usage("no command given"));
    };
    let mut rest: Vec<String> = words.collect();
    fn one(what: &str, rest: &mut Vec<String>) -> Result<String, CtlError> {
        if rest.is_empty() {
            return Err(usage(format!("{what} is required")));
        }
        Ok(rest.remove(0))
    }
    let command = match first.as_str() {
        "status" => Command::Status,
        "pools" => Command::Pools,
        "nodes" => Command::Nodes,
        "claims" => Command::Claims,
        "cost" | "costs" => Command::Cost,
        "doctor" => Command::Doctor,
        "help" => Command::Help,
        "claim" => Command::Claim(ClaimArgs {
            pool: raw.required("pool")?,
            workspace: raw.required("workspace")?,
            id: raw.take("id"),
            priority: raw.number("priority")?.unwrap_or(0),
            lease_ms: raw.number("lease-ms")?,
            cpus: raw.number("cpus")?.unwrap_or(0),
            memory_mb: raw.number("memory-mb")?.unwrap_or(0),
            wait_ms: raw.number("wait-ms")?,
            out: raw.take("out").map(PathBuf::from),
        }),
        "exec" => Command::Exec {
            id: one("the claim id", &mut rest)?,
            dir: raw.take("dir").map(PathBuf::from),
            argv: raw.trailing("exec")?,
        },
        "release" => Command::Release {
            id: one("the claim id", &mut rest)?,
            workspace: raw.take("workspace"),
            dir: raw.take("dir").map(PathBuf::from),
        },
        "renew" => Command::Renew {
            id: one("the claim id", &mut rest)?,
            workspace: raw.take("workspace"),
            dir: raw.take("dir").map(PathBuf::from),
        },
        "jobs" | "job" => match one("a jobs subcommand (submit, watch, list)", &mut rest)?.as_str()
        {
            "submit" => Command::JobsSubmit {
                pool: raw.required("pool")?,
                workspace: raw.required("workspace")?,
                id: raw.take("id"),
                watch: raw.switch("--watch"),
                argv: raw.trailing("jobs submit")?,
            },
            "watch" => Command::JobsWatch {
                id: one("the job id", &mut rest)?,
                workspace: raw.take("workspace"),
                interval_ms: raw.number("interval-ms")?.unwrap_or(1_000).max(50),
            },
            "list" => Command::JobsList,
            other => return Err(usage(format!("unknown jobs subcommand {other:?}"))),
        },
        "token" | "tokens" => match one("a token subcommand (create)", &mut rest)?.as_str() {
            "create" => Command::TokenCreate {
                name: one("the token name", &mut rest)?,
                workspaces: raw
                    .take("workspaces")
                    .map(|w| w.split(',').map(|s| s.trim().to_owned()).collect()),
            },
            other => return Err(usage(format!("unknown token subcommand {other:?}"))),
        },
        other => return Err(usage(format!("unknown command {other:?}"))),
    };
    if let Some(extra) = rest.first() {
        return Err(usage(format!("unexpected argument {extra:?}")));
    }
    if let Some(name) = raw.opts.keys().next() {
        return Err(usage(format!("unknown flag --{name} for {first}")));
    }
    if let Some(s) = raw.switches.first() {
        return Err(usage(format!("unknown flag {s} for {first}")));
    }
    if raw.trailing.is_some() {
        return Err(usage(format!("{first} takes no command after --")));
    }
    Ok(Invocation { global, command })
}
