//! Redis Cluster: the same pipelines on a six-node cluster (three masters, three replicas)
//! given as `redis+cluster://` seeds. Keys of one source sit on different masters; each
//! command goes to the master of its slot, and a master that fails over mid-run is ridden
//! through.

use std::collections::BTreeSet;

use tempfile::TempDir;

use crate::support::cluster::RedisCluster;
use crate::support::keys::{
    keys_matching, llen, lpush_many, publish, shard_subscribers, spublish, ssubscribe, subscribers,
};
use crate::support::pipeline::{list_to_stream_at, pubsub_to_stream_at, stream_to_pubsub_at};
use crate::support::streams::{
    create_group, pending_ids, pending_if_group, read_as, xadd_many, xlen, xrange_all,
};
use crate::support::{Pipeline, Sluice, plugin};

/// Few enough for a debug build on two cores; enough for many batches.
const MESSAGES: usize = 3_000;

fn cache() -> TempDir {
    tempfile::tempdir().expect("create a temp dir for the plugin cache")
}

/// Stream `in` (group `g`) → uppercase → stream `out` on `url`.
fn stream_pipeline(url: &str, source: &str) -> Pipeline {
    orders_pipeline(url, source, "uppercase", r#"field = "payload""#)
}

/// Stream `orders` (group `g`, from the start, `source` settings added) → the example plugin
/// `plugin` with `config` → stream `orders:out`, on `url`.
fn orders_pipeline(url: &str, source: &str, plugin_name: &str, config: &str) -> Pipeline {
    Pipeline::write(
        "cluster",
        &format!(
            r#"[redis]
url = "{url}"

[source]
type = "stream"
stream = "orders"
group = "g"
start = "0"
block_ms = 100
{source}

[[processor]]
plugin = '{plugin}'
[processor.config]
{config}

[[sink]]
type = "stream"
stream = "orders:out"
"#,
            plugin = plugin(plugin_name).display()
        ),
    )
}

/// The `i` fields of `entries`, as a set, checking each appears once.
fn indexes(entries: &[crate::support::streams::Entry]) -> BTreeSet<usize> {
    let mut seen = BTreeSet::new();
    for e in entries {
        let i: usize = e.get("i").parse().expect("a numeric i");
        assert!(seen.insert(i), "message {i} written twice");
        assert_eq!(e.get("payload"), format!("MESSAGE {i}"));
    }
    seen
}

#[test]
fn a_stream_pipeline_on_a_cluster_delivers_every_message() {
    let cluster = RedisCluster::new();
    let mut con = cluster.conn();
    // Source and sink on different masters: nothing assumes one node.
    assert_ne!(cluster.master_of("orders"), cluster.master_of("orders:out"));
    xadd_many(&mut cluster.conn_for("orders"), "orders", MESSAGES, |i| {
        vec![("i", i.to_string()), ("payload", format!("message {i}"))]
    });
    let pipeline = stream_pipeline(&cluster.url(), "consumers = 2");
    let cache = cache();
    let mut sluice = Sluice::run_cached(pipeline.path(), cache.path());
    sluice.wait_for(
        "every message written and acked (seen: (out, pending))",
        |_| {
            (
                xlen(&mut con, "orders:out"),
                pending_if_group(&mut con, "orders", "g"),
            )
        },
        |seen| *seen == (MESSAGES, Some(0)),
    );
    sluice.shutdown();
    assert_eq!(
        indexes(&xrange_all(&mut con, "orders:out")),
        (0..MESSAGES).collect()
    );
}

#[test]
fn a_list_pipeline_on_a_cluster_delivers_and_dead_letters() {
    let cluster = RedisCluster::new();
    let mut con = cluster.conn();
    let items: Vec<String> = (0..500)
        .map(|i| {
            if i % 50 == 7 {
                "poison".into()
            } else {
                "ok".into()
            }
        })
        .collect();
    lpush_many(&mut cluster.conn_for("jobs"), "jobs", &items);
    let processor = format!(
        "[[processor]]\nplugin = '{}'\n[processor.config]\nfield = \"payload\"\n",
        plugin("faults").display()
    );
    let pipeline = list_to_stream_at(&cluster.url(), "", &processor);
    let cache = cache();
    let mut sluice = Sluice::run_cached(pipeline.path(), cache.path());
    sluice.wait_for(
        "ok items written, poison dead-lettered, queue empty (seen: (out, dead, queue))",
        |_| {
            (
                xlen(&mut con, "jobs:out"),
                xlen(&mut con, "jobs:dead"),
                llen(&mut con, "jobs"),
            )
        },
        |seen| *seen == (490, 10, 0),
    );
    sluice.shutdown();
    // The processing lists share the queue's slot, so its master holds them all.
    let mut master = cluster.node_conn(cluster.master_of("jobs"));
    for list in keys_matching(&mut master, "{jobs}:processing:*") {
        assert_eq!(llen(&mut master, &list), 0, "{list} left holding items");
    }
    let dead = xrange_all(&mut con, "jobs:dead");
    assert!(
        dead.iter()
            .all(|e| e.get("sluice.error") == "asked to dead-letter"),
        "{dead:?}"
    );
}

#[test]
fn status_pending_and_dlq_work_against_a_cluster() {
    let cluster = RedisCluster::new();
    let mut con = cluster.conn();
    xadd_many(&mut cluster.conn_for("orders"), "orders", 20, |i| {
        let payload = if i % 10 == 3 { "poison" } else { "ok" };
        vec![("i", i.to_string()), ("payload", payload.to_string())]
    });
    let pipeline = orders_pipeline(&cluster.url(), "", "faults", r#"field = "payload""#);
    let cache = cache();
    let mut sluice = Sluice::run_cached(pipeline.path(), cache.path());
    sluice.wait_for(
        "18 written, 2 dead letters (seen: (out, dead))",
        |_| (xlen(&mut con, "orders:out"), xlen(&mut con, "orders:dead")),
        |seen| *seen == (18, 2),
    );
    sluice.shutdown();
    let url = cluster.url();

    let status = Sluice::exec(["status", "--redis", &url, "--json"]);
    let rows: serde_json::Value = serde_json::from_str(&status.stdout()).expect("status JSON");
    let text = rows.to_string();
    assert!(
        text.contains("\"orders\""),
        "status lists stream orders: {text}"
    );

    // A consumer of another group that read one entry and died.
    create_group(&mut con, "orders", "other", "0");
    read_as(&mut con, "orders", "other", "ghost", 1);
    let held = pending_ids(&mut con, "orders", "other");
    assert_eq!(held.len(), 1);
    let pending = Sluice::exec(["pending", "orders", "other", "--redis", &url]).stdout();
    assert!(
        pending.contains(&held[0]) && pending.contains("ghost"),
        "{pending}"
    );

    let dlq = Sluice::exec(["dlq", "list", "orders:dead", "--redis", &url]);
    let listed = dlq.stdout();
    assert_eq!(
        listed.matches("asked to dead-letter").count(),
        2,
        "{listed}"
    );
}

#[test]
fn a_failover_of_the_source_master_loses_nothing() {
    let cluster = RedisCluster::new();
    let mut con = cluster.conn();
    xadd_many(&mut cluster.conn_for("orders"), "orders", MESSAGES, |i| {
        vec![("i", i.to_string()), ("action", "ok".to_string())]
    });
    // Slowed down (20 ms a batch of 20: about three seconds in all) so the failover lands
    // mid-run.
    let pipeline = orders_pipeline(&cluster.url(), "batch = 20", "faults", r#"sleep_ms = "20""#);
    let cache = cache();
    let mut sluice = Sluice::run_cached(pipeline.path(), cache.path());
    sluice.wait_for(
        "some output before the failover",
        |_| xlen(&mut con, "orders:out"),
        |n| *n > 0,
    );
    let master = cluster.master_of("orders");
    let replica = cluster.replica_of(master);
    let started = std::time::Instant::now();
    cluster.failover(replica);
    let during = xlen(&mut con, "orders:out");
    assert!(
        during < MESSAGES,
        "the failover came after the work: {during}"
    );
    sluice.wait_for(
        "output growing again after the failover",
        |_| xlen(&mut con, "orders:out"),
        |n| *n > during,
    );
    // Reported, not asserted: a figure for the documentation.
    eprintln!(
        "failover: promoted and writing again {} ms after CLUSTER FAILOVER",
        started.elapsed().as_millis()
    );
    sluice.wait_for(
        "every message written and acked after the failover (seen: (out, pending))",
        |_| {
            (
                xlen(&mut con, "orders:out"),
                pending_if_group(&mut con, "orders", "g"),
            )
        },
        |seen| seen.0 >= MESSAGES && seen.1 == Some(0),
    );
    assert_eq!(
        cluster.master_of("orders"),
        replica,
        "the replica serves the stream"
    );
    let out = xrange_all(&mut con, "orders:out");
    let seen: BTreeSet<usize> = out.iter().map(|e| e.get("i").parse().unwrap()).collect();
    assert_eq!(seen, (0..MESSAGES).collect(), "every message delivered");
    // One line for the failover, none per connection or per retry.
    let lines = sluice.wait_for_log(&["Redis Cluster masters changed"], 1);
    sluice.shutdown();
    let log = sluice.log();
    assert_eq!(
        crate::support::logs::lines_with_all(&log, &["Redis Cluster masters changed"]).len(),
        1,
        "{log}"
    );
    assert!(!log.contains("cluster client recovery"), "{log}");
    assert!(
        lines[0].contains(&format!("127.0.0.1:{replica}")),
        "{}",
        lines[0]
    );
}

/// `sluice validate` on `toml`: (exit code, stdout, stderr).
fn validate(toml: &str) -> (Option<i32>, String, String) {
    let pipeline = Pipeline::write("cluster", toml);
    let mut run = Sluice::spawn([
        std::ffi::OsStr::new("validate"),
        pipeline.path().as_os_str(),
    ]);
    let status = run.wait_exit(crate::support::PATIENCE);
    (status.code(), run.stdout(), run.log())
}

/// An atomic stream pipeline on `url`, reading `source`, writing `sink`, dead letters in
/// `dead` (the faults plugin: `poison` payloads are dead-lettered).
fn atomic_pipeline(url: &str, source: &str, sink: &str, dead: &str) -> String {
    format!(
        r#"atomic = true

[redis]
url = "{url}"

[source]
type = "stream"
stream = "{source}"
group = "g"
start = "0"
block_ms = 100
dead_letter = "{dead}"

[[processor]]
plugin = '{plugin}'
[processor.config]
field = "payload"

[[sink]]
type = "stream"
stream = "{sink}"
"#,
        plugin = plugin("faults").display()
    )
}

#[test]
fn validate_names_the_keys_an_atomic_pipeline_spreads_over_slots_and_the_tag() {
    let url = "redis+cluster://127.0.0.1:7000,127.0.0.1:7001";
    let (code, stdout, stderr) =
        validate(&atomic_pipeline(url, "orders", "orders:out", "orders:dead"));
    assert_eq!(code, Some(1), "stdout: {stdout}\nstderr: {stderr}");
    for want in [
        "`orders` (slot 105)",
        "`orders:out` (slot 16221)",
        "`{orders}:out`",
        "`{orders}:dead`",
        "one hash tag",
    ] {
        assert!(stderr.contains(want), "missing {want}: {stderr}");
    }
    assert!(!stdout.contains("ok:"), "{stdout}");

    let (code, stdout, stderr) = validate(&atomic_pipeline(
        url,
        "{orders}",
        "{orders}:out",
        "{orders}:dead",
    ));
    assert_eq!(code, Some(0), "tagged keys pass: {stdout}{stderr}");

    // The same untagged keys are fine on a single Redis.
    let (code, _, stderr) = validate(&atomic_pipeline(
        "redis://127.0.0.1:7000",
        "orders",
        "orders:out",
        "orders:dead",
    ));
    assert_eq!(code, Some(0), "{stderr}");
}

#[test]
fn validate_accepts_pubsub_sources_on_a_cluster() {
    for source in [
        "channels = [\"events\"]\npatterns = [\"sensor:*\"]",
        "channels = [\"events\", \"alerts\"]\nsharded = true",
    ] {
        let (code, stdout, stderr) = validate(&format!(
            "[redis]\nurl = \"redis+cluster://127.0.0.1:7000\"\n\n[source]\ntype = \"pubsub\"\n{source}\n\n[[sink]]\ntype = \"stdout\"\n"
        ));
        assert_eq!(code, Some(0), "{source}: {stdout}{stderr}");
    }
}

#[test]
fn an_atomic_pipeline_with_tagged_keys_commits_on_a_cluster() {
    let cluster = RedisCluster::new();
    let mut con = cluster.conn();
    xadd_many(&mut cluster.conn_for("{orders}"), "{orders}", 200, |i| {
        let payload = if i % 20 == 5 { "poison" } else { "ok" };
        vec![("i", i.to_string()), ("payload", payload.to_string())]
    });
    let pipeline = Pipeline::write(
        "cluster",
        &atomic_pipeline(&cluster.url(), "{orders}", "{orders}:out", "{orders}:dead"),
    );
    let cache = cache();
    let mut sluice = Sluice::run_cached(pipeline.path(), cache.path());
    sluice.wait_for(
        "output, dead letters and acks committed (seen: (out, dead, pending))",
        |_| {
            (
                xlen(&mut con, "{orders}:out"),
                xlen(&mut con, "{orders}:dead"),
                pending_if_group(&mut con, "{orders}", "g"),
            )
        },
        |seen| *seen == (190, 10, Some(0)),
    );
    sluice.shutdown();
}

/// Partitioned family `orders` (`partitions` source partitions, group `g`) → faults (ok,
/// passes records through) → family `orders:out` partitioned by field `key`.
fn partitioned_pipeline(url: &str, partitions: u32, source: &str) -> Pipeline {
    Pipeline::write(
        "parts",
        &format!(
            r#"[redis]
url = "{url}"

[source]
type = "stream"
stream = "orders"
partitions = {partitions}
group = "g"
start = "0"
block_ms = 100
{source}

[[processor]]
plugin = '{plugin}'

[[sink]]
type = "stream"
stream = "orders:out"
partitions = {partitions}
partition_by = "key"
"#,
            plugin = plugin("faults").display()
        ),
    )
}

/// The partition of `n` that key `key` belongs to, as the README documents it: FNV-1a (64
/// bit) of the key's bytes, mod `n`.
fn fnv_partition(key: &str, n: u32) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % u64::from(n)) as u32
}

/// Loads `total` messages into family `orders` as a keyed producer does: message `i` has
/// field `i` and `key` = `k<i % 97>`, and goes to its key's partition, through
/// `conn_for(partition)`.
fn load_partitions<C: redis::ConnectionLike>(
    partitions: u32,
    total: usize,
    mut conn_for: impl FnMut(&str) -> C,
) {
    for p in 0..partitions {
        let key = format!("orders:{{{p}}}");
        let mine: Vec<usize> = (0..total)
            .filter(|i| fnv_partition(&format!("k{}", i % 97), partitions) == p)
            .collect();
        if mine.is_empty() {
            continue;
        }
        xadd_many(&mut conn_for(&key), &key, mine.len(), |n| {
            let i = mine[n];
            vec![("i", i.to_string()), ("key", format!("k{}", i % 97))]
        });
    }
}

/// (messages written to the output family, pending summed over the input family; None
/// while a group is missing).
fn partition_progress(
    con: &mut impl redis::ConnectionLike,
    partitions: u32,
) -> (usize, Option<usize>) {
    let mut out = 0;
    let mut pending = Some(0);
    for p in 0..partitions {
        out += xlen(con, &format!("orders:out:{{{p}}}"));
        pending = match (
            pending,
            pending_if_group(con, &format!("orders:{{{p}}}"), "g"),
        ) {
            (Some(a), Some(b)) => Some(a + b),
            _ => None,
        };
    }
    (out, pending)
}

/// Checks the output family: every message in `0..total`, each in its key's partition, and
/// with `ordered`, each key's messages in input order, none twice.
fn check_partitioned_output(
    con: &mut impl redis::ConnectionLike,
    partitions: u32,
    total: usize,
    ordered: bool,
) {
    let mut seen = BTreeSet::new();
    for p in 0..partitions {
        let mut last_of_key: std::collections::HashMap<String, usize> = Default::default();
        for e in xrange_all(con, &format!("orders:out:{{{p}}}")) {
            let i: usize = e.get("i").parse().unwrap();
            let key = e.get("key").to_string();
            assert_eq!(
                fnv_partition(&key, partitions),
                p,
                "message {i} of {key} in partition {p}"
            );
            let first = seen.insert(i);
            if ordered {
                assert!(first, "message {i} written twice");
                if let Some(prev) = last_of_key.insert(key.clone(), i) {
                    assert!(prev < i, "key {key}: message {i} after {prev}");
                }
            }
        }
    }
    assert_eq!(seen, (0..total).collect(), "every message delivered");
}

#[test]
fn a_partitioned_family_is_read_and_written_by_partition_on_one_redis() {
    const PARTITIONS: u32 = 4;
    const TOTAL: usize = 2_000;
    let redis = crate::support::RedisServer::new();
    load_partitions(PARTITIONS, TOTAL, |_| redis.conn());
    let pipeline = partitioned_pipeline(&redis.url(), PARTITIONS, "");
    let cache = cache();
    let mut sluice = Sluice::run_cached(pipeline.path(), cache.path());
    let mut con = redis.conn();
    sluice.wait_for(
        "every message written and acked (seen: (out, pending))",
        |_| partition_progress(&mut con, PARTITIONS),
        |seen| *seen == (TOTAL, Some(0)),
    );
    sluice.shutdown();
    check_partitioned_output(&mut con, PARTITIONS, TOTAL, true);
}

#[test]
fn two_processes_share_a_16_partition_family_on_a_cluster_through_a_kill_9() {
    const PARTITIONS: u32 = 16;
    const TOTAL: usize = 50_000;
    let cluster = RedisCluster::new();
    load_partitions(PARTITIONS, TOTAL, |key| cluster.conn_for(key));
    let pipeline = partitioned_pipeline(
        &cluster.url(),
        PARTITIONS,
        "batch = 100\nclaim_idle_ms = 2000",
    );
    let (cache_a, cache_b) = (cache(), cache());
    let mut a = Sluice::run_cached(pipeline.path(), cache_a.path());
    let mut b = Sluice::run_cached(pipeline.path(), cache_b.path());
    let mut con = cluster.conn();
    b.wait_for(
        "a fifth of the work done before the kill",
        |_| partition_progress(&mut con, PARTITIONS).0,
        |out| *out >= TOTAL / 5,
    );
    assert!(a.is_running(), "both processes ran");
    let (pid_a, pid_b) = (a.pid(), b.pid());
    a.kill9();
    let at_kill = partition_progress(&mut con, PARTITIONS).0;
    assert!(at_kill < TOTAL, "the kill came after the work: {at_kill}");
    b.wait_for(
        "every message written and acked by the survivor (seen: (out, pending))",
        |_| partition_progress(&mut con, PARTITIONS),
        |seen| seen.0 >= TOTAL && seen.1 == Some(0),
    );
    // Both processes read: consumer names hold the pid (`<host>-<pid>-<index>`); a process
    // that stops removes its own, so look before the survivor stops.
    let mut names = Vec::new();
    for p in 0..PARTITIONS {
        let consumers: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(format!("orders:{{{p}}}"))
            .arg("g")
            .query(&mut con)
            .expect("XINFO CONSUMERS");
        for c in consumers {
            names.push(redis::from_redis_value::<String>(c["name"].clone()).unwrap());
        }
    }
    for pid in [pid_a, pid_b] {
        assert!(
            names.iter().any(|n| n.contains(&format!("-{pid}-"))),
            "no consumer of process {pid}: {names:?}"
        );
    }
    b.shutdown();
    check_partitioned_output(&mut con, PARTITIONS, TOTAL, false);
}

#[test]
fn the_key_value_store_counts_on_a_cluster() {
    const N: usize = 300;
    let cluster = RedisCluster::new();
    let mut con = cluster.conn();
    xadd_many(&mut cluster.conn_for("orders"), "orders", N, |i| {
        vec![("i", i.to_string())]
    });
    let pipeline = orders_pipeline(&cluster.url(), "consumers = 2", "counter", r#"key = "n""#);
    let cache = cache();
    let mut sluice = Sluice::run_cached(pipeline.path(), cache.path());
    sluice.wait_for(
        "every message counted, written and acked (seen: (out, pending))",
        |_| {
            (
                xlen(&mut con, "orders:out"),
                pending_if_group(&mut con, "orders", "g"),
            )
        },
        |seen| *seen == (N, Some(0)),
    );
    sluice.shutdown();
    let counts: BTreeSet<usize> = xrange_all(&mut con, "orders:out")
        .iter()
        .map(|e| e.get("count").parse().unwrap())
        .collect();
    assert_eq!(
        counts,
        (1..=N).collect(),
        "one count per message, none twice"
    );
    let stored: usize = redis::cmd("GET")
        .arg("sluice:kv:{cluster}:n")
        .query(&mut con)
        .expect("GET the counter");
    assert_eq!(stored, N);
}

#[test]
fn a_killed_source_master_is_ridden_through_and_loses_nothing() {
    let mut cluster = RedisCluster::new();
    let mut con = cluster.conn();
    let master = cluster.master_of("orders");
    let mut loader = cluster.conn_for("orders");
    xadd_many(&mut loader, "orders", MESSAGES, |i| {
        vec![("i", i.to_string()), ("action", "ok".to_string())]
    });
    // The input reached the replica before its master dies (replication is asynchronous).
    let replicas: usize = redis::cmd("WAIT")
        .arg(1)
        .arg(5000)
        .query(&mut loader)
        .expect("WAIT");
    assert_eq!(replicas, 1);
    let pipeline = orders_pipeline(
        &cluster.url(),
        "batch = 20\nclaim_idle_ms = 2000",
        "faults",
        r#"sleep_ms = "20""#,
    );
    let cache = cache();
    let mut sluice = Sluice::run_cached(pipeline.path(), cache.path());
    sluice.wait_for(
        "some output before the kill",
        |_| xlen(&mut con, "orders:out"),
        |n| *n > 0,
    );
    let replica = cluster.replica_of(master);
    let started = std::time::Instant::now();
    cluster.kill9(master);
    let during = xlen(&mut con, "orders:out");
    assert!(during < MESSAGES, "the kill came after the work: {during}");
    sluice.wait_until("the replica promoted", |_| {
        cluster
            .try_node_conn(replica)
            .and_then(|mut c| redis::cmd("ROLE").query::<Vec<redis::Value>>(&mut c).ok())
            .is_some_and(
                |role| matches!(role.first(), Some(redis::Value::BulkString(r)) if r == b"master"),
            )
    });
    // Reported, not asserted: figures for the documentation.
    eprintln!(
        "kill -9 of the master: replica promoted {} ms later",
        started.elapsed().as_millis()
    );
    // Until the cluster has noticed, the test's own reads may fail too: retry them, each on
    // a fresh connection (the synchronous one keeps its old slot map).
    sluice.wait_for(
        "every message written and acked after the failover (seen: (out, pending))",
        |_| {
            let mut con = cluster.conn();
            let out: redis::RedisResult<usize> =
                redis::cmd("XLEN").arg("orders:out").query(&mut con);
            let pending: redis::RedisResult<(usize, redis::Value, redis::Value, redis::Value)> =
                redis::cmd("XPENDING")
                    .arg("orders")
                    .arg("g")
                    .query(&mut con);
            (out.ok(), pending.ok().map(|p| p.0))
        },
        |seen| seen.0.is_some_and(|n| n >= MESSAGES) && seen.1 == Some(0),
    );
    eprintln!(
        "kill -9 of the master: every message settled {} ms later",
        started.elapsed().as_millis()
    );
    assert_eq!(
        cluster.master_of("orders"),
        replica,
        "the replica took over"
    );
    let out = xrange_all(&mut cluster.conn(), "orders:out");
    let seen: BTreeSet<usize> = out.iter().map(|e| e.get("i").parse().unwrap()).collect();
    assert_eq!(seen, (0..MESSAGES).collect(), "every message delivered");
    let changes = sluice.wait_for_log(&["Redis Cluster masters changed"], 1);
    assert!(
        changes[0].contains(&format!("127.0.0.1:{replica}=")),
        "{}",
        changes[0]
    );
    sluice.shutdown();
    let log = sluice.log();
    assert_eq!(
        crate::support::logs::lines_with_all(&log, &["Redis Cluster masters changed"]).len(),
        1,
        "one line for the failover: {log}"
    );
}

#[test]
fn a_record_without_its_partition_field_is_dead_lettered() {
    let redis = crate::support::RedisServer::new();
    let mut con = redis.conn();
    xadd_many(&mut con, "in", 40, |i| {
        let mut fields = vec![("i", i.to_string())];
        if i % 10 != 3 {
            fields.push(("key", format!("k{i}")));
        }
        fields
    });
    let pipeline = Pipeline::write(
        "parts",
        &format!(
            r#"[redis]
url = "{url}"

[source]
type = "stream"
stream = "in"
group = "g"
start = "0"
block_ms = 100

[[processor]]
plugin = '{plugin}'

[[sink]]
type = "stream"
stream = "out"
partitions = 4
partition_by = "key"
"#,
            url = redis.url(),
            plugin = plugin("faults").display()
        ),
    );
    let cache = cache();
    let mut sluice = Sluice::run_cached(pipeline.path(), cache.path());
    sluice.wait_for(
        "36 written over the partitions, 4 dead letters, none pending (seen: (out, dead, pending))",
        |_| {
            let out: usize = (0..4)
                .map(|p| xlen(&mut con, &format!("out:{{{p}}}")))
                .sum();
            (
                out,
                xlen(&mut con, "in:dead"),
                pending_if_group(&mut con, "in", "g"),
            )
        },
        |seen| *seen == (36, 4, Some(0)),
    );
    sluice.shutdown();
    for dead in xrange_all(&mut con, "in:dead") {
        assert!(
            dead.get("sluice.error").contains("no field `key`"),
            "{dead:?}"
        );
    }
}

#[test]
fn a_pubsub_sink_publishes_to_channels_in_different_slots_on_a_cluster() {
    const N: usize = 200;
    let cluster = RedisCluster::new();
    // `a` and `b` hash to slots on different masters; PUBLISH reaches subscribers on any node.
    let mut subscriber = cluster.node_conn(cluster.master_of("orders"));
    let mut pubsub = subscriber.as_pubsub();
    pubsub.subscribe(&["a", "b"]).expect("SUBSCRIBE");
    pubsub
        .set_read_timeout(Some(std::time::Duration::from_millis(200)))
        .expect("read timeout");
    xadd_many(&mut cluster.conn_for("orders"), "orders", N, |i| {
        let channel = if i % 2 == 0 { "a" } else { "b" };
        vec![("ch", channel.to_string()), ("payload", i.to_string())]
    });
    let pipeline = stream_to_pubsub_at(&cluster.url(), r#"channel_field = "ch""#);
    let cache = cache();
    let mut sluice = Sluice::run_cached(pipeline.path(), cache.path());
    let mut got: Vec<(String, usize)> = Vec::new();
    let deadline = std::time::Instant::now() + crate::support::PATIENCE;
    while got.len() < N && std::time::Instant::now() < deadline && sluice.is_running() {
        if let Ok(msg) = pubsub.get_message() {
            let payload: String = msg.get_payload().expect("a text payload");
            got.push((msg.get_channel_name().to_string(), payload.parse().unwrap()));
        }
    }
    assert_eq!(
        got.len(),
        N,
        "every record published: {got:?}\n{}",
        sluice.log()
    );
    for (channel, i) in &got {
        assert_eq!(channel, if i % 2 == 0 { "a" } else { "b" });
    }
    sluice.shutdown();
}

#[test]
fn dlq_replay_sends_dead_letters_back_to_streams_in_different_slots() {
    let cluster = RedisCluster::new();
    // One dead-letter stream shared by two sources on different masters.
    assert_ne!(cluster.master_of("orders"), cluster.master_of("jobs:out"));
    xadd_many(&mut cluster.conn_for("dead"), "dead", 10, |i| {
        let source = if i % 2 == 0 { "orders" } else { "jobs:out" };
        vec![
            ("sluice.stream", source.to_string()),
            ("sluice.source_type", "stream".to_string()),
            ("sluice.id", format!("{}-0", i + 1)),
            ("sluice.error", "asked to dead-letter".to_string()),
            ("i", i.to_string()),
        ]
    });
    let url = cluster.url();
    let replayed = Sluice::exec(["dlq", "replay", "dead", "--redis", &url]);
    let mut con = cluster.conn();
    assert_eq!(
        (
            xlen(&mut con, "orders"),
            xlen(&mut con, "jobs:out"),
            xlen(&mut con, "dead")
        ),
        (5, 5, 0),
        "{}{}",
        replayed.stdout(),
        replayed.log()
    );
}

/// The (channel, payload) pairs of `entries`, as a set, checking each appears once.
fn captured(entries: &[crate::support::streams::Entry]) -> BTreeSet<(String, String)> {
    let mut seen = BTreeSet::new();
    for e in entries {
        let pair = (e.get("channel").to_string(), e.get("payload").to_string());
        assert!(seen.insert(pair.clone()), "{pair:?} captured twice");
    }
    seen
}

#[test]
fn a_pubsub_source_on_a_cluster_receives_what_any_node_publishes() {
    const N: usize = 300;
    let cluster = RedisCluster::new();
    let mut con = cluster.conn();
    // Channels whose slots sit on different masters: plain pub/sub ignores slots.
    assert_ne!(cluster.master_of("events"), cluster.master_of("alerts"));
    let pipeline = pubsub_to_stream_at(
        &cluster.url(),
        r#"channels = ["events", "alerts"]"#,
        "captured",
    );
    let cache = cache();
    let mut sluice = Sluice::run_cached(pipeline.path(), cache.path());
    // One subscription, on one node, for both channels.
    let on = sluice.wait_for(
        "sluice subscribed to both channels on one node (seen: nodes with subscribers)",
        |_| {
            cluster
                .ports()
                .into_iter()
                .filter(|port| {
                    let mut node = cluster.node_conn(*port);
                    subscribers(&mut node, "events") + subscribers(&mut node, "alerts") > 0
                })
                .collect::<Vec<u16>>()
        },
        |nodes| nodes.len() == 1,
    )[0];
    let mut node = cluster.node_conn(on);
    assert_eq!(
        (
            subscribers(&mut node, "events"),
            subscribers(&mut node, "alerts")
        ),
        (1, 1)
    );
    // Published through every other node, masters and replicas: the cluster bus carries
    // each PUBLISH to the subscribed one.
    let others: Vec<u16> = cluster.ports().into_iter().filter(|p| *p != on).collect();
    let mut publishers: Vec<redis::Connection> =
        others.iter().map(|p| cluster.node_conn(*p)).collect();
    let mut sent = BTreeSet::new();
    for i in 0..N {
        let channel = if i % 2 == 0 { "events" } else { "alerts" };
        let payload = format!("message {i}");
        publish(&mut publishers[i % others.len()], channel, &payload);
        sent.insert((channel.to_string(), payload));
    }
    sluice.wait_for(
        "every message captured",
        |_| xlen(&mut con, "captured"),
        |n| *n >= N,
    );
    sluice.shutdown();
    assert_eq!(captured(&xrange_all(&mut con, "captured")), sent);
}

/// Waits until sluice holds a sharded subscription to each of `channels` on the master owning
/// its slot.
fn wait_shard_subscribed(sluice: &mut Sluice, cluster: &RedisCluster, channels: &[&str]) {
    sluice.wait_for(
        "sharded subscriptions on each channel's master (seen: subscribers per channel)",
        |_| {
            channels
                .iter()
                .map(|ch| shard_subscribers(&mut cluster.conn_for(ch), ch))
                .collect::<Vec<usize>>()
        },
        |seen| seen.iter().all(|n| *n == 1),
    );
}

#[test]
fn a_sharded_pubsub_source_on_a_cluster_reads_each_channel_on_its_shard() {
    const N: usize = 300;
    let channels = ["events", "alerts", "a"];
    let cluster = RedisCluster::new();
    let mut con = cluster.conn();
    let masters: BTreeSet<u16> = channels.iter().map(|ch| cluster.master_of(ch)).collect();
    assert_eq!(masters.len(), 3, "one channel on each master");
    let pipeline = pubsub_to_stream_at(
        &cluster.url(),
        "channels = [\"events\", \"alerts\", \"a\"]\nsharded = true",
        "captured",
    );
    let cache = cache();
    let mut sluice = Sluice::run_cached(pipeline.path(), cache.path());
    wait_shard_subscribed(&mut sluice, &cluster, &channels);
    let mut sent = BTreeSet::new();
    for i in 0..N {
        let channel = channels[i % channels.len()];
        let payload = format!("message {i}");
        assert_eq!(
            spublish(&mut cluster.conn_for(channel), channel, &payload),
            1,
            "SPUBLISH {channel} reached sluice"
        );
        sent.insert((channel.to_string(), payload));
    }
    sluice.wait_for(
        "every message captured",
        |_| xlen(&mut con, "captured"),
        |n| *n >= N,
    );
    sluice.shutdown();
    assert_eq!(captured(&xrange_all(&mut con, "captured")), sent);
}

#[test]
fn a_sharded_pubsub_source_follows_its_channel_to_the_new_master_after_a_failover() {
    const N: usize = 100;
    let channels = ["events", "alerts"];
    let cluster = RedisCluster::new();
    let mut con = cluster.conn();
    let pipeline = pubsub_to_stream_at(
        &cluster.url(),
        "channels = [\"events\", \"alerts\"]\nsharded = true",
        "captured",
    );
    let cache = cache();
    let mut sluice = Sluice::run_cached(pipeline.path(), cache.path());
    wait_shard_subscribed(&mut sluice, &cluster, &channels);
    let master = cluster.master_of("events");
    let replica = cluster.replica_of(master);
    cluster.failover(replica);
    // Published on the old master before it hears of the failover, a message would reach
    // no one: wait until every node agrees.
    sluice.wait_until(
        "every node sees the replica as the channel's master",
        |_| cluster.sole_master_of("events") == Some(replica),
    );
    let mut new_master = cluster.node_conn(replica);
    // Pub/sub keeps nothing: what is published before sluice is subscribed on the new
    // master is lost. Probe until a probe arrives; only then does the count start.
    let mut probes = 0;
    sluice.wait_for(
        "a probe SPUBLISHed on the new master captured (seen: probes sent)",
        |_| {
            probes += 1;
            spublish(&mut new_master, "events", &format!("probe {probes}"));
            let captured = xrange_all(&mut con, "captured");
            (
                probes,
                captured
                    .iter()
                    .any(|e| e.get("payload").starts_with("probe ")),
            )
        },
        |(_, arrived)| *arrived,
    );
    let mut sent = BTreeSet::new();
    for i in 0..N {
        let channel = channels[i % channels.len()];
        let payload = format!("after {i}");
        let reached = if channel == "events" {
            spublish(&mut new_master, channel, &payload)
        } else {
            spublish(&mut cluster.conn_for(channel), channel, &payload)
        };
        assert_eq!(reached, 1, "SPUBLISH {channel} reached sluice");
        sent.insert((channel.to_string(), payload));
    }
    let after = |con: &mut redis::cluster::ClusterConnection| -> BTreeSet<(String, String)> {
        captured(&xrange_all(con, "captured"))
            .into_iter()
            .filter(|(_, payload)| payload.starts_with("after "))
            .collect()
    };
    sluice.wait_for(
        "every message published after the resubscription captured (seen: how many)",
        |_| after(&mut con).len(),
        |n| *n >= N,
    );
    assert_eq!(after(&mut con), sent);
    // Redis told the old master's subscriber that its slot moved, or dropped it.
    sluice.wait_for_log(&["pub/sub subscription lost: resubscribing"], 1);
    assert_eq!(
        shard_subscribers(&mut cluster.node_conn(replica), "events"),
        1,
        "subscribed on the new master"
    );
    sluice.shutdown();
}

#[test]
fn a_sharded_pubsub_sink_spublishes_each_channel_on_its_shard() {
    const N: usize = 200;
    let cluster = RedisCluster::new();
    assert_ne!(cluster.master_of("events"), cluster.master_of("alerts"));
    // A sharded subscriber hears only SPUBLISH, and only on the channel's own shard.
    let events = ssubscribe(cluster.conn_for("events"), &["events"]);
    let alerts = ssubscribe(cluster.conn_for("alerts"), &["alerts"]);
    xadd_many(&mut cluster.conn_for("orders"), "orders", N, |i| {
        let channel = if i % 2 == 0 { "events" } else { "alerts" };
        vec![("ch", channel.to_string()), ("payload", i.to_string())]
    });
    let pipeline = stream_to_pubsub_at(&cluster.url(), "channel_field = \"ch\"\nsharded = true");
    let cache = cache();
    let mut sluice = Sluice::run_cached(pipeline.path(), cache.path());
    for (rx, channel, parity) in [(&events, "events", 0), (&alerts, "alerts", 1)] {
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + crate::support::PATIENCE;
        while got.len() < N / 2 && std::time::Instant::now() < deadline && sluice.is_running() {
            if let Ok(msg) = rx.recv_timeout(std::time::Duration::from_millis(200)) {
                got.push(msg);
            }
        }
        let want: Vec<(String, String)> = (0..N)
            .filter(|i| i % 2 == parity)
            .map(|i| (channel.to_string(), i.to_string()))
            .collect();
        assert_eq!(
            got,
            want,
            "{channel}: every record, in order\n{}",
            sluice.log()
        );
    }
    sluice.shutdown();
}
