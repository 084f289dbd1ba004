//! Queue mode: specs move pending → claimed → completed | failed through a
//! real supervisor process, a spec runs exactly once among racing agents,
//! the pool gate, the real binary's drain on SIGTERM, and the S3 store
//! against moto_server (conditional create included).

#![expect(clippy::unwrap_used, reason = "tests")]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[cfg(feature = "s3")]
use fleet_agent::queue::store::S3Store;
use fleet_agent::queue::store::{DirStore, ObjectStore};
use fleet_agent::queue::{Outcome, QueueConfig, run};

/// A supervisor that appends the spec id and its stdin to `log`, then exits
/// with the number in the spec's `"exit"` field (0 if none).
fn supervisor(dir: &Path, log: &Path) -> String {
    let path = dir.join("supervisor.sh");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\nspec=$(cat)\nprintf '%s %s\\n' \"$FLEET_QUEUE_SPEC_ID\" \"$spec\" >> {log:?}\n\
             code=$(printf '%s' \"$spec\" | sed -n 's/.*\"exit\": *\\([0-9]*\\).*/\\1/p')\nexit ${{code:-0}}\n"
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.display().to_string()
}

fn config(root: &Path, supervisor: &str, extra: &[(&str, &str)]) -> QueueConfig {
    let mut env: BTreeMap<String, String> = [
        ("FLEET_QUEUE_DIR", root.display().to_string()),
        ("FLEET_QUEUE_SUPERVISOR", supervisor.to_owned()),
        ("FLEET_QUEUE_POLL_INTERVAL_MS", "20".to_owned()),
        ("FLEET_QUEUE_NODE_ID", "test-node".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    for (k, v) in extra {
        env.insert((*k).to_owned(), (*v).to_owned());
    }
    QueueConfig::from_env(&env).unwrap()
}

async fn put(store: &dyn ObjectStore, key: &str, body: &str) {
    store.put(key, body.as_bytes()).await.unwrap();
}

/// Runs `cfg` until `done` holds for the store (or 20 s), then stops it.
async fn run_until(
    cfg: &QueueConfig,
    store: Arc<dyn ObjectStore>,
    done: impl Fn(&[String]) -> bool,
    dir: &str,
) -> Vec<Outcome> {
    let (stop, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn({
        let (cfg, store) = (cfg.clone(), store.clone());
        async move { run(&cfg, store, rx).await }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done(&store.list(dir).await.unwrap()) {
        assert!(Instant::now() < deadline, "the queue did not get there");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(true).unwrap();
    task.await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn specs_move_through_the_states_by_exit_code_and_pool() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("ran.log");
    let sup = supervisor(tmp.path(), &log);
    let root = tmp.path().join("queue");
    let store: Arc<dyn ObjectStore> = Arc::new(DirStore::new(&root));
    put(
        &*store,
        "fleet/gpu/pending/ok.json",
        r#"{"spec":{"placement":{"poolId":"gpu"}},"exit":0}"#,
    )
    .await;
    put(
        &*store,
        "fleet/gpu/pending/bad.json",
        r#"{"spec":{},"exit":3}"#,
    )
    .await;
    put(&*store, "fleet/gpu/pending/garbage.json", "not json").await;
    put(
        &*store,
        "fleet/gpu/pending/cpu.json",
        r#"{"spec":{"placement":{"poolId":"cpu"}}}"#,
    )
    .await;
    put(&*store, "fleet/other/pending/elsewhere.json", "{}").await;
    let cfg = config(
        tmp.path(),
        &sup,
        &[
            ("FLEET_QUEUE_DIR", &root.display().to_string()),
            ("CELLOS_FLEET_QUEUE_NAME", "gpu"),
            ("CELLOS_FLEET_POOL_ID", "gpu"),
        ],
    );
    let outcomes = run_until(
        &cfg,
        store.clone(),
        |pending| pending == ["fleet/gpu/pending/cpu.json"],
        "fleet/gpu/pending/",
    )
    .await;
    let mut outcomes: Vec<String> = outcomes.iter().map(|o| format!("{o:?}")).collect();
    outcomes.sort();
    assert_eq!(
        outcomes,
        [
            r#"Completed("ok")"#,
            r#"Failed("bad")"#,
            r#"Failed("garbage")"#
        ]
    );
    assert_eq!(
        store.list("fleet/gpu/completed/").await.unwrap(),
        ["fleet/gpu/completed/ok.json"]
    );
    assert_eq!(
        store.list("fleet/gpu/failed/").await.unwrap(),
        ["fleet/gpu/failed/bad.json", "fleet/gpu/failed/garbage.json"]
    );
    assert!(store.list("fleet/gpu/claimed/").await.unwrap().is_empty());
    assert_eq!(
        store.get("fleet/gpu/failed/garbage.json").await.unwrap(),
        b"not json",
        "the spec is kept as it came"
    );
    // The other lane is untouched; the garbage spec never reached the supervisor.
    assert_eq!(store.list("fleet/other/pending/").await.unwrap().len(), 1);
    let ran = std::fs::read_to_string(&log).unwrap();
    assert_eq!(ran.lines().count(), 2, "{ran}");
    assert!(
        ran.contains(r#"ok {"spec":{"placement":{"poolId":"gpu"}},"exit":0}"#),
        "the spec on stdin: {ran}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_agents_run_each_spec_once() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("ran.log");
    let sup = supervisor(tmp.path(), &log);
    let root = tmp.path().join("queue");
    let store: Arc<dyn ObjectStore> = Arc::new(DirStore::new(&root));
    for i in 0..24 {
        put(&*store, &format!("fleet/pending/s{i:02}.json"), "{}").await;
    }
    let cfg = config(&root, &sup, &[]);
    let (stop, rx) = tokio::sync::watch::channel(false);
    let agents: Vec<_> = (0..3)
        .map(|_| {
            let (cfg, store, rx) = (cfg.clone(), store.clone(), rx.clone());
            tokio::spawn(async move { run(&cfg, store, rx).await })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.list("fleet/completed/").await.unwrap().len() < 24 {
        assert!(Instant::now() < deadline, "not all specs completed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(true).unwrap();
    let mut total = 0;
    for a in agents {
        total += a.await.unwrap().len();
    }
    assert_eq!(total, 24, "each spec ran in exactly one agent");
    let ran = std::fs::read_to_string(&log).unwrap();
    let mut ids: Vec<&str> = ran.lines().filter_map(|l| l.split(' ').next()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 24);
    assert_eq!(ran.lines().count(), 24, "no spec ran twice");
}

#[test]
fn the_binary_drains_on_sigterm_with_the_running_spec_finished() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("queue");
    let sup = tmp.path().join("slow.sh");
    std::fs::write(&sup, "#!/bin/sh\ncat > /dev/null\nsleep 1\nexit 0\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&sup, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::create_dir_all(root.join("fleet/pending")).unwrap();
    std::fs::write(root.join("fleet/pending/long.json"), "{}").unwrap();
    let log = std::fs::File::create(tmp.path().join("agent.log")).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_fleet-agent"))
        .arg("queue")
        .env_remove("FLEET_AGENT_CONFIG")
        .env("CELLOS_FLEET_DIR", &root)
        .env("CELLOS_FLEET_SUPERVISOR", &sup)
        .env("CELLOS_FLEET_POLL_INTERVAL_MS", "50")
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !root.join("fleet/claimed/long.json").exists() {
        assert!(Instant::now() < deadline, "never claimed");
        std::thread::sleep(Duration::from_millis(10));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        root.join("fleet/completed/long.json").exists(),
        "the running spec finished"
    );
    let text = std::fs::read_to_string(tmp.path().join("agent.log")).unwrap();
    assert!(text.contains("drained"), "{text}");
}

#[cfg(feature = "s3")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_s3_store_claims_with_a_conditional_write() {
    let moto = fleet_provider_aws::moto::Moto::start();
    let settings = moto.settings();
    let sdk = fleet_aws::load(&settings).await;
    let admin = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(true)
            .build(),
    );
    admin
        .create_bucket()
        .bucket("fleet-queue")
        .send()
        .await
        .unwrap();
    let s3 = S3Store::new(&settings, "fleet-queue").await;
    assert!(s3.create("fleet/claimed/a b.json", b"1").await.unwrap());
    assert!(
        !s3.create("fleet/claimed/a b.json", b"2").await.unwrap(),
        "the second claim loses"
    );
    assert_eq!(s3.get("fleet/claimed/a b.json").await.unwrap(), b"1");
    for i in 0..3 {
        s3.put(&format!("fleet/pending/p{i}.json"), b"{}")
            .await
            .unwrap();
    }
    assert_eq!(
        s3.list("fleet/pending/").await.unwrap(),
        [
            "fleet/pending/p0.json",
            "fleet/pending/p1.json",
            "fleet/pending/p2.json"
        ]
    );
    s3.delete("fleet/pending/p1.json").await.unwrap();
    s3.delete("fleet/pending/p1.json").await.unwrap(); // already gone: fine
    assert!(matches!(
        s3.get("fleet/pending/p1.json").await,
        Err(fleet_agent::queue::store::StoreError::NotFound(_))
    ));

    // The whole queue on S3.
    let tmp = tempfile::tempdir().unwrap();
    let sup = supervisor(tmp.path(), &tmp.path().join("ran.log"));
    let mut cfg = config(tmp.path(), &sup, &[]);
    cfg.backend = fleet_agent::queue::Backend::S3 {
        bucket: "fleet-queue".into(),
        region: Some("us-east-1".into()),
        endpoint: Some(moto.url()),
    };
    let store: Arc<dyn ObjectStore> = Arc::new(s3);
    let outcomes = run_until(&cfg, store.clone(), |p| p.is_empty(), "fleet/pending/").await;
    assert_eq!(outcomes.len(), 2);
    assert_eq!(store.list("fleet/completed/").await.unwrap().len(), 2);
}
