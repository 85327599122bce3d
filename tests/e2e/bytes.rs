//! Bytes in, bytes out: Redis field names and values are binary-safe, and whatever passes
//! through Sluice comes out byte for byte, or is dead-lettered with the reason, never altered.
//!
//! The input ([`inputs`]) holds every byte value in field names and in values, empty names
//! and values, and a value of several MiB. It goes through a pipeline without processors
//! (plain and `atomic`), through a Rust plugin, and to every sink type; list items and pub/sub
//! messages (on a channel whose name is not UTF-8) reach a stream unaltered. Two places cannot
//! carry a name that is not UTF-8: a plugin (WIT field names are strings) and a JSON line
//! (object names are strings); there the message is dead-lettered with a reason naming the
//! field, and the dead letter keeps the original bytes.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::time::Instant;

use base64::Engine as _;
use redis::Connection;
use serde_json::Value;

use crate::support::keys::{lpush_many, pattern_subscriptions};
use crate::support::pipeline::{GROUP, IN, OUT, stream_source};
use crate::support::streams::{group_exists, last_delivered_id, pending_count, xlen};
use crate::support::{PATIENCE, Pipeline, RedisServer, Sluice, plugin};

/// Field names and values, in entry order.
type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// The dead-letter stream of a pipeline reading [`IN`] (the default, `<stream>:dead`).
const DEAD: &str = "in:dead";

/// The size of the large value: several MiB, well past any buffer a client starts with.
const BIG: usize = 4 << 20;

/// The input entries. Each has a `payload` first (for the list and pub/sub sinks, which send
/// one field): every byte value, empty, text with quotes and newlines, then [`BIG`] bytes.
///
/// 0. names: every single byte `0..=255`, so names 0x80 and up are not UTF-8.
/// 1. names: every byte that is UTF-8 alone (`0..=127`), the empty name, multi-byte UTF-8.
/// 2. values: every byte value, bytes 0x80 and up only (not UTF-8), empty, UTF-8 text.
/// 3. one value of [`BIG`] bytes covering every byte value.
fn inputs() -> Vec<Fields> {
    let every_byte: Vec<u8> = (0..=255).collect();
    let field = |name: &[u8], value: &[u8]| (name.to_vec(), value.to_vec());
    let mut names_every_byte = vec![field(b"payload", &every_byte)];
    names_every_byte.extend((0..=255u8).map(|b| field(&[b], &[b, b'.', 255 - b])));
    let mut names_utf8 = vec![field(b"payload", b"")];
    names_utf8.extend((0..=127u8).map(|b| field(&[b], &[255 - b])));
    names_utf8.push(field(b"", b""));
    names_utf8.push(field("café \"q\"\n名前".as_bytes(), b"\x00\xff"));
    let values = vec![
        field(b"payload", "line 1\nline \"2\" caf\u{e9}\0".as_bytes()),
        field(b"every-byte", &every_byte),
        field(b"high", &every_byte[128..]),
        field(b"empty", b""),
        field(b"text", "caf\u{e9} ✓".as_bytes()),
    ];
    // A fixed pseudo-random pattern: every byte value, no structure a codec could exploit.
    let mut state: u32 = 0x9e37_79b9;
    let big: Vec<u8> = (0..BIG)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect();
    vec![
        names_every_byte,
        names_utf8,
        values,
        vec![field(b"payload", &big)],
    ]
}

/// Whether every field name of `fields` is UTF-8: what a plugin and a JSON line can carry.
fn names_are_utf8(fields: &Fields) -> bool {
    fields
        .iter()
        .all(|(name, _)| std::str::from_utf8(name).is_ok())
}

/// Appends `entries` to [`IN`]; returns their ids.
fn load(con: &mut Connection, entries: &[Fields]) -> Vec<String> {
    let mut pipe = redis::pipe();
    for fields in entries {
        let cmd = pipe.cmd("XADD").arg(IN).arg("*");
        for (name, value) in fields {
            cmd.arg(name.as_slice()).arg(value.as_slice());
        }
    }
    pipe.query(con).unwrap_or_else(|e| panic!("XADD {IN}: {e}"))
}

/// Every entry of `stream` with its raw fields, oldest first.
fn entries(con: &mut Connection, stream: &str) -> Vec<(String, Fields)> {
    redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query(con)
        .unwrap_or_else(|e| panic!("XRANGE {stream}: {e}"))
}

