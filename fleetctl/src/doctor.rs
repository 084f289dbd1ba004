//! `fleetctl doctor`: a list of independent checks, each printed as a
//! `✓`/`✗` line with a message; the exit code is 1 if any failed.
//!
//! The checks: the data dir (exists, owner-only, yours), the secret files
//! in it (owner-only), `daemon.json` (readable, its daemon running), the
//! pool CA certificate (parses, valid now), the signer key, the daemon
//! config `$FLEET_DAEMON_CONFIG` names (parses), the store it names (redb:
//! the file opens and every record decodes, unless the running daemon
//! holds it; JetStream KV: a NATS server answers), and the daemon's HTTP
//! API (`/healthz`, `/readyz`, the API token).
//!
//! To add a check, add a function returning [`Outcome`] and list it in
//! [`checks`] (or, if it must wait on I/O, call it from [`run`]).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use fleet_core::protocol::{
    API_HEALTHZ_PATH, API_READYZ_PATH, API_STATUS_PATH, Discovery, FleetRecord, LeaderRecord,
    Record, decode,
};
use fleet_core::store::Store as _;
use fleet_core::subjects::Subjects;
use fleet_daemon::config::DaemonConfig;

use crate::Context;
use crate::http::Api;

/// A check's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Passed, with what was found.
    Pass(String),
    /// Failed, with what is wrong (and what to do).
    Fail(String),
}

impl Outcome {
    /// Whether it passed.
    pub fn passed(&self) -> bool {
        matches!(self, Outcome::Pass(_))
    }

    /// The line to print: `✓ …` or `✗ …`; a message of several lines (a
    /// TOML error shows the offending line) continues indented, so every
    /// line that does not start with a mark belongs to the check above.
    pub fn line(&self) -> String {
        let (mark, m) = match self {
            Outcome::Pass(m) => ('✓', m),
            Outcome::Fail(m) => ('✗', m),
        };
        let mut lines = m.trim_end().lines();
        let mut out = format!("{mark} {}", lines.next().unwrap_or(""));
        for l in lines {
            out.push_str("\n  ");
            out.push_str(l);
        }
        out
    }
}

/// What the checks share: the context and whatever earlier checks found.
#[derive(Debug)]
pub struct State<'a> {
    /// The resolved context.
    pub ctx: &'a Context,
    /// `daemon.json`, once read.
    pub discovery: Option<Discovery>,
    /// The daemon config, once read (the embedded default when
    /// `$FLEET_DAEMON_CONFIG` is not set).
    pub config: Option<DaemonConfig>,
}

/// Files in the data dir that hold secrets and must be owner-only.
pub const SECRET_FILES: &[&str] = &[
    fleet_daemon::auth::ADMIN_TOKEN_FILE,
    fleet_daemon::auth::TOKENS_FILE,
    fleet_runtime::seal::SEAL_KEY_FILE,
    fleet_runtime::ca::CA_KEY_FILE,
];

fn data_dir(s: &mut State<'_>) -> Outcome {
    let dir = &s.ctx.data_dir;
    match std::fs::metadata(dir) {
        Err(e) => Outcome::Fail(format!(
            "data dir {}: {e} (start the daemon, or pass --data-dir)",
            dir.display()
        )),
        Ok(m) if !m.is_dir() => {
            Outcome::Fail(format!("data dir {} is not a directory", dir.display()))
        }
        Ok(m) => {
            let mode = m.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                Outcome::Fail(format!(
                    "data dir {} has mode {mode:04o}; it must be owner-only (chmod 700)",
                    dir.display()
                ))
            } else if m.uid() != nix_uid() {
                Outcome::Fail(format!(
                    "data dir {} is owned by uid {}, not by you",
                    dir.display(),
                    m.uid()
                ))
            } else {
                Outcome::Pass(format!("data dir {} (mode {mode:04o})", dir.display()))
            }
        }
    }
}

/// The effective uid, from `/proc/self` (no libc dependency).
fn nix_uid() -> u32 {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(u32::MAX)
}

fn key_files(s: &mut State<'_>) -> Outcome {
    let mut bad = Vec::new();
    let mut found = 0;
    for name in SECRET_FILES {
        let path = s.ctx.data_dir.join(name);
        if let Ok(m) = std::fs::metadata(&path) {
            found += 1;
            let mode = m.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                bad.push(format!("{name} ({mode:04o})"));
            }
        }
    }
    if !bad.is_empty() {
        Outcome::Fail(format!(
            "secret files readable by others: {}; chmod 600 them",
            bad.join(", ")
        ))
    } else if found == 0 {
        Outcome::Fail(format!(
            "no key files in {} (has the daemon run here?)",
            s.ctx.data_dir.display()
        ))
    } else {
        Outcome::Pass(format!("{found} key files are owner-only (0600)"))
    }
}

