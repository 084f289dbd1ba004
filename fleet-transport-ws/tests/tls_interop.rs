//! The server's own unbuffered TLS stream (`src/utls.rs`) against other TLS
//! clients over loopback TCP: rustls (TLS 1.3 and 1.2, with and without a
//! client certificate), `openssl s_client` and Python's `ssl`; a
//! ClientHello in one-byte writes and split across TLS records; several
//! records in one write; application data one byte per write; close_notify
//! from either side; half-closed sockets, with and without close_notify.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic is a failure"
)]

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use fleet_core::protocol::Secret;
use fleet_transport_ws::fuzz::{TlsServerStream, tls_accept};
use fleet_transport_ws::{ClientIdentity, ClientTlsConfig, ServerTlsConfig};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType,
};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A CA, the server's certificate (localhost, 127.0.0.1) and a node's
/// client certificate, as PEM files too (for the other clients).
struct Pki {
    dir: tempfile::TempDir,
    server: Arc<ServerConfig>,
    ca_pem: String,
    node_cert: String,
    node_key: String,
}

impl Pki {
    fn new() -> Pki {
        // Distinct names: OpenSSL takes a leaf whose subject is its
        // issuer's for a self-signed certificate.
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "fleet interop test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let leaf = |names: Vec<String>, uri: Option<&str>, eku| {
            let mut p = CertificateParams::new(names).unwrap();
            p.distinguished_name = DistinguishedName::new();
            p.distinguished_name
                .push(DnType::CommonName, "fleet interop test leaf");
            if let Some(uri) = uri {
                p.subject_alt_names
                    .push(SanType::URI(uri.try_into().unwrap()));
            }
            p.extended_key_usages = vec![eku];
            let key = KeyPair::generate().unwrap();
            (p.signed_by(&key, &ca).unwrap().pem(), key.serialize_pem())
        };
        let (cert, key) = leaf(
            vec!["localhost".to_owned(), "127.0.0.1".to_owned()],
            None,
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (node_cert, node_key) = leaf(
            Vec::new(),
            Some("fleet://node/n1"),
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        let server = ServerTlsConfig {
            cert_chain_pem: cert,
            key_pem: Secret::new(key),
            // As the daemon runs it: client certificates verified when sent.
            client_ca_pem: Some(ca.pem()),
        }
        .build()
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.path().join("node.pem"), &node_cert).unwrap();
        std::fs::write(dir.path().join("node.key"), &node_key).unwrap();
        Pki {
            dir,
            server,
            ca_pem: ca.pem(),
            node_cert,
            node_key,
        }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The client configuration fleet's own clients build.
    fn client(&self, identity: bool) -> Arc<ClientConfig> {
        ClientTlsConfig {
            ca_pem: self.ca_pem.clone(),
            identity: identity.then(|| ClientIdentity {
                cert_pem: self.node_cert.clone(),
                key_pem: Secret::new(self.node_key.clone()),
            }),
            server_name: None,
        }
        .build()
        .unwrap()
    }

    /// A rustls client speaking TLS 1.2 only.
    fn client_tls12(&self) -> Arc<ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::pem::PemObject::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        Arc::new(
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(&[&rustls::version::TLS12])
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }
}

type Tls = TlsServerStream<TcpStream>;

/// What the server read on a connection and how the stream ended.
#[derive(Debug)]
struct Seen {
    data: Vec<u8>,
    /// `Ok` on a clean end (close_notify), else the error's kind.
    end: Result<(), std::io::ErrorKind>,
}

async fn read_all(tls: &mut Tls) -> Seen {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tls.read(&mut buf).await {
            Ok(0) => return Seen { data, end: Ok(()) },
            Ok(n) => data.extend_from_slice(&buf[..n]),
            Err(e) => {
                return Seen {
                    data,
                    end: Err(e.kind()),
                };
            }
        }
    }
}

/// Accepts one connection, completes the server handshake and hands the
/// stream to `then`.
async fn serve_one<F, Fut, T>(pki: &Pki, then: F) -> (SocketAddr, JoinHandle<T>)
where
    F: FnOnce(Tls) -> Fut + Send + 'static,
    Fut: Future<Output = T> + Send,
    T: Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cfg = Arc::clone(&pki.server);
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let tls = tls_accept(tcp, cfg).await.expect("server handshake");
        then(tls).await
    });
    (addr, task)
}

