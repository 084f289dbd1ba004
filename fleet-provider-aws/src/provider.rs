//! [`Ec2Provider`]: the fleet's [`Provider`] over the EC2 Query API.

use std::collections::BTreeMap;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::Engine as _;
use fleet_core::billing::BillingModel;
use fleet_core::ids::{InstanceType, NodeId};
use fleet_core::money::{HourlyPrice, Money};
use fleet_core::protocol::Arch;
use fleet_core::provider::{
    BootSource, Capabilities, Instance, InstanceRef, InstanceState, Market, NodeSpec, Offering,
    Provider, ProviderError, SnapshotRef, SpotTerms, TAG_NODE, TAG_POOL, TagFilter,
};
use fleet_http::{Answer, HttpClient, HttpError};

use crate::config::{Ec2Config, US_EAST_1_PRICES};
use fleet_http::sigv4;
use fleet_http::xml::{self, Element};

/// The EC2 API version spoken.
const API_VERSION: &str = "2016-11-15";
/// The states a live instance can be in (terminated ones stay listed a while).
const LIVE: [&str; 4] = ["pending", "running", "stopping", "stopped"];

/// Runs, starts, stops, resizes, images and terminates EC2 instances.
///
/// - `create` looks the node up by its `fleet-node` tag first and passes
///   the node id as `ClientToken`, so a retried create never launches a
///   second instance; it returns once the instance runs.
/// - `stop` and `start` wait for `stopped` / `running`; `resize` is
///   `ModifyInstanceAttribute` on a stopped instance (EC2 refuses a running
///   one: so does this provider, before calling); `snapshot` is
///   `CreateImage` (no reboot) and waits for the AMI to be available;
///   `delete` terminates.
/// - Spot instances are one-time requests that terminate on interruption.
/// - EC2 has no price API of its own: on-demand prices come from
///   [`Ec2Config::prices`] or the built-in us-east-1 list, spot is a
///   configured fraction of on-demand.
#[derive(Debug)]
pub struct Ec2Provider {
    cfg: Ec2Config,
    http: HttpClient,
    capabilities: Capabilities,
    billing: BillingModel,
    credentials: sigv4::AwsCredentials,
    /// Root device names by AMI (to size the root volume at launch).
    root_devices: tokio::sync::Mutex<BTreeMap<String, String>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn encode(s: &str) -> String {
    sigv4::uri_encode(s, false)
}

fn state_of(name: &str) -> InstanceState {
    match name {
        "running" => InstanceState::Running,
        "stopping" => InstanceState::Stopping,
        "stopped" => InstanceState::Stopped,
        "shutting-down" | "terminated" => InstanceState::Terminated,
        _ => InstanceState::Pending,
    }
}

/// Classifies an EC2 error code (and HTTP status).
pub fn error_of(status: u16, code: &str, message: &str) -> ProviderError {
    let text = format!("{code}: {message}");
    match code {
        "RequestLimitExceeded" | "Throttling" | "ThrottlingException" => {
            ProviderError::RateLimited(text)
        }
        "InsufficientInstanceCapacity"
        | "InsufficientHostCapacity"
        | "InsufficientCapacity"
        | "InsufficientReservedInstanceCapacity"
        | "SpotMaxPriceTooLow"
        | "InsufficientFreeAddressesInSubnet" => ProviderError::Capacity(text),
        "InstanceLimitExceeded"
        | "VcpuLimitExceeded"
        | "MaxSpotInstanceCountExceeded"
        | "ResourceLimitExceeded" => ProviderError::Quota(text),
        "IdempotentParameterMismatch" => ProviderError::AlreadyExists(text),
        "IncorrectInstanceState"
        | "IncorrectState"
        | "InternalError"
        | "ServiceUnavailable"
        | "Unavailable" => ProviderError::Transient(text),
        "UnsupportedOperation" | "Unsupported" => ProviderError::Unsupported(text),
        c if c.ends_with(".NotFound") => ProviderError::NotFound(text),
        _ if status >= 500 => ProviderError::Transient(text),
        _ => ProviderError::Permanent(text),
    }
}

/// Dollars per hour (`"0.1785"`) as an hourly price.
fn dollars(s: &str) -> Option<HourlyPrice> {
    s.trim()
        .trim_start_matches('$')
        .parse::<Money>()
        .ok()
        .filter(|m| m.micros() > 0)
        .map(HourlyPrice)
}

/// Request parameters, in order.
#[derive(Debug, Default)]
struct Params(Vec<(String, String)>);

impl Params {
    fn set(&mut self, k: impl Into<String>, v: impl Into<String>) -> &mut Self {
        self.0.push((k.into(), v.into()));
        self
    }

