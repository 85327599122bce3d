//! Delivery: what reaches the sink, and what is acked, for a stream → plugin → stream pipeline.
//!
//! The contract under test (DESIGN.md, "Delivery semantics"): a message is acked only after
//! every record it produced was accepted by its sink; a failed message stays pending; one
//! failing message does not fail its neighbours.

use std::collections::BTreeSet;

use crate::support::pipeline::{GROUP, IN, OUT, wait_settled};
use crate::support::streams::{Entry, consumer_count, pending_ids, xadd_many, xlen, xrange_all};
use crate::support::{Pipeline, RedisServer, Sluice};

/// Enough messages for many batches per consumer, few enough for a debug build.
const MESSAGES: usize = 10_000;

/// Long enough that the reclaimer never redelivers during a test, so what is pending at the
/// end is exactly what failed on first delivery.
const NO_RECLAIM: &str = "claim_idle_ms = 3600000\nmax_deliveries = 1000";

/// Input `i` for the uppercase tests: an index to match outputs to inputs, and the payload
/// (every seventh not ASCII, which the plugin uppercases by other rules).
fn numbered_payload(i: usize) -> Vec<(&'static str, String)> {
    let payload = if i % 7 == 3 {
        format!("straße {i} — ünïcode")
    } else {
        format!("message {i} from the e2e test")
    };
    vec![("i", i.to_string()), ("payload", payload)]
}

/// What the uppercase plugin must make of [`numbered_payload`]: the same fields in the same
/// order, the payload uppercased.
fn uppercased(i: usize) -> Vec<(String, String)> {
    let payload = if i % 7 == 3 {
        format!("STRASSE {i} — ÜNÏCODE")
    } else {
        format!("MESSAGE {i} FROM THE E2E TEST")
    };
    vec![("i".into(), i.to_string()), ("payload".into(), payload)]
}

/// Runs [`MESSAGES`] numbered payloads through the uppercase plugin with `consumers`
/// consumers, waits until all are written and acked, stops sluice and returns the output.
fn run_uppercase(consumers: usize) -> Vec<Entry> {
    let redis = RedisServer::new();
    let mut con = redis.conn();
    xadd_many(&mut con, IN, MESSAGES, numbered_payload);
    let pipeline = Pipeline::stream_to_stream(
        &redis,
        "uppercase",
        &format!("consumers = {consumers}"),
        r#"field = "payload""#,
    );

    let mut sluice = Sluice::run(pipeline.path());
    wait_settled(&mut con, &mut sluice, MESSAGES, 0);
    assert_eq!(
        consumer_count(&mut con, IN, GROUP),
        consumers,
        "consumers registered in group `{GROUP}`"
    );
    sluice.shutdown();
    xrange_all(&mut con, OUT)
}

/// Asserts two long sequences are equal, reporting the first difference instead of dumping
/// ten thousand entries.
fn assert_same_sequence(what: &str, got: &[Vec<(String, String)>], want: &[Vec<(String, String)>]) {
    if let Some(at) = got.iter().zip(want).position(|(g, w)| g != w) {
        panic!(
            "{what}: first difference at position {at}: got {:?}, want {:?}",
            got[at], want[at]
        );
    }
    assert_eq!(got.len(), want.len(), "{what}: number of entries");
}

#[test]
fn one_consumer_transforms_every_message_in_order() {
    let output = run_uppercase(1);

    let got: Vec<_> = output.into_iter().map(|entry| entry.fields).collect();
    let want: Vec<_> = (0..MESSAGES).map(uppercased).collect();
    assert_same_sequence("output of one consumer, in stream order", &got, &want);
}

#[test]
fn four_consumers_transform_every_message_once() {
    let output = run_uppercase(4);

    let mut got: Vec<_> = output.into_iter().map(|entry| entry.fields).collect();
    got.sort_by_key(|fields| fields[0].1.parse::<usize>().unwrap_or(usize::MAX));
    let want: Vec<_> = (0..MESSAGES).map(uppercased).collect();
    assert_same_sequence(
        "output of four consumers, sorted by input index",
        &got,
        &want,
    );
}

