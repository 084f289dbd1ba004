//! fleet Transport over WebSocket with TLS (tokio-tungstenite, rustls): agent sessions and claim-plane clients.
