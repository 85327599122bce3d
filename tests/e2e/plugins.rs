//! Plugins in languages without component tooling: plain core modules, wrapped into
//! components at load.
//!
//! The example plugins (`plugins/uppercase-wat`, `plugins/json-enrich-c`) are built from source
//! by `scripts/build-plugins`; the misbehaving fixture (`tests/fixtures/runaway.wat`) is
//! assembled here with the same `wat2wasm`. Each runs in a real pipeline against a real Redis,
//! and the sandbox's limits must hold for core modules as they do for components.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

use crate::support::logs::{field, lines_with};
use crate::support::pipeline::{IN, OUT, stream_source, wait_settled};
use crate::support::streams::{xadd_many, xlen, xrange_all};
use crate::support::{Pipeline, RedisServer, Sluice, repo_root};

/// A WAT plugin, 461 bytes of module, uppercases every field value of every message; two
/// consumers share the work.
#[test]
fn a_wat_core_module_uppercases_in_a_real_pipeline() {
    const COUNT: usize = 2_000;
    let redis = RedisServer::new();
    let mut con = redis.conn();
    xadd_many(&mut con, IN, COUNT, |i| {
        vec![
            ("i", format!("n{i}")),
            ("payload", format!("message {i} from wat")),
        ]
    });
    let pipeline = Pipeline::stream_to_stream(&redis, "uppercase-wat", "consumers = 2", "");

    let mut sluice = Sluice::run(pipeline.path());
    wait_settled(&mut con, &mut sluice, COUNT, 0);
    sluice.shutdown();

    let mut got: Vec<Vec<(String, String)>> = xrange_all(&mut con, OUT)
        .into_iter()
        .map(|e| e.fields)
        .collect();
    // Two consumers: each keeps its own order, the interleaving is free.
    got.sort_by_key(|fields| fields[0].1[1..].parse::<usize>().unwrap_or(usize::MAX));
    let want: Vec<Vec<(String, String)>> = (0..COUNT)
        .map(|i| {
            vec![
                ("i".to_owned(), format!("N{i}")),
                ("payload".to_owned(), format!("MESSAGE {i} FROM WAT")),
            ]
        })
        .collect();
    assert_eq!(got, want, "every message once, every value uppercased");
}

/// The C json-enrich adds the configured keys (replacing one already there), keeps the other
/// fields, and dead-letters what is not a JSON object, each with its reason.
#[test]
fn a_c_core_module_enriches_json_and_dead_letters_the_rest() {
    assert_json_enrich("json-enrich-c");
}

/// The JavaScript json-enrich (componentize-js, `sdk/js/sluice.js`) does the same job.
#[test]
fn a_javascript_plugin_enriches_json_and_dead_letters_the_rest() {
    assert_json_enrich("json-enrich-js");
}

/// The Python json-enrich (componentize-py, `sdk/python/sluice.py`) does the same job.
#[test]
fn a_python_plugin_enriches_json_and_dead_letters_the_rest() {
    assert_json_enrich("json-enrich-py");
}

