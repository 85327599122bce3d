//! Sources beyond one stream: pub/sub channels and patterns, lists as reliable queues, several
//! streams in one pipeline; a Python plugin in a real pipeline; and the bridge pipelines in
//! `pipelines/`, run as they are (DESIGN.md, "Delivery semantics"; README, "Pub/sub and lists").
//!
//! Pub/sub is at-most-once: Redis keeps nothing, so these tests publish only once sluice is
//! subscribed (PUBSUB NUMSUB shows it), and every PUBLISH reports how many subscribers got it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::support::keys::{
    exists, get, keys_matching, llen, lpush_many, lrange_all, pattern_subscriptions, publish,
    shard_subscribers, spublish, subscribers,
};
use crate::support::logs::lines_with_all;
use crate::support::pipeline::{IN, OUT, list_to_stream, pubsub_to_stream_at, wait_settled};
use crate::support::streams::{Entry, pending_count, xadd_many, xlen, xrange_all};
use crate::support::{PATIENCE, Pipeline, RedisServer, Sluice, plugin, repo_root};

/// A folder for one sluice process's compiled-plugin cache, so tests do not share one.
fn cache() -> TempDir {
    tempfile::tempdir().expect("create a temp dir for the plugin cache")
}

/// The `[[processor]]` table running the faults plugin with `config` lines.
fn faults(config: &str) -> String {
    format!(
        "[[processor]]\nplugin = '{}'\n[processor.config]\n{config}\n",
        plugin("faults").display()
    )
}

/// The payloads of `entries`, in order.
fn payloads(entries: &[Entry]) -> Vec<String> {
    entries
        .iter()
        .map(|e| e.get("payload").to_owned())
        .collect()
}

/// Publishes `messages` (channel, payload) in one pipelined round trip; returns how many
/// subscribers each one reached.
fn publish_all(con: &mut redis::Connection, messages: &[(String, String)]) -> Vec<usize> {
    let mut pipe = redis::pipe();
    for (channel, payload) in messages {
        pipe.cmd("PUBLISH").arg(channel).arg(payload);
    }
    pipe.query(con).expect("PUBLISH")
}

/// Starts sluice on a pub/sub pipeline and waits until Redis counts it among `channel`'s
/// subscribers (`subscribers` in all: other processes may already be subscribed). Only then
/// does a PUBLISH reach it.
fn run_subscribed(
    pipeline: &Path,
    cache: &Path,
    con: &mut redis::Connection,
    channel: &str,
    subscribed: usize,
) -> Sluice {
    let mut sluice = Sluice::run_cached(pipeline, cache);
    sluice.wait_for_log(&["pipeline started"], 1);
    sluice.wait_until(
        &format!("{subscribed} subscriber(s) of `{channel}`"),
        |_| subscribers(con, channel) >= subscribed,
    );
    sluice
}

#[test]
fn pubsub_channels_and_patterns_are_captured_into_a_stream() {
    const COUNT: usize = 1_000;
    let redis = RedisServer::new();
    let mut con = redis.conn();
    let pipeline = Pipeline::write(
        "capture",
        &format!(
            r#"[redis]
url = "{}"

[source]
type = "pubsub"
channels = ["events"]
patterns = ["sensor:*"]

[[sink]]
type = "stream"
stream = "captured"
"#,
            redis.url()
        ),
    );
    let cache = cache();
    let mut sluice = run_subscribed(pipeline.path(), cache.path(), &mut con, "events", 1);
    sluice.wait_until("sluice's pattern subscription", |_| {
        pattern_subscriptions(&mut con) == 1
    });

    // Even messages on the channel, odd ones on channels the pattern matches.
    let channel = |i: usize| {
        if i.is_multiple_of(2) {
            "events".to_owned()
        } else {
            format!("sensor:{}", i % 5)
        }
    };
    let messages: Vec<(String, String)> = (0..COUNT)
        .map(|i| (channel(i), format!("message {i}")))
        .collect();
    let reached = publish_all(&mut con, &messages);
    assert!(
        reached.iter().all(|&n| n == 1),
        "every PUBLISH reached sluice: {reached:?}"
    );
    let captured = captured_in_order(&mut sluice, &mut con, COUNT, channel);
    for (i, entry) in captured.iter().enumerate() {
        if i.is_multiple_of(2) {
            assert!(
                entry.fields.iter().all(|(name, _)| name != "pattern"),
                "entry {i} came from a channel, not a pattern: {:?}",
                entry.fields
            );
        } else {
            assert_eq!(entry.get("pattern"), "sensor:*", "entry {i}'s pattern");
        }
    }
}

