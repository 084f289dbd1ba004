//! `fleetctl exec`: a command on the claimed node through the agent's mTLS
//! gateway and its built-in exec API.

use std::io::Write;
use std::sync::Arc;

use fleet_agent::exec_api::{Client, ExecRequest};
use fleet_core::ids::NodeId;
use fleet_core::protocol::OutputStream;
use fleet_core::subjects::Subjects;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::claimdir::Credentials;
use crate::{CtlError, fail};

/// Exit code when the command was killed by its timeout.
pub const EXIT_TIMEOUT: i32 = 124;

/// Opens the claim's mTLS connection to its node's gateway: trusts the pool
/// CA, presents the claim certificate, verifies the node's server name.
pub async fn connect(creds: &Credentials) -> Result<TlsStream<TcpStream>, CtlError> {
    let endpoint = &creds.info.endpoint;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(creds.ca_pem.as_bytes()) {
        let c = c.map_err(|e| fail(format!("claim CA: {e}")))?;
        roots.add(c).map_err(|e| fail(format!("claim CA: {e}")))?;
    }
    if roots.is_empty() {
        return Err(fail("claim CA: no certificate in ca.pem"));
    }
    let certs = CertificateDer::pem_slice_iter(creds.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(format!("claim certificate: {e}")))?;
    // The parse error never contains key material.
    let key = PrivateKeyDer::from_pem_slice(creds.key_pem.expose().as_bytes())
        .map_err(|e| fail(format!("claim key: unreadable ({e:?})")))?;
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|e| fail(format!("claim certificate: {e}")))?;
    let node = NodeId::new(creds.info.node.clone())
        .map_err(|e| fail(format!("claim file: node {:?}: {e}", creds.info.node)))?;
    let name = ServerName::try_from(Subjects::node_server_name(&node))
        .map_err(|e| fail(format!("node server name: {e}")))?;
    let tcp = TcpStream::connect(endpoint.as_str())
        .await
        .map_err(|e| fail(format!("cannot reach the node at {endpoint}: {e}")))?;
    TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| fail(format!("TLS with the node at {endpoint}: {e}")))
}

/// The exit code for a finished command: its own, 124 on timeout,
/// 128 + the signal number when a signal killed it.
pub fn exit_code(code: Option<i32>, signal: Option<&str>, timed_out: bool) -> i32 {
    if timed_out {
        return EXIT_TIMEOUT;
    }
    if let Some(c) = code {
        return c;
    }
    let sig = signal.unwrap_or("");
    let name = sig.trim_start_matches("SIG");
    let n = name.parse::<i32>().ok().or(match name {
        "HUP" => Some(1),
        "INT" => Some(2),
        "QUIT" => Some(3),
        "ABRT" => Some(6),
        "KILL" => Some(9),
        "SEGV" => Some(11),
        "PIPE" => Some(13),
        "ALRM" => Some(14),
        "TERM" => Some(15),
        _ => None,
    });
    n.map_or(1, |n| 128 + n)
}

/// Runs `argv` on the node, streaming its output to ours; returns the exit
/// code to exit with.
pub async fn run(creds: &Credentials, argv: Vec<String>) -> Result<i32, CtlError> {
    let stream = connect(creds).await?;
    let mut client = Client::new(stream);
    let req = ExecRequest {
        argv,
        ..ExecRequest::default()
    };
    let r = client
        .exec_streaming(&req, |s, bytes| {
            // A closed stdout/stderr (`| head`) must not abort the command.
            let _ = match s {
                OutputStream::Stdout => {
                    let mut o = std::io::stdout().lock();
                    o.write_all(bytes).and_then(|()| o.flush())
                }
                _ => {
                    let mut e = std::io::stderr().lock();
                    e.write_all(bytes).and_then(|()| e.flush())
                }
            };
        })
        .await
        .map_err(|e| {
            fail(format!(
                "exec on {} ({}): {e}",
                creds.info.node, creds.info.endpoint
            ))
        })?;
    if r.timed_out {
        eprintln!("fleetctl: the command timed out on the node");
    } else if let Some(sig) = &r.signal {
        eprintln!("fleetctl: the command was killed by {sig}");
    }
    Ok(exit_code(r.code, r.signal.as_deref(), r.timed_out))
}
