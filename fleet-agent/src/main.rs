//! `fleet-agent`: reads `FLEET_AGENT_CONFIG` (default `./agent.toml`) or
//! `--config PATH` and runs the agent until SIGTERM, then drains and exits 0.
//! `fleet-agent queue` (or no config and a queue bucket/directory in the
//! environment) runs queue mode instead: see `fleet_agent::queue`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fleet_agent::link::LinkError;
use fleet_agent::{Config, connector_for};
use tokio::signal::unix::{SignalKind, signal};

/// What the flags cannot say: settings read only from the environment.
const ENVIRONMENT: &str = "\
ENVIRONMENT:
    FLEET_AGENT_CONFIG            config file path (when --config is not given)
    FLEET_AGENT_BOOTSTRAP_TOKEN   single-use bootstrap token (overrides bootstrap_token_file)
    FLEET_AGENT_LOG               log level: error, warn, info (default), debug, trace

QUEUE MODE (each also read as CELLOS_FLEET_<NAME>):
    FLEET_QUEUE_BUCKET            S3 bucket (AWS_REGION, AWS_ENDPOINT_URL, AWS_* keys
                                  or the instance role), or
    FLEET_QUEUE_DIR               a directory (local or a shared mount)
    FLEET_QUEUE_PREFIX            key prefix (default fleet)
    FLEET_QUEUE_NAME              optional lane under the prefix
    FLEET_QUEUE_POOL_ID           skip specs whose spec.placement.poolId is another pool
    FLEET_QUEUE_SUPERVISOR        executable run per spec, spec on stdin (default cellos-supervisor)
    FLEET_QUEUE_POLL_INTERVAL_MS  default 5000
    FLEET_QUEUE_HEARTBEAT_INTERVAL_MS  default 30000
    FLEET_QUEUE_NODE_ID           name in logs and leases (default the hostname)
    FLEET_QUEUE_LEASE_MS          how long a claim's lease lasts unless renewed (default 60000)
    FLEET_QUEUE_RENEW_INTERVAL_MS renewal cadence, also how often claimed/ is checked for
                                  lapsed leases (default a third of the lease)
    FLEET_QUEUE_TAKE_OVER         take over specs whose lease lapsed: true (default) or false
    FLEET_QUEUE_MAX_ATTEMPTS      runs a spec gets before a lapsed lease fails it (default 3)

The supervisor gets the spec on stdin and FLEET_QUEUE_SPEC_ID, FLEET_QUEUE_NODE_ID,
FLEET_QUEUE_AGENT_ID and FLEET_QUEUE_FENCING (1, then +1 at each take-over); it runs in a
process group of its own that is killed when the agent dies.

With no config (no --config, no FLEET_AGENT_CONFIG) and FLEET_QUEUE_BUCKET or
FLEET_QUEUE_DIR set, the agent runs queue mode without the `queue` word.

On SIGTERM the agent stops taking commands (or specs), finishes or reports
those in flight, tells the daemon it is draining, and exits 0.

Exit codes: 0 drained, 1 failure, 2 usage or config error, 3 the daemon refused
this node for good (its bootstrap token is unknown or used, its identity is
another node's): restarting it with the same files cannot help.";

/// fleet-agent: the fleet node agent (with no command: a node of a fleet daemon)
#[derive(Debug, Parser)]
#[command(
    name = "fleet-agent",
    version,
    propagate_version = true,
    disable_help_subcommand = true,
    after_help = ENVIRONMENT
)]
struct Cli {
    /// Config file (default: ./agent.toml)
    #[arg(
        short,
        long,
        global = true,
        value_name = "PATH",
        env = "FLEET_AGENT_CONFIG"
    )]
    config: Option<PathBuf>,
    /// Daemon mode when absent
    #[command(subcommand)]
    mode: Option<Mode>,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Queue mode: run specs from a bucket or directory (settings below)
    // `fleet-agent queue -V` prints `fleet-agent …`, not `fleet-agent-queue …`.
    #[command(display_name = "fleet-agent")]
    Queue,
    /// Queue mode's supervisor guard (started by the agent, not by hand)
    #[command(name = "queue-guard", hide = true)]
    QueueGuard {
        /// The agent's pid
        #[arg(long)]
        parent: u32,
        /// The supervisor executable
        supervisor: String,
    },
}

