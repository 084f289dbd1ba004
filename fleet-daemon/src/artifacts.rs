//! Job artifacts the agents upload, kept as files under the data dir:
//! `artifacts/<workspace>/<job>/<attempt>/<name>`. A file is written as
//! `<name>.part` and renamed when its last piece arrives, so only whole
//! files are listed and served; a job's files together may not pass
//! `[artifacts] max_job_bytes`. The files of a job's latest attempt that
//! uploaded any are its artifacts.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use fleet_core::protocol::ArtifactInfo;
use fleet_core::{JobId, Workspace};
use fleet_runtime::{ArtifactPiece, ArtifactSink};
use serde::Deserialize;

const PART: &str = ".part";

/// `[artifacts]` of daemon.toml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactsConfig {
    /// The most bytes one job's artifacts may take; a file that would pass
    /// it is not kept.
    #[serde(default = "default_max_job_bytes")]
    pub max_job_bytes: u64,
}

fn default_max_job_bytes() -> u64 {
    256 * 1024 * 1024
}

impl Default for ArtifactsConfig {
    fn default() -> Self {
        ArtifactsConfig {
            max_job_bytes: default_max_job_bytes(),
        }
    }
}

/// The artifact files of a daemon.
#[derive(Debug)]
pub struct Artifacts {
    root: PathBuf,
    max_job_bytes: u64,
    /// Pieces are written one at a time (the driver's task calls in order;
    /// the lock keeps the size check and the write together).
    write: Mutex<()>,
}

impl Artifacts {
    /// Artifacts under `root` (created on the first upload).
    pub fn new(root: PathBuf, cfg: &ArtifactsConfig) -> Artifacts {
        Artifacts {
            root,
            max_job_bytes: cfg.max_job_bytes,
            write: Mutex::new(()),
        }
    }

    fn job_dir(&self, ws: &Workspace, job: &JobId) -> PathBuf {
        // Workspace and job ids are tokens: no separators, no `..`.
        self.root.join(ws.as_str()).join(job.as_str())
    }

    /// The directory of the latest attempt of `job` that uploaded anything.
    fn latest(&self, ws: &Workspace, job: &JobId) -> Option<(u32, PathBuf)> {
        let dir = self.job_dir(ws, job);
        std::fs::read_dir(&dir)
            .ok()?
            .filter_map(Result::ok)
            .filter_map(|e| Some((e.file_name().to_str()?.parse::<u32>().ok()?, e.path())))
            .max_by_key(|(attempt, _)| *attempt)
    }

