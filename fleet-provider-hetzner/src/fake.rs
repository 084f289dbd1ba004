//! A stateful, in-process fake of a subset of the Hetzner Cloud API
//! (<https://docs.hetzner.cloud/>) for integration tests.
//!
//! [`FakeHetzner::start`] serves it with axum on `127.0.0.1:<random port>`; point the client at
//! [`FakeHetzner::url`]. Covered: `GET /locations`, `GET /server_types`, `GET|POST /servers`,
//! `GET|DELETE /servers/{id}`, `POST /servers/{id}/actions/{poweron,poweroff,shutdown,
//! change_type,create_image}`, `GET /images/{id}` and `GET /actions/{id}`; anything else is
//! answered `404 not_found`. Every error body is `{"error":{"code","message","details"?}}`.
//!
//! Answers are a faithful subset of the real API: every field the API documents as always
//! present (and the `hcloud` crate's models require) is there, e.g. a server carries its full
//! `server_type`, `image`, `location`, `public_net` and `protection` objects.
//!
//! Actions are asynchronous but deterministic: each starts `running` and succeeds on its second
//! `GET /actions/{id}` or once it is 50 ms old, whichever comes first. Server status changes
//! (e.g. `initializing` → `running`) happen when the action finishes.
//!
//! Rate limiting works like the API's: a bucket of 3600 requests that refills by one per
//! second; every answer carries `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset`
//! (the unix second at which the bucket is full again), and an empty bucket answers 429
//! `rate_limit_exceeded`. Tests force 429s with [`FakeHetzner::rate_limit_next`] (a number of
//! requests) or [`FakeHetzner::rate_limit_for`] (a time window whose end is the
//! `RateLimit-Reset`). Each request is counted, then rate-limited, then checked for
//! `Authorization: Bearer <token>`.
//!
//! Capacity: [`FakeHetzner::set_capacity`] takes a server type out of stock, so
//! `POST /servers` for it fails like the API does (412 `resource_unavailable`, "error during
//! placement"); [`FakeHetzner::fail_creates`] fails the next creates of any type that way.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

/// How long an action stays `running` when it is not polled twice.
const ACTION_DURATION: Duration = Duration::from_millis(50);
/// The locations servers can be created in; the first is the default.
const LOCATIONS: [Location; 2] = [
    Location {
        id: 1,
        name: "fsn1",
        datacenter: ("fsn1-dc14", 4),
        description: "Falkenstein DC Park 1",
        country: "DE",
        city: "Falkenstein",
        coordinates: (50.47612, 12.370071),
    },
    Location {
        id: 2,
        name: "nbg1",
        datacenter: ("nbg1-dc3", 2),
        description: "Nuremberg DC Park 1",
        country: "DE",
        city: "Nuremberg",
        coordinates: (49.452102, 11.076665),
    },
];
/// Requests per hour; the bucket refills by one request per second.
const RATE_LIMIT: u32 = 3600;

/// A location and its one datacenter, as the fake offers them.
struct Location {
    id: u64,
    name: &'static str,
    /// (name, ID).
    datacenter: (&'static str, u64),
    description: &'static str,
    country: &'static str,
    city: &'static str,
    /// (latitude, longitude).
    coordinates: (f64, f64),
}

impl Location {
    fn json(&self) -> Value {
        json!({
            "id": self.id, "name": self.name, "description": self.description,
            "country": self.country, "city": self.city, "latitude": self.coordinates.0,
            "longitude": self.coordinates.1, "network_zone": "eu-central",
        })
    }

    fn datacenter_json(&self) -> Value {
        let (name, id) = self.datacenter;
        let description = format!("{} virtual DC", self.city);
        json!({ "id": id, "name": name, "description": description, "location": self.json() })
    }
}

/// A running fake Hetzner Cloud API. Dropping it stops the server.
pub struct FakeHetzner {
    addr: std::net::SocketAddr,
    state: Shared,
    task: tokio::task::JoinHandle<()>,
}

/// A server as the fake holds it, for assertions in tests.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeServer {
    /// Server ID.
    pub id: u64,
    /// Server name (hostname).
    pub name: String,
    /// Current status, e.g. `"running"` or `"off"`.
    pub status: String,
    /// Current server type name, e.g. `"cx22"`.
    pub server_type: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Cloud-init user data given at creation.
    pub user_data: Option<String>,
    /// Image the server was created from: a system image's name, or a snapshot's ID.
    pub image: String,
}

