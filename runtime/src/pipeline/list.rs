//! List sources: a list as a reliable queue (see [`crate::source::list`]).
//!
//! Each consumer claims a name, keeps a heartbeat, finishes the items it
//! already holds, then moves new items into its processing list in
//! batches. Settled items leave the processing list; failed ones go back to
//! the queue with a delivery counted; a reclaimer returns the items of
//! consumers whose heartbeat expired.
//!
//! Failure points, per item: dying after the move into the processing list
//! leaves the item there for the restart on this host (which counts a
//! delivery) or, past the heartbeat, for the reclaimer. Dying between the
//! sink write and the LREM writes the item again (at-least-once). A dead
//! letter or settle that fails leaves the item in the processing list; the
//! consumer takes it up again after [`RECHECK_FIRST`] (doubling, up to
//! [`RECHECK_MAX`]) while new items keep flowing. A consumer that stalls
//! longer than its heartbeat's lifetime may find its items returned to the
//! queue and its name claimed by a restart: its next renewal notices, and
//! it finishes its batch (at-least-once) and claims a new name rather than
//! share a processing list.

use super::{Shared, retry_outage, run_chain};
use crate::ack;
use crate::conn::Conn;
use crate::conn::{self, Outage};
use crate::message::Message;
use crate::plugin::Chain;
use crate::source::list::{self as source, Keys};
use anyhow::Result;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, error, info, warn};

/// The first wait before a consumer takes up again items it could not
/// settle; it doubles while they stay unsettled, up to [`RECHECK_MAX`].
const RECHECK_FIRST: Duration = Duration::from_millis(100);

/// The longest wait before unsettled items are taken up again: how long a
/// fixed dead-letter stream waits for a consumer to notice.
const RECHECK_MAX: Duration = Duration::from_secs(5);

pub(super) async fn run(s: Arc<Shared>, cancel: CancellationToken) -> Result<()> {
    let p = &s.pipeline;
    let keys = Arc::new(Keys::new(p.source.list.as_deref().unwrap_or_default()));
    info!(pipeline = %p.name, list = %keys.list, consumers = p.source.consumers, redis = %s.redis, "pipeline started");
    let tracker = TaskTracker::new();
    for index in 0..p.source.consumers {
        tracker.spawn(consume(s.clone(), keys.clone(), index, cancel.clone()));
    }
    tracker.spawn(reclaim(s.clone(), keys, cancel));
    tracker.close();
    tracker.wait().await;
    Ok(())
}

async fn consume(s: Arc<Shared>, keys: Arc<Keys>, index: u32, cancel: CancellationToken) {
    let p = &s.pipeline;
    let ttl = p.source.claim_idle_ms;
    let read_timeout = Duration::from_millis(p.source.block_ms) + conn::COMMAND_TIMEOUT;
    let mut conn = match conn::manager(&s.client, read_timeout) {
        Ok(c) => c,
        Err(e) => return error!(pipeline = %p.name, "cannot open a connection: {e}"),
    };
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    let mut outage = Outage::of(&p.name, &s.redis);
    // A consumer that loses its name (see `heartbeat`) claims another.
    while !cancel.is_cancelled() {
        let consumer = loop {
            match source::claim_name(&mut conn, &keys, &host, index, ttl).await {
                Ok(name) => break name,
                Err(e) => {
                    outage.failed(&e, "claiming a consumer name");
                    if !outage.wait(&cancel).await {
                        return;
                    }
                }
            }
        };
        // Error level: the span, and the pipeline it names, outlives any RUST_LOG level.
        let span = tracing::error_span!("consumer", pipeline = %p.name, consumer = %consumer);
        let lost = cancel.child_token();
        let beat = tokio::spawn(
            heartbeat(
                conn.clone(),
                keys.clone(),
                consumer.clone(),
                ttl,
                lost.clone(),
            )
            .instrument(span.clone()),
        );
        work(&s, &keys, &consumer, &mut conn, &lost)
            .instrument(span)
            .await;
        beat.abort();
        if !cancel.is_cancelled() {
            continue; // the name was lost: nothing of it is ours to clean up
        }
        match source::leave(&mut conn, &keys, &consumer).await {
            Ok(true) => debug!(consumer, "consumer left"),
            Ok(false) => info!(
                consumer,
                "consumer stopped holding items; a restart on this host or the reclaimer takes them"
            ),
            Err(e) => debug!(consumer, "could not leave: {e}"),
        }
    }
}

/// Keeps the consumer's heartbeat alive, at a third of its lifetime. If
/// another process took the name meanwhile (this one stalled past the
/// heartbeat's lifetime), cancels `lost`: the consumer finishes its batch
/// and claims a new name.
async fn heartbeat(
    mut conn: Conn,
    keys: Arc<Keys>,
    consumer: String,
    ttl_ms: u64,
    lost: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = lost.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(ttl_ms / 3)) => {}
        }
        match source::heartbeat(&mut conn, &keys, &consumer, ttl_ms).await {
            Ok(true) => {}
            Ok(false) => {
                warn!(
                    "another process holds this consumer name now (this one stalled longer than claim_idle_ms); claiming a new name"
                );
                lost.cancel();
                return;
            }
            Err(e) => debug!("heartbeat failed: {e}"),
        }
    }
}

