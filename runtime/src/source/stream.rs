//! Stream source: one consumer of a consumer group.
//!
//! A consumer first reads its own pending entries (id `0`: work it was given
//! before a reconnect or restart under the same name), then new ones (`>`).

use crate::message::{Message, stream_id_ms};
use redis::aio::ConnectionManager;
use redis::{RedisResult, Value};
use std::sync::Arc;

/// A batch as read from Redis.
#[derive(Debug, Default)]
pub struct Batch {
    /// Entries to process.
    pub messages: Vec<Message>,
    /// Pending ids whose entries were deleted or trimmed: nothing to process,
    /// but they must be acked or they stay pending forever.
    pub deleted: Vec<String>,
}

/// One consumer's reader.
pub struct StreamReader {
    conn: ConnectionManager,
    stream: Arc<str>,
    group: String,
    consumer: String,
    count: u32,
    block_ms: u64,
    /// Still reading this consumer's own pending entries.
    own_pending: bool,
}

impl StreamReader {
    /// A reader for `consumer` in `group`. `conn` must be dedicated to it
    /// (a blocking read holds the connection) with a response timeout above `block_ms`.
    pub fn new(
        conn: ConnectionManager,
        stream: &str,
        group: &str,
        consumer: &str,
        count: u32,
        block_ms: u64,
    ) -> Self {
        StreamReader {
            conn,
            stream: stream.into(),
            group: group.into(),
            consumer: consumer.into(),
            count,
            block_ms,
            own_pending: true,
        }
    }

    /// The consumer's name in the group.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// Reads the next batch: own pending entries first, then new ones
    /// (waiting up to `block_ms`). An empty batch means nothing arrived.
    ///
    /// `acks` (ids whose outputs are written) are acked in the same round
    /// trip, ahead of the read. On an error they may or may not have been
    /// acked; XACK is idempotent, so the caller sends them again.
    pub async fn read(&mut self, acks: &[String]) -> RedisResult<Batch> {
        let own = self.own_pending;
        let mut pipe = redis::pipe();
        if !acks.is_empty() {
            pipe.cmd("XACK")
                .arg(&*self.stream)
                .arg(&self.group)
                .arg(acks)
                .ignore();
        }
        let cmd = pipe.cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(self.count);
        if !own {
            cmd.arg("BLOCK").arg(self.block_ms);
        }
        cmd.arg("STREAMS")
            .arg(&*self.stream)
            .arg(if own { "0" } else { ">" });
        let (reply,): (Value,) = pipe.query_async(&mut self.conn).await?;
        let mut batch = parse_read(reply, &self.stream);
        if own {
            if batch.messages.is_empty() && batch.deleted.is_empty() {
                self.own_pending = false;
            } else {
                fill_deliveries(
                    &mut self.conn,
                    &self.stream,
                    &self.group,
                    &self.consumer,
                    &mut batch.messages,
                )
                .await?;
            }
        }
        Ok(batch)
    }

    /// Starts over with this consumer's own pending entries (after an outage,
    /// entries delivered to it may have gone unanswered).
    pub fn reread_own_pending(&mut self) {
        self.own_pending = true;
    }
}

/// Redelivered entries: take the delivery count Redis keeps (XPENDING).
/// The range may hold other entries of the same consumer, hence the margin.
async fn fill_deliveries(
    conn: &mut ConnectionManager,
    stream: &str,
    group: &str,
    consumer: &str,
    messages: &mut [Message],
) -> RedisResult<()> {
    let (Some(first), Some(last)) = (messages.first(), messages.last()) else {
        return Ok(());
    };
    let rows: Vec<(String, String, u64, u32)> = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .arg(&first.id)
        .arg(&last.id)
        .arg(messages.len() * 4 + 100)
        .arg(consumer)
        .query_async(conn)
        .await?;
    let counts: std::collections::HashMap<String, u32> =
        rows.into_iter().map(|(id, _, _, n)| (id, n)).collect();
    for m in messages {
        m.deliveries = counts.get(&m.id).copied().unwrap_or(m.deliveries).max(1);
    }
    Ok(())
}

/// Parses an XREADGROUP / XRANGE-shaped reply for one stream.
fn parse_read(reply: Value, stream: &Arc<str>) -> Batch {
    let mut batch = Batch::default();
    let Value::Array(streams) = reply else {
        return batch;
    };
    for s in streams {
        let Value::Array(mut pair) = s else { continue };
        if pair.len() != 2 {
            continue;
        }
        let Value::Array(entries) = pair.pop().expect("len 2") else {
            continue;
        };
        for entry in entries {
            match parse_entry(entry, stream) {
                Entry::Message(m) => batch.messages.push(m),
                Entry::Deleted(id) => batch.deleted.push(id),
                Entry::Invalid => {}
            }
        }
    }
    batch
}

/// Parses an XRANGE reply (an array of entries), keeping field order.
pub fn parse_range(reply: Value, stream: &str) -> Vec<Message> {
    let stream: Arc<str> = stream.into();
    let Value::Array(entries) = reply else {
        return Vec::new();
    };
    entries
        .into_iter()
        .filter_map(|e| match parse_entry(e, &stream) {
            Entry::Message(m) => Some(m),
            Entry::Deleted(_) | Entry::Invalid => None,
        })
        .collect()
}

enum Entry {
    Message(Message),
    Deleted(String),
    Invalid,
}

