//! The pool CA (certificates parsed back with x509-parser and verified
//! against the CA) and credential sealing (round trip and every refusal).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::Signer as _;
use fleet_client::credentials::{Expected, OpenError, SignerKey, open};
use fleet_core::ids::{ClaimId, NodeId, Workspace};
use fleet_core::protocol::{
    CREDENTIALS_FORMAT, CredentialsBundle, SealedCredentials, credentials_signing_payload,
};
use fleet_core::subjects::Subjects;
use fleet_runtime::ca::{CA_CERT_FILE, CA_KEY_FILE, CLOCK_SKEW_MS, CaError, PoolCa};
use fleet_runtime::seal::{SEAL_KEY_FILE, SEAL_PUB_FILE, SealError, Sealer};
use x509_parser::extensions::GeneralName;
use x509_parser::pem::parse_x509_pem;

const NOW: u64 = 1_750_000_000_000;
const LEASE_END: u64 = NOW + 3_600_000;

/// What the tests check of a certificate, owned.
#[derive(Debug)]
struct Parsed {
    common_name: String,
    uris: Vec<String>,
    dns: Vec<String>,
    ips: Vec<Vec<u8>>,
    server_auth: bool,
    client_auth: bool,
    is_ca: bool,
    not_before: i64,
    not_after: i64,
    issuer: String,
    subject: String,
}

fn parse(pem: &str) -> Parsed {
    let (_, pem) = parse_x509_pem(pem.as_bytes()).unwrap_or_else(|e| panic!("PEM: {e}"));
    let cert = pem.parse_x509().unwrap_or_else(|e| panic!("X.509: {e}"));
    let mut p = Parsed {
        common_name: cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or_default()
            .to_owned(),
        uris: vec![],
        dns: vec![],
        ips: vec![],
        server_auth: false,
        client_auth: false,
        is_ca: cert.is_ca(),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        issuer: cert.issuer().to_string(),
        subject: cert.subject().to_string(),
    };
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::URI(u) => p.uris.push((*u).to_owned()),
                GeneralName::DNSName(d) => p.dns.push((*d).to_owned()),
                GeneralName::IPAddress(ip) => p.ips.push(ip.to_vec()),
                _ => {}
            }
        }
    }
    if let Ok(Some(eku)) = cert.extended_key_usage() {
        p.server_auth = eku.value.server_auth;
        p.client_auth = eku.value.client_auth;
    }
    p
}

/// Whether `cert_pem` is signed by the key of `ca_pem`.
fn signed_by(cert_pem: &str, ca_pem: &str) -> bool {
    let (_, ca) = parse_x509_pem(ca_pem.as_bytes()).unwrap_or_else(|e| panic!("PEM: {e}"));
    let ca = ca.parse_x509().unwrap_or_else(|e| panic!("X.509: {e}"));
    let (_, leaf) = parse_x509_pem(cert_pem.as_bytes()).unwrap_or_else(|e| panic!("PEM: {e}"));
    let leaf = leaf.parse_x509().unwrap_or_else(|e| panic!("X.509: {e}"));
    leaf.verify_signature(Some(ca.public_key())).is_ok()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"))
}

fn ca_in(dir: &Path) -> PoolCa {
    PoolCa::load_or_create(dir, NOW).unwrap_or_else(|e| panic!("CA: {e}"))
}

fn claim(s: &str) -> ClaimId {
    ClaimId::new(s).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn ca_is_created_private_and_reloaded_unchanged() {
    let dir = tempdir();
    let data = dir.path().join("data");
    let ca = ca_in(&data);
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join(CA_KEY_FILE)), 0o600);
    let parsed = parse(ca.ca_pem());
    assert!(parsed.is_ca, "{parsed:?}");
    assert_eq!(parsed.issuer, parsed.subject);
    assert!(
        format!("{ca:?}").len() < 40,
        "Debug must not dump the CA: {ca:?}"
    );

    let again = ca_in(&data);
    assert_eq!(again.ca_pem(), ca.ca_pem(), "a reload must keep the CA");
    // The reloaded CA signs certificates the original certificate verifies.
    let cert = again
        .issue_claim_cert(&claim("c1"), NOW, LEASE_END)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(signed_by(&cert.cert_pem, ca.ca_pem()));
    assert_eq!(parse(&cert.cert_pem).issuer, parsed.subject);
}

