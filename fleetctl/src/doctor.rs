//! `fleetctl doctor`: a list of independent checks, each printed as a
//! `✓`/`✗` line with a message; the exit code is 1 if any failed.
//!
//! To add a check, add a function returning [`Outcome`] and list it in
//! [`checks`].

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use fleet_core::protocol::{API_HEALTHZ_PATH, API_READYZ_PATH, API_STATUS_PATH, Discovery};

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

    /// The line to print.
    pub fn line(&self) -> String {
        match self {
            Outcome::Pass(m) => format!("✓ {m}"),
            Outcome::Fail(m) => format!("✗ {m}"),
        }
    }
}

/// What the checks share: the context and whatever earlier checks found.
#[derive(Debug)]
pub struct State<'a> {
    /// The resolved context.
    pub ctx: &'a Context,
    /// `daemon.json`, once read.
    pub discovery: Option<Discovery>,
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
            let msg = format!("daemon.json: http {}, ws {}, pid {}", d.http, d.ws, d.pid);
            s.discovery = Some(d);
            Outcome::Pass(msg)
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

fn store_file(s: &mut State<'_>) -> Outcome {
    let path = s.ctx.data_dir.join(fleet_store_redb::STORE_FILE_NAME);
    match std::fs::metadata(&path) {
        Ok(m) if m.is_file() => {
            Outcome::Pass(format!("store {} ({} bytes)", path.display(), m.len()))
        }
        Ok(_) => Outcome::Fail(format!("store {} is not a file", path.display())),
        Err(e) => Outcome::Fail(format!("store {}: {e}", path.display())),
    }
}

fn daemon_config(_s: &mut State<'_>) -> Outcome {
    match std::env::var_os(fleet_daemon::config::CONFIG_ENV) {
        None => Outcome::Pass(format!(
            "{} not set (embedded default config)",
            fleet_daemon::config::CONFIG_ENV
        )),
        Some(p) => {
            let path = Path::new(&p);
            match fleet_daemon::config::DaemonConfig::load(path) {
                Ok(_) => Outcome::Pass(format!(
                    "{}={} parses",
                    fleet_daemon::config::CONFIG_ENV,
                    path.display()
                )),
                Err(e) => Outcome::Fail(format!(
                    "{}={}: {e}",
                    fleet_daemon::config::CONFIG_ENV,
                    path.display()
                )),
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
        ("store file", store_file),
        ("daemon config", daemon_config),
    ]
}

async fn get_status(api: &Api, path: &str) -> Result<u16, String> {
    api.request::<()>(reqwest::Method::GET, path, None)
        .await
        .map(|r| r.status)
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
        out.push(match get_status(&api, path).await {
            Ok(200) => Outcome::Pass(format!("{url}{path}: {what}")),
            Ok(code) => Outcome::Fail(format!("{url}{path}: HTTP {code}")),
            Err(e) => Outcome::Fail(e),
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
    };
    let mut outcomes = Vec::new();
    for (_, check) in checks() {
        let o = check(&mut state);
        println!("{}", o.line());
        outcomes.push(o);
    }
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
