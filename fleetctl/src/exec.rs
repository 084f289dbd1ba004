//! `fleetctl exec`: a command on the claimed node through the agent's mTLS
//! gateway and its built-in exec API.

use std::io::Write;

use fleet_client::gateway::GatewayStream;
use fleet_client::{ExecClient, ExecRequest};
use fleet_core::ids::{ClaimId, NodeId, Workspace};
use fleet_core::protocol::{CredentialsBundle, OutputStream};

use crate::claimdir::Credentials;
use crate::{CtlError, fail};

/// Exit code when the command was killed by its timeout.
pub const EXIT_TIMEOUT: i32 = 124;

/// Opens the claim's mTLS connection to its node's gateway: trusts the pool
/// CA, presents the claim certificate, verifies the node's server name.
pub async fn connect(creds: &Credentials) -> Result<GatewayStream, CtlError> {
    let bad = |what: &str, e: &dyn std::fmt::Display| fail(format!("claim file: {what}: {e}"));
    let bundle = CredentialsBundle {
        format: creds.info.format.clone(),
        claim_id: ClaimId::new(creds.info.claim_id.clone()).map_err(|e| bad("claim_id", &e))?,
        workspace: Workspace::new(creds.info.workspace.clone())
            .map_err(|e| bad("workspace", &e))?,
        node: NodeId::new(creds.info.node.clone()).map_err(|e| bad("node", &e))?,
        endpoint: creds.info.endpoint.clone(),
        expires_at: creds.info.expires_at,
        ca_pem: creds.ca_pem.clone(),
        cert_pem: creds.cert_pem.clone(),
        key_pem: creds.key_pem.clone(),
    };
    fleet_client::gateway::connect(&bundle)
        .await
        .map_err(|e| fail(e.to_string()))
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
    let mut client = ExecClient::new(stream);
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
