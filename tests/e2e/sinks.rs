//! Sinks: stream source → (plugin) → pubsub, list, file, stdout sinks, routing by `to` and
//! `route = "all"`.
//!
//! The contract under test (DESIGN.md, "Delivery semantics", and the sink docs in README.md):
//! every record reaches the sink it is routed to, in order, and a message is acked only once
//! its sink accepted the write, so whatever is acked is in the sink even after a `kill -9`.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use redis::Connection;
use serde_json::Value;

use crate::support::flow::last_entry;
use crate::support::pipeline::{GROUP, IN, stream_source};
use crate::support::streams::{
    group_exists, pending_count, pending_ids, xadd_many, xlen, xrange_all,
};
use crate::support::{PATIENCE, Pipeline, RedisServer, Sluice, plugin};

/// A few batches' worth: enough to show order is kept across batches.
const MESSAGES: usize = 500;

/// The reclaimer stays out of the way: what is pending at the end failed on first delivery.
const NO_RECLAIM: &str = "claim_idle_ms = 3600000\nmax_deliveries = 1000";

/// A pipeline reading [`IN`] with group [`GROUP`] from the start, through `processor` (a
/// plugin name and its config lines) if any, to the `sinks` tables as given.
fn pipeline(
    redis: &RedisServer,
    source: &str,
    processor: Option<(&str, &str)>,
    sinks: &str,
) -> Pipeline {
    let processor = processor
        .map(|(name, config)| {
            format!(
                "[[processor]]\nplugin = '{}'\n\n[processor.config]\n{config}\n",
                plugin(name).display()
            )
        })
        .unwrap_or_default();
    let toml = format!(
        r#"{head}
{processor}
{sinks}
"#,
        head = stream_source(redis, source),
    );
    Pipeline::write("sinks", &toml)
}

/// Input `i`: its index and a payload naming it.
fn numbered(i: usize) -> Vec<(&'static str, String)> {
    vec![("i", i.to_string()), ("payload", payload(i))]
}

fn payload(i: usize) -> String {
    format!("message {i}")
}

/// Waits until every message of [`IN`] was delivered and none is pending, and `done` holds
/// for what the sink shows.
fn wait_all_acked(con: &mut Connection, sluice: &mut Sluice, what: &str, done: impl Fn() -> bool) {
    let total = xlen(con, IN);
    sluice.wait_until(&format!("{what}, and all {total} inputs acked"), |_| {
        group_exists(con, IN, GROUP)
            && pending_count(con, IN, GROUP) == 0
            && read_everything(con)
            && done()
    });
}

/// Whether the group has read every entry of [`IN`]: its last-delivered id is the stream's
/// newest (entries are read in order). XINFO's `entries-read` says the same, but only from
/// Redis 7 on, and these tests also run against 6.2.
fn read_everything(con: &mut Connection) -> bool {
    let newest = last_entry(con, IN).map(|e| parse_id(&e.id));
    newest.is_some() && last_delivered(con) == newest
}

/// The group's last-delivered id, parsed; `None` before it delivered anything.
fn last_delivered(con: &mut Connection) -> Option<(u64, u64)> {
    let group = group_info(con)?;
    Some(parse_id(&group.last_delivered_id)).filter(|id| *id != (0, 0))
}

fn group_info(con: &mut Connection) -> Option<redis::streams::StreamInfoGroup> {
    let reply: redis::streams::StreamInfoGroupsReply = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(IN)
        .query(con)
        .expect("XINFO GROUPS");
    reply.groups.into_iter().find(|g| g.name == GROUP)
}

fn parse_id(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().expect("id ms"), seq.parse().expect("id seq"))
}

fn lrange(con: &mut Connection, list: &str) -> Vec<String> {
    redis::cmd("LRANGE")
        .arg(list)
        .arg(0)
        .arg(-1)
        .query(con)
        .unwrap_or_else(|e| panic!("LRANGE {list}: {e}"))
}