    /// The whole files of `job`'s latest attempt, by name.
    pub fn list(&self, ws: &Workspace, job: &JobId) -> Vec<ArtifactInfo> {
        let Some((attempt, dir)) = self.latest(ws, job) else {
            return Vec::new();
        };
        let mut out: Vec<ArtifactInfo> = std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter_map(|e| {
                        let name = e.file_name().to_str()?.to_owned();
                        let meta = e.metadata().ok()?;
                        let whole = meta.is_file() && !name.ends_with(PART);
                        whole.then_some(ArtifactInfo {
                            name,
                            size_bytes: meta.len(),
                            attempt,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// The path of one whole artifact file, if there is one by that name.
    pub fn file(&self, ws: &Workspace, job: &JobId, name: &str) -> Option<PathBuf> {
        check_name(name).ok()?;
        let (_, dir) = self.latest(ws, job)?;
        let path = dir.join(name);
        path.is_file().then_some(path)
    }

    fn job_bytes(&self, dir: &Path) -> u64 {
        walk_size(dir)
    }
}

fn walk_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => walk_size(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

/// A name the agent may give a file: one path component, no `..`, no
/// hidden upload suffix.
fn check_name(name: &str) -> Result<(), String> {
    let bad = name.is_empty()
        || name.len() > 255
        || name == "."
        || name == ".."
        || name.ends_with(PART)
        || name.contains(['/', '\\', '\0']);
    if bad {
        Err(format!("{name:?} is not a file name an artifact may have"))
    } else {
        Ok(())
    }
}

impl ArtifactSink for Artifacts {
    fn forget(&self, ws: &Workspace, job: &JobId) {
        let dir = self.job_dir(ws, job);
        let _one = self.write.lock().unwrap_or_else(|e| e.into_inner());
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => tracing::info!(%ws, %job, "artifacts of a forgotten job removed"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(%ws, %job, error = %e, "cannot remove a forgotten job's artifacts")
            }
        }
    }

    fn piece(&self, p: &ArtifactPiece<'_>) -> Result<(), String> {
        check_name(p.name)?;
        let _one = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let job_dir = self.job_dir(p.workspace, p.job);
        let dir = job_dir.join(p.attempt.to_string());
        let part = dir.join(format!("{}{PART}", p.name));
        let used = self.job_bytes(&job_dir);
        if used.saturating_add(p.bytes.len() as u64) > self.max_job_bytes {
            let _ = std::fs::remove_file(&part);
            return Err(format!(
                "the job's artifacts would pass max_job_bytes ({})",
                self.max_job_bytes
            ));
        }
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut file = if p.offset == 0 {
            std::fs::File::create(&part)
        } else {
            std::fs::OpenOptions::new().append(true).open(&part)
        }
        .map_err(|e| format!("{}: {e}", part.display()))?;
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        if len != p.offset {
            // A piece lost (the agent reconnected mid-file): the file is
            // incomplete and is dropped.
            drop(file);
            let _ = std::fs::remove_file(&part);
            return Err(format!(
                "piece at {} of {} but the file has {len} bytes",
                p.offset, p.name
            ));
        }
        file.write_all(p.bytes)
            .map_err(|e| format!("{}: {e}", part.display()))?;
        if p.last {
            file.sync_all()
                .map_err(|e| format!("{}: {e}", part.display()))?;
            std::fs::rename(&part, dir.join(p.name))
                .map_err(|e| format!("{}: {e}", part.display()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    fn piece<'a>(
        ws: &'a Workspace,
        job: &'a JobId,
        attempt: u32,
        name: &'a str,
        offset: u64,
        bytes: &'a [u8],
        last: bool,
    ) -> ArtifactPiece<'a> {
        ArtifactPiece {
            workspace: ws,
            job,
            attempt,
            name,
            offset,
            bytes,
            last,
        }
    }

    #[test]
    fn whole_files_of_the_latest_attempt_within_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let a = Artifacts::new(
            dir.path().join("artifacts"),
            &ArtifactsConfig { max_job_bytes: 20 },
        );
        let ws = Workspace::new("ci").unwrap();
        let job = JobId::new("j1").unwrap();
        a.piece(&piece(&ws, &job, 1, "log.txt", 0, b"hello ", false))
            .unwrap();
        assert!(a.list(&ws, &job).is_empty(), "a part is not listed");
        assert!(a.file(&ws, &job, "log.txt").is_none());
        a.piece(&piece(&ws, &job, 1, "log.txt", 6, b"world", true))
            .unwrap();
        let listed = a.list(&ws, &job);
        assert_eq!(listed.len(), 1);
        assert_eq!(
            (
                listed[0].name.as_str(),
                listed[0].size_bytes,
                listed[0].attempt
            ),
            ("log.txt", 11, 1)
        );
        let path = a.file(&ws, &job, "log.txt").unwrap();
        assert_eq!(std::fs::read(path).unwrap(), b"hello world");

        // Out of order: refused, the part dropped.
        a.piece(&piece(&ws, &job, 1, "b", 0, b"x", false)).unwrap();
        assert!(a.piece(&piece(&ws, &job, 1, "b", 5, b"y", true)).is_err());
        // Over the job's limit: refused.
        let err = a
            .piece(&piece(&ws, &job, 1, "big", 0, &[0u8; 10], true))
            .unwrap_err();
        assert!(err.contains("max_job_bytes"), "{err}");
        // Names that leave the directory, or hide as parts, are refused.
        for name in ["../x", "a/b", "..", "", "x.part"] {
            assert!(
                a.piece(&piece(&ws, &job, 1, name, 0, b"", true)).is_err(),
                "{name:?}"
            );
            assert!(a.file(&ws, &job, name).is_none());
        }
        // A later attempt's files are the job's artifacts.
        a.piece(&piece(&ws, &job, 2, "out", 0, b"2", true)).unwrap();
        let names: Vec<_> = a
            .list(&ws, &job)
            .into_iter()
            .map(|i| (i.name, i.attempt))
            .collect();
        assert_eq!(names, [("out".to_owned(), 2)]);
        // A forgotten job's files go, all attempts.
        a.forget(&ws, &job);
        assert!(a.list(&ws, &job).is_empty());
        assert!(!dir.path().join("artifacts/ci/j1").exists());
        a.forget(&ws, &job);
    }
}
