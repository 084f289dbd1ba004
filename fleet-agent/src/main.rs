//! `fleet-agent`: reads `FLEET_AGENT_CONFIG` (default `./agent.toml`) or
//! `--config PATH` and runs the agent until SIGTERM, then drains and exits 0.

use std::path::PathBuf;
use std::process::ExitCode;

use fleet_agent::{Config, connector_for};
use tokio::signal::unix::{SignalKind, signal};

const HELP: &str = "\
fleet-agent: the fleet node agent

USAGE:
    fleet-agent [--config PATH]

OPTIONS:
    -c, --config PATH   config file (default: $FLEET_AGENT_CONFIG or ./agent.toml)
    -h, --help          print this help
    -V, --version       print the version

ENVIRONMENT:
    FLEET_AGENT_CONFIG            config file path
    FLEET_AGENT_BOOTSTRAP_TOKEN   single-use bootstrap token (overrides bootstrap_token_file)
    FLEET_AGENT_LOG               log level: error, warn, info (default), debug, trace

On SIGTERM the agent stops taking commands, finishes or reports those in
flight, tells the daemon it is draining, and exits 0.
";

fn main() -> ExitCode {
    let mut config_path = std::env::var_os("FLEET_AGENT_CONFIG").map(PathBuf::from);
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("-h" | "--help") => {
                print!("{HELP}");
                return ExitCode::SUCCESS;
            }
            Some("-V" | "--version") => {
                println!("fleet-agent {}", env!("CARGO_PKG_VERSION"));
                return ExitCode::SUCCESS;
            }
            Some("-c" | "--config") => match args.next() {
                Some(p) => config_path = Some(PathBuf::from(p)),
                None => {
                    eprintln!("fleet-agent: --config needs a path");
                    return ExitCode::from(2);
                }
            },
            _ => {
                eprintln!(
                    "fleet-agent: unknown argument {:?} (see --help)",
                    arg.to_string_lossy()
                );
                return ExitCode::from(2);
            }
        }
    }
    let path = config_path.unwrap_or_else(|| PathBuf::from("agent.toml"));
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fleet-agent: {e}");
            return ExitCode::from(2);
        }
    };
    let level = std::env::var("FLEET_AGENT_LOG")
        .ok()
        .and_then(|l| l.parse::<tracing::Level>().ok())
        .unwrap_or(tracing::Level::INFO);
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .init();
    let connector = match connector_for(&config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fleet-agent: daemon_url: {e}");
            return ExitCode::from(2);
        }
    };
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
        // Install the handlers before anything else so an early SIGTERM
        // drains instead of killing the process.
        let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
        let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        };
        fleet_agent::run(config, connector, shutdown)
            .await
            .map_err(|e| e.to_string())
    });
    match result {
        Ok(()) => {
            tracing::info!("fleet-agent: drained, exiting");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "fleet-agent: fatal");
            eprintln!("fleet-agent: {e}");
            ExitCode::FAILURE
        }
    }
}
