//! The provider a `daemon.toml` names, built with what it needs from the
//! daemon: local agents dial the daemon's WebSocket and trust its CA; a
//! cloud server gets the same through its user data, which is checked here
//! before any server is made; a bring-your-own host (`ssh`) gets them over
//! SSH, a container (`container`) its mounted files. The cloud providers are compiled only with the daemon's `aws` and
//! `hetzner` features; `ssh` and `container` are always in (the system's
//! OpenSSH client and container engine's command line: nothing heavy).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fleet_core::clock::Clock;
use fleet_core::money::{HourlyPrice, Money};
use fleet_core::provider::Provider;
use fleet_provider_local::{LocalOptions, LocalProvider, agent_binary};

use crate::config::{DaemonConfig, ProviderConfig};

/// What every provider needs from the running daemon.
pub(crate) struct ProviderContext<'a> {
    /// The daemon's WebSocket base URL (`wss://host:port`).
    pub(crate) ws_url: &'a str,
    /// The pool CA certificate, PEM, and its file.
    pub(crate) ca_pem: &'a str,
    pub(crate) ca_file: &'a Path,
    /// Host names the daemon's certificate is issued for.
    pub(crate) cert_hosts: &'a [String],
    pub(crate) data_dir: &'a Path,
    /// Where the daemon keeps logs (kept agent logs in `agents/`).
    pub(crate) log_dir: &'a Path,
    pub(crate) clock: Arc<dyn Clock>,
}

/// `[provider] hourly_price` of the local provider, in dollars (none: 0).
fn local_price(price: Option<&str>) -> Result<HourlyPrice, String> {
    let Some(p) = price else {
        return Ok(HourlyPrice(Money::ZERO));
    };
    let money = p
        .parse::<Money>()
        .map_err(|e| format!("[provider] hourly_price {p:?}: {e}"))?;
    if money < Money::ZERO {
        return Err(format!(
            "[provider] hourly_price {p:?}: a price is not negative"
        ));
    }
    Ok(HourlyPrice(money))
}

/// The provider `cfg` names; the error says what is wrong with its settings.
pub(crate) async fn build(
    cfg: &DaemonConfig,
    ctx: ProviderContext<'_>,
) -> Result<Arc<dyn Provider>, String> {
    match &cfg.provider {
        ProviderConfig::Local {
            agent_bin,
            max_nodes,
            dir,
            hourly_price,
        } => Ok(Arc::new(LocalProvider::new(
            LocalOptions {
                base_dir: dir.clone().unwrap_or_else(|| ctx.data_dir.join("local")),
                agent_bin: agent_binary(agent_bin.as_deref()),
                daemon_url: format!("{}{}", ctx.ws_url, fleet_transport_ws::AGENT_PATH),
                ca_file: ctx.ca_file.to_owned(),
                max_nodes: *max_nodes,
                heartbeat_interval_ms: cfg.timing.heartbeat_interval_ms,
                stop_timeout: Duration::from_secs(30),
                kept_logs: Some(cfg.agent_logs.kept_logs(ctx.log_dir)),
                hourly_price: local_price(hourly_price.as_deref())?,
            },
            ctx.clock,
        ))),
        ProviderConfig::Ssh(ssh) => {
            ssh_provider(cfg, ssh, &ctx).map(|p| Arc::new(p) as Arc<dyn Provider>)
        }
        ProviderConfig::Container(c) => {
            let context = fleet_provider_container::ContainerContext {
                base_dir: ctx.data_dir.join("container"),
                agent_bin: agent_binary(c.agent_bin.as_deref()),
                // Containers share the host's network: the daemon's own
                // address is theirs too.
                daemon_url: format!("{}{}", ctx.ws_url, fleet_transport_ws::AGENT_PATH),
                ca_pem: ctx.ca_pem.to_owned(),
                heartbeat_interval_ms: cfg.timing.heartbeat_interval_ms,
            };
            fleet_provider_container::ContainerProvider::new(c.clone(), context, ctx.clock.clone())
                .map(|p| Arc::new(p) as Arc<dyn Provider>)
        }
        #[cfg(feature = "hetzner")]
        ProviderConfig::Hetzner(h) => hetzner_provider(h, ctx.ca_pem, ctx.cert_hosts)
            .map(|p| Arc::new(p) as Arc<dyn Provider>),
        #[cfg(feature = "aws")]
        ProviderConfig::Aws(a) => aws_provider(a, ctx.ca_pem, ctx.cert_hosts)
            .await
            .map(|p| Arc::new(p) as Arc<dyn Provider>),
        #[cfg_attr(
            all(feature = "aws", feature = "hetzner"),
            expect(
                unreachable_patterns,
                reason = "reachable only without a cloud feature"
            )
        )]
        other => Err(format!(
            "this fleet-daemon was built without the `{}` feature",
            other.kind()
        )),
    }
}

