//! Entry points into the server's private decoding paths for the in-tree
//! fuzzer (`fleet-fuzz`) and the TLS interop tests (feature `fuzz`; not a
//! stable API).
//!
//! Each runs the code the server runs, not a copy: [`tls_accept`] is the
//! unbuffered TLS stream every connection goes through, [`ws_read`] the
//! WebSocket parser with the server's settings followed by each plane's
//! message decoding.

use std::io::{self, Read, Write};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use fleet_core::protocol::{AgentMsg, DaemonMsg, decode_limited};
use rustls::ServerConfig;
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::{Message, WebSocket};

use crate::config::WsConfig;
use crate::conn::{CloseReason, close_for, ws_config};
use crate::frame::{ServerFrame, read_client_frame};
use crate::utls::{self, ServerTls};

/// The server's TLS stream past its handshake (`utls`).
pub struct TlsServerStream<IO>(ServerTls<IO>);

/// Completes a server TLS handshake on `io` the way the server does for
/// every connection.
pub async fn tls_accept<IO>(io: IO, config: Arc<ServerConfig>) -> io::Result<TlsServerStream<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    utls::accept(io, config).await.map(TlsServerStream)
}

impl<IO> TlsServerStream<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    /// The client's certificate chain, when it sent one.
    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        self.0.peer_certificates()
    }
}

impl<IO> AsyncRead for TlsServerStream<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl<IO> AsyncWrite for TlsServerStream<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

/// Which side of a connection reads the bytes given to [`ws_read`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsSide {
    /// The server: frames must be masked; messages are claim-plane client
    /// frames or agent messages.
    Server,
    /// A client: frames are unmasked; messages are claim-plane server frames
    /// or daemon messages.
    Client,
}

/// What [`ws_read`] saw.
#[derive(Debug, Default)]
pub struct WsReadReport {
    /// Data messages read.
    pub messages: usize,
    /// Data messages that decoded as a message of at least one plane.
    pub decoded: usize,
    /// The decode error kind of every data message no plane took.
    pub refused: Vec<&'static str>,
    /// The code of the peer's close frame, when one came.
    pub peer_close: Option<u16>,
    /// The close code the connection's driver answers the read error with;
    /// `None` when it would drop the connection without one.
    pub close_code: Option<u16>,
    /// The error that ended reading.
    pub error: String,
}

/// Bytes from a peer: read in full, then the end of the stream; writes
/// (pongs, close replies) are counted and dropped.
struct Replay<'a> {
    input: &'a [u8],
    written: usize,
}

impl Read for Replay<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.input.len());
        buf[..n].copy_from_slice(&self.input[..n]);
        self.input = &self.input[n..];
        Ok(n)
    }
}

impl Write for Replay<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.written += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads `bytes` as the WebSocket stream of an established connection, with
/// the settings the connection driver uses (`cfg`'s size limits), and
/// decodes every data message as `side` does on both planes; stops at the
/// first error (the end of the input at the latest).
pub fn ws_read(bytes: &[u8], side: WsSide, cfg: &WsConfig) -> WsReadReport {
    let role = match side {
        WsSide::Server => Role::Server,
        WsSide::Client => Role::Client,
    };
    let max = cfg.max_message_bytes;
    let mut ws = WebSocket::from_raw_socket(
        Replay {
            input: bytes,
            written: 0,
        },
        role,
        Some(ws_config(cfg)),
    );
    let mut report = WsReadReport::default();
    loop {
        let data = match ws.read() {
            Ok(Message::Text(t)) => t.as_bytes().to_vec(),
            Ok(Message::Binary(b)) => b.to_vec(),
            Ok(Message::Close(frame)) => {
                let reason = match frame {
                    Some(f) => CloseReason::new(u16::from(f.code), f.reason.as_str()),
                    None => CloseReason::new(1005, ""),
                };
                report.peer_close = Some(reason.code);
                continue;
            }
            Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => continue,
            Err(e) => {
                report.close_code = close_for(&e).map(|r| r.code);
                report.error = e.to_string();
                return report;
            }
        };
        report.messages += 1;
        let (a, b) = match side {
            WsSide::Server => (
                read_client_frame(&data, max).map(drop).map_err(|u| u.error),
                decode_limited::<AgentMsg>(&data, max).map(drop),
            ),
            WsSide::Client => (
                decode_limited::<ServerFrame>(&data, max).map(drop),
                decode_limited::<DaemonMsg>(&data, max).map(drop),
            ),
        };
        match (a, b) {
            (Err(e), Err(_)) => report.refused.push(e.kind()),
            _ => report.decoded += 1,
        }
    }
}