/// The JSON lines of `text`, parsed; panics on a line that is not one JSON object.
fn json_lines(text: &str) -> Vec<serde_json::Map<String, Value>> {
    text.lines()
        .map(|line| match serde_json::from_str(line) {
            Ok(Value::Object(object)) => object,
            other => panic!("not a JSON object line: {line:?} ({other:?})"),
        })
        .collect()
}

fn read_lines(path: &Path) -> Vec<serde_json::Map<String, Value>> {
    json_lines(&std::fs::read_to_string(path).unwrap_or_default())
}

fn line_count(path: &Path) -> usize {
    std::fs::read(path).map_or(0, |bytes| bytes.iter().filter(|b| **b == b'\n').count())
}

/// The `i` field of each JSON line.
fn indexes(lines: &[serde_json::Map<String, Value>]) -> Vec<usize> {
    lines
        .iter()
        .map(|l| {
            l["i"]
                .as_str()
                .and_then(|i| i.parse().ok())
                .unwrap_or_else(|| panic!("line without `i`: {l:?}"))
        })
        .collect()
}

/// A subscriber on its own connection and thread: subscribed when this returns, it forwards
/// every (channel, payload) it receives. It ends when Redis goes away.
fn subscribe(redis: &RedisServer, channels: &[&str]) -> mpsc::Receiver<(String, String)> {
    let mut con = redis.conn();
    let channels: Vec<String> = channels.iter().map(|c| c.to_string()).collect();
    let (ready_tx, ready_rx) = mpsc::channel();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut pubsub = con.as_pubsub();
        pubsub.subscribe(&channels).expect("SUBSCRIBE");
        ready_tx.send(()).expect("test is waiting");
        while let Ok(msg) = pubsub.get_message() {
            let payload: String = msg.get_payload().expect("a UTF-8 payload");
            if tx
                .send((msg.get_channel_name().to_string(), payload))
                .is_err()
            {
                break;
            }
        }
    });
    ready_rx
        .recv_timeout(PATIENCE)
        .expect("the subscriber subscribed");
    rx
}

/// Collects `count` messages from `rx`, failing if they do not all come within [`PATIENCE`].
fn receive(rx: &mpsc::Receiver<(String, String)>, count: usize) -> Vec<(String, String)> {
    let deadline = Instant::now() + PATIENCE;
    let mut got = Vec::with_capacity(count);
    while got.len() < count {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(msg) => got.push(msg),
            Err(_) => panic!(
                "received {} of {count} published messages; last: {:?}",
                got.len(),
                got.last()
            ),
        }
    }
    got
}

#[test]
fn pubsub_subscriber_receives_every_message_in_order() {
    let redis = RedisServer::new();
    let rx = subscribe(&redis, &["alerts"]);
    publishes_every_message_once_in_order(&redis, &rx, "");
}

/// Runs a pub/sub sink on channel `alerts` (with `extra` sink keys) over [`MESSAGES`]
/// messages and checks that `rx`, subscribed to it, got each once and in order.
fn publishes_every_message_once_in_order(
    redis: &RedisServer,
    rx: &mpsc::Receiver<(String, String)>,
    extra: &str,
) {
    let mut con = redis.conn();
    xadd_many(&mut con, IN, MESSAGES, numbered);
    let pipeline = pipeline(
        redis,
        "batch = 64",
        None,
        &format!("[[sink]]\ntype = \"pubsub\"\nchannel = \"alerts\"\n{extra}"),
    );

    let mut sluice = Sluice::run(pipeline.path());
    let got = receive(rx, MESSAGES);
    wait_all_acked(&mut con, &mut sluice, "published", || true);
    sluice.shutdown();

    let want: Vec<_> = (0..MESSAGES)
        .map(|i| ("alerts".to_string(), payload(i)))
        .collect();
    assert_eq!(got, want);
    assert!(rx.try_recv().is_err(), "nothing published twice");
}