#[test]
fn every_sluice_on_a_channel_receives_every_message() {
    const INSTANCES: usize = 3;
    const COUNT: usize = 300;
    let redis = RedisServer::new();
    let mut con = redis.conn();
    let caches: Vec<TempDir> = (0..INSTANCES).map(|_| cache()).collect();
    // One pipeline file per instance, so each writes where the test can tell them apart.
    let pipelines: Vec<Pipeline> = (0..INSTANCES)
        .map(|k| {
            Pipeline::write(
                &format!("fan-{k}"),
                &format!(
                    r#"[redis]
url = "{url}"

[source]
type = "pubsub"
channels = ["news"]

{processor}
[[sink]]
type = "stream"
stream = "fan:{k}"
"#,
                    url = redis.url(),
                    processor = faults(""),
                ),
            )
        })
        .collect();
    let mut instances: Vec<Sluice> = pipelines
        .iter()
        .zip(&caches)
        .enumerate()
        .map(|(k, (pipeline, cache))| {
            run_subscribed(pipeline.path(), cache.path(), &mut con, "news", k + 1)
        })
        .collect();

    let messages: Vec<(String, String)> = (0..COUNT)
        .map(|i| ("news".to_owned(), format!("news {i}")))
        .collect();
    let reached = publish_all(&mut con, &messages);
    assert!(
        reached.iter().all(|&n| n == INSTANCES),
        "every PUBLISH reached all {INSTANCES} instances: {reached:?}"
    );
    let want: Vec<String> = messages.into_iter().map(|(_, payload)| payload).collect();
    for (k, sluice) in instances.iter_mut().enumerate() {
        let sink = format!("fan:{k}");
        sluice.wait_until(&format!("{COUNT} entries in {sink}"), |_| {
            xlen(&mut con, &sink) >= COUNT
        });
    }
    for (k, sluice) in instances.iter_mut().enumerate() {
        sluice.shutdown();
        let got = xrange_all(&mut con, &format!("fan:{k}"));
        assert_eq!(
            payloads(&got),
            want,
            "instance {k} got every message, once, in order"
        );
        assert!(
            got.iter().all(|e| e.get("plugin_version") == "1"),
            "instance {k} ran each message through its plugin"
        );
    }
}

#[test]
fn a_sharded_pubsub_source_on_one_redis_captures_what_is_spublished() {
    const COUNT: usize = 300;
    let redis = RedisServer::new();
    let mut con = redis.conn();
    let pipeline = pubsub_to_stream_at(
        &redis.url(),
        "channels = [\"events\", \"alerts\"]\nsharded = true",
        "captured",
    );
    let cache = cache();
    let mut sluice = Sluice::run_cached(pipeline.path(), cache.path());
    sluice.wait_until("sluice's sharded subscriptions", |_| {
        shard_subscribers(&mut con, "events") == 1 && shard_subscribers(&mut con, "alerts") == 1
    });
    let channel = |i: usize| {
        if i.is_multiple_of(2) {
            "events"
        } else {
            "alerts"
        }
    };
    for i in 0..COUNT {
        assert_eq!(spublish(&mut con, channel(i), &format!("message {i}")), 1);
    }
    // Sharded channels are apart from plain ones: a PUBLISH reaches no sharded subscriber.
    assert_eq!(publish(&mut con, "events", "plain"), 0);
    captured_in_order(&mut sluice, &mut con, COUNT, |i| channel(i).to_owned());
}

