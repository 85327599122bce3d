//! `atomic = true`: a batch's output, dead letters and XACK committed as one
//! unit, so a crash never leaves output without ack or ack without output.
//!
//! MULTI/EXEC is not enough: Redis does not roll back, so an XADD that fails
//! inside EXEC would still be followed by its XACK. A Lua script (atomic in
//! Redis like EXEC) checks first and writes only what will succeed:
//!
//! - every destination key must be a stream (or missing), else nothing runs;
//! - each entry must still be pending *for this consumer*: if a reclaimer
//!   gave it to another consumer, or it was already committed, it is
//!   skipped. This makes a resend after a lost reply, and a lease lost to a
//!   slow batch, free of duplicates.

use crate::conn::Conn;
use crate::message::{Field, Record};
use std::collections::HashMap;

/// KEYS[1]: source stream; KEYS[2..]: destination streams.
/// ARGV: group, consumer, then per entry: id, number of writes, then per
/// write: key index (into KEYS), maxlen ("" for none), field count, fields.
/// Returns per entry 1 (written and acked) or why it was skipped.
const COMMIT: &str = r#"
local group, consumer = ARGV[1], ARGV[2]
for k = 2, #KEYS do
  local t = redis.call('TYPE', KEYS[k])['ok']
  if t ~= 'stream' and t ~= 'none' then
    return redis.error_reply('WRONGTYPE ' .. KEYS[k] .. ' holds a ' .. t .. ', not a stream')
  end
end
local out = {}
local i = 3
while i <= #ARGV do
  local id, writes = ARGV[i], tonumber(ARGV[i + 1])
  i = i + 2
  local pending = redis.call('XPENDING', KEYS[1], group, id, id, 1)[1]
  local mine = pending ~= nil and pending[2] == consumer
  for w = 1, writes do
    local key, maxlen, nfields = KEYS[tonumber(ARGV[i])], ARGV[i + 1], tonumber(ARGV[i + 2])
    i = i + 3
    if mine then
      local cmd = {'XADD', key}
      if maxlen ~= '' then
        cmd[#cmd + 1] = 'MAXLEN'; cmd[#cmd + 1] = '~'; cmd[#cmd + 1] = maxlen
      end
      cmd[#cmd + 1] = '*'
      for f = 0, 2 * nfields - 1 do cmd[#cmd + 1] = ARGV[i + f] end
      redis.call(unpack(cmd))
    end
    i = i + 2 * nfields
  end
  if mine then
    redis.call('XACK', KEYS[1], group, id)
    out[#out + 1] = 1
  elseif pending == nil then
    out[#out + 1] = 'no longer pending (already settled)'
  else
    out[#out + 1] = 'now held by consumer ' .. pending[2]
  end
end
return out
"#;

/// One write of the commit: destination stream, its MAXLEN, the fields.
pub struct Write<'a> {
    /// Destination stream key.
    pub stream: &'a str,
    /// Approximate trim, if any.
    pub maxlen: Option<u64>,
    /// The entry's fields.
    pub fields: &'a [Field],
}

/// What to commit for one message: its writes, then its XACK.
pub struct Entry<'a> {
    /// The source entry id.
    pub id: &'a str,
    /// Records and dead letters to write before the ack.
    pub writes: Vec<Write<'a>>,
}

/// The outcome of a commit for one entry.
#[derive(Debug, PartialEq, Eq)]
pub enum Committed {
    /// Written and acked.
    Done,
    /// Skipped: the entry is no longer this consumer's to settle.
    Skipped(String),
}

/// Runs the commit script. An error means nothing was written.
pub async fn commit(
    conn: &mut Conn,
    stream: &str,
    group: &str,
    consumer: &str,
    entries: &[Entry<'_>],
) -> redis::RedisResult<Vec<Committed>> {
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    let mut keys: Vec<&str> = vec![stream];
    let mut index: HashMap<&str, usize> = HashMap::new();
    let script = redis::Script::new(COMMIT);
    let mut inv = script.prepare_invoke();
    inv.arg(group).arg(consumer);
    for e in entries {
        inv.arg(e.id).arg(e.writes.len());
        for w in &e.writes {
            let k = *index.entry(w.stream).or_insert_with(|| {
                keys.push(w.stream);
                keys.len()
            });
            inv.arg(k)
                .arg(w.maxlen.map(|m| m.to_string()).unwrap_or_default())
                .arg(w.fields.len());
            for (name, value) in w.fields {
                inv.arg(name).arg(value);
            }
        }
    }
    for k in &keys {
        inv.key(*k);
    }
    let replies: Vec<redis::Value> = inv.invoke_async(conn).await?;
    Ok(replies
        .into_iter()
        .map(|v| match v {
            redis::Value::Int(1) => Committed::Done,
            other => {
                Committed::Skipped(redis::from_redis_value::<String>(other).unwrap_or_default())
            }
        })
        .collect())
}

/// Groups a batch's routed records by message: for each message, the
/// records and their sink indexes, in order.
pub fn records_by_message(
    per_sink: &[Vec<(usize, Record)>],
    messages: usize,
) -> Vec<Vec<(usize, &Record)>> {
    let mut by_message: Vec<Vec<(usize, &Record)>> = vec![Vec::new(); messages];
    for (sink, items) in per_sink.iter().enumerate() {
        for (i, record) in items {
            by_message[*i].push((sink, record));
        }
    }
    by_message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_records_by_message_in_sink_order() {
        let r = |n: &str| Record {
            fields: vec![(n.into(), vec![])],
            to: None,
        };
        let per_sink = vec![vec![(0, r("a")), (1, r("b"))], vec![(0, r("c"))]];
        let by = records_by_message(&per_sink, 3);
        assert_eq!(
            by[0].iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            vec![0, 1]
        );
        assert_eq!(by[1].len(), 1);
        assert!(by[2].is_empty());
    }
}
