//! `sluice dlq`: inspect, replay and purge dead-letter streams.
//!
//! A dead-letter entry holds what happened in fields prefixed `sluice.`
//! (see [`crate::ack::dead_letter_fields`]) followed by the original fields,
//! so a replay restores the message exactly as it was first written.

use crate::ack::DEAD_LETTER_PREFIX;
use crate::conn::Conn;
use crate::message::{Field, Message, escape};
use crate::source::stream::parse_range;
use anyhow::{Context, Result};
use std::collections::HashMap;
use std::io::Write;

/// [`crate::ack::SOURCE_TYPE_FIELD`] without the prefix, as [`meta`] takes it.
const SOURCE_TYPE: &str = "source_type";

/// Entries read per round trip.
const CHUNK: usize = 500;

/// Checks that `stream` (on the Redis at `url`, for messages) is a
/// dead-letter stream and returns how many entries it holds. A missing key,
/// another type, or entries without the `sluice.` fields are errors, so a
/// mistyped name is not reported as "no dead letters".
pub async fn check(conn: &mut Conn, stream: &str, url: &str) -> Result<usize> {
    let kind: String = redis::cmd("TYPE").arg(stream).query_async(conn).await?;
    match kind.as_str() {
        "stream" => {}
        "none" => anyhow::bail!(
            "no stream `{stream}` on {}: nothing was dead-lettered there, or the name is wrong \
             (a pipeline's dead letters go to its `dead_letter`, default `<stream>:dead`)",
            crate::conn::redact(url)
        ),
        other => anyhow::bail!("`{stream}` is a {other}, not a dead-letter stream"),
    }
    let len: usize = redis::cmd("XLEN").arg(stream).query_async(conn).await?;
    if let Some(first) = range(conn, stream, "-", "+", 1).await?.first()
        && original_fields(first).len() == first.fields.len()
    {
        anyhow::bail!(
            "`{stream}` is not a dead-letter stream: its entry {} has no `{DEAD_LETTER_PREFIX}` \
             fields (a pipeline's dead letters go to its `dead_letter`, default `<stream>:dead`)",
            first.id
        );
    }
    Ok(len)
}

/// Prints up to `count` dead letters of `stream`, oldest first.
pub async fn list(
    conn: &mut Conn,
    stream: &str,
    count: usize,
    out: &mut impl Write,
) -> Result<usize> {
    let entries = range(conn, stream, "-", "+", count).await?;
    for entry in &entries {
        let meta = |k: &str| meta(entry, k);
        writeln!(
            out,
            "{}  from {} {}  pipeline={} deliveries={}  {}: {}",
            entry.id,
            meta("stream"),
            meta("id"),
            meta("pipeline"),
            meta("deliveries"),
            meta("error_class"),
            meta("error")
        )?;
        for (name, value) in original_fields(entry) {
            writeln!(
                out,
                "    {} = {}",
                escape(name),
                String::from_utf8_lossy(value)
            )?;
        }
    }
    Ok(entries.len())
}

/// Puts dead letters back where they came from (or on `to`) with their
/// original fields, in the form their source reads: XADD to a stream, LPUSH
/// of the `payload` onto a list (the end a list source takes last, as its
/// retries do), PUBLISH of the `payload` on a channel. Each is removed from
/// the dead-letter stream only once it is back: a PUBLISH that no
/// subscriber received counts as failed, since pub/sub keeps nothing.
/// `ids` limits the replay to those entries; without, it replays the
/// entries present when it starts.
pub async fn replay(
    conn: &mut Conn,
    stream: &str,
    to: Option<&str>,
    ids: &[String],
) -> Result<usize> {
    let mut replayed = 0;
    let mut cursor = "-".to_string();
    let mut key_types = HashMap::new();
    // Only what is there now: a replayed message that fails again while we
    // replay is dead-lettered anew and must not be replayed in a loop.
    let newest: Vec<(String, redis::Value)> = redis::cmd("XREVRANGE")
        .arg(stream)
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query_async(conn)
        .await?;
    let Some((end, _)) = newest.into_iter().next() else {
        anyhow::ensure!(ids.is_empty(), "{stream} is empty");
        return Ok(0);
    };
    let total = if ids.is_empty() {
        redis::cmd("XLEN").arg(stream).query_async(conn).await?
    } else {
        ids.len() as u64
    };
    let progress = crate::progress::Progress::new(total, "replaying");
    loop {
        let entries = if ids.is_empty() {
            range(conn, stream, &cursor, &end, CHUNK).await?
        } else {
            let mut found = Vec::new();
            for id in ids {
                let one = range(conn, stream, id, id, 1).await?;
                anyhow::ensure!(!one.is_empty(), "no entry {id} in {stream}");
                found.extend(one);
            }
            found
        };
        let Some(last) = entries.last() else { break };
        cursor = format!("({}", last.id);
        // One pipeline per hash slot of the targets: on a cluster a pipeline
        // keeps to one slot (on one server, dead letters of one source are
        // one slot anyway).
        let mut by_slot: std::collections::BTreeMap<u16, (redis::Pipeline, Vec<usize>)> =
            Default::default();
        let mut sent = Vec::with_capacity(entries.len());
        for (index, entry) in entries.iter().enumerate() {
            let target = to
                .map(str::to_string)
                .unwrap_or_else(|| meta(entry, "stream"));
            anyhow::ensure!(
                !target.is_empty(),
                "entry {} does not say where it came from; use --to",
                entry.id
            );
            let fields = original_fields(entry);
            anyhow::ensure!(
                !fields.is_empty(),
                "entry {} has no original fields to replay",
                entry.id
            );
            let kind = source_kind(conn, entry, &target, &mut key_types).await?;
            let (pipe, indexes) = by_slot
                .entry(crate::config::cluster::slot(target.as_bytes()))
                .or_insert_with(|| {
                    let mut pipe = redis::pipe();
                    pipe.ignore_errors();
                    (pipe, Vec::new())
                });
            indexes.push(index);
            match kind {
                Kind::Stream => {
                    let cmd = pipe.cmd("XADD").arg(&target).arg("*");
                    for (name, value) in fields {
                        cmd.arg(name.as_slice()).arg(value.as_slice());
                    }
                }
                Kind::List => {
                    pipe.cmd("LPUSH").arg(&target).arg(payload(entry, &fields)?);
                }
                Kind::Pubsub => {
                    pipe.cmd("PUBLISH")
                        .arg(&target)
                        .arg(payload(entry, &fields)?);
                }
            }
            sent.push((kind, target));
        }
        let mut results: Vec<Option<redis::RedisResult<redis::Value>>> =
            (0..entries.len()).map(|_| None).collect();
        for (pipe, indexes) in by_slot.into_values() {
            let answers: Vec<redis::RedisResult<redis::Value>> = pipe.query_async(conn).await?;
            for (index, answer) in indexes.into_iter().zip(answers) {
                results[index] = Some(answer);
            }
        }
        let results = results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err((redis::ErrorKind::Client, "no reply").into())));
        let mut added = Vec::new();
        let mut failed = None;
        for ((entry, (kind, target)), result) in entries.iter().zip(&sent).zip(results) {
            match (kind, result) {
                (Kind::Pubsub, Ok(redis::Value::Int(0))) => {
                    failed.get_or_insert_with(|| {
                        format!(
                            "entry {}: no subscriber on channel `{target}` received it, so it is kept (pub/sub keeps nothing: start the pipeline, then replay)",
                            entry.id
                        )
                    });
                }
                (_, Ok(_)) => added.push(entry.id.as_str()),
                (_, Err(e)) => {
                    failed.get_or_insert_with(|| {
                        format!("entry {} to {kind} `{target}`: {e}", entry.id)
                    });
                }
            }
        }
        if !added.is_empty() {
            redis::cmd("XDEL")
                .arg(stream)
                .arg(&added)
                .query_async::<i64>(conn)
                .await?;
        }
        replayed += added.len();
        progress.advance(entries.len() as u64);
        if let Some(e) = failed {
            anyhow::bail!("replayed {replayed}, then a replay failed: {e}");
        }
        if !ids.is_empty() {
            break;
        }
    }
    Ok(replayed)
}

