//! One pipeline: a stream source read by N consumers, each running its own
//! warm processor chain, writing to the shared sinks, acking what landed.
//!
//! ```text
//! XREADGROUP (own pending, then >) -> Chain::process on a blocking thread
//!   -> ack::deliver (pipelined writes per sink) -> dead letters -> XACK
//! ```

use crate::ack::{self, Status};
use crate::config::{Pipeline, plugin_config};
use crate::conn;
use crate::message::Message;
use crate::plugin::{Chain, Engine, Stage, StageSettings};
use crate::sink::Sinks;
use crate::source::stream::{self as source, StreamReader};
use anyhow::{Context as _, Result};
use redis::aio::ConnectionManager;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, error, info, warn};

/// Longest pause between retries while Redis is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How long settling a finished batch (dead letters, XACK) keeps retrying
/// through an outage before the batch is left pending for redelivery.
const SETTLE_DEADLINE: Duration = Duration::from_secs(30);

/// What every pipeline of the process shares.
#[derive(Clone)]
pub struct Context {
    /// The plugin engine.
    pub engine: Engine,
    /// Redis for pipelines whose file names none.
    pub default_url: String,
}

/// A pipeline ready to run: plugins compiled and initialised, sinks built.
pub struct Built {
    shared: Arc<Shared>,
}

struct Shared {
    pipeline: Pipeline,
    client: redis::Client,
    stages: Vec<Arc<Stage>>,
    sinks: Sinks,
}

/// Compiles the pipeline's plugins (off the async threads) and runs each
/// one's `init` once, so a broken plugin or config fails here, before any
/// message is read.
pub async fn build(pipeline: Pipeline, ctx: &Context) -> Result<Built> {
    let url = pipeline
        .redis_url
        .clone()
        .unwrap_or_else(|| ctx.default_url.clone());
    let client = conn::client(&url)?;
    let name: Arc<str> = pipeline.name.as_str().into();
    let mut stages = Vec::new();
    for p in &pipeline.processors {
        let settings = StageSettings {
            pipeline: name.clone(),
            timeout: Duration::from_millis(p.timeout_ms),
            memory_bytes: (p.memory_mb as usize) << 20,
            config: plugin_config(&p.config),
            kv: Some(client.clone()),
        };
        let (engine, path) = (ctx.engine.clone(), p.plugin.clone());
        let started = Instant::now();
        let stage = tokio::task::spawn_blocking(move || -> Result<Stage> {
            let plugin = engine.load(&path)?;
            Stage::check_init(&plugin, &settings).map_err(anyhow::Error::msg)?;
            Ok(Stage::new(plugin, settings))
        })
        .await?
        .with_context(|| format!("plugin {}", p.plugin.display()))?;
        info!(
            pipeline = %name,
            plugin = %p.plugin.display(),
            hash = %stage.plugin.load().short_hash(),
            ms = started.elapsed().as_millis() as u64,
            "plugin loaded"
        );
        stages.push(Arc::new(stage));
    }
    let sinks = Sinks::build(&pipeline, &url)?;
    Ok(Built {
        shared: Arc::new(Shared {
            pipeline,
            client,
            stages,
            sinks,
        }),
    })
}

/// Why a consumer stopped.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// Asked to stop; in-flight work finished.
    Shutdown,
}

impl Built {
    /// Runs until `cancel`, then lets every consumer finish its batch.
    pub async fn run(self, cancel: CancellationToken) -> Result<()> {
        let s = &self.shared;
        let p = &s.pipeline;
        let mut conn = conn::manager(&s.client, conn::COMMAND_TIMEOUT)?;
        wait_for_group(&mut conn, p, &cancel).await;
        info!(
            pipeline = %p.name,
            stream = %p.stream(),
            group = %p.group(),
            consumers = p.source.consumers,
            "pipeline started"
        );
        let tracker = TaskTracker::new();
        let host = gethostname::gethostname().to_string_lossy().into_owned();
        for index in 0..p.source.consumers {
            let consumer = format!("{host}-{}-{index}", std::process::id());
            let span = tracing::info_span!("consumer", pipeline = %p.name, consumer = %consumer);
            tracker.spawn(consume(s.clone(), consumer, cancel.clone()).instrument(span));
        }
        tracker.close();
        tracker.wait().await;
        info!(pipeline = %p.name, "pipeline stopped");
        Ok(())
    }
}

