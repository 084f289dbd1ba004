//! A real OpenSSH server on loopback for tests (feature `test-sshd`): its
//! own host key, a client key authorized for the current user, a
//! `known_hosts` naming it, all in a directory of the caller's. `sshd` is
//! `$SSHD_BIN`, else `sshd` on `PATH`, else `/usr/sbin/sshd` (Debian's
//! `openssh-server`, which `scripts/test` installs when it can).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `sshd -D` on `127.0.0.1:port`; killed on drop.
#[derive(Debug)]
pub struct Sshd {
    child: Child,
    /// The port it listens on.
    pub port: u16,
    /// The private key it accepts (for the current user).
    pub identity: PathBuf,
    /// A `known_hosts` file with its host key.
    pub known_hosts: PathBuf,
    /// The user to log in as.
    pub user: String,
    /// Its log (stderr).
    pub log: PathBuf,
}

/// Where `sshd` is, if anywhere.
pub fn sshd_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SSHD_BIN") {
        return Some(PathBuf::from(p));
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("sshd"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let debian = PathBuf::from("/usr/sbin/sshd");
        debian.is_file().then_some(debian)
    })
}

fn run(cmd: &mut Command, what: &str) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("{what}: cannot run: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{what}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn keygen(path: &Path) -> Result<(), String> {
    run(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "fleet-test", "-f"])
            .arg(path),
        "ssh-keygen",
    )
    .map(drop)
}

fn free_port() -> Result<u16, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())
}

impl Sshd {
    /// Starts one in `dir` and waits until it accepts connections.
    pub fn start(dir: &Path) -> Result<Sshd, String> {
        let bin = sshd_binary().ok_or(
            "no sshd: install Debian's openssh-server (scripts/test does) or set SSHD_BIN",
        )?;
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let host_key = dir.join("host_key");
        let identity = dir.join("id_ed25519");
        keygen(&host_key)?;
        keygen(&identity)?;
        let authorized = dir.join("authorized_keys");
        std::fs::copy(identity.with_extension("pub"), &authorized).map_err(|e| e.to_string())?;
        let user = run(Command::new("id").arg("-un"), "id -un")?
            .trim()
            .to_owned();
        let port = free_port()?;
        let host_pub =
            std::fs::read_to_string(host_key.with_extension("pub")).map_err(|e| e.to_string())?;
        let mut fields = host_pub.split_whitespace();
        let (kind, key) = (fields.next().unwrap_or(""), fields.next().unwrap_or(""));
        let known_hosts = dir.join("known_hosts");
        std::fs::write(&known_hosts, format!("[127.0.0.1]:{port} {kind} {key}\n"))
            .map_err(|e| e.to_string())?;
        // sshd's privilege separation directory (Debian's is made by its
        // service unit, which a test does not run); not root, sshd runs
        // unprivileged and needs none, so a failure is fine.
        let _ = std::fs::create_dir_all("/run/sshd");
        let config = dir.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {host}\nPidFile {pid}\n\
                 AuthorizedKeysFile {auth}\nPubkeyAuthentication yes\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nStrictModes no\n\
                 UsePAM no\nMaxStartups 64\nMaxSessions 64\nLogLevel INFO\n",
                host = host_key.display(),
                pid = dir.join("sshd.pid").display(),
                auth = authorized.display(),
            ),
        )
        .map_err(|e| e.to_string())?;
        let log = dir.join("sshd.log");
        let log_file = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let child = Command::new(&bin)
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("{}: {e}", bin.display()))?;
        let mut sshd = Sshd {
            child,
            port,
            identity,
            known_hosts,
            user,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(sshd);
            }
            if let Ok(Some(status)) = sshd.child.try_wait() {
                let log = std::fs::read_to_string(&sshd.log).unwrap_or_default();
                return Err(format!("sshd exited ({status}): {log}"));
            }
            if Instant::now() > deadline {
                return Err("sshd did not listen within 10 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
