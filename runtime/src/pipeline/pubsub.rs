//! Pub/sub sources: SUBSCRIBE to `channels`, PSUBSCRIBE to `patterns`, or
//! with `sharded = true` SSUBSCRIBE to `channels` ([`super::subscription`]
//! says where, on a cluster).
//!
//! Pub/sub is at-most-once by nature: Redis keeps nothing, so a message
//! published while no subscriber is connected is gone, and every running
//! instance receives every message (fan-out). One subscriber task per
//! pipeline reads from Redis as fast as Redis sends and puts messages in a
//! bounded buffer that the consumers drain; when the buffer is full, new
//! messages are dropped, counted and logged. Reading eagerly matters: a
//! subscriber that falls behind grows its output buffer inside Redis until
//! `client-output-buffer-limit pubsub` (default 32 MB hard, or 8 MB for
//! 60 s) makes Redis drop the connection, losing everything in it without
//! a word. Dropping here instead is visible and bounded.
//!
//! A failed message is retried in this process up to `max_deliveries`
//! times (nothing can redeliver it later), then dead-lettered.
//!
//! When a subscription ends (the connection closed, a keepalive PING
//! failed, a sharded channel's slot moved) it subscribes again on new
//! connections (a warning, and `sluice_pubsub_resubscribes_total`).

use super::subscription;
use super::{Shared, run_chain};
use crate::ack;
use crate::conn::{self, Outage};
use crate::message::Message;
use crate::plugin::Chain;
use anyhow::Result;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, error, info, warn};

/// Default for the source's `buffer`.
pub const DEFAULT_BUFFER: usize = 10_000;

/// How often a run of dropped messages is reported.
const DROP_REPORT_EVERY: Duration = Duration::from_secs(10);

pub(super) async fn run(s: Arc<Shared>, cancel: CancellationToken) -> Result<()> {
    let p = &s.pipeline;
    let (tx, rx) = mpsc::channel(p.source.buffer.unwrap_or(DEFAULT_BUFFER));
    let rx = Arc::new(Mutex::new(rx));
    let channels = p.source.channels.clone().unwrap_or_default();
    let patterns = p.source.patterns.clone().unwrap_or_default();
    info!(
        pipeline = %p.name,
        ?channels,
        ?patterns,
        sharded = p.source.sharded == Some(true),
        consumers = p.source.consumers,
        redis = %s.redis,
        "pipeline started (pub/sub is at-most-once: messages published while sluice is not subscribed are lost)"
    );
    let tracker = TaskTracker::new();
    tracker.spawn(subscribe(s.clone(), tx, cancel.clone()));
    for index in 0..p.source.consumers {
        // Error level: the span, and the pipeline it names, outlives any RUST_LOG level.
        let span = tracing::error_span!("consumer", pipeline = %p.name, consumer = index);
        tracker.spawn(consume(s.clone(), rx.clone(), cancel.clone()).instrument(span));
    }
    tracker.close();
    tracker.wait().await;
    Ok(())
}

/// Subscribes, and resubscribes whenever the subscription ends, until
/// `cancel`. Dropping `tx` on return lets the consumers finish the buffer
/// and stop.
async fn subscribe(s: Arc<Shared>, tx: mpsc::Sender<Message>, cancel: CancellationToken) {
    let p = &s.pipeline;
    let mut outage = Outage::of(&p.name, &s.redis);
    let mut drops = Drops::default();
    // Which node a plain subscription tries first (subscription::open).
    let mut turn = 0;
    loop {
        let opened = tokio::select! {
            _ = cancel.cancelled() => return,
            r = subscription::open(&s.client, &p.source, &mut turn) => r,
        };
        let mut session = match opened {
            Ok(session) => {
                outage.recovered();
                session
            }
            Err(e) => {
                outage.failed(&e, "subscribing");
                if !outage.wait(&cancel).await {
                    return;
                }
                continue;
            }
        };
        let end = loop {
            let msg = tokio::select! {
                _ = cancel.cancelled() => return,
                msg = session.next() => msg,
            };
            let msg = match msg {
                Ok(msg) => msg,
                Err(end) => break end,
            };
            match tx.try_send(to_message(&msg)) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => drops.add(&p.name),
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            }
        };
        drop(session);
        // A node whose session was lost may be going away: start with the
        // next one.
        turn += 1;
        // Messages published until we are subscribed again are lost
        // (at-most-once).
        warn!(
            pipeline = %p.name,
            reason = %end,
            "pub/sub subscription lost: resubscribing (messages published meanwhile are lost)"
        );
        metrics::counter!("sluice_pubsub_resubscribes_total", "pipeline" => p.name.clone())
            .increment(1);
        if !outage.wait(&cancel).await {
            return;
        }
    }
}

