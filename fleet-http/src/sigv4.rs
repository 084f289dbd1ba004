//! AWS Signature Version 4 (the EC2 Query API's form posts, S3's object
//! requests).

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The access key, secret and (for temporary credentials) session token.
#[derive(Clone)]
pub struct Credentials {
    /// `AKIA…`/`ASIA…`.
    pub access_key_id: String,
    /// The secret (never logged).
    pub secret_access_key: String,
    /// The session token of temporary credentials.
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC takes keys of any length: this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// Where the provider gets the credentials it signs with.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum CredentialSource {
    /// Fixed keys (an IAM user's, or temporary ones with a session token).
    Static(Credentials),
    /// The IAM role of the EC2 instance the daemon runs on, from the
    /// instance metadata service (IMDSv2), refreshed before they expire.
    InstanceRole {
        /// The metadata service (`http://169.254.169.254`).
        imds_url: String,
    },
}

impl CredentialSource {
    /// The instance role through the usual metadata address.
    pub fn instance_role() -> CredentialSource {
        CredentialSource::InstanceRole {
            imds_url: "http://169.254.169.254".to_owned(),
        }
    }
}

impl From<Credentials> for CredentialSource {
    fn from(c: Credentials) -> CredentialSource {
        CredentialSource::Static(c)
    }
}

/// Credentials from a [`CredentialSource`], the instance role's cached
/// until five minutes before they expire.
#[derive(Debug)]
pub struct AwsCredentials {
    source: CredentialSource,
    cached: tokio::sync::Mutex<Option<(Credentials, u64)>>,
}

/// Instance-role credentials are refreshed this long before they expire.
const REFRESH_BEFORE_MS: u64 = 5 * 60 * 1_000;

impl AwsCredentials {
    /// Credentials from `source`.
    pub fn new(source: CredentialSource) -> AwsCredentials {
        AwsCredentials {
            source,
            cached: tokio::sync::Mutex::new(None),
        }
    }

    /// The credentials to sign with now; why there are none otherwise.
    pub async fn get(&self) -> Result<Credentials, String> {
        let imds_url = match &self.source {
            CredentialSource::Static(c) => return Ok(c.clone()),
            CredentialSource::InstanceRole { imds_url } => imds_url,
        };
        let mut cached = self.cached.lock().await;
        if let Some((c, expires)) = cached.as_ref()
            && now_ms().saturating_add(REFRESH_BEFORE_MS) < *expires
        {
            return Ok(c.clone());
        }
        let (creds, expires) = fetch_role_credentials(imds_url).await?;
        *cached = Some((creds.clone(), expires));
        Ok(creds)
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The metadata service's answer for a role.
#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RoleCredentials {
    access_key_id: String,
    secret_access_key: String,
    token: String,
    expiration: String,
}

/// Fetches the instance role's credentials through IMDSv2: a session token,
/// the role's name, then its keys.
async fn fetch_role_credentials(imds_url: &str) -> Result<(Credentials, u64), String> {
    let fail = |why: String| {
        format!(
            "no AWS credentials: none configured, and the instance role is not available ({why}); \
             set access keys or run on EC2 with an instance profile"
        )
    };
    let imds = crate::HttpClient::new(imds_url, std::time::Duration::from_secs(3))
        .map_err(|e| format!("imds_url: {e}"))?;
    let text = |a: crate::Answer, what: &str| -> Result<String, String> {
        if a.is_success() {
            Ok(String::from_utf8_lossy(&a.body).trim().to_owned())
        } else {
            Err(fail(format!("{what}: HTTP {}", a.status)))
        }
    };
    let token = imds
        .send(
            "PUT",
            "/latest/api/token",
            &[("x-aws-ec2-metadata-token-ttl-seconds", "21600".to_owned())],
            None,
        )
        .await
        .map_err(|e| fail(e.to_string()))?;
    let token = text(token, "token")?;
    let header = [("x-aws-ec2-metadata-token", token)];
    let base = "/latest/meta-data/iam/security-credentials/";
    let roles = imds
        .send("GET", base, &header, None)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let roles = text(roles, "role")?;
    let role = roles
        .lines()
        .next()
        .filter(|r| !r.is_empty())
        .ok_or_else(|| fail("no role attached".into()))?;
    let a = imds
        .send("GET", &format!("{base}{role}"), &header, None)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let body = text(a, "credentials")?;
    let c: RoleCredentials =
        serde_json::from_str(&body).map_err(|e| fail(format!("unreadable credentials: {e}")))?;
    let expires = fleet_core::time::parse_rfc3339(&c.expiration)
        .ok_or_else(|| fail(format!("unreadable expiration {:?}", c.expiration)))?;
    Ok((
        Credentials {
            access_key_id: c.access_key_id,
            secret_access_key: c.secret_access_key,
            session_token: Some(c.token),
        },
        expires,
    ))
}

/// What a signed request needs to know.
#[derive(Debug)]
pub struct Request<'a> {
    /// `GET`, `PUT`, `POST`, `DELETE`.
    pub method: &'a str,
    /// The `Host` header as sent.
    pub host: &'a str,
    /// The path, already URI-encoded as sent (`/bucket/key%20name`).
    pub path: &'a str,
    /// The query string as sent, its parameters sorted by name and
    /// URI-encoded (`list-type=2&prefix=a%2F`); empty for none.
    pub query: &'a str,
    /// Other headers to sign (lowercase names), e.g. `content-type` or
    /// `x-amz-content-sha256`; `host` and `x-amz-date` are always signed.
    pub headers: &'a [(&'a str, String)],
    /// The body.
    pub body: &'a [u8],
    /// `YYYYMMDDTHHMMSSZ`.
    pub amz_date: &'a str,
    /// `us-east-1`.
    pub region: &'a str,
    /// `ec2`, `s3`.
    pub service: &'a str,
}

