//! `sluice status`: what is waiting and what is in flight, per source, with
//! what operators ask for: lag, pending, the age of the oldest pending
//! entry, consumers and their idle time, and the dead-letter backlog.
//!
//! Without pipeline files it reports what a Redis shows by itself: every
//! consumer group of every stream, and every list queue that sluice
//! consumers hold (found by their heartbeat and processing-list keys).
//! Pub/sub leaves nothing in Redis, so pub/sub pipelines are reported only
//! from their pipeline files ([`collect_pipelines`]).

use crate::config::{Pipeline, SourceType};
use crate::conn::Conn;
use crate::message::stream_id_ms;
use crate::source::list::{Keys, glob_escape};
use anyhow::Result;
use redis::Value;
use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

/// One source as reported: a stream's consumer group, a list queue, or a
/// pub/sub pipeline's channels (and as `status --json` prints it).
#[derive(Debug, Default, serde::Serialize)]
pub struct Row {
    /// The pipeline, when known from its file.
    pub pipeline: Option<String>,
    /// `stream`, `list` or `pubsub`.
    pub kind: &'static str,
    /// Stream key, list key, or the channels and patterns.
    pub source: String,
    /// Consumer group (streams only).
    pub group: Option<String>,
    /// Not yet delivered: the group's lag (Redis 7 `lag`; None if unknown),
    /// or the items waiting in a list.
    pub lag: Option<i64>,
    /// Delivered but not settled: pending entries, or items in processing
    /// lists. None for pub/sub, which keeps nothing.
    pub pending: Option<i64>,
    /// Age of the oldest pending entry, from its id, in ms (streams).
    pub oldest_pending_ms: Option<u64>,
    /// How many consume it: group consumers, live list consumers, or
    /// subscribers to the channels (any client, not only sluice).
    pub consumer_count: usize,
    /// Consumers by name, with what is known of them (idle time); in JSON
    /// `[{"name": ..., "state": ...}]`.
    #[serde(serialize_with = "consumers_json")]
    pub consumers: Vec<(String, String)>,
    /// Length of the dead-letter stream, if it exists.
    pub dead_letters: Option<i64>,
    /// Per processor, the plugin versions that served, as the running
    /// process last recorded them (see [`crate::plugin::rollout::publish`]);
    /// only for pipelines named on the command line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub versions: Option<serde_json::Value>,
}

/// Past this many streams, `status` shows its progress on a terminal.
const MANY_STREAMS: usize = 50;

/// What a Redis shows by itself: every group on every stream, and the list
/// queues sluice consumers hold.
pub async fn collect(conn: &mut Conn) -> Result<Vec<Row>> {
    let streams = scan(conn, &["TYPE", "stream"]).await?;
    let mut out = Vec::new();
    // Only worth a bar when there are many (and never for a handful under --watch).
    let progress = (streams.len() > MANY_STREAMS)
        .then(|| crate::progress::Progress::new(streams.len() as u64, "reading groups"));
    for stream in &streams {
        if let Some(progress) = &progress {
            progress.advance(1);
        }
        let dead = format!("{stream}:dead");
        let dead = streams.contains(&dead).then_some(dead);
        out.extend(stream_groups(conn, stream, None, dead.as_deref()).await?);
    }
    let mut lists = BTreeSet::new();
    for pattern in ["*:consumer:*", "*:processing:*"] {
        for key in scan(conn, &["MATCH", pattern]).await? {
            if let Some(list) = list_of(&key) {
                lists.insert(list);
            }
        }
    }
    for list in lists {
        let dead = format!("{list}:dead");
        out.push(list_queue(conn, &list, &dead).await?);
    }
    Ok(out)
}