#[test]
fn pubsub_channel_field_picks_the_channel_and_a_record_without_payload_is_refused() {
    let redis = RedisServer::new();
    let mut con = redis.conn();
    let rx = subscribe(&redis, &["even", "odd"]);
    // Input 7 has no `body`: it cannot be published, so it stays pending.
    let ids = xadd_many(&mut con, IN, 20, |i| {
        let mut fields = vec![(
            "ch",
            if i.is_multiple_of(2) { "even" } else { "odd" }.to_string(),
        )];
        if i != 7 {
            fields.push(("body", format!("b{i}")));
        }
        fields
    });
    let pipeline = pipeline(
        &redis,
        NO_RECLAIM,
        None,
        "[[sink]]\ntype = \"pubsub\"\nchannel_field = \"ch\"\npayload_field = \"body\"\n",
    );

    let mut sluice = Sluice::run(pipeline.path());
    let got = receive(&rx, 19);
    sluice.wait_until("input 7 pending, the others acked", |_| {
        group_exists(&mut con, IN, GROUP) && pending_ids(&mut con, IN, GROUP) == [ids[7].clone()]
    });
    sluice.shutdown();

    let want: Vec<_> = (0..20usize)
        .filter(|i| *i != 7)
        .map(|i| {
            let ch = if i.is_multiple_of(2) { "even" } else { "odd" };
            (ch.to_string(), format!("b{i}"))
        })
        .collect();
    assert_eq!(got, want);
    assert!(
        sluice.log().contains("no field `body`"),
        "the refusal is logged:\n{}",
        sluice.log()
    );
}

#[test]
fn a_sharded_pubsub_sink_spublishes_every_message_in_order() {
    let redis = RedisServer::new();
    // Only SPUBLISH reaches a sharded subscriber.
    let rx = crate::support::keys::ssubscribe(redis.conn(), &["alerts"]);
    publishes_every_message_once_in_order(&redis, &rx, "sharded = true\n");
}

#[test]
fn list_sink_pushes_every_payload_in_order() {
    let redis = RedisServer::new();
    let mut con = redis.conn();
    xadd_many(&mut con, IN, MESSAGES, numbered);
    // The default side (left) and right, the second fed through `route = "all"`.
    let pipeline = pipeline(
        &redis,
        "batch = 64",
        None,
        r#"[[sink]]
type = "list"
list = "jobs"

[[sink]]
name = "tail"
type = "list"
list = "jobs:rpush"
side = "right"
route = "all"
"#,
    );

    let mut sluice = Sluice::run(pipeline.path());
    wait_all_acked(&mut con, &mut sluice, "both lists full", || {
        let mut c = redis.conn();
        let len = |c: &mut Connection, k: &str| -> usize {
            redis::cmd("LLEN").arg(k).query(c).expect("LLEN")
        };
        len(&mut c, "jobs") == MESSAGES && len(&mut c, "jobs:rpush") == MESSAGES
    });
    sluice.shutdown();

    let want: Vec<String> = (0..MESSAGES).map(payload).collect();
    // LPUSH: newest at the head, so popping from the right (RPOP) yields input order.
    let mut lpushed = lrange(&mut con, "jobs");
    lpushed.reverse();
    assert_eq!(lpushed, want, "jobs, read from the right");
    assert_eq!(
        lrange(&mut con, "jobs:rpush"),
        want,
        "jobs:rpush, read from the left"
    );
}

