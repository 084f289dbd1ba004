//! [`PoolCa`]: the pool's certificate authority and the certificates it
//! issues.
//!
//! One CA per daemon data directory, persisted as PEM:
//! `<data dir>/ca.cert.pem` (mode 0644) and `<data dir>/ca.key.pem` (mode
//! 0600); the directory is created with mode 0700. It signs:
//! - claim client certificates ([`PoolCa::issue_claim_cert`]): what a
//!   claimant presents to a node's gateway; valid for the claim's lease;
//! - node identities ([`PoolCa::issue_node_identity`]): the agent's gateway
//!   server certificate, also its mTLS client certificate to the daemon;
//! - daemon server certificates ([`PoolCa::issue_server_cert`]) for the
//!   WS/HTTP listeners.
//!
//! Keys are ECDSA P-256 (rcgen's default, through ring). Times are passed in
//! as milliseconds since the Unix epoch; nothing here reads a clock.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use fleet_core::ids::{ClaimId, Millis, NodeId};
use fleet_core::protocol::{NodeIdentity, Secret};
use fleet_core::subjects::Subjects;
use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use time::OffsetDateTime;

/// The CA certificate's file name in the data directory.
pub const CA_CERT_FILE: &str = "ca.cert.pem";
/// The CA private key's file name in the data directory (mode 0600).
pub const CA_KEY_FILE: &str = "ca.key.pem";
/// How long a new CA certificate is valid: ten years.
pub const CA_VALIDITY_MS: Millis = 10 * 365 * 24 * 3600 * 1000;
/// How far before "now" issued certificates start being valid, so a peer
/// whose clock is a little behind ours accepts them.
pub const CLOCK_SKEW_MS: Millis = 5 * 60 * 1000;

const CA_COMMON_NAME: &str = "fleet pool CA";
const CA_ORGANIZATION: &str = "fleet";

/// A CA failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// A CA file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// A CA file exists but does not hold what it should.
    #[error("{path}: {detail}")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A time is outside what a certificate can hold, or the validity
    /// window is empty.
    #[error("invalid certificate validity: {0}")]
    BadTime(String),
    /// A subject alternative name is not a valid DNS name, IP or URI.
    #[error("invalid certificate name {name:?}: {detail}")]
    BadName {
        /// The name.
        name: String,
        /// Why.
        detail: String,
    },
    /// Key generation or signing failed.
    #[error("certificate generation failed: {0}")]
    Crypto(String),
}

impl CaError {
    /// A short stable name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            CaError::Io { .. } => "io",
            CaError::BadFile { .. } => "bad_file",
            CaError::BadTime(_) => "bad_time",
            CaError::BadName { .. } => "bad_name",
            CaError::Crypto(_) => "crypto",
        }
    }

    /// Whether the same call may succeed later: only I/O may be transient.
    pub fn is_retryable(&self) -> bool {
        matches!(self, CaError::Io { .. })
    }
}

/// A certificate and its private key, both PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct IssuedCert {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// Its private key (PEM, PKCS#8).
    pub key_pem: Secret,
}

impl fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCert")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &self.key_pem)
            .finish()
    }
}

/// The pool CA.
pub struct PoolCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl fmt::Debug for PoolCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The issuer holds the private key: never print it.
        f.debug_struct("PoolCa").finish_non_exhaustive()
    }
}

