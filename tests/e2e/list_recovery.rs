//! List sources when things go wrong: an item that kills every process that takes it, a dead
//! letter that cannot be written, a consumer that is alive when the reclaimer looks
//! (DESIGN.md, "Delivery semantics": list source).

use std::time::Instant;

use tempfile::TempDir;

use crate::support::keys::{keys_matching, llen, lpush_many, lrange_all};
use crate::support::pipeline::list_to_stream;
use crate::support::streams::{Entry, xlen, xrange_all};
use crate::support::{Pipeline, RedisServer, Sluice, plugin};

const PROCESSING: &str = "{jobs}:processing:*";
const DELIVERIES: &str = "{jobs}:deliveries";

/// A list → faults plugin → stream pipeline: list `jobs`, sink stream `jobs:out`, dead letters
/// in `jobs:dead`. The item is the action (`field = "payload"`); a `loop` item spins for ten
/// minutes, far longer than any test waits, so the process holds it until killed.
fn list_pipeline(redis: &RedisServer, source: &str) -> Pipeline {
    let processor = format!(
        "[[processor]]\nplugin = '{}'\ntimeout_ms = 600000\n[processor.config]\nfield = \"payload\"\n",
        plugin("faults").display()
    );
    list_to_stream(redis, source, &processor)
}

fn cache() -> TempDir {
    tempfile::tempdir().expect("create a temp dir for the plugin cache")
}

/// Every item held in a processing list, and the redelivery counts recorded.
fn held(con: &mut redis::Connection) -> (Vec<String>, Vec<u32>) {
    let items = keys_matching(con, PROCESSING)
        .iter()
        .flat_map(|list| lrange_all(con, list))
        .collect();
    let counts = redis::cmd("HVALS")
        .arg(DELIVERIES)
        .query(con)
        .expect("HVALS deliveries");
    (items, counts)
}

#[test]
fn a_list_item_that_kills_every_process_is_dead_lettered_after_max_deliveries() {
    const MAX_DELIVERIES: u32 = 2;
    const OK: usize = 10;
    let redis = RedisServer::new();
    let mut con = redis.conn();
    let mut items = vec!["loop"];
    items.extend(vec!["ok"; OK]);
    lpush_many(&mut con, "jobs", &items);
    // Batch 1: the killer item is alone in its batch, the ok items wait behind it.
    let pipeline = list_pipeline(
        &redis,
        &format!("batch = 1\nmax_deliveries = {MAX_DELIVERIES}"),
    );

    // Each run takes the item and dies with it (kill -9, as an OOM kill or a segfault
    // would). The first run takes it from the queue; each restart on this host takes over the
    // dead predecessor's name and picks the item up from its processing list, which must count
    // a delivery, or the item kills every restart forever.
    for run in 1..=MAX_DELIVERIES {
        let cache = cache();
        let mut sluice = Sluice::run_cached(pipeline.path(), cache.path());
        let redelivered = run - 1;
        let expect_counts = if redelivered == 0 {
            vec![]
        } else {
            vec![redelivered]
        };
        sluice.wait_for(
            &format!(
                "run {run}: the loop item held, {redelivered} redelivery counted (seen: (held, counts))"
            ),
            |_| held(&mut con),
            |(items, counts)| items == &["loop"] && *counts == expect_counts,
        );
        sluice.kill9();
    }

    let cache = cache();
    let mut sluice = Sluice::run_cached(pipeline.path(), cache.path());
    sluice.wait_for(
        "the loop item dead-lettered without running again, the ok items written, nothing held \
         (seen: (out, dead, queue, held))",
        |_| {
            (
                xlen(&mut con, "jobs:out"),
                xlen(&mut con, "jobs:dead"),
                llen(&mut con, "jobs"),
                held(&mut con),
            )
        },
        |seen| *seen == (OK, 1, 0, (Vec::new(), Vec::new())),
    );
    sluice.shutdown();

    let dead: Vec<Entry> = xrange_all(&mut con, "jobs:dead");
    let letter = &dead[0];
    assert_eq!(letter.get("payload"), "loop");
    assert_eq!(letter.get("sluice.stream"), "jobs");
    assert_eq!(
        letter.get("sluice.deliveries"),
        (MAX_DELIVERIES + 1).to_string(),
        "delivered once per run, the last one only to dead-letter it: {letter:?}"
    );
    assert_eq!(
        letter.get("sluice.error_class"),
        "unsettled",
        "no run recorded an outcome: {letter:?}"
    );
}