    /// `Filter.N.Name` / `Filter.N.Value.M`.
    fn filter(&mut self, name: &str, values: &[&str]) -> &mut Self {
        let n = 1 + self
            .0
            .iter()
            .filter(|(k, _)| k.ends_with(".Name") && k.starts_with("Filter."))
            .count();
        self.set(format!("Filter.{n}.Name"), name);
        for (i, v) in values.iter().enumerate() {
            self.set(format!("Filter.{n}.Value.{}", i + 1), *v);
        }
        self
    }
}

impl Ec2Provider {
    /// A provider for `cfg`'s account and region.
    pub fn new(cfg: Ec2Config) -> Result<Ec2Provider, ProviderError> {
        if cfg.region.is_empty() {
            return Err(ProviderError::Permanent("region must be set".to_owned()));
        }
        for (ty, price) in &cfg.prices {
            if dollars(price).is_none() {
                return Err(ProviderError::Permanent(format!(
                    "prices.{ty}: {price:?} is not a positive dollar amount"
                )));
            }
        }
        let http = HttpClient::new(&cfg.endpoint, cfg.request_timeout)
            .map_err(|e| ProviderError::Permanent(format!("endpoint: {e}")))?;
        Ok(Ec2Provider {
            capabilities: Capabilities {
                stop_start: true,
                resize: true,
                resize_requires_stop: true,
                snapshot: true,
                spot: true,
                max_instances: cfg.max_instances,
            },
            billing: BillingModel::ec2(),
            credentials: sigv4::AwsCredentials::new(cfg.credentials.clone()),
            root_devices: tokio::sync::Mutex::new(BTreeMap::new()),
            cfg,
            http,
        })
    }

    /// The root device name of `image` (`/dev/xvda`, `/dev/sda1`).
    async fn root_device(&self, image: &str) -> Result<String, ProviderError> {
        if let Some(d) = self.root_devices.lock().await.get(image) {
            return Ok(d.clone());
        }
        let mut p = Params::default();
        p.set("ImageId.1", image);
        let root = self.call("DescribeImages", &p).await?;
        let device = root
            .items("imagesSet")
            .next()
            .and_then(|i| i.text_at("rootDeviceName"))
            .filter(|d| !d.is_empty())
            .ok_or_else(|| ProviderError::NotFound(format!("image {image}")))?
            .to_owned();
        self.root_devices
            .lock()
            .await
            .insert(image.to_owned(), device.clone());
        Ok(device)
    }

    /// The credentials to sign with now.
    pub(crate) async fn credentials(&self) -> Result<sigv4::Credentials, ProviderError> {
        self.credentials
            .get()
            .await
            .map_err(ProviderError::Transient)
    }

    /// One signed Query API call; the answer's root element.
    async fn call(&self, action: &str, params: &Params) -> Result<Element, ProviderError> {
        let mut body = format!("Action={action}&Version={API_VERSION}");
        for (k, v) in &params.0 {
            body.push('&');
            body.push_str(&encode(k));
            body.push('=');
            body.push_str(&encode(v));
        }
        let content_type = "application/x-www-form-urlencoded; charset=utf-8";
        let host = self.http.host_header();
        let path = if self.http.prefix().is_empty() {
            "/".to_owned()
        } else {
            format!("{}/", self.http.prefix())
        };
        let amz_date = sigv4::amz_date(now_ms());
        let creds = self.credentials().await?;
        let mut headers = sigv4::sign(
            &sigv4::Request {
                method: "POST",
                host: &host,
                path: &path,
                query: "",
                headers: &[("content-type", content_type.to_owned())],
                body: body.as_bytes(),
                amz_date: &amz_date,
                region: &self.cfg.region,
                service: "ec2",
            },
            &creds,
        );
        headers.push(("content-type", content_type.to_owned()));
        let answer = self
            .http
            .send("POST", "/", &headers, Some(body.into_bytes()))
            .await
            .map_err(|e| match e {
                HttpError::Invalid(why) => ProviderError::Permanent(format!("{action}: {why}")),
                other => ProviderError::Transient(format!("{action}: {other}")),
            })?;
        self.answer(action, &answer)
    }

