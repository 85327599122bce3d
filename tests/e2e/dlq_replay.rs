//! `sluice dlq replay` puts a dead letter back where it came from, in the form its source
//! reads: an item pushed onto a list, a message published on a channel, an entry added to a
//! stream (README, "Dead letters").

use crate::support::keys::{llen, lpush_many, lrange_all, subscribers};
use crate::support::streams::{xlen, xrange_all};
use crate::support::{Pipeline, RedisServer, Sluice, plugin};

/// The `[[processor]]` table of the faults plugin reading its action from `payload`.
fn faults() -> String {
    format!(
        "[[processor]]\nplugin = '{}'\n[processor.config]\nfield = \"payload\"\n",
        plugin("faults").display()
    )
}

fn key_type(con: &mut redis::Connection, key: &str) -> String {
    redis::cmd("TYPE")
        .arg(key)
        .query(con)
        .unwrap_or_else(|e| panic!("TYPE {key}: {e}"))
}

#[test]
fn dlq_replay_pushes_a_list_items_dead_letter_back_onto_the_list() {
    let redis = RedisServer::new();
    let mut con = redis.conn();
    lpush_many(&mut con, "jobs", &["poison", "ok"]);
    let pipeline = Pipeline::write(
        "jobs",
        &format!(
            "[redis]\nurl = \"{}\"\n\n[source]\ntype = \"list\"\nlist = \"jobs\"\nblock_ms = 100\n\n{}\n[[sink]]\ntype = \"stream\"\nstream = \"jobs:out\"\n",
            redis.url(),
            faults()
        ),
    );
    let cache = tempfile::tempdir().expect("a plugin cache dir");
    let mut sluice = Sluice::run_cached(pipeline.path(), cache.path());
    sluice.wait_until("`ok` written, `poison` dead-lettered", |_| {
        xlen(&mut con, "jobs:out") == 1 && xlen(&mut con, "jobs:dead") == 1
    });
    sluice.shutdown();
    let letter = xrange_all(&mut con, "jobs:dead").remove(0);

    // The queue has work again by the time someone replays.
    lpush_many(&mut con, "jobs", &["later"]);
    let replayed = Sluice::exec(["dlq", "replay", "jobs:dead", "--redis", &redis.url()]).stdout();
    assert!(replayed.contains("replayed 1"), "{replayed}");
    assert_eq!(key_type(&mut con, "jobs"), "list");
    assert_eq!(
        lrange_all(&mut con, "jobs"),
        ["poison", "later"],
        "the item is back at the end of the queue, as the list source requeues"
    );
    assert_eq!(xlen(&mut con, "jobs:dead"), 0, "replayed, so removed");
    assert_eq!(letter.get("sluice.source_type"), "list", "{letter:?}");
}

#[test]
fn dlq_replay_publishes_a_pubsub_dead_letter_and_refuses_when_nobody_listens() {
    let redis = RedisServer::new();
    let mut con = redis.conn();
    let pipeline = Pipeline::write(
        "capture",
        &format!(
            "[redis]\nurl = \"{}\"\n\n[source]\ntype = \"pubsub\"\nchannels = [\"events\"]\n\n{}\n[[sink]]\ntype = \"stream\"\nstream = \"events:out\"\n",
            redis.url(),
            faults()
        ),
    );
    let cache = tempfile::tempdir().expect("a plugin cache dir");
    let mut sluice = Sluice::run_cached(pipeline.path(), cache.path());
    sluice.wait_until("subscribed to `events`", |_| {
        subscribers(&mut con, "events") == 1
    });
    let _: usize = redis::cmd("PUBLISH")
        .arg("events")
        .arg("poison")
        .query(&mut con)
        .expect("PUBLISH");
    sluice.wait_until("`poison` dead-lettered", |_| {
        xlen(&mut con, "capture:dead") == 1
    });
    let first = xrange_all(&mut con, "capture:dead").remove(0);

    // Replayed while the pipeline listens: it is published, received and dead-lettered again.
    let replayed =
        Sluice::exec(["dlq", "replay", "capture:dead", "--redis", &redis.url()]).stdout();
    assert!(replayed.contains("replayed 1"), "{replayed}");
    let again = sluice.wait_for(
        "the replayed message dead-lettered again (seen: dead-letter ids)",
        |_| {
            xrange_all(&mut con, "capture:dead")
                .into_iter()
                .map(|e| e.id)
                .collect::<Vec<_>>()
        },
        |ids| ids.len() == 1 && ids[0] != first.id,
    );
    assert_eq!(
        key_type(&mut con, "events"),
        "none",
        "no key named after the channel"
    );
    assert_eq!(first.get("sluice.source_type"), "pubsub", "{first:?}");
    assert_eq!(first.get("sluice.stream"), "events");
    sluice.shutdown();

    // Nobody listens now: publishing would lose the message, so the replay refuses and keeps it.
    let mut refused = Sluice::spawn(["dlq", "replay", "capture:dead", "--redis", &redis.url()]);
    let status = refused.wait_exit(crate::support::PATIENCE);
    assert!(
        !status.success(),
        "the replay must fail: {}",
        refused.stdout()
    );
    assert!(
        refused.log().contains("no subscriber"),
        "the error says why: {}",
        refused.log()
    );
    let kept: Vec<String> = xrange_all(&mut con, "capture:dead")
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(kept, again, "the dead letter is kept");
    assert_eq!(llen(&mut con, "events"), 0);
}
