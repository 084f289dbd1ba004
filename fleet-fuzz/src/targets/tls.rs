//! The server's TLS stream (`fleet-transport-ws/src/utls.rs`, through
//! `fleet_transport_ws::fuzz::tls_accept`), fed as the client side of a
//! server session over an in-memory pipe, in two modes chosen by the first
//! byte:
//!
//! - **raw** (`< 0x80`): the rest is what a client sends (captured
//!   ClientHellos from rustls, OpenSSL and Python, mutated), cut into reads
//!   at boundaries the first byte seeds, then the end of the stream. The
//!   handshake must end, with an error or not, without waiting.
//! - **session** (`>= 0x80`): a real rustls client (the variant the byte
//!   picks: TLS 1.3 or 1.2 only, with or without a client certificate,
//!   small records) handshakes with the server, its flights cut into reads
//!   and optionally re-split into more TLS records or tampered with, then
//!   a script of 4-byte operations runs: send data, flush it in reads of
//!   any size, tamper with or truncate the next flush, inject raw bytes,
//!   read on the server, write from the server, key update, close_notify
//!   from either side, half-close. Untampered sessions must deliver every
//!   byte in order both ways and end the way TLS says (close_notify: a
//!   clean end; without: an error).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};

use fleet_core::protocol::Secret;
use fleet_transport_ws::fuzz::{TlsServerStream, tls_accept};
use fleet_transport_ws::{ClientIdentity, ClientTlsConfig, ServerTlsConfig};
use rand::Rng as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{Target, label_of, poll_now};
use crate::mutate::Rng;

pub(super) struct TlsStream;

/// The server's config and the client variants, made once per process.
struct Fixtures {
    server: Arc<ServerConfig>,
    clients: Vec<Arc<ClientConfig>>,
}

/// How many client variants a session can pick.
pub(crate) const CLIENT_VARIANTS: u8 = 5;

fn fixtures() -> Result<&'static Fixtures, String> {
    static F: OnceLock<Result<Fixtures, String>> = OnceLock::new();
    F.get_or_init(|| make_fixtures().map_err(|e| format!("test PKI: {e}")))
        .as_ref()
        .map_err(Clone::clone)
}

fn make_fixtures() -> Result<Fixtures, Box<dyn std::error::Error>> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    let leaf =
        |names: Vec<String>, uri: Option<&str>, eku| -> Result<(String, String), rcgen::Error> {
            let mut p = CertificateParams::new(names)?;
            if let Some(uri) = uri {
                p.subject_alt_names.push(SanType::URI(uri.try_into()?));
            }
            p.extended_key_usages = vec![eku];
            let key = KeyPair::generate()?;
            Ok((p.signed_by(&key, &ca)?.pem(), key.serialize_pem()))
        };
    let (cert, key) = leaf(
        vec!["localhost".to_owned()],
        None,
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    // The daemon's setting: client certificates verified when sent.
    let server = ServerTlsConfig {
        cert_chain_pem: cert,
        key_pem: Secret::new(key),
        client_ca_pem: Some(ca.pem()),
    }
    .build()?;
    let (node_cert, node_key) = leaf(
        Vec::new(),
        Some("fleet://node/n1"),
        ExtendedKeyUsagePurpose::ClientAuth,
    )?;
    let client = |identity: bool| {
        ClientTlsConfig {
            ca_pem: ca.pem(),
            identity: identity.then(|| ClientIdentity {
                cert_pem: node_cert.clone(),
                key_pem: Secret::new(node_key.clone()),
            }),
            server_name: None,
        }
        .build()
    };
    let plain = client(false)?;
    let with_cert = client(true)?;
    let tls12 = |identity: bool| -> Result<Arc<ClientConfig>, Box<dyn std::error::Error>> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.der().clone())?;
        let builder =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(&[&rustls::version::TLS12])?
                .with_root_certificates(roots);
        Ok(Arc::new(if identity {
            let certs = CertificateDer::pem_slice_iter(node_cert.as_bytes())
                .collect::<Result<Vec<_>, _>>()?;
            let key = PrivateKeyDer::from_pem_slice(node_key.as_bytes())?;
            builder.with_client_auth_cert(certs, key)?
        } else {
            builder.with_no_client_auth()
        }))
    };
    let mut small = (*plain).clone();
    small.max_fragment_size = Some(64);
    Ok(Fixtures {
        server,
        clients: vec![
            Arc::clone(&plain),
            Arc::clone(&with_cert),
            tls12(false)?,
            tls12(true)?,
            Arc::new(small),
        ],
    })
}

