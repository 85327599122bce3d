//! From outcomes to acks: the delivery status of each message decides what
//! happens to it, and nothing is acked on read.
//!
//! - Delivered (every record accepted by its sink, or none produced) -> XACK.
//! - Dropped (the plugin asked) -> XACK, counted.
//! - Errored (retry) -> left pending; redelivered later.
//! - Rejected (dead-letter asked, or the last allowed delivery failed) ->
//!   XADD to the dead-letter stream, then XACK.

use crate::conn::Outage;
use crate::message::{Failure, FailureClass, FailureKind, Field, Message, Outcome, Record};
use crate::readiness::{self, Blocker, Reason};
use crate::sink::{Sink, SinkError, Sinks};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// After shutdown is asked, how long writes to an unreachable sink keep
/// being retried before their messages are left pending.
pub const SHUTDOWN_WRITE_GRACE: Duration = Duration::from_secs(20);

/// What became of one message.
#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    /// All its records were written (or it produced none).
    Delivered,
    /// Discarded on the plugin's request.
    Dropped(Failure),
    /// Failed; stays pending for another delivery.
    Errored(Failure),
    /// Goes to the dead-letter stream.
    Rejected(Failure),
}

/// A batch's records sorted by sink, and the failures known so far.
pub struct Routed {
    /// Per sink (in [`Sinks`] order): (message index, record), in batch order.
    pub per_sink: Vec<Vec<(usize, Record)>>,
    failures: Vec<Option<Failure>>,
    dropped: Vec<Option<Failure>>,
}

impl Routed {
    /// Sorts the records of `outcomes` (one per message) by destination. A
    /// record naming an unknown sink dead-letters its whole message.
    pub fn new(outcomes: Vec<Outcome>, sinks: &Sinks) -> Self {
        let n = outcomes.len();
        let mut routed = Routed {
            per_sink: vec![Vec::new(); sinks.sinks.len()],
            failures: vec![None; n],
            dropped: vec![None; n],
        };
        for (i, outcome) in outcomes.into_iter().enumerate() {
            match outcome {
                Err(f) if f.kind == FailureKind::Drop => routed.dropped[i] = Some(f),
                Err(f) => routed.failures[i] = Some(f),
                Ok(records) => {
                    let mut targets = Vec::with_capacity(records.len());
                    for record in records {
                        match sinks.route(record.to.as_deref()) {
                            Ok(mut to) => {
                                // Clone only for extra (`route = "all"`) sinks.
                                let first = to.next().expect("a record always has a sink");
                                targets.extend(to.map(|t| (t, record.clone())));
                                targets.push((first, record));
                            }
                            Err(why) => {
                                // A bug in the plugin or the pipeline file: another
                                // delivery would fail the same way, so dead-letter now.
                                routed.failures[i] = Some(Failure {
                                    kind: FailureKind::DeadLetter,
                                    ..Failure::retry(FailureClass::Route, why)
                                });
                                break;
                            }
                        }
                    }
                    if routed.failures[i].is_none() {
                        for (t, record) in targets {
                            routed.per_sink[t].push((i, record));
                        }
                    }
                }
            }
        }
        routed
    }

    /// Fails message `i` (the first failure of a message is the one kept).
    pub fn fail(&mut self, i: usize, failure: Failure) {
        self.failures[i].get_or_insert(failure);
    }

    /// Each message's status, given the failures recorded.
    pub fn statuses(self, batch: &[Message], max_deliveries: u32) -> Vec<Status> {
        batch
            .iter()
            .zip(self.failures.into_iter().zip(self.dropped))
            .map(|(msg, (failure, dropped))| match (failure, dropped) {
                (Some(f), _) => classify(msg, f, max_deliveries),
                (None, Some(d)) => Status::Dropped(d),
                (None, None) => Status::Delivered,
            })
            .collect()
    }
}