impl FakeHetzner {
    /// Starts the fake on 127.0.0.1:0; requests must carry `Authorization: Bearer <token>`
    /// (else 401 `{"error":{"code":"unauthorized",...}}`).
    pub async fn start(token: &str) -> FakeHetzner {
        let state: Shared = Arc::new(Mutex::new(Inner::new(token)));
        let app = Router::new()
            .route("/v1/locations", get(list_locations))
            .route("/v1/server_types", get(list_server_types))
            .route("/v1/servers", get(list_servers).post(create_server))
            .route("/v1/servers/{id}", get(get_server).delete(delete_server))
            .route("/v1/servers/{id}/actions/{action}", post(server_action))
            .route("/v1/images/{id}", get(get_image))
            .route("/v1/actions/{id}", get(get_action))
            .fallback(no_route)
            .method_not_allowed_fallback(no_route)
            .layer(middleware::from_fn_with_state(state.clone(), gate))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("fake hetzner: cannot bind: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("fake hetzner: no local address: {e}"));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeHetzner { addr, state, task }
    }

    /// Base URL, e.g. `"http://127.0.0.1:12345/v1"`.
    pub fn url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The next `n` requests (any endpoint) are answered 429 `rate_limit_exceeded` with headers
    /// `RateLimit-Limit: 3600`, `RateLimit-Remaining: 0`, `RateLimit-Reset: <unix now + 1>`.
    pub fn rate_limit_next(&self, n: u32) {
        lock(&self.state).rate.forced = n;
    }

    /// Every request during the next `window` (rounded up to the next whole unix second, as
    /// the header counts seconds) is answered 429 `rate_limit_exceeded` with
    /// `RateLimit-Remaining: 0` and `RateLimit-Reset` the second the window ends; from that
    /// second on, requests pass again.
    pub fn rate_limit_for(&self, window: Duration) {
        let end = SystemTime::now() + window;
        let secs = end.duration_since(UNIX_EPOCH).unwrap_or_default();
        let reset = secs.as_secs() + u64::from(secs.subsec_nanos() > 0);
        lock(&self.state).rate.until = Some(reset);
    }

    /// How many requests were answered 429 so far.
    pub fn rate_limited_requests(&self) -> u64 {
        lock(&self.state).rate.rejected
    }

    /// Whether `server_type` can be placed: while `false`, `POST /servers` for it fails with
    /// 412 `resource_unavailable` ("error during placement"), as the API answers when a type
    /// is sold out in a location. Every type is available at start.
    pub fn set_capacity(&self, server_type: &str, available: bool) {
        let mut st = lock(&self.state);
        if available {
            st.sold_out.remove(server_type);
        } else {
            st.sold_out.insert(server_type.to_owned());
        }
    }

    /// The next `n` `POST /servers` (of any type) fail with 412 `resource_unavailable`.
    pub fn fail_creates(&self, n: u32) {
        lock(&self.state).failing_creates = n;
    }

    /// All servers as the fake holds them, ordered by ID (overdue actions are finished first).
    pub fn servers(&self) -> Vec<FakeServer> {
        let mut st = lock(&self.state);
        st.tick();
        // A system image is known by its name, a snapshot by its ID.
        let image = |i: &Value| {
            i["name"]
                .as_str()
                .map_or_else(|| i["id"].to_string(), str::to_string)
        };
        let to_fake = |s: &Server| FakeServer {
            id: s.id,
            name: s.name.clone(),
            status: s.status.to_string(),
            server_type: s.ty["name"].as_str().unwrap_or_default().to_string(),
            labels: s.labels.clone(),
            user_data: s.user_data.clone(),
            image: image(&s.image),
        };
        st.servers.values().map(to_fake).collect()
    }

    /// How many requests were served in total (all endpoints, including 401s and 429s).
    pub fn requests(&self) -> u64 {
        lock(&self.state).requests
    }
}

impl Drop for FakeHetzner {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The server types on offer, in API shape; prices are the same in every location.
fn server_types() -> Vec<Value> {
    let table = json!([
        { "id": 104, "name": "cx22", "cores": 2, "memory": 4.0, "disk": 40, "architecture": "x86",
          "hourly": ["0.0060000000", "0.0071400000"], "monthly": ["3.7900000000", "4.5101000000"] },
        { "id": 105, "name": "cx32", "cores": 4, "memory": 8.0, "disk": 80, "architecture": "x86",
          "hourly": ["0.0110000000", "0.0130900000"], "monthly": ["6.8000000000", "8.0920000000"] },
        { "id": 106, "name": "cx42", "cores": 8, "memory": 16.0, "disk": 160, "architecture": "x86",
          "hourly": ["0.0270000000", "0.0321300000"], "monthly": ["16.4000000000", "19.5160000000"] },
        { "id": 45, "name": "cax11", "cores": 2, "memory": 4.0, "disk": 40, "architecture": "arm",
          "hourly": ["0.0059000000", "0.0070210000"], "monthly": ["3.7900000000", "4.5101000000"] },
    ]);
    let price = |p: &Value| json!({ "net": p[0], "gross": p[1] });
    let render = |t: &Value| {
        let prices: Vec<Value> = (LOCATIONS.iter())
            .map(|l| {
                json!({ "location": l.name, "price_hourly": price(&t["hourly"]),
                        "price_monthly": price(&t["monthly"]), "included_traffic": 21_990_232_555_520_u64,
                        "price_per_tb_traffic": { "net": "1.0000000000", "gross": "1.1900000000" } })
            })
            .collect();
        let locations: Vec<Value> = (LOCATIONS.iter())
            .map(|l| json!({ "id": l.id, "name": l.name, "deprecation": null }))
            .collect();
        json!({
            "id": t["id"], "name": t["name"], "description": t["name"].as_str().map(str::to_uppercase),
            "category": "cost_optimized", "cores": t["cores"], "memory": t["memory"],
            "disk": t["disk"], "architecture": t["architecture"], "cpu_type": "shared",
            "deprecated": false, "deprecation": null, "prices": prices, "locations": locations,
            "storage_type": "local",
        })
    };
    table.as_array().into_iter().flatten().map(render).collect()
}

fn find_type(name: &str) -> Result<Value, ApiError> {
    let msg = format!("invalid input in field 'server_type': unknown server type '{name}'");
    (server_types().into_iter().find(|t| t["name"] == name)).ok_or_else(|| invalid(msg))
}

type Shared = Arc<Mutex<Inner>>;

/// Locks the state, ignoring poisoning (one panicking test must not cascade).
fn lock(state: &Shared) -> MutexGuard<'_, Inner> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// Everything the fake knows; images are kept in API shape.
#[derive(Default)]
struct Inner {
    token: String,
    requests: u64,
    rate: RateLimit,
    failing_creates: u32,
    /// Server types that cannot be placed.
    sold_out: BTreeSet<String>,
    next_id: u64,
    servers: BTreeMap<u64, Server>,
    actions: BTreeMap<u64, Action>,
    images: BTreeMap<u64, Value>,
}

/// The API's request bucket, and what tests forced on it.
struct RateLimit {
    /// Requests left in the bucket.
    remaining: u32,
    /// The unix second the bucket was last refilled.
    refilled: u64,
    /// This many next requests are rejected.
    forced: u32,
    /// Requests are rejected until this unix second.
    until: Option<u64>,
    /// Requests answered 429.
    rejected: u64,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            remaining: RATE_LIMIT,
            refilled: unix_now(),
            forced: 0,
            until: None,
            rejected: 0,
        }
    }
}

