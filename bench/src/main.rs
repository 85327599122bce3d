//! sluice-bench: sluice's performance yardstick.
//!
//! One invocation starts a private redis-server and, on the same workload,
//! alternates the contestants (see [`plan::Contestant`]): L and L+, the
//! limits (hand-written Rust loops, plain and the best we can write); S,
//! sluice with the uppercase Wasm plugin; S0, sluice passing messages
//! through; P, a hand-written Python loop. It
//! reports throughput, latency at a fixed rate, CPU per million messages
//! and memory, as markdown (stdout and BENCHMARKS.md) and SVG plots.
//!
//! ```text
//! plan          presets, cases (workload shapes), contestants
//! session       runs the plan: every measurement, in order, failures noted
//! workload      keys, payloads, preloading, progress read from Redis
//! redis_server  the private redis-server
//! contestant    start/stop a contestant's processes, check their logs
//!   limit         L: the loop itself (`sluice-bench limit`, a child process)
//!   limit_plus    L+: the stronger loop (`sluice-bench limit-plus`)
//!   sluice_runner S, S0: pipeline files and the `sluice run` command
//!   (P is bench/python_consumer.py)
//! throughput    one timed run on a preloaded backlog
//! latency       paced producer + reader: end-to-end latency
//! idle          memory and CPU of idle pipelines
//! process       /proc CPU and memory, child processes
//! report, svg   markdown and plots
//! ```

mod contestant;
mod idle;
mod latency;
mod limit;
mod limit_plus;
mod machine;
mod plan;
mod process;
mod redis_server;
mod report;
mod session;
mod sluice_runner;
mod stats;
mod svg;
mod throughput;
mod workload;

use anyhow::{Context as _, Result};
use clap::{Args, Parser, Subcommand};
use contestant::Tools;
use plan::{Contestant, Knobs, Plan};
use redis_server::RedisServer;
use report::Results;
use session::Session;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "sluice-bench",
    version,
    about = "Sluice's performance yardstick",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run L, the hand-written Rust loop, until SIGTERM (the bench starts it
    /// as a child process; useful by hand too).
    Limit(limit::ConsumerArgs),
    /// Run L+, the stronger hand-written loop, until SIGTERM.
    LimitPlus(limit::ConsumerArgs),
}

/// Preset and overrides. Without --full, the quick preset runs; any other
/// flag overrides that one knob of the preset.
#[derive(Args)]
struct RunArgs {
    /// The quick preset (the default): 100 B, batch 256, 1 and 4 consumers,
    /// latency and idle footprint; about 2 minutes.
    #[arg(long, conflicts_with = "full")]
    quick: bool,
    /// Every variant: 100 B and 4 KiB, batch 16/256/1024, 1/2/4 consumers,
    /// 10 pipelines, 2 processes, scale-out over 1/2/4 processes; 10 to 30
    /// minutes on 2 cores.
    #[arg(long)]
    full: bool,
    /// Payload sizes in bytes, e.g. 100,4096.
    #[arg(long, value_delimiter = ',')]
    sizes: Option<Vec<usize>>,
    /// Consumer counts; the first is the reference the batch sweep uses.
    #[arg(long, value_delimiter = ',')]
    consumers: Option<Vec<u32>>,
    /// Batch sizes; the consumer sweep uses 256 if listed, else the first.
    #[arg(long, value_delimiter = ',')]
    batches: Option<Vec<u32>>,
    /// Messages per run (capped at ~160 MiB of payload per run).
    #[arg(long)]
    n: Option<u64>,
    /// Rounds per case (figures are medians over rounds).
    #[arg(long)]
    rounds: Option<usize>,
    /// Also run the reference case with this many pipelines in one process (1 = off).
    #[arg(long)]
    pipelines: Option<u32>,
    /// Also run the reference case with this many processes on one group (1 = off).
    #[arg(long)]
    processes: Option<u32>,
    /// Scale-out: per process count, the reference case on one stream and on
    /// a family of --partitions streams (S and S0 only), e.g. 1,2,4
    /// ("" = off).
    #[arg(long, value_parser = list::<u32>)]
    scale: Option<List<u32>>,
    /// Scale-out: partitions of the family cases [default: 8] (0 = one stream only).
    #[arg(long)]
    partitions: Option<u32>,
    /// Extra payload sizes run at the reference consumers and batch, for
    /// the cost-against-size curves, e.g. 100,1024,4096,16384,65536
    /// ("" = off).
    #[arg(long, value_parser = list::<usize>)]
    size_sweep: Option<List<usize>>,
    /// Latency: offered messages per second (0 = skip latency).
    #[arg(long)]
    latency_rate: Option<u32>,
    /// Latency: measured seconds per round.
    #[arg(long)]
    latency_secs: Option<f64>,
    /// Latency: skip the second point, at half of L+'s saturation
    /// throughput on the reference case.
    #[arg(long)]
    no_latency_half: bool,
    /// Idle memory with this many pipelines (0 = skip).
    #[arg(long)]
    idle_pipelines: Option<u32>,
    /// XREADGROUP BLOCK for every contestant, ms.
    #[arg(long)]
    block_ms: Option<u64>,
    /// Contestants to run, e.g. L,S.
    #[arg(long, value_delimiter = ',', ignore_case = true)]
    contestants: Option<Vec<Contestant>>,
    /// The sluice binary [default: target/release/sluice].
    #[arg(long)]
    sluice: Option<PathBuf>,
    /// The uppercase plugin [default: plugins/uppercase/uppercase.wasm].
    #[arg(long)]
    plugin: Option<PathBuf>,
    /// Python interpreter for P.
    #[arg(long, default_value = "python3")]
    python: String,
    /// Print only: leave BENCHMARKS.md and bench/plots untouched (plots go
    /// to target/sluice-bench/plots).
    #[arg(long)]
    no_write: bool,
}

