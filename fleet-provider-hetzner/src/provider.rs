//! [`HetznerProvider`]: the fleet's [`Provider`] over the Hetzner Cloud API.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use async_trait::async_trait;
use fleet_core::billing::BillingModel;
use fleet_core::ids::{InstanceType, NodeId};
use fleet_core::money::{HourlyPrice, Money};
use fleet_core::protocol::Arch;
use fleet_core::provider::{
    BootSource, Capabilities, Instance, InstanceRef, InstanceState, Market, NodeSpec, Offering,
    Provider, ProviderError, SnapshotRef, TAG_FLEET, TAG_NAMESPACE, TAG_NODE, TAG_POOL, TagFilter,
};
use hcloud::apis::{actions_api, images_api, server_types_api, servers_api};
use hcloud::models::{self, Action, Server, ServerType};
use models::action::Status as ActionStatus;
use models::server::Status;

use crate::api::{self, Api, Retry};
use crate::config::{HetznerConfig, PRIMARY_IPV4_EUR_HOURLY};

/// Servers (or server types) per page when listing (the API allows up to 50).
const PAGE: i64 = 50;
/// The longest node part of a server name: a hostname label holds 63
/// characters, 9 go to the `-<hash>` suffix.
const NAME_NODE_CHARS: usize = 54;

/// Creates, powers, resizes, snapshots and deletes Hetzner Cloud servers.
///
/// - A node is a server labelled with the fleet tags and named after the
///   node ([`server_name`]). The instance of a node is the server labelled
///   with its node id, fleet id and namespace — never another fleet's server
///   with the same node id — so a retried `create` returns the same server.
/// - Every call waits for its action to finish (polling `GET /actions/{id}`),
///   so the controller sees the state it asked for.
/// - `stop` is a graceful ACPI shutdown; a server still on after
///   `shutdown_timeout` is powered off.
/// - `resize` is `change_type` without a disk upgrade (so the type can go
///   back down); Hetzner needs the server off for it.
/// - `delete` removes only a server labelled with the node it is asked for.
/// - Hetzner sells no spot capacity and bills a stopped server in full
///   ([`BillingModel::hetzner`]): strategies read that and keep warm pools
///   instead of stopping.
#[derive(Debug)]
pub struct HetznerProvider {
    cfg: HetznerConfig,
    api: Api,
    capabilities: Capabilities,
    billing: BillingModel,
}

/// The server name for `spec`: the node id as a hostname (lowercased, `_` →
/// `-`, at most 54 characters) and 8 hex digits of a hash of its fleet id,
/// namespace and node id. Server names are unique per project, so two
/// fleets (or two node ids differing only in case) must not share one;
/// the fleet finds its servers by labels, never by name.
pub fn server_name(spec: &NodeSpec) -> String {
    let host: String = spec
        .node
        .as_str()
        .trim_start_matches(['-', '_'])
        .chars()
        .take(NAME_NODE_CHARS)
        .map(|c| match c {
            '_' => '-',
            c => c.to_ascii_lowercase(),
        })
        .collect();
    let host = if host.is_empty() { "node" } else { &host };
    let tag = |k: &str| spec.tags.get(k).map_or("", String::as_str);
    let key = format!("{}\n{}\n{}", tag(TAG_FLEET), tag(TAG_NAMESPACE), spec.node);
    format!("{host}-{:08x}", fnv1a(key.as_bytes()))
}

/// 32-bit FNV-1a: stable across builds and platforms, unlike std's hasher.
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

/// The label selector of the one server that is `spec`'s node: its node id,
/// and its fleet id and namespace (or their absence, if the spec has none).
fn owner_selector(spec: &NodeSpec) -> String {
    let mut terms = vec![format!("{TAG_NODE}={}", spec.node)];
    for key in [TAG_FLEET, TAG_NAMESPACE] {
        terms.push(match spec.tags.get(key) {
            Some(v) => format!("{key}={v}"),
            None => format!("!{key}"),
        });
    }
    terms.join(",")
}