#[test]
fn claim_cert_names_the_claim_and_ends_with_the_lease() {
    let dir = tempdir();
    let ca = ca_in(dir.path());
    let id = claim("build-42");
    let cert = ca
        .issue_claim_cert(&id, NOW, LEASE_END)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(signed_by(&cert.cert_pem, ca.ca_pem()));
    let p = parse(&cert.cert_pem);
    assert_eq!(p.common_name, "build-42");
    assert_eq!(p.uris, vec![Subjects::claim_cert_uri(&id)]);
    assert!(p.client_auth && !p.server_auth, "{p:?}");
    assert!(!p.is_ca);
    assert_eq!(p.not_after, (LEASE_END / 1000) as i64);
    assert_eq!(p.not_before, ((NOW - CLOCK_SKEW_MS) / 1000) as i64);
    assert!(cert.key_pem.expose().contains("PRIVATE KEY"));
    assert!(
        !format!("{cert:?}").contains("PRIVATE KEY"),
        "Debug leaks the key"
    );
}

#[test]
fn node_identity_serves_and_authenticates() {
    let dir = tempdir();
    let ca = ca_in(dir.path());
    let node = NodeId::new("Node_7").unwrap_or_else(|e| panic!("{e}"));
    let id = ca
        .issue_node_identity(
            &node,
            &["gw.example.com".to_owned(), "10.0.0.7".to_owned()],
            NOW,
            LEASE_END,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(id.ca_pem, ca.ca_pem());
    assert!(signed_by(&id.cert_pem, ca.ca_pem()));
    let p = parse(&id.cert_pem);
    assert_eq!(p.uris, vec![Subjects::node_cert_uri(&node)]);
    assert_eq!(
        p.dns,
        vec![
            Subjects::node_server_name(&node),
            "gw.example.com".to_owned()
        ]
    );
    assert_eq!(p.ips, vec![vec![10, 0, 0, 7]]);
    assert!(p.server_auth && p.client_auth, "{p:?}");
}

#[test]
fn server_cert_covers_its_hosts() {
    let dir = tempdir();
    let ca = ca_in(dir.path());
    let cert = ca
        .issue_server_cert(&["localhost".to_owned(), "::1".to_owned()], NOW, LEASE_END)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(signed_by(&cert.cert_pem, ca.ca_pem()));
    let p = parse(&cert.cert_pem);
    assert_eq!(p.dns, vec!["localhost".to_owned()]);
    assert_eq!(p.ips.len(), 1);
    assert!(p.server_auth && !p.client_auth);
}

#[test]
fn bad_inputs_are_typed_errors() {
    let dir = tempdir();
    let ca = ca_in(dir.path());
    assert!(matches!(
        ca.issue_claim_cert(&claim("c"), NOW, NOW),
        Err(CaError::BadTime(_))
    ));
    assert!(matches!(
        ca.issue_server_cert(&["bad host".to_owned()], NOW, LEASE_END),
        Err(CaError::BadName { .. })
    ));
    assert!(matches!(
        ca.issue_server_cert(&[], NOW, LEASE_END),
        Err(CaError::BadName { .. })
    ));
}

#[test]
fn ca_files_out_of_step() {
    // A key without its certificate: the certificate is remade for the key.
    let dir = tempdir();
    let first = ca_in(dir.path());
    std::fs::remove_file(dir.path().join(CA_CERT_FILE)).unwrap_or_else(|e| panic!("{e}"));
    let remade = ca_in(dir.path());
    let cert = first
        .issue_claim_cert(&claim("c"), NOW, LEASE_END)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        signed_by(&cert.cert_pem, remade.ca_pem()),
        "same key, new cert"
    );

    // A certificate without its key: refused, naming the key file.
    std::fs::remove_file(dir.path().join(CA_KEY_FILE)).unwrap_or_else(|e| panic!("{e}"));
    match PoolCa::load_or_create(dir.path(), NOW) {
        Err(e @ CaError::BadFile { .. }) => assert!(e.to_string().contains(CA_KEY_FILE), "{e}"),
        other => panic!("expected BadFile, got {other:?}"),
    }

    // A certificate that belongs to another key: refused.
    let other = tempdir();
    ca_in(other.path());
    std::fs::copy(other.path().join(CA_KEY_FILE), dir.path().join(CA_KEY_FILE))
        .unwrap_or_else(|e| panic!("{e}"));
    match PoolCa::load_or_create(dir.path(), NOW) {
        Err(e @ CaError::BadFile { .. }) => assert!(e.to_string().contains(CA_CERT_FILE), "{e}"),
        other => panic!("expected BadFile, got {other:?}"),
    }

    // Garbage in the key file: refused.
    std::fs::write(dir.path().join(CA_KEY_FILE), "junk").unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        PoolCa::load_or_create(dir.path(), NOW),
        Err(CaError::BadFile { .. })
    ));
}

