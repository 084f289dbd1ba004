//! The Hetzner Cloud API as this provider calls it: `hcloud`'s typed calls
//! on a client we build, plus what `hcloud` leaves to its user — retries,
//! rate-limit waits and error classification.
//!
//! `hcloud`'s generated functions answer a non-2xx status with
//! `Error::ResponseError { status, content }`: the body, no headers. The
//! `RateLimit-*` headers of a 429 are therefore read by [`Api::probe`], one
//! plain `GET /locations?per_page=1` on the same client (see the crate docs
//! for why that is the cleanest way).

use std::fmt;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fleet_core::provider::{ProviderError, error_chain};
use hcloud::apis::Error as HcloudError;
use hcloud::apis::configuration::Configuration;
use hcloud::models::ErrorResponse;

use crate::config::HetznerConfig;

/// The base URL `hcloud`'s calls are written against; the configuration maps
/// it to [`HetznerConfig::api_url`].
const HCLOUD_BASE: &str = "https://api.hetzner.cloud/v1";
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The first wait before retrying a read that failed transiently; it doubles.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);

/// Whether a call may be sent again after a transient failure. Every call
/// may be resent after a 429: the API did not execute it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// A read (or a delete, which the provider treats as done on 404).
    Idempotent,
    /// A call with effects (create, power, change type, snapshot).
    Once,
}

/// The rate-limit headers of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RateLimit {
    /// `RateLimit-Limit`: requests per hour.
    pub(crate) limit: u64,
    /// `RateLimit-Remaining`: requests left now.
    pub(crate) remaining: u64,
    /// `RateLimit-Reset`: unix second at which the bucket is full again.
    pub(crate) reset: u64,
}

impl RateLimit {
    /// Reads the three headers; `None` if any is missing or not a number.
    pub(crate) fn from_headers(h: &reqwest::header::HeaderMap) -> Option<RateLimit> {
        let num = |name: &str| h.get(name)?.to_str().ok()?.trim().parse::<u64>().ok();
        Some(RateLimit {
            limit: num("ratelimit-limit")?,
            remaining: num("ratelimit-remaining")?,
            reset: num("ratelimit-reset")?,
        })
    }

    /// How long to wait before the next request, seen at `now`: none while
    /// requests remain, else until the reset, at most `cap`.
    pub(crate) fn wait(&self, now: SystemTime, cap: Duration) -> Duration {
        if self.remaining > 0 {
            return Duration::ZERO;
        }
        let reset = UNIX_EPOCH + Duration::from_secs(self.reset);
        reset.duration_since(now).unwrap_or(Duration::ZERO).min(cap)
    }
}

/// A failed call before classification.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The API answered with an error status.
    Status {
        status: u16,
        code: String,
        message: String,
    },
    /// No usable answer: connecting, timeout, or a body that is not the model.
    Transport { permanent: bool, why: String },
}

impl<E> From<HcloudError<E>> for Failure {
    fn from(e: HcloudError<E>) -> Failure {
        match e {
            HcloudError::ResponseError(r) => {
                let (code, message) = serde_json::from_str::<ErrorResponse>(&r.content)
                    .map(|b| (b.error.code, b.error.message))
                    .unwrap_or_else(|_| (String::new(), snippet(&r.content)));
                Failure::Status {
                    status: r.status.as_u16(),
                    code,
                    message,
                }
            }
            HcloudError::Reqwest(e) => Failure::Transport {
                // A request that cannot even be built (a bad URL) never will be.
                permanent: e.is_builder(),
                why: if e.is_timeout() {
                    format!("no answer in time: {}", error_chain(&e))
                } else {
                    error_chain(&e)
                },
            },
            HcloudError::Serde(e) => Failure::Transport {
                permanent: false,
                why: format!("unexpected answer from the API: {e}"),
            },
            HcloudError::Io(e) => Failure::Transport {
                permanent: false,
                why: e.to_string(),
            },
        }
    }
}

impl Failure {
    fn is_rate_limit(&self) -> bool {
        matches!(self, Failure::Status { status: 429, .. })
            || matches!(self, Failure::Status { code, .. } if code == "rate_limit_exceeded")
    }

