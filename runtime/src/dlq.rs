//! `sluice dlq`: inspect, replay and purge dead-letter streams.
//!
//! A dead-letter entry holds what happened in fields prefixed `sluice.`
//! (see [`crate::ack::dead_letter_fields`]) followed by the original fields,
//! so a replay restores the message exactly as it was first written.

use crate::ack::DEAD_LETTER_PREFIX;
use crate::message::{Field, Message};
use crate::source::stream::parse_range;
use anyhow::{Context, Result};
use redis::aio::MultiplexedConnection;
use std::io::Write;

/// Entries read per round trip.
const CHUNK: usize = 500;

/// Prints up to `count` dead letters of `stream`, oldest first.
pub async fn list(
    conn: &mut MultiplexedConnection,
    stream: &str,
    count: usize,
    out: &mut impl Write,
) -> Result<usize> {
    let entries = range(conn, stream, "-", "+", count).await?;
    for entry in &entries {
        let meta = |k: &str| meta(entry, k);
        writeln!(
            out,
            "{}  from {} {}  pipeline={} deliveries={}  {}: {}",
            entry.id,
            meta("stream"),
            meta("id"),
            meta("pipeline"),
            meta("deliveries"),
            meta("error_class"),
            meta("error")
        )?;
        for (name, value) in original_fields(entry) {
            writeln!(out, "    {name} = {}", String::from_utf8_lossy(value))?;
        }
    }
    Ok(entries.len())
}

/// Re-adds dead letters to their source stream (or `to`) with their original
/// fields, and removes each from the dead-letter stream only once its
/// re-add succeeded. `ids` limits the replay to those entries.
pub async fn replay(
    conn: &mut MultiplexedConnection,
    stream: &str,
    to: Option<&str>,
    ids: &[String],
) -> Result<usize> {
    let mut replayed = 0;
    let mut cursor = "-".to_string();
    loop {
        let entries = if ids.is_empty() {
            range(conn, stream, &cursor, "+", CHUNK).await?
        } else {
            let mut found = Vec::new();
            for id in ids {
                let one = range(conn, stream, id, id, 1).await?;
                anyhow::ensure!(!one.is_empty(), "no entry {id} in {stream}");
                found.extend(one);
            }
            found
        };
        let Some(last) = entries.last() else { break };
        cursor = format!("({}", last.id);
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for entry in &entries {
            let target = to
                .map(str::to_string)
                .unwrap_or_else(|| meta(entry, "stream"));
            anyhow::ensure!(
                !target.is_empty(),
                "entry {} does not say where it came from; use --to",
                entry.id
            );
            let fields = original_fields(entry);
            anyhow::ensure!(
                !fields.is_empty(),
                "entry {} has no original fields to replay",
                entry.id
            );
            let cmd = pipe.cmd("XADD").arg(&target).arg("*");
            for (name, value) in fields {
                cmd.arg(name.as_str()).arg(value.as_slice());
            }
        }
        let results: Vec<redis::RedisResult<redis::Value>> = pipe.query_async(conn).await?;
        let added: Vec<&str> = entries
            .iter()
            .zip(&results)
            .filter(|(_, r)| r.is_ok())
            .map(|(e, _)| e.id.as_str())
            .collect();
        if !added.is_empty() {
            redis::cmd("XDEL")
                .arg(stream)
                .arg(&added)
                .query_async::<i64>(conn)
                .await?;
        }
        replayed += added.len();
        if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
            anyhow::bail!("replayed {replayed}, then a re-add failed: {e}");
        }
        if !ids.is_empty() {
            break;
        }
    }
    Ok(replayed)
}

/// Removes every entry of the dead-letter stream (keeping the key and any
/// consumer groups on it). Returns how many were removed.
pub async fn purge(conn: &mut MultiplexedConnection, stream: &str) -> Result<usize> {
    redis::cmd("XTRIM")
        .arg(stream)
        .arg("MAXLEN")
        .arg(0)
        .query_async(conn)
        .await
        .context("XTRIM")
}

async fn range(
    conn: &mut MultiplexedConnection,
    stream: &str,
    from: &str,
    to: &str,
    count: usize,
) -> Result<Vec<Message>> {
    let reply: redis::Value = redis::cmd("XRANGE")
        .arg(stream)
        .arg(from)
        .arg(to)
        .arg("COUNT")
        .arg(count)
        .query_async(conn)
        .await?;
    Ok(parse_range(reply, stream))
}

/// A `sluice.`-prefixed field of a dead letter, as text.
fn meta(entry: &Message, name: &str) -> String {
    entry
        .fields
        .iter()
        .find(|(k, _)| k.strip_prefix(DEAD_LETTER_PREFIX) == Some(name))
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default()
}

/// The fields the message had before it was dead-lettered, in order.
fn original_fields(entry: &Message) -> Vec<&Field> {
    entry
        .fields
        .iter()
        .filter(|(k, _)| !k.starts_with(DEAD_LETTER_PREFIX))
        .collect()
}