/// Waits for `count` entries in stream `captured`, stops sluice, and checks that message `i`
/// ("message i", published in that order on `channel(i)`) was captured once, in order.
fn captured_in_order(
    sluice: &mut Sluice,
    con: &mut redis::Connection,
    count: usize,
    channel: impl Fn(usize) -> String,
) -> Vec<Entry> {
    sluice.wait_until(&format!("{count} entries in `captured`"), |_| {
        xlen(con, "captured") >= count
    });
    sluice.shutdown();
    let captured = xrange_all(con, "captured");
    assert_eq!(captured.len(), count, "each message captured once");
    for (i, entry) in captured.iter().enumerate() {
        assert_eq!(
            entry.get("payload"),
            format!("message {i}"),
            "entry {i}, in publish order"
        );
        assert_eq!(entry.get("channel"), channel(i), "entry {i}'s channel");
    }
    captured
}

/// [`list_to_stream`] through `faults` with `config`.
fn list_pipeline(redis: &RedisServer, source: &str, config: &str) -> Pipeline {
    list_to_stream(redis, source, &faults(config))
}

const JOBS_PROCESSING: &str = "{jobs}:processing:*";
const JOBS_DELIVERIES: &str = "{jobs}:deliveries";

#[test]
fn list_items_that_fail_are_retried_then_dead_lettered() {
    const OK: usize = 100;
    const MAX_DELIVERIES: usize = 3;
    let redis = RedisServer::new();
    let mut con = redis.conn();
    // The item is the action: faults reads it from `payload`.
    let mut items = vec!["ok"; OK / 2];
    items.extend(["fail", "poison"]);
    items.extend(vec!["ok"; OK / 2]);
    lpush_many(&mut con, "jobs", &items);
    let pipeline = list_pipeline(
        &redis,
        &format!("max_deliveries = {MAX_DELIVERIES}"),
        r#"field = "payload""#,
    );

    let cache = cache();
    let mut sluice = Sluice::run_cached(pipeline.path(), cache.path());
    sluice.wait_for(
        "the ok items written, both failing ones dead-lettered, the queue, processing lists \
         and delivery counts empty (seen: (out, dead, queue, processing lists, counts))",
        |_| {
            (
                xlen(&mut con, "jobs:out"),
                xlen(&mut con, "jobs:dead"),
                llen(&mut con, "jobs"),
                keys_matching(&mut con, JOBS_PROCESSING),
                exists(&mut con, JOBS_DELIVERIES),
            )
        },
        |seen| *seen == (OK, 2, 0, Vec::new(), false),
    );
    sluice.shutdown();

    let out = xrange_all(&mut con, "jobs:out");
    assert!(
        out.iter().all(|e| e.get("payload") == "ok"),
        "only ok items are written: {out:?}"
    );
    let dead: BTreeMap<String, Entry> = xrange_all(&mut con, "jobs:dead")
        .into_iter()
        .map(|e| (e.get("payload").to_owned(), e))
        .collect();
    let expect = [
        // A retryable failure is delivered max_deliveries times, then dead-lettered.
        ("fail", MAX_DELIVERIES.to_string(), "asked to fail"),
        // Poison is dead-lettered at once.
        ("poison", "1".to_owned(), "asked to dead-letter"),
    ];
    for (item, deliveries, error) in expect {
        let letter = dead
            .get(item)
            .unwrap_or_else(|| panic!("no dead letter for `{item}`: {dead:?}"));
        assert_eq!(
            letter.get("sluice.stream"),
            "jobs",
            "`{item}` came from list `jobs`"
        );
        assert_eq!(
            letter.get("sluice.deliveries"),
            deliveries,
            "deliveries of `{item}`"
        );
        assert!(
            letter.get("sluice.error").contains(error),
            "the dead letter of `{item}` says why: {letter:?}"
        );
    }
    let left = keys_matching(&mut con, "{jobs}*");
    assert_eq!(
        left,
        Vec::<String>::new(),
        "a clean stop leaves no processing list, heartbeat or delivery count behind"
    );
}

