//! The AWS SDK configuration fleet shares: the EC2 provider
//! (`fleet-provider-aws`) and the agent's S3 queue store load their
//! [`SdkConfig`] here, so both resolve credentials, region, retries and the
//! endpoint the same way.
//!
//! ```no_run
//! # async fn f() {
//! let settings = fleet_aws::AwsSettings {
//!     region: Some("eu-west-1".into()),
//!     profile: Some("builds".into()), // a profile in ~/.aws/config
//!     ..Default::default()
//! };
//! let config = fleet_aws::load(&settings).await;
//! # let _ = config;
//! # }
//! ```
//!
//! What it decides:
//!
//! - **Credentials**: static keys when [`AwsSettings::static_keys`] is set
//!   (the daemon reads them from files); otherwise the SDK's default chain,
//!   in its order: `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`
//!   (`AWS_SESSION_TOKEN`); the shared config and credentials files
//!   (`~/.aws/config`, `~/.aws/credentials`, or the files named in
//!   [`AwsSettings::config_files`] / `AWS_CONFIG_FILE` /
//!   `AWS_SHARED_CREDENTIALS_FILE`) for the profile named by
//!   [`AwsSettings::profile`] or `AWS_PROFILE` — with `role_arn`
//!   assume-role chains, `sso_session`s and `credential_process`; web
//!   identity (`AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN`, as EKS IRSA
//!   sets them); ECS/EKS-pod container credentials; the EC2 instance role
//!   over IMDSv2. Credentials that expire are refreshed by the SDK.
//! - **Region**: [`AwsSettings::region`], else `AWS_REGION`, the profile's
//!   `region`, then IMDS.
//! - **Retries**: the SDK's *standard* mode (exponential backoff with
//!   jitter, a retry quota, throttling errors such as
//!   `RequestLimitExceeded` retried) with [`AwsSettings::max_attempts`].
//! - **Endpoint**: the partition's for the region, or
//!   [`AwsSettings::endpoint`] (an emulator such as `moto_server` in tests;
//!   `AWS_ENDPOINT_URL` is honoured by the SDK too).
//! - **HTTP**: one client on rustls with the *ring* provider and the
//!   system's roots. The SDK's default client would add aws-lc-rs, a second
//!   TLS stack beside the one the rest of fleet uses.

use std::path::PathBuf;
use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_runtime::env_config::file::{EnvConfigFileKind, EnvConfigFiles};
use aws_smithy_http_client::tls;
use aws_smithy_runtime_api::client::http::SharedHttpClient;

pub use aws_config::SdkConfig;

/// Access keys given explicitly (not from the SDK's chain).
#[derive(Clone, PartialEq, Eq)]
pub struct StaticKeys {
    /// `AKIA…`.
    pub access_key_id: String,
    /// The secret.
    pub secret_access_key: String,
    /// The session token of temporary keys.
    pub session_token: Option<String>,
}

impl std::fmt::Debug for StaticKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticKeys")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// How to reach AWS. Every field is optional: the default is the SDK's own
/// chain for everything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsSettings {
    /// The region (else the SDK's region chain).
    pub region: Option<String>,
    /// The shared-config profile (else `AWS_PROFILE`, else `default`).
    pub profile: Option<String>,
    /// Shared config / credentials files to read instead of
    /// `~/.aws/config` and `~/.aws/credentials` (each a config-format or
    /// credentials-format file, told apart by [`ConfigFile`]).
    pub config_files: Vec<ConfigFile>,
    /// Keys that bypass the chain.
    pub static_keys: Option<StaticKeys>,
    /// The API endpoint, overriding the region's (an emulator in tests).
    pub endpoint: Option<String>,
    /// Attempts per call in the standard retry mode (first try included).
    pub max_attempts: u32,
    /// Timeout of one attempt (connect, send, read the answer).
    pub attempt_timeout: Duration,
    /// Connect timeout.
    pub connect_timeout: Duration,
}