impl PoolCa {
    /// Loads the CA from `data_dir`, or creates one valid from `now` for
    /// [`CA_VALIDITY_MS`] if there is none.
    ///
    /// A key without a certificate (a crash between the two writes) gets a
    /// new certificate for the same key; a certificate without its key is an
    /// error, since certificates it signed could not be matched any more.
    /// Blocks on file I/O.
    pub fn load_or_create(data_dir: &Path, now: Millis) -> Result<PoolCa, CaError> {
        create_private_dir(data_dir).map_err(|source| CaError::Io {
            path: data_dir.to_owned(),
            source,
        })?;
        let key_path = data_dir.join(CA_KEY_FILE);
        let cert_path = data_dir.join(CA_CERT_FILE);
        let key_pem = read_optional(&key_path)?;
        let cert_pem = read_optional(&cert_path)?;
        let key = match key_pem {
            Some(pem) => KeyPair::from_pem(&pem).map_err(|e| CaError::BadFile {
                path: key_path.clone(),
                detail: format!("not a PEM private key: {e}"),
            })?,
            None if cert_pem.is_some() => {
                return Err(CaError::BadFile {
                    path: key_path,
                    detail: format!("missing, but {} exists", cert_path.display()),
                });
            }
            None => {
                let key = KeyPair::generate().map_err(crypto)?;
                write_private_file(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
                tracing::info!(path = %key_path.display(), "created pool CA key");
                key
            }
        };
        let params = ca_params(now)?;
        let cert_pem = match cert_pem {
            Some(pem) => {
                check_cert_matches_key(&pem, &key).map_err(|detail| CaError::BadFile {
                    path: cert_path.clone(),
                    detail,
                })?;
                pem
            }
            None => {
                let pem = params.self_signed(&key).map_err(crypto)?.pem();
                write_private_file(&cert_path, pem.as_bytes(), 0o644)?;
                tracing::info!(path = %cert_path.display(), "created pool CA certificate");
                pem
            }
        };
        // Signing needs only the CA's subject name and key (rcgen derives the
        // authority key id from the key), and the name is fixed, so the
        // params rebuilt here match the stored certificate.
        Ok(PoolCa {
            issuer: Issuer::new(params, key),
            cert_pem,
        })
    }

    /// The CA certificate (PEM): the trust anchor handed to agents and
    /// claimants.
    pub fn ca_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A client certificate for one claim: CN = the claim id, URI SAN
    /// [`Subjects::claim_cert_uri`], client-auth only, valid from a little
    /// before `now` until `not_after` (the lease expiry).
    pub fn issue_claim_cert(
        &self,
        claim: &ClaimId,
        now: Millis,
        not_after: Millis,
    ) -> Result<IssuedCert, CaError> {
        let sans = vec![uri_san(&Subjects::claim_cert_uri(claim))?];
        self.issue(
            claim.as_str(),
            sans,
            &[ExtendedKeyUsagePurpose::ClientAuth],
            now,
            not_after,
        )
    }

    /// A node's identity: CN = the node id; SANs: URI
    /// [`Subjects::node_cert_uri`], DNS [`Subjects::node_server_name`] and
    /// each of `gateway_hosts` (a DNS name or an IP address); server and
    /// client auth, since the agent serves its gateway with it and presents
    /// it to the daemon.
    pub fn issue_node_identity(
        &self,
        node: &NodeId,
        gateway_hosts: &[String],
        now: Millis,
        not_after: Millis,
    ) -> Result<NodeIdentity, CaError> {
        let mut sans = vec![
            uri_san(&Subjects::node_cert_uri(node))?,
            host_san(&Subjects::node_server_name(node))?,
        ];
        for host in gateway_hosts {
            sans.push(host_san(host)?);
        }
        let issued = self.issue(
            node.as_str(),
            sans,
            &[
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            now,
            not_after,
        )?;
        Ok(NodeIdentity {
            cert_pem: issued.cert_pem,
            key_pem: issued.key_pem,
            ca_pem: self.cert_pem.clone(),
        })
    }

    /// A server certificate for the daemon's own listeners, for `hosts`
    /// (DNS names or IP addresses; at least one).
    pub fn issue_server_cert(
        &self,
        hosts: &[String],
        now: Millis,
        not_after: Millis,
    ) -> Result<IssuedCert, CaError> {
        let Some(first) = hosts.first() else {
            return Err(CaError::BadName {
                name: String::new(),
                detail: "a server certificate needs at least one host".to_owned(),
            });
        };
        let sans = hosts
            .iter()
            .map(|h| host_san(h))
            .collect::<Result<_, _>>()?;
        self.issue(
            first,
            sans,
            &[ExtendedKeyUsagePurpose::ServerAuth],
            now,
            not_after,
        )
    }

    fn issue(
        &self,
        common_name: &str,
        sans: Vec<SanType>,
        ekus: &[ExtendedKeyUsagePurpose],
        now: Millis,
        not_after: Millis,
    ) -> Result<IssuedCert, CaError> {
        if not_after <= now {
            return Err(CaError::BadTime(format!(
                "not_after {not_after} is not after now {now}"
            )));
        }
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.subject_alt_names = sans;
        params.not_before = to_time(now.saturating_sub(CLOCK_SKEW_MS))?;
        params.not_after = to_time(not_after)?;
        params.serial_number = Some(random_serial()?);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = ekus.to_vec();
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().map_err(crypto)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(crypto)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: Secret::new(key.serialize_pem()),
        })
    }
}