/// Runs the json-enrich job through `plugin_name` and checks every output and dead letter.
fn assert_json_enrich(plugin_name: &str) {
    let redis = RedisServer::new();
    let mut con = redis.conn();
    let payloads = [
        r#"{"id":0}"#,
        r#" { "id" : 1, "region": "old", "nested": {"a": [1, 2.5, "x\"y", null]}, "ok": true } "#,
        r#"{}"#,
        r#"{"id":3"#,
        r#"[1,2]"#,
        r#"not json"#,
        r#"{"id":6} trailing"#,
    ];
    xadd_many(&mut con, IN, payloads.len() + 1, |i| {
        match payloads.get(i) {
            Some(payload) => vec![("i", i.to_string()), ("payload", payload.to_string())],
            None => vec![("i", i.to_string()), ("other", "no payload".to_owned())],
        }
    });
    let pipeline = Pipeline::stream_to_stream(
        &redis,
        plugin_name,
        "",
        "region = \"eu-west\"\nnote = 'say \"hi\"\\back'",
    );

    // Python and JavaScript components take seconds to compile on first use: within PATIENCE.
    let mut sluice = Sluice::run(pipeline.path());
    wait_settled(&mut con, &mut sluice, 3, 0);
    let dead_stream = format!("{IN}:dead");
    sluice.wait_until("five dead letters", |_| xlen(&mut con, &dead_stream) == 5);
    sluice.shutdown();

    let out = xrange_all(&mut con, OUT);
    let got: Vec<(String, Value)> = out
        .iter()
        .map(|e| {
            assert_eq!(
                e.fields.len(),
                2,
                "{plugin_name}: fields kept, in order: {e:?}"
            );
            assert_eq!(e.fields[0].0, "i");
            let json = serde_json::from_str(e.get("payload"))
                .unwrap_or_else(|err| panic!("{plugin_name}: output is not JSON ({err}): {e:?}"));
            (e.get("i").to_owned(), json)
        })
        .collect();
    let extra = |mut object: Value| {
        object["region"] = json!("eu-west");
        object["note"] = json!("say \"hi\"\\back");
        object
    };
    assert_eq!(
        got,
        vec![
            ("0".to_owned(), extra(json!({"id": 0}))),
            (
                "1".to_owned(),
                extra(json!({"id": 1, "nested": {"a": [1, 2.5, "x\"y", null]}, "ok": true}))
            ),
            ("2".to_owned(), extra(json!({}))),
        ],
        "{plugin_name}: enriched objects"
    );
    let reasons: BTreeMap<String, String> = xrange_all(&mut con, &dead_stream)
        .into_iter()
        .map(|e| (e.get("i").to_owned(), e.get("sluice.error").to_owned()))
        .collect();
    assert_eq!(
        reasons.keys().cloned().collect::<BTreeSet<_>>(),
        ["3", "4", "5", "6", "7"].map(String::from).into(),
        "{plugin_name}: the invalid payloads and the message without one are dead-lettered at once"
    );
    for i in ["3", "4", "5", "6"] {
        assert!(
            reasons[i].contains("`payload` is not a JSON object"),
            "{plugin_name}: input {i}: {}",
            reasons[i]
        );
    }
    assert!(
        reasons["7"].contains("missing field `payload`"),
        "{plugin_name}: {}",
        reasons["7"]
    );
}

/// Assembles `tests/fixtures/<name>.wat` into `dir` with the toolchain `scripts/build-plugins`
/// uses.
fn assemble(name: &str, dir: &Path) -> std::path::PathBuf {
    let wat = repo_root()
        .join("tests")
        .join("fixtures")
        .join(format!("{name}.wat"));
    let wasm = dir.join(format!("{name}.wasm"));
    let status = Command::new("wat2wasm")
        .arg(&wat)
        .arg("-o")
        .arg(&wasm)
        .status()
        .unwrap_or_else(|e| panic!("wat2wasm (run scripts/setup): {e}"));
    assert!(status.success(), "wat2wasm {}: {status}", wat.display());
    wasm
}

/// A core module that never returns is stopped at `timeout_ms`, one that grows its memory
/// past `memory_mb` is refused and traps: only their messages fail, each dead-lettered after
/// `max_deliveries` with its class, and the neighbours in the same batches pass.
#[test]
fn a_core_module_that_loops_or_hoards_fails_only_its_messages() {
    const COUNT: usize = 60;
    const LOOPING: usize = 17;
    const HOARDING: usize = 41;
    let redis = RedisServer::new();
    let mut con = redis.conn();
    let dir = tempfile::tempdir().expect("a temp dir");
    let plugin = assemble("runaway", dir.path());
    let toml = format!(
        "{head}\n[[processor]]\nplugin = '{plugin}'\ntimeout_ms = 200\nmemory_mb = 16\n\n\
         [[sink]]\nname = \"out\"\ntype = \"stream\"\nstream = \"{OUT}\"\n",
        head = stream_source(
            &redis,
            "batch = 20\nclaim_idle_ms = 300\nmax_deliveries = 2"
        ),
        plugin = plugin.display(),
    );
    let pipeline = Pipeline::write("e2e", &toml);
    xadd_many(&mut con, IN, COUNT, |i| {
        let action = match i {
            LOOPING => "loop",
            HOARDING => "hoard",
            _ => "ok",
        };
        vec![("i", i.to_string()), ("action", action.to_owned())]
    });

    let mut sluice = Sluice::run(pipeline.path());
    wait_settled(&mut con, &mut sluice, COUNT - 2, 0);
    assert!(sluice.is_running(), "the runtime survives its plugin");
    sluice.shutdown();

    let outputs: BTreeSet<usize> = xrange_all(&mut con, OUT)
        .iter()
        .map(|e| e.get("i").parse().expect("a numeric `i`"))
        .collect();
    let want: BTreeSet<usize> = (0..COUNT)
        .filter(|&i| i != LOOPING && i != HOARDING)
        .collect();
    assert_eq!(outputs, want, "every well-behaved message passed");
    let dead: BTreeMap<usize, (String, String)> = xrange_all(&mut con, &format!("{IN}:dead"))
        .into_iter()
        .map(|e| {
            (
                e.get("i").parse().expect("a numeric `i`"),
                (
                    e.get("sluice.error_class").to_owned(),
                    e.get("sluice.deliveries").to_owned(),
                ),
            )
        })
        .collect();
    assert_eq!(
        dead,
        BTreeMap::from([
            (LOOPING, ("timeout".to_owned(), "2".to_owned())),
            (HOARDING, ("memory".to_owned(), "2".to_owned())),
        ]),
        "dead letters: the runaways, by class, after max_deliveries"
    );
}

