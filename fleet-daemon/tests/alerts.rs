//! Escalation delivery against a real HTTP server on loopback: bodies,
//! signatures, retries, giving up, and the bounded queue.
#![expect(clippy::unwrap_used, reason = "tests")]

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use fleet_core::controller::Alert;
use fleet_core::protocol::{AlertChannel, Escalation, PagerDutyEvent, Secret};
use fleet_core::{JobId, Workspace};
use fleet_daemon::alerts::{AlertStats, Alerts, AlertsConfig, SIGNATURE_HEADER, sign};
use fleet_runtime::AlertSink;

/// What the receiver got: path, signature header, body.
type Seen = Arc<Mutex<Vec<(String, Option<String>, Vec<u8>)>>>;

/// A receiver answering each request with the next of `statuses` (then
/// 200), or never answering when `hang`.
async fn receiver(statuses: Vec<u16>, hang: bool) -> (String, Seen) {
    let seen: Seen = Arc::default();
    let answers = Arc::new(Mutex::new(statuses));
    let app = axum::Router::new().fallback({
        let seen = seen.clone();
        move |uri: axum::http::Uri, headers: HeaderMap, body: axum::body::Bytes| {
            let seen = seen.clone();
            let answers = answers.clone();
            async move {
                let sig = headers
                    .get(SIGNATURE_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                seen.lock()
                    .unwrap()
                    .push((uri.path().to_owned(), sig, body.to_vec()));
                if hang {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                }
                let next = {
                    let mut a = answers.lock().unwrap();
                    if a.is_empty() { 200 } else { a.remove(0) }
                };
                StatusCode::from_u16(next).unwrap()
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), seen)
}

fn config(base: &str) -> AlertsConfig {
    AlertsConfig {
        pagerduty_url: format!("{base}/pagerduty"),
        timeout_ms: 2_000,
        backoff_ms: 10,
    }
}

fn escalated(id: &str, channels: Vec<AlertChannel>) -> Alert {
    Alert::JobEscalated {
        job: JobId::new("nightly-7").unwrap(),
        workspace: Workspace::new("team-a").unwrap(),
        attempts: 2,
        reason: "no progress for 1800 s".into(),
        alert_id: id.into(),
        channels,
        at: 1_767_229_200_000,
    }
}

async fn until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_channel_gets_its_body_and_a_signed_webhook_is_retried_until_accepted() {
    // The first answer is a 503: the webhook is tried again.
    let (base, seen) = receiver(vec![503], false).await;
    let stats = Arc::new(AlertStats::default());
    let alerts = Alerts::start(&config(&base), stats.clone()).unwrap();
    alerts.alert(&escalated(
        "nightly-7-2-stale",
        vec![
            AlertChannel::Webhook {
                url: format!("{base}/hook"),
                secret: Some(Secret::new("s3cr3t")),
            },
            AlertChannel::Slack {
                webhook_url: Secret::new(format!("{base}/slack")),
            },
            AlertChannel::PagerDuty {
                routing_key: Secret::new("R0UT1NGK3Y"),
                severity: "error".into(),
            },
        ],
    ));
    until("three deliveries", || {
        stats.delivered.load(Ordering::Relaxed) == 3
    })
    .await;
    assert_eq!(stats.failed.load(Ordering::Relaxed), 0);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 4, "one retry: {seen:?}");

    let hooks: Vec<_> = seen.iter().filter(|(p, ..)| p == "/hook").collect();
    // Whichever try got the 503, both carried the same signed body.
    for (_, sig, body) in &hooks {
        assert_eq!(sig.as_deref(), Some(sign("s3cr3t", body).as_str()));
        let e: Escalation = serde_json::from_slice(body).unwrap();
        assert_eq!(e.alert_id, "nightly-7-2-stale");
        assert_eq!(
            e.text,
            "fleet: job nightly-7 (team-a) needs a look after 2 attempt(s): no progress for 1800 s"
        );
    }
    let (_, sig, body) = seen.iter().find(|(p, ..)| p == "/slack").unwrap();
    assert_eq!(*sig, None, "Slack bodies are not signed");
    let e: Escalation = serde_json::from_slice(body).unwrap();
    assert_eq!((e.attempts, e.at), (2, 1_767_229_200_000));
    let (_, _, body) = seen.iter().find(|(p, ..)| p == "/pagerduty").unwrap();
    let pd: PagerDutyEvent = serde_json::from_slice(body).unwrap();
    assert_eq!(pd.routing_key, "R0UT1NGK3Y");
    assert_eq!(pd.event_action, "trigger");
    assert_eq!(pd.dedup_key, "nightly-7-2-stale");
    assert_eq!(pd.payload.source, "fleet/team-a");
    assert_eq!(pd.payload.severity, "error");
    assert_eq!(pd.payload.custom_details, e);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_is_not_retried_and_an_outage_is_retried_five_times() {
    let (base, seen) = receiver(vec![400, 500, 500, 500, 500, 500], false).await;
    let stats = Arc::new(AlertStats::default());
    let alerts = Alerts::start(&config(&base), stats.clone()).unwrap();
    let hook = |path: &str| AlertChannel::Webhook {
        url: format!("{base}{path}"),
        secret: None,
    };
    alerts.alert(&escalated("a-1-attempts", vec![hook("/refused")]));
    until("the refusal", || stats.failed.load(Ordering::Relaxed) == 1).await;
    assert_eq!(seen.lock().unwrap().len(), 1, "a 400 is final");
    alerts.alert(&escalated("b-1-attempts", vec![hook("/down")]));
    until("the outage", || stats.failed.load(Ordering::Relaxed) == 2).await;
    let down = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(p, ..)| p == "/down")
        .count();
    assert_eq!(down, 5);
    assert_eq!(stats.delivered.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_beyond_the_queue_are_dropped_and_counted() {
    // A receiver that never answers holds every delivery in flight.
    let (base, _seen) = receiver(Vec::new(), true).await;
    let stats = Arc::new(AlertStats::default());
    let alerts = Alerts::start(&config(&base), stats.clone()).unwrap();
    let n = fleet_daemon::alerts::QUEUE + 100;
    for i in 0..n {
        let hook = AlertChannel::Webhook {
            url: format!("{base}/hook"),
            secret: None,
        };
        alerts.alert(&escalated(&format!("j{i}-1-stale"), vec![hook]));
    }
    // The queue holds QUEUE; the deliverer holds a few more in flight.
    let dropped = stats.dropped.load(Ordering::Relaxed) as usize;
    assert!((80..=100).contains(&dropped), "dropped {dropped}");
    assert_eq!(stats.delivered.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_alerts_are_not_delivered() {
    let (base, seen) = receiver(Vec::new(), false).await;
    let stats = Arc::new(AlertStats::default());
    let alerts = Alerts::start(&config(&base), stats.clone()).unwrap();
    alerts.alert(&Alert::UnknownAgent {
        node: fleet_core::NodeId::new("n1").unwrap(),
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(seen.lock().unwrap().is_empty());
}
