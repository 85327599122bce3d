//! Hot reload: plugin files and pipeline files change while messages flow (DESIGN.md, "Hot
//! swap" and "Pipelines as config").
//!
//! - A new plugin version, however it lands on disk (written in place, renamed over, copied
//!   over), is swapped in between batches: no message is lost or processed twice, and with one
//!   consumer the output switches from version 1 to version 2 exactly once.
//! - A plugin file that cannot be used (truncated, not a component, the wrong interface) and a
//!   config its init refuses are reported, and the running version keeps serving.
//! - Adding, changing and removing one pipeline file never pauses the others.
//! - A restart with a warm compiled-plugin cache starts faster than a cold one.
//!
//! These tests run `sluice run` *watching* its files, on copies of the plugins in the test's
//! own temp dir, so that only the test changes what runs.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tempfile::TempDir;

use crate::support::flow::{
    Producer, entry_ms, largest_gap, last_entry, longest_silence, now_ms, xrange_after,
};
use crate::support::logs::{self, lines_with, ms_field};
use crate::support::pipeline::{GROUP, IN, OUT, wait_settled};
use crate::support::streams::{Entry, pending_count, xadd_many, xlen, xrange_all};
use crate::support::{Pipeline, RedisServer, Sluice, plugin, repo_root};

/// The log line of a successful swap.
const SWAPPED: &str = "plugin swapped";
/// The log line of a plugin file that was not swapped in.
const REFUSED: &str = "new plugin version refused";

/// A test's own folder: plugin copies, pipeline files and the compiled-plugin cache.
struct Scratch {
    dir: TempDir,
}

