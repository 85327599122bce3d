//! Redis connections: reconnecting managers with timeouts that fit their use.

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, RedisResult};
use std::time::Duration;

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

/// True for errors that mean "Redis is unreachable right now" rather than
/// "Redis refused this command": the former are retried after a backoff.
pub fn is_outage(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout()
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
