//! One pipeline: a source read by N consumers, each running its own warm
//! processor chain, writing to the shared sinks, and settling each message
//! by its delivery status.
//!
//! - [`stream`]: consumer groups (XREADGROUP, leases, XACK, atomic).
//! - [`reclaim`]: a stream lane's reclaimer (XAUTOCLAIM, dead consumers).
//! - [`pubsub`]: SUBSCRIBE/PSUBSCRIBE/SSUBSCRIBE into a bounded buffer;
//!   at-most-once.
//! - [`subscription`]: where a pub/sub subscription is opened (one node, or
//!   each sharded channel's slot owner) and why it ended.
//! - [`list`]: a reliable queue (LMOVE into a per-consumer processing list).
//!
//! ```text
//! source read -> Chain::process (blocking thread) -> ack::deliver (sinks)
//!   -> dead letters -> ack (XACK / LREM / nothing for pub/sub)
//! ```

mod list;
mod pubsub;
mod reclaim;
mod stream;
mod subscription;

use crate::ack::{self, Status};
use crate::config::{Pipeline, SourceType, plugin_config};
use crate::conn::Conn;
use crate::conn::{self, Outage};
use crate::message::{Failure, Message, Outcome};
use crate::plugin::{Chain, Engine, Stage, StageSettings};
use crate::sink::Sinks;
use anyhow::{Context as _, Result};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

/// How long settling a finished batch (dead letters, acks) keeps retrying
/// through an outage before the batch is left for redelivery.
const SETTLE_DEADLINE: Duration = Duration::from_secs(30);

/// What every pipeline of the process shares.
#[derive(Clone)]
pub struct Context {
    /// The plugin engine.
    pub engine: Engine,
    /// Redis for pipelines whose file names none.
    pub default_url: String,
    /// Set once every pipeline found at start is running (`/ready`).
    pub ready: Arc<std::sync::atomic::AtomicBool>,
}

/// A pipeline ready to run: plugins compiled and initialised, sinks built.
pub struct Built {
    shared: Arc<Shared>,
}

#[derive(Clone)]
struct Shared {
    pipeline: Pipeline,
    /// The pipeline's Redis, redacted for logs.
    redis: String,
    /// The pipeline's Redis URL.
    url: String,
    client: conn::Client,
    stages: Vec<Arc<Stage>>,
    sinks: Arc<Sinks>,
}

/// Compiles the pipeline's plugins (off the async threads) and runs each
/// one's `init` once, so a broken plugin or config fails here, before any
/// message is read.
pub async fn build(pipeline: Pipeline, ctx: &Context) -> Result<Built> {
    let url = redis_url(&pipeline, ctx);
    let client = conn::client(&url)?;
    if client.is_cluster() {
        let problems = crate::config::cluster::problems(&pipeline);
        anyhow::ensure!(
            problems.is_empty(),
            "on the Redis Cluster {}: {}",
            conn::redact(&url),
            problems.join("; ")
        );
    }
    let name: Arc<str> = pipeline.name.as_str().into();
    let mut stages = Vec::new();
    for (i, p) in pipeline.processors.iter().enumerate() {
        let policy = crate::plugin::rollout::Policy::from_config(p);
        let settings = StageSettings {
            pipeline: name.clone(),
            timeout: Duration::from_millis(p.timeout_ms),
            memory_bytes: (p.memory_mb as usize) << 20,
            config: plugin_config(&p.config),
            kv: Some(client.clone()),
            grants: p.grants.clone(),
            fuel: p.fuel,
        };
        if p.fuel.is_some() && !ctx.engine.counts_fuel() {
            anyhow::bail!(
                "plugin {}: fuel is counted only when a pipeline sets it at start: restart sluice to apply `fuel`",
                p.plugin.display()
            );
        }
        let (engine, path) = (ctx.engine.clone(), p.plugin.clone());
        let started = Instant::now();
        let stage = tokio::task::spawn_blocking(move || -> Result<Stage> {
            let plugin = engine.load(&path)?;
            Stage::check_init(&plugin, &settings).map_err(anyhow::Error::msg)?;
            Ok(Stage::new(plugin, settings).with_rollout(policy, i + 1))
        })
        .await?
        .with_context(|| format!("plugin {}", p.plugin.display()))?;
        info!(
            pipeline = %name,
            plugin = %p.plugin.display(),
            hash = %stage.current().plugin.short_hash(),
            ms = started.elapsed().as_millis() as u64,
            "plugin loaded"
        );
        crate::http::plugin_info(&name, &p.plugin, stage.current().plugin.short_hash(), true);
        stages.push(Arc::new(stage));
    }
    let sinks = Arc::new(Sinks::build(&pipeline, &url)?);
    Ok(Built {
        shared: Arc::new(Shared {
            pipeline,
            redis: conn::redact(&url),
            url: url.clone(),
            client,
            stages,
            sinks,
        }),
    })
}