    fn answer(&self, action: &str, a: &Answer) -> Result<Element, ProviderError> {
        let root = xml::parse(&a.body);
        if a.is_success() {
            return root.map_err(|e| {
                ProviderError::Transient(format!("{action}: unreadable answer: {e}"))
            });
        }
        let (code, message) = root
            .ok()
            .and_then(|r| {
                let e = r.child("Errors")?.child("Error")?;
                Some((
                    e.text_at("Code")?.to_owned(),
                    e.text_at("Message").unwrap_or("").to_owned(),
                ))
            })
            .unwrap_or_else(|| {
                (
                    format!("HTTP{}", a.status),
                    String::from_utf8_lossy(&a.body).into_owned(),
                )
            });
        Err(match error_of(a.status, &code, &message) {
            ProviderError::Permanent(t) if a.status == 503 => ProviderError::Transient(t),
            e => e,
        }
        .with_context(action))
    }

    /// Every live instance matching `filters`, over all pages.
    async fn describe(&self, mut params: Params) -> Result<Vec<Element>, ProviderError> {
        params.filter("instance-state-name", &LIVE);
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut page = Params(params.0.clone());
            if let Some(t) = &token {
                page.set("NextToken", t.clone());
            }
            let root = self.call("DescribeInstances", &page).await?;
            out.extend(
                root.items("reservationSet")
                    .flat_map(|r| r.items("instancesSet"))
                    .cloned(),
            );
            match root.text_at("nextToken").filter(|t| !t.is_empty()) {
                Some(t) if token.as_deref() != Some(t) => token = Some(t.to_owned()),
                _ => return Ok(out),
            }
        }
    }

    async fn one(&self, id: &str) -> Result<Element, ProviderError> {
        let mut p = Params::default();
        p.set("InstanceId.1", id);
        let root = self.call("DescribeInstances", &p).await?;
        root.items("reservationSet")
            .flat_map(|r| r.items("instancesSet"))
            .next()
            .cloned()
            .ok_or_else(|| ProviderError::NotFound(format!("instance {id}")))
    }

    async fn by_node(&self, node: &NodeId) -> Result<Option<Element>, ProviderError> {
        let mut p = Params::default();
        p.filter(&format!("tag:{TAG_NODE}"), &[node.as_str()]);
        Ok(self.describe(p).await?.into_iter().next())
    }

    /// Polls `id` until its state is `want` (or one of `done`, an error).
    async fn wait_state(&self, id: &str, want: &str) -> Result<Element, ProviderError> {
        let deadline = Instant::now() + self.cfg.wait_timeout;
        loop {
            let e = self.one(id).await?;
            let state = e.text_at("instanceState/name").unwrap_or_default();
            if state == want {
                return Ok(e);
            }
            if matches!(state, "shutting-down" | "terminated") && want != "terminated" {
                return Err(ProviderError::NotFound(format!("instance {id} is {state}")));
            }
            if Instant::now() >= deadline {
                return Err(ProviderError::Transient(format!(
                    "instance {id} still {state} after {:?} (waiting for {want})",
                    self.cfg.wait_timeout
                )));
            }
            tokio::time::sleep(self.cfg.poll_interval).await;
        }
    }

    fn instance(&self, e: &Element) -> Result<Instance, ProviderError> {
        let id = e.text_at("instanceId").unwrap_or_default().to_owned();
        let tags: BTreeMap<String, String> = e
            .items("tagSet")
            .filter_map(|t| Some((t.text_at("key")?.to_owned(), t.text_at("value")?.to_owned())))
            .collect();
        let node = tags
            .get(TAG_NODE)
            .and_then(|n| NodeId::new(n.clone()).ok())
            .ok_or_else(|| {
                ProviderError::Permanent(format!("instance {id} has no valid {TAG_NODE} tag"))
            })?;
        let instance_type = InstanceType::new(e.text_at("instanceType").unwrap_or_default())
            .map_err(|err| ProviderError::Permanent(format!("instance {id}: {err}")))?;
        let address = e
            .text_at("ipAddress")
            .or_else(|| e.text_at("privateIpAddress"))
            .filter(|a| !a.is_empty())
            .map(str::to_owned);
        Ok(Instance {
            node,
            provider_id: id,
            instance_type,
            market: if e.text_at("instanceLifecycle") == Some("spot") {
                Market::Spot
            } else {
                Market::OnDemand
            },
            state: state_of(e.text_at("instanceState/name").unwrap_or_default()),
            address,
            tags,
            created_at: e
                .text_at("launchTime")
                .and_then(fleet_core::time::parse_rfc3339)
                .unwrap_or(0),
        })
    }

