//! The node's mTLS identity on disk: `node.crt`, `node.key` (mode 0600) and
//! `ca.crt` in `identity_dir` (mode 0700), written once the daemon issues
//! them after bootstrap and read at every start.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use fleet_core::protocol::{NodeIdentity, Secret};

const CERT: &str = "node.crt";
const KEY: &str = "node.key";
const CA: &str = "ca.crt";

/// Reads the identity, if all three files are there.
pub fn load(dir: &Path) -> std::io::Result<Option<NodeIdentity>> {
    let read = |name: &str| match std::fs::read_to_string(dir.join(name)) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    };
    match (read(CERT)?, read(KEY)?, read(CA)?) {
        (Some(cert_pem), Some(key), Some(ca_pem)) => Ok(Some(NodeIdentity {
            cert_pem,
            key_pem: Secret::new(key),
            ca_pem,
        })),
        _ => Ok(None),
    }
}

/// Writes the identity; the key is created with mode 0600.
pub fn save(dir: &Path, id: &NodeIdentity) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let write = |name: &str, data: &str, mode: u32| -> std::io::Result<()> {
        let tmp = dir.join(format!("{name}.tmp"));
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(name))
    };
    write(KEY, id.key_pem.expose(), 0o600)?;
    write(CERT, &id.cert_pem, 0o644)?;
    write(CA, &id.ca_pem, 0o644)
}
