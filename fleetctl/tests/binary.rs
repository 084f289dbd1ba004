//! The `fleetctl` binary's generated command line: help, completions and
//! usage errors, as a shell or script sees them.

use std::process::{Command, Output};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn fleetctl(args: &[&str]) -> std::io::Result<Output> {
    Command::new(env!("CARGO_BIN_EXE_fleetctl"))
        .args(args)
        .env_remove("FLEET_TOKEN")
        .env_remove("FLEET_DAEMON_CONFIG")
        .output()
}

#[test]
fn help_lists_the_subcommands_and_exits_zero() -> TestResult {
    let out = fleetctl(&["--help"])?;
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8(out.stdout)?;
    for sub in [
        "status",
        "pools",
        "nodes",
        "claims",
        "cost",
        "claim",
        "exec",
        "release",
        "renew",
        "jobs",
        "token",
        #[cfg(feature = "doctor")]
        "doctor",
        "completions",
    ] {
        assert!(
            help.lines()
                .any(|l| l.trim_start().starts_with(&format!("{sub} "))),
            "{sub} missing from:\n{help}"
        );
    }
    for flag in ["--data-dir", "--url", "--token", "--json", "FLEET_TOKEN"] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
    Ok(())
}

#[test]
fn help_never_shows_the_token_from_the_environment() -> TestResult {
    let out = Command::new(env!("CARGO_BIN_EXE_fleetctl"))
        .args(["status", "--help"])
        .env("FLEET_TOKEN", "do-not-print-me")
        .output()?;
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8(out.stdout)?;
    assert!(help.contains("FLEET_TOKEN"), "{help}");
    assert!(!help.contains("do-not-print-me"), "{help}");
    Ok(())
}

#[test]
fn version() -> TestResult {
    let out = fleetctl(&["--version"])?;
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8(out.stdout)?,
        format!("fleetctl {}\n", env!("CARGO_PKG_VERSION"))
    );
    Ok(())
}

#[test]
fn bash_completion_script() -> TestResult {
    let out = fleetctl(&["completions", "bash"])?;
    assert_eq!(out.status.code(), Some(0));
    let script = String::from_utf8(out.stdout)?;
    assert!(script.contains("_fleetctl()"), "{script}");
    assert!(script.contains("complete -F _fleetctl"), "{script}");
    for word in ["claim", "exec", "--workspace", "--data-dir"] {
        assert!(script.contains(word), "{word} missing");
    }
    Ok(())
}

#[test]
fn every_shell_gets_a_script() -> TestResult {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = fleetctl(&["completions", shell])?;
        assert_eq!(out.status.code(), Some(0), "{shell}");
        assert!(!out.stdout.is_empty(), "{shell}");
    }
    Ok(())
}

#[test]
fn an_unknown_flag_is_a_usage_error() -> TestResult {
    for args in [
        &["status", "--bogus"][..],
        &["--frobnicate", "nodes"],
        &["claim", "--pool", "p", "--workspace", "w", "--gpus", "1"],
    ] {
        let out = fleetctl(args)?;
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        let err = String::from_utf8(out.stderr)?;
        assert!(err.contains("unexpected argument"), "{args:?}: {err}");
        assert!(err.contains("--help"), "{args:?}: {err}");
    }
    Ok(())
}

#[test]
fn no_command_and_unknown_commands_are_usage_errors() -> TestResult {
    for args in [&[][..], &["frobnicate"], &["jobs"], &["exec", "c1"]] {
        let out = fleetctl(args)?;
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
    Ok(())
}
