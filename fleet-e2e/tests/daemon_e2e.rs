//! The embedded default end to end: the daemon's local provider boots a
//! real agent, a caller claims over TLS WebSocket, verifies and decrypts its
//! credentials, runs a command on the node through the agent's mTLS gateway,
//! and releases.

mod common;

use std::time::{Duration, Instant};

use common::*;
use fleet_client::{ExecClient as Client, ExecRequest};
use fleet_core::transport::ClaimClient;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_exec_release_through_the_real_daemon_and_agent() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut daemon = Daemon::start(dir.path(), "");
    assert_eq!(
        http(&daemon.discovery.http, "GET", "/healthz", None)
            .await
            .0,
        200
    );
    assert_eq!(
        http(&daemon.discovery.http, "GET", "/readyz", None).await.0,
        200
    );
    assert_eq!(
        http(&daemon.discovery.http, "GET", "/v1/status", None)
            .await
            .0,
        401
    );
    assert_eq!(
        http(&daemon.discovery.http, "GET", "/v1/status", Some("wrong"))
            .await
            .0,
        401
    );

    let identity = age::x25519::Identity::generate();
    let client = daemon.claim_client().await;
    // A recipient the sealer cannot use is refused with the request, not
    // accepted and revoked once a node has booted for it.
    match tokio::time::timeout(
        Duration::from_secs(10),
        client.claim(request("e2e-bad", Some("age1notarecipient".to_owned()))),
    )
    .await
    {
        Ok(Err(fleet_core::transport::ClaimError::Rejected(
            fleet_core::protocol::ClaimRejection::Invalid { .. },
        ))) => {}
        other => panic!("age1notarecipient: expected Rejected{{invalid}}, got {other:?}"),
    }
    let started = Instant::now();
    let grant = tokio::time::timeout(
        Duration::from_secs(60),
        client.claim(request("e2e-1", Some(identity.to_public().to_string()))),
    )
    .await
    .unwrap_or_else(|_| panic!("no grant in 60 s; see {}/daemon.log", dir.path().display()))
    .unwrap_or_else(|e| panic!("claim: {e}"));
    let granted_in = started.elapsed();
    let bundle = open_grant(&daemon.discovery, &grant, &identity);
    assert_eq!(bundle.node, grant.node);
    assert_eq!(bundle.endpoint, grant.endpoint);

    let tls = gateway(&bundle)
        .await
        .unwrap_or_else(|e| panic!("gateway: {e}"));
    let mut exec = Client::new(tls);
    let out = exec
        .exec(&ExecRequest {
            argv: vec!["uname".into(), "-a".into()],
            env: Default::default(),
            cwd: None,
            timeout_ms: Some(10_000),
        })
        .await
        .unwrap_or_else(|e| panic!("exec: {e}"));
    assert_eq!(out.code, Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Linux"));
    eprintln!(
        "granted in {granted_in:?}; uname: {}",
        String::from_utf8_lossy(&out.stdout).trim()
    );

    let (status, body) = daemon.get("/v1/claims").await;
    assert_eq!(status, 200);
    assert!(
        body.contains("\"granted\"") || body.contains("\"active\""),
        "{body}"
    );
    assert!(
        !body.contains("ciphertext"),
        "status never shows sealed credentials"
    );

    client
        .release(&grant.workspace, &grant.claim_id)
        .await
        .unwrap_or_else(|e| panic!("release: {e}"));
    // A released claim's certificate no longer opens the gateway.
    let refused = eventually(10, || async {
        exec_true(&bundle).await.is_err().then_some(())
    })
    .await;
    assert!(refused.is_some(), "released claim still opens the gateway");

    let (_, metrics) = daemon.get("/metrics").await;
    assert!(
        metrics.contains("fleet_claims{state=\"released\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("fleet_grant_latency_seconds_count 1"),
        "{metrics}"
    );
    assert_eq!(daemon.stop(), Some(0), "clean exit on SIGTERM");
}

/// Runs `true` through the gateway with `bundle`'s certificate.
async fn exec_true(bundle: &fleet_core::protocol::CredentialsBundle) -> Result<(), String> {
    let tls = gateway(bundle).await?;
    let mut c = Client::new(tls);
    let out = c
        .exec(&ExecRequest {
            argv: vec!["true".into()],
            env: Default::default(),
            cwd: None,
            timeout_ms: Some(10_000),
        })
        .await
        .map_err(|e| e.to_string())?;
    match out.code {
        Some(0) => Ok(()),
        other => Err(format!("exit {other:?}")),
    }
}

/// A certificate cannot be extended: each renewal brings a new one that
/// expires with the new lease, so a claim renewed past its first
/// certificate's expiry still opens the gateway (with the new one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_claim_opens_the_gateway_past_its_first_certificate() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut daemon = Daemon::start(dir.path(), "");
    let identity = age::x25519::Identity::generate();
    let client = daemon.claim_client().await;
    let mut req = request("renew-1", Some(identity.to_public().to_string()));
    req.lease_ttl_ms = 6_000;
    let grant = tokio::time::timeout(Duration::from_secs(60), client.claim(req))
        .await
        .unwrap_or_else(|_| panic!("no grant in 60 s; see {}/daemon.log", dir.path().display()))
        .unwrap_or_else(|e| panic!("claim: {e}"));
    let first = open_grant(&daemon.discovery, &grant, &identity);
    let first_expiry = grant.credentials.as_ref().map_or(0, |c| c.expires_at);
    exec_true(&first)
        .await
        .unwrap_or_else(|e| panic!("the first certificate: {e}"));

    // Renew every 2 s (well inside the 6 s lease) until the first
    // certificate has expired.
    let mut latest = None;
    while fleet_agent::gateway::now_ms() <= first_expiry + 1_000 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let renewal = client
            .renew(&grant.workspace, &grant.claim_id)
            .await
            .unwrap_or_else(|e| panic!("renew: {e}"));
        let sealed = renewal
            .credentials
            .as_ref()
            .unwrap_or_else(|| panic!("a renewal of a claim with a recipient carries credentials"));
        assert_eq!(sealed.expires_at, renewal.expires_at);
        assert!(renewal.expires_at > first_expiry);
        latest = Some(open_sealed(
            &daemon.discovery,
            &grant.claim_id,
            sealed,
            &identity,
        ));
    }
    let latest = latest.unwrap_or_else(|| panic!("renewed at least once"));
    assert_ne!(latest.cert_pem, first.cert_pem);
    assert!(
        exec_true(&first).await.is_err(),
        "the first certificate has expired"
    );
    exec_true(&latest)
        .await
        .unwrap_or_else(|e| panic!("the renewed certificate: {e}"));

    client
        .release(&grant.workspace, &grant.claim_id)
        .await
        .unwrap_or_else(|e| panic!("release: {e}"));
    assert_eq!(daemon.stop(), Some(0), "clean exit on SIGTERM");
}

