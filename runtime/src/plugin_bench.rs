//! `sluice plugin bench`: what one message costs in a plugin, by batch
//! size, without Redis. Measures the runtime's whole processor step (the
//! batch lowered into the guest, the plugin's work, the outcomes lifted
//! back), as a pipeline's consumer runs it, on the thread's own CPU clock so
//! other load on the machine does not count.

use crate::message::{Field, Message};
use crate::plugin::{Chain, Engine, Stage, StageSettings};
use anyhow::{Result, bail};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// One batch size's result.
pub struct Point {
    /// Messages per call.
    pub batch: usize,
    /// CPU microseconds per message (this thread's clock).
    pub cpu_us: f64,
    /// Wall-clock microseconds per message.
    pub wall_us: f64,
    /// Messages processed in the measurement.
    pub messages: u64,
}

/// What was measured.
pub struct Report {
    /// The plugin's short content hash.
    pub hash: String,
    /// `encoded` or `typed` (see sdk/README.md, "The encoded batch").
    pub call_path: &'static str,
    /// One point per batch size, in the order asked.
    pub points: Vec<Point>,
}

/// Runs `plugin` on batches cut from `messages` (cycled) at each size in
/// `batches`, for at least `min_cpu` of CPU each after a warm-up. Every
/// message must succeed: a benchmark of failures measures the wrong path.
pub fn run(
    engine: &Engine,
    plugin: &Path,
    config: Vec<(String, String)>,
    messages: &[Vec<Field>],
    batches: &[usize],
    min_cpu: Duration,
) -> Result<Report> {
    if messages.is_empty() || batches.contains(&0) {
        bail!("need at least one message and batch sizes of at least 1");
    }
    let loaded = engine.load(plugin)?;
    let (hash, call_path) = (loaded.short_hash().to_string(), loaded.call_path());
    let settings = StageSettings::offline("plugin-bench", config);
    let mut chain = Chain::new(&[Arc::new(Stage::new(loaded, settings))]);
    chain
        .warm()
        .map_err(|e| anyhow::anyhow!("init failed: {e}"))?;
    let mut points = Vec::new();
    for &size in batches {
        let batch: Vec<Message> = (0..size)
            .map(|i| Message {
                id: format!("1700000000000-{i}"),
                source: "plugin-bench".into(),
                fields: messages[i % messages.len()].clone(),
                deliveries: 1,
                first_delivery_ms: 1_700_000_000_000,
            })
            .collect();
        // Warm-up: instance memory grown, caches filled.
        for _ in 0..3 {
            if let Some(failure) = chain.process(&batch).into_iter().find_map(Result::err) {
                bail!("a message failed, so the benchmark would measure failures: {failure}");
            }
        }
        let (cpu0, wall0) = (thread_cpu(), std::time::Instant::now());
        let mut calls = 0u64;
        while thread_cpu() - cpu0 < min_cpu {
            std::hint::black_box(chain.process(&batch));
            calls += 1;
        }
        let (cpu, wall) = (thread_cpu() - cpu0, wall0.elapsed());
        let n = calls * size as u64;
        points.push(Point {
            batch: size,
            cpu_us: cpu.as_secs_f64() * 1e6 / n as f64,
            wall_us: wall.as_secs_f64() * 1e6 / n as f64,
            messages: n,
        });
    }
    Ok(Report {
        hash,
        call_path,
        points,
    })
}

/// `size`-byte lowercase payloads in a field `payload`, as the project's
/// benchmark sends: the default input.
pub fn payloads(size: usize, count: usize) -> Vec<Vec<Field>> {
    (0..count)
        .map(|i| {
            let payload = (0..size).map(|j| b'a' + ((i * 7 + j) % 26) as u8).collect();
            vec![(b"payload".to_vec(), payload)]
        })
        .collect()
}

/// This thread's CPU time.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(
        rc, 0,
        "CLOCK_THREAD_CPUTIME_ID is always available on Linux"
    );
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

impl Report {
    /// A markdown table.
    pub fn markdown(&self, plugin: &Path) -> String {
        let mut md = format!(
            "{} ({}, {} call)\n\n| batch | µs/msg (CPU) | µs/msg (wall) | messages |\n|---:|---:|---:|---:|\n",
            plugin.display(),
            self.hash,
            self.call_path
        );
        for p in &self.points {
            md += &format!(
                "| {} | {:.3} | {:.3} | {} |\n",
                p.batch, p.cpu_us, p.wall_us, p.messages
            );
        }
        md
    }
}