/// A stream `<name>:in` → `plugin_name` → stream `<name>:out` pipeline file named `name`.
fn named_pipeline(
    redis: &RedisServer,
    name: &str,
    plugin_name: &str,
    source: &str,
    config: &str,
) -> String {
    format!(
        "[redis]\nurl = \"{url}\"\n\n[source]\ntype = \"stream\"\nstream = \"{name}:in\"\nstart = \"0\"\nblock_ms = 100\n{source}\n\n\
         [[processor]]\nplugin = '{plugin}'\n\n[processor.config]\n{config}\n\n\
         [[sink]]\nname = \"out\"\ntype = \"stream\"\nstream = \"{name}:out\"\n",
        url = redis.url(),
        plugin = crate::support::plugin(plugin_name).display(),
    )
}

/// Two pipelines in one process count on a key of the same name; each sees only its own
/// counter, and the counters live under each pipeline's own prefix.
#[test]
fn pipelines_never_see_each_others_keys() {
    count_in_pipelines(&[("alpha", "counter", 30), ("beta", "counter", 50)]);
}

/// The key-value helpers of the C, Python and JavaScript SDKs: the counter example in each
/// language counts every message once, across two consumers (`incr`); one message claims
/// `n:first` for a minute (`set-new` with a TTL) and every message reads its id back
/// (`get`); a scratch key is written and deleted (`set`, `delete`).
#[test]
fn counters_in_c_python_and_javascript_count_every_message_once() {
    let pipelines = [
        ("c", "counter-c", 20),
        ("py", "counter-py", 20),
        ("js", "counter-js", 20),
    ];
    let redis = count_in_pipelines(&pipelines);
    let mut con = redis.conn();
    for (name, _, count) in pipelines {
        let out = xrange_all(&mut con, &format!("{name}:out"));
        let ids: BTreeSet<&str> = out.iter().map(|e| e.get("id")).collect();
        assert_eq!(ids.len(), count, "{name}: every message's own id");
        let firsts: BTreeSet<&str> = out.iter().map(|e| e.get("first")).collect();
        assert_eq!(firsts.len(), 1, "{name}: one first id for all: {firsts:?}");
        let first = firsts.into_iter().next().unwrap_or_default();
        assert!(
            ids.contains(first),
            "{name}: the first id {first} is a message's"
        );
        let ttl: i64 = redis::cmd("PTTL")
            .arg(format!("sluice:kv:{{{name}}}:n:first"))
            .query(&mut con)
            .expect("PTTL");
        assert!(
            (1..=60_000).contains(&ttl),
            "{name}: n:first expires: {ttl}"
        );
        let scratch: bool = redis::cmd("EXISTS")
            .arg(format!("sluice:kv:{{{name}}}:n:scratch"))
            .query(&mut con)
            .expect("EXISTS");
        assert!(!scratch, "{name}: the scratch key was deleted");
    }
}

