//! `fleet-agent`: the node-side executor of fleet (Unix only).
//!
//! The agent dials the daemon (see [`link`]), presents a single-use
//! bootstrap token on first contact and keeps the mTLS identity it gets
//! back ([`identity`]); heartbeats with CPU and memory ([`load`]); runs the
//! commands the daemon sends ([`exec`]) and streams their events and
//! redacted output ([`redact`]); serves the per-claim mTLS [`gateway`],
//! which forwards to the node's build service or serves the built-in
//! [`exec_api`]; watches for spot interruption ([`imds`]); and drains on
//! SIGTERM ([`session`]).
//!
//! Entry points: [`Config::load`], [`connector_for`] and [`run`].

pub mod config;
pub mod exec;
pub mod exec_api;
pub mod gateway;
pub mod identity;
pub mod imds;
pub mod link;
pub mod load;
pub mod queue;
pub mod redact;
pub mod score;
pub mod session;
pub mod task_events;

use std::future::Future;
use std::sync::Arc;

pub use config::{Config, ConfigError};
pub use link::{Connector, Link, LinkError, Welcome};
pub use session::{AgentError, Handles, run_with};

/// The connector for the configured `daemon_url`.
pub fn connector_for(config: &Config) -> Result<Arc<dyn Connector>, LinkError> {
    match &config.daemon_url {
        config::DaemonUrl::Tcp(addr) => Ok(Arc::new(link::tcp::TcpConnector::new(*addr))),
        config::DaemonUrl::Ws { url, .. } => {
            link::ws::connector_for(url, config.ca_file.as_deref())
        }
    }
}

/// Runs the agent until it has drained, after `shutdown` resolves (SIGTERM)
/// or the daemon sends `Drain`.
pub async fn run<F>(
    config: Config,
    connector: Arc<dyn Connector>,
    shutdown: F,
) -> Result<(), AgentError>
where
    F: Future<Output = ()> + Send,
{
    run_with(config, connector, shutdown, None).await
}
