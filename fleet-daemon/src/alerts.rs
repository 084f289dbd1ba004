//! Delivers job escalations to their alert channels: a JSON POST per
//! channel (PROTOCOL.md "Alerts"), retried, from a bounded queue.
//!
//! The driver hands every alert to [`Alerts`] on its own task, so queueing
//! never waits: a delivery that does not fit in the queue is dropped and
//! counted. Deliveries run concurrently (a slow receiver holds up only its
//! own), each retried on connection errors, timeouts, `429` and `5xx`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fleet_core::controller::Alert;
use fleet_core::protocol::{AlertChannel, Escalation, PagerDutyEvent};
use fleet_runtime::AlertSink;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;
use tokio::sync::{Semaphore, mpsc};

/// Deliveries waiting at most; beyond, new ones are dropped.
pub const QUEUE: usize = 1024;
/// Tries per delivery.
pub const TRIES: u32 = 5;
/// Deliveries in flight at once.
const CONCURRENT: usize = 8;
/// The header carrying a `webhook` body's HMAC-SHA256.
pub const SIGNATURE_HEADER: &str = "X-Fleet-Signature";
/// Where PagerDuty Events v2 takes triggers.
pub const PAGERDUTY_URL: &str = "https://events.pagerduty.com/v2/enqueue";

/// `[alerts]` of daemon.toml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// Where `pager_duty` channels' triggers go (PagerDuty's Events API v2).
    #[serde(default = "default_pagerduty_url")]
    pub pagerduty_url: String,
    /// One try's time limit.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// The wait before the second try; doubled before each next one.
    #[serde(default = "default_backoff_ms")]
    pub backoff_ms: u64,
}

fn default_pagerduty_url() -> String {
    PAGERDUTY_URL.to_owned()
}
fn default_timeout_ms() -> u64 {
    10_000
}
fn default_backoff_ms() -> u64 {
    1_000
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            pagerduty_url: default_pagerduty_url(),
            timeout_ms: default_timeout_ms(),
            backoff_ms: default_backoff_ms(),
        }
    }
}

/// How deliveries went, for `/metrics` (`fleet_alerts_total{outcome}`).
#[derive(Debug, Default)]
pub struct AlertStats {
    /// Accepted by the receiver (2xx).
    pub delivered: AtomicU64,
    /// Given up: tries used up, or a status that retrying cannot fix.
    pub failed: AtomicU64,
    /// Not queued: the queue was full.
    pub dropped: AtomicU64,
}

impl AlertStats {
    /// The counts by outcome (`delivered`, `failed`, `dropped`).
    pub fn by_outcome(&self) -> std::collections::BTreeMap<String, u64> {
        [
            ("delivered", &self.delivered),
            ("failed", &self.failed),
            ("dropped", &self.dropped),
        ]
        .into_iter()
        .map(|(k, n)| (k.to_owned(), n.load(std::sync::atomic::Ordering::Relaxed)))
        .collect()
    }
}

/// One POST to make.
#[derive(Debug)]
struct Delivery {
    channel: &'static str,
    alert_id: String,
    url: String,
    body: Vec<u8>,
    signature: Option<String>,
}

/// The daemon's [`AlertSink`].
#[derive(Debug)]
pub struct Alerts {
    queue: mpsc::Sender<Delivery>,
    stats: Arc<AlertStats>,
    pagerduty_url: String,
}

impl Alerts {
    /// Starts the delivery task (on the current tokio runtime); it ends
    /// when the returned value is dropped and the queue is empty.
    pub fn start(cfg: &AlertsConfig, stats: Arc<AlertStats>) -> Result<Arc<Alerts>, String> {
        // reqwest's rustls takes the process's provider: ring, as the
        // daemon's own TLS.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(cfg.timeout_ms))
            .build()
            .map_err(|e| format!("alert HTTP client: {e}"))?;
        let (queue, rx) = mpsc::channel(QUEUE);
        let backoff = Duration::from_millis(cfg.backoff_ms);
        tokio::spawn(deliver_all(rx, client, backoff, stats.clone()));
        Ok(Arc::new(Alerts {
            queue,
            stats,
            pagerduty_url: cfg.pagerduty_url.clone(),
        }))
    }