/// A comma-separated list where "" is the empty list, so a preset's list
/// can be switched off (`--scale ""`); clap's `value_delimiter` would
/// reject the empty string. A newtype, because clap reads an
/// `Option<Vec<T>>` field as many values of `T`, not as one list.
#[derive(Clone, Debug)]
struct List<T>(Vec<T>);

/// Parses a [`List`].
fn list<T: std::str::FromStr>(s: &str) -> Result<List<T>, String>
where
    T::Err: std::fmt::Display,
{
    s.split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(|v| v.parse().map_err(|e| format!("{v:?}: {e}")))
        .collect::<Result<_, _>>()
        .map(List)
}

impl RunArgs {
    fn plan(&self) -> Plan {
        let (name, mut k) = if self.full {
            ("full", Knobs::full())
        } else {
            ("quick", Knobs::quick())
        };
        macro_rules! set {
            ($($field:ident),*) => {$(if let Some(v) = self.$field.clone() { k.$field = v; })*};
        }
        set!(
            sizes,
            consumers,
            batches,
            rounds,
            pipelines,
            processes,
            partitions,
            latency_rate,
            latency_secs,
            idle_pipelines,
            block_ms,
            contestants
        );
        if self.no_latency_half {
            k.latency_half = false;
        }
        if self.n.is_some() {
            k.n = self.n;
        }
        if let Some(List(v)) = &self.scale {
            k.scale = v.clone();
        }
        if let Some(List(v)) = &self.size_sweep {
            k.size_sweep = v.clone();
        }
        k.plan(name)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Some(Command::Limit(args)) => limit::run(args).map(|()| ExitCode::SUCCESS),
        Some(Command::LimitPlus(args)) => limit_plus::run(args).map(|()| ExitCode::SUCCESS),
        None => bench(&cli.run),
    };
    result.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::FAILURE
    })
}

/// The workspace root: sluice's binary, plugin and BENCHMARKS.md live there.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench/ is inside the workspace")
        .to_path_buf()
}

fn bench(args: &RunArgs) -> Result<ExitCode> {
    let root = root();
    let plan = args.plan();
    let workdir = root.join("target/sluice-bench");
    let tools = Tools {
        sluice: args
            .sluice
            .clone()
            .unwrap_or_else(|| root.join("target/release/sluice")),
        plugin: args
            .plugin
            .clone()
            .unwrap_or_else(|| root.join("plugins/uppercase/uppercase.wasm")),
        python: args.python.clone(),
        python_script: root.join("bench/python_consumer.py"),
        bench: std::env::current_exe()?,
        workdir: workdir.clone(),
    };
    tools.check(&plan.contestants)?;
    let machine = machine::Machine::probe(&tools.sluice, &tools.python);
    let redis = RedisServer::start()?;
    eprintln!(
        "redis-server {} at {}; logs and pipeline files in {}",
        machine.redis,
        redis.url(),
        workdir.display()
    );
    let results = Results::new(machine, plan.clone(), command_line());
    let (results, failed) = Session::new(plan, tools, redis, results).run();

    let (plots_dir, link_base) = if args.no_write {
        let dir = workdir.join("plots");
        let link = dir.display().to_string();
        (dir, link)
    } else {
        (root.join("bench/plots"), "bench/plots".to_string())
    };
    let markdown = results.render(&plots_dir, &link_base)?;
    println!("{markdown}");
    if !args.no_write {
        let path = root.join("BENCHMARKS.md");
        std::fs::write(&path, &markdown).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {} and {}", path.display(), plots_dir.display());
    }
    if failed > 0 {
        eprintln!("{failed} measurement(s) failed; see Notes");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// How this run was invoked, as a command a reader can paste.
fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut cmd = "cargo run --release -p sluice-bench".to_string();
    if !args.is_empty() {
        cmd += " -- ";
        cmd += &args.join(" ");
    }
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(args: &[&str]) -> Plan {
        let cli = Cli::try_parse_from(std::iter::once("sluice-bench").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{e}"));
        cli.run.plan()
    }

    #[test]
    fn the_curves_command_line_composes() {
        let plan = plan(&[
            "--full",
            "--consumers",
            "1,2,4,8",
            "--size-sweep",
            "100,1024,4096,16384,65536",
            "--scale",
            "1,2,4",
        ]);
        assert_eq!(plan.preset, "full");
        assert_eq!(plan.cases.len(), 21);
        assert_eq!(plan.cases.iter().filter(|c| c.partitions == 8).count(), 3);
        assert!(plan.cases.iter().any(|c| c.size == 65536));
    }

    #[test]
    fn an_empty_list_switches_a_preset_knob_off() {
        let full = plan(&["--full"]).cases.len();
        let off = plan(&["--full", "--scale", ""]).cases;
        assert_eq!(off.len(), full - 4);
        assert!(off.iter().all(|c| c.partitions == 0));
        let few = plan(&["--full", "--scale", "4", "--partitions", "2"]).cases;
        assert_eq!(few.len(), full - 2);
        assert!(Cli::try_parse_from(["sluice-bench", "--scale", "1,x"]).is_err());
    }
}
