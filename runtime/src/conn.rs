//! Redis connections: reconnecting managers with timeouts that fit their use,
//! on a single server or a Redis Cluster.
//!
//! A cluster URL (`redis+cluster://h1:7000,h2:7000`, `rediss+cluster://...`)
//! names seed nodes; the cluster client learns the topology from them,
//! follows MOVED/ASK and refreshes the slot map after a failover. [`Conn`]
//! hides which kind it is, so command code is the same for both. Every
//! [`manager`] is its own set of sockets (one per node on a cluster): a
//! blocking read never queues behind, or in front of, other commands.

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::{ClusterClient, ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{Cmd, PushInfo, RedisFuture, RedisResult, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Longest pause between retries while Redis is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Longest a non-blocking command (XADD pipeline, XACK) may take before it
/// counts as failed. redis-rs defaults to 500 ms, too short for a pipelined
/// batch of large entries on a busy server.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// How long opening a socket to one node may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A Redis to connect to: one server, or a cluster known by its seeds.
#[derive(Clone)]
pub enum Client {
    /// One server (`redis://`, `rediss://`, `unix://`).
    Single(redis::Client),
    /// A Redis Cluster (`redis+cluster://`, `rediss+cluster://`), and the
    /// URLs of its seed nodes: pub/sub subscribes to nodes themselves.
    Cluster(Box<ClusterClient>, Arc<[String]>),
}

/// Opens a client for `url`, with the URL in the error.
pub fn client(url: &str) -> anyhow::Result<Client> {
    let opened = match cluster_seeds(url) {
        Some(seeds) => ClusterClientBuilder::new(seeds.clone())
            // Retries ride through MOVED/ASK and a failover's short gap;
            // a longer outage is the caller's to wait out.
            .retries(6)
            .build()
            .map(|c| Client::Cluster(Box::new(c), seeds.into())),
        None => redis::Client::open(url).map(Client::Single),
    };
    opened.map_err(|e| anyhow::anyhow!("invalid Redis URL {}: {e}", redact(url)))
}

/// True if `url` names a Redis Cluster.
pub fn is_cluster_url(url: &str) -> bool {
    cluster_seeds(url).is_some()
}

/// The seed node URLs of a cluster URL, None for any other URL:
/// `redis+cluster://user:pw@h1:7000,h2:7000/?x` gives
/// `redis://user:pw@h1:7000/?x` and `redis://user:pw@h2:7000/?x`.
fn cluster_seeds(url: &str) -> Option<Vec<String>> {
    let (scheme, auth, hosts, tail) = url_parts(url)?;
    let scheme = scheme.strip_suffix("+cluster")?;
    Some(
        hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(|host| format!("{scheme}://{auth}{host}{tail}"))
            .collect(),
    )
}

/// `url` as (scheme, `user:pw@` or empty, hosts, path and query).
fn url_parts(url: &str) -> Option<(&str, &str, &str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let (auth, rest) = match rest.rfind('@') {
        Some(at) if !rest[..at].contains('/') => (&rest[..=at], &rest[at + 1..]),
        _ => ("", rest),
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (hosts, tail) = rest.split_at(end);
    Some((scheme, auth, hosts, tail))
}

impl Client {
    /// True for a cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Client::Cluster(..))
    }

    /// One connection opened now, for short command-line work: fails if
    /// Redis cannot be reached.
    pub async fn connect(&self) -> RedisResult<Conn> {
        match self {
            Client::Single(c) => {
                let config = redis::AsyncConnectionConfig::new()
                    .set_response_timeout(Some(COMMAND_TIMEOUT))
                    .set_connection_timeout(Some(CONNECT_TIMEOUT));
                c.get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map(Conn::Direct)
            }
            Client::Cluster(c, _) => c
                .get_async_connection_with_config(cluster_config(COMMAND_TIMEOUT))
                .await
                .map(Conn::Cluster),
        }
    }

    /// A blocking connection (for code on a blocking thread), with
    /// `timeout` for connecting and for each reply.
    pub fn blocking(&self, timeout: Duration) -> RedisResult<BlockingConn> {
        match self {
            Client::Single(c) => {
                let conn = c.get_connection_with_timeout(timeout)?;
                conn.set_read_timeout(Some(timeout))?;
                conn.set_write_timeout(Some(timeout))?;
                Ok(BlockingConn::Single(conn))
            }
            Client::Cluster(c, _) => {
                let config = ClusterConfig::new()
                    .set_connection_timeout(timeout)
                    .set_response_timeout(timeout);
                Ok(BlockingConn::Cluster(Box::new(
                    c.get_connection_with_config(config)?,
                )))
            }
        }
    }

    /// The servers a plain (SUBSCRIBE) subscription may be opened on, in
    /// the order to try them: the server itself, or each seed of a cluster
    /// (a PUBLISH reaches every node of a cluster, so any one will do).
    pub fn subscription_nodes(&self) -> RedisResult<Vec<redis::Client>> {
        match self {
            Client::Single(c) => Ok(vec![c.clone()]),
            Client::Cluster(_, seeds) => seeds
                .iter()
                .map(|seed| redis::Client::open(seed.as_str()))
                .collect(),
        }
    }

    /// The node at `addr` (`host:port`, as CLUSTER SLOTS names it), with
    /// the seeds' credentials, TLS and options; for a single server, itself.
    pub fn node(&self, addr: &str) -> RedisResult<redis::Client> {
        match self {
            Client::Single(c) => Ok(c.clone()),
            Client::Cluster(_, seeds) => {
                let url = seeds
                    .first()
                    .and_then(|seed| url_parts(seed))
                    .map(|(scheme, auth, _, tail)| format!("{scheme}://{auth}{addr}{tail}"))
                    .ok_or_else(|| {
                        redis::RedisError::from((
                            redis::ErrorKind::InvalidClientConfig,
                            "a cluster URL without seeds",
                        ))
                    })?;
                redis::Client::open(url)
            }
        }
    }

    /// Which master serves each slot range of a cluster (CLUSTER SLOTS, as
    /// one master sees it); empty for a single server.
    pub async fn slot_masters(&self) -> RedisResult<Vec<SlotRange>> {
        let Client::Cluster(c, _) = self else {
            return Ok(Vec::new());
        };
        let mut conn = c
            .get_async_connection_with_config(cluster_config(COMMAND_TIMEOUT))
            .await?;
        let reply = conn
            .route_command(
                redis::cmd("CLUSTER").arg("SLOTS").clone(),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary),
            )
            .await?;
        // Each range: [first, last, [host, port, id, ...], replicas...].
        let ranges: Vec<Vec<Value>> = redis::from_redis_value(reply)?;
        let mut found = Vec::with_capacity(ranges.len());
        for range in ranges {
            let mut parts = range.into_iter();
            let (Some(first), Some(last), Some(master)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let master: Vec<Value> = redis::from_redis_value(master)?;
            let mut endpoint = master.into_iter();
            let (Some(host), Some(port)) = (endpoint.next(), endpoint.next()) else {
                continue;
            };
            let host: String = redis::from_redis_value(host)?;
            let port: u16 = redis::from_redis_value(port)?;
            found.push(SlotRange {
                first: redis::from_redis_value(first)?,
                last: redis::from_redis_value(last)?,
                // An IPv6 address goes in brackets in a URL.
                master: if host.contains(':') {
                    format!("[{host}]:{port}")
                } else {
                    format!("{host}:{port}")
                },
            });
        }
        Ok(found)
    }
}

/// Slots `first..=last` of a cluster, served by the master at `master`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotRange {
    /// First slot of the range.
    pub first: u16,
    /// Last slot of the range (included).
    pub last: u16,
    /// The master's `host:port`.
    pub master: String,
}

/// A RESP3 connection to `client`'s server whose push messages (pub/sub
/// messages, subscription changes, and a disconnection the library
/// notices) go to `pushes`: how a sharded (SSUBSCRIBE) subscription is
/// read, since redis-rs' `PubSub` has no SSUBSCRIBE.
pub async fn push_connection(
    client: &redis::Client,
    pushes: tokio::sync::mpsc::UnboundedSender<PushInfo>,
) -> RedisResult<MultiplexedConnection> {
    let info = client.get_connection_info().clone();
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(redis::ProtocolVersion::RESP3);
    let resp3 = redis::Client::open(info.set_redis_settings(settings))?;
    let config = redis::AsyncConnectionConfig::new()
        .set_response_timeout(Some(COMMAND_TIMEOUT))
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_push_sender(pushes);
    resp3
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

fn cluster_config(response_timeout: Duration) -> ClusterConfig {
    ClusterConfig::new()
        .set_connection_timeout(CONNECT_TIMEOUT)
        .set_response_timeout(response_timeout)
}

/// A connection that reconnects by itself (with exponential backoff) after
/// Redis drops it. Lazy: creating it never fails because Redis is down.
///
/// `response_timeout` must exceed any BLOCK the connection is used for:
/// a blocking XREADGROUP on a connection with a shorter timeout fails.
pub fn manager(client: &Client, response_timeout: Duration) -> RedisResult<Conn> {
    match client {
        Client::Single(c) => {
            let config = ConnectionManagerConfig::new()
                .set_response_timeout(Some(response_timeout))
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_min_delay(Duration::from_millis(50))
                .set_max_delay(Duration::from_secs(2))
                .set_number_of_retries(3);
            ConnectionManager::new_lazy_with_config(c.clone(), config).map(Conn::Manager)
        }
        Client::Cluster(c, _) => Ok(Conn::Cluster(
            c.get_pending_async_connection_with_config(cluster_config(response_timeout)),
        )),
    }
}

/// An async connection to a single server or a cluster; commands, pipelines
/// and scripts run on it unchanged. On a cluster each command goes to the
/// master of its key's slot, so a pipeline or script must keep to one slot.
#[derive(Clone)]
pub enum Conn {
    /// A reconnecting connection to one server.
    Manager(ConnectionManager),
    /// A plain connection to one server (command-line work).
    Direct(MultiplexedConnection),
    /// A cluster connection: per-node sockets, slot routing, MOVED/ASK.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Manager(c) => c.req_packed_command(cmd),
            Conn::Direct(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Manager(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Direct(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Manager(c) => c.get_db(),
            Conn::Direct(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl Conn {
    /// True on a cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Conn::Cluster(_))
    }

    /// Every key SCAN finds with `filter` (`MATCH p`, `TYPE t`), sorted and
    /// deduplicated. On a cluster each master is scanned in turn; with
    /// `slot_of`, only the master owning that key's slot (the keys sought
    /// share its hash tag).
    pub async fn scan(
        &mut self,
        filter: &[&str],
        slot_of: Option<&str>,
    ) -> RedisResult<Vec<String>> {
        let nodes: Vec<Option<SingleNodeRoutingInfo>> = match self {
            Conn::Cluster(c) => match slot_of {
                Some(key) => vec![Some(SingleNodeRoutingInfo::SpecificNode(Route::with_key(
                    key,
                    SlotAddr::Master,
                )))],
                // A node is reached through a slot it serves: routing by address
                // only finds nodes the connection already holds.
                None => master_slots(c)
                    .await?
                    .into_iter()
                    .map(|slot| {
                        Some(SingleNodeRoutingInfo::SpecificNode(Route::new(
                            slot,
                            SlotAddr::Master,
                        )))
                    })
                    .collect(),
            },
            _ => vec![None],
        };
        let mut keys: Vec<String> = Vec::new();
        for node in nodes {
            let mut cursor: u64 = 0;
            loop {
                let mut cmd = redis::cmd("SCAN");
                cmd.arg(cursor).arg(filter).arg("COUNT").arg(1000);
                let reply = match (&mut *self, &node) {
                    (Conn::Cluster(c), Some(node)) => {
                        c.route_command(cmd, RoutingInfo::SingleNode(node.clone()))
                            .await?
                    }
                    (conn, _) => conn.req_packed_command(&cmd).await?,
                };
                let (next, batch): (u64, Vec<String>) = redis::from_redis_value(reply)?;
                keys.extend(batch);
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        keys.sort();
        keys.dedup();
        Ok(keys)
    }
}

/// One slot of each master of the cluster that serves slots.
async fn master_slots(c: &mut ClusterConnection) -> RedisResult<Vec<u16>> {
    Ok(cluster_nodes(c)
        .await?
        .into_iter()
        .filter(|n| n.master)
        .filter_map(|n| n.ranges.first()?.split('-').next()?.parse().ok())
        .collect())
}

/// How often [`watch_topology`] asks a cluster for its masters.
const TOPOLOGY_POLL: Duration = Duration::from_secs(1);

/// Cluster URLs whose topology is watched in this process: one watcher
/// each, so a failover is one log line however many pipelines use it.
static WATCHED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Logs each change of a cluster's masters (a failover, a resharding)
/// once, until `cancel`. The cluster client rides through the change by
/// itself (MOVED, slot refresh, retries) and its own per-connection lines
/// are filtered out of the log ([`crate::logging`]); this is the one line
/// an operator sees. Does nothing for a single server; for a URL already
/// watched, waits to take over.
pub async fn watch_topology(client: Client, url: String, cancel: CancellationToken) {
    if !client.is_cluster() {
        return;
    }
    // One watcher per URL; the others wait to take over when it stops
    // (its pipeline removed or reloaded).
    loop {
        {
            let mut watched = WATCHED.lock().unwrap_or_else(|e| e.into_inner());
            if !watched.contains(&url) {
                watched.push(url.clone());
                break;
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(TOPOLOGY_POLL) => {}
        }
    }
    let redis = redact(&url);
    let mut known: Option<Vec<String>> = None;
    let mut conn = manager(&client, COMMAND_TIMEOUT).ok();
    loop {
        if let Some(Conn::Cluster(c)) = conn.as_mut() {
            match masters(c).await {
                Ok(None) => {}
                Ok(Some(now)) => {
                    if let Some(before) = known.as_ref()
                        && *before != now
                    {
                        info!(
                            redis,
                            before = %before.join(" "),
                            now = %now.join(" "),
                            "Redis Cluster masters changed"
                        );
                    }
                    known = Some(now);
                }
                Err(e) => tracing::debug!(redis, "reading the cluster's masters: {e}"),
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(TOPOLOGY_POLL) => {}
        }
    }
    WATCHED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|u| *u != url);
}

/// The masters serving slots, each as `host:port=first-last,...`, sorted;
/// None while some slots have no live master (a failover under way: the
/// change is logged once it is done, the outage meanwhile by its callers).
async fn masters(c: &mut ClusterConnection) -> RedisResult<Option<Vec<String>>> {
    let live: Vec<NodeLine> = cluster_nodes(c)
        .await?
        .into_iter()
        .filter(|n| n.master && !n.ranges.is_empty())
        .collect();
    let covered: u32 = live
        .iter()
        .flat_map(|n| &n.ranges)
        .map(|r| match r.split_once('-') {
            Some((lo, hi)) => match (lo.parse::<u32>(), hi.parse::<u32>()) {
                (Ok(lo), Ok(hi)) if hi >= lo => hi - lo + 1,
                _ => 0,
            },
            None => u32::from(r.parse::<u16>().is_ok()),
        })
        .sum();
    if covered != 16384 {
        return Ok(None);
    }
    let mut masters: Vec<String> = live
        .into_iter()
        .map(|n| format!("{}={}", n.addr, n.ranges.join(",")))
        .collect();
    masters.sort();
    Ok(Some(masters))
}

/// One line of CLUSTER NODES.
struct NodeLine {
    addr: String,
    master: bool,
    ranges: Vec<String>,
}

/// The cluster's nodes as one of them sees them (lines `<id> <ip:port@bus>
/// <flags> <master> <ping> <pong> <epoch> <link> <slot ranges...>`); a node
/// flagged as failing counts as no master.
async fn cluster_nodes(c: &mut ClusterConnection) -> RedisResult<Vec<NodeLine>> {
    let nodes: String = redis::from_redis_value(
        c.route_command(
            redis::cmd("CLUSTER").arg("NODES").clone(),
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary),
        )
        .await?,
    )?;
    Ok(nodes
        .lines()
        .filter_map(|line| {
            let parts: Vec<&str> = line.split_whitespace().collect();
            let flags = parts.get(2)?;
            let addr = parts.get(1)?.split(['@', ',']).next()?.to_string();
            Some(NodeLine {
                addr,
                master: flags.split(',').any(|f| f == "master") && !flags.contains("fail"),
                ranges: parts
                    .iter()
                    .skip(8)
                    .filter(|r| !r.starts_with('['))
                    .map(|r| r.to_string())
                    .collect(),
            })
        })
        .collect())
}

/// A blocking connection to a single server or a cluster.
pub enum BlockingConn {
    /// One server.
    Single(redis::Connection),
    /// A cluster.
    Cluster(Box<redis::cluster::ClusterConnection>),
}

impl BlockingConn {
    /// Runs `cmd`.
    pub fn query<T: redis::FromRedisValue>(&mut self, cmd: &Cmd) -> RedisResult<T> {
        match self {
            BlockingConn::Single(c) => cmd.query(c),
            BlockingConn::Cluster(c) => cmd.query(c.as_mut()),
        }
    }
}

/// The server's error code (`NOGROUP`, `OOM`, ...). redis-rs reports a
/// failed command of a pipeline as one "pipeline failure" whose own code is
/// empty for codes it does not know: look inside.
pub fn error_code(e: &redis::RedisError) -> Option<String> {
    if let Some(code) = e.code() {
        return Some(code.to_string());
    }
    let errors = e.clone().into_server_errors()?;
    errors.first().map(|(_, error)| error.code().to_string())
}

/// Whether `e` carries the server error code `code`.
pub fn has_code(e: &redis::RedisError, code: &str) -> bool {
    error_code(e).as_deref() == Some(code)
}

/// True for errors that mean "Redis is unreachable right now" rather than
/// "Redis refused this command": the former are retried after a backoff.
pub fn is_outage(e: &redis::RedisError) -> bool {
    // A server that is starting (LOADING its data), failing over, full
    // (OOM), unable to persist (MISCONF), short of replicas (NOREPLICAS),
    // busy with a script (BUSY) or asking to try again will serve again
    // soon: wait, do not fail the message.
    let transient = matches!(
        error_code(e).as_deref(),
        Some(
            "LOADING"
                | "TRYAGAIN"
                | "MASTERDOWN"
                | "CLUSTERDOWN"
                | "READONLY"
                | "OOM"
                | "MISCONF"
                | "NOREPLICAS"
                | "BUSY"
                | "NOMASTERLINK"
        )
    );
    transient
        || e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
}

/// A redacted form of `url` for logs: the password is never printed.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

/// Tracks one outage: logs its start once and its end once, and paces
/// retries with exponential backoff and jitter.
pub struct Outage {
    pipeline: String,
    /// The Redis it is about, redacted, when known: named in every line.
    redis: Option<String>,
    since: Option<Instant>,
    attempt: u32,
    /// Held during the outage: `/ready` reports the pipeline blocked.
    blocker: Option<crate::readiness::Blocker>,
    /// False for a sink's Redis: the sink reports its own backoff.
    reports_readiness: bool,
}

impl Outage {
    /// No outage yet.
    pub fn new(pipeline: &str) -> Self {
        Outage {
            pipeline: pipeline.to_string(),
            redis: None,
            since: None,
            attempt: 0,
            blocker: None,
            reports_readiness: true,
        }
    }

    /// No outage yet of the Redis a sink of `pipeline` writes to. Logged and
    /// counted for the pipeline; `/ready` hears of it from the sink
    /// (`sink_backoff`), not from here.
    pub fn of_sink(pipeline: &str) -> Self {
        Outage {
            reports_readiness: false,
            ..Outage::new(pipeline)
        }
    }

    /// No outage yet of the Redis at `url` (logged redacted).
    pub fn of(pipeline: &str, url: &str) -> Self {
        Outage {
            redis: Some(redact(url)),
            ..Outage::new(pipeline)
        }
    }

    /// Notes a failure; logs it once, when it starts an outage.
    pub fn failed(&mut self, e: &dyn std::fmt::Display, what: &str) {
        if self.since.is_none() {
            self.since = Some(Instant::now());
            metrics::counter!("sluice_redis_outages_total", "pipeline" => self.pipeline.clone())
                .increment(1);
            let redis = self.redis.as_deref().unwrap_or("");
            warn!(pipeline = %self.pipeline, redis, "Redis unavailable while {what}: {e}; retrying with backoff");
            self.blocker = self.reports_readiness.then(|| {
                crate::readiness::block(
                    &self.pipeline,
                    crate::readiness::Reason::RedisUnreachable,
                    format!("{redis} while {what}: {e}")
                        .trim_start()
                        .to_string(),
                )
            });
        }
    }

    /// Notes a success; logs the end of an outage.
    pub fn recovered(&mut self) {
        self.blocker = None;
        if let Some(since) = self.since.take() {
            let redis = self.redis.as_deref().unwrap_or("");
            info!(pipeline = %self.pipeline, redis, down_ms = since.elapsed().as_millis() as u64, "Redis reachable again");
        }
        self.attempt = 0;
    }

    /// The next backoff delay.
    pub fn next_delay(&mut self) -> Duration {
        self.attempt = self.attempt.saturating_add(1);
        let base = Duration::from_millis(50)
            .saturating_mul(1 << self.attempt.min(7))
            .min(MAX_BACKOFF);
        // Jitter (0-25%) keeps many consumers from reconnecting in lockstep.
        let jitter = std::hash::BuildHasher::hash_one(
            &std::collections::hash_map::RandomState::new(),
            Instant::now(),
        ) % 250;
        base + base * jitter as u32 / 1000
    }

    /// Sleeps the next backoff; false if cancelled meanwhile.
    pub async fn wait(&mut self, cancel: &CancellationToken) -> bool {
        let delay = self.next_delay();
        tokio::select! {
            _ = cancel.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_node_is_reached_with_the_seeds_credentials() {
        let cluster = client("redis+cluster://user:pw@h1:7000,h2:7001").unwrap();
        let seeds = cluster.subscription_nodes().unwrap();
        let addrs: Vec<String> = seeds
            .iter()
            .map(|c| c.get_connection_info().addr().to_string())
            .collect();
        assert_eq!(addrs, ["h1:7000", "h2:7001"]);
        for node in seeds
            .iter()
            .chain([&cluster.node("10.0.0.5:7002").unwrap()])
        {
            let settings = node.get_connection_info().redis_settings();
            assert_eq!(
                (settings.username(), settings.password()),
                (Some("user"), Some("pw"))
            );
        }
        let node = cluster.node("[::1]:7003").unwrap();
        assert_eq!(node.get_connection_info().addr().to_string(), "::1:7003");
    }
}
