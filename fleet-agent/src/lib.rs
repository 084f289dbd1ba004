//! The node-side executor: dials the daemon, runs commands, streams events, serves the per-claim mTLS gateway, watches for spot interruption, drains on SIGTERM.
