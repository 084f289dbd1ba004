//! `fleetctl`: the fleet command line, as a library so its parts can be
//! tested. The binary is [`Cli`] (clap) + [`run`].
//!
//! Where things come from:
//!
//! - the data dir: `--data-dir`, else the `data_dir` of the config in
//!   `FLEET_DAEMON_CONFIG`, else `$XDG_DATA_HOME/fleet`, else `./.fleet`
//!   (as the daemon);
//! - the daemon's addresses and trust files: `<data dir>/daemon.json`,
//!   written by the daemon ([`fleet_core::protocol::Discovery`]);
//! - the API token: `--token`, else `$FLEET_TOKEN`, else
//!   `<data dir>/admin.token`.

pub mod args;
pub mod backup;
pub mod claimdir;
pub mod commands;
#[cfg(feature = "doctor")]
pub mod doctor;
pub mod exec;
pub mod http;
pub mod render;

use std::fmt;
use std::path::{Path, PathBuf};

use fleet_core::protocol::Secret;
use fleet_core::protocol::{DISCOVERY_FILE, Discovery};

pub use args::{Cli, Command, Global, parse};
pub use commands::run;

/// Environment variable holding the API token (read by clap as the
/// fallback for `--token`).
pub const TOKEN_ENV: &str = "FLEET_TOKEN";

/// Why fleetctl failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CtlError {
    /// The command line is wrong (exit code 2).
    #[error("{0}")]
    Usage(String),
    /// The command failed (exit code 1).
    #[error("{0}")]
    Failed(String),
}

impl CtlError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            CtlError::Usage(_) => 2,
            CtlError::Failed(_) => 1,
        }
    }
}

/// Shorthand for a failure with a message.
pub fn fail(msg: impl Into<String>) -> CtlError {
    CtlError::Failed(msg.into())
}

/// Everything a command may need, resolved from flags, environment and
/// files.
pub struct Context {
    /// Global flags.
    pub global: Global,
    /// The data dir.
    pub data_dir: PathBuf,
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("data_dir", &self.data_dir)
            .field("json", &self.global.json)
            .finish_non_exhaustive()
    }
}

/// The data dir the daemon on this host uses.
pub fn default_data_dir() -> PathBuf {
    fleet_client::discovery::local_data_dir()
}

/// Reads a small text file with a clear error.
pub fn read_text(path: &Path, what: &str) -> Result<String, CtlError> {
    const MAX: u64 = 4 << 20;
    match std::fs::metadata(path) {
        Ok(m) if m.len() > MAX => {
            return Err(fail(format!(
                "{what} {}: larger than 4 MiB",
                path.display()
            )));
        }
        Ok(_) => {}
        Err(e) => return Err(fail(format!("{what} {}: {e}", path.display()))),
    }
    std::fs::read_to_string(path).map_err(|e| fail(format!("{what} {}: {e}", path.display())))
}

impl Context {
    /// Resolves the data dir.
    pub fn new(global: Global) -> Context {
        let data_dir = global.data_dir.clone().unwrap_or_else(default_data_dir);
        Context { global, data_dir }
    }

    /// The discovery file's path.
    pub fn discovery_path(&self) -> PathBuf {
        self.data_dir.join(DISCOVERY_FILE)
    }

    /// Reads `daemon.json`.
    pub fn discovery(&self) -> Result<Discovery, CtlError> {
        fleet_client::read_discovery(&self.data_dir)
            .map_err(|e| fail(format!("daemon discovery file {e}; pass --data-dir")))
    }

    /// The HTTP API base URL.
    pub fn api_url(&self) -> Result<String, CtlError> {
        match &self.global.url {
            Some(u) => Ok(u.clone()),
            None => self.discovery().map(|d| d.http),
        }
    }

    /// The API token, if one is configured anywhere.
    pub fn token(&self) -> Result<Option<Secret>, CtlError> {
        // `--token` or `$FLEET_TOKEN` (clap reads the variable); an empty
        // one, as `FLEET_TOKEN=` leaves, falls through to the file.
        if let Some(t) = &self.global.token
            && !t.expose().is_empty()
        {
            return Ok(Some(t.clone()));
        }
        let path = self.data_dir.join(fleet_core::protocol::ADMIN_TOKEN_FILE);
        match std::fs::read_to_string(&path) {
            Ok(t) if !t.trim().is_empty() => Ok(Some(Secret::new(t.trim()))),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(fail(format!("API token file {}: {e}", path.display()))),
        }
    }

    /// The HTTP API client; for `https://` it trusts the pool CA named in
    /// `daemon.json` when there is one.
    pub fn api(&self) -> Result<http::Api, CtlError> {
        let url = self.api_url()?;
        let ca = match (url.starts_with("https://"), self.discovery()) {
            (true, Ok(d)) => Some(read_text(&d.ca_file, "daemon CA file")?),
            _ => None,
        };
        http::Api::with_ca(&url, self.token()?, ca.as_deref())
    }

    /// Where a claim's files live by default.
    pub fn claim_dir(&self, id: &str) -> PathBuf {
        self.data_dir.join("claims").join(id)
    }

    /// A claim-plane client (`wss://…/v1/claims`) trusting the daemon's CA.
    pub async fn claim_client(&self) -> Result<fleet_transport_ws::WsClaimClient, CtlError> {
        let d = self.discovery()?;
        let ca_pem = read_text(&d.ca_file, "daemon CA file")?;
        let url = ws_claims_url(&d.ws);
        // The daemon admits claim-plane callers by API token. A daemon that
        // is restarting is waited for, and a call whose connection drops is
        // re-sent with the same claim id.
        fleet_client::connect_claim_plane(
            &url,
            &ca_pem,
            self.token()?,
            fleet_client::DEFAULT_CONNECT_ATTEMPTS,
        )
        .await
        .map_err(|e| fail(format!("cannot reach the claim plane at {url}: {e}")))
    }
}

/// `wss://host:port` → `wss://host:port/v1/claims` (a URL with a path is
/// kept).
pub use fleet_client::claims_url as ws_claims_url;

/// A fresh random id: `c-` and 20 hex characters.
pub fn random_id(prefix: &str) -> Result<String, CtlError> {
    let mut bytes = [0u8; 10];
    getrandom::getrandom(&mut bytes).map_err(|e| fail(format!("no randomness available: {e}")))?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{prefix}-{hex}"))
}