#[test]
fn file_sink_appends_every_record_as_a_json_line() {
    let redis = RedisServer::new();
    let mut con = redis.conn();
    // One value that is not UTF-8: it must come out as base64, not mangled.
    xadd_many(&mut con, IN, MESSAGES, |i| {
        let mut fields: Vec<(&str, Vec<u8>)> = numbered(i)
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .collect();
        if i == 3 {
            fields.push(("bin", vec![0xff, 0x00, 0xfe]));
        }
        fields
    });
    // `path` is relative to the pipeline file's folder, and its folder is created.
    let pipeline = pipeline(
        &redis,
        "batch = 64",
        Some(("faults", "")),
        "[[sink]]\ntype = \"file\"\npath = \"out/records.jsonl\"\n",
    );
    let file = out_file(&pipeline);

    let mut sluice = Sluice::run(pipeline.path());
    wait_all_acked(&mut con, &mut sluice, "every line in the file", || {
        line_count(&file) == MESSAGES
    });
    sluice.shutdown();

    let lines = read_lines(&file);
    assert_eq!(indexes(&lines), (0..MESSAGES).collect::<Vec<_>>());
    let keys: Vec<&str> = lines[0].keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        ["i", "payload", "plugin_version"],
        "fields in record order"
    );
    assert_eq!(lines[0]["payload"], "message 0");
    assert_eq!(lines[3]["bin"], serde_json::json!({"base64": "/wD+"}));
}

fn out_file(pipeline: &Pipeline) -> PathBuf {
    pipeline
        .path()
        .parent()
        .expect("the pipeline's folder")
        .join("out")
        .join("records.jsonl")
}

#[test]
fn file_sink_has_every_acked_record_after_kill_9() {
    const TOTAL: usize = 3000;
    let redis = RedisServer::new();
    let mut con = redis.conn();
    let ids = xadd_many(&mut con, IN, TOTAL, numbered);
    // Small batches, each held up by the plugin: the kill lands mid-run, between batches or
    // in the middle of one.
    let pipeline = pipeline(
        &redis,
        "batch = 10\nclaim_idle_ms = 500",
        Some(("faults", "sleep_ms = 10")),
        "[[sink]]\ntype = \"file\"\npath = \"out/records.jsonl\"\n",
    );
    let file = out_file(&pipeline);

    let mut sluice = Sluice::run(pipeline.path());
    sluice.wait_until("300 lines in the file", |_| line_count(&file) >= 300);
    sluice.kill9();

    // Acked = delivered (up to the group's last-delivered id) minus still pending.
    let last = last_delivered(&mut con).expect("the group delivered something");
    let pending: BTreeSet<String> = pending_ids(&mut con, IN, GROUP).into_iter().collect();
    let acked: Vec<usize> = ids
        .iter()
        .enumerate()
        .filter(|(_, id)| parse_id(id) <= last && !pending.contains(*id))
        .map(|(i, _)| i)
        .collect();
    let written: BTreeSet<usize> = indexes(&read_lines(&file)).into_iter().collect();
    assert!(!acked.is_empty(), "something was acked before the kill");
    assert!(
        written.len() < TOTAL,
        "the kill landed mid-run ({} of {TOTAL} written)",
        written.len()
    );
    let lost: Vec<usize> = acked
        .iter()
        .copied()
        .filter(|i| !written.contains(i))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acked inputs are missing from the file, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );

    // A restart reclaims what the dead consumer held: in the end every input is in the file
    // (at least once: that is the contract without `atomic`).
    let mut sluice = Sluice::run(pipeline.path());
    wait_all_acked(&mut con, &mut sluice, "every input in the file", || {
        let written: BTreeSet<usize> = indexes(&read_lines(&file)).into_iter().collect();
        written.len() == TOTAL
    });
    sluice.shutdown();
}

