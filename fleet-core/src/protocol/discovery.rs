//! `daemon.json`: what a daemon writes into its data dir so that a client
//! on the same host (`fleetctl`, a build tool) finds its addresses and the
//! files it must trust.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The file name of [`Discovery`] in the daemon's data dir.
pub const DISCOVERY_FILE: &str = "daemon.json";

/// The file in the daemon's data dir holding the first admin API token
/// (mode 0600), for a client on the same host.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// The environment variable naming the daemon's config file; a client on
/// the same host reads its `data_dir` from there.
pub const DAEMON_CONFIG_ENV: &str = "FLEET_DAEMON_CONFIG";

/// What `daemon.json` says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Discovery {
    /// HTTP API base URL.
    pub http: String,
    /// WebSocket base URL (`wss://host:port`; paths `/v1/agent`, `/v1/claims`).
    pub ws: String,
    /// The pool CA certificate file.
    pub ca_file: PathBuf,
    /// The daemon's Ed25519 signer public key file (base64).
    pub signer_file: PathBuf,
    /// The namespace.
    pub namespace: String,
    /// The daemon's process id.
    pub pid: u32,
}
