//! Bad input is refused with the JSON path of the bad field, never a panic;
//! the binary exits non-zero.

#![expect(clippy::unwrap_used, clippy::expect_used, reason = "tests")]

mod common;

use fleet_sim::{ErrorKind, input};
use serde_json::{Value, json};

fn path_of(v: &Value) -> String {
    let e = input::parse(v.to_string().as_bytes()).expect_err("must be refused");
    assert_eq!(e.kind(), ErrorKind::Invalid, "{e}");
    e.json_path().unwrap().to_owned()
}

fn base() -> Value {
    common::input("aws", common::steady(), 24)
}

#[test]
fn unknown_strategy() {
    let mut v = base();
    v["strategies"] = json!([{"kind": "cold_image"}, {"kind": "warm_pool"}]);
    assert_eq!(path_of(&v), "$.strategies[1].kind");
    v["strategies"] = json!([{"kind": "spot", "idle_timeout": 5}]);
    assert_eq!(path_of(&v), "$.strategies[0]");
}

#[test]
fn negative_rates() {
    let mut v = base();
    v["forecast"]["profile"]["rate_per_hour"] = json!(-1);
    assert_eq!(path_of(&v), "$.forecast.profile.rate_per_hour");
    let mut v = base();
    v["forecast"]["profile"]["hour_of_day"] = json!(
        vec![1.0; 23]
            .into_iter()
            .chain([-0.5])
            .collect::<Vec<f64>>()
    );
    assert_eq!(path_of(&v), "$.forecast.profile.hour_of_day[23]");
    let mut v = base();
    v["provider"]["spot_interruptions_per_1000h"] = json!([-1, 3]);
    assert_eq!(path_of(&v), "$.provider.spot_interruptions_per_1000h[0]");
    let mut v = base();
    v["provider"]["offerings"] = json!([{"instance_type": "x1", "cpus": 2, "memory_mb": 1024, "disk_gb": 10, "on_demand": "-0.1"}]);
    assert_eq!(path_of(&v), "$.provider.offerings[0].on_demand");
}

#[test]
fn empty_forecast() {
    let mut v = base();
    v["forecast"] = json!({"trace": []});
    assert_eq!(path_of(&v), "$.forecast.trace");
}

#[test]
fn horizon_too_large_for_memory() {
    let mut v = base();
    v["horizon_hours"] = json!(17_000);
    v["step_ms"] = json!(1_000);
    assert_eq!(path_of(&v), "$.horizon_hours");
    let mut v = base();
    v["horizon_hours"] = json!(8_760);
    v["forecast"]["profile"]["rate_per_hour"] = json!(1e6);
    assert_eq!(path_of(&v), "$.forecast.profile.rate_per_hour");
}

#[test]
fn unknown_price_book_key() {
    let mut v = base();
    v["provider"]["price_book"] = json!("azure");
    assert_eq!(path_of(&v), "$.provider.price_book");
    let mut v = base();
    v["pool"]["instance_types"] = json!(["c7i.xlarge", "cx32"]);
    assert_eq!(path_of(&v), "$.pool.instance_types[1]");
}

#[test]
fn unknown_fields_and_types() {
    let mut v = base();
    v["sla"]["p95"] = json!(3);
    assert_eq!(path_of(&v), "$.sla.p95");
    let mut v = base();
    v["pool"]["max_nodes"] = json!("ten");
    assert_eq!(path_of(&v), "$.pool.max_nodes");
    let e = input::parse(b"{not json").expect_err("refused");
    assert_eq!(e.json_path(), Some("$"));
    let big = vec![b' '; input::MAX_INPUT_BYTES + 1];
    assert_eq!(
        input::parse(&big).expect_err("refused").kind(),
        ErrorKind::TooLarge
    );
}

