//! Events only the task knows: an agentic task says it waits on a model
//! (`model_wait`) or runs a tool (`running_tool`) by appending a JSON line
//! to the file named in `FLEET_EVENTS_FILE`; the agent reads what was
//! added while the task runs and sends those events on.
//!
//! The lifecycle (`starting`, `running`, `completed`, …) stays the agent's:
//! a line with another state is refused, as is a line that is not a
//! worker event, each logged and skipped — the task cannot end its own
//! attempt or forge its verdict.

use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

use fleet_core::protocol::WorkerEvent;

/// The variable naming the file a task appends its events to.
pub const EVENTS_FILE_ENV: &str = "FLEET_EVENTS_FILE";
/// The longest line taken; a longer one is skipped.
pub const MAX_LINE: usize = 16 * 1024;
/// At most this much is read at each look.
const MAX_READ: u64 = 1024 * 1024;

/// Reads the events a task appended since the last look.
#[derive(Debug)]
pub struct TaskEvents {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
    /// Skipping the rest of an over-long line.
    skipping: bool,
}

impl TaskEvents {
    /// Watches `path` (which need not exist yet).
    pub fn new(path: PathBuf) -> TaskEvents {
        TaskEvents {
            path,
            offset: 0,
            partial: Vec::new(),
            skipping: false,
        }
    }

    /// The events in the complete lines added since the last call; a line
    /// that is not one the task may send is logged and skipped.
    pub fn read_new(&mut self) -> Vec<WorkerEvent> {
        let mut bytes = Vec::new();
        let read = std::fs::File::open(&self.path).and_then(|mut f| {
            f.seek(SeekFrom::Start(self.offset))?;
            f.take(MAX_READ).read_to_end(&mut bytes)
        });
        match read {
            Ok(n) => self.offset += n as u64,
            // Not written yet, or gone: nothing new.
            Err(_) => return Vec::new(),
        }
        let mut events = Vec::new();
        for &b in &bytes {
            if b != b'\n' {
                if self.partial.len() < MAX_LINE {
                    self.partial.push(b);
                } else if !self.skipping {
                    tracing::warn!(path = %self.path.display(), "task event line over {MAX_LINE} bytes skipped");
                    self.skipping = true;
                }
                continue;
            }
            let line = std::mem::take(&mut self.partial);
            if std::mem::take(&mut self.skipping) {
                continue;
            }
            if let Some(event) = parse(&line) {
                events.push(event);
            }
        }
        events
    }
}

fn parse(line: &[u8]) -> Option<WorkerEvent> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    match serde_json::from_slice::<WorkerEvent>(line) {
        Ok(e @ (WorkerEvent::ModelWait { .. } | WorkerEvent::RunningTool { .. })) => Some(e),
        Ok(other) => {
            tracing::warn!(event = ?other, "a task may send only model_wait and running_tool events; skipped");
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "task event line is not a worker event; skipped");
            None
        }
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use std::io::Write as _;

    use super::*;

    #[test]
    fn complete_lines_of_allowed_states_are_read_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut tail = TaskEvents::new(path.clone());
        assert!(tail.read_new().is_empty(), "no file yet");
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(
            concat!(
                r#"{"state":"model_wait","model":"m1"}"#,
                "\n\n not json\n",
                r#"{"state":"completed","exit_code":0}"#,
                "\n",
                r#"{"state":"running_tool","tool":"ba"#,
            )
            .as_bytes(),
        )
        .unwrap();
        let got = tail.read_new();
        assert_eq!(
            got,
            [WorkerEvent::ModelWait {
                model: Some("m1".into())
            }]
        );
        // The half-written line completes later.
        writeln!(f, "sh\",\"call_id\":\"c1\"}}").unwrap();
        assert_eq!(
            tail.read_new(),
            [WorkerEvent::RunningTool {
                tool: "bash".into(),
                call_id: Some("c1".into())
            }]
        );
        assert!(tail.read_new().is_empty(), "nothing new");
    }

    #[test]
    fn an_over_long_line_is_skipped_and_the_next_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let mut f = std::fs::File::create(&path).unwrap();
        let long = format!(
            r#"{{"state":"running_tool","tool":"{}"}}"#,
            "x".repeat(MAX_LINE)
        );
        writeln!(f, "{long}").unwrap();
        writeln!(f, r#"{{"state":"model_wait"}}"#).unwrap();
        let mut tail = TaskEvents::new(path);
        assert_eq!(tail.read_new(), [WorkerEvent::ModelWait { model: None }]);
    }
}
