//! Stream sources: a consumer group per stream, N consumers each, and a
//! reclaimer that hands dead or failed work back to the consumers.
//!
//! ```text
//! XREADGROUP (own pending, then >) ─┐
//! reclaimer: XAUTOCLAIM ──── feed ──┴─> consumer: Chain::process (blocking thread)
//!     -> ack::deliver (pipelined writes per sink) -> dead letters -> XACK
//!     (leases renewed with XCLAIM JUSTID while the batch is alive)
//! ```
//!
//! Under load a consumer costs two round trips per batch, as a hand-written
//! loop does: `[XACK previous, XREADGROUP]` by the reader, which reads one
//! batch ahead, and the sink's pipelined writes.
//!
//! Where each entry's state lives, and who may act on it:
//!
//! - *read*: returned by XREADGROUP (or XAUTOCLAIM) to one consumer; from
//!   then on it is leased (idle time reset every claim_idle_ms / 3, only
//!   while this consumer still owns it) until its batch is settled.
//! - *in flight*: being processed and written by that consumer.
//! - *settled*: acked (delivered, dropped, dead-lettered), or left pending
//!   for a retry: then nobody here touches it until it has been idle for
//!   claim_idle_ms and the reclaimer hands it out again, counted.
//!
//! History (a consumer's own pending entries) is read once, when the
//! consumer starts and before the reclaimer's first scan, so the two never
//! hand out the same entry. A connection blip never triggers a re-read:
//! entries whose reply was lost go through the reclaimer like any idle
//! work. Failure points: a crash after the write and before the XACK
//! redelivers the message (at-least-once; `atomic = true` commits both in
//! one script); a crash before the write redelivers it after claim_idle_ms;
//! a group that vanishes (Redis restarted empty) is recreated at `0`, so
//! nothing then in the stream is skipped.
//!
//! A pipeline reading `streams = [...]` runs one *lane* per stream: the
//! pipeline narrowed to that stream (its `stream` and `dead_letter` name
//! it), sharing the stages and sinks. Separate reads per stream also keep
//! keys in different cluster slots apart (one XREADGROUP over several keys
//! fails with CROSSSLOT).

use super::{Shared, count, log_status, retry_outage, run_chain};
use crate::ack::{self, Routed, Status};
use crate::atomic;
use crate::config::Pipeline;
use crate::conn::Conn;
use crate::conn::{self, Outage};
use crate::message::{Failure, FailureClass, Message, Record, stream_id_ms};
use crate::plugin::Chain;
use crate::source::stream::{self as source, Batch, StreamReader};
use anyhow::Result;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, error, info, warn};

/// Runs every lane until `cancel`, then lets every consumer finish its batch.
pub(super) async fn run(s: Arc<Shared>, cancel: CancellationToken) -> Result<()> {
    let tracker = TaskTracker::new();
    for stream in s.pipeline.streams() {
        let mut lane = s.pipeline.clone();
        lane.source.dead_letter = Some(s.pipeline.dead_letter_for(stream));
        lane.source.stream = Some(stream.clone());
        let lane = Arc::new(Shared {
            pipeline: lane,
            ..Shared::clone(&s)
        });
        tracker.spawn(run_lane(lane, cancel.clone()));
    }
    tracker.close();
    tracker.wait().await;
    Ok(())
}

