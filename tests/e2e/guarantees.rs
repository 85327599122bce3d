//! Guarantees: what the runtime promises about delivery (README, "What the runtime promises";
//! DESIGN.md, "Delivery semantics"), checked through the real binary against real
//! `redis-server` processes that are killed, stopped and restarted under it.
//!
//! Every input carries its index in field `i`, so outputs and dead letters are matched to
//! inputs by index, and duplicates are counted rather than guessed. The processor is the
//! `faults` plugin: with no `action` field it passes a message through (adding
//! `plugin_version`), otherwise the field says how to fail.
//!
//! Figures worth quoting (duplicates after crashes, reclaim latency) are printed with
//! `println!`: run with `-- --nocapture` to see them.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::Connection;

use crate::support::logs::{lines_with, lines_with_all};
use crate::support::pipeline::{GROUP, IN, OUT, stream_to_stream_toml};
use crate::support::streams::{
    Entry, group_exists, last_delivered_id, parse_id, pending_count, pending_entries, pending_ids,
    xadd_many, xlen, xrange_all,
};
use crate::support::{Pipeline, RedisServer, Sluice};

/// The dead-letter stream of [`IN`] (the default, `<stream>:dead`).
pub(crate) const DEAD: &str = "in:dead";

/// How often the observation loops below sample Redis (as `support::wait_for` does).
const SAMPLE_EVERY: Duration = Duration::from_millis(25);

/// A stream [`IN`] → `faults` → stream [`OUT`] pipeline with the knobs these tests turn.
#[derive(Default)]
pub(crate) struct Spec {
    /// `atomic = true`: outputs, dead letters and XACK in one script.
    pub atomic: bool,
    /// Extra `[source]` lines.
    pub source: String,
    /// Extra `[[processor]]` lines (`timeout_ms`, `memory_mb`).
    pub processor: String,
    /// `[processor.config]` lines for `faults` (`sleep_ms`).
    pub config: String,
    /// The sink's own Redis, when it is not the source's.
    pub sink_url: Option<String>,
    /// Extra lines for the sink (`id_field`, ...).
    pub sink: String,
}

impl Spec {
    pub fn new(source: &str, config: &str) -> Self {
        Spec {
            source: source.into(),
            config: config.into(),
            ..Spec::default()
        }
    }

    /// Writes the file; the pipeline is named `e2e`, its group is [`GROUP`], it reads from
    /// the start of [`IN`] and blocks 100 ms per read so that shutdown is quick.
    pub fn write(&self, redis: &RedisServer) -> Pipeline {
        let atomic = if self.atomic { "atomic = true\n\n" } else { "" };
        let sink_url = self
            .sink_url
            .as_ref()
            .map(|url| format!("url = \"{url}\""))
            .unwrap_or_default();
        let toml = stream_to_stream_toml(
            redis,
            "faults",
            &self.source,
            &self.processor,
            &self.config,
            &format!("{sink_url}\n{}", self.sink),
        );
        Pipeline::write("e2e", &format!("{atomic}{toml}"))
    }
}

/// Starts `sluice run` with the default log filter whatever the developer's `RUST_LOG`:
/// some tests read the log.
pub(crate) fn start(pipeline: &Pipeline) -> Sluice {
    Sluice::run_with(pipeline.path(), |command: &mut Command| {
        command.env("SLUICE_LOG", "info,wasmtime=warn,cranelift=warn");
    })
}

/// Input `i`: just its index, so `faults` passes it through.
pub(crate) fn index_only(i: usize) -> Vec<(&'static str, String)> {
    vec![("i", i.to_string())]
}

/// The input index an output or dead letter carries.
fn index(entry: &Entry) -> usize {
    entry
        .get("i")
        .parse()
        .unwrap_or_else(|_| panic!("entry {} has a non-numeric `i`", entry.id))
}

/// How many times each of `n` inputs appears among `entries`.
pub(crate) fn tally(entries: &[Entry], n: usize) -> Vec<usize> {
    let mut counts = vec![0; n];
    for entry in entries {
        let i = index(entry);
        assert!(i < n, "entry {} carries index {i}, not an input", entry.id);
        counts[i] += 1;
    }
    counts
}

/// A pipeline whose every batch takes 3 × `claim_idle_ms` (the faults plugin sleeps), with
/// `consumers` consumers: slow enough that only leases keep its work from being reclaimed.
fn slow_pipeline(redis: &RedisServer, consumers: u32, claim_idle_ms: u64) -> Pipeline {
    Spec {
        processor: format!("timeout_ms = {}", 10 * claim_idle_ms),
        ..Spec::new(
            &format!("consumers = {consumers}\nbatch = 20\nclaim_idle_ms = {claim_idle_ms}"),
            &format!("sleep_ms = {}", 3 * claim_idle_ms),
        )
    }
    .write(redis)
}

/// Asserts that nothing is pending and every one of `inputs` reached the sink exactly once;
/// prints the counts under `label`. `context` ends the failure message.
fn assert_each_input_once(
    con: &mut Connection,
    label: &str,
    inputs: usize,
    reclaims: usize,
    context: &str,
) {
    let outputs = xrange_all(con, OUT);
    let counts = tally(&outputs, inputs);
    let duplicates = outputs.len() - counts.iter().filter(|&&n| n > 0).count();
    println!(
        "{label}: inputs {inputs}, outputs {}, duplicates {duplicates}, reclaims logged {reclaims}",
        outputs.len()
    );
    assert_eq!(pending_count(con, IN, GROUP), 0, "pending at the end");
    let wrong: Vec<(usize, usize)> = counts
        .iter()
        .copied()
        .enumerate()
        .filter(|&(_, n)| n != 1)
        .take(10)
        .collect();
    assert!(
        wrong.is_empty(),
        "inputs not exactly once in the sink, (index, count): {wrong:?}; {duplicates} \
         duplicates, {reclaims} reclaims logged{context}"
    );
}