/// The claim plane takes the daemon's API tokens: none or a wrong one is
/// refused at connect, a token made for some workspaces (with `fleetctl
/// token create --workspaces`) reaches the control plane in those only and
/// opens none of the operator's HTTP API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_plane_tokens_are_scoped_to_workspaces() {
    use fleet_core::protocol::ClaimRejection;
    use fleet_core::transport::ClaimError;
    use fleet_core::{ClaimId, Workspace};

    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut daemon = Daemon::start(dir.path(), "");
    for token in [None, Some("not-a-token")] {
        match daemon.claim_client_with(token).await {
            Err(fleet_transport_ws::WsError::Refused { code, .. }) => {
                assert_eq!(code, fleet_transport_ws::close_code::AUTH_REFUSED);
            }
            other => panic!("token {token:?} must be refused, got {other:?}"),
        }
    }

    let token = workspace_token(&daemon, "ci-bot", "ci");

    let client = daemon
        .claim_client_with(Some(&token))
        .await
        .unwrap_or_else(|e| panic!("a workspace token connects: {e}"));
    let id = ClaimId::new("nope").unwrap_or_else(|e| panic!("{e}"));
    // Its own workspace reaches the control plane (which knows no such claim) ...
    let ci = Workspace::new("ci").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        client.renew(&ci, &id).await,
        Err(ClaimError::Rejected(ClaimRejection::UnknownClaim))
    );
    // ... another does not.
    let other = Workspace::new("payments").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        client.renew(&other, &id).await,
        Err(ClaimError::Rejected(ClaimRejection::Forbidden {
            workspace: "payments".to_owned()
        }))
    );
    let (status, _) = http(&daemon.discovery.http, "GET", "/v1/status", Some(&token)).await;
    assert_eq!(
        status, 403,
        "a workspace token opens none of the operator HTTP API"
    );
    assert_eq!(daemon.stop(), Some(0), "clean exit on SIGTERM");
}