#[test]
fn records_go_to_the_sink_their_to_names() {
    let redis = RedisServer::new();
    let mut con = redis.conn();
    // Every third message asks the faults plugin to route it to sink `b`.
    let routed = |i: usize| i.is_multiple_of(3);
    xadd_many(&mut con, IN, MESSAGES, |i| {
        let mut fields = numbered(i);
        if routed(i) {
            fields.push(("action", "route:b".to_string()));
        }
        fields
    });
    let pipeline = pipeline(
        &redis,
        "batch = 64",
        Some(("faults", "")),
        r#"[[sink]]
name = "a"
type = "stream"
stream = "out:a"

[[sink]]
name = "b"
type = "list"
list = "out:b"
side = "right"
"#,
    );
    let to_b = (0..MESSAGES).filter(|i| routed(*i)).count();

    let mut sluice = Sluice::run(pipeline.path());
    wait_all_acked(&mut con, &mut sluice, "both sinks written", || {
        let mut c = redis.conn();
        xlen(&mut c, "out:a") == MESSAGES - to_b && lrange(&mut c, "out:b").len() == to_b
    });
    sluice.shutdown();

    let in_a: Vec<usize> = xrange_all(&mut con, "out:a")
        .iter()
        .map(|e| e.get("i").parse().expect("i"))
        .collect();
    assert_eq!(
        in_a,
        (0..MESSAGES).filter(|i| !routed(*i)).collect::<Vec<_>>()
    );
    let in_b = lrange(&mut con, "out:b");
    let want_b: Vec<String> = (0..MESSAGES).filter(|i| routed(*i)).map(payload).collect();
    assert_eq!(in_b, want_b);
}

#[test]
fn a_route_all_sink_receives_every_record_once() {
    let redis = RedisServer::new();
    let mut con = redis.conn();
    // Some records go to `a` (the first sink), some to `b`, some name the all-sink itself:
    // it must get each record exactly once.
    let action = |i: usize| match i % 3 {
        0 => "ok",
        1 => "route:b",
        _ => "route:all",
    };
    xadd_many(&mut con, IN, MESSAGES, |i| {
        let mut fields = numbered(i);
        fields.push(("action", action(i).to_string()));
        fields
    });
    let pipeline = pipeline(
        &redis,
        "batch = 64",
        Some(("faults", "")),
        r#"[[sink]]
name = "a"
type = "stream"
stream = "out:a"

[[sink]]
name = "b"
type = "stream"
stream = "out:b"

[[sink]]
name = "all"
type = "stream"
stream = "out:all"
route = "all"
"#,
    );

    let mut sluice = Sluice::run(pipeline.path());
    wait_all_acked(&mut con, &mut sluice, "every record in out:all", || {
        xlen(&mut redis.conn(), "out:all") == MESSAGES
    });
    sluice.shutdown();

    let indexes_of = |con: &mut Connection, stream: &str| -> Vec<usize> {
        xrange_all(con, stream)
            .iter()
            .map(|e| e.get("i").parse().expect("i"))
            .collect()
    };
    assert_eq!(
        indexes_of(&mut con, "out:all"),
        (0..MESSAGES).collect::<Vec<_>>()
    );
    let want = |a: &str| -> Vec<usize> { (0..MESSAGES).filter(|i| action(*i) == a).collect() };
    assert_eq!(indexes_of(&mut con, "out:a"), want("ok"));
    assert_eq!(indexes_of(&mut con, "out:b"), want("route:b"));
}

#[test]
fn stdout_sink_prints_json_lines() {
    let redis = RedisServer::new();
    let mut con = redis.conn();
    xadd_many(&mut con, IN, MESSAGES, |i| {
        vec![
            ("i", i.to_string()),
            ("text", format!("line \"{i}\"\nwith a newline")),
        ]
    });
    let pipeline = pipeline(&redis, "batch = 64", None, "[[sink]]\ntype = \"stdout\"\n");

    let mut sluice = Sluice::run(pipeline.path());
    wait_all_acked(&mut con, &mut sluice, "every line on stdout", || true);
    // Acked means flushed: the lines are there already, before shutdown.
    let lines = json_lines(&sluice.stdout());
    sluice.shutdown();

    assert_eq!(indexes(&lines), (0..MESSAGES).collect::<Vec<_>>());
    let by_i: HashMap<usize, &serde_json::Map<String, Value>> =
        indexes(&lines).into_iter().zip(&lines).collect();
    assert_eq!(by_i[&42]["text"], "line \"42\"\nwith a newline");
}