/// Whether `labels` make a server `spec`'s node (the selector, checked again
/// here rather than trusted).
fn owned_by(spec: &NodeSpec, labels: &HashMap<String, String>) -> bool {
    labels.get(TAG_NODE).map(String::as_str) == Some(spec.node.as_str())
        && [TAG_FLEET, TAG_NAMESPACE]
            .iter()
            .all(|k| labels.get(*k) == spec.tags.get(*k))
}

fn state_of(status: Status) -> InstanceState {
    match status {
        Status::Running => InstanceState::Running,
        Status::Stopping => InstanceState::Stopping,
        Status::Off => InstanceState::Stopped,
        Status::Deleting => InstanceState::Terminated,
        Status::Initializing
        | Status::Starting
        | Status::Migrating
        | Status::Rebuilding
        | Status::Unknown => InstanceState::Pending,
    }
}

/// Parses a non-negative decimal (`"0.0060000000"`) as (digits, scale).
fn decimal(s: &str) -> Option<(u128, u32)> {
    let (int, frac) = s.trim().split_once('.').unwrap_or((s.trim(), ""));
    if int.is_empty() && frac.is_empty() || frac.len() > 18 {
        return None;
    }
    let all = format!("{int}{frac}");
    if !all.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    Some((all.parse().ok()?, u32::try_from(frac.len()).ok()?))
}

/// A euro price per hour as micro-dollars per hour at `rate` µ$/€, rounded
/// up as a provider bills.
pub fn eur_hourly_to_usd(net: &str, rate_micros: u64) -> Option<HourlyPrice> {
    let (digits, scale) = decimal(net)?;
    let den = 10u128.checked_pow(scale)?;
    let micros = (digits.checked_mul(u128::from(rate_micros))?).div_ceil(den);
    Some(HourlyPrice(Money::from_micros(i64::try_from(micros).ok()?)))
}

/// The address a server without IPv4 answers on: the first host of its
/// IPv6 network (`2001:db8:1::/64` → `2001:db8:1::1`), as Hetzner
/// configures its images.
fn ipv6_host(network: &str) -> Option<String> {
    let prefix = network.strip_suffix("/64").unwrap_or(network);
    let addr: std::net::Ipv6Addr = prefix.parse().ok()?;
    let mut segments = addr.segments();
    segments[7] = 1;
    Some(std::net::Ipv6Addr::from(segments).to_string())
}

/// Hetzner's billing rules for servers built as `cfg` says: a primary
/// IPv4 address at its euro price and `cfg`'s rate, or none.
fn hetzner_billing(cfg: &HetznerConfig) -> Result<BillingModel, ProviderError> {
    let public_ipv4 = if cfg.public_ipv4 {
        eur_hourly_to_usd(PRIMARY_IPV4_EUR_HOURLY, cfg.eur_to_usd_micros).ok_or_else(|| {
            ProviderError::Permanent(format!(
                "eur_to_usd {} µ$/€ overflows the IPv4 price",
                cfg.eur_to_usd_micros
            ))
        })?
    } else {
        HourlyPrice(Money::ZERO)
    };
    Ok(BillingModel::hetzner().with_public_ipv4(public_ipv4))
}

impl HetznerProvider {
    /// A provider for `cfg`'s project and location.
    pub fn new(cfg: HetznerConfig) -> Result<HetznerProvider, ProviderError> {
        if cfg.location.is_empty() {
            return Err(ProviderError::Permanent("location must be set".to_owned()));
        }
        let api = Api::new(&cfg)?;
        Ok(HetznerProvider {
            capabilities: Capabilities {
                stop_start: true,
                resize: true,
                resize_requires_stop: true,
                snapshot: true,
                spot: false,
                max_instances: cfg.max_instances,
            },
            billing: hetzner_billing(&cfg)?,
            cfg,
            api,
        })
    }

