//! A pub/sub source's subscription: where it is opened, and how it ends.
//!
//! Plain channels and patterns (SUBSCRIBE/PSUBSCRIBE) take one connection:
//! to the server, or on a Redis Cluster to any one node, since a PUBLISH
//! is broadcast to every node over the cluster bus. The nodes tried are the
//! cluster's seeds, in turn from the one after the last session's, so a
//! node that is down, or whose session was lost, is passed over.
//!
//! Sharded channels (SSUBSCRIBE, Redis 7) are served by the master owning
//! the channel's slot: one connection per master, the channels grouped by
//! their slot's owner from CLUSTER SLOTS, read afresh for every session.
//! When a slot moves (a failover, a resharding), its old owner ends the
//! subscription with an `sunsubscribe` push, or its connection dies;
//! either ends the session, and the next one finds the new owner. They are
//! RESP3 connections whose push messages carry the messages, one
//! SSUBSCRIBE per channel (the connection matches one reply to each).
//!
//! A subscription can die without a word: a half-open link (a NAT or
//! firewall that dropped the flow, a peer that vanished) delivers nothing
//! and never closes, while Redis still counts the subscriber. Every
//! connection is therefore PINGed every [`KEEPALIVE_EVERY`]; an error or
//! no answer within [`KEEPALIVE_TIMEOUT`] ends the session, like a closed
//! connection does.

use crate::config::SourceConfig;
use crate::config::cluster::slot;
use crate::conn::{self, Client};
use futures::StreamExt;
use redis::{PushInfo, PushKind, RedisError, RedisResult};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::debug;

/// How often each subscription connection is checked with a PING.
const KEEPALIVE_EVERY: Duration = Duration::from_secs(5);

/// How long a PING may go unanswered before the link counts as dead. Also
/// covers a server stalled that long, which is worth a new connection too.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a subscription ended.
#[derive(Debug)]
pub(super) enum SessionEnd {
    /// The connection closed (Redis restarted, CLIENT KILL, a reset).
    Closed,
    /// A PING got an error.
    PingFailed(RedisError),
    /// A PING got no answer in time: a silent (half-open) link.
    Unanswered,
    /// Redis dropped the sharded subscription to this channel: its slot
    /// moved to another master.
    Unsubscribed(String),
}

impl std::fmt::Display for SessionEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionEnd::Closed => f.write_str("connection closed"),
            SessionEnd::PingFailed(e) => write!(f, "PING failed: {e}"),
            SessionEnd::Unanswered => write!(
                f,
                "PING unanswered for {} ms",
                KEEPALIVE_TIMEOUT.as_millis()
            ),
            SessionEnd::Unsubscribed(channel) => write!(
                f,
                "Redis ended the sharded subscription to `{channel}` (its slot moved)"
            ),
        }
    }
}

/// One subscription, on one or more connections, until it ends.
pub(super) struct Session {
    inbox: Inbox,
    /// One PING loop per connection; the first to end ends the session.
    /// Dropping the session stops them, and with them the connections.
    keepalives: JoinSet<SessionEnd>,
}

/// Where a session's messages arrive.
enum Inbox {
    /// SUBSCRIBE/PSUBSCRIBE messages of the one connection.
    Plain(redis::aio::PubSubStream),
    /// Push messages of every sharded connection: messages, subscription
    /// changes, disconnections.
    Sharded(mpsc::UnboundedReceiver<PushInfo>),
}

impl Session {
    /// The next message, or why the session ended.
    pub(super) async fn next(&mut self) -> Result<redis::Msg, SessionEnd> {
        let Session { inbox, keepalives } = self;
        tokio::select! {
            end = keepalives.join_next() => Err(end.and_then(Result::ok).unwrap_or(SessionEnd::Closed)),
            msg = inbox.next() => msg,
        }
    }
}

impl Inbox {
    async fn next(&mut self) -> Result<redis::Msg, SessionEnd> {
        match self {
            Inbox::Plain(stream) => stream.next().await.ok_or(SessionEnd::Closed),
            Inbox::Sharded(pushes) => loop {
                let push = pushes.recv().await.ok_or(SessionEnd::Closed)?;
                match push.kind {
                    PushKind::SMessage => {
                        if let Some(msg) = redis::Msg::from_push_info(push) {
                            return Ok(msg);
                        }
                    }
                    PushKind::SUnsubscribe => {
                        let channel = push
                            .data
                            .into_iter()
                            .next()
                            .and_then(|c| redis::from_redis_value::<Vec<u8>>(c).ok())
                            .unwrap_or_default();
                        return Err(SessionEnd::Unsubscribed(
                            String::from_utf8_lossy(&channel).into_owned(),
                        ));
                    }
                    PushKind::Disconnection => return Err(SessionEnd::Closed),
                    // Our own SSUBSCRIBEs' confirmations.
                    _ => {}
                }
            },
        }
    }
}