/// The sources of `pipelines`, each read on its own Redis (`default_url`
/// for pipelines that name none).
pub async fn collect_pipelines(pipelines: &[Pipeline], default_url: &str) -> Result<Vec<Row>> {
    let mut out = Vec::new();
    for p in pipelines {
        let url = p.redis_url.as_deref().unwrap_or(default_url);
        let client = crate::conn::client(url)?;
        let mut conn = client.connect().await.map_err(|e| {
            anyhow::anyhow!(
                "pipeline `{}`: cannot reach Redis at {}: {e}",
                p.name,
                crate::conn::redact(url)
            )
        })?;
        let mut rows = match p.source.kind {
            SourceType::Stream => {
                let mut rows = Vec::new();
                for stream in p.streams() {
                    let dead = p.dead_letter_for(stream);
                    let groups = stream_groups(&mut conn, stream, Some(p.group()), Some(&dead));
                    let mut found = groups.await?;
                    if found.is_empty() {
                        // Not started yet: say so rather than leave the pipeline out.
                        found.push(Row {
                            kind: "stream",
                            source: stream.clone(),
                            group: Some(format!("{} (not created yet)", p.group())),
                            dead_letters: xlen(&mut conn, &dead).await?,
                            ..Row::default()
                        });
                    }
                    rows.extend(found);
                }
                rows
            }
            SourceType::List => {
                let list = p.source.list.as_deref().unwrap_or_default();
                vec![list_queue(&mut conn, list, p.dead_letter()).await?]
            }
            SourceType::Pubsub => vec![pubsub(&mut conn, p).await?],
        };
        let versions: Option<String> = redis::cmd("GET")
            .arg(crate::plugin::rollout::versions_key(&p.name))
            .query_async(&mut conn)
            .await?;
        let versions = versions.and_then(|v| serde_json::from_str(&v).ok());
        for row in &mut rows {
            row.pipeline = Some(p.name.clone());
            row.versions = versions.clone();
        }
        out.extend(rows);
    }
    Ok(out)
}

/// Every key the SCAN `filter` (`TYPE t` or `MATCH p`) finds, sorted; on
/// a cluster, on every master.
async fn scan(conn: &mut Conn, filter: &[&str]) -> Result<Vec<String>> {
    Ok(conn.scan(filter, None).await?)
}

/// The queue a list consumer's key belongs to: `{jobs}:consumer:c` -> `jobs`
/// (see [`Keys`]); a queue that has a hash tag of its own keeps it.
fn list_of(key: &str) -> Option<String> {
    let prefix = [":consumer:", ":processing:"]
        .iter()
        .find_map(|marker| key.rfind(marker).map(|at| &key[..at]))?;
    let list = match prefix.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
        Some(inner) if !inner.contains(['{', '}']) => inner,
        _ => prefix,
    };
    // Only keys that are really this queue's: sluice would have named them so.
    (Keys::new(list).heartbeat("x") == format!("{prefix}:consumer:x")).then(|| list.to_string())
}

/// The groups of `stream` (only `only`, if given), with `dead` as their
/// dead-letter stream.
async fn stream_groups(
    conn: &mut Conn,
    stream: &str,
    only: Option<&str>,
    dead: Option<&str>,
) -> Result<Vec<Row>> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let exists: bool = redis::cmd("EXISTS").arg(stream).query_async(conn).await?;
    if !exists {
        return Ok(Vec::new());
    }
    let groups: Vec<HashMap<String, Value>> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(conn)
        .await?;
    let dead_letters = match dead {
        Some(dead) => xlen(conn, dead).await?,
        None => None,
    };
    let mut out = Vec::new();
    for g in groups {
        let group = text(g.get("name"));
        if only.is_some_and(|only| only != group) {
            continue;
        }
        let consumers: Vec<HashMap<String, Value>> = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(stream)
            .arg(&group)
            .query_async(conn)
            .await?;
        let summary: Value = redis::cmd("XPENDING")
            .arg(stream)
            .arg(&group)
            .query_async(conn)
            .await?;
        let (pending, oldest) = match summary {
            Value::Array(parts) if parts.len() >= 2 => (
                int(parts.first()).unwrap_or(0),
                Some(text(parts.get(1))).filter(|s| !s.is_empty()),
            ),
            _ => (0, None),
        };
        out.push(Row {
            kind: "stream",
            source: stream.to_string(),
            lag: int(g.get("lag")),
            pending: Some(pending),
            oldest_pending_ms: oldest.map(|id| now.saturating_sub(stream_id_ms(&id))),
            consumer_count: consumers.len(),
            consumers: consumers
                .iter()
                .map(|c| {
                    let idle = int(c.get("idle")).unwrap_or(0);
                    (text(c.get("name")), format!("idle {}", seconds(idle)))
                })
                .collect(),
            dead_letters,
            group: Some(group),
            ..Row::default()
        });
    }
    Ok(out)
}

