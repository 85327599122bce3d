//! Config errors as snapshot tests: `tests/validate/*.toml` in, `*.err` (expected stderr) out.
//!
//! Every bad file must get an error that names the file, the line and the key and says what
//! would be valid (DESIGN.md, "Pipeline file"). Snapshots make the wording reviewable: a
//! change to a message shows up as a diff of a `.err` file.
//!
//! Files named `ok-*.toml` must validate (exit 0); every other file must be rejected (exit 1).
//! `sluice run` must refuse the same files with the same messages, checked against the same
//! snapshots.
//!
//! To update the snapshots: `SLUICE_BLESS=1 cargo test -p sluice --test e2e validate_errors`,
//! read the diff, then run the tests again without it (the `run` test reads the snapshots).

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::{Sluice, plugin, repo_root};

/// Validation reads files and compiles plugins; it never waits on the network.
const VALIDATE_TIMEOUT: Duration = Duration::from_secs(60);

/// The folder of cases.
fn cases_dir() -> PathBuf {
    repo_root().join("tests").join("validate")
}

/// Every `*.toml` case, sorted so failures are reported in a stable order.
fn cases() -> Vec<PathBuf> {
    let mut cases: Vec<PathBuf> = fs::read_dir(cases_dir())
        .expect("read tests/validate")
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension() == Some(OsStr::new("toml")))
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "no cases in {}", cases_dir().display());
    cases
}

fn is_ok_case(case: &Path) -> bool {
    file_name(case).starts_with("ok-")
}

fn file_name(path: &Path) -> &str {
    path.file_name()
        .and_then(OsStr::to_str)
        .expect("a UTF-8 file name")
}

/// A Redis URL nothing answers on (port 1 needs root to bind): validation must not need Redis,
/// and a `run` that wrongly accepted a bad file must not touch a Redis on the default port.
const NOWHERE: &str = "redis://127.0.0.1:1";

/// Snapshots must not depend on the developer's log filter, nor on a Redis they run, nor on
/// whether a plugin was compiled before (a first compile is announced at info level).
fn hermetic(command: &mut Command) {
    command
        .env_remove("RUST_LOG")
        .env("SLUICE_LOG", "warn")
        .env("NO_COLOR", "1")
        .env("SLUICE_REDIS_URL", NOWHERE);
}

/// Replaces absolute paths with placeholders: the cases folder with `$DIR`, the repository
/// root with `$ROOT`.
fn normalize(text: &str) -> String {
    let dir = cases_dir().display().to_string();
    let root = repo_root().display().to_string();
    text.replace(&dir, "$DIR").replace(&root, "$ROOT")
}

/// Drops ANSI colour sequences, which a log line may carry around the message.
fn strip_ansi(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte (a letter).
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

/// Waits for a short-lived `sluice` and returns (exit code, stdout, stderr), normalized.
fn finish(mut sluice: Sluice) -> (Option<i32>, String, String) {
    let status = sluice.wait_exit(VALIDATE_TIMEOUT);
    (
        status.code(),
        normalize(&sluice.stdout()),
        normalize(&sluice.log()),
    )
}

#[test]
fn validate_errors_match_snapshots() {
    plugin("uppercase"); // the ok case refers to it: fail with the build hint, not a diff
    let bless = std::env::var_os("SLUICE_BLESS").is_some();
    let mut failures = Vec::new();

    for case in cases() {
        let name = file_name(&case);
        let (code, stdout, stderr) = finish(Sluice::spawn_with(
            [OsStr::new("validate"), case.as_os_str()],
            hermetic,
        ));

        let want_code = if is_ok_case(&case) { 0 } else { 1 };
        if code != Some(want_code) {
            failures.push(format!(
                "{name}: exit code {code:?}, want {want_code}\nstderr:\n{stderr}"
            ));
        }
        if is_ok_case(&case) {
            let stem = name.trim_end_matches(".toml");
            let want_stdout = format!(
                "ok: $DIR/{name} ({stem})\n    redis: {NOWHERE} (from $SLUICE_REDIS_URL)\n"
            );
            if stdout != want_stdout {
                failures.push(format!(
                    "{name}: stdout\n  got:  {stdout:?}\n  want: {want_stdout:?}"
                ));
            }
        }

        let snapshot = case.with_extension("err");
        if bless {
            fs::write(&snapshot, &stderr).expect("write the snapshot");
            continue;
        }
        match fs::read_to_string(&snapshot) {
            Ok(want) if want == stderr => {}
            Ok(want) => failures.push(format!(
                "{name}: stderr differs from {}\n--- want\n{want}--- got\n{stderr}---",
                file_name(&snapshot)
            )),
            Err(_) => failures.push(format!(
                "{name}: no snapshot {}; run with SLUICE_BLESS=1 to write it\n--- got\n{stderr}---",
                file_name(&snapshot)
            )),
        }
    }

    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn run_refuses_an_invalid_file_with_the_validate_message() {
    let mut failures = Vec::new();

    for case in cases().into_iter().filter(|case| !is_ok_case(case)) {
        let name = file_name(&case);
        let (code, _, stderr) = finish(Sluice::run_with(&case, hermetic));
        if code == Some(0) || code.is_none() {
            failures.push(format!(
                "{name}: `sluice run` exited with {code:?}, want an error code"
            ));
        }
        // `run` may decorate its log lines; the message itself must be the one `validate` gives.
        let stderr = strip_ansi(&stderr);
        let Ok(want) = fs::read_to_string(case.with_extension("err")) else {
            failures.push(format!(
                "{name}: no snapshot; run the snapshot test with SLUICE_BLESS=1"
            ));
            continue;
        };
        for line in want.lines() {
            let message = line.strip_prefix("error: ").unwrap_or(line);
            if !stderr.contains(message) {
                failures.push(format!(
                    "{name}: `sluice run` does not say\n  {message}\nstderr:\n{stderr}"
                ));
            }
        }
    }

    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
