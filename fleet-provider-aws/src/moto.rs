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

    /// Settings that reach the emulator with static test keys.
    pub fn settings(&self) -> fleet_aws::AwsSettings {
        fleet_aws::AwsSettings {
            region: Some("us-east-1".to_owned()),
            endpoint: Some(self.url()),
            static_keys: Some(fleet_aws::StaticKeys {
                access_key_id: "AKIDTEST".to_owned(),
                secret_access_key: "secret".to_owned(),
                session_token: None,
            }),
            ..Default::default()
        }
    }

    /// An EC2 client of the emulator (to look behind the provider's back).
    pub async fn ec2(&self) -> aws_sdk_ec2::Client {
        aws_sdk_ec2::Client::new(&fleet_aws::load(&self.settings()).await)
    }

    /// An AMI the emulator knows (its built-in Amazon images).
    pub async fn some_ami(&self) -> String {
        let out = self
            .ec2()
            .await
            .describe_images()
            .owners("amazon")
            .send()
            .await
            .unwrap_or_else(|e| panic!("DescribeImages: {e:?}"));
        out.images()
            .iter()
            .find_map(|i| i.image_id())
            .unwrap_or_else(|| panic!("moto knows no Amazon AMI"))
            .to_owned()
    }

    /// An instance's user data, decoded.
    pub async fn user_data(&self, instance: &str) -> String {
        use base64::Engine as _;
        let out = self
            .ec2()
            .await
            .describe_instance_attribute()
            .instance_id(instance)
            .attribute(aws_sdk_ec2::types::InstanceAttributeName::UserData)
            .send()
            .await
            .unwrap_or_else(|e| panic!("DescribeInstanceAttribute: {e:?}"));
        let b64 = out.user_data().and_then(|u| u.value()).unwrap_or_default();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap_or_else(|e| panic!("user data is not base64: {e}"));
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