/// Runs one pipeline per `(name, plugin, count)` in one process, all counting on key `n`
/// with two consumers, and checks that each counted its own messages, each once, from 1.
/// Returns the Redis, for more checks.
fn count_in_pipelines(pipelines: &[(&str, &str, usize)]) -> RedisServer {
    let redis = RedisServer::new();
    let mut con = redis.conn();
    let dir = tempfile::tempdir().expect("a temp dir");
    for &(name, plugin, count) in pipelines {
        let toml = named_pipeline(&redis, name, plugin, "consumers = 2", "key = \"n\"");
        std::fs::write(dir.path().join(format!("{name}.toml")), toml).expect("write a pipeline");
        xadd_many(&mut con, &format!("{name}:in"), count, |i| {
            vec![("i", i.to_string())]
        });
    }

    let mut sluice = Sluice::spawn([
        std::ffi::OsStr::new("run"),
        dir.path().as_os_str(),
        std::ffi::OsStr::new("--no-watch"),
    ]);
    for &(name, _, count) in pipelines {
        let out = format!("{name}:out");
        sluice.wait_until(&format!("{count} entries in {out}"), |_| {
            xlen(&mut con, &out) == count
        });
    }
    sluice.shutdown();

    for &(name, _, count) in pipelines {
        let seen: BTreeSet<usize> = xrange_all(&mut con, &format!("{name}:out"))
            .iter()
            .map(|e| e.get("count").parse().expect("a numeric count"))
            .collect();
        assert_eq!(
            seen,
            (1..=count).collect::<BTreeSet<_>>(),
            "pipeline {name} counts its own messages, each once, from 1"
        );
        let stored: usize = redis::cmd("GET")
            .arg(format!("sluice:kv:{{{name}}}:n"))
            .query(&mut con)
            .expect("GET the counter");
        assert_eq!(stored, count, "pipeline {name}'s counter in Redis");
    }
    let bare: Option<String> = redis::cmd("GET").arg("n").query(&mut con).expect("GET n");
    assert_eq!(bare, None, "no key outside the pipelines' prefixes");
    redis
}

/// dedup passes the first message of each key and filters the rest within the window, across
/// two consumers; once the window's key expires, the key passes again.
#[test]
fn dedup_drops_repeats_within_the_window_and_passes_them_after() {
    const COUNT: usize = 200;
    const KEYS: usize = 40;
    let redis = RedisServer::new();
    let mut con = redis.conn();
    xadd_many(&mut con, "d:in", COUNT, |i| {
        vec![("id", format!("k{}", i % KEYS)), ("i", i.to_string())]
    });
    let pipeline = Pipeline::write(
        "d",
        &named_pipeline(
            &redis,
            "d",
            "dedup",
            "consumers = 2\nbatch = 16",
            "key = \"id\"\nwindow_ms = \"6000\"",
        ),
    );
    let mut sluice = Sluice::run(pipeline.path());
    sluice.wait_until("every input acked", |_| {
        crate::support::streams::group_exists(&mut con, "d:in", "d")
            && crate::support::streams::pending_count(&mut con, "d:in", "d") == 0
            && crate::support::streams::last_delivered_id(&mut con, "d:in", "d")
                == xrange_all(&mut con, "d:in").last().expect("input").id
    });
    // Consumers race, so which message of a key wins is free; that exactly one does is not.
    let passed: Vec<String> = xrange_all(&mut con, "d:out")
        .iter()
        .map(|e| e.get("id").to_owned())
        .collect();
    assert_eq!(
        passed.iter().cloned().collect::<BTreeSet<_>>(),
        (0..KEYS).map(|k| format!("k{k}")).collect::<BTreeSet<_>>(),
        "every key passed"
    );
    assert_eq!(passed.len(), KEYS, "no key passed twice: {passed:?}");

    // The window is a key with a TTL: once Redis has expired it, the key passes again.
    let window_key = "sluice:kv:{d}:seen:k7";
    let ttl: i64 = redis::cmd("PTTL")
        .arg(window_key)
        .query(&mut con)
        .expect("PTTL");
    // -2: already expired on a slow machine; -1 (no expiry) would be the bug.
    assert!(
        ttl != -1 && ttl <= 6000,
        "the window key expires within window_ms: {ttl} ms"
    );
    sluice.wait_until("the window of k7 to expire", |_| {
        !redis::cmd("EXISTS")
            .arg(window_key)
            .query::<bool>(&mut con)
            .expect("EXISTS")
    });
    xadd_many(&mut con, "d:in", 1, |_| {
        vec![("id", "k7".to_owned()), ("i", "again".to_owned())]
    });
    sluice.wait_until("k7 passes again", |_| xlen(&mut con, "d:out") == KEYS + 1);
    sluice.shutdown();
    assert_eq!(
        xrange_all(&mut con, "d:out")
            .last()
            .expect("output")
            .get("i"),
        "again"
    );
}

