//! `fleet-daemon`: the fleet control plane.
//!
//! `FLEET_DAEMON_CONFIG=./daemon.toml fleet-daemon`, or with no config the
//! embedded default (redb in `$XDG_DATA_HOME/fleet` or `./.fleet`, TLS
//! WebSocket and HTTP on loopback, local `fleet-agent` nodes).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use fleet_daemon::config::{CONFIG_ENV, DaemonConfig};

/// fleet-daemon — the fleet control plane
#[derive(Debug, Parser)]
#[command(
    name = "fleet-daemon",
    version,
    after_help = "\
With no config file, the embedded default runs: a redb store in
$XDG_DATA_HOME/fleet (or ./.fleet), TLS WebSocket on 127.0.0.1:7443, HTTP on
127.0.0.1:7080, the local provider (nodes are fleet-agent processes on this
host) and the default pool `default` (fleet_core::strategy::PoolSpec).

ENVIRONMENT:
    FLEET_DAEMON_CONFIG   config file (when --config is not given)
    FLEET_AGENT_BIN       fleet-agent binary for the local provider
    FLEET_LOG             log level: error, warn, info (default), debug, trace

Exit codes: 0 stopped, 1 failure, 2 usage or config error."
)]
struct Cli {
    /// Read the configuration from FILE
    #[arg(long, value_name = "FILE", env = CONFIG_ENV)]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    // Usage errors exit 2 (clap's code, as before), --help and --version 0.
    let config = Cli::parse().config;
    init_logging();
    let cfg = match &config {
        Some(path) => match DaemonConfig::load(path) {
            Ok(cfg) => cfg,
            Err(e) => {
                eprintln!("fleet-daemon: {e}");
                return ExitCode::from(2);
            }
        },
        None => DaemonConfig::default(),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fleet-daemon: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(fleet_daemon::serve::serve(cfg, shutdown_signal(), |d| {
        eprintln!(
            "fleet-daemon: serving — HTTP {} · WebSocket {} · CA {}",
            d.http,
            d.ws,
            d.ca_file.display()
        );
    }));
    match result {
        Ok(()) => {
            eprintln!("fleet-daemon: stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("fleet-daemon: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
        }
        _ => std::future::pending::<()>().await,
    }
}

fn init_logging() {
    let level = match std::env::var("FLEET_LOG").as_deref() {
        Ok("error") => tracing::Level::ERROR,
        Ok("warn") => tracing::Level::WARN,
        Ok("debug") => tracing::Level::DEBUG,
        Ok("trace") => tracing::Level::TRACE,
        _ => tracing::Level::INFO,
    };
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