impl RateLimit {
    /// Takes one request from the bucket: the `(remaining, reset)` headers to send, and
    /// whether the request is rejected.
    fn take(&mut self) -> (u32, u64, bool) {
        let now = unix_now();
        let refill = u32::try_from(now.saturating_sub(self.refilled)).unwrap_or(u32::MAX);
        self.remaining = self.remaining.saturating_add(refill).min(RATE_LIMIT);
        self.refilled = now;
        let full_at = |remaining: u32| now + u64::from(RATE_LIMIT - remaining);
        if let Some(until) = self.until.filter(|until| now < *until) {
            self.rejected += 1;
            return (0, until, true);
        }
        self.until = None;
        if self.forced > 0 {
            self.forced -= 1;
            self.rejected += 1;
            return (0, now + 1, true);
        }
        if self.remaining == 0 {
            self.rejected += 1;
            return (0, full_at(0), true);
        }
        self.remaining -= 1;
        (self.remaining, full_at(self.remaining), false)
    }
}

struct Server {
    id: u64,
    name: String,
    status: &'static str,
    created: String,
    /// Full server type object.
    ty: Value,
    disk: u64,
    datacenter: Value,
    location: Value,
    /// The full image object it was created from.
    image: Value,
    labels: BTreeMap<String, String>,
    user_data: Option<String>,
    /// Whether it has a primary IPv4 address.
    ipv4: bool,
}

