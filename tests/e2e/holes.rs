//! Paths where a message could be lost, written twice needlessly, or dead-lettered early:
//! each test drives one of them through the real binary and real `redis-server` processes
//! (connections killed, Redis restarted empty, writes refused, out-of-order ids, trimmed
//! entries) and checks what landed in Redis.

use std::time::{Duration, Instant};

use redis::Connection;

use crate::guarantees::{DEAD, Spec, dead_letters_by_index, index_only, start, tally};
use crate::support::pipeline::{GROUP, IN, OUT, stream_source};
use crate::support::streams::{
    Entry, create_group, group_exists, pending_count, pending_entries, pending_if_group, read_as,
    xadd_many, xlen, xrange_all,
};
use crate::support::{Pipeline, RedisServer, Sluice, plugin, wait_for};

/// Kills every client connection of the server but the caller's.
fn kill_clients(con: &mut Connection) -> usize {
    redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .arg("SKIPME")
        .arg("yes")
        .query(con)
        .expect("CLIENT KILL")
}

fn config_set(con: &mut Connection, key: &str, value: &str) {
    redis::cmd("CONFIG")
        .arg("SET")
        .arg(key)
        .arg(value)
        .query::<()>(con)
        .unwrap_or_else(|e| panic!("CONFIG SET {key} {value}: {e}"));
}

/// Input `i` for `faults`: the first input fails (retry), the others pass.
fn first_fails(i: usize) -> Vec<(&'static str, String)> {
    let action = if i == 0 { "fail" } else { "ok" };
    vec![("i", i.to_string()), ("action", action.to_string())]
}

