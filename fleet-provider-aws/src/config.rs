//! The provider's settings.

use std::collections::BTreeMap;
use std::time::Duration;

pub use fleet_aws::{AwsSettings, ConfigFile, StaticKeys};

/// How an [`crate::Ec2Provider`] reaches EC2 and builds instances.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Ec2Config {
    /// Region, profile, credentials, endpoint and retries (see
    /// [`fleet_aws`]: the SDK's default chains unless set).
    pub aws: AwsSettings,
    /// Sell only these instance types (empty: every type the price table
    /// or [`Ec2Config::prices`] prices).
    pub instance_types: Vec<String>,
    /// On-demand prices per hour in dollars (`"0.1785"`), overriding the
    /// built-in us-east-1 list prices; required for types the table lacks
    /// and in other regions.
    pub prices: BTreeMap<String, String>,
    /// Spot prices come from `DescribeSpotPriceHistory`; when EC2 gives
    /// none for a type (or the call fails), spot is priced at this fraction
    /// of on-demand, in per mille (default 350), and a warning says so.
    pub spot_per_mille: u64,
    /// How long fetched spot prices are used before they are fetched again.
    pub spot_price_ttl: Duration,
    /// Expected spot interruptions per 1000 instance-hours (default 5).
    pub spot_interruptions_per_1000h: u32,
    /// Root volume size in GB: new instances get a gp3 root volume of this
    /// size, and a stopped instance's EBS is priced by it.
    pub root_volume_gb: u32,
    /// Subnet new instances go in (default: the default VPC's).
    pub subnet_id: Option<String>,
    /// Whether new instances get a public IPv4 address: `None` leaves it
    /// to the subnet's auto-assign setting (the default VPC's subnets
    /// assign one); `Some` asks for it, or its absence, at launch. Each
    /// address costs $0.005/h while its instance runs, which the billing
    /// model counts unless this is `Some(false)`.
    pub public_ipv4: Option<bool>,
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
    /// How often a booting instance is polled for `running`.
    pub poll_interval: Duration,
    /// How long a transition (boot, stop, AMI) may take.
    pub wait_timeout: Duration,
}

impl Ec2Config {
    /// Settings for `region`, everything else from the SDK's chains and
    /// defaults.
    pub fn new(region: impl Into<String>) -> Ec2Config {
        let mut cfg = Ec2Config::from_chain();
        cfg.aws.region = Some(region.into());
        cfg
    }

    /// Settings with the region, too, from the SDK's chain (`AWS_REGION`,
    /// the profile's `region`, IMDS).
    pub fn from_chain() -> Ec2Config {
        Ec2Config {
            aws: AwsSettings::default(),
            instance_types: Vec::new(),
            prices: BTreeMap::new(),
            spot_per_mille: 350,
            spot_price_ttl: Duration::from_secs(15 * 60),
            spot_interruptions_per_1000h: 5,
            root_volume_gb: 30,
            subnet_id: None,
            public_ipv4: None,
            security_group_ids: Vec::new(),
            key_name: None,
            instance_profile: None,
            user_data: None,
            user_data_vars: BTreeMap::new(),
            max_instances: None,
            poll_interval: Duration::from_secs(2),
            wait_timeout: Duration::from_secs(900),
        }
    }
}

/// Where [`US_EAST_1_PRICES`] come from.
pub const US_EAST_1_PRICES_SOURCE: &str = "AWS EC2 On-Demand pricing, Linux, us-east-1 \
     (aws.amazon.com/ec2/pricing/on-demand), as published in June 2026";

/// EC2 us-east-1 Linux on-demand list prices (dollars per hour), used when
/// the config names no price for a type. Source: [`US_EAST_1_PRICES_SOURCE`].
/// In other regions every price must come from the config.
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