/// The usual exchange: read everything to the end, then answer `reply` and
/// close with close_notify.
async fn read_then_reply(mut tls: Tls, reply: &'static [u8]) -> (Seen, bool) {
    let seen = read_all(&mut tls).await;
    let cert = tls.peer_certificates().is_some_and(|c| !c.is_empty());
    if !reply.is_empty() {
        tls.write_all(reply).await.unwrap();
    }
    tls.shutdown().await.unwrap();
    (seen, cert)
}

/// Records on the wire in `bytes`: (content type, payload length).
fn records(bytes: &[u8]) -> Vec<(u8, usize)> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 5 {
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        out.push((rest[0], len));
        rest = &rest[(5 + len).min(rest.len())..];
    }
    out
}

/// A blocking rustls client on a plain socket, so the test decides how
/// every byte goes on the wire. `first_flight` sends the ClientHello.
fn sync_client(
    addr: SocketAddr,
    cfg: Arc<ClientConfig>,
    first_flight: impl FnOnce(&[u8], &mut std::net::TcpStream),
) -> (ClientConnection, std::net::TcpStream) {
    let mut conn = ClientConnection::new(cfg, ServerName::try_from("localhost").unwrap()).unwrap();
    let mut sock = std::net::TcpStream::connect(addr).unwrap();
    sock.set_nodelay(true).unwrap();
    let mut hello = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut hello).unwrap();
    }
    first_flight(&hello, &mut sock);
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).unwrap();
    }
    (conn, sock)
}

/// What the client has queued, as TLS bytes.
fn pending_tls(conn: &mut ClientConnection) -> Vec<u8> {
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

/// Reads what the server sends until its close_notify (an error without).
fn sync_read_to_end(
    conn: &mut ClientConnection,
    sock: &mut std::net::TcpStream,
) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    rustls::Stream::new(conn, sock).read_to_end(&mut out)?;
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rustls_clients_of_both_versions_round_trip() {
    let pki = Pki::new();
    for (name, cfg, cert) in [
        ("tls1.3", pki.client(false), false),
        ("tls1.3 with a client certificate", pki.client(true), true),
        ("tls1.2", pki.client_tls12(), false),
    ] {
        let (addr, server) = serve_one(&pki, |tls| read_then_reply(tls, b"bye")).await;
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(cfg)
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap();
        tls.write_all(b"hello").await.unwrap();
        // close_notify, then our side of the socket is shut: the server
        // still answers on the half-closed connection.
        tls.shutdown().await.unwrap();
        let mut answer = Vec::new();
        tls.read_to_end(&mut answer).await.unwrap();
        let (seen, had_cert) = server.await.unwrap();
        assert_eq!(seen.data, b"hello", "{name}");
        assert_eq!(seen.end, Ok(()), "{name}: close_notify is a clean end");
        assert_eq!(answer, b"bye", "{name}");
        assert_eq!(had_cert, cert, "{name}: client certificate seen");
    }
}

/// `openssl s_client` (OpenSSL's own TLS stack), TLS 1.3 and 1.2, with and
/// without a client certificate, verifying the server's certificate and
/// name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_s_client_handshakes_and_exchanges_data() {
    if std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_err()
    {
        println!("skipped: no `openssl` binary on PATH");
        return;
    }
    let pki = Pki::new();
    for (version, cert) in [("-tls1_3", false), ("-tls1_2", false), ("-tls1_3", true)] {
        let (addr, server) = serve_one(&pki, |mut tls: Tls| async move {
            let mut line = Vec::new();
            let mut byte = [0u8; 1];
            while !line.ends_with(b"\n") {
                if tls.read(&mut byte).await.unwrap() == 0 {
                    break;
                }
                line.push(byte[0]);
            }
            let had_cert = tls.peer_certificates().is_some_and(|c| !c.is_empty());
            tls.write_all(b"pong\n").await.unwrap();
            tls.shutdown().await.unwrap();
            (line, had_cert)
        })
        .await;
        let mut cmd = tokio::process::Command::new("openssl");
        cmd.args(["s_client", version, "-quiet", "-verify_return_error"])
            .args(["-connect", &addr.to_string(), "-servername", "localhost"])
            .args(["-verify_hostname", "localhost", "-CAfile"])
            .arg(pki.file("ca.pem"));
        if cert {
            cmd.arg("-cert")
                .arg(pki.file("node.pem"))
                .arg("-key")
                .arg(pki.file("node.key"));
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"ping\n").await.unwrap();
        let out =
            tokio::time::timeout(std::time::Duration::from_secs(20), child.wait_with_output())
                .await
                .expect("s_client ends once the server closes")
                .unwrap();
        drop(stdin);
        let (line, had_cert) = server.await.unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            line,
            b"ping\n",
            "{version}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("pong"), "{version}: {stdout}");
        assert_eq!(had_cert, cert, "{version}: client certificate seen");
    }
}