    fn user_data(&self, spec: &NodeSpec) -> Option<String> {
        let template = self.cfg.user_data.as_ref()?;
        let mut out = template.clone();
        let token = spec.bootstrap_token.as_ref().map_or("", |t| t.expose());
        let fixed = [
            ("node", spec.node.as_str()),
            ("pool", spec.pool.as_str()),
            ("bootstrap_token", token),
        ];
        for (k, v) in self
            .cfg
            .user_data_vars
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain(fixed)
        {
            out = out.replace(&format!("{{{{{k}}}}}"), v);
        }
        Some(base64::engine::general_purpose::STANDARD.encode(out))
    }

    fn price_of(&self, ty: &str) -> Option<HourlyPrice> {
        if let Some(p) = self.cfg.prices.get(ty) {
            return dollars(p);
        }
        if self.cfg.region != "us-east-1" {
            return None;
        }
        US_EAST_1_PRICES
            .iter()
            .find(|(t, _)| *t == ty)
            .and_then(|(_, p)| dollars(p))
    }
}

trait WithContext {
    fn with_context(self, action: &str) -> Self;
}

impl WithContext for ProviderError {
    fn with_context(self, action: &str) -> ProviderError {
        let c = |t: String| format!("{action}: {t}");
        match self {
            ProviderError::NotFound(t) => ProviderError::NotFound(c(t)),
            ProviderError::AlreadyExists(t) => ProviderError::AlreadyExists(c(t)),
            ProviderError::Capacity(t) => ProviderError::Capacity(c(t)),
            ProviderError::Quota(t) => ProviderError::Quota(c(t)),
            ProviderError::RateLimited(t) => ProviderError::RateLimited(c(t)),
            ProviderError::Transient(t) => ProviderError::Transient(c(t)),
            ProviderError::Unsupported(t) => ProviderError::Unsupported(c(t)),
            other => other,
        }
    }
}

#[async_trait]
impl Provider for Ec2Provider {
    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    fn billing(&self) -> &BillingModel {
        &self.billing
    }

    async fn offerings(&self) -> Result<Vec<Offering>, ProviderError> {
        let wanted: Vec<String> = if self.cfg.instance_types.is_empty() {
            let mut all: Vec<String> = self.cfg.prices.keys().cloned().collect();
            if self.cfg.region == "us-east-1" {
                all.extend(US_EAST_1_PRICES.iter().map(|(t, _)| (*t).to_owned()));
            }
            all.sort();
            all.dedup();
            all
        } else {
            self.cfg.instance_types.clone()
        };
        let mut p = Params::default();
        for (i, t) in wanted.iter().enumerate() {
            p.set(format!("InstanceType.{}", i + 1), t.clone());
        }
        let root = self.call("DescribeInstanceTypes", &p).await?;
        let mut out = Vec::new();
        for t in root.items("instanceTypeSet") {
            let name = t.text_at("instanceType").unwrap_or_default();
            let Some(on_demand) = self.price_of(name) else {
                tracing::warn!(instance_type = name, region = %self.cfg.region, "no price for this type: set prices.{name}; skipped");
                continue;
            };
            let Ok(instance_type) = InstanceType::new(name) else {
                continue;
            };
            let arm = t
                .child("processorInfo")
                .into_iter()
                .flat_map(|p| p.items("supportedArchitectures"))
                .any(|a| a.text == "arm64");
            let spot_price = on_demand
                .0
                .mul_div(
                    self.cfg.spot_per_mille,
                    1_000,
                    fleet_core::money::Rounding::Up,
                )
                .map(HourlyPrice);
            out.push(Offering {
                instance_type,
                cpus: t
                    .text_at("vCpuInfo/defaultVCpus")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
                memory_mb: t
                    .text_at("memoryInfo/sizeInMiB")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
                arch: if arm { Arch::Aarch64 } else { Arch::X86_64 },
                disk_gb: self.cfg.root_volume_gb,
                on_demand,
                spot: t
                    .items("supportedUsageClasses")
                    .any(|c| c.text == "spot")
                    .then_some(spot_price)
                    .flatten()
                    .map(|price| SpotTerms {
                        price,
                        interruptions_per_1000h: self.cfg.spot_interruptions_per_1000h,
                    }),
            });
        }
        if out.is_empty() {
            return Err(ProviderError::Permanent(format!(
                "no instance type is both sold and priced in {} (wanted {wanted:?})",
                self.cfg.region
            )));
        }
        Ok(out)
    }

