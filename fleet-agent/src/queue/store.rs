//! Where queue mode keeps its specs: a local (or shared) directory, or an
//! S3 bucket. Both offer the one primitive a claim needs — create an object
//! only if it does not exist — atomically: a hard link in a directory,
//! `If-None-Match: *` on S3 (never copy + delete).

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use fleet_http::sigv4::{self, AwsCredentials};
use fleet_http::{HttpClient, HttpError, xml};

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

/// An S3 bucket, path-style (`<endpoint>/<bucket>/<key>`), SigV4-signed.
#[derive(Debug)]
pub struct S3Store {
    http: HttpClient,
    bucket: String,
    region: String,
    credentials: AwsCredentials,
}

impl S3Store {
    /// `bucket` at `endpoint` (`https://s3.<region>.amazonaws.com`, or an
    /// emulator's address) in `region`.
    pub fn new(
        endpoint: &str,
        bucket: &str,
        region: &str,
        credentials: AwsCredentials,
    ) -> Result<S3Store, StoreError> {
        let http = HttpClient::new(endpoint, std::time::Duration::from_secs(30))
            .map_err(|e| StoreError::Refused(format!("S3 endpoint: {e}")))?;
        Ok(S3Store {
            http,
            bucket: bucket.to_owned(),
            region: region.to_owned(),
            credentials,
        })
    }

    /// One signed request; the answer. `query` is already canonical.
    async fn call(
        &self,
        method: &str,
        key: &str,
        query: &str,
        extra: &[(&str, String)],
        body: Option<&[u8]>,
    ) -> Result<fleet_http::Answer, StoreError> {
        let creds = self.credentials.get().await.map_err(StoreError::Refused)?;
        let path = if key.is_empty() {
            format!(
                "{}/{}",
                self.http.prefix(),
                sigv4::uri_encode(&self.bucket, false)
            )
        } else {
            format!(
                "{}/{}/{}",
                self.http.prefix(),
                sigv4::uri_encode(&self.bucket, false),
                sigv4::uri_encode(key, true)
            )
        };
        let body = body.unwrap_or_default();
        let mut headers: Vec<(&str, String)> = extra.to_vec();
        headers.push(("x-amz-content-sha256", sigv4::payload_hash(body)));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0));
        let amz_date = sigv4::amz_date(now);
        let host = self.http.host_header();
        let signed = sigv4::sign(
            &sigv4::Request {
                method,
                host: &host,
                path: &path,
                query,
                headers: &headers,
                body,
                amz_date: &amz_date,
                region: &self.region,
                service: "s3",
            },
            &creds,
        );
        headers.extend(signed);
        let target = if query.is_empty() {
            path.clone()
        } else {
            format!("{path}?{query}")
        };
        // `send` puts the endpoint's own path first; `path` already has it.
        let target = target
            .strip_prefix(self.http.prefix())
            .unwrap_or(&target)
            .to_owned();
        self.http
            .send(
                method,
                &target,
                &headers,
                (!body.is_empty()).then(|| body.to_vec()),
            )
            .await
            .map_err(|e| match e {
                HttpError::Invalid(why) => StoreError::Refused(why),
                other => StoreError::Io(format!("S3 {method} {key}: {other}")),
            })
    }

    fn error(&self, what: &str, a: &fleet_http::Answer) -> StoreError {
        let code = xml::parse(&a.body)
            .ok()
            .and_then(|r| r.text_at("Code").map(str::to_owned))
            .unwrap_or_default();
        let text = format!("S3 {what}: HTTP {} {code}", a.status);
        match a.status {
            404 => StoreError::NotFound(text),
            s if s >= 500 || code == "SlowDown" => StoreError::Io(text),
            _ => StoreError::Refused(text),
        }
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            // Canonical order: parameters sorted by name.
            let mut query = String::new();
            if let Some(t) = &token {
                query.push_str(&format!(
                    "continuation-token={}&",
                    sigv4::uri_encode(t, false)
                ));
            }
            query.push_str(&format!(
                "list-type=2&prefix={}",
                sigv4::uri_encode(prefix, false)
            ));
            let a = self.call("GET", "", &query, &[], None).await?;
            if !a.is_success() {
                return Err(self.error(&format!("list {prefix}"), &a));
            }
            let root = xml::parse(&a.body).map_err(|e| StoreError::Io(format!("S3 list: {e}")))?;
            keys.extend(
                root.children
                    .iter()
                    .filter(|c| c.name == "Contents")
                    .filter_map(|c| c.text_at("Key").map(str::to_owned)),
            );
            match root
                .text_at("NextContinuationToken")
                .filter(|t| !t.is_empty())
            {
                Some(t) if root.text_at("IsTruncated") == Some("true") => {
                    token = Some(t.to_owned())
                }
                _ => break,
            }
        }
        keys.sort();
        Ok(keys)
    }

    async fn get(&self, key: &str) -> Result<Vec<u8>, StoreError> {
        let a = self.call("GET", key, "", &[], None).await?;
        if a.is_success() {
            Ok(a.body.to_vec())
        } else {
            Err(self.error(&format!("get {key}"), &a))
        }
    }

    async fn create(&self, key: &str, body: &[u8]) -> Result<bool, StoreError> {
        let a = self
            .call(
                "PUT",
                key,
                "",
                &[("if-none-match", "*".to_owned())],
                Some(body),
            )
            .await?;
        match a.status {
            s if (200..300).contains(&s) => Ok(true),
            // Someone created it first (409: a concurrent conditional write).
            412 | 409 => Ok(false),
            _ => Err(self.error(&format!("create {key}"), &a)),
        }
    }

    async fn put(&self, key: &str, body: &[u8]) -> Result<(), StoreError> {
        let a = self.call("PUT", key, "", &[], Some(body)).await?;
        if a.is_success() {
            Ok(())
        } else {
            Err(self.error(&format!("put {key}"), &a))
        }
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let a = self.call("DELETE", key, "", &[], None).await?;
        if a.is_success() || a.status == 404 {
            Ok(())
        } else {
            Err(self.error(&format!("delete {key}"), &a))
        }
    }
}
