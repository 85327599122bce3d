//! What a contestant holding idle pipelines costs just by existing: memory
//! (plugin instances, connections, buffers, threads) after each pipeline has
//! passed one probe message, and the CPU it burns while waiting (timers,
//! BLOCK timeouts, tickers).

use crate::contestant::{self, Running, Tools};
use crate::plan::{Case, Contestant};
use crate::process::{self, Memory};
use crate::redis_server::RedisServer;
use crate::workload;
use anyhow::Result;
use std::time::Duration;

/// How long after every pipeline served a probe before measuring, so
/// start-up allocations and work have settled.
const SETTLE: Duration = Duration::from_secs(1);
/// How long idle CPU is measured.
const IDLE: Duration = Duration::from_secs(3);

/// An idle process's footprint.
#[derive(Clone, Copy, Debug, Default)]
pub struct Idle {
    /// Resident memory.
    pub memory: Memory,
    /// CPU milliseconds per second while idle.
    pub cpu_ms_per_s: f64,
}

impl std::fmt::Display for Idle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}, idle CPU {:.2} ms/s", self.memory, self.cpu_ms_per_s)
    }
}

/// Measures one process of `who` with `pipelines` idle pipelines (1
/// consumer each); also returns anything that looked wrong.
pub fn run(
    redis: &RedisServer,
    who: Contestant,
    pipelines: u32,
    tools: &Tools,
    block_ms: u64,
) -> Result<(Idle, Vec<String>)> {
    let mut conn = redis.connect()?;
    redis::cmd("FLUSHALL").exec(&mut conn)?;
    workload::create_groups(&mut conn, pipelines, 0)?;
    let case = Case {
        size: 100,
        consumers: 1,
        batch: 256,
        pipelines,
        processes: 1,
        partitions: 0,
        n: 0,
    };
    let mut running = contestant::start(who, &case, tools, redis.url(), block_ms)?;
    let measured = measure(&mut conn, &mut running, pipelines);
    let problems = running.stop();
    Ok((measured?, problems))
}

fn measure(conn: &mut redis::Connection, running: &mut Running, pipelines: u32) -> Result<Idle> {
    running.wait_until_serving(conn, pipelines)?;
    std::thread::sleep(SETTLE);
    let pids = running.pids();
    let cpu = || -> Result<f64> {
        pids.iter()
            .map(|&pid| process::thread_cpu_seconds(pid))
            .sum()
    };
    let before = cpu()?;
    std::thread::sleep(IDLE);
    let spent = cpu()? - before;
    running.check_running()?;
    Ok(Idle {
        memory: process::memory_of(&pids)?,
        cpu_ms_per_s: spent * 1e3 / IDLE.as_secs_f64(),
    })
}
