//! The inspection commands a newcomer types first: `validate`, `status`, `dlq`, `pending`,
//! and `run` on a wrong folder. Mistakes get an error that names what is wrong and a non-zero
//! exit; destructive commands ask first.

use std::ffi::OsStr;
use std::fs;
use std::process::Command;

use crate::support::keys::{lrange_all, subscribers};
use crate::support::pipeline::{GROUP, IN, stream_source};
use crate::support::streams::{create_group, group_exists, xadd_many, xlen};
use crate::support::{PATIENCE, Pipeline, RedisServer, Sluice, plugin};

/// Runs `sluice ARGS...` to its end with `configure` applied; returns (exit code, stdout,
/// stderr).
fn finish<I, S>(args: I, configure: impl FnOnce(&mut Command)) -> (Option<i32>, String, String)
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut sluice = Sluice::spawn_with(args, configure);
    let status = sluice.wait_exit(PATIENCE);
    (status.code(), sluice.stdout(), sluice.log())
}

/// No Redis from the developer's environment.
fn no_env(command: &mut Command) {
    command.env_remove("SLUICE_REDIS_URL");
}

/// Runs a faults pipeline on [`IN`] until `poison` messages are in `in:dead`, and stops it.
fn dead_letters(redis: &RedisServer, poison: usize) {
    let mut con = redis.conn();
    xadd_many(&mut con, IN, poison + 2, |i| {
        let action = if i < poison { "poison" } else { "ok" };
        vec![("i", i.to_string()), ("action", action.to_string())]
    });
    let pipeline = Pipeline::write(
        "cli",
        &format!(
            "{}\n[[processor]]\nplugin = '{}'\n\n[[sink]]\ntype = \"stream\"\nstream = \"out\"\n",
            stream_source(redis, ""),
            plugin("faults").display()
        ),
    );
    let mut sluice = Sluice::run(pipeline.path());
    sluice.wait_until(&format!("{poison} dead letters and 2 outputs"), |_| {
        xlen(&mut con, "in:dead") == poison && xlen(&mut con, "out") == 2
    });
    sluice.shutdown();
}

#[test]
fn dlq_list_on_a_missing_stream_fails_and_names_it() {
    let redis = RedisServer::new();
    let (code, stdout, stderr) = finish(
        ["dlq", "list", "orders:dead", "--redis", &redis.url()],
        |_| {},
    );
    assert_eq!(code, Some(1), "stdout: {stdout}\nstderr: {stderr}");
    assert!(
        stderr.contains("no stream `orders:dead`") && stderr.contains(&redis.url()),
        "{stderr}"
    );
}

#[test]
fn dlq_list_on_a_stream_that_is_not_a_dead_letter_stream_says_so() {
    let redis = RedisServer::new();
    let mut con = redis.conn();
    xadd_many(&mut con, "orders", 2, |i| vec![("i", i.to_string())]);
    let (code, stdout, stderr) = finish(["dlq", "list", "orders", "--redis", &redis.url()], |_| {});
    assert_eq!(code, Some(1), "stdout: {stdout}\nstderr: {stderr}");
    assert!(
        stderr.contains("`orders` is not a dead-letter stream"),
        "{stderr}"
    );
    assert!(stdout.is_empty(), "no empty fields printed: {stdout}");
}

#[test]
fn dlq_purge_asks_for_yes_without_a_terminal() {
    let redis = RedisServer::new();
    let mut con = redis.conn();
    dead_letters(&redis, 1);
    let url = redis.url();

    let listed = Sluice::exec(["dlq", "list", "in:dead", "--redis", &url]);
    assert!(
        listed.log().contains("1 dead letter shown from in:dead"),
        "{}",
        listed.log()
    );

    // stdin is not a terminal here: nobody to ask, so nothing is deleted.
    let (code, _, stderr) = finish(["dlq", "purge", "in:dead", "--redis", &url], |_| {});
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("--yes"), "{stderr}");
    assert_eq!(xlen(&mut con, "in:dead"), 1, "purge without --yes kept it");

    let purged = Sluice::exec(["dlq", "purge", "in:dead", "--yes", "--redis", &url]).stdout();
    assert!(
        purged.contains("purged 1 dead letter from in:dead"),
        "{purged}"
    );
    assert_eq!(xlen(&mut con, "in:dead"), 0);

    // Purging a stream that is not one of dead letters is refused, even with --yes.
    xadd_many(&mut con, "orders", 1, |i| vec![("i", i.to_string())]);
    let (code, _, stderr) = finish(["dlq", "purge", "orders", "--yes", "--redis", &url], |_| {});
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(xlen(&mut con, "orders"), 1);
}

