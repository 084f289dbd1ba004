//! `agent.toml`: what the agent reads at start, validated up front so a bad
//! file fails with a message naming the key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub use fleet_core::config::ConfigError;
use fleet_core::ids::NodeId;
use fleet_core::protocol::Secret;
use serde::Deserialize;

/// The largest config file read (it is a handful of keys).
const MAX_CONFIG_BYTES: u64 = 256 * 1024;

/// Environment variable that overrides `bootstrap_token_file`.
pub const BOOTSTRAP_TOKEN_ENV: &str = "FLEET_AGENT_BOOTSTRAP_TOKEN";

/// Every key `agent.toml` accepts (for "unknown key" messages).
pub const KEYS: &[&str] = &[
    "node_id",
    "daemon_url",
    "ca_file",
    "bootstrap_token_file",
    "identity_dir",
    "work_dir",
    "heartbeat_interval_ms",
    "gateway_listen",
    "gateway_advertise",
    "backend",
    "imds_url",
    "imds_poll_interval_ms",
    "labels",
    "drain_timeout_ms",
    "reconnect_min_ms",
    "reconnect_max_ms",
];

/// How the agent reaches the daemon, from `daemon_url`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DaemonUrl {
    /// `ws://host:port/path` or `wss://…`: the WebSocket transport.
    Ws {
        /// The URL as written.
        url: String,
        /// Whether it is `wss`.
        tls: bool,
    },
    /// `fleet+tcp://127.0.0.1:port`: length-prefixed protocol envelopes over
    /// plain loopback TCP ([`crate::link::tcp`]); for tests and local
    /// development only.
    Tcp(SocketAddr),
}

/// Where the gateway forwards a claimant's byte stream.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Backend {
    /// `tcp://host:port`.
    Tcp(String),
    /// `unix:///path/to/socket`.
    Unix(PathBuf),
}

/// The raw file, exactly as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    node_id: String,
    daemon_url: String,
    ca_file: Option<PathBuf>,
    bootstrap_token_file: Option<PathBuf>,
    identity_dir: Option<PathBuf>,
    work_dir: Option<PathBuf>,
    heartbeat_interval_ms: Option<u64>,
    gateway_listen: Option<String>,
    gateway_advertise: Option<String>,
    backend: Option<String>,
    imds_url: Option<String>,
    imds_poll_interval_ms: Option<u64>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    drain_timeout_ms: Option<u64>,
    reconnect_min_ms: Option<u64>,
    reconnect_max_ms: Option<u64>,
}