async fn run_lane(s: Arc<Shared>, cancel: CancellationToken) {
    let p = &s.pipeline;
    let mut conn = match conn::manager(&s.client, conn::COMMAND_TIMEOUT) {
        Ok(c) => c,
        Err(e) => return error!(pipeline = %p.name, "cannot open a connection: {e}"),
    };
    wait_for_group(&mut conn, &s, &p.source.start, &cancel).await;
    info!(
        pipeline = %p.name,
        stream = %p.stream(),
        group = %p.group(),
        consumers = p.source.consumers,
        redis = %s.redis,
        "pipeline started"
    );
    let tracker = TaskTracker::new();
    let mut feeds = Vec::new();
    // Dropped by each reader once it has read its own history: the
    // reclaimer waits for all of them.
    let (history, histories_read) = mpsc::channel::<()>(1);
    for index in 0..p.source.consumers {
        let consumer = super::consumer_name(index);
        // One batch of reclaimed work waits per consumer; more waits in Redis.
        let (feed, reclaimed) = mpsc::channel(1);
        feeds.push((consumer.clone(), feed));
        // Error level: the span, and the pipeline it names, outlives any RUST_LOG level.
        let span = tracing::error_span!("consumer", pipeline = %p.name, consumer = %consumer);
        tracker.spawn(
            consume(
                s.clone(),
                consumer,
                reclaimed,
                history.clone(),
                cancel.clone(),
            )
            .instrument(span),
        );
    }
    drop(history);
    tracker.spawn(super::reclaim::run(
        s.clone(),
        feeds,
        conn,
        histories_read,
        cancel.clone(),
    ));
    tracker.close();
    tracker.wait().await;
}

/// Creates the consumer group at `start`, waiting out an unreachable Redis.
/// True if this call created it (false: it existed, or cancelled).
async fn wait_for_group(
    conn: &mut Conn,
    s: &Shared,
    start: &str,
    cancel: &CancellationToken,
) -> bool {
    let p = &s.pipeline;
    let mut outage = Outage::of(&p.name, &s.redis);
    let mut missing = None;
    loop {
        match source::ensure_group(conn, p.stream(), p.group(), start).await {
            Ok(created) => {
                outage.recovered();
                if created {
                    info!(pipeline = %p.name, stream = %p.stream(), group = %p.group(), start = %start, "consumer group created");
                }
                return created;
            }
            Err(e) => {
                if conn::is_outage(&e) {
                    outage.failed(&e, "creating the consumer group");
                } else {
                    error!(pipeline = %p.name, redis = %s.redis, "cannot create group {} on {}: {e}", p.group(), p.stream());
                    let detail =
                        format!("cannot create group {} on {}: {e}", p.group(), p.stream());
                    missing.get_or_insert_with(|| {
                        crate::readiness::block(
                            &p.name,
                            crate::readiness::Reason::GroupMissing,
                            detail,
                        )
                    });
                }
                if !outage.wait(cancel).await {
                    return false;
                }
            }
        }
    }
}

/// The group vanished under a running pipeline (Redis restarted empty or
/// lost its data, or someone deleted the group): recreate it at `0`, not at
/// `start`, so entries producers added since are not skipped. What was
/// pending in the old group is gone with it.
async fn recreate_group(conn: &mut Conn, s: &Shared, cancel: &CancellationToken) {
    let p = &s.pipeline;
    if wait_for_group(conn, s, "0", cancel).await {
        error!(
            pipeline = %p.name,
            stream = %p.stream(),
            group = %p.group(),
            redis = %s.redis,
            "consumer group was gone (Redis restarted empty, lost its data, or the group was deleted); \
             recreated it at 0: every entry now in the stream is processed, and whatever was pending \
             in the old group was lost with it"
        );
        metrics::counter!("sluice_groups_recreated_total", "pipeline" => p.name.clone())
            .increment(1);
    }
}