#[test]
fn pending_with_a_wrong_group_names_the_groups_once() {
    let redis = RedisServer::new();
    let mut con = redis.conn();
    xadd_many(&mut con, IN, 1, |i| vec![("i", i.to_string())]);
    create_group(&mut con, IN, GROUP, "0");
    assert!(group_exists(&mut con, IN, GROUP));

    let (code, _, stderr) = finish(["pending", IN, "wrong", "--redis", &redis.url()], |_| {});
    assert_eq!(code, Some(1), "{stderr}");
    let error = format!("no consumer group `wrong` on stream `{IN}`; its groups: {GROUP}");
    assert_eq!(stderr.matches(&error).count(), 1, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");

    let (code, _, stderr) = finish(["pending", "nope", "g", "--redis", &redis.url()], |_| {});
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("no stream `nope`"), "{stderr}");
}

#[test]
fn run_on_an_empty_folder_says_what_validate_says() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (code, _, validate) = finish([OsStr::new("validate"), dir.path().as_os_str()], no_env);
    assert_eq!(code, Some(1), "{validate}");
    let want = format!(
        "error: no pipeline files (*.toml) in {}\n",
        dir.path().display()
    );
    assert_eq!(validate, want);

    let (code, _, run) = finish(
        [
            OsStr::new("run"),
            dir.path().as_os_str(),
            OsStr::new("--no-watch"),
        ],
        no_env,
    );
    assert_eq!(code, Some(1), "{run}");
    assert_eq!(run, want);
}

#[test]
fn validate_shows_which_redis_each_pipeline_uses() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let write = |name: &str, text: &str| fs::write(dir.path().join(name), text).expect("write");
    let pipeline = "[source]\ntype = \"stream\"\nstream = \"s\"\n\n[[sink]]\ntype = \"stdout\"\n";
    write("a-fallback.toml", pipeline);
    write(
        "b-named.toml",
        &format!("[redis]\nurl = \"redis://:hunter2@10.0.0.9:6380\"\n\n{pipeline}"),
    );
    let args = [OsStr::new("validate"), dir.path().as_os_str()];

    let (code, stdout, stderr) = finish(args, no_env);
    assert_eq!(code, Some(0), "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert!(
        lines[0].ends_with("a-fallback.toml (a-fallback)"),
        "{stdout}"
    );
    assert!(
        lines[1].starts_with("    redis: redis://127.0.0.1:6379 (the fallback:"),
        "{stdout}"
    );
    assert_eq!(
        lines[3],
        "    redis: redis://***@10.0.0.9:6380 (from [redis] url)"
    );
    assert!(!stdout.contains("hunter2"), "the password is redacted");

    let (_, stdout, _) = finish(args, |c| {
        c.env("SLUICE_REDIS_URL", "redis://127.0.0.1:7001");
    });
    assert!(
        stdout.contains("    redis: redis://127.0.0.1:7001 (from $SLUICE_REDIS_URL)"),
        "{stdout}"
    );
    let (_, stdout, _) = finish(
        [
            OsStr::new("validate"),
            dir.path().as_os_str(),
            OsStr::new("--redis"),
            OsStr::new("redis://127.0.0.1:7002"),
        ],
        no_env,
    );
    assert!(
        stdout.contains("    redis: redis://127.0.0.1:7002 (from --redis)"),
        "{stdout}"
    );
}

/// The column of `header`'s last character in the table's first line.
fn column_end(table: &str, header: &str) -> usize {
    let first = table.lines().next().expect("a header line");
    first.find(header).expect("the header") + header.len()
}

