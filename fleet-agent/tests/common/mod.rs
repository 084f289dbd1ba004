//! Test helpers: temp dirs, a pool CA and certificates (rcgen), and an
//! in-process daemon harness speaking to the agent over `InProcTransport`.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleet_core::ids::{ClaimId, NodeId};
use fleet_core::memory::transport::InProcTransport;
use fleet_core::protocol::{AgentMsg, DaemonMsg, NodeIdentity, Secret, WorkerEvent};
use fleet_core::subjects::Subjects;
use fleet_core::transport::{Inbound, Outbound, Peer, Transport};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SanType,
};
use tokio::sync::mpsc;

pub type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// A fresh directory under the system temp dir.
pub fn temp_dir(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let p = std::env::temp_dir().join(format!(
        "fleet-agent-test-{name}-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&p).ok();
    p
}

/// A certificate authority that can issue node and claim certificates.
pub struct Ca {
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Ca {
    pub fn new(name: &str) -> Result<Ca, rcgen::Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
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
        expired: bool,
    ) -> Result<Issued, rcgen::Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.subject_alt_names = sans;
        params.extended_key_usages = eku;
        if expired {
            params.not_before = rcgen::date_time_ymd(2000, 1, 1);
            params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        } else {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2090, 1, 1);
        }
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// The node's certificate: gateway server name and node URI.
    pub fn node_identity(&self, node: &NodeId) -> Result<NodeIdentity, rcgen::Error> {
        let i = self.issue(
            vec![
                SanType::DnsName(Subjects::node_server_name(node).try_into()?),
                SanType::URI(Subjects::node_cert_uri(node).try_into()?),
            ],
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            false,
        )?;
        Ok(NodeIdentity {
            cert_pem: i.cert_pem,
            key_pem: Secret::new(i.key_pem),
            ca_pem: self.pem.clone(),
        })
    }

    /// A TLS server certificate for `names` (DNS names or IP addresses).
    pub fn server_cert(&self, names: &[&str]) -> Result<Issued, rcgen::Error> {
        let sans = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => Ok(SanType::DnsName((*n).try_into()?)),
            })
            .collect::<Result<Vec<_>, rcgen::Error>>()?;
        self.issue(sans, vec![ExtendedKeyUsagePurpose::ServerAuth], false)
    }

    /// A claim's client certificate.
    pub fn claim_cert(&self, claim: &ClaimId, expired: bool) -> Result<Issued, rcgen::Error> {
        self.issue(
            vec![SanType::URI(Subjects::claim_cert_uri(claim).try_into()?)],
            vec![ExtendedKeyUsagePurpose::ClientAuth],
            expired,
        )
    }
}

/// Agent config text for tests.
pub fn agent_toml(work: &Path, extra: &str) -> String {
    format!(
        "node_id = \"n1\"\ndaemon_url = \"fleet+tcp://127.0.0.1:1\"\nwork_dir = \"{}\"\n\
         heartbeat_interval_ms = 200\nreconnect_min_ms = 20\nreconnect_max_ms = 200\n{extra}",
        work.display()
    )
}

/// The daemon side of the agent protocol, in-process.
pub struct Daemon {
    pub transport: Arc<InProcTransport>,
    pub node: NodeId,
    rx: mpsc::UnboundedReceiver<AgentMsg>,
    /// Every Hello received, in order.
    pub hellos: Arc<Mutex<Vec<AgentMsg>>>,
    /// Sessions refused.
    pub refusals: Arc<Mutex<u32>>,
    /// Tokens still valid.
    pub tokens: Arc<Mutex<HashSet<String>>>,
    /// Sessions welcomed.
    pub welcomes: Arc<Mutex<usize>>,
}

