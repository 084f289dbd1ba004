//! Where queue mode keeps its specs: a local (or shared) directory, or an
//! S3 bucket. Both offer, atomically, the two primitives leases rest on:
//! create an object only if it is absent, and replace (or delete) it only
//! if it is still the version the caller read — S3 `If-None-Match: *` and
//! `If-Match: <ETag>`; in a directory a hard link, and a compare-and-swap
//! under a lock (see [`DirStore`]). Never copy + delete.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sha2::{Digest, Sha256};

/// A queue store failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The object is not there.
    #[error("{0} not found")]
    NotFound(String),
    /// The object is larger than the caller reads; it was not read.
    #[error("{key} is {len} bytes; the limit is {max}")]
    TooLarge {
        /// The object.
        key: String,
        /// Its size.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// Reading or writing failed; trying again may work.
    #[error("{0}")]
    Io(String),
    /// The store refused (credentials, bucket, permissions).
    #[error("{0}")]
    Refused(String),
}

impl StoreError {
    /// A short stable name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::NotFound(_) => "not_found",
            StoreError::TooLarge { .. } => "too_large",
            StoreError::Io(_) => "io",
            StoreError::Refused(_) => "refused",
        }
    }

    /// Whether trying again may work.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Io(_))
    }
}

/// An object's version as its store names it — the ETag on S3, a SHA-256
/// of the content in a directory — to hand back to a conditional write.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Version(String);

impl Version {
    /// A version as the store wrote it.
    pub fn new(v: impl Into<String>) -> Version {
        Version(v.into())
    }

    /// As the store wrote it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An object's bytes and the version they were read at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    /// The content.
    pub body: Vec<u8>,
    /// Its version.
    pub version: Version,
}

/// Objects by key (`fleet/pending/abc.json`).
#[async_trait]
pub trait ObjectStore: Send + Sync {
    /// Keys under `prefix`, sorted.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError>;
    /// An object and its version; [`StoreError::TooLarge`] (unread) when it
    /// is over `max` bytes.
    async fn get(&self, key: &str, max: usize) -> Result<Object, StoreError>;
    /// Creates `key` if it does not exist: its version, or `None` if it
    /// existed (someone else won the claim).
    async fn create(&self, key: &str, body: &[u8]) -> Result<Option<Version>, StoreError>;
    /// Replaces `key` if it is still at `expected`: the new version, or
    /// `None` if it changed or is gone.
    async fn replace(
        &self,
        key: &str,
        body: &[u8],
        expected: &Version,
    ) -> Result<Option<Version>, StoreError>;
    /// Writes `key`, replacing it whatever its version (a submitter's
    /// write; queue mode itself only creates and replaces).
    async fn put(&self, key: &str, body: &[u8]) -> Result<(), StoreError>;
    /// Removes `key`; a missing key is not an error.
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
    /// Removes `key` if it is still at `expected`; `false` if it changed or
    /// is gone.
    async fn delete_if(&self, key: &str, expected: &Version) -> Result<bool, StoreError>;
}

/// A directory: keys are relative paths under it.
///
/// Create-if-absent is `link(2)` of a fully written temp file to the name,
/// which fails if the name exists. A conditional replace or delete holds an
/// exclusive `flock(2)` on `.lock` in the object's directory while it reads
/// the object, compares its SHA-256 with the expected version and — only if
/// equal — renames a fully written temp file over it (or unlinks it).
///
/// Why this is safe across processes: every conditional write to a
/// directory runs under the same exclusive lock, so no two interleave
/// between their check and their write; a create can only succeed on an
/// absent name, which no conditional write can match. Readers take no lock
/// and still never see half an object, because every write is a rename or
/// link of a complete file, atomic in POSIX. The kernel drops a lock when
/// its holder dies (`kill -9` included), so a crash never leaves the
/// directory locked; a holder that is stopped keeps it, and the others give
/// up after [`LOCK_WAIT`] with a retryable error instead of hanging. The
/// version is the content's hash, and every queue record written differs
/// (a lease carries its holder, fencing number and renewal time), so a
/// version names one write. Several agents on one filesystem — local, or a
/// mount with working `link(2)`, `rename(2)` and `flock(2)` (Linux NFSv4,
/// EFS) — are safe.
#[derive(Debug, Clone)]
pub struct DirStore {
    root: PathBuf,
}