#[test]
fn status_shows_stream_list_and_pubsub_pipelines_in_aligned_columns() {
    let redis = RedisServer::new();
    let mut con = redis.conn();
    let dir = tempfile::tempdir().expect("a temp dir");
    let url = redis.url();
    let long = "a-stream-with-a-name-much-longer-than-the-column-used-to-be";
    let files = [
        (
            "streams.toml",
            format!("[source]\ntype = \"stream\"\nstream = \"{long}\"\n"),
        ),
        (
            "queue.toml",
            "[source]\ntype = \"list\"\nlist = \"jobs\"\n".to_string(),
        ),
        (
            "events.toml",
            "[source]\ntype = \"pubsub\"\nchannels = [\"events\"]\n".to_string(),
        ),
    ];
    for (name, source) in &files {
        let text = format!(
            "[redis]\nurl = \"{url}\"\n\n{source}\n[[sink]]\ntype = \"stream\"\nstream = \"out\"\n"
        );
        fs::write(dir.path().join(name), text).expect("write a pipeline");
    }
    redis::cmd("LPUSH")
        .arg("jobs")
        .arg("one")
        .query::<()>(&mut con)
        .expect("LPUSH");
    let mut sluice = Sluice::spawn([OsStr::new("run"), dir.path().as_os_str()]);
    sluice.wait_until("all three pipelines up", |_| {
        let mut c = redis.conn();
        // The list item went through, so the list consumer is up.
        group_exists(&mut c, long, "streams")
            && subscribers(&mut c, "events") == 1
            && xlen(&mut c, "out") == 1
    });
    assert!(lrange_all(&mut con, "jobs").is_empty());

    let table = Sluice::exec([
        OsStr::new("status"),
        dir.path().as_os_str(),
        OsStr::new("--redis"),
        OsStr::new(url.as_str()),
    ])
    .stdout();
    for want in [
        format!("streams   stream  {long}"),
        "queue     list    jobs".to_string(),
        "events    pubsub  events".to_string(),
    ] {
        assert!(table.contains(&want), "no `{want}` in\n{table}");
    }
    // Numbers are right-aligned under their header, however long the names.
    let end = column_end(&table, "CONSUMERS");
    for line in table.lines().skip(1).filter(|l| !l.starts_with("    ")) {
        let cell = line
            .get(..end)
            .unwrap_or_else(|| panic!("short line: {line}"));
        assert!(
            cell.ends_with(|c: char| c.is_ascii_digit()),
            "CONSUMERS not aligned in `{line}`:\n{table}"
        );
        assert!(cell.ends_with('1'), "one consumer each: {line}\n{table}");
    }

    // Without files: what Redis shows, the stream group and the list queue.
    let found = Sluice::exec(["status", "--redis", &url]).stdout();
    assert!(found.contains(long) && found.contains("jobs"), "{found}");
    sluice.shutdown();
}

/// Appends `n` dead letters of stream `in` (as the runtime writes them) to `in:dead`.
fn many_dead_letters(con: &mut redis::Connection, n: usize) {
    xadd_many(con, "in:dead", n, |i| {
        vec![
            ("sluice.stream", "in".to_string()),
            ("sluice.id", format!("{}-0", i + 1)),
            ("sluice.error", "asked to dead-letter".to_string()),
            ("i", i.to_string()),
        ]
    });
}

/// Long command-line work shows a progress bar on a terminal and nothing when piped, so
/// scripts and logs see only the result.
#[test]
fn dlq_replay_shows_progress_on_a_terminal_and_none_when_piped() {
    const N: usize = 20_000;
    let redis = RedisServer::new();
    let mut con = redis.conn();
    let url = redis.url();

    many_dead_letters(&mut con, N);
    let piped = Sluice::exec(["dlq", "replay", "in:dead", "--redis", &url]);
    assert_eq!(xlen(&mut con, IN), N, "every dead letter replayed");
    assert!(
        !piped.log().contains("replaying") && !piped.log().contains('\r'),
        "no progress drawn into a pipe: {:?}",
        piped.log()
    );

    // `script` gives the command a pseudo-terminal and copies what it draws to its stdout.
    many_dead_letters(&mut con, N);
    let command = format!(
        "{} dlq replay in:dead --redis {url}",
        env!("CARGO_BIN_EXE_sluice")
    );
    let out = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .output()
        .expect("run `script` (util-linux) to give sluice a terminal");
    let drawn = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{drawn}");
    assert_eq!(xlen(&mut con, IN), 2 * N, "every dead letter replayed");
    assert!(
        drawn.contains("replaying") && drawn.contains(&format!("/{N}")),
        "a progress bar on the terminal: {drawn:?}"
    );
}

/// `plugin test` initialises the plugin once: the instance whose init ran is the one that
/// processes the messages.
#[test]
fn plugin_test_runs_init_once() {
    let faults = plugin("faults");
    let tested = Sluice::exec([
        "plugin".as_ref(),
        "test".as_ref(),
        faults.as_os_str(),
        "--config".as_ref(),
        "log_init=true".as_ref(),
        "--field".as_ref(),
        "a=b".as_ref(),
    ]);
    let log = tested.log();
    assert_eq!(log.matches("faults init").count(), 1, "{log}");
    assert!(
        tested.stdout().contains("1 record(s)"),
        "{}",
        tested.stdout()
    );
}

/// Runs `sluice plugin bench PLUGIN ARGS...` to its end: (exit code, stdout, log).
fn plugin_bench(plugin_name: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let wasm = plugin(plugin_name);
    let mut argv: Vec<&OsStr> = vec!["plugin".as_ref(), "bench".as_ref(), wasm.as_os_str()];
    argv.extend(args.iter().map(OsStr::new));
    finish(argv, no_env)
}