/// Creates the consumer group, waiting out an unreachable Redis.
async fn wait_for_group(conn: &mut ConnectionManager, p: &Pipeline, cancel: &CancellationToken) {
    let mut outage = Outage::new(&p.name);
    loop {
        match source::ensure_group(conn, p.stream(), p.group(), &p.source.start).await {
            Ok(created) => {
                outage.recovered();
                if created {
                    info!(pipeline = %p.name, stream = %p.stream(), group = %p.group(), start = %p.source.start, "consumer group created");
                }
                return;
            }
            Err(e) => {
                if !outage.failed(&e, "creating the consumer group") {
                    error!(pipeline = %p.name, "cannot create group {} on {}: {e}", p.group(), p.stream());
                }
                if !outage.wait(cancel).await {
                    return;
                }
            }
        }
    }
}

async fn consume(s: Arc<Shared>, consumer: String, cancel: CancellationToken) -> End {
    let p = &s.pipeline;
    // A dedicated connection: a blocking read holds it for up to block_ms.
    let read_timeout = Duration::from_millis(p.source.block_ms) + conn::COMMAND_TIMEOUT;
    let conn = match conn::manager(&s.client, read_timeout) {
        Ok(c) => c,
        Err(e) => {
            error!("cannot open a connection: {e}");
            return End::Shutdown;
        }
    };
    let mut reader = StreamReader::new(
        conn.clone(),
        p.stream(),
        p.group(),
        &consumer,
        p.source.batch,
        p.source.block_ms,
    );
    let mut settle_conn = conn;
    let mut chain = Some(Chain::new(&s.stages));
    let mut outage = Outage::new(&p.name);
    debug!("consumer started");
    // The read is not raced against `cancel`: a dropped XREADGROUP may
    // already have moved entries into this consumer's pending list. The
    // read returns within block_ms, which bounds shutdown instead.
    let end = loop {
        if cancel.is_cancelled() {
            break End::Shutdown;
        }
        let batch = match reader.read().await {
            Ok(batch) => {
                outage.recovered();
                batch
            }
            Err(e) if e.code() == Some("NOGROUP") => {
                error!(stream = %p.stream(), group = %p.group(), "consumer group is gone (Redis lost its data?); recreating it");
                wait_for_group(&mut settle_conn, p, &cancel).await;
                continue;
            }
            Err(e) => {
                outage.failed(&e, "reading");
                // Entries may have been delivered to us with the reply lost.
                reader.reread_own_pending();
                if !outage.wait(&cancel).await {
                    break End::Shutdown;
                }
                continue;
            }
        };
        if !batch.deleted.is_empty() {
            warn!(ids = ?batch.deleted, "pending entries were deleted from the stream; acking them");
            let ids: Vec<&str> = batch.deleted.iter().map(String::as_str).collect();
            settle_acks(&mut settle_conn, p, &ids).await;
        }
        if batch.messages.is_empty() {
            continue;
        }
        let span = tracing::debug_span!("batch", stream = %p.stream(), size = batch.messages.len());
        process_batch(&s, &mut chain, batch.messages, &mut settle_conn)
            .instrument(span)
            .await;
    };
    let mut conn = settle_conn;
    match source::remove_if_idle(&mut conn, p.stream(), p.group(), &consumer).await {
        Ok(true) => debug!("consumer left the group"),
        Ok(false) => info!("consumer stopped with entries pending; they will be reclaimed"),
        Err(e) => debug!("could not remove the consumer from the group: {e}"),
    }
    end
}

/// Runs the chain, writes the records, dead-letters and acks.
async fn process_batch(
    s: &Shared,
    chain: &mut Option<Chain>,
    batch: Vec<Message>,
    conn: &mut ConnectionManager,
) {
    let p = &s.pipeline;
    let mut owned = chain.take().unwrap_or_else(|| Chain::new(&s.stages));
    let joined = tokio::task::spawn_blocking(move || {
        let outcomes = owned.process(&batch);
        (owned, batch, outcomes)
    })
    .await;
    let (owned, batch, outcomes) = match joined {
        Ok(done) => done,
        Err(e) => {
            // A panic in the host side of a call; the chain is rebuilt and
            // the batch stays pending for redelivery.
            error!("processing panicked: {e}; the batch stays pending");
            return;
        }
    };
    *chain = Some(owned);
    let statuses = ack::deliver(&batch, outcomes, &s.sinks, p.source.max_deliveries).await;
    settle(s, conn, &batch, &statuses).await;
}