/// How long a conditional write waits for another process's lock (held
/// for one small read and write) before reporting a retryable error.
pub const LOCK_WAIT: Duration = Duration::from_secs(5);

/// Temp files of this process get distinct names.
static STAGED: AtomicU64 = AtomicU64::new(0);

fn io(path: &Path, e: &std::io::Error) -> StoreError {
    StoreError::Io(format!("{}: {e}", path.display()))
}

fn hash(body: &[u8]) -> Version {
    let digest = Sha256::digest(body);
    Version(digest.iter().map(|b| format!("{b:02x}")).collect())
}

impl DirStore {
    /// Objects under `root` (created if missing).
    pub fn new(root: impl Into<PathBuf>) -> DirStore {
        DirStore { root: root.into() }
    }

    fn path(&self, key: &str) -> Result<PathBuf, StoreError> {
        if key
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..")
        {
            return Err(StoreError::Refused(format!(
                "key {key:?} is not a plain path"
            )));
        }
        Ok(self.root.join(key))
    }

    /// Runs the blocking `f` off the async threads.
    async fn blocking<T, F>(f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T, StoreError> + Send + 'static,
    {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| StoreError::Io(format!("store task: {e}")))?
    }
}

/// A temp file beside `path`, written with `body`.
fn staged(path: &Path, body: &[u8]) -> Result<PathBuf, StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| io(dir, &e))?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("object");
    let n = STAGED.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
    std::fs::write(&tmp, body).map_err(|e| io(&tmp, &e))?;
    Ok(tmp)
}

/// The object at `path`, unless larger than `max`.
fn read(key: &str, path: &Path, max: usize) -> Result<Object, StoreError> {
    let file = std::fs::File::open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => StoreError::NotFound(key.to_owned()),
        _ => io(path, &e),
    })?;
    let mut body = Vec::new();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    file.take(limit)
        .read_to_end(&mut body)
        .map_err(|e| io(path, &e))?;
    if body.len() > max {
        let len = std::fs::metadata(path).map_or(limit, |m| m.len());
        return Err(StoreError::TooLarge {
            key: key.to_owned(),
            len,
            max,
        });
    }
    let version = hash(&body);
    Ok(Object { body, version })
}

/// Runs `f` holding the exclusive lock of `path`'s directory.
fn locked<T>(path: &Path, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| io(dir, &e))?;
    let lock_path = dir.join(".lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| io(&lock_path, &e))?;
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match lock.try_lock() {
            Ok(()) => break,
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StoreError::Io(format!(
                    "{}: still held by another process after {LOCK_WAIT:?}",
                    lock_path.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(&lock_path, &e)),
        }
    }
    // Closing the file (at the end of this function) releases the lock.
    f()
}

