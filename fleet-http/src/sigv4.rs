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
