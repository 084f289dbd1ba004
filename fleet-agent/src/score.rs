//! Scorers: the agent judges a task's result on the node once its process
//! has exited, and sends the [`Verdict`] with the `completed` event.
//!
//! A scorer that cannot judge (a missing file, a pattern that does not
//! compile, output that is not JSON) fails the task and says why in the
//! score's notes: the receipt shows what the scorer saw.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fleet_core::protocol::{OutputStream, Scorer, Verdict};
use serde_json::Value;
use serde_json_path::JsonPath;
use tokio::sync::{mpsc, watch};

use crate::exec::{Outcome, ProcessSpec, Stop, spawn_process};

/// The largest file a `regex_match` or `json_path` scorer reads.
pub const MAX_SCORED_FILE: u64 = 16 * 1024 * 1024;
/// How much of a `command` scorer's standard output is kept (its tail).
const MAX_SCORER_OUTPUT: usize = 64 * 1024;
/// A `command` scorer's time limit when the task sets none.
pub const DEFAULT_SCORER_TIMEOUT: Duration = Duration::from_secs(300);

/// Where and how the task ran.
#[derive(Debug)]
pub struct Scoring<'a> {
    /// The task's working directory: relative paths start there.
    pub cwd: &'a Path,
    /// The task's environment (a `command` scorer gets it too).
    pub env: &'a BTreeMap<String, String>,
    /// The task's exit code.
    pub exit_code: i32,
    /// A `command` scorer's time limit.
    pub timeout: Duration,
    /// Cancels a `command` scorer with the task.
    pub stop: watch::Receiver<Stop>,
}

/// The verdict of `scorer`, or `None` for `manual` (a person judges).
pub async fn judge(scorer: &Scorer, ctx: Scoring<'_>) -> Option<Verdict> {
    let verdict = match scorer {
        Scorer::ExitCode => {
            Verdict::binary(ctx.exit_code == 0, format!("exit code {}", ctx.exit_code))
        }
        Scorer::FileExists { path } => {
            let found = resolve(ctx.cwd, path).exists();
            let notes = if found {
                format!("{path} exists")
            } else {
                format!("{path} does not exist")
            };
            Verdict::binary(found, notes)
        }
        Scorer::RegexMatch { path, pattern } => match read(ctx.cwd, path).await {
            Err(why) => Verdict::binary(false, why),
            Ok(bytes) => regex_match(&bytes, path, pattern),
        },
        Scorer::JsonPath { path, expression } => match read(ctx.cwd, path).await {
            Err(why) => Verdict::binary(false, why),
            Ok(bytes) => json_path(&bytes, path, expression),
        },
        Scorer::Command { argv } => command(argv, ctx).await,
        // Manual, and kinds a newer daemon may add: nothing to run here.
        _ => return None,
    };
    Some(verdict)
}

fn resolve(cwd: &Path, path: &str) -> PathBuf {
    // `join` keeps an absolute path as it is.
    cwd.join(path)
}

async fn read(cwd: &Path, path: &str) -> Result<Vec<u8>, String> {
    let full = resolve(cwd, path);
    let meta = tokio::fs::metadata(&full)
        .await
        .map_err(|e| format!("cannot read {path}: {e}"))?;
    if meta.len() > MAX_SCORED_FILE {
        return Err(format!(
            "{path} is {} bytes, over the scorer's limit of {MAX_SCORED_FILE}",
            meta.len()
        ));
    }
    tokio::fs::read(&full)
        .await
        .map_err(|e| format!("cannot read {path}: {e}"))
}

fn regex_match(bytes: &[u8], path: &str, pattern: &str) -> Verdict {
    let re = match regex::Regex::new(pattern) {
        Ok(re) => re,
        Err(e) => return Verdict::binary(false, format!("invalid pattern: {e}")),
    };
    let text = String::from_utf8_lossy(bytes);
    match re.find(&text) {
        Some(m) => {
            let line = text[..m.start()].matches('\n').count() + 1;
            Verdict::binary(true, format!("{path}:{line} matches"))
        }
        None => Verdict::binary(false, format!("no match in {path}")),
    }
}

