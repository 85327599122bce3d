//! `sluice plugin new`: for every language, the project it writes builds with the command it
//! prints and passes `sluice plugin test` on its sample input, unchanged. The build tools are
//! the pinned ones `scripts/build-plugins` installs under the target dir.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{PATIENCE, Sluice, repo_root};

/// The workspace's target dir, where `scripts/build-plugins` puts its tools and the Rust
/// scaffold reuses the already-built sdk.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|dir| {
            if dir.is_absolute() {
                dir
            } else {
                repo_root().join(dir)
            }
        })
        .unwrap_or_else(|| repo_root().join("target"))
}

/// Runs `sluice ARGS` to its end: (exit code, stdout, stderr).
fn sluice<I, S>(args: I) -> (Option<i32>, String, String)
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut run = Sluice::spawn_with(args, |c| {
        c.env("SLUICE_CACHE_DIR", "");
    });
    let status = run.wait_exit(PATIENCE);
    (status.code(), run.stdout(), run.log())
}

/// What `plugin new` printed: the build command and the .wasm to test.
struct Printed {
    build: String,
    wasm: String,
}

fn parse(stdout: &str) -> Printed {
    let lines: Vec<&str> = stdout.lines().map(str::trim).collect();
    let cd = lines
        .iter()
        .position(|l| l.starts_with("cd "))
        .unwrap_or_else(|| panic!("no `cd` line in:\n{stdout}"));
    let build = lines[cd + 1].to_string();
    let wasm = lines
        .iter()
        .find_map(|l| l.strip_prefix("sluice plugin test "))
        .and_then(|rest| rest.strip_suffix(" --input sample.jsonl"))
        .unwrap_or_else(|| panic!("no `sluice plugin test` line in:\n{stdout}"))
        .to_string();
    Printed { build, wasm }
}

/// Scaffolds `name` in `lang`, lets `prepare` adjust the folder, runs the printed build
/// command (with `env` for where the pinned tools are), and returns the built .wasm.
fn scaffold_and_build(
    name: &str,
    lang: &str,
    dir: &Path,
    env: &[(&str, String)],
    prepare: impl FnOnce(&Path),
) -> PathBuf {
    let (code, stdout, stderr) = sluice([
        "plugin".as_ref(),
        "new".as_ref(),
        name.as_ref(),
        "--lang".as_ref(),
        lang.as_ref(),
        "--dir".as_ref(),
        dir.as_os_str(),
    ]);
    assert_eq!(code, Some(0), "plugin new failed:\n{stdout}\n{stderr}");
    let printed = parse(&stdout);
    prepare(dir);
    let out = Command::new("sh")
        .arg("-c")
        .arg(&printed.build)
        .current_dir(dir)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("run the build command");
    assert!(
        out.status.success(),
        "`{}` failed:\n{}\n{}",
        printed.build,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // A Rust build honours CARGO_TARGET_DIR instead of the scaffold's own target/.
    match printed.wasm.strip_prefix("target/") {
        Some(rest) if env.iter().any(|(k, _)| *k == "CARGO_TARGET_DIR") => target_dir().join(rest),
        _ => dir.join(&printed.wasm),
    }
}

/// Runs `plugin test` on the built scaffold with its own sample input and on a message it
/// must dead-letter.
fn assert_passes(name: &str, dir: &Path, wasm: &Path) {
    let (code, stdout, stderr) = sluice([
        "plugin".as_ref(),
        "test".as_ref(),
        wasm.as_os_str(),
        "--input".as_ref(),
        dir.join("sample.jsonl").as_os_str(),
    ]);
    assert_eq!(code, Some(0), "plugin test failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!(
            r#"-> (first sink): {{"payload":"hello","processed_by":"{name}"}}"#
        )),
        "{stdout}"
    );
    let (code, stdout, stderr) = sluice([
        "plugin".as_ref(),
        "test".as_ref(),
        wasm.as_os_str(),
        "--field".as_ref(),
        "other=x".as_ref(),
    ]);
    assert_eq!(
        code,
        Some(2),
        "a dead-lettered message must fail the run:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("failed (dead-letter") && stdout.contains("missing field `payload`"),
        "{stdout}"
    );
}

