//! The provider's settings.

use std::collections::BTreeMap;
use std::time::Duration;

use fleet_http::sigv4::{CredentialSource, Credentials};

/// How an [`crate::Ec2Provider`] reaches EC2 and builds instances.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Ec2Config {
    /// `us-east-1`, …
    pub region: String,
    /// API endpoint (default `https://ec2.<region>.amazonaws.com`; an
    /// emulator's `http://127.0.0.1:<port>` in tests).
    pub endpoint: String,
    /// Where signing credentials come from.
    pub credentials: CredentialSource,
    /// Sell only these instance types (empty: every type the price table
    /// or [`Ec2Config::prices`] prices).
    pub instance_types: Vec<String>,
    /// On-demand prices per hour in dollars (`"0.1785"`), overriding the
    /// built-in us-east-1 list prices; required for types the table lacks
    /// and in other regions.
    pub prices: BTreeMap<String, String>,
    /// Spot is priced at this fraction of on-demand, in per mille (default
    /// 350: spot typically trades at 30–40 % of on-demand).
    pub spot_per_mille: u64,
    /// Expected spot interruptions per 1000 instance-hours (default 5).
    pub spot_interruptions_per_1000h: u32,
    /// Root volume size in GB: new instances get a gp3 root volume of this
    /// size, and a stopped instance's EBS is priced by it.
    pub root_volume_gb: u32,
    /// Subnet new instances go in (default: the default VPC's).
    pub subnet_id: Option<String>,
    /// Security groups for new instances.
    pub security_group_ids: Vec<String>,
    /// EC2 key pair name.
    pub key_name: Option<String>,
    /// IAM instance profile name.
    pub instance_profile: Option<String>,
    /// User data for new instances, with `{{node}}`, `{{pool}}`,
    /// `{{bootstrap_token}}` and every [`Ec2Config::user_data_vars`] key
    /// replaced (sent base64-encoded).
    pub user_data: Option<String>,
    /// More `{{key}}` values (the daemon sets `daemon_url` and `ca_pem`).
    pub user_data_vars: BTreeMap<String, String>,
    /// Most instances this account may run, if the fleet should know.
    pub max_instances: Option<u32>,
    /// Per request.
    pub request_timeout: Duration,
    /// How often a transition is polled.
    pub poll_interval: Duration,
    /// How long a transition (boot, stop, AMI) may take.
    pub wait_timeout: Duration,
}

impl Ec2Config {
    /// Settings for `region` with `credentials` and defaults for the rest.
    pub fn new(region: impl Into<String>, credentials: impl Into<CredentialSource>) -> Ec2Config {
        let region = region.into();
        Ec2Config {
            endpoint: format!("https://ec2.{region}.amazonaws.com"),
            region,
            credentials: credentials.into(),
            instance_types: Vec::new(),
            prices: BTreeMap::new(),
            spot_per_mille: 350,
            spot_interruptions_per_1000h: 5,
            root_volume_gb: 30,
            subnet_id: None,
            security_group_ids: Vec::new(),
            key_name: None,
            instance_profile: None,
            user_data: None,
            user_data_vars: BTreeMap::new(),
            max_instances: None,
            request_timeout: Duration::from_secs(30),
            poll_interval: Duration::from_secs(2),
            wait_timeout: Duration::from_secs(900),
        }
    }
}

/// Credentials from `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and
/// `AWS_SESSION_TOKEN`, if the first two are set.
pub fn credentials_from_env() -> Option<Credentials> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    Some(Credentials {
        access_key_id: var("AWS_ACCESS_KEY_ID")?,
        secret_access_key: var("AWS_SECRET_ACCESS_KEY")?,
        session_token: var("AWS_SESSION_TOKEN"),
    })
}

/// EC2 us-east-1 Linux on-demand list prices (dollars per hour), used when
/// the config names no price for a type.
pub const US_EAST_1_PRICES: &[(&str, &str)] = &[
    ("c7g.large", "0.0725"),
    ("c7g.xlarge", "0.145"),
    ("c7g.2xlarge", "0.29"),
    ("c7i.large", "0.08925"),
    ("c7i.xlarge", "0.1785"),
    ("c7i.2xlarge", "0.357"),
    ("c7i.4xlarge", "0.714"),
    ("m7g.large", "0.0816"),
    ("m7g.xlarge", "0.1632"),
    ("m7i.large", "0.1008"),
    ("m7i.xlarge", "0.2016"),
    ("m7i.2xlarge", "0.4032"),
    ("t3.medium", "0.0416"),
    ("t3.large", "0.0832"),
];
