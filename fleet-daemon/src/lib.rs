//! # fleet-daemon
//!
//! The fleet control plane as a process: `daemon.toml` ([`config`]) wired
//! to [`fleet_runtime`], a store (redb, or JetStream KV with feature
//! `nats`), the transports (TLS WebSocket; NATS with feature `nats`), a
//! provider (local agents; EC2 and Hetzner with features `aws` and
//! `hetzner`) and the HTTP API ([`http`], [`auth`]). An embedder that wants
//! a fleet inside its own process links `fleet-runtime` instead.

pub mod alerts;
pub mod artifacts;
pub mod auth;
pub mod backup;
pub mod config;
pub mod console;
pub mod http;
mod providers;
pub mod serve;
mod tls_listener;
