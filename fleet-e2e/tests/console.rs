//! The operator console in a real browser: headless Chromium, driven
//! through ChromeDriver (WebDriver), against the real daemon and its local
//! nodes. An operator signs in, sees a claim appear while the page is open
//! (the event stream, no reload), releases it from the page, reads a job's
//! events and output, cancels a running job; a token
//! limited to a workspace is refused another one and sees only its own;
//! a fleet-sim result is opened in the simulator view. Neither the pages
//! nor the event stream ever carry a token or sealed credentials.
//!
//! Chromium and ChromeDriver come from `CHROME_BIN` / `CHROMEDRIVER_BIN`
//! or `PATH` (`scripts/test` installs Debian's `chromium` and
//! `chromium-driver` when missing). Screenshots go to
//! `$FLEET_SCREENSHOTS_DIR`, else `<target>/tmp/console-screenshots`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use fleet_core::transport::ClaimClient as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A program from `var`, else the first of `names` on `PATH`.
fn program(var: &str, names: &[&str]) -> PathBuf {
    if let Some(p) = std::env::var_os(var).filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in names {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "{var} is unset and none of {names:?} is on PATH: the console's browser test needs \
         Chromium and ChromeDriver (./scripts/test installs Debian's chromium and \
         chromium-driver when run as root; or apt-get install chromium chromium-driver)"
    )
}

