//! Pub/sub sources: SUBSCRIBE to `channels`, PSUBSCRIBE to `patterns`.
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
//! A subscription can die without a word: a half-open link (a NAT or
//! firewall that dropped the flow, a peer that vanished) delivers nothing
//! and never closes, while Redis still counts the subscriber. The
//! subscriber therefore PINGs on its connection every [`KEEPALIVE_EVERY`];
//! an error or no answer within [`KEEPALIVE_TIMEOUT`] ends the session,
//! like a closed connection does, and it subscribes again on a new
//! connection (a warning, and `sluice_pubsub_resubscribes_total`).

use super::{Shared, run_chain};
use crate::ack;
use crate::conn::{self, Outage};
use crate::message::Message;
use crate::plugin::Chain;
use anyhow::Result;
use futures::StreamExt;
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
    loop {
        let subscribed = async {
            let mut pubsub = s.client.pubsub().await?;
            for channel in p.source.channels.iter().flatten() {
                pubsub.subscribe(channel).await?;
            }
            for pattern in p.source.patterns.iter().flatten() {
                pubsub.psubscribe(pattern).await?;
            }
            redis::RedisResult::Ok(pubsub)
        };
        let pubsub = tokio::select! {
            _ = cancel.cancelled() => return,
            r = tokio::time::timeout(conn::COMMAND_TIMEOUT, subscribed) => {
                r.unwrap_or_else(|_| Err(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "subscribing timed out",
                ))))
            }
        };
        let (sink, mut stream) = match pubsub {
            Ok(pubsub) => {
                outage.recovered();
                pubsub.split()
            }
            Err(e) => {
                outage.failed(&e, "subscribing");
                if !outage.wait(&cancel).await {
                    return;
                }
                continue;
            }
        };
        // Checks the link while messages flow in: a half-open connection
        // delivers nothing and ends nothing, only a PING can tell.
        let mut keepalive = tokio::spawn(keepalive(sink));
        let end = loop {
            let msg = tokio::select! {
                _ = cancel.cancelled() => {
                    keepalive.abort();
                    return;
                }
                end = &mut keepalive => break end.unwrap_or(SessionEnd::Closed),
                msg = stream.next() => msg,
            };
            let Some(msg) = msg else {
                break SessionEnd::Closed;
            };
            let message = to_message(&msg);
            match tx.try_send(message) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => drops.add(&p.name),
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    keepalive.abort();
                    return;
                }
            }
        };
        keepalive.abort();
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

/// How often the subscription connection is checked with a PING.
const KEEPALIVE_EVERY: Duration = Duration::from_secs(5);

/// How long a PING may go unanswered before the link counts as dead. Also
/// covers a server stalled that long, which is worth a new connection too.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a subscription ended.
#[derive(Debug)]
enum SessionEnd {
    /// The connection closed (Redis restarted, CLIENT KILL, a reset).
    Closed,
    /// A PING got an error.
    PingFailed(redis::RedisError),
    /// A PING got no answer in time: a silent (half-open) link.
    Unanswered,
}

impl std::fmt::Display for SessionEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionEnd::Closed => f.write_str("connection closed"),
            SessionEnd::PingFailed(e) => write!(f, "PING failed: {e}"),
            SessionEnd::Unanswered => write!(
                f,
                "PING unanswered for {} ms",
                KEEPALIVE_TIMEOUT.as_millis()
            ),
        }
    }
}

/// PINGs on the subscription connection every [`KEEPALIVE_EVERY`] until
/// one fails or goes unanswered, and says why.
async fn keepalive(mut sink: redis::aio::PubSubSink) -> SessionEnd {
    loop {
        tokio::time::sleep(KEEPALIVE_EVERY).await;
        match tokio::time::timeout(KEEPALIVE_TIMEOUT, sink.ping::<redis::Value>()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) if e.is_connection_dropped() || e.is_io_error() => {
                return SessionEnd::Closed;
            }
            Ok(Err(e)) => return SessionEnd::PingFailed(e),
            Err(_) => return SessionEnd::Unanswered,
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