// ---- sealing ----

struct Fixture {
    sealer: Sealer,
    identity: age::x25519::Identity,
    recipient: String,
    bundle: CredentialsBundle,
    _dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let dir = tempdir();
    let ca = ca_in(dir.path());
    let id = claim("claim-1");
    let cert = ca
        .issue_claim_cert(&id, NOW, LEASE_END)
        .unwrap_or_else(|e| panic!("{e}"));
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public().to_string();
    let bundle = CredentialsBundle {
        format: CREDENTIALS_FORMAT.to_owned(),
        claim_id: id,
        workspace: Workspace::new("ws").unwrap_or_else(|e| panic!("{e}")),
        node: NodeId::new("n1").unwrap_or_else(|e| panic!("{e}")),
        endpoint: "10.0.0.7:7443".to_owned(),
        expires_at: LEASE_END,
        ca_pem: ca.ca_pem().to_owned(),
        cert_pem: cert.cert_pem,
        key_pem: cert.key_pem,
    };
    let sealer = Sealer::load_or_create(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    Fixture {
        sealer,
        identity,
        recipient,
        bundle,
        _dir: dir,
    }
}

impl Fixture {
    fn seal(&self) -> SealedCredentials {
        self.sealer
            .seal(&self.bundle, &self.recipient)
            .unwrap_or_else(|e| panic!("seal: {e}"))
    }

