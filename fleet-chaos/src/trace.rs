//! What happened in a schedule, line by line, with a running hash: two runs
//! of one seed must produce the same hash (the determinism check), and a
//! failing seed's lines are what `--replay` prints.

use std::fmt::Write as _;

use fleet_core::ids::Millis;

/// The trace of one schedule.
#[derive(Debug)]
pub(crate) struct Trace {
    /// FNV-1a over every line.
    hash: u64,
    steps: u64,
    /// Every line, when asked for; otherwise only the last [`TAIL`].
    keep_all: bool,
    lines: std::collections::VecDeque<String>,
    buf: String,
}

/// Lines kept when the whole trace is not asked for: enough context for a
/// violation report.
const TAIL: usize = 400;

impl Trace {
    pub(crate) fn new(keep_all: bool) -> Trace {
        Trace {
            hash: 0xcbf2_9ce4_8422_2325,
            steps: 0,
            keep_all,
            lines: std::collections::VecDeque::new(),
            buf: String::new(),
        }
    }

    /// Records one step at virtual time `at` (ms since the schedule began).
    pub(crate) fn step(&mut self, at: Millis, what: std::fmt::Arguments<'_>) {
        self.buf.clear();
        let _ = write!(self.buf, "{:>9}.{:03} {what}", at / 1000, at % 1000);
        for b in self.buf.bytes() {
            self.hash ^= u64::from(b);
            self.hash = self.hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.hash ^= u64::from(b'\n');
        self.hash = self.hash.wrapping_mul(0x0000_0100_0000_01b3);
        self.steps += 1;
        if !self.keep_all && self.lines.len() == TAIL {
            self.lines.pop_front();
        }
        self.lines.push_back(self.buf.clone());
    }

    pub(crate) fn hash(&self) -> u64 {
        self.hash
    }

    pub(crate) fn steps(&self) -> u64 {
        self.steps
    }

    pub(crate) fn lines(&self) -> Vec<String> {
        self.lines.iter().cloned().collect()
    }
}