/// Milliseconds since the epoch: the clock Redis stamps stream entry ids with (same host).
fn now_ms() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is past 1970");
    u64::try_from(since.as_millis()).expect("milliseconds fit in u64")
}

/// How many of `ids` (input ids, in stream order) the group has read: those up to its
/// last-delivered-id.
fn read_count(con: &mut Connection, ids: &[String]) -> usize {
    let last = parse_id(&last_delivered_id(con, IN, GROUP));
    ids.partition_point(|id| parse_id(id) <= last)
}

/// Waits until the group has read every input (its last-delivered-id is the last input's),
/// holds nothing pending, and the sink and the dead letters hold at least as many entries as
/// there are inputs. Cheap enough to poll; the by-index checks come after. `sink` is the
/// sink's own Redis, if it has one.
fn wait_drained(
    con: &mut Connection,
    mut sink: Option<&mut Connection>,
    sluice: &mut Sluice,
    ids: &[String],
) {
    sluice.wait_for(
        &format!(
            "all {} inputs read, none pending, at least as many entries in the sink and dead \
             letters (seen: (read, pending, landed))",
            ids.len()
        ),
        |_| {
            if !group_exists(con, IN, GROUP) {
                return (0, None, 0);
            }
            let out = match sink.as_deref_mut() {
                Some(sink) => xlen(sink, OUT),
                None => xlen(con, OUT),
            };
            (
                read_count(con, ids),
                Some(pending_count(con, IN, GROUP)),
                out + xlen(con, DEAD),
            )
        },
        |&(read, pending, landed)| read == ids.len() && pending == Some(0) && landed >= ids.len(),
    );
}

/// Reproducible randomness without a dependency: xorshift64*, seeded from
/// `SLUICE_CHAOS_SEED` or the clock (and printed, so a failing run can be repeated).
struct Rng(u64);

impl Rng {
    fn seeded() -> (Self, u64) {
        let seed = std::env::var("SLUICE_CHAOS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                let since = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .expect("the clock is past 1970");
                since.as_secs() ^ u64::from(since.subsec_nanos())
            });
        (Rng(seed | 1), seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }
}

/// What a chaos run left in Redis.
#[derive(Debug)]
struct Figures {
    inputs: usize,
    outputs: usize,
    unique_outputs: usize,
    dead_letters: usize,
    duplicates: usize,
    /// Inputs found in neither the sink nor the dead letters.
    missing: Vec<usize>,
    /// Inputs found in both.
    output_and_dead: usize,
}

impl Figures {
    fn collect(con: &mut Connection, inputs: usize) -> Self {
        let outputs = xrange_all(con, OUT);
        let dead = xrange_all(con, DEAD);
        let out_counts = tally(&outputs, inputs);
        let dead_counts = tally(&dead, inputs);
        let unique_outputs = out_counts.iter().filter(|&&n| n > 0).count();
        Figures {
            inputs,
            outputs: outputs.len(),
            unique_outputs,
            dead_letters: dead.len(),
            duplicates: outputs.len() - unique_outputs,
            missing: (0..inputs)
                .filter(|&i| out_counts[i] == 0 && dead_counts[i] == 0)
                .collect(),
            output_and_dead: (0..inputs)
                .filter(|&i| out_counts[i] > 0 && dead_counts[i] > 0)
                .count(),
        }
    }

    fn print(&self, what: &str) {
        println!(
            "{what}: inputs {}, outputs {}, unique outputs {}, dead letters {}, duplicates {}, \
             missing {}, in both sink and dead letters {}",
            self.inputs,
            self.outputs,
            self.unique_outputs,
            self.dead_letters,
            self.duplicates,
            self.missing.len(),
            self.output_and_dead
        );
    }
}

/// 50,000 messages through 4 consumers while the process is killed with SIGKILL at random
/// points, six times, and restarted: every input ends in the sink or the dead letters, nothing
/// stays pending. Returns the figures for the caller's verdict on duplicates.
///
/// The restarted process has new consumer names (they include the pid), so what the dead one
/// held comes back through the reclaimer after `claim_idle_ms` (1 s here).
fn chaos(atomic: bool) -> Figures {
    const INPUTS: usize = 50_000;
    const KILLS: usize = 6;
    let mode = if atomic { "atomic" } else { "at-least-once" };
    let (mut rng, seed) = Rng::seeded();
    println!(
        "chaos ({mode}): seed {seed} (set SLUICE_CHAOS_SEED={seed} to repeat the kill points)"
    );

    let redis = RedisServer::new();
    let mut con = redis.conn();
    let ids = xadd_many(&mut con, IN, INPUTS, index_only);
    // 50 per batch and 20 ms per batch: several seconds of work, so the kills land mid-stream
    // and usually mid-batch.
    let pipeline = Spec {
        atomic,
        ..Spec::new(
            "consumers = 4\nbatch = 50\nclaim_idle_ms = 1000\nmax_deliveries = 5",
            "sleep_ms = 20",
        )
    }
    .write(&redis);

    let landed = |con: &mut Connection| xlen(con, OUT) + xlen(con, DEAD);
    // Kill k lands at a random point of the k-th slice of 5%..90% of the work, in its first
    // half, so each restarted process does real work before the next kill.
    let (low, slice) = (INPUTS / 20, INPUTS * 85 / 100 / KILLS);
    let started = Instant::now();
    let mut sluice = start(&pipeline);
    let mut kill_points = Vec::new();
    for kill in 0..KILLS {
        let threshold = low + kill * slice + rng.below(slice as u64 / 2) as usize;
        sluice.wait_until(
            &format!("{threshold} entries in the sink and dead letters before kill {kill}"),
            |_| landed(&mut con) >= threshold,
        );
        // A random phase too, so the kill is not always just after a write.
        std::thread::sleep(Duration::from_millis(rng.below(40)));
        let pid = sluice.pid();
        sluice.kill9();
        let at = landed(&mut con);
        assert!(
            at < INPUTS,
            "kill {kill} came after all the work was done ({at} landed): not mid-stream"
        );
        kill_points.push((at, held_by(&mut con, pid)));
        sluice = start(&pipeline);
    }
    wait_drained(&mut con, None, &mut sluice, &ids);
    sluice.shutdown();
    let elapsed = started.elapsed();

    assert_eq!(pending_count(&mut con, IN, GROUP), 0, "pending at the end");
    let figures = Figures::collect(&mut con, INPUTS);
    println!(
        "chaos ({mode}): {KILLS} kills with SIGKILL, at (entries landed, entries the killed \
         process held) {kill_points:?}; drained {elapsed:.1?} after the first start"
    );
    assert!(
        kill_points.iter().any(|&(_, held)| held > 0),
        "no kill left entries pending for the reclaimer: the kills missed every batch"
    );
    figures.print(&format!("chaos ({mode})"));
    assert!(
        figures.missing.is_empty(),
        "{} inputs are in neither the sink nor the dead letters, e.g. {:?}",
        figures.missing.len(),
        &figures.missing[..figures.missing.len().min(10)]
    );
    figures
}