#[test]
fn a_list_item_whose_dead_letter_cannot_be_written_is_settled_once_it_can() {
    const OK: usize = 20;
    let redis = RedisServer::new();
    let mut con = redis.conn();
    // The dead-letter key holds a string: every XADD to it fails (WRONGTYPE), as a
    // misconfigured or full dead-letter Redis would refuse it.
    let () = redis::cmd("SET")
        .arg("jobs:dead")
        .arg("not a stream")
        .query(&mut con)
        .expect("SET jobs:dead");
    let mut items = vec!["poison"];
    items.extend(vec!["ok"; OK]);
    lpush_many(&mut con, "jobs", &items);
    let pipeline = list_pipeline(&redis, "batch = 1");

    let cache = cache();
    let mut sluice = Sluice::run_cached(pipeline.path(), cache.path());
    sluice.wait_for(
        "the ok items written while the poison item waits in the processing list \
         (seen: (out, queue, held items))",
        |_| {
            (
                xlen(&mut con, "jobs:out"),
                llen(&mut con, "jobs"),
                held(&mut con).0,
            )
        },
        |seen| *seen == (OK, 0, vec!["poison".to_owned()]),
    );
    sluice.wait_for_log(&["cannot write dead letters"], 1);

    // The dead-letter stream works again: the live consumer must settle what it holds by
    // itself, without a restart.
    let _: i64 = redis::cmd("DEL")
        .arg("jobs:dead")
        .query(&mut con)
        .expect("DEL jobs:dead");
    let fixed = Instant::now();
    sluice.wait_for(
        "the poison item dead-lettered and nothing held (seen: (dead, held))",
        |_| (xlen(&mut con, "jobs:dead"), held(&mut con)),
        |seen| *seen == (1, (Vec::new(), Vec::new())),
    );
    println!(
        "held item settled {} ms after the dead-letter stream accepted writes again",
        fixed.elapsed().as_millis()
    );
    sluice.shutdown();

    let dead = xrange_all(&mut con, "jobs:dead");
    assert_eq!(dead[0].get("payload"), "poison", "{dead:?}");
    assert_eq!(xlen(&mut con, "jobs:out"), OK, "nothing written twice");
}

/// The reclaimer's take-over of one consumer, called the way the runtime calls it. The race it
/// closes (a consumer restarting between a heartbeat check and the move) cannot be timed from
/// outside, so this checks the guard itself: the check and the move are one script, which
/// refuses while the heartbeat exists and moves everything once it is gone.
#[test]
fn a_take_over_checks_the_heartbeat_in_the_same_script_as_the_move() {
    use sluice::source::list::{Keys, take_over};
    let redis = RedisServer::new();
    let mut con = redis.conn();
    let processing = "{jobs}:processing:host-0";
    let heartbeat = "{jobs}:consumer:host-0";
    let () = redis::pipe()
        .cmd("RPUSH")
        .arg(processing)
        .arg(&["newer", "older"])
        .ignore()
        .cmd("SET")
        .arg(heartbeat)
        .arg("4242")
        .arg("PX")
        .arg(60_000)
        .ignore()
        .query(&mut con)
        .expect("a consumer holding two items");
    let keys = Keys::new("jobs");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let client = sluice::conn::client(&redis.url()).expect("a client");
    let take_over_now = || {
        runtime.block_on(async {
            let mut conn = sluice::conn::manager(&client, sluice::conn::COMMAND_TIMEOUT)
                .expect("a connection");
            take_over(&mut conn, &keys, "host-0")
                .await
                .expect("the take-over script")
        })
    };

    assert_eq!(take_over_now(), None, "a live consumer keeps its items");
    assert_eq!(lrange_all(&mut con, processing), ["newer", "older"]);
    assert_eq!(llen(&mut con, "jobs"), 0);

    let _: i64 = redis::cmd("DEL")
        .arg(heartbeat)
        .query(&mut con)
        .expect("DEL the heartbeat");
    assert_eq!(take_over_now(), Some(2), "a dead consumer's items go back");
    assert_eq!(
        lrange_all(&mut con, "jobs"),
        ["newer", "older"],
        "oldest at the consumer end (the tail) of the queue"
    );
    assert_eq!(
        held(&mut con),
        (Vec::new(), vec![1, 1]),
        "a delivery counted each"
    );
}

#[test]
fn a_consumer_whose_name_was_taken_does_not_take_it_back() {
    const EACH: usize = 10;
    let redis = RedisServer::new();
    let mut con = redis.conn();
    // Heartbeats renewed every second; ok items written as they come.
    let pipeline = list_pipeline(&redis, "claim_idle_ms = 3000");
    let cache = cache();
    let mut sluice = Sluice::run_cached(pipeline.path(), cache.path());
    lpush_many(&mut con, "jobs", &["ok"; EACH]);
    sluice.wait_until("the first items written", |_| {
        xlen(&mut con, "jobs:out") == EACH
    });
    let beats = keys_matching(&mut con, "{jobs}:consumer:*");
    assert_eq!(beats.len(), 1, "one consumer: {beats:?}");
    let name = beats[0].clone();

    // As if this process had stalled past its heartbeat and a restart on this host (here: the
    // test process, which is alive) had claimed the name.
    let other = std::process::id().to_string();
    let () = redis::cmd("SET")
        .arg(&name)
        .arg(&other)
        .arg("PX")
        .arg(60_000)
        .query(&mut con)
        .expect("SET the heartbeat");
    sluice.wait_for_log(&["WARN", "another process holds this consumer name"], 1);
    let renamed = format!("{name}.1");
    let pid = sluice.pid().to_string();
    sluice.wait_until("the consumer under a new name", |_| {
        crate::support::keys::get(&mut con, &renamed).as_ref() == Some(&pid)
    });
    lpush_many(&mut con, "jobs", &["ok"; EACH]);
    sluice.wait_until("the next items written", |_| {
        xlen(&mut con, "jobs:out") == 2 * EACH
    });
    assert_eq!(
        crate::support::keys::get(&mut con, &name),
        Some(other),
        "the name stays with the process that took it"
    );
    sluice.shutdown();
}
