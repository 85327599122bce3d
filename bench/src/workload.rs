//! The workload every contestant runs: key names, payloads, preloading the
//! source streams, and reading progress back from Redis.
//!
//! Pipeline `i` reads `bench:in:<i>` in group `bench` and writes
//! `bench:out:<i>`. Each message has one field, `payload`: lowercase ASCII
//! that every contestant uppercases (S0 passes it through). In a
//! partitioned case pipeline `i` reads the family `bench:in:<i>` instead:
//! the keys `bench:in:<i>:{0}` .. `bench:in:<i>:{P-1}`, all in group
//! `bench`, and still writes the one stream `bench:out:<i>`.

use anyhow::Result;
use redis::{Connection, Value};

/// The consumer group of every pipeline.
pub const GROUP: &str = "bench";
/// Source stream `i` is `<SOURCE_PREFIX>:<i>`.
pub const SOURCE_PREFIX: &str = "bench:in";
/// Sink stream `i` is `<SINK_PREFIX>:<i>`.
pub const SINK_PREFIX: &str = "bench:out";
/// The field that is transformed.
pub const FIELD: &str = "payload";

/// Source stream of pipeline `i`.
pub fn source_key(i: u32) -> String {
    format!("{SOURCE_PREFIX}:{i}")
}

/// Partition `k` of pipeline `i`'s source family: the key sluice reads for
/// `stream = "bench:in:<i>"` with `partitions` (the runtime's
/// `partition_key`, `family:{k}`).
pub fn partition_key(i: u32, k: u32) -> String {
    format!("{}:{{{k}}}", source_key(i))
}

/// The keys pipeline `i` reads: its stream, or with `partitions > 0` every
/// partition of its family.
pub fn source_keys(i: u32, partitions: u32) -> Vec<String> {
    if partitions == 0 {
        vec![source_key(i)]
    } else {
        (0..partitions).map(|k| partition_key(i, k)).collect()
    }
}

/// The keys of every pipeline, in pipeline order.
fn all_source_keys(pipelines: u32, partitions: u32) -> impl Iterator<Item = String> {
    (0..pipelines).flat_map(move |i| source_keys(i, partitions))
}

/// Sink stream of pipeline `i`.
pub fn sink_key(i: u32) -> String {
    format!("{SINK_PREFIX}:{i}")
}

/// Random-ish lowercase ASCII, long enough to cut many distinct payloads of
/// `size` bytes from (see [`payload`]), so messages differ without paying
/// for a random generator per message.
pub struct Payloads {
    text: Vec<u8>,
    size: usize,
}

/// Distinct payload offsets; a prime stride walks them in a scattered order.
const OFFSETS: usize = 4096;

impl Payloads {
    /// Payloads of `size` bytes.
    pub fn new(size: usize) -> Self {
        // xorshift64: deterministic, so every run sees the same bytes.
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let text = (0..size + OFFSETS)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                b'a' + (state % 26) as u8
            })
            .collect();
        Payloads { text, size }
    }

    /// The payload of message `i`.
    pub fn get(&self, i: u64) -> &[u8] {
        let start = (i as usize).wrapping_mul(7919) % OFFSETS;
        &self.text[start..start + self.size]
    }
}

/// Empties Redis, fills each of the `pipelines` sources with its share of
/// `n` messages (pipelined XADD; round-robin over the partitions of a
/// family, so every partition holds the same backlog), and creates the
/// groups at `0` so the contestant starts with the whole backlog.
pub fn preload(
    conn: &mut Connection,
    pipelines: u32,
    partitions: u32,
    n: u64,
    size: usize,
) -> Result<()> {
    redis::cmd("FLUSHALL").exec(conn)?;
    const CHUNK: u64 = 1_000;
    let payloads = Payloads::new(size);
    for i in 0..pipelines {
        let keys = source_keys(i, partitions);
        let share = share(n, pipelines, i);
        let mut done = 0;
        while done < share {
            let mut pipe = redis::pipe();
            for m in done..share.min(done + CHUNK) {
                pipe.cmd("XADD")
                    .arg(&keys[(m % keys.len() as u64) as usize])
                    .arg("*")
                    .arg(FIELD)
                    .arg(payloads.get(m))
                    .ignore();
            }
            pipe.exec(conn)?;
            done = share.min(done + CHUNK);
        }
    }
    create_groups(conn, pipelines, partitions)
}