#[test]
fn chaos_kill9_at_least_once_loses_nothing() {
    // At-least-once allows duplicates (a kill between write and ack): counted, not judged.
    chaos(false);
}

#[test]
fn chaos_kill9_atomic_loses_nothing_and_duplicates_nothing() {
    let figures = chaos(true);
    assert_eq!(figures.duplicates, 0, "atomic mode wrote an output twice");
    assert_eq!(
        figures.output_and_dead, 0,
        "atomic mode wrote an input both to the sink and to the dead letters"
    );
}

/// The Redis the pipeline lives on (source, group and sink) goes away mid-stream and comes
/// back with its data (append-only file, fsync always): nothing is lost, nothing is left
/// pending.
#[test]
fn redis_restart_mid_stream_loses_nothing() {
    const INPUTS: usize = 10_000;
    let mut redis = RedisServer::with_persistence();
    let mut con = redis.conn();
    let ids = xadd_many(&mut con, IN, INPUTS, index_only);
    let pipeline = Spec::new(
        "consumers = 4\nbatch = 50\nclaim_idle_ms = 1000",
        // Slow enough (2 s for the inputs at least) that Redis goes away mid-stream even
        // where preparing the slow load takes a while (Redis 6.2 rewrites its AOF slowly).
        "sleep_ms = 100",
    )
    .write(&redis);

    let mut sluice = start(&pipeline);
    sluice.wait_until("a fifth of the inputs in the sink", |_| {
        xlen(&mut con, OUT) >= INPUTS / 5
    });
    // About a second of `LOADING` after the restart, as a Redis with real data has: sluice
    // reconnects into it.
    redis.slow_down_next_load(1000, Duration::from_millis(1));
    drop(con);
    redis.stop();
    sluice.wait_until("the outage in the log", |sluice| {
        sluice.log().contains("Redis unavailable")
    });
    let restarted_ms = now_ms();
    redis.start();
    let mut con = redis.conn();

    wait_drained(&mut con, None, &mut sluice, &ids);
    assert!(
        sluice.log().contains("Redis reachable again"),
        "the end of the outage is logged"
    );
    sluice.shutdown();

    assert_eq!(pending_count(&mut con, IN, GROUP), 0, "pending at the end");
    let outputs = xrange_all(&mut con, OUT);
    let before_restart = outputs
        .iter()
        .filter(|entry| parse_id(&entry.id).0 < restarted_ms)
        .count();
    assert!(
        before_restart < INPUTS,
        "Redis went away only after all {INPUTS} outputs were written: not mid-stream"
    );
    let counts = tally(&outputs, INPUTS);
    let missing: Vec<usize> = (0..INPUTS).filter(|&i| counts[i] == 0).collect();
    println!(
        "redis restart: inputs {INPUTS}, outputs {} ({before_restart} before the restart), \
         duplicates {}, dead letters {}",
        outputs.len(),
        outputs.len() - (INPUTS - missing.len()),
        xlen(&mut con, DEAD)
    );
    assert!(
        missing.is_empty(),
        "{} inputs never reached the sink, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert_eq!(
        xlen(&mut con, DEAD),
        0,
        "an outage is not a reason to dead-letter"
    );
    assert_no_failed_deliveries(&sluice.log(), "the Redis restart");
}

