//! Rolling out a new processor version (README, "Rolling out a new processor version"): `plugin
//! diff` against a live stream, shadow runs, canaries, automatic rollback, promote and rollback.
//!
//! Version 1 and 2 of the faults plugin differ where a test asks: `changed:<action>` is `ok` in
//! version 1 and `<action>` in version 2; `fail_version = "2"` makes version 2 fail everything;
//! `stamp = "false"` leaves out the `plugin_version` field that would make every record differ.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tempfile::TempDir;

use crate::support::browser::{card_stat, dump_dom};
use crate::support::flow::{Producer, last_entry};
use crate::support::http::{get, series};
use crate::support::logs::field;
use crate::support::pipeline::{GROUP, IN, OUT, wait_settled};
use crate::support::streams::{Entry, pending_count, xadd_many, xlen, xrange_all};
use crate::support::{RedisServer, Sluice, plugin, repo_root};

/// The pipeline's name in these tests (the file's stem).
const NAME: &str = "roll";

/// A test's folder, with a copy of faults version 1 that the test overwrites with version 2,
/// and `roll.toml`: stream `in` → faults → stream `out`, group `e2e` from the start.
struct Rig {
    dir: TempDir,
    plugin: PathBuf,
    pipeline: PathBuf,
}

impl Rig {
    /// `processor` adds lines to the `[[processor]]` table, `config` to `[processor.config]`,
    /// `source` to `[source]`.
    fn new(redis: &RedisServer, source: &str, processor: &str, config: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let plugin = dir.path().join("plugins/faults.wasm");
        fs::create_dir_all(plugin.parent().expect("folder")).expect("mkdir plugins");
        fs::copy(plugin_path_v1(), &plugin).expect("copy faults.wasm");
        let pipeline = dir.path().join(format!("pipelines/{NAME}.toml"));
        fs::create_dir_all(pipeline.parent().expect("folder")).expect("mkdir pipelines");
        let toml = format!(
            r#"[redis]
url = "{url}"

[source]
type = "stream"
stream = "{IN}"
group = "{GROUP}"
start = "0"
block_ms = 100
{source}

[[processor]]
plugin = '{plugin}'
{processor}

[processor.config]
{config}

[[sink]]
type = "stream"
stream = "{OUT}"
"#,
            url = redis.url(),
            plugin = plugin.display(),
        );
        fs::write(&pipeline, toml).expect("write the pipeline");
        Rig {
            dir,
            plugin,
            pipeline,
        }
    }

    /// `sluice run roll.toml --http 127.0.0.1:0`, watching; the process and its address.
    fn run(&self) -> (Sluice, String) {
        let args = [
            OsStr::new("run"),
            self.pipeline.as_os_str(),
            OsStr::new("--http"),
            OsStr::new("127.0.0.1:0"),
        ];
        let cache = self.dir.path().join("cache");
        let mut sluice = Sluice::spawn_with(args, |command| {
            command.env("SLUICE_CACHE_DIR", &cache);
        });
        let served = sluice.wait_for_log(&["serving /metrics"], 1);
        let addr = field(&served[0], "addr").expect("the address").to_owned();
        sluice.wait_for_log(&["plugin loaded"], 1);
        (sluice, addr)
    }

    /// Overwrites the plugin with version 2 (write beside, rename over) and waits for the
    /// log line `expect` (a swap, or a version on trial).
    fn deploy_v2(&self, sluice: &mut Sluice, expect: &str) {
        let tmp = self.plugin.with_extension("wasm.tmp");
        fs::copy(faults_v2(), &tmp).expect("copy v2");
        fs::rename(&tmp, &self.plugin).expect("rename v2 over v1");
        sluice.wait_for_log(&[expect], 1);
    }
}

fn plugin_path_v1() -> PathBuf {
    plugin("faults")
}