#[cfg(feature = "hetzner")]
/// The largest user data the cloud providers accept (Hetzner 32 KiB; EC2
/// 16 KiB before base64, checked by the AWS provider's caller below).
const MAX_USER_DATA_BYTES: u64 = 32 * 1024;

#[cfg(any(feature = "aws", feature = "hetzner"))]
/// What a cloud server needs to join: the user data template and the
/// values the daemon fills into it, checked before any server is made.
struct AgentBootstrap {
    user_data: String,
    vars: std::collections::BTreeMap<String, String>,
}

#[cfg(any(feature = "aws", feature = "hetzner"))]
impl AgentBootstrap {
    /// Reads the template at `user_data` (at most `max_bytes`, using
    /// `{{bootstrap_token}}`) and checks that agents dialing `daemon_url`
    /// will accept the daemon's certificate (its host in `cert_hosts`).
    fn load(
        daemon_url: &str,
        user_data: &Path,
        max_bytes: u64,
        ca_pem: &str,
        cert_hosts: &[String],
    ) -> Result<AgentBootstrap, String> {
        let agent_url = agent_url(daemon_url, cert_hosts)?;
        let meta = std::fs::metadata(user_data)
            .map_err(|e| format!("user_data {}: {e}", user_data.display()))?;
        if meta.len() > max_bytes {
            return Err(format!(
                "user_data {}: {} bytes; the provider accepts at most {max_bytes}",
                user_data.display(),
                meta.len()
            ));
        }
        let text = std::fs::read_to_string(user_data)
            .map_err(|e| format!("user_data {}: {e}", user_data.display()))?;
        if !text.contains("{{bootstrap_token}}") {
            return Err(format!(
                "user_data {}: the template never uses {{{{bootstrap_token}}}}, so no agent could join",
                user_data.display()
            ));
        }
        let vars = [
            ("daemon_url".to_owned(), agent_url),
            ("ca_pem".to_owned(), ca_pem.trim_end().to_owned()),
        ]
        .into();
        Ok(AgentBootstrap {
            user_data: text,
            vars,
        })
    }
}

/// The agent URL for agents dialing the daemon at `daemon_url`
/// (`wss://host:port`), checked to be one they will trust: its host must
/// be one the daemon's certificate names (`cert_hosts`).
fn agent_url(daemon_url: &str, cert_hosts: &[String]) -> Result<String, String> {
    let host = daemon_url
        .strip_prefix("wss://")
        .map(|rest| rest.split(['/', '?']).next().unwrap_or(rest))
        .map(|authority| match authority.rsplit_once(':') {
            Some((host, port)) if port.bytes().all(|c| c.is_ascii_digit()) => host,
            _ => authority,
        })
        .map(|host| host.trim_start_matches('[').trim_end_matches(']'))
        .ok_or_else(|| format!("daemon_url {daemon_url:?} must be a wss:// URL"))?;
    if !cert_hosts.iter().any(|c| c == host) {
        return Err(format!(
            "daemon_url host {host:?} is not in [transport.ws] hosts {cert_hosts:?}: agents would refuse the daemon's certificate"
        ));
    }
    Ok(format!(
        "{}{}",
        daemon_url.trim_end_matches('/'),
        fleet_transport_ws::AGENT_PATH
    ))
}

