//! [`HetznerProvider`]: the fleet's [`Provider`] over the Hetzner Cloud API.

use std::collections::BTreeMap;
use std::time::Instant;

use async_trait::async_trait;
use fleet_core::billing::BillingModel;
use fleet_core::ids::{InstanceType, NodeId};
use fleet_core::money::{HourlyPrice, Money};
use fleet_core::protocol::Arch;
use fleet_core::provider::{
    BootSource, Capabilities, Instance, InstanceRef, InstanceState, Market, NodeSpec, Offering,
    Provider, ProviderError, SnapshotRef, TAG_NODE, TAG_POOL, TagFilter,
};
use serde_json::json;

use crate::api::{
    self, Action, CreatedServer, OneAction, OneImage, OneServer, Server, ServerTypes, Servers,
};
use crate::config::HetznerConfig;
use fleet_http::{Answer, HttpClient, HttpError};

/// Servers per page when listing (the API allows up to 50).
const PAGE: u32 = 50;

/// Creates, powers, resizes, snapshots and deletes Hetzner Cloud servers.
///
/// - A node is a server named after the node id (lowercased, `_` → `-`, as
///   server names must be hostnames) and labelled with the fleet tags;
///   `create` first looks for a server labelled with the node id, so a
///   retried create returns the same server, and a name clash with a server
///   of this node is adopted.
/// - Every call waits for its action to finish (polling `GET /actions/{id}`),
///   so the controller sees the state it asked for.
/// - `stop` is a graceful ACPI shutdown; a server still on after
///   `shutdown_timeout` is powered off.
/// - `resize` is `change_type` without a disk upgrade (so the type can go
///   back down); Hetzner needs the server off for it.
/// - Hetzner sells no spot capacity and bills a stopped server in full
///   ([`BillingModel::hetzner`]): strategies read that and keep warm pools
///   instead of stopping.
#[derive(Debug)]
pub struct HetznerProvider {
    cfg: HetznerConfig,
    http: HttpClient,
    capabilities: Capabilities,
    billing: BillingModel,
}

/// A server name for `node`: hostnames allow no `_`.
pub fn server_name(node: &NodeId) -> String {
    node.as_str().to_ascii_lowercase().replace('_', "-")
}

