//! Where queue mode keeps its specs: a local (or shared) directory, or an
//! S3 bucket. Both offer the one primitive a claim needs — create an object
//! only if it does not exist — atomically: a hard link in a directory,
//! `If-None-Match: *` on S3 (never copy + delete).

use std::path::{Path, PathBuf};

use async_trait::async_trait;

/// A queue store failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The object is not there.
    #[error("{0} not found")]
    NotFound(String),
    /// Reading or writing failed; trying again may work.
    #[error("{0}")]
    Io(String),
    /// The store refused (credentials, bucket, permissions).
    #[error("{0}")]
    Refused(String),
}

/// Objects by key (`fleet/pending/abc.json`).
#[async_trait]
pub trait ObjectStore: Send + Sync {
    /// Keys under `prefix`, sorted.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError>;
    /// An object's bytes.
    async fn get(&self, key: &str) -> Result<Vec<u8>, StoreError>;
    /// Creates `key` if it does not exist; `false` if it did (someone else
    /// won the claim).
    async fn create(&self, key: &str, body: &[u8]) -> Result<bool, StoreError>;
    /// Writes `key`, replacing it.
    async fn put(&self, key: &str, body: &[u8]) -> Result<(), StoreError>;
    /// Removes `key`; a missing key is not an error.
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
}

/// A directory: keys are relative paths under it (an NFS/EFS mount works
/// for several agents: hard links are atomic there too).
#[derive(Debug, Clone)]
pub struct DirStore {
    root: PathBuf,
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

    /// A temp file beside `path`, written with `body`.
    fn staged(path: &Path, body: &[u8]) -> Result<PathBuf, StoreError> {
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| io(dir, &e))?;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("object");
        let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
        std::fs::write(&tmp, body).map_err(|e| io(&tmp, &e))?;
        Ok(tmp)
    }
}

fn io(path: &Path, e: &std::io::Error) -> StoreError {
    StoreError::Io(format!("{}: {e}", path.display()))
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

    async fn get(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        let path = self.path(key)?;
        std::fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => StoreError::NotFound(key.to_owned()),
            _ => io(&path, &e),
        })
    }

    async fn create(&self, key: &str, body: &[u8]) -> Result<bool, StoreError> {
        let path = self.path(key)?;
        let tmp = Self::staged(&path, body)?;
        // A hard link fails if the name exists: the atomic create-if-absent.
        let result = std::fs::hard_link(&tmp, &path);
        let _ = std::fs::remove_file(&tmp);
        match result {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(io(&path, &e)),
        }
    }

    async fn put(&self, key: &str, body: &[u8]) -> Result<(), StoreError> {
        let path = self.path(key)?;
        let tmp = Self::staged(&path, body)?;
        std::fs::rename(&tmp, &path).map_err(|e| io(&path, &e))
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path(key)?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&path, &e)),
        }
    }
}

/// An S3 bucket, through `aws-sdk-s3` (feature `s3`): the SDK's credential
/// and region chains (see `fleet_aws`), its standard retries; path-style
/// addressing when an endpoint is given (emulators, S3-compatible stores).
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

    use super::{S3Store, StoreError};

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

    async fn get(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| s3::error(&format!("get {key}"), e))?;
        let bytes = out
            .body
            .collect()
            .await
            .map_err(|e| StoreError::Io(format!("S3 get {key}: reading the body: {e}")))?;
        Ok(bytes.into_bytes().to_vec())
    }

    async fn create(&self, key: &str, body: &[u8]) -> Result<bool, StoreError> {
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
            Ok(_) => Ok(true),
            Err(e) => match e.raw_response().map(|r| r.status().as_u16()) {
                // Someone created it first (409: a concurrent conditional write).
                Some(412 | 409) => Ok(false),
                _ => Err(s3::error(&format!("create {key}"), e)),
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
}
