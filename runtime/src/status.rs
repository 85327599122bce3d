//! `sluice status`: every consumer group of every stream on a Redis, with
//! what operators ask for: lag, pending, the age of the oldest pending
//! entry, consumers and their idle time, and the dead-letter backlog.

use crate::message::stream_id_ms;
use anyhow::Result;
use redis::Value;
use redis::aio::MultiplexedConnection;
use std::collections::HashMap;
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

/// One consumer group, as reported.
#[derive(Debug, Default)]
pub struct GroupStatus {
    /// Stream key.
    pub stream: String,
    /// Group name.
    pub group: String,
    /// Entries not yet delivered to the group (Redis 7 `lag`; None if unknown).
    pub lag: Option<i64>,
    /// Delivered but not acked.
    pub pending: i64,
    /// Age of the oldest pending entry, from its id, in ms.
    pub oldest_pending_ms: Option<u64>,
    /// Consumers, with how long each has been idle (ms).
    pub consumers: Vec<(String, i64)>,
    /// Length of `<stream>:dead`, if it exists.
    pub dead_letters: Option<i64>,
}

/// Collects the status of every group on every stream.
pub async fn collect(conn: &mut MultiplexedConnection) -> Result<Vec<GroupStatus>> {
    let mut streams: Vec<String> = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("TYPE")
            .arg("stream")
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await?;
        streams.extend(keys);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    streams.sort();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let mut out = Vec::new();
    for stream in &streams {
        let groups: Vec<HashMap<String, Value>> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(stream)
            .query_async(conn)
            .await?;
        for g in groups {
            let group = text(g.get("name"));
            let consumers: Vec<HashMap<String, Value>> = redis::cmd("XINFO")
                .arg("CONSUMERS")
                .arg(stream)
                .arg(&group)
                .query_async(conn)
                .await?;
            let (pending, oldest): (i64, Option<String>) = {
                let summary: Value = redis::cmd("XPENDING")
                    .arg(stream)
                    .arg(&group)
                    .query_async(conn)
                    .await?;
                match summary {
                    Value::Array(parts) if parts.len() >= 2 => (
                        int(parts.first()).unwrap_or(0),
                        Some(text(parts.get(1))).filter(|s| !s.is_empty()),
                    ),
                    _ => (0, None),
                }
            };
            let dead = format!("{stream}:dead");
            let dead_letters = if streams.contains(&dead) {
                Some(redis::cmd("XLEN").arg(&dead).query_async(conn).await?)
            } else {
                None
            };
            out.push(GroupStatus {
                stream: stream.clone(),
                lag: int(g.get("lag")),
                pending,
                oldest_pending_ms: oldest.map(|id| now.saturating_sub(stream_id_ms(&id))),
                consumers: consumers
                    .iter()
                    .map(|c| (text(c.get("name")), int(c.get("idle")).unwrap_or(0)))
                    .collect(),
                dead_letters,
                group,
            });
        }
    }
    Ok(out)
}

/// Prints `groups` as a table.
pub fn print(groups: &[GroupStatus], out: &mut impl Write) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<28} {:<20} {:>8} {:>8} {:>12} {:>9} {:>12}",
        "STREAM", "GROUP", "LAG", "PENDING", "OLDEST", "CONSUMERS", "DEAD"
    )?;
    for g in groups {
        let opt = |v: Option<i64>| v.map_or("-".to_string(), |v| v.to_string());
        let oldest = g
            .oldest_pending_ms
            .map_or("-".to_string(), |ms| format!("{:.1}s", ms as f64 / 1000.0));
        writeln!(
            out,
            "{:<28} {:<20} {:>8} {:>8} {:>12} {:>9} {:>12}",
            g.stream,
            g.group,
            opt(g.lag),
            g.pending,
            oldest,
            g.consumers.len(),
            opt(g.dead_letters)
        )?;
        for (name, idle) in &g.consumers {
            writeln!(
                out,
                "    consumer {name}  idle {:.1}s",
                *idle as f64 / 1000.0
            )?;
        }
    }
    Ok(())
}

fn text(v: Option<&Value>) -> String {
    match v {
        Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        Some(Value::SimpleString(s)) => s.clone(),
        _ => String::new(),
    }
}

fn int(v: Option<&Value>) -> Option<i64> {
    match v {
        Some(Value::Int(i)) => Some(*i),
        Some(Value::BulkString(b)) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}