    async fn create(&self, spec: &NodeSpec) -> Result<Instance, ProviderError> {
        if let Some(e) = self.by_node(&spec.node).await? {
            return self.instance(&e); // a retried create: the same instance
        }
        let image = match &spec.source {
            BootSource::Image { image } => image.clone(),
            BootSource::Snapshot(s) => s.id.clone(),
            other => return Err(ProviderError::Unsupported(format!("boot source {other:?}"))),
        };
        let device = self.root_device(&image).await?;
        let mut p = Params::default();
        p.set("BlockDeviceMapping.1.DeviceName", device)
            .set(
                "BlockDeviceMapping.1.Ebs.VolumeSize",
                self.cfg.root_volume_gb.to_string(),
            )
            .set("BlockDeviceMapping.1.Ebs.VolumeType", "gp3")
            .set("BlockDeviceMapping.1.Ebs.DeleteOnTermination", "true");
        p.set("ImageId", image)
            .set("InstanceType", spec.instance_type.as_str())
            .set("MinCount", "1")
            .set("MaxCount", "1")
            .set("ClientToken", spec.node.as_str())
            .set("TagSpecification.1.ResourceType", "instance");
        let mut tags = spec.tags.clone();
        tags.insert(TAG_NODE.to_owned(), spec.node.to_string());
        tags.insert(TAG_POOL.to_owned(), spec.pool.to_string());
        tags.entry("Name".to_owned())
            .or_insert_with(|| spec.node.to_string());
        for (i, (k, v)) in tags.iter().enumerate() {
            p.set(format!("TagSpecification.1.Tag.{}.Key", i + 1), k.clone())
                .set(format!("TagSpecification.1.Tag.{}.Value", i + 1), v.clone());
        }
        if spec.market == Market::Spot {
            p.set("InstanceMarketOptions.MarketType", "spot")
                .set(
                    "InstanceMarketOptions.SpotOptions.SpotInstanceType",
                    "one-time",
                )
                .set(
                    "InstanceMarketOptions.SpotOptions.InstanceInterruptionBehavior",
                    "terminate",
                );
        }
        if let Some(ud) = self.user_data(spec) {
            p.set("UserData", ud);
        }
        if let Some(s) = &self.cfg.subnet_id {
            p.set("SubnetId", s.clone());
        }
        for (i, g) in self.cfg.security_group_ids.iter().enumerate() {
            p.set(format!("SecurityGroupId.{}", i + 1), g.clone());
        }
        if let Some(k) = &self.cfg.key_name {
            p.set("KeyName", k.clone());
        }
        if let Some(profile) = &self.cfg.instance_profile {
            p.set("IamInstanceProfile.Name", profile.clone());
        }
        let root = self.call("RunInstances", &p).await?;
        let id = root
            .items("instancesSet")
            .next()
            .and_then(|i| i.text_at("instanceId"))
            .filter(|i| !i.is_empty())
            .ok_or_else(|| {
                ProviderError::Transient("RunInstances answered without an instance".into())
            })?
            .to_owned();
        let e = self.wait_state(&id, "running").await?;
        self.instance(&e)
    }

    async fn start(&self, r: &InstanceRef) -> Result<Instance, ProviderError> {
        let mut p = Params::default();
        p.set("InstanceId.1", r.provider_id.clone());
        self.call("StartInstances", &p).await?;
        let e = self.wait_state(&r.provider_id, "running").await?;
        self.instance(&e)
    }

    async fn stop(&self, r: &InstanceRef) -> Result<Instance, ProviderError> {
        let mut p = Params::default();
        p.set("InstanceId.1", r.provider_id.clone());
        self.call("StopInstances", &p).await?;
        let e = self.wait_state(&r.provider_id, "stopped").await?;
        self.instance(&e)
    }