async fn consume(
    s: Arc<Shared>,
    consumer: String,
    mut reclaimed: mpsc::Receiver<Vec<Message>>,
    history: mpsc::Sender<()>,
    cancel: CancellationToken,
) {
    let p = &s.pipeline;
    // Two connections: a blocking read holds its connection for up to
    // block_ms, and the next batch is read while this one is settled.
    let read_timeout = Duration::from_millis(p.source.block_ms) + conn::COMMAND_TIMEOUT;
    let (read_conn, mut conn) = match (
        conn::manager(&s.client, read_timeout),
        conn::manager(&s.client, conn::COMMAND_TIMEOUT),
    ) {
        (Ok(r), Ok(c)) => (r, c),
        (Err(e), _) | (_, Err(e)) => return error!("cannot open a connection: {e}"),
    };
    // One batch is read ahead while the current one is processed.
    let (ahead_tx, mut ahead) = mpsc::channel(1);
    let acks = Acks::default();
    let reader = tokio::spawn(
        read_ahead(
            s.clone(),
            consumer.clone(),
            read_conn,
            ahead_tx,
            acks.clone(),
            history,
            cancel.clone(),
        )
        .instrument(tracing::Span::current()),
    );
    let mut chain = Some(Chain::new(&s.stages));
    debug!("consumer started");
    // Set when the acks of the last batch were left to the reader: the
    // batch it read ahead is taken next, which sends it on to its next read.
    let mut take_ahead = false;
    loop {
        // Reclaimed work first, even under a backlog that always has a
        // batch read ahead: it has waited longest, and retries must not
        // starve behind new work.
        let ready = if cancel.is_cancelled() {
            None
        } else {
            reclaimed.try_recv().ok()
        };
        let batch = if let Some(batch) = ready {
            // Acks left for the reader would wait a batch longer, unleased.
            settle_acks(&mut conn, p, &acks.take()).await;
            Some(batch)
        } else if take_ahead {
            ahead.recv().await
        } else {
            tokio::select! {
                // Reclaimed work first: it has waited longest.
                biased;
                Some(batch) = reclaimed.recv(), if !cancel.is_cancelled() => Some(batch),
                batch = ahead.recv() => batch,
            }
        };
        let Some(batch) = batch else {
            break; // the reader stopped and everything it read is done
        };
        let done = process_batch(&s, &consumer, &mut chain, batch, &mut conn, &cancel).await;
        // Under load the next batch is already waiting and the reader is
        // parked until it is taken: its next XREADGROUP carries these acks,
        // saving a round trip per batch. Otherwise ack now.
        take_ahead = !done.is_empty() && !ahead.is_empty();
        if take_ahead {
            acks.add(done);
        } else {
            settle_acks(&mut conn, p, &done).await;
        }
    }
    if let Err(e) = reader.await {
        error!("reader task failed: {e}");
    }
    // The reader sends what it was given before it stops; this is a backstop.
    settle_acks(&mut conn, p, &acks.take()).await;
    // Reclaimed work handed to us but not started stays pending under our
    // name; the reclaimer of a live process takes it after claim_idle_ms.
    reclaimed.close();
    match source::remove_if_idle(&mut conn, p.stream(), p.group(), &consumer).await {
        Ok(true) => debug!("consumer left the group"),
        Ok(false) => info!("consumer stopped with entries pending; they will be reclaimed"),
        Err(e) => debug!("could not remove the consumer from the group: {e}"),
    }
}

/// Ids whose outputs are written, waiting to be acked with the reader's
/// next XREADGROUP.
#[derive(Clone, Default)]
struct Acks(Arc<std::sync::Mutex<Vec<String>>>);

