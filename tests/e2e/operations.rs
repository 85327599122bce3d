//! Operations: what `--http` tells an operator and an autoscaler, checked against what the
//! test sent and what Redis holds.

use std::time::Duration;

use crate::support::browser::{card_stat, dump_dom, dump_dom_after, screenshot};
use crate::support::flow::Producer;
use crate::support::http::{get, pipeline_readiness, ready, reasons, series};
use crate::support::pipeline::{GROUP, IN, OUT, stream_to_stream_toml, wait_settled};
use crate::support::streams::{create_group, read_as, xadd_many, xlen};
use crate::support::{Pipeline, RedisServer, Sluice, repo_root};

/// The `faults` actions sent, and how many of each.
const MIX: [(&str, usize); 6] = [
    ("ok", 20),
    ("fanout:3", 5),
    ("fanout:0", 4),
    ("drop", 3),
    ("poison", 2),
    ("trap", 2),
];

fn actions() -> Vec<&'static str> {
    MIX.iter()
        .flat_map(|(action, n)| std::iter::repeat_n(*action, *n))
        .collect()
}

/// Every counter matches what was sent, exactly; the per-group gauges match Redis; and a
/// deleted entry past the group's position turns lag into "unknown", not 0.
#[test]
fn metrics_count_exactly_what_was_sent_and_poll_the_group() {
    let redis = RedisServer::new();
    let mut con = redis.conn();
    let sent = actions();
    xadd_many(&mut con, IN, sent.len(), |i| vec![("action", sent[i])]);
    // Traps retry once (after 300 ms idle), then dead-letter on their second delivery.
    let pipeline = Pipeline::write(
        "e2e",
        &stream_to_stream_toml(
            &redis,
            "faults",
            "claim_idle_ms = 300\nmax_deliveries = 2",
            "",
            "",
            "",
        ),
    );
    let cache = tempfile::tempdir().expect("a plugin cache dir");
    let (mut sluice, http) = Sluice::run_http(&[pipeline.path()], cache.path());
    // 20 ok + 5 × 3 fan-out records; dropped, filtered and dead-lettered leave nothing pending.
    wait_settled(&mut con, &mut sluice, 35, 0);
    let dead = format!("{IN}:dead");
    let group = format!(r#"pipeline="e2e",stream="{IN}",group="{GROUP}""#);
    let text = sluice.wait_for(
        "the group poll to show the settled group (pending 0, 4 dead letters)",
        |_| get(&http, "/metrics").1,
        |text| {
            series(text, "sluice_group_pending", &group) == Some(0.0)
                && series(
                    text,
                    "sluice_dead_letter_length",
                    &format!(r#"pipeline="e2e",stream="{dead}""#),
                ) == Some(4.0)
        },
    );
    let p = r#"pipeline="e2e""#;
    let value = |name: &str, labels: &str| series(&text, name, labels);
    let status = |s: &str| value("sluice_messages_total", &format!(r#"{p},status="{s}""#));
    let class = |c: &str| value("sluice_failures_total", &format!(r#"{p},class="{c}""#));
    // 36 sent, and the 2 traps delivered a second time.
    assert_eq!(
        value("sluice_received_total", p),
        Some(38.0),
        "received\n{text}"
    );
    assert_eq!(
        status("delivered"),
        Some(29.0),
        "ok + fan-out + filtered\n{text}"
    );
    assert_eq!(
        value("sluice_filtered_total", p),
        Some(4.0),
        "filtered\n{text}"
    );
    assert_eq!(status("dropped"), Some(3.0), "dropped\n{text}");
    assert_eq!(
        status("retried"),
        Some(2.0),
        "traps, first delivery\n{text}"
    );
    assert_eq!(status("dead_lettered"), Some(4.0), "poison + traps\n{text}");
    assert_eq!(class("plugin"), Some(2.0), "poison\n{text}");
    assert_eq!(class("trap"), Some(4.0), "traps, both deliveries\n{text}");
    assert_eq!(
        value("sluice_records_total", p),
        Some(35.0),
        "records\n{text}"
    );
    assert_eq!(
        value("sluice_sink_records_total", &format!(r#"{p},sink="out""#)),
        Some(35.0),
        "records written to sink `out`\n{text}"
    );
    assert_eq!(value("sluice_acked_total", p), Some(36.0), "acked\n{text}");
    assert_eq!(
        value("sluice_end_to_end_seconds_count", p),
        Some(36.0),
        "one latency per acked entry\n{text}"
    );
    assert!(
        value("sluice_plugin_seconds_count", p) >= Some(2.0),
        "{text}"
    );
    assert!(
        value("sluice_stage_seconds_count", &format!(r#"{p},stage="1""#)) >= Some(2.0),
        "plugin time of the first (only) stage\n{text}"
    );
    assert!(value("sluice_batch_size_count", p) >= Some(2.0), "{text}");
    assert_eq!(value("sluice_in_flight", p), Some(0.0), "{text}");
    assert_eq!(value("sluice_group_lag", &group), Some(0.0), "{text}");
    assert_eq!(
        value("sluice_group_lag_unknown", &group),
        Some(0.0),
        "{text}"
    );
    assert_eq!(xlen(&mut con, OUT), 35);

    // An entry added and deleted in one transaction, so the group never reads it: Redis can no
    // longer count the lag.
    let future_id = "9999999999999-0";
    let _: () = redis::pipe()
        .atomic()
        .cmd("XADD")
        .arg(IN)
        .arg(future_id)
        .arg("action")
        .arg("ok")
        .ignore()
        .cmd("XDEL")
        .arg(IN)
        .arg(future_id)
        .ignore()
        .query(&mut con)
        .expect("XADD + XDEL in MULTI");
    let text = sluice.wait_for(
        "lag reported as unknown",
        |_| get(&http, "/metrics").1,
        |text| series(text, "sluice_group_lag_unknown", &group) == Some(1.0),
    );
    assert!(
        series(&text, "sluice_group_lag", &group).is_some_and(f64::is_nan),
        "an unknown lag is NaN, never 0\n{text}"
    );
    sluice.shutdown();
}

/// `/ready` turns 503 naming Redis while Redis is down, and 200 once it is back and the
/// pipeline consumes again; `/health` stays a plain 200 throughout.
#[test]
fn ready_says_why_while_redis_is_down_and_recovers() {
    let mut redis = RedisServer::new();
    let pipeline = Pipeline::stream_to_stream(&redis, "uppercase", "", r#"field = "payload""#);
    let cache = tempfile::tempdir().expect("a plugin cache dir");
    let (mut sluice, http) = Sluice::run_http(&[pipeline.path()], cache.path());
    let (_, json) = sluice.wait_for("/ready 200", |_| ready(&http), |(status, _)| *status == 200);
    assert_eq!(
        pipeline_readiness(&json, "e2e").map(|p| p["consuming"].clone()),
        Some(serde_json::Value::Bool(true)),
        "{json}"
    );

    redis.stop();
    let (_, json) = sluice.wait_for(
        "/ready 503 naming Redis",
        |_| ready(&http),
        |(status, json)| {
            *status == 503 && reasons(json, "e2e").contains(&"redis_unreachable".to_owned())
        },
    );
    assert_eq!(json["ready"], false, "{json}");
    assert_eq!(
        get(&http, "/health"),
        (200, "ok\n".to_owned()),
        "liveness is not readiness"
    );

    redis.start();
    sluice.wait_for(
        "/ready 200 again",
        |_| ready(&http),
        |(status, _)| *status == 200,
    );
    // And it does consume: the restarted (empty) Redis gets its group back and the messages flow.
    let mut con = redis.conn();
    xadd_many(&mut con, IN, 10, |i| vec![("payload", format!("m{i}"))]);
    wait_settled(&mut con, &mut sluice, 10, 0);
    sluice.shutdown();
}

/// A pipeline whose plugin fails to initialise is reported as not started, with the plugin's
/// error, and keeps `/ready` at 503 while the other pipeline consumes.
#[test]
fn ready_names_a_pipeline_that_could_not_start() {
    let redis = RedisServer::new();
    let good = Pipeline::stream_to_stream(&redis, "uppercase", "", r#"field = "payload""#);
    let broken = Pipeline::write(
        "broken",
        &stream_to_stream_toml(&redis, "faults", "", "", "fail_init = true", "")
            .replace(&format!("group = \"{GROUP}\""), "group = \"broken\""),
    );
    let cache = tempfile::tempdir().expect("a plugin cache dir");
    let (mut sluice, http) = Sluice::run_http(&[good.path(), broken.path()], cache.path());
    let (status, json) = sluice.wait_for(
        "both pipelines reported by /ready",
        |_| ready(&http),
        |(_, json)| {
            pipeline_readiness(json, "e2e").is_some_and(|p| p["consuming"] == true)
                && pipeline_readiness(json, "broken").is_some()
        },
    );
    assert_eq!(status, 503, "{json}");
    assert_eq!(reasons(&json, "broken"), ["not_started"], "{json}");
    let detail = pipeline_readiness(&json, "broken").expect("reported")["reasons"][0]["detail"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        detail.contains("asked to fail init"),
        "the plugin's own error: {detail}"
    );
    sluice.shutdown();
}

/// Where the dashboard test saves its screenshot (under `target/`, kept after the run). The
/// README shows a copy: `cp target/test-artifacts/dashboard.png docs/`.
const SCREENSHOT: &str = "target/test-artifacts/dashboard.png";

/// The dashboard in real headless Chromium: a card for every pipeline, its numbers moving
/// while messages flow, a screenshot kept as an artifact.
#[test]
fn dashboard_shows_every_pipeline_in_a_real_browser() {
    let redis = RedisServer::new();
    let orders = Pipeline::stream_to_stream(&redis, "uppercase", "", r#"field = "i""#);
    let audit = Pipeline::write(
        "audit",
        &stream_to_stream_toml(&redis, "faults", "", "", "", "")
            .replace(&format!("group = \"{GROUP}\""), "group = \"audit\"")
            .replace(&format!("stream = \"{OUT}\""), "stream = \"audit:out\""),
    );
    let cache = tempfile::tempdir().expect("a plugin cache dir");
    let (mut sluice, http) = Sluice::run_http(&[orders.path(), audit.path()], cache.path());
    sluice.wait_for("/ready 200", |_| ready(&http), |(status, _)| *status == 200);
    let producer = Producer::start(&redis, IN, 20, Duration::from_millis(50));
    let url = format!("http://{http}/");

    let dom = dump_dom(&url);
    for pipeline in ["e2e", "audit"] {
        assert!(
            card_stat(&dom, pipeline, "processed").is_some(),
            "no card for pipeline `{pipeline}` on the dashboard:\n{dom}"
        );
    }
    let processed = |dom: &str| -> u64 {
        card_stat(dom, "e2e", "processed")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no processed count for `e2e`:\n{dom}"))
    };
    let first = processed(&dom);
    let later = sluice.wait_for(
        "the dashboard's processed count to grow while messages flow",
        |_| dump_dom(&url),
        |dom| processed(dom) > first,
    );
    for stat in [
        "throughput",
        "p50",
        "p99",
        "lag",
        "pending",
        "dead",
        "errors",
    ] {
        assert!(
            card_stat(&later, "e2e", stat).is_some_and(|v| !v.is_empty()),
            "the card shows `{stat}`:\n{later}"
        );
    }
    let plugins = later
        .find("data-pipeline=\"e2e\"")
        .map(|at| &later[at..])
        .unwrap_or_default();
    assert!(
        plugins.contains("uppercase.wasm "),
        "the card names its plugin and hash:\n{later}"
    );
    assert!(
        card_stat(&later, "e2e", "versions")
            .is_some_and(|v| v.starts_with("stage 1: ") && v.contains(" start ")),
        "the card shows the versions that served:\n{later}"
    );

    let shot = repo_root().join(SCREENSHOT);
    let _ = std::fs::remove_file(&shot);
    screenshot(&url, &shot);
    println!("dashboard screenshot: {}", shot.display());
    producer.stop();
    sluice.shutdown();
}

/// `--log-format json`: every stderr line is one JSON object; a failure carries its pipeline,
/// consumer and entry id; RUST_LOG filters the levels.
#[test]
fn json_logs_carry_pipeline_and_entry_id_and_honour_rust_log() {
    let redis = RedisServer::new();
    let mut con = redis.conn();
    let ids = xadd_many(&mut con, IN, 1, |_| vec![("action", "fail")]);
    let pipeline = Pipeline::write(
        "e2e",
        &stream_to_stream_toml(&redis, "faults", "claim_idle_ms = 3600000", "", "", ""),
    );
    let cache = tempfile::tempdir().expect("a plugin cache dir");
    let mut sluice = Sluice::spawn_with(
        [
            std::ffi::OsStr::new("run"),
            pipeline.path().as_os_str(),
            std::ffi::OsStr::new("--no-watch"),
            std::ffi::OsStr::new("--log-format"),
            std::ffi::OsStr::new("json"),
        ],
        |command| {
            command
                .env("SLUICE_CACHE_DIR", cache.path())
                .env_remove("SLUICE_LOG")
                .env("RUST_LOG", "warn");
        },
    );
    sluice.wait_for_log(&["failed, will retry"], 1);
    sluice.shutdown();
    let log = sluice.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    let failure = lines
        .iter()
        .find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.contains("failed, will retry"))
        })
        .expect("the failure is logged");
    assert_eq!(failure["level"], "WARN", "{failure}");
    assert_eq!(failure["pipeline"], "e2e", "{failure}");
    assert_eq!(failure["id"], ids[0].as_str(), "{failure}");
    assert!(failure["consumer"].is_string(), "{failure}");
    assert!(
        failure["ts"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{failure}"
    );
    assert!(
        lines.iter().all(|l| l["level"] != "INFO"),
        "RUST_LOG=warn hides info lines:\n{log}"
    );
}

/// `sluice status --json` reports what XINFO GROUPS and XPENDING say; `--watch` refreshes
/// until Ctrl-C.
#[test]
fn status_json_matches_xinfo_and_xpending_and_watch_refreshes() {
    let redis = RedisServer::new();
    let mut con = redis.conn();
    xadd_many(&mut con, "orders", 10, |i| vec![("i", i.to_string())]);
    xadd_many(&mut con, "orders:dead", 2, |i| vec![("i", i.to_string())]);
    create_group(&mut con, "orders", "g", "0");
    read_as(&mut con, "orders", "g", "c1", 4);
    let info: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg("orders")
        .query(&mut con)
        .expect("XINFO GROUPS");
    let xinfo_lag = match info[0].get("lag") {
        Some(redis::Value::Int(lag)) => *lag,
        other => panic!("lag: {other:?}"),
    };
    let (xpending, ..): (i64, String, String, redis::Value) = redis::cmd("XPENDING")
        .arg("orders")
        .arg("g")
        .query(&mut con)
        .expect("XPENDING");

    let status = Sluice::exec(["status", "--redis", &redis.url(), "--json"]);
    let groups: serde_json::Value =
        serde_json::from_str(&status.stdout()).expect("status --json prints JSON");
    let g = groups
        .as_array()
        .and_then(|all| all.iter().find(|g| g["group"] == "g"))
        .unwrap_or_else(|| panic!("group g listed: {groups}"));
    assert_eq!(
        (&g["kind"], &g["source"]),
        (&"stream".into(), &"orders".into()),
        "{g}"
    );
    assert_eq!(g["lag"], xinfo_lag, "{g}");
    assert_eq!(g["pending"], xpending, "{g}");
    assert_eq!((xinfo_lag, xpending), (6, 4));
    assert_eq!(g["consumers"][0]["name"], "c1", "{g}");
    assert!(
        g["consumers"][0]["state"]
            .as_str()
            .is_some_and(|s| s.starts_with("idle")),
        "{g}"
    );
    assert!(g["oldest_pending_ms"].is_u64(), "{g}");
    assert_eq!(g["dead_letters"], 2, "{g}");

    let mut watch = Sluice::spawn(["status", "--redis", &redis.url(), "--json", "--watch"]);
    watch.wait_until("a first refresh", |w| w.stdout().lines().count() >= 1);
    xadd_many(&mut con, "orders", 1, |i| vec![("i", i.to_string())]);
    watch.wait_until("a refresh showing lag 7", |w| {
        w.stdout().lines().any(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v.as_array().cloned())
                .is_some_and(|all| all.iter().any(|g| g["group"] == "g" && g["lag"] == 7))
        })
    });
    watch.sigint();
    assert!(watch.wait_exit(crate::support::PATIENCE).success());
}

/// A sink whose Redis is down holds its pipeline's intake: `/ready` says `sink_backoff`, the
/// `sluice_sink_backoff` gauge is up, and the dashboard marks the card; once the sink's Redis is
/// back every message lands and `/ready` is 200 again.
#[test]
fn a_sink_in_backoff_shows_in_ready_metrics_and_dashboard() {
    let redis = RedisServer::new();
    let mut sink_redis = RedisServer::new();
    let mut con = redis.conn();
    let pipeline = Pipeline::write(
        "e2e",
        &stream_to_stream_toml(
            &redis,
            "uppercase",
            "",
            "",
            r#"field = "i""#,
            &format!("url = \"{}\"", sink_redis.url()),
        ),
    );
    let cache = tempfile::tempdir().expect("a plugin cache dir");
    let (mut sluice, http) = Sluice::run_http(&[pipeline.path()], cache.path());
    sluice.wait_for("/ready 200", |_| ready(&http), |(status, _)| *status == 200);

    sink_redis.stop();
    xadd_many(&mut con, IN, 5, |i| vec![("i", i.to_string())]);
    let (_, json) = sluice.wait_for(
        "/ready 503 naming the sink",
        |_| ready(&http),
        |(status, json)| *status == 503 && reasons(json, "e2e") == ["sink_backoff"],
    );
    let detail = json["pipelines"][0]["reasons"][0]["detail"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(detail.contains("sink `out`"), "{detail}");
    let (_, text) = get(&http, "/metrics");
    assert_eq!(
        series(&text, "sluice_sink_backoff", r#"pipeline="e2e",sink="out""#),
        Some(1.0),
        "{text}"
    );
    let dom = dump_dom(&format!("http://{http}/"));
    assert!(
        dom.contains(r#"data-pipeline="e2e" data-state="sink backoff · intake paused""#),
        "the card shows the backoff:\n{dom}"
    );

    sink_redis.start();
    sluice.wait_for(
        "/ready 200 again",
        |_| ready(&http),
        |(status, _)| *status == 200,
    );
    let mut sink_con = sink_redis.conn();
    sluice.wait_until("5 entries in the sink", |_| xlen(&mut sink_con, OUT) == 5);
    sluice.shutdown();
}

/// A pipeline whose plugin hangs on a batch, with work pending, is marked stalled on the
/// dashboard once it has made no progress for several polls.
#[test]
fn the_dashboard_marks_a_stalled_pipeline() {
    let redis = RedisServer::new();
    let mut con = redis.conn();
    xadd_many(&mut con, IN, 5, |_| vec![("action", "ok")]);
    let pipeline = Pipeline::write(
        "e2e",
        &stream_to_stream_toml(
            &redis,
            "faults",
            "claim_idle_ms = 3600000",
            "timeout_ms = 600000",
            "sleep_ms = 600000",
            "",
        ),
    );
    let cache = tempfile::tempdir().expect("a plugin cache dir");
    let (mut sluice, http) = Sluice::run_http(&[pipeline.path()], cache.path());
    let group = format!(r#"pipeline="e2e",stream="{IN}",group="{GROUP}""#);
    sluice.wait_for(
        "5 entries pending in the group poll",
        |_| get(&http, "/metrics").1,
        |text| series(text, "sluice_group_pending", &group) == Some(5.0),
    );
    // Several polls with pending work and nothing processed.
    let dom = dump_dom_after(&format!("http://{http}/"), 14_000);
    assert!(
        dom.contains(r#"data-pipeline="e2e" data-state="stalled""#),
        "the card shows the stall:\n{dom}"
    );
    assert_eq!(card_stat(&dom, "e2e", "pending").as_deref(), Some("5"));
}

/// A group that cannot be created (the key holds a string, not a stream) is reported as
/// `group_missing` with Redis's error; once the key is fixed the pipeline consumes.
#[test]
fn ready_names_a_group_that_cannot_be_created() {
    let redis = RedisServer::new();
    let mut con = redis.conn();
    let _: () = redis::cmd("SET")
        .arg(IN)
        .arg("not a stream")
        .query(&mut con)
        .expect("SET");
    let pipeline = Pipeline::stream_to_stream(&redis, "uppercase", "", r#"field = "i""#);
    let cache = tempfile::tempdir().expect("a plugin cache dir");
    let (mut sluice, http) = Sluice::run_http(&[pipeline.path()], cache.path());
    let (_, json) = sluice.wait_for(
        "/ready 503 naming the group",
        |_| ready(&http),
        |(status, json)| *status == 503 && reasons(json, "e2e") == ["group_missing"],
    );
    let detail = json["pipelines"][0]["reasons"][0]["detail"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(detail.contains("WRONGTYPE"), "Redis's own error: {detail}");

    let _: () = redis::cmd("DEL").arg(IN).query(&mut con).expect("DEL");
    sluice.wait_for("/ready 200", |_| ready(&http), |(status, _)| *status == 200);
    xadd_many(&mut con, IN, 3, |i| vec![("i", i.to_string())]);
    wait_settled(&mut con, &mut sluice, 3, 0);
    sluice.shutdown();
}

/// Reloads are counted per pipeline and outcome: a config-only edit re-initialises the plugin,
/// an invalid edit is refused (and the running version keeps `/ready` at 200).
#[test]
fn reloads_and_refused_edits_are_counted_per_pipeline() {
    let redis = RedisServer::new();
    let dir = tempfile::tempdir().expect("a pipeline folder");
    let file = dir.path().join("e2e.toml");
    let toml = |config: &str| stream_to_stream_toml(&redis, "faults", "", "", config, "");
    std::fs::write(&file, toml("")).expect("write e2e.toml");
    let cache = tempfile::tempdir().expect("a plugin cache dir");
    let mut sluice = Sluice::spawn_with(
        [
            std::ffi::OsStr::new("run"),
            dir.path().as_os_str(),
            std::ffi::OsStr::new("--http"),
            std::ffi::OsStr::new("127.0.0.1:0"),
        ],
        |command| {
            command.env("SLUICE_CACHE_DIR", cache.path());
        },
    );
    let served = sluice.wait_for_log(&["serving /metrics"], 1);
    let http = crate::support::logs::field(&served[0], "addr")
        .expect("the address served")
        .to_owned();
    sluice.wait_for("/ready 200", |_| ready(&http), |(status, _)| *status == 200);
    let reloads = |text: &str, result: &str| {
        series(
            text,
            "sluice_pipeline_reloads_total",
            &format!(r#"pipeline="e2e",result="{result}""#),
        )
    };

    std::fs::write(&file, toml(r#"field = "kind""#)).expect("edit e2e.toml");
    sluice.wait_for(
        "a re-init counted",
        |_| get(&http, "/metrics").1,
        |text| reloads(text, "reinit") == Some(1.0),
    );
    std::fs::write(&file, toml(r#"field = "kind""#) + "\nnot toml [").expect("break e2e.toml");
    sluice.wait_for(
        "a refused edit counted",
        |_| get(&http, "/metrics").1,
        |text| reloads(text, "invalid") == Some(1.0),
    );
    assert_eq!(ready(&http).0, 200, "the running version keeps consuming");
    sluice.shutdown();
}
