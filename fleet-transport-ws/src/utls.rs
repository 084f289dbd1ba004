//! Server-side TLS on rustls' unbuffered API, so an idle connection keeps
//! no buffers.
//!
//! `tokio-rustls` wraps a buffered `ServerConnection`, whose record
//! deframer resizes its read buffer to 4 KiB before every read and never
//! frees it: ~4 KB held by every idle agent connection. Here the buffers are
//! ours: TLS bytes are read through a stack buffer, and the incoming,
//! decrypted and outgoing buffers are released as soon as they are empty.
//! An idle connection holds only the rustls connection state.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use rustls::pki_types::CertificateDer;
use rustls::server::{ServerConfig, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most read from the socket per call (on the stack, not kept).
const READ_CHUNK: usize = 4096;

/// The most unprocessed TLS bytes held: a handshake message rustls accepts
/// (64 KiB, possibly split over records) with room to spare. A record is at
/// most ~18 KB; rustls refuses a longer length in a record header.
const MAX_INCOMING: usize = 96 * 1024;

/// A server TLS stream past its handshake.
pub(crate) struct ServerTls<IO> {
    io: IO,
    conn: UnbufferedServerConnection,
    /// Received TLS bytes not yet processed (a partial record at most).
    incoming: Vec<u8>,
    /// Decrypted bytes not yet read; the first `plain_pos` were.
    plain: Vec<u8>,
    plain_pos: usize,
    /// TLS bytes to send; the first `out_pos` were.
    outgoing: Vec<u8>,
    out_pos: usize,
    /// The peer sent close_notify: no more data will come.
    peer_closed: bool,
    close_sent: bool,
    /// Processing failed: rustls is not called again (it would deframe the
    /// same bad bytes and raise a second fatal alert).
    failed: bool,
}

/// What to encrypt once the connection can send.
enum Outgo<'a> {
    Nothing,
    Data(&'a [u8]),
    CloseNotify,
}

/// Where processing stopped.
enum Step {
    /// More TLS bytes from the peer are needed to go on with the handshake.
    Blocked,
    /// Nothing left to process; application data can be sent.
    Ready,
    /// Both sides closed.
    Closed,
}

fn tls_error(e: impl std::error::Error + Send + Sync + 'static) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Runs `f` on room at the end of `out`, growing it to the size `f` asks for.
fn append<E: std::error::Error + Send + Sync + 'static>(
    out: &mut Vec<u8>,
    mut f: impl FnMut(&mut [u8]) -> Result<usize, E>,
    required: impl Fn(&E) -> Option<usize>,
) -> io::Result<()> {
    let start = out.len();
    loop {
        match f(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(e) => match required(&e) {
                Some(size) if out.len() - start < size => out.resize(start + size, 0),
                _ => {
                    out.truncate(start);
                    return Err(tls_error(e));
                }
            },
        }
    }
}

/// Completes a server TLS handshake on `io`.
pub(crate) async fn accept<IO>(io: IO, config: Arc<ServerConfig>) -> io::Result<ServerTls<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let conn = UnbufferedServerConnection::new(config).map_err(tls_error)?;
    let mut tls = ServerTls {
        io,
        conn,
        incoming: Vec::new(),
        plain: Vec::new(),
        plain_pos: 0,
        outgoing: Vec::new(),
        out_pos: 0,
        peer_closed: false,
        close_sent: false,
        failed: false,
    };
    loop {
        let step = match tls.process(Outgo::Nothing) {
            Ok(step) => step,
            Err(e) => {
                // Best effort: the client learns why (the alert) before
                // the socket closes; the handshake timeout bounds the wait.
                let _ = std::future::poll_fn(|cx| tls.poll_write_out(cx)).await;
                return Err(e);
            }
        };
        std::future::poll_fn(|cx| tls.poll_write_out(cx)).await?;
        match step {
            // A TLS 1.3 server may send before the client's Finished; the
            // handshake (and client certificate check) is done only after it.
            Step::Ready if !tls.conn.is_handshaking() => return Ok(tls),
            Step::Ready | Step::Blocked => {
                if std::future::poll_fn(|cx| tls.poll_fill(cx)).await? == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "tls handshake eof",
                    ));
                }
            }
            Step::Closed => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "closed during the tls handshake",
                ));
            }
        }
    }
}