    /// The fleet's classification of this failure of `what`.
    pub(crate) fn classify(&self, what: &str) -> ProviderError {
        match self {
            Failure::Transport { permanent, why } => {
                let text = format!("{what}: {why}");
                if *permanent {
                    ProviderError::Permanent(text)
                } else {
                    ProviderError::Transient(text)
                }
            }
            Failure::Status {
                status,
                code,
                message,
            } => {
                let text = format!("{what}: {status} {code}: {message}");
                classify_code(*status, code, text)
            }
        }
    }
}

/// Maps an API error (HTTP status and error code) to the fleet's error.
pub(crate) fn classify_code(status: u16, code: &str, text: String) -> ProviderError {
    match (status, code) {
        (429, _) | (_, "rate_limit_exceeded") => ProviderError::RateLimited(text),
        (404, _) | (_, "not_found") => ProviderError::NotFound(text),
        (_, "uniqueness_error") => ProviderError::AlreadyExists(text),
        (_, "resource_limit_exceeded") => ProviderError::Quota(text),
        (_, "resource_unavailable" | "placement_error") => ProviderError::Capacity(text),
        (
            _,
            "locked" | "conflict" | "maintenance" | "timeout" | "unavailable" | "service_error",
        ) => ProviderError::Transient(text),
        (s, _) if s >= 500 => ProviderError::Transient(text),
        _ => ProviderError::Permanent(text),
    }
}

/// Maps the error of a failed action (`{"code", "message"}`, no status).
pub(crate) fn classify_action_error(code: &str, text: String) -> ProviderError {
    match code {
        "resource_unavailable" | "placement_error" => ProviderError::Capacity(text),
        "resource_limit_exceeded" => ProviderError::Quota(text),
        // An action that failed inside Hetzner (e.g. `action_failed`) may
        // work on another try.
        _ => ProviderError::Transient(text),
    }
}

/// The first 200 characters of a body that is not an API error document.
fn snippet(body: &str) -> String {
    body.chars().take(200).collect()
}

/// The API client: `hcloud`'s configuration, and the retry policy around it.
pub(crate) struct Api {
    config: Configuration,
    probe_url: String,
    max_retries: u32,
    max_wait: Duration,
    /// No request is sent before this instant: set when a 429 was seen, so
    /// concurrent calls wait out the limit instead of each hitting it.
    resume_at: Mutex<Option<SystemTime>>,
}

impl fmt::Debug for Api {
    // `Configuration`'s own Debug would print the token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Api")
            .field("base", &self.config.get_base_path(HCLOUD_BASE))
            .field("max_retries", &self.max_retries)
            .field("max_wait", &self.max_wait)
            .finish_non_exhaustive()
    }
}

impl Api {
    /// A client for `cfg`'s endpoint and token.
    pub(crate) fn new(cfg: &HetznerConfig) -> Result<Api, ProviderError> {
        let bad = |why: &str| ProviderError::Permanent(format!("api_url {:?}: {why}", cfg.api_url));
        let url = reqwest::Url::parse(&cfg.api_url).map_err(|e| bad(&e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad("the scheme must be https (or http for a fake)"));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(bad("no host"));
        }
        let base = cfg.api_url.trim_end_matches('/').to_owned();
        let host = url.host_str().unwrap_or_default();
        let loopback = host == "localhost"
            || (host.trim_matches(['[', ']']).parse::<std::net::IpAddr>())
                .is_ok_and(|ip| ip.is_loopback());
        if url.scheme() == "http" && !loopback {
            tracing::warn!(api_url = %base, "the Hetzner API is reached over plain http");
        }
        // reqwest's rustls backend takes the process's crypto provider; this
        // build has ring only. Installing fails harmlessly when one already is.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(cfg.request_timeout)
            .connect_timeout(CONNECT_TIMEOUT.min(cfg.request_timeout))
            // The requests carry the project token: no proxy from the
            // environment sees them.
            .no_proxy()
            .build()
            .map_err(|e| {
                ProviderError::Permanent(format!(
                    "cannot set up the HTTP client: {}",
                    error_chain(&e)
                ))
            })?;
        let config = Configuration {
            base_path_mapping: [(HCLOUD_BASE.to_owned(), base.clone())]
                .into_iter()
                .collect(),
            user_agent: Some(format!(
                "fleet-provider-hetzner/{} hcloud-rust/0.26",
                env!("CARGO_PKG_VERSION")
            )),
            client,
            basic_auth: None,
            oauth_access_token: None,
            bearer_access_token: Some(cfg.token.expose().to_owned()),
            api_key: None,
        };
        Ok(Api {
            probe_url: format!("{base}/locations?per_page=1"),
            config,
            max_retries: cfg.max_retries,
            max_wait: cfg.rate_limit_max_wait,
            resume_at: Mutex::new(None),
        })
    }