fn discovery(s: &mut State<'_>) -> Outcome {
    match s.ctx.discovery() {
        Ok(d) => {
            let running = Path::new("/proc").join(d.pid.to_string()).exists();
            let out = if running {
                Outcome::Pass(format!(
                    "daemon.json: http {}, ws {}, pid {}",
                    d.http, d.ws, d.pid
                ))
            } else {
                Outcome::Fail(format!(
                    "daemon.json: the daemon that wrote it (pid {}) is not running; start fleet-daemon",
                    d.pid
                ))
            };
            s.discovery = Some(d);
            out
        }
        Err(e) => Outcome::Fail(e.to_string()),
    }
}

fn ca_cert(s: &mut State<'_>) -> Outcome {
    let path = match &s.discovery {
        Some(d) => d.ca_file.clone(),
        None => s.ctx.data_dir.join(fleet_runtime::ca::CA_CERT_FILE),
    };
    let text = match crate::read_text(&path, "CA certificate") {
        Ok(t) => t,
        Err(e) => return Outcome::Fail(e.to_string()),
    };
    check_cert_pem(&path, &text, crate::render::now_ms())
}

/// Whether `pem` holds a certificate valid at `now_ms`.
pub fn check_cert_pem(path: &Path, pem: &str, now_ms: u64) -> Outcome {
    let parsed = x509_parser::pem::parse_x509_pem(pem.as_bytes());
    let der = match parsed {
        Ok((_, p)) => p.contents,
        Err(e) => {
            return Outcome::Fail(format!("CA certificate {}: not PEM ({e})", path.display()));
        }
    };
    let cert = match x509_parser::parse_x509_certificate(&der) {
        Ok((_, c)) => c,
        Err(e) => {
            return Outcome::Fail(format!(
                "CA certificate {}: does not parse ({e})",
                path.display()
            ));
        }
    };
    let v = cert.validity();
    let now = i64::try_from(now_ms / 1000).unwrap_or(i64::MAX);
    let from = v.not_before.timestamp();
    let to = v.not_after.timestamp();
    let to_ms = u64::try_from(to).unwrap_or(0).saturating_mul(1000);
    if now < from {
        Outcome::Fail(format!(
            "CA certificate {} is not valid yet (from {}); check the clock",
            path.display(),
            v.not_before
        ))
    } else if now > to {
        Outcome::Fail(format!(
            "CA certificate {} expired on {}",
            path.display(),
            v.not_after
        ))
    } else {
        Outcome::Pass(format!(
            "CA certificate {} valid until {}",
            path.display(),
            crate::render::utc(to_ms)
        ))
    }
}

fn signer(s: &mut State<'_>) -> Outcome {
    let path = match &s.discovery {
        Some(d) => d.signer_file.clone(),
        None => s.ctx.data_dir.join(fleet_runtime::seal::SEAL_PUB_FILE),
    };
    match crate::read_text(&path, "signer key") {
        Err(e) => Outcome::Fail(e.to_string()),
        Ok(t) => match fleet_client::SignerKey::from_base64(&t) {
            Ok(_) => Outcome::Pass(format!("signer key {}", path.display())),
            Err(e) => Outcome::Fail(format!("signer key {}: {e}", path.display())),
        },
    }
}

/// The store the config names: JetStream KV (a NATS server must answer)
/// or redb in the data dir (it must open and every record decode, unless
/// the running daemon holds it — then `/readyz` speaks for it).
pub async fn store(s: &State<'_>) -> Outcome {
    if let Some(cfg) = &s.config
        && cfg.store.nats.is_some()
    {
        let urls = cfg
            .transport
            .nats
            .as_ref()
            .map(|n| n.urls.clone())
            .unwrap_or_default();
        return nats_reachable(&urls).await;
    }
    let path = s.ctx.data_dir.join(fleet_store_redb::STORE_FILE_NAME);
    match std::fs::metadata(&path) {
        Ok(m) if m.is_file() => {}
        Ok(_) => return Outcome::Fail(format!("store {} is not a file", path.display())),
        Err(e) => return Outcome::Fail(format!("store {}: {e}", path.display())),
    }
    let dir = s.ctx.data_dir.clone();
    let opened = tokio::task::spawn_blocking(move || fleet_store_redb::RedbStore::open(&dir)).await;
    let store = match opened {
        Ok(Ok(store)) => store,
        Ok(Err(fleet_store_redb::OpenError::Locked { .. })) => {
            return Outcome::Pass(format!(
                "store {} is held by the running daemon (its /readyz below says whether it works)",
                path.display()
            ));
        }
        Ok(Err(e)) => return Outcome::Fail(e.to_string()),
        Err(e) => return Outcome::Fail(format!("store {}: {e}", path.display())),
    };
    match check_records(&store).await {
        Ok(n) => Outcome::Pass(format!("store {}: {n} records decode", path.display())),
        Err(why) => Outcome::Fail(format!(
            "store {}: {why}; the daemon will not start with it (restore a backup, or move the \
             file away to start empty)",
            path.display()
        )),
    }
}