fn json_path(bytes: &[u8], path: &str, expression: &str) -> Verdict {
    let query = match JsonPath::parse(expression) {
        Ok(q) => q,
        Err(e) => return Verdict::binary(false, format!("invalid JSONPath: {e}")),
    };
    let doc: Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(e) => return Verdict::binary(false, format!("{path} is not JSON: {e}")),
    };
    let found = query.query(&doc).all();
    if found.is_empty() {
        return Verdict::binary(false, format!("{expression} selects nothing in {path}"));
    }
    let truthy = found.iter().filter(|v| is_truthy(v)).count();
    let total = found.len();
    // Counts far below 2^52: exact as f64.
    let value = truthy as f64 / total as f64;
    Verdict::graded(value, 1.0, format!("{truthy} of {total} values truthy"))
}

/// JavaScript's truthiness, minus its oddities: `null`, `false`, `0`,
/// `""`, `[]` and `{}` are false.
fn is_truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

async fn command(argv: &[String], ctx: Scoring<'_>) -> Verdict {
    let spec = ProcessSpec {
        argv: argv.to_vec(),
        env: ctx.env.clone(),
        cwd: ctx.cwd.to_path_buf(),
        timeout: Some(ctx.timeout),
    };
    let (tx, mut rx) = mpsc::channel(16);
    let proc = match spawn_process(&spec, tx) {
        Ok(p) => p,
        Err(e) => {
            let program = argv.first().map_or("", String::as_str);
            return Verdict::binary(false, format!("cannot start scorer {program}: {e}"));
        }
    };
    let collect = async {
        let mut stdout: Vec<u8> = Vec::new();
        while let Some((stream, chunk)) = rx.recv().await {
            if stream == OutputStream::Stdout {
                stdout.extend_from_slice(&chunk);
                if stdout.len() > MAX_SCORER_OUTPUT {
                    stdout.drain(..stdout.len() - MAX_SCORER_OUTPUT);
                }
            }
        }
        stdout
    };
    let (outcome, stdout) = tokio::join!(proc.wait(ctx.stop), collect);
    let text = String::from_utf8_lossy(&stdout);
    let last = text.lines().rev().map(str::trim).find(|l| !l.is_empty());
    match outcome {
        Outcome::Exited(0) => match last.and_then(parse_score) {
            Some((value, max)) => {
                Verdict::graded(value, max, format!("scorer printed {value}/{max}"))
            }
            None => Verdict::binary(true, "scorer exited 0"),
        },
        Outcome::Exited(code) => Verdict::binary(false, format!("scorer exited {code}")),
        Outcome::Signaled(sig) => Verdict::binary(false, format!("scorer killed by {sig}")),
        Outcome::TimedOut(t) => Verdict::binary(
            false,
            format!(
                "scorer timed out after {} ms; process group killed",
                t.as_millis()
            ),
        ),
        Outcome::Stopped(_) => Verdict::binary(false, "scorer stopped with the task"),
    }
}