/// Routes and writes the records of `outcomes` (one per message of `batch`)
/// and returns each message's status. Writes go out per sink in one
/// pipelined round trip, in batch order. While a sink is unreachable its
/// writes are retried with backoff, so the consumer reads nothing new
/// (backpressure) until it recovers or `stop` has been set for
/// [`SHUTDOWN_WRITE_GRACE`].
pub async fn deliver(
    batch: &[Message],
    outcomes: Vec<Outcome>,
    sinks: &Sinks,
    max_deliveries: u32,
    stop: &CancellationToken,
) -> Vec<Status> {
    let mut routed = Routed::new(outcomes, sinks);
    // Sinks are independent: write to all at once; within a sink, in batch order.
    let writes = routed
        .per_sink
        .iter()
        .zip(&sinks.sinks)
        .zip(&sinks.names)
        .map(|((items, sink), name)| {
            write_through_outages(&sinks.pipeline, sink, name, items, stop)
        });
    let results = futures::future::join_all(writes).await;
    let mut failed = Vec::new();
    for ((items, results), name) in routed.per_sink.iter().zip(results).zip(&sinks.names) {
        let written = results.iter().filter(|r| r.is_ok()).count();
        metrics::counter!("sluice_sink_records_total", "pipeline" => sinks.pipeline.clone(), "sink" => name.clone())
            .increment(written as u64);
        for ((i, _), result) in items.iter().zip(results) {
            if let Err(why) = result {
                let reason = format!("sink `{name}`: {why}");
                failed.push((
                    *i,
                    if why.dead_letter {
                        Failure::dead_letter(FailureClass::Sink, reason)
                    } else if why.unrepresentable {
                        Failure::dead_letter(FailureClass::Encoding, reason)
                    } else {
                        Failure::retry(FailureClass::Sink, reason)
                    },
                ));
            }
        }
    }
    for (i, failure) in failed {
        routed.fail(i, failure);
    }
    routed.statuses(batch, max_deliveries)
}

/// Writes `items` to `sink`, retrying the records that failed because the
/// sink was unreachable; refusals are returned at once.
async fn write_through_outages(
    pipeline: &str,
    sink: &Sink,
    name: &str,
    items: &[(usize, Record)],
    stop: &CancellationToken,
) -> Vec<Result<(), SinkError>> {
    let mut results: Vec<Option<Result<(), SinkError>>> = vec![None; items.len()];
    let mut todo: Vec<usize> = (0..items.len()).collect();
    let mut outage = Outage::of_sink(pipeline);
    let mut stopped_at: Option<Instant> = None;
    let mut backoff = None;
    while !todo.is_empty() {
        let records: Vec<&Record> = todo.iter().map(|&k| &items[k].1).collect();
        let mut again = Vec::new();
        let mut last = None;
        for (k, result) in todo.iter().zip(sink.write(&records).await) {
            match result {
                Err(e) if e.outage => {
                    again.push(*k);
                    last = Some(e);
                }
                other => results[*k] = Some(other),
            }
        }
        let Some(error) = last else {
            outage.recovered();
            break;
        };
        if stop.is_cancelled() {
            let since = *stopped_at.get_or_insert_with(Instant::now);
            if since.elapsed() > SHUTDOWN_WRITE_GRACE {
                for k in again {
                    results[k] = Some(Err(error.clone()));
                }
                break;
            }
        }
        outage.failed(&error, &format!("writing to sink `{name}`"));
        backoff.get_or_insert_with(|| SinkBackoff::start(pipeline, name, &error));
        tokio::time::sleep(outage.next_delay()).await;
        todo = again;
    }
    drop(backoff);
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(SinkError::refused("not written"))))
        .collect()
}

/// While alive, the sink is in backoff: `sluice_sink_backoff` is raised and
/// the consumer that writes reads nothing new (intake paused). Counted per
/// writer, so several consumers waiting on one sink keep it raised until
/// the last one gets through.
struct SinkBackoff(
    metrics::Gauge,
    #[allow(dead_code, reason = "held, not read")] Blocker,
);

impl SinkBackoff {
    fn start(pipeline: &str, sink: &str, error: &SinkError) -> Self {
        let gauge = metrics::gauge!("sluice_sink_backoff", "pipeline" => pipeline.to_string(), "sink" => sink.to_string());
        gauge.increment(1.0);
        let detail = format!("sink `{sink}`: {error}; intake paused");
        SinkBackoff(
            gauge,
            readiness::block(pipeline, Reason::SinkBackoff, detail),
        )
    }
}