/// Decodes every record the daemon reads at start; the number of them, or
/// the first that does not decode.
async fn check_records(store: &fleet_store_redb::RedbStore) -> Result<usize, String> {
    let corrupt =
        |key: &str, e: &dyn std::fmt::Display| format!("record {key} does not decode: {e}");
    let mut n = 0;
    for prefix in Subjects::RECORD_PREFIXES {
        for (key, v) in store.list(prefix).await.map_err(|e| e.to_string())? {
            decode::<Record>(&v.value).map_err(|e| corrupt(key.as_str(), &e))?;
            n += 1;
        }
    }
    for (key, is_leader) in [
        (Subjects::leader_key(), true),
        (Subjects::fleet_key(), false),
    ] {
        if let Some(v) = store.get(&key).await.map_err(|e| e.to_string())? {
            if is_leader {
                decode::<LeaderRecord>(&v.value).map_err(|e| corrupt(key.as_str(), &e))?;
            } else {
                decode::<FleetRecord>(&v.value).map_err(|e| corrupt(key.as_str(), &e))?;
            }
            n += 1;
        }
    }
    Ok(n)
}

/// Whether a NATS server of `urls` accepts a TCP connection (within 3 s
/// each). Names hosts and ports only: a URL may carry a password.
async fn nats_reachable(urls: &[String]) -> Outcome {
    let mut failed = Vec::new();
    for url in urls {
        let addr = nats_address(url);
        let connect = tokio::net::TcpStream::connect(addr.clone());
        match tokio::time::timeout(Duration::from_secs(3), connect).await {
            Ok(Ok(_)) => {
                return Outcome::Pass(format!("store: JetStream KV, NATS server {addr} answers"));
            }
            Ok(Err(e)) => failed.push(format!("{addr}: {e}")),
            Err(_) => failed.push(format!("{addr}: no answer within 3 s")),
        }
    }
    if failed.is_empty() {
        return Outcome::Fail("store: [store.nats] without [transport.nats] urls".to_owned());
    }
    Outcome::Fail(format!(
        "store: JetStream KV unreachable, no NATS server answers ({})",
        failed.join("; ")
    ))
}

/// `nats://user:pass@host:4222/` → `host:4222`; the port defaults to 4222.
fn nats_address(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let has_port = host_port.rsplit_once(':').is_some_and(|(host, port)| {
        !port.is_empty()
            && port.bytes().all(|b| b.is_ascii_digit())
            && (!host.contains(':') || host.ends_with(']'))
    });
    if has_port {
        host_port.to_owned()
    } else {
        format!("{host_port}:4222")
    }
}

fn daemon_config(s: &mut State<'_>) -> Outcome {
    let env = fleet_daemon::config::CONFIG_ENV;
    match std::env::var_os(env).filter(|p| !p.is_empty()) {
        None => {
            s.config = Some(DaemonConfig::default());
            Outcome::Pass(format!("{env} not set (embedded default config)"))
        }
        Some(p) => {
            let path = Path::new(&p);
            match DaemonConfig::load(path) {
                Ok(cfg) => {
                    let mut msg = format!("{env}={} parses", path.display());
                    if cfg.data_dir() != s.ctx.data_dir {
                        msg.push_str(&format!(
                            " (its data_dir is {}; checking {})",
                            cfg.data_dir().display(),
                            s.ctx.data_dir.display()
                        ));
                    }
                    s.config = Some(cfg);
                    Outcome::Pass(msg)
                }
                Err(e) => Outcome::Fail(format!("{env}={}: {e}", path.display())),
            }
        }
    }
}