#[test]
fn the_binary_exits_non_zero_with_the_path() {
    let dir = std::env::temp_dir().join(format!("fleet-sim-errors-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.json");
    let mut v = base();
    v["forecast"]["profile"]["rate_per_hour"] = json!(-3);
    std::fs::write(&file, v.to_string()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fleet-sim"))
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("$.forecast.profile.rate_per_hour"),
        "{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_example_runs_through_the_binary() {
    let dir = std::env::temp_dir().join(format!("fleet-sim-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/sim-input.json");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fleet-sim"))
        .args(["--config", example, "--quiet", "--out"])
        .arg(dir.join("r.json"))
        .arg("--svg")
        .arg(dir.join("c.svg"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&std::fs::read(dir.join("r.json")).unwrap()).unwrap();
    assert_eq!(r["ranking"].as_array().map(Vec::len), Some(6));
    let svg = std::fs::read_to_string(dir.join("c.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("polyline"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_schema_names_every_input_key() {
    let dir = env!("CARGO_MANIFEST_DIR");
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{dir}/sim-input.schema.json")).unwrap(),
    )
    .unwrap();
    let example = std::fs::read(format!("{dir}/examples/sim-input.json")).unwrap();
    let parsed = input::parse(&example).unwrap();
    // Every key the input type writes is documented at the top level.
    let written = serde_json::to_value(&parsed.input).unwrap();
    let props = schema["properties"].as_object().unwrap();
    for key in written.as_object().unwrap().keys() {
        assert!(props.contains_key(key), "schema lacks {key}");
    }
    assert_eq!(
        props.len(),
        written.as_object().unwrap().len() + 1,
        "plus $comment"
    );
}

fn sim(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_fleet-sim"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn help_and_version_exit_zero() {
    let out = sim(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--config",
        "--out",
        "--svg",
        "--seed",
        "--threads",
        "--quiet",
        "--bench",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
    let out = sim(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("fleet-sim {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn command_line_mistakes_exit_2() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/sim-input.json");
    for args in [
        &[][..],
        &["--out", "r.json"],
        &["--config", example, "--bogus"],
        &["--config", example, "--seed", "x"],
        &["--config", example, "--threads", "0"],
        &["--config"],
    ] {
        let out = sim(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
}

/// Into a pipe (a CI log) the progress bar is never drawn: the table goes
/// to stdout and stderr stays free of `\r` redraws, however long the run.
#[test]
fn no_progress_bar_is_drawn_into_a_pipe() {
    // The README's example over eight weeks instead of two: long enough
    // (seconds, in a debug build) that a bar would have been drawn.
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/sim-input.json");
    let mut input: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(example).unwrap()).unwrap();
    input["horizon_hours"] = serde_json::json!(8 * 7 * 24);
    let long = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("sim-input-8-weeks-{}.json", std::process::id()));
    std::fs::write(&long, input.to_string()).unwrap();
    let started = std::time::Instant::now();
    let out = sim(&["--config", &long.display().to_string(), "--threads", "1"]);
    let _ = std::fs::remove_file(&long);
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains('\r') && !stderr.contains('%'),
        "a bar was drawn into a pipe after {took:?}: {stderr:?}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("cold_image"));
    // The bar waits a second before drawing: a quicker run proves nothing.
    assert!(took.as_secs_f64() > 1.2, "the run took only {took:?}");
}

/// The chart's text, as (x, y, text) of each `<text>` element.
fn svg_texts(svg: &str) -> Vec<(f64, f64, String)> {
    let attr = |tag: &str, name: &str| -> f64 {
        let at = tag.find(&format!(" {name}=\"")).map(|i| i + name.len() + 3);
        at.and_then(|i| tag[i..].split('"').next()?.parse().ok())
            .unwrap_or(f64::NAN)
    };
    svg.split("<text")
        .skip(1)
        .map(|t| {
            let (tag, rest) = t.split_once('>').unwrap();
            let text = rest.split("</text>").next().unwrap().trim().to_owned();
            (attr(tag, "x"), attr(tag, "y"), text)
        })
        .collect()
}

/// The chart of the README example: every label inside the 1000×440
/// frame, every number on an axis round (at most two significant digits:
/// 0.5, 10, 35, 2000), the wait axis at powers of ten.
#[test]
fn the_chart_has_round_ticks_and_keeps_its_labels_in_the_frame() {
    let dir = std::env::temp_dir().join(format!("fleet-sim-chart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/sim-input.json");
    let out = sim(&[
        "--config",
        example,
        "--quiet",
        "--svg",
        dir.join("c.svg").to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let svg = std::fs::read_to_string(dir.join("c.svg")).unwrap();
    let texts = svg_texts(&svg);
    assert!(texts.len() > 20, "{texts:?}");
    let mut numbers = Vec::new();
    for (x, y, text) in &texts {
        assert!(
            (0.0..=1000.0).contains(x) && (0.0..=440.0).contains(y),
            "{text:?} at ({x}, {y}) is outside the frame"
        );
        if let Ok(v) = text.parse::<f64>() {
            let digits: String = text
                .chars()
                .filter(char::is_ascii_digit)
                .collect::<String>()
                .trim_start_matches('0')
                .trim_end_matches('0')
                .to_owned();
            assert!(digits.len() <= 2, "tick {text} is not round");
            numbers.push(v);
        }
    }
    for power in ["1", "10", "100"] {
        assert!(
            texts.iter().any(|t| t.2 == power),
            "no {power} s tick on the wait axis: {texts:?}"
        );
    }
    for label in ["Cost vs p95 wait", "Cost over time", "cold_image", "hybrid"] {
        assert!(texts.iter().any(|t| t.2 == label), "no {label:?}");
    }
    assert!(numbers.len() >= 10, "{numbers:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}
