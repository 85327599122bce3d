//! Write to the runtime's log, tagged with the pipeline and the plugin.
//!
//! ```no_run
//! sluice_sdk::log::info("cache warmed");
//! sluice_sdk::log::warn(format!("skipping field `{}`", "x"));
//! ```
//!
//! The runtime filters by level like its own logs (`RUST_LOG`); per-message
//! detail belongs at `debug` or `trace`.

use crate::bindings::sluice::processor::log::{Level, log};

/// Logs at trace level.
pub fn trace(message: impl AsRef<str>) {
    log(Level::Trace, message.as_ref());
}

/// Logs at debug level.
pub fn debug(message: impl AsRef<str>) {
    log(Level::Debug, message.as_ref());
}

/// Logs at info level.
pub fn info(message: impl AsRef<str>) {
    log(Level::Info, message.as_ref());
}

/// Logs at warn level.
pub fn warn(message: impl AsRef<str>) {
    log(Level::Warn, message.as_ref());
}

/// Logs at error level.
pub fn error(message: impl AsRef<str>) {
    log(Level::Error, message.as_ref());
}