/// The SHA-256 of a file, hex: how `/rollouts` names versions.
fn sha256(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("run sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("a hash")
        .to_owned()
}

/// `/rollouts` for stage 1 of the test pipeline.
fn rollout(addr: &str) -> serde_json::Value {
    let (status, body) = get(addr, "/rollouts");
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    json[NAME][0].clone()
}

/// A counter of the test pipeline's stage 1 from `/metrics` (0 when absent).
fn counter(addr: &str, name: &str, extra: &str) -> f64 {
    let (_, text) = get(addr, "/metrics");
    series(
        &text,
        name,
        &format!("pipeline=\"{NAME}\",stage=\"1\"{extra}"),
    )
    .unwrap_or(0.0)
}

/// Asserts `entries` carry each `i` of `0..count` exactly once.
fn assert_exactly_once(entries: &[Entry], count: usize) {
    let mut seen: Vec<usize> = entries
        .iter()
        .map(|e| e.get("i").parse().expect("i"))
        .collect();
    seen.sort_unstable();
    let expected: Vec<usize> = (0..count).collect();
    assert!(
        seen == expected,
        "not every input exactly once: {} outputs for {count} inputs",
        seen.len()
    );
}

/// The built version 2 of the faults plugin.
fn faults_v2() -> PathBuf {
    let path = repo_root().join("plugins/faults/faults-v2.wasm");
    assert!(
        path.is_file(),
        "{} is not built: run scripts/build-plugins",
        path.display()
    );
    path
}

/// Every key of the Redis behind `con`, sorted.
fn all_keys(con: &mut redis::Connection) -> Vec<String> {
    let mut keys: Vec<String> = redis::cmd("KEYS").arg("*").query(con).expect("KEYS");
    keys.sort();
    keys
}

#[test]
fn plugin_diff_reports_exactly_the_messages_that_differ_and_changes_nothing() {
    let redis = RedisServer::new();
    let mut con = redis.conn();
    // 60 messages; the test makes 5 produce another record in version 2, 3 fail in version 2
    // only (a trap, a retry, a dead letter), the rest stay the same.
    let differ = [3usize, 11, 25, 40, 58];
    let fail = [(7usize, "trap"), (19, "fail"), (33, "poison")];
    let ids = xadd_many(&mut con, "orders", 60, |i| {
        let action = if differ.contains(&i) {
            "changed:fanout:2".to_string()
        } else if let Some((_, a)) = fail.iter().find(|(n, _)| *n == i) {
            format!("changed:{a}")
        } else {
            "ok".to_string()
        };
        vec![
            ("i".to_string(), i.to_string()),
            ("action".to_string(), action),
        ]
    });
    let before = xrange_all(&mut con, "orders");
    let keys_before = all_keys(&mut con);

    let mut diff = Sluice::spawn([
        "plugin".into(),
        "diff".into(),
        plugin("faults").into_os_string(),
        faults_v2().into_os_string(),
        "--from".into(),
        "orders".into(),
        "--count".into(),
        "60".into(),
        "--redis".into(),
        redis.url().into(),
        "--config".into(),
        "stamp=false".into(),
    ]);
    let status = diff.wait_exit(Duration::from_secs(60));
    let out = diff.stdout();
    assert_eq!(
        status.code(),
        Some(2),
        "differences exit 2\n{out}\n{}",
        diff.log()
    );

    let verdicts: Vec<(&str, &str)> = out
        .lines()
        .filter(|l| !l.starts_with(' ') && !l.starts_with('#') && !l.starts_with("summary"))
        .filter_map(|l| l.split_once(": "))
        .collect();
    assert_eq!(verdicts.len(), 60, "one line per message\n{out}");
    let with = |word: &str| -> HashSet<&str> {
        verdicts
            .iter()
            .filter(|(_, v)| v.starts_with(word))
            .map(|(id, _)| *id)
            .collect()
    };
    let expected_different: HashSet<&str> = differ.iter().map(|&i| ids[i].as_str()).collect();
    let expected_failing: HashSet<&str> = fail.iter().map(|&(i, _)| ids[i].as_str()).collect();
    assert_eq!(with("different"), expected_different, "\n{out}");
    assert_eq!(with("fails in new only"), expected_failing, "\n{out}");
    assert_eq!(with("same").len(), 60 - 8, "\n{out}");
    for (i, kind) in [
        (7, "retry, trap"),
        (19, "retry, plugin"),
        (33, "dead-letter, plugin"),
    ] {
        assert!(
            out.contains(&format!("{}: fails in new only: {kind}", ids[i])),
            "message {i} names its failure kind `{kind}`\n{out}"
        );
    }
    assert!(out.contains("records: 1 -> 2"), "field-level detail\n{out}");
    assert!(
        out.contains("summary: 60 messages: 52 same, 5 different, 3 failing in one version"),
        "\n{out}"
    );
    // Read-only: the stream is as it was, and no group or other key appeared.
    assert_eq!(xrange_all(&mut con, "orders"), before);
    assert_eq!(all_keys(&mut con), keys_before);
    let groups: Vec<redis::Value> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg("orders")
        .query(&mut con)
        .expect("XINFO GROUPS");
    assert!(groups.is_empty(), "no consumer group created: {groups:?}");
}

#[test]
fn plugin_diff_of_a_version_with_itself_is_clean_and_exits_0() {
    let dir = tempfile::tempdir().expect("temp dir");
    let input = dir.path().join("in.jsonl");
    std::fs::write(
        &input,
        "{\"action\":\"ok\"}\n{\"action\":\"changed:fanout:3\"}\n",
    )
    .expect("write input");
    let out = Sluice::exec([
        "plugin".into(),
        "diff".into(),
        plugin("faults").into_os_string(),
        plugin("faults").into_os_string(),
        "--input".into(),
        input.into_os_string(),
    ])
    .stdout();
    assert!(out.contains("1-0: same\n2-0: same\n"), "{out}");
    assert!(
        out.contains("summary: 2 messages: 2 same, 0 different, 0 failing"),
        "{out}"
    );
}

#[test]
fn shadow_writes_nothing_from_the_new_version_and_counts_its_mismatches_exactly() {
    let redis = RedisServer::new();
    let mut con = redis.conn();
    let rig = Rig::new(&redis, "", r#"rollout = "shadow""#, r#"stamp = "false""#);
    let (mut sluice, addr) = rig.run();
    rig.deploy_v2(&mut sluice, "new plugin version on trial");

    // 1,000 messages: 37 that version 2 fans out (a mismatch), 5 it traps on (a shadow failure).
    let count = 1000;
    let differ: HashSet<usize> = (0..37).map(|k| k * 27 + 3).collect();
    let trap: HashSet<usize> = [100, 301, 502, 703, 904].into();
    let ids = xadd_many(&mut con, IN, count, |i| {
        let action = if differ.contains(&i) {
            "changed:fanout:2"
        } else if trap.contains(&i) {
            "changed:trap"
        } else {
            "ok"
        };
        vec![("i", i.to_string()), ("action", action.to_string())]
    });
    wait_settled(&mut con, &mut sluice, count, 0);

    // Only the serving version's records: one per input, none of version 2's copies.
    assert_exactly_once(&xrange_all(&mut con, OUT), count);
    assert_eq!(
        xlen(&mut con, &format!("{IN}:dead")),
        0,
        "a shadow failure dead-letters nothing"
    );
    assert_eq!(
        counter(&addr, "sluice_shadow_messages_total", ""),
        count as f64
    );
    assert_eq!(
        counter(&addr, "sluice_shadow_mismatches_total", ""),
        differ.len() as f64
    );
    assert_eq!(
        counter(&addr, "sluice_shadow_failures_total", ""),
        trap.len() as f64
    );
    // Samples name only messages that really differed, with what differed.
    let expected: HashSet<&str> = differ
        .iter()
        .chain(&trap)
        .map(|&i| ids[i].as_str())
        .collect();
    let samples = xrange_all(&mut con, &format!("{NAME}:shadow"));
    assert!(
        !samples.is_empty(),
        "mismatches are sampled to {NAME}:shadow"
    );
    for sample in &samples {
        assert!(
            expected.contains(sample.get("id")),
            "sample of a message that did not differ: {sample:?}"
        );
    }
    assert!(
        samples
            .iter()
            .any(|s| s.get("detail").contains("records: 1 -> 2")),
        "{samples:?}"
    );
    let state = rollout(&addr);
    assert_eq!(state["serving"], sha256(&plugin_path_v1()));
    assert_eq!(state["candidate"], sha256(&faults_v2()));
    sluice.shutdown();
}

#[test]
fn canary_serves_its_share_and_a_key_always_meets_the_same_version() {
    let redis = RedisServer::new();
    let mut con = redis.conn();
    let rig = Rig::new(
        &redis,
        "",
        "rollout = \"canary\"\ncanary_percent = 10\ncanary_key = \"user\"",
        "",
    );
    let (mut sluice, addr) = rig.run();
    rig.deploy_v2(&mut sluice, "new plugin version on trial");

    // 4,000 messages hashed by entry id, then 1,000 of 50 users (20 each) hashed by user.
    let by_id = 4000;
    let users = 50;
    let keyed = 1000;
    xadd_many(&mut con, IN, by_id, |i| vec![("i", i.to_string())]);
    xadd_many(&mut con, IN, keyed, |k| {
        vec![
            ("i", (by_id + k).to_string()),
            ("user", format!("user-{}", k % users)),
        ]
    });
    let count = by_id + keyed;
    wait_settled(&mut con, &mut sluice, count, 0);
    let output = xrange_all(&mut con, OUT);
    assert_exactly_once(&output, count);

    let by_version = |e: &&Entry| e.get("plugin_version") == "2";
    let canary = output
        .iter()
        .filter(|e| e.get("i").parse::<usize>().expect("i") < by_id)
        .filter(by_version)
        .count() as f64;
    // Binomial(4000, 0.1): mean 400, sigma = sqrt(4000 * 0.1 * 0.9) = 19; allow 5 sigma.
    let (mean, sigma) = (by_id as f64 * 0.1, (by_id as f64 * 0.1 * 0.9).sqrt());
    assert!(
        (canary - mean).abs() <= 5.0 * sigma,
        "the canary served {canary} of {by_id}, expected {mean} ± {:.0}",
        5.0 * sigma
    );
    let mut seen: HashMap<String, HashSet<String>> = HashMap::new();
    for e in output
        .iter()
        .filter(|e| e.fields.iter().any(|(n, _)| n == "user"))
    {
        seen.entry(e.get("user").to_owned())
            .or_default()
            .insert(e.get("plugin_version").to_owned());
    }
    assert_eq!(seen.len(), users);
    for (user, versions) in &seen {
        assert_eq!(versions.len(), 1, "{user} met versions {versions:?}");
    }
    let canary_users = seen.values().filter(|v| v.contains("2")).count();
    assert!(
        canary_users > 0 && canary_users < users,
        "{canary_users} of {users} users on the canary"
    );
    assert_eq!(
        counter(
            &addr,
            "sluice_canary_messages_total",
            ",version=\"candidate\""
        ),
        output.iter().filter(by_version).count() as f64
    );
    sluice.shutdown();
}

#[test]
fn a_canary_that_fails_everything_is_rolled_back_with_nothing_lost_or_dead_lettered() {
    let redis = RedisServer::new();
    let mut con = redis.conn();
    let rig = Rig::new(
        &redis,
        "claim_idle_ms = 300",
        "rollout = \"canary\"\ncanary_percent = 10",
        r#"fail_version = "2""#,
    );
    let (mut sluice, addr) = rig.run();
    rig.deploy_v2(&mut sluice, "new plugin version on trial");

    let count = 2000;
    xadd_many(&mut con, IN, count, |i| vec![("i", i.to_string())]);
    sluice.wait_for_log(&["plugin version rolled back", "failure rate"], 1);
    wait_settled(&mut con, &mut sluice, count, 0);

    let output = xrange_all(&mut con, OUT);
    assert_exactly_once(&output, count);
    assert!(
        output.iter().all(|e| e.get("plugin_version") == "1"),
        "only version 1 wrote"
    );
    assert_eq!(
        xlen(&mut con, &format!("{IN}:dead")),
        0,
        "nothing dead-lettered"
    );
    assert_eq!(
        counter(
            &addr,
            "sluice_plugin_rollbacks_total",
            ",reason=\"failure_rate\""
        ),
        1.0
    );
    let state = rollout(&addr);
    assert_eq!(state["candidate"], serde_json::Value::Null);
    assert_eq!(state["serving"], sha256(&plugin_path_v1()));
    assert_eq!(state["refused"], sha256(&faults_v2()));

    // The same bytes written again are not rolled out again.
    let tmp = rig.plugin.with_extension("wasm.tmp");
    fs::copy(faults_v2(), &tmp).expect("copy v2");
    fs::rename(&tmp, &rig.plugin).expect("rename");
    sluice.wait_for_log(&["was rolled back; not rolling it out again"], 1);
    assert_eq!(rollout(&addr)["candidate"], serde_json::Value::Null);
    sluice.shutdown();
}

#[test]
fn rollback_under_load_restores_the_previous_version_with_nothing_lost() {
    let redis = RedisServer::new();
    let mut con = redis.conn();
    let rig = Rig::new(&redis, "", "", "");
    let (mut sluice, addr) = rig.run();
    let producer = Producer::start(&redis, IN, 50, Duration::from_millis(10));
    sluice.wait_until("the first output", |_| xlen(&mut con, OUT) > 0);
    rig.deploy_v2(&mut sluice, "plugin swapped");
    sluice.wait_until("output of version 2", |_| {
        last_entry(&mut con, OUT).is_some_and(|e| e.get("plugin_version") == "2")
    });

    let rolled = Sluice::exec(["plugin", "rollback", NAME, "--http", &addr]).stdout();
    let v1 = sha256(&plugin_path_v1());
    assert!(rolled.contains(&v1), "{rolled}");
    sluice.wait_until("output of version 1 again", |_| {
        last_entry(&mut con, OUT).is_some_and(|e| e.get("plugin_version") == "1")
    });
    let written = producer.stop();
    wait_settled(&mut con, &mut sluice, written, 0);
    assert_exactly_once(&xrange_all(&mut con, OUT), written);
    assert_eq!(pending_count(&mut con, IN, GROUP), 0);

    let state = rollout(&addr);
    assert_eq!(state["serving"], v1);
    let history: Vec<(String, String)> = state["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|h| {
            (
                h["hash"].as_str().unwrap().to_owned(),
                h["how"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let v2 = sha256(&faults_v2());
    assert_eq!(
        history,
        [
            (v1.clone(), "start".into()),
            (v2, "file_change".into()),
            (v1.clone(), "rollback".into())
        ]
    );
    // `sluice status` shows the same history, from Redis.
    let json = Sluice::exec([
        OsStr::new("status"),
        rig.pipeline.as_os_str(),
        OsStr::new("--json"),
    ])
    .stdout();
    let rows: serde_json::Value = serde_json::from_str(&json).expect("status JSON");
    assert_eq!(
        rows[0]["versions"][0]["history"], state["history"],
        "{json}"
    );
    let table = Sluice::exec([OsStr::new("status"), rig.pipeline.as_os_str()]).stdout();
    assert!(
        table.contains(&format!("stage 1: {} start", &v1[..12])) && table.contains(" rollback "),
        "{table}"
    );
    let dom = dump_dom(&format!("http://{addr}/"));
    let shown = card_stat(&dom, NAME, "versions").unwrap_or_default();
    assert!(
        shown.contains(" file_change ") && shown.contains(" rollback "),
        "the dashboard shows the history: {shown}"
    );
    // Nothing left to roll back to: said so, exit 2.
    let mut again = Sluice::spawn(["plugin", "rollback", NAME, "--http", &addr]);
    assert_eq!(again.wait_exit(Duration::from_secs(30)).code(), Some(2));
    assert!(
        again.log().contains("no previous version"),
        "{}",
        again.log()
    );
    sluice.shutdown();
}

#[test]
fn promote_makes_the_shadow_serve() {
    let redis = RedisServer::new();
    let mut con = redis.conn();
    let rig = Rig::new(&redis, "", r#"rollout = "shadow""#, "");
    let (mut sluice, addr) = rig.run();
    rig.deploy_v2(&mut sluice, "new plugin version on trial");
    xadd_many(&mut con, IN, 100, |i| vec![("i", i.to_string())]);
    wait_settled(&mut con, &mut sluice, 100, 0);
    assert!(
        xrange_all(&mut con, OUT)
            .iter()
            .all(|e| e.get("plugin_version") == "1")
    );

    Sluice::exec(["plugin", "promote", NAME, "1", "--http", &addr]);
    xadd_many(&mut con, IN, 100, |k| vec![("i", (100 + k).to_string())]);
    wait_settled(&mut con, &mut sluice, 200, 0);
    let output = xrange_all(&mut con, OUT);
    assert_exactly_once(&output, 200);
    assert!(output[100..].iter().all(|e| e.get("plugin_version") == "2"));
    let state = rollout(&addr);
    assert_eq!(state["serving"], sha256(&faults_v2()));
    assert_eq!(state["candidate"], serde_json::Value::Null);
    sluice.shutdown();
}

#[test]
fn a_clean_trial_is_promoted_after_promote_after_ms() {
    let redis = RedisServer::new();
    let mut con = redis.conn();
    let rig = Rig::new(
        &redis,
        "",
        "rollout = \"canary\"\ncanary_percent = 50\npromote_after_ms = 300",
        "",
    );
    let (mut sluice, addr) = rig.run();
    rig.deploy_v2(&mut sluice, "new plugin version on trial");
    let producer = Producer::start(&redis, IN, 20, Duration::from_millis(10));
    sluice.wait_for_log(&["new plugin version promoted", "PromoteAfter"], 1);
    sluice.wait_until("output of version 2 only, after the promotion", |_| {
        let tail = xrange_all(&mut con, OUT);
        tail.len() > 200
            && tail[tail.len() - 200..]
                .iter()
                .all(|e| e.get("plugin_version") == "2")
    });
    let written = producer.stop();
    wait_settled(&mut con, &mut sluice, written, 0);
    assert_exactly_once(&xrange_all(&mut con, OUT), written);
    let state = rollout(&addr);
    assert_eq!(state["serving"], sha256(&faults_v2()));
    assert_eq!(state["history"][1]["how"], "promote_after");
    sluice.shutdown();
}