struct Action {
    id: u64,
    /// The action in API shape.
    json: Value,
    born: Instant,
    polls: u32,
    effect: Effect,
}

/// What happens when an action finishes.
enum Effect {
    Status(u64, &'static str),
    ChangeType {
        server: u64,
        ty: Value,
        upgrade_disk: bool,
    },
    ImageReady(u64),
    Delete(u64),
}

impl Inner {
    fn new(token: &str) -> Self {
        let system = |id: u64, name: &str, description: &str| {
            let (os_flavor, os_version) = name.split_once('-').unwrap_or((name, ""));
            let image = json!({
                "id": id, "type": "system", "status": "available", "name": name,
                "description": description, "image_size": null, "disk_size": 5,
                "created": "2024-04-25T00:00:00+00:00", "created_from": null, "bound_to": null,
                "os_flavor": os_flavor, "os_version": os_version, "rapid_deploy": true,
                "protection": { "delete": false }, "deprecated": null, "deleted": null,
                "architecture": "x86", "labels": {},
            });
            (id, image)
        };
        let images = BTreeMap::from([
            system(67794396, "ubuntu-22.04", "Ubuntu 22.04"),
            system(161547269, "ubuntu-24.04", "Ubuntu 24.04"),
            system(114690387, "debian-12", "Debian 12"),
        ]);
        let token = token.to_string();
        Inner {
            token,
            next_id: 1000,
            images,
            ..Inner::default()
        }
    }

    /// One ID sequence for servers, actions and snapshots, so that mixing them up fails loudly.
    fn fresh_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn server(&mut self, raw: &str) -> Result<&mut Server, ApiError> {
        let server = raw
            .parse::<u64>()
            .ok()
            .and_then(|id| self.servers.get_mut(&id));
        server.ok_or_else(|| not_found("server", raw))
    }

    fn new_action(&mut self, command: &str, resources: &[(u64, &str)], effect: Effect) -> Value {
        let id = self.fresh_id();
        let resources: Vec<Value> = (resources.iter())
            .map(|(id, kind)| json!({ "id": id, "type": kind }))
            .collect();
        let json = json!({
            "id": id, "command": command, "status": "running", "progress": 0, "started": now_iso(),
            "finished": null, "resources": resources, "error": null,
        });
        let (born, polls) = (Instant::now(), 0);
        let action = Action {
            id,
            json: json.clone(),
            born,
            polls,
            effect,
        };
        self.actions.insert(id, action);
        json
    }

    /// Puts the server into status `busy` and starts an action on it that applies `effect`.
    fn begin(&mut self, server: u64, command: &str, busy: &'static str, effect: Effect) -> Value {
        if let Some(s) = self.servers.get_mut(&server) {
            s.status = busy;
        }
        self.new_action(command, &[(server, "server")], effect)
    }