    /// Waits until `action` finished; its error if it failed.
    async fn wait(&self, what: &str, mut action: Action) -> Result<(), ProviderError> {
        let deadline = Instant::now() + self.cfg.action_timeout;
        loop {
            match action.status {
                ActionStatus::Success => return Ok(()),
                ActionStatus::Error => {
                    let (code, message) = action
                        .error
                        .map(|e| (e.code, e.message))
                        .unwrap_or_default();
                    let text = format!(
                        "{what}: action {} ({}) failed: {code}: {message}",
                        action.id, action.command
                    );
                    return Err(api::classify_action_error(&code, text));
                }
                ActionStatus::Running => {}
            }
            if Instant::now() >= deadline {
                return Err(ProviderError::Transient(format!(
                    "{what}: action {} ({}) still running after {:?}",
                    action.id, action.command, self.cfg.action_timeout
                )));
            }
            tokio::time::sleep(self.cfg.poll_interval).await;
            let id = action.id;
            action = *self
                .api
                .call(what, Retry::Idempotent, |c| async move {
                    actions_api::get_action(c, actions_api::GetActionParams { id }).await
                })
                .await?
                .action;
        }
    }

    async fn server(&self, what: &str, id: i64) -> Result<Server, ProviderError> {
        let answer = self
            .api
            .call(what, Retry::Idempotent, |c| async move {
                servers_api::get_server(c, servers_api::GetServerParams { id }).await
            })
            .await?;
        answer.server.map(|s| *s).ok_or_else(|| {
            ProviderError::Transient(format!("{what}: the answer for server {id} holds none"))
        })
    }

    /// Every server whose labels match `selector` (`k=v,!k,…`), all pages.
    async fn servers(&self, what: &str, selector: &str) -> Result<Vec<Server>, ProviderError> {
        let mut out = Vec::new();
        let mut page = 1;
        loop {
            let params = servers_api::ListServersParams {
                label_selector: Some(selector.to_owned()),
                page: Some(page),
                per_page: Some(PAGE),
                ..Default::default()
            };
            let answer = self
                .api
                .call(what, Retry::Idempotent, |c| {
                    let params = params.clone();
                    async move { servers_api::list_servers(c, params).await }
                })
                .await?;
            out.extend(answer.servers);
            match answer.meta.pagination.next_page {
                Some(next) if next > page => page = next,
                _ => return Ok(out),
            }
        }
    }

    /// The server of `spec`'s node in `spec`'s fleet, if one exists.
    async fn server_of(
        &self,
        what: &str,
        spec: &NodeSpec,
    ) -> Result<Option<Server>, ProviderError> {
        let servers = self.servers(what, &owner_selector(spec)).await?;
        Ok(servers
            .into_iter()
            .find(|s| owned_by(spec, &s.labels) && s.status != Status::Deleting))
    }

    fn instance(&self, s: Server) -> Result<Instance, ProviderError> {
        let node = s
            .labels
            .get(TAG_NODE)
            .and_then(|n| NodeId::new(n.clone()).ok())
            .ok_or_else(|| {
                ProviderError::Permanent(format!("server {} has no valid {TAG_NODE} label", s.id))
            })?;
        let instance_type = InstanceType::new(s.server_type.name.clone())
            .map_err(|e| ProviderError::Permanent(format!("server {}: {e}", s.id)))?;
        Ok(Instance {
            node,
            provider_id: s.id.to_string(),
            instance_type,
            market: Market::OnDemand,
            state: state_of(s.status),
            address: match (s.public_net.ipv4, s.public_net.ipv6) {
                (Some(v4), _) => Some(v4.ip),
                (None, v6) => v6.and_then(|v| ipv6_host(&v.ip)),
            },
            tags: s.labels.into_iter().collect(),
            created_at: fleet_core::time::parse_rfc3339(&s.created).unwrap_or(0),
        })
    }

    fn user_data(&self, spec: &NodeSpec) -> Option<String> {
        let template = self.cfg.user_data.as_ref()?;
        let mut vars: BTreeMap<&str, &str> = self
            .cfg
            .user_data_vars
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        vars.insert("node", spec.node.as_str());
        vars.insert("pool", spec.pool.as_str());
        vars.insert(
            "bootstrap_token",
            spec.bootstrap_token.as_ref().map_or("", |t| t.expose()),
        );
        let mut out = template.clone();
        for (k, v) in vars {
            out = out.replace(&format!("{{{{{k}}}}}"), v);
        }
        Some(out)
    }