/// The CA's parameters. Only validity depends on input; the subject is fixed
/// so a reloaded CA signs with the name in its stored certificate.
fn ca_params(now: Millis) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    dn.push(DnType::OrganizationName, CA_ORGANIZATION);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = to_time(now.saturating_sub(CLOCK_SKEW_MS))?;
    params.not_after = to_time(now.saturating_add(CA_VALIDITY_MS))?;
    params.serial_number = Some(random_serial()?);
    Ok(params)
}

/// Converts milliseconds since the Unix epoch.
fn to_time(ms: Millis) -> Result<OffsetDateTime, CaError> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .map_err(|e| CaError::BadTime(format!("{ms} ms: {e}")))
}

/// A positive 127-bit random serial: RFC 5280 wants serials unique per CA,
/// and randomness makes them so without state.
fn random_serial() -> Result<SerialNumber, CaError> {
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes).map_err(|e| CaError::Crypto(e.to_string()))?;
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

fn crypto(e: rcgen::Error) -> CaError {
    CaError::Crypto(e.to_string())
}

fn uri_san(uri: &str) -> Result<SanType, CaError> {
    Ia5String::try_from(uri)
        .map(SanType::URI)
        .map_err(|e| CaError::BadName {
            name: uri.to_owned(),
            detail: e.to_string(),
        })
}

/// An IP address SAN if `host` parses as one, else a DNS name SAN.
fn host_san(host: &str) -> Result<SanType, CaError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let valid = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'*')
        });
    if !valid {
        return Err(CaError::BadName {
            name: host.to_owned(),
            detail: "not a DNS name or IP address".to_owned(),
        });
    }
    Ia5String::try_from(host)
        .map(SanType::DnsName)
        .map_err(|e| CaError::BadName {
            name: host.to_owned(),
            detail: e.to_string(),
        })
}

/// Checks that a stored CA certificate carries the stored key's public key,
/// so a swapped file is caught at startup rather than by every peer.
fn check_cert_matches_key(pem: &str, key: &KeyPair) -> Result<(), String> {
    use base64::Engine as _;
    let body: String = pem
        .lines()
        .map(str::trim)
        .skip_while(|l| *l != "-----BEGIN CERTIFICATE-----")
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    if body.is_empty() {
        return Err("no PEM certificate".to_owned());
    }
    let der = base64::engine::general_purpose::STANDARD
        .decode(body.as_bytes())
        .map_err(|e| format!("bad PEM certificate: {e}"))?;
    // The DER of the certificate holds the SubjectPublicKeyInfo verbatim.
    let spki = key.subject_public_key_info();
    if der.windows(spki.len()).any(|w| w == spki.as_slice()) {
        Ok(())
    } else {
        Err(format!("does not hold the public key of {CA_KEY_FILE}"))
    }
}

/// Creates `dir` (and parents) with mode 0700 if missing. An existing
/// directory is left as it is: the operator may have chosen its mode.
pub(crate) fn create_private_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Reads a file that may not exist yet.
pub(crate) fn read_optional(path: &Path) -> Result<Option<String>, CaError> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(CaError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Writes `bytes` to a new file at `path` with `mode`, atomically: a
/// temporary file created with that mode (never readable by others, even
/// briefly), synced, then renamed over `path`.
pub(crate) fn write_private_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CaError> {
    let io_err = |source| CaError::Io {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    // A leftover from a crash may have another mode; `mode` applies only
    // to a file being created.
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => return Err(io_err(source)),
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io_err)?;
    file.write_all(bytes).map_err(io_err)?;
    file.sync_all().map_err(io_err)?;
    drop(file);
    fs::rename(&tmp, path).map_err(io_err)?;
    // Sync the directory so the rename itself survives a crash.
    if let Some(dir) = path.parent() {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err)?;
    }
    Ok(())
}
