//! `fleet-daemon`: the fleet control plane.
//!
//! `FLEET_DAEMON_CONFIG=./daemon.toml fleet-daemon`, or with no config the
//! embedded default (redb in `$XDG_DATA_HOME/fleet` or `./.fleet`, TLS
//! WebSocket and HTTP on loopback, local `fleet-agent` nodes).

use std::path::PathBuf;
use std::process::ExitCode;

use fleet_daemon::config::{CONFIG_ENV, DaemonConfig};

const USAGE: &str = "\
fleet-daemon — the fleet control plane

USAGE:
    fleet-daemon [--config FILE]

The config file is FILE, else $FLEET_DAEMON_CONFIG; with neither, the
embedded default runs: a redb store in $XDG_DATA_HOME/fleet (or ./.fleet),
TLS WebSocket on 127.0.0.1:7443, HTTP on 127.0.0.1:7080, and a pool `local`
of nodes that are fleet-agent processes on this host.

OPTIONS:
    --config FILE   read the configuration from FILE
    -h, --help      print this help
    -V, --version   print the version

ENVIRONMENT:
    FLEET_DAEMON_CONFIG   config file (when --config is not given)
    FLEET_AGENT_BIN       fleet-agent binary for the local provider
    FLEET_LOG             log level: error, warn, info (default), debug, trace
";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut config: Option<PathBuf> = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "-h" | "--help" => {
                print!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            "-V" | "--version" => {
                println!("fleet-daemon {}", env!("CARGO_PKG_VERSION"));
                return ExitCode::SUCCESS;
            }
            "--config" => match args.next() {
                Some(p) => config = Some(PathBuf::from(p)),
                None => {
                    eprintln!("fleet-daemon: --config needs a file");
                    return ExitCode::from(2);
                }
            },
            other => {
                eprintln!("fleet-daemon: unknown argument {other:?}\n\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    init_logging();
    let config = config.or_else(|| std::env::var_os(CONFIG_ENV).map(PathBuf::from));
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
