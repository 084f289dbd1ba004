//! The WebSocket connector against a real `fleet_transport_ws::WsServer`:
//! bootstrap with a token, receive the identity, reconnect with mTLS.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::{Ca, TestResult, temp_dir};
use fleet_agent::link::{LinkError, ws};
use fleet_core::ids::NodeId;
use fleet_core::protocol::{AgentMsg, AgentRefusal, Arch, DaemonMsg, NodeResources, Secret};
use fleet_core::transport::{Inbound, Outbound, Peer, Transport};
use fleet_transport_ws::{ServerTlsConfig, StaticAgentAuth, WsConfig, WsServer};
use tokio::time::timeout;

fn hello(node: &NodeId, token: Option<&str>) -> AgentMsg {
    AgentMsg::Hello {
        node: node.clone(),
        agent_version: "test".to_owned(),
        bootstrap_token: token.map(Secret::new),
        resources: NodeResources {
            cpus: 2,
            memory_mb: 1024,
            arch: Arch::X86_64,
            labels: BTreeMap::new(),
        },
        gateway: None,
        seen_commands: Vec::new(),
    }
}

async fn next_agent_msg(server: &WsServer) -> Result<(NodeId, AgentMsg), String> {
    loop {
        match timeout(Duration::from_secs(10), server.recv()).await {
            Err(_) => return Err("server recv timed out".to_owned()),
            Ok(Err(e)) => return Err(e.to_string()),
            Ok(Ok(Inbound::Agent { node, msg })) => return Ok((node, msg)),
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstraps_with_a_token_then_reconnects_with_mtls() -> TestResult {
    let ca = Ca::new("pool ca")?;
    let node = NodeId::new("n-ws-1")?;
    let server_cert = ca.server_cert(&["localhost", "127.0.0.1"])?;
    let auth = Arc::new(StaticAgentAuth::new());
    let identity = ca.node_identity(&node)?;
    auth.add_token(&Secret::new("boot-tok"), node.clone(), identity.clone());
    let (server, addr) = WsServer::bind(
        "127.0.0.1:0".parse()?,
        &ServerTlsConfig {
            cert_chain_pem: server_cert.cert_pem,
            key_pem: Secret::new(server_cert.key_pem),
            client_ca_pem: Some(ca.pem.clone()),
        },
        auth,
        WsConfig::default(),
    )
    .await?;
    let dir = temp_dir("ws-link");
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, &ca.pem)?;
    // No path: the connector adds /v1/agent.
    let url = format!("wss://127.0.0.1:{}", addr.port());

    // Bootstrap: token in Hello, server verified with ca_file.
    let connector = ws::connector_for(&url, Some(&ca_file))?;
    let (welcome, mut link) = connector
        .connect(hello(&node, Some("boot-tok")), None)
        .await?;
    assert_eq!(welcome.node, node);
    let issued = welcome
        .identity
        .ok_or("bootstrap Welcome carries no identity")?;
    assert_eq!(issued.cert_pem, identity.cert_pem);
    let (n, first) = next_agent_msg(&server).await?;
    assert_eq!(n, node);
    assert!(matches!(first, AgentMsg::Hello { .. }), "{first:?}");

    // Messages both ways; a cancelled recv loses nothing.
    link.send(AgentMsg::Heartbeat {
        cpu_percent: 1.0,
        memory_mb: 10,
        running: Vec::new(),
    })
    .await?;
    let (_, beat) = next_agent_msg(&server).await?;
    assert!(matches!(beat, AgentMsg::Heartbeat { .. }), "{beat:?}");
    assert!(
        timeout(Duration::from_millis(100), link.recv())
            .await
            .is_err(),
        "nothing was sent yet"
    );
    server
        .send(&Peer::Node(node.clone()), Outbound::Agent(DaemonMsg::Drain))
        .await?;
    let got = timeout(Duration::from_secs(10), link.recv()).await?;
    assert_eq!(got, Some(DaemonMsg::Drain));
    drop(link);

    // The token is single-use: without the identity the daemon refuses,
    // for good.
    let again = connector
        .connect(hello(&node, Some("boot-tok")), None)
        .await;
    assert!(
        matches!(again, Err(LinkError::Denied(AgentRefusal::BadToken))),
        "reused token: {:?}",
        again.err()
    );

    // Reconnect with mTLS. This connector has no ca_file: it trusts the
    // identity's CA. The token in the Hello is dropped (it is spent, so a
    // session only opens if the certificate authenticated it).
    let mtls = ws::connector_for(&format!("{url}/v1/agent"), None)?;
    let (welcome, _link) = mtls
        .connect(hello(&node, Some("boot-tok")), Some(&issued))
        .await?;
    assert_eq!(welcome.node, node);
    assert!(
        welcome.identity.is_none(),
        "mTLS session got a new identity"
    );
    let (_, h) = next_agent_msg(&server).await?;
    match h {
        AgentMsg::Hello {
            bootstrap_token, ..
        } => assert!(bootstrap_token.is_none()),
        other => return Err(format!("expected Hello, got {other:?}").into()),
    }

    // Another node's certificate for this node's Hello is refused.
    let other = ca.node_identity(&NodeId::new("n-ws-other")?)?;
    let wrong = mtls.connect(hello(&node, None), Some(&other)).await;
    assert!(
        matches!(wrong, Err(LinkError::Denied(AgentRefusal::NodeMismatch))),
        "{:?}",
        wrong.err()
    );

    // Without a CA at all there is nothing to verify the daemon with.
    let blind = ws::connector_for(&url, None)?;
    let r = blind.connect(hello(&node, Some("x")), None).await;
    assert!(matches!(r, Err(LinkError::Unsupported(_))), "{:?}", r.err());

    // Nothing listening: unreachable.
    drop(server);
    let dead = ws::connector_for("wss://127.0.0.1:1", Some(&ca_file))?;
    let r = dead.connect(hello(&node, None), Some(&issued)).await;
    assert!(matches!(r, Err(LinkError::Unreachable(_))), "{:?}", r.err());
    Ok(())
}

#[test]
fn plain_ws_and_missing_ca_file_are_configuration_errors() {
    assert!(matches!(
        ws::connector_for("ws://127.0.0.1:7443", None),
        Err(LinkError::Unsupported(_))
    ));
    assert!(matches!(
        ws::connector_for(
            "wss://127.0.0.1:7443",
            Some(std::path::Path::new("/nonexistent/ca.pem"))
        ),
        Err(LinkError::Unsupported(_))
    ));
}