/// An ssh provider from `[provider] kind = "ssh"`: its hosts dial
/// `daemon_url` (checked against the daemon's certificate) and get the
/// pool CA and this daemon's agent binary (unless `remote_agent_bin`).
fn ssh_provider(
    cfg: &DaemonConfig,
    ssh: &fleet_provider_ssh::SshConfig,
    ctx: &ProviderContext<'_>,
) -> Result<fleet_provider_ssh::SshProvider, String> {
    let mut ssh = ssh.clone();
    ssh.daemon_url = agent_url(&ssh.daemon_url, ctx.cert_hosts)?;
    let agent_bin = agent_binary(ssh.agent_bin.as_deref());
    if ssh.remote_agent_bin.is_none() && !agent_bin.is_file() {
        return Err(format!(
            "the fleet-agent to install on the hosts, {}, is not a file (set agent_bin, or remote_agent_bin for an agent the hosts have)",
            agent_bin.display()
        ));
    }
    let context = fleet_provider_ssh::SshContext {
        agent_bin,
        ca_pem: ctx.ca_pem.to_owned(),
        heartbeat_interval_ms: cfg.timing.heartbeat_interval_ms,
    };
    fleet_provider_ssh::SshProvider::new(ssh, context, ctx.clock.clone())
}

#[cfg(any(feature = "aws", feature = "hetzner"))]
/// A secret from `file` (trimmed), else from the environment variable `env`.
fn secret_from(file: Option<&Path>, env: &str, what: &str) -> Result<Option<String>, String> {
    let value = match file {
        Some(path) => {
            std::fs::read_to_string(path).map_err(|e| format!("{what} {}: {e}", path.display()))?
        }
        None => std::env::var(env).unwrap_or_default(),
    };
    let value = value.trim();
    Ok((!value.is_empty()).then(|| value.to_owned()))
}

#[cfg(feature = "hetzner")]
/// A Hetzner provider from `[provider] kind = "hetzner"`: the token from its
/// file or `$HCLOUD_TOKEN`, the user data template from its file.
fn hetzner_provider(
    h: &crate::config::HetznerProviderConfig,
    ca_pem: &str,
    cert_hosts: &[String],
) -> Result<fleet_provider_hetzner::HetznerProvider, String> {
    use fleet_provider_hetzner::{HetznerConfig, HetznerProvider};
    let boot = AgentBootstrap::load(
        &h.daemon_url,
        &h.user_data,
        MAX_USER_DATA_BYTES,
        ca_pem,
        cert_hosts,
    )?;
    let token = secret_from(h.token_file.as_deref(), "HCLOUD_TOKEN", "token_file")?
        .ok_or("no API token: set token_file or HCLOUD_TOKEN")?;
    let mut cfg = HetznerConfig::new(fleet_core::protocol::Secret::new(token), h.location.clone());
    if let Some(url) = &h.api_url {
        cfg.api_url = url.clone();
    }
    if let Some(rate) = &h.eur_to_usd {
        let m: fleet_core::Money = rate
            .parse()
            .map_err(|e| format!("eur_to_usd {rate:?}: {e}"))?;
        cfg.eur_to_usd_micros = u64::try_from(m.micros())
            .ok()
            .filter(|m| *m > 0)
            .ok_or_else(|| format!("eur_to_usd {rate:?} must be positive"))?;
    }
    cfg.server_types = h.server_types.clone();
    cfg.ssh_keys = h.ssh_keys.clone();
    if let Some(public) = h.public_ipv4 {
        cfg.public_ipv4 = public;
    }
    cfg.max_instances = h.max_instances;
    cfg.user_data = Some(boot.user_data);
    cfg.user_data_vars = boot.vars;
    HetznerProvider::new(cfg).map_err(|e| e.to_string())
}