    async fn resize(&self, r: &InstanceRef, to: &InstanceType) -> Result<Instance, ProviderError> {
        let current = self.one(&r.provider_id).await?;
        let state = current.text_at("instanceState/name").unwrap_or_default();
        if state != "stopped" {
            return Err(error_of(
                400,
                "IncorrectInstanceState",
                &format!(
                    "instance {} is {state}; it must be stopped to change its type",
                    r.provider_id
                ),
            ));
        }
        let mut p = Params::default();
        p.set("InstanceId", r.provider_id.clone())
            .set("InstanceType.Value", to.as_str());
        self.call("ModifyInstanceAttribute", &p).await?;
        let e = self.one(&r.provider_id).await?;
        self.instance(&e)
    }

    async fn snapshot(&self, r: &InstanceRef) -> Result<SnapshotRef, ProviderError> {
        let mut p = Params::default();
        p.set("InstanceId", r.provider_id.clone())
            .set("Name", format!("fleet-{}-{}", r.node, now_ms()))
            .set("NoReboot", "true");
        let root = self.call("CreateImage", &p).await?;
        let image_id = root
            .text_at("imageId")
            .filter(|i| !i.is_empty())
            .ok_or_else(|| {
                ProviderError::Transient("CreateImage answered without an image".into())
            })?
            .to_owned();
        let deadline = Instant::now() + self.cfg.wait_timeout;
        loop {
            let mut q = Params::default();
            q.set("ImageId.1", image_id.clone());
            let root = self.call("DescribeImages", &q).await?;
            let image = root.items("imagesSet").next().cloned().unwrap_or_default();
            match image.text_at("imageState").unwrap_or("pending") {
                "available" => {
                    let gb: u32 = image
                        .items("blockDeviceMapping")
                        .filter_map(|b| b.text_at("ebs/volumeSize")?.parse::<u32>().ok())
                        .sum();
                    return Ok(SnapshotRef {
                        id: image_id,
                        size_gb: gb.max(1),
                        created_at: image
                            .text_at("creationDate")
                            .and_then(fleet_core::time::parse_rfc3339)
                            .unwrap_or_else(now_ms),
                    });
                }
                "failed" | "invalid" | "error" => {
                    return Err(ProviderError::Transient(format!("AMI {image_id} failed")));
                }
                _ if Instant::now() >= deadline => {
                    return Err(ProviderError::Transient(format!(
                        "AMI {image_id} not available after {:?}",
                        self.cfg.wait_timeout
                    )));
                }
                _ => tokio::time::sleep(self.cfg.poll_interval).await,
            }
        }
    }

