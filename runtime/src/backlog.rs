//! The backlog a consumer group is left with when a pipeline stops reading
//! it.
//!
//! A stream pipeline reads through its group (`group`, default: the
//! pipeline name). An edit that changes `group`, `stream`, the pipeline name
//! behind a default group, or the Redis URL makes the new version read
//! through a group that is created at `start` (default `$`: new entries
//! only), and nothing reads the old group any more: its pending entries are
//! never retried and entries it had not read yet are never read by this
//! pipeline. Sluice cannot tell a deliberate move from a typo, so it warns
//! with the numbers: at reload ([`left_behind`], [`describe`]) and in
//! `sluice validate --redis` ([`check_new_groups`]).

use crate::config::{Pipeline, SourceType};
use anyhow::{Context as _, Result};
use redis::aio::ConnectionLike;
use redis::streams::StreamInfoGroupsReply;
use std::time::Duration;

/// How long a backlog lookup may take: it only feeds a warning, and must
/// not hold up a reload while Redis is slow or down.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// A consumer group's work that nobody will do if nothing reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backlog {
    /// Entries delivered to the group and never acked.
    pub pending: usize,
    /// Entries the group has not read yet; None when Redis cannot tell
    /// (after deletions or trims past the group's position).
    pub lag: Option<usize>,
}

/// A group a stream pipeline reads: Redis URL, stream, group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRef {
    /// The Redis the stream lives on.
    pub url: String,
    /// The stream key.
    pub stream: String,
    /// The consumer group.
    pub group: String,
}

/// The groups `p` reads (none unless it has a stream source); `default_url`
/// for a file that names no Redis.
pub fn groups(p: &Pipeline, default_url: &str) -> Vec<GroupRef> {
    if p.source.kind != SourceType::Stream {
        return Vec::new();
    }
    let url = p.redis_url.as_deref().unwrap_or(default_url);
    p.streams()
        .iter()
        .map(|stream| GroupRef {
            url: url.to_string(),
            stream: stream.clone(),
            group: p.group().to_string(),
        })
        .collect()
}

/// The groups `old` read that `new` no longer reads.
pub fn left_behind(old: &Pipeline, new: &Pipeline, default_url: &str) -> Vec<GroupRef> {
    let kept = groups(new, default_url);
    groups(old, default_url)
        .into_iter()
        .filter(|g| !kept.contains(g))
        .collect()
}

/// The backlog of `group` on `stream`; None if the stream or the group does
/// not exist.
pub async fn of(
    conn: &mut impl ConnectionLike,
    stream: &str,
    group: &str,
) -> redis::RedisResult<Option<Backlog>> {
    let kind: String = redis::cmd("TYPE").arg(stream).query_async(conn).await?;
    if kind != "stream" {
        return Ok(None);
    }
    let reply: StreamInfoGroupsReply = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(stream)
        .query_async(conn)
        .await?;
    Ok(reply
        .groups
        .into_iter()
        .find(|g| g.name == group)
        .map(|g| Backlog {
            pending: g.pending,
            lag: g.lag,
        }))
}

/// Looks up the backlog of `g` on its Redis, within [`LOOKUP_TIMEOUT`].
pub async fn describe(g: &GroupRef) -> Result<Option<Backlog>> {
    let lookup = async {
        let client = crate::conn::client(&g.url)?;
        let mut conn = client.connect().await?;
        Ok::<_, anyhow::Error>(of(&mut conn, &g.stream, &g.group).await?)
    };
    tokio::time::timeout(LOOKUP_TIMEOUT, lookup)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {LOOKUP_TIMEOUT:?}"))?
}

/// What `sluice validate --redis` can tell before `p` runs: for each of its
/// streams whose group does not exist yet, the entries a `$` start skips
/// and the other groups' backlogs (one of them may be the group this
/// pipeline used to read). One warning per stream; none when the group
/// exists or the stream is empty and has no groups.
pub async fn check_new_groups(p: &Pipeline, default_url: &str) -> Result<Vec<String>> {
    let mut warnings = Vec::new();
    for g in groups(p, default_url) {
        let check = async {
            let client = crate::conn::client(&g.url)?;
            let mut conn = client.connect().await?;
            let kind: String = redis::cmd("TYPE")
                .arg(&g.stream)
                .query_async(&mut conn)
                .await?;
            if kind != "stream" {
                return Ok::<_, anyhow::Error>(None);
            }
            let entries: usize = redis::cmd("XLEN")
                .arg(&g.stream)
                .query_async(&mut conn)
                .await?;
            let reply: StreamInfoGroupsReply = redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(&g.stream)
                .query_async(&mut conn)
                .await?;
            Ok(Some((entries, reply.groups)))
        };
        let found = tokio::time::timeout(LOOKUP_TIMEOUT, check)
            .await
            .map_err(|_| anyhow::anyhow!("no answer within {LOOKUP_TIMEOUT:?}"))
            .and_then(|r| r)
            .with_context(|| {
                format!(
                    "cannot check stream `{}` on {}",
                    g.stream,
                    crate::conn::redact(&g.url)
                )
            })?;
        let Some((entries, existing)) = found else {
            continue;
        };
        if existing.iter().any(|e| e.name == g.group) {
            continue;
        }
        let others: Vec<String> = existing
            .iter()
            .map(|e| {
                format!(
                    "`{}` (pending {}, lag {})",
                    e.name,
                    e.pending,
                    lag_text(e.lag)
                )
            })
            .collect();
        let mut warning = format!(
            "group `{}` does not exist on stream `{}` yet; it will be created at start = \"{}\"",
            g.group, g.stream, p.source.start
        );
        if p.source.start == "$" && entries > 0 {
            warning += &format!(", so the {entries} entries already in the stream are not read");
        }
        if !others.is_empty() {
            warning += &format!(
                ". Other groups on the stream: {}; if this pipeline used to read one of them (a changed `group`, `stream` or pipeline name), nothing reads that group's backlog any more",
                others.join(", ")
            );
        }
        if entries > 0 || !others.is_empty() {
            warnings.push(warning);
        }
    }
    Ok(warnings)
}

/// A lag for logs: the number, or `unknown`.
pub fn lag_text(lag: Option<usize>) -> String {
    lag.map_or_else(|| "unknown".to_string(), |l| l.to_string())
}
