//! List source: a list used as a reliable queue.
//!
//! Items move atomically from the list into a processing list of the
//! consumer (`BLMOVE`/`LMOVE ... RIGHT LEFT`), and are removed from there
//! (`LREM`) only once settled, so an item is never in neither place. A
//! consumer holds a heartbeat key while it lives; the processing list of a
//! consumer whose heartbeat expired is moved back to the queue, oldest
//! first, by any live process. Delivery counts live in a hash keyed by the
//! item's SHA-1, so `max_deliveries` and dead letters work as for streams.
//!
//! A delivery is counted each time an item is handed to the processors
//! again: when it goes back to the queue (a retry, a take-over), and when a
//! consumer picks it up from its own processing list (a restart, a lost
//! reply, a settle that failed), in the same script as the read. So an item
//! that kills the process is dead-lettered after `max_deliveries` restarts
//! instead of killing every restart. A reply lost after the read counts one
//! delivery too many: the count errs towards dead-lettering, never towards
//! looping.
//!
//! All keys share the list's hash slot (`{jobs}:processing:...` for a list
//! `jobs`), as LMOVE needs on a cluster.

use crate::conn::Conn;
use crate::message::Message;
use redis::RedisResult;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Moves every item of a dead consumer's processing list back to the
/// queue's consumer end, oldest first, counting one delivery each; does
/// nothing (returns -1) if the consumer's heartbeat exists. The check is in
/// the script: checked outside, a consumer restarting between the check and
/// the move would lose the items it just took up to the queue, and both
/// would process them.
/// KEYS: processing list, queue, delivery counts, heartbeat.
const TAKE_OVER: &str = r#"
if redis.call('EXISTS', KEYS[4]) == 1 then return -1 end
local n = 0
while true do
  local item = redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT')
  if not item then break end
  redis.call('HINCRBY', KEYS[3], redis.sha1hex(item), 1)
  n = n + 1
end
return n
"#;

/// Reads the oldest `ARGV[1]` items of a consumer's own processing list and
/// counts one delivery for each, atomically: a crash right after the read
/// still leaves the delivery counted. Returns {items (newest first), counts}.
/// KEYS: processing list, delivery counts.
const OWN_ITEMS: &str = r#"
local items = redis.call('LRANGE', KEYS[1], -tonumber(ARGV[1]), -1)
local counts = {}
for i, item in ipairs(items) do
  counts[i] = redis.call('HINCRBY', KEYS[2], redis.sha1hex(item), 1)
end
return {items, counts}
"#;

/// Sets heartbeat `KEYS[1]` to `ARGV[2]` for `ARGV[3]` ms if it still holds
/// `ARGV[1]` (or is missing, for an empty `ARGV[1]`). Returns 1 if set.
const CLAIM_FROM: &str = r#"
local holder = redis.call('GET', KEYS[1])
if (holder == false and ARGV[1] == '') or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
"#;

/// Renews heartbeat `KEYS[1]` (value `ARGV[1]`, lifetime `ARGV[2]` ms) if
/// it holds `ARGV[1]` or has expired. Returns 0 if another process holds it.
const RENEW: &str = r#"
local holder = redis.call('GET', KEYS[1])
if holder ~= false and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"#;

/// Deletes heartbeat `KEYS[2]` if it holds `ARGV[1]` and processing list
/// `KEYS[1]` is empty. Returns 1 if the list is empty (the consumer left
/// nothing behind).
const LEAVE: &str = r#"
if redis.call('LLEN', KEYS[1]) > 0 then return 0 end
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
return 1
"#;

/// The keys of one list source.
#[derive(Debug, Clone)]
pub struct Keys {
    /// The queue.
    pub list: String,
    /// Prefix shared by the processing lists, heartbeats and counts, in
    /// the list's hash slot.
    tagged: String,
}

impl Keys {
    /// The keys for queue `list`.
    pub fn new(list: &str) -> Self {
        // A key with a hash tag keeps it; otherwise the whole key is the tag.
        let has_tag = list
            .find('{')
            .is_some_and(|open| list[open + 1..].find('}').is_some_and(|len| len > 0));
        let tagged = if has_tag {
            list.to_string()
        } else {
            format!("{{{list}}}")
        };
        Keys {
            list: list.to_string(),
            tagged,
        }
    }

    /// The processing list of `consumer`.
    pub fn processing(&self, consumer: &str) -> String {
        format!("{}:processing:{consumer}", self.tagged)
    }

    /// The heartbeat key of `consumer`.
    pub fn heartbeat(&self, consumer: &str) -> String {
        format!("{}:consumer:{consumer}", self.tagged)
    }

    /// The hash of delivery counts (redeliveries, by item SHA-1).
    pub fn deliveries(&self) -> String {
        format!("{}:deliveries", self.tagged)
    }

    /// The pattern matching every processing list.
    fn processing_pattern(&self) -> String {
        format!("{}:processing:*", glob_escape(&self.tagged))
    }
}

