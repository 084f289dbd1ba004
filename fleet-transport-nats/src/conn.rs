//! Connection options and the shared NATS connection: URL list, credentials
//! (creds file, nkey seed file, token), TLS, a per-workspace inbox prefix,
//! and the connection-event plumbing (reconnects, server errors) that the
//! claim client and transport read.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_nats::{Client, ConnectOptions, Event};
use fleet_core::Workspace;
use fleet_core::protocol::Secret;
use futures_util::StreamExt;
use tokio::sync::{broadcast, watch};

/// Default time a request waits for its first answer.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 5_000;

/// How to reach and authenticate to NATS (`[transport.nats]` in the daemon
/// configuration). At most one of `creds_file`, `nkey_seed_file` and `token`
/// is used; a URL may also carry `user:password@`.
#[derive(Clone)]
pub struct NatsConfig {
    /// Server URLs (`nats://host:4222`, `tls://host:4222`); the client picks
    /// among them and fails over on reconnect.
    pub urls: Vec<String>,
    /// A `.creds` file (JWT + nkey seed), for decentralized auth.
    pub creds_file: Option<PathBuf>,
    /// A file holding an nkey user seed (`SU…`).
    pub nkey_seed_file: Option<PathBuf>,
    /// A shared auth token.
    pub token: Option<Secret>,
    /// User name for user/password auth (or put `user:password@` in a URL).
    pub user: Option<String>,
    /// Password for user/password auth.
    pub password: Option<Secret>,
    /// A PEM file of CA certificates to trust; setting it requires TLS.
    pub tls_ca: Option<PathBuf>,
    /// Require TLS even without a custom CA.
    pub tls_required: bool,
    /// Prefix of this connection's reply inboxes (default `_INBOX`). Give
    /// each workspace its own, e.g. `_INBOX.team-a` (see
    /// [`NatsConfig::workspace_inbox_prefix`]), so server permissions can
    /// confine its replies.
    pub inbox_prefix: Option<String>,
    /// How long a request waits for its first answer before it is re-sent.
    pub request_timeout_ms: u64,
    /// Connection name shown by the server's monitoring.
    pub name: Option<String>,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            urls: vec!["nats://127.0.0.1:4222".to_owned()],
            creds_file: None,
            nkey_seed_file: None,
            token: None,
            user: None,
            password: None,
            tls_ca: None,
            tls_required: false,
            inbox_prefix: None,
            request_timeout_ms: DEFAULT_REQUEST_TIMEOUT_MS,
            name: None,
        }
    }
}

impl fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let urls: Vec<String> = self.urls.iter().map(|u| redact_url(u)).collect();
        f.debug_struct("NatsConfig")
            .field("urls", &urls)
            .field("creds_file", &self.creds_file)
            .field("nkey_seed_file", &self.nkey_seed_file)
            .field("token", &self.token)
            .field("user", &self.user)
            .field("password", &self.password)
            .field("tls_ca", &self.tls_ca)
            .field("tls_required", &self.tls_required)
            .field("inbox_prefix", &self.inbox_prefix)
            .field("request_timeout_ms", &self.request_timeout_ms)
            .field("name", &self.name)
            .finish()
    }
}

/// `nats://user:secret@host` → `nats://<redacted>@host`.
pub(crate) fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (Some(s), r),
        None => (None, url),
    };
    let host = match rest.rsplit_once('@') {
        Some((_, host)) => format!("<redacted>@{host}"),
        None => rest.to_owned(),
    };
    match scheme {
        Some(s) => format!("{s}://{host}"),
        None => host,
    }
}

impl NatsConfig {
    /// A config for one server URL, everything else default.
    pub fn new(url: impl Into<String>) -> NatsConfig {
        NatsConfig {
            urls: vec![url.into()],
            ..NatsConfig::default()
        }
    }

    /// The inbox prefix recommended for a workspace's callers:
    /// `_INBOX.<workspace>`, so a permission on `_INBOX.<workspace>.>`
    /// confines its replies.
    pub fn workspace_inbox_prefix(ws: &Workspace) -> String {
        format!("_INBOX.{ws}")
    }