/// A dedup window of zero would store nothing: the plugin refuses the config at init, and
/// `plugin test` says why and exits non-zero.
#[test]
fn dedup_refuses_an_empty_window() {
    let plugin = crate::support::plugin("dedup");
    let mut test = Sluice::spawn([
        std::ffi::OsStr::new("plugin"),
        std::ffi::OsStr::new("test"),
        plugin.as_os_str(),
        std::ffi::OsStr::new("--config"),
        std::ffi::OsStr::new("window_ms=0"),
        std::ffi::OsStr::new("--field"),
        std::ffi::OsStr::new("id=1"),
    ]);
    let status = test.wait_exit(crate::support::PATIENCE);
    assert!(!status.success(), "plugin test accepted window_ms = 0");
    let log = test.log();
    assert!(
        log.contains("window_ms must be at least 1"),
        "the reason: {log}"
    );
}

/// A plugin that writes 3,000 lines for one message (through `log`, stdout and stderr) gets
/// no more than the rate limit's burst, plus its rate over the run, into the runtime's log,
/// each line tagged with pipeline, plugin and entry id. Once the limit lifts, one line says
/// how many were suppressed.
#[test]
fn a_chatty_plugin_is_tagged_and_rate_limited() {
    const LINES: usize = 3 * 1000;
    let redis = RedisServer::new();
    let mut con = redis.conn();
    let toml = named_pipeline(&redis, "chatty", "faults", "batch = 1", "");
    let pipeline = Pipeline::write("chatty", &toml);
    let xadd = |con: &mut redis::Connection, action: &str| -> String {
        redis::cmd("XADD")
            .arg("chatty:in")
            .arg("*")
            .arg("action")
            .arg(action)
            .query(con)
            .expect("XADD")
    };
    let started = std::time::Instant::now();
    let first = xadd(&mut con, "chatty:1000");
    let mut sluice = Sluice::run(pipeline.path());
    sluice.wait_until("the chatty message's record", |_| {
        xlen(&mut con, "chatty:out") == 1
    });
    let elapsed = started.elapsed().as_secs_f64();
    // The chatty call is over: what it got into the log is final. A line of the chatty
    // message says "chatty <from> <i>" (the pipeline's name, also "chatty", is in every line,
    // including the suppressed-lines reports made during the call).
    let is_chatty_line = |l: &str| {
        l.contains(&format!("entry={first}"))
            && ["chatty log ", "chatty stdout ", "chatty stderr "]
                .iter()
                .any(|text| l.contains(text))
    };
    let admitted_lines = |log: &str| -> usize { log.lines().filter(|l| is_chatty_line(l)).count() };
    let suppressed_total = |log: &str| -> usize {
        lines_with(log, "suppressed")
            .iter()
            .map(|report| {
                field(report, "suppressed")
                    .and_then(|n| n.parse::<usize>().ok())
                    .unwrap_or_else(|| panic!("no count in {report}"))
            })
            .sum()
    };
    let floor = LINES - admitted_lines(&sluice.log());
    // A report comes when lines flow again: within a long call once the bucket refills,
    // and for the rest with the next line admitted. Quiet messages, one at a time, until
    // every line of the chatty message is accounted for.
    let mut quiet = 0;
    sluice.wait_until("reports of every suppressed line", |s| {
        if suppressed_total(&s.log()) >= floor {
            return true;
        }
        if xlen(&mut con, "chatty:out") == 1 + quiet {
            xadd(&mut con, "chatty:1");
            quiet += 1;
        }
        false
    });
    sluice.shutdown();

    let log = sluice.log();
    let admitted: Vec<&str> = log.lines().filter(|l| is_chatty_line(l)).collect();
    // Bucket: 100 lines at once, then 50 per second (runtime/src/plugin/guest_log.rs).
    let allowed = 100 + (50.0 * elapsed).ceil() as usize;
    assert!(
        !admitted.is_empty() && admitted.len() <= allowed,
        "{} lines of the chatty message logged, limit {allowed}",
        admitted.len()
    );
    for from in ["log", "stdout", "stderr"] {
        let line = admitted
            .iter()
            .find(|l| l.contains(&format!("chatty {from} 0")))
            .unwrap_or_else(|| panic!("no line from {from} in:\n{}", admitted.join("\n")));
        assert_eq!(field(line, "pipeline"), Some("chatty"), "{line}");
        assert!(
            field(line, "plugin").is_some_and(|p| p.ends_with("faults.wasm")),
            "{line}"
        );
        assert_eq!(field(line, "from"), Some(&*format!("\"{from}\"")), "{line}");
    }
    // Every line of the chatty message was either logged or counted; the quiet messages'
    // own lines may add to the count.
    let suppressed = suppressed_total(&log);
    assert!(
        (floor..=floor + 3 * quiet).contains(&suppressed),
        "suppressed {suppressed}, expected {floor} (+ up to {} quiet lines)",
        3 * quiet
    );
}

