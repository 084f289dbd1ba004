//! Finding a daemon on this host: its data dir, and the `daemon.json`
//! ([`Discovery`]) it writes there with its addresses and trust files.

use std::path::{Path, PathBuf};

use fleet_core::protocol::{DAEMON_CONFIG_ENV, DISCOVERY_FILE, Discovery, MAX_MESSAGE_BYTES};

use crate::ClientError;

/// The data dir a daemon uses when its config names none:
/// `$XDG_DATA_HOME/fleet`, else `./.fleet`.
pub fn standard_data_dir() -> PathBuf {
    match std::env::var_os("XDG_DATA_HOME") {
        Some(x) if !x.is_empty() => PathBuf::from(x).join("fleet"),
        _ => PathBuf::from(".fleet"),
    }
}

/// The data dir of the daemon on this host: the `data_dir` of the config
/// `$FLEET_DAEMON_CONFIG` names, else [`standard_data_dir`].
pub fn local_data_dir() -> PathBuf {
    #[derive(serde::Deserialize)]
    struct DataDirOnly {
        data_dir: Option<PathBuf>,
    }
    std::env::var_os(DAEMON_CONFIG_ENV)
        .filter(|p| !p.is_empty())
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|text| toml::from_str::<DataDirOnly>(&text).ok())
        .and_then(|c| c.data_dir)
        .unwrap_or_else(standard_data_dir)
}

/// Reads `daemon.json` from a daemon's data dir (at most
/// [`MAX_MESSAGE_BYTES`]).
pub fn read_discovery(data_dir: &Path) -> Result<Discovery, ClientError> {
    let path = data_dir.join(DISCOVERY_FILE);
    let unreadable = |why: String| {
        ClientError::Invalid(format!(
            "{}: {why} (is the daemon running with this data dir?)",
            path.display()
        ))
    };
    let len = std::fs::metadata(&path)
        .map_err(|e| unreadable(e.to_string()))?
        .len();
    if len > MAX_MESSAGE_BYTES as u64 {
        return Err(unreadable(format!("larger than {MAX_MESSAGE_BYTES} bytes")));
    }
    let text = std::fs::read(&path).map_err(|e| unreadable(e.to_string()))?;
    serde_json::from_slice(&text)
        .map_err(|e| ClientError::Invalid(format!("{}: {e}", path.display())))
}
