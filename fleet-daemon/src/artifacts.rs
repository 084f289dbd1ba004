//! Job artifacts the agents upload, kept as files under the data dir:
//! `artifacts/<workspace>/<job>/<attempt>/<name>`. A file is written as
//! `<name>.part` and renamed when its last piece arrives, so only whole
//! files are listed and served; a job's files together may not pass
//! `[artifacts] max_job_bytes`. The files of a job's latest attempt that
//! uploaded any are its artifacts.
//!
//! The driver hands pieces over on the task that runs every decision, so
//! [`ArtifactWriter`] only queues them (at most [`QUEUE`] pieces, 256 KiB
//! each); one thread of its own does the file work in arrival order.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use fleet_core::protocol::ArtifactInfo;
use fleet_core::{JobId, Workspace};
use fleet_runtime::{ArtifactPiece, ArtifactSink};
use serde::Deserialize;

const PART: &str = ".part";
/// Pieces waiting for the writer thread at most (64 × 256 KiB = 16 MiB);
/// a piece that does not fit is dropped, and with it that file.
pub const QUEUE: usize = 64;

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
}

impl Artifacts {
    /// Artifacts under `root` (created on the first upload).
    pub fn new(root: PathBuf, cfg: &ArtifactsConfig) -> Artifacts {
        Artifacts {
            root,
            max_job_bytes: cfg.max_job_bytes,
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

impl Artifacts {
    /// Drops every file of `job`.
    pub fn remove(&self, ws: &Workspace, job: &JobId) {
        match std::fs::remove_dir_all(self.job_dir(ws, job)) {
            Ok(()) => tracing::info!(%ws, %job, "artifacts of a forgotten job removed"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(%ws, %job, error = %e, "cannot remove a forgotten job's artifacts")
            }
        }
    }

    /// Writes one piece (pieces of a file come in order from offset 0).
    pub fn store(&self, p: &ArtifactPiece) -> Result<(), String> {
        check_name(&p.name)?;
        let job_dir = self.job_dir(&p.workspace, &p.job);
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
            // A piece lost (the agent reconnected mid-file, or the queue
            // was full): the file is incomplete and is dropped.
            drop(file);
            let _ = std::fs::remove_file(&part);
            return Err(format!(
                "piece at {} of {} but the file has {len} bytes",
                p.offset, p.name
            ));
        }
        file.write_all(&p.bytes)
            .map_err(|e| format!("{}: {e}", part.display()))?;
        if p.last {
            file.sync_all()
                .map_err(|e| format!("{}: {e}", part.display()))?;
            std::fs::rename(&part, dir.join(&p.name))
                .map_err(|e| format!("{}: {e}", part.display()))?;
        }
        Ok(())
    }
}

/// What the writer thread does next.
#[derive(Debug)]
enum Work {
    Piece(ArtifactPiece),
    Forget(Workspace, JobId),
}

/// The daemon's [`ArtifactSink`]: queues the work for one thread that
/// writes into [`Artifacts`].
#[derive(Debug)]
pub struct ArtifactWriter {
    queue: SyncSender<Work>,
}

impl ArtifactWriter {
    /// Starts the writer thread; it ends when the writer is dropped and
    /// the queue is empty.
    pub fn start(store: Arc<Artifacts>) -> std::io::Result<ArtifactWriter> {
        let (queue, rx) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("fleet-artifacts".to_owned())
            .spawn(move || write_all(&store, &rx))?;
        Ok(ArtifactWriter { queue })
    }

    fn send(&self, work: Work) -> Result<(), String> {
        self.queue.try_send(work).map_err(|e| match e {
            TrySendError::Full(_) => format!("the artifact queue is full ({QUEUE} pieces)"),
            TrySendError::Disconnected(_) => "the artifact writer stopped".to_owned(),
        })
    }
}

fn write_all(store: &Artifacts, rx: &Receiver<Work>) {
    while let Ok(work) = rx.recv() {
        match work {
            Work::Piece(p) => {
                if let Err(why) = store.store(&p) {
                    tracing::warn!(job = %p.job, name = %p.name, %why, "artifact not stored");
                }
            }
            Work::Forget(ws, job) => store.remove(&ws, &job),
        }
    }
}

impl ArtifactSink for ArtifactWriter {
    fn piece(&self, piece: ArtifactPiece) -> Result<(), String> {
        self.send(Work::Piece(piece))
    }

    fn forget(&self, ws: &Workspace, job: &JobId) {
        if let Err(why) = self.send(Work::Forget(ws.clone(), job.clone())) {
            tracing::warn!(%ws, %job, %why, "a forgotten job's artifacts are kept");
        }
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    fn piece(attempt: u32, name: &str, offset: u64, bytes: &[u8], last: bool) -> ArtifactPiece {
        ArtifactPiece {
            workspace: Workspace::new("ci").unwrap(),
            job: JobId::new("j1").unwrap(),
            attempt,
            name: name.to_owned(),
            offset,
            bytes: bytes.to_vec(),
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
        a.store(&piece(1, "log.txt", 0, b"hello ", false)).unwrap();
        assert!(a.list(&ws, &job).is_empty(), "a part is not listed");
        assert!(a.file(&ws, &job, "log.txt").is_none());
        a.store(&piece(1, "log.txt", 6, b"world", true)).unwrap();
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
        a.store(&piece(1, "b", 0, b"x", false)).unwrap();
        assert!(a.store(&piece(1, "b", 5, b"y", true)).is_err());
        // Over the job's limit: refused.
        let err = a.store(&piece(1, "big", 0, &[0u8; 10], true)).unwrap_err();
        assert!(err.contains("max_job_bytes"), "{err}");
        // Names that leave the directory, or hide as parts, are refused.
        for name in ["../x", "a/b", "..", "", "x.part"] {
            assert!(a.store(&piece(1, name, 0, b"", true)).is_err(), "{name:?}");
            assert!(a.file(&ws, &job, name).is_none());
        }
        // A later attempt's files are the job's artifacts.
        a.store(&piece(2, "out", 0, b"2", true)).unwrap();
        let names: Vec<_> = a
            .list(&ws, &job)
            .into_iter()
            .map(|i| (i.name, i.attempt))
            .collect();
        assert_eq!(names, [("out".to_owned(), 2)]);
        // A forgotten job's files go, all attempts.
        a.remove(&ws, &job);
        assert!(a.list(&ws, &job).is_empty());
        assert!(!dir.path().join("artifacts/ci/j1").exists());
        a.remove(&ws, &job);
    }

    #[test]
    fn the_writer_thread_stores_and_forgets_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Artifacts::new(
            dir.path().join("artifacts"),
            &ArtifactsConfig::default(),
        ));
        let writer = ArtifactWriter::start(store.clone()).unwrap();
        let ws = Workspace::new("ci").unwrap();
        let job = JobId::new("j1").unwrap();
        writer.piece(piece(1, "log", 0, b"a", false)).unwrap();
        writer.piece(piece(1, "log", 1, b"b", true)).unwrap();
        writer.forget(&ws, &job);
        writer.piece(piece(2, "next", 0, b"c", true)).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while store.file(&ws, &job, "next").is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "the writer did nothing"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        // The forget came between: the first attempt's file is gone.
        let names: Vec<_> = store.list(&ws, &job).into_iter().map(|i| i.name).collect();
        assert_eq!(names, ["next"]);
        assert!(!dir.path().join("artifacts/ci/j1/1").exists());
    }
}
