//! The per-claim mTLS gateway: who gets in, where the bytes go, and the
//! built-in exec API.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::{Ca, Issued, TestResult, temp_dir};
use fleet_agent::config::Backend;
use fleet_agent::gateway::{Gateway, now_ms};
use fleet_client::{ExecClient as Client, ExecRequest};
use fleet_core::ids::{ClaimId, NodeId};
use fleet_core::subjects::Subjects;
use rustls::AlertDescription;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

struct Setup {
    ca: Ca,
    node: NodeId,
    gateway: Gateway,
    addr: std::net::SocketAddr,
}

async fn setup(
    backend: Option<Backend>,
    files: PathBuf,
) -> Result<Setup, Box<dyn std::error::Error + Send + Sync>> {
    let ca = Ca::new("pool ca")?;
    let node = NodeId::new("node_1")?;
    let gateway = Gateway::new(backend, files);
    gateway.set_identity(&ca.node_identity(&node)?)?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let g = gateway.clone();
    tokio::spawn(async move { g.serve(listener).await });
    Ok(Setup {
        ca,
        node,
        gateway,
        addr,
    })
}

async fn echo_backend() -> std::io::Result<std::net::SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let addr = l.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    Ok(addr)
}

/// A claimant's TLS connection: trusts `trust_pem`, presents `cert` if any.
async fn connect(
    s: &Setup,
    cert: Option<&Issued>,
) -> Result<TlsStream<TcpStream>, Box<dyn std::error::Error + Send + Sync>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(s.ca.pem.as_bytes()) {
        roots.add(c?)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match cert {
        Some(c) => builder.with_client_auth_cert(
            CertificateDer::pem_slice_iter(c.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?,
            PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes())?,
        )?,
        None => builder.with_no_client_auth(),
    };
    let tcp = TcpStream::connect(s.addr).await?;
    let name = ServerName::try_from(Subjects::node_server_name(&s.node))?;
    Ok(TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?)
}

