//! fleet's [`Provider`](fleet_core::provider::Provider) over the Hetzner
//! Cloud API.
//!
//! ```ignore
//! let mut cfg = HetznerConfig::new(Secret::new(std::env::var("HCLOUD_TOKEN")?), "fsn1");
//! cfg.server_types = vec!["cx22".into(), "cx32".into()];
//! cfg.user_data = Some(std::fs::read_to_string("agent-cloud-init.yaml")?);
//! let provider = HetznerProvider::new(cfg)?;
//! ```
//!
//! What maps to what:
//!
//! | fleet | Hetzner Cloud |
//! |---|---|
//! | offering | a server type priced in the configured location (EUR net → USD at a fixed rate) |
//! | `create` | `POST /servers` named after the node, labelled with the fleet tags, from an image name or a snapshot id, with cloud-init user data |
//! | `start` / `stop` | `poweron` / `shutdown` (then `poweroff` if it does not stop in time) |
//! | `resize` | `change_type` without a disk upgrade (server must be off) |
//! | `snapshot` | `create_image` of type `snapshot` |
//! | `list` | `GET /servers?label_selector=…`, all pages |
//!
//! Every call waits for its action to finish. API errors are classified
//! for the controller: 429 → `RateLimited` (with the reset time), 404 →
//! `NotFound`, `uniqueness_error` → `AlreadyExists`, `resource_limit_exceeded`
//! → `Quota`, `resource_unavailable`/`placement_error` → `Capacity`,
//! `locked`/`conflict`/5xx → `Transient`, the rest → `Permanent`.
//!
//! The user data must start `fleet-agent` with the daemon's address, the
//! pool CA and the node's single-use bootstrap token: the template's
//! `{{node}}`, `{{pool}}`, `{{bootstrap_token}}` (and whatever
//! [`HetznerConfig::user_data_vars`] holds, e.g. `{{daemon_url}}`,
//! `{{ca_pem}}`) are filled in per server. See `examples/cloud-init.yaml`.

mod api;
mod config;
#[cfg(feature = "fake")]
pub mod fake;
mod provider;

pub use config::{DEFAULT_API_URL, HetznerConfig};
pub use provider::{HetznerProvider, eur_hourly_to_usd, server_name};