    /// Finishes every running action that was polled twice or is [`ACTION_DURATION`] old.
    fn tick(&mut self) {
        let due = |a: &&Action| a.polls >= 2 || a.born.elapsed() >= ACTION_DURATION;
        let running = self
            .actions
            .values()
            .filter(|a| a.json["status"] == "running");
        let ids: Vec<u64> = running.filter(due).map(|a| a.id).collect();
        ids.into_iter().for_each(|id| self.finish(id));
    }

    fn finish(&mut self, id: u64) {
        let Some(action) = self.actions.get_mut(&id) else {
            return;
        };
        action.json["status"] = json!("success");
        action.json["progress"] = json!(100);
        action.json["finished"] = json!(now_iso());
        match &action.effect {
            Effect::Status(server, status) => {
                // A pending deletion wins over e.g. a create that finishes after it was issued.
                let server = self
                    .servers
                    .get_mut(server)
                    .filter(|s| s.status != "deleting");
                if let Some(s) = server {
                    s.status = *status;
                }
            }
            Effect::ChangeType {
                server,
                ty,
                upgrade_disk,
            } => {
                let server = self.servers.get_mut(server);
                if let Some(s) = server.filter(|s| s.status != "deleting") {
                    s.status = "off";
                    s.ty = ty.clone();
                    if *upgrade_disk {
                        s.disk = ty["disk"].as_u64().unwrap_or(s.disk);
                    }
                }
            }
            Effect::ImageReady(image) => {
                if let Some(image) = self.images.get_mut(image) {
                    image["status"] = json!("available");
                    image["image_size"] = json!(2.5);
                }
            }
            Effect::Delete(server) => {
                self.servers.remove(server);
            }
        }
    }
}

fn server_json(s: &Server) -> Value {
    let ip = format!("203.0.113.{}", s.id % 250);
    let ipv4 = if s.ipv4 {
        json!({
            "id": s.id + 1_000_000, "ip": ip, "blocked": false,
            "dns_ptr": format!("static.{ip}.clients.your-server.de"),
        })
    } else {
        Value::Null
    };
    let ipv6 = json!({
        "id": s.id + 2_000_000, "ip": format!("2001:db8:{:x}::/64", s.id), "blocked": false,
        "dns_ptr": [],
    });
    let public_net = json!({ "ipv4": ipv4, "ipv6": ipv6, "floating_ips": [], "firewalls": [] });
    json!({
        "id": s.id, "name": s.name, "status": s.status, "created": s.created,
        "public_net": public_net, "private_net": [], "server_type": s.ty,
        "datacenter": s.datacenter, "location": s.location, "image": s.image, "iso": null,
        "labels": s.labels, "primary_disk_size": s.disk, "locked": false,
        "protection": { "delete": false, "rebuild": false }, "rescue_enabled": false,
        "backup_window": null, "included_traffic": 21_990_232_555_520_u64,
        "ingoing_traffic": 0, "outgoing_traffic": 0, "placement_group": null,
        "load_balancers": [], "volumes": [],
    })
}

/// Formats seconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SS+00:00`,
/// as the API writes timestamps.
fn iso8601(secs: u64) -> String {
    let utc = fleet_core::time::Utc::from_millis(secs.saturating_mul(1_000)).to_string();
    format!("{}+00:00", utc.trim_end_matches('Z'))
}

fn unix_now() -> u64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH);
    since_epoch.map(|d| d.as_secs()).unwrap_or_default()
}

fn now_iso() -> String {
    iso8601(unix_now())
}

/// An API error, rendered as `{"error":{"code","message","details"?}}`.
struct ApiError {
    status: u16,
    code: &'static str,
    message: String,
    details: Option<Value>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({ "code": self.code, "message": self.message });
        if let Some(details) = self.details {
            error["details"] = details;
        }
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        (status, Json(json!({ "error": error }))).into_response()
    }
}

fn fail(status: u16, code: &'static str, message: impl Into<String>) -> ApiError {
    let message = message.into();
    ApiError {
        status,
        code,
        message,
        details: None,
    }
}

fn invalid(message: impl Into<String>) -> ApiError {
    fail(400, "invalid_input", message)
}