/// A list queue: items waiting, items held by consumers, live consumers.
async fn list_queue(conn: &mut Conn, list: &str, dead: &str) -> Result<Row> {
    let keys = Keys::new(list);
    let waiting: i64 = redis::cmd("LLEN").arg(list).query_async(conn).await?;
    let held_prefix = keys.processing("");
    let mut pending = 0;
    for key in scan(conn, &["MATCH", &format!("{}*", glob_escape(&held_prefix))]).await? {
        let n: i64 = redis::cmd("LLEN").arg(&key).query_async(conn).await?;
        pending += n;
    }
    let live_prefix = keys.heartbeat("");
    let consumers: Vec<(String, String)> =
        scan(conn, &["MATCH", &format!("{}*", glob_escape(&live_prefix))])
            .await?
            .into_iter()
            .map(|key| (key[live_prefix.len()..].to_string(), "alive".to_string()))
            .collect();
    Ok(Row {
        kind: "list",
        source: list.to_string(),
        lag: Some(waiting),
        pending: Some(pending),
        consumer_count: consumers.len(),
        consumers,
        dead_letters: xlen(conn, dead).await?,
        ..Row::default()
    })
}

/// A pub/sub pipeline: its channels and patterns, and how many listen.
async fn pubsub(conn: &mut Conn, p: &Pipeline) -> Result<Row> {
    let channels = p.source.channels.clone().unwrap_or_default();
    let patterns = p.source.patterns.clone().unwrap_or_default();
    let mut subscribers = 0;
    if !channels.is_empty() {
        // Sharded subscriptions are counted apart from plain ones.
        let numsub = if p.source.sharded == Some(true) {
            "SHARDNUMSUB"
        } else {
            "NUMSUB"
        };
        let counts: Vec<(String, i64)> = redis::cmd("PUBSUB")
            .arg(numsub)
            .arg(&channels)
            .query_async(conn)
            .await?;
        subscribers = counts.iter().map(|(_, n)| *n as usize).max().unwrap_or(0);
    }
    if !patterns.is_empty() {
        // Redis counts pattern subscriptions only in total, over all patterns.
        let n: i64 = redis::cmd("PUBSUB").arg("NUMPAT").query_async(conn).await?;
        subscribers = subscribers.max(n as usize);
    }
    let source = channels
        .iter()
        .cloned()
        .chain(patterns.iter().map(|p| format!("{p} (pattern)")))
        .collect::<Vec<_>>()
        .join(", ");
    Ok(Row {
        kind: "pubsub",
        source,
        consumer_count: subscribers,
        dead_letters: xlen(conn, p.dead_letter()).await?,
        ..Row::default()
    })
}

/// XLEN of `stream`, None if it does not exist.
async fn xlen(conn: &mut Conn, stream: &str) -> Result<Option<i64>> {
    let exists: bool = redis::cmd("EXISTS").arg(stream).query_async(conn).await?;
    Ok(if exists {
        Some(redis::cmd("XLEN").arg(stream).query_async(conn).await?)
    } else {
        None
    })
}