/// The Redis URL `pipeline` uses: its own, else the process default.
fn redis_url(pipeline: &Pipeline, ctx: &Context) -> String {
    pipeline
        .redis_url
        .clone()
        .unwrap_or_else(|| ctx.default_url.clone())
}

/// Creates the consumer groups of a stream pipeline that is about to start,
/// before its plugins compile (seconds, for some languages): a group created
/// only afterwards, at `start = "$"`, would skip what producers added in
/// between. Best effort: with Redis unreachable the pipeline creates them
/// when it starts.
pub async fn prepare_groups(pipeline: &Pipeline, ctx: &Context) {
    if pipeline.source.kind != SourceType::Stream {
        return;
    }
    let url = redis_url(pipeline, ctx);
    let Ok(client) = conn::client(&url) else {
        return; // reported when the pipeline is built
    };
    let Ok(mut conn) = conn::manager(&client, Duration::from_secs(2)) else {
        return;
    };
    for stream in pipeline.streams() {
        let (group, start) = (pipeline.group(), &pipeline.source.start);
        let created = crate::source::stream::ensure_group(&mut conn, stream, group, start);
        // Never hold up startup for long: an unreachable Redis is waited
        // out by the pipeline itself.
        match tokio::time::timeout(Duration::from_secs(2), created).await {
            Ok(Ok(true)) => {
                info!(pipeline = %pipeline.name, stream = %stream, group = %group, start = %start, "consumer group created")
            }
            Ok(Ok(false)) => {}
            Ok(Err(e)) => {
                debug!(pipeline = %pipeline.name, "group not created before the plugins compile: {e}")
            }
            Err(_) => return,
        }
    }
}

impl Built {
    /// The pipeline's processors, for swapping plugin versions while it runs.
    pub fn stages(&self) -> Vec<Arc<Stage>> {
        self.shared.stages.clone()
    }

    /// Runs until `cancel`, then lets every consumer finish its batch.
    pub async fn run(self, cancel: CancellationToken) -> Result<()> {
        let s = self.shared;
        let name = s.pipeline.name.clone();
        let topology = cancel.child_token();
        let _stop_topology = topology.clone().drop_guard();
        tokio::spawn(conn::watch_topology(
            s.client.clone(),
            s.url.clone(),
            topology,
        ));
        match s.pipeline.source.kind {
            SourceType::Stream => {
                let stats = cancel.child_token();
                let _stop_stats = stats.clone().drop_guard();
                tokio::spawn(crate::group_stats::poll(
                    s.client.clone(),
                    s.pipeline.clone(),
                    stats,
                ));
                stream::run(s, cancel).await?
            }
            SourceType::Pubsub => pubsub::run(s, cancel).await?,
            SourceType::List => list::run(s, cancel).await?,
        }
        info!(pipeline = %name, "pipeline stopped");
        Ok(())
    }
}

/// The name of consumer `index` of this process: unique per host, process
/// and index, as Redis shows it in XINFO CONSUMERS.
fn consumer_name(index: u32) -> String {
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    format!("{host}-{}-{index}", std::process::id())
}

/// How often the reclaimer looks: often enough that dead work waits little
/// past claim_idle_ms, rarely enough to cost nothing.
pub(super) fn reclaim_interval(claim_idle_ms: u64) -> Duration {
    Duration::from_millis((claim_idle_ms / 4).clamp(50, 5_000))
}

/// Splits off the messages delivered more than `max_deliveries` times with
/// no outcome (their consumers kept stopping mid-batch): they are
/// dead-lettered without running again. Returns them, their statuses, and
/// the rest of the batch.
fn split_unsettled(
    batch: Vec<Message>,
    max_deliveries: u32,
) -> (Vec<Message>, Vec<Status>, Vec<Message>) {
    let (expired, fresh): (Vec<Message>, Vec<Message>) = batch
        .into_iter()
        .partition(|m| m.deliveries > max_deliveries);
    let statuses = expired
        .iter()
        .map(|m| unsettled(m, max_deliveries))
        .collect();
    (expired, statuses, fresh)
}

