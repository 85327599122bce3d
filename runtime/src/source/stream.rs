//! Stream source: one consumer of a consumer group.
//!
//! A consumer first reads its own pending entries (work left under its name
//! by an earlier run of this process slot), then new ones (`>`). Reading
//! history counts a delivery in Redis, so it happens once per start, moving
//! forward past what it returned, and never again while the consumer runs:
//! after a connection blip, entries whose reply was lost sit idle in the
//! group and the reclaimer hands them out after `claim_idle_ms`, counted
//! once, instead of re-reading work that is still in flight.

use crate::conn::Conn;
use crate::message::{Field, Message, stream_id_ms};
use crate::resp;
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
    /// The last id of the reply, deleted or not: where a history read
    /// goes on from.
    last_id: Option<String>,
}

impl Batch {
    fn push(&mut self, entry: Entry) {
        match entry {
            Entry::Message(m) => {
                self.last_id = Some(m.id.clone());
                self.messages.push(m);
            }
            Entry::Deleted(id) => {
                self.last_id = Some(id.clone());
                self.deleted.push(id);
            }
            Entry::Invalid => {}
        }
    }
}

/// One consumer's reader.
pub struct StreamReader {
    conn: Conn,
    /// The XACK + XREADGROUP round trip on its own connection, parsed
    /// directly; `None` sends it on `conn` (a cluster, TLS).
    fast: Option<resp::Session>,
    stream: Arc<str>,
    group: String,
    consumer: String,
    count: u32,
    block_ms: u64,
    /// While reading this consumer's own pending entries: the id to read
    /// after (`0` at first, then the last id returned). None once done.
    history: Option<String>,
}

impl StreamReader {
    /// A reader for `consumer` in `group`. `conn` must be dedicated to it
    /// (a blocking read holds the connection) with a response timeout above `block_ms`.
    pub fn new(
        conn: Conn,
        stream: &str,
        group: &str,
        consumer: &str,
        count: u32,
        block_ms: u64,
    ) -> Self {
        StreamReader {
            conn,
            fast: None,
            stream: stream.into(),
            group: group.into(),
            consumer: consumer.into(),
            count,
            block_ms,
            history: Some("0".into()),
        }
    }