    fn open(&self, sealed: &SealedCredentials) -> Result<CredentialsBundle, OpenError> {
        let signer = trusted(&self.sealer.signer());
        open(
            sealed,
            &self.identity,
            &Expected {
                claim_id: &self.bundle.claim_id,
                recipient: &self.recipient,
                expires_at: LEASE_END,
                signer: &signer,
            },
        )
    }
}

#[test]
fn seal_round_trip() {
    let f = fixture();
    let sealed = f.seal();
    assert_eq!(sealed.format, CREDENTIALS_FORMAT);
    assert!(
        sealed
            .ciphertext
            .starts_with("-----BEGIN AGE ENCRYPTED FILE-----"),
        "{}",
        sealed.ciphertext
    );
    assert!(!sealed.ciphertext.contains("PRIVATE KEY"));
    assert_eq!(sealed.signer, f.sealer.signer());
    let opened = f.open(&sealed).unwrap_or_else(|e| panic!("open: {e}"));
    assert_eq!(opened, f.bundle);
    assert!(!format!("{opened:?}").contains("PRIVATE KEY"));
}

#[test]
fn the_signature_is_over_the_documented_payload() {
    // What another language's verifier does, from the format description.
    let f = fixture();
    let sealed = f.seal();
    let public: [u8; 32] = B64
        .decode(&sealed.signer)
        .ok()
        .and_then(|b| b.try_into().ok())
        .unwrap_or_else(|| panic!("signer is not 32 base64 bytes"));
    let sig: [u8; 64] = B64
        .decode(&sealed.signature)
        .ok()
        .and_then(|b| b.try_into().ok())
        .unwrap_or_else(|| panic!("signature is not 64 base64 bytes"));
    let payload = format!(
        "fleet-credentials-v1\nclaim-1\n{}\n{LEASE_END}\n{}\n",
        f.recipient, sealed.ciphertext
    );
    let key = ed25519_dalek::VerifyingKey::from_bytes(&public).unwrap_or_else(|e| panic!("{e}"));
    key.verify_strict(
        payload.as_bytes(),
        &ed25519_dalek::Signature::from_bytes(&sig),
    )
    .unwrap_or_else(|e| panic!("documented payload does not verify: {e}"));
    let plain =
        age::decrypt(&f.identity, sealed.ciphertext.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
    let json: serde_json::Value = serde_json::from_slice(&plain).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(json["claim_id"], "claim-1");
    assert_eq!(json["expires_at"], LEASE_END);
    assert_eq!(json["format"], CREDENTIALS_FORMAT);
    assert!(
        json["key_pem"]
            .as_str()
            .is_some_and(|k| k.contains("PRIVATE KEY"))
    );
}

#[test]
fn tampered_ciphertext_fails_the_signature() {
    let f = fixture();
    let mut sealed = f.seal();
    // Change one base64 character in the middle of the armored body.
    let mid = sealed.ciphertext.len() / 2;
    let mut bytes = sealed.ciphertext.into_bytes();
    let at = (mid..bytes.len())
        .find(|&i| bytes[i].is_ascii_alphanumeric())
        .unwrap_or_else(|| panic!("no body character to tamper with"));
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    sealed.ciphertext = String::from_utf8(bytes).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(f.open(&sealed), Err(OpenError::BadSignature)));
}

#[test]
fn an_untrusted_signer_is_refused() {
    let f = fixture();
    let sealed = f.seal();
    let other = trusted(&Sealer::from_seed([7u8; 32]).signer());
    let result = open(
        &sealed,
        &f.identity,
        &Expected {
            claim_id: &f.bundle.claim_id,
            recipient: &f.recipient,
            expires_at: LEASE_END,
            signer: &other,
        },
    );
    assert!(
        matches!(result, Err(OpenError::UntrustedSigner)),
        "{result:?}"
    );

    // Sealed by another key but claiming to be the trusted one.
    let forged = Sealer::from_seed([9u8; 32])
        .seal(&f.bundle, &f.recipient)
        .unwrap_or_else(|e| panic!("{e}"));
    let forged = SealedCredentials {
        signer: f.sealer.signer(),
        ..forged
    };
    assert!(matches!(f.open(&forged), Err(OpenError::BadSignature)));
}

#[test]
fn the_wrong_identity_cannot_decrypt() {
    let f = fixture();
    let sealed = f.seal();
    let stranger = age::x25519::Identity::generate();
    let signer = trusted(&f.sealer.signer());
    let result = open(
        &sealed,
        &stranger,
        &Expected {
            claim_id: &f.bundle.claim_id,
            recipient: &f.recipient,
            expires_at: LEASE_END,
            signer: &signer,
        },
    );
    assert!(
        matches!(result, Err(OpenError::DecryptFailed(_))),
        "{result:?}"
    );
}

#[test]
fn a_bundle_for_another_claim_is_refused() {
    let f = fixture();
    let sealed = f.seal();
    let signer = trusted(&f.sealer.signer());
    let mine = claim("claim-2");
    // The signature binds the claim id: sealed for claim-1, asked as claim-2.
    let result = open(
        &sealed,
        &f.identity,
        &Expected {
            claim_id: &mine,
            recipient: &f.recipient,
            expires_at: LEASE_END,
            signer: &signer,
        },
    );
    assert!(matches!(result, Err(OpenError::BadSignature)), "{result:?}");

    // A trusted but buggy signer signing claim-2 over a bundle of claim-1:
    // the bundle check still catches it.
    let seed = [3u8; 32];
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    let sealed = Sealer::from_seed(seed)
        .seal(&f.bundle, &f.recipient)
        .unwrap_or_else(|e| panic!("{e}"));
    let payload = credentials_signing_payload(&mine, &f.recipient, LEASE_END, &sealed.ciphertext);
    let sealed = SealedCredentials {
        signature: B64.encode(key.sign(&payload).to_bytes()),
        ..sealed
    };
    let trusted = SignerKey::from_base64(&sealed.signer).unwrap_or_else(|e| panic!("{e}"));
    let result = open(
        &sealed,
        &f.identity,
        &Expected {
            claim_id: &mine,
            recipient: &f.recipient,
            expires_at: LEASE_END,
            signer: &trusted,
        },
    );
    assert!(
        matches!(result, Err(OpenError::WrongClaim { .. })),
        "{result:?}"
    );
}

#[test]
fn a_wrong_expiry_is_refused() {
    let f = fixture();
    let sealed = f.seal();
    let signer = trusted(&f.sealer.signer());
    let result = open(
        &sealed,
        &f.identity,
        &Expected {
            claim_id: &f.bundle.claim_id,
            recipient: &f.recipient,
            expires_at: LEASE_END + 1,
            signer: &signer,
        },
    );
    assert!(matches!(result, Err(OpenError::BadSignature)), "{result:?}");
}

#[test]
fn bad_recipients_and_malformed_fields_are_typed() {
    let f = fixture();
    // A plugin recipient (age1<plugin>1…): valid Bech32, but not X25519.
    let plugin = "age1yubikey1qgpsgpgxquyqjzstpsxsurcszyfpx9q4zct3sxg6rvwp68slyqsjyg52myc";
    for bad in [
        "",
        "age1nope",
        "age1notarecipient",
        plugin,
        "ssh-ed25519 AAAA",
        "not a key",
    ] {
        match f.sealer.seal(&f.bundle, bad) {
            Err(e @ SealError::BadRecipient(_)) => assert_eq!(e.kind(), "bad_recipient"),
            other => panic!("recipient {bad:?}: expected BadRecipient, got {other:?}"),
        }
        // The controller refuses the request naming it, before any node.
        assert!(
            fleet_core::protocol::x25519_recipient_key(bad).is_err(),
            "the request check lets {bad:?} through"
        );
    }
    assert!(fleet_core::protocol::x25519_recipient_key(&f.recipient).is_ok());
    let sealed = f.seal();
    let broken = [
        SealedCredentials {
            signature: "!!".to_owned(),
            ..sealed.clone()
        },
        SealedCredentials {
            signer: "short".to_owned(),
            ..sealed.clone()
        },
        SealedCredentials {
            format: "fleet-credentials-v0".to_owned(),
            ..sealed.clone()
        },
        SealedCredentials {
            ciphertext: "x".repeat(1 << 20),
            ..sealed.clone()
        },
    ];
    for b in &broken {
        assert!(
            matches!(f.open(b), Err(OpenError::Malformed(_))),
            "{:?}",
            f.open(b)
        );
    }
}

#[test]
fn the_signing_key_persists_privately() {
    let dir = tempdir();
    let a = Sealer::load_or_create(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    let b = Sealer::load_or_create(dir.path()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(a.signer(), b.signer());
    assert_eq!(mode(&dir.path().join(SEAL_KEY_FILE)), 0o600);
    let public =
        std::fs::read_to_string(dir.path().join(SEAL_PUB_FILE)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        SignerKey::from_base64(&public).unwrap_or_else(|e| panic!("{e}")),
        trusted(&a.signer())
    );
    let seed =
        std::fs::read_to_string(dir.path().join(SEAL_KEY_FILE)).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !format!("{a:?}").contains(seed.trim()),
        "Debug leaks the seed"
    );

    std::fs::write(dir.path().join(SEAL_KEY_FILE), "garbage").unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        Sealer::load_or_create(dir.path()),
        Err(SealError::BadKeyFile { .. })
    ));
}

#[test]
fn recipient_strings_parse_like_age() {
    // The recipient the claimant sends is the age CLI's `age1…` string.
    let id = age::x25519::Identity::generate();
    let r = id.to_public().to_string();
    assert!(r.starts_with("age1"));
    assert!(age::x25519::Recipient::from_str(&r).is_ok());
}

/// The key a claimant pins, from what the sealer publishes.
fn trusted(published: &str) -> SignerKey {
    SignerKey::from_base64(published).unwrap_or_else(|e| panic!("{e}"))
}
