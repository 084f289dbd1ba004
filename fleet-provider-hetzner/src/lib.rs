//! fleet's [`Provider`](fleet_core::provider::Provider) over the Hetzner
//! Cloud API, on the [`hcloud`] crate.
//!
//! ```ignore
//! let mut cfg = HetznerConfig::new(Secret::new(std::env::var("HCLOUD_TOKEN")?), "fsn1");
//! cfg.server_types = vec!["cx22".into(), "cx32".into()];
//! cfg.user_data = Some(std::fs::read_to_string("agent-cloud-init.yaml")?);
//! let provider = HetznerProvider::new(cfg)?;
//! ```
//!
//! What maps to what (every call is `hcloud::apis::…`):
//!
//! | fleet | Hetzner Cloud API | `hcloud` call |
//! |---|---|---|
//! | `offerings` | server types priced and placeable in the configured location, not deprecated (EUR net → USD at a fixed rate) | `server_types_api::list_server_types`, all pages |
//! | `create` | `POST /servers` named [`server_name`], labelled with the spec's tags plus node and pool, from an image name or a snapshot id, with cloud-init user data; waits for its action and `next_actions` | `servers_api::create_server` |
//! | the instance of node N | the server labelled `fleet-node=N`, `fleet-id` and `fleet-namespace` as in the spec (`!key` when the spec has none) | `servers_api::list_servers` with a label selector |
//! | `start` / `stop` | `poweron` / `shutdown`, then `poweroff` if it does not stop within `shutdown_timeout` | `power_on_server`, `shutdown_server`, `power_off_server` |
//! | `resize` | `change_type` without a disk upgrade (the server must be off) | `change_type_of_server` |
//! | `snapshot` | `create_image` of type `snapshot`, labelled with the node | `create_image_from_server`, `images_api::get_image` |
//! | `delete` | `DELETE /servers/{id}`, only if the server is labelled with the node asked for; a missing server counts as deleted | `get_server`, `delete_server` |
//! | `list(filter)` | `GET /servers?label_selector=` every filter label (and `fleet-node` present), all pages; `deleting` servers are left out | `servers_api::list_servers` |
//! | waiting for an action | `GET /actions/{id}` every `poll_interval`, at most `action_timeout` | `actions_api::get_action` |
//!
//! # Client
//!
//! `hcloud`'s calls take a `Configuration` whose `reqwest::Client` this
//! crate builds: rustls on ring (the process-wide ring provider is
//! installed first, as elsewhere in fleet), `request_timeout` per request, no
//! proxy from the environment (requests carry the project token), the
//! bearer token, and the API base (`https://api.hetzner.cloud/v1`, which
//! every `hcloud` call is written against) mapped to
//! [`HetznerConfig::api_url`] through `base_path_mapping`, so the fake below
//! serves the same calls.
//!
//! # Retries and rate limits
//!
//! `hcloud` neither retries nor waits, and it returns an error answer as
//! `ResponseError { status, content }` — the body without the headers. So:
//!
//! - A 429 (`rate_limit_exceeded`) makes one plain `GET /locations?per_page=1`
//!   on the same client (the *probe*) to read `RateLimit-Limit`,
//!   `RateLimit-Remaining` and `RateLimit-Reset` (every answer carries them,
//!   a 429 too). If requests remain the call is sent again at once; else it
//!   waits until `RateLimit-Reset` (a unix second), at most
//!   [`HetznerConfig::rate_limit_max_wait`], and until then no other call of
//!   this provider is sent either. Without headers it backs off (250 ms,
//!   doubling). After [`HetznerConfig::max_retries`] the controller gets
//!   `RateLimited` with the reset time. The probe is the cleanest way to the
//!   headers: plain reqwest has no middleware to see them, wrapping the
//!   client (reqwest-middleware) changes the type `hcloud` takes, and
//!   re-implementing the calls with raw reqwest would give up `hcloud`'s
//!   typed API; it costs one cheap request per 429. The cap matters because
//!   Hetzner's `RateLimit-Reset` is when the hourly bucket is *full* again
//!   (it refills one request per second at 3600/h), often far later than
//!   the next request would pass.
//! - Reads (and deletes) that fail transiently (5xx, `locked`, `conflict`,
//!   connection errors, timeouts) are retried with the same backoff; calls
//!   with effects are not (a create the API may have executed is found by
//!   its labels when the controller retries it).
//! - Lists follow `meta.pagination.next_page`, 50 per page.
//!
//! # Errors
//!
//! API errors are classified from status and error code, with the call
//! that failed in the message: 429/`rate_limit_exceeded` → `RateLimited`,
//! 404/`not_found` → `NotFound`, `uniqueness_error` → `AlreadyExists`,
//! `resource_limit_exceeded` → `Quota`, `resource_unavailable` (412 "error
//! during placement", a type sold out in the location)/`placement_error` →
//! `Capacity`, `locked`/`conflict`/`maintenance`/`service_error`/5xx and
//! transport failures → `Transient`, the rest (`unauthorized`,
//! `forbidden`, `invalid_input`, …) → `Permanent`. A failed action maps its
//! code the same way (`Capacity`, `Quota`, else `Transient`).
//!
//! # Fleets sharing a project
//!
//! Every spec carries `fleet-id` ([`TAG_FLEET`](fleet_core::provider::TAG_FLEET))
//! and `fleet-namespace`; a server is a node's only if both match, so two
//! fleets with the same namespace, pool names and node ids in one project
//! never adopt, list or delete each other's servers. Server names are unique
//! per project, so [`server_name`] adds a hash of fleet id, namespace and
//! node id to the node id.
//!
//! # User data
//!
//! The user data must start `fleet-agent` with the daemon's address, the
//! pool CA and the node's single-use bootstrap token: the template's
//! `{{node}}`, `{{pool}}`, `{{bootstrap_token}}` (and whatever
//! [`HetznerConfig::user_data_vars`] holds, e.g. `{{daemon_url}}`,
//! `{{ca_pem}}`) are filled in per server. See `examples/cloud-init.sh`.
//!
//! # Testing
//!
//! The `fake` feature adds `fake::FakeHetzner`, a stateful fake of the API
//! on loopback whose answers deserialize into `hcloud`'s models, with
//! switches for 429s and sold-out server types.

mod api;
mod config;
#[cfg(feature = "fake")]
pub mod fake;
mod provider;

pub use config::{DEFAULT_API_URL, HetznerConfig, PRIMARY_IPV4_EUR_HOURLY};
pub use provider::{HetznerProvider, eur_hourly_to_usd, server_name};
