//! The reclaimer of a stream lane: hands entries idle longer than
//! claim_idle_ms (failed and left for a retry, or held by a consumer that
//! died) to this process's consumers, and removes consumers that died long
//! ago and own nothing.
//!
//! It starts after every consumer has read its own history, so the two
//! never hand out the same entry, and it claims only for a consumer that
//! can take the batch now: claimed work is leased until taken, and taken
//! ahead of new work, so a retry waits about one batch past claim_idle_ms
//! whatever the backlog. If the process dies while a claimed batch waits,
//! the entries stay pending under that consumer and are claimed again.

use super::Shared;
use super::stream::{dead_letter_trimmed, settle_acks, with_lease};
use crate::config::Pipeline;
use crate::conn::Conn;
use crate::conn::{self, Outage};
use crate::message::Message;
use crate::source::stream as source;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Hands entries idle longer than claim_idle_ms (of dead consumers, or
/// failed and left pending) to this process's consumers, claiming only for
/// a consumer that can take the batch now, so reclaimed work waits at most
/// one batch. XAUTOCLAIM counts the delivery, so redeliveries are counted
/// in Redis. Also removes consumers that died long ago and own nothing.
pub(super) async fn run(
    s: Arc<Shared>,
    feeds: Vec<(String, mpsc::Sender<Vec<Message>>)>,
    mut conn: Conn,
    mut histories_read: mpsc::Receiver<()>,
    cancel: CancellationToken,
) {
    let p = &s.pipeline;
    // A consumer's own history and a scan must not hand out the same entry.
    tokio::select! {
        _ = cancel.cancelled() => return,
        _ = histories_read.recv() => {}
    }
    let every = super::reclaim_interval(p.source.claim_idle_ms);
    let remove_after = p.source.remove_consumers_idle_ms;
    let sweep_every = Duration::from_millis((remove_after / 2).clamp(1, 60_000));
    let mut swept = Instant::now();
    let mut next = 0;
    let mut outage = Outage::of(&p.name, &s.redis);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        if remove_after > 0 && swept.elapsed() >= sweep_every {
            swept = Instant::now();
            remove_dead_consumers(&mut conn, p, remove_after).await;
        }
        let mut cursor = "0-0".to_string();
        loop {
            let Some((index, permit)) = free_feed(&feeds, &mut next, &cancel).await else {
                return;
            };
            let (consumer, feed) = &feeds[index];
            let claimed = source::autoclaim(
                &mut conn,
                p.stream(),
                p.group(),
                consumer,
                p.source.claim_idle_ms,
                &cursor,
                p.source.batch,
            )
            .await;
            let (next_cursor, batch) = match claimed {
                Ok(claimed) => {
                    outage.recovered();
                    claimed
                }
                Err(e) => {
                    if conn::is_outage(&e) {
                        outage.failed(&e, "reclaiming");
                    } else if conn::has_code(&e, "NOGROUP") {
                        debug!(pipeline = %p.name, "no group to reclaim from; the consumers recreate it");
                    } else {
                        warn!(pipeline = %p.name, "XAUTOCLAIM failed: {e}");
                    }
                    break;
                }
            };
            // Redis 7 drops deleted entries from the group itself; 6.2 needs the ack.
            if !batch.deleted.is_empty() && dead_letter_trimmed(&conn, p, &batch.deleted).await {
                settle_acks(&mut conn, p, &batch.deleted).await;
            }
            if batch.messages.is_empty() {
                drop(permit);
            } else {
                info!(pipeline = %p.name, to = %consumer, count = batch.messages.len(), "reclaimed idle entries");
                metrics::counter!("sluice_reclaimed_total", "pipeline" => p.name.clone())
                    .increment(batch.messages.len() as u64);
                // Leased until the consumer takes it (the slot is free
                // again), or a reclaimer would claim it again.
                let ids: Vec<String> = batch.messages.iter().map(|m| m.id.clone()).collect();
                permit.send(batch.messages);
                let handed = with_lease(conn.clone(), p, consumer, &ids, async {
                    tokio::select! {
                        _ = cancel.cancelled() => false,
                        taken = feed.reserve() => taken.is_ok(),
                    }
                });
                if !handed.await {
                    return;
                }
            }
            cursor = next_cursor;
            if cursor == "0-0" {
                break;
            }
        }
    }
}

/// A consumer with room for a reclaimed batch, round robin from `next`:
/// the first free one, else the next in turn once it has room. None if
/// cancelled or every consumer is gone.
async fn free_feed<'a>(
    feeds: &'a [(String, mpsc::Sender<Vec<Message>>)],
    next: &mut usize,
    cancel: &CancellationToken,
) -> Option<(usize, mpsc::Permit<'a, Vec<Message>>)> {
    for k in 0..feeds.len() {
        let index = (*next + k) % feeds.len();
        if let Ok(permit) = feeds[index].1.try_reserve() {
            *next = index + 1;
            return Some((index, permit));
        }
    }
    let index = *next % feeds.len();
    *next = index + 1;
    tokio::select! {
        _ = cancel.cancelled() => None,
        permit = feeds[index].1.reserve() => permit.ok().map(|permit| (index, permit)),
    }
}

/// Removes the group's consumers idle past `remove_consumers_idle_ms` that
/// own nothing (what processes that died leave behind).
async fn remove_dead_consumers(conn: &mut Conn, p: &Pipeline, idle_ms: u64) {
    match source::remove_idle_consumers(conn, p.stream(), p.group(), idle_ms, None).await {
        Ok(removed) if !removed.is_empty() => {
            info!(pipeline = %p.name, group = %p.group(), consumers = ?removed, idle_ms, "removed consumers that were idle and owned nothing");
            metrics::counter!("sluice_consumers_removed_total", "pipeline" => p.name.clone())
                .increment(removed.len() as u64);
        }
        Ok(_) => {}
        Err(e) => debug!(pipeline = %p.name, "could not remove idle consumers: {e}"),
    }
}