/// The client's end of the connection, as the server's socket sees it.
#[derive(Default)]
struct Pipe {
    /// Reads the server will get, in order.
    to_server: VecDeque<Vec<u8>>,
    /// The client shut its writing side: reads end after `to_server`.
    eof: bool,
    /// What the server wrote.
    from_server: Vec<u8>,
    /// The server shut its writing side.
    server_shut: bool,
}

#[derive(Clone, Default)]
struct PipeIo(Rc<RefCell<Pipe>>);

impl AsyncRead for PipeIo {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut p = self.0.borrow_mut();
        match p.to_server.pop_front() {
            Some(mut chunk) => {
                let n = chunk.len().min(buf.remaining());
                buf.put_slice(&chunk[..n]);
                if n < chunk.len() {
                    p.to_server.push_front(chunk.split_off(n));
                }
                Poll::Ready(Ok(()))
            }
            None if p.eof => Poll::Ready(Ok(())),
            None => Poll::Pending,
        }
    }
}

impl AsyncWrite for PipeIo {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut p = self.0.borrow_mut();
        if p.server_shut {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        p.from_server.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.borrow_mut().server_shut = true;
        Poll::Ready(Ok(()))
    }
}

/// Cuts `data` into reads: seed 0 is one read, 1 is one byte per read,
/// anything else random sizes (up to 1, 5, 64 or 4096 bytes) from a
/// generator the seed starts.
fn chunks(data: &[u8], seed: u8) -> Vec<Vec<u8>> {
    match seed {
        _ if data.is_empty() => Vec::new(),
        0 => vec![data.to_vec()],
        1 => data.iter().map(|b| vec![*b]).collect(),
        _ => {
            let mut x = u32::from(seed).wrapping_mul(0x9e37_79b9) | 1;
            let max = [1, 5, 64, 4096][usize::from(seed) % 4];
            let mut out = Vec::new();
            let mut rest = data;
            while !rest.is_empty() {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                let n = (x as usize % max + 1).min(rest.len());
                out.push(rest[..n].to_vec());
                rest = &rest[n..];
            }
            out
        }
    }
}

/// Splits every handshake record (plaintext ones: a ClientHello) into
/// records of at most `max` bytes of payload, as a client may.
pub(crate) fn resplit_records(data: &[u8], max: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 64);
    let mut rest = data;
    while rest.len() >= 5 {
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        let Some(payload) = rest.get(5..5 + len) else {
            break;
        };
        if rest[0] == 22 && max > 0 {
            for piece in payload.chunks(max) {
                out.extend_from_slice(&rest[..3]);
                out.extend_from_slice(&(piece.len() as u16).to_be_bytes());
                out.extend_from_slice(piece);
            }
        } else {
            out.extend_from_slice(&rest[..5 + len]);
        }
        rest = &rest[5 + len..];
    }
    out.extend_from_slice(rest);
    out
}

type Accept = Pin<Box<dyn std::future::Future<Output = io::Result<TlsServerStream<PipeIo>>>>>;