impl Scratch {
    fn new() -> Self {
        Scratch {
            dir: tempfile::tempdir().expect("create a temp dir for the test"),
        }
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    /// The compiled-plugin cache of this test's sluice processes.
    fn cache(&self) -> PathBuf {
        self.path("cache")
    }

    /// Copies the built `plugins/faults/faults.wasm` (version 1) to `plugins/faults.wasm`
    /// here, and returns the copy's path: the file the test overwrites.
    fn faults_v1(&self) -> PathBuf {
        let copy = self.path("plugins/faults.wasm");
        fs::create_dir_all(copy.parent().expect("a folder")).expect("create plugins/");
        fs::copy(plugin("faults"), &copy).expect("copy faults.wasm");
        copy
    }

    /// Writes `text` to `relative` (creating its folder) and returns the path.
    fn write(&self, relative: &str, text: &str) -> PathBuf {
        let path = self.path(relative);
        fs::create_dir_all(path.parent().expect("a folder")).expect("create the folder");
        fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }
}

/// The built version 2 of the faults plugin: it stamps `plugin_version = "2"`.
fn faults_v2() -> PathBuf {
    let path = repo_root().join("plugins/faults/faults-v2.wasm");
    assert!(
        path.is_file(),
        "{} is not built: run scripts/build-plugins first",
        path.display()
    );
    path
}

/// A stream → plugin → stream pipeline on `redis`, its group reading `stream` from the start.
fn stream_pipeline(
    redis: &RedisServer,
    (stream, group): (&str, &str),
    plugin: &Path,
    config: &str,
    sink: &str,
) -> String {
    format!(
        r#"[redis]
url = "{url}"

[source]
type = "stream"
stream = "{stream}"
group = "{group}"
start = "0"
block_ms = 100

[[processor]]
plugin = '{plugin}'

[processor.config]
{config}

[[sink]]
type = "stream"
stream = "{sink}"
"#,
        url = redis.url(),
        plugin = plugin.display(),
    )
}

/// Replaces `to` with `bytes` in one step (write a temp file in the same folder,
/// then rename it over), so the watcher never sees a half-written file.
fn replace_atomically(to: &Path, bytes: &[u8]) {
    let tmp = to.with_extension("wasm.tmp");
    fs::write(&tmp, bytes).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    fs::rename(&tmp, to).unwrap_or_else(|e| panic!("rename over {}: {e}", to.display()));
}

/// The input index `i` of every entry, sorted.
fn indexes(entries: &[Entry]) -> Vec<usize> {
    let mut seen: Vec<usize> = entries
        .iter()
        .map(|entry| entry.get("i").parse().expect("`i` is a number"))
        .collect();
    seen.sort_unstable();
    seen
}

/// Asserts that `entries` hold each index of `0..count` exactly once.
fn assert_exactly_once(what: &str, entries: &[Entry], count: usize) {
    let seen = indexes(entries);
    if let Some(twice) = seen.windows(2).find(|pair| pair[0] == pair[1]) {
        panic!("{what}: input {} was written more than once", twice[0]);
    }
    let missing = (0..count).find(|i| seen.binary_search(i).is_err());
    assert_eq!(missing, None, "{what}: an input never reached the output");
    assert_eq!(seen.len(), count, "{what}: entries beyond the input");
}

/// Asserts the versions stamped on `output` (one consumer, so stream order is processing
/// order) run `1...1 2...2`: version 1 first, one switch, never back. Returns the position of
/// the first version 2 record.
fn assert_switches_once(output: &[Entry]) -> usize {
    let versions: Vec<&str> = output.iter().map(|e| e.get("plugin_version")).collect();
    let first_v2 = versions
        .iter()
        .position(|v| *v == "2")
        .expect("no output of version 2: the swap never happened");
    assert!(first_v2 > 0, "the first output is already version 2");
    if let Some(k) = versions[..first_v2].iter().position(|v| *v != "1") {
        panic!("output {k} has version {} before the switch", versions[k]);
    }
    if let Some(k) = versions[first_v2..].iter().position(|v| *v != "2") {
        let k = first_v2 + k;
        panic!(
            "the output switched to version 2 at position {first_v2}, then output {k} has version {}",
            versions[k]
        );
    }
    first_v2
}

/// How a new plugin file lands on disk: the three ways editors, build tools and deploy scripts
/// write files, each a different sequence of file-system events.
#[derive(Debug, Clone, Copy)]
enum Overwrite {
    /// Open the existing file, truncate it and write the new bytes into it, in 4 KiB writes.
    InPlace,
    /// Write the new file under a temp name in the same folder, then rename it over.
    Rename,
    /// `std::fs::copy` over the existing file.
    Copy,
}

impl Overwrite {
    fn apply(self, from: &Path, to: &Path) {
        match self {
            Overwrite::InPlace => {
                let bytes = fs::read(from).expect("read the new version");
                let mut file = OpenOptions::new()
                    .write(true)
                    .truncate(true)
                    .open(to)
                    .expect("open the plugin file");
                for chunk in bytes.chunks(4096) {
                    file.write_all(chunk).expect("write the plugin file");
                }
                file.sync_all().expect("sync the plugin file");
            }
            Overwrite::Rename => {
                replace_atomically(to, &fs::read(from).expect("read the new version"));
            }
            Overwrite::Copy => {
                fs::copy(from, to).expect("copy over the plugin file");
            }
        }
    }
}

/// Messages preloaded for the swap tests: enough for about a second of full-speed work on a
/// quiet machine, during which the swap lands.
const SWAP_MESSAGES: usize = 100_000;

/// Should the backlog run low before version 2 shows up (a slow swap on a busy machine), the
/// test adds this many more, so the swap always lands mid-flow and the flow stays at full speed.
const TOP_UP: usize = 20_000;

/// 100,000 messages at full speed through faults v1; overwrite the plugin with v2 mid-flow.
/// Every input comes out exactly once, versions switch once, nothing stays pending. Prints
/// the pause the swap caused.
fn swap_mid_flow(how: Overwrite) {
    let redis = RedisServer::new();
    let mut con = redis.conn();
    let scratch = Scratch::new();
    let plugin = scratch.faults_v1();
    let pipeline = scratch.write(
        "pipelines/swap.toml",
        &stream_pipeline(&redis, (IN, GROUP), &plugin, "", OUT),
    );
    xadd_many(&mut con, IN, SWAP_MESSAGES, |i| vec![("i", i.to_string())]);

    let mut sluice = Sluice::watch(&[&pipeline], &scratch.cache());
    sluice.wait_until("the first output", |_| xlen(&mut con, OUT) > 0);
    how.apply(&faults_v2(), &plugin);
    let mut total = SWAP_MESSAGES;
    sluice.wait_until("output stamped by version 2", |_| {
        if last_entry(&mut con, OUT).is_some_and(|e| e.get("plugin_version") == "2") {
            return true;
        }
        if xlen(&mut con, OUT) + TOP_UP > total {
            let base = total;
            xadd_many(&mut con, IN, TOP_UP, |k| {
                vec![("i", (base + k).to_string())]
            });
            total += TOP_UP;
        }
        false
    });
    wait_settled(&mut con, &mut sluice, total, 0);
    let log = sluice.log();
    sluice.shutdown();

    let swaps = lines_with(&log, SWAPPED);
    assert_eq!(swaps.len(), 1, "one swap for one new file: {swaps:#?}");
    let output = xrange_all(&mut con, OUT);
    assert_exactly_once(&format!("swap by {how:?}"), &output, total);
    let first_v2 = assert_switches_once(&output);
    assert_eq!(
        xlen(&mut con, &format!("{IN}:dead")),
        0,
        "nothing dead-lettered"
    );

    // The pause: how long the swap took to prepare (compile and init, off the consumers'
    // path), and the longest time between two outputs around the switch.
    let prepare_ms = ms_field(swaps[0]);
    let at_switch =
        entry_ms(&output[first_v2].id).saturating_sub(entry_ms(&output[first_v2 - 1].id));
    let near = &output[first_v2.saturating_sub(5_000)..(first_v2 + 5_000).min(output.len())];
    let near_gap = largest_gap(near).map_or(0, |gap| gap.ms);
    let run_gap = largest_gap(&output).map_or(0, |gap| gap.ms);
    println!(
        "swap pause ({how:?}): preparation {prepare_ms} ms (log `ms=`); output gap at the switch \
         {at_switch} ms; largest gap within 5,000 outputs of the switch {near_gap} ms; largest \
         gap of the whole run {run_gap} ms; {total} messages ({} topped up), {first_v2} by \
         version 1",
        total - SWAP_MESSAGES
    );
}

#[test]
fn swap_by_writing_in_place_mid_flow_loses_and_duplicates_nothing() {
    swap_mid_flow(Overwrite::InPlace);
}

#[test]
fn swap_by_renaming_over_mid_flow_loses_and_duplicates_nothing() {
    swap_mid_flow(Overwrite::Rename);
}

#[test]
fn swap_by_copying_over_mid_flow_loses_and_duplicates_nothing() {
    swap_mid_flow(Overwrite::Copy);
}

/// The smallest core WebAssembly module (magic, version 1, no sections): valid Wasm, but it
/// does not export the processor world through the canonical ABI, so it cannot be wrapped.
const CORE_MODULE: &[u8] = b"\0asm\x01\0\0\0";

/// The smallest component (magic, version 0x0d, layer 1, no sections): a valid component that
/// exports nothing, so not of the `sluice:processor` world.
const EMPTY_COMPONENT: &[u8] = b"\0asm\x0d\0\x01\0";

/// A component that imports a function `foo: func()` sluice does not provide: a type section
/// (one `func()` type) and an import section (`foo` of that type).
const IMPORTS_FOO: &[u8] =
    b"\0asm\x0d\0\x01\0\x07\x05\x01\x40\x00\x01\x00\x0a\x08\x01\x00\x03foo\x01\x00";

/// After a refused change: more output arrives, all of it from `version`.
fn assert_keeps_serving(
    con: &mut redis::Connection,
    sluice: &mut Sluice,
    version: &str,
    after: &str,
) {
    const MORE: usize = 200;
    let mark = last_entry(con, OUT).map(|e| e.id);
    let more = sluice.wait_for(
        &format!("{MORE} more outputs {after}"),
        |_| xrange_after(con, OUT, mark.as_deref()),
        |entries| entries.len() >= MORE,
    );
    if let Some(other) = more.iter().find(|e| e.get("plugin_version") != version) {
        panic!(
            "{after}, output {} came from version {} instead of {version}",
            other.id,
            other.get("plugin_version")
        );
    }
}

/// Broken plugin files mid-flow (truncated, a core module, components of the wrong
/// interface), then a good one, then a config the plugin's init refuses: each refusal is
/// logged naming the file and the reason, the running version keeps serving, and no message is
/// lost or duplicated.
///
/// "Init that fails": the example plugins' init only fails on config (faults' `fail_init`),
/// and a swapped-in file is initialised with the running config, so a failing init is tested
/// as a `[processor.config]`-only edit the init refuses: the edit must be refused and the
/// running plugin and config kept.
#[test]
fn broken_plugin_files_are_refused_while_the_old_version_keeps_serving() {
    let redis = RedisServer::new();
    let mut con = redis.conn();
    let scratch = Scratch::new();
    let plugin = scratch.faults_v1();
    let pipeline_text = |config: &str| stream_pipeline(&redis, (IN, GROUP), &plugin, config, OUT);
    let pipeline = scratch.write(
        "pipelines/broken.toml",
        &pipeline_text(r#"field = "action""#),
    );
    // 2,000 messages a second for as long as the test takes: always mid-flow.
    let producer = Producer::start(&redis, IN, 20, Duration::from_millis(10));

    let mut sluice = Sluice::watch(&[&pipeline], &scratch.cache());
    sluice.wait_until("the first output", |_| xlen(&mut con, OUT) > 0);

    let v2 = fs::read(faults_v2()).expect("read faults-v2.wasm");
    let bad: [(&str, &[u8], &str); 4] = [
        ("a truncated file", &v2[..v2.len() / 2], "cannot compile it"),
        (
            "a core module",
            CORE_MODULE,
            "does not implement the sluice:processor world",
        ),
        (
            "a component that exports nothing",
            EMPTY_COMPONENT,
            "does not export the sluice:processor world",
        ),
        (
            "a component importing a function sluice does not provide",
            IMPORTS_FOO,
            "imports `foo`, which sluice does not provide",
        ),
    ];
    let file = plugin.display().to_string();
    for (what, bytes, reason) in bad {
        let before = lines_with(&sluice.log(), REFUSED).len();
        replace_atomically(&plugin, bytes);
        let line = sluice.wait_for(
            &format!("a `{REFUSED}` log line for {what}, with `{reason}`"),
            |sluice| {
                lines_with(&sluice.log(), REFUSED)[before..]
                    .iter()
                    .find(|line| line.contains(reason))
                    .map(|line| line.to_string())
            },
            Option::is_some,
        );
        let line = line.expect("found above");
        assert!(
            line.contains(&file),
            "the refusal of {what} names the file {file}: {line}"
        );
        assert_keeps_serving(
            &mut con,
            &mut sluice,
            "1",
            &format!("after refusing {what}"),
        );
    }

    replace_atomically(&plugin, &v2);
    sluice.wait_for_log(&[SWAPPED], 1);
    sluice.wait_until("output stamped by version 2", |_| {
        last_entry(&mut con, OUT).is_some_and(|e| e.get("plugin_version") == "2")
    });

    let failing_init = pipeline_text("field = \"action\"\nfail_init = \"true\"");
    fs::write(&pipeline, failing_init).expect("edit the pipeline");
    let refused = sluice.wait_for_log(&["processor config change refused"], 1);
    let line = &refused[0];
    assert!(
        line.contains(&file) && line.contains("asked to fail init"),
        "the refused config names the plugin {file} and its init's reason: {line}"
    );
    assert_keeps_serving(
        &mut con,
        &mut sluice,
        "2",
        "after refusing a config its init fails on",
    );

    let total = producer.stop();
    wait_settled(&mut con, &mut sluice, total, 0);
    let log = sluice.log();
    sluice.shutdown();

    assert_eq!(
        lines_with(&log, SWAPPED).len(),
        1,
        "only the good file swapped in"
    );
    let output = xrange_all(&mut con, OUT);
    assert_exactly_once("broken files mid-flow", &output, total);
    assert_switches_once(&output);
    assert_eq!(
        xlen(&mut con, &format!("{IN}:dead")),
        0,
        "nothing dead-lettered"
    );
}

/// The longest a busy pipeline's output may pause while another pipeline file is added,
/// changed and removed. A reload that paused the others (a drain, a compile, a blocked
/// thread) would show as a pause of its whole duration; normal output is every few ms. The
/// bound is generous because the test runs a debug build on two shared cores.
const MAX_PAUSE_MS: u64 = 1_500;

/// Two busy pipelines run while a third pipeline file is added, changed (its sink, then its
/// processor config) and removed: the busy ones' output never pauses longer than
/// [`MAX_PAUSE_MS`], and the third adopts each change.
#[test]
fn pipeline_files_come_and_go_while_two_others_run_under_load() {
    let redis = RedisServer::new();
    let mut con = redis.conn();
    let scratch = Scratch::new();
    let plugin = scratch.faults_v1();
    let busy = [("a", "busy-a", "a:out"), ("b", "busy-b", "b:out")];
    for (stream, group, sink) in busy {
        scratch.write(
            &format!("pipelines/{group}.toml"),
            &stream_pipeline(&redis, (stream, group), &plugin, "", sink),
        );
    }
    let folder = scratch.path("pipelines");
    // 5,000 messages a second each, for as long as the test takes.
    let producers: Vec<Producer> = busy
        .iter()
        .map(|(stream, ..)| Producer::start(&redis, stream, 50, Duration::from_millis(10)))
        .collect();

    let mut sluice = Sluice::watch(&[&folder], &scratch.cache());
    sluice.wait_for_log(&["pipeline started"], 2);
    sluice.wait_until("output from both busy pipelines", |_| {
        busy.iter().all(|(.., sink)| xlen(&mut con, sink) > 0)
    });
    let window_start = now_ms();

    // Add: the third pipeline starts and reads its stream from the start.
    let extra =
        |sink: &str, config: &str| stream_pipeline(&redis, ("c", "extra"), &plugin, config, sink);
    let numbered = |from: usize| move |k: usize| vec![("i", (from + k).to_string())];
    xadd_many(&mut con, "c", 100, numbered(0));
    let file = scratch.write("pipelines/extra.toml", &extra("c:out", ""));
    sluice.wait_for_log(&["pipeline started", "pipeline=extra"], 1);
    sluice.wait_until("the added pipeline's output in c:out", |_| {
        xlen(&mut con, "c:out") == 100
    });

    // Change its sink: the pipeline restarts with the new one.
    fs::write(&file, extra("c:out2", "")).expect("edit extra.toml");
    sluice.wait_for_log(
        &["pipeline restarted with the new config", "pipeline=extra"],
        1,
    );
    xadd_many(&mut con, "c", 100, numbered(100));
    sluice.wait_until("the changed pipeline's output in c:out2", |_| {
        xlen(&mut con, "c:out2") == 100
    });
    assert_eq!(xlen(&mut con, "c:out"), 100, "nothing more in the old sink");

    // Change only its processor config: the plugin is re-initialised and now takes its action
    // from field `kind`, so these messages are dead-lettered instead of written.
    fs::write(&file, extra("c:out2", r#"field = "kind""#)).expect("edit extra.toml");
    sluice.wait_for_log(&["plugins re-initialised", "pipeline=extra"], 1);
    xadd_many(&mut con, "c", 100, |k| {
        vec![("i", (200 + k).to_string()), ("kind", "poison".to_string())]
    });
    sluice.wait_until("the re-initialised plugin's dead letters in c:dead", |_| {
        xlen(&mut con, "c:dead") == 100
    });
    assert_eq!(
        xlen(&mut con, "c:out2"),
        100,
        "poison is not written to the sink"
    );

    // Remove: the pipeline drains and stops; its stream is no longer read.
    // (Its restart above already stopped one version of it.)
    let stopped = ["pipeline stopped", "pipeline=extra"];
    let stopped_before = logs::lines_with_all(&sluice.log(), &stopped).len();
    fs::remove_file(&file).expect("remove extra.toml");
    sluice.wait_for_log(&["pipeline file removed", "pipeline=extra"], 1);
    sluice.wait_for_log(&stopped, stopped_before + 1);
    let unread = xadd_many(&mut con, "c", 1, numbered(300)).remove(0);
    // Proof of a negative: the busy pipelines process another 1,000 messages each (at least
    // a few tenths of a second) and the removed one still has not read the new entry.
    let marks: Vec<usize> = busy.iter().map(|(.., sink)| xlen(&mut con, sink)).collect();
    sluice.wait_until("1,000 more outputs from each busy pipeline", |_| {
        busy.iter()
            .zip(&marks)
            .all(|((.., sink), mark)| xlen(&mut con, sink) >= mark + 1_000)
    });
    let window_end = now_ms();
    assert_eq!(
        pending_count(&mut con, "c", "extra"),
        0,
        "the removed pipeline drained"
    );
    let read_up_to: Vec<(String, Vec<(String, String)>)> = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("extra")
        .arg("e2e-probe")
        .arg("COUNT")
        .arg(10)
        .arg("STREAMS")
        .arg("c")
        .arg(">")
        .query::<Option<Vec<(String, Vec<(String, Vec<(String, String)>)>)>>>(&mut con)
        .expect("XREADGROUP c")
        .and_then(|mut streams| streams.pop())
        .map(|(_, entries)| entries)
        .unwrap_or_default();
    let ids: Vec<&str> = read_up_to.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(
        ids,
        [unread.as_str()],
        "after removal, the entry added to `c` is still unread by group `extra`"
    );

    let totals: Vec<usize> = producers.into_iter().map(Producer::stop).collect();
    for ((stream, group, sink), total) in busy.iter().zip(&totals) {
        sluice.wait_until(
            &format!("{total} outputs in {sink}, nothing pending"),
            |_| xlen(&mut con, sink) == *total && pending_count(&mut con, stream, group) == 0,
        );
    }
    sluice.shutdown();

    for ((stream, _, sink), total) in busy.iter().zip(&totals) {
        let output = xrange_all(&mut con, sink);
        assert_exactly_once(sink, &output, *total);
        let paused = longest_silence(&output, window_start, window_end);
        let input_paused = longest_silence(&xrange_all(&mut con, stream), window_start, window_end);
        println!(
            "{sink}: longest pause {paused} ms while the third pipeline came and went \
             ({} ms; its input's longest pause: {input_paused} ms)",
            window_end - window_start
        );
        assert!(
            paused <= MAX_PAUSE_MS,
            "{sink} paused {paused} ms (bound: {MAX_PAUSE_MS} ms) while another pipeline file \
             was added, changed and removed; its input `{stream}` paused at most {input_paused} ms"
        );
    }
}

/// Starts the Python pipeline with the compiled-plugin cache in `cache`; returns the time from
/// spawning the process to its "pipeline started" log line, and stops it.
fn time_to_start(pipeline: &Path, cache: &Path) -> Duration {
    let spawned = SystemTime::now();
    let mut sluice = Sluice::run_cached(pipeline, cache);
    let started = sluice.wait_for_log(&["pipeline started"], 1).remove(0);
    sluice.shutdown();
    logs::timestamp(&started)
        .duration_since(spawned)
        .expect("the process logs after it was spawned")
}

/// The middle value (the mean of the two middle ones for an even count).
fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    let mid = times.len() / 2;
    if times.len().is_multiple_of(2) {
        (times[mid - 1] + times[mid]) / 2
    } else {
        times[mid]
    }
}

/// The Python plugin (an 18 MB component) compiles in seconds; a restart with the compiled
/// code cached on disk skips that. Cold starts (an empty cache each) against warm restarts
/// (the cache the first cold start filled): every warm start beats every cold one. Prints the
/// ratio of the medians.
#[test]
fn a_warm_compile_cache_starts_faster_than_a_cold_one() {
    const COLD: usize = 2;
    const WARM: usize = 3;
    let redis = RedisServer::new();
    let scratch = Scratch::new();
    let pipeline = Pipeline::stream_to_stream(&redis, "uppercase-py", "", r#"field = "payload""#);

    let cold: Vec<Duration> = (0..COLD)
        .map(|k| time_to_start(pipeline.path(), &scratch.path(&format!("cold-{k}"))))
        .collect();
    let cache = scratch.path("cold-0");
    let cached = fs::read_dir(&cache)
        .expect("the cold start created its cache folder")
        .filter_map(Result::ok)
        .any(|entry| entry.path().extension().is_some_and(|ext| ext == "cwasm"));
    assert!(
        cached,
        "the cold start cached compiled code in {}",
        cache.display()
    );
    let warm: Vec<Duration> = (0..WARM)
        .map(|_| time_to_start(pipeline.path(), &cache))
        .collect();

    let (cold_median, warm_median) = (median(cold.clone()), median(warm.clone()));
    println!(
        "start to `pipeline started` with uppercase-py: cold {cold:?} (median {cold_median:?}), \
         warm {warm:?} (median {warm_median:?}); cold/warm = {:.1}",
        cold_median.as_secs_f64() / warm_median.as_secs_f64()
    );
    let slowest_warm = warm.iter().max().expect("warm starts");
    let fastest_cold = cold.iter().min().expect("cold starts");
    assert!(
        slowest_warm < fastest_cold,
        "a warm start ({slowest_warm:?}) is not faster than a cold one ({fastest_cold:?})"
    );
}