    /// Runs `call` (an `hcloud` function on [`Api::config`]) for `what`:
    /// waits out a known rate limit first, retries after a 429 (waiting
    /// until `RateLimit-Reset`, at most `rate_limit_max_wait`) and, for
    /// [`Retry::Idempotent`] calls, after a transient failure with backoff;
    /// at most `max_retries` times. The last failure is classified.
    pub(crate) async fn call<'a, T, E, F, Fut>(
        &'a self,
        what: &str,
        retry: Retry,
        mut call: F,
    ) -> Result<T, ProviderError>
    where
        F: FnMut(&'a Configuration) -> Fut,
        Fut: Future<Output = Result<T, HcloudError<E>>> + 'a,
    {
        let mut attempt = 0;
        loop {
            self.hold().await;
            let failure = match call(&self.config).await {
                Ok(v) => return Ok(v),
                Err(e) => Failure::from(e),
            };
            let error = failure.classify(what);
            let more = attempt < self.max_retries;
            attempt += 1;
            if failure.is_rate_limit() {
                let limit = self.probe().await;
                let Some(wait) = more.then(|| match limit {
                    Some(rl) => rl.wait(SystemTime::now(), self.max_wait),
                    // No headers to go by: back off as for any failure.
                    None => backoff(attempt, self.max_wait),
                }) else {
                    let reset = limit
                        .map(|rl| format!(" (the limit resets at unix time {})", rl.reset))
                        .unwrap_or_default();
                    let text = match error {
                        ProviderError::RateLimited(text) => text,
                        other => other.to_string(),
                    };
                    return Err(ProviderError::RateLimited(format!("{text}{reset}")));
                };
                tracing::info!(
                    what,
                    wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                    attempt,
                    "rate limited by the Hetzner API; waiting"
                );
                self.resume_after(wait);
            } else if more && retry == Retry::Idempotent && error.is_retryable() {
                let wait = backoff(attempt, self.max_wait);
                tracing::debug!(
                    what,
                    %error,
                    wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                    attempt,
                    "retrying"
                );
                tokio::time::sleep(wait).await;
            } else {
                return Err(error);
            }
        }
    }

    /// Sleeps until the rate limit others have seen is over.
    async fn hold(&self) {
        let until = *self.resume_at.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(wait) = until.and_then(|t| t.duration_since(SystemTime::now()).ok()) {
            tokio::time::sleep(wait.min(self.max_wait)).await;
        }
    }

    /// No call is sent for `wait` from now.
    fn resume_after(&self, wait: Duration) {
        let at = SystemTime::now() + wait;
        let mut resume = self.resume_at.lock().unwrap_or_else(|e| e.into_inner());
        if resume.is_none_or(|r| r < at) {
            *resume = Some(at);
        }
    }

    /// The current rate limit, from the headers of one cheap request (a
    /// 429 carries them too); `None` if there is no answer or no headers.
    pub(crate) async fn probe(&self) -> Option<RateLimit> {
        let mut req = self.config.client.get(&self.probe_url);
        if let Some(token) = &self.config.bearer_access_token {
            req = req.bearer_auth(token);
        }
        if let Some(ua) = &self.config.user_agent {
            req = req.header(reqwest::header::USER_AGENT, ua);
        }
        match req.send().await {
            Ok(answer) => RateLimit::from_headers(answer.headers()),
            Err(e) => {
                tracing::debug!(error = %error_chain(&e), "rate-limit probe failed");
                None
            }
        }
    }
}

/// The wait before retry `attempt` (1, 2, …): 250 ms doubling, at most `cap`.
fn backoff(attempt: u32, cap: Duration) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(cap)
}

