//! What a daemon incarnation is built with besides the store and the cloud:
//! its end of the simulated network (a [`Transport`]) and a credential
//! issuer. Both belong to the incarnation and die with it.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fleet_core::protocol::SealedCredentials;
use fleet_core::transport::{Inbound, Outbound, Peer, Transport, TransportError};
use fleet_runtime::driver::{CredentialIssuer, CredentialRequest};
use tokio::sync::mpsc;

use crate::sim::Sim;

/// The daemon's end of the network: what callers and agents send arrives
/// here (after the network's delays); what it sends goes out through the
/// network's faults.
pub(crate) struct SimTransport {
    sim: Arc<Sim>,
    incarnation: u64,
    rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<Inbound>>,
}

impl SimTransport {
    pub(crate) fn new(
        sim: Arc<Sim>,
        incarnation: u64,
        rx: mpsc::UnboundedReceiver<Inbound>,
    ) -> Self {
        SimTransport {
            sim,
            incarnation,
            rx: tokio::sync::Mutex::new(rx),
        }
    }
}

#[async_trait]
impl Transport for SimTransport {
    async fn recv(&self) -> Result<Inbound, TransportError> {
        let mut rx = self.rx.lock().await;
        match rx.recv().await {
            Some(inbound) if self.sim.with(|st, _| st.alive(self.incarnation)) => Ok(inbound),
            // The process is gone: nothing arrives any more.
            _ => std::future::pending().await,
        }
    }

    async fn send(&self, to: &Peer, msg: Outbound) -> Result<(), TransportError> {
        self.sim.daemon_send(self.incarnation, to, msg)
    }
}

/// Issues stand-in credentials (the runtime's real issuer is tested on its
/// own; here only its latency and failures matter).
pub(crate) struct SimIssuer {
    pub(crate) sim: Arc<Sim>,
    pub(crate) incarnation: u64,
}

#[async_trait]
impl CredentialIssuer for SimIssuer {
    async fn issue(&self, req: CredentialRequest) -> Result<SealedCredentials, String> {
        let sim = &self.sim;
        sim.park_unless_alive(self.incarnation).await;
        let (latency, fail) = sim.with(|st, at| {
            if st.faults(at) {
                (
                    st.rng.range(0, 300),
                    st.rng.chance(sim.plan.faults.issue_error),
                )
            } else {
                (0, false)
            }
        });
        tokio::time::sleep(Duration::from_millis(latency)).await;
        sim.park_unless_alive(self.incarnation).await;
        sim.with(|st, at| {
            st.step(
                at,
                format_args!(
                    "issue {} on {}: {}",
                    req.claim,
                    req.node,
                    if fail { "failed" } else { "ok" }
                ),
            );
        });
        if fail {
            return Err("injected: the issuer is down".to_owned());
        }
        Ok(SealedCredentials {
            format: "chaos".to_owned(),
            ciphertext: format!("{}@{}", req.claim, req.node),
            signature: String::new(),
            signer: String::new(),
            expires_at: req.expires_at,
        })
    }
}