/// A plugin sees an environment variable and a folder only when its pipeline grants them,
/// and only those: the same messages pass through a granting pipeline and are dead-lettered,
/// with the reason, by one that grants nothing.
#[test]
fn a_plugin_reads_env_and_files_only_when_granted() {
    let redis = RedisServer::new();
    let mut con = redis.conn();
    let data = tempfile::tempdir().expect("a temp dir");
    let secret = data.path().join("secret.txt");
    std::fs::write(&secret, "file contents").expect("write the granted file");
    let outside = tempfile::tempdir().expect("a temp dir");
    let other = outside.path().join("other.txt");
    std::fs::write(&other, "not granted").expect("write a file outside the grant");
    let dir = tempfile::tempdir().expect("a temp dir");
    let grants = format!(
        "\n[processor.grants]\nenv = [\"SLUICE_E2E_SECRET\"]\ndirs = [\"{}:ro\"]",
        data.path().display()
    );
    for (name, grants) in [("granted", grants.as_str()), ("bare", "")] {
        let toml = named_pipeline(&redis, name, "faults", "", grants);
        std::fs::write(dir.path().join(format!("{name}.toml")), toml).expect("write a pipeline");
        let actions = [
            "env:SLUICE_E2E_SECRET".to_string(),
            format!("read:{}", secret.display()),
            format!("read:{}", other.display()),
        ];
        xadd_many(&mut con, &format!("{name}:in"), actions.len(), |i| {
            vec![("action", actions[i].clone())]
        });
    }
    let mut sluice = Sluice::spawn_with(
        [
            std::ffi::OsStr::new("run"),
            dir.path().as_os_str(),
            std::ffi::OsStr::new("--no-watch"),
        ],
        |c| {
            c.env("SLUICE_E2E_SECRET", "s3cret");
        },
    );
    for (name, out, dead) in [("granted", 2, 1), ("bare", 0, 3)] {
        sluice.wait_until(
            &format!("{out} out and {dead} dead letters in {name}"),
            |_| {
                xlen(&mut con, &format!("{name}:out")) == out
                    && xlen(&mut con, &format!("{name}:in:dead")) == dead
            },
        );
    }
    sluice.shutdown();

    let granted = xrange_all(&mut con, "granted:out");
    assert_eq!(granted[0].get("env"), "s3cret");
    assert_eq!(granted[1].get("file"), "file contents");
    let refused = |stream: &str| -> Vec<String> {
        xrange_all(&mut redis.conn(), stream)
            .iter()
            .map(|e| e.get("sluice.error").to_owned())
            .collect()
    };
    let outside_grant = refused("granted:in:dead");
    assert!(outside_grant[0].contains("other.txt"), "{outside_grant:?}");
    let bare = refused("bare:in:dead");
    assert!(bare[0].contains("env SLUICE_E2E_SECRET"), "{bare:?}");
    assert!(bare[1].contains("secret.txt"), "{bare:?}");
    assert!(bare[2].contains("other.txt"), "{bare:?}");
}