#[cfg(feature = "aws")]
/// An EC2 provider from `[provider] kind = "aws"`: keys from the files
/// named, else the SDK's default chain (environment, shared config profile,
/// SSO, web identity, container credentials, instance role).
async fn aws_provider(
    a: &crate::config::AwsProviderConfig,
    ca_pem: &str,
    cert_hosts: &[String],
) -> Result<fleet_provider_aws::Ec2Provider, String> {
    use fleet_provider_aws::{Ec2Config, Ec2Provider, StaticKeys};
    // EC2 takes 16 KiB of user data before base64.
    let boot = AgentBootstrap::load(&a.daemon_url, &a.user_data, 16 * 1024, ca_pem, cert_hosts)?;
    let from_file = |file: Option<&Path>, what: &str| -> Result<Option<String>, String> {
        let Some(path) = file else { return Ok(None) };
        let value =
            std::fs::read_to_string(path).map_err(|e| format!("{what} {}: {e}", path.display()))?;
        let value = value.trim();
        if value.is_empty() {
            return Err(format!("{what} {}: the file is empty", path.display()));
        }
        Ok(Some(value.to_owned()))
    };
    let access_key_id = from_file(a.access_key_id_file.as_deref(), "access_key_id_file")?;
    let secret_access_key = from_file(
        a.secret_access_key_file.as_deref(),
        "secret_access_key_file",
    )?;
    let mut cfg = Ec2Config::from_chain();
    cfg.aws.static_keys = match (access_key_id, secret_access_key) {
        (Some(access_key_id), Some(secret_access_key)) => Some(StaticKeys {
            access_key_id,
            secret_access_key,
            session_token: None,
        }),
        (None, None) => None,
        _ => {
            return Err(
                "access_key_id_file without secret_access_key_file (or the reverse): set both, \
                 or neither to use the SDK's credential chain"
                    .to_owned(),
            );
        }
    };
    cfg.aws.region = a.region.clone();
    cfg.aws.profile = a.profile.clone();
    cfg.aws.endpoint = a.endpoint.clone();
    cfg.instance_types = a.instance_types.clone();
    cfg.prices = a.prices.clone();
    if let Some(p) = a.spot_per_mille {
        cfg.spot_per_mille = p;
    }
    if let Some(gb) = a.root_volume_gb {
        cfg.root_volume_gb = gb;
    }
    cfg.subnet_id = a.subnet_id.clone();
    cfg.public_ipv4 = a.public_ipv4;
    cfg.security_group_ids = a.security_group_ids.clone();
    cfg.key_name = a.key_name.clone();
    cfg.instance_profile = a.instance_profile.clone();
    cfg.max_instances = a.max_instances;
    cfg.user_data = Some(boot.user_data);
    cfg.user_data_vars = boot.vars;
    let provider = Ec2Provider::new(cfg).await.map_err(|e| e.to_string())?;
    tracing::info!(
        region = provider.region(),
        profile = a.profile.as_deref().unwrap_or("(default chain)"),
        "EC2 provider configured"
    );
    Ok(provider)
}

#[cfg(all(test, any(feature = "aws", feature = "hetzner")))]
mod tests {
    use super::*;
    #[cfg(feature = "hetzner")]
    use crate::config::HetznerProviderConfig;

    #[cfg(feature = "hetzner")]
    /// A config whose files live in their own subdirectory of `dir`.
    fn config(dir: &Path, template: &str) -> HetznerProviderConfig {
        let dir = tempfile::tempdir_in(dir)
            .unwrap_or_else(|e| panic!("{e}"))
            .keep();
        let token = dir.join("token");
        std::fs::write(&token, "secret\n").unwrap_or_else(|e| panic!("{e}"));
        let user_data = dir.join("user-data.sh");
        std::fs::write(&user_data, template).unwrap_or_else(|e| panic!("{e}"));
        HetznerProviderConfig {
            location: "fsn1".to_owned(),
            token_file: Some(token),
            daemon_url: "wss://fleet.example.com:7443".to_owned(),
            user_data,
            server_types: Vec::new(),
            ssh_keys: Vec::new(),
            public_ipv4: None,
            max_instances: None,
            api_url: None,
            eur_to_usd: None,
        }
    }

    #[cfg(feature = "hetzner")]
    #[test]
    fn hetzner_settings_are_checked_before_any_server_is_made() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let hosts = vec!["fleet.example.com".to_owned()];
        let good = config(dir.path(), "token={{bootstrap_token}}");
        assert!(hetzner_provider(&good, "CA", &hosts).is_ok());

