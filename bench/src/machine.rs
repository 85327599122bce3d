//! The machine and tool versions, noted with every result: figures from
//! different machines or builds are not comparable.

use std::path::Path;
use std::process::Command;

/// What the figures were measured on.
#[derive(Clone, Debug)]
pub struct Machine {
    /// Logical CPUs.
    pub nproc: usize,
    /// `model name` from /proc/cpuinfo.
    pub cpu: String,
    /// MemTotal, GiB.
    pub memory_gib: f64,
    /// redis-server version.
    pub redis: String,
    /// `rustc --version`.
    pub rustc: String,
    /// Python and redis-py versions.
    pub python: String,
    /// Kernel release.
    pub kernel: String,
    /// When the run started (UTC).
    pub date: String,
    /// When the sluice binary was built (its mtime, UTC): a stale binary
    /// measures old code.
    pub sluice_built: String,
}

impl Machine {
    /// Probes the machine; unknown values read "unknown".
    pub fn probe(sluice: &Path, python: &str) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0.0);
        Machine {
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
                .unwrap_or_else(|| "unknown".into()),
            memory_gib: mem_kib / (1024.0 * 1024.0),
            redis: crate::redis_server::version(),
            rustc: output("rustc", &["--version"]),
            python: output(
                python,
                &[
                    "-c",
                    "import sys, redis; print(sys.version.split()[0], 'redis-py', redis.__version__)",
                ],
            ),
            kernel: output("uname", &["-r"]),
            date: output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            sluice_built: output(
                "date",
                &[
                    "-u",
                    "+%Y-%m-%d %H:%M UTC",
                    "-r",
                    &sluice.display().to_string(),
                ],
            ),
        }
    }

    /// A markdown list.
    pub fn markdown(&self) -> String {
        format!(
            "- date: {}\n- CPU: {} x {}\n- memory: {:.1} GiB\n- kernel: {}\n- redis-server: {}\n- {}\n- Python: {}\n- sluice binary built: {}\n",
            self.date,
            self.nproc,
            self.cpu,
            self.memory_gib,
            self.kernel,
            self.redis,
            self.rustc,
            self.python,
            self.sluice_built
        )
    }
}

/// The trimmed stdout of a command, or "unknown".
fn output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into())
}
