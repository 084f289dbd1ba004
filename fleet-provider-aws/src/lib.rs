//! fleet's [`Provider`](fleet_core::provider::Provider) over Amazon EC2, on
//! `aws-sdk-ec2`.
//!
//! ```ignore
//! // Region, credentials and retries from the SDK's chains (AWS_PROFILE,
//! // ~/.aws/config, SSO, web identity, the instance role, …).
//! let mut cfg = Ec2Config::from_chain();
//! cfg.instance_types = vec!["c7i.xlarge".into(), "c7i.2xlarge".into()];
//! cfg.subnet_id = Some("subnet-0123".into());
//! cfg.user_data = Some(std::fs::read_to_string("agent-user-data.sh")?);
//! let provider = Ec2Provider::new(cfg).await?;
//! ```
//!
//! Credentials, region, retries (the SDK's standard mode) and the endpoint
//! come from [`fleet_aws`]; the HTTP client is rustls on ring.
//!
//! | fleet | EC2 |
//! |---|---|
//! | offering | `DescribeInstanceTypes` (paginated: vCPUs, memory, architecture, spot support); on-demand priced from the config or [`US_EAST_1_PRICES`], spot from `DescribeSpotPriceHistory` |
//! | `create` | `DescribeInstances` by node, fleet and namespace tags; else `RunInstances` with a fleet-unique `ClientToken`, the fleet tags, base64 user data, spot as a one-time request; polled until `running` |
//! | `start` / `stop` | `StartInstances` (polled) / `StopInstances` + the `instance_stopped` waiter |
//! | `resize` | `ModifyInstanceAttribute` `InstanceType` (instance stopped) |
//! | `snapshot` | `CreateImage` (no reboot) + the `image_available` waiter |
//! | `delete` | `TerminateInstances` |
//! | `list` | `DescribeInstances` paginator by tag, live states only |
//!
//! Errors (after the SDK's retries): `RequestLimitExceeded` → `RateLimited`,
//! `InsufficientInstanceCapacity` → `Capacity`,
//! `InstanceLimitExceeded`/`VcpuLimitExceeded` → `Quota`, `*.NotFound` →
//! `NotFound`, `IncorrectInstanceState`/5xx/timeouts/connection errors →
//! `Transient`, `AuthFailure`, missing credentials and other client errors
//! → `Permanent`.

mod config;
#[cfg(feature = "moto")]
pub mod moto;
mod provider;

pub use config::{
    AwsSettings, ConfigFile, Ec2Config, StaticKeys, US_EAST_1_PRICES, US_EAST_1_PRICES_SOURCE,
};
pub use provider::{Ec2Provider, error_of};
