//! L, the limit: the fastest honest hand-written loop for the same job
//! (`sluice-bench limit ...`, run as a child process so it is measured like
//! sluice). Same delivery rule as sluice: a message is acked only after its
//! output XADD was confirmed.
//!
//! Per consumer thread, two round trips per batch:
//!
//! ```text
//! [XACK previous batch, XREADGROUP COUNT batch BLOCK ms]  (one pipeline)
//! uppercase payloads in place
//! [XADD x batch]                                          (one pipeline)
//! ```
//!
//! The ack of batch k rides with the read of batch k+1: it is still sent
//! after batch k's writes were confirmed, so nothing is acked early.
//! bench/python_consumer.py (P) runs the same loop with the same flags.

use crate::workload::{FIELD, entries};
use anyhow::{Result, anyhow};
use redis::Value;
use std::sync::atomic::{AtomicBool, Ordering};

/// The command line shared by L and P, so both run exactly the same job.
#[derive(clap::Args, Clone, Debug)]
pub struct ConsumerArgs {
    /// Redis URL.
    #[arg(long)]
    pub redis: String,
    /// Source stream `i` is `<source-prefix>:<i>`.
    #[arg(long)]
    pub source_prefix: String,
    /// Sink stream `i` is `<sink-prefix>:<i>`.
    #[arg(long)]
    pub sink_prefix: String,
    /// Consumer group (must exist).
    #[arg(long)]
    pub group: String,
    /// Independent pipelines (source/sink pairs).
    #[arg(long, default_value_t = 1)]
    pub pipelines: u32,
    /// Consumers per pipeline.
    #[arg(long, default_value_t = 1)]
    pub consumers: u32,
    /// XREADGROUP COUNT.
    #[arg(long, default_value_t = 256)]
    pub batch: u32,
    /// XREADGROUP BLOCK.
    #[arg(long, default_value_t = 100)]
    pub block_ms: u64,
}

impl ConsumerArgs {
    /// The flags that reproduce these arguments.
    pub fn to_args(&self) -> Vec<String> {
        [
            ("--redis", self.redis.clone()),
            ("--source-prefix", self.source_prefix.clone()),
            ("--sink-prefix", self.sink_prefix.clone()),
            ("--group", self.group.clone()),
            ("--pipelines", self.pipelines.to_string()),
            ("--consumers", self.consumers.to_string()),
            ("--batch", self.batch.to_string()),
            ("--block-ms", self.block_ms.to_string()),
        ]
        .into_iter()
        .flat_map(|(flag, value)| [flag.to_string(), value])
        .collect()
    }
}

/// Set by SIGTERM: consumers finish their batch, flush the last ack, exit.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigterm(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Runs one thread per (pipeline, consumer) until SIGTERM.
pub fn run(args: &ConsumerArgs) -> Result<()> {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe { libc::signal(libc::SIGTERM, on_sigterm as *const () as libc::sighandler_t) };
    let client = redis::Client::open(args.redis.as_str())?;
    let pid = std::process::id();
    std::thread::scope(|scope| {
        let threads: Vec<_> = (0..args.pipelines)
            .flat_map(|p| (0..args.consumers).map(move |c| (p, c)))
            .map(|(p, c)| {
                let loop_ = Loop {
                    source: format!("{}:{p}", args.source_prefix),
                    sink: format!("{}:{p}", args.sink_prefix),
                    group: &args.group,
                    consumer: format!("limit-{pid}-{p}-{c}"),
                    batch: args.batch,
                    block_ms: args.block_ms,
                };
                let client = &client;
                scope.spawn(move || loop_.run(client))
            })
            .collect();
        threads.into_iter().try_for_each(|t| {
            t.join()
                .map_err(|_| anyhow!("a consumer thread panicked"))?
                .map_err(anyhow::Error::from)
        })
    })
}

/// One consumer's loop.
struct Loop<'a> {
    source: String,
    sink: String,
    group: &'a str,
    consumer: String,
    batch: u32,
    block_ms: u64,
}

impl Loop<'_> {
    fn run(&self, client: &redis::Client) -> redis::RedisResult<()> {
        let mut conn = client.get_connection()?;
        let mut unacked: Vec<Vec<u8>> = Vec::new();
        loop {
            let stopping = STOP.load(Ordering::Relaxed);
            let mut pipe = redis::pipe();
            if !unacked.is_empty() {
                pipe.cmd("XACK")
                    .arg(&self.source)
                    .arg(self.group)
                    .arg(&unacked)
                    .ignore();
            }
            if stopping {
                return if pipe.is_empty() {
                    Ok(())
                } else {
                    pipe.exec(&mut conn)
                };
            }
            pipe.cmd("XREADGROUP")
                .arg("GROUP")
                .arg(self.group)
                .arg(&self.consumer)
                .arg("COUNT")
                .arg(self.batch)
                .arg("BLOCK")
                .arg(self.block_ms)
                .arg("STREAMS")
                .arg(&self.source)
                .arg(">");
            let (reply,): (Value,) = pipe.query(&mut conn)?;
            unacked.clear();
            let mut write = redis::pipe();
            for (id, fields) in entries(reply) {
                write.cmd("XADD").arg(&self.sink).arg("*");
                for (name, mut value) in fields {
                    if name == FIELD.as_bytes() {
                        value.make_ascii_uppercase();
                    }
                    write.arg(name).arg(value);
                }
                write.ignore();
                unacked.push(id);
            }
            if !unacked.is_empty() {
                // Errors surface here; then nothing of this batch is acked.
                write.exec(&mut conn)?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_round_trip() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: ConsumerArgs,
        }
        let args = ConsumerArgs {
            redis: "redis://x".into(),
            source_prefix: "a".into(),
            sink_prefix: "b".into(),
            group: "g".into(),
            pipelines: 3,
            consumers: 2,
            batch: 16,
            block_ms: 5,
        };
        let argv = std::iter::once("x".to_string()).chain(args.to_args());
        let parsed = <Cli as clap::Parser>::parse_from(argv).args;
        assert_eq!(parsed.to_args(), args.to_args());
    }
}