fn not_found(what: &str, id: &str) -> ApiError {
    fail(404, "not_found", format!("{what} with ID '{id}' not found"))
}

type Reply = Result<(StatusCode, Json<Value>), ApiError>;

fn ok(body: Value) -> Reply {
    Ok((StatusCode::OK, Json(body)))
}

fn created(body: Value) -> Reply {
    Ok((StatusCode::CREATED, Json(body)))
}

/// Parses a JSON body (an empty body counts as `{}`); unknown fields are ignored.
fn parse_body<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    let bytes: &[u8] = if body.is_empty() { b"{}" } else { body };
    let parsed = serde_json::from_slice(bytes);
    parsed.map_err(|e| invalid(format!("invalid request body: {e}")))
}

/// Applies `page`/`per_page` (default 1/25, max 50) and answers `{key: [...], "meta": ...}`.
fn paginate(key: &str, items: Vec<Value>, query: &HashMap<String, String>) -> Reply {
    let param = |name: &str, default: usize| match query.get(name) {
        None => Ok(default),
        Some(raw) => (raw.parse::<usize>().ok().filter(|n| *n >= 1))
            .ok_or_else(|| invalid(format!("invalid value for '{name}': '{raw}'"))),
    };
    let (page, per_page) = (param("page", 1)?, param("per_page", 25)?.min(50));
    let (total, skip) = (items.len(), (page - 1).saturating_mul(per_page));
    let last_page = total.div_ceil(per_page).max(1);
    let items = items.into_iter().skip(skip).take(per_page).collect();
    let pagination = json!({
        "page": page, "per_page": per_page, "previous_page": (page > 1).then(|| page - 1),
        "next_page": (page < last_page).then(|| page + 1), "last_page": last_page,
        "total_entries": total,
    });
    let mut body = Map::new();
    body.insert(key.to_string(), Value::Array(items));
    body.insert("meta".to_string(), json!({ "pagination": pagination }));
    ok(Value::Object(body))
}