/// CPython's `ssl` module (OpenSSL underneath, another API on it): a
/// verified handshake, data both ways, the server's close_notify read as
/// the end of its data, then the client's (`unwrap()`) read as a clean end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_ssl_client_round_trips_and_closes() {
    let venv = std::env::var_os("CARGO_TARGET_DIR")
        .map(|d| Path::new(&d).join("test-venv/bin/python"))
        .filter(|p| p.exists());
    let python = venv.unwrap_or_else(|| PathBuf::from("python3"));
    if std::process::Command::new(&python)
        .arg("--version")
        .output()
        .is_err()
    {
        println!("skipped: no python3 (nor the test venv's python)");
        return;
    }
    let pki = Pki::new();
    let (addr, server) = serve_one(&pki, |mut tls: Tls| async move {
        let mut asked = [0u8; 11];
        tls.read_exact(&mut asked).await.unwrap();
        tls.write_all(b"from the server").await.unwrap();
        tls.shutdown().await.unwrap();
        (asked, read_all(&mut tls).await)
    })
    .await;
    let script = r#"
import socket, ssl, sys
host, port, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ctx = ssl.create_default_context(cafile=ca)
raw = socket.create_connection((host, port), timeout=10)
s = ctx.wrap_socket(raw, server_hostname="localhost")
version = s.version()
s.sendall(b"from python")
got = b""
while True:
    chunk = s.recv(4096)   # b"" once the server's close_notify came
    if not chunk:
        break
    got += chunk