/// The kinds of source a dead letter can go back to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Stream,
    List,
    Pubsub,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Stream => "stream",
            Kind::List => "list",
            Kind::Pubsub => "channel",
        })
    }
}

/// The kind of source `entry` came from: its `sluice.source_type`, or for
/// dead letters written before that field existed, a list if `target` is a
/// list key and a stream otherwise (`key_types` caches TYPE per key).
async fn source_kind(
    conn: &mut Conn,
    entry: &Message,
    target: &str,
    key_types: &mut HashMap<String, String>,
) -> Result<Kind> {
    match meta(entry, SOURCE_TYPE).as_str() {
        "stream" => Ok(Kind::Stream),
        "list" => Ok(Kind::List),
        "pubsub" => Ok(Kind::Pubsub),
        "" => {
            if !key_types.contains_key(target) {
                let found: String = redis::cmd("TYPE")
                    .arg(target)
                    .query_async(conn)
                    .await
                    .with_context(|| format!("TYPE {target}"))?;
                key_types.insert(target.to_string(), found);
            }
            Ok(if key_types[target] == "list" {
                Kind::List
            } else {
                Kind::Stream
            })
        }
        other => anyhow::bail!(
            "entry {} has {}{SOURCE_TYPE} = `{other}`; valid: stream, list or pubsub",
            entry.id,
            DEAD_LETTER_PREFIX
        ),
    }
}

/// The `payload` of a list item's or pub/sub message's dead letter: the
/// one value those sources carry.
fn payload<'a>(entry: &Message, fields: &[&'a Field]) -> Result<&'a [u8]> {
    fields
        .iter()
        .copied()
        .find(|field| field.0 == b"payload")
        .map(|field| field.1.as_slice())
        .with_context(|| {
            format!(
                "entry {} has no `payload` field to push or publish",
                entry.id
            )
        })
}

/// Removes every entry of the dead-letter stream (keeping the key and any
/// consumer groups on it). Returns how many were removed.
pub async fn purge(conn: &mut Conn, stream: &str) -> Result<usize> {
    redis::cmd("XTRIM")
        .arg(stream)
        .arg("MAXLEN")
        .arg(0)
        .query_async(conn)
        .await
        .context("XTRIM")
}

async fn range(
    conn: &mut Conn,
    stream: &str,
    from: &str,
    to: &str,
    count: usize,
) -> Result<Vec<Message>> {
    let reply: redis::Value = redis::cmd("XRANGE")
        .arg(stream)
        .arg(from)
        .arg(to)
        .arg("COUNT")
        .arg(count)
        .query_async(conn)
        .await?;
    Ok(parse_range(reply, stream))
}

/// A `sluice.`-prefixed field of a dead letter, as text.
fn meta(entry: &Message, name: &str) -> String {
    entry
        .fields
        .iter()
        .find(|(k, _)| k.strip_prefix(DEAD_LETTER_PREFIX.as_bytes()) == Some(name.as_bytes()))
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default()
}

/// The fields the message had before it was dead-lettered, in order.
fn original_fields(entry: &Message) -> Vec<&Field> {
    entry
        .fields
        .iter()
        .filter(|(k, _)| !k.starts_with(DEAD_LETTER_PREFIX.as_bytes()))
        .collect()
}