/// The status of a message delivered more than `max_deliveries` times
/// without an outcome (its consumers kept stopping mid-batch): dead-letter
/// it without running it again.
fn unsettled(msg: &Message, max_deliveries: u32) -> Status {
    Status::Rejected(Failure {
        kind: crate::message::FailureKind::DeadLetter,
        class: crate::message::FailureClass::Unsettled,
        reason: format!(
            "delivered {} times (max_deliveries = {max_deliveries}) with no outcome recorded: its consumers stopped, or could not settle it",
            msg.deliveries
        ),
        plugin: None,
    })
}

/// A settled batch, sorted by what its source must still do.
struct Sorted<'a> {
    /// Delivered, dropped, or dead-lettered with the dead letter written:
    /// the source acks these.
    done: Vec<&'a Message>,
    /// Failed, to be delivered again.
    retry: Vec<&'a Message>,
}

/// What every source does with a processed batch: logs and counts each
/// message's status, writes the dead letters (to `dead_letter`), and sorts
/// the batch. A rejected message is done only once its dead letter is
/// written; otherwise it is neither done nor retried and stays unsettled.
async fn sort_statuses<'a>(
    conn: &Conn,
    p: &Pipeline,
    dead_letter: &str,
    batch: &'a [Message],
    statuses: &'a [Status],
) -> Sorted<'a> {
    let mut sorted = Sorted {
        done: Vec::with_capacity(batch.len()),
        retry: Vec::new(),
    };
    let mut rejected: Vec<(&Message, &Failure)> = Vec::new();
    for (msg, status) in batch.iter().zip(statuses) {
        log_status(dead_letter, msg, status);
        match status {
            Status::Delivered | Status::Dropped(_) => sorted.done.push(msg),
            Status::Errored(_) => sorted.retry.push(msg),
            Status::Rejected(f) => rejected.push((msg, f)),
        }
    }
    match write_dead_letters(conn, p, dead_letter, &rejected).await {
        Ok(()) => sorted.done.extend(rejected.iter().map(|(m, _)| *m)),
        Err(e) => error!(
            count = rejected.len(),
            "cannot write dead letters to {dead_letter}: {e}; those messages are not settled"
        ),
    }
    count(p, statuses);
    sorted
}

/// Writes dead letters for `rejected` (message, why) to `stream`, retrying
/// through an outage. Only after this succeeds may the messages be acked.
async fn write_dead_letters(
    conn: &Conn,
    p: &Pipeline,
    stream: &str,
    rejected: &[(&Message, &Failure)],
) -> redis::RedisResult<()> {
    if rejected.is_empty() {
        return Ok(());
    }
    let mut pipe = redis::pipe();
    for (msg, failure) in rejected {
        let cmd = pipe.cmd("XADD").arg(stream).arg("*");
        let fields = ack::dead_letter_fields(msg, failure, p.group(), &p.name);
        for (k, v) in ack::with_source_type(fields, p.source.kind) {
            cmd.arg(k).arg(v);
        }
    }
    retry_outage(&p.name, "writing dead letters", || {
        let (mut c, pipe) = (conn.clone(), pipe.clone());
        async move { pipe.query_async::<()>(&mut c).await }
    })
    .await
}

/// Runs `chain` over `batch` on a blocking thread (Wasm calls never block
/// the async runtime). None if the host side panicked: the chain is rebuilt
/// on the next batch and this one stays pending for redelivery.
async fn run_chain(
    s: &Shared,
    chain: &mut Option<Chain>,
    batch: Vec<Message>,
) -> Option<(Vec<Message>, Vec<Outcome>)> {
    let name = s.pipeline.name.as_str();
    metrics::counter!("sluice_received_total", "pipeline" => name.to_string())
        .increment(batch.len() as u64);
    metrics::histogram!("sluice_batch_size", "pipeline" => name.to_string())
        .record(batch.len() as f64);
    let in_flight = metrics::gauge!("sluice_in_flight", "pipeline" => name.to_string());
    let n = batch.len() as f64;
    in_flight.increment(n);
    let started = Instant::now();
    let result = run_stages(s, chain, batch).await;
    metrics::histogram!("sluice_plugin_seconds", "pipeline" => name.to_string())
        .record(started.elapsed().as_secs_f64());
    in_flight.decrement(n);
    if let Some((_, outcomes)) = &result {
        let filtered = outcomes
            .iter()
            .filter(|o| matches!(o, Ok(r) if r.is_empty()))
            .count();
        let records: usize = outcomes
            .iter()
            .filter_map(|o| o.as_ref().ok())
            .map(Vec::len)
            .sum();
        metrics::counter!("sluice_filtered_total", "pipeline" => name.to_string())
            .increment(filtered as u64);
        metrics::counter!("sluice_records_total", "pipeline" => name.to_string())
            .increment(records as u64);
    }
    result
}