impl<IO> ServerTls<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    /// The client's certificate chain, when it sent one.
    pub(crate) fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        self.conn.peer_certificates()
    }

    /// Processes the received TLS bytes: decrypted data goes to `plain`,
    /// TLS bytes to send to `outgoing`, and `send` is encrypted once the
    /// connection can send. After an error the connection is dead: the fatal
    /// alert rustls queued goes to `outgoing`, and every later call fails.
    fn process(&mut self, send: Outgo<'_>) -> io::Result<Step> {
        if self.failed {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the TLS connection failed earlier",
            ));
        }
        let result = self.process_records(send);
        if result.is_err() {
            self.failed = true;
            self.incoming = Vec::new();
        }
        result
    }

    /// Moves the fatal alert rustls queued with an error to `outgoing`.
    /// Called once, on the unprocessed input: rustls hands back what it
    /// queued before reading any of it, and a second call would read the
    /// same bad bytes again.
    fn queue_alert(&mut self) {
        let UnbufferedStatus { state, .. } = self.conn.process_tls_records(&mut self.incoming);
        if let Ok(ConnectionState::EncodeTlsData(mut encode)) = state {
            let _ = append(
                &mut self.outgoing,
                |buf| encode.encode(buf),
                |e| match e {
                    EncodeError::InsufficientSize(s) => Some(s.required_size),
                    _ => None,
                },
            );
        }
    }

    fn process_records(&mut self, mut send: Outgo<'_>) -> io::Result<Step> {
        loop {
            let UnbufferedStatus { mut discard, state } =
                self.conn.process_tls_records(&mut self.incoming);
            let state = match state {
                Ok(state) => state,
                Err(e) => {
                    self.incoming.drain(..discard);
                    // A peer's alert needs no answer; any other error
                    // queued ours.
                    if !matches!(e, rustls::Error::AlertReceived(_)) {
                        self.queue_alert();
                    }
                    return Err(tls_error(e));
                }
            };
            let step = match state {
                ConnectionState::ReadTraffic(mut read) => {
                    while let Some(record) = read.next_record() {
                        let record = record.map_err(tls_error)?;
                        discard += record.discard;
                        self.plain.extend_from_slice(record.payload);
                    }
                    None
                }
                ConnectionState::EncodeTlsData(mut encode) => {
                    append(
                        &mut self.outgoing,
                        |buf| encode.encode(buf),
                        |e| match e {
                            EncodeError::InsufficientSize(s) => Some(s.required_size),
                            _ => None,
                        },
                    )?;
                    None
                }
                // Queued in `outgoing`, written in order with the rest.
                ConnectionState::TransmitTlsData(transmit) => {
                    transmit.done();
                    None
                }
                ConnectionState::PeerClosed => {
                    self.peer_closed = true;
                    None
                }
                ConnectionState::Closed => {
                    self.peer_closed = true;
                    Some(Step::Closed)
                }
                ConnectionState::BlockedHandshake => Some(Step::Blocked),
                ConnectionState::WriteTraffic(mut write) => {
                    let required = |e: &EncryptError| match e {
                        EncryptError::InsufficientSize(s) => Some(s.required_size),
                        _ => None,
                    };
                    match std::mem::replace(&mut send, Outgo::Nothing) {
                        Outgo::Nothing => {}
                        Outgo::Data(data) => {
                            append(&mut self.outgoing, |buf| write.encrypt(data, buf), required)?
                        }
                        Outgo::CloseNotify => append(
                            &mut self.outgoing,
                            |buf| write.queue_close_notify(buf),
                            required,
                        )?,
                    }
                    Some(Step::Ready)
                }
                // Early data is not enabled in the server config.
                _ => return Err(io::Error::other("unexpected TLS state")),
            };
            if discard > 0 {
                self.incoming.drain(..discard);
            }
            if self.incoming.is_empty() {
                self.incoming = Vec::new();
            }
            if let Some(step) = step {
                return Ok(step);
            }
        }
    }

    /// Reads what the socket has into `incoming`; the count read (0 at EOF).
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.incoming.len() >= MAX_INCOMING {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "tls message buffer full",
            )));
        }
        let mut chunk = [0u8; READ_CHUNK];
        let mut buf = ReadBuf::new(&mut chunk);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf))?;
        self.incoming.extend_from_slice(buf.filled());
        Poll::Ready(Ok(buf.filled().len()))
    }

    /// Writes `outgoing` out, releasing it once empty.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_pos < self.outgoing.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.outgoing[self.out_pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_pos += n;
        }
        self.outgoing = Vec::new();
        self.out_pos = 0;
        Poll::Ready(Ok(()))
    }

    /// Writes what it can of `outgoing` without waiting.
    fn try_write_out(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        match self.poll_write_out(cx) {
            Poll::Ready(Err(e)) => Err(e),
            _ => Ok(()),
        }
    }
}

impl<IO> AsyncRead for ServerTls<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.plain_pos < this.plain.len() {
                let n = buf.remaining().min(this.plain.len() - this.plain_pos);
                buf.put_slice(&this.plain[this.plain_pos..this.plain_pos + n]);
                this.plain_pos += n;
                if this.plain_pos == this.plain.len() {
                    this.plain = Vec::new();
                    this.plain_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.peer_closed {
                return Poll::Ready(Ok(()));
            }
            let step = match this.process(Outgo::Nothing) {
                Ok(step) => step,
                Err(e) => {
                    // The alert goes out if the socket takes it now.
                    let _ = this.try_write_out(cx);
                    return Poll::Ready(Err(e));
                }
            };
            // Handshake messages processing queued (session tickets, a key
            // update): sent as the socket takes them.
            this.try_write_out(cx)?;
            // A close_notify just processed ends the stream cleanly, even
            // when the socket's end came with it (a client closing both at
            // once): the top of the loop returns what was decrypted, then 0.
            if matches!(step, Step::Closed) || this.plain_pos < this.plain.len() || this.peer_closed
            {
                continue;
            }
            if ready!(this.poll_fill(cx))? == 0 {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed connection without sending TLS close_notify",
                )));
            }
        }
    }
}

impl<IO> AsyncWrite for ServerTls<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        // At most one write's worth buffered here.
        ready!(this.poll_write_out(cx))?;
        let step = match this.process(Outgo::Data(buf)) {
            Ok(step) => step,
            Err(e) => {
                let _ = this.try_write_out(cx);
                return Poll::Ready(Err(e));
            }
        };
        match step {
            Step::Ready => {}
            Step::Blocked => return Poll::Ready(Err(io::Error::other("tls handshake not done"))),
            Step::Closed => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        }
        this.try_write_out(cx)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_sent {
            ready!(this.poll_write_out(cx))?;
            this.close_sent = true;
            // Best effort: a closed or failed connection sends nothing.
            let _ = this.process(Outgo::CloseNotify);
        }
        ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}
