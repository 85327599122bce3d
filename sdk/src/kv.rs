//! A small key-value store scoped to the pipeline, kept in Redis and shared
//! by every instance of its processors (across consumers and processes).
//!
//! For counters, deduplication windows and other small state. Each call is a
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

/// The value stored at `key`, or `None` when there is none.
pub fn get(key: &str) -> Result<Option<Vec<u8>>, String> {
    kv::get(key)
}

/// Stores `value` at `key`, replacing any previous value.
pub fn set(key: &str, value: impl AsRef<[u8]>) -> Result<(), String> {
    kv::set(key, value.as_ref())
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