/// An `hcloud` id from a provider id.
pub(crate) fn server_id(what: &str, provider_id: &str) -> Result<i64, ProviderError> {
    provider_id.parse::<i64>().map_err(|_| {
        ProviderError::Permanent(format!(
            "{what}: {provider_id:?} is not a Hetzner server id"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hcloud::apis::ResponseContent;

    fn failure(status: u16, body: &str) -> Failure {
        let e: HcloudError<()> = HcloudError::ResponseError(ResponseContent {
            status: reqwest::StatusCode::from_u16(status).unwrap_or_else(|e| panic!("{e}")),
            content: body.to_owned(),
            entity: None,
        });
        Failure::from(e)
    }

    #[test]
    fn errors_are_classified_by_status_and_code() {
        let e = |s, code: &str| {
            failure(
                s,
                &format!(r#"{{"error":{{"code":"{code}","message":"m","details":{{}}}}}}"#),
            )
            .classify("x")
        };
        assert!(matches!(
            e(429, "rate_limit_exceeded"),
            ProviderError::RateLimited(_)
        ));
        assert!(matches!(e(404, "not_found"), ProviderError::NotFound(_)));
        assert!(matches!(
            e(409, "uniqueness_error"),
            ProviderError::AlreadyExists(_)
        ));
        assert!(matches!(
            e(403, "resource_limit_exceeded"),
            ProviderError::Quota(_)
        ));
        assert!(matches!(
            e(412, "resource_unavailable"),
            ProviderError::Capacity(_)
        ));
        assert!(matches!(
            e(412, "placement_error"),
            ProviderError::Capacity(_)
        ));
        assert!(matches!(e(423, "locked"), ProviderError::Transient(_)));
        assert!(matches!(e(409, "conflict"), ProviderError::Transient(_)));
        assert!(matches!(
            e(503, "service_error"),
            ProviderError::Transient(_)
        ));
        assert!(matches!(
            e(401, "unauthorized"),
            ProviderError::Permanent(_)
        ));
        assert!(matches!(e(403, "forbidden"), ProviderError::Permanent(_)));
        assert!(matches!(
            e(400, "invalid_input"),
            ProviderError::Permanent(_)
        ));
        // Not JSON at all: still classified, with the body as the message.
        match failure(502, "<html>").classify("get server 7") {
            ProviderError::Transient(m) => assert_eq!(m, "get server 7: 502 : <html>"),
            other => panic!("{other:?}"),
        }
        // The context says which call failed.
        match e(412, "resource_unavailable") {
            ProviderError::Capacity(m) => assert_eq!(m, "x: 412 resource_unavailable: m"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rate_limit_headers_give_the_wait() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(
            "ratelimit-limit",
            reqwest::header::HeaderValue::from_static("3600"),
        );
        h.insert(
            "ratelimit-remaining",
            reqwest::header::HeaderValue::from_static("0"),
        );
        h.insert(
            "ratelimit-reset",
            reqwest::header::HeaderValue::from_static("1000"),
        );
        let rl = RateLimit::from_headers(&h);
        assert_eq!(
            rl,
            Some(RateLimit {
                limit: 3600,
                remaining: 0,
                reset: 1000
            })
        );
        let rl = rl.unwrap_or_else(|| panic!("parsed above"));
        let at = |s| UNIX_EPOCH + Duration::from_millis(s);
        let cap = Duration::from_secs(60);
        assert_eq!(rl.wait(at(998_500), cap), Duration::from_millis(1_500));
        assert_eq!(rl.wait(at(1_000_000), cap), Duration::ZERO, "reset passed");
        assert_eq!(
            rl.wait(at(0), cap),
            cap,
            "a far reset is waited for at most the cap"
        );
        let left = RateLimit { remaining: 3, ..rl };
        assert_eq!(left.wait(at(0), cap), Duration::ZERO, "requests remain");
        h.remove("ratelimit-reset");
        assert_eq!(RateLimit::from_headers(&h), None);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let cap = Duration::from_secs(2);
        let b: Vec<u128> = (1..=5).map(|a| backoff(a, cap).as_millis()).collect();
        assert_eq!(b, [250, 500, 1000, 2000, 2000]);
        assert_eq!(backoff(u32::MAX, Duration::MAX), FIRST_BACKOFF * 65_536);
    }
}
