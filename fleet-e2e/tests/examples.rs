//! The example user data scripts write an agent config the agent accepts.

use std::path::Path;

/// The agent.toml a script's heredoc writes, with the placeholders and the
/// shell's `$ip` filled in as they would be on a node.
fn agent_toml(script: &str) -> String {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(script),
    )
    .unwrap_or_else(|e| panic!("{script}: {e}"));
    let start = text
        .find("<<TOML\n")
        .unwrap_or_else(|| panic!("{script}: no agent.toml heredoc"))
        + "<<TOML\n".len();
    let end = text[start..]
        .find("\nTOML\n")
        .unwrap_or_else(|| panic!("{script}: unterminated heredoc"))
        + start;
    text[start..end]
        .replace("{{node}}", "pool-1-7")
        .replace("{{daemon_url}}", "wss://fleet.example.com:7443/v1/agent")
        .replace("{{pool}}", "builds")
        .replace("$ip", "203.0.113.7")
}

#[test]
fn the_example_user_data_configures_an_agent() {
    for script in [
        "fleet-provider-hetzner/examples/cloud-init.sh",
        "fleet-provider-aws/examples/user-data.sh",
    ] {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, agent_toml(script)).unwrap_or_else(|e| panic!("{e}"));
        let cfg = fleet_agent::config::Config::load(&path)
            .unwrap_or_else(|e| panic!("{script}: the agent refuses its config: {e}"));
        assert_eq!(cfg.node_id.as_str(), "pool-1-7", "{script}");
        assert_eq!(
            cfg.gateway_advertise.as_deref(),
            Some("203.0.113.7:7000"),
            "{script}"
        );
        assert_eq!(cfg.labels.get("pool").map(String::as_str), Some("builds"));
    }
}