    async fn delete(&self, r: &InstanceRef) -> Result<(), ProviderError> {
        let mut p = Params::default();
        p.set("InstanceId.1", r.provider_id.clone());
        match self.call("TerminateInstances", &p).await {
            Ok(_) | Err(ProviderError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn list(&self, tags: &TagFilter) -> Result<Vec<Instance>, ProviderError> {
        let mut p = Params::default();
        for (k, v) in &tags.0 {
            p.filter(&format!("tag:{k}"), &[v.as_str()]);
        }
        if !tags.0.contains_key(TAG_NODE) {
            p.filter("tag-key", &[TAG_NODE]); // only fleet instances
        }
        let mut out = Vec::new();
        for e in self.describe(p).await? {
            match self.instance(&e) {
                Ok(i) if tags.matches(&i.tags) => out.push(i),
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, "instance skipped in the inventory"),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ec2_errors_are_classified() {
        let e = |s, c: &str| error_of(s, c, "m");
        assert!(matches!(
            e(503, "RequestLimitExceeded"),
            ProviderError::RateLimited(_)
        ));
        assert!(matches!(
            e(500, "InsufficientInstanceCapacity"),
            ProviderError::Capacity(_)
        ));
        assert!(matches!(
            e(400, "VcpuLimitExceeded"),
            ProviderError::Quota(_)
        ));
        assert!(matches!(
            e(400, "InvalidInstanceID.NotFound"),
            ProviderError::NotFound(_)
        ));
        assert!(matches!(
            e(400, "InvalidAMIID.NotFound"),
            ProviderError::NotFound(_)
        ));
        assert!(matches!(
            e(400, "IdempotentParameterMismatch"),
            ProviderError::AlreadyExists(_)
        ));
        assert!(matches!(
            e(400, "IncorrectInstanceState"),
            ProviderError::Transient(_)
        ));
        assert!(matches!(
            e(400, "UnsupportedOperation"),
            ProviderError::Unsupported(_)
        ));
        assert!(matches!(e(401, "AuthFailure"), ProviderError::Permanent(_)));
        assert!(matches!(e(500, "Whatever"), ProviderError::Transient(_)));
    }

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(encode("a b/c=d&e~f_g.h-i"), "a%20b%2Fc%3Dd%26e~f_g.h-i");
        assert_eq!(encode("ü"), "%C3%BC");
    }

    #[test]
    fn filters_number_themselves() {
        let mut p = Params::default();
        p.filter("tag:a", &["1"])
            .set("X", "y")
            .filter("state", &["a", "b"]);
        let keys: Vec<&str> = p.0.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "Filter.1.Name",
                "Filter.1.Value.1",
                "X",
                "Filter.2.Name",
                "Filter.2.Value.1",
                "Filter.2.Value.2"
            ]
        );
    }

    /// A metadata service on loopback that hands out role credentials
    /// expiring at `expiration`, only to requests with a session token;
    /// returns its URL and a request counter.
    async fn fake_imds(
        expiration: &'static str,
    ) -> (String, std::sync::Arc<std::sync::atomic::AtomicU32>) {
        use std::sync::atomic::{AtomicU32, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let url = format!(
            "http://{}",
            listener.local_addr().unwrap_or_else(|e| panic!("{e}"))
        );
        let hits = std::sync::Arc::new(AtomicU32::new(0));
        let counter = hits.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::Relaxed);
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
                let body = if req.starts_with("put /latest/api/token") {
                    "tok-1".to_owned()
                } else if !req.contains("x-aws-ec2-metadata-token: tok-1") {
                    String::new()
                } else if req.starts_with("get /latest/meta-data/iam/security-credentials/ ") {
                    "fleet-role\n".to_owned()
                } else if req
                    .starts_with("get /latest/meta-data/iam/security-credentials/fleet-role ")
                {
                    format!(
                        r#"{{"Code":"Success","AccessKeyId":"ASIAROLE","SecretAccessKey":"s3cr3t","Token":"sess","Expiration":"{expiration}"}}"#
                    )
                } else {
                    String::new()
                };
                let status = if body.is_empty() {
                    "401 Unauthorized"
                } else {
                    "200 OK"
                };
                let _ = s
                    .write_all(
                        format!(
                            "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await;
            }
        });
        (url, hits)
    }

    fn role_provider(imds_url: String) -> Ec2Provider {
        let cfg = Ec2Config::new(
            "us-east-1",
            sigv4::CredentialSource::InstanceRole { imds_url },
        );
        Ec2Provider::new(cfg).unwrap_or_else(|e| panic!("{e}"))
    }

    #[tokio::test]
    async fn instance_role_credentials_come_from_imdsv2_and_are_cached() {
        use std::sync::atomic::Ordering;
        let (url, hits) = fake_imds("2999-01-01T00:00:00Z").await;
        let p = role_provider(url);
        let c = p.credentials().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.access_key_id, "ASIAROLE");
        assert_eq!(c.session_token.as_deref(), Some("sess"));
        assert_eq!(hits.load(Ordering::Relaxed), 3, "token, role, credentials");
        p.credentials().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(hits.load(Ordering::Relaxed), 3, "cached until near expiry");

        // Credentials about to expire are fetched again on every use.
        let (url, hits) = fake_imds("2000-01-01T00:00:00Z").await;
        let p = role_provider(url);
        p.credentials().await.unwrap_or_else(|e| panic!("{e}"));
        p.credentials().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(hits.load(Ordering::Relaxed), 6);
    }

    #[tokio::test]
    async fn no_credentials_anywhere_is_a_clear_error() {
        // Nothing listens here.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap_or_else(|e| panic!("{e}"))
            .port();
        let p = role_provider(format!("http://127.0.0.1:{port}"));
        let e = p
            .credentials()
            .await
            .err()
            .unwrap_or_else(|| panic!("no credentials"));
        assert!(e.to_string().contains("no AWS credentials"), "{e}");
    }
}
