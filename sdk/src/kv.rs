//! A small key-value store scoped to the pipeline, kept in Redis and shared
//! by every instance of its processors (across consumers and processes).
//!
//! For counters ([`incr`]), deduplication windows ([`set_new`] with a TTL)
//! and other small state. Each call is a
//! round trip to Redis; errors are the runtime's description of what failed
//! and usually deserve a [`Failure::retry`](crate::Failure::retry).
//!
//! ```no_run
//! use sluice_sdk::{Failure, kv};
//!
//! let seen = kv::incr("orders:seen", 1).map_err(Failure::retry)?;
//! if seen == 1 {
//!     kv::set("orders:first", b"yes").map_err(Failure::retry)?;
//! }
//! # Ok::<(), Failure>(())
//! ```

use crate::bindings::sluice::processor::kv;
use std::time::Duration;

/// The value stored at `key`, or `None` when there is none.
pub fn get(key: &str) -> Result<Option<Vec<u8>>, String> {
    kv::get(key)
}

/// Stores `value` at `key`, replacing any previous value; it stays until deleted.
pub fn set(key: &str, value: impl AsRef<[u8]>) -> Result<(), String> {
    kv::set(key, value.as_ref(), None)
}

/// Stores `value` at `key` for `ttl` (rounded down to milliseconds, at least
/// one), replacing any previous value.
pub fn set_with_ttl(key: &str, value: impl AsRef<[u8]>, ttl: Duration) -> Result<(), String> {
    kv::set(key, value.as_ref(), Some(ttl_ms(ttl)))
}

/// Stores `value` at `key` only if `key` holds nothing, for `ttl` if given;
/// returns whether it stored. Atomic across the pipeline's consumers and
/// processes: the first caller wins, which is what deduplication needs.
pub fn set_new(key: &str, value: impl AsRef<[u8]>, ttl: Option<Duration>) -> Result<bool, String> {
    kv::set_new(key, value.as_ref(), ttl.map(ttl_ms))
}

fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// Removes `key`; removing a missing key is not an error.
pub fn delete(key: &str) -> Result<(), String> {
    kv::delete(key)
}

/// Atomically adds `by` to the integer at `key` (missing counts as 0) and
/// returns the new value.
pub fn incr(key: &str, by: i64) -> Result<i64, String> {
    kv::incr(key, by)
}