/// `0.8` (out of 1) or `8/10`: a score no larger than its positive maximum.
fn parse_score(line: &str) -> Option<(f64, f64)> {
    let (value, max) = match line.split_once('/') {
        Some((v, m)) => (v.trim().parse::<f64>().ok()?, m.trim().parse::<f64>().ok()?),
        None => (line.parse::<f64>().ok()?, 1.0),
    };
    let valid = value.is_finite() && max.is_finite() && max > 0.0 && (0.0..=max).contains(&value);
    valid.then_some((value, max))
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use fleet_core::protocol::TaskResult;

    use super::*;

    fn ctx<'a>(dir: &'a Path, env: &'a BTreeMap<String, String>, exit_code: i32) -> Scoring<'a> {
        let (_tx, stop) = watch::channel(Stop::No);
        Scoring {
            cwd: dir,
            env,
            exit_code,
            timeout: Duration::from_secs(10),
            stop,
        }
    }

    async fn verdict(scorer: Scorer, dir: &Path, exit_code: i32) -> Verdict {
        let env = BTreeMap::new();
        judge(&scorer, ctx(dir, &env, exit_code))
            .await
            .unwrap_or_else(|| panic!("{scorer:?} gave no verdict"))
    }

    #[tokio::test]
    async fn exit_code_scores_zero_as_a_pass() {
        let dir = tempfile::tempdir().unwrap();
        let pass = verdict(Scorer::ExitCode, dir.path(), 0).await;
        assert_eq!((pass.result, pass.score.value), (TaskResult::Pass, 1.0));
        let fail = verdict(Scorer::ExitCode, dir.path(), 3).await;
        assert_eq!((fail.result, fail.score.value), (TaskResult::Fail, 0.0));
        assert_eq!(fail.score.notes.as_deref(), Some("exit code 3"));
    }

    #[tokio::test]
    async fn file_exists_looks_in_the_task_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("out.txt"), "x").unwrap();
        let found = Scorer::FileExists {
            path: "out.txt".into(),
        };
        assert_eq!(verdict(found, dir.path(), 1).await.result, TaskResult::Pass);
        let missing = Scorer::FileExists {
            path: "nope.txt".into(),
        };
        let v = verdict(missing, dir.path(), 0).await;
        assert_eq!(v.result, TaskResult::Fail);
        assert_eq!(v.score.notes.as_deref(), Some("nope.txt does not exist"));
    }

    #[tokio::test]
    async fn regex_match_names_the_line_and_reports_a_bad_pattern() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("log"),
            "build\ntest result: ok. 12 passed\n",
        )
        .unwrap();
        let ok = Scorer::RegexMatch {
            path: "log".into(),
            pattern: r"result: ok\. \d+ passed".into(),
        };
        let v = verdict(ok, dir.path(), 0).await;
        assert_eq!(v.result, TaskResult::Pass);
        assert_eq!(v.score.notes.as_deref(), Some("log:2 matches"));
        let no = Scorer::RegexMatch {
            path: "log".into(),
            pattern: "FAILED".into(),
        };
        assert_eq!(verdict(no, dir.path(), 0).await.result, TaskResult::Fail);
        let bad = Scorer::RegexMatch {
            path: "log".into(),
            pattern: "(unclosed".into(),
        };
        let v = verdict(bad, dir.path(), 0).await;
        assert_eq!(v.result, TaskResult::Fail);
        assert!(v.score.notes.unwrap().starts_with("invalid pattern"));
        let absent = Scorer::RegexMatch {
            path: "missing.log".into(),
            pattern: "x".into(),
        };
        let v = verdict(absent, dir.path(), 0).await;
        assert!(
            v.score
                .notes
                .unwrap()
                .starts_with("cannot read missing.log")
        );
    }

    #[tokio::test]
    async fn json_path_grades_by_the_truthy_fraction() {
        let dir = tempfile::tempdir().unwrap();
        let report = r#"{"tests":[{"passed":true},{"passed":true},{"passed":false},{"passed":1}]}"#;
        std::fs::write(dir.path().join("report.json"), report).unwrap();
        let scorer = |expression: &str| Scorer::JsonPath {
            path: "report.json".into(),
            expression: expression.into(),
        };
        let some = verdict(scorer("$.tests[*].passed"), dir.path(), 0).await;
        assert_eq!(some.result, TaskResult::Partial);
        assert_eq!(some.score.value, 0.75);
        assert_eq!(some.score.notes.as_deref(), Some("3 of 4 values truthy"));
        let all = verdict(scorer("$.tests[0].passed"), dir.path(), 0).await;
        assert_eq!(all.result, TaskResult::Pass);
        let none = verdict(scorer("$.tests[2].passed"), dir.path(), 0).await;
        assert_eq!(none.result, TaskResult::Fail);
        let nothing = verdict(scorer("$.missing"), dir.path(), 0).await;
        assert_eq!(nothing.result, TaskResult::Fail);
        let bad = verdict(scorer("$[?"), dir.path(), 0).await;
        assert!(bad.score.notes.unwrap().starts_with("invalid JSONPath"));
        std::fs::write(dir.path().join("report.json"), "not json").unwrap();
        let v = verdict(scorer("$.tests"), dir.path(), 0).await;
        assert!(
            v.score
                .notes
                .unwrap()
                .starts_with("report.json is not JSON")
        );
    }

    #[tokio::test]
    async fn command_scores_by_exit_code_and_printed_score() {
        let dir = tempfile::tempdir().unwrap();
        let sh = |script: &str| Scorer::Command {
            argv: vec!["sh".into(), "-c".into(), script.into()],
        };
        let pass = verdict(sh("echo checking; echo 10/10"), dir.path(), 0).await;
        assert_eq!((pass.result, pass.score.value), (TaskResult::Pass, 10.0));
        assert_eq!(pass.score.max, Some(10.0));
        let partial = verdict(sh("echo 0.4"), dir.path(), 0).await;
        assert_eq!(
            (partial.result, partial.score.value),
            (TaskResult::Partial, 0.4)
        );
        let plain = verdict(sh("echo looks good"), dir.path(), 0).await;
        assert_eq!(plain.result, TaskResult::Pass);
        let fail = verdict(sh("echo 9/10; exit 1"), dir.path(), 0).await;
        assert_eq!(fail.result, TaskResult::Fail);
        assert_eq!(fail.score.notes.as_deref(), Some("scorer exited 1"));
        // The scorer runs where the task ran, with its environment.
        std::fs::write(dir.path().join("answer"), "42").unwrap();
        let mut env = BTreeMap::new();
        env.insert("WANT".to_owned(), "42".to_owned());
        let scorer = sh(r#"test "$(cat answer)" = "$WANT""#);
        let v = judge(&scorer, ctx(dir.path(), &env, 0)).await.unwrap();
        assert_eq!(v.result, TaskResult::Pass);
        let missing = Scorer::Command {
            argv: vec!["/nonexistent/scorer".into()],
        };
        let v = verdict(missing, dir.path(), 0).await;
        assert!(v.score.notes.unwrap().starts_with("cannot start scorer"));
    }

    #[tokio::test]
    async fn a_slow_command_scorer_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let env = BTreeMap::new();
        let mut c = ctx(dir.path(), &env, 0);
        c.timeout = Duration::from_millis(200);
        let scorer = Scorer::Command {
            argv: vec!["sleep".into(), "30".into()],
        };
        let v = judge(&scorer, c).await.unwrap();
        assert_eq!(v.result, TaskResult::Fail);
        assert!(v.score.notes.unwrap().starts_with("scorer timed out"));
    }

    #[tokio::test]
    async fn manual_leaves_the_verdict_to_a_person() {
        let dir = tempfile::tempdir().unwrap();
        let env = BTreeMap::new();
        assert!(
            judge(&Scorer::Manual, ctx(dir.path(), &env, 0))
                .await
                .is_none()
        );
    }

    #[test]
    fn scores_are_parsed_strictly() {
        assert_eq!(parse_score("8/10"), Some((8.0, 10.0)));
        assert_eq!(parse_score("0.25"), Some((0.25, 1.0)));
        assert_eq!(parse_score("11/10"), None);
        assert_eq!(parse_score("1.5"), None);
        assert_eq!(parse_score("3/0"), None);
        assert_eq!(parse_score("-1"), None);
        assert_eq!(parse_score("NaN"), None);
        assert_eq!(parse_score("ok"), None);
    }
}
