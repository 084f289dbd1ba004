//! AWS Signature Version 4 for a request with a body (the EC2 Query API
//! posts a form).

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
    /// `POST`.
    pub method: &'a str,
    /// The `Host` header as sent.
    pub host: &'a str,
    /// The path (`/`).
    pub path: &'a str,
    /// The `Content-Type` header as sent.
    pub content_type: &'a str,
    /// The body.
    pub body: &'a [u8],
    /// `YYYYMMDDTHHMMSSZ`.
    pub amz_date: &'a str,
    /// `us-east-1`.
    pub region: &'a str,
    /// `ec2`.
    pub service: &'a str,
}

/// The headers to add: `Authorization`, `X-Amz-Date` and, for temporary
/// credentials, `X-Amz-Security-Token`.
pub fn sign(req: &Request<'_>, creds: &Credentials) -> Vec<(&'static str, String)> {
    let payload_hash = hex(&Sha256::digest(req.body));
    let mut headers = vec![
        ("content-type", req.content_type.to_owned()),
        ("host", req.host.to_owned()),
        ("x-amz-date", req.amz_date.to_owned()),
    ];
    if let Some(token) = &creds.session_token {
        headers.push(("x-amz-security-token", token.clone()));
    }
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
        "{}\n{}\n\n{canonical_headers}\n{signed_headers}\n{payload_hash}",
        req.method, req.path
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
                content_type: "application/x-www-form-urlencoded; charset=utf-8",
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