/// The validated agent configuration.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// This node's id.
    pub node_id: NodeId,
    /// The daemon's endpoint.
    pub daemon_url: DaemonUrl,
    /// CA that signs the daemon's TLS certificate (for `wss`), if not the
    /// pool CA.
    pub ca_file: Option<PathBuf>,
    /// The single-use bootstrap token (from `FLEET_AGENT_BOOTSTRAP_TOKEN` or
    /// `bootstrap_token_file`), read when the agent has no identity yet.
    pub bootstrap_token_file: Option<PathBuf>,
    /// Where the issued certificate and key are kept (key mode 0600).
    pub identity_dir: PathBuf,
    /// Commands' default working directory, the gateway's file area and the
    /// agent's state.
    pub work_dir: PathBuf,
    /// Heartbeat interval; `None` takes the daemon's (from `Welcome`).
    pub heartbeat_interval_ms: Option<u64>,
    /// Gateway listen address; `None` disables the gateway.
    pub gateway_listen: Option<SocketAddr>,
    /// Gateway address told to the daemon (and so to claimants); defaults to
    /// the bound listen address.
    pub gateway_advertise: Option<String>,
    /// The local build service; `None` serves the built-in exec API.
    pub backend: Option<Backend>,
    /// EC2 instance metadata base URL (`http://169.254.169.254`); `None`
    /// disables the spot watcher.
    pub imds_url: Option<String>,
    /// How often the spot watcher polls.
    pub imds_poll_interval_ms: u64,
    /// Node labels reported in `Hello`.
    pub labels: BTreeMap<String, String>,
    /// How long a drain waits for in-flight commands before killing them.
    pub drain_timeout_ms: u64,
    /// First reconnect delay.
    pub reconnect_min_ms: u64,
    /// Largest reconnect delay.
    pub reconnect_max_ms: u64,
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let meta = std::fs::metadata(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        if meta.len() > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge {
                path: path.to_owned(),
                limit: MAX_CONFIG_BYTES,
            });
        }
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(path, &text)
    }

    /// Parses and validates config text; `path` only names the file in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: describe_toml_error(&e),
        })?;
        let node_id = NodeId::new(raw.node_id.clone()).map_err(|e| {
            ConfigError::invalid_value("node_id", raw.node_id.clone(), e.to_string())
        })?;
        let daemon_url = parse_daemon_url(&raw.daemon_url)?;
        let work_dir = raw
            .work_dir
            .unwrap_or_else(|| PathBuf::from("fleet-agent-work"));
        let identity_dir = raw
            .identity_dir
            .unwrap_or_else(|| work_dir.join("identity"));
        let gateway_listen = match raw.gateway_listen {
            None => None,
            Some(s) => Some(s.parse::<SocketAddr>().map_err(|e| {
                ConfigError::invalid_value("gateway_listen", s.clone(), e.to_string())
            })?),
        };
        if let Some(adv) = &raw.gateway_advertise {
            check_host_port("gateway_advertise", adv)?;
        }
        let backend = raw.backend.as_deref().map(parse_backend).transpose()?;
        if let Some(u) = &raw.imds_url {
            check_http_url("imds_url", u)?;
        }
        let positive = |key: &'static str, v: Option<u64>, default: u64| match v {
            Some(0) => Err(ConfigError::invalid_value(
                key,
                "0".to_owned(),
                "must be greater than zero".to_owned(),
            )),
            Some(v) => Ok(v),
            None => Ok(default),
        };
        let heartbeat_interval_ms = match raw.heartbeat_interval_ms {
            Some(v) => Some(positive("heartbeat_interval_ms", Some(v), 0)?),
            None => None,
        };
        let reconnect_min_ms = positive("reconnect_min_ms", raw.reconnect_min_ms, 500)?;
        let reconnect_max_ms = positive("reconnect_max_ms", raw.reconnect_max_ms, 30_000)?;
        if reconnect_max_ms < reconnect_min_ms {
            return Err(ConfigError::invalid_value(
                "reconnect_max_ms",
                reconnect_max_ms.to_string(),
                format!("smaller than reconnect_min_ms ({reconnect_min_ms})"),
            ));
        }
        Ok(Config {
            node_id,
            daemon_url,
            ca_file: raw.ca_file,
            bootstrap_token_file: raw.bootstrap_token_file,
            identity_dir,
            work_dir,
            heartbeat_interval_ms,
            gateway_listen,
            gateway_advertise: raw.gateway_advertise,
            backend,
            imds_url: raw.imds_url.map(|u| u.trim_end_matches('/').to_owned()),
            imds_poll_interval_ms: positive(
                "imds_poll_interval_ms",
                raw.imds_poll_interval_ms,
                5_000,
            )?,
            labels: raw.labels,
            drain_timeout_ms: positive("drain_timeout_ms", raw.drain_timeout_ms, 30_000)?,
            reconnect_min_ms,
            reconnect_max_ms,
        })
    }

    /// The bootstrap token: `FLEET_AGENT_BOOTSTRAP_TOKEN` if set, else the
    /// trimmed contents of `bootstrap_token_file`, else `None`. Read on each
    /// attempt so an operator can fix a refused token without a restart.
    pub fn bootstrap_token(&self) -> Option<Secret> {
        if let Ok(t) = std::env::var(BOOTSTRAP_TOKEN_ENV)
            && !t.trim().is_empty()
        {
            return Some(Secret::new(t.trim()));
        }
        let path = self.bootstrap_token_file.as_ref()?;
        let text = std::fs::read_to_string(path).ok()?;
        let t = text.trim();
        (!t.is_empty()).then(|| Secret::new(t))
    }
}

/// Turns a TOML/serde error into one line naming the key.
fn describe_toml_error(e: &toml::de::Error) -> String {
    let msg = e.message();
    if let Some(rest) = msg.strip_prefix("unknown field ") {
        // serde: "unknown field `x`, expected one of `a`, `b`"
        let name = rest.split('`').nth(1).unwrap_or(rest);
        return format!(
            "unknown key \"{name}\" (expected one of {})",
            KEYS.join(", ")
        );
    }
    if let Some(rest) = msg.strip_prefix("missing field ") {
        let name = rest.trim_matches('`');
        return format!("missing required key \"{name}\"");
    }
    let line = e
        .span()
        .map(|s| format!(" (at byte {})", s.start))
        .unwrap_or_default();
    format!("{}{line}", msg.trim())
}