    /// Runs a server action (`poweron`, …) on `id`, waits for it and returns
    /// the server after it.
    async fn act(&self, what: &str, id: i64, kind: Power) -> Result<Server, ProviderError> {
        let action = self
            .api
            .call(what, Retry::Once, |c| async move {
                match kind {
                    Power::On => {
                        servers_api::power_on_server(c, servers_api::PowerOnServerParams { id })
                            .await
                            .map(|a| a.action)
                            .map_err(erase)
                    }
                    Power::Shutdown => {
                        servers_api::shutdown_server(c, servers_api::ShutdownServerParams { id })
                            .await
                            .map(|a| a.action)
                            .map_err(erase)
                    }
                    Power::Off => {
                        servers_api::power_off_server(c, servers_api::PowerOffServerParams { id })
                            .await
                            .map(|a| a.action)
                            .map_err(erase)
                    }
                }
            })
            .await?;
        self.wait(what, *action).await?;
        self.server(what, id).await
    }
}

/// A server's power actions.
#[derive(Debug, Clone, Copy)]
enum Power {
    On,
    Shutdown,
    Off,
}

/// Forgets the endpoint's typed error (we read the raw body instead), so
/// calls to different endpoints share one error type.
fn erase<E>(e: hcloud::apis::Error<E>) -> hcloud::apis::Error<()> {
    use hcloud::apis::{Error, ResponseContent};
    match e {
        Error::Reqwest(e) => Error::Reqwest(e),
        Error::Serde(e) => Error::Serde(e),
        Error::Io(e) => Error::Io(e),
        Error::ResponseError(r) => Error::ResponseError(ResponseContent {
            status: r.status,
            content: r.content,
            entity: None,
        }),
    }
}

/// An offering for server type `t` in `location`, if it is sold there.
fn offering(t: &ServerType, location: &str, rate: u64) -> Option<Offering> {
    let deprecated = t.deprecated == Some(true) || matches!(t.deprecation, Some(Some(_)));
    // `locations` lists where the type can be created (empty: no such data).
    let placeable = t.locations.is_empty()
        || t.locations
            .iter()
            .any(|l| l.name == location && l.deprecation.is_none());
    if deprecated || !placeable {
        return None;
    }
    let price = t.prices.iter().find(|p| p.location == location)?;
    let (Some(on_demand), Ok(instance_type), Ok(cpus)) = (
        eur_hourly_to_usd(&price.price_hourly.net, rate),
        InstanceType::new(t.name.clone()),
        u32::try_from(t.cores),
    ) else {
        tracing::warn!(server_type = %t.name, "server type skipped: unusable name, cores or price");
        return None;
    };
    Some(Offering {
        instance_type,
        cpus,
        // Saturating float casts: a negative or absurd size cannot panic.
        memory_mb: (t.memory * 1024.0).round() as u64,
        arch: match t.architecture {
            models::Architecture::Arm => Arch::Aarch64,
            models::Architecture::X86 => Arch::X86_64,
        },
        disk_gb: t.disk.round() as u32,
        on_demand,
        spot: None,
    })
}

#[async_trait]
impl Provider for HetznerProvider {
    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    fn billing(&self) -> &BillingModel {
        &self.billing
    }

    async fn offerings(&self) -> Result<Vec<Offering>, ProviderError> {
        let what = "list server types";
        let mut out = Vec::new();
        let mut page = 1;
        loop {
            let answer = self
                .api
                .call(what, Retry::Idempotent, |c| async move {
                    let params = server_types_api::ListServerTypesParams {
                        name: None,
                        page: Some(page),
                        per_page: Some(PAGE),
                    };
                    server_types_api::list_server_types(c, params).await
                })
                .await?;
            out.extend(answer.server_types.iter().filter_map(|t| {
                let wanted =
                    self.cfg.server_types.is_empty() || self.cfg.server_types.contains(&t.name);
                wanted
                    .then(|| offering(t, &self.cfg.location, self.cfg.eur_to_usd_micros))
                    .flatten()
            }));
            match answer.meta.pagination.next_page {
                Some(next) if next > page => page = next,
                _ => break,
            }
        }
        if out.is_empty() {
            return Err(ProviderError::Permanent(format!(
                "no server type is sold in location {} (wanted: {:?})",
                self.cfg.location, self.cfg.server_types
            )));
        }
        Ok(out)
    }