/// The hex SHA-256 of `body` (S3's `x-amz-content-sha256`).
pub fn payload_hash(body: &[u8]) -> String {
    hex(&Sha256::digest(body))
}

/// The headers to add: `Authorization`, `X-Amz-Date` and, for temporary
/// credentials, `X-Amz-Security-Token`.
pub fn sign(req: &Request<'_>, creds: &Credentials) -> Vec<(&'static str, String)> {
    let mut headers: Vec<(&str, String)> = req
        .headers
        .iter()
        .map(|(k, v)| (*k, v.clone()))
        .chain([
            ("host", req.host.to_owned()),
            ("x-amz-date", req.amz_date.to_owned()),
        ])
        .collect();
    if let Some(token) = &creds.session_token {
        headers.push(("x-amz-security-token", token.clone()));
    }
    headers.sort_by(|a, b| a.0.cmp(b.0));
    let canonical_headers: String = headers
        .iter()
        .map(|(k, v)| format!("{k}:{}\n", v.trim()))
        .collect();
    let signed_headers = headers
        .iter()
        .map(|(k, _)| *k)
        .collect::<Vec<_>>()
        .join(";");
    let canonical = format!(
        "{}\n{}\n{}\n{canonical_headers}\n{signed_headers}\n{}",
        req.method,
        req.path,
        req.query,
        payload_hash(req.body)
    );
    let date = req.amz_date.get(..8).unwrap_or_default();
    let scope = format!("{date}/{}/{}/aws4_request", req.region, req.service);
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{}\n{scope}\n{}",
        req.amz_date,
        hex(&Sha256::digest(canonical.as_bytes()))
    );
    let k_date = hmac(
        format!("AWS4{}", creds.secret_access_key).as_bytes(),
        date.as_bytes(),
    );
    let k_region = hmac(&k_date, req.region.as_bytes());
    let k_service = hmac(&k_region, req.service.as_bytes());
    let k_signing = hmac(&k_service, b"aws4_request");
    let signature = hex(&hmac(&k_signing, to_sign.as_bytes()));
    let mut out = vec![
        (
            "authorization",
            format!(
                "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
                creds.access_key_id
            ),
        ),
        ("x-amz-date", req.amz_date.to_owned()),
    ];
    if let Some(token) = &creds.session_token {
        out.push(("x-amz-security-token", token.clone()));
    }
    out
}

/// Percent-encodes per RFC 3986 (what SigV4 and AWS APIs expect); `/` is
/// kept when `keep_slash` (object key paths).
pub fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (keep_slash && b == b'/')
        {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `YYYYMMDDTHHMMSSZ` for `ms` since the Unix epoch.
pub fn amz_date(ms: u64) -> String {
    fleet_core::time::Utc::from_millis(ms).basic()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A vector made with botocore's signer for the same request.
    #[test]
    fn signs_as_botocore_does() {
        let creds = Credentials {
            access_key_id: "AKIDEXAMPLE".to_owned(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".to_owned(),
            session_token: None,
        };
        let headers = sign(
            &Request {
                method: "POST",
                host: "ec2.us-east-1.amazonaws.com",
                path: "/",
                query: "",
                headers: &[(
                    "content-type",
                    "application/x-www-form-urlencoded; charset=utf-8".to_owned(),
                )],
                body: b"Action=DescribeInstances&Version=2016-11-15",
                amz_date: "20261125T204100Z",
                region: "us-east-1",
                service: "ec2",
            },
            &creds,
        );
        assert_eq!(
            headers[0].1,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261125/us-east-1/ec2/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date, \
             Signature=dde43076ebe8b461d18ebada0379a7fccd8b6461cad0007e2d610146b8ccabf1"
        );
        assert_eq!(headers[1], ("x-amz-date", "20261125T204100Z".to_owned()));
        assert!(
            !format!("{creds:?}").contains("EXAMPLEKEY"),
            "the secret is redacted"
        );
    }

    #[test]
    fn dates_are_formatted_in_utc() {
        assert_eq!(amz_date(0), "19700101T000000Z");
        assert_eq!(amz_date(1_454_197_800_000), "20160130T235000Z");
        assert_eq!(amz_date(1_709_208_000_999), "20240229T120000Z");
    }
}