/// Counts dropped messages and reports them at most every [`DROP_REPORT_EVERY`].
#[derive(Default)]
struct Drops {
    since_report: u64,
    reported_at: Option<Instant>,
}

impl Drops {
    fn add(&mut self, pipeline: &str) {
        self.since_report += 1;
        metrics::counter!("sluice_pubsub_dropped_total", "pipeline" => pipeline.to_string())
            .increment(1);
        if self
            .reported_at
            .is_none_or(|at| at.elapsed() >= DROP_REPORT_EVERY)
        {
            warn!(
                pipeline,
                dropped = self.since_report,
                "pub/sub buffer full: dropping messages (consumers are slower than publishers; raise `consumers` or `buffer`)"
            );
            self.since_report = 0;
            self.reported_at = Some(Instant::now());
        }
    }
}

/// Process-wide counter behind synthetic message ids.
static SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// A pub/sub message as a Sluice message: fields `payload` and `channel`
/// (and `pattern` when it matched a pattern), with a synthetic id
/// `<ms>-<pid>.<n>` that is unique across processes. Channel names are
/// binary-safe: the fields carry their exact bytes (`source`, a string, is
/// for logs and shows invalid UTF-8 as replacement characters).
fn to_message(msg: &redis::Msg) -> Message {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let n = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    let channel: Vec<u8> = msg.get_channel().unwrap_or_default();
    let source = String::from_utf8_lossy(&channel).into();
    let mut fields = vec![
        (b"payload".to_vec(), msg.get_payload_bytes().to_vec()),
        (b"channel".to_vec(), channel),
    ];
    if msg.from_pattern()
        && let Ok(pattern) = msg.get_pattern::<Vec<u8>>()
    {
        fields.push((b"pattern".to_vec(), pattern));
    }
    Message {
        id: format!("{ms}-{}.{n}", std::process::id()),
        source,
        fields,
        deliveries: 1,
        first_delivery_ms: ms,
    }
}

/// Takes batches from the buffer until it is closed and empty: on shutdown
/// the subscriber stops first, and what it had received is still processed.
async fn consume(s: Arc<Shared>, rx: Arc<Mutex<mpsc::Receiver<Message>>>, stop: CancellationToken) {
    let p = &s.pipeline;
    let batch_size = p.source.batch as usize;
    let mut chain = Some(Chain::new(&s.stages));
    let conn = match conn::manager(&s.client, conn::COMMAND_TIMEOUT) {
        Ok(c) => c,
        Err(e) => return error!("cannot open a connection: {e}"),
    };
    let mut retry: Vec<Message> = Vec::new();
    loop {
        let mut batch = std::mem::take(&mut retry);
        if batch.len() < batch_size {
            let mut rx = rx.lock().await;
            let want = batch_size - batch.len();
            // Retries pending: take what is there without waiting.
            let received = if batch.is_empty() {
                rx.recv_many(&mut batch, want).await
            } else {
                drain_ready(&mut rx, &mut batch, want)
            };
            if received == 0 && batch.is_empty() {
                return; // closed and empty
            }
        }
        let Some((batch, outcomes)) = run_chain(&s, &mut chain, batch).await else {
            continue;
        };
        let statuses =
            ack::deliver(&batch, outcomes, &s.sinks, p.source.max_deliveries, &stop).await;
        // Nothing can redeliver a pub/sub message later: retry it here.
        let sorted = super::sort_statuses(&conn, p, p.dead_letter(), &batch, &statuses).await;
        retry.extend(sorted.retry.into_iter().map(|m| Message {
            deliveries: m.deliveries + 1,
            ..m.clone()
        }));
    }
}

fn drain_ready(rx: &mut mpsc::Receiver<Message>, batch: &mut Vec<Message>, want: usize) -> usize {
    let mut n = 0;
    while n < want {
        match rx.try_recv() {
            Ok(m) => {
                batch.push(m);
                n += 1;
            }
            Err(_) => break,
        }
    }
    n
}