impl Acks {
    fn add(&self, ids: Vec<String>) {
        let mut queue = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if queue.is_empty() {
            *queue = ids;
        } else {
            queue.extend(ids);
        }
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Reads batches for `consumer` until `cancel`, handing each to the
/// consumer through `ahead`, and acks what the consumer leaves it with
/// each read. A batch waiting there is leased like one
/// being processed, so however slow the current batch, the next is never
/// idle long enough to be reclaimed. `history` is dropped once the
/// consumer's own pending entries are read.
///
/// The read is not raced against `cancel`: a dropped XREADGROUP may have
/// moved entries into this consumer's pending list already. The read
/// returns within block_ms, which bounds shutdown instead.
async fn read_ahead(
    s: Arc<Shared>,
    consumer: String,
    mut conn: Conn,
    ahead: mpsc::Sender<Vec<Message>>,
    acks: Acks,
    history: mpsc::Sender<()>,
    cancel: CancellationToken,
) {
    let p = &s.pipeline;
    let read_timeout = Duration::from_millis(p.source.block_ms) + conn::COMMAND_TIMEOUT;
    let mut reader = StreamReader::new(
        conn.clone(),
        p.stream(),
        p.group(),
        &consumer,
        p.source.batch,
        p.source.block_ms,
    )
    .with_session(crate::resp::Session::new(&s.client, read_timeout));
    let mut history = Some(history);
    let mut outage = Outage::of(&p.name, &s.redis);
    while !cancel.is_cancelled() {
        if !reader.in_history() {
            history.take();
        }
        let done = acks.take();
        let Batch {
            messages, deleted, ..
        } = match reader.read(&done).await {
            Ok(batch) => {
                outage.recovered();
                batch
            }
            Err(e) if conn::has_code(&e, "NOGROUP") => {
                // The acks went with the group: there is nothing left to ack.
                reader.forget_history();
                recreate_group(&mut conn, &s, &cancel).await;
                continue;
            }
            Err(e) => {
                // Sent again with the next read (XACK is idempotent). No
                // re-read of history: what was in flight still is, and
                // entries whose reply was lost are reclaimed, counted once.
                acks.add(done);
                outage.failed(&e, "reading");
                outage.wait(&cancel).await;
                continue;
            }
        };
        if !deleted.is_empty() && dead_letter_trimmed(&conn, p, &deleted).await {
            settle_acks(&mut conn, p, &deleted).await;
        }
        if !messages.is_empty() {
            let ids: Vec<String> = messages.iter().map(|m| m.id.clone()).collect();
            let handed = with_lease(conn.clone(), p, &consumer, &ids, async {
                // `send` returns once the batch is buffered; the lease must
                // last until the consumer takes it, i.e. the slot is free
                // again. Both fail only if the consumer is gone; then the
                // entries stay pending under our name for a reclaimer.
                if ahead.send(messages).await.is_ok() {
                    let _ = ahead.reserve().await;
                }
            });
            handed.await;
        }
    }
    // Acks left for a read that will not come.
    settle_acks(&mut conn, p, &acks.take()).await;
}

/// Pending entries whose data is gone (trimmed by a producer's MAXLEN, or
/// deleted) before they were settled: logged with their ids, counted, and
/// a dead letter written for each saying so. True once written: only then
/// may they be acked.
pub(super) async fn dead_letter_trimmed(conn: &Conn, p: &Pipeline, ids: &[String]) -> bool {
    warn!(
        pipeline = %p.name,
        stream = %p.stream(),
        ids = ?ids,
        dead_letter = %p.dead_letter(),
        "pending entries are no longer in the stream (trimmed or deleted) before they were processed; \
         their data is gone: writing a dead letter for each"
    );
    metrics::counter!("sluice_trimmed_total", "pipeline" => p.name.clone())
        .increment(ids.len() as u64);
    let failure = Failure::dead_letter(
        FailureClass::Trimmed,
        "the entry is no longer in the stream (trimmed by MAXLEN, or deleted) while it was pending: its data is gone",
    );
    let gone: Vec<Message> = ids
        .iter()
        .map(|id| Message {
            id: id.clone(),
            source: p.stream().into(),
            fields: Vec::new(),
            deliveries: 1,
            first_delivery_ms: stream_id_ms(id),
        })
        .collect();
    let rejected: Vec<(&Message, &Failure)> = gone.iter().map(|m| (m, &failure)).collect();
    match super::write_dead_letters(conn, p, p.dead_letter(), &rejected).await {
        Ok(()) => true,
        Err(e) => {
            error!(pipeline = %p.name, count = ids.len(), "cannot write dead letters for trimmed entries: {e}");
            false
        }
    }
}

/// Runs the chain, writes the records and dead letters, holding the
/// batch's leases all the while. Returns the ids to ack: delivered,
/// dropped and dead-lettered (none in atomic mode, which acks in its commit).
async fn process_batch(
    s: &Shared,
    consumer: &str,
    chain: &mut Option<Chain>,
    batch: Vec<Message>,
    conn: &mut Conn,
    stop: &CancellationToken,
) -> Vec<String> {
    let p = &s.pipeline;
    let ids: Vec<String> = batch.iter().map(|m| m.id.clone()).collect();
    let lease_conn = conn.clone();
    let work = async {
        let max = p.source.max_deliveries;
        let (mut done, mut statuses, fresh) = super::split_unsettled(batch, max);
        if fresh.is_empty() {
            return settle(s, conn, &done, &statuses).await;
        }
        let Some((fresh, outcomes)) = run_chain(s, chain, fresh).await else {
            return Vec::new();
        };
        if !p.atomic {
            statuses.extend(ack::deliver(&fresh, outcomes, &s.sinks, max, stop).await);
            done.extend(fresh);
            return settle(s, conn, &done, &statuses).await;
        }
        let mut routed = Routed::new(outcomes, &s.sinks);
        let per_sink = std::mem::take(&mut routed.per_sink);
        let mut records: Vec<Vec<(usize, &Record)>> = vec![Vec::new(); done.len()];
        records.extend(atomic::records_by_message(&per_sink, fresh.len()));
        for (i, recs) in records.iter().skip(done.len()).enumerate() {
            if recs.iter().any(|(_, r)| r.fields.is_empty()) {
                routed.fail(
                    i,
                    Failure::retry(
                        FailureClass::Sink,
                        "a record with no fields cannot be written to a stream",
                    ),
                );
            }
        }
        statuses.extend(routed.statuses(&fresh, max));
        done.extend(fresh);
        settle_atomic(s, conn, consumer, &done, &statuses, &records, true).await;
        Vec::new()
    };
    let started = Instant::now();
    let done = with_lease(lease_conn, p, consumer, &ids, work).await;
    metrics::histogram!("sluice_batch_seconds", "pipeline" => p.name.clone())
        .record(started.elapsed().as_secs_f64());
    done
}

/// Runs `work` while renewing the lease on `ids` (see
/// [`source::renew_lease`]: only those this consumer still owns) every third
/// of claim_idle_ms, so no reclaimer takes work that is still alive,
/// however slow.
pub(super) async fn with_lease<T>(
    mut conn: Conn,
    p: &Pipeline,
    consumer: &str,
    ids: &[String],
    work: impl Future<Output = T>,
) -> T {
    let every = Duration::from_millis((p.source.claim_idle_ms / 3).max(10));
    let renew = async {
        loop {
            tokio::time::sleep(every).await;
            match source::renew_lease(&mut conn, p.stream(), p.group(), consumer, ids).await {
                Ok(held) if held < ids.len() => {
                    debug!(
                        lost = ids.len() - held,
                        "entries of this batch were claimed by another consumer; their lease stays with it"
                    )
                }
                Ok(_) => {}
                Err(e) => debug!("lease renewal failed: {e}"),
            }
        }
    };
    tokio::select! {
        out = work => out,
        () = renew => unreachable!("lease renewal loops until the work ends"),
    }
}

/// Atomic mode: outputs, dead letters and XACK of the whole batch in one
/// script (see [`atomic`]). Errored messages are left pending.
async fn settle_atomic(
    s: &Shared,
    conn: &mut Conn,
    consumer: &str,
    batch: &[Message],
    statuses: &[Status],
    records: &[Vec<(usize, &Record)>],
    retry_refused: bool,
) {
    let p = &s.pipeline;
    let dead: Vec<Option<Vec<crate::message::Field>>> = batch
        .iter()
        .zip(statuses)
        .map(|(msg, status)| match status {
            Status::Rejected(f) => Some(ack::dead_letter_fields(msg, f, p.group(), &p.name)),
            _ => None,
        })
        .collect();
    let mut entries = Vec::with_capacity(batch.len());
    for (i, (msg, status)) in batch.iter().zip(statuses).enumerate() {
        log_status(p.dead_letter(), msg, status);
        let writes = match (status, &dead[i]) {
            (Status::Errored(_), _) => continue,
            (Status::Rejected(_), Some(fields)) => vec![atomic::Write {
                stream: p.dead_letter(),
                maxlen: None,
                fields,
            }],
            (Status::Delivered, _) => records[i]
                .iter()
                .map(|(sink, r)| {
                    // Validation allows `atomic = true` only with stream sinks.
                    let crate::sink::Sink::Stream(sink) = &s.sinks.sinks[*sink] else {
                        unreachable!("an atomic pipeline has only stream sinks (validated)")
                    };
                    atomic::Write {
                        stream: sink.stream(),
                        maxlen: sink.maxlen(),
                        fields: &r.fields,
                    }
                })
                .collect(),
            _ => Vec::new(),
        };
        entries.push(atomic::Entry {
            id: &msg.id,
            writes,
        });
    }
    let committed = retry_outage(&p.name, "committing", || {
        let mut c = conn.clone();
        let entries = &entries;
        async move { atomic::commit(&mut c, p.stream(), p.group(), consumer, entries).await }
    })
    .await;
    match committed {
        Ok(results) => {
            count(p, statuses);
            let mut acked = Vec::with_capacity(entries.len());
            for (entry, result) in entries.iter().zip(results) {
                match result {
                    atomic::Committed::Skipped(why) => {
                        debug!(id = %entry.id, "not committed: {why}")
                    }
                    atomic::Committed::Done => acked.push(entry.id),
                }
            }
            super::count_acked(p, acked.into_iter());
        }
        Err(e) if conn::is_outage(&e) || !retry_refused => {
            error!(
                count = entries.len(),
                "atomic commit failed, nothing written: {e}; the batch stays pending"
            )
        }
        Err(e) => {
            // A destination refused the commit (e.g. a sink key of the wrong
            // type): the written messages failed at the sink. Commit what can
            // be (dead letters, drops) without them.
            warn!(count = entries.len(), "atomic commit refused: {e}");
            let failure = Failure::retry(FailureClass::Sink, format!("atomic commit refused: {e}"));
            let statuses: Vec<Status> = batch
                .iter()
                .zip(statuses)
                .map(|(msg, status)| match status {
                    Status::Delivered => {
                        ack::classify(msg, failure.clone(), p.source.max_deliveries)
                    }
                    other => other.clone(),
                })
                .collect();
            Box::pin(settle_atomic(
                s, conn, consumer, batch, &statuses, records, false,
            ))
            .await;
        }
    }
}

/// Dead-letters the rejected; returns the ids to ack: the delivered,
/// dropped and dead-lettered. Errored messages are logged and left pending.
async fn settle(
    s: &Shared,
    conn: &mut Conn,
    batch: &[Message],
    statuses: &[Status],
) -> Vec<String> {
    let p = &s.pipeline;
    let sorted = super::sort_statuses(conn, p, p.dead_letter(), batch, statuses).await;
    // Failed entries stay pending: the reclaimer delivers them again.
    sorted.done.iter().map(|m| m.id.clone()).collect()
}

/// Acks `ids` in one XACK, retrying through an outage.
pub(super) async fn settle_acks(conn: &mut Conn, p: &Pipeline, ids: &[String]) {
    let acked = retry_outage(&p.name, "acking", || {
        let mut c = conn.clone();
        async move { source::ack(&mut c, p.stream(), p.group(), ids).await }
    })
    .await;
    match acked {
        Ok(()) => super::count_acked(p, ids.iter().map(String::as_str)),
        Err(e) if conn::has_code(&e, "NOGROUP") => {
            warn!(
                count = ids.len(),
                "cannot ack: the consumer group is gone; it is recreated"
            );
        }
        Err(e) => {
            // Written but not acked: the entries will be delivered again (at-least-once).
            error!(
                count = ids.len(),
                "cannot ack: {e}; these entries will be redelivered"
            );
        }
    }
}
