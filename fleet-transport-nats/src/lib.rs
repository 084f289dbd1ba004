//! fleet Transport/ClaimClient over NATS subjects and Store over JetStream KV.
