//! Starting and stopping a contestant: one or more child processes with
//! their stderr in log files, checked for warnings after the run.

use crate::limit::ConsumerArgs;
use crate::plan::{Case, Contestant};
use crate::process::{self, Child};
use crate::sluice_runner;
use crate::workload::{self, FIELD, GROUP, SINK_PREFIX, SOURCE_PREFIX};
use anyhow::{Context as _, Result, bail};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long a contestant may take to start serving.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The programs the contestants are, and where their files go.
#[derive(Clone, Debug)]
pub struct Tools {
    /// The sluice release binary.
    pub sluice: PathBuf,
    /// The uppercase plugin.
    pub plugin: PathBuf,
    /// The Python interpreter.
    pub python: String,
    /// bench/python_consumer.py.
    pub python_script: PathBuf,
    /// This binary, for `sluice-bench limit`.
    pub bench: PathBuf,
    /// Pipeline files and logs (under target/, so never committed).
    pub workdir: PathBuf,
}

impl Tools {
    /// Fails early, with the fix, when something a contestant needs is missing.
    pub fn check(&self, contestants: &[Contestant]) -> Result<()> {
        let need = |path: &Path, fix: &str| {
            if path.is_file() {
                Ok(())
            } else {
                bail!("{} is missing; {fix}", path.display())
            }
        };
        if contestants
            .iter()
            .any(|c| matches!(c, Contestant::S | Contestant::S0))
        {
            need(
                &self.sluice,
                "build it with `cargo build --release -p sluice`",
            )?;
        }
        if contestants.contains(&Contestant::S) {
            need(&self.plugin, "build it with `scripts/build-plugins`")?;
        }
        if contestants.contains(&Contestant::P) {
            need(&self.python_script, "it ships with the bench")?;
            let ok = Command::new(&self.python)
                .args(["-c", "import redis"])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                bail!(
                    "{} cannot import redis; run `pip install redis`",
                    self.python
                );
            }
        }
        Ok(())
    }
}

/// A contestant's running processes.
pub struct Running {
    who: Contestant,
    children: Vec<Child>,
    logs: Vec<PathBuf>,
}

/// Starts `who` on `case` (`case.processes` processes, all in the same
/// groups). Fails for a partitioned case `who` cannot read (the session
/// skips those; started anyway, L would block on a key that never fills).
pub fn start(
    who: Contestant,
    case: &Case,
    tools: &Tools,
    redis_url: &str,
    block_ms: u64,
) -> Result<Running> {
    if !case.runs(who) {
        bail!("{} does not read partitioned stream families", who.label());
    }
    let dir = tools.workdir.join(case.slug()).join(who.label());
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let args = ConsumerArgs {
        redis: redis_url.to_string(),
        source_prefix: SOURCE_PREFIX.to_string(),
        sink_prefix: SINK_PREFIX.to_string(),
        group: GROUP.to_string(),
        pipelines: case.pipelines,
        consumers: case.consumers,
        batch: case.batch,
        block_ms,
    };
    let mut command = match who {
        Contestant::L => {
            let mut cmd = Command::new(&tools.bench);
            cmd.arg("limit").args(args.to_args());
            cmd
        }
        Contestant::LPlus => {
            let mut cmd = Command::new(&tools.bench);
            cmd.arg("limit-plus").args(args.to_args());
            cmd
        }
        Contestant::P => {
            let mut cmd = Command::new(&tools.python);
            cmd.arg(&tools.python_script).args(args.to_args());
            cmd
        }
        Contestant::S | Contestant::S0 => {
            let plugin = (who == Contestant::S).then_some(tools.plugin.as_path());
            sluice_runner::write_pipelines(&dir, case, plugin, block_ms)?;
            sluice_runner::command(&tools.sluice, &dir, redis_url)
        }
    };
    let mut running = Running {
        who,
        children: Vec::new(),
        logs: Vec::new(),
    };
    for k in 0..case.processes {
        let log = dir.join(format!("process-{k}.log"));
        let stderr = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        running
            .children
            .push(Child::spawn(&mut command, who.label())?);
        running.logs.push(log);
    }
    Ok(running)
}

impl Running {
    /// The process ids.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::pid).collect()
    }

    /// Fails, with the log's tail, if a process has exited.
    pub fn check_running(&mut self) -> Result<()> {
        for (child, log) in self.children.iter_mut().zip(&self.logs) {
            if let Err(e) = child.check_running() {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(5).collect();
                bail!(
                    "{e:#}; {}: {}",
                    log.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
                );
            }
        }
        Ok(())
    }

    /// Returns once every pipeline has turned a probe message into an
    /// output: the processes are up, connected and reading. (Watching for
    /// consumers in XINFO does not work: Redis 7.0 registers a consumer
    /// blocked on an empty stream only once it is served.)
    pub fn wait_until_serving(
        &mut self,
        conn: &mut redis::Connection,
        pipelines: u32,
    ) -> Result<()> {
        let started = Instant::now();
        for i in 0..pipelines {
            redis::cmd("XADD")
                .arg(workload::source_key(i))
                .arg("*")
                .arg(FIELD)
                .arg("probe")
                .exec(conn)?;
        }
        while workload::outputs(conn, pipelines)? < u64::from(pipelines) {
            self.check_running()?;
            if started.elapsed() > READY_TIMEOUT {
                bail!("no output within {}s", READY_TIMEOUT.as_secs());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// SIGTERM to all (they drain in parallel), then collects what looks
    /// wrong: unclean exits and warning or error lines in the logs.
    pub fn stop(self) -> Vec<String> {
        for child in &self.children {
            child.terminate();
        }
        let mut problems = Vec::new();
        for child in self.children {
            match child.wait(process::STOP_GRACE) {
                Ok(status) if status.success() => {}
                Ok(status) => problems.push(format!("{} exited with {status}", self.who.label())),
                Err(e) => problems.push(format!("{e:#}")),
            }
        }
        for log in &self.logs {
            if let Some(problem) = log_problems(log) {
                problems.push(problem);
            }
        }
        problems
    }
}

/// Summarises warning and error lines of a log, if any.
fn log_problems(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    let bad: Vec<&str> = text
        .lines()
        .filter(|l| {
            ["WARN", "ERROR", "Traceback", "error:", "panicked"]
                .iter()
                .any(|w| l.contains(w))
        })
        .collect();
    let first = bad.first()?;
    Some(format!(
        "{} warning/error lines in {}; first: {first}",
        bad.len(),
        log.display()
    ))
}