    async fn create(&self, spec: &NodeSpec) -> Result<Instance, ProviderError> {
        let what = format!("create server for node {}", spec.node);
        if spec.market == Market::Spot {
            return Err(ProviderError::Unsupported(
                "Hetzner Cloud sells no spot capacity".to_owned(),
            ));
        }
        if let Some(s) = self.server_of(&what, spec).await? {
            return self.instance(s); // a retried create: the same server
        }
        let image = match &spec.source {
            BootSource::Image { image } => image.clone(),
            BootSource::Snapshot(s) => s.id.clone(),
            other => {
                return Err(ProviderError::Unsupported(format!("boot source {other:?}")));
            }
        };
        let mut labels: HashMap<String, String> = spec.tags.clone().into_iter().collect();
        labels.insert(TAG_NODE.to_owned(), spec.node.to_string());
        labels.insert(TAG_POOL.to_owned(), spec.pool.to_string());
        let request = models::CreateServerRequest {
            name: server_name(spec),
            server_type: spec.instance_type.to_string(),
            image,
            location: Some(self.cfg.location.clone()),
            labels: Some(labels),
            user_data: self.user_data(spec),
            ssh_keys: (!self.cfg.ssh_keys.is_empty()).then(|| self.cfg.ssh_keys.clone()),
            start_after_create: Some(true),
            // Omitted, the API gives both; without IPv4, IPv6 still.
            public_net: (!self.cfg.public_ipv4).then(|| {
                Box::new(models::CreateServerRequestPublicNet {
                    enable_ipv4: Some(false),
                    enable_ipv6: Some(true),
                    ..Default::default()
                })
            }),
            ..Default::default()
        };
        let created = self
            .api
            .call(&what, Retry::Once, |c| {
                let create_server_request = request.clone();
                async move {
                    let params = servers_api::CreateServerParams {
                        create_server_request,
                    };
                    servers_api::create_server(c, params).await
                }
            })
            .await;
        let created = match created {
            Ok(created) => created,
            Err(ProviderError::AlreadyExists(e)) => {
                // The name is taken: by this node's server if a concurrent
                // create made it meanwhile; anything else is not ours.
                return match self.server_of(&what, spec).await? {
                    Some(s) => self.instance(s),
                    None => Err(ProviderError::AlreadyExists(e)),
                };
            }
            Err(e) => return Err(e),
        };
        self.wait(&what, *created.action).await?;
        for next in created.next_actions {
            self.wait(&what, next).await?;
        }
        let s = self.server(&what, created.server.id).await?;
        self.instance(s)
    }

    async fn start(&self, r: &InstanceRef) -> Result<Instance, ProviderError> {
        let what = format!("start node {}", r.node);
        let id = api::server_id(&what, &r.provider_id)?;
        let s = self.act(&what, id, Power::On).await?;
        self.instance(s)
    }

    async fn stop(&self, r: &InstanceRef) -> Result<Instance, ProviderError> {
        let what = format!("stop node {}", r.node);
        let id = api::server_id(&what, &r.provider_id)?;
        let mut s = self.act(&what, id, Power::Shutdown).await?;
        let deadline = Instant::now() + self.cfg.shutdown_timeout;
        while s.status != Status::Off {
            if Instant::now() >= deadline {
                tracing::warn!(node = %r.node, "graceful shutdown took too long; powering off");
                s = self.act(&what, id, Power::Off).await?;
                break;
            }
            tokio::time::sleep(self.cfg.poll_interval).await;
            s = self.server(&what, id).await?;
        }
        self.instance(s)
    }

