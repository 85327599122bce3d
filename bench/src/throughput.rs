//! One throughput run: preload the backlog, start the contestant, time it
//! from its first output to all outputs written and nothing pending.
//!
//! Timing rule (the same for every contestant): the clock starts when the
//! first output entry appears, so process start-up (plugin compilation,
//! connecting, Python imports) is excluded; the messages already written
//! at that moment are excluded from the count too. CPU is sampled at the
//! same two instants.

use crate::contestant::{self, Running, Tools};
use crate::plan::{Case, Contestant};
use crate::process;
use crate::redis_server::RedisServer;
use crate::workload::{self, FIELD};
use anyhow::{Result, bail};
use redis::Connection;
use std::time::{Duration, Instant};

/// Polling before the first output: fine, since it sets the start time.
const POLL_FIRST: Duration = Duration::from_millis(1);
/// Polling for completion: coarse enough to cost Redis little.
const POLL: Duration = Duration::from_millis(2);
/// A run that makes no progress this long has failed.
const STALL: Duration = Duration::from_secs(60);

/// What one run measured.
#[derive(Clone, Debug, Default)]
pub struct Throughput {
    /// Messages per second.
    pub rate: f64,
    /// CPU seconds of the contestant's processes per million messages.
    pub consumer_cpu: f64,
    /// CPU seconds of redis-server per million messages.
    pub redis_cpu: f64,
    /// Peak resident memory (VmHWM) of the largest contestant process, KiB.
    pub peak_kib: u64,
}

impl std::fmt::Display for Throughput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} msg/s, CPU {:.2} s/M (redis {:.2}), peak {:.1} MiB",
            crate::report::thousands(self.rate),
            self.consumer_cpu,
            self.redis_cpu,
            self.peak_kib as f64 / 1024.0
        )
    }
}

/// Runs `who` once on `case`; also returns anything that looked wrong
/// (unclean exit, warnings in the log, wrong output).
pub fn run(
    redis: &RedisServer,
    who: Contestant,
    case: &Case,
    tools: &Tools,
    block_ms: u64,
) -> Result<(Throughput, Vec<String>)> {
    let mut conn = redis.connect()?;
    workload::preload(
        &mut conn,
        case.pipelines,
        case.partitions,
        case.n,
        case.size,
    )?;
    let mut running = contestant::start(who, case, tools, redis.url(), block_ms)?;
    let measured = measure(&mut conn, redis.pid(), &mut running, case);
    let mut problems = running.stop();
    let throughput = measured?;
    problems.extend(check_outputs(&mut conn, who, case)?);
    Ok((throughput, problems))
}

fn measure(
    conn: &mut Connection,
    redis_pid: u32,
    running: &mut Running,
    case: &Case,
) -> Result<Throughput> {
    let pids = running.pids();
    let started = Instant::now();
    let (t0, first) = loop {
        let out = workload::outputs(conn, case.pipelines)?;
        if out > 0 {
            break (Instant::now(), out);
        }
        running.check_running()?;
        if started.elapsed() > STALL {
            bail!("no output after {}s", STALL.as_secs());
        }
        std::thread::sleep(POLL_FIRST);
    };
    let cpu0 = process::cpu_seconds_of(&pids)?;
    let redis0 = process::cpu_seconds(redis_pid)?;
    let (mut seen, mut progressed) = (first, Instant::now());
    loop {
        let out = workload::outputs(conn, case.pipelines)?;
        if out >= case.n && workload::pending(conn, case.pipelines, case.partitions)? == 0 {
            break;
        }
        if out != seen {
            (seen, progressed) = (out, Instant::now());
        } else if progressed.elapsed() > STALL {
            bail!("stalled at {out} of {} outputs", case.n);
        }
        running.check_running()?;
        std::thread::sleep(POLL);
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu1 = process::cpu_seconds_of(&pids)?;
    let redis1 = process::cpu_seconds(redis_pid)?;
    let memory = process::memory_of(&pids)?;
    let messages = (case.n - first) as f64;
    let per_million = |cpu: f64| cpu / messages * 1e6;
    Ok(Throughput {
        rate: messages / secs,
        consumer_cpu: per_million(cpu1 - cpu0),
        redis_cpu: per_million(redis1 - redis0),
        peak_kib: memory.peak_kib,
    })
}

/// Checks the result, not just the count: exactly `n` outputs (no
/// duplicates), and the payload transformed (kept as is by S0).
fn check_outputs(conn: &mut Connection, who: Contestant, case: &Case) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    let out = workload::outputs(conn, case.pipelines)?;
    if out != case.n {
        problems.push(format!(
            "{}: {out} outputs for {} inputs",
            who.label(),
            case.n
        ));
    }
    let first: redis::Value = redis::cmd("XREAD")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(workload::sink_key(0))
        .arg("0-0")
        .query(conn)?;
    let entries = workload::entries(first);
    let payload = entries
        .first()
        .and_then(|(_, fields)| fields.iter().find(|(k, _)| k == FIELD.as_bytes()))
        .map(|(_, v)| v.as_slice());
    let transformed = |p: &[u8]| match who {
        Contestant::S0 => p.iter().all(u8::is_ascii_lowercase),
        _ => p.iter().all(u8::is_ascii_uppercase),
    };
    if !payload.is_some_and(transformed) {
        problems.push(format!(
            "{}: first output's payload is wrong or missing",
            who.label()
        ));
    }
    Ok(problems)
}
