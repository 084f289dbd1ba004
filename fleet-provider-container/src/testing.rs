//! A container engine that can run here, for tests (feature
//! `test-engine`).
//!
//! Tests cannot pull images (no registry), so the image is made locally:
//! an empty root file system imported as `localhost/fleet-test-base`, with
//! the host's `/usr`, `/lib`, `/lib64` and `/bin` mounted read-only at run
//! (`run_args`) — enough for the host's `fleet-agent` and shell.
//!
//! The engine is `$FLEET_TEST_ENGINE`, else `podman`, else `docker`, on
//! `PATH`. Sandboxed CI machines restrict containers, so [`engine`] tries
//! the plain engine first and then, for Podman, the settings such a
//! machine needs (runc instead of crun, which refuses hybrid cgroups;
//! the cgroupfs manager; no default ulimits, which an unprivileged
//! sandbox may not raise), and returns the first that runs a container.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::ContainerConfig;

/// The image tests run.
pub const TEST_IMAGE: &str = "localhost/fleet-test-base:1";

fn runs(
    engine: &str,
    args: &[String],
    env: &BTreeMap<String, String>,
    tail: &[&str],
) -> Result<String, String> {
    let out = Command::new(engine)
        .args(args)
        .args(tail)
        .envs(env)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{engine}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}

/// The host directories a container of the test image mounts.
pub fn host_mounts() -> Vec<String> {
    let mut args = Vec::new();
    for dir in ["/usr", "/lib", "/lib64", "/bin", "/sbin"] {
        if Path::new(dir).exists() {
            args.push("-v".to_owned());
            args.push(format!("{dir}:{dir}:ro"));
        }
    }
    args
}

/// A configuration whose engine runs containers of [`TEST_IMAGE`] here,
/// the image made if missing; `dir` holds what the settings need. The
/// error says what was tried.
pub fn engine(dir: &Path) -> Result<ContainerConfig, String> {
    let engine = std::env::var("FLEET_TEST_ENGINE").ok().or_else(|| {
        ["podman", "docker"]
            .into_iter()
            .find(|e| {
                Command::new(e)
                    .arg("--version")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            })
            .map(str::to_owned)
    });
    let Some(engine) = engine else {
        return Err("no container engine: install podman (scripts/test does) or docker".into());
    };
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let conf = dir.join("containers.conf");
    std::fs::write(&conf, "[containers]\ndefault_ulimits = []\n").map_err(|e| e.to_string())?;
    let mut candidates: Vec<(Vec<String>, BTreeMap<String, String>)> =
        vec![(Vec::new(), BTreeMap::new())];
    if engine.ends_with("podman") {
        let env = BTreeMap::from([("CONTAINERS_CONF".to_owned(), conf.display().to_string())]);
        candidates.push((Vec::new(), env.clone()));
        for runc in ["/usr/sbin/runc", "/usr/bin/runc"] {
            if Path::new(runc).exists() {
                let args = vec![
                    "--runtime".to_owned(),
                    runc.to_owned(),
                    "--cgroup-manager=cgroupfs".to_owned(),
                ];
                candidates.push((args, env.clone()));
            }
        }
    }
    let mut tried = Vec::new();
    for (args, env) in candidates {
        if let Err(e) = ensure_image(&engine, &args, &env, dir) {
            tried.push(format!("{args:?}: import: {e}"));
            continue;
        }
        let mut run = vec!["run", "--rm", "--network", "host"];
        let mounts = host_mounts();
        run.extend(mounts.iter().map(String::as_str));
        run.extend([TEST_IMAGE, "/bin/sh", "-c", "echo fleet-engine-ok"]);
        match runs(&engine, &args, &env, &run) {
            Ok(out) if out.contains("fleet-engine-ok") => {
                return Ok(ContainerConfig {
                    engine,
                    engine_args: args,
                    engine_env: env,
                    image: TEST_IMAGE.to_owned(),
                    run_args: host_mounts(),
                    max_nodes: 4,
                    gateway_host: "127.0.0.1".to_owned(),
                    agent_bin: None,
                    stop_timeout_secs: 5,
                    call_timeout_secs: 120,
                });
            }
            Ok(out) => tried.push(format!("{args:?}: printed {out:?}")),
            Err(e) => tried.push(format!("{args:?}: {e}")),
        }
    }
    Err(format!(
        "{engine} cannot run a container here; tried: {}",
        tried.join("; ")
    ))
}

/// Imports an empty root file system as [`TEST_IMAGE`] unless it exists.
fn ensure_image(
    engine: &str,
    args: &[String],
    env: &BTreeMap<String, String>,
    dir: &Path,
) -> Result<(), String> {
    if runs(engine, args, env, &["image", "inspect", TEST_IMAGE]).is_ok() {
        return Ok(());
    }
    let root = dir.join("rootfs");
    for d in ["etc", "tmp", "fleet"] {
        std::fs::create_dir_all(root.join(d)).map_err(|e| e.to_string())?;
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")
        .map_err(|e| e.to_string())?;
    let tar = dir.join("rootfs.tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .map_err(|e| format!("tar: {e}"))?;
    if !status.success() {
        return Err(format!("tar: {status}"));
    }
    let tar = tar.display().to_string();
    runs(engine, args, env, &["import", tar.as_str(), TEST_IMAGE]).map(drop)
}