/// RFC 1123 hostname: dot-separated labels of 1–63 letters, digits and inner hyphens.
fn valid_hostname(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// Label selector: comma-separated `k=v`, `k==v`, `k!=v`, `k` and `!k` terms, all must hold.
fn selector_matches(selector: &str, labels: &BTreeMap<String, String>) -> bool {
    let value = |k: &str| labels.get(k.trim()).map(|v| v.as_str());
    let mut terms = selector.split(',').map(str::trim).filter(|t| !t.is_empty());
    terms.all(|term| {
        if let Some((k, v)) = term.split_once("!=") {
            value(k) != Some(v.trim())
        } else if let Some((k, v)) = term.split_once('=') {
            value(k) == Some(v.trim_start_matches('=').trim())
        } else if let Some(k) = term.strip_prefix('!') {
            value(k).is_none()
        } else {
            value(term).is_some()
        }
    })
}

/// Counts every request, then applies the rate limit, the token check and due actions; every
/// answer carries the `RateLimit-*` headers.
async fn gate(State(state): State<Shared>, req: Request, next: Next) -> Response {
    let (headers, early) = {
        let mut st = lock(&state);
        st.requests += 1;
        let (remaining, reset, rejected) = st.rate.take();
        let headers = [
            ("RateLimit-Limit", RATE_LIMIT.to_string()),
            ("RateLimit-Remaining", remaining.to_string()),
            ("RateLimit-Reset", reset.to_string()),
        ];
        let auth = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let early = if rejected {
            let message = format!("limit of {RATE_LIMIT} requests per hour reached");
            Some(fail(429, "rate_limit_exceeded", message))
        } else if auth.and_then(|a| a.strip_prefix("Bearer ")) != Some(st.token.as_str()) {
            Some(fail(401, "unauthorized", "unable to authenticate"))
        } else {
            st.tick();
            None
        };
        (headers, early)
    };
    match early {
        Some(error) => (headers, error).into_response(),
        None => (headers, next.run(req).await).into_response(),
    }
}

async fn no_route() -> ApiError {
    fail(404, "not_found", "not found")
}

async fn list_locations(Query(query): Query<HashMap<String, String>>) -> Reply {
    let locations = (LOCATIONS.iter())
        .filter(|l| query.get("name").is_none_or(|name| name == l.name))
        .map(Location::json)
        .collect();
    paginate("locations", locations, &query)
}

async fn list_server_types(Query(query): Query<HashMap<String, String>>) -> Reply {
    paginate("server_types", server_types(), &query)
}

async fn list_servers(
    State(state): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
) -> Reply {
    let st = lock(&state);
    let servers = (st.servers.values())
        .filter(|s| q.get("name").is_none_or(|name| *name == s.name))
        .filter(|s| (q.get("label_selector")).is_none_or(|sel| selector_matches(sel, &s.labels)))
        .map(server_json)
        .collect();
    paginate("servers", servers, &q)
}

#[derive(Deserialize)]
struct CreateServer {
    name: String,
    server_type: String,
    /// A system image name, or a snapshot ID as number or string.
    image: Value,
    location: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    user_data: Option<String>,
    start_after_create: Option<bool>,
    public_net: Option<PublicNet>,
}

#[derive(Deserialize)]
struct PublicNet {
    enable_ipv4: Option<bool>,
}

async fn create_server(State(state): State<Shared>, body: Bytes) -> Reply {
    let mut st = lock(&state);
    if st.failing_creates > 0 {
        st.failing_creates -= 1;
        let message = "error during placement: no capacity for this server type in this location";
        return Err(fail(412, "resource_unavailable", message));
    }
    let req: CreateServer = parse_body(&body)?;
    if st.sold_out.contains(&req.server_type) {
        return Err(fail(412, "resource_unavailable", "error during placement"));
    }
    if !valid_hostname(&req.name) {
        let name = &req.name;
        let message = format!("invalid input in field 'name': '{name}' is not a valid hostname");
        return Err(invalid(message));
    }
    let ty = find_type(&req.server_type)?;
    // `image` is a name ("ubuntu-24.04") or an ID given as number or string.
    let wanted = req
        .image
        .as_str()
        .map_or_else(|| req.image.to_string(), str::to_string);
    let wanted_id = wanted.parse::<u64>().ok();
    let image = (st.images.values())
        .find(|i| (wanted_id.is_some() && i["id"].as_u64() == wanted_id) || i["name"] == *wanted)
        .filter(|i| i["status"] == "available")
        .cloned();
    let Some(image) = image else {
        return Err(invalid(format!(
            "invalid input in field 'image': '{wanted}' not available"
        )));
    };
    let location = req.location.as_deref().unwrap_or(LOCATIONS[0].name);
    let Some(location) = LOCATIONS.iter().find(|l| l.name == location) else {
        let message = format!("invalid input in field 'location': unknown location '{location}'");
        return Err(invalid(message));
    };
    if st.servers.values().any(|s| s.name == req.name) {
        let mut err = fail(409, "uniqueness_error", "server name is already used");
        err.details = Some(json!({ "fields": [{ "name": "name" }] }));
        return Err(err);
    }
    let id = st.fresh_id();
    let server = Server {
        id,
        name: req.name,
        status: "initializing",
        created: now_iso(),
        disk: ty["disk"].as_u64().unwrap_or_default(),
        ty,
        datacenter: location.datacenter_json(),
        location: location.json(),
        image,
        labels: req.labels.unwrap_or_default(),
        user_data: req.user_data,
        ipv4: req.public_net.and_then(|p| p.enable_ipv4).unwrap_or(true),
    };
    let rendered = server_json(&server);
    st.servers.insert(id, server);
    let done = if req.start_after_create.unwrap_or(true) {
        "running"
    } else {
        "off"
    };
    let action = st.new_action("create_server", &[(id, "server")], Effect::Status(id, done));
    created(json!({
        "server": rendered, "action": action, "next_actions": [], "root_password": null,
    }))
}

async fn get_server(State(state): State<Shared>, Path(id): Path<String>) -> Reply {
    let mut st = lock(&state);
    ok(json!({ "server": server_json(st.server(&id)?) }))
}

async fn delete_server(State(state): State<Shared>, Path(id): Path<String>) -> Reply {
    let mut st = lock(&state);
    let id = st.server(&id)?.id;
    let action = st.begin(id, "delete_server", "deleting", Effect::Delete(id));
    ok(json!({ "action": action }))
}

#[derive(Deserialize)]
struct ChangeType {
    server_type: String,
    #[serde(default)]
    upgrade_disk: bool,
}

#[derive(Deserialize)]
struct CreateImage {
    #[serde(rename = "type")]
    kind: Option<String>,
    description: Option<String>,
    labels: Option<BTreeMap<String, String>>,
}

async fn server_action(
    State(state): State<Shared>,
    Path((id, action)): Path<(String, String)>,
    body: Bytes,
) -> Reply {
    let mut st = lock(&state);
    let server = st.server(&id)?;
    let (id, status) = (server.id, server.status);
    // Lenient like the real API: powering on a running server (or off an off one) just succeeds.
    let mut power = |command, busy, done| {
        let busy = if status == done { done } else { busy };
        st.begin(id, command, busy, Effect::Status(id, done))
    };
    let action = match action.as_str() {
        "poweron" => power("start_server", "starting", "running"),
        "poweroff" => power("stop_server", "stopping", "off"),
        "shutdown" => power("shutdown_server", "stopping", "off"),
        "change_type" => {
            let req: ChangeType = parse_body(&body)?;
            let ty = find_type(&req.server_type)?;
            if status != "off" {
                let message = "server must be stopped before changing type";
                return Err(fail(409, "server_not_stopped", message));
            }
            let effect = Effect::ChangeType {
                server: id,
                ty,
                upgrade_disk: req.upgrade_disk,
            };
            st.begin(id, "change_server_type", "migrating", effect)
        }
        "create_image" => return create_image(&mut st, id, parse_body(&body)?),
        _ => return Err(fail(404, "not_found", "not found")),
    };
    created(json!({ "action": action }))
}

fn create_image(st: &mut Inner, server: u64, req: CreateImage) -> Reply {
    if req.kind.as_deref().is_some_and(|kind| kind != "snapshot") {
        let message = "invalid input in field 'type': only 'snapshot' is supported";
        return Err(invalid(message));
    }
    let s = st.server(&server.to_string())?;
    let from = json!({ "id": s.id, "name": s.name });
    let (disk, architecture) = (s.disk, s.ty["architecture"].clone());
    let (os_flavor, os_version) = (s.image["os_flavor"].clone(), s.image["os_version"].clone());
    let id = st.fresh_id();
    let image = json!({
        "id": id, "type": "snapshot", "status": "creating", "name": null,
        "description": req.description.unwrap_or_default(), "image_size": null,
        "disk_size": disk, "created": now_iso(), "created_from": from, "bound_to": null,
        "os_flavor": os_flavor, "os_version": os_version, "rapid_deploy": false,
        "protection": { "delete": false }, "deprecated": null, "deleted": null,
        "architecture": architecture, "labels": req.labels.unwrap_or_default(),
    });
    st.images.insert(id, image.clone());
    let resources = [(server, "server"), (id, "image")];
    let action = st.new_action("create_image", &resources, Effect::ImageReady(id));
    created(json!({ "image": image, "action": action }))
}

async fn get_image(State(state): State<Shared>, Path(id): Path<String>) -> Reply {
    let st = lock(&state);
    let image = id.parse::<u64>().ok().and_then(|n| st.images.get(&n));
    ok(json!({ "image": image.ok_or_else(|| not_found("image", &id))? }))
}

async fn get_action(State(state): State<Shared>, Path(raw): Path<String>) -> Reply {
    let mut st = lock(&state);
    let action = raw
        .parse::<u64>()
        .ok()
        .and_then(|id| st.actions.get_mut(&id));
    let action = action.ok_or_else(|| not_found("action", &raw))?;
    action.polls += 1;
    let id = action.id;
    st.tick();
    ok(json!({ "action": st.actions.get(&id).map(|a| &a.json) }))
}