fn state_of(status: &str) -> InstanceState {
    match status {
        "running" => InstanceState::Running,
        "stopping" => InstanceState::Stopping,
        "off" => InstanceState::Stopped,
        "deleting" => InstanceState::Terminated,
        // initializing, starting, migrating, rebuilding, unknown
        _ => InstanceState::Pending,
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

impl HetznerProvider {
    /// A provider for `cfg`'s project and location.
    pub fn new(cfg: HetznerConfig) -> Result<HetznerProvider, ProviderError> {
        if cfg.location.is_empty() {
            return Err(ProviderError::Permanent("location must be set".to_owned()));
        }
        let http = HttpClient::new(&cfg.api_url, cfg.request_timeout)
            .map_err(|e| ProviderError::Permanent(format!("api_url: {e}")))?;
        Ok(HetznerProvider {
            capabilities: Capabilities {
                stop_start: true,
                resize: true,
                resize_requires_stop: true,
                snapshot: true,
                spot: false,
                max_instances: cfg.max_instances,
            },
            billing: BillingModel::hetzner(),
            cfg,
            http,
        })
    }

    async fn call(
        &self,
        what: &str,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<Answer, ProviderError> {
        let mut headers = vec![(
            "authorization",
            format!("Bearer {}", self.cfg.token.expose()),
        )];
        if body.is_some() {
            headers.push(("content-type", "application/json".to_owned()));
        }
        let body = body.map(|b| b.to_string().into_bytes());
        let answer = self
            .http
            .send(method, path, &headers, body)
            .await
            .map_err(|e| match e {
                HttpError::Invalid(why) => ProviderError::Permanent(format!("{what}: {why}")),
                other => ProviderError::Transient(format!("{what}: {other}")),
            })?;
        if answer.is_success() {
            Ok(answer)
        } else {
            Err(api::error_of(what, &answer))
        }
    }

    /// Waits until `action` finished; its error if it failed.
    async fn wait(&self, what: &str, mut action: Action) -> Result<(), ProviderError> {
        let deadline = Instant::now() + self.cfg.action_timeout;
        loop {
            match action.status.as_str() {
                "success" => return Ok(()),
                "error" => {
                    let (code, message) = action
                        .error
                        .map(|e| (e.code, e.message))
                        .unwrap_or_default();
                    let text = format!("{what}: action {} failed: {code}: {message}", action.id);
                    return Err(match code.as_str() {
                        "resource_unavailable" | "placement_error" => ProviderError::Capacity(text),
                        "resource_limit_exceeded" => ProviderError::Quota(text),
                        _ => ProviderError::Transient(text),
                    });
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(ProviderError::Transient(format!(
                    "{what}: action {} still {} after {:?}",
                    action.id, action.status, self.cfg.action_timeout
                )));
            }
            tokio::time::sleep(self.cfg.poll_interval).await;
            let a = self
                .call(what, "GET", &format!("/actions/{}", action.id), None)
                .await?;
            action = api::parse::<OneAction>(what, &a)?.action;
        }
    }

    async fn server(&self, what: &str, id: &str) -> Result<Server, ProviderError> {
        let a = self
            .call(what, "GET", &format!("/servers/{id}"), None)
            .await?;
        Ok(api::parse::<OneServer>(what, &a)?.server)
    }

    /// Every server whose labels match `selector` (`k=v,…`).
    async fn servers(&self, what: &str, selector: &str) -> Result<Vec<Server>, ProviderError> {
        let mut out = Vec::new();
        let mut page = 1;
        loop {
            let path = format!(
                "/servers?label_selector={}&page={page}&per_page={PAGE}",
                query_escape(selector)
            );
            let a = self.call(what, "GET", &path, None).await?;
            let s: Servers = api::parse(what, &a)?;
            out.extend(s.servers);
            match s.meta.pagination.and_then(|p| p.next_page) {
                Some(next) if next > page => page = next,
                _ => return Ok(out),
            }
        }
    }

    /// The server of `node`, if one exists.
    async fn server_of(&self, what: &str, node: &NodeId) -> Result<Option<Server>, ProviderError> {
        let selector = format!("{TAG_NODE}={node}");
        Ok(self.servers(what, &selector).await?.into_iter().next())
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
            state: state_of(&s.status),
            address: s.public_net.and_then(|n| n.ipv4).map(|v| v.ip),
            tags: s.labels,
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

    /// Runs a server action (`poweron`, …) and returns the server after it.
    async fn act(
        &self,
        what: &str,
        r: &InstanceRef,
        action: &str,
        body: Option<serde_json::Value>,
    ) -> Result<Server, ProviderError> {
        let path = format!("/servers/{}/actions/{action}", r.provider_id);
        let a = self
            .call(what, "POST", &path, Some(body.unwrap_or_else(|| json!({}))))
            .await?;
        self.wait(what, api::parse::<OneAction>(what, &a)?.action)
            .await?;
        self.server(what, &r.provider_id).await
    }
}

/// Percent-encodes a query value (label selectors hold `=` and `,`).
fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
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
            let a = self
                .call(
                    what,
                    "GET",
                    &format!("/server_types?page={page}&per_page={PAGE}"),
                    None,
                )
                .await?;
            let types: ServerTypes = api::parse(what, &a)?;
            for t in types.server_types {
                if t.deprecated == Some(true)
                    || (!self.cfg.server_types.is_empty()
                        && !self.cfg.server_types.contains(&t.name))
                {
                    continue;
                }
                let Some(price) = t.prices.iter().find(|p| p.location == self.cfg.location) else {
                    continue; // not sold in this location
                };
                let (Some(on_demand), Ok(instance_type)) = (
                    eur_hourly_to_usd(&price.price_hourly.net, self.cfg.eur_to_usd_micros),
                    InstanceType::new(t.name.clone()),
                ) else {
                    tracing::warn!(server_type = %t.name, "server type skipped: unusable name or price");
                    continue;
                };
                out.push(Offering {
                    instance_type,
                    cpus: t.cores,
                    memory_mb: (t.memory * 1024.0).round() as u64,
                    arch: match t.architecture.as_deref() {
                        Some("arm") => Arch::Aarch64,
                        _ => Arch::X86_64,
                    },
                    disk_gb: t.disk,
                    on_demand,
                    spot: None,
                });
            }
            match types.meta.pagination.and_then(|p| p.next_page) {
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
        if let Some(s) = self.server_of(&what, &spec.node).await? {
            return self.instance(s); // a retried create: the same server
        }
        let image = match &spec.source {
            BootSource::Image { image } => json!(image),
            BootSource::Snapshot(s) => json!(s.id),
            other => {
                return Err(ProviderError::Unsupported(format!("boot source {other:?}")));
            }
        };
        let mut labels = spec.tags.clone();
        labels.insert(TAG_NODE.to_owned(), spec.node.to_string());
        labels.insert(TAG_POOL.to_owned(), spec.pool.to_string());
        let mut body = json!({
            "name": server_name(&spec.node),
            "server_type": spec.instance_type.as_str(),
            "image": image,
            "location": self.cfg.location,
            "labels": labels,
            "start_after_create": true,
        });
        if let Some(user_data) = self.user_data(spec) {
            body["user_data"] = json!(user_data);
        }
        if !self.cfg.ssh_keys.is_empty() {
            body["ssh_keys"] = json!(self.cfg.ssh_keys);
        }
        let created = match self.call(&what, "POST", "/servers", Some(body)).await {
            Ok(a) => api::parse::<CreatedServer>(&what, &a)?,
            Err(ProviderError::AlreadyExists(e)) => {
                // Created meanwhile (a concurrent retry): adopt it if it is this node's.
                return match self.server_of(&what, &spec.node).await? {
                    Some(s) => self.instance(s),
                    None => Err(ProviderError::AlreadyExists(e)),
                };
            }
            Err(e) => return Err(e),
        };
        self.wait(&what, created.action).await?;
        let s = self.server(&what, &created.server.id.to_string()).await?;
        self.instance(s)
    }

    async fn start(&self, r: &InstanceRef) -> Result<Instance, ProviderError> {
        let s = self
            .act(&format!("start node {}", r.node), r, "poweron", None)
            .await?;
        self.instance(s)
    }

    async fn stop(&self, r: &InstanceRef) -> Result<Instance, ProviderError> {
        let what = format!("stop node {}", r.node);
        let mut s = self.act(&what, r, "shutdown", None).await?;
        let deadline = Instant::now() + self.cfg.shutdown_timeout;
        while s.status != "off" {
            if Instant::now() >= deadline {
                tracing::warn!(node = %r.node, "graceful shutdown took too long; powering off");
                s = self.act(&what, r, "poweroff", None).await?;
                break;
            }
            tokio::time::sleep(self.cfg.poll_interval).await;
            s = self.server(&what, &r.provider_id).await?;
        }
        self.instance(s)
    }

    async fn resize(&self, r: &InstanceRef, to: &InstanceType) -> Result<Instance, ProviderError> {
        let what = format!("resize node {} to {to}", r.node);
        let body = json!({ "server_type": to.as_str(), "upgrade_disk": false });
        let s = self.act(&what, r, "change_type", Some(body)).await?;
        self.instance(s)
    }

    async fn snapshot(&self, r: &InstanceRef) -> Result<SnapshotRef, ProviderError> {
        let what = format!("snapshot node {}", r.node);
        let body = json!({
            "type": "snapshot",
            "description": format!("fleet snapshot of {}", r.node),
            "labels": { TAG_NODE: r.node.as_str() },
        });
        let path = format!("/servers/{}/actions/create_image", r.provider_id);
        let a = self.call(&what, "POST", &path, Some(body)).await?;
        let created: OneImage = api::parse(&what, &a)?;
        if let Some(action) = created.action {
            self.wait(&what, action).await?;
        }
        let a = self
            .call(&what, "GET", &format!("/images/{}", created.image.id), None)
            .await?;
        let image = api::parse::<OneImage>(&what, &a)?.image;
        let gb = image
            .image_size
            .or(image.disk_size)
            .unwrap_or(1.0)
            .ceil()
            .max(1.0);
        Ok(SnapshotRef {
            id: image.id.to_string(),
            size_gb: gb as u32,
            created_at: fleet_core::time::parse_rfc3339(&image.created).unwrap_or(0),
        })
    }

    async fn delete(&self, r: &InstanceRef) -> Result<(), ProviderError> {
        let what = format!("delete node {}", r.node);
        match self
            .call(
                &what,
                "DELETE",
                &format!("/servers/{}", r.provider_id),
                None,
            )
            .await
        {
            Ok(a) => {
                let action = api::parse::<OneAction>(&what, &a)?.action;
                match self.wait(&what, action).await {
                    Err(ProviderError::NotFound(_)) | Ok(()) => Ok(()),
                    Err(e) => Err(e),
                }
            }
            Err(ProviderError::NotFound(_)) => Ok(()), // deleting a deleted server succeeds
            Err(e) => Err(e),
        }
    }

    async fn list(&self, tags: &TagFilter) -> Result<Vec<Instance>, ProviderError> {
        let mut terms: Vec<String> = tags.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
        if !tags.0.contains_key(TAG_NODE) {
            terms.push(TAG_NODE.to_owned()); // only fleet servers
        }
        let servers = self.servers("list servers", &terms.join(",")).await?;
        let mut out = Vec::with_capacity(servers.len());
        for s in servers {
            if s.status == "deleting" {
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

    #[test]
    fn server_names_are_hostnames_and_selectors_are_escaped() {
        let n = NodeId::new("Build_Pool-1-7").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(server_name(&n), "build-pool-1-7");
        assert_eq!(query_escape("fleet-node=a_b,x"), "fleet-node%3Da_b%2Cx");
    }
}