s.unwrap()                 # our close_notify
print(version, got.decode())
"#;
    let out = tokio::process::Command::new(&python)
        .args(["-c", script, "127.0.0.1", &addr.port().to_string()])
        .arg(pki.file("ca.pem"))
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(30), out)
        .await
        .expect("python ends")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let (asked, seen) = server.await.unwrap();
    assert_eq!(&asked, b"from python", "{stderr}");
    assert_eq!(
        seen.end,
        Ok(()),
        "python's close_notify is a clean end; {stderr}"
    );
    assert!(seen.data.is_empty());
    assert!(
        stdout.contains("TLSv1.3 from the server"),
        "stdout: {stdout}\nstderr: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_hello_in_one_byte_writes() {
    let pki = Pki::new();
    let (addr, server) = serve_one(&pki, |tls| read_then_reply(tls, b"ok")).await;
    let cfg = pki.client(true);
    let got = tokio::task::spawn_blocking(move || {
        let (mut conn, mut sock) = sync_client(addr, cfg, |hello, sock| {
            assert!(hello.len() > 100, "a ClientHello");
            for b in hello {
                sock.write_all(&[*b]).unwrap();
                sock.flush().unwrap();
            }
        });
        conn.writer().write_all(b"after a slow hello").unwrap();
        conn.send_close_notify();
        sock.write_all(&pending_tls(&mut conn)).unwrap();
        sync_read_to_end(&mut conn, &mut sock).unwrap()
    })
    .await
    .unwrap();
    let (seen, had_cert) = server.await.unwrap();
    assert_eq!(seen.data, b"after a slow hello");
    assert_eq!(seen.end, Ok(()));
    assert!(had_cert);
    assert_eq!(got, b"ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_hello_split_across_records() {
    let pki = Pki::new();
    let (addr, server) = serve_one(&pki, |tls| read_then_reply(tls, b"ok")).await;
    // rustls splits handshake messages into records of at most this size.
    let mut cfg = (*pki.client(false)).clone();
    cfg.max_fragment_size = Some(64);
    let (hello_records, got) = tokio::task::spawn_blocking(move || {
        let mut hello_records = Vec::new();
        let (mut conn, mut sock) = sync_client(addr, Arc::new(cfg), |hello, sock| {
            hello_records = records(hello);
            // Each record in its own write, too.
            let mut rest = hello;
            while rest.len() >= 5 {
                let n = 5 + usize::from(u16::from_be_bytes([rest[3], rest[4]]));
                sock.write_all(&rest[..n]).unwrap();
                rest = &rest[n..];
            }
        });
        conn.writer().write_all(&[7u8; 1000]).unwrap();
        conn.send_close_notify();
        sock.write_all(&pending_tls(&mut conn)).unwrap();
        (
            hello_records,
            sync_read_to_end(&mut conn, &mut sock).unwrap(),
        )
    })
    .await
    .unwrap();
    assert!(
        hello_records.len() >= 3 && hello_records.iter().all(|(t, _)| *t == 22),
        "the ClientHello spans several handshake records: {hello_records:?}"
    );
    let (seen, _) = server.await.unwrap();
    assert_eq!(seen.data, vec![7u8; 1000]);
    assert_eq!(seen.end, Ok(()));
    assert_eq!(got, b"ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalesced_records_in_one_write() {
    let pki = Pki::new();
    let (addr, server) = serve_one(&pki, |tls| read_then_reply(tls, b"")).await;
    let cfg = pki.client(false);
    let wire = tokio::task::spawn_blocking(move || {
        let (mut conn, mut sock) = sync_client(addr, cfg, |hello, sock| {
            sock.write_all(hello).unwrap();
        });
        for part in [&b"one "[..], b"two ", b"three"] {
            conn.writer().write_all(part).unwrap();
        }
        conn.send_close_notify();
        // Three data records and the close_notify alert: one write.
        let wire = pending_tls(&mut conn);
        sock.write_all(&wire).unwrap();
        let _ = sync_read_to_end(&mut conn, &mut sock);
        wire
    })
    .await
    .unwrap();
    assert!(records(&wire).len() >= 4, "{:?}", records(&wire));
    let (seen, _) = server.await.unwrap();
    assert_eq!(seen.data, b"one two three");
    assert_eq!(seen.end, Ok(()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_data_one_byte_per_write() {
    let pki = Pki::new();
    let (addr, server) = serve_one(&pki, |tls| read_then_reply(tls, b"")).await;
    let cfg = pki.client_tls12();
    tokio::task::spawn_blocking(move || {
        let (mut conn, mut sock) = sync_client(addr, cfg, |hello, sock| {
            sock.write_all(hello).unwrap();
        });
        let data: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        conn.writer().write_all(&data).unwrap();
        conn.send_close_notify();
        for b in pending_tls(&mut conn) {
            sock.write_all(&[b]).unwrap();
        }
        let _ = sync_read_to_end(&mut conn, &mut sock);
    })
    .await
    .unwrap();
    let (seen, _) = server.await.unwrap();
    let want: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(seen.data, want);
    assert_eq!(seen.end, Ok(()));
}

/// Found by fleet-fuzz: a close_notify read together with the socket's end
/// (a client that closes both at once) was taken for a connection dropped
/// without close_notify when no data came with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_notify_and_fin_together_are_a_clean_end() {
    let pki = Pki::new();
    let (read_tx, read_rx) = oneshot::channel::<()>();
    let (closed_tx, closed_rx) = oneshot::channel::<()>();
    let (addr, server) = serve_one(&pki, |mut tls: Tls| async move {
        let mut data = [0u8; 10];
        tls.read_exact(&mut data).await.unwrap();
        read_tx.send(()).unwrap();
        // Read on only once the alert and the FIN are both in the socket.
        closed_rx.await.unwrap();
        (data, read_all(&mut tls).await)
    })
    .await;
    let cfg = pki.client(false);
    tokio::task::spawn_blocking(move || {
        let (mut conn, mut sock) = sync_client(addr, cfg, |hello, sock| {
            sock.write_all(hello).unwrap();
        });
        conn.writer().write_all(b"last words").unwrap();
        sock.write_all(&pending_tls(&mut conn)).unwrap();
        read_rx.blocking_recv().unwrap();
        conn.send_close_notify();
        sock.write_all(&pending_tls(&mut conn)).unwrap();
        sock.shutdown(std::net::Shutdown::Write).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200));
        closed_tx.send(()).unwrap();
    })
    .await
    .unwrap();
    let (data, seen) = server.await.unwrap();
    assert_eq!(&data, b"last words");
    assert!(seen.data.is_empty());
    assert_eq!(seen.end, Ok(()), "close_notify came before the end");
}

/// A client that shuts its side of the socket without close_notify: the
/// server reads the data, then an error (a truncation TLS cannot tell from
/// an attack), and can still send on the half-closed connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_closed_without_close_notify_is_an_error_and_the_server_still_sends() {
    let pki = Pki::new();
    let (addr, server) = serve_one(&pki, |mut tls: Tls| async move {
        let seen = read_all(&mut tls).await;
        tls.write_all(b"still here").await.unwrap();
        tls.shutdown().await.unwrap();
        seen
    })
    .await;
    let cfg = pki.client(false);
    let got = tokio::task::spawn_blocking(move || {
        let (mut conn, mut sock) = sync_client(addr, cfg, |hello, sock| {
            sock.write_all(hello).unwrap();
        });
        conn.writer().write_all(b"no goodbye").unwrap();
        sock.write_all(&pending_tls(&mut conn)).unwrap();
        sock.shutdown(std::net::Shutdown::Write).unwrap();
        sync_read_to_end(&mut conn, &mut sock).unwrap()
    })
    .await
    .unwrap();
    let seen = server.await.unwrap();
    assert_eq!(seen.data, b"no goodbye");
    assert_eq!(seen.end, Err(std::io::ErrorKind::UnexpectedEof));
    assert_eq!(got, b"still here", "the server's answer and close_notify");
}

/// The server closes first: its close_notify is a clean end for the
/// client, and the client may still send before closing its side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_close_notify_is_a_clean_end_for_the_client() {
    let pki = Pki::new();
    let (addr, server) = serve_one(&pki, |mut tls: Tls| async move {
        tls.write_all(b"goodbye").await.unwrap();
        tls.shutdown().await.unwrap();
        read_all(&mut tls).await
    })
    .await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(pki.client(false))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let mut got = Vec::new();
    tls.read_to_end(&mut got)
        .await
        .expect("close_notify, not a truncation");
    assert_eq!(got, b"goodbye");
    tls.write_all(b"after yours").await.unwrap();
    tls.shutdown().await.unwrap();
    let seen = server.await.unwrap();
    assert_eq!(seen.data, b"after yours");
    assert_eq!(seen.end, Ok(()));
}