    /// Reads and acks on `session` instead of the reader's connection.
    pub fn with_session(mut self, session: Option<resp::Session>) -> Self {
        self.fast = session;
        self
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
        let id = self.history.as_deref().unwrap_or(">");
        let block = self.history.is_none().then_some(self.block_ms);
        let mut batch = match &mut self.fast {
            Some(session) => {
                let entries = session
                    .ack_and_read(
                        &self.stream,
                        &self.group,
                        &self.consumer,
                        self.count,
                        block,
                        id,
                        acks,
                    )
                    .await?;
                let mut batch = Batch::default();
                for entry in entries {
                    batch.push(entry);
                }
                batch
            }
            None => {
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
                if let Some(block) = block {
                    cmd.arg("BLOCK").arg(block);
                }
                cmd.arg("STREAMS").arg(&*self.stream).arg(id);
                let (reply,): (Value,) = pipe.query_async(&mut self.conn).await?;
                parse_read(reply, &self.stream)
            }
        };
        if self.history.is_some() {
            let last = batch.last_id.take();
            if batch.messages.is_empty() && batch.deleted.is_empty() {
                self.history = None;
            } else {
                self.history = last;
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

    /// True while the reader is still reading this consumer's own pending
    /// entries left from before it started.
    pub fn in_history(&self) -> bool {
        self.history.is_some()
    }

    /// After the group was recreated: nothing is pending under any name.
    pub fn forget_history(&mut self) {
        self.history = None;
    }
}

/// Redelivered entries: take the delivery count Redis keeps (XPENDING).
/// The range may hold other entries of the same consumer, hence the margin.
async fn fill_deliveries(
    conn: &mut Conn,
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
            batch.push(parse_entry(entry, stream));
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

/// One entry of a read reply.
#[derive(Debug)]
pub(crate) enum Entry {
    Message(Message),
    Deleted(String),
    Invalid,
}

/// One `[id, [field, value, ...]]` entry; `[id, nil]` is a deleted entry.
fn parse_entry(reply: Value, stream: &Arc<str>) -> Entry {
    let Value::Array(mut parts) = reply else {
        return Entry::Invalid;
    };
    if parts.len() != 2 {
        return Entry::Invalid;
    }
    let body = parts.pop().expect("len 2");
    let Some(id) = bytes(parts.pop().expect("len 2")) else {
        return Entry::Invalid;
    };
    let fields = match body {
        Value::Array(flat) => {
            let mut fields = Vec::with_capacity(flat.len() / 2);
            let mut it = flat.into_iter();
            while let (Some(name), Some(value)) = (it.next(), it.next()) {
                if let (Some(name), Some(value)) = (bytes(name), bytes(value)) {
                    fields.push((name, value));
                }
            }
            Some(fields)
        }
        _ => None,
    };
    entry(id, fields, stream)
}

/// The entry `id` of `stream` as read, whichever connection read it: a
/// message, or with no `fields` one deleted or trimmed while pending.
pub(crate) fn entry(id: Vec<u8>, fields: Option<Vec<Field>>, stream: &Arc<str>) -> Entry {
    let id = String::from_utf8(id)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
    let Some(fields) = fields else {
        return Entry::Deleted(id);
    };
    let first_delivery_ms = stream_id_ms(&id);
    Entry::Message(Message {
        id,
        source: stream.clone(),
        fields,
        deliveries: 1,
        first_delivery_ms,
    })
}

fn text(v: Value) -> Option<String> {
    bytes(v).map(utf8_lossy)
}

/// Ids are ASCII; anything else is shown, not refused.
fn utf8_lossy(b: Vec<u8>) -> String {
    String::from_utf8(b).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn bytes(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        _ => None,
    }
}

/// Creates `group` on `stream` (and the stream, if missing) starting at
/// `start`. Returns true if it created the group, false if it existed.
pub async fn ensure_group(
    conn: &mut Conn,
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
        Err(e) if crate::conn::has_code(&e, "BUSYGROUP") => Ok(false),
        Err(e) => Err(e),
    }
}

/// Claims up to `count` entries idle for at least `min_idle_ms` into
/// `consumer`, scanning from `cursor`. Returns the next cursor (`0-0` when
/// the scan is complete) and the entries, with their delivery counts.
pub async fn autoclaim(
    conn: &mut Conn,
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
    // Redis 6.2 answers a claimed entry that no longer exists with a bare
    // nil, without its id, and keeps it pending.
    let mut unnamed = 0;
    if let Some(Value::Array(entries)) = parts.next() {
        for entry in entries {
            match parse_entry(entry, &stream_key) {
                Entry::Message(m) => batch.messages.push(m),
                Entry::Deleted(id) => batch.deleted.push(id),
                Entry::Invalid => unnamed += 1,
            }
        }
    }
    // Redis 7 lists ids whose entries no longer exist (and drops them from the PEL).
    if let Some(Value::Array(ids)) = parts.next() {
        batch.deleted.extend(ids.into_iter().filter_map(text));
    }
    if unnamed > 0 {
        batch.deleted.extend(
            claimed_but_missing(conn, stream, group, consumer, &batch.messages, min_idle_ms)
                .await?,
        );
    }
    fill_deliveries(conn, stream, group, consumer, &mut batch.messages).await?;
    Ok((next, batch))
}

/// Redis 6.2: the ids of entries just claimed into `consumer` (idle less
/// than `min_idle_ms` now) that came back without data: those are the
/// deleted ones, still pending until acked.
async fn claimed_but_missing(
    conn: &mut Conn,
    stream: &str,
    group: &str,
    consumer: &str,
    got: &[Message],
    min_idle_ms: u64,
) -> RedisResult<Vec<String>> {
    let rows: Vec<(String, String, u64, u32)> = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .arg("-")
        .arg("+")
        .arg(10_000)
        .arg(consumer)
        .query_async(conn)
        .await?;
    let got: std::collections::HashSet<&str> = got.iter().map(|m| m.id.as_str()).collect();
    let mut missing = Vec::new();
    for (id, _, idle, _) in rows {
        if idle < min_idle_ms && !got.contains(id.as_str()) {
            let exists: Value = redis::cmd("XRANGE")
                .arg(stream)
                .arg(&id)
                .arg(&id)
                .query_async(conn)
                .await?;
            if matches!(&exists, Value::Array(a) if a.is_empty()) {
                missing.push(id);
            }
        }
    }
    Ok(missing)
}

/// Acknowledges `ids` in one XACK.
pub async fn ack(conn: &mut Conn, stream: &str, group: &str, ids: &[String]) -> RedisResult<()> {
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

/// Deletes consumers of KEYS[1]'s group ARGV[1] that own no pending entries
/// and have been idle at least ARGV[2] ms; ARGV[3], when not empty, limits
/// it to that one consumer. Check and delete are one step, so no entry
/// claimed into a consumer meanwhile is dropped with it (DELCONSUMER drops
/// a consumer's pending entries). Returns the names deleted.
const REMOVE_IDLE_CONSUMERS: &str = r#"
local removed = {}
local ok, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
if not ok then return removed end
for _, c in ipairs(consumers) do
  local info = {}
  for k = 1, #c, 2 do info[c[k]] = c[k + 1] end
  if info['pending'] == 0 and info['idle'] >= tonumber(ARGV[2])
     and (ARGV[3] == '' or ARGV[3] == info['name']) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    removed[#removed + 1] = info['name']
  end
end
return removed
"#;

/// Removes `consumer` from `group` if it holds no pending entries, so
/// consumers that left do not pile up in XINFO CONSUMERS.
pub async fn remove_if_idle(
    conn: &mut Conn,
    stream: &str,
    group: &str,
    consumer: &str,
) -> RedisResult<bool> {
    let removed = remove_idle_consumers(conn, stream, group, 0, Some(consumer)).await?;
    Ok(!removed.is_empty())
}

/// Removes every consumer of `group` idle at least `min_idle_ms` that owns
/// no pending entries (left behind by processes that died); returns their
/// names. A live consumer polls, so its idle time stays below `block_ms`.
pub async fn remove_idle_consumers(
    conn: &mut Conn,
    stream: &str,
    group: &str,
    min_idle_ms: u64,
    only: Option<&str>,
) -> RedisResult<Vec<String>> {
    redis::Script::new(REMOVE_IDLE_CONSUMERS)
        .key(stream)
        .arg(group)
        .arg(min_idle_ms)
        .arg(only.unwrap_or(""))
        .invoke_async(conn)
        .await
}

/// KEYS[1]: stream; ARGV: group, consumer, ids. Resets the idle time of
/// the ids still pending for this consumer (XCLAIM ... JUSTID to itself),
/// leaving alone those another consumer has legitimately claimed since, so
/// ownership never bounces between two live processes. Returns how many
/// were renewed.
const RENEW_LEASE: &str = r#"
local mine = {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)[1]
  if p and p[2] == ARGV[2] then mine[#mine + 1] = ARGV[i] end
end
if #mine == 0 then return 0 end
local cmd = {'XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0}
for _, id in ipairs(mine) do cmd[#cmd + 1] = id end
cmd[#cmd + 1] = 'JUSTID'
redis.call(unpack(cmd))
return #mine
"#;

/// Renews this consumer's lease on `ids` (see [`RENEW_LEASE`]); returns
/// how many it still held.
pub async fn renew_lease(
    conn: &mut Conn,
    stream: &str,
    group: &str,
    consumer: &str,
    ids: &[String],
) -> RedisResult<usize> {
    let mut renewed = 0;
    // Lua's unpack has a stack limit: renew in slices.
    for chunk in ids.chunks(4096) {
        renewed += redis::Script::new(RENEW_LEASE)
            .key(stream)
            .arg(group)
            .arg(consumer)
            .arg(chunk)
            .invoke_async::<usize>(conn)
            .await?;
    }
    Ok(renewed)
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
            vec![
                (b"a".to_vec(), b"1".to_vec()),
                (b"b".to_vec(), b"2".to_vec())
            ]
        );
        assert_eq!(batch.deleted, vec!["6-0".to_string()]);
    }

    #[test]
    fn nil_reply_is_an_empty_batch() {
        let batch = parse_read(Value::Nil, &Arc::from("s"));
        assert!(batch.messages.is_empty() && batch.deleted.is_empty());
    }
}