async fn work(
    s: &Shared,
    keys: &Keys,
    consumer: &str,
    conn: &mut Conn,
    cancel: &CancellationToken,
) {
    let p = &s.pipeline;
    let list: Arc<str> = keys.list.as_str().into();
    let mut chain = Some(Chain::new(&s.stages));
    let mut outage = Outage::of(&p.name, &s.redis);
    // Items held from before (a restart or a lost reply) come first.
    let mut own = true;
    // Items left unsettled in the processing list are taken up again at
    // `recheck.at`; new items flow meanwhile.
    let mut recheck = Recheck::default();
    while !cancel.is_cancelled() {
        own |= recheck.due();
        let read = async {
            if own {
                source::own_items(conn, keys, consumer, p.source.batch).await
            } else {
                let items =
                    source::take(conn, keys, consumer, p.source.batch, p.source.block_ms).await?;
                let counts = source::counts(conn, keys, &items).await?;
                redis::RedisResult::Ok((items, counts))
            }
        };
        let (items, counts) = match read.await {
            Ok(read) => {
                outage.recovered();
                read
            }
            Err(e) => {
                outage.failed(&e, "reading");
                own = true;
                outage.wait(cancel).await;
                continue;
            }
        };
        if items.is_empty() {
            if own {
                recheck = Recheck::default();
            }
            own = false;
            continue;
        }
        if own {
            info!(
                items = items.len(),
                "taking up items this consumer already held (a restart, a lost reply or a failed settle); a delivery is counted for each"
            );
        }
        let batch = source::to_messages(items, counts, &list);
        if !process_batch(s, keys, consumer, &mut chain, batch, conn, cancel).await {
            // Taking them up again at once would spin on a dead-letter
            // stream that refuses writes: later, with a growing delay.
            recheck.schedule();
            own = false;
        }
    }
}

/// When a consumer next takes up the items it could not settle.
struct Recheck {
    at: Option<Instant>,
    delay: Duration,
}

impl Default for Recheck {
    fn default() -> Self {
        Recheck {
            at: None,
            delay: RECHECK_FIRST,
        }
    }
}

impl Recheck {
    /// Whether a scheduled recheck is due (it is then no longer scheduled).
    fn due(&mut self) -> bool {
        let due = self.at.is_some_and(|at| Instant::now() >= at);
        if due {
            self.at = None;
        }
        due
    }

    /// Schedules a recheck, unless one is already scheduled; each one
    /// before the processing list is found empty waits twice as long.
    fn schedule(&mut self) {
        if self.at.is_none() {
            self.at = Some(Instant::now() + self.delay);
            self.delay = (self.delay * 2).min(RECHECK_MAX);
        }
    }
}

/// Processes and settles one batch. False if some of its items could not
/// be settled (their dead letter or the settle itself failed, or the
/// processing thread panicked): they are still in the processing list.
async fn process_batch(
    s: &Shared,
    keys: &Keys,
    consumer: &str,
    chain: &mut Option<Chain>,
    batch: Vec<Message>,
    conn: &mut Conn,
    stop: &CancellationToken,
) -> bool {
    let p = &s.pipeline;
    let max = p.source.max_deliveries;
    let (mut done, mut statuses, fresh) = super::split_unsettled(batch, max);
    if !fresh.is_empty() {
        let Some((fresh, outcomes)) = run_chain(s, chain, fresh).await else {
            return false;
        };
        statuses.extend(ack::deliver(&fresh, outcomes, &s.sinks, max, stop).await);
        done.extend(fresh);
    }
    let sorted = super::sort_statuses(conn, p, p.dead_letter(), &done, &statuses).await;
    let acked: Vec<&[u8]> = sorted.done.iter().map(|m| source::item(m)).collect();
    let again: Vec<&[u8]> = sorted.retry.iter().map(|m| source::item(m)).collect();
    let settled = retry_outage(&p.name, "settling list items", || {
        let (mut c, acked, again) = (conn.clone(), &acked, &again);
        async move { source::settle(&mut c, keys, consumer, acked, again).await }
    })
    .await;
    if let Err(e) = settled {
        error!(
            count = acked.len() + again.len(),
            "cannot settle items: {e}; they stay in the processing list and will be taken up again"
        );
        return false;
    }
    metrics::counter!("sluice_acked_total", "pipeline" => p.name.clone())
        .increment(acked.len() as u64);
    acked.len() + again.len() == done.len()
}

/// Returns the items of consumers whose heartbeat expired to the queue.
async fn reclaim(s: Arc<Shared>, keys: Arc<Keys>, cancel: CancellationToken) {
    let p = &s.pipeline;
    let mut conn = match conn::manager(&s.client, conn::COMMAND_TIMEOUT) {
        Ok(c) => c,
        Err(e) => return error!(pipeline = %p.name, "cannot open a connection: {e}"),
    };
    let every = super::reclaim_interval(p.source.claim_idle_ms);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        match source::take_over_dead(&mut conn, &keys).await {
            Ok(taken) => {
                for (consumer, moved) in taken {
                    warn!(pipeline = %p.name, consumer, items = moved, "consumer gone: its items are back in the queue");
                    metrics::counter!("sluice_reclaimed_total", "pipeline" => p.name.clone())
                        .increment(moved as u64);
                }
            }
            Err(e) => debug!(pipeline = %p.name, "reclaim failed: {e}"),
        }
    }
}