/// The TLS alert a claimant gets when the gateway refuses its certificate.
/// With TLS 1.3 the client finishes its side of the handshake before the
/// server has judged its certificate, so the alert ends either the
/// handshake or the first read; both count as "refused in the handshake".
/// An `Err` says what came instead (a silent close, data, nothing).
async fn refusal(s: &Setup, cert: &Issued) -> Result<AlertDescription, String> {
    fn alert(e: &std::io::Error) -> Result<AlertDescription, String> {
        match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
            Some(rustls::Error::AlertReceived(a)) => Ok(*a),
            _ => Err(format!("an error that is no TLS alert: {e}")),
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(s.ca.pem.as_bytes()) {
        roots
            .add(c.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let certs = CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).map_err(|e| e.to_string())?;
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect(s.addr)
        .await
        .map_err(|e| e.to_string())?;
    let name =
        ServerName::try_from(Subjects::node_server_name(&s.node)).map_err(|e| e.to_string())?;
    let attempt = async {
        let mut tls = match TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
        {
            Ok(tls) => tls,
            Err(e) => return alert(&e),
        };
        let mut byte = [0u8; 1];
        match tls.read(&mut byte).await {
            Ok(0) => Err("the connection closed without an alert".to_owned()),
            Ok(_) => Err("the gateway let the certificate in".to_owned()),
            Err(e) => alert(&e),
        }
    };
    // A guard against a hang, not a measure: the refusal comes at once.
    tokio::time::timeout(Duration::from_secs(20), attempt)
        .await
        .map_err(|_| "no answer within 20 s".to_owned())?
}

/// Whether a round trip through the gateway echoes.
async fn echoes(s: &Setup, cert: Option<&Issued>) -> bool {
    let Ok(mut tls) = connect(s, cert).await else {
        return false;
    };
    if tls.write_all(b"ping").await.is_err() || tls.flush().await.is_err() {
        return false;
    }
    let mut buf = [0u8; 4];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), tls.read_exact(&mut buf)).await,
        Ok(Ok(_)) if &buf == b"ping"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_active_claims_valid_cert_reaches_the_backend() -> TestResult {
    let echo = echo_backend().await?;
    let s = setup(Some(Backend::Tcp(echo.to_string())), temp_dir("gw-files")).await?;
    let claim = ClaimId::new("claim-a")?;
    let other = ClaimId::new("claim-b")?;
    s.gateway.activate(claim.clone(), now_ms() + 60_000);
    let good = s.ca.claim_cert(&claim, false)?;
    assert!(
        echoes(&s, Some(&good)).await,
        "active claim's cert must be accepted"
    );
    // Another claim's certificate, valid and from the pool CA.
    assert!(!echoes(&s, Some(&s.ca.claim_cert(&other, false)?)).await);
    // The right claim, but an expired certificate.
    assert!(!echoes(&s, Some(&s.ca.claim_cert(&claim, true)?)).await);
    // The right claim id, signed by another CA.
    let rogue = Ca::new("rogue ca")?;
    assert!(!echoes(&s, Some(&rogue.claim_cert(&claim, false)?)).await);
    // No certificate at all.
    assert!(!echoes(&s, None).await);
    // A lease that has ended.
    s.gateway
        .activate(other.clone(), now_ms().saturating_sub(1));
    assert!(!echoes(&s, Some(&s.ca.claim_cert(&other, false)?)).await);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_and_expiry_close_live_connections() -> TestResult {
    let echo = echo_backend().await?;
    let s = setup(Some(Backend::Tcp(echo.to_string())), temp_dir("gw-close")).await?;
    let claim = ClaimId::new("claim-live")?;
    s.gateway.activate(claim.clone(), now_ms() + 60_000);
    let cert = s.ca.claim_cert(&claim, false)?;
    let mut tls = connect(&s, Some(&cert)).await?;
    tls.write_all(b"ping").await?;
    let mut buf = [0u8; 4];
    tls.read_exact(&mut buf).await?;
    s.gateway.deactivate(&claim);
    let mut rest = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut rest)).await;
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))),
        "connection stayed open: {r:?}"
    );
    assert!(
        !echoes(&s, Some(&cert)).await,
        "released claim must be refused"
    );
    // Expiry: a lease ending in 300 ms closes the connection by itself.
    s.gateway.activate(claim.clone(), now_ms() + 300);
    let mut tls = connect(&s, Some(&cert)).await?;
    let r = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut rest)).await;
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))),
        "connection outlived its lease: {r:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_api_runs_commands_and_moves_files_both_ways() -> TestResult {
    let files = temp_dir("gw-exec");
    let s = setup(None, files.clone()).await?;
    let claim = ClaimId::new("claim-exec")?;
    s.gateway.activate(claim.clone(), now_ms() + 60_000);
    let cert = s.ca.claim_cert(&claim, false)?;
    let mut client = Client::new(connect(&s, Some(&cert)).await?);

    let r = client
        .exec(&ExecRequest {
            argv: vec![
                "sh".into(),
                "-c".into(),
                "echo out; echo err >&2; exit 7".into(),
            ],
            ..ExecRequest::default()
        })
        .await?;
    assert_eq!(
        (r.stdout.as_slice(), r.stderr.as_slice(), r.code),
        (&b"out\n"[..], &b"err\n"[..], Some(7))
    );

    // Up, used by a command, and a file the command made comes back down.
    let data: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(client.put("src/input.bin", &data).await?, data.len() as u64);
    let r = client
        .exec(&ExecRequest {
            argv: vec![
                "sh".into(),
                "-c".into(),
                "wc -c < input.bin > ../size.txt".into(),
            ],
            cwd: Some("src".into()),
            ..ExecRequest::default()
        })
        .await?;
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_eq!(client.get("src/input.bin").await?, data);
    assert_eq!(
        String::from_utf8(client.get("size.txt").await?)?.trim(),
        "600000"
    );
    assert!(files.join("claim-exec").join("size.txt").exists());

    // Paths stay inside the claim's area.
    assert!(client.get("../../etc/passwd").await.is_err());
    assert!(client.put("/tmp/x", b"x").await.is_err());
    // Timeout.
    let r = client
        .exec(&ExecRequest {
            argv: vec!["sleep".into(), "30".into()],
            timeout_ms: Some(200),
            ..ExecRequest::default()
        })
        .await?;
    assert!(r.timed_out);
    // The connection is still usable after errors.
    let r = client
        .exec(&ExecRequest {
            argv: vec!["true".into()],
            ..ExecRequest::default()
        })
        .await?;
    assert_eq!(r.code, Some(0));
    Ok(())
}