fn path_with(dir: PathBuf) -> String {
    let path = std::env::var("PATH").unwrap_or_default();
    format!("{}:{path}", dir.display())
}

#[test]
fn a_new_rust_plugin_builds_and_passes_plugin_test() {
    let tmp = tempfile::tempdir().expect("a temp dir");
    let dir = tmp.path().join("rust");
    // The workspace's target dir and lock file: the sdk and wit-bindgen are already built
    // there with the same versions and profile, so only the scaffold itself compiles.
    let env = [("CARGO_TARGET_DIR", target_dir().display().to_string())];
    let wasm = scaffold_and_build("scaffold-rust", "rust", &dir, &env, |dir| {
        std::fs::copy(repo_root().join("Cargo.lock"), dir.join("Cargo.lock"))
            .expect("copy the lock file");
    });
    assert_passes("scaffold-rust", &dir, &wasm);
}

#[test]
fn a_new_python_plugin_builds_and_passes_plugin_test() {
    let tmp = tempfile::tempdir().expect("a temp dir");
    let dir = tmp.path().join("py");
    let tools = target_dir().join("componentize-py-0.25.1");
    let env = [
        ("PATH", path_with(tools.join("bin"))),
        ("PYTHONPATH", tools.display().to_string()),
    ];
    let wasm = scaffold_and_build("scaffold-py", "python", &dir, &env, |_| {});
    assert_passes("scaffold-py", &dir, &wasm);
}

#[test]
fn a_new_javascript_plugin_builds_and_passes_plugin_test() {
    let tmp = tempfile::tempdir().expect("a temp dir");
    let dir = tmp.path().join("js");
    let tools = target_dir().join("componentize-js-0.23.0/node_modules/.bin");
    let env = [("PATH", path_with(tools))];
    let wasm = scaffold_and_build("scaffold-js", "js", &dir, &env, |_| {});
    assert_passes("scaffold-js", &dir, &wasm);
}

#[test]
fn a_new_c_plugin_builds_and_passes_plugin_test() {
    let tmp = tempfile::tempdir().expect("a temp dir");
    let dir = tmp.path().join("c");
    let wasm = scaffold_and_build("scaffold-c", "c", &dir, &[], |_| {});
    assert_passes("scaffold-c", &dir, &wasm);
}

#[test]
fn plugin_new_refuses_a_folder_in_use_and_a_bad_name() {
    let tmp = tempfile::tempdir().expect("a temp dir");
    let used = tmp.path().join("used");
    std::fs::create_dir(&used).unwrap();
    std::fs::write(used.join("keep.txt"), "mine").unwrap();
    let (code, _, stderr) = sluice([
        "plugin".as_ref(),
        "new".as_ref(),
        "fine".as_ref(),
        "--lang".as_ref(),
        "c".as_ref(),
        "--dir".as_ref(),
        used.as_os_str(),
    ]);
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains("already exists and is not empty"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_dir(&used).unwrap().count(),
        1,
        "wrote into a folder in use"
    );

    let (code, _, stderr) = sluice([
        "plugin".as_ref(),
        "new".as_ref(),
        "My_Plugin".as_ref(),
        "--lang".as_ref(),
        "js".as_ref(),
        "--dir".as_ref(),
        tmp.path().join("bad").as_os_str(),
    ]);
    assert_ne!(code, Some(0));
    assert!(
        stderr.contains("invalid plugin name `My_Plugin`"),
        "{stderr}"
    );
    assert!(!tmp.path().join("bad").exists());

    // An empty folder is fine.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let (code, stdout, stderr) = sluice([
        "plugin".as_ref(),
        "new".as_ref(),
        "fine".as_ref(),
        "--lang".as_ref(),
        "c".as_ref(),
        "--dir".as_ref(),
        empty.as_os_str(),
    ]);
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(empty.join("processor.c").is_file());
}