/// One `[id, [field, value, ...]]` entry; `[id, nil]` is a deleted entry.
fn parse_entry(entry: Value, stream: &Arc<str>) -> Entry {
    let Value::Array(mut parts) = entry else {
        return Entry::Invalid;
    };
    if parts.len() != 2 {
        return Entry::Invalid;
    }
    let body = parts.pop().expect("len 2");
    let Some(id) = text(parts.pop().expect("len 2")) else {
        return Entry::Invalid;
    };
    let Value::Array(flat) = body else {
        return Entry::Deleted(id);
    };
    let mut fields = Vec::with_capacity(flat.len() / 2);
    let mut it = flat.into_iter();
    while let (Some(name), Some(value)) = (it.next(), it.next()) {
        let (Some(name), Some(value)) = (text(name), bytes(value)) else {
            continue;
        };
        fields.push((name, value));
    }
    let first_delivery_ms = stream_id_ms(&id);
    Entry::Message(Message {
        id,
        source: stream.clone(),
        fields,
        deliveries: 1,
        first_delivery_ms,
    })
}

fn bytes(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        _ => None,
    }
}

fn text(v: Value) -> Option<String> {
    bytes(v).map(|b| {
        String::from_utf8(b).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    })
}

/// Creates `group` on `stream` (and the stream, if missing) starting at
/// `start`. Returns true if it created the group, false if it existed.
pub async fn ensure_group(
    conn: &mut ConnectionManager,
    stream: &str,
    group: &str,
    start: &str,
) -> RedisResult<bool> {
    let created: RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(group)
        .arg(start)
        .arg("MKSTREAM")
        .query_async(conn)
        .await;
    match created {
        Ok(()) => Ok(true),
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(false),
        Err(e) => Err(e),
    }
}

/// Claims up to `count` entries idle for at least `min_idle_ms` into
/// `consumer`, scanning from `cursor`. Returns the next cursor (`0-0` when
/// the scan is complete) and the entries, with their delivery counts.
pub async fn autoclaim(
    conn: &mut ConnectionManager,
    stream: &str,
    group: &str,
    consumer: &str,
    min_idle_ms: u64,
    cursor: &str,
    count: u32,
) -> RedisResult<(String, Batch)> {
    let reply: Value = redis::cmd("XAUTOCLAIM")
        .arg(stream)
        .arg(group)
        .arg(consumer)
        .arg(min_idle_ms)
        .arg(cursor)
        .arg("COUNT")
        .arg(count)
        .query_async(conn)
        .await?;
    let Value::Array(parts) = reply else {
        return Ok(("0-0".into(), Batch::default()));
    };
    let mut parts = parts.into_iter();
    let next = parts.next().and_then(text).unwrap_or_else(|| "0-0".into());
    let stream_key: Arc<str> = stream.into();
    let mut batch = Batch::default();
    if let Some(Value::Array(entries)) = parts.next() {
        for entry in entries {
            match parse_entry(entry, &stream_key) {
                Entry::Message(m) => batch.messages.push(m),
                Entry::Deleted(id) => batch.deleted.push(id),
                Entry::Invalid => {}
            }
        }
    }
    // Redis 7 lists ids whose entries no longer exist (and drops them from the PEL).
    if let Some(Value::Array(ids)) = parts.next() {
        batch.deleted.extend(ids.into_iter().filter_map(text));
    }
    fill_deliveries(conn, stream, group, consumer, &mut batch.messages).await?;
    Ok((next, batch))
}

/// Acknowledges `ids` in one XACK.
pub async fn ack(
    conn: &mut ConnectionManager,
    stream: &str,
    group: &str,
    ids: &[String],
) -> RedisResult<()> {
    if ids.is_empty() {
        return Ok(());
    }
    redis::cmd("XACK")
        .arg(stream)
        .arg(group)
        .arg(ids)
        .query_async::<i64>(conn)
        .await
        .map(drop)
}

/// Removes `consumer` from `group` if it holds no pending entries, so
/// consumers that left do not pile up in XINFO CONSUMERS. (DELCONSUMER
/// would drop its pending entries, hence the check.)
pub async fn remove_if_idle(
    conn: &mut ConnectionManager,
    stream: &str,
    group: &str,
    consumer: &str,
) -> RedisResult<bool> {
    let pending: Vec<(String, String, u64, u32)> = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .arg("-")
        .arg("+")
        .arg(1)
        .arg(consumer)
        .query_async(conn)
        .await?;
    if !pending.is_empty() {
        return Ok(false);
    }
    redis::cmd("XGROUP")
        .arg("DELCONSUMER")
        .arg(stream)
        .arg(group)
        .arg(consumer)
        .query_async::<i64>(conn)
        .await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn parses_entries_and_deleted_ids() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("s"),
            Value::Array(vec![
                Value::Array(vec![
                    bulk("5-1"),
                    Value::Array(vec![bulk("a"), bulk("1"), bulk("b"), bulk("2")]),
                ]),
                Value::Array(vec![bulk("6-0"), Value::Nil]),
            ]),
        ])]);
        let batch = parse_read(reply, &Arc::from("s"));
        assert_eq!(batch.messages.len(), 1);
        let m = &batch.messages[0];
        assert_eq!(
            (m.id.as_str(), m.first_delivery_ms, m.deliveries),
            ("5-1", 5, 1)
        );
        assert_eq!(
            m.fields,
            vec![("a".into(), b"1".to_vec()), ("b".into(), b"2".to_vec())]
        );
        assert_eq!(batch.deleted, vec!["6-0".to_string()]);
    }

    #[test]
    fn nil_reply_is_an_empty_batch() {
        let batch = parse_read(Value::Nil, &Arc::from("s"));
        assert!(batch.messages.is_empty() && batch.deleted.is_empty());
    }
}