impl Default for AwsSettings {
    fn default() -> Self {
        AwsSettings {
            region: None,
            profile: None,
            config_files: Vec::new(),
            static_keys: None,
            endpoint: None,
            max_attempts: 4,
            attempt_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// A shared configuration file and its format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigFile {
    /// `~/.aws/config` format (`[profile name]` sections).
    Config(PathBuf),
    /// `~/.aws/credentials` format (`[name]` sections).
    Credentials(PathBuf),
}

/// The one HTTPS client fleet's SDK clients share: rustls on ring, the
/// system's roots, HTTP/1.1 and HTTP/2.
pub fn http_client() -> SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https()
}

/// Loads the SDK configuration `settings` describe (resolving the region
/// chain; credentials are resolved lazily, on the first call, and cached).
pub async fn load(settings: &AwsSettings) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http_client())
        .retry_config(RetryConfig::standard().with_max_attempts(settings.max_attempts.max(1)))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(settings.connect_timeout)
                .operation_attempt_timeout(settings.attempt_timeout)
                .build(),
        );
    if let Some(region) = &settings.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some(profile) = &settings.profile {
        loader = loader.profile_name(profile.clone());
    }
    if !settings.config_files.is_empty() {
        let mut files = EnvConfigFiles::builder();
        for f in &settings.config_files {
            files = match f {
                ConfigFile::Config(p) => files.with_file(EnvConfigFileKind::Config, p),
                ConfigFile::Credentials(p) => files.with_file(EnvConfigFileKind::Credentials, p),
            };
        }
        loader = loader.profile_files(files.build());
    }
    if let Some(k) = &settings.static_keys {
        loader = loader.credentials_provider(aws_credential_types::Credentials::new(
            k.access_key_id.clone(),
            k.secret_access_key.clone(),
            k.session_token.clone(),
            None,
            "fleet-static",
        ));
    }
    if let Some(endpoint) = &settings.endpoint {
        loader = loader.endpoint_url(endpoint.trim_end_matches('/'));
    }
    let config = loader.load().await;
    tracing::debug!(
        region = config.region().map(|r| r.as_ref()),
        profile = settings.profile.as_deref(),
        endpoint = settings.endpoint.as_deref(),
        "AWS SDK configuration loaded"
    );
    config
}

/// The access key id of the credentials `config` resolves to now (never
/// the secret); a clear error naming the chain when there are none.
pub async fn access_key_id(config: &SdkConfig) -> Result<String, String> {
    use aws_credential_types::provider::ProvideCredentials as _;
    let Some(provider) = config.credentials_provider() else {
        return Err("no AWS credentials provider is configured".to_owned());
    };
    match provider.provide_credentials().await {
        Ok(c) => Ok(c.access_key_id().to_owned()),
        Err(e) => Err(format!(
            "no AWS credentials: {} (looked at AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, the \
             shared config and credentials files and their profile, web identity, container \
             credentials and the instance role)",
            fleet_core::provider::error_chain(&e)
        )),
    }
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]

    use super::*;

    #[tokio::test]
    async fn a_profile_in_a_named_config_file_supplies_region_and_keys() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config");
        std::fs::write(
            &config,
            "[profile builds]\nregion = eu-central-1\n\
             aws_access_key_id = AKIDPROFILE\naws_secret_access_key = s3cr3t\n",
        )
        .unwrap();
        let settings = AwsSettings {
            profile: Some("builds".into()),
            config_files: vec![ConfigFile::Config(config)],
            ..Default::default()
        };
        let sdk = load(&settings).await;
        assert_eq!(sdk.region().map(|r| r.as_ref()), Some("eu-central-1"));
        assert_eq!(access_key_id(&sdk).await.unwrap(), "AKIDPROFILE");
    }

    #[tokio::test]
    async fn static_keys_win_and_the_region_is_explicit() {
        let settings = AwsSettings {
            region: Some("us-west-2".into()),
            static_keys: Some(StaticKeys {
                access_key_id: "AKID".into(),
                secret_access_key: "s".into(),
                session_token: None,
            }),
            ..Default::default()
        };
        let sdk = load(&settings).await;
        assert_eq!(sdk.region().map(|r| r.as_ref()), Some("us-west-2"));
        assert_eq!(access_key_id(&sdk).await.unwrap(), "AKID");
        assert!(!format!("{:?}", settings.static_keys).contains("\"s\""));
    }
}