/// Waits until the group has read every input and acked it, with `out` entries in [`OUT`]
/// and `dead` dead letters.
fn wait_settled(con: &mut Connection, sluice: &mut Sluice, last_id: &str, out: usize, dead: usize) {
    sluice.wait_for(
        &format!(
            "every input read and acked, {out} in `{OUT}`, {dead} in `{DEAD}` \
             (seen: read up to, pending, out, dead)"
        ),
        |_| {
            let read = group_exists(con, IN, GROUP).then(|| {
                (
                    last_delivered_id(con, IN, GROUP),
                    pending_count(con, IN, GROUP),
                )
            });
            (read, xlen(con, OUT), xlen(con, DEAD))
        },
        |seen| *seen == (Some((last_id.to_string(), 0)), out, dead),
    );
}

/// Fields as text for assertion messages: long values shortened, bytes escaped.
fn show(fields: &Fields) -> String {
    let short = |b: &[u8]| {
        let text = b.escape_ascii().to_string();
        if text.len() > 80 {
            format!("{}... ({} bytes)", &text[..80], b.len())
        } else {
            text
        }
    };
    fields
        .iter()
        .map(|(n, v)| format!("{}={}", short(n), short(v)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Asserts that `got` holds exactly `want`, entry by entry, byte for byte.
fn assert_same_entries(got: &[Fields], want: &[Fields], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: entry count");
    for (k, (got, want)) in got.iter().zip(want).enumerate() {
        assert!(
            got == want,
            "{what}: entry {k} differs\n got: {}\nwant: {}",
            show(got),
            show(want)
        );
    }
}

/// Checks a dead letter of `input`: class `encoding`, a reason naming the first field name
/// that is not UTF-8 (escaped: `\x80`), and the original fields unchanged after the
/// `sluice.` ones.
fn assert_encoding_dead_letter(dead: &Fields, input: &Fields, reason: &str) {
    let meta = |name: &str| {
        dead.iter()
            .find(|(n, _)| n == name.as_bytes())
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_else(|| panic!("dead letter without `{name}`: {}", show(dead)))
    };
    assert_eq!(meta("sluice.error_class"), "encoding");
    let error = meta("sluice.error");
    assert!(
        error.contains(r#"field name "\x80" is not UTF-8"#) && error.contains(reason),
        "the reason names the field and why: {error}"
    );
    let original: Fields = dead
        .iter()
        .filter(|(n, _)| !n.starts_with(b"sluice."))
        .cloned()
        .collect();
    assert_same_entries(&[original], std::slice::from_ref(input), "dead letter");
}

/// A stream → stream pipeline without processors keeps every name and value byte for byte,
/// in the plain and the `atomic` write path.
fn passthrough(atomic: bool) {
    let redis = RedisServer::new();
    let mut con = redis.conn();
    let input = inputs();
    let ids = load(&mut con, &input);
    let toml = format!(
        "{}{}\n[[sink]]\nname = \"out\"\ntype = \"stream\"\nstream = \"{OUT}\"\n",
        if atomic { "atomic = true\n" } else { "" },
        stream_source(&redis, "")
    );
    let pipeline = Pipeline::write("bytes", &toml);
    let mut sluice = Sluice::run(pipeline.path());
    wait_settled(&mut con, &mut sluice, ids.last().unwrap(), input.len(), 0);
    sluice.shutdown();

    let out: Vec<Fields> = entries(&mut con, OUT).into_iter().map(|e| e.1).collect();
    assert_same_entries(&out, &input, OUT);
}

#[test]
fn passthrough_stream_to_stream_is_byte_exact() {
    passthrough(false);
}

#[test]
fn atomic_stream_to_stream_is_byte_exact() {
    passthrough(true);
}

#[test]
fn a_plugin_gets_exact_bytes_and_names_it_cannot_carry_are_dead_lettered() {
    let redis = RedisServer::new();
    let mut con = redis.conn();
    let input = inputs();
    let ids = load(&mut con, &input);
    // `faults` passes every field through unchanged when there is no `action` field, and
    // appends `plugin_version`.
    let toml = format!(
        "{}\n[[processor]]\nplugin = '{}'\ntimeout_ms = 20000\nmemory_mb = 256\n\n\
         [[sink]]\nname = \"out\"\ntype = \"stream\"\nstream = \"{OUT}\"\n",
        stream_source(&redis, "max_deliveries = 1000"),
        plugin("faults").display()
    );
    let pipeline = Pipeline::write("bytes", &toml);
    let mut sluice = Sluice::run(pipeline.path());
    let passed: Vec<Fields> = input
        .iter()
        .filter(|f| names_are_utf8(f))
        .cloned()
        .collect();
    assert_eq!(
        passed.len(),
        input.len() - 1,
        "one input has names that are not UTF-8"
    );
    wait_settled(&mut con, &mut sluice, ids.last().unwrap(), passed.len(), 1);
    sluice.shutdown();

    let want: Vec<Fields> = passed
        .into_iter()
        .map(|mut fields| {
            fields.push((b"plugin_version".to_vec(), b"1".to_vec()));
            fields
        })
        .collect();
    let out: Vec<Fields> = entries(&mut con, OUT).into_iter().map(|e| e.1).collect();
    assert_same_entries(&out, &want, OUT);
    let dead = entries(&mut con, DEAD);
    assert_encoding_dead_letter(&dead[0].1, &input[0], "plugin");
}

#[test]
fn list_and_pubsub_sinks_carry_payloads_byte_exact() {
    let redis = RedisServer::new();
    let mut con = redis.conn();
    let input = inputs();
    let payloads: Vec<Vec<u8>> = input.iter().map(|fields| fields[0].1.clone()).collect();
    let received = subscribe(&redis, "bytes");
    let ids = load(&mut con, &input);
    let toml = format!(
        "{}\n[[sink]]\nname = \"list\"\ntype = \"list\"\nlist = \"out:list\"\nside = \"right\"\n\n\
         [[sink]]\nname = \"pubsub\"\ntype = \"pubsub\"\nchannel = \"bytes\"\nroute = \"all\"\n",
        stream_source(&redis, "")
    );
    let pipeline = Pipeline::write("bytes", &toml);
    let mut sluice = Sluice::run(pipeline.path());
    wait_settled(&mut con, &mut sluice, ids.last().unwrap(), 0, 0);
    let published = receive(&received, payloads.len());
    sluice.shutdown();

    let list: Vec<Vec<u8>> = redis::cmd("LRANGE")
        .arg("out:list")
        .arg(0)
        .arg(-1)
        .query(&mut con)
        .expect("LRANGE out:list");
    assert!(list == payloads, "list items differ from the payloads");
    assert!(
        published == payloads,
        "published messages differ from the payloads"
    );
}

#[test]
fn json_sinks_keep_every_byte_and_dead_letter_names_they_cannot_carry() {
    let redis = RedisServer::new();
    let mut con = redis.conn();
    let input = inputs();
    let ids = load(&mut con, &input);
    let dir = tempfile::tempdir().expect("a temp dir for the file sink");
    let file = dir.path().join("out.jsonl");
    let toml = format!(
        "{}\n[[sink]]\nname = \"stdout\"\ntype = \"stdout\"\n\n\
         [[sink]]\nname = \"file\"\ntype = \"file\"\npath = '{}'\nroute = \"all\"\n",
        stream_source(&redis, "max_deliveries = 1000"),
        file.display()
    );
    let pipeline = Pipeline::write("bytes", &toml);
    let mut sluice = Sluice::run(pipeline.path());
    wait_settled(&mut con, &mut sluice, ids.last().unwrap(), 0, 1);
    // Acked means flushed: the lines are there before shutdown.
    let stdout = sluice.stdout();
    sluice.shutdown();

    let want: Vec<BTreeMap<Vec<u8>, Vec<u8>>> = input
        .iter()
        .filter(|f| names_are_utf8(f))
        .map(|fields| fields.iter().cloned().collect())
        .collect();
    let from_file = std::fs::read_to_string(&file).expect("the file sink's file is UTF-8");
    for (what, text) in [("stdout", stdout.as_str()), ("file", from_file.as_str())] {
        let got: Vec<BTreeMap<Vec<u8>, Vec<u8>>> = text.lines().map(decode_line).collect();
        assert_eq!(got.len(), want.len(), "{what}: line count");
        for (k, (got, want)) in got.iter().zip(&want).enumerate() {
            assert!(got == want, "{what}: line {k} does not decode to its input");
        }
    }
    let dead = entries(&mut con, DEAD);
    assert_encoding_dead_letter(&dead[0].1, &input[0], "JSON line");
}

/// A list source → stream pipeline on `list`, or a pub/sub source on `pattern`.
fn to_out_stream(redis: &RedisServer, source: &str) -> Pipeline {
    let toml = format!(
        "[redis]\nurl = \"{}\"\n\n[source]\n{source}\n\n\
         [[sink]]\nname = \"out\"\ntype = \"stream\"\nstream = \"{OUT}\"\n",
        redis.url()
    );
    Pipeline::write("bytes", &toml)
}

#[test]
fn list_items_and_pubsub_messages_arrive_byte_exact() {
    let redis = RedisServer::new();
    let mut con = redis.conn();
    let payloads: Vec<Vec<u8>> = inputs().into_iter().map(|mut f| f.remove(0).1).collect();

    lpush_many(&mut con, "jobs", &payloads);
    let pipeline = to_out_stream(&redis, "type = \"list\"\nlist = \"jobs\"");
    let mut sluice = Sluice::run(pipeline.path());
    sluice.wait_until("every list item in the stream", |_| {
        xlen(&mut con, OUT) == payloads.len()
    });
    sluice.shutdown();
    let want: Vec<Fields> = payloads
        .iter()
        .map(|p| vec![(b"payload".to_vec(), p.clone())])
        .collect();
    let out: Vec<Fields> = entries(&mut con, OUT).into_iter().map(|e| e.1).collect();
    assert_same_entries(&out, &want, "list source");

    let _: () = redis::cmd("DEL").arg(OUT).query(&mut con).expect("DEL out");
    let pipeline = to_out_stream(&redis, "type = \"pubsub\"\npatterns = [\"bytes.*\"]");
    let mut sluice = Sluice::run(pipeline.path());
    sluice.wait_until("sluice's pattern subscription", |_| {
        pattern_subscriptions(&mut con) == 1
    });
    let channel = b"bytes.\xff\x00\n".to_vec();
    for payload in &payloads {
        let reached: usize = redis::cmd("PUBLISH")
            .arg(channel.as_slice())
            .arg(payload.as_slice())
            .query(&mut con)
            .expect("PUBLISH");
        assert_eq!(reached, 1, "the PUBLISH reached sluice");
    }
    sluice.wait_until("every published message in the stream", |_| {
        xlen(&mut con, OUT) == payloads.len()
    });
    sluice.shutdown();
    let want: Vec<Fields> = payloads
        .iter()
        .map(|p| {
            vec![
                (b"payload".to_vec(), p.clone()),
                (b"channel".to_vec(), channel.clone()),
                (b"pattern".to_vec(), b"bytes.*".to_vec()),
            ]
        })
        .collect();
    let out: Vec<Fields> = entries(&mut con, OUT).into_iter().map(|e| e.1).collect();
    assert_same_entries(&out, &want, "pub/sub source");
}

/// One JSON line as names and values: a string value is its UTF-8 bytes, an object
/// `{"base64": ...}` the bytes it encodes.
fn decode_line(line: &str) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let Ok(Value::Object(object)) = serde_json::from_str(line) else {
        panic!("not a JSON object line: {line:.200}");
    };
    object
        .into_iter()
        .map(|(name, value)| {
            let bytes = match value {
                Value::String(text) => text.into_bytes(),
                Value::Object(encoded) => {
                    let text = encoded["base64"].as_str().expect("a base64 string");
                    base64::engine::general_purpose::STANDARD
                        .decode(text)
                        .expect("valid base64")
                }
                other => panic!("field `{name}` is neither a string nor base64: {other}"),
            };
            (name.into_bytes(), bytes)
        })
        .collect()
}

/// A subscriber to `channel` on its own thread: subscribed when this returns, it forwards
/// every payload it receives, as bytes.
fn subscribe(redis: &RedisServer, channel: &str) -> mpsc::Receiver<Vec<u8>> {
    let mut con = redis.conn();
    let channel = channel.to_string();
    let (ready_tx, ready_rx) = mpsc::channel();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut pubsub = con.as_pubsub();
        pubsub.subscribe(&channel).expect("SUBSCRIBE");
        ready_tx.send(()).expect("the test is waiting");
        while let Ok(msg) = pubsub.get_message() {
            if tx.send(msg.get_payload_bytes().to_vec()).is_err() {
                break;
            }
        }
    });
    ready_rx
        .recv_timeout(PATIENCE)
        .expect("the subscriber subscribed");
    rx
}

/// The first `count` payloads from `rx`, failing if they do not all come within [`PATIENCE`].
fn receive(rx: &mpsc::Receiver<Vec<u8>>, count: usize) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + PATIENCE;
    (0..count)
        .map(|k| {
            rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .unwrap_or_else(|_| panic!("received {k} of {count} published messages"))
        })
        .collect()
}