/// Pipeline `i`'s share of `n` messages split across `pipelines`.
pub fn share(n: u64, pipelines: u32, i: u32) -> u64 {
    let p = u64::from(pipelines);
    n / p + u64::from(u64::from(i) < n % p)
}

/// Creates group [`GROUP`] at `0` on every source key, each partition of a
/// family included (and the stream if missing).
pub fn create_groups(conn: &mut Connection, pipelines: u32, partitions: u32) -> Result<()> {
    for key in all_source_keys(pipelines, partitions) {
        redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(key)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .exec(conn)?;
    }
    Ok(())
}

/// Entries written to all sink streams so far.
pub fn outputs(conn: &mut Connection, pipelines: u32) -> Result<u64> {
    let mut pipe = redis::pipe();
    for i in 0..pipelines {
        pipe.cmd("XLEN").arg(sink_key(i));
    }
    let lens: Vec<u64> = pipe.query(conn)?;
    Ok(lens.iter().sum())
}

/// Entries read but not yet acked, over all groups: of every partition
/// too, or a family's run would count as done while a partition still has
/// unacked entries.
pub fn pending(conn: &mut Connection, pipelines: u32, partitions: u32) -> Result<u64> {
    let mut pipe = redis::pipe();
    for key in all_source_keys(pipelines, partitions) {
        pipe.cmd("XPENDING").arg(key).arg(GROUP);
    }
    // XPENDING summary: [count, first id, last id, per-consumer counts].
    let summaries: Vec<Value> = pipe.query(conn)?;
    let mut total = 0;
    for summary in summaries {
        if let Value::Array(parts) = summary
            && let Some(Value::Int(count)) = parts.first()
        {
            total += *count as u64;
        }
    }
    Ok(total)
}

/// A read entry: id and its (name, value) pairs, in order.
pub type Entry = (Vec<u8>, Vec<(Vec<u8>, Vec<u8>)>);

/// Takes the entries out of an XREAD / XREADGROUP reply (nil when
/// the BLOCK timed out), without copying the bytes.
pub fn entries(reply: Value) -> Vec<Entry> {
    let Value::Array(streams) = reply else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for stream in streams {
        let Value::Array(mut key_and_entries) = stream else {
            continue;
        };
        let Some(Value::Array(entries)) = key_and_entries.pop() else {
            continue;
        };
        out.reserve(entries.len());
        for entry in entries {
            let Value::Array(mut id_and_fields) = entry else {
                continue;
            };
            let (Some(Value::Array(flat)), Some(Value::BulkString(id))) =
                (id_and_fields.pop(), id_and_fields.pop())
            else {
                continue;
            };
            let mut fields = Vec::with_capacity(flat.len() / 2);
            let mut flat = flat.into_iter();
            while let (Some(Value::BulkString(name)), Some(Value::BulkString(value))) =
                (flat.next(), flat.next())
            {
                fields.push((name, value));
            }
            out.push((id, fields));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn parses_a_read_reply() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("bench:in:0"),
            Value::Array(vec![Value::Array(vec![
                bulk("1-0"),
                Value::Array(vec![bulk("payload"), bulk("abc"), bulk("ts"), bulk("9")]),
            ])]),
        ])]);
        let e = entries(reply);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].0, b"1-0");
        assert_eq!(e[0].1[1], (b"ts".to_vec(), b"9".to_vec()));
        assert!(entries(Value::Nil).is_empty());
    }

    #[test]
    fn payloads_are_lowercase_and_vary() {
        let p = Payloads::new(100);
        assert!(p.get(0).iter().all(u8::is_ascii_lowercase));
        assert_eq!(p.get(7).len(), 100);
        assert_ne!(p.get(0), p.get(1));
    }

    #[test]
    fn family_keys_are_the_runtimes_partition_keys() {
        assert_eq!(source_keys(3, 0), ["bench:in:3"]);
        assert_eq!(
            source_keys(0, 3),
            ["bench:in:0:{0}", "bench:in:0:{1}", "bench:in:0:{2}"]
        );
        let all: Vec<String> = all_source_keys(2, 2).collect();
        assert_eq!(
            all,
            [
                "bench:in:0:{0}",
                "bench:in:0:{1}",
                "bench:in:1:{0}",
                "bench:in:1:{1}"
            ]
        );
    }

    #[test]
    fn shares_add_up() {
        let total: u64 = (0..10).map(|i| share(100_003, 10, i)).sum();
        assert_eq!(total, 100_003);
        assert_eq!(share(100_003, 10, 0), 10_001);
        assert_eq!(share(100_003, 10, 9), 10_000);
    }
}