/// Watches `check` for `window`, failing at the first sample for which it does not hold:
/// how a test asserts that something does *not* happen while the runtime is busy.
fn holds_for(window: Duration, what: &str, mut check: impl FnMut() -> Result<(), String>) {
    let until = Instant::now() + window;
    while Instant::now() < until {
        if let Err(seen) = check() {
            panic!("{what}: {seen}");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// With `id_field`, an XADD whose id is not above the sink's top does not mean the entry is
/// there: an id the sink really holds counts as written (a redelivery after a crash), one it
/// does not hold can never be written in order and is dead-lettered at once with the reason,
/// never acked as if written.
#[test]
fn id_field_acks_only_ids_the_sink_really_holds() {
    const INPUTS: usize = 100;
    let redis = RedisServer::new();
    let mut con = redis.conn();
    let src_id = |i: usize| format!("{}-1", 1000 + i);
    // Even inputs are in the sink already (copied before a crash); above them all sits an
    // entry from elsewhere, so every input's id is below the top.
    for i in (0..INPUTS).step_by(2) {
        let _: String = redis::cmd("XADD")
            .arg(OUT)
            .arg(src_id(i))
            .arg("i")
            .arg(i)
            .query(&mut con)
            .expect("preload the sink");
    }
    let _: String = redis::cmd("XADD")
        .arg(OUT)
        .arg("9999-0")
        .arg("top")
        .arg("1")
        .query(&mut con)
        .expect("preload the sink's top");
    xadd_many(&mut con, IN, INPUTS, |i| {
        vec![("i", i.to_string()), ("src_id", src_id(i))]
    });
    let pipeline = Spec {
        sink: "id_field = \"src_id\"".into(),
        ..Spec::new("claim_idle_ms = 200\nmax_deliveries = 5", "")
    }
    .write(&redis);

    let mut sluice = start(&pipeline);
    sluice.wait_for(
        "every input settled: (dead letters, pending)",
        |_| {
            let pending = pending_if_group(&mut con, IN, GROUP);
            (xlen(&mut con, DEAD), pending)
        },
        |seen| *seen == (INPUTS / 2, Some(0)),
    );
    sluice.shutdown();

    assert_eq!(
        xlen(&mut con, OUT),
        INPUTS / 2 + 1,
        "nothing was added to the sink"
    );
    let dead = dead_letters_by_index(&mut con);
    let odd: Vec<usize> = (1..INPUTS).step_by(2).collect();
    assert_eq!(
        dead.keys().copied().collect::<Vec<_>>(),
        odd,
        "dead letters = the ids the sink lacks"
    );
    for (i, entry) in &dead {
        assert_eq!(
            entry.get("sluice.deliveries"),
            "1",
            "input {i} dead-lettered at once"
        );
        assert_eq!(entry.get("sluice.error_class"), "sink", "input {i}");
        let error = entry.get("sluice.error");
        assert!(
            error.contains(&src_id(*i)) && error.contains("not in"),
            "input {i}: the reason names the id and that the sink lacks it: {error}"
        );
    }
}

/// Out-of-order writes are what several consumers produce, so `id_field` with `consumers > 1`
/// (or with `atomic = true`, whose commit picks its own ids) is refused up front, with why.
#[test]
fn id_field_with_several_consumers_or_atomic_is_refused_by_validate() {
    let redis = RedisServer::new();
    for (extra, atomic, needle) in [
        ("consumers = 2", false, "consumers = 1"),
        ("", true, "atomic"),
    ] {
        let pipeline = Spec {
            atomic,
            sink: "id_field = \"src_id\"".into(),
            ..Spec::new(extra, "")
        }
        .write(&redis);
        let mut validate = Sluice::spawn(["validate".as_ref(), pipeline.path().as_os_str()]);
        let status = validate.wait_exit(crate::support::PATIENCE);
        let said = format!("{}{}", validate.stdout(), validate.log());
        assert!(
            !status.success(),
            "validate accepted id_field with `{extra}` atomic={atomic}: {said}"
        );
        assert!(
            said.contains("id_field") && said.contains(needle),
            "the error names id_field and {needle:?}: {said}"
        );
    }
}

/// Killing the runtime's connections (a network blip) must not re-read work the consumers
/// still hold or have left for a later retry: a message that failed once keeps its single
/// delivery until `claim_idle_ms` passes, is not dead-lettered, and no output is written twice.
#[test]
fn killed_connections_burn_no_deliveries_and_duplicate_nothing() {
    const INPUTS: usize = 200;
    let redis = RedisServer::new();
    let mut con = redis.conn();
    let ids = xadd_many(&mut con, IN, INPUTS, first_fails);
    let pipeline = Spec {
        atomic: true,
        ..Spec::new("claim_idle_ms = 30000\nmax_deliveries = 5", "")
    }
    .write(&redis);
    let mut sluice = start(&pipeline);
    sluice.wait_for(
        "every input but the failing one written, (outputs, pending)",
        |_| {
            let pending = pending_if_group(&mut con, IN, GROUP);
            (xlen(&mut con, OUT), pending)
        },
        |seen| *seen == (INPUTS - 1, Some(1)),
    );

    for round in 0..6 {
        // Each round kills what sluice has reconnected since the last: polled, since how
        // long a reconnect takes (backoff, a busy machine) is not the test's to guess.
        sluice.wait_until("sluice connected again, to kill its connections", |_| {
            kill_clients(&mut con) > 0
        });
        if round == 0 {
            sluice.wait_for_log(&["Redis unavailable"], 1);
        }
    }
    holds_for(
        Duration::from_secs(2),
        "after the connections were killed",
        || {
            let pending = pending_entries(&mut con, IN, GROUP);
            match pending.as_slice() {
                [p] if p.id == ids[0] && p.deliveries == 1 => Ok(()),
                other => Err(format!(
                    "the failed message should be pending once, delivered once: {other:?}"
                )),
            }
        },
    );
    assert_eq!(xlen(&mut con, DEAD), 0, "nothing dead-lettered");

    // The pipeline still works, and wrote nothing twice.
    let more = xadd_many(&mut con, IN, INPUTS, |i| index_only(INPUTS + i));
    sluice.wait_for(
        "the inputs added after the blips written",
        |_| xlen(&mut con, OUT),
        |n| *n >= 2 * INPUTS - 1,
    );
    sluice.shutdown();
    let counts = tally(&xrange_all(&mut con, OUT), 2 * INPUTS);
    for (i, count) in counts.iter().enumerate() {
        let want = usize::from(i != 0);
        assert_eq!(*count, want, "input {i} written {count} times");
    }
    assert_eq!(more.len(), INPUTS);
}

/// A Redis that comes back empty (restarted without persistence) is ridden through: the
/// group is recreated so that nothing in the stream at that moment is skipped, and what
/// producers add right after the restart is processed, within a bounded time.
#[test]
fn redis_restarted_empty_recovers_and_skips_nothing_added_after() {
    const AFTER: usize = 100;
    let mut redis = RedisServer::new();
    let mut con = redis.conn();
    // `start = "$"`: the default a user has, where recreating the group at `$` would skip
    // what was added between the restart and the reconnect.
    let toml = stream_source(&redis, "claim_idle_ms = 1000")
        .replace("start = \"0\"", "start = \"$\"")
        + &format!(
            "[[processor]]\nplugin = '{}'\n\n[[sink]]\nname = \"out\"\ntype = \"stream\"\nstream = \"{OUT}\"\n",
            plugin("faults").display()
        );
    let pipeline = Pipeline::write("e2e", &toml);
    let mut sluice = start(&pipeline);
    sluice.wait_until("the group to exist", |_| group_exists(&mut con, IN, GROUP));
    xadd_many(&mut con, IN, 10, index_only);
    sluice.wait_until("the first inputs written", |_| xlen(&mut con, OUT) == 10);

    drop(con);
    redis.stop();
    redis.start();
    let mut con = redis.conn();
    xadd_many(&mut con, IN, AFTER, |i| index_only(10 + i));
    let deadline = Instant::now() + Duration::from_secs(30);
    sluice.wait_until("the inputs added after the restart written", |_| {
        assert!(Instant::now() < deadline, "not recovered within 30 s");
        xlen(&mut con, OUT) >= AFTER
    });
    sluice.wait_until("nothing pending", |_| {
        pending_count(&mut con, IN, GROUP) == 0
    });
    sluice.shutdown();
    let outputs = xrange_all(&mut con, OUT);
    let counts = tally(&outputs, 10 + AFTER);
    for (i, count) in counts.iter().enumerate().skip(10) {
        assert_eq!(
            *count, 1,
            "input {i} (added after the restart) written once"
        );
    }
    let log = sluice.log();
    assert!(log.contains("recreat"), "the lost group is logged loudly");
    for what in ["pipeline started", "Redis unavailable"] {
        assert!(
            log.lines()
                .any(|l| l.contains(what) && l.contains(&redis.url())),
            "the `{what}` line names the Redis: {log}"
        );
    }
}

/// Under a backlog that never lets up, work left pending for a retry (and a dead process's
/// work) is served within a few batches, not after the backlog drains: the failing input's
/// second and last delivery dead-letters it while most of the backlog is still unread.
#[test]
fn retried_work_is_served_within_a_few_batches_under_a_backlog() {
    const INPUTS: usize = 10_000;
    let redis = RedisServer::new();
    let mut con = redis.conn();
    xadd_many(&mut con, IN, INPUTS, first_fails);
    // Each batch of 20 sleeps 10 ms: the backlog takes at least 5 s, however fast the machine.
    let pipeline = Spec::new(
        "batch = 20\nclaim_idle_ms = 300\nmax_deliveries = 2",
        "sleep_ms = 10",
    )
    .write(&redis);
    let mut sluice = start(&pipeline);
    let dead = sluice.wait_for(
        "the failing input dead-lettered",
        |_| dead_letters_by_index(&mut con).remove(&0),
        Option::is_some,
    );
    let written_before = xlen(&mut con, OUT);
    sluice.shutdown();
    let dead = dead.expect("checked by wait_for");
    assert_eq!(dead.get("sluice.deliveries"), "2");
    assert!(
        written_before < INPUTS / 2,
        "the retry waited for the backlog: {written_before} of {INPUTS} inputs were written before it"
    );
}

/// OOM, NOREPLICAS and their kind are a sink Redis saying "not now", not "never": the writes
/// wait (intake pauses) and nothing is dead-lettered, however many claim_idle_ms pass.
#[test]
fn transient_write_refusals_are_outages_not_failures() {
    const INPUTS: usize = 2_000;
    let redis = RedisServer::new();
    let sink = RedisServer::new();
    let mut con = redis.conn();
    let mut sink_con = sink.conn();
    let pipeline = Spec {
        sink_url: Some(sink.url()),
        // claim_idle_ms is short, so the hold below spans several of them (more than
        // max_deliveries), yet three times the lease renewal period: a loaded 2-core CI
        // machine delays renewals by a hundred milliseconds and more, and an entry whose
        // renewal came late is reclaimed and written again (at-least-once, not what this
        // test is about).
        ..Spec::new("batch = 100\nclaim_idle_ms = 500\nmax_deliveries = 3", "")
    }
    .write(&redis);

    let mut sluice = start(&pipeline);
    let mut written = 0;
    for (refusal, key, on, off) in [
        ("NOREPLICAS", "min-replicas-to-write", "1", "0"),
        ("OOM", "maxmemory", "1", "0"),
    ] {
        config_set(&mut sink_con, key, on);
        let outages = sluice.log().matches("Redis unavailable").count();
        xadd_many(&mut con, IN, INPUTS, |i| index_only(written + i));
        sluice.wait_for_log(&["Redis unavailable", refusal], 1);
        holds_for(
            Duration::from_millis(2_500),
            &format!("while the sink answers {refusal}"),
            || match (xlen(&mut sink_con, OUT), xlen(&mut con, DEAD)) {
                (n, 0) if n == written => Ok(()),
                seen => Err(format!("(outputs, dead letters) = {seen:?}")),
            },
        );
        assert!(sluice.log().matches("Redis unavailable").count() > outages);
        config_set(&mut sink_con, key, off);
        written += INPUTS;
        sluice.wait_for(
            &format!("all {written} inputs written after {refusal} ends, (outputs, pending)"),
            |_| (xlen(&mut sink_con, OUT), pending_count(&mut con, IN, GROUP)),
            |seen| *seen == (written, 0),
        );
    }
    sluice.shutdown();
    assert_eq!(xlen(&mut con, DEAD), 0, "nothing dead-lettered");
    let counts = tally(&xrange_all(&mut sink_con, OUT), written);
    assert!(counts.iter().all(|&c| c == 1), "each input written once");
}

/// Pending entries whose data is gone (trimmed by a producer's MAXLEN, or deleted) are not
/// dropped without a trace: each gets a dead-letter record saying so, and leaves the group.
#[test]
fn pending_entries_whose_data_was_trimmed_are_dead_lettered() {
    let redis = RedisServer::new();
    let mut con = redis.conn();
    let ids = xadd_many(&mut con, IN, 10, index_only);
    // A consumer that read them and died: they are pending under its name.
    create_group(&mut con, IN, GROUP, "0");
    read_as(&mut con, IN, GROUP, "ghost", 10);
    let gone: Vec<&String> = ids.iter().step_by(2).collect();
    let _: usize = redis::cmd("XDEL")
        .arg(IN)
        .arg(&gone)
        .query(&mut con)
        .expect("delete half of them");

    let pipeline = Spec::new("claim_idle_ms = 200", "").write(&redis);
    let mut sluice = start(&pipeline);
    sluice.wait_for(
        "(outputs, dead letters, pending)",
        |_| {
            (
                xlen(&mut con, OUT),
                xlen(&mut con, DEAD),
                pending_count(&mut con, IN, GROUP),
            )
        },
        |seen| *seen == (5, 5, 0),
    );
    sluice.shutdown();
    let dead: Vec<Entry> = xrange_all(&mut con, DEAD);
    let mut named: Vec<&str> = dead.iter().map(|e| e.get("sluice.id")).collect();
    named.sort();
    let mut want: Vec<&str> = gone.iter().map(|s| s.as_str()).collect();
    want.sort();
    assert_eq!(named, want, "one dead letter per deleted entry");
    for entry in &dead {
        assert_eq!(entry.get("sluice.error_class"), "trimmed");
        assert!(
            entry
                .get("sluice.error")
                .contains("no longer in the stream")
        );
    }
    assert!(sluice.log().contains(want[0]), "the ids are logged");
}

/// Consumers of processes that died stay in the group forever unless removed: once they own
/// nothing and have been idle past `remove_consumers_idle_ms`, they are deleted; live ones
/// stay.
#[test]
fn dead_consumers_that_own_nothing_are_removed() {
    let redis = RedisServer::new();
    let mut con = redis.conn();
    xadd_many(&mut con, IN, 3, index_only);
    create_group(&mut con, IN, GROUP, "0");
    // One dead consumer that owns nothing, one that still owns an entry.
    let _: i64 = redis::cmd("XGROUP")
        .arg("CREATECONSUMER")
        .arg(IN)
        .arg(GROUP)
        .arg("dead-idle")
        .query(&mut con)
        .expect("create a consumer");
    read_as(&mut con, IN, GROUP, "dead-owner", 1);
    let pipeline =
        Spec::new("claim_idle_ms = 500\nremove_consumers_idle_ms = 300", "").write(&redis);
    let mut sluice = start(&pipeline);
    let consumers = |con: &mut Connection| -> Vec<String> {
        let reply: Vec<redis::Value> = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(IN)
            .arg(GROUP)
            .query(con)
            .expect("XINFO CONSUMERS");
        let mut names: Vec<String> = reply
            .into_iter()
            .map(|c| {
                let map: std::collections::HashMap<String, redis::Value> =
                    redis::from_redis_value(c).expect("a consumer is a map");
                redis::from_redis_value(map["name"].clone()).expect("a name")
            })
            .collect();
        names.sort();
        names
    };
    let left = sluice.wait_for(
        "the dead consumers removed",
        |_| consumers(&mut con),
        |names| names.iter().all(|n| !n.starts_with("dead-")),
    );
    sluice.wait_until("everything written", |_| xlen(&mut con, OUT) == 3);
    assert_eq!(left.len(), 1, "sluice's own consumer stays: {left:?}");
    sluice.shutdown();
}

/// A plugin that is slow to compile (Python: seconds) must not make the pipeline skip what
/// is added meanwhile: the group exists from the moment the pipeline starts, so with
/// `start = "$"` every entry added after that is processed.
#[test]
fn entries_added_while_the_plugin_compiles_are_processed() {
    let redis = RedisServer::new();
    let mut con = redis.conn();
    let cache = tempfile::tempdir().expect("a cache dir");
    let toml = stream_source(&redis, "").replace("start = \"0\"", "start = \"$\"")
        + &format!(
            "[[processor]]\nplugin = '{}'\n\n[[sink]]\nname = \"out\"\ntype = \"stream\"\nstream = \"{OUT}\"\n",
            plugin("uppercase-py").display()
        );
    let pipeline = Pipeline::write("e2e", &toml);
    let mut sluice = Sluice::run_cached(pipeline.path(), cache.path());
    // Feed the stream from the start, and note what went in after the group existed and
    // before the plugin was ready.
    let mut during_compile = Vec::new();
    let mut n = 0;
    loop {
        assert!(sluice.is_running(), "sluice exited: {}", sluice.log());
        let exists = group_exists(&mut con, IN, GROUP);
        let loaded = sluice.log().contains("plugin loaded");
        let id: String = redis::cmd("XADD")
            .arg(IN)
            .arg("*")
            .arg("payload")
            .arg(format!("m{n}"))
            .query(&mut con)
            .expect("XADD");
        n += 1;
        if loaded {
            break;
        }
        if exists {
            during_compile.push(id);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        during_compile.len() >= 5,
        "the group should exist while the plugin compiles ({} entries added in between)",
        during_compile.len()
    );
    let outputs = wait_for(
        crate::support::PATIENCE,
        "the entries added during the compile written",
        || xlen(&mut con, OUT),
        |written| *written >= during_compile.len(),
    );
    sluice.shutdown();
    assert!(outputs >= during_compile.len());
    let log = sluice.log();
    assert!(log.contains("compiling"), "the compile is announced: {log}");
}

/// In a two-stage chain, a record of a fan-out that the second stage drops is discarded
/// alone (its siblings are written); one it dead-letters sends the whole message to the
/// dead-letter stream with a reason that says its siblings were not written.
#[test]
fn fan_out_children_fail_or_drop_without_silently_losing_siblings() {
    let redis = RedisServer::new();
    let mut con = redis.conn();
    let faults = plugin("faults");
    let toml = stream_source(&redis, "claim_idle_ms = 200\nmax_deliveries = 2")
        + &format!(
            "[[processor]]\nplugin = '{f}'\n\n[[processor]]\nplugin = '{f}'\n[processor.config]\nfield = \"then\"\n\n\
             [[sink]]\nname = \"out\"\ntype = \"stream\"\nstream = \"{OUT}\"\n",
            f = faults.display()
        );
    let pipeline = Pipeline::write("e2e", &toml);
    let actions = ["split:ok|drop|ok", "split:ok|poison", "split:ok|ok"];
    xadd_many(&mut con, IN, actions.len(), |i| {
        vec![("i", i.to_string()), ("action", actions[i].to_string())]
    });
    let mut sluice = start(&pipeline);
    sluice.wait_for(
        "(outputs, dead letters, pending)",
        |_| {
            let pending = pending_if_group(&mut con, IN, GROUP);
            (xlen(&mut con, OUT), xlen(&mut con, DEAD), pending)
        },
        |seen| *seen == (4, 1, Some(0)),
    );
    sluice.shutdown();
    let counts = tally(&xrange_all(&mut con, OUT), actions.len());
    assert_eq!(counts, vec![2, 0, 2], "records written per input");
    let dead = dead_letters_by_index(&mut con);
    let reason = dead[&1].get("sluice.error");
    assert!(
        reason.contains("stage 2 of 2") && reason.contains("none of them was written"),
        "the dead letter says the siblings were not written: {reason}"
    );
}

/// Sends `signal` (`STOP`, `CONT`) to process `pid`.
fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid}");
}

/// A process that stalls past claim_idle_ms loses its batch to another process, legitimately;
/// when it wakes up, its lease renewal must not take the entries back: ownership never
/// bounces between two live processes.
#[test]
fn lease_renewal_never_takes_back_work_another_process_reclaimed() {
    const INPUTS: usize = 20;
    let redis = RedisServer::new();
    let mut con = redis.conn();
    xadd_many(&mut con, IN, INPUTS, index_only);
    let pipeline = Spec {
        processor: "timeout_ms = 20000".into(),
        ..Spec::new("batch = 20\nclaim_idle_ms = 600", "sleep_ms = 3000")
    }
    .write(&redis);
    let owners = |con: &mut Connection| -> Vec<String> {
        if !group_exists(con, IN, GROUP) {
            return Vec::new();
        }
        pending_entries(con, IN, GROUP)
            .into_iter()
            .map(|p| p.consumer)
            .collect()
    };

    let mut first = start(&pipeline);
    let first_tag = format!("-{}-", first.pid());
    first.wait_until("the batch held by the first process", |_| {
        let owners = owners(&mut con);
        owners.len() == INPUTS && owners.iter().all(|o| o.contains(&first_tag))
    });
    signal(first.pid(), "STOP");
    let mut second = start(&pipeline);
    let second_tag = format!("-{}-", second.pid());
    second.wait_until("the stalled batch reclaimed by the second process", |_| {
        let owners = owners(&mut con);
        owners.len() == INPUTS && owners.iter().all(|o| o.contains(&second_tag))
    });
    signal(first.pid(), "CONT");
    holds_for(
        Duration::from_secs(2),
        "after the first process woke up",
        || {
            let owners = owners(&mut con);
            match owners.iter().find(|o| o.contains(&first_tag)) {
                Some(o) => Err(format!("an entry went back to {o}")),
                None => Ok(()),
            }
        },
    );
    second.wait_until("everything settled", |_| {
        pending_count(&mut con, IN, GROUP) == 0 && xlen(&mut con, OUT) >= INPUTS
    });
    first.shutdown();
    second.shutdown();
    let counts = tally(&xrange_all(&mut con, OUT), INPUTS);
    assert!(
        counts.iter().all(|&c| c >= 1),
        "every input written: {counts:?}"
    );
}
