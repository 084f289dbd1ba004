//! Config TOML: the daemon's `daemon.toml` (`DaemonConfig::parse`) and the
//! agent's `agent.toml` (`fleet_agent::Config::parse`). Both must answer
//! every text with a config or a typed `ConfigError`.

use std::path::Path;

use fleet_core::config::ConfigError;
use fleet_daemon::config::DaemonConfig;

use super::Target;
use crate::mutate::{self, Rng};

pub(super) struct ConfigToml;

impl Target for ConfigToml {
    fn name(&self) -> &'static str {
        "config"
    }

    fn run(&self, input: &[u8]) -> Result<String, String> {
        // The loaders read the file as UTF-8; text that is not is refused
        // before parsing, so the parsers see what a lossy read gives.
        let text = String::from_utf8_lossy(input);
        let daemon = match DaemonConfig::parse(&text) {
            Ok(cfg) => {
                // What the daemon does next with a parsed config.
                let _ = cfg.check_features();
                let _ = cfg.data_dir();
                "ok".to_owned()
            }
            Err(e) => label(&e),
        };
        let agent = match fleet_agent::Config::parse(Path::new("agent.toml"), &text) {
            Ok(cfg) => {
                let _ = cfg.bootstrap_token();
                "ok".to_owned()
            }
            Err(e) => label(&e),
        };
        Ok(format!("daemon {daemon}, agent {agent}"))
    }

    fn mutate_structured(&self, input: &[u8], pool: &[Vec<u8>], rng: &mut Rng) -> Option<Vec<u8>> {
        mutate::toml(input, pool, rng)
    }

    fn dictionary(&self, seeds: &[Vec<u8>]) -> Vec<Vec<u8>> {
        mutate::toml_dictionary(seeds)
    }
}

/// An error's kind, and for an invalid value its key (without indices).
fn label(e: &ConfigError) -> String {
    match e {
        ConfigError::Invalid { key, .. } => format!("invalid {}", super::label_of(key)),
        other => other.kind().to_owned(),
    }
}
