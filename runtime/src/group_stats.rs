//! Per consumer group gauges for `/metrics`, polled from Redis every
//! [`POLL_INTERVAL`] while a stream pipeline runs: never per message, so the
//! hot path pays nothing for them.
//!
//! | gauge | from | for |
//! |---|---|---|
//! | `sluice_group_lag` | XINFO GROUPS `lag` | entries not yet read: scale on this |
//! | `sluice_group_lag_unknown` | `lag` is nil | 1 when Redis cannot say (after trims or deletions); `sluice_group_lag` is then NaN, never a false 0 |
//! | `sluice_group_pending` | XINFO GROUPS `pending` | read, not yet acked |
//! | `sluice_group_oldest_pending_age_seconds` | oldest pending id | how long the oldest unsettled entry has existed |
//! | `sluice_group_oldest_pending_idle_seconds` | XPENDING idle | since it was last delivered or its lease renewed: large means no live consumer holds it |
//! | `sluice_dead_letter_length` | XLEN of the dead-letter stream | poison waiting for an operator |
//!
//! A poll that fails (Redis down) leaves the last values in place and is
//! retried on the next tick; the outage itself is reported by the pipeline.

use crate::config::Pipeline;
use crate::conn::Conn;
use crate::message::stream_id_ms;
use redis::Value;
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

/// How often the group gauges are refreshed: often enough for an
/// autoscaler (KEDA polls every 30 s by default), rare enough to cost Redis
/// nothing measurable.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// One group's numbers, as polled.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct GroupStats {
    /// Entries not yet delivered to the group; None when Redis reports nil.
    pub lag: Option<i64>,
    /// Delivered, not acked.
    pub pending: i64,
    /// Ms since the oldest pending entry was added to the stream.
    pub oldest_pending_age_ms: Option<u64>,
    /// Ms since the oldest pending entry was last delivered or leased.
    pub oldest_pending_idle_ms: Option<u64>,
}

/// Polls the groups of stream pipeline `p` until `cancel`.
pub async fn poll(client: crate::conn::Client, p: Pipeline, cancel: CancellationToken) {
    let mut conn: Option<Conn> = None;
    loop {
        if conn.is_none() {
            conn = tokio::select! {
                c = client.connect() => c.ok(),
                _ = cancel.cancelled() => return,
            };
        }
        if let Some(c) = conn.as_mut() {
            let polled = tokio::select! {
                r = poll_once(c, &p) => r,
                _ = cancel.cancelled() => return,
            };
            if let Err(e) = polled {
                tracing::debug!(pipeline = %p.name, "polling group stats failed: {e}");
                conn = None;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL_INTERVAL) => {}
            _ = cancel.cancelled() => return,
        }
    }
}

async fn poll_once(conn: &mut Conn, p: &Pipeline) -> redis::RedisResult<()> {
    let group = p.group();
    let mut dead_letters: Vec<String> = Vec::new();
    for stream in p.streams() {
        let dead = p.dead_letter_for(stream);
        if !dead_letters.contains(&dead) {
            dead_letters.push(dead);
        }
        let Some(stats) = group_stats(conn, stream, group).await? else {
            continue;
        };
        let labels = [
            ("pipeline", p.name.clone()),
            ("stream", stream.clone()),
            ("group", group.to_string()),
        ];
        metrics::gauge!("sluice_group_lag", &labels).set(stats.lag.map_or(f64::NAN, |l| l as f64));
        metrics::gauge!("sluice_group_lag_unknown", &labels).set(if stats.lag.is_none() {
            1.0
        } else {
            0.0
        });
        metrics::gauge!("sluice_group_pending", &labels).set(stats.pending as f64);
        let secs = |ms: Option<u64>| ms.map_or(0.0, |ms| ms as f64 / 1000.0);
        metrics::gauge!("sluice_group_oldest_pending_age_seconds", &labels)
            .set(secs(stats.oldest_pending_age_ms));
        metrics::gauge!("sluice_group_oldest_pending_idle_seconds", &labels)
            .set(secs(stats.oldest_pending_idle_ms));
    }
    for dead in dead_letters {
        let len: i64 = redis::cmd("XLEN").arg(&dead).query_async(conn).await?;
        metrics::gauge!("sluice_dead_letter_length", "pipeline" => p.name.clone(), "stream" => dead)
            .set(len as f64);
    }
    Ok(())
}

/// XINFO GROUPS and the oldest XPENDING entry of `group` on `stream`; None
/// if the stream or the group does not exist (yet).
pub async fn group_stats(
    conn: &mut Conn,
    stream: &str,
    group: &str,
) -> redis::RedisResult<Option<GroupStats>> {
    let groups: Vec<HashMap<String, Value>> = match redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(conn)
        .await
    {
        Ok(groups) => groups,
        // No such key: the stream is created with the group, later.
        Err(e) if crate::conn::has_code(&e, "ERR") => return Ok(None),
        Err(e) => return Err(e),
    };
    let Some(g) = groups
        .iter()
        .find(|g| matches!(g.get("name"), Some(Value::BulkString(b)) if b == group.as_bytes()))
    else {
        return Ok(None);
    };
    // Extended form, first entry: the oldest pending id with its idle time.
    let oldest: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .arg("-")
        .arg("+")
        .arg(1)
        .query_async(conn)
        .await?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    Ok(Some(GroupStats {
        lag: int(g.get("lag")),
        pending: int(g.get("pending")).unwrap_or(0),
        oldest_pending_age_ms: oldest
            .first()
            .map(|(id, ..)| now.saturating_sub(stream_id_ms(id))),
        oldest_pending_idle_ms: oldest.first().map(|(_, _, idle, _)| *idle),
    }))
}

fn int(v: Option<&Value>) -> Option<i64> {
    match v {
        Some(Value::Int(i)) => Some(*i),
        Some(Value::BulkString(b)) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}