impl Drop for SinkBackoff {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// A failure becomes a dead letter when the plugin asks, or when this was
/// the last delivery `max_deliveries` allows; otherwise it is retried.
pub fn classify(msg: &Message, f: Failure, max_deliveries: u32) -> Status {
    match f.kind {
        FailureKind::DeadLetter => Status::Rejected(f),
        FailureKind::Drop => Status::Dropped(f),
        FailureKind::Retry if msg.deliveries >= max_deliveries => Status::Rejected(Failure {
            reason: format!(
                "failed on delivery {} of max_deliveries = {max_deliveries}: {}",
                msg.deliveries, f.reason
            ),
            ..f
        }),
        FailureKind::Retry => Status::Errored(f),
    }
}

/// The fields of a dead-letter entry: what happened (prefixed `sluice.`),
/// then the original fields unchanged, so a replay can restore them.
pub fn dead_letter_fields(
    msg: &Message,
    failure: &Failure,
    group: &str,
    pipeline: &str,
) -> Vec<Field> {
    let meta = |name: &str, value: &[u8]| (name.as_bytes().to_vec(), value.to_vec());
    let mut fields: Vec<Field> = vec![
        meta("sluice.stream", msg.source.as_bytes()),
        meta("sluice.id", msg.id.as_bytes()),
        meta("sluice.group", group.as_bytes()),
        meta("sluice.pipeline", pipeline.as_bytes()),
        meta("sluice.deliveries", msg.deliveries.to_string().as_bytes()),
        meta("sluice.error_class", failure.class.as_str().as_bytes()),
        meta("sluice.error", failure.reason.as_bytes()),
    ];
    if let Some(hash) = &failure.plugin {
        fields.push(meta("sluice.plugin", hash.as_bytes()));
    }
    fields.extend(msg.fields.iter().cloned());
    fields
}

/// The dead-letter field naming the kind of source a message came from
/// (`stream`, `list` or `pubsub`), so that a replay puts it back in the form
/// that source reads. A dead letter without it came from a stream.
pub const SOURCE_TYPE_FIELD: &str = "sluice.source_type";

/// Adds [`SOURCE_TYPE_FIELD`] to the fields of [`dead_letter_fields`], next
/// to `sluice.stream`, which names the list or channel for those sources.
pub fn with_source_type(
    mut fields: Vec<crate::message::Field>,
    kind: crate::config::SourceType,
) -> Vec<crate::message::Field> {
    use crate::config::SourceType;
    let kind = match kind {
        SourceType::Stream => "stream",
        SourceType::List => "list",
        SourceType::Pubsub => "pubsub",
    };
    fields.insert(1, (SOURCE_TYPE_FIELD.into(), kind.into()));
    fields
}

/// Prefix of the fields a dead-letter entry adds.
pub const DEAD_LETTER_PREFIX: &str = "sluice.";

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn msg(deliveries: u32) -> Message {
        Message {
            id: "1-0".into(),
            source: Arc::from("s"),
            fields: vec![(b"a".to_vec(), b"1".to_vec())],
            deliveries,
            first_delivery_ms: 1,
        }
    }

    #[test]
    fn last_allowed_delivery_dead_letters() {
        let f = Failure::retry(FailureClass::Plugin, "boom");
        assert!(matches!(
            classify(&msg(1), f.clone(), 3),
            Status::Errored(_)
        ));
        let Status::Rejected(r) = classify(&msg(3), f, 3) else {
            panic!("expected a dead letter")
        };
        assert!(
            r.reason.contains("delivery 3 of max_deliveries = 3: boom"),
            "{}",
            r.reason
        );
    }

    #[test]
    fn dead_letter_keeps_original_fields_after_metadata() {
        let f = Failure {
            plugin: Some(Arc::from("abc")),
            ..Failure::retry(FailureClass::Trap, "x")
        };
        let fields = dead_letter_fields(&msg(2), &f, "g", "p");
        assert_eq!(fields.last().unwrap(), &(b"a".to_vec(), b"1".to_vec()));
        assert!(
            fields
                .iter()
                .any(|(k, v)| k == b"sluice.plugin" && v == b"abc")
        );
        assert!(
            fields
                .iter()
                .filter(|(k, _)| !k.starts_with(DEAD_LETTER_PREFIX.as_bytes()))
                .count()
                == 1
        );
    }
}