/// The claimant learns of its grant as the agent learns of the activation,
/// over different connections: a claimant that knocks first is let in once
/// the activation arrives (within a short grace), not turned away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claimant_faster_than_the_activation_is_let_in() -> TestResult {
    let echo = echo_backend().await?;
    let s = setup(Some(Backend::Tcp(echo.to_string())), temp_dir("gw-race")).await?;
    let claim = ClaimId::new("claim-race")?;
    let cert = s.ca.claim_cert(&claim, false)?;
    let gateway = s.gateway.clone();
    let late = claim.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        gateway.activate(late, now_ms() + 60_000);
    });
    assert!(
        echoes(&s, Some(&cert)).await,
        "the activation arrived while the claimant waited"
    );
    Ok(())
}

// A certificate the gateway knows it must refuse is refused in the TLS
// handshake with an alert that says why — not let through the handshake and
// closed without a word after the activation grace.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_claims_certificate_fails_the_handshake() -> TestResult {
    let echo = echo_backend().await?;
    let s = setup(
        Some(Backend::Tcp(echo.to_string())),
        temp_dir("gw-released"),
    )
    .await?;
    let claim = ClaimId::new("claim-released")?;
    let cert = s.ca.claim_cert(&claim, false)?;
    s.gateway.activate(claim.clone(), now_ms() + 60_000);
    assert!(echoes(&s, Some(&cert)).await, "active first");
    s.gateway.deactivate(&claim);
    assert_eq!(
        refusal(&s, &cert).await,
        Ok(AlertDescription::CertificateRevoked)
    );
    // The daemon decides: a claim activated again is let in again.
    s.gateway.activate(claim.clone(), now_ms() + 60_000);
    assert!(echoes(&s, Some(&cert)).await, "re-activated");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lapsed_leases_certificate_fails_the_handshake() -> TestResult {
    let echo = echo_backend().await?;
    let s = setup(Some(Backend::Tcp(echo.to_string())), temp_dir("gw-lapsed")).await?;
    let claim = ClaimId::new("claim-lapsed")?;
    s.gateway
        .activate(claim.clone(), now_ms().saturating_sub(1));
    assert_eq!(
        refusal(&s, &s.ca.claim_cert(&claim, false)?).await,
        Ok(AlertDescription::CertificateRevoked)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_certificate_fails_the_handshake() -> TestResult {
    let echo = echo_backend().await?;
    let s = setup(Some(Backend::Tcp(echo.to_string())), temp_dir("gw-expired")).await?;
    let claim = ClaimId::new("claim-active")?;
    s.gateway.activate(claim.clone(), now_ms() + 60_000);
    assert_eq!(
        refusal(&s, &s.ca.claim_cert(&claim, true)?).await,
        Ok(AlertDescription::CertificateExpired)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_ca_certificate_fails_the_handshake() -> TestResult {
    let echo = echo_backend().await?;
    let s = setup(Some(Backend::Tcp(echo.to_string())), temp_dir("gw-foreign")).await?;
    let claim = ClaimId::new("claim-active")?;
    s.gateway.activate(claim.clone(), now_ms() + 60_000);
    let rogue = Ca::new("rogue ca")?;
    assert_eq!(
        refusal(&s, &rogue.claim_cert(&claim, false)?).await,
        Ok(AlertDescription::UnknownCA)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_naming_no_claim_fails_the_handshake() -> TestResult {
    let echo = echo_backend().await?;
    let s = setup(Some(Backend::Tcp(echo.to_string())), temp_dir("gw-noclaim")).await?;
    // The pool CA's, valid, for a client — but a node's, not a claim's.
    let node = s.ca.node_identity(&NodeId::new("node_2")?)?;
    let cert = Issued {
        cert_pem: node.cert_pem,
        key_pem: node.key_pem.expose().to_owned(),
    };
    assert_eq!(refusal(&s, &cert).await, Ok(AlertDescription::AccessDenied));
    Ok(())
}

/// A claimant waiting out the activation grace is turned away once the
/// claim ends (the daemon may deactivate a claim this agent never saw
/// active), and every later handshake with its certificate fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_ending_during_the_grace_is_refused_then() -> TestResult {
    let echo = echo_backend().await?;
    let s = setup(Some(Backend::Tcp(echo.to_string())), temp_dir("gw-grace")).await?;
    let claim = ClaimId::new("claim-short")?;
    let cert = s.ca.claim_cert(&claim, false)?;
    let gateway = s.gateway.clone();
    let ended = claim.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        gateway.deactivate(&ended);
    });
    assert!(!echoes(&s, Some(&cert)).await);
    assert_eq!(
        refusal(&s, &cert).await,
        Ok(AlertDescription::CertificateRevoked),
        "and from then on in the handshake"
    );
    Ok(())
}