/// ChromeDriver and a WebDriver session of a headless Chromium.
struct Browser {
    driver: Child,
    client: Client,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Browser {
        let chrome = program(
            "CHROME_BIN",
            &["chromium", "chromium-browser", "google-chrome"],
        );
        let chromedriver = program("CHROMEDRIVER_BIN", &["chromedriver"]);
        let port = free_port();
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", chromedriver.display()));
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "chromedriver never listened");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        // Headless, and nothing that reaches for the network beyond
        // loopback (this machine has none; each try would be a refusal).
        let args = [
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--window-size=1280,1000".to_owned(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".to_owned(),
            serde_json::json!({ "binary": chrome, "args": args }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .unwrap_or_else(|e| panic!("a WebDriver session of {}: {e}", chrome.display()));
        Browser {
            driver,
            client,
            _profile: profile,
        }
    }

    /// The text of the element `css`, or "" when there is none.
    async fn text(&self, css: &str) -> String {
        match self.client.find(Locator::Css(css)).await {
            Ok(e) => e.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Waits until `css`'s text satisfies `ok`; returns it.
    async fn wait_text(&self, css: &str, secs: u64, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let t = self.text(css).await;
            if ok(&t) {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "{css}: still {t:?} after {secs} s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn sign_in(&self, token: &str, workspace: &str) {
        let field = self
            .client
            .find(Locator::Id("token"))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let ws = self
            .client
            .find(Locator::Id("workspace"))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        ws.clear().await.unwrap_or_else(|e| panic!("{e}"));
        ws.send_keys(workspace)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        field.clear().await.unwrap_or_else(|e| panic!("{e}"));
        // Enter in the field submits: signing in needs no mouse.
        field
            .send_keys(&format!("{token}\u{E007}"))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }

    async fn sign_out(&self) {
        self.click("#sign-out").await;
        self.wait_text("#live", 10, |t| t == "signed out").await;
    }

    async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"));
    }

    async fn screenshot(&self, name: &str) {
        let png = self
            .client
            .screenshot()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let dir = screenshots_dir();
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(dir.join(name), png).unwrap_or_else(|e| panic!("{e}"));
    }

    async fn source(&self) -> String {
        self.client.source().await.unwrap_or_else(|e| panic!("{e}"))
    }

    async fn stop(self) {
        let _ = self.client.close().await;
        let mut driver = self.driver;
        let _ = driver.kill();
        let _ = driver.wait();
    }
}

fn screenshots_dir() -> PathBuf {
    std::env::var_os("FLEET_SCREENSHOTS_DIR").map_or_else(
        || Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots"),
        PathBuf::from,
    )
}

/// Submits job `id` of workspace `ci` running `argv`, without watching it.
fn submit(daemon: &Daemon, id: &str, argv: &[&str]) {
    let mut args = vec![
        "jobs",
        "submit",
        "--pool",
        "default",
        "--workspace",
        "ci",
        "--id",
        id,
        "--",
    ];
    args.extend_from_slice(argv);
    ok(&fleetctl(daemon, &args, 60));
}

/// The console's event stream as `token` reads it for `secs`: its raw text.
async fn event_stream(http_base: &str, token: &str, secs: u64) -> String {
    let host = http_base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(host)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let req = format!(
        "GET /v1/console/events HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\
         Accept: text/event-stream\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(secs), s.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

/// A short fleet-sim result of the README's example input.
fn sim_result(dir: &Path) -> (PathBuf, usize) {
    let example =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../fleet-sim/examples/sim-input.json");
    let text = std::fs::read_to_string(&example).unwrap_or_else(|e| panic!("{e}"));
    let mut input: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
    input["horizon_hours"] = serde_json::json!(48);
    let bytes = serde_json::to_vec(&input).unwrap_or_else(|e| panic!("{e}"));
    let scenario = fleet_sim::input::parse(&bytes).unwrap_or_else(|e| panic!("{e}"));
    let result = fleet_sim::simulate(&scenario, 2, None).unwrap_or_else(|e| panic!("{e}"));
    let path = dir.join("result.json");
    std::fs::write(&path, fleet_sim::to_json(&result)).unwrap_or_else(|e| panic!("{e}"));
    (path, result.strategies.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_the_fleet_live_releases_a_claim_and_keeps_tokens_apart() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    // Priced local nodes ($3.60/h: a tenth of a cent a second), so the
    // cost charts and the claim's cost have something to show.
    let agent = bin("fleet-agent").display().to_string();
    let daemon = Daemon::start_with(
        dir.path(),
        |_| {
            format!(
                "kind = \"local\"\nagent_bin = {agent:?}\nmax_nodes = 3\nhourly_price = \"3.60\"\n"
            )
        },
        "",
    );
    let base = daemon.discovery.http.clone();
    let browser = Browser::start().await;

    // Signed in as the operator before any claim exists.
    browser
        .client
        .goto(&format!("{base}/ui"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    browser.sign_in(&daemon.token, "").await;
    browser
        .wait_text("#who", 20, |t| t.contains("signed in as admin (operator)"))
        .await;
    browser
        .wait_text("#pools-table tbody", 10, |t| t.contains("cold_image"))
        .await;

    // A claim made now, with a recipient (so its record holds sealed
    // credentials), shows up on the open page.
    let identity = age::x25519::Identity::generate();
    let client = daemon.claim_client().await;
    let grant = tokio::time::timeout(
        Duration::from_secs(60),
        client.claim(request("c1", Some(identity.to_public().to_string()))),
    )
    .await
    .unwrap_or_else(|_| panic!("no grant"))
    .unwrap_or_else(|e| panic!("{e}"));
    let sealed = grant
        .credentials
        .as_ref()
        .map(|c| c.ciphertext.clone())
        .unwrap_or_else(|| panic!("the grant has no credentials"));
    let row = "#claims-table tr[data-claim-row='c1']";
    let seen = browser.wait_text(row, 20, |t| t.contains("granted")).await;
    assert!(seen.contains("ci") && seen.contains("default"), "{seen}");
    browser
        .wait_text("#nodes-table tbody", 10, |t| t.contains("busy"))
        .await;
    // Held a moment at $3.60/h, the claim has a cost (the next refresh
    // of the stream, within 10 s, shows it).
    browser
        .wait_text(row, 15, |t| t.contains("$0.00") && !t.contains("$0.0000"))
        .await;
    browser.screenshot("console-operator.png").await;

    // Why the pool made the node: its strategy's decision, with the claim.
    browser
        .click("#pools-table button[aria-label='Decisions of pool default']")
        .await;
    let why = browser
        .wait_text("#decisions-table tbody", 10, |t| t.contains("create"))
        .await;
    assert!(why.contains("claim c1"), "{why}");

    // Nothing secret in the page or the stream.
    let page = browser.source().await;
    let stream = event_stream(&base, &daemon.token, 2).await;
    assert!(stream.contains("event: state"), "{stream}");
    assert!(stream.contains("\"c1\""), "the stream shows the claim");
    for (what, text) in [("page", &page), ("event stream", &stream)] {
        assert!(!text.contains(&daemon.token), "the {what} shows the token");
        assert!(
            !text.contains(&sealed),
            "the {what} shows sealed credentials"
        );
        assert!(
            !text.contains("\"credentials\""),
            "the {what} has credentials"
        );
    }

    // Released from the console, after confirming.
    browser.click("button[data-claim='c1']").await;
    browser
        .wait_text("#confirm-text", 5, |t| t.contains("Release claim c1"))
        .await;
    browser.click("#confirm-ok").await;
    browser.wait_text(row, 20, |t| t.contains("released")).await;
    assert_eq!(
        daemon.claim_state("c1").await,
        Some(serde_json::json!("released"))
    );

    // A job nobody watches: the console still shows its events and output.
    submit(
        &daemon,
        "j1",
        &["sh", "-c", "echo hello-from-j1; echo warning-from-j1 >&2"],
    );
    browser
        .wait_text("#jobs-table tbody", 60, |t| {
            t.contains("j1") && t.contains("done")
        })
        .await;
    browser.click("#jobs-table tbody th button").await;
    let output = browser
        .wait_text("#job-output", 20, |t| t.contains("hello-from-j1"))
        .await;
    assert!(output.contains("warning-from-j1"), "{output}");
    let events = browser
        .wait_text("#job-events", 10, |t| t.contains("completed"))
        .await;
    assert!(events.contains("attempt 1"), "{events}");
    browser.screenshot("console-job.png").await;

    // A running job cancelled from the console, after confirming.
    submit(&daemon, "j2", &["sleep", "60"]);
    let j2 = "#jobs-table tbody tr:first-child";
    browser
        .wait_text(j2, 60, |t| t.contains("j2") && t.contains("running"))
        .await;
    browser
        .click("#jobs-table button[aria-label='Cancel job j2']")
        .await;
    browser
        .wait_text("#confirm-text", 5, |t| t.contains("Cancel job j2"))
        .await;
    browser.click("#confirm-ok").await;
    browser.wait_text(j2, 30, |t| t.contains("cancelled")).await;

    // A token limited to workspace `ci`: refused `other`, shown `ci`.
    let limited = workspace_token(&daemon, "viewer", "ci");
    browser.sign_out().await;
    browser.sign_in(&limited, "other").await;
    let refused = browser
        .wait_text("#sign-in-error", 20, |t| !t.is_empty())
        .await;
    assert!(
        refused.contains("Refused") && refused.contains("limited to workspaces ci"),
        "{refused}"
    );
    browser.sign_in(&limited, "").await;
    browser
        .wait_text("#who", 20, |t| {
            t.contains("signed in as viewer (workspaces ci)")
        })
        .await;
    let claims = browser
        .wait_text("#claims-table tbody", 10, |t| t.contains("c1"))
        .await;
    assert!(claims.contains("released"), "{claims}");
    assert!(
        browser
            .client
            .find(Locator::Css("#claims-table button"))
            .await
            .is_err(),
        "a limited token gets no release button"
    );
    let alerts = browser.text("#alerts-list").await;
    assert!(alerts.contains("shown to operators"), "{alerts}");
    let page = browser.source().await;
    assert!(!page.contains(&limited) && !page.contains(&daemon.token));
    browser.screenshot("console-limited.png").await;

    // The simulator view: a result.json opened from disk.
    let (result, strategies) = sim_result(dir.path());
    browser
        .client
        .find(Locator::Id("sim-file"))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .send_keys(&result.display().to_string())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let ranking = browser
        .wait_text("#sim-table tbody", 30, |t| t.contains("cold_image"))
        .await;
    let rows = browser
        .client
        .find_all(Locator::Css("#sim-table tbody tr"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rows.len(), strategies, "{ranking}");
    let drawn = browser
        .client
        .execute(
            "return ['chart-sim-scatter', 'chart-sim-cost'].every(id => Chart.getChart(id) !== undefined)",
            vec![],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        drawn,
        serde_json::json!(true),
        "both simulator charts drawn"
    );
    browser
        .client
        .execute(
            "document.getElementById('simulator').scrollIntoView()",
            vec![],
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    browser.screenshot("console-simulator.png").await;

    // At a phone's width nothing runs off the side: tables scroll inside.
    browser
        .client
        .set_window_size(390, 844)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // (The charts redraw at the new width on the browser's next frames.)
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let wide = browser
            .client
            .execute(
                "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]",
                vec![],
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        if wide[0].as_u64() <= wide[1].as_u64() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the page is wider than a phone: {wide}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    browser.screenshot("console-phone.png").await;

    browser.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_reads_need_a_token_and_stay_in_its_workspaces() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let daemon = Daemon::start(dir.path(), "");
    let base = daemon.discovery.http.clone();
    // The page is public: it holds no data.
    let (status, page) = http(&base, "GET", "/ui", None).await;
    assert_eq!(status, 200);
    assert!(page.contains("<title>fleet console</title>"));
    assert_eq!(http(&base, "GET", "/ui/", None).await.0, 200);
    let (status, _) = http(&base, "GET", "/ui/nothing.js", None).await;
    assert_eq!(status, 404);
    // Its data is not.
    for path in ["/v1/console/state", "/v1/console/events"] {
        assert_eq!(http(&base, "GET", path, None).await.0, 401, "{path}");
        assert_eq!(
            http(&base, "GET", path, Some("not-a-token")).await.0,
            401,
            "{path}"
        );
    }
    let limited = &workspace_token(&daemon, "viewer", "ci");
    let (status, body) = http(
        &base,
        "GET",
        "/v1/console/state?workspace=other",
        Some(limited),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = http(&base, "GET", "/v1/console/state", Some(limited)).await;
    assert_eq!(status, 200, "{body}");
    let state: fleet_core::protocol::ConsoleState =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert!(!state.viewer.operator && state.diagnosis.is_none());
    assert!(
        state.costs.pools.is_empty(),
        "no pool totals for a limited token"
    );
    // The rest of the HTTP API stays the operator's, the actions too.
    assert_eq!(http(&base, "GET", "/v1/claims", Some(limited)).await.0, 403);
    assert_eq!(
        http(&base, "POST", "/v1/claims/ci/c1/release", Some(limited))
            .await
            .0,
        403
    );
    // An operator's cancel of a job nobody submitted names what is wrong.
    let (status, body) = http(
        &base,
        "POST",
        "/v1/jobs/ci/nope/cancel",
        Some(&daemon.token),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("unknown job"), "{body}");
}
