//! Redis connections: reconnecting managers with timeouts that fit their use.

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, RedisResult};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Longest pause between retries while Redis is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Longest a non-blocking command (XADD pipeline, XACK) may take before it
/// counts as failed. redis-rs defaults to 500 ms, too short for a pipelined
/// batch of large entries on a busy server.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens a client for `url`, with the URL in the error.
pub fn client(url: &str) -> anyhow::Result<Client> {
    Client::open(url).map_err(|e| anyhow::anyhow!("invalid Redis URL {url}: {e}"))
}

/// A connection that reconnects by itself (with exponential backoff) after
/// Redis drops it. Lazy: creating it never fails because Redis is down.
///
/// `response_timeout` must exceed any BLOCK the connection is used for:
/// a blocking XREADGROUP on a connection with a shorter timeout fails.
pub fn manager(client: &Client, response_timeout: Duration) -> RedisResult<ConnectionManager> {
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(response_timeout))
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_secs(2))
        .set_number_of_retries(3);
    ConnectionManager::new_lazy_with_config(client.clone(), config)
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