        let err = |c: &HetznerProviderConfig, hosts: &[String]| {
            hetzner_provider(c, "CA", hosts).err().unwrap_or_default()
        };
        assert!(err(&good, &["other.host".to_owned()]).contains("[transport.ws] hosts"));
        let mut c = good.clone();
        c.daemon_url = "https://fleet.example.com".to_owned();
        assert!(err(&c, &hosts).contains("wss://"));
        let mut c = good.clone();
        c.eur_to_usd = Some("-1".to_owned());
        assert!(err(&c, &hosts).contains("eur_to_usd"));
        let c = config(dir.path(), "no token here");
        assert!(err(&c, &hosts).contains("bootstrap_token"));
        let mut c = good.clone();
        std::fs::write(dir.path().join("blank"), "  \n").unwrap_or_else(|e| panic!("{e}"));
        c.token_file = Some(dir.path().join("blank"));
        assert!(err(&c, &hosts).contains("no API token"));
        let big = dir.path().join("big.sh");
        std::fs::write(&big, "x".repeat(40 * 1024)).unwrap_or_else(|e| panic!("{e}"));
        let mut c = good;
        c.user_data = big;
        assert!(err(&c, &hosts).contains("at most"));
    }

    #[cfg(feature = "aws")]
    #[tokio::test]
    async fn aws_settings_name_what_is_missing() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let user_data = dir.path().join("user-data.sh");
        std::fs::write(&user_data, "t={{bootstrap_token}}").unwrap_or_else(|e| panic!("{e}"));
        let key = dir.path().join("key");
        std::fs::write(&key, "AKID\n").unwrap_or_else(|e| panic!("{e}"));
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s\n").unwrap_or_else(|e| panic!("{e}"));
        let hosts = vec!["fleet.example.com".to_owned()];
        let good = crate::config::AwsProviderConfig {
            region: Some("eu-west-1".to_owned()),
            profile: None,
            access_key_id_file: Some(key),
            secret_access_key_file: Some(secret),
            daemon_url: "wss://fleet.example.com:7443".to_owned(),
            user_data,
            instance_types: Vec::new(),
            prices: [("c7i.large".to_owned(), "0.099".to_owned())].into(),
            spot_per_mille: None,
            root_volume_gb: None,
            subnet_id: None,
            public_ipv4: None,
            security_group_ids: Vec::new(),
            key_name: None,
            instance_profile: None,
            max_instances: None,
            endpoint: None,
        };
        assert!(aws_provider(&good, "CA", &hosts).await.is_ok());
        let err = async |c: &crate::config::AwsProviderConfig| {
            aws_provider(c, "CA", &hosts)
                .await
                .err()
                .unwrap_or_default()
        };
        let mut c = good.clone();
        c.prices.insert("m7i.large".to_owned(), "lots".to_owned());
        let e = err(&c).await;
        assert!(e.contains("prices.m7i.large"), "{e}");
        let mut c = good.clone();
        c.access_key_id_file = Some(dir.path().join("nope"));
        let e = err(&c).await;
        assert!(e.contains("access_key_id_file"), "{e}");
        let mut c = good.clone();
        c.daemon_url = "wss://elsewhere:7443".to_owned();
        let e = err(&c).await;
        assert!(e.contains("[transport.ws] hosts"), "{e}");
        // A key id without its secret is a mistake.
        let mut c = good.clone();
        c.secret_access_key_file = None;
        let e = err(&c).await;
        assert!(e.contains("without secret_access_key_file"), "{e}");
        // Neither: the SDK's chain (credentials are looked up on first use).
        let mut c = good;
        c.access_key_id_file = None;
        c.secret_access_key_file = None;
        assert!(aws_provider(&c, "CA", &hosts).await.is_ok());
    }
}

#[cfg(test)]
mod ssh_settings {
    #[test]
    fn agents_must_trust_the_daemon_url_they_are_given() {
        let hosts = ["fleet.internal".to_owned(), "127.0.0.1".to_owned()];
        assert_eq!(
            super::agent_url("wss://fleet.internal:7443", &hosts).ok(),
            Some("wss://fleet.internal:7443/v1/agent".to_owned())
        );
        let err = super::agent_url("wss://elsewhere:7443", &hosts)
            .err()
            .unwrap_or_default();
        assert!(err.contains("not in [transport.ws] hosts"), "{err}");
        let err = super::agent_url("http://fleet.internal", &hosts)
            .err()
            .unwrap_or_default();
        assert!(err.contains("wss://"), "{err}");
    }
}

#[cfg(test)]
mod local_price_tests {
    use super::*;

    #[test]
    fn a_local_price_is_dollars_and_a_bad_one_is_named() {
        assert_eq!(local_price(None), Ok(HourlyPrice(Money::ZERO)));
        assert_eq!(
            local_price(Some("0.25")),
            Ok(HourlyPrice(Money::from_micros(250_000)))
        );
        for bad in ["cheap", "-1"] {
            let err = local_price(Some(bad)).err().unwrap_or_default();
            assert!(
                err.contains("hourly_price") && err.contains(bad),
                "{bad}: {err}"
            );
        }
    }
}
