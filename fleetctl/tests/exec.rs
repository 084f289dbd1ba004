//! `fleetctl exec` against a real in-process agent gateway (built-in exec
//! API) with a claim dir written here: output and exit code propagate.

use std::path::{Path, PathBuf};

use fleet_agent::gateway::{Gateway, now_ms};
use fleet_core::ids::{ClaimId, NodeId};
use fleet_core::protocol::{NodeIdentity, Secret};
use fleet_core::subjects::Subjects;
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType,
};
use tokio::net::TcpListener;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new() -> Result<Ca, rcgen::Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    fn issue(
        &self,
        sans: Vec<SanType>,
        eku: Vec<ExtendedKeyUsagePurpose>,
    ) -> Result<(String, String), rcgen::Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.subject_alt_names = sans;
        params.extended_key_usages = eku;
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2090, 1, 1);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    std::env::temp_dir().join(format!(
        "fleetctl-test-{name}-{}-{nanos}",
        std::process::id()
    ))
}

fn write_claim_dir(
    dir: &Path,
    ca: &Ca,
    claim: &ClaimId,
    node: &NodeId,
    endpoint: &str,
) -> TestResult {
    let (cert, key) = ca.issue(
        vec![SanType::URI(Subjects::claim_cert_uri(claim).try_into()?)],
        vec![ExtendedKeyUsagePurpose::ClientAuth],
    )?;
    let bundle = fleet_core::protocol::CredentialsBundle {
        format: fleet_core::protocol::CREDENTIALS_FORMAT.to_owned(),
        claim_id: claim.clone(),
        workspace: fleet_core::ids::Workspace::new("w")?,
        node: node.clone(),
        endpoint: endpoint.to_owned(),
        expires_at: now_ms() + 600_000,
        ca_pem: ca.pem.clone(),
        cert_pem: cert,
        key_pem: Secret::new(key),
    };
    fleetctl::claimdir::write_claim(dir, &bundle, Some("local".to_owned()))?;
    Ok(())
}

async fn fleetctl(args: Vec<String>) -> std::io::Result<std::process::Output> {
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_fleetctl"))
            .args(args)
            .env_remove("FLEET_TOKEN")
            .env_remove("FLEET_DAEMON_CONFIG")
            .output()
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_streams_output_and_propagates_the_exit_code() -> TestResult {
    let ca = Ca::new()?;
    let node = NodeId::new("local-1-7")?;
    let (cert, key) = ca.issue(
        vec![
            SanType::DnsName(Subjects::node_server_name(&node).try_into()?),
            SanType::URI(Subjects::node_cert_uri(&node).try_into()?),
        ],
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    )?;
    let gateway = Gateway::new(None, temp_dir("gw-files"));
    gateway.set_identity(&NodeIdentity {
        cert_pem: cert,
        key_pem: Secret::new(key),
        ca_pem: ca.pem.clone(),
    })?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let g = gateway.clone();
    tokio::spawn(async move { g.serve(listener).await });

    let claim = ClaimId::new("c-exec")?;
    gateway.activate(claim.clone(), now_ms() + 600_000);
    let dir = temp_dir("claim");
    write_claim_dir(&dir, &ca, &claim, &node, &addr.to_string())?;
    // The key is private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join("key.pem"))?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let args = |cmd: &str| {
        vec![
            "exec".to_owned(),
            "c-exec".to_owned(),
            "--dir".to_owned(),
            dir.display().to_string(),
            "--".to_owned(),
            "sh".to_owned(),
            "-c".to_owned(),
            cmd.to_owned(),
        ]
    };
    let out = fleetctl(args("echo out; echo err >&2; exit 7")).await?;
    assert_eq!(
        out.status.code(),
        Some(7),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(out.stderr, b"err\n");

    let out = fleetctl(args("printf '%s' \"$((6 * 7))\"")).await?;
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(out.stdout, b"42");

    // A released claim is refused: a clear error, exit 1.
    gateway.deactivate(&claim);
    let out = fleetctl(args("true")).await?;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("fleetctl: "), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    // The wrong id for the dir is refused before dialing.
    let mut wrong = args("true");
    wrong[1] = "c-other".to_owned();
    let out = fleetctl(wrong).await?;
    assert_eq!(out.status.code(), Some(1));
    Ok(())
}
