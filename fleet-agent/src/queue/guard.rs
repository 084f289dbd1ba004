//! The supervisor's guard: this binary as `fleet-agent queue-guard --parent
//! <agent pid> -- <supervisor>`, a small process between the agent and the
//! supervisor, so the supervisor — and everything it started — dies with
//! its agent, even of `kill -9`.
//!
//! A process cannot be told to die with its parent from outside without
//! `unsafe` code between fork and exec (which the workspace forbids), and
//! `PR_SET_PDEATHSIG` would only reach the supervisor itself, not its
//! children. So the guard asks the kernel for SIGTERM when the agent dies
//! (`prctl(PR_SET_PDEATHSIG)`, nix's safe wrapper), starts the supervisor
//! in a process group of its own (terminal signals and the agent's group do
//! not reach it), and on SIGTERM — the agent's death, or the agent stopping
//! a run whose lease it lost — kills that whole group. When the supervisor
//! exits, what is left of its group is killed and the guard ends as the
//! supervisor did: its exit code, or the same signal (without a core
//! dump); a supervisor killed by SIGTERM shows as exit 143, since the guard
//! handles that signal itself. A supervisor that cannot be started is exit
//! 127, as in a shell, with the reason on stderr.
//!
//! The agent starts the guard in a process group of its own too. The
//! parent-death signal follows the agent thread that started the guard:
//! the tokio runtime threads that run the queue loop live as long as the
//! agent.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitCode;

use nix::sys::signal::{Signal, killpg, raise};
use nix::unistd::{Pid, getppid};
use tokio::signal::unix::{SignalKind, signal};

/// The guard's subcommand.
pub const GUARD_COMMAND: &str = "queue-guard";

/// The exit code of a supervisor that could not be started.
pub const NOT_STARTED: u8 = 127;

/// Runs the guard: starts `supervisor` (stdin, stdout, stderr and the
/// environment are the guard's) and ends as it ended.
pub fn main(parent: u32, supervisor: &str) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fleet-agent queue-guard: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(guard(parent, supervisor))
}

async fn guard(parent: u32, supervisor: &str) -> ExitCode {
    // The handler first: the parent-death signal may come at once.
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("fleet-agent queue-guard: cannot handle SIGTERM: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGTERM) {
        eprintln!("fleet-agent queue-guard: cannot ask for a parent-death signal: {e}");
        return ExitCode::FAILURE;
    }
    // The agent may have died before the request: then nothing is started.
    if u32::try_from(getppid().as_raw()).ok() != Some(parent) {
        eprintln!("fleet-agent queue-guard: the agent (pid {parent}) is gone; not starting");
        return ExitCode::FAILURE;
    }
    let mut child = match tokio::process::Command::new(supervisor)
        .process_group(0)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fleet-agent queue-guard: cannot start the supervisor {supervisor}: {e}");
            return ExitCode::from(NOT_STARTED);
        }
    };
    let group = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(Pid::from_raw);
    let kill_group = || {
        if let Some(g) = group {
            // ESRCH (the group is gone) is the usual case after an exit.
            let _ = killpg(g, Signal::SIGKILL);
        }
    };
    let status = tokio::select! {
        status = child.wait() => status,
        _ = term.recv() => {
            kill_group();
            let _ = child.wait().await;
            return ExitCode::from(128 + Signal::SIGTERM as u8);
        }
    };
    kill_group();
    match status {
        Ok(status) => end_as(status),
        Err(e) => {
            eprintln!("fleet-agent queue-guard: waiting for the supervisor failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Ends the guard as the supervisor ended.
fn end_as(status: std::process::ExitStatus) -> ExitCode {
    if let Some(code) = status.code() {
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    let Some(n) = status.signal() else {
        return ExitCode::FAILURE;
    };
    if let Ok(sig) = Signal::try_from(n)
        && sig != Signal::SIGTERM
    {
        // The supervisor already dumped its core if it was going to.
        let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0);
        let _ = raise(sig);
    }
    // A signal the guard handles or ignores: the shell's convention.
    ExitCode::from(u8::try_from(128 + n).unwrap_or(1))
}