    async fn resize(&self, r: &InstanceRef, to: &InstanceType) -> Result<Instance, ProviderError> {
        let what = format!("resize node {} to {to}", r.node);
        let id = api::server_id(&what, &r.provider_id)?;
        let action = self
            .api
            .call(&what, Retry::Once, |c| async move {
                let params = servers_api::ChangeTypeOfServerParams {
                    id,
                    change_type_of_server_request: models::ChangeTypeOfServerRequest {
                        server_type: to.to_string(),
                        upgrade_disk: false,
                    },
                };
                servers_api::change_type_of_server(c, params).await
            })
            .await?
            .action;
        self.wait(&what, *action).await?;
        let s = self.server(&what, id).await?;
        self.instance(s)
    }

    async fn snapshot(&self, r: &InstanceRef) -> Result<SnapshotRef, ProviderError> {
        let what = format!("snapshot node {}", r.node);
        let id = api::server_id(&what, &r.provider_id)?;
        let request = models::CreateImageFromServerRequest {
            description: Some(format!("fleet snapshot of {}", r.node)),
            labels: Some(HashMap::from([(TAG_NODE.to_owned(), r.node.to_string())])),
            r#type: Some(models::create_image_from_server_request::Type::Snapshot),
        };
        let created = self
            .api
            .call(&what, Retry::Once, |c| {
                let create_image_from_server_request = request.clone();
                async move {
                    let params = servers_api::CreateImageFromServerParams {
                        id,
                        create_image_from_server_request,
                    };
                    servers_api::create_image_from_server(c, params).await
                }
            })
            .await?;
        let image_id = created.image.map(|i| i.id).ok_or_else(|| {
            ProviderError::Transient(format!("{what}: the answer names no image"))
        })?;
        if let Some(action) = created.action {
            self.wait(&what, *action).await?;
        }
        let image = self
            .api
            .call(&what, Retry::Idempotent, |c| async move {
                images_api::get_image(c, images_api::GetImageParams { id: image_id }).await
            })
            .await?
            .image
            .ok_or_else(|| {
                ProviderError::Transient(format!(
                    "{what}: the answer for image {image_id} holds none"
                ))
            })?;
        let gb = image.image_size.unwrap_or(image.disk_size).ceil().max(1.0);
        Ok(SnapshotRef {
            id: image.id.to_string(),
            size_gb: gb as u32,
            created_at: fleet_core::time::parse_rfc3339(&image.created).unwrap_or(0),
        })
    }

    async fn delete(&self, r: &InstanceRef) -> Result<(), ProviderError> {
        let what = format!("delete node {}", r.node);
        let id = api::server_id(&what, &r.provider_id)?;
        // Only this node's server is deleted, whatever id the caller holds.
        let s = match self.server(&what, id).await {
            Ok(s) => s,
            Err(ProviderError::NotFound(_)) => return Ok(()), // deleted already
            Err(e) => return Err(e),
        };
        if s.labels.get(TAG_NODE).map(String::as_str) != Some(r.node.as_str()) {
            return Err(ProviderError::Permanent(format!(
                "{what}: server {id} is not labelled {TAG_NODE}={}; not deleting it",
                r.node
            )));
        }
        if s.status == Status::Deleting {
            return Ok(()); // on its way out; `list` no longer shows it
        }
        let answer = self
            .api
            .call(&what, Retry::Idempotent, |c| async move {
                servers_api::delete_server(c, servers_api::DeleteServerParams { id }).await
            })
            .await;
        match answer {
            Ok(answer) => match answer.action {
                Some(action) => match self.wait(&what, *action).await {
                    Err(ProviderError::NotFound(_)) | Ok(()) => Ok(()),
                    Err(e) => Err(e),
                },
                None => Ok(()),
            },
            Err(ProviderError::NotFound(_)) => Ok(()), // deleted meanwhile
            Err(e) => Err(e),
        }
    }

