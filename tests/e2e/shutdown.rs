//! Shutdown: SIGTERM stops reading, finishes and acks what is in flight, and exits 0, so a
//! restart picks up exactly where the last run stopped (DESIGN.md, "Delivery semantics").

use crate::support::pipeline::{GROUP, IN, OUT, wait_settled};
use crate::support::streams::{pending_count, xadd_many, xlen, xrange_all};
use crate::support::{Pipeline, RedisServer, Sluice};

#[test]
fn sigterm_mid_stream_loses_nothing_and_duplicates_nothing() {
    // 200 batches of 100 with a 20 ms sleep each: several seconds of work, so the signal
    // lands mid-stream with a batch in flight.
    const COUNT: usize = 20_000;
    let redis = RedisServer::new();
    let mut con = redis.conn();
    xadd_many(&mut con, IN, COUNT, |i| vec![("i", i.to_string())]);
    let pipeline = Pipeline::stream_to_stream(&redis, "faults", "batch = 100", "sleep_ms = 20");

    let mut first = Sluice::run(pipeline.path());
    first.wait_until("the first output", |_| xlen(&mut con, OUT) > 0);
    first.shutdown();

    let written = xlen(&mut con, OUT);
    assert!(
        written < COUNT,
        "SIGTERM stops reading: all {COUNT} were processed anyway"
    );
    assert_eq!(
        pending_count(&mut con, IN, GROUP),
        0,
        "in-flight messages finished and acked"
    );

    let mut second = Sluice::run(pipeline.path());
    wait_settled(&mut con, &mut second, COUNT, 0);
    second.shutdown();

    let mut seen: Vec<usize> = xrange_all(&mut con, OUT)
        .iter()
        .map(|entry| entry.get("i").parse().expect("`i` is a number"))
        .collect();
    seen.sort_unstable();
    let first_missing = (0..COUNT).find(|i| seen.binary_search(i).is_err());
    assert_eq!(first_missing, None, "an input never reached the output");
    assert_eq!(
        seen.len(),
        COUNT,
        "some input was written twice ({written} by the first run)"
    );
}