#[test]
fn plugin_failures_stay_pending_and_neighbours_are_acked() {
    const COUNT: usize = 1000;
    let fails = |i: usize| i.is_multiple_of(10);

    let redis = RedisServer::new();
    let mut con = redis.conn();
    let ids = xadd_many(&mut con, IN, COUNT, |i| {
        vec![
            ("i", i.to_string()),
            ("action", if fails(i) { "fail" } else { "ok" }.to_string()),
        ]
    });
    let pipeline = Pipeline::stream_to_stream(&redis, "faults", NO_RECLAIM, "");

    let mut sluice = Sluice::run(pipeline.path());
    let failing = (0..COUNT).filter(|&i| fails(i)).count();
    wait_settled(&mut con, &mut sluice, COUNT - failing, failing);
    sluice.shutdown();

    let want_pending: Vec<_> = (0..COUNT)
        .filter(|&i| fails(i))
        .map(|i| ids[i].clone())
        .collect();
    assert_eq!(
        pending_ids(&mut con, IN, GROUP),
        want_pending,
        "pending = exactly the failed messages"
    );

    let got_out: BTreeSet<usize> = xrange_all(&mut con, OUT)
        .iter()
        .map(|entry| entry.get("i").parse().expect("`i` is a number"))
        .collect();
    let want_out: BTreeSet<usize> = (0..COUNT).filter(|&i| !fails(i)).collect();
    assert_eq!(
        got_out, want_out,
        "output = exactly the messages that did not fail"
    );
    assert_eq!(
        xlen(&mut con, OUT),
        want_out.len(),
        "each message written once"
    );
    assert_eq!(
        xlen(&mut con, &format!("{IN}:dead")),
        0,
        "a retryable failure is not dead-lettered"
    );
}

#[test]
fn a_refused_sink_write_is_not_acked() {
    const COUNT: usize = 50;
    const NOT_A_STREAM: &str = "a string, so XADD fails with WRONGTYPE";

    let redis = RedisServer::new();
    let mut con = redis.conn();
    redis::cmd("SET")
        .arg(OUT)
        .arg(NOT_A_STREAM)
        .query::<()>(&mut con)
        .expect("SET the sink key");
    let ids = xadd_many(&mut con, IN, COUNT, numbered_payload);
    let pipeline = Pipeline::stream_to_stream(&redis, "uppercase", NO_RECLAIM, "");

    let mut sluice = Sluice::run(pipeline.path());
    // The foundation has no reclaimer yet, so there is no retry to wait for: the observable
    // outcome is a logged failure that names the message and Redis's reason, and the message
    // left pending.
    sluice.wait_until(
        "a log line naming an input id and the WRONGTYPE refusal",
        |sluice| {
            sluice.log().lines().any(|line| {
                line.contains("WRONGTYPE") && ids.iter().any(|id| line.contains(id.as_str()))
            })
        },
    );
    sluice.shutdown();

    assert_eq!(
        pending_ids(&mut con, IN, GROUP),
        ids,
        "every message stays pending"
    );
    let sink: String = redis::cmd("GET")
        .arg(OUT)
        .query(&mut con)
        .expect("GET the sink key");
    assert_eq!(sink, NOT_A_STREAM, "the sink key is untouched");
    assert_eq!(
        xlen(&mut con, &format!("{IN}:dead")),
        0,
        "a sink refusal is not dead-lettered"
    );
}

/// Every connection of a stream pipeline authenticates and selects the database its URL
/// names, the source's read connection included: a user with a password, database 3. An
/// unauthenticated read would fail NOAUTH and nothing would land; one in database 0 would
/// find no stream.
#[test]
fn a_url_with_user_password_and_database_is_honoured_by_every_connection() {
    const COUNT: usize = 2000;
    let redis = RedisServer::new();
    let mut admin = redis.conn();
    redis::cmd("ACL")
        .arg(&["SETUSER", "app", "on", ">s3cret", "~*", "+@all"])
        .query::<()>(&mut admin)
        .expect("ACL SETUSER");
    // From here a connection without a password is refused.
    redis::cmd("CONFIG")
        .arg(&["SET", "requirepass", "admin-only"])
        .query::<()>(&mut admin)
        .expect("CONFIG SET requirepass");
    let url = format!("redis://app:s3cret@127.0.0.1:{}/3", redis.port());
    let mut con = redis::Client::open(url.as_str())
        .and_then(|c| c.get_connection())
        .expect("connect as app to database 3");
    xadd_many(&mut con, IN, COUNT, |i| vec![("i", i.to_string())]);
    let toml = crate::support::pipeline::stream_to_stream_toml(
        &redis,
        "uppercase",
        "",
        "",
        "field = \"i\"",
        "",
    )
    .replace(&redis.url(), &url);
    let pipeline = Pipeline::write("e2e", &toml);

    let mut sluice = Sluice::run(pipeline.path());
    wait_settled(&mut con, &mut sluice, COUNT, 0);
    sluice.shutdown();

    let got: Vec<String> = xrange_all(&mut con, OUT)
        .iter()
        .map(|e| e.get("i").to_owned())
        .collect();
    let want: Vec<String> = (0..COUNT).map(|i| i.to_string()).collect();
    assert_eq!(got, want, "every entry once, in order, in database 3");
    let in_db0: usize = redis::cmd("DBSIZE")
        .query(&mut admin)
        .expect("DBSIZE of database 0");
    assert_eq!(in_db0, 0, "nothing written to database 0");
}
