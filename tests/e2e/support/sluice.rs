//! The real `sluice` binary as a child process.
//!
//! Cargo builds the binary before this test target and hands us its path, so the tests
//! exercise exactly what users run: argument parsing, signals, exit codes and all. Output goes
//! to files rather than pipes so a chatty runtime can never block on a full pipe, and so a
//! failing test can print everything the runtime said.

use std::ffi::OsStr;
use std::fmt::Debug;
use std::fs::{self, File};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::redis_server::signal;

/// The binary under test, built by cargo for this test target.
const BINARY: &str = env!("CARGO_BIN_EXE_sluice");

/// A running (or exited) `sluice` process. Dropping it kills the process; if the test is
/// panicking at that moment, the captured stderr is printed so the failure explains itself.
pub struct Sluice {
    child: Child,
    /// Set once the process has been reaped; after that its pid may belong to someone else.
    exit: Option<ExitStatus>,
    /// Holds `stdout` and `stderr`.
    dir: TempDir,
    args: Vec<String>,
}

impl Sluice {
    /// `sluice run PIPELINE --no-watch`: the pipeline file names its Redis, and file watching
    /// stays off so that only the test changes what runs.
    pub fn run(pipeline: &Path) -> Self {
        Self::run_with(pipeline, |_| {})
    }

    /// Like [`run`](Self::run), letting the caller adjust the command first.
    pub fn run_with(pipeline: &Path, configure: impl FnOnce(&mut Command)) -> Self {
        let args = [
            OsStr::new("run"),
            pipeline.as_os_str(),
            OsStr::new("--no-watch"),
        ];
        Self::spawn_with(args, configure)
    }

    /// `sluice ARGS...` with the environment inherited (so `RUST_LOG` works when debugging).
    pub fn spawn<I, S>(args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Self::spawn_with(args, |_| {})
    }

    /// Like [`spawn`](Self::spawn), letting the caller adjust the command first (environment,
    /// working directory).
    pub fn spawn_with<I, S>(args: I, configure: impl FnOnce(&mut Command)) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let dir = tempfile::tempdir().expect("create a temp dir for sluice output");
        let mut command = Command::new(BINARY);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(create(&dir.path().join("stdout")))
            .stderr(create(&dir.path().join("stderr")));
        configure(&mut command);
        let args = command
            .get_args()
            .map(|arg| arg.to_string_lossy().into_owned())
            .collect();
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {BINARY}: {e}"));
        Sluice {
            child,
            exit: None,
            dir,
            args,
        }
    }

    /// Runs `sluice ARGS...` to completion (a CLI command such as `dlq list`) and returns the
    /// exited process for its [`stdout`](Self::stdout) and [`log`](Self::log). Panics, with
    /// what the command said, unless it exits 0 within [`PATIENCE`](super::PATIENCE).
    pub fn exec<I, S>(args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = Self::spawn(args);
        let status = command.wait_exit(super::PATIENCE);
        assert!(
            status.success(),
            "`sluice {}` exited with {status}\n--- stdout ---\n{}--- stderr ---\n{}",
            command.args.join(" "),
            command.stdout(),
            command.log()
        );
        command
    }

    /// The process id; consumer names in the group contain it (`<host>-<pid>-<index>`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The resident set size of the running process (`VmRSS` in `/proc/<pid>/status`), in
    /// bytes. Linux only, like the rest of the harness's process control.
    pub fn rss_bytes(&mut self) -> u64 {
        assert!(
            self.is_running(),
            "the process exited: no resident memory to read"
        );
        let path = format!("/proc/{}/status", self.pid());
        let status = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS line in {path}:\n{status}"));
        kib * 1024
    }

    /// Everything the process wrote to stderr so far: its log.
    pub fn log(&self) -> String {
        read(&self.dir.path().join("stderr"))
    }

    /// Everything the process wrote to stdout so far.
    pub fn stdout(&self) -> String {
        read(&self.dir.path().join("stdout"))
    }

    /// Asks for a graceful shutdown, as an orchestrator would.
    pub fn sigterm(&mut self) {
        self.signal(libc::SIGTERM);
    }

    /// SIGTERM, then checks the contract: the process drains and exits 0 within [`PATIENCE`].
    ///
    /// [`PATIENCE`]: super::PATIENCE
    pub fn shutdown(&mut self) {
        self.sigterm();
        let status = self.wait_exit(super::PATIENCE);
        assert!(
            status.success(),
            "`sluice {}` exited with {status} after SIGTERM",
            self.args.join(" ")
        );
    }

    /// Asks for a graceful shutdown, as Ctrl-C would.
    pub fn sigint(&mut self) {
        self.signal(libc::SIGINT);
    }

    /// Kills the process without warning, as a crash or OOM kill would, and reaps it.
    pub fn kill9(&mut self) -> ExitStatus {
        self.signal(libc::SIGKILL);
        self.wait_exit(super::PATIENCE)
    }

    /// Like [`support::wait_for`](super::wait_for) with [`PATIENCE`], but fails at once if
    /// the process exits meanwhile: a runtime that died will not produce what we wait for.
    /// `probe` gets the process so it can read the log.
    ///
    /// [`PATIENCE`]: super::PATIENCE
    pub fn wait_for<T: Debug>(
        &mut self,
        what: &str,
        mut probe: impl FnMut(&Sluice) -> T,
        done: impl Fn(&T) -> bool,
    ) -> T {
        super::wait_for(
            super::PATIENCE,
            what,
            || {
                if let Some(status) = self.poll_exit() {
                    panic!(
                        "`sluice {}` exited with {status} while we waited for {what}",
                        self.args.join(" ")
                    );
                }
                probe(self)
            },
            done,
        )
    }

    /// [`wait_for`](Self::wait_for) a condition to hold.
    pub fn wait_until(&mut self, what: &str, mut condition: impl FnMut(&Sluice) -> bool) {
        self.wait_for(what, &mut condition, |done| *done);
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.poll_exit().is_none()
    }

    /// Waits for the process to exit and returns its status; panics past `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.poll_exit() {
                return status;
            }
            if Instant::now() >= deadline {
                panic!(
                    "`sluice {}` did not exit within {timeout:?}",
                    self.args.join(" ")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn poll_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().expect("poll the sluice process");
        }
        self.exit
    }

    fn signal(&mut self, signal_number: libc::c_int) {
        if let Some(status) = self.poll_exit() {
            panic!(
                "cannot signal `sluice {}`: it already exited with {status}",
                self.args.join(" ")
            );
        }
        signal(&self.child, signal_number);
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        if self.poll_exit().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "----- stderr of `sluice {}` -----\n{}----- end of sluice stderr -----",
                self.args.join(" "),
                self.log()
            );
        }
    }
}

fn create(path: &Path) -> File {
    File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()))
}

/// Reads an output file; lossy because a log is for humans and must print even if garbled.
fn read(path: &Path) -> String {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    String::from_utf8_lossy(&bytes).into_owned()
}
