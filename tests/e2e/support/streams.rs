//! The Redis side of a test: load input, then read back what landed.
//!
//! Assertions are made on Redis state rather than on the runtime's logs or metrics, because
//! Redis state is the contract: what was written to the sink, what is still pending in the
//! group. Errors panic with the command that failed; a test cannot do anything better.

use redis::streams::{StreamInfoGroup, StreamInfoGroupsReply, StreamPendingReply};
use redis::{ConnectionLike, RedisResult};

/// How many XADDs go to Redis in one round trip when loading input.
const XADD_CHUNK: usize = 1000;

/// A stream entry with its fields in stream order (a map would hide reordering).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: String,
    pub fields: Vec<(String, String)>,
}

impl Entry {
    /// The value of field `name`; panics naming the entry when it is missing.
    pub fn get(&self, name: &str) -> &str {
        self.fields
            .iter()
            .find(|(field, _)| field == name)
            .map(|(_, value)| value.as_str())
            .unwrap_or_else(|| panic!("entry {} has no field `{name}`: {:?}", self.id, self.fields))
    }
}

/// Appends `count` entries to `stream`, entry `i` getting the fields `fields(i)`, pipelined in
/// chunks so that loading tens of thousands of messages takes milliseconds. Returns the ids in
/// order.
pub fn xadd_many<F, K, V>(
    con: &mut impl ConnectionLike,
    stream: &str,
    count: usize,
    fields: F,
) -> Vec<String>
where
    F: Fn(usize) -> Vec<(K, V)>,
    K: redis::ToRedisArgs,
    V: redis::ToRedisArgs,
{
    let mut ids = Vec::with_capacity(count);
    for start in (0..count).step_by(XADD_CHUNK) {
        let mut pipe = redis::pipe();
        for i in start..count.min(start + XADD_CHUNK) {
            let command = pipe.cmd("XADD").arg(stream).arg("*");
            for (name, value) in fields(i) {
                command.arg(name).arg(value);
            }
        }
        let chunk: Vec<String> = pipe
            .query(con)
            .unwrap_or_else(|e| panic!("XADD {stream}: {e}"));
        ids.extend(chunk);
    }
    ids
}

/// XLEN: 0 for a stream that does not exist.
pub fn xlen(con: &mut impl ConnectionLike, stream: &str) -> usize {
    redis::cmd("XLEN")
        .arg(stream)
        .query(con)
        .unwrap_or_else(|e| panic!("XLEN {stream}: {e}"))
}

/// Every entry of `stream`, oldest first.
pub fn xrange_all(con: &mut impl ConnectionLike, stream: &str) -> Vec<Entry> {
    let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query(con)
        .unwrap_or_else(|e| panic!("XRANGE {stream} - +: {e}"));
    entries
        .into_iter()
        .map(|(id, fields)| Entry { id, fields })
        .collect()
}

/// How many entries the group has delivered and not yet acknowledged (XPENDING summary).
/// Panics if the group does not exist, so that "0 pending" can never mean "never started".
pub fn pending_count(con: &mut impl ConnectionLike, stream: &str, group: &str) -> usize {
    let reply: StreamPendingReply = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .query(con)
        .unwrap_or_else(|e| panic!("XPENDING {stream} {group}: {e}"));
    reply.count()
}

/// The ids of every pending entry of the group, oldest first.
pub fn pending_ids(con: &mut impl ConnectionLike, stream: &str, group: &str) -> Vec<String> {
    pending_entries(con, stream, group)
        .into_iter()
        .map(|p| p.id)
        .collect()
}

/// One entry of a group's pending entries list (XPENDING, extended form).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub id: String,
    /// The consumer that holds it.
    pub consumer: String,
    /// Milliseconds since it was last delivered (or its lease renewed).
    pub idle_ms: u64,
    /// How many times it was delivered.
    pub deliveries: u64,
}

/// Every pending entry of the group with its owner, idle time and delivery count, oldest
/// first.
pub fn pending_entries(con: &mut impl ConnectionLike, stream: &str, group: &str) -> Vec<Pending> {
    let count = pending_count(con, stream, group);
    // Extended form: one (id, consumer, idle ms, delivery count) per entry.
    let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .arg("-")
        .arg("+")
        .arg(count.max(1))
        .query(con)
        .unwrap_or_else(|e| panic!("XPENDING {stream} {group} - + {count}: {e}"));
    pending
        .into_iter()
        .map(|(id, consumer, idle_ms, deliveries)| Pending {
            id,
            consumer,
            idle_ms,
            deliveries,
        })
        .collect()
}

/// The id of the last entry the group handed to any consumer (XINFO GROUPS
/// `last-delivered-id`): how far the group has read.
pub fn last_delivered_id(con: &mut impl ConnectionLike, stream: &str, group: &str) -> String {
    group_info(con, stream, group)
        .unwrap_or_else(|| panic!("no group {group} on stream {stream}"))
        .last_delivered_id
}

/// A stream entry id as a pair of numbers, so that ids compare in stream order
/// (`"9-0" < "10-0"`, which string comparison gets wrong).
pub fn parse_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    let number = |part: &str| {
        part.parse()
            .unwrap_or_else(|_| panic!("`{id}` is not a stream entry id"))
    };
    (number(ms), number(seq))
}

/// Whether consumer group `group` exists on `stream` (false if the stream does not).
pub fn group_exists(con: &mut impl ConnectionLike, stream: &str, group: &str) -> bool {
    group_info(con, stream, group).is_some()
}

/// How many consumers the group knows; consumers register when they first read.
pub fn consumer_count(con: &mut impl ConnectionLike, stream: &str, group: &str) -> usize {
    group_info(con, stream, group)
        .unwrap_or_else(|| panic!("no group {group} on stream {stream}"))
        .consumers
}

fn group_info(con: &mut impl ConnectionLike, stream: &str, group: &str) -> Option<StreamInfoGroup> {
    let reply: RedisResult<StreamInfoGroupsReply> =
        redis::cmd("XINFO").arg("GROUPS").arg(stream).query(con);
    match reply {
        Ok(reply) => reply.groups.into_iter().find(|g| g.name == group),
        // XINFO GROUPS on a missing key is an error, not an empty list.
        Err(e) if e.to_string().contains("no such key") => None,
        Err(e) => panic!("XINFO GROUPS {stream}: {e}"),
    }
}

/// XGROUP CREATE `group` on `stream` at `start`, as a group a test sets up before sluice runs.
pub fn create_group(con: &mut impl ConnectionLike, stream: &str, group: &str, start: &str) {
    redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(group)
        .arg(start)
        .query::<()>(con)
        .unwrap_or_else(|e| panic!("XGROUP CREATE {stream} {group} {start}: {e}"));
}

/// Reads up to `count` new entries of `stream` as `consumer` of `group` and never acks them:
/// a consumer that took work and died. They stay pending under its name.
pub fn read_as(
    con: &mut impl ConnectionLike,
    stream: &str,
    group: &str,
    consumer: &str,
    count: usize,
) {
    redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(group)
        .arg(consumer)
        .arg("COUNT")
        .arg(count)
        .arg("STREAMS")
        .arg(stream)
        .arg(">")
        .query::<redis::Value>(con)
        .unwrap_or_else(|e| panic!("XREADGROUP {group} {consumer} {stream}: {e}"));
}

/// Pending entries of the group, or None while it does not exist yet (sluice creates it).
pub fn pending_if_group(con: &mut impl ConnectionLike, stream: &str, group: &str) -> Option<usize> {
    group_exists(con, stream, group).then(|| pending_count(con, stream, group))
}