/// A component that imports an interface sluice does not provide (here `wasi:http`, as a
/// JavaScript component built without `-d http` does) is refused at load, by `plugin test`
/// as by `validate` (tests/validate/imports-http.toml), naming the import.
#[test]
fn a_component_importing_http_is_refused_naming_it() {
    let (status, stderr) =
        refused_plugin_test(&repo_root().join("tests/fixtures/imports-http.wasm"));
    assert!(!status.success());
    assert!(
        stderr.contains("imports `wasi:http/outgoing-handler@0.2.0`")
            && stderr.contains("no grant allows"),
        "{stderr}"
    );
}

fn refused_plugin_test(wasm: &Path) -> (std::process::ExitStatus, String) {
    let mut run = Sluice::spawn([
        std::ffi::OsStr::new("plugin"),
        std::ffi::OsStr::new("test"),
        wasm.as_os_str(),
        std::ffi::OsStr::new("--field"),
        std::ffi::OsStr::new("a=b"),
    ]);
    let status = run.wait_exit(crate::support::PATIENCE);
    (status, run.log())
}

/// `fuel` stops a plugin that loops long before its generous `timeout_ms` would: the
/// looping message fails as a timeout whose reason names the fuel, and is dead-lettered once
/// its deliveries run out; its neighbours pass.
#[test]
fn fuel_stops_a_loop_before_the_timeout() {
    const COUNT: usize = 10;
    const LOOPING: usize = 4;
    let redis = RedisServer::new();
    let mut con = redis.conn();
    let toml = format!(
        "{head}\n[[processor]]\nplugin = '{plugin}'\ntimeout_ms = 600000\nfuel = 50000000\n\n\
         [[sink]]\nname = \"out\"\ntype = \"stream\"\nstream = \"{OUT}\"\n",
        head = stream_source(&redis, "batch = 5\nclaim_idle_ms = 300\nmax_deliveries = 2"),
        plugin = crate::support::plugin("faults").display(),
    );
    let pipeline = Pipeline::write("e2e", &toml);
    xadd_many(&mut con, IN, COUNT, |i| {
        let action = if i == LOOPING { "loop" } else { "ok" };
        vec![("i", i.to_string()), ("action", action.to_owned())]
    });
    let mut sluice = Sluice::run(pipeline.path());
    // Settled well within the test's patience, far below timeout_ms: fuel stopped the loop.
    wait_settled(&mut con, &mut sluice, COUNT - 1, 0);
    sluice.shutdown();
    let dead = xrange_all(&mut con, &format!("{IN}:dead"));
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].get("i"), LOOPING.to_string());
    assert_eq!(dead[0].get("sluice.error_class"), "timeout");
    assert!(
        dead[0].get("sluice.error").contains("fuel = 50000000"),
        "{:?}",
        dead[0]
    );
}

/// Fuel is counted only when a pipeline sets it at start: an edit that adds `fuel` to a
/// running pipeline is refused with the reason (restart), and the pipeline keeps running as
/// it was.
#[test]
fn fuel_added_while_running_is_refused_until_a_restart() {
    let redis = RedisServer::new();
    let mut con = redis.conn();
    let cache = tempfile::tempdir().expect("a cache dir");
    let toml = format!(
        "{head}\n[[processor]]\nplugin = '{plugin}'\n\n\
         [[sink]]\nname = \"out\"\ntype = \"stream\"\nstream = \"{OUT}\"\n",
        head = stream_source(&redis, ""),
        plugin = crate::support::plugin("faults").display(),
    );
    let pipeline = Pipeline::write("e2e", &toml);
    xadd_many(&mut con, IN, 3, |i| vec![("i", i.to_string())]);
    let mut sluice = Sluice::watch(&[pipeline.path()], cache.path());
    wait_settled(&mut con, &mut sluice, 3, 0);

    let with_fuel = toml.replace("\n\n[[sink]]", "\nfuel = 1000000\n\n[[sink]]");
    assert_ne!(with_fuel, toml);
    std::fs::write(pipeline.path(), with_fuel).expect("edit the pipeline");
    sluice.wait_for_log(&["restart sluice to apply `fuel`"], 1);
    xadd_many(&mut con, IN, 3, |i| vec![("i", (3 + i).to_string())]);
    wait_settled(&mut con, &mut sluice, 6, 0);
    sluice.shutdown();
}
