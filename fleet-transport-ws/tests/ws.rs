//! The WebSocket transport over real loopback TLS sockets: the conformance
//! suite, agent sessions and authentication, limits, bad input, keepalive.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a failure"
)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{Pki, raw_connect};
use fleet_core::ids::{ClaimId, CommandId, NodeId, PoolName, Workspace};
use fleet_core::protocol::{
    AgentMsg, AgentRefusal, Arch, ClaimMsg, ClaimRejection, ClaimReply, ClaimRequest, CommandSpec,
    DaemonMsg, MAX_MESSAGE_BYTES, NodeResources, Secret, encode,
};
use fleet_core::testkit::transport::transport_suite;
use fleet_core::transport::{ClaimClient, ClaimError, Inbound, Outbound, Peer, Transport};
use fleet_transport_ws::frame::ServerFrame;
use fleet_transport_ws::{
    AgentAuth, AgentHelloInfo, AuthError, SessionEnd, StaticAgentAuth, WsAgentClient,
    WsClaimClient, WsConfig, WsError, WsServer, close_code,
};
use futures_util::{SinkExt, StreamExt};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

const LOOPBACK: &str = "127.0.0.1:0";

fn node(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

fn hello(n: &str, token: Option<&str>) -> AgentMsg {
    AgentMsg::Hello {
        node: node(n),
        agent_version: "test".to_owned(),
        bootstrap_token: token.map(Secret::new),
        resources: NodeResources {
            cpus: 4,
            memory_mb: 8192,
            arch: Arch::X86_64,
            labels: Default::default(),
        },
        gateway: None,
        seen_commands: Vec::new(),
    }
}

fn heartbeat() -> AgentMsg {
    AgentMsg::Heartbeat {
        cpu_percent: 1.5,
        memory_mb: 100,
        running: Vec::new(),
    }
}

struct Fixture {
    pki: Pki,
    auth: Arc<StaticAgentAuth>,
    server: WsServer,
    addr: SocketAddr,
}

impl Fixture {
    async fn new(cfg: WsConfig) -> Fixture {
        let pki = Pki::new();
        let auth = Arc::new(StaticAgentAuth::new());
        let (server, addr) = WsServer::bind(
            LOOPBACK.parse().unwrap(),
            &pki.server_tls(true),
            auth.clone(),
            cfg,
        )
        .await
        .unwrap();
        Fixture {
            pki,
            auth,
            server,
            addr,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("wss://127.0.0.1:{}{path}", self.addr.port())
    }

    async fn recv(&self) -> Inbound {
        timeout(Duration::from_secs(10), self.server.recv())
            .await
            .expect("server recv timed out")
            .expect("server recv failed")
    }

    async fn claims(&self) -> WsClaimClient {
        WsClaimClient::connect(
            &self.url("/v1/claims"),
            &self.pki.client_tls(None),
            WsConfig::default(),
        )
        .await
        .unwrap()
    }
}

fn fast_keepalive() -> WsConfig {
    let mut cfg = WsConfig::default();
    cfg.ping_interval = Duration::from_millis(200);
    cfg.pong_timeout = Duration::from_millis(300);
    cfg.hello_timeout = Duration::from_secs(2);
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_over_real_sockets() {
    let fx = Fixture::new(WsConfig::default()).await;
    let client = fx.claims().await;
    timeout(
        Duration::from_secs(60),
        transport_suite(&fx.server, &client),
    )
    .await
    .expect("transport suite hung");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_token_is_accepted_once_and_identity_is_delivered() {
    let fx = Fixture::new(WsConfig::default()).await;
    let identity = fx.pki.node_identity("n-boot");
    fx.auth
        .add_token(&Secret::new("tok-1"), node("n-boot"), identity.clone());
    let tls = fx.pki.client_tls(None);
    let url = fx.url("/v1/agent");

    let mut session = WsAgentClient::connect(
        &url,
        &tls,
        hello("n-boot", Some("tok-1")),
        WsConfig::default(),
    )
    .await
    .unwrap();
    assert_eq!(session.welcome().node, node("n-boot"));
    assert_eq!(session.welcome().identity.as_ref(), Some(&identity));
    match fx.recv().await {
        Inbound::Agent {
            node: n,
            msg: AgentMsg::Hello { .. },
        } => assert_eq!(n, node("n-boot")),
        other => panic!("expected the hello, got {other:?}"),
    }

    // Both directions work.
    session.send(&heartbeat()).await.unwrap();
    match fx.recv().await {
        Inbound::Agent {
            msg: AgentMsg::Heartbeat { .. },
            ..
        } => {}
        other => panic!("expected a heartbeat, got {other:?}"),
    }
    let run = DaemonMsg::Run(CommandSpec {
        id: CommandId::new("cmd-1").unwrap(),
        job: None,
        argv: vec!["true".to_owned()],
        env: Default::default(),
        cwd: None,
        timeout_ms: None,
        redact: Vec::new(),
        scorer: None,
    });
    fx.server
        .send(&Peer::Node(node("n-boot")), Outbound::Agent(run.clone()))
        .await
        .unwrap();
    assert_eq!(
        timeout(Duration::from_secs(5), session.recv())
            .await
            .unwrap(),
        Some(run)
    );

    // The token is single-use: refused twice, with the auth close code.
    for _ in 0..2 {
        match WsAgentClient::connect(
            &url,
            &tls,
            hello("n-boot", Some("tok-1")),
            WsConfig::default(),
        )
        .await
        {
            Err(e @ WsError::Refused { .. }) => {
                assert!(!e.is_retryable(), "a used token is refused for good");
                let WsError::Refused { code, reason } = e else {
                    unreachable!()
                };
                assert_eq!(code, close_code::AUTH_REFUSED);
                assert_eq!(AgentRefusal::parse(&reason), Some(AgentRefusal::BadToken));
            }
            other => panic!("a used token must be refused, got {other:?}"),
        }
    }
    // No credentials at all: refused.
    match WsAgentClient::connect(&url, &tls, hello("n-other", None), WsConfig::default()).await {
        Err(e @ WsError::Refused { .. }) => {
            assert!(!e.is_retryable());
            assert!(e.to_string().contains("no_credentials"), "{e}");
        }
        other => panic!("no credentials must be refused, got {other:?}"),
    }

    // Reconnect with the delivered identity and no token: accepted, no new identity.
    let tls = fx.pki.client_tls(Some(&identity));
    let second = WsAgentClient::connect(&url, &tls, hello("n-boot", None), WsConfig::default())
        .await
        .unwrap();
    assert_eq!(second.welcome().identity, None);
    // It replaced the first session, which ends with 4001 and no AgentGone.
    assert_eq!(
        timeout(Duration::from_secs(5), session.recv())
            .await
            .unwrap(),
        None
    );
    assert!(
        matches!(
            session.ended(),
            Some(SessionEnd::ClosedByServer {
                code: close_code::REPLACED,
                ..
            })
        ),
        "{:?}",
        session.ended()
    );
    match fx.recv().await {
        Inbound::Agent {
            msg: AgentMsg::Hello { .. },
            ..
        } => {}
        other => panic!("expected the second hello, got {other:?}"),
    }
    drop(second);
    match fx.recv().await {
        Inbound::AgentGone { node: n } => assert_eq!(n, node("n-boot")),
        other => panic!("expected AgentGone, got {other:?}"),
    }
    assert_eq!(fx.server.agent_count(), 0);
}

/// An authenticator that cannot decide (its store is down).
struct Undecided;

#[async_trait::async_trait]
impl AgentAuth for Undecided {
    async fn authenticate(
        &self,
        _: &AgentHelloInfo,
    ) -> Result<Option<fleet_core::protocol::NodeIdentity>, AuthError> {
        Err(AuthError::Unavailable("store unavailable".to_owned()))
    }
}

/// Accepts every agent and notes where each dialed from.
#[derive(Default)]
struct PeersSeen(std::sync::Mutex<Vec<SocketAddr>>);

#[async_trait::async_trait]
impl AgentAuth for PeersSeen {
    async fn authenticate(
        &self,
        hello: &AgentHelloInfo,
    ) -> Result<Option<fleet_core::protocol::NodeIdentity>, AuthError> {
        self.0.lock().unwrap().push(hello.peer);
        Ok(None)
    }
}

/// `local_address` picks the source address (each has its own ephemeral
/// ports: what lets one host open more sessions than one address has
/// ports); one of the other family is a clear dial error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_dials_from_its_local_address() {
    let pki = Pki::new();
    let seen = Arc::new(PeersSeen::default());
    let (server, addr) = WsServer::bind(
        LOOPBACK.parse().unwrap(),
        &pki.server_tls(true),
        seen.clone(),
        WsConfig::default(),
    )
    .await
    .unwrap();
    let url = format!("wss://127.0.0.1:{}/v1/agent", addr.port());
    let tls = pki.client_tls(None);
    let mut cfg = WsConfig::default();
    cfg.local_address = Some("127.0.0.3".parse().unwrap());
    let session = WsAgentClient::connect(&url, &tls, hello("n-src", None), cfg.clone())
        .await
        .expect("dialed from 127.0.0.3");
    let peers = seen.0.lock().unwrap().clone();
    assert_eq!(peers.len(), 1, "{peers:?}");
    assert_eq!(peers[0].ip().to_string(), "127.0.0.3");
    drop(session);

    cfg.local_address = Some("::1".parse().unwrap());
    cfg.connect_attempts = 1;
    match WsAgentClient::connect(&url, &tls, hello("n-v6", None), cfg).await {
        Err(WsError::Io(why)) => assert!(why.contains("family"), "{why}"),
        other => panic!("an IPv6 source for an IPv4 server must fail to dial, got {other:?}"),
    }
    drop(server);
}

/// A refusal that is not about the credentials says so: "try again later"
/// (1013, reason `unavailable`), which a client may retry, unlike 4003.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecided_authentication_says_try_again_later() {
    let pki = Pki::new();
    let (server, addr) = WsServer::bind(
        LOOPBACK.parse().unwrap(),
        &pki.server_tls(true),
        Arc::new(Undecided),
        WsConfig::default(),
    )
    .await
    .unwrap();
    let url = format!("wss://127.0.0.1:{}/v1/agent", addr.port());
    let tls = pki.client_tls(None);
    match WsAgentClient::connect(&url, &tls, hello("n-1", Some("tok")), WsConfig::default()).await {
        Err(e @ WsError::Refused { .. }) => {
            assert!(e.is_retryable(), "{e}");
            let WsError::Refused { code, reason } = e else {
                unreachable!()
            };
            assert_eq!(code, close_code::TRY_AGAIN_LATER);
            assert_eq!(code, AgentRefusal::Unavailable.close_code());
            assert_eq!(reason, "unavailable");
        }
        other => panic!("must be refused for now, got {other:?}"),
    }
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_for_another_node_is_refused() {
    let fx = Fixture::new(WsConfig::default()).await;
    let identity = fx.pki.node_identity("n-1");
    let tls = fx.pki.client_tls(Some(&identity));
    let url = fx.url("/v1/agent");
    match WsAgentClient::connect(&url, &tls, hello("n-2", None), WsConfig::default()).await {
        Err(WsError::Refused { code, reason }) => {
            assert_eq!(code, close_code::AUTH_REFUSED);
            assert_eq!(reason, "node_mismatch");
        }
        other => panic!("a certificate for n-1 must not open n-2, got {other:?}"),
    }
    let ok = WsAgentClient::connect(&url, &tls, hello("n-1", None), WsConfig::default())
        .await
        .unwrap();
    assert_eq!(ok.welcome().node, node("n-1"));
    assert_eq!(ok.welcome().identity, None);
}

/// Reads frames until a close frame; returns its code.
async fn close_code_of(ws: &mut common::RawWs) -> Option<u16> {
    timeout(Duration::from_secs(10), async {
        while let Some(msg) = ws.next().await {
            match msg {
                Ok(Message::Close(f)) => return f.map(|f| u16::from(f.code)),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
        None
    })
    .await
    .expect("no close in time")
}

/// Reads the next claim-plane server frame.
async fn next_frame(ws: &mut common::RawWs) -> ServerFrame {
    timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    return fleet_core::protocol::decode::<ServerFrame>(t.as_bytes()).unwrap();
                }
                Some(Ok(_)) => continue,
                other => panic!("connection ended: {other:?}"),
            }
        }
    })
    .await
    .expect("no frame in time")
}