fn raw(seed: u8, bytes: &[u8]) -> Result<String, String> {
    let f = fixtures()?;
    let io = PipeIo::default();
    {
        let mut p = io.0.borrow_mut();
        p.to_server.extend(chunks(bytes, seed));
        p.eof = true;
    }
    match poll_now(tls_accept(io.clone(), Arc::clone(&f.server)))? {
        Err(e) => Ok(format!("raw: {}", label_of(&e.to_string()))),
        Ok(mut s) => {
            // Not expected of bytes with no live peer behind them, but
            // whatever follows must still be read to an end.
            let mut buf = [0u8; 4096];
            loop {
                let mut rb = ReadBuf::new(&mut buf);
                match Pin::new(&mut s).poll_read(&mut Context::from_waker(Waker::noop()), &mut rb) {
                    Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                        return Ok("raw: accepted, clean end".to_owned());
                    }
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => {
                        return Ok(format!("raw: accepted, {}", label_of(&e.to_string())));
                    }
                    Poll::Pending => {
                        return Err("server read waits after the end of the stream".to_owned());
                    }
                }
            }
        }
    }
}

/// The script, read 4 bytes at a time; zeros past its end.
struct Script<'a>(&'a [u8]);

impl Script<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte(), self.byte()])
    }
}

enum Server {
    Handshaking(Accept),
    Open(Box<TlsServerStream<PipeIo>>),
    Failed(String),
}

struct Session {
    io: PipeIo,
    client: ClientConnection,
    server: Server,
    /// Anything but the real client's bytes reached the server.
    tampered: bool,
    /// Tampering waiting for the next flush: (position, xor) or a cut.
    tamper_next: Option<(u16, u8)>,
    truncate_next: Option<u16>,
    sent: Vec<u8>,
    received: Vec<u8>,
    server_sent: Vec<u8>,
    client_got: Vec<u8>,
    client_error: Option<String>,
    client_saw_close: bool,
    close_notify_sent: bool,
    server_shut: bool,
    data_counter: u8,
}

fn cx() -> Context<'static> {
    Context::from_waker(Waker::noop())
}

impl Session {
    /// Sends what the client has queued, in reads cut by `seed`, applying
    /// pending tampering.
    fn flush(&mut self, seed: u8) {
        // Nothing follows a half-close on the wire.
        if self.io.0.borrow().eof {
            return;
        }
        let mut out = Vec::new();
        while self.client.wants_write() {
            match self.client.write_tls(&mut out) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        if out.is_empty() {
            return;
        }
        if let Some((pos, xor)) = self.tamper_next.take() {
            let i = usize::from(pos) % out.len();
            out[i] ^= xor.max(1);
            self.tampered = true;
        }
        if let Some(cut) = self.truncate_next.take() {
            let keep = out.len().saturating_sub(usize::from(cut % 64) + 1);
            out.truncate(keep);
            self.tampered = true;
        }
        self.io.0.borrow_mut().to_server.extend(chunks(&out, seed));
    }

    /// Hands the client what the server wrote.
    fn deliver_to_client(&mut self) {
        let data = std::mem::take(&mut self.io.0.borrow_mut().from_server);
        let mut rest = &data[..];
        while !rest.is_empty() && self.client_error.is_none() {
            if let Err(e) = self.client.read_tls(&mut rest) {
                self.client_error = Some(e.to_string());
                break;
            }
            if let Err(e) = self.client.process_new_packets() {
                self.client_error = Some(e.to_string());
            }
            self.drain_client();
        }
        self.drain_client();
    }

    fn drain_client(&mut self) {
        let mut buf = [0u8; 4096];
        loop {
            match self.client.reader().read(&mut buf) {
                Ok(0) => {
                    self.client_saw_close = true;
                    return;
                }
                Ok(n) => self.client_got.extend_from_slice(&buf[..n]),
                Err(_) => return,
            }
        }
    }

    /// Polls the handshake once; true once it is over (either way).
    fn poll_handshake(&mut self) -> bool {
        let Server::Handshaking(fut) = &mut self.server else {
            return true;
        };
        match fut.as_mut().poll(&mut cx()) {
            Poll::Ready(Ok(s)) => {
                self.server = Server::Open(Box::new(s));
                true
            }
            Poll::Ready(Err(e)) => {
                self.server = Server::Failed(e.to_string());
                true
            }
            Poll::Pending => false,
        }
    }

    /// Reads on the server until it would wait; `Some` when the stream
    /// ended (clean end or error).
    fn server_read(&mut self) -> Option<Result<(), String>> {
        let Server::Open(s) = &mut self.server else {
            return None;
        };
        let mut buf = [0u8; 4096];
        loop {
            let mut rb = ReadBuf::new(&mut buf);
            match Pin::new(&mut *s).poll_read(&mut cx(), &mut rb) {
                Poll::Ready(Ok(())) if rb.filled().is_empty() => return Some(Ok(())),
                Poll::Ready(Ok(())) => self.received.extend_from_slice(rb.filled()),
                Poll::Ready(Err(e)) => return Some(Err(e.to_string())),
                Poll::Pending => return None,
            }
        }
    }

    /// Tampered bytes are not read after the server's own close_notify:
    /// rustls (0.23.48) debug-asserts there, sending a fatal alert after a
    /// close_notify (release builds return the error). The server never
    /// reads after closing.
    fn reads_skipped(&self) -> bool {
        self.server_shut && self.tampered
    }

    fn data(&mut self, n: usize) -> Vec<u8> {
        self.data_counter = self.data_counter.wrapping_add(1);
        let c = self.data_counter;
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(c))
            .collect()
    }
}

