//! The committed seed corpus: `corpus/<target>/*`, one input per file.

use std::io;
use std::path::{Path, PathBuf};

/// The corpus shipped with this crate.
pub fn default_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus")
}

/// Where panicking inputs are written by default.
pub fn default_crash_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("crashes")
}

/// Every file of `dir/<target>/`, in name order (so a seed names the same
/// run on every machine).
pub fn load(dir: &Path, target: &str) -> io::Result<Vec<Vec<u8>>> {
    let dir = dir.join(target);
    let mut paths = std::fs::read_dir(&dir)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?
        .map(|e| e.map(|e| e.path()))
        .collect::<io::Result<Vec<_>>>()?;
    paths.retain(|p| p.is_file());
    paths.sort();
    paths.iter().map(std::fs::read).collect()
}