/// Prints `rows` as a table whose columns are as wide as their widest
/// value, so long stream and group names do not push columns apart. The
/// PIPELINE column appears when rows come from pipeline files.
pub fn print(rows: &[Row], out: &mut impl Write) -> std::io::Result<()> {
    let opt = |v: Option<i64>| v.map_or("-".to_string(), |v| v.to_string());
    let with_pipeline = rows.iter().any(|r| r.pipeline.is_some());
    let mut table: Vec<Vec<String>> = vec![
        [
            "PIPELINE",
            "TYPE",
            "SOURCE",
            "GROUP",
            "LAG",
            "PENDING",
            "OLDEST",
            "CONSUMERS",
            "DEAD",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for r in rows {
        table.push(vec![
            r.pipeline.clone().unwrap_or_else(|| "-".into()),
            r.kind.to_string(),
            r.source.clone(),
            r.group.clone().unwrap_or_else(|| "-".into()),
            opt(r.lag),
            opt(r.pending),
            r.oldest_pending_ms
                .map_or("-".to_string(), |ms| seconds(ms as i64)),
            r.consumer_count.to_string(),
            opt(r.dead_letters),
        ]);
    }
    let skip = usize::from(!with_pipeline);
    let widths: Vec<usize> = (0..table[0].len())
        .map(|c| {
            table
                .iter()
                .map(|row| row[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for (k, row) in table.iter().enumerate() {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate().skip(skip) {
            let pad = widths[c] - cell.chars().count();
            // Text columns left-aligned, numbers right-aligned.
            if c <= 3 {
                line.push_str(cell);
                line.push_str(&" ".repeat(pad));
            } else {
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            }
            line.push_str("  ");
        }
        writeln!(out, "{}", line.trim_end())?;
        if k > 0 {
            for (name, detail) in &rows[k - 1].consumers {
                writeln!(out, "    consumer {name}  {detail}")?;
            }
            for line in versions_lines(rows[k - 1].versions.as_ref()) {
                writeln!(out, "    {line}")?;
            }
        }
    }
    Ok(())
}

/// One line per processor: the versions that served, oldest first, each as
/// `<hash> <how> <age> ago`, then what is on trial or was rolled back.
fn versions_lines(versions: Option<&serde_json::Value>) -> Vec<String> {
    let Some(serde_json::Value::Array(stages)) = versions else {
        return Vec::new();
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let short = |v: &serde_json::Value| v.as_str().map(|h| h[..h.len().min(12)].to_string());
    stages
        .iter()
        .map(|s| {
            let history: Vec<String> = s["history"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|v| {
                    format!(
                        "{} {} {} ago",
                        short(&v["hash"]).unwrap_or_default(),
                        v["how"].as_str().unwrap_or_default(),
                        seconds(now - v["since_ms"].as_i64().unwrap_or(now))
                    )
                })
                .collect();
            let mut line = format!("stage {}: {}", s["stage"], history.join(" -> "));
            if let Some(c) = short(&s["candidate"]) {
                line.push_str(&format!(
                    "; {} on trial ({})",
                    c,
                    s["rollout"].as_str().unwrap_or_default()
                ));
            }
            if let Some(r) = short(&s["refused"]) {
                line.push_str(&format!("; {r} rolled back"));
            }
            line
        })
        .collect()
}

fn seconds(ms: i64) -> String {
    format!("{:.1}s", ms as f64 / 1000.0)
}

fn text(v: Option<&Value>) -> String {
    match v {
        Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
        Some(Value::SimpleString(s)) => s.clone(),
        _ => String::new(),
    }
}

fn int(v: Option<&Value>) -> Option<i64> {
    match v {
        Some(Value::Int(i)) => Some(*i),
        Some(Value::BulkString(b)) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

fn consumers_json<S: serde::Serializer>(
    consumers: &[(String, String)],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(
        consumers
            .iter()
            .map(|(name, state)| serde_json::json!({"name": name, "state": state})),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_keys_name_their_queue() {
        assert_eq!(list_of("{jobs}:consumer:host-0").as_deref(), Some("jobs"));
        assert_eq!(
            list_of("{jobs}:processing:host-0.1").as_deref(),
            Some("jobs")
        );
        assert_eq!(
            list_of("{app}jobs:consumer:c1").as_deref(),
            Some("{app}jobs")
        );
        assert_eq!(list_of("session:consumer:x"), None, "not a sluice key");
    }

    #[test]
    fn columns_fit_the_longest_value() {
        let row = |source: &str| Row {
            kind: "stream",
            source: source.into(),
            group: Some("g".into()),
            lag: Some(1),
            pending: Some(22),
            consumer_count: 1,
            ..Row::default()
        };
        let mut out = Vec::new();
        print(
            &[
                row("a"),
                row("a-very-long-stream-name-that-used-to-push-columns"),
            ],
            &mut out,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        let at: Vec<Option<usize>> = text.lines().map(|l| l.find(" g ")).collect();
        assert!(at.len() == 3 && at[1] == at[2] && at[1].is_some(), "{text}");
    }
}