#[test]
fn list_items_survive_kill_9_and_the_restart_finishes_them_first() {
    const COUNT: usize = 5_000;
    let item = |i: usize| format!("item-{i}");
    let redis = RedisServer::new();
    let mut con = redis.conn();
    lpush_many(&mut con, "jobs", &(0..COUNT).map(item).collect::<Vec<_>>());
    // 50 items per batch and 50 ms asleep in each: the kill lands mid-batch, with the batch in
    // the consumer's processing list.
    let pipeline = list_pipeline(&redis, "batch = 50", "sleep_ms = 50");

    let first_cache = cache();
    let mut first = Sluice::run_cached(pipeline.path(), first_cache.path());
    let first_pid = first.pid();
    first.wait_until("output, with a batch in a processing list", |_| {
        xlen(&mut con, "jobs:out") >= 200 && !keys_matching(&mut con, JOBS_PROCESSING).is_empty()
    });
    first.kill9();

    let lists = keys_matching(&mut con, JOBS_PROCESSING);
    assert_eq!(
        lists.len(),
        1,
        "one consumer, one processing list: {lists:?}"
    );
    let held = lrange_all(&mut con, &lists[0]);
    assert!(
        !held.is_empty(),
        "the killed consumer held a batch in {}",
        lists[0]
    );
    let consumer = lists[0]
        .strip_prefix("{jobs}:processing:")
        .expect("a processing list key")
        .to_owned();
    let heartbeat = format!("{{jobs}}:consumer:{consumer}");
    assert_eq!(
        get(&mut con, &heartbeat),
        Some(first_pid.to_string()),
        "the dead consumer's heartbeat names its process"
    );
    let written_before = xlen(&mut con, "jobs:out");

    let second_cache = cache();
    let mut second = Sluice::run_cached(pipeline.path(), second_cache.path());
    second.wait_for(
        "every item settled (seen: (queue, processing lists))",
        |_| {
            (
                llen(&mut con, "jobs"),
                keys_matching(&mut con, JOBS_PROCESSING),
            )
        },
        |seen| *seen == (0, Vec::new()),
    );
    assert_eq!(
        get(&mut con, &heartbeat),
        Some(second.pid().to_string()),
        "the restart on the same host claimed the dead predecessor's name {consumer}"
    );
    let log = second.log();
    second.shutdown();

    assert_eq!(
        lines_with_all(&log, &["consumer gone"]),
        Vec::<&str>::new(),
        "the held items were finished by the name's new owner, not returned by the reclaimer"
    );
    let out = xrange_all(&mut con, "jobs:out");
    let after_restart = payloads(&out[written_before..]);
    let first_done: BTreeSet<&String> = after_restart.iter().take(held.len()).collect();
    let held_set: BTreeSet<&String> = held.iter().collect();
    assert_eq!(
        first_done,
        held_set,
        "the restart finished the {} items its predecessor held before anything else",
        held.len()
    );
    let mut times_written: BTreeMap<String, usize> = BTreeMap::new();
    for payload in payloads(&out) {
        *times_written.entry(payload).or_default() += 1;
    }
    let missing: Vec<String> = (0..COUNT)
        .map(item)
        .filter(|i| !times_written.contains_key(i))
        .collect();
    assert_eq!(missing, Vec::<String>::new(), "items lost");
    let twice: Vec<&String> = times_written
        .iter()
        .filter(|&(_, &n)| n > 1)
        .map(|(item, _)| item)
        .collect();
    assert!(
        twice.iter().all(|item| held_set.contains(item)),
        "only items in flight at the kill may be written twice (at-least-once): {twice:?}"
    );
    assert_eq!(
        times_written.len(),
        COUNT,
        "nothing but the items was written"
    );
    println!(
        "kill -9: {written_before} items written before the kill, {} held in {}, {} written \
         twice",
        held.len(),
        lists[0],
        twice.len()
    );
    assert_eq!(llen(&mut con, "jobs"), 0, "the queue is empty");
    assert_eq!(
        keys_matching(&mut con, JOBS_PROCESSING),
        Vec::<String>::new(),
        "every processing list is empty"
    );
}