    fn deliveries(&self, escalation: &Escalation, channels: &[AlertChannel]) -> Vec<Delivery> {
        let mut out = Vec::new();
        for channel in channels {
            let (url, body, signature) = match channel {
                AlertChannel::Slack { webhook_url } => {
                    (webhook_url.expose().to_owned(), json(escalation), None)
                }
                AlertChannel::Webhook { url, secret } => {
                    let body = json(escalation);
                    let signature = secret.as_ref().map(|s| sign(s.expose(), &body));
                    (url.clone(), body, signature)
                }
                AlertChannel::PagerDuty {
                    routing_key,
                    severity,
                } => {
                    let event =
                        PagerDutyEvent::trigger(routing_key.expose(), severity, escalation.clone());
                    (self.pagerduty_url.clone(), json(&event), None)
                }
                // A channel kind this daemon does not know: logged, not sent.
                other => {
                    tracing::warn!(channel = other.kind(), "alert channel not supported");
                    continue;
                }
            };
            out.push(Delivery {
                channel: channel.kind(),
                alert_id: escalation.alert_id.clone(),
                url,
                body,
                signature,
            });
        }
        out
    }
}

impl AlertSink for Alerts {
    fn alert(&self, alert: &Alert) {
        let Alert::JobEscalated {
            job,
            workspace,
            attempts,
            reason,
            alert_id,
            channels,
            at,
        } = alert
        else {
            return;
        };
        let escalation = Escalation::new(
            alert_id.clone(),
            job.clone(),
            workspace.clone(),
            *attempts,
            reason.clone(),
            *at,
        );
        for d in self.deliveries(&escalation, channels) {
            if let Err(e) = self.queue.try_send(d) {
                let d = match e {
                    mpsc::error::TrySendError::Full(d) | mpsc::error::TrySendError::Closed(d) => d,
                };
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::error!(alert_id = %d.alert_id, channel = d.channel, "alert queue full; delivery dropped");
            }
        }
    }
}

fn json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Plain structs of strings and numbers: serializing cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

/// `sha256=<hex>` of the body's HMAC-SHA256 under `secret`.
pub fn sign(secret: &str, body: &[u8]) -> String {
    // HMAC takes a key of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"));
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

async fn deliver_all(
    mut rx: mpsc::Receiver<Delivery>,
    client: reqwest::Client,
    backoff: Duration,
    stats: Arc<AlertStats>,
) {
    let slots = Arc::new(Semaphore::new(CONCURRENT));
    while let Some(d) = rx.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let client = client.clone();
        let stats = stats.clone();
        tokio::spawn(async move {
            let outcome = deliver(&client, &d, backoff).await;
            match outcome {
                Ok(tries) => {
                    stats.delivered.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(alert_id = %d.alert_id, channel = d.channel, tries, "alert delivered");
                }
                Err(why) => {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(alert_id = %d.alert_id, channel = d.channel, %why, "alert not delivered");
                }
            }
            drop(slot);
        });
    }
}

/// POSTs `d` until it is accepted or retrying cannot help; the tries it took.
async fn deliver(client: &reqwest::Client, d: &Delivery, backoff: Duration) -> Result<u32, String> {
    let mut wait = backoff;
    let mut tries = 0;
    loop {
        tries += 1;
        let mut req = client
            .post(&d.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(d.body.clone());
        if let Some(sig) = &d.signature {
            req = req.header(SIGNATURE_HEADER, sig);
        }
        let why = match req.send().await {
            Ok(resp) if resp.status().is_success() => return Ok(tries),
            Ok(resp) => {
                let status = resp.status();
                let retry = status.is_server_error() || status.as_u16() == 429;
                if !retry {
                    return Err(format!("{} answered {status}", host(&d.url)));
                }
                format!("{} answered {status}", host(&d.url))
            }
            // The URL itself is never logged: a Slack webhook URL is a secret.
            Err(e) => format!("{}: {}", host(&d.url), e.without_url()),
        };
        if tries >= TRIES {
            return Err(format!("{why} (after {tries} tries)"));
        }
        tracing::warn!(alert_id = %d.alert_id, channel = d.channel, %why, tries, "alert delivery failed; retrying");
        tokio::time::sleep(wait).await;
        wait = wait.saturating_mul(2);
    }
}

/// The host of a URL, for logs.
fn host(url: &str) -> String {
    reqwest::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_else(|| "the receiver".to_owned())
}