    /// The request timeout.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms.max(1))
    }

    /// Connects. Reconnects happen in the background forever; subscriptions
    /// are restored by the client library and [`Connection::reconnects`]
    /// tells waiting calls to re-send.
    pub async fn connect(&self) -> Result<Connection, ConnectError> {
        if self.urls.is_empty() {
            return Err(ConnectError::Config("no NATS URL given".to_owned()));
        }
        let auth_methods = [
            self.creds_file.is_some(),
            self.nkey_seed_file.is_some(),
            self.token.is_some(),
        ];
        if auth_methods.iter().filter(|b| **b).count() > 1 {
            return Err(ConnectError::Config(
                "set at most one of creds_file, nkey_seed_file and token".to_owned(),
            ));
        }
        let events = Arc::new(ConnEvents::new());
        let sink = Arc::clone(&events);
        let mut opts = ConnectOptions::new()
            .request_timeout(Some(self.request_timeout()))
            .max_reconnects(None)
            .event_callback(move |ev| {
                let sink = Arc::clone(&sink);
                async move { sink.on_event(ev) }
            });
        if let Some(path) = &self.creds_file {
            opts = opts.credentials_file(path).await.map_err(|e| {
                ConnectError::Credentials(format!("creds file {}: {e}", path.display()))
            })?;
        }
        if let Some(path) = &self.nkey_seed_file {
            let seed = tokio::fs::read_to_string(path).await.map_err(|e| {
                ConnectError::Credentials(format!("nkey seed file {}: {e}", path.display()))
            })?;
            opts = opts.nkey(seed.trim().to_owned());
        }
        if let Some(token) = &self.token {
            opts = opts.token(token.expose().to_owned());
        }
        if let Some((user, password)) = self.user_and_password() {
            opts = opts.user_and_password(user, password);
        }
        if let Some(ca) = &self.tls_ca {
            opts = opts.add_root_certificates(ca.clone()).require_tls(true);
        } else if self.tls_required {
            opts = opts.require_tls(true);
        }
        if let Some(prefix) = &self.inbox_prefix {
            validate_subject_prefix(prefix)?;
            opts = opts.custom_inbox_prefix(prefix);
        }
        if let Some(name) = &self.name {
            opts = opts.name(name);
        }
        let client = opts.connect(self.urls.as_slice()).await.map_err(|e| {
            use async_nats::ConnectErrorKind as K;
            let text = e.to_string();
            match e.kind() {
                K::Authentication | K::AuthorizationViolation => ConnectError::Auth(text),
                K::ServerParse => ConnectError::Config(text),
                _ => ConnectError::Unreachable(text),
            }
        })?;
        Ok(Connection {
            client,
            events,
            request_timeout: self.request_timeout(),
        })
    }
}

impl NatsConfig {
    /// The explicit user and password, else the first pair found in a URL
    /// (the client library does not read them from URLs itself).
    fn user_and_password(&self) -> Option<(String, String)> {
        if let (Some(u), Some(p)) = (&self.user, &self.password) {
            return Some((u.clone(), p.expose().to_owned()));
        }
        self.urls.iter().find_map(|url| {
            let addr: async_nats::ServerAddr = url.parse().ok()?;
            Some((addr.username()?.to_owned(), addr.password()?.to_owned()))
        })
    }
}

fn validate_subject_prefix(prefix: &str) -> Result<(), ConnectError> {
    let ok = !prefix.is_empty()
        && prefix.split('.').all(|t| {
            !t.is_empty() && !t.chars().any(|c| c.is_whitespace() || c == '*' || c == '>')
        });
    if ok {
        Ok(())
    } else {
        Err(ConnectError::Config(format!(
            "inbox prefix {prefix:?} is not a literal subject"
        )))
    }
}

/// Why connecting failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The configuration is unusable.
    #[error("NATS config: {0}")]
    Config(String),
    /// A credentials file could not be read.
    #[error("NATS credentials: {0}")]
    Credentials(String),
    /// The server refused the credentials.
    #[error("NATS authentication failed: {0}")]
    Auth(String),
    /// No server could be reached.
    #[error("NATS unreachable: {0}")]
    Unreachable(String),
}

impl ConnectError {
    /// A short stable name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ConnectError::Config(_) => "config",
            ConnectError::Credentials(_) => "credentials",
            ConnectError::Auth(_) => "auth",
            ConnectError::Unreachable(_) => "unreachable",
        }
    }

    /// Whether connecting again may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ConnectError::Unreachable(_))
    }
}

/// What the connection reports, shared with every call that waits.
pub(crate) struct ConnEvents {
    /// Whether the initial connection's `Connected` event has been seen.
    connected_once: AtomicBool,
    /// Bumped on every reconnect (not on the initial connect).
    reconnects: watch::Sender<u64>,
    /// Server error lines (`-ERR …`), e.g. permission violations.
    errors: broadcast::Sender<String>,
}

