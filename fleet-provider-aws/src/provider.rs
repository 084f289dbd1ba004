//! [`Ec2Provider`]: the fleet's [`Provider`] over the EC2 API, through
//! `aws-sdk-ec2`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use aws_sdk_ec2::Client;
use aws_sdk_ec2::client::Waiters as _;
use aws_sdk_ec2::config::http::HttpResponse;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{
    ArchitectureType, AttributeValue, BlockDeviceMapping, EbsBlockDevice, Filter,
    IamInstanceProfileSpecification, ImageState, InstanceInterruptionBehavior,
    InstanceLifecycleType, InstanceMarketOptionsRequest, InstanceNetworkInterfaceSpecification,
    InstanceStateName, MarketType, ResourceType, SpotInstanceType, SpotMarketOptions, Tag,
    TagSpecification, UsageClassType, VolumeType,
};
use aws_smithy_runtime_api::client::waiters::error::WaiterError;
use base64::Engine as _;
use fleet_core::billing::BillingModel;
use fleet_core::ids::{InstanceType, NodeId};
use fleet_core::money::{HourlyPrice, Money};
use fleet_core::protocol::Arch;
use fleet_core::provider::{
    BootSource, Capabilities, Instance, InstanceRef, InstanceState, Market, NodeSpec, Offering,
    Provider, ProviderError, SnapshotRef, SpotTerms, TAG_FLEET, TAG_NAMESPACE, TAG_NODE, TAG_POOL,
    TagFilter,
};
use tokio::sync::Mutex;

use crate::config::{Ec2Config, US_EAST_1_PRICES, US_EAST_1_PRICES_SOURCE};

/// The states a live instance can be in (terminated ones stay listed a while).
const LIVE: [&str; 4] = ["pending", "running", "stopping", "stopped"];
/// The product whose spot prices are read.
const SPOT_PRODUCT: &str = "Linux/UNIX";

/// Runs, starts, stops, resizes, images and terminates EC2 instances.
///
/// - `create` looks the node up by its tags first (node, fleet and
///   namespace: never another fleet's instance) and passes a client token
///   made of the fleet id and node id, so a retried create never launches a
///   second instance; it returns once the instance runs.
/// - `stop` waits with the SDK's `instance_stopped` waiter; `start` and
///   `create` poll for `running` every [`Ec2Config::poll_interval`] (the
///   SDK's `instance_running` waiter sleeps at least 15 s between polls,
///   which would add up to 15 s to every boot). `resize` is
///   `ModifyInstanceAttribute` on a stopped instance (EC2 refuses a running
///   one: so does this provider, before calling); `snapshot` is
///   `CreateImage` (no reboot) and waits with the `image_available` waiter;
///   `delete` terminates.
/// - Spot instances are one-time requests that terminate on interruption,
///   priced from `DescribeSpotPriceHistory` (the highest current price over
///   the region's zones, cached for [`Ec2Config::spot_price_ttl`]).
/// - On-demand prices come from [`Ec2Config::prices`] or the built-in
///   us-east-1 list ([`US_EAST_1_PRICES_SOURCE`]).
#[derive(Debug)]
pub struct Ec2Provider {
    cfg: Ec2Config,
    sdk: fleet_aws::SdkConfig,
    client: Client,
    region: String,
    capabilities: Capabilities,
    billing: BillingModel,
    /// Root device names by AMI (to size the root volume at launch).
    root_devices: Mutex<BTreeMap<String, String>>,
    /// Spot prices by type and when they were fetched.
    spot_prices: Mutex<Option<(Instant, BTreeMap<String, HourlyPrice>)>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
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

/// An SDK error as a provider error: service errors by their code (after
/// the SDK's own retries), transport trouble as transient, a request the
/// SDK could not build (or credentials it could not find) as permanent.
fn sdk_error<E>(action: &str, e: SdkError<E, HttpResponse>) -> ProviderError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let chain = fleet_core::provider::error_chain(&e);
    let err = match &e {
        SdkError::ServiceError(s) => {
            let status = s.raw().status().as_u16();
            let code = s
                .err()
                .code()
                .map_or_else(|| format!("HTTP{status}"), str::to_owned);
            let message = s.err().message().unwrap_or_default();
            match error_of(status, &code, message) {
                ProviderError::Permanent(t) if status == 503 => ProviderError::Transient(t),
                other => other,
            }
        }
        SdkError::TimeoutError(_) | SdkError::ResponseError(_) => ProviderError::Transient(chain),
        SdkError::DispatchFailure(d) if d.is_io() || d.is_timeout() => {
            ProviderError::Transient(chain)
        }
        // No credentials, a bad endpoint: retrying does not help.
        _ => ProviderError::Permanent(chain),
    };
    err.with_context(action)
}

