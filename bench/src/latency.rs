//! End-to-end latency at a fixed offered rate below saturation: a paced
//! producer stamps each message with the wall clock (µs); a reader on the
//! sink stream computes now − stamp. Both run in this process, so they
//! share one clock.

use crate::contestant::{self, Running, Tools};
use crate::plan::{Contestant, LatencyPlan};
use crate::redis_server::RedisServer;
use crate::stats::quantile;
use crate::workload::{self, FIELD, Payloads};
use anyhow::{Result, anyhow};
use redis::{Connection, Value};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Seconds sent before measuring, so caches, connections and thread pools
/// are warm; their messages are not counted.
const WARMUP_SECS: f64 = 0.5;
/// Field with the send time, µs since the epoch.
const TS: &str = "ts";
/// Field with the message's sequence number (probes have none).
const SEQ: &str = "seq";

/// Latency percentiles of one contestant, in µs.
#[derive(Clone, Debug, Default)]
pub struct Latency {
    /// Messages sent in the measured part.
    pub sent: u64,
    /// Of those, received in time.
    pub received: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// Worst.
    pub max: u64,
}

impl std::fmt::Display for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50 {:.2} ms, p99 {:.2} ms, {}/{} received",
            self.p50 as f64 / 1e3,
            self.p99 as f64 / 1e3,
            self.received,
            self.sent
        )
    }
}

/// Measures `who` at `plan.rate` messages per second; also returns
/// anything that looked wrong.
pub fn run(
    redis: &RedisServer,
    who: Contestant,
    plan: &LatencyPlan,
    tools: &Tools,
    block_ms: u64,
) -> Result<(Latency, Vec<String>)> {
    let mut conn = redis.connect()?;
    redis::cmd("FLUSHALL").exec(&mut conn)?;
    workload::create_groups(&mut conn, 1, 0)?;
    let mut running = contestant::start(who, &plan.case, tools, redis.url(), block_ms)?;
    let measured = measure(redis, &mut conn, &mut running, plan);
    let problems = running.stop();
    Ok((measured?, problems))
}

fn measure(
    redis: &RedisServer,
    conn: &mut Connection,
    running: &mut Running,
    plan: &LatencyPlan,
) -> Result<Latency> {
    running.wait_until_serving(conn, 1)?;
    let warmup = (f64::from(plan.rate) * WARMUP_SECS) as u64;
    let sent = (f64::from(plan.rate) * plan.secs) as u64;
    let total = warmup + sent;
    let deadline =
        Instant::now() + Duration::from_secs_f64(total as f64 / f64::from(plan.rate) + 10.0);
    let mut reader_conn = redis.connect()?;
    let reader = std::thread::spawn(move || read(&mut reader_conn, warmup, sent, deadline));
    produce(conn, plan.rate, total, &Payloads::new(plan.case.size))?;
    let mut latencies = reader
        .join()
        .map_err(|_| anyhow!("latency reader panicked"))??;
    latencies.sort_unstable();
    Ok(Latency {
        sent,
        received: latencies.len() as u64,
        p50: quantile(&latencies, 0.50),
        p90: quantile(&latencies, 0.90),
        p99: quantile(&latencies, 0.99),
        max: latencies.last().copied().unwrap_or(0),
    })
}

/// Most messages one producer round trip sends.
const MAX_BURST: u64 = 1_000;

/// XADDs `total` messages on a fixed schedule. A late send does not shift
/// the schedule, so the offered rate holds on average. Whatever is due when
/// the producer wakes goes in one pipeline: at a few thousand per second
/// that is one message, at tens of thousands (past what one round trip per
/// message can offer) a handful.
fn produce(conn: &mut Connection, rate: u32, total: u64, payloads: &Payloads) -> Result<()> {
    let start = Instant::now();
    let rate = f64::from(rate);
    let source = workload::source_key(0);
    let mut seq = 0;
    while seq < total {
        let due = start + Duration::from_secs_f64(seq as f64 / rate);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let due_now = (start.elapsed().as_secs_f64() * rate) as u64 + 1;
        let upto = due_now.clamp(seq + 1, seq + MAX_BURST).min(total);
        let mut pipe = redis::pipe();
        let ts = now_us();
        for s in seq..upto {
            pipe.cmd("XADD")
                .arg(&source)
                .arg("*")
                .arg(FIELD)
                .arg(payloads.get(s))
                .arg(TS)
                .arg(ts)
                .arg(SEQ)
                .arg(s)
                .ignore();
        }
        pipe.exec(conn)?;
        seq = upto;
    }
    Ok(())
}

/// Reads the sink until the `sent` measured messages (seq >= `warmup`) are
/// in or `deadline` passes; returns their latencies in µs.
fn read(conn: &mut Connection, warmup: u64, sent: u64, deadline: Instant) -> Result<Vec<u64>> {
    let sink = workload::sink_key(0);
    let mut last = b"0-0".to_vec();
    let mut latencies = Vec::with_capacity(sent as usize);
    while (latencies.len() as u64) < sent && Instant::now() < deadline {
        let reply: Value = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(1000)
            .arg("BLOCK")
            .arg(100)
            .arg("STREAMS")
            .arg(&sink)
            .arg(&last)
            .query(conn)?;
        let now = now_us();
        for (id, fields) in workload::entries(reply) {
            last = id;
            let number = |name: &str| {
                fields
                    .iter()
                    .find(|(k, _)| k == name.as_bytes())
                    .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse::<u64>().ok())
            };
            if let (Some(ts), Some(seq)) = (number(TS), number(SEQ))
                && seq >= warmup
            {
                latencies.push(now.saturating_sub(ts));
            }
        }
    }
    Ok(latencies)
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}
