//! The provider's settings.

use std::collections::BTreeMap;
use std::time::Duration;

use fleet_core::protocol::Secret;

/// The public API.
pub const DEFAULT_API_URL: &str = "https://api.hetzner.cloud/v1";

/// A primary IPv4 address per hour in euros, net (Germany, as published in
/// 2024; capped at €0.50 a month).
pub const PRIMARY_IPV4_EUR_HOURLY: &str = "0.0008";

/// How a [`crate::HetznerProvider`] reaches the API and builds servers.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HetznerConfig {
    /// API base URL (default [`DEFAULT_API_URL`]; `http://` only for a fake).
    pub api_url: String,
    /// A project API token with read/write access.
    pub token: Secret,
    /// Location servers are created in (`fsn1`, `nbg1`, `hel1`, `ash`, …);
    /// offerings are priced there.
    pub location: String,
    /// Sell only these server types (empty: every non-deprecated type priced
    /// in the location).
    pub server_types: Vec<String>,
    /// Hetzner prices in EUR; the fleet counts in USD at this fixed rate
    /// (micro-dollars per euro, default 1 080 000 = $1.08).
    pub eur_to_usd_micros: u64,
    /// cloud-init user data for new servers, with `{{node}}`, `{{pool}}`,
    /// `{{bootstrap_token}}` and every [`HetznerConfig::user_data_vars`] key
    /// replaced. It must start the agent (see the crate docs).
    pub user_data: Option<String>,
    /// More `{{key}}` values for the user data (the daemon sets
    /// `daemon_url` and `ca_pem`).
    pub user_data_vars: BTreeMap<String, String>,
    /// SSH key names or ids added to new servers.
    pub ssh_keys: Vec<String>,
    /// Whether new servers get a primary IPv4 address (default true). One
    /// costs [`PRIMARY_IPV4_EUR_HOURLY`] while its server exists, which the
    /// billing model counts; without one a server has IPv6 only, and its
    /// agent must reach the daemon over IPv6.
    pub public_ipv4: bool,
    /// Most servers this project may run, if the fleet should know.
    pub max_instances: Option<u32>,
    /// Per request, the answer's body included.
    pub request_timeout: Duration,
    /// How often one call is sent again: after a 429 (any call; the API did
    /// not execute it) or after a transient failure (reads and deletes only).
    pub max_retries: u32,
    /// The longest wait for a rate limit to reset before a call is retried
    /// (the API's `RateLimit-Reset` is when the whole hourly bucket is full
    /// again, often far later than the next request would pass) and the
    /// longest backoff between retries.
    pub rate_limit_max_wait: Duration,
    /// How often a running action is polled.
    pub poll_interval: Duration,
    /// How long an action (create, power, change type, snapshot) may take.
    pub action_timeout: Duration,
    /// How long a graceful shutdown may take before the server is powered off.
    pub shutdown_timeout: Duration,
}

impl HetznerConfig {
    /// Settings for `token` in `location` with defaults for the rest.
    pub fn new(token: Secret, location: impl Into<String>) -> HetznerConfig {
        HetznerConfig {
            api_url: DEFAULT_API_URL.to_owned(),
            token,
            location: location.into(),
            server_types: Vec::new(),
            eur_to_usd_micros: 1_080_000,
            user_data: None,
            user_data_vars: BTreeMap::new(),
            ssh_keys: Vec::new(),
            public_ipv4: true,
            max_instances: None,
            request_timeout: Duration::from_secs(30),
            max_retries: 3,
            rate_limit_max_wait: Duration::from_secs(10),
            poll_interval: Duration::from_secs(1),
            action_timeout: Duration::from_secs(600),
            shutdown_timeout: Duration::from_secs(60),
        }
    }
}