/// [`run_chain`] without the counting.
async fn run_stages(
    s: &Shared,
    chain: &mut Option<Chain>,
    batch: Vec<Message>,
) -> Option<(Vec<Message>, Vec<Outcome>)> {
    if s.stages.is_empty() {
        // Nothing to run: records are the messages, no thread hop needed.
        let outcomes = batch
            .iter()
            .map(|m| Ok(vec![crate::message::Record::from_message(m)]))
            .collect();
        return Some((batch, outcomes));
    }
    let mut owned = chain.take().unwrap_or_else(|| Chain::new(&s.stages));
    // The batch travels to the blocking thread and back: no copy.
    match tokio::task::spawn_blocking(move || {
        let outcomes = owned.process(&batch);
        (owned, batch, outcomes)
    })
    .await
    {
        Ok((owned, batch, outcomes)) => {
            *chain = Some(owned);
            Some((batch, outcomes))
        }
        Err(e) => {
            error!("processing panicked: {e}; the batch stays pending");
            None
        }
    }
}

fn log_status(dead_letter: &str, msg: &Message, status: &Status) {
    match status {
        Status::Delivered => {}
        Status::Dropped(f) => debug!(id = %msg.id, "dropped: {f}"),
        Status::Errored(f) => {
            warn!(id = %msg.id, deliveries = msg.deliveries, "failed, will retry: {f}")
        }
        Status::Rejected(f) => {
            warn!(id = %msg.id, deliveries = msg.deliveries, dead_letter = %dead_letter, "dead-lettered: {f}")
        }
    }
}

/// Counts a settled batch's messages by status (one update per status, not per message).
fn count(p: &Pipeline, statuses: &[Status]) {
    let mut by = [0u64; 4];
    for status in statuses {
        by[match status {
            Status::Delivered => 0,
            Status::Dropped(_) => 1,
            Status::Errored(_) => 2,
            Status::Rejected(_) => 3,
        }] += 1;
        if let Status::Errored(f) | Status::Rejected(f) = status {
            metrics::counter!("sluice_failures_total", "pipeline" => p.name.clone(), "class" => f.class.as_str())
                .increment(1);
        }
    }
    for (n, status) in by
        .into_iter()
        .zip(["delivered", "dropped", "retried", "dead_lettered"])
    {
        if n > 0 {
            metrics::counter!("sluice_messages_total", "pipeline" => p.name.clone(), "status" => status).increment(n);
        }
    }
}

/// Counts acked stream entries and records each one's end-to-end latency:
/// from the time in its id (when it was added) to now.
fn count_acked<'a>(p: &Pipeline, ids: impl Iterator<Item = &'a str>) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let latency = metrics::histogram!("sluice_end_to_end_seconds", "pipeline" => p.name.clone());
    let mut n = 0;
    for id in ids {
        let added = crate::message::stream_id_ms(id);
        latency.record(now.saturating_sub(added) as f64 / 1000.0);
        n += 1;
    }
    metrics::counter!("sluice_acked_total", "pipeline" => p.name.clone()).increment(n);
}

/// Retries `op` through an outage (not through a refusal) for up to
/// [`SETTLE_DEADLINE`]. Deliberately not cancelled by shutdown: this is the
/// in-flight work shutdown waits for.
async fn retry_outage<F, Fut, T>(pipeline: &str, what: &str, mut op: F) -> redis::RedisResult<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = redis::RedisResult<T>>,
{
    let deadline = Instant::now() + SETTLE_DEADLINE;
    let mut outage = Outage::new(pipeline);
    loop {
        match op().await {
            Ok(v) => {
                outage.recovered();
                return Ok(v);
            }
            Err(e) if conn::is_outage(&e) && Instant::now() < deadline => {
                outage.failed(&e, what);
                tokio::time::sleep(outage.next_delay()).await;
            }
            Err(e) => return Err(e),
        }
    }
}