fn session(variant: u8, script: &[u8]) -> Result<String, String> {
    let f = fixtures()?;
    let cfg = &f.clients[usize::from(variant % CLIENT_VARIANTS)];
    let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    let mut client = ClientConnection::new(Arc::clone(cfg), name).map_err(|e| e.to_string())?;
    // Every byte a send op writes is taken (and counted in `sent`).
    client.set_buffer_limit(None);
    let io = PipeIo::default();
    let accept: Accept = Box::pin(tls_accept(io.clone(), Arc::clone(&f.server)));
    let mut s = Session {
        io,
        client,
        server: Server::Handshaking(accept),
        tampered: false,
        tamper_next: None,
        truncate_next: None,
        sent: Vec::new(),
        received: Vec::new(),
        server_sent: Vec::new(),
        client_got: Vec::new(),
        client_error: None,
        client_saw_close: false,
        close_notify_sent: false,
        server_shut: false,
        data_counter: 0,
    };
    let mut sc = Script(script);
    // Header: read cuts, which flight to tamper with and how, how to
    // re-split the ClientHello into records.
    let seed = sc.byte();
    let tamper_flight = sc.byte() % 4;
    let tamper = (sc.u16(), sc.byte());
    let resplit = usize::from(sc.byte() % 8) * 16;

    // The handshake.
    let mut flight = 0;
    for _ in 0..16 {
        let mut out = Vec::new();
        while s.client.wants_write() {
            match s.client.write_tls(&mut out) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        if !out.is_empty() {
            flight += 1;
            if flight == 1 && resplit > 0 {
                out = resplit_records(&out, resplit);
            }
            if flight == tamper_flight {
                let i = usize::from(tamper.0) % out.len();
                out[i] ^= tamper.1.max(1);
                s.tampered = true;
            }
            s.io.0.borrow_mut().to_server.extend(chunks(&out, seed));
        }
        let done = s.poll_handshake();
        let from_server = !s.io.0.borrow().from_server.is_empty();
        s.deliver_to_client();
        if done && !s.client.is_handshaking()
            || s.client_error.is_some()
            || (out.is_empty() && !from_server)
        {
            break;
        }
    }
    if !s.poll_handshake() {
        // Stuck (tampered lengths leave the server waiting for more): the
        // end of the stream must end it.
        s.io.0.borrow_mut().eof = true;
        if !s.poll_handshake() {
            return Err("the handshake waits after the end of the stream".to_owned());
        }
    }
    match &s.server {
        Server::Failed(e) if !s.tampered => {
            return Err(format!("an untampered handshake failed on the server: {e}"));
        }
        Server::Failed(e) => return Ok(format!("session: handshake {}", label_of(e))),
        _ if s.tampered => {}
        _ => {
            if let Some(e) = &s.client_error {
                return Err(format!("an untampered handshake failed on the client: {e}"));
            }
            if s.client.is_handshaking() {
                return Err("the server finished the handshake, the client did not".to_owned());
            }
        }
    }

    // The script.
    let mut end: Option<Result<(), String>> = None;
    let mut ops = 0;
    while !sc.0.is_empty() && ops < 64 {
        ops += 1;
        let (op, a, b, c) = (sc.byte(), sc.byte(), sc.byte(), sc.byte());
        let n = usize::from(u16::from_be_bytes([b, c])) % 40_000;
        let half_closed = s.io.0.borrow().eof;
        match op % 13 {
            0 | 1 => {
                if !s.close_notify_sent && !half_closed {
                    let data = s.data(n);
                    if s.client.writer().write_all(&data).is_ok() {
                        s.sent.extend_from_slice(&data);
                    }
                }
            }
            2 | 3 => s.flush(a),
            4 => {
                s.tamper_next = Some((u16::from_be_bytes([b, c]), a));
            }
            5 => s.truncate_next = Some(u16::from(a)),
            6 if half_closed => {}
            6 => {
                let len = usize::from(a % 64);
                let bytes: Vec<u8> = (0..len)
                    .map(|i| b.wrapping_add((i as u8).wrapping_mul(c)))
                    .collect();
                s.io.0.borrow_mut().to_server.push_back(bytes);
                s.tampered = true;
            }
            7 if end.is_none() && !s.reads_skipped() => end = s.server_read(),
            7 => {}
            8 => {
                if let Server::Open(srv) = &mut s.server
                    && !s.server_shut
                {
                    let data = {
                        s.data_counter = s.data_counter.wrapping_add(1);
                        let k = s.data_counter;
                        (0..n)
                            .map(|i| (i as u8).wrapping_add(k))
                            .collect::<Vec<u8>>()
                    };
                    let mut written = 0;
                    while written < data.len() {
                        match Pin::new(&mut *srv).poll_write(&mut cx(), &data[written..]) {
                            Poll::Ready(Ok(k)) if k > 0 => written += k,
                            Poll::Ready(Ok(_)) | Poll::Ready(Err(_)) => break,
                            Poll::Pending => {
                                return Err(
                                    "server write waits on a pipe that never does".to_owned()
                                );
                            }
                        }
                    }
                    s.server_sent.extend_from_slice(&data[..written]);
                    s.deliver_to_client();
                }
            }
            9 => {
                if s.client.refresh_traffic_keys().is_ok() {
                    s.flush(a);
                }
            }
            10 if half_closed => {}
            10 => {
                s.client.send_close_notify();
                s.close_notify_sent = true;
                s.flush(a);
            }
            12 => {
                // Half-close: the client shuts down its writing side (no
                // close_notify); the server may still send.
                s.flush(0);
                s.io.0.borrow_mut().eof = true;
            }
            _ => {
                if let Server::Open(srv) = &mut s.server
                    && !s.server_shut
                {
                    match Pin::new(&mut *srv).poll_shutdown(&mut cx()) {
                        Poll::Ready(_) => {}
                        Poll::Pending => {
                            return Err(
                                "server shutdown waits on a pipe that never does".to_owned()
                            );
                        }
                    }
                    s.server_shut = true;
                    s.deliver_to_client();
                    if !s.tampered && s.client_error.is_none() && !s.client_saw_close {
                        return Err(
                            "the server's close_notify did not reach the client as a clean end"
                                .to_owned(),
                        );
                    }
                }
            }
        }
    }

    // The end: the client sends what it has and closes its side.
    if !s.io.0.borrow().eof {
        s.flush(0);
        s.io.0.borrow_mut().eof = true;
    }
    let end = match end {
        Some(e) => e,
        None if s.reads_skipped() => Ok(()),
        None => match s.server_read() {
            Some(e) => e,
            None if matches!(s.server, Server::Open(_)) => {
                return Err("server read waits after the end of the stream".to_owned());
            }
            None => Ok(()),
        },
    };
    if !s.tampered {
        if s.received != s.sent[..s.received.len().min(s.sent.len())]
            || s.received.len() > s.sent.len()
        {
            return Err(format!(
                "the server read {} bytes that differ from the {} the client sent",
                s.received.len(),
                s.sent.len()
            ));
        }
        if (end.is_ok() || s.close_notify_sent) && s.received.len() != s.sent.len() {
            return Err(format!(
                "the server read {} of the {} bytes the client sent before closing",
                s.received.len(),
                s.sent.len()
            ));
        }
        match (&end, s.close_notify_sent) {
            (Ok(()), false) => {
                return Err("the stream ended cleanly without close_notify".to_owned());
            }
            (Err(e), true) => return Err(format!("the stream failed after close_notify: {e}")),
            _ => {}
        }
        if s.client_error.is_none() && s.client_got != s.server_sent {
            return Err(format!(
                "the client read {} bytes; the server sent {}",
                s.client_got.len(),
                s.server_sent.len()
            ));
        }
    }
    Ok(format!(
        "session {}: {}{}",
        variant % CLIENT_VARIANTS,
        match &end {
            Ok(()) => "clean end".to_owned(),
            Err(e) => label_of(e),
        },
        if s.tampered { ", tampered" } else { "" }
    ))
}

impl Target for TlsStream {
    fn name(&self) -> &'static str {
        "tls"
    }

    fn run(&self, input: &[u8]) -> Result<String, String> {
        match input.split_first() {
            None => raw(0, &[]),
            Some((&m, rest)) if m < 0x80 => raw(m, rest),
            Some((&m, rest)) => session(m & 0x7f, rest),
        }
    }

    /// Raw inputs: records re-split, merged or given another header, other
    /// read cuts. Sessions: operations inserted, dropped or replaced.
    fn mutate_structured(&self, input: &[u8], _pool: &[Vec<u8>], rng: &mut Rng) -> Option<Vec<u8>> {
        let (&m, rest) = input.split_first()?;
        if m < 0x80 {
            let mut out = vec![if rng.gen_ratio(1, 2) {
                rng.gen_range(0..0x80)
            } else {
                m
            }];
            match rng.gen_range(0..3) {
                0 => out.extend(resplit_records(rest, rng.gen_range(1..=300))),
                1 => {
                    // A record header that lies: type, version or length.
                    let mut body = rest.to_vec();
                    if body.len() >= 5 {
                        match rng.gen_range(0..3) {
                            0 => body[0] = [20, 21, 22, 23, 24, 0, 255][rng.gen_range(0..7)],
                            1 => body[1..3].copy_from_slice(
                                &[[3, 0], [3, 4], [2, 0], [0xff, 0xff]][rng.gen_range(0..4)],
                            ),
                            _ => body[3..5].copy_from_slice(
                                &[0u16, 1, 0x3fff, 0x4000, 0x4101, 0xffff][rng.gen_range(0..6)]
                                    .to_be_bytes(),
                            ),
                        }
                    }
                    out.extend(body);
                }
                _ => {
                    // The same bytes twice (a second ClientHello), or cut
                    // mid-record.
                    out.extend_from_slice(rest);
                    if rng.gen_ratio(1, 2) {
                        out.extend_from_slice(rest);
                    } else {
                        let cut = rng.gen_range(0..=rest.len());
                        out.truncate(1 + cut);
                    }
                }
            }
            return Some(out);
        }
        // Header: 6 bytes; then 4-byte operations.
        let mut out = vec![m];
        let header: Vec<u8> = rest.iter().copied().take(6).collect();
        let mut ops: Vec<[u8; 4]> = rest
            .get(6..)
            .unwrap_or(&[])
            .chunks(4)
            .map(|c| {
                [
                    c[0],
                    *c.get(1).unwrap_or(&0),
                    *c.get(2).unwrap_or(&0),
                    *c.get(3).unwrap_or(&0),
                ]
            })
            .collect();
        match rng.gen_range(0..4) {
            0 => {
                let at = rng.gen_range(0..=ops.len());
                ops.insert(at, rng.r#gen());
            }
            1 if !ops.is_empty() => {
                let at = rng.gen_range(0..ops.len());
                ops.remove(at);
            }
            2 if !ops.is_empty() => {
                let at = rng.gen_range(0..ops.len());
                ops[at] = rng.r#gen();
            }
            _ => out[0] = 0x80 | rng.gen_range(0..CLIENT_VARIANTS),
        }
        out.extend(header);
        out.extend(ops.iter().flatten());
        Some(out)
    }

    fn dictionary(&self, _seeds: &[Vec<u8>]) -> Vec<Vec<u8>> {
        // Record headers and handshake message types.
        vec![
            vec![22, 3, 1],
            vec![22, 3, 3],
            vec![23, 3, 3],
            vec![21, 3, 3, 0, 2, 1, 0],
            vec![20, 3, 3, 0, 1, 1],
            vec![0xff, 0xff],
            vec![0x40, 0x01],
            vec![1, 0, 0],
            vec![0, 0],
        ]
    }
}

/// The seed inputs of this target, made with the real client: every
/// variant's ClientHello (raw mode) and a few session scripts. For the
/// committed corpus (`fleet-fuzz seed-tls <dir>`).
pub fn seed_inputs() -> Result<Vec<(String, Vec<u8>)>, String> {
    let f = fixtures()?;
    let mut out = Vec::new();
    for (i, cfg) in f.clients.iter().enumerate() {
        let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
        let mut c = ClientConnection::new(Arc::clone(cfg), name).map_err(|e| e.to_string())?;
        let mut hello = vec![0u8];
        while c.wants_write() {
            match c.write_tls(&mut hello) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        out.push((format!("rustls-client-hello-variant{i}.bin"), hello));
    }
    let scripts: &[(&str, u8, &[u8])] = &[
        // send 100, flush whole, server reads, close_notify, server reads
        (
            "session-send-read-close.bin",
            0,
            &[
                0, 0, 0, 0, 0, 0, 0, 0, 0, 100, 2, 0, 0, 0, 7, 0, 0, 0, 10, 0, 0, 0, 7, 0, 0, 0,
            ],
        ),
        // TLS 1.2 with a client certificate; 1-byte reads of a 5000-byte send; echo 3000 back
        (
            "session-tls12-cert-bytewise.bin",
            3,
            &[
                1, 0, 0, 0, 0, 0, 0, 0, 0x13, 0x88, 2, 1, 0, 0, 7, 0, 0, 0, 8, 0, 0x0b, 0xb8, 10,
                1, 0, 0,
            ],
        ),
        // ClientHello re-split into 16-byte records; coalesced sends; key update; server closes first
        (
            "session-resplit-keyupdate-server-close.bin",
            1,
            &[
                0, 0, 0, 0, 0, 1, 0, 0, 0, 10, 0, 0, 0, 20, 0, 0, 0, 30, 2, 0, 0, 0, 9, 0, 0, 0, 0,
                0, 0, 40, 2, 77, 0, 0, 7, 0, 0, 0, 11, 0, 0, 0,
            ],
        ),
        // half-close: the client ends its side without close_notify while the server writes
        (
            "session-half-close.bin",
            4,
            &[
                5, 0, 0, 0, 0, 0, 0, 0, 0x40, 0, 2, 5, 0, 0, 12, 0, 0, 0, 7, 0, 0, 0, 8, 0, 0x10, 0,
            ],
        ),
        // a flipped byte in the client's Finished
        (
            "session-tampered-finished.bin",
            0,
            &[0, 2, 0, 10, 0x55, 0, 0, 0, 0, 10, 2, 0, 0, 0, 7, 0, 0, 0],
        ),
    ];
    for (name, variant, script) in scripts {
        let mut input = vec![0x80 | variant];
        input.extend_from_slice(script);
        out.push(((*name).to_owned(), input));
    }
    Ok(out)
}
