//! List sources: a list as a reliable queue (see [`crate::source::list`]).
//!
//! Each consumer claims a name, keeps a heartbeat, finishes the items it
//! already holds, then moves new items into its processing list in
//! batches. Settled items leave the processing list; failed ones go back to
//! the queue with a delivery counted; a reclaimer returns the items of
//! consumers whose heartbeat expired.

use super::{Shared, retry_outage, run_chain};
use crate::ack;
use crate::conn::{self, Outage};
use crate::message::Message;
use crate::plugin::Chain;
use crate::source::list::{self as source, Keys};
use anyhow::Result;
use redis::aio::ConnectionManager;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, error, info, warn};

pub(super) async fn run(s: Arc<Shared>, cancel: CancellationToken) -> Result<()> {
    let p = &s.pipeline;
    let keys = Arc::new(Keys::new(p.source.list.as_deref().unwrap_or_default()));
    info!(pipeline = %p.name, list = %keys.list, consumers = p.source.consumers, "pipeline started");
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
    let mut outage = Outage::new(&p.name);
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
    let span = tracing::info_span!("consumer", pipeline = %p.name, consumer = %consumer);
    let beat = tokio::spawn(
        heartbeat(conn.clone(), keys.clone(), consumer.clone(), ttl).instrument(span.clone()),
    );
    work(&s, &keys, &consumer, &mut conn, &cancel)
        .instrument(span)
        .await;
    beat.abort();
    match source::leave(&mut conn, &keys, &consumer).await {
        Ok(true) => debug!(consumer, "consumer left"),
        Ok(false) => info!(
            consumer,
            "consumer stopped holding items; a restart on this host or the reclaimer takes them"
        ),
        Err(e) => debug!(consumer, "could not leave: {e}"),
    }
}

/// Keeps the consumer's heartbeat alive, at a third of its lifetime.
async fn heartbeat(mut conn: ConnectionManager, keys: Arc<Keys>, consumer: String, ttl_ms: u64) {
    loop {
        tokio::time::sleep(Duration::from_millis(ttl_ms / 3)).await;
        if let Err(e) = source::heartbeat(&mut conn, &keys, &consumer, ttl_ms).await {
            debug!("heartbeat failed: {e}");
        }
    }
}

async fn work(
    s: &Shared,
    keys: &Keys,
    consumer: &str,
    conn: &mut ConnectionManager,
    cancel: &CancellationToken,
) {
    let p = &s.pipeline;
    let list: Arc<str> = keys.list.as_str().into();
    let mut chain = Some(Chain::new(&s.stages));
    let mut outage = Outage::new(&p.name);
    // Items held from before (a restart or a lost reply) come first.
    let mut own = true;
    while !cancel.is_cancelled() {
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
        process_batch(s, keys, consumer, &mut chain, batch, conn, cancel).await;
    }
}

async fn process_batch(
    s: &Shared,
    keys: &Keys,
    consumer: &str,
    chain: &mut Option<Chain>,
    batch: Vec<Message>,
    conn: &mut ConnectionManager,
    stop: &CancellationToken,
) {
    let p = &s.pipeline;
    let max = p.source.max_deliveries;
    let (mut done, mut statuses, fresh) = super::split_unsettled(batch, max);
    if !fresh.is_empty() {
        let Some((fresh, outcomes)) = run_chain(s, chain, fresh).await else {
            return;
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
            "cannot settle items: {e}; they stay in the processing list and will be redelivered"
        );
    }
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