/// A sink on its own Redis goes away for a while. Meanwhile the consumers read nothing new
/// (backpressure: the group reads no further than the batches in flight) and ack nothing
/// whose output is not in the sink; once it is back, everything is delivered.
#[test]
fn unreachable_sink_pauses_intake_and_acks_nothing_early() {
    const INPUTS: usize = 5_000;
    const CONSUMERS: usize = 2;
    const BATCH: usize = 50;
    /// What may be read and not acked at any time, per consumer: the batch it processes and
    /// the one batch read ahead meanwhile (runtime/src/pipeline/stream.rs, `consume`).
    const IN_FLIGHT: usize = CONSUMERS * 2 * BATCH;
    /// How long intake is watched while the sink is down. Without backpressure the
    /// consumers (2 × 50 messages per 50 ms) would read every input in 2.5 s.
    const WATCH: Duration = Duration::from_secs(3);

    let redis = RedisServer::new();
    let mut sink = RedisServer::with_persistence();
    let mut con = redis.conn();
    let ids = xadd_many(&mut con, IN, INPUTS, index_only);
    let pipeline = Spec {
        sink_url: Some(sink.url()),
        ..Spec::new(
            &format!("consumers = {CONSUMERS}\nbatch = {BATCH}\nclaim_idle_ms = 2000"),
            "sleep_ms = 50",
        )
    }
    .write(&redis);

    let mut sluice = start(&pipeline);
    {
        let mut sink_con = sink.conn();
        sluice.wait_until("the first output in the sink", |_| {
            xlen(&mut sink_con, OUT) > 0
        });
    }
    // It comes back as a Redis with real data does: about a second of `LOADING` first.
    sink.slow_down_next_load(1000, Duration::from_millis(1));
    sink.stop();
    sluice.wait_until("the sink outage in the log", |sluice| {
        sluice
            .log()
            .contains("Redis unavailable while writing to sink `out`")
    });

    // While the sink is down: what has the group read, and which inputs are acked?
    let mut acked_while_down: BTreeSet<usize> = BTreeSet::new();
    let mut most_read = 0;
    let watch_until = Instant::now() + WATCH;
    while Instant::now() < watch_until {
        assert!(sluice.is_running(), "sluice exited while the sink was down");
        let read = read_count(&mut con, &ids);
        let pending: BTreeSet<String> = pending_ids(&mut con, IN, GROUP).into_iter().collect();
        let acked: Vec<usize> = (0..read).filter(|&i| !pending.contains(&ids[i])).collect();
        assert!(
            read - acked.len() <= IN_FLIGHT,
            "with the sink down the group read {read} inputs and acked {}: more in flight than \
             {CONSUMERS} consumers × 2 batches of {BATCH} (one processing, one read ahead)",
            acked.len()
        );
        most_read = most_read.max(read);
        acked_while_down.extend(acked);
        std::thread::sleep(SAMPLE_EVERY);
    }
    assert!(
        most_read < INPUTS,
        "intake did not pause: all {INPUTS} inputs were read while the sink was down"
    );

    let restarted_ms = now_ms();
    sink.start();
    let mut sink_con = sink.conn();
    wait_drained(&mut con, Some(&mut sink_con), &mut sluice, &ids);
    sluice.shutdown();

    assert_eq!(pending_count(&mut con, IN, GROUP), 0, "pending at the end");
    assert_eq!(
        xlen(&mut con, DEAD),
        0,
        "an outage is not a reason to dead-letter"
    );
    let outputs = xrange_all(&mut sink_con, OUT);
    // Entry ids carry the sink's clock: those below the restart time were written before
    // the sink went away, so they are what the sink held while it was down.
    let in_sink_while_down: BTreeSet<usize> = outputs
        .iter()
        .filter(|entry| parse_id(&entry.id).0 < restarted_ms)
        .map(index)
        .collect();
    println!(
        "sink outage: inputs {INPUTS}; while the sink was down: read at most {most_read}, \
         acked {}, in the sink {}; at the end: outputs {}",
        acked_while_down.len(),
        in_sink_while_down.len(),
        outputs.len()
    );
    assert!(
        acked_while_down.len() <= in_sink_while_down.len(),
        "more inputs acked ({}) than outputs in the sink ({}) while it was down",
        acked_while_down.len(),
        in_sink_while_down.len()
    );
    let early: Vec<&usize> = acked_while_down
        .difference(&in_sink_while_down)
        .take(10)
        .collect();
    assert!(
        early.is_empty(),
        "acked while the sink was down without an output in it: {early:?}"
    );
    let counts = tally(&outputs, INPUTS);
    let missing: Vec<usize> = (0..INPUTS).filter(|&i| counts[i] == 0).collect();
    assert!(
        missing.is_empty(),
        "{} inputs never reached the sink, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
}

/// Asserts that no delivery failed: in a test whose plugin fails nothing, a failure can only
/// come from an outage, and an outage must be waited out (reconnect, backoff), not counted
/// against the message as a failed delivery that brings it closer to the dead letters.
fn assert_no_failed_deliveries(log: &str, outage: &str) {
    let mut failed = lines_with(log, "failed, will retry");
    failed.extend(lines_with(log, "dead-lettered"));
    assert!(
        failed.is_empty(),
        "{} deliveries failed during {outage}, e.g.:\n{}",
        failed.len(),
        failed[..failed.len().min(3)].join("\n")
    );
}

/// The dead letters of `IN`, by input index.
pub(crate) fn dead_letters_by_index(con: &mut Connection) -> BTreeMap<usize, Entry> {
    let mut by_index = BTreeMap::new();
    for entry in xrange_all(con, DEAD) {
        let i = index(&entry);
        if let Some(earlier) = by_index.insert(i, entry) {
            panic!("input {i} dead-lettered twice (first as {})", earlier.id);
        }
    }
    by_index
}

/// The fields of a dead letter that are not `sluice.*` metadata, in order.
fn original_fields(entry: &Entry) -> Vec<(String, String)> {
    entry
        .fields
        .iter()
        .filter(|(name, _)| !name.starts_with("sluice."))
        .cloned()
        .collect()
}

/// Lines of `log` that report a failed delivery of `id` to be retried.
fn retry_lines(log: &str, id: &str) -> usize {
    lines_with_all(log, &["failed, will retry", &format!("id={id} ")]).len()
}

/// A message the plugin fails (`retry`) is delivered exactly `max_deliveries` times, then
/// dead-lettered with the error; a poison message (`dead-letter`) goes on its first delivery;
/// the other messages flow.
#[test]
fn failures_dead_letter_after_max_deliveries_and_poison_at_once() {
    const INPUTS: usize = 200;
    const MAX_DELIVERIES: u32 = 3;
    let action = |i: usize| match i % 20 {
        3 => "fail",
        11 => "poison",
        _ => "ok",
    };
    let fields = |i: usize| {
        vec![
            ("i", i.to_string()),
            ("action", action(i).to_string()),
            ("note", format!("original field of {i}")),
        ]
    };

    let redis = RedisServer::new();
    let mut con = redis.conn();
    let ids = xadd_many(&mut con, IN, INPUTS, fields);
    let pipeline = Spec::new(
        &format!(
            "consumers = 2\nbatch = 50\nclaim_idle_ms = 200\nmax_deliveries = {MAX_DELIVERIES}"
        ),
        "",
    )
    .write(&redis);

    let mut sluice = start(&pipeline);
    wait_drained(&mut con, None, &mut sluice, &ids);
    sluice.shutdown();
    let log = sluice.log();

    assert_eq!(pending_count(&mut con, IN, GROUP), 0, "pending at the end");
    let outputs = xrange_all(&mut con, OUT);
    let counts = tally(&outputs, INPUTS);
    // At least once for the others: duplicates are the leases test's business.
    for (i, &count) in counts.iter().enumerate() {
        if action(i) == "ok" {
            assert!(count > 0, "input {i} (`ok`) never reached the sink");
        } else {
            assert_eq!(count, 0, "input {i} (`{}`) reached the sink", action(i));
        }
    }

    let dead = dead_letters_by_index(&mut con);
    let want_dead: Vec<usize> = (0..INPUTS).filter(|&i| action(i) != "ok").collect();
    assert_eq!(
        dead.keys().copied().collect::<Vec<_>>(),
        want_dead,
        "dead letters = exactly the failed and the poison inputs"
    );
    for (&i, entry) in &dead {
        let (deliveries, error) = match action(i) {
            "fail" => (MAX_DELIVERIES, "asked to fail"),
            _ => (1, "asked to dead-letter"),
        };
        let what = format!("dead letter {} of input {i} ({})", entry.id, action(i));
        assert_eq!(entry.get("sluice.stream"), IN, "{what}: source stream");
        assert_eq!(entry.get("sluice.id"), ids[i], "{what}: original id");
        assert_eq!(entry.get("sluice.group"), GROUP, "{what}: group");
        assert_eq!(entry.get("sluice.pipeline"), "e2e", "{what}: pipeline");
        assert_eq!(
            entry.get("sluice.deliveries"),
            deliveries.to_string(),
            "{what}: sluice.deliveries"
        );
        assert_eq!(
            entry.get("sluice.error_class"),
            "plugin",
            "{what}: error class"
        );
        assert!(
            entry.get("sluice.error").contains(error),
            "{what}: sluice.error should contain {error:?}: {:?}",
            entry.get("sluice.error")
        );
        assert!(
            !entry.get("sluice.plugin").is_empty(),
            "{what}: plugin hash"
        );
        let want_fields: Vec<(String, String)> = fields(i)
            .into_iter()
            .map(|(name, value)| (name.to_string(), value))
            .collect();
        assert_eq!(
            original_fields(entry),
            want_fields,
            "{what}: original fields"
        );
        // Every delivery but the last was logged as a failure to retry: delivered exactly
        // max_deliveries times, not more (and a poison message exactly once).
        assert_eq!(
            retry_lines(&log, &ids[i]),
            deliveries as usize - 1,
            "{what}: deliveries that failed and were retried, as logged"
        );
    }
}

/// The dead letter of input `i`, once there is one.
fn wait_dead_letter(con: &mut Connection, sluice: &mut Sluice, i: usize) -> Entry {
    sluice
        .wait_for(
            &format!("a dead letter for input {i}"),
            |_| dead_letters_by_index(con).remove(&i),
            Option::is_some,
        )
        .expect("checked by wait_for")
}

/// A plugin that never returns (`loop`) is stopped at `timeout_ms`, one that allocates
/// without bound (`oom`) at `memory_mb`: only their messages fail, and are dead-lettered after
/// `max_deliveries` with the error class `timeout` / `memory`; the process stays up, keeps
/// processing, and its memory stays bounded.
#[test]
fn runaway_plugins_fail_only_their_messages() {
    const MAX_DELIVERIES: u32 = 3;
    /// The bound asked for: a lone runaway message's first failure is reported within this
    /// time of its arrival at an idle pipeline. Nominally timeout_ms (200 ms) plus a read and
    /// an epoch tick; the rest is slack for a loaded two-core machine running a debug build.
    const FIRST_FAILURE_WITHIN: Duration = Duration::from_secs(5);
    /// Resident memory allowed after the runaway allocations (16 MB each): generous for a
    /// debug build with a JIT, far below what unbounded allocation would reach.
    const RSS_LIMIT: u64 = 300 << 20;

    let redis = RedisServer::new();
    let mut con = redis.conn();
    let pipeline = Spec {
        processor: "timeout_ms = 200\nmemory_mb = 16".into(),
        ..Spec::new(
            &format!(
                "consumers = 2\nbatch = 20\nclaim_idle_ms = 300\nmax_deliveries = {MAX_DELIVERIES}"
            ),
            "",
        )
    }
    .write(&redis);
    let mut sluice = start(&pipeline);
    let mut inputs = 0;
    let mut add = |con: &mut Connection, actions: &[&str]| -> Vec<usize> {
        let first = inputs;
        inputs += actions.len();
        xadd_many(con, IN, actions.len(), |k| {
            vec![
                ("i", (first + k).to_string()),
                ("action", actions[k].to_string()),
            ]
        });
        (first..inputs).collect()
    };

    // Warm up: plugin compiled, instances made, so the timing below is the plugin's.
    add(&mut con, &["ok"; 20]);
    sluice.wait_until("the warm-up outputs", |_| xlen(&mut con, OUT) == 20);

    // A lone runaway of each kind, timed from its arrival to its first failure.
    let mut lone = Vec::new();
    for (action, class, error) in [
        ("loop", "timeout", "ran longer than timeout_ms = 200"),
        ("oom", "memory", "needed more than memory_mb = 16"),
    ] {
        let arrived = Instant::now();
        let i = add(&mut con, &[action])[0];
        lone.push(i);
        let id = last_input_id(&mut con);
        sluice.wait_until(
            &format!("the first failure of `{action}` input {i}"),
            |sluice| retry_lines(&sluice.log(), &id) > 0,
        );
        let first_failure = arrived.elapsed();
        println!(
            "runaway: first failure of a lone `{action}` message {first_failure:?} after it arrived"
        );
        assert!(
            first_failure <= FIRST_FAILURE_WITHIN,
            "`{action}` ran {first_failure:?} before it was stopped (timeout_ms = 200)"
        );
        let dead = wait_dead_letter(&mut con, &mut sluice, i);
        assert_eq!(
            dead.get("sluice.error_class"),
            class,
            "`{action}`: error class"
        );
        assert_eq!(
            dead.get("sluice.deliveries"),
            MAX_DELIVERIES.to_string(),
            "`{action}`: dead-lettered after max_deliveries"
        );
        assert!(
            dead.get("sluice.error").contains(error),
            "`{action}`: sluice.error should contain {error:?}: {:?}",
            dead.get("sluice.error")
        );
    }

    // Runaways among ordinary messages: only they fail.
    let mut mixed = vec!["ok"; 100];
    mixed[30] = "loop";
    mixed[70] = "oom";
    let indexes = add(&mut con, &mixed);
    let (looping, hoarding) = (indexes[30], indexes[70]);
    for i in [looping, hoarding] {
        wait_dead_letter(&mut con, &mut sluice, i);
    }
    let rss = sluice.rss_bytes();
    println!(
        "runaway: VmRSS {} MB after the `oom` messages were dead-lettered (limit {} MB)",
        rss >> 20,
        RSS_LIMIT >> 20
    );
    assert!(
        rss < RSS_LIMIT,
        "sluice holds {} MB after runaway allocations (limit {} MB)",
        rss >> 20,
        RSS_LIMIT >> 20
    );

    // Later messages are still processed.
    add(&mut con, &["ok"; 50]);
    let ids = all_ids(&mut con);
    wait_drained(&mut con, None, &mut sluice, &ids);
    assert!(sluice.is_running(), "sluice stays up");
    sluice.shutdown();

    let outputs = tally(&xrange_all(&mut con, OUT), inputs);
    let dead = dead_letters_by_index(&mut con);
    let runaways: BTreeSet<usize> = lone.into_iter().chain([looping, hoarding]).collect();
    assert_eq!(
        dead.keys().copied().collect::<BTreeSet<_>>(),
        runaways,
        "dead letters = exactly the runaway messages"
    );
    // At least once: duplicates are another test's business (leases), here only who fails.
    for (i, &count) in outputs.iter().enumerate() {
        if runaways.contains(&i) {
            assert_eq!(count, 0, "runaway input {i} reached the sink");
        } else {
            assert!(count > 0, "input {i} (`ok`) never reached the sink");
        }
    }
    for i in [looping, hoarding] {
        let class = if i == looping { "timeout" } else { "memory" };
        assert_eq!(
            dead[&i].get("sluice.error_class"),
            class,
            "input {i}: error class"
        );
        assert_eq!(
            dead[&i].get("sluice.deliveries"),
            MAX_DELIVERIES.to_string(),
            "input {i}: deliveries"
        );
    }
}

/// The id of the newest entry of [`IN`].
fn last_input_id(con: &mut Connection) -> String {
    let newest: Vec<(String, Vec<(String, String)>)> = redis::cmd("XREVRANGE")
        .arg(IN)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query(con)
        .expect("XREVRANGE in");
    newest.into_iter().next().expect("an input").0
}

/// Every id of [`IN`], oldest first.
fn all_ids(con: &mut Connection) -> Vec<String> {
    xrange_all(con, IN)
        .into_iter()
        .map(|entry| entry.id)
        .collect()
}

/// The pending entries of [`IN`] held by consumers of the process with `pid`.
fn held_by(con: &mut Connection, pid: u32) -> usize {
    let marker = format!("-{pid}-");
    pending_entries(con, IN, GROUP)
        .iter()
        .filter(|entry| entry.consumer.contains(&marker))
        .count()
}

/// Two processes on one group: when one is killed mid-batch, the other reclaims its pending
/// entries within claim_idle_ms plus one reclaim interval, and processes them once.
#[test]
fn killed_process_pending_entries_are_reclaimed_by_the_other() {
    const INPUTS: usize = 100;
    const CLAIM_IDLE: Duration = Duration::from_millis(2000);
    /// claim_idle_ms / 4, clamped to 50 ms..5 s.
    const RECLAIM_INTERVAL: Duration = Duration::from_millis(500);
    /// For a loaded two-core machine: scheduling delays of the survivor's reclaimer task.
    const SLACK: Duration = Duration::from_secs(5);

    let redis = RedisServer::new();
    let mut con = redis.conn();
    let ids = xadd_many(&mut con, IN, INPUTS, index_only);
    let source = format!(
        "consumers = 1\nbatch = {INPUTS}\nclaim_idle_ms = {}",
        CLAIM_IDLE.as_millis()
    );
    // The victim sleeps a minute per batch, so it is mid-batch, holding every input, when it
    // is killed; the survivor, same group, does not sleep.
    let victim_pipeline = Spec {
        processor: "timeout_ms = 120000".into(),
        ..Spec::new(&source, "sleep_ms = 60000")
    }
    .write(&redis);
    let survivor_pipeline = Spec::new(&source, "").write(&redis);

    let mut victim = start(&victim_pipeline);
    let victim_pid = victim.pid();
    victim.wait_until("the victim to hold every input", |_| {
        group_exists(&mut con, IN, GROUP) && held_by(&mut con, victim_pid) == INPUTS
    });
    let mut survivor = start(&survivor_pipeline);
    survivor.wait_until("the survivor's pipeline to start", |survivor| {
        survivor.log().contains("pipeline started")
    });
    assert_eq!(
        held_by(&mut con, victim_pid),
        INPUTS,
        "the live victim keeps its entries (leases)"
    );
    assert!(victim.is_running(), "the victim is still mid-batch");

    victim.kill9();
    let killed = Instant::now();
    survivor.wait_until("the victim's entries to be reclaimed", |_| {
        held_by(&mut con, victim_pid) == 0
    });
    let reclaimed_after = killed.elapsed();
    let bound = CLAIM_IDLE + RECLAIM_INTERVAL + SLACK;
    println!(
        "reclaim: the killed process's {INPUTS} entries were reclaimed {reclaimed_after:?} after \
         the kill (claim_idle_ms {CLAIM_IDLE:?} + interval {RECLAIM_INTERVAL:?}; allowed \
         {bound:?} with {SLACK:?} slack)"
    );
    assert!(
        reclaimed_after <= bound,
        "reclaimed {reclaimed_after:?} after the kill; allowed {bound:?}"
    );

    wait_drained(&mut con, None, &mut survivor, &ids);
    assert!(
        survivor.log().contains("reclaimed idle entries"),
        "the survivor's reclaimer took them"
    );
    survivor.shutdown();
    let counts = tally(&xrange_all(&mut con, OUT), INPUTS);
    assert!(
        counts.iter().all(|&n| n == 1),
        "every input exactly once in the sink: {counts:?}"
    );
    assert_eq!(xlen(&mut con, DEAD), 0, "dead letters");
}

/// Leases: batches that take 3 × claim_idle_ms, read by two processes in one group, are never
/// reclaimed while alive, so every input reaches the sink exactly once (at-least-once mode,
/// where a stolen batch would be written twice).
#[test]
fn leases_keep_slow_batches_from_being_processed_twice() {
    const INPUTS: usize = 400;
    const CLAIM_IDLE_MS: u64 = 500;

    let redis = RedisServer::new();
    let mut con = redis.conn();
    let ids = xadd_many(&mut con, IN, INPUTS, index_only);
    let pipeline = slow_pipeline(&redis, 2, CLAIM_IDLE_MS);

    let mut first = start(&pipeline);
    let mut second = start(&pipeline);
    wait_drained(&mut con, None, &mut first, &ids);
    assert!(second.is_running(), "the second process is still up");
    let reclaims: usize = [&first, &second]
        .iter()
        .map(|sluice| lines_with(&sluice.log(), "reclaimed idle entries").len())
        .sum();
    first.shutdown();
    second.shutdown();

    assert_each_input_once(&mut con, "leases", INPUTS, reclaims, "");
    assert_eq!(xlen(&mut con, DEAD), 0, "dead letters");
}

/// Leases cover reclaimed work too: what a killed process held, reclaimed by a survivor whose
/// consumer is busy with a batch that takes 3 × claim_idle_ms, waits for that consumer without
/// going idle, so it is not reclaimed again and processed twice.
#[test]
fn reclaimed_work_waiting_for_a_busy_consumer_is_not_processed_twice() {
    const INPUTS: usize = 200;
    const CLAIM_IDLE_MS: u64 = 500;

    let redis = RedisServer::new();
    let mut con = redis.conn();
    let ids = xadd_many(&mut con, IN, INPUTS, index_only);
    let pipeline = slow_pipeline(&redis, 1, CLAIM_IDLE_MS);

    let mut victim = start(&pipeline);
    let victim_pid = victim.pid();
    victim.wait_until("the victim to hold entries", |_| {
        group_exists(&mut con, IN, GROUP) && held_by(&mut con, victim_pid) > 0
    });
    let mut survivor = start(&pipeline);
    survivor.wait_until("the survivor to hold entries of its own", |survivor| {
        held_by(&mut con, survivor.pid()) > 0
    });
    victim.kill9();
    wait_drained(&mut con, None, &mut survivor, &ids);
    let reclaims = lines_with(&survivor.log(), "reclaimed idle entries").len();
    survivor.shutdown();

    assert_each_input_once(
        &mut con,
        "reclaimed work behind a busy consumer",
        INPUTS,
        reclaims,
        " (the killed process held at most 2 batches)",
    );
}

/// `sluice dlq list | replay | purge` on the dead letters of poison messages.
#[test]
fn dlq_list_replay_and_purge_round_trip() {
    const INPUTS: usize = 50;
    const OTHER: &str = "replayed";
    let poison = |i: usize| i % 10 == 4;
    let fields = |i: usize| {
        vec![
            ("i", i.to_string()),
            (
                "action",
                if poison(i) { "poison" } else { "ok" }.to_string(),
            ),
            ("note", format!("original field of {i}")),
        ]
    };
    let want_fields = |i: usize| -> Vec<(String, String)> {
        fields(i)
            .into_iter()
            .map(|(name, value)| (name.to_string(), value))
            .collect()
    };

    let redis = RedisServer::new();
    let url = redis.url();
    let mut con = redis.conn();
    let ids = xadd_many(&mut con, IN, INPUTS, fields);
    let pipeline = Spec::new("batch = 10", "").write(&redis);
    let mut sluice = start(&pipeline);
    wait_drained(&mut con, None, &mut sluice, &ids);
    let poisoned: Vec<usize> = (0..INPUTS).filter(|&i| poison(i)).collect();
    let dead = xrange_all(&mut con, DEAD);
    assert_eq!(
        dead.iter().map(index).collect::<Vec<_>>(),
        poisoned,
        "dead letters = the poison inputs"
    );

    // list: every dead letter, its original id, the error and the original fields.
    let listed = Sluice::exec(["dlq", "list", DEAD, "--redis", &url]).stdout();
    for entry in &dead {
        let i = index(entry);
        for expected in [
            entry.id.as_str(),
            ids[i].as_str(),
            "asked to dead-letter",
            &format!("note = original field of {i}"),
        ] {
            assert!(
                listed.contains(expected),
                "`dlq list` does not show {expected:?} for input {i}:\n{listed}"
            );
        }
    }

    // replay --ids: just that one.
    let one = &dead[1];
    Sluice::exec([
        "dlq", "replay", DEAD, "--to", OTHER, "--ids", &one.id, "--redis", &url,
    ]);
    let replayed = xrange_all(&mut con, OTHER);
    assert_eq!(
        replayed
            .iter()
            .map(|e| e.fields.clone())
            .collect::<Vec<_>>(),
        vec![want_fields(index(one))],
        "`--ids` replays that entry alone, with its original fields in order"
    );
    let left: Vec<String> = xrange_all(&mut con, DEAD)
        .into_iter()
        .map(|e| e.id)
        .collect();
    let want_left: Vec<String> = dead
        .iter()
        .filter(|e| e.id != one.id)
        .map(|e| e.id.clone())
        .collect();
    assert_eq!(left, want_left, "the replayed entry left the dead letters");

    // replay: the rest.
    Sluice::exec(["dlq", "replay", DEAD, "--to", OTHER, "--redis", &url]);
    assert_eq!(
        xlen(&mut con, DEAD),
        0,
        "the dead letters are empty after a replay"
    );
    let replayed = xrange_all(&mut con, OTHER);
    let mut want: Vec<usize> = vec![index(one)];
    want.extend(poisoned.iter().filter(|&&i| i != index(one)));
    assert_eq!(
        replayed
            .iter()
            .map(|e| e.fields.clone())
            .collect::<Vec<_>>(),
        want.into_iter().map(want_fields).collect::<Vec<_>>(),
        "`{OTHER}` holds every replayed message with its original fields in order, no `sluice.*`"
    );

    // purge: more poison, then nothing.
    xadd_many(&mut con, IN, 3, |k| {
        vec![
            ("i", (INPUTS + k).to_string()),
            ("action", "poison".to_string()),
        ]
    });
    sluice.wait_until("three new dead letters", |_| xlen(&mut con, DEAD) == 3);
    let purged = Sluice::exec(["dlq", "purge", DEAD, "--yes", "--redis", &url]).stdout();
    assert!(
        purged.contains("purged 3"),
        "`dlq purge` says what it did: {purged}"
    );
    assert_eq!(
        xlen(&mut con, DEAD),
        0,
        "the dead letters are empty after a purge"
    );
    assert_eq!(pending_count(&mut con, IN, GROUP), 0, "pending at the end");
    sluice.shutdown();
}

/// SIGTERM under load with `atomic = true`: the process finishes and commits what is in
/// flight, exits 0 with nothing pending, and a restart finishes the stream without writing
/// anything twice.
#[test]
fn atomic_sigterm_under_load_exits_clean_and_restart_duplicates_nothing() {
    const INPUTS: usize = 20_000;
    let redis = RedisServer::new();
    let mut con = redis.conn();
    let ids = xadd_many(&mut con, IN, INPUTS, index_only);
    let pipeline = Spec {
        atomic: true,
        ..Spec::new("consumers = 4\nbatch = 100", "sleep_ms = 20")
    }
    .write(&redis);

    let mut first = start(&pipeline);
    first.wait_until("a tenth of the inputs in the sink", |_| {
        xlen(&mut con, OUT) >= INPUTS / 10
    });
    first.shutdown();
    let written = xlen(&mut con, OUT);
    assert!(
        written < INPUTS,
        "SIGTERM stops reading: all {INPUTS} were processed anyway"
    );
    assert_eq!(
        pending_count(&mut con, IN, GROUP),
        0,
        "in-flight messages committed before exit"
    );

    let mut second = start(&pipeline);
    wait_drained(&mut con, None, &mut second, &ids);
    second.shutdown();

    let outputs = xrange_all(&mut con, OUT);
    let counts = tally(&outputs, INPUTS);
    let wrong: Vec<(usize, usize)> = counts
        .iter()
        .copied()
        .enumerate()
        .filter(|&(_, n)| n != 1)
        .take(10)
        .collect();
    println!(
        "atomic SIGTERM: inputs {INPUTS}, {written} written before SIGTERM, outputs {}",
        outputs.len()
    );
    assert!(
        wrong.is_empty(),
        "inputs not exactly once in the sink, (index, count): {wrong:?}"
    );
    assert_eq!(xlen(&mut con, DEAD), 0, "dead letters");
}
