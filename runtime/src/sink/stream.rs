//! Stream sink: pipelined XADD, one round trip per batch.
//!
//! With `id_field`, the entry id comes from the record. Redis refuses an id
//! that is not above the stream's last one; that alone does not say the
//! entry is there. [`WRITE_WITH_ID`] adds the entry, and on that refusal
//! looks the id up (XRANGE id id) in the same script: present means it was
//! written by an earlier delivery (a crash between XADD and XACK), so it
//! counts as written and a stream copied with its ids is copied exactly
//! once; absent means it can never be written in order, and the message is
//! dead-lettered with why. Validation keeps one writer per such sink, so
//! only a retry or reclaimed work arrives out of order.

use super::{SinkError, merge, round_trip};
use crate::conn::Conn;
use crate::message::{Field, Record};
use crate::resp;

/// KEYS[1]: the stream. ARGV: id, maxlen ("" for none), then the fields.
/// Returns the id written, or `PRESENT` when the stream already holds it;
/// fails with `NOTWRITTEN` when the id is below the top and not there.
const WRITE_WITH_ID: &str = r#"
local cmd = {'XADD', KEYS[1]}
if ARGV[2] ~= '' then
  cmd[#cmd + 1] = 'MAXLEN'; cmd[#cmd + 1] = '~'; cmd[#cmd + 1] = ARGV[2]
end
cmd[#cmd + 1] = ARGV[1]
for i = 3, #ARGV do cmd[#cmd + 1] = ARGV[i] end
local added = redis.pcall(unpack(cmd))
if type(added) == 'table' and added.err then
  if string.find(added.err, 'equal or smaller', 1, true) then
    if #redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1]) > 0 then
      return 'PRESENT'
    end
    local top = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
    return redis.error_reply('NOTWRITTEN entry id ' .. ARGV[1] .. ' is not in ' .. KEYS[1] ..
      ' and cannot be added: it is below the stream top ' .. (top and top[1] or '?') ..
      ' (id_field copies need ids in order)')
  end
  return added
end
return added
"#;

/// Writes records to one stream.
pub struct StreamSink {
    conn: Conn,
    /// Plain XADDs on connections of their own, replies read directly;
    /// `None` sends them on `conn` (a cluster, TLS, `id_field`'s script).
    fast: Option<resp::Pool>,
    stream: String,
    maxlen: Option<u64>,
    id_field: Option<String>,
    /// `partitions` and `partition_by`: write the family `<stream>:{n}`.
    partitions: Option<(u32, String)>,
}

impl StreamSink {
    /// A sink writing to `stream` on `url`, trimming to about `maxlen`
    /// entries, taking entry ids from `id_field` if given.
    pub fn new(
        url: &str,
        stream: &str,
        maxlen: Option<u64>,
        id_field: Option<&str>,
    ) -> anyhow::Result<Self> {
        let client = crate::conn::client(url)?;
        let fast = match id_field {
            None => resp::Pool::new(&client, crate::conn::COMMAND_TIMEOUT),
            Some(_) => None,
        };
        Ok(StreamSink {
            conn: crate::conn::manager(&client, crate::conn::COMMAND_TIMEOUT)?,
            fast,
            stream: stream.to_string(),
            maxlen,
            id_field: id_field.map(str::to_string),
            partitions: None,
        })
    }

    /// Writes the stream family `<stream>:{0}` .. `<stream>:{n-1}` instead,
    /// each record to the partition its `field` hashes to.
    pub fn partitioned(mut self, n: u32, field: &str) -> Self {
        self.partitions = Some((n, field.to_string()));
        self
    }

    /// The stream key.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The approximate length cap, if any.
    pub fn maxlen(&self) -> Option<u64> {
        self.maxlen
    }

    /// The XADD for `record` (a checking script with `id_field`), or why it
    /// cannot be written.
    fn xadd(&self, stream: &str, record: &Record) -> Result<redis::Cmd, SinkError> {
        let (id, fields) = entry(record, self.id_field.as_deref())?;
        // Sized up front: growing the buffers arg by arg costs more
        // allocations than the rest of the write.
        let (count, bytes) = fields.clone().fold((0, 0), |(count, bytes), (n, v)| {
            (count + 1, bytes + n.len() + v.len())
        });
        let mut cmd = redis::Cmd::with_capacity(6 + 2 * count, stream.len() + 32 + bytes);
        if self.id_field.is_some() {
            cmd.arg("EVAL")
                .arg(WRITE_WITH_ID)
                .arg(1)
                .arg(stream)
                .arg(id)
                .arg(self.maxlen.map(|m| m.to_string()).unwrap_or_default());
        } else {
            cmd.arg("XADD").arg(stream);
            if let Some(maxlen) = self.maxlen {
                cmd.arg("MAXLEN").arg("~").arg(maxlen);
            }
            cmd.arg(id);
        }
        for (name, value) in fields {
            cmd.arg(name).arg(value);
        }
        Ok(cmd)
    }

    /// Writes `records` with one pipelined round trip (one per partition
    /// written, concurrently: on a cluster a pipeline keeps to one slot).
    /// A record with no fields to write, without its `id_field` or without
    /// its `partition_by` field, is refused.
    pub async fn write(&self, records: &[&Record]) -> Vec<Result<(), SinkError>> {
        let Some((n, field)) = &self.partitions else {
            return self.write_to(&self.stream, records).await;
        };
        let mut results: Vec<Option<Result<(), SinkError>>> = vec![None; records.len()];
        let mut by_partition: std::collections::BTreeMap<u32, Vec<usize>> = Default::default();
        for (i, record) in records.iter().enumerate() {
            match super::field(record, field) {
                Some(value) => by_partition
                    .entry(partition_of(value, *n))
                    .or_default()
                    .push(i),
                None => {
                    results[i] = Some(Err(SinkError {
                        dead_letter: true,
                        ..SinkError::refused(format!(
                            "the record has no field `{field}` to pick a partition of {} by (partition_by)",
                            self.stream
                        ))
                    }))
                }
            }
        }
        let writes = by_partition.into_iter().map(|(p, indexes)| async move {
            let key = crate::config::partition_key(&self.stream, p);
            let batch: Vec<&Record> = indexes.iter().map(|i| records[*i]).collect();
            (indexes, self.write_to(&key, &batch).await)
        });
        for (indexes, written) in futures::future::join_all(writes).await {
            for (i, result) in indexes.into_iter().zip(written) {
                results[i] = Some(result);
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(SinkError::refused("not written"))))
            .collect()
    }

    /// Writes `records` to `stream` in one pipelined round trip.
    async fn write_to(&self, stream: &str, records: &[&Record]) -> Vec<Result<(), SinkError>> {
        let judge = |answer: redis::RedisResult<()>| match answer {
            Ok(_) => Ok(()),
            Err(e) if crate::conn::has_code(&e, "NOTWRITTEN") => Err(SinkError {
                dead_letter: true,
                ..SinkError::refused(format!(
                    "write to {stream}: {}",
                    e.detail().unwrap_or_default()
                ))
            }),
            Err(e) => Err(SinkError::from_redis(stream, &e)),
        };
        let Some(pool) = &self.fast else {
            let commands = records.iter().map(|r| self.xadd(stream, r)).collect();
            return round_trip(&self.conn, stream, commands, |a| judge(a.map(drop))).await;
        };
        let mut unsent = Vec::with_capacity(records.len());
        let mut entries = Vec::with_capacity(records.len());
        for record in records {
            match entry(record, None) {
                Ok((_, fields)) => {
                    entries.push(fields);
                    unsent.push(None);
                }
                Err(why) => unsent.push(Some(why)),
            }
        }
        let mut replies = Vec::new();
        if !entries.is_empty() {
            let mut session = pool.take();
            let written = session.xadd_all(stream, self.maxlen, &entries).await;
            pool.give_back(session);
            match written {
                Ok(written) => replies = written,
                Err(e) => return vec![Err(SinkError::from_redis(stream, &e)); records.len()],
            }
        }
        merge(stream, unsent, replies, judge)
    }
}

/// The partition of `n` a record whose partition field holds `value` goes
/// to: FNV-1a (64 bit) of the bytes, mod `n`. Stable across processes and
/// versions, so one key always lands in the same partition.
pub fn partition_of(value: &[u8], n: u32) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in value {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % u64::from(n.max(1))) as u32
}

/// The entry id and fields to write for `record`: with an `id_field`, its
/// value is the id and the field is left out; otherwise Redis picks (`*`).
fn entry<'a>(
    record: &'a Record,
    id_field: Option<&'a str>,
) -> Result<(&'a [u8], impl Iterator<Item = &'a Field> + Clone), SinkError> {
    let id: &[u8] = match id_field {
        None => b"*",
        Some(name) => super::field(record, name).ok_or_else(|| {
            SinkError::refused(format!(
                "the record has no field `{name}` to take the entry id from (id_field)"
            ))
        })?,
    };
    let fields = record
        .fields
        .iter()
        .filter(move |(n, _)| Some(n.as_slice()) != id_field.map(str::as_bytes));
    if fields.clone().next().is_none() {
        return Err(SinkError::refused(
            "a record with no fields cannot be written to a stream",
        ));
    }
    Ok((id, fields))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(fields: &[(&str, &str)]) -> Record {
        Record {
            fields: fields
                .iter()
                .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
                .collect(),
            to: None,
        }
    }

    fn names<'a>(fields: impl Iterator<Item = &'a Field>) -> Vec<&'a [u8]> {
        fields.map(|(n, _)| n.as_slice()).collect()
    }

    #[test]
    fn without_id_field_redis_picks_the_id() {
        let r = record(&[("id", "5-1"), ("a", "1")]);
        let (id, fields) = entry(&r, None).unwrap();
        assert_eq!(id, b"*");
        assert_eq!(names(fields), [b"id".as_slice(), b"a"]);
    }

    #[test]
    fn id_field_gives_the_id_and_is_not_written() {
        let r = record(&[("a", "1"), ("src_id", "5-1"), ("b", "2")]);
        let (id, fields) = entry(&r, Some("src_id")).unwrap();
        assert_eq!(id, b"5-1");
        assert_eq!(names(fields), [b"a".as_slice(), b"b"]);
    }

    #[test]
    fn missing_id_field_or_nothing_else_is_refused() {
        let e = entry(&record(&[("a", "1")]), Some("src_id")).err().unwrap();
        assert!(!e.outage);
        assert!(e.message.contains("no field `src_id`"), "{}", e.message);
        let e = entry(&record(&[("src_id", "5-1")]), Some("src_id"))
            .err()
            .unwrap();
        assert!(e.message.contains("no fields"), "{}", e.message);
        assert!(entry(&record(&[]), None).is_err());
    }
}