/// `s` with the characters SCAN MATCH treats as wildcards escaped.
pub fn glob_escape(s: &str) -> String {
    s.chars().fold(String::new(), |mut out, c| {
        if "*?[]\\".contains(c) {
            out.push('\\');
        }
        out.push(c);
        out
    })
}

/// Items as messages: one field `payload`, a synthetic id, the list as source.
pub fn to_messages(items: Vec<Vec<u8>>, counts: Vec<Option<u32>>, list: &Arc<str>) -> Vec<Message> {
    static SEQUENCE: AtomicU64 = AtomicU64::new(0);
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    items
        .into_iter()
        .zip(counts)
        .map(|(item, redelivered)| Message {
            id: format!(
                "{ms}-{}.{}",
                std::process::id(),
                SEQUENCE.fetch_add(1, Ordering::Relaxed)
            ),
            source: list.clone(),
            fields: vec![(b"payload".to_vec(), item)],
            deliveries: 1 + redelivered.unwrap_or(0),
            first_delivery_ms: ms,
        })
        .collect()
}

/// The item a message came from (its `payload`).
pub fn item(msg: &Message) -> &[u8] {
    msg.fields
        .first()
        .map(|(_, v)| v.as_slice())
        .unwrap_or_default()
}

/// SHA-1 hex of an item: its key in the delivery-count hash (matches Lua's `redis.sha1hex`).
pub fn item_key(item: &[u8]) -> String {
    sha1_smol::Sha1::from(item).digest().to_string()
}

/// Reads the oldest `count` items a consumer already holds (after a
/// restart, a lost reply or a failed settle), oldest first, counting a
/// delivery for each. Returns the items and their redelivery counts.
pub async fn own_items(
    conn: &mut Conn,
    keys: &Keys,
    consumer: &str,
    count: u32,
) -> RedisResult<(Vec<Vec<u8>>, Vec<Option<u32>>)> {
    let (mut items, counts): (Vec<Vec<u8>>, Vec<u32>) = redis::Script::new(OWN_ITEMS)
        .key(keys.processing(consumer))
        .key(keys.deliveries())
        .arg(count)
        .invoke_async(conn)
        .await?;
    items.reverse();
    Ok((items, counts.into_iter().rev().map(Some).collect()))
}

/// Moves up to `count` new items into the consumer's processing list:
/// waits up to `block_ms` for the first, then takes what is there.
pub async fn take(
    conn: &mut Conn,
    keys: &Keys,
    consumer: &str,
    count: u32,
    block_ms: u64,
) -> RedisResult<Vec<Vec<u8>>> {
    let processing = keys.processing(consumer);
    let first: Option<Vec<u8>> = redis::cmd("BLMOVE")
        .arg(&keys.list)
        .arg(&processing)
        .arg("RIGHT")
        .arg("LEFT")
        .arg(block_ms as f64 / 1000.0)
        .query_async(conn)
        .await?;
    let Some(first) = first else {
        return Ok(Vec::new());
    };
    let mut items = vec![first];
    if count > 1 {
        let mut pipe = redis::pipe();
        for _ in 1..count {
            pipe.cmd("LMOVE")
                .arg(&keys.list)
                .arg(&processing)
                .arg("RIGHT")
                .arg("LEFT");
        }
        let more: Vec<Option<Vec<u8>>> = pipe.query_async(conn).await?;
        items.extend(more.into_iter().flatten());
    }
    Ok(items)
}

/// Redelivery counts of `items` (None: first delivery).
pub async fn counts(
    conn: &mut Conn,
    keys: &Keys,
    items: &[Vec<u8>],
) -> RedisResult<Vec<Option<u32>>> {
    if items.is_empty() {
        return Ok(Vec::new());
    }
    let fields: Vec<String> = items.iter().map(|i| item_key(i)).collect();
    redis::cmd("HMGET")
        .arg(keys.deliveries())
        .arg(fields)
        .query_async(conn)
        .await
}

/// Settles items: `done` are removed from the processing list (acked);
/// `again` go back to the queue's far end with one more delivery counted.
pub async fn settle(
    conn: &mut Conn,
    keys: &Keys,
    consumer: &str,
    done: &[&[u8]],
    again: &[&[u8]],
) -> RedisResult<()> {
    if done.is_empty() && again.is_empty() {
        return Ok(());
    }
    let processing = keys.processing(consumer);
    let mut pipe = redis::pipe();
    pipe.atomic();
    for item in done {
        // From the tail: the oldest copy of an item that appears twice.
        pipe.cmd("LREM")
            .arg(&processing)
            .arg(-1)
            .arg(*item)
            .ignore();
        pipe.cmd("HDEL")
            .arg(keys.deliveries())
            .arg(item_key(item))
            .ignore();
    }
    for item in again {
        pipe.cmd("LREM")
            .arg(&processing)
            .arg(-1)
            .arg(*item)
            .ignore();
        pipe.cmd("LPUSH").arg(&keys.list).arg(*item).ignore();
        pipe.cmd("HINCRBY")
            .arg(keys.deliveries())
            .arg(item_key(item))
            .arg(1)
            .ignore();
    }
    pipe.query_async::<()>(conn).await
}