fn parse_daemon_url(s: &str) -> Result<DaemonUrl, ConfigError> {
    let bad = |why: &str| ConfigError::invalid_value("daemon_url", s.to_owned(), why.to_owned());
    let (scheme, rest) = s
        .split_once("://")
        .ok_or_else(|| bad("expected ws://, wss:// or fleet+tcp://"))?;
    let authority = rest.split('/').next().unwrap_or("");
    match scheme {
        "ws" | "wss" => {
            if authority.is_empty() || authority.contains(char::is_whitespace) {
                return Err(bad("missing or malformed host"));
            }
            Ok(DaemonUrl::Ws {
                url: s.to_owned(),
                tls: scheme == "wss",
            })
        }
        "fleet+tcp" => {
            let addr: SocketAddr = authority
                .parse()
                .map_err(|e: std::net::AddrParseError| bad(&e.to_string()))?;
            if !addr.ip().is_loopback() {
                return Err(bad("fleet+tcp is plain text and allowed on loopback only"));
            }
            Ok(DaemonUrl::Tcp(addr))
        }
        other => Err(bad(&format!(
            "unsupported scheme {other:?} (expected ws, wss or fleet+tcp)"
        ))),
    }
}

fn parse_backend(s: &str) -> Result<Backend, ConfigError> {
    let bad = |why: &str| ConfigError::invalid_value("backend", s.to_owned(), why.to_owned());
    if let Some(rest) = s.strip_prefix("tcp://") {
        check_host_port("backend", rest).map_err(|_| bad("expected tcp://host:port"))?;
        Ok(Backend::Tcp(rest.to_owned()))
    } else if let Some(rest) = s.strip_prefix("unix://") {
        if !rest.starts_with('/') {
            return Err(bad("expected unix:///absolute/path"));
        }
        Ok(Backend::Unix(PathBuf::from(rest)))
    } else {
        Err(bad("expected tcp://host:port or unix:///path"))
    }
}

fn check_host_port(key: &'static str, s: &str) -> Result<(), ConfigError> {
    let ok = s
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
    if ok && !s.contains(char::is_whitespace) {
        Ok(())
    } else {
        Err(ConfigError::invalid_value(
            key,
            s.to_owned(),
            "expected host:port".to_owned(),
        ))
    }
}

fn check_http_url(key: &'static str, s: &str) -> Result<(), ConfigError> {
    let rest = s.strip_prefix("http://").ok_or_else(|| {
        ConfigError::invalid_value(key, s.to_owned(), "expected http://host[:port]".to_owned())
    })?;
    let authority = rest.split('/').next().unwrap_or("");
    if authority.is_empty() || authority.contains(char::is_whitespace) {
        return Err(ConfigError::invalid_value(
            key,
            s.to_owned(),
            "missing host".to_owned(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("agent.toml"), text)
    }

    const MIN: &str = "node_id = \"n1\"\ndaemon_url = \"wss://daemon:7000/agent\"\n";

    #[test]
    fn minimal_config_gets_defaults() -> Result<(), ConfigError> {
        let c = parse(MIN)?;
        assert_eq!(c.node_id.as_str(), "n1");
        assert!(matches!(c.daemon_url, DaemonUrl::Ws { tls: true, .. }));
        assert_eq!(c.reconnect_min_ms, 500);
        assert!(c.backend.is_none());
        Ok(())
    }

    #[test]
    fn unknown_key_is_named() {
        let e = parse(&format!("{MIN}heartbeat_intervl = 5\n")).map(|_| ());
        let msg = e.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("unknown key \"heartbeat_intervl\""), "{msg}");
        assert!(msg.contains("heartbeat_interval_ms"), "{msg}");
    }

    #[test]
    fn bad_values_name_their_key() {
        for (extra, key) in [
            ("backend = \"http://x\"\n", "backend"),
            ("gateway_listen = \"nope\"\n", "gateway_listen"),
            ("imds_url = \"ftp://x\"\n", "imds_url"),
            ("heartbeat_interval_ms = 0\n", "heartbeat_interval_ms"),
        ] {
            let msg = parse(&format!("{MIN}{extra}"))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(msg.contains(key), "{extra}: {msg}");
        }
        let msg = parse("node_id = \"n1\"\ndaemon_url = \"http://x\"\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(msg.contains("invalid daemon_url \"http://x\""), "{msg}");
        let msg = parse("node_id = \"n1\"\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(msg.contains("daemon_url"), "{msg}");
        let msg = parse("node_id = \"n1\"\ndaemon_url = \"fleet+tcp://10.0.0.1:80\"\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(msg.contains("loopback"), "{msg}");
    }
}
