//! Rolling out a new processor version (README, "Rolling out a new processor version"): `plugin
//! diff` against a live stream, shadow runs, canaries, automatic rollback, promote and rollback.
//!
//! Version 1 and 2 of the faults plugin differ where a test asks: `changed:<action>` is `ok` in
//! version 1 and `<action>` in version 2; `fail_version = "2"` makes version 2 fail everything;
//! `stamp = "false"` leaves out the `plugin_version` field that would make every record differ.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use crate::support::streams::{xadd_many, xrange_all};
use crate::support::{RedisServer, Sluice, plugin, repo_root};

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