/// Dead-letters the rejected, then acks the delivered, dropped and
/// dead-lettered in one XACK. Errored messages are logged and left pending.
async fn settle(s: &Shared, conn: &mut ConnectionManager, batch: &[Message], statuses: &[Status]) {
    let p = &s.pipeline;
    let mut ack_ids: Vec<&str> = Vec::with_capacity(batch.len());
    let mut dead = redis::pipe();
    let mut dead_ids = Vec::new();
    for (msg, status) in batch.iter().zip(statuses) {
        match status {
            Status::Delivered => ack_ids.push(&msg.id),
            Status::Dropped(f) => {
                debug!(id = %msg.id, "dropped: {f}");
                ack_ids.push(&msg.id);
            }
            Status::Errored(f) => {
                warn!(id = %msg.id, deliveries = msg.deliveries, "failed, will retry: {f}")
            }
            Status::Rejected(f) => {
                warn!(id = %msg.id, deliveries = msg.deliveries, dead_letter = %p.dead_letter(), "dead-lettered: {f}");
                let cmd = dead.cmd("XADD").arg(p.dead_letter()).arg("*");
                for (k, v) in ack::dead_letter_fields(msg, f, p.group(), &p.name) {
                    cmd.arg(k).arg(v);
                }
                dead_ids.push(msg.id.as_str());
            }
        }
    }
    if !dead_ids.is_empty() {
        let written = retry_outage(&p.name, "writing dead letters", || {
            let mut c = conn.clone();
            let dead = dead.clone();
            async move { dead.query_async::<()>(&mut c).await }
        })
        .await;
        match written {
            // Acked only once the dead letter is safely written.
            Ok(()) => ack_ids.extend(dead_ids),
            Err(e) => error!(ids = ?dead_ids, "cannot write dead letters: {e}; they stay pending"),
        }
    }
    settle_acks(conn, p, &ack_ids).await;
}

async fn settle_acks(conn: &mut ConnectionManager, p: &Pipeline, ids: &[&str]) {
    let acked = retry_outage(&p.name, "acking", || {
        let mut c = conn.clone();
        async move { source::ack(&mut c, p.stream(), p.group(), ids).await }
    })
    .await;
    if let Err(e) = acked {
        // Written but not acked: the entries will be delivered again (at-least-once).
        error!(
            count = ids.len(),
            "cannot ack: {e}; these entries will be redelivered"
        );
    }
}

/// Retries `op` through an outage (not through a refusal) for up to
/// [`SETTLE_DEADLINE`]. Deliberately not cancelled by shutdown: this is the
/// in-flight work shutdown waits for.
async fn retry_outage<F, Fut, T>(pipeline: &str, what: &str, mut op: F) -> redis::RedisResult<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = redis::RedisResult<T>>,
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

/// Tracks one outage: logs its start once and its end once, and paces
/// retries with exponential backoff and jitter.
struct Outage {
    pipeline: String,
    since: Option<Instant>,
    attempt: u32,
}

impl Outage {
    fn new(pipeline: &str) -> Self {
        Outage {
            pipeline: pipeline.to_string(),
            since: None,
            attempt: 0,
        }
    }

    /// Notes a failure; logs it if it starts an outage. Returns whether the
    /// error was an outage (unreachable Redis) rather than a refusal.
    fn failed(&mut self, e: &redis::RedisError, what: &str) -> bool {
        let outage = conn::is_outage(e);
        if self.since.is_none() {
            self.since = Some(Instant::now());
            warn!(pipeline = %self.pipeline, "Redis unavailable while {what}: {e}; retrying with backoff");
        }
        outage
    }

    fn recovered(&mut self) {
        if let Some(since) = self.since.take() {
            info!(pipeline = %self.pipeline, down_ms = since.elapsed().as_millis() as u64, "Redis reachable again");
        }
        self.attempt = 0;
    }

    fn next_delay(&mut self) -> Duration {
        self.attempt = self.attempt.saturating_add(1);
        let base = Duration::from_millis(50)
            .saturating_mul(1 << self.attempt.min(7))
            .min(MAX_BACKOFF);
        // Jitter (0-25%) keeps many consumers from reconnecting in lockstep.
        let jitter = std::hash::BuildHasher::hash_one(
            &std::collections::hash_map::RandomState::new(),
            Instant::now(),
        ) % 250;
        base + base * jitter as u32 / 1000
    }

    /// Sleeps the next backoff; false if cancelled meanwhile.
    async fn wait(&mut self, cancel: &CancellationToken) -> bool {
        let delay = self.next_delay();
        tokio::select! {
            _ = cancel.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }
}