fn main() -> ExitCode {
    // Usage errors exit 2 (clap's code, as before), --help and --version 0.
    let cli = Cli::parse();
    if let Some(Mode::QueueGuard { parent, supervisor }) = &cli.mode {
        return fleet_agent::queue::guard::main(*parent, supervisor);
    }
    let env: std::collections::BTreeMap<String, String> = std::env::vars().collect();
    let queue = matches!(cli.mode, Some(Mode::Queue))
        || (cli.config.is_none() && fleet_agent::queue::QueueConfig::requested(&env));
    if queue {
        return queue_mode(&env);
    }
    let path = cli.config.unwrap_or_else(|| PathBuf::from("agent.toml"));
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fleet-agent: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging();
    let connector = match connector_for(&config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fleet-agent: daemon_url: {e}");
            return ExitCode::from(2);
        }
    };
    until_signal(|shutdown| async move {
        fleet_agent::run(config, connector, shutdown)
            .await
            .map_err(|e| Fatal {
                code: e.exit_code(),
                message: match e {
                    fleet_agent::AgentError::Link(denied @ LinkError::Denied(_)) => {
                        format!("{denied}; not retrying (exit 3)")
                    }
                    other => other.to_string(),
                },
            })
    })
}

/// Why the agent stops with an error, and its exit code.
struct Fatal {
    message: String,
    code: u8,
}

impl From<String> for Fatal {
    fn from(message: String) -> Fatal {
        Fatal { message, code: 1 }
    }
}

/// Builds the runtime, installs the SIGTERM/SIGINT handlers before anything
/// else (an early signal drains instead of killing the process), and runs
/// `body` with a future that completes on the first signal. Exit 0 when
/// `body` returns `Ok` (it drained), else the error's code.
fn until_signal<F, Fut>(body: F) -> ExitCode
where
    F: FnOnce(std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>) -> Fut,
    Fut: std::future::Future<Output = Result<(), Fatal>>,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fleet-agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
        let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
        let shutdown = Box::pin(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        });
        body(shutdown).await
    });
    match result {
        Ok(()) => {
            tracing::info!("fleet-agent: drained, exiting");
            ExitCode::SUCCESS
        }
        Err(Fatal { message, code }) => {
            tracing::error!(error = %message, code, "fleet-agent: fatal");
            eprintln!("fleet-agent: {message}");
            ExitCode::from(code)
        }
    }
}

/// Runs queue mode until SIGTERM/SIGINT, then drains and exits 0.
fn queue_mode(env: &std::collections::BTreeMap<String, String>) -> ExitCode {
    use fleet_agent::queue::{Backend, QueueConfig, store};
    let cfg = match QueueConfig::from_env(env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fleet-agent: queue mode: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging();
    type Store = std::sync::Arc<dyn store::ObjectStore>;
    // Opened inside the runtime that uses it (the SDK's connections live there).
    let open: std::pin::Pin<Box<dyn std::future::Future<Output = Store> + Send>> = match &cfg
        .backend
    {
        Backend::Dir(dir) => {
            let dir = dir.clone();
            Box::pin(async move { std::sync::Arc::new(store::DirStore::new(dir)) as Store })
        }
        #[cfg(feature = "s3")]
        Backend::S3 {
            bucket,
            region,
            endpoint,
        } => {
            // Keys from the agent's environment map (as the rest of its
            // settings); else the SDK's chain: profile, web identity,
            // container credentials, the instance role.
            let key = |k: &str| env.get(k).filter(|v| !v.trim().is_empty()).cloned();
            let static_keys = match (key("AWS_ACCESS_KEY_ID"), key("AWS_SECRET_ACCESS_KEY")) {
                (Some(access_key_id), Some(secret_access_key)) => Some(fleet_aws::StaticKeys {
                    access_key_id,
                    secret_access_key,
                    session_token: key("AWS_SESSION_TOKEN"),
                }),
                _ => None,
            };
            let settings = fleet_aws::AwsSettings {
                region: region.clone(),
                endpoint: endpoint.clone(),
                static_keys,
                profile: key("AWS_PROFILE"),
                ..Default::default()
            };
            let bucket = bucket.clone();
            Box::pin(async move {
                std::sync::Arc::new(store::S3Store::new(&settings, &bucket).await) as Store
            })
        }
        #[cfg(not(feature = "s3"))]
        Backend::S3 { .. } => {
            eprintln!(
                "fleet-agent: queue mode: FLEET_QUEUE_BUCKET needs the `s3` feature; this agent \
                 was built without it (cargo build -p fleet-agent --features s3)"
            );
            return ExitCode::from(2);
        }
        _ => {
            eprintln!("fleet-agent: queue mode: unsupported backend");
            return ExitCode::from(2);
        }
    };
    until_signal(|shutdown| async move {
        let store = open.await;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            tracing::info!(
                "fleet-agent: SIGTERM: draining (no new spec; the running one finishes)"
            );
            let _ = stop_tx.send(true);
        });
        tracing::info!(node = %cfg.node_id, pending = %cfg.dir("pending"), "fleet-agent queue mode started");
        fleet_agent::queue::run(&cfg, store, stop_rx).await;
        Ok(())
    })
}

/// Logs to stderr at `FLEET_AGENT_LOG` (default info).
fn init_logging() {
    let level = std::env::var("FLEET_AGENT_LOG")
        .ok()
        .and_then(|l| l.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::INFO);
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .init();
}
