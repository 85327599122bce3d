//! A pipeline edit that changes its consumer group, stream or name leaves the old group behind:
//! the new group starts at `start` and nobody reads the old one's pending entries and backlog
//! any more. Sluice cannot know whether that is intended, so it says so, with numbers, when
//! the edit is applied (README, "Hot reload").

use crate::support::pipeline::{IN, OUT};
use crate::support::streams::{
    create_group, group_exists, pending_count, read_as, xadd_many, xlen,
};
use crate::support::{Pipeline, RedisServer, Sluice, plugin};

/// Stream [`IN`] read by `group` from `$` (the default: new entries only) → faults → [`OUT`].
/// `fail` entries are retried only after ten minutes, so they stay pending in the group.
fn pipeline_toml(redis: &RedisServer, group: &str) -> String {
    format!(
        r#"[redis]
url = "{url}"

[source]
type = "stream"
stream = "{IN}"
group = "{group}"
block_ms = 100
claim_idle_ms = 600000
max_deliveries = 100

[[processor]]
plugin = '{plugin}'

[[sink]]
type = "stream"
stream = "{OUT}"
"#,
        url = redis.url(),
        plugin = plugin("faults").display(),
    )
}

#[test]
fn a_reload_that_changes_the_group_warns_about_the_backlog_it_leaves() {
    const FAILING: usize = 5;
    const OK: usize = 5;
    let redis = RedisServer::new();
    let mut con = redis.conn();
    let pipeline = Pipeline::write("orders", &pipeline_toml(&redis, "v1"));
    let cache = tempfile::tempdir().expect("a plugin cache dir");
    let mut sluice = Sluice::watch(&[pipeline.path()], cache.path());
    sluice.wait_until("group `v1` created", |_| group_exists(&mut con, IN, "v1"));
    xadd_many(&mut con, IN, FAILING + OK, |i| {
        vec![("action", if i < FAILING { "fail" } else { "ok" })]
    });
    sluice.wait_until("the ok entries written, the failing ones pending", |_| {
        xlen(&mut con, OUT) == OK && pending_count(&mut con, IN, "v1") == FAILING
    });

    std::fs::write(pipeline.path(), pipeline_toml(&redis, "v2")).expect("edit the pipeline");
    let warned = sluice.wait_for_log(&["WARN", "old_group=v1"], 1);
    let line = &warned[0];
    for expected in [
        "pipeline=orders",
        &format!("stream={IN}"),
        "group=v2",
        &format!("pending={FAILING}"),
        "lag=0",
    ] {
        assert!(line.contains(expected), "`{expected}` in: {line}");
    }
    sluice.wait_until("group `v2` created", |_| group_exists(&mut con, IN, "v2"));
    sluice.shutdown();
    assert_eq!(
        pending_count(&mut con, IN, "v1"),
        FAILING,
        "the old group keeps what it had; nothing reads it"
    );
}

#[test]
fn validate_with_redis_warns_when_a_new_group_would_skip_entries() {
    let redis = RedisServer::new();
    let mut con = redis.conn();
    xadd_many(&mut con, IN, 3, |i| vec![("n", i)]);
    // Group `v1` read one entry and never acked it; two more wait for it.
    create_group(&mut con, IN, "v1", "0");
    read_as(&mut con, IN, "v1", "c", 1);
    let pipeline = Pipeline::write("orders", &pipeline_toml(&redis, "v2"));
    let path = pipeline.path().to_str().expect("a UTF-8 path");

    let offline = Sluice::exec(["validate", path]);
    assert!(
        !offline.log().contains("warning"),
        "without --redis, validate never touches Redis: {}",
        offline.log()
    );

    let checked = Sluice::exec(["validate", path, "--redis", &redis.url()]);
    let log = checked.log();
    for expected in [
        "warning:",
        "group `v2` does not exist on stream `in` yet",
        "start = \"$\"",
        "the 3 entries already in the stream are not read",
        "`v1` (pending 1, lag 2)",
    ] {
        assert!(log.contains(expected), "`{expected}` in:\n{log}");
    }
    assert!(checked.stdout().contains("ok:"), "still valid");
}