/// Subscribes `source`'s channels and patterns. `turn` picks where a plain
/// subscription starts looking (the caller moves it on after a lost
/// session) and is left at the node that answered.
pub(super) async fn open(
    client: &Client,
    source: &SourceConfig,
    turn: &mut usize,
) -> RedisResult<Session> {
    let channels = source.channels.as_deref().unwrap_or_default();
    if source.sharded == Some(true) {
        let opened = tokio::time::timeout(conn::COMMAND_TIMEOUT, sharded(client, channels)).await;
        return opened.unwrap_or_else(|_| Err(timed_out()));
    }
    let patterns = source.patterns.as_deref().unwrap_or_default();
    let nodes = client.subscription_nodes()?;
    let mut failed = None;
    for i in 0..nodes.len() {
        let at = (*turn + i) % nodes.len();
        let node = &nodes[at];
        let opened =
            tokio::time::timeout(conn::COMMAND_TIMEOUT, plain(node, channels, patterns)).await;
        match opened.unwrap_or_else(|_| Err(timed_out())) {
            Ok(session) => {
                *turn = at;
                debug!(node = %node.get_connection_info().addr(), "subscribed");
                return Ok(session);
            }
            Err(e) => {
                debug!(node = %node.get_connection_info().addr(), "cannot subscribe here: {e}");
                failed = Some(e);
            }
        }
    }
    Err(failed.unwrap_or_else(timed_out))
}

fn timed_out() -> RedisError {
    RedisError::from((redis::ErrorKind::Io, "subscribing timed out"))
}

/// SUBSCRIBE and PSUBSCRIBE on one connection to `node`.
async fn plain(
    node: &redis::Client,
    channels: &[String],
    patterns: &[String],
) -> RedisResult<Session> {
    let mut pubsub = node.get_async_pubsub().await?;
    for channel in channels {
        pubsub.subscribe(channel).await?;
    }
    for pattern in patterns {
        pubsub.psubscribe(pattern).await?;
    }
    let (sink, stream) = pubsub.split();
    let mut keepalives = JoinSet::new();
    keepalives.spawn(keepalive(Pinger::Plain(sink)));
    Ok(Session {
        inbox: Inbox::Plain(stream),
        keepalives,
    })
}

/// SSUBSCRIBE to each channel on the master owning its slot (on a single
/// server, on it).
async fn sharded(client: &Client, channels: &[String]) -> RedisResult<Session> {
    let owners = client.slot_masters().await?;
    let mut by_node: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for channel in channels {
        let node = if client.is_cluster() {
            let slot = slot(channel.as_bytes());
            owners
                .iter()
                .find(|r| (r.first..=r.last).contains(&slot))
                .map(|r| r.master.clone())
                .ok_or_else(|| {
                    RedisError::from((
                        redis::ErrorKind::Io,
                        "no master serves the slot of a channel",
                        format!("slot {slot} of `{channel}`"),
                    ))
                })?
        } else {
            String::new()
        };
        by_node.entry(node).or_default().push(channel);
    }
    let (pushes, inbox) = mpsc::unbounded_channel();
    let mut keepalives = JoinSet::new();
    for (node, channels) in by_node {
        let mut conn = conn::push_connection(&client.node(&node)?, pushes.clone()).await?;
        for channel in &channels {
            redis::cmd("SSUBSCRIBE")
                .arg(channel)
                .query_async::<()>(&mut conn)
                .await?;
        }
        debug!(node, ?channels, "sharded subscription");
        keepalives.spawn(keepalive(Pinger::Push(conn)));
    }
    Ok(Session {
        inbox: Inbox::Sharded(inbox),
        keepalives,
    })
}

/// A subscription connection's way to PING.
enum Pinger {
    Plain(redis::aio::PubSubSink),
    Push(redis::aio::MultiplexedConnection),
}

impl Pinger {
    async fn ping(&mut self) -> RedisResult<redis::Value> {
        match self {
            Pinger::Plain(sink) => sink.ping().await,
            Pinger::Push(conn) => redis::cmd("PING").query_async(conn).await,
        }
    }
}

/// PINGs every [`KEEPALIVE_EVERY`] until a PING fails or goes unanswered,
/// and says why.
async fn keepalive(mut pinger: Pinger) -> SessionEnd {
    loop {
        tokio::time::sleep(KEEPALIVE_EVERY).await;
        match tokio::time::timeout(KEEPALIVE_TIMEOUT, pinger.ping()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) if e.is_connection_dropped() || e.is_io_error() => {
                return SessionEnd::Closed;
            }
            Ok(Err(e)) => return SessionEnd::PingFailed(e),
            Err(_) => return SessionEnd::Unanswered,
        }
    }
}
