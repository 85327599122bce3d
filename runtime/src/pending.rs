//! `sluice pending`: inspect a group's pending entries, and ack or claim
//! them by hand (for an operator untangling a stuck group).

use crate::conn::Conn;
use anyhow::Result;
use std::io::Write;

/// One pending entry: id, the consumer holding it, idle ms, deliveries.
pub type Entry = (String, String, u64, u32);

/// Pending entries of `group` on `stream` idle at least `older_than_ms`, oldest first.
pub async fn list(
    conn: &mut Conn,
    stream: &str,
    group: &str,
    older_than_ms: u64,
    count: usize,
) -> Result<Vec<Entry>> {
    let reply = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .arg("IDLE")
        .arg(older_than_ms)
        .arg("-")
        .arg("+")
        .arg(count)
        .query_async(conn)
        .await;
    match reply {
        Err(e) if e.code() == Some("NOGROUP") => Err(no_group(conn, stream, group).await),
        other => Ok(other?),
    }
}

/// Says what is there instead of a group that is not: the stream's groups,
/// or that the stream itself is missing.
async fn no_group(conn: &mut Conn, stream: &str, group: &str) -> anyhow::Error {
    let groups: redis::RedisResult<Vec<std::collections::HashMap<String, redis::Value>>> =
        redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(stream)
            .query_async(conn)
            .await;
    let names: Vec<String> = groups
        .unwrap_or_default()
        .iter()
        .filter_map(|g| match g.get("name") {
            Some(redis::Value::BulkString(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            Some(redis::Value::SimpleString(s)) => Some(s.clone()),
            _ => None,
        })
        .collect();
    let exists: bool = redis::cmd("EXISTS")
        .arg(stream)
        .query_async(conn)
        .await
        .unwrap_or(true);
    if !exists {
        anyhow::anyhow!("no stream `{stream}` (so no consumer group `{group}` on it)")
    } else if names.is_empty() {
        anyhow::anyhow!("stream `{stream}` has no consumer groups (asked for `{group}`)")
    } else {
        anyhow::anyhow!(
            "no consumer group `{group}` on stream `{stream}`; its groups: {}",
            names.join(", ")
        )
    }
}

/// Prints entries as a table.
pub fn print(entries: &[Entry], out: &mut impl Write) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<24} {:<32} {:>10} {:>10}",
        "ID", "CONSUMER", "IDLE", "DELIVERIES"
    )?;
    for (id, consumer, idle, deliveries) in entries {
        writeln!(
            out,
            "{id:<24} {consumer:<32} {:>9.1}s {deliveries:>10}",
            *idle as f64 / 1000.0
        )?;
    }
    Ok(())
}

/// Acks `entries` (they will not be delivered again). Returns how many were pending.
pub async fn ack(conn: &mut Conn, stream: &str, group: &str, entries: &[Entry]) -> Result<i64> {
    let progress = crate::progress::Progress::new(entries.len() as u64, "acking");
    let mut acked = 0;
    for chunk in entries.chunks(CHUNK) {
        let ids: Vec<&str> = chunk.iter().map(|e| e.0.as_str()).collect();
        acked += redis::cmd("XACK")
            .arg(stream)
            .arg(group)
            .arg(ids)
            .query_async::<i64>(conn)
            .await?;
        progress.advance(chunk.len() as u64);
    }
    Ok(acked)
}

/// Ids per XACK or XCLAIM: many entries go in several commands, so none
/// blocks Redis for long and progress can be shown.
const CHUNK: usize = 1000;

/// Gives `entries` to `consumer` (e.g. a live one), if still idle at least
/// `min_idle_ms`. Returns how many moved.
pub async fn claim(
    conn: &mut Conn,
    stream: &str,
    group: &str,
    consumer: &str,
    min_idle_ms: u64,
    entries: &[Entry],
) -> Result<usize> {
    let progress = crate::progress::Progress::new(entries.len() as u64, "claiming");
    let mut moved = 0;
    for chunk in entries.chunks(CHUNK) {
        let ids: Vec<&str> = chunk.iter().map(|e| e.0.as_str()).collect();
        let claimed: Vec<String> = redis::cmd("XCLAIM")
            .arg(stream)
            .arg(group)
            .arg(consumer)
            .arg(min_idle_ms)
            .arg(ids)
            .arg("JUSTID")
            .query_async(conn)
            .await?;
        moved += claimed.len();
        progress.advance(chunk.len() as u64);
    }
    Ok(moved)
}
