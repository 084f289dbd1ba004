//! Test support (feature `moto`): a real `moto_server` (the AWS API
//! emulator, PyPI `moto[server]`) on a free loopback port, killed on drop.
//! The binary comes from `MOTO_SERVER_BIN` or `PATH`; without it
//! [`Moto::start`] panics saying how to get it — this is for tests.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("MOTO_SERVER_BIN") {
        return PathBuf::from(p);
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".local/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join("moto_server"))
        .find(|c| c.is_file())
        .unwrap_or_else(|| {
            panic!(
                "moto_server not found: these tests need the EC2 emulator. Run them through \
                 ./scripts/test (it installs one into a venv) or set MOTO_SERVER_BIN"
            )
        })
}

/// A running emulator.
#[derive(Debug)]
pub struct Moto {
    child: Child,
    port: u16,
}

impl Moto {
    /// Starts one and waits until it accepts connections.
    pub fn start() -> Moto {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap_or_else(|e| panic!("a free port: {e}"))
            .port();
        let child = Command::new(binary())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting moto_server: {e}"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        Moto { child, port }
    }

    /// Its endpoint.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// An AMI the emulator knows (its built-in Amazon images).
    pub async fn some_ami(&self) -> String {
        self.first("Action=DescribeImages&Owner.1=amazon", "imageId")
            .await
    }

    /// An instance's user data, decoded.
    pub async fn user_data(&self, instance: &str) -> String {
        use base64::Engine as _;
        let b64 = self
            .first(
                &format!(
                    "Action=DescribeInstanceAttribute&InstanceId={instance}&Attribute=userData"
                ),
                "value",
            )
            .await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap_or_else(|e| panic!("user data is not base64: {e}"));
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The text of the first `<tag>` in the answer to an (unsigned: the
    /// emulator does not check) EC2 call.
    pub async fn first(&self, query: &str, tag: &str) -> String {
        let http = fleet_http::HttpClient::new(&self.url(), Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{e}"));
        let a = http
            .send(
                "POST",
                "/",
                &[
                    (
                        "content-type",
                        "application/x-www-form-urlencoded".to_owned(),
                    ),
                    (
                        "authorization",
                        "AWS4-HMAC-SHA256 Credential=test/20261125/us-east-1/ec2/aws4_request, \
                         SignedHeaders=host, Signature=0"
                            .to_owned(),
                    ),
                ],
                Some(format!("{query}&Version=2016-11-15").into_bytes()),
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let body = String::from_utf8_lossy(&a.body);
        let open = format!("<{tag}>");
        let start = body
            .find(&open)
            .unwrap_or_else(|| panic!("no <{tag}> in {body}"))
            + open.len();
        let end = body[start..].find('<').unwrap_or(0) + start;
        body[start..end].to_owned()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
