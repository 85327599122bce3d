//! The Redis reads and writes of pub/sub and list tests: lists, key scans, hashes and
//! subscriber counts ([`streams`](super::streams) has the stream ones).

use redis::ConnectionLike;

/// Pushes `items` onto the head of `list` (LPUSH, one pipelined round trip per thousand), in
/// order, so that a consumer popping from the tail (a list source) gets them in that order.
pub fn lpush_many<T: redis::ToRedisArgs>(con: &mut impl ConnectionLike, list: &str, items: &[T]) {
    for chunk in items.chunks(1000) {
        let mut pipe = redis::pipe();
        for item in chunk {
            pipe.cmd("LPUSH").arg(list).arg(item).ignore();
        }
        pipe.query::<()>(con)
            .unwrap_or_else(|e| panic!("LPUSH {list}: {e}"));
    }
}

/// LLEN: 0 for a list that does not exist.
pub fn llen(con: &mut impl ConnectionLike, list: &str) -> usize {
    redis::cmd("LLEN")
        .arg(list)
        .query(con)
        .unwrap_or_else(|e| panic!("LLEN {list}: {e}"))
}

/// Every item of `list`, head first (LRANGE 0 -1).
pub fn lrange_all(con: &mut impl ConnectionLike, list: &str) -> Vec<String> {
    redis::cmd("LRANGE")
        .arg(list)
        .arg(0)
        .arg(-1)
        .query(con)
        .unwrap_or_else(|e| panic!("LRANGE {list} 0 -1: {e}"))
}

/// Every key matching the glob `pattern` (SCAN, so it is safe on a busy server), sorted.
pub fn keys_matching(con: &mut impl ConnectionLike, pattern: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query(con)
            .unwrap_or_else(|e| panic!("SCAN MATCH {pattern}: {e}"));
        keys.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    keys.sort();
    keys.dedup();
    keys
}

/// Whether `key` exists.
pub fn exists(con: &mut impl ConnectionLike, key: &str) -> bool {
    redis::cmd("EXISTS")
        .arg(key)
        .query(con)
        .unwrap_or_else(|e| panic!("EXISTS {key}: {e}"))
}

/// GET, `None` for a missing key.
pub fn get(con: &mut impl ConnectionLike, key: &str) -> Option<String> {
    redis::cmd("GET")
        .arg(key)
        .query(con)
        .unwrap_or_else(|e| panic!("GET {key}: {e}"))
}

/// How many clients are subscribed to `channel` (PUBSUB NUMSUB).
pub fn subscribers(con: &mut impl ConnectionLike, channel: &str) -> usize {
    let reply: (String, usize) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channel)
        .query(con)
        .unwrap_or_else(|e| panic!("PUBSUB NUMSUB {channel}: {e}"));
    reply.1
}

/// How many pattern subscriptions the server has, from all clients (PUBSUB NUMPAT).
pub fn pattern_subscriptions(con: &mut impl ConnectionLike) -> usize {
    redis::cmd("PUBSUB")
        .arg("NUMPAT")
        .query(con)
        .unwrap_or_else(|e| panic!("PUBSUB NUMPAT: {e}"))
}

/// PUBLISH `payload` to `channel`; returns how many subscribers received it.
pub fn publish(con: &mut impl ConnectionLike, channel: &str, payload: &str) -> usize {
    redis::cmd("PUBLISH")
        .arg(channel)
        .arg(payload)
        .query(con)
        .unwrap_or_else(|e| panic!("PUBLISH {channel}: {e}"))
}

/// How many clients are subscribed to shard channel `channel` on this node (PUBSUB
/// SHARDNUMSUB).
pub fn shard_subscribers(con: &mut impl ConnectionLike, channel: &str) -> usize {
    let reply: (String, usize) = redis::cmd("PUBSUB")
        .arg("SHARDNUMSUB")
        .arg(channel)
        .query(con)
        .unwrap_or_else(|e| panic!("PUBSUB SHARDNUMSUB {channel}: {e}"));
    reply.1
}

/// SPUBLISH `payload` to `channel` (on the node owning its slot); returns how many
/// subscribers received it.
pub fn spublish(con: &mut impl ConnectionLike, channel: &str, payload: &str) -> usize {
    redis::cmd("SPUBLISH")
        .arg(channel)
        .arg(payload)
        .query(con)
        .unwrap_or_else(|e| panic!("SPUBLISH {channel}: {e}"))
}

/// A sharded subscriber on `con` (to the node owning `channels`' slots) and a thread of its
/// own: SSUBSCRIBEd when this returns, it forwards every (channel, payload) it receives, and
/// ends when Redis goes away. redis-rs' `PubSub` has no SSUBSCRIBE, so it speaks the
/// commands itself.
pub fn ssubscribe(
    mut con: redis::Connection,
    channels: &[&str],
) -> std::sync::mpsc::Receiver<(String, String)> {
    for channel in channels {
        let cmd = redis::cmd("SSUBSCRIBE").arg(*channel).get_packed_command();
        con.send_packed_command(&cmd).expect("send SSUBSCRIBE");
        let confirmed: (String, String, usize) =
            redis::from_redis_value(con.recv_response().expect("SSUBSCRIBE confirmed"))
                .expect("an ssubscribe confirmation");
        assert_eq!(confirmed.0, "ssubscribe", "{confirmed:?}");
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        while let Ok(reply) = con.recv_response() {
            let Ok((kind, channel, payload)) =
                redis::from_redis_value::<(String, String, String)>(reply)
            else {
                continue;
            };
            if kind == "smessage" && tx.send((channel, payload)).is_err() {
                break;
            }
        }
    });
    rx
}