/// A waiter's failure: the operation's own error, the state it must not
/// reach (`terminated` while waiting to run), or the time running out.
fn waiter_error<O, E>(
    action: &str,
    what: &str,
    wait: Duration,
    e: WaiterError<O, E>,
) -> ProviderError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    O: std::fmt::Debug,
{
    match e {
        WaiterError::OperationFailed(f) => sdk_error(action, f.into_error()),
        WaiterError::ExceededMaxWait(_) => {
            ProviderError::Transient(format!("{action}: {what} not reached after {wait:?}"))
        }
        WaiterError::FailureState(_) => {
            ProviderError::NotFound(format!("{action}: {what} can no longer be reached"))
        }
        other => ProviderError::Transient(format!("{action}: waiting for {what}: {other:?}")),
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

fn filter(name: impl Into<String>, values: &[&str]) -> Filter {
    values
        .iter()
        .fold(Filter::builder().name(name), |b, v| b.values(*v))
        .build()
}

/// The client token of node `node` in fleet `fleet`: EC2 returns the same
/// instance for a repeated token, so it must be unique across fleets.
/// At most 64 ASCII characters.
fn client_token(spec: &NodeSpec) -> String {
    let fleet = spec.tags.get(TAG_FLEET).map_or("", String::as_str);
    let token = if fleet.is_empty() || spec.node.as_str().contains(fleet) {
        spec.node.to_string()
    } else {
        format!("{fleet}.{}", spec.node)
    };
    token.chars().filter(char::is_ascii).take(64).collect()
}

/// EC2's billing rules for instances built as `cfg` says: without a
/// public IPv4 address an instance pays none.
fn ec2_billing(cfg: &Ec2Config) -> BillingModel {
    let ec2 = BillingModel::ec2();
    if cfg.public_ipv4 == Some(false) {
        ec2.with_public_ipv4(HourlyPrice(Money::ZERO))
    } else {
        ec2
    }
}

impl Ec2Provider {
    /// A provider for `cfg`'s account and region: loads the SDK
    /// configuration (region now; credentials on the first call).
    pub async fn new(cfg: Ec2Config) -> Result<Ec2Provider, ProviderError> {
        for (ty, price) in &cfg.prices {
            if dollars(price).is_none() {
                return Err(ProviderError::Permanent(format!(
                    "prices.{ty}: {price:?} is not a positive dollar amount"
                )));
            }
        }
        let sdk = fleet_aws::load(&cfg.aws).await;
        let Some(region) = sdk.region().map(|r| r.as_ref().to_owned()) else {
            return Err(ProviderError::Permanent(
                "no AWS region: set it in the config, AWS_REGION, or the profile's `region`"
                    .to_owned(),
            ));
        };
        let client = Client::new(&sdk);
        Ok(Ec2Provider {
            capabilities: Capabilities {
                stop_start: true,
                resize: true,
                resize_requires_stop: true,
                snapshot: true,
                spot: true,
                max_instances: cfg.max_instances,
            },
            billing: ec2_billing(&cfg),
            root_devices: Mutex::new(BTreeMap::new()),
            spot_prices: Mutex::new(None),
            region,
            client,
            sdk,
            cfg,
        })
    }

    /// The region the provider works in.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// The access key id the SDK's chain resolves to now (never the
    /// secret): a clear error when there are no credentials.
    pub async fn access_key_id(&self) -> Result<String, ProviderError> {
        fleet_aws::access_key_id(&self.sdk)
            .await
            .map_err(ProviderError::Permanent)
    }

    /// The root device name of `image` (`/dev/xvda`, `/dev/sda1`).
    async fn root_device(&self, image: &str) -> Result<String, ProviderError> {
        if let Some(d) = self.root_devices.lock().await.get(image) {
            return Ok(d.clone());
        }
        let out = self
            .client
            .describe_images()
            .image_ids(image)
            .send()
            .await
            .map_err(|e| sdk_error("DescribeImages", e))?;
        let device = out
            .images()
            .first()
            .and_then(|i| i.root_device_name())
            .filter(|d| !d.is_empty())
            .ok_or_else(|| ProviderError::NotFound(format!("image {image}")))?
            .to_owned();
        self.root_devices
            .lock()
            .await
            .insert(image.to_owned(), device.clone());
        Ok(device)
    }

    /// Every live instance matching `filters`, over all pages.
    async fn describe(
        &self,
        mut filters: Vec<Filter>,
    ) -> Result<Vec<aws_sdk_ec2::types::Instance>, ProviderError> {
        filters.push(filter("instance-state-name", &LIVE));
        let reservations: Vec<_> = self
            .client
            .describe_instances()
            .set_filters(Some(filters))
            .into_paginator()
            .items()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(|e| sdk_error("DescribeInstances", e))?;
        Ok(reservations
            .into_iter()
            .flat_map(|r| r.instances.unwrap_or_default())
            .collect())
    }

    async fn one(&self, id: &str) -> Result<aws_sdk_ec2::types::Instance, ProviderError> {
        let out = self
            .client
            .describe_instances()
            .instance_ids(id)
            .send()
            .await
            .map_err(|e| sdk_error("DescribeInstances", e))?;
        out.reservations()
            .iter()
            .flat_map(|r| r.instances())
            .next()
            .cloned()
            .ok_or_else(|| ProviderError::NotFound(format!("instance {id}")))
    }

    /// The live instance of `spec`'s node in `spec`'s fleet and namespace.
    async fn by_node(
        &self,
        spec: &NodeSpec,
    ) -> Result<Option<aws_sdk_ec2::types::Instance>, ProviderError> {
        let mut filters = vec![filter(format!("tag:{TAG_NODE}"), &[spec.node.as_str()])];
        for k in [TAG_FLEET, TAG_NAMESPACE] {
            if let Some(v) = spec.tags.get(k) {
                filters.push(filter(format!("tag:{k}"), &[v.as_str()]));
            }
        }
        Ok(self.describe(filters).await?.into_iter().next())
    }

    /// Polls `id` every [`Ec2Config::poll_interval`] until it runs.
    async fn wait_running(&self, id: &str) -> Result<Instance, ProviderError> {
        let deadline = Instant::now() + self.cfg.wait_timeout;
        loop {
            match self.one(id).await {
                Ok(i) => {
                    let state = i.state().and_then(|s| s.name());
                    if state == Some(&InstanceStateName::Running) {
                        return self.instance(&i);
                    }
                    if matches!(
                        state,
                        Some(InstanceStateName::ShuttingDown | InstanceStateName::Terminated)
                    ) {
                        return Err(ProviderError::NotFound(format!(
                            "instance {id} is {}",
                            state.map_or("gone", |s| s.as_str())
                        )));
                    }
                }
                // Just launched: EC2 is eventually consistent.
                Err(ProviderError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
            if Instant::now() >= deadline {
                return Err(ProviderError::Transient(format!(
                    "instance {id} not running after {:?}",
                    self.cfg.wait_timeout
                )));
            }
            tokio::time::sleep(self.cfg.poll_interval).await;
        }
    }

    fn instance(&self, e: &aws_sdk_ec2::types::Instance) -> Result<Instance, ProviderError> {
        let id = e.instance_id().unwrap_or_default().to_owned();
        let tags: BTreeMap<String, String> = e
            .tags()
            .iter()
            .filter_map(|t| Some((t.key()?.to_owned(), t.value()?.to_owned())))
            .collect();
        let node = tags
            .get(TAG_NODE)
            .and_then(|n| NodeId::new(n.clone()).ok())
            .ok_or_else(|| {
                ProviderError::Permanent(format!("instance {id} has no valid {TAG_NODE} tag"))
            })?;
        let instance_type = InstanceType::new(e.instance_type().map_or("", |t| t.as_str()))
            .map_err(|err| ProviderError::Permanent(format!("instance {id}: {err}")))?;
        let address = e
            .public_ip_address()
            .or_else(|| e.private_ip_address())
            .filter(|a| !a.is_empty())
            .map(str::to_owned);
        Ok(Instance {
            node,
            provider_id: id,
            instance_type,
            market: if e.instance_lifecycle() == Some(&InstanceLifecycleType::Spot) {
                Market::Spot
            } else {
                Market::OnDemand
            },
            state: state_of(
                e.state()
                    .and_then(|s| s.name())
                    .map_or("pending", |n| n.as_str()),
            ),
            address,
            tags,
            created_at: e
                .launch_time()
                .and_then(|t| t.to_millis().ok())
                .and_then(|ms| u64::try_from(ms).ok())
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
        if self.region != "us-east-1" {
            return None;
        }
        US_EAST_1_PRICES
            .iter()
            .find(|(t, _)| *t == ty)
            .and_then(|(_, p)| dollars(p))
    }

    /// Current spot prices of `types` (the highest over the region's
    /// zones: the zone is EC2's choice), fetched at most once per
    /// [`Ec2Config::spot_price_ttl`]. A failure to fetch is logged and
    /// yields what is cached (possibly nothing).
    async fn spot_prices(&self, types: &[String]) -> BTreeMap<String, HourlyPrice> {
        let mut cache = self.spot_prices.lock().await;
        if let Some((at, prices)) = &*cache
            && at.elapsed() < self.cfg.spot_price_ttl
            && types.iter().all(|t| prices.contains_key(t))
        {
            return prices.clone();
        }
        let fetched = self
            .client
            .describe_spot_price_history()
            .set_instance_types(Some(
                types
                    .iter()
                    .map(|t| aws_sdk_ec2::types::InstanceType::from(t.as_str()))
                    .collect(),
            ))
            .product_descriptions(SPOT_PRODUCT)
            // From now: the price in effect in each zone.
            .start_time(aws_sdk_ec2::primitives::DateTime::from(SystemTime::now()))
            .into_paginator()
            .items()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await;
        match fetched {
            Ok(history) => {
                let mut prices: BTreeMap<String, HourlyPrice> = BTreeMap::new();
                for p in &history {
                    let (Some(ty), Some(price)) =
                        (p.instance_type(), p.spot_price().and_then(dollars))
                    else {
                        continue;
                    };
                    let slot = prices.entry(ty.as_str().to_owned()).or_insert(price);
                    if price.0 > slot.0 {
                        *slot = price;
                    }
                }
                tracing::debug!(types = prices.len(), "spot prices fetched");
                *cache = Some((Instant::now(), prices.clone()));
                prices
            }
            Err(e) => {
                let e = sdk_error("DescribeSpotPriceHistory", e);
                tracing::warn!(error = %e, "spot prices unavailable; using cached or configured ones");
                cache.as_ref().map(|(_, p)| p.clone()).unwrap_or_default()
            }
        }
    }

    /// Waits for AMI `image_id` and describes it.
    async fn wait_image(&self, image_id: &str) -> Result<SnapshotRef, ProviderError> {
        let wait = self.cfg.wait_timeout;
        self.client
            .wait_until_image_available()
            .image_ids(image_id)
            .wait(wait)
            .await
            .map_err(|e| {
                waiter_error(
                    "DescribeImages",
                    &format!("AMI {image_id} available"),
                    wait,
                    e,
                )
            })?;
        let out = self
            .client
            .describe_images()
            .image_ids(image_id)
            .send()
            .await
            .map_err(|e| sdk_error("DescribeImages", e))?;
        let image = out
            .images()
            .first()
            .ok_or_else(|| ProviderError::NotFound(format!("AMI {image_id}")))?;
        if image.state() != Some(&ImageState::Available) {
            return Err(ProviderError::Transient(format!(
                "AMI {image_id} is not available"
            )));
        }
        let gb: i64 = image
            .block_device_mappings()
            .iter()
            .filter_map(|b| b.ebs()?.volume_size())
            .map(i64::from)
            .sum();
        Ok(SnapshotRef {
            id: image_id.to_owned(),
            size_gb: u32::try_from(gb).unwrap_or(u32::MAX).max(1),
            created_at: image
                .creation_date()
                .and_then(fleet_core::time::parse_rfc3339)
                .unwrap_or_else(now_ms),
        })
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
            ProviderError::Permanent(t) => ProviderError::Permanent(c(t)),
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
            if self.region == "us-east-1" {
                all.extend(US_EAST_1_PRICES.iter().map(|(t, _)| (*t).to_owned()));
            }
            all.sort();
            all.dedup();
            all
        } else {
            self.cfg.instance_types.clone()
        };
        let infos: Vec<_> = self
            .client
            .describe_instance_types()
            .set_instance_types(Some(
                wanted
                    .iter()
                    .map(|t| aws_sdk_ec2::types::InstanceType::from(t.as_str()))
                    .collect(),
            ))
            .into_paginator()
            .items()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(|e| sdk_error("DescribeInstanceTypes", e))?;
        let spot_types: Vec<String> = infos
            .iter()
            .filter(|t| t.supported_usage_classes().contains(&UsageClassType::Spot))
            .filter_map(|t| Some(t.instance_type()?.as_str().to_owned()))
            .collect();
        let spot_prices = if spot_types.is_empty() {
            BTreeMap::new()
        } else {
            self.spot_prices(&spot_types).await
        };
        let mut out = Vec::new();
        for t in &infos {
            let name = t.instance_type().map_or("", |t| t.as_str());
            let Some(on_demand) = self.price_of(name) else {
                tracing::warn!(instance_type = name, region = %self.region, "no on-demand price for this type: set prices.{name}; skipped");
                continue;
            };
            let Ok(instance_type) = InstanceType::new(name) else {
                continue;
            };
            let arm = t.processor_info().is_some_and(|p| {
                p.supported_architectures()
                    .contains(&ArchitectureType::Arm64)
            });
            let spot = if spot_types.iter().any(|s| s == name) {
                match spot_prices.get(name) {
                    Some(p) => Some(*p),
                    None => {
                        let fallback = on_demand
                            .0
                            .mul_div(
                                self.cfg.spot_per_mille,
                                1_000,
                                fleet_core::money::Rounding::Up,
                            )
                            .map(HourlyPrice);
                        tracing::warn!(
                            instance_type = name,
                            per_mille = self.cfg.spot_per_mille,
                            "EC2 gave no spot price for this type: priced at the configured fraction of on-demand"
                        );
                        fallback
                    }
                }
            } else {
                None
            };
            out.push(Offering {
                instance_type,
                cpus: t
                    .v_cpu_info()
                    .and_then(|v| v.default_v_cpus())
                    .and_then(|v| u32::try_from(v).ok())
                    .unwrap_or(0),
                memory_mb: t
                    .memory_info()
                    .and_then(|m| m.size_in_mib())
                    .and_then(|m| u64::try_from(m).ok())
                    .unwrap_or(0),
                arch: if arm { Arch::Aarch64 } else { Arch::X86_64 },
                disk_gb: self.cfg.root_volume_gb,
                on_demand,
                spot: spot.map(|price| SpotTerms {
                    price,
                    interruptions_per_1000h: self.cfg.spot_interruptions_per_1000h,
                }),
            });
        }
        if out.is_empty() {
            return Err(ProviderError::Permanent(format!(
                "no instance type is both sold and priced in {} (wanted {wanted:?}; built-in \
                 prices: {US_EAST_1_PRICES_SOURCE})",
                self.region
            )));
        }
        Ok(out)
    }

    async fn create(&self, spec: &NodeSpec) -> Result<Instance, ProviderError> {
        if let Some(e) = self.by_node(spec).await? {
            return self.instance(&e); // a retried create: the same instance
        }
        let image = match &spec.source {
            BootSource::Image { image } => image.clone(),
            BootSource::Snapshot(s) => s.id.clone(),
            other => return Err(ProviderError::Unsupported(format!("boot source {other:?}"))),
        };
        let device = self.root_device(&image).await?;
        let mut tags = spec.tags.clone();
        tags.insert(TAG_NODE.to_owned(), spec.node.to_string());
        tags.insert(TAG_POOL.to_owned(), spec.pool.to_string());
        tags.entry("Name".to_owned())
            .or_insert_with(|| spec.node.to_string());
        let tag_spec = tags
            .iter()
            .fold(
                TagSpecification::builder().resource_type(ResourceType::Instance),
                |b, (k, v)| b.tags(Tag::builder().key(k).value(v).build()),
            )
            .build();
        let mut run = self
            .client
            .run_instances()
            .image_id(image)
            .instance_type(aws_sdk_ec2::types::InstanceType::from(
                spec.instance_type.as_str(),
            ))
            .min_count(1)
            .max_count(1)
            .client_token(client_token(spec))
            .tag_specifications(tag_spec)
            .block_device_mappings(
                BlockDeviceMapping::builder()
                    .device_name(device)
                    .ebs(
                        EbsBlockDevice::builder()
                            .volume_size(i32::try_from(self.cfg.root_volume_gb).unwrap_or(i32::MAX))
                            .volume_type(VolumeType::Gp3)
                            .delete_on_termination(true)
                            .build(),
                    )
                    .build(),
            )
            .set_key_name(self.cfg.key_name.clone())
            .set_user_data(self.user_data(spec));
        // Asking for (or against) a public address takes a network
        // interface spec, which then carries the subnet and security
        // groups (EC2 refuses them beside it).
        match self.cfg.public_ipv4 {
            Some(public) => {
                run = run.network_interfaces(
                    InstanceNetworkInterfaceSpecification::builder()
                        .device_index(0)
                        .associate_public_ip_address(public)
                        .delete_on_termination(true)
                        .set_subnet_id(self.cfg.subnet_id.clone())
                        .set_groups(
                            (!self.cfg.security_group_ids.is_empty())
                                .then(|| self.cfg.security_group_ids.clone()),
                        )
                        .build(),
                );
            }
            None => {
                run = run.set_subnet_id(self.cfg.subnet_id.clone());
                for g in &self.cfg.security_group_ids {
                    run = run.security_group_ids(g);
                }
            }
        }
        if spec.market == Market::Spot {
            run = run.instance_market_options(
                InstanceMarketOptionsRequest::builder()
                    .market_type(MarketType::Spot)
                    .spot_options(
                        SpotMarketOptions::builder()
                            .spot_instance_type(SpotInstanceType::OneTime)
                            .instance_interruption_behavior(InstanceInterruptionBehavior::Terminate)
                            .build(),
                    )
                    .build(),
            );
        }
        if let Some(profile) = &self.cfg.instance_profile {
            run = run.iam_instance_profile(
                IamInstanceProfileSpecification::builder()
                    .name(profile)
                    .build(),
            );
        }
        let out = run.send().await.map_err(|e| sdk_error("RunInstances", e))?;
        let id = out
            .instances()
            .first()
            .and_then(|i| i.instance_id())
            .filter(|i| !i.is_empty())
            .ok_or_else(|| {
                ProviderError::Transient("RunInstances answered without an instance".into())
            })?
            .to_owned();
        self.wait_running(&id).await
    }

    async fn start(&self, r: &InstanceRef) -> Result<Instance, ProviderError> {
        self.client
            .start_instances()
            .instance_ids(&r.provider_id)
            .send()
            .await
            .map_err(|e| sdk_error("StartInstances", e))?;
        self.wait_running(&r.provider_id).await
    }

    async fn stop(&self, r: &InstanceRef) -> Result<Instance, ProviderError> {
        self.client
            .stop_instances()
            .instance_ids(&r.provider_id)
            .send()
            .await
            .map_err(|e| sdk_error("StopInstances", e))?;
        let wait = self.cfg.wait_timeout;
        self.client
            .wait_until_instance_stopped()
            .instance_ids(&r.provider_id)
            .wait(wait)
            .await
            .map_err(|e| {
                waiter_error(
                    "DescribeInstances",
                    &format!("instance {} stopped", r.provider_id),
                    wait,
                    e,
                )
            })?;
        let i = self.one(&r.provider_id).await?;
        self.instance(&i)
    }

    async fn resize(&self, r: &InstanceRef, to: &InstanceType) -> Result<Instance, ProviderError> {
        let current = self.one(&r.provider_id).await?;
        let state = current
            .state()
            .and_then(|s| s.name())
            .map_or("unknown", |n| n.as_str());
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
        self.client
            .modify_instance_attribute()
            .instance_id(&r.provider_id)
            .instance_type(AttributeValue::builder().value(to.as_str()).build())
            .send()
            .await
            .map_err(|e| sdk_error("ModifyInstanceAttribute", e))?;
        let i = self.one(&r.provider_id).await?;
        self.instance(&i)
    }

    async fn snapshot(&self, r: &InstanceRef) -> Result<SnapshotRef, ProviderError> {
        let out = self
            .client
            .create_image()
            .instance_id(&r.provider_id)
            .name(format!("fleet-{}-{}", r.node, now_ms()))
            .no_reboot(true)
            .send()
            .await
            .map_err(|e| sdk_error("CreateImage", e))?;
        let image_id = out
            .image_id()
            .filter(|i| !i.is_empty())
            .ok_or_else(|| {
                ProviderError::Transient("CreateImage answered without an image".into())
            })?
            .to_owned();
        self.wait_image(&image_id).await
    }

    async fn delete(&self, r: &InstanceRef) -> Result<(), ProviderError> {
        match self
            .client
            .terminate_instances()
            .instance_ids(&r.provider_id)
            .send()
            .await
            .map_err(|e| sdk_error("TerminateInstances", e))
        {
            Ok(_) | Err(ProviderError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn list(&self, tags: &TagFilter) -> Result<Vec<Instance>, ProviderError> {
        let mut filters: Vec<Filter> = tags
            .0
            .iter()
            .map(|(k, v)| filter(format!("tag:{k}"), &[v.as_str()]))
            .collect();
        if !tags.0.contains_key(TAG_NODE) {
            filters.push(filter("tag-key", &[TAG_NODE])); // only fleet instances
        }
        let mut out = Vec::new();
        for e in self.describe(filters).await? {
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

    fn spec(node: &str, fleet: Option<&str>) -> NodeSpec {
        let mut tags = BTreeMap::new();
        if let Some(f) = fleet {
            tags.insert(TAG_FLEET.to_owned(), f.to_owned());
        }
        NodeSpec {
            node: NodeId::new(node).unwrap_or_else(|e| panic!("{e}")),
            pool: fleet_core::ids::PoolName::new("p").unwrap_or_else(|e| panic!("{e}")),
            instance_type: InstanceType::new("c7i.large").unwrap_or_else(|e| panic!("{e}")),
            market: Market::OnDemand,
            source: BootSource::Image {
                image: "ami-1".into(),
            },
            tags,
            bootstrap_token: None,
        }
    }

    #[test]
    fn client_tokens_differ_across_fleets_and_fit_ec2() {
        let a = client_token(&spec("ec2-1-1", Some("aaaa1111")));
        let b = client_token(&spec("ec2-1-1", Some("bbbb2222")));
        assert_ne!(a, b, "the same node id in two fleets is two instances");
        // A node id that already names its fleet is used as it is.
        assert_eq!(
            client_token(&spec("ec2-aaaa1111-1-1", Some("aaaa1111"))),
            "ec2-aaaa1111-1-1"
        );
        let long = "n".repeat(64);
        assert_eq!(client_token(&spec(&long, Some("f"))).len(), 64);
        assert_eq!(client_token(&spec("x", None)), "x");
    }
}