impl Daemon {
    /// Starts the harness; a Hello with a valid unused token (or with no
    /// token: an already-identified node) gets Welcome, anything else is
    /// refused by closing the session.
    pub fn start(tokens: &[&str], identity: Option<NodeIdentity>) -> Daemon {
        let transport = Arc::new(InProcTransport::new(256));
        let (tx, rx) = mpsc::unbounded_channel();
        let hellos = Arc::new(Mutex::new(Vec::new()));
        let refusals = Arc::new(Mutex::new(0));
        let tokens = Arc::new(Mutex::new(
            tokens
                .iter()
                .map(|t| (*t).to_owned())
                .collect::<HashSet<_>>(),
        ));
        let welcomes = Arc::new(Mutex::new(0));
        let w = Arc::clone(&welcomes);
        let (t, h, r, tok) = (
            Arc::clone(&transport),
            Arc::clone(&hellos),
            Arc::clone(&refusals),
            Arc::clone(&tokens),
        );
        tokio::spawn(async move {
            while let Ok(inbound) = t.recv().await {
                let Inbound::Agent { node, msg } = inbound else {
                    continue;
                };
                if let AgentMsg::Hello {
                    bootstrap_token, ..
                } = &msg
                {
                    h.lock().map(|mut v| v.push(msg.clone())).ok();
                    let accept = match bootstrap_token {
                        // Single use: the token is consumed.
                        Some(tkn) => tok
                            .lock()
                            .map(|mut s| s.remove(tkn.expose()))
                            .unwrap_or(false),
                        None => true,
                    };
                    if accept {
                        let welcome = DaemonMsg::Welcome {
                            node: node.clone(),
                            identity: bootstrap_token.as_ref().and(identity.clone()),
                            heartbeat_interval_ms: 200,
                        };
                        let _ = t.send(&Peer::Node(node), Outbound::Agent(welcome)).await;
                        w.lock().map(|mut n| *n += 1).ok();
                    } else {
                        r.lock().map(|mut n| *n += 1).ok();
                        // Refuse: displace the session and close it.
                        drop(t.connect_agent(node));
                    }
                    continue;
                }
                let _ = tx.send(msg);
            }
        });
        Daemon {
            transport,
            node: NodeId::new("n1").unwrap_or_else(|_| unreachable!()),
            rx,
            hellos,
            refusals,
            tokens,
            welcomes,
        }
    }

    pub fn welcome_count(&self) -> usize {
        self.welcomes.lock().map(|n| *n).unwrap_or(0)
    }

    /// Waits until at least `n` sessions were welcomed.
    pub async fn wait_welcomed(&self, n: usize) {
        let t0 = tokio::time::Instant::now();
        while self.welcome_count() < n {
            assert!(
                t0.elapsed() < Duration::from_secs(15),
                "agent never connected"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub fn connector(&self) -> Arc<dyn fleet_agent::Connector> {
        Arc::clone(&self.transport) as Arc<dyn fleet_agent::Connector>
    }

    /// Sends to the agent once it has a welcomed session.
    pub async fn send(&self, msg: DaemonMsg) {
        self.wait_welcomed(1).await;
        let _ = self
            .transport
            .send(&Peer::Node(self.node.clone()), Outbound::Agent(msg))
            .await;
    }

    /// Closes the agent's current session (as a network drop would).
    pub fn kick(&self) {
        drop(self.transport.connect_agent(self.node.clone()));
    }

    pub fn hello_count(&self) -> usize {
        self.hellos.lock().map(|v| v.len()).unwrap_or(0)
    }

    /// The next non-heartbeat message.
    pub async fn next(&mut self, within: Duration) -> Option<AgentMsg> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .ok()??;
            if !matches!(msg, AgentMsg::Heartbeat { .. }) {
                return Some(msg);
            }
        }
    }

    /// Messages up to and including the first that satisfies `done`.
    pub async fn until(
        &mut self,
        within: Duration,
        mut done: impl FnMut(&AgentMsg) -> bool,
    ) -> Result<Vec<AgentMsg>, String> {
        let mut got = Vec::new();
        loop {
            match self.next(within).await {
                Some(m) => {
                    let stop = done(&m);
                    got.push(m);
                    if stop {
                        return Ok(got);
                    }
                }
                None => return Err(format!("timed out; got {got:#?}")),
            }
        }
    }
}

/// Whether `m` is a terminal event.
pub fn is_terminal(m: &AgentMsg) -> bool {
    matches!(m, AgentMsg::Event { event, .. } if event.is_terminal())
}

/// The events (not output) in `msgs`.
pub fn events(msgs: &[AgentMsg]) -> Vec<WorkerEvent> {
    msgs.iter()
        .filter_map(|m| match m {
            AgentMsg::Event { event, .. } => Some(event.clone()),
            _ => None,
        })
        .filter(|e| !matches!(e, WorkerEvent::Heartbeat { .. }))
        .collect()
}

/// All output of one stream, concatenated.
pub fn output(msgs: &[AgentMsg], stream: fleet_core::protocol::OutputStream) -> String {
    msgs.iter()
        .filter_map(|m| match m {
            AgentMsg::Output {
                stream: s, data, ..
            } if *s == stream => Some(data.as_str()),
            _ => None,
        })
        .collect()
}