/// The version at `path` now, `None` if absent (under the lock).
fn current(key: &str, path: &Path) -> Result<Option<Version>, StoreError> {
    match read(key, path, usize::MAX) {
        Ok(o) => Ok(Some(o.version)),
        Err(StoreError::NotFound(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

#[async_trait]
impl ObjectStore for DirStore {
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let dir = self.root.join(prefix.trim_end_matches('/'));
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&dir, &e)),
        };
        let mut keys: Vec<String> = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.'))
            .map(|n| format!("{}/{n}", prefix.trim_end_matches('/')))
            .collect();
        keys.sort();
        Ok(keys)
    }

    async fn get(&self, key: &str, max: usize) -> Result<Object, StoreError> {
        let path = self.path(key)?;
        let key = key.to_owned();
        Self::blocking(move || read(&key, &path, max)).await
    }

    async fn create(&self, key: &str, body: &[u8]) -> Result<Option<Version>, StoreError> {
        let path = self.path(key)?;
        let body = body.to_vec();
        Self::blocking(move || {
            let tmp = staged(&path, &body)?;
            // A hard link fails if the name exists: the atomic create-if-absent.
            let result = std::fs::hard_link(&tmp, &path);
            let _ = std::fs::remove_file(&tmp);
            match result {
                Ok(()) => Ok(Some(hash(&body))),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(None),
                Err(e) => Err(io(&path, &e)),
            }
        })
        .await
    }

    async fn replace(
        &self,
        key: &str,
        body: &[u8],
        expected: &Version,
    ) -> Result<Option<Version>, StoreError> {
        let path = self.path(key)?;
        let (key, body, expected) = (key.to_owned(), body.to_vec(), expected.clone());
        Self::blocking(move || {
            locked(&path, || {
                if current(&key, &path)?.as_ref() != Some(&expected) {
                    return Ok(None);
                }
                let tmp = staged(&path, &body)?;
                match std::fs::rename(&tmp, &path) {
                    Ok(()) => Ok(Some(hash(&body))),
                    Err(e) => {
                        let _ = std::fs::remove_file(&tmp);
                        Err(io(&path, &e))
                    }
                }
            })
        })
        .await
    }

    async fn put(&self, key: &str, body: &[u8]) -> Result<(), StoreError> {
        let path = self.path(key)?;
        let body = body.to_vec();
        Self::blocking(move || {
            let tmp = staged(&path, &body)?;
            std::fs::rename(&tmp, &path).map_err(|e| io(&path, &e))
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path(key)?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&path, &e)),
        }
    }

    async fn delete_if(&self, key: &str, expected: &Version) -> Result<bool, StoreError> {
        let path = self.path(key)?;
        let (key, expected) = (key.to_owned(), expected.clone());
        Self::blocking(move || {
            locked(&path, || {
                if current(&key, &path)?.as_ref() != Some(&expected) {
                    return Ok(false);
                }
                match std::fs::remove_file(&path) {
                    Ok(()) => Ok(true),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                    Err(e) => Err(io(&path, &e)),
                }
            })
        })
        .await
    }
}

/// An S3 bucket, through `aws-sdk-s3` (feature `s3`): the SDK's credential
/// and region chains (see `fleet_aws`), its standard retries; path-style
/// addressing when an endpoint is given (emulators, S3-compatible stores).
/// Conditional writes are S3's own: `If-None-Match: *` and `If-Match` on
/// `PutObject`, `If-Match` on `DeleteObject`; a store that ignores these
/// headers cannot hold leases safely.
#[cfg(feature = "s3")]
#[derive(Debug, Clone)]
pub struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
}

#[cfg(feature = "s3")]
mod s3 {
    use aws_sdk_s3::config::http::HttpResponse;
    use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
    use aws_sdk_s3::primitives::ByteStream;

    use super::{S3Store, StoreError, Version};

    /// An SDK error as a store error: 404 is `NotFound`; throttling,
    /// 5xx and transport trouble are `Io` (worth another try); the rest
    /// (credentials, permissions, the bucket) is `Refused`.
    pub(super) fn error<E>(what: &str, e: SdkError<E, HttpResponse>) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let status = e.raw_response().map(|r| r.status().as_u16());
        let code = e.code().unwrap_or_default().to_owned();
        let text = format!(
            "S3 {what}: {}{}",
            status.map(|s| format!("HTTP {s} ")).unwrap_or_default(),
            fleet_core::provider::error_chain(&e)
        );
        match (&e, status) {
            (_, Some(404)) => StoreError::NotFound(text),
            (SdkError::ServiceError(_), Some(s)) if s < 500 && code != "SlowDown" => {
                StoreError::Refused(text)
            }
            (SdkError::ConstructionFailure(_), _) => StoreError::Refused(text),
            (SdkError::DispatchFailure(d), _) if d.is_user() || d.is_other() => {
                StoreError::Refused(text)
            }
            _ => StoreError::Io(text),
        }
    }

    /// The status of a failed call, if the service answered.
    pub(super) fn status<E>(e: &SdkError<E, HttpResponse>) -> Option<u16> {
        e.raw_response().map(|r| r.status().as_u16())
    }

    /// The ETag a write or read returned.
    pub(super) fn etag(what: &str, key: &str, etag: Option<&str>) -> Result<Version, StoreError> {
        etag.filter(|t| !t.is_empty())
            .map(Version::new)
            .ok_or_else(|| StoreError::Io(format!("S3 {what} {key}: the answer has no ETag")))
    }

    impl S3Store {
        /// `bucket`, reached as `settings` say.
        pub async fn new(settings: &fleet_aws::AwsSettings, bucket: &str) -> S3Store {
            let sdk = fleet_aws::load(settings).await;
            let conf = aws_sdk_s3::config::Builder::from(&sdk)
                .force_path_style(settings.endpoint.is_some())
                .build();
            S3Store {
                client: aws_sdk_s3::Client::from_conf(conf),
                bucket: bucket.to_owned(),
            }
        }

        pub(super) fn body(body: &[u8]) -> ByteStream {
            ByteStream::from(body.to_vec())
        }
    }
}