/// A synchronous check.
pub type Check = fn(&mut State<'_>) -> Outcome;

/// The local checks, in order.
pub fn checks() -> Vec<(&'static str, Check)> {
    vec![
        ("data dir", data_dir as Check),
        ("key files", key_files),
        ("daemon.json", discovery),
        ("CA certificate", ca_cert),
        ("signer key", signer),
        ("daemon config", daemon_config),
    ]
}

async fn get_status(api: &Api, path: &str) -> Result<u16, String> {
    get(api, path).await.map(|(status, _)| status)
}

/// The status and the first line of the body.
async fn get(api: &Api, path: &str) -> Result<(u16, String), String> {
    api.request::<()>(reqwest::Method::GET, path, None)
        .await
        .map(|r| {
            let body = String::from_utf8_lossy(&r.body);
            (
                r.status,
                body.lines().next().unwrap_or("").trim().to_owned(),
            )
        })
        .map_err(|e| e.to_string())
}

/// The checks that talk to the daemon.
pub async fn http_checks(s: &State<'_>) -> Vec<Outcome> {
    let url = match (&s.ctx.global.url, &s.discovery) {
        (Some(u), _) => u.clone(),
        (None, Some(d)) => d.http.clone(),
        (None, None) => {
            return vec![Outcome::Fail(
                "HTTP API: no URL (daemon.json unreadable and no --url)".to_owned(),
            )];
        }
    };
    let token = match s.ctx.token() {
        Ok(t) => t,
        Err(e) => return vec![Outcome::Fail(e.to_string())],
    };
    let api = match Api::new(&url, token.clone()) {
        Ok(a) => a,
        Err(e) => return vec![Outcome::Fail(e.to_string())],
    };
    let mut out = Vec::new();
    for (path, what) in [(API_HEALTHZ_PATH, "alive"), (API_READYZ_PATH, "ready")] {
        out.push(match get(&api, path).await {
            Ok((200, _)) => Outcome::Pass(format!("{url}{path}: {what}")),
            Ok((code, said)) if said.is_empty() => {
                Outcome::Fail(format!("{url}{path}: HTTP {code}"))
            }
            Ok((code, said)) => Outcome::Fail(format!("{url}{path}: HTTP {code}: {said}")),
            Err(e) => Outcome::Fail(format!("{path}: {e}")),
        });
    }
    out.push(match (token, get_status(&api, API_STATUS_PATH).await) {
        (None, _) => Outcome::Fail(
            "API token: none (pass --token, set FLEET_TOKEN, or create <data dir>/admin.token)"
                .to_owned(),
        ),
        (Some(_), Ok(200)) => Outcome::Pass("API token accepted (/v1/status)".to_owned()),
        (Some(_), Ok(401)) => Outcome::Fail("API token refused (401)".to_owned()),
        (Some(_), Ok(code)) => Outcome::Fail(format!("/v1/status: HTTP {code}")),
        (Some(_), Err(e)) => Outcome::Fail(e),
    });
    out
}

/// Runs every check, prints the lines, returns the exit code.
pub async fn run(ctx: &Context) -> i32 {
    let mut state = State {
        ctx,
        discovery: None,
        config: None,
    };
    let mut outcomes = Vec::new();
    for (_, check) in checks() {
        let o = check(&mut state);
        println!("{}", o.line());
        outcomes.push(o);
    }
    let o = store(&state).await;
    println!("{}", o.line());
    outcomes.push(o);
    for o in http_checks(&state).await {
        println!("{}", o.line());
        outcomes.push(o);
    }
    let failed = outcomes.iter().filter(|o| !o.passed()).count();
    if failed == 0 {
        println!("all {} checks passed", outcomes.len());
        0
    } else {
        println!("{failed} of {} checks failed", outcomes.len());
        1
    }
}

#[cfg(test)]
mod tests {
    use super::{Outcome, nats_address};

    #[test]
    fn a_message_of_several_lines_continues_indented() {
        let o = Outcome::Fail("config: parse error\n1 | x = \n  | ^\nunknown field\n".to_owned());
        assert_eq!(
            o.line(),
            "✗ config: parse error\n  1 | x = \n    | ^\n  unknown field"
        );
        assert_eq!(Outcome::Pass("ok".to_owned()).line(), "✓ ok");
    }

    #[test]
    fn nats_addresses_drop_scheme_credentials_and_path() {
        for (url, addr) in [
            ("nats://127.0.0.1:4222", "127.0.0.1:4222"),
            (
                "tls://user:secret@nats.example.com:7422/",
                "nats.example.com:7422",
            ),
            ("nats.example.com", "nats.example.com:4222"),
            ("nats://[::1]:4333", "[::1]:4333"),
            ("nats://[::1]", "[::1]:4222"),
        ] {
            assert_eq!(nats_address(url), addr, "{url}");
        }
    }
}