/// Claims a consumer name for this process: `<host>-<index>`, or the
/// first free `<host>-<index>.<k>`. A name whose heartbeat names a process
/// of this host that no longer runs is taken over at once: a restarted
/// sluice picks up, and finishes first, what its predecessor held.
pub async fn claim_name(
    conn: &mut Conn,
    keys: &Keys,
    host: &str,
    index: u32,
    ttl_ms: u64,
) -> RedisResult<String> {
    let me = std::process::id();
    for k in 0.. {
        let name = if k == 0 {
            format!("{host}-{index}")
        } else {
            format!("{host}-{index}.{k}")
        };
        let key = keys.heartbeat(&name);
        let claimed: bool = redis::cmd("SET")
            .arg(&key)
            .arg(me)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms)
            .query_async(conn)
            .await?;
        if claimed {
            return Ok(name);
        }
        let holder: Option<String> = redis::cmd("GET").arg(&key).query_async(conn).await?;
        let dead = holder.as_deref().is_none_or(|pid| {
            pid == me.to_string() || !std::path::Path::new(&format!("/proc/{pid}")).exists()
        });
        // Only if the heartbeat still names the process found dead: two
        // restarts racing for one name must not both get it.
        if dead
            && redis::Script::new(CLAIM_FROM)
                .key(&key)
                .arg(holder.unwrap_or_default())
                .arg(me)
                .arg(ttl_ms)
                .invoke_async::<bool>(conn)
                .await?
        {
            return Ok(name);
        }
    }
    unreachable!("the loop returns")
}

/// Marks `consumer` alive for another `ttl_ms`, if the name is still this
/// process's. False if another process holds it now (this one stalled past
/// the heartbeat's lifetime, and a restart on this host took the name):
/// the caller must stop using the name, or two processes would share one
/// processing list.
pub async fn heartbeat(
    conn: &mut Conn,
    keys: &Keys,
    consumer: &str,
    ttl_ms: u64,
) -> RedisResult<bool> {
    redis::Script::new(RENEW)
        .key(keys.heartbeat(consumer))
        .arg(std::process::id())
        .arg(ttl_ms)
        .invoke_async(conn)
        .await
}

/// Removes the heartbeat of a consumer that stopped cleanly with nothing
/// held, if the name is still this process's.
pub async fn leave(conn: &mut Conn, keys: &Keys, consumer: &str) -> RedisResult<bool> {
    redis::Script::new(LEAVE)
        .key(keys.processing(consumer))
        .key(keys.heartbeat(consumer))
        .arg(std::process::id())
        .invoke_async(conn)
        .await
}

/// Moves the processing lists of consumers whose heartbeat expired back to
/// the queue. Returns (consumer, items moved) for each one taken over.
pub async fn take_over_dead(conn: &mut Conn, keys: &Keys) -> RedisResult<Vec<(String, i64)>> {
    // The processing lists share the queue's hash slot: on a cluster,
    // only the master owning it holds them.
    let lists = conn
        .scan(&["MATCH", &keys.processing_pattern()], Some(&keys.list))
        .await?;
    let prefix = keys.processing("");
    let mut taken = Vec::new();
    for processing in lists {
        let consumer = processing.strip_prefix(&prefix).unwrap_or_default();
        if let Some(moved) = take_over(conn, keys, consumer).await?
            && moved > 0
        {
            taken.push((consumer.to_string(), moved));
        }
    }
    Ok(taken)
}

/// Moves the processing list of `consumer` back to the queue if, at that
/// moment, its heartbeat has expired: None if it is alive, else how many
/// items were moved. Check and move are one script.
pub async fn take_over(conn: &mut Conn, keys: &Keys, consumer: &str) -> RedisResult<Option<i64>> {
    let moved: i64 = redis::Script::new(TAKE_OVER)
        .key(keys.processing(consumer))
        .key(&keys.list)
        .key(keys.deliveries())
        .key(keys.heartbeat(consumer))
        .invoke_async(conn)
        .await?;
    Ok((moved >= 0).then_some(moved))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_the_lists_hash_slot() {
        let k = Keys::new("jobs");
        assert_eq!(k.processing("c1"), "{jobs}:processing:c1");
        assert_eq!(k.deliveries(), "{jobs}:deliveries");
        let tagged = Keys::new("{app}jobs");
        assert_eq!(tagged.heartbeat("c1"), "{app}jobs:consumer:c1");
        assert_eq!(
            Keys::new("a*b").processing_pattern(),
            "{a\\*b}:processing:*"
        );
    }

    #[test]
    fn item_keys_match_redis_sha1hex() {
        // redis-cli EVAL "return redis.sha1hex('hello')" 0
        assert_eq!(
            item_key(b"hello"),
            "aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d"
        );
    }
}