#[cfg(feature = "s3")]
#[async_trait]
impl ObjectStore for S3Store {
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let pages: Vec<_> = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .into_paginator()
            .send()
            .collect::<Result<Vec<_>, _>>()
            .await
            .map_err(|e| s3::error(&format!("list {prefix}"), e))?;
        let mut keys: Vec<String> = pages
            .iter()
            .flat_map(|p| p.contents())
            .filter_map(|o| o.key().map(str::to_owned))
            .collect();
        keys.sort();
        Ok(keys)
    }

    async fn get(&self, key: &str, max: usize) -> Result<Object, StoreError> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| s3::error(&format!("get {key}"), e))?;
        let len = u64::try_from(out.content_length().unwrap_or(0)).unwrap_or(0);
        if len > u64::try_from(max).unwrap_or(u64::MAX) {
            return Err(StoreError::TooLarge {
                key: key.to_owned(),
                len,
                max,
            });
        }
        let version = s3::etag("get", key, out.e_tag())?;
        let bytes = out
            .body
            .collect()
            .await
            .map_err(|e| StoreError::Io(format!("S3 get {key}: reading the body: {e}")))?;
        Ok(Object {
            body: bytes.into_bytes().to_vec(),
            version,
        })
    }

    async fn create(&self, key: &str, body: &[u8]) -> Result<Option<Version>, StoreError> {
        let sent = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .if_none_match("*")
            .body(S3Store::body(body))
            .send()
            .await;
        match sent {
            Ok(out) => s3::etag("create", key, out.e_tag()).map(Some),
            Err(e) => match s3::status(&e) {
                // Someone created it first (409: a concurrent conditional write).
                Some(412 | 409) => Ok(None),
                _ => Err(s3::error(&format!("create {key}"), e)),
            },
        }
    }

    async fn replace(
        &self,
        key: &str,
        body: &[u8],
        expected: &Version,
    ) -> Result<Option<Version>, StoreError> {
        let sent = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .if_match(expected.as_str())
            .body(S3Store::body(body))
            .send()
            .await;
        match sent {
            Ok(out) => s3::etag("replace", key, out.e_tag()).map(Some),
            Err(e) => match s3::status(&e) {
                // Another version (412) or none (404).
                Some(412 | 404) => Ok(None),
                // 409: a concurrent write to the key; S3 says to read the
                // ETag again and retry, which the caller's next turn does.
                _ => Err(s3::error(&format!("replace {key}"), e)),
            },
        }
    }

    async fn put(&self, key: &str, body: &[u8]) -> Result<(), StoreError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(S3Store::body(body))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| s3::error(&format!("put {key}"), e))
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| s3::error(&format!("delete {key}"), e))
        {
            Ok(_) | Err(StoreError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn delete_if(&self, key: &str, expected: &Version) -> Result<bool, StoreError> {
        let sent = self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .if_match(expected.as_str())
            .send()
            .await;
        match sent {
            Ok(_) => Ok(true),
            Err(e) => match s3::status(&e) {
                Some(412 | 404) => Ok(false),
                _ => Err(s3::error(&format!("delete {key}"), e)),
            },
        }
    }
}