    async fn list(&self, tags: &TagFilter) -> Result<Vec<Instance>, ProviderError> {
        // Every filter label goes into the selector, so the API returns only
        // what matches; without a node filter, only fleet servers.
        let mut terms: Vec<String> = tags.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
        if !tags.0.contains_key(TAG_NODE) {
            terms.push(TAG_NODE.to_owned());
        }
        let servers = self.servers("list servers", &terms.join(",")).await?;
        let mut out = Vec::with_capacity(servers.len());
        for s in servers {
            if s.status == Status::Deleting {
                continue;
            }
            match self.instance(s) {
                Ok(i) if tags.matches(&i.tags) => out.push(i),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "server skipped in the inventory"),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_core::ids::PoolName;

    #[test]
    fn euro_prices_convert_exactly_and_round_up() {
        let p = |s| eur_hourly_to_usd(s, 1_080_000).map(|p| p.0.micros());
        assert_eq!(p("0.0060000000"), Some(6_480));
        assert_eq!(p("0.0110000000"), Some(11_880));
        assert_eq!(p("0.0000001"), Some(1), "rounded up to the micro-dollar");
        assert_eq!(p("1"), Some(1_080_000));
        assert_eq!(p("abc"), None);
        assert_eq!(p("-1"), None);
        assert_eq!(p(""), None);
    }

    fn spec(node: &str, tags: &[(&str, &str)]) -> NodeSpec {
        NodeSpec {
            node: NodeId::new(node).unwrap_or_else(|e| panic!("{e}")),
            pool: PoolName::new("p").unwrap_or_else(|e| panic!("{e}")),
            instance_type: InstanceType::new("cx22").unwrap_or_else(|e| panic!("{e}")),
            market: Market::OnDemand,
            source: BootSource::Image {
                image: "ubuntu-24.04".to_owned(),
            },
            tags: tags
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            bootstrap_token: None,
        }
    }

    fn valid_hostname_label(s: &str) -> bool {
        (1..=63).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    }

    #[test]
    fn server_names_are_hostnames_unique_per_fleet() {
        let a = spec(
            "Build_Pool-1-7",
            &[(TAG_FLEET, "fa"), (TAG_NAMESPACE, "ns")],
        );
        let name = server_name(&a);
        assert!(name.starts_with("build-pool-1-7-"), "{name}");
        assert!(valid_hostname_label(&name), "{name}");
        assert_eq!(name, server_name(&a.clone()), "stable");
        let b = spec(
            "Build_Pool-1-7",
            &[(TAG_FLEET, "fb"), (TAG_NAMESPACE, "ns")],
        );
        assert_ne!(name, server_name(&b), "another fleet, another name");
        let c = spec(
            "build-pool-1-7",
            &[(TAG_FLEET, "fa"), (TAG_NAMESPACE, "ns")],
        );
        assert_ne!(name, server_name(&c), "node ids differing in case");
        for node in ["_x", "-", &"A".repeat(64), "n_"] {
            let n = server_name(&spec(node, &[]));
            assert!(valid_hostname_label(&n), "{node:?} -> {n:?}");
        }
    }

    #[test]
    fn debug_output_never_shows_the_token() {
        let cfg = HetznerConfig::new(fleet_core::protocol::Secret::new("tok-sekrit"), "fsn1");
        let p = HetznerProvider::new(cfg).unwrap_or_else(|e| panic!("{e}"));
        let shown = format!("{p:?}");
        assert!(!shown.contains("tok-sekrit"), "{shown}");
        assert!(shown.contains("api.hetzner.cloud"), "{shown}");
    }

    #[test]
    fn the_owner_selector_names_node_fleet_and_namespace() {
        let s = spec("n-1", &[(TAG_FLEET, "f1"), (TAG_NAMESPACE, "ns")]);
        assert_eq!(
            owner_selector(&s),
            "fleet-node=n-1,fleet-id=f1,fleet-namespace=ns"
        );
        assert_eq!(
            owner_selector(&spec("n-1", &[])),
            "fleet-node=n-1,!fleet-id,!fleet-namespace"
        );
        let labels = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let mine = labels(&[(TAG_NODE, "n-1"), (TAG_FLEET, "f1"), (TAG_NAMESPACE, "ns")]);
        assert!(owned_by(&s, &mine));
        let other = labels(&[(TAG_NODE, "n-1"), (TAG_FLEET, "f2"), (TAG_NAMESPACE, "ns")]);
        assert!(!owned_by(&s, &other));
        let unfleeted = labels(&[(TAG_NODE, "n-1"), (TAG_NAMESPACE, "ns")]);
        assert!(!owned_by(&s, &unfleeted));
    }
}
