//! fleet's [`Provider`](fleet_core::provider::Provider) over Amazon EC2.
//!
//! ```ignore
//! let creds = credentials_from_env().ok_or("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")?;
//! let mut cfg = Ec2Config::new("us-east-1", creds);
//! cfg.instance_types = vec!["c7i.xlarge".into(), "c7i.2xlarge".into()];
//! cfg.subnet_id = Some("subnet-0123".into());
//! cfg.user_data = Some(std::fs::read_to_string("agent-user-data.sh")?);
//! let provider = Ec2Provider::new(cfg)?;
//! ```
//!
//! It speaks the EC2 Query API directly (form-encoded POSTs signed with
//! SigV4, XML answers) through [`fleet_http`] rather than the AWS SDK: the
//! dozen calls a provider needs do not justify the SDK's build time.
//!
//! | fleet | EC2 |
//! |---|---|
//! | offering | `DescribeInstanceTypes` (vCPUs, memory, architecture, spot support) priced from the config or the built-in us-east-1 list |
//! | `create` | `RunInstances` with `ClientToken` = node id, the fleet tags, base64 user data, spot as a one-time request |
//! | `start` / `stop` | `StartInstances` / `StopInstances`, waiting for the state |
//! | `resize` | `ModifyInstanceAttribute` `InstanceType` (instance stopped) |
//! | `snapshot` | `CreateImage` (no reboot), waiting for the AMI |
//! | `delete` | `TerminateInstances` |
//! | `list` | `DescribeInstances` by tag, all pages, live states only |
//!
//! Errors: `RequestLimitExceeded` → `RateLimited`, `InsufficientInstanceCapacity`
//! → `Capacity`, `InstanceLimitExceeded`/`VcpuLimitExceeded` → `Quota`,
//! `*.NotFound` → `NotFound`, `IncorrectInstanceState`/5xx → `Transient`,
//! `AuthFailure` and other client errors → `Permanent`.

mod config;
#[cfg(feature = "moto")]
pub mod moto;
mod provider;

pub use config::{Ec2Config, US_EAST_1_PRICES, credentials_from_env};
pub use fleet_http::sigv4::{self, CredentialSource, Credentials};
pub use provider::{Ec2Provider, error_of};
