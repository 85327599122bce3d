//! Child processes, measured from outside: CPU time and memory from /proc,
//! and a stop the way an operator stops sluice (SIGTERM, wait, then kill).

use anyhow::{Context as _, Result, bail};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

/// How long a stopped child may take to drain before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(30);

/// A child process that is killed if dropped while still running, so a
/// failed run never leaves consumers behind to disturb the next one.
pub struct Child {
    inner: std::process::Child,
    name: String,
    reaped: bool,
}

impl Child {
    /// Spawns `cmd`; `name` appears in errors.
    pub fn spawn(cmd: &mut Command, name: &str) -> Result<Self> {
        let inner = cmd
            .spawn()
            .with_context(|| format!("cannot start {name} ({cmd:?})"))?;
        Ok(Child {
            inner,
            name: name.to_string(),
            reaped: false,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.inner.id()
    }

    /// Fails if the child has exited (a contestant must not die mid-run).
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.inner.try_wait()? {
            self.reaped = true;
            bail!("{} exited early ({status})", self.name);
        }
        Ok(())
    }

    /// Asks the child to drain and exit (SIGTERM), as an operator would.
    /// Sent once: sluice treats a second signal as "exit at once".
    pub fn terminate(&self) {
        // SAFETY: kill(2) on our own child's pid; it has not been reaped
        // (checked here; `wait` consumes self), so the pid cannot have been
        // reused.
        if !self.reaped {
            unsafe { libc::kill(self.pid() as libc::pid_t, libc::SIGTERM) };
        }
    }

    /// Waits up to `grace` for the child to exit; kills it after that.
    pub fn wait(mut self, grace: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + grace;
        loop {
            if let Some(status) = self.inner.try_wait()? {
                self.reaped = true;
                return Ok(status);
            }
            if Instant::now() >= deadline {
                let _ = self.inner.kill();
                let status = self.inner.wait()?;
                self.reaped = true;
                bail!(
                    "{} did not exit within {}s of SIGTERM; killed ({status})",
                    self.name,
                    grace.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.inner.kill();
            let _ = self.inner.wait();
        }
    }
}

/// User plus system CPU seconds of all threads of `pid` so far.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Field 2 (the command name) may hold spaces and parentheses; the fields
    // after the last ')' are fixed, starting with field 3 (state).
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15, i.e. 11 and 12 after field 3.
    let ticks: u64 = fields
        .get(11..13)
        .context("short /proc stat")?
        .iter()
        .map(|f| f.parse::<u64>())
        .sum::<Result<u64, _>>()?;
    Ok(ticks as f64 / clock_ticks_per_second())
}

/// Summed CPU seconds of several processes.
pub fn cpu_seconds_of(pids: &[u32]) -> Result<f64> {
    pids.iter().map(|&pid| cpu_seconds(pid)).sum()
}

/// CPU seconds of the live threads of `pid`, with nanosecond resolution
/// (/proc/<pid>/task/*/schedstat). Threads that already exited are missing,
/// so this suits a process at rest, where the 10 ms tick of
/// [`cpu_seconds`] is too coarse.
pub fn thread_cpu_seconds(pid: u32) -> Result<f64> {
    let mut ns: u64 = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = task?.path().join("schedstat");
        // A thread may exit between listing and reading: skip it.
        let Ok(stat) = std::fs::read_to_string(&path) else {
            continue;
        };
        ns += stat
            .split_whitespace()
            .next()
            .context("empty schedstat")?
            .parse::<u64>()?;
    }
    Ok(ns as f64 / 1e9)
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// Resident memory of a process, in KiB.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Memory {
    /// Resident now (VmRSS).
    pub rss_kib: u64,
    /// Peak resident since start (VmHWM).
    pub peak_kib: u64,
}

impl std::fmt::Display for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "RSS {:.1} MiB, peak {:.1} MiB",
            self.rss_kib as f64 / 1024.0,
            self.peak_kib as f64 / 1024.0
        )
    }
}

/// Reads VmRSS and VmHWM of `pid`.
pub fn memory(pid: u32) -> Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kib = |key: &str| -> Result<u64> {
        let line = status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .with_context(|| format!("no {key} in /proc/{pid}/status"))?;
        Ok(line
            .trim_start_matches(':')
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()?)
    };
    Ok(Memory {
        rss_kib: kib("VmRSS")?,
        peak_kib: kib("VmHWM")?,
    })
}

/// The largest resident and peak of several processes (per process, not summed).
pub fn memory_of(pids: &[u32]) -> Result<Memory> {
    pids.iter().try_fold(Memory::default(), |acc, &pid| {
        let m = memory(pid)?;
        Ok(Memory {
            rss_kib: acc.rss_kib.max(m.rss_kib),
            peak_kib: acc.peak_kib.max(m.peak_kib),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_cpu_and_memory() {
        let pid = std::process::id();
        assert!(cpu_seconds(pid).unwrap() >= 0.0);
        assert!(thread_cpu_seconds(pid).unwrap() > 0.0);
        let m = memory(pid).unwrap();
        assert!(m.rss_kib > 0 && m.peak_kib >= m.rss_kib);
    }
}