fn request(id: &str) -> ClaimRequest {
    ClaimRequest {
        claim_id: ClaimId::new(id).unwrap(),
        workspace: Workspace::new("ws-a").unwrap(),
        pool: PoolName::new("pool").unwrap(),
        requirements: Default::default(),
        priority: 0,
        lease_ttl_ms: 60_000,
        max_wait_ms: None,
        recipient: None,
        affinity: None,
    }
}

/// One renew round trip through a fresh client: the server still serves.
async fn still_serving(fx: &Fixture) {
    let client = fx.claims().await;
    let ws = Workspace::new("ws-a").unwrap();
    let id = ClaimId::new("c-alive").unwrap();
    let (_, got) = tokio::join!(
        async {
            match fx.recv().await {
                Inbound::Claim { reply, .. } => fx
                    .server
                    .send(
                        &Peer::Reply(reply),
                        Outbound::Claim(ClaimReply::Rejected {
                            claim_id: Some(id.clone()),
                            error: ClaimRejection::UnknownClaim,
                        }),
                    )
                    .await
                    .unwrap(),
                other => panic!("expected a renew, got {other:?}"),
            }
        },
        client.renew(&ws, &id)
    );
    assert_eq!(got, Err(ClaimError::Rejected(ClaimRejection::UnknownClaim)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_over_one_mib_is_rejected_with_1009() {
    let fx = Fixture::new(WsConfig::default()).await;
    let tls = fx.pki.client_tls(None);
    for path in ["/v1/claims", "/v1/agent"] {
        let mut ws = raw_connect(fx.addr, path, &tls).await;
        let big = "x".repeat(MAX_MESSAGE_BYTES + 1);
        // The server may close while the frame is still being written.
        let _ = ws.send(Message::text(big)).await;
        assert_eq!(
            close_code_of(&mut ws).await,
            Some(close_code::TOO_BIG),
            "{path}"
        );
    }
    // Exactly the limit is read (and then refused as garbage, not as too big).
    let mut ws = raw_connect(fx.addr, "/v1/claims", &tls).await;
    ws.send(Message::text("y".repeat(MAX_MESSAGE_BYTES)))
        .await
        .unwrap();
    match next_frame(&mut ws).await {
        ServerFrame::Error { kind, .. } => assert_eq!(kind, "malformed"),
        other => panic!("expected an error frame, got {other:?}"),
    }
    still_serving(&fx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_claim_plane_gets_typed_errors_and_the_connection_stays() {
    let fx = Fixture::new(WsConfig::default()).await;
    let mut ws = raw_connect(fx.addr, "/v1/claims", &fx.pki.client_tls(None)).await;

    ws.send(Message::binary(vec![0xff, 0x00, 0x13, 0x37]))
        .await
        .unwrap();
    match next_frame(&mut ws).await {
        ServerFrame::Error {
            req: None, kind, ..
        } => assert_eq!(kind, "malformed"),
        other => panic!("garbage bytes: expected an error frame, got {other:?}"),
    }

    ws.send(Message::text(
        r#"{"v":1,"msg":{"type":"claim","req":6,"msg":{"type":"request"}}}"#,
    ))
    .await
    .unwrap();
    match next_frame(&mut ws).await {
        ServerFrame::Reply {
            req: 6,
            msg:
                ClaimReply::Rejected {
                    error: ClaimRejection::Invalid { .. },
                    ..
                },
        } => {}
        other => panic!("invalid claim: expected Rejected{{Invalid}}, got {other:?}"),
    }

    ws.send(Message::text(
        r#"{"v":99,"msg":{"type":"claim","req":7,"msg":{}}}"#,
    ))
    .await
    .unwrap();
    match next_frame(&mut ws).await {
        ServerFrame::Reply {
            req: 7,
            msg:
                ClaimReply::Rejected {
                    error: ClaimRejection::Invalid { why },
                    ..
                },
        } => assert!(why.contains("v99"), "{why}"),
        other => panic!("wrong version: expected Rejected{{Invalid}}, got {other:?}"),
    }

    ws.send(Message::text(
        r#"{"v":1,"msg":{"type":"launch_missiles","req":8}}"#,
    ))
    .await
    .unwrap();
    match next_frame(&mut ws).await {
        ServerFrame::Error {
            req: Some(8), kind, ..
        } => assert_eq!(kind, "unknown_variant"),
        other => panic!("unknown type: expected an error frame, got {other:?}"),
    }

    // Nothing reached the control plane, and the same connection still works.
    let frame = fleet_transport_ws::frame::ClientFrame::Claim {
        req: 9,
        msg: ClaimMsg::Request(request("c-after-garbage")),
    };
    let text = String::from_utf8(encode(&frame).unwrap()).unwrap();
    ws.send(Message::text(text)).await.unwrap();
    match fx.recv().await {
        Inbound::Claim {
            msg: ClaimMsg::Request(r),
            ..
        } => {
            assert_eq!(r.claim_id.as_str(), "c-after-garbage");
        }
        other => panic!("expected the valid request, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_agent_input_closes_the_session_with_typed_codes() {
    let fx = Fixture::new(WsConfig::default()).await;
    let tls = fx.pki.client_tls(None);
    let cases: [(&str, Message, u16); 4] = [
        (
            "garbage bytes",
            Message::binary(vec![1, 2, 3, 0xfe]),
            close_code::INVALID_PAYLOAD,
        ),
        (
            "wrong protocol version",
            Message::text(r#"{"v":2,"msg":{"type":"hello"}}"#),
            close_code::INVALID_PAYLOAD,
        ),
        (
            "unknown message type",
            Message::text(r#"{"v":1,"msg":{"type":"hullo"}}"#),
            close_code::INVALID_PAYLOAD,
        ),
        (
            "first message not hello",
            Message::text(String::from_utf8(encode(&heartbeat()).unwrap()).unwrap()),
            close_code::POLICY,
        ),
    ];
    for (what, msg, code) in cases {
        let mut ws = raw_connect(fx.addr, "/v1/agent", &tls).await;
        ws.send(msg).await.unwrap();
        assert_eq!(close_code_of(&mut ws).await, Some(code), "{what}");
    }
    assert_eq!(fx.server.agent_count(), 0);

    // After the hello, garbage ends the session with 1007 and AgentGone.
    let identity = fx.pki.node_identity("n-g");
    let mut ws = raw_connect(fx.addr, "/v1/agent", &fx.pki.client_tls(Some(&identity))).await;
    ws.send(Message::text(
        String::from_utf8(encode(&hello("n-g", None)).unwrap()).unwrap(),
    ))
    .await
    .unwrap();
    assert!(matches!(
        fx.recv().await,
        Inbound::Agent {
            msg: AgentMsg::Hello { .. },
            ..
        }
    ));
    ws.send(Message::text("{not json")).await.unwrap();
    assert_eq!(
        close_code_of(&mut ws).await,
        Some(close_code::INVALID_PAYLOAD)
    );
    assert_eq!(fx.recv().await, Inbound::AgentGone { node: node("n-g") });
    still_serving(&fx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_agent_is_detected_by_keepalive() {
    let fx = Fixture::new(fast_keepalive()).await;
    let identity = fx.pki.node_identity("n-half");
    let mut ws = raw_connect(fx.addr, "/v1/agent", &fx.pki.client_tls(Some(&identity))).await;
    ws.send(Message::text(
        String::from_utf8(encode(&hello("n-half", None)).unwrap()).unwrap(),
    ))
    .await
    .unwrap();
    assert!(matches!(
        fx.recv().await,
        Inbound::Agent {
            msg: AgentMsg::Hello { .. },
            ..
        }
    ));
    // From here the client neither reads nor answers pings: a peer that
    // vanished without a FIN. The socket stays open (held by `ws`).
    let started = tokio::time::Instant::now();
    assert_eq!(
        fx.recv().await,
        Inbound::AgentGone {
            node: node("n-half")
        }
    );
    // ping 200 ms + pong timeout 300 ms, plus one tick of slack.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    drop(ws);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_agent_survives_many_keepalive_windows() {
    let fx = Fixture::new(fast_keepalive()).await;
    let identity = fx.pki.node_identity("n-live");
    let session = WsAgentClient::connect(
        &fx.url("/v1/agent"),
        &fx.pki.client_tls(Some(&identity)),
        hello("n-live", None),
        fast_keepalive(),
    )
    .await
    .unwrap();
    assert!(matches!(fx.recv().await, Inbound::Agent { .. }));
    // Idle for several windows: pings and pongs keep it up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(fx.server.agent_count(), 1);
    assert_eq!(session.ended(), None);
    session.send(&heartbeat()).await.unwrap();
    assert!(matches!(
        fx.recv().await,
        Inbound::Agent {
            msg: AgentMsg::Heartbeat { .. },
            ..
        }
    ));
}

#[tokio::test(flavor = "current_thread")]
async fn full_agent_queue_is_backpressure_and_closes_the_slow_session() {
    let mut cfg = WsConfig::default();
    cfg.send_queue = 2;
    let fx = Fixture::new(cfg).await;
    let identity = fx.pki.node_identity("n-slow");
    let mut session = WsAgentClient::connect(
        &fx.url("/v1/agent"),
        &fx.pki.client_tls(Some(&identity)),
        hello("n-slow", None),
        WsConfig::default(),
    )
    .await
    .unwrap();
    assert!(matches!(fx.recv().await, Inbound::Agent { .. }));
    // `send` never waits, so on one thread the connection task cannot drain
    // the queue between these calls.
    let to = Peer::Node(node("n-slow"));
    let mut results = Vec::new();
    for _ in 0..4 {
        results.push(fx.server.send(&to, Outbound::Agent(DaemonMsg::Drain)).await);
    }
    assert!(
        results
            .iter()
            .any(|r| matches!(r, Err(e) if e.kind() == "backpressure")),
        "{results:?}"
    );
    while timeout(Duration::from_secs(5), session.recv())
        .await
        .unwrap()
        .is_some()
    {}
    assert!(matches!(
        session.ended(),
        Some(SessionEnd::ClosedByServer {
            code: close_code::SLOW_CONSUMER,
            ..
        })
    ));
    assert_eq!(
        fx.recv().await,
        Inbound::AgentGone {
            node: node("n-slow")
        }
    );
    // And an unknown node is NoPeer.
    let err = fx
        .server
        .send(
            &Peer::Node(node("n-nobody")),
            Outbound::Agent(DaemonMsg::Drain),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "no_peer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_path_and_plain_tcp_garbage_are_refused() {
    let fx = Fixture::new(fast_keepalive()).await;
    let url = format!("wss://127.0.0.1:{}/v1/nope", fx.addr.port());
    assert!(
        WsClaimClient::connect(&url, &fx.pki.client_tls(None), WsConfig::default())
            .await
            .is_err()
    );
    // Not even TLS.
    let mut tcp = tokio::net::TcpStream::connect(fx.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut tcp, b"GET / HTTP/1.0\r\n\r\n garbage")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let _ = timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read(&mut tcp, &mut buf),
    )
    .await;
    still_serving(&fx).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_client_reconnects_and_resends() {
    let fx = Fixture::new(WsConfig::default()).await;
    let client = fx.claims().await;
    let req = request("c-resend");
    let (_, got) = tokio::join!(
        async {
            // First attempt: the server drops every connection instead of answering.
            match fx.recv().await {
                Inbound::Claim { .. } => {}
                other => panic!("expected the request, got {other:?}"),
            }
            fx.server.close_claim_connections();
            // The client re-sends the same request on a new connection.
            match fx.recv().await {
                Inbound::Claim {
                    msg: ClaimMsg::Request(r),
                    reply,
                } => {
                    assert_eq!(r.claim_id.as_str(), "c-resend");
                    let grant = fleet_core::protocol::ClaimGrant {
                        claim_id: r.claim_id.clone(),
                        workspace: r.workspace.clone(),
                        pool: r.pool.clone(),
                        node: node("n-x"),
                        endpoint: "n-x:7443".to_owned(),
                        lease: fleet_core::protocol::Lease {
                            claim_id: r.claim_id.clone(),
                            expires_at: 1,
                        },
                        epoch: fleet_core::ids::Epoch(1),
                        credentials: None,
                    };
                    fx.server
                        .send(
                            &Peer::Reply(reply),
                            Outbound::Claim(ClaimReply::Granted(grant)),
                        )
                        .await
                        .unwrap();
                }
                other => panic!("expected the re-sent request, got {other:?}"),
            }
        },
        client.claim(req)
    );
    assert_eq!(got.unwrap().node, node("n-x"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_ends_a_waiting_recv_and_the_clients() {
    let fx = Fixture::new(WsConfig::default()).await;
    let identity = fx.pki.node_identity("n-close");
    let mut session = WsAgentClient::connect(
        &fx.url("/v1/agent"),
        &fx.pki.client_tls(Some(&identity)),
        hello("n-close", None),
        WsConfig::default(),
    )
    .await
    .unwrap();
    assert!(matches!(fx.recv().await, Inbound::Agent { .. }));
    let server = &fx.server;
    let (got, ()) = tokio::join!(server.recv(), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        server.close();
    });
    // Either the AgentGone that the close caused, or Closed.
    if let Ok(m) = got {
        assert_eq!(
            m,
            Inbound::AgentGone {
                node: node("n-close")
            }
        );
    }
    assert_eq!(
        timeout(Duration::from_secs(5), session.recv())
            .await
            .unwrap(),
        None
    );
    assert!(matches!(
        session.ended(),
        Some(SessionEnd::ClosedByServer {
            code: close_code::GOING_AWAY,
            ..
        })
    ));
}

/// Tokens for the claim plane: `op` opens every workspace, `team-a` only
/// `ws-a`.
struct Tokens;

impl fleet_transport_ws::ClaimAuth for Tokens {
    fn authorize(
        &self,
        bearer: Option<&str>,
    ) -> Result<fleet_transport_ws::ClaimScope, fleet_transport_ws::ClaimAuthError> {
        use fleet_transport_ws::{ClaimAuthError, ClaimScope};
        match bearer {
            None => Err(ClaimAuthError::NoToken),
            Some("op") => Ok(ClaimScope::All),
            Some("team-a") => Ok(ClaimScope::Workspaces(
                [Workspace::new("ws-a").unwrap()].into(),
            )),
            Some(_) => Err(ClaimAuthError::BadToken),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_plane_tokens_limit_clients_to_their_workspaces() {
    let pki = Pki::new();
    let (server, addr) = WsServer::bind_with_claim_auth(
        LOOPBACK.parse().unwrap(),
        &pki.server_tls(true),
        Arc::new(StaticAgentAuth::new()),
        Arc::new(Tokens),
        WsConfig::default(),
    )
    .await
    .unwrap();
    let url = format!("wss://127.0.0.1:{}/v1/claims", addr.port());
    let connect = |token: Option<&str>| {
        let mut cfg = WsConfig::default();
        cfg.bearer_token = token.map(Secret::new);
        cfg.connect_attempts = 1;
        let (url, tls) = (url.clone(), pki.client_tls(None));
        async move { WsClaimClient::connect(&url, &tls, cfg).await }
    };

    // No token, or an unknown one: refused at the upgrade, not retried.
    for token in [None, Some("guess")] {
        match connect(token).await {
            Err(e @ WsError::Refused { code, .. }) => {
                assert_eq!(code, close_code::AUTH_REFUSED, "{e}");
                assert!(!e.is_retryable());
            }
            other => panic!("token {token:?} must be refused, got {other:?}"),
        }
    }

    let a = connect(Some("team-a")).await.unwrap();
    let (ws_a, ws_b) = (
        Workspace::new("ws-a").unwrap(),
        Workspace::new("ws-b").unwrap(),
    );
    // Outside its workspace: refused by the transport, nothing reaches the
    // control plane.
    let mut other = request("b-1");
    other.workspace = ws_b.clone();
    let forbidden = ClaimError::Rejected(ClaimRejection::Forbidden {
        workspace: "ws-b".to_owned(),
    });
    assert_eq!(a.claim(other).await, Err(forbidden.clone()));
    let b1 = ClaimId::new("b-1").unwrap();
    assert_eq!(a.renew(&ws_b, &b1).await, Err(forbidden.clone()));
    assert_eq!(a.release(&ws_b, &b1).await, Err(forbidden));
    assert!(matches!(
        a.revocations(&ws_b).await.map(|_| ()),
        Err(ClaimError::Transport(
            fleet_core::transport::TransportError::Permission(_)
        ))
    ));
    assert!(
        timeout(Duration::from_millis(300), server.recv())
            .await
            .is_err(),
        "a refused frame must not reach the control plane"
    );

    // Inside it: served as usual.
    let _own = a.revocations(&ws_a).await.unwrap();
    let id = ClaimId::new("a-1").unwrap();
    assert_eq!(release_through(&server, &a, &ws_a, &id).await, Ok(()));

    // An operator's token reaches any workspace.
    let op = connect(Some("op")).await.unwrap();
    assert_eq!(release_through(&server, &op, &ws_b, &b1).await, Ok(()));
}

/// `client` releases `id` in `ws`; the server checks the workspace it got
/// and answers `Released`.
async fn release_through(
    server: &WsServer,
    client: &WsClaimClient,
    ws: &Workspace,
    id: &ClaimId,
) -> Result<(), ClaimError> {
    let (_, got) = tokio::join!(
        async {
            match timeout(Duration::from_secs(10), server.recv()).await {
                Ok(Ok(Inbound::Claim { msg, reply })) => {
                    assert_eq!(msg.workspace(), ws);
                    server
                        .send(
                            &Peer::Reply(reply),
                            Outbound::Claim(ClaimReply::Released {
                                claim_id: id.clone(),
                            }),
                        )
                        .await
                        .unwrap();
                }
                other => panic!("expected the release, got {other:?}"),
            }
        },
        client.release(ws, id)
    );
    got
}