/// `plugin bench` reports one row per batch size asked, names the call path the plugin takes
/// (a Rust SDK plugin the encoded batch, a core module the typed call), and refuses to time a
/// plugin whose messages fail.
#[test]
fn plugin_bench_reports_each_batch_size_and_the_call_path() {
    let (code, out, log) = plugin_bench("uppercase", &["--batch", "1,8", "--ms", "20"]);
    assert_eq!(code, Some(0), "{out}{log}");
    assert!(out.contains("encoded call"), "{out}");
    let rows: Vec<Vec<f64>> = out
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| batch"))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().parse().expect("numbers"))
                .collect()
        })
        .collect();
    assert_eq!(rows.len(), 2, "{out}");
    assert_eq!((rows[0][0], rows[1][0]), (1.0, 8.0));
    for row in &rows {
        // CPU and wall time per message, and how many messages were timed.
        assert!(row[1] > 0.0 && row[2] > 0.0 && row[3] >= row[0], "{out}");
    }

    let (code, out, log) = plugin_bench("uppercase-wat", &["--batch", "4", "--ms", "10"]);
    assert_eq!(code, Some(0), "{out}{log}");
    assert!(out.contains("typed call"), "{out}");

    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    fs::write(&input, "{\"action\": \"ok\"}\n{\"action\": \"fail\"}\n").unwrap();
    let input = input.to_str().unwrap();
    let (code, out, log) = plugin_bench("faults", &["--input", input, "--ms", "10"]);
    assert_ne!(code, Some(0), "{out}{log}");
    assert!(log.contains("a message failed"), "{log}");
}

/// `plugin test` shows every message's records with the sink each goes to, or its failure
/// with kind and class, and exits non-zero when any message failed.
#[test]
fn plugin_test_shows_records_sinks_and_failure_kinds() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let input = dir.path().join("input.jsonl");
    fs::write(
        &input,
        "{\"action\": \"ok\"}\n{\"action\": \"route:alerts\"}\n{\"action\": \"fanout:2\"}\n\
         {\"action\": \"poison\"}\n{\"action\": \"fail\"}\n{\"action\": \"drop\"}\n",
    )
    .expect("write the input");
    let faults = plugin("faults");
    let (code, stdout, stderr) = finish(
        [
            "plugin".as_ref(),
            "test".as_ref(),
            faults.as_os_str(),
            "--input".as_ref(),
            input.as_os_str(),
        ],
        |_| {},
    );
    assert_eq!(code, Some(2), "failures exit 2:\n{stdout}\n{stderr}");
    let blocks: Vec<&str> = stdout.lines().skip(1).collect();
    let expected = [
        ": 1 record(s)",
        r#"  -> (first sink): {"action":"ok","plugin_version":"1"}"#,
        ": 1 record(s)",
        r#"  -> alerts: {"action":"route:alerts","plugin_version":"1"}"#,
        ": 2 record(s)",
        r#"  -> (first sink): {"action":"fanout:2","plugin_version":"1"}"#,
        r#"  -> (first sink): {"action":"fanout:2","plugin_version":"1"}"#,
        ": failed (dead-letter, plugin): asked to dead-letter",
        ": failed (retry, plugin): asked to fail",
        ": failed (drop, plugin): asked to drop",
    ];
    assert_eq!(blocks.len(), expected.len(), "{stdout}");
    for (line, want) in blocks.iter().zip(expected) {
        assert!(
            line.ends_with(want),
            "`{line}` should end with `{want}`\n{stdout}"
        );
    }

    let (code, stdout, _) = finish(
        [
            "plugin".as_ref(),
            "test".as_ref(),
            faults.as_os_str(),
            "--field".as_ref(),
            "action=ok".as_ref(),
        ],
        |_| {},
    );
    assert_eq!(code, Some(0), "no failure exits 0:\n{stdout}");
}

/// `plugin test` gives the plugin an in-memory key-value store for the run: the C counter,
/// which uses every kv call, numbers three messages 1, 2, 3 and reads back the first one's id.
#[test]
fn plugin_test_has_an_in_memory_key_value_store() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let input = dir.path().join("input.jsonl");
    fs::write(&input, "{\"i\": \"a\"}\n{\"i\": \"b\"}\n{\"i\": \"c\"}\n").expect("write the input");
    let counter = plugin("counter-c");
    let tested = Sluice::exec([
        "plugin".as_ref(),
        "test".as_ref(),
        counter.as_os_str(),
        "--input".as_ref(),
        input.as_os_str(),
    ]);
    let stdout = tested.stdout();
    let records: Vec<serde_json::Value> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("  -> (first sink): "))
        .map(|json| serde_json::from_str(json).expect("a JSON record"))
        .collect();
    assert_eq!(records.len(), 3, "{stdout}");
    for (n, record) in records.iter().enumerate() {
        assert_eq!(record["count"], (n + 1).to_string(), "{stdout}");
        assert_eq!(record["first"], records[0]["id"], "{stdout}");
    }
}