#[test]
fn stream_sink_with_id_field_keeps_ids_and_skips_what_is_already_there() {
    let redis = RedisServer::new();
    let mut con = redis.conn();
    let id = |i: usize| format!("{}-0", 1000 + i);
    xadd_many(&mut con, IN, 100, |i| {
        let mut fields = numbered(i);
        fields.push(("src", id(i)));
        fields
    });
    // The first half is already in the copy, as if a previous run crashed before acking.
    for i in 0..50 {
        let _: String = redis::cmd("XADD")
            .arg("copy")
            .arg(id(i))
            .arg("i")
            .arg(i.to_string())
            .arg("payload")
            .arg(payload(i))
            .query(&mut con)
            .expect("XADD copy");
    }
    let pipeline = pipeline(
        &redis,
        "batch = 16",
        None,
        "[[sink]]\ntype = \"stream\"\nstream = \"copy\"\nid_field = \"src\"\n",
    );

    let mut sluice = Sluice::run(pipeline.path());
    wait_all_acked(&mut con, &mut sluice, "100 entries in the copy", || {
        xlen(&mut redis.conn(), "copy") == 100
    });
    sluice.shutdown();

    let copy = xrange_all(&mut con, "copy");
    let want: Vec<_> = (0..100)
        .map(|i| {
            (
                id(i),
                vec![
                    ("i".to_string(), i.to_string()),
                    ("payload".to_string(), payload(i)),
                ],
            )
        })
        .collect();
    let got: Vec<_> = copy.into_iter().map(|e| (e.id, e.fields)).collect();
    assert_eq!(got, want, "ids kept, `src` not written, nothing twice");
}

#[test]
fn a_record_for_a_sink_that_does_not_exist_is_dead_lettered_at_once() {
    let redis = RedisServer::new();
    let mut con = redis.conn();
    // Every fifth message names a sink the pipeline lacks: a bug in the plugin or the file,
    // so retrying cannot help. Reclaim is quick and deliveries many, so a retry would show.
    let misrouted = |i: usize| i.is_multiple_of(5);
    let ids = xadd_many(&mut con, IN, 50, |i| {
        let mut fields = numbered(i);
        if misrouted(i) {
            fields.push(("action", "route:nowhere".to_string()));
        }
        fields
    });
    let pipeline = pipeline(
        &redis,
        "claim_idle_ms = 200\nmax_deliveries = 5",
        Some(("faults", "")),
        r#"[[sink]]
name = "a"
type = "stream"
stream = "out:a"

[[sink]]
name = "b"
type = "stream"
stream = "out:b"
"#,
    );
    let bad: Vec<&String> = ids
        .iter()
        .enumerate()
        .filter(|(i, _)| misrouted(*i))
        .map(|(_, id)| id)
        .collect();

    let mut sluice = Sluice::run(pipeline.path());
    wait_all_acked(
        &mut con,
        &mut sluice,
        "the well-routed records written",
        || {
            let mut c = redis.conn();
            xlen(&mut c, "out:a") == 50 - bad.len() && xlen(&mut c, "in:dead") == bad.len()
        },
    );
    sluice.shutdown();

    let dead = xrange_all(&mut con, "in:dead");
    let dead_ids: Vec<&str> = dead.iter().map(|e| e.get("sluice.id")).collect();
    assert_eq!(dead_ids, bad.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    for entry in &dead {
        // Dead-lettered on the first delivery, not after max_deliveries retries.
        assert_eq!(entry.get("sluice.deliveries"), "1", "{entry:?}");
        assert_eq!(entry.get("sluice.error_class"), "route", "{entry:?}");
        let error = entry.get("sluice.error");
        assert!(
            error.contains("`nowhere`") && error.contains("sinks: a, b"),
            "the reason names the missing sink and the sinks there are: {error}"
        );
    }
    assert_eq!(xlen(&mut con, "out:b"), 0);
}