/// Found by fleet-fuzz: after an error the server called rustls again,
/// which deframed the same bad bytes and raised a second fatal alert (a
/// debug assertion in rustls), and the first alert was never sent. Now the
/// client learns why: a garbled ClientHello and a tampered record are each
/// answered with a fatal alert before the socket closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fatal_errors_send_an_alert_before_closing() {
    let pki = Pki::new();

    // A ClientHello whose cipher suites run past its end: decode_error.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cfg = Arc::clone(&pki.server);
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        tls_accept(tcp, cfg).await.map(drop)
    });
    let client = pki.client(false);
    let answer = tokio::task::spawn_blocking(move || {
        let mut conn =
            ClientConnection::new(client, ServerName::try_from("localhost").unwrap()).unwrap();
        let mut hello = pending_tls(&mut conn);
        // Record header (5), handshake header (4), version (2), random
        // (32), then the session id (its length, 32 bytes) and the cipher
        // suites' 16-bit length.
        assert_eq!(hello[43], 32, "a session id of 32 bytes");
        hello[76..78].copy_from_slice(&[0xff, 0xfe]);
        let mut sock = std::net::TcpStream::connect(addr).unwrap();
        sock.write_all(&hello).unwrap();
        let mut answer = Vec::new();
        let _ = sock.read_to_end(&mut answer);
        answer
    })
    .await
    .unwrap();
    let accepted = server.await.unwrap();
    assert!(accepted.is_err(), "the handshake fails");
    assert_eq!(
        records(&answer).first().map(|r| r.0),
        Some(21),
        "an alert record before the close: {answer:?}"
    );

    // A tampered application data record: bad_record_mac. It may arrive
    // with the client's Finished, and then the handshake itself fails on
    // it; either way the server ends on InvalidData and the client hears
    // the alert.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cfg = Arc::clone(&pki.server);
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        match tls_accept(tcp, cfg).await {
            Ok(mut tls) => read_all(&mut tls).await.end,
            Err(e) => Err(e.kind()),
        }
    });
    let cfg = pki.client(false);
    let err = tokio::task::spawn_blocking(move || {
        let (mut conn, mut sock) = sync_client(addr, cfg, |hello, sock| {
            sock.write_all(hello).unwrap();
        });
        conn.writer().write_all(b"soon garbled").unwrap();
        let mut wire = pending_tls(&mut conn);
        let last = wire.len() - 1;
        wire[last] ^= 0x40;
        sock.write_all(&wire).unwrap();
        sync_read_to_end(&mut conn, &mut sock).unwrap_err()
    })
    .await
    .unwrap();
    let end = server.await.unwrap();
    assert_eq!(end, Err(std::io::ErrorKind::InvalidData));
    assert!(
        format!("{err:?}").contains("AlertReceived(BadRecordMac)"),
        "the client hears why: {err:?}"
    );
}