#[test]
fn one_pipeline_reads_several_streams_each_with_its_group() {
    const EACH: usize = 300;
    let redis = RedisServer::new();
    let mut con = redis.conn();
    for stream in ["a", "b"] {
        xadd_many(&mut con, stream, EACH, |i| {
            vec![("from", stream.to_owned()), ("i", i.to_string())]
        });
    }
    let pipeline = Pipeline::write(
        "multi",
        &format!(
            r#"[redis]
url = "{url}"

[source]
type = "stream"
streams = ["a", "b"]
start = "0"
block_ms = 100

{processor}
[[sink]]
type = "stream"
stream = "{OUT}"
"#,
            url = redis.url(),
            processor = faults(""),
        ),
    );

    let cache = cache();
    let mut sluice = Sluice::run_cached(pipeline.path(), cache.path());
    for stream in ["a", "b"] {
        sluice.wait_for_log(&["pipeline started", &format!("stream={stream} ")], 1);
    }
    sluice.wait_for(
        "both streams written and acked (seen: (out, pending a, pending b))",
        |_| {
            (
                xlen(&mut con, OUT),
                pending_count(&mut con, "a", "multi"),
                pending_count(&mut con, "b", "multi"),
            )
        },
        |seen| *seen == (2 * EACH, 0, 0),
    );
    sluice.shutdown();

    let got: BTreeSet<(String, usize)> = xrange_all(&mut con, OUT)
        .iter()
        .map(|e| {
            (
                e.get("from").to_owned(),
                e.get("i").parse().expect("a number"),
            )
        })
        .collect();
    let want: BTreeSet<(String, usize)> = ["a", "b"]
        .iter()
        .flat_map(|s| (0..EACH).map(move |i| (s.to_string(), i)))
        .collect();
    assert_eq!(got, want, "every entry of both streams, once");
}

