//! The pub/sub subscriber notices a dead subscription and subscribes again: a link that went
//! silent (half-open, through [`Proxy::blackhole`]) and a connection Redis closed (CLIENT
//! KILL). Pub/sub is at-most-once, so what was published while the link was dead is lost; what
//! is published once the subscriber is back must arrive.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Instant;

use crate::support::keys::{publish, subscribers};
use crate::support::logs::field;
use crate::support::proxy::Proxy;
use crate::support::streams::{xlen, xrange_all};
use crate::support::{Pipeline, RedisServer, Sluice};

/// Channel `events` read through `source_url`, written unchanged to stream `events:out` on
/// `sink_url`.
fn capture(source_url: &str, sink_url: &str) -> Pipeline {
    Pipeline::write(
        "capture",
        &format!(
            r#"[redis]
url = "{source_url}"

[source]
type = "pubsub"
channels = ["events"]

[[sink]]
type = "stream"
stream = "events:out"
url = "{sink_url}"
"#
        ),
    )
}

#[test]
fn a_silent_or_killed_subscription_is_detected_and_resubscribed() {
    let redis = RedisServer::new();
    let proxy = Proxy::start(redis.port());
    let mut con = redis.conn();
    let pipeline = capture(&proxy.url(), &redis.url());
    let cache = tempfile::tempdir().expect("a plugin cache dir");
    let mut sluice = Sluice::spawn_with(
        [
            OsStr::new("run"),
            pipeline.path().as_os_str(),
            OsStr::new("--no-watch"),
            OsStr::new("--http"),
            OsStr::new("127.0.0.1:0"),
        ],
        |command| {
            command.env("SLUICE_CACHE_DIR", cache.path());
        },
    );
    let served = sluice.wait_for_log(&["serving /metrics"], 1);
    let http = field(&served[0], "addr")
        .expect("the address served")
        .to_owned();
    sluice.wait_until("1 subscriber of `events`", |_| {
        subscribers(&mut con, "events") == 1
    });
    assert_eq!(publish(&mut con, "events", "before"), 1);
    sluice.wait_until("`before` captured", |_| xlen(&mut con, "events:out") == 1);

    // The link goes silent: Redis still counts the old subscriber, which never hears from it
    // again. Only a live check of the link tells; then sluice subscribes on a new connection.
    let silenced = Instant::now();
    proxy.blackhole();
    sluice.wait_until("a second subscriber of `events` (the new link)", |_| {
        subscribers(&mut con, "events") == 2
    });
    println!(
        "silent subscription replaced {} ms after the link went silent",
        silenced.elapsed().as_millis()
    );
    sluice.wait_for_log(&["WARN", "resubscribing"], 1);
    assert_eq!(publish(&mut con, "events", "after silence"), 2);
    sluice.wait_until("`after silence` captured", |_| {
        xlen(&mut con, "events:out") == 2
    });

    // Redis closes every subscriber connection: sluice subscribes again.
    let _: redis::Value = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query(&mut con)
        .expect("CLIENT KILL TYPE pubsub");
    sluice.wait_for_log(&["WARN", "resubscribing"], 2);
    sluice.wait_until("1 subscriber of `events` again", |_| {
        subscribers(&mut con, "events") == 1
    });
    assert_eq!(publish(&mut con, "events", "after kill"), 1);
    sluice.wait_until("`after kill` captured", |_| {
        xlen(&mut con, "events:out") == 3
    });
    let resubscribes = metrics(&http)
        .lines()
        .find(|line| line.starts_with("sluice_pubsub_resubscribes_total{"))
        .map(str::to_owned);
    sluice.shutdown();

    assert_eq!(
        resubscribes.as_deref(),
        Some(r#"sluice_pubsub_resubscribes_total{pipeline="capture"} 2"#),
        "one resubscribe for the silent link, one for the kill"
    );

    let payloads: Vec<String> = xrange_all(&mut con, "events:out")
        .iter()
        .map(|e| e.get("payload").to_owned())
        .collect();
    assert_eq!(payloads, ["before", "after silence", "after kill"]);
}

/// The Prometheus text of `GET http://<addr>/metrics`.
fn metrics(addr: &str) -> String {
    let mut http = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    write!(
        http,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .expect("send the request");
    let mut reply = String::new();
    http.read_to_string(&mut reply).expect("read the reply");
    reply
}
