//! The credential issuer a daemon plugs into the runtime: per-claim client
//! certificates from the [`PoolCa`], sealed to the caller with the
//! [`Sealer`].

use std::sync::Arc;

use async_trait::async_trait;
use fleet_core::protocol::{CREDENTIALS_FORMAT, CredentialsBundle, SealedCredentials};

use crate::ca::PoolCa;
use crate::driver::{Clock, CredentialIssuer, CredentialRequest};
use crate::seal::Sealer;

/// Mints per-claim certificates with the pool CA and seals them.
pub struct CaIssuer {
    ca: Arc<PoolCa>,
    sealer: Arc<Sealer>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for CaIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaIssuer").finish_non_exhaustive()
    }
}

impl CaIssuer {
    /// Mints from `ca`, seals with `sealer`, and dates certificates by `clock`.
    pub fn new(ca: Arc<PoolCa>, sealer: Arc<Sealer>, clock: Arc<dyn Clock>) -> CaIssuer {
        CaIssuer { ca, sealer, clock }
    }
}

#[async_trait]
impl CredentialIssuer for CaIssuer {
    async fn issue(&self, req: CredentialRequest) -> Result<SealedCredentials, String> {
        let ca = self.ca.clone();
        let sealer = self.sealer.clone();
        let now = self.clock.now();
        tokio::task::spawn_blocking(move || {
            let cert = ca
                .issue_claim_cert(&req.claim, now, req.expires_at)
                .map_err(|e| e.to_string())?;
            let bundle = CredentialsBundle {
                format: CREDENTIALS_FORMAT.to_owned(),
                claim_id: req.claim.clone(),
                workspace: req.workspace,
                node: req.node,
                endpoint: req.endpoint,
                expires_at: req.expires_at,
                ca_pem: ca.ca_pem().to_owned(),
                cert_pem: cert.cert_pem,
                key_pem: cert.key_pem,
            };
            sealer
                .seal(&bundle, &req.recipient)
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| format!("credential task failed: {e}"))?
    }
}