impl ConnEvents {
    fn new() -> ConnEvents {
        ConnEvents {
            connected_once: AtomicBool::new(false),
            reconnects: watch::Sender::new(0),
            errors: broadcast::Sender::new(64),
        }
    }

    fn on_event(&self, ev: Event) {
        match ev {
            // async-nats reports the initial connect as `Connected` too, but
            // through a task of its own, so the event can arrive after
            // `connect` returned and calls are already waiting. Counting it
            // as a reconnect made those calls re-send their request, and the
            // control plane then received (and answered) it twice.
            Event::Connected if !self.connected_once.swap(true, Ordering::AcqRel) => {
                tracing::info!("nats connected");
            }
            Event::Connected => {
                self.reconnects.send_modify(|n| *n = n.wrapping_add(1));
                tracing::info!("nats reconnected");
            }
            Event::Disconnected => tracing::warn!("nats disconnected; reconnecting"),
            Event::ServerError(e) => {
                let text = e.to_string();
                tracing::warn!(error = %text, "nats server error");
                // Nobody listening is fine.
                let _ = self.errors.send(text);
            }
            other => tracing::debug!(event = %other, "nats event"),
        }
    }
}

/// A connected NATS client plus its event feed. Cheap to clone; the
/// transport, the claim client and the store may share one.
#[derive(Clone)]
pub struct Connection {
    client: Client,
    events: Arc<ConnEvents>,
    request_timeout: Duration,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("state", &self.client.connection_state())
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// The underlying async-nats client (for raw use, e.g. benchmarks).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The configured request timeout.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// A receiver that changes on every reconnect (not on the initial
    /// connect, whenever its event arrives).
    pub(crate) fn reconnects(&self) -> watch::Receiver<u64> {
        self.events.reconnects.subscribe()
    }

    /// Server errors from now on.
    pub(crate) fn server_errors(&self) -> broadcast::Receiver<String> {
        self.events.errors.subscribe()
    }

    /// A round trip through the server: publishes to a fresh inbox of this
    /// connection and waits to receive it. The server handles one
    /// connection's operations in order, so when this returns every earlier
    /// subscription of this connection is in place (and a refused one has
    /// been reported). Needs publish permission on the connection's inbox
    /// prefix.
    pub async fn sync(&self) -> Result<(), fleet_core::transport::TransportError> {
        use fleet_core::transport::TransportError;
        let inbox = self.client.new_inbox();
        let mut sub = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| TransportError::Io(format!("subscribe {inbox}: {e}")))?;
        self.client
            .publish(inbox.clone(), bytes::Bytes::new())
            .await
            .map_err(|e| TransportError::Io(format!("publish {inbox}: {e}")))?;
        match tokio::time::timeout(self.request_timeout, sub.next()).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(TransportError::Closed),
            Err(_) => Err(TransportError::Timeout(millis(self.request_timeout))),
        }
    }
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Whether a server error line reports a permission violation on `subject`.
pub(crate) fn is_permission_violation(error: &str, subject: &str) -> bool {
    error.to_ascii_lowercase().contains("permissions violation")
        && error.contains(&format!("\"{subject}\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_tokens_are_redacted_in_debug() {
        let cfg = NatsConfig {
            urls: vec!["nats://me:hunter2@h:4222".to_owned(), "h2:4222".to_owned()],
            token: Some(Secret::new("tok-secret")),
            ..NatsConfig::default()
        };
        let dbg = format!("{cfg:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(!dbg.contains("tok-secret"), "{dbg}");
        assert!(dbg.contains("nats://<redacted>@h:4222"), "{dbg}");
        assert!(dbg.contains("h2:4222"), "{dbg}");
    }

    #[test]
    fn the_initial_connect_is_not_a_reconnect() {
        let events = ConnEvents::new();
        let mut rx = events.reconnects.subscribe();
        rx.borrow_and_update();
        // The initial connect's event, however late it arrives.
        events.on_event(Event::Connected);
        assert!(
            !rx.has_changed().unwrap_or(true),
            "the initial Connected must not tell waiting calls to re-send"
        );
        events.on_event(Event::Disconnected);
        events.on_event(Event::Connected);
        assert!(rx.has_changed().unwrap_or(false), "a reconnect must");
        assert_eq!(*rx.borrow_and_update(), 1);
    }

    #[test]
    fn permission_violation_is_matched_by_subject() {
        let e = "nats: Permissions Violation for Publish to \"fleet.claim.request.b.c1\"";
        assert!(is_permission_violation(e, "fleet.claim.request.b.c1"));
        assert!(!is_permission_violation(e, "fleet.claim.request.b.c"));
    }
}