#[test]
fn a_python_plugin_uppercases_in_a_real_pipeline() {
    const COUNT: usize = 200;
    const NO_PAYLOAD: usize = 100;
    let redis = RedisServer::new();
    let mut con = redis.conn();
    xadd_many(&mut con, IN, COUNT, |i| {
        let mut fields = vec![("i", i.to_string())];
        if i != NO_PAYLOAD {
            fields.push(("payload", format!("message {i} from python")));
        }
        fields
    });
    let pipeline = Pipeline::stream_to_stream(&redis, "uppercase-py", "", r#"field = "payload""#);

    let cache = cache();
    // The first start compiles the 18 MB component: seconds, within PATIENCE.
    let mut sluice = Sluice::run_cached(pipeline.path(), cache.path());
    wait_settled(&mut con, &mut sluice, COUNT - 1, 0);
    sluice.shutdown();

    let got: Vec<Vec<(String, String)>> = xrange_all(&mut con, OUT)
        .into_iter()
        .map(|e| e.fields)
        .collect();
    let want: Vec<Vec<(String, String)>> = (0..COUNT)
        .filter(|&i| i != NO_PAYLOAD)
        .map(|i| {
            vec![
                ("i".to_owned(), i.to_string()),
                ("payload".to_owned(), format!("MESSAGE {i} FROM PYTHON")),
            ]
        })
        .collect();
    assert_eq!(
        got, want,
        "every message uppercased by the Python plugin, in order"
    );
    let dead = xrange_all(&mut con, &format!("{IN}:dead"));
    assert_eq!(
        dead.len(),
        1,
        "the message without a payload is dead-lettered: {dead:?}"
    );
    assert_eq!(dead[0].get("i"), NO_PAYLOAD.to_string());
    assert!(
        dead[0]
            .get("sluice.error")
            .contains("missing field `payload`"),
        "the Python plugin's own failure reason: {:?}",
        dead[0]
    );
}

/// An example pipeline file of `pipelines/`.
fn example(file: &str) -> PathBuf {
    let path = repo_root().join("pipelines").join(file);
    assert!(path.is_file(), "{} is missing", path.display());
    path
}

/// `count` numbered payloads, `<prefix> <i>`.
fn numbered(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{prefix} {i}")).collect()
}

#[test]
fn bridge_pubsub_to_stream_captures_a_channel() {
    const COUNT: usize = 100;
    let redis = RedisServer::new();
    let mut con = redis.conn();
    let cache = cache();
    let mut sluice = Sluice::run_on(
        &example("bridge-pubsub-to-stream.toml"),
        &redis.url(),
        cache.path(),
    );
    sluice.wait_for_log(&["pipeline started"], 1);
    sluice.wait_until("sluice subscribed to bridge:events", |_| {
        subscribers(&mut con, "bridge:events") == 1
    });
    let sent = numbered("event", COUNT);
    for payload in &sent {
        assert_eq!(
            publish(&mut con, "bridge:events", payload),
            1,
            "sluice received {payload}"
        );
    }
    sluice.wait_until("the events in bridge:events:log", |_| {
        xlen(&mut con, "bridge:events:log") >= COUNT
    });
    sluice.shutdown();

    let log = xrange_all(&mut con, "bridge:events:log");
    assert_eq!(payloads(&log), sent, "every event captured once, in order");
    assert!(log.iter().all(|e| e.get("channel") == "bridge:events"));
}

#[test]
fn bridge_stream_to_pubsub_publishes_entries() {
    const COUNT: usize = 100;
    let redis = RedisServer::new();
    let mut con = redis.conn();
    let mut listener = redis.conn();
    let mut subscription = listener.as_pubsub();
    subscription
        .subscribe("bridge:notifications")
        .expect("SUBSCRIBE bridge:notifications");
    subscription
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("set a read timeout");
    let cache = cache();
    let mut sluice = Sluice::run_on(
        &example("bridge-stream-to-pubsub.toml"),
        &redis.url(),
        cache.path(),
    );
    // The group starts at `$`: only entries added after it exists are read.
    sluice.wait_for_log(&["pipeline started"], 1);
    let sent = numbered("note", COUNT);
    xadd_many(&mut con, "bridge:outbox", COUNT, |i| {
        vec![("payload", sent[i].clone())]
    });

    let mut received = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    while received.len() < COUNT {
        assert!(
            Instant::now() < deadline && sluice.is_running(),
            "received {} of {COUNT} notifications: {received:?}",
            received.len()
        );
        match subscription.get_message() {
            Ok(message) => received.push(message.get_payload::<String>().expect("a text payload")),
            Err(e) if e.is_timeout() => {}
            Err(e) => panic!("reading the subscription: {e}"),
        }
    }
    sluice.wait_until("every entry acked", |_| {
        pending_count(&mut con, "bridge:outbox", "bridge-stream-to-pubsub") == 0
    });
    sluice.shutdown();
    assert_eq!(received, sent, "every entry published once, in order");
}

#[test]
fn bridge_list_to_stream_drains_a_queue() {
    const COUNT: usize = 100;
    let redis = RedisServer::new();
    let mut con = redis.conn();
    let sent = numbered("job", COUNT);
    lpush_many(&mut con, "bridge:jobs", &sent);
    let cache = cache();
    let mut sluice = Sluice::run_on(
        &example("bridge-list-to-stream.toml"),
        &redis.url(),
        cache.path(),
    );
    sluice.wait_for(
        "the jobs in bridge:jobs:log, the queue and processing lists empty (seen: (log, queue, \
         processing lists))",
        |_| {
            (
                xlen(&mut con, "bridge:jobs:log"),
                llen(&mut con, "bridge:jobs"),
                keys_matching(&mut con, "{bridge:jobs}:processing:*"),
            )
        },
        |seen| *seen == (COUNT, 0, Vec::new()),
    );
    sluice.shutdown();
    assert_eq!(
        payloads(&xrange_all(&mut con, "bridge:jobs:log")),
        sent,
        "every job logged once, in queue order"
    );
}

#[test]
fn bridge_stream_to_list_fills_a_queue() {
    const COUNT: usize = 100;
    let redis = RedisServer::new();
    let mut con = redis.conn();
    let cache = cache();
    let mut sluice = Sluice::run_on(
        &example("bridge-stream-to-list.toml"),
        &redis.url(),
        cache.path(),
    );
    // The group starts at `$`: only entries added after it exists are read.
    sluice.wait_for_log(&["pipeline started"], 1);
    let sent = numbered("task", COUNT);
    xadd_many(&mut con, "bridge:tasks", COUNT, |i| {
        vec![("payload", sent[i].clone())]
    });
    sluice.wait_until("the tasks in bridge:tasks:queue, acked", |_| {
        llen(&mut con, "bridge:tasks:queue") >= COUNT
            && pending_count(&mut con, "bridge:tasks", "bridge-stream-to-list") == 0
    });
    sluice.shutdown();

    // LPUSHed: the head is the newest, so popping from the tail gives them in order.
    let mut queue = lrange_all(&mut con, "bridge:tasks:queue");
    queue.reverse();
    assert_eq!(queue, sent, "every task queued once, in stream order");
}
