//! The part of the Hetzner Cloud API this provider speaks: wire types,
//! error classification and timestamps.

use std::collections::BTreeMap;

use fleet_core::provider::ProviderError;
use serde::Deserialize;

use fleet_http::Answer;

/// `{"error": {"code", "message"}}`.
#[derive(Debug, Deserialize)]
struct ErrorBody {
    error: ApiError,
}

#[derive(Debug, Deserialize)]
struct ApiError {
    code: String,
    #[serde(default)]
    message: String,
}

/// Pagination of a list answer.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Meta {
    #[serde(default)]
    pub(crate) pagination: Option<Pagination>,
}

/// Where a page is.
#[derive(Debug, Deserialize)]
pub(crate) struct Pagination {
    #[serde(default)]
    pub(crate) next_page: Option<u64>,
}

/// A server type for sale.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ServerType {
    pub(crate) name: String,
    pub(crate) cores: u32,
    /// GB.
    pub(crate) memory: f64,
    /// GB.
    pub(crate) disk: u32,
    #[serde(default)]
    pub(crate) architecture: Option<String>,
    #[serde(default)]
    pub(crate) deprecated: Option<bool>,
    #[serde(default)]
    pub(crate) prices: Vec<Price>,
}

/// A server type's price in one location.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Price {
    pub(crate) location: String,
    pub(crate) price_hourly: Amount,
}

/// A decimal amount as the API writes it (`"0.0060000000"`).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Amount {
    pub(crate) net: String,
}

/// `GET /server_types`.
#[derive(Debug, Deserialize)]
pub(crate) struct ServerTypes {
    pub(crate) server_types: Vec<ServerType>,
    #[serde(default)]
    pub(crate) meta: Meta,
}

/// A server.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Server {
    pub(crate) id: u64,
    pub(crate) status: String,
    pub(crate) created: String,
    pub(crate) server_type: ServerTypeRef,
    #[serde(default)]
    pub(crate) public_net: Option<PublicNet>,
    #[serde(default)]
    pub(crate) labels: BTreeMap<String, String>,
}

/// The type a server runs.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ServerTypeRef {
    pub(crate) name: String,
}

/// Public addresses.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct PublicNet {
    #[serde(default)]
    pub(crate) ipv4: Option<Ipv4>,
}

/// An IPv4 address.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Ipv4 {
    pub(crate) ip: String,
}

/// `{"server": …}`.
#[derive(Debug, Deserialize)]
pub(crate) struct OneServer {
    pub(crate) server: Server,
}

/// `POST /servers`.
#[derive(Debug, Deserialize)]
pub(crate) struct CreatedServer {
    pub(crate) server: Server,
    pub(crate) action: Action,
}

/// `GET /servers`.
#[derive(Debug, Deserialize)]
pub(crate) struct Servers {
    pub(crate) servers: Vec<Server>,
    #[serde(default)]
    pub(crate) meta: Meta,
}

/// An asynchronous operation.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Action {
    pub(crate) id: u64,
    pub(crate) status: String,
    #[serde(default)]
    pub(crate) error: Option<ApiErrorInAction>,
}

/// Why an action failed.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ApiErrorInAction {
    pub(crate) code: String,
    #[serde(default)]
    pub(crate) message: String,
}

/// `{"action": …}`.
#[derive(Debug, Deserialize)]
pub(crate) struct OneAction {
    pub(crate) action: Action,
}

/// An image (a snapshot here).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Image {
    pub(crate) id: u64,
    #[serde(default)]
    pub(crate) image_size: Option<f64>,
    #[serde(default)]
    pub(crate) disk_size: Option<f64>,
    pub(crate) created: String,
}

/// `{"image": …}` (with the action that makes it, on create).
#[derive(Debug, Deserialize)]
pub(crate) struct OneImage {
    pub(crate) image: Image,
    #[serde(default)]
    pub(crate) action: Option<Action>,
}

/// Parses a JSON answer body.
pub(crate) fn parse<T: for<'de> Deserialize<'de>>(
    what: &str,
    a: &Answer,
) -> Result<T, ProviderError> {
    serde_json::from_slice(&a.body).map_err(|e| {
        ProviderError::Transient(format!("{what}: unexpected answer from the API: {e}"))
    })
}

/// Classifies a non-2xx answer by status and error code.
pub(crate) fn error_of(what: &str, a: &Answer) -> ProviderError {
    let (code, message) = serde_json::from_slice::<ErrorBody>(&a.body)
        .map(|b| (b.error.code, b.error.message))
        .unwrap_or_else(|_| (String::new(), String::from_utf8_lossy(&a.body).into_owned()));
    let text = format!("{what}: {} {code}: {message}", a.status);
    match (a.status, code.as_str()) {
        (429, _) | (_, "rate_limit_exceeded") => {
            let reset = a
                .headers
                .get("ratelimit-reset")
                .and_then(|v| v.to_str().ok())
                .map(|r| format!(" (the limit resets at unix time {r})"))
                .unwrap_or_default();
            ProviderError::RateLimited(format!("{text}{reset}"))
        }
        (404, _) | (_, "not_found") => ProviderError::NotFound(text),
        (_, "uniqueness_error") => ProviderError::AlreadyExists(text),
        (_, "resource_limit_exceeded") => ProviderError::Quota(text),
        (_, "resource_unavailable" | "placement_error") => ProviderError::Capacity(text),
        (_, "locked" | "conflict" | "maintenance" | "timeout" | "unavailable") => {
            ProviderError::Transient(text)
        }
        (s, _) if s >= 500 => ProviderError::Transient(text),
        _ => ProviderError::Permanent(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, body: &str) -> Answer {
        Answer {
            status,
            headers: Default::default(),
            body: body.to_owned().into_bytes().into(),
        }
    }

    #[test]
    fn errors_are_classified_by_status_and_code() {
        let e = |s, code: &str| {
            error_of(
                "x",
                &answer(
                    s,
                    &format!(r#"{{"error":{{"code":"{code}","message":"m"}}}}"#),
                ),
            )
        };
        assert!(matches!(
            e(429, "rate_limit_exceeded"),
            ProviderError::RateLimited(_)
        ));
        assert!(matches!(e(404, "not_found"), ProviderError::NotFound(_)));
        assert!(matches!(
            e(409, "uniqueness_error"),
            ProviderError::AlreadyExists(_)
        ));
        assert!(matches!(
            e(403, "resource_limit_exceeded"),
            ProviderError::Quota(_)
        ));
        assert!(matches!(
            e(412, "resource_unavailable"),
            ProviderError::Capacity(_)
        ));
        assert!(matches!(e(423, "locked"), ProviderError::Transient(_)));
        assert!(matches!(
            e(503, "service_error"),
            ProviderError::Transient(_)
        ));
        assert!(matches!(
            e(401, "unauthorized"),
            ProviderError::Permanent(_)
        ));
        assert!(matches!(
            e(400, "invalid_input"),
            ProviderError::Permanent(_)
        ));
        // Not JSON at all: still classified, with the body as the message.
        assert!(matches!(
            error_of("x", &answer(502, "<html>")),
            ProviderError::Transient(_)
        ));
    }
}
