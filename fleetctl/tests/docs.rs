//! Every `fleetctl` command line in README.md and scripts/demo still
//! parses, so the docs and the demo move with the flags.

use std::path::Path;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn read(rel: &str) -> std::io::Result<String> {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel))
}

/// Splits a shell line into words: whitespace outside quotes, quotes
/// removed, a `#` word starts a comment, a redirection or pipe ends the
/// command. Enough for the docs' lines.
fn words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                in_word = true;
            }
            (None, '#' | '>' | '|' | ';' | '&') if !in_word => break,
            (None, c) if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    out
}

/// The fleetctl arguments of each invocation in README.md: the
/// `cargo run -p fleetctl -- …` lines and the inline `` `fleetctl …` ``.
fn readme_invocations(text: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    for line in text.lines() {
        if let Some((_, rest)) = line.split_once("cargo run -p fleetctl -- ") {
            found.push(words(rest));
        }
        for (i, part) in line.split('`').enumerate() {
            // Odd parts are inside backticks.
            if i % 2 == 1
                && let Some(rest) = part.strip_prefix("fleetctl ")
            {
                found.push(words(rest));
            }
        }
    }
    found
}

/// The arguments of each `ctl …` line of scripts/demo, after the
/// `--data-dir "$data"` that `ctl` adds.
fn demo_invocations(text: &str) -> Vec<Vec<String>> {
    let prefix = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("ctl() { \"$bin/fleetctl\" "))
        .and_then(|l| l.strip_suffix(" \"$@\"; }"))
        .map(words)
        .unwrap_or_default();
    assert_eq!(prefix, ["--data-dir", "$data"], "the ctl function changed");
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("ctl "))
        .map(|rest| {
            let mut args = prefix.clone();
            args.extend(words(rest));
            args
        })
        .collect()
}

fn assert_all_parse(file: &str, found: &[Vec<String>], at_least: usize) {
    assert!(
        found.len() >= at_least,
        "{file}: found {} fleetctl invocations, expected at least {at_least}: {found:?}",
        found.len()
    );
    for args in found {
        // `--help` and `--version` come back as errors that exit 0.
        if let Err(e) = fleetctl::parse(args)
            && e.exit_code() != 0
        {
            panic!("{file}: `fleetctl {}` does not parse:\n{e}", args.join(" "));
        }
    }
}

#[test]
fn the_readme_invocations_parse() -> TestResult {
    let found = readme_invocations(&read("README.md")?);
    assert!(found.contains(&words("exec c1 -- make -j8")), "{found:?}");
    assert_all_parse("README.md", &found, 6);
    Ok(())
}

#[test]
fn the_demo_invocations_parse() -> TestResult {
    let found = demo_invocations(&read("scripts/demo")?);
    assert!(
        found
            .iter()
            .any(|a| a.last().map(String::as_str) == Some("exec with the renewed certificate")),
        "{found:?}"
    );
    assert_all_parse("scripts/demo", &found, 8);
    Ok(())
}

#[test]
fn the_shell_splitter() {
    assert_eq!(
        words(r#"exec c1 -- echo "a b" 'c'  # comment"#),
        ["exec", "c1", "--", "echo", "a b", "c"]
    );
    assert_eq!(words("release c1"), ["release", "c1"]);
    assert_eq!(words("completions bash > f"), ["completions", "bash"]);
    assert_eq!(words(r#"--data-dir "$data""#), ["--data-dir", "$data"]);
}
