//! What a pipeline needs from a Redis Cluster, checked before it runs.
//!
//! On a cluster each command, script or MULTI/EXEC may only touch keys of
//! one hash slot. A key's slot comes from its hash tag, the text between
//! the first `{` and the next `}` (when not empty), else from the whole
//! key; keys with the same tag share a slot. The runtime already keeps
//! apart what may be apart (a batch's output, its acks and its dead letters
//! are separate commands) and tags what must be together (a list's
//! processing lists and delivery counts: `{jobs}:...`). What is left is
//! the configuration's to fix, and [`problems`] names it.

use super::{Pipeline, SinkType, SourceType};

/// Why `p` cannot run on a Redis Cluster, one message per problem, each
/// naming the keys and the hash tag that fixes it. Empty when it can.
pub fn problems(p: &Pipeline) -> Vec<String> {
    // Pub/sub needs nothing here: a plain subscription on any one node
    // hears every PUBLISH, and a sharded one is opened per slot owner.
    let mut found = Vec::new();
    if p.atomic {
        // One script commits output, dead letters and the ack of each
        // stream read (crate::atomic): all of its keys in one slot.
        let mut keys: Vec<String> = Vec::new();
        for stream in p.streams() {
            keys.push(stream.clone());
            keys.push(p.dead_letter_for(stream));
        }
        for sink in p.sinks.iter().filter(|s| s.kind == SinkType::Stream) {
            keys.extend(sink.stream.clone());
        }
        keys.dedup();
        let slots: Vec<u16> = keys.iter().map(|k| slot(k.as_bytes())).collect();
        if slots.iter().any(|s| *s != slots[0]) {
            let listed: Vec<String> = keys
                .iter()
                .zip(&slots)
                .map(|(k, s)| format!("`{k}` (slot {s})"))
                .collect();
            let tag = tag_of(&keys[0]);
            let fixed: Vec<String> = keys.iter().map(|k| with_tag(k, &tag)).collect();
            found.push(format!(
                "`atomic = true` commits a batch in one script, which on a Redis Cluster must \
                 keep to one hash slot; these keys are in different slots: {}. Give them one \
                 hash tag, e.g. {} (stream sinks' `stream`, the source's `stream`/`streams` and \
                 `dead_letter`)",
                listed.join(", "),
                fixed
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    if let (SourceType::List, Some(list)) = (p.source.kind, p.source.list.as_deref())
        && list.contains("{}")
        && hash_tag(list.as_bytes()).is_none()
    {
        found.push(format!(
            "list `{list}` has an empty hash tag `{{}}`, so its processing lists (`{{{list}}}:...`) \
             land in another slot than the list and cannot be moved to atomically; drop the `{{}}` \
             or put a name in it"
        ));
    }
    found
}

/// The hash tag `key` hashes by: its own, else the whole key.
fn tag_of(key: &str) -> String {
    match hash_tag(key.as_bytes()) {
        Some(tag) => String::from_utf8_lossy(tag).into_owned(),
        None => key.to_string(),
    }
}

/// `key` with hash tag `tag`: `{tag}` in front of a key without one, the
/// key itself if it already hashes by `tag`, else `{tag}:key`.
fn with_tag(key: &str, tag: &str) -> String {
    match hash_tag(key.as_bytes()) {
        Some(own) if own == tag.as_bytes() => key.to_string(),
        _ if key == tag => format!("{{{tag}}}"),
        _ => match key.strip_prefix(tag) {
            Some(rest) if hash_tag(key.as_bytes()).is_none() => format!("{{{tag}}}{rest}"),
            _ => format!("{{{tag}}}:{key}"),
        },
    }
}

/// The non-empty text between the first `{` and the next `}`, if any.
fn hash_tag(key: &[u8]) -> Option<&[u8]> {
    let open = key.iter().position(|b| *b == b'{')?;
    let len = key[open + 1..].iter().position(|b| *b == b'}')?;
    (len > 0).then(|| &key[open + 1..open + 1 + len])
}

/// The cluster hash slot of `key` (CRC16/XMODEM of its hash tag, mod 16384).
pub fn slot(key: &[u8]) -> u16 {
    let hashed = hash_tag(key).unwrap_or(key);
    let mut crc: u16 = 0;
    for byte in hashed {
        crc ^= u16::from(*byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // CLUSTER KEYSLOT answers on Redis 7.
        assert_eq!(slot(b"orders"), 105);
        assert_eq!(slot(b"orders:out"), 16221);
        assert_eq!(slot(b"{orders}:out"), slot(b"orders"));
        assert_eq!(slot(b"a{}b"), slot(b"a{}b"));
        assert_ne!(slot(b"{}orders"), slot(b"orders"));
        assert_eq!(slot(b"123456789"), 0x31C3);
    }

    #[test]
    fn tags_fix_keys() {
        assert_eq!(with_tag("orders", "orders"), "{orders}");
        assert_eq!(with_tag("orders:out", "orders"), "{orders}:out");
        assert_eq!(with_tag("{orders}:dead", "orders"), "{orders}:dead");
        assert_eq!(with_tag("audit", "orders"), "{orders}:audit");
        assert_eq!(tag_of("{orders}:x"), "orders");
    }
}
