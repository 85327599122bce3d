//! The message model shared by sources, processors and sinks.
//!
//! These types mirror `sdk/wit/sluice.wit` but carry no wasmtime types, so
//! sources and sinks never depend on the plugin engine.

use std::fmt;
use std::sync::Arc;

/// One (name, value) pair. Both are bytes: Redis field names and values
/// are binary-safe, and whatever passes through Sluice comes out byte for
/// byte, or fails loudly where it cannot (a plugin's field names are WIT
/// strings; a JSON line's names are JSON strings).
pub type Field = (Vec<u8>, Vec<u8>);

/// A message read from a source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Stream entry id; synthetic and unique for pub/sub and list items.
    pub id: String,
    /// The stream key, channel or list key it came from.
    pub source: Arc<str>,
    /// Fields in the order Redis stored them.
    pub fields: Vec<Field>,
    /// 1 on first delivery; counted by Redis for streams.
    pub deliveries: u32,
    /// First delivery, in ms since the Unix epoch.
    pub first_delivery_ms: u64,
}

/// One output record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The record's fields.
    pub fields: Vec<Field>,
    /// Sink name; `None` means the pipeline's first sink.
    pub to: Option<String>,
}

impl Record {
    /// A record that carries a message's fields unchanged (no processors).
    pub fn from_message(msg: &Message) -> Self {
        Record {
            fields: msg.fields.clone(),
            to: None,
        }
    }
}

/// What a processor wants done with a message it could not handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Leave it pending; deliver again later (up to `max_deliveries`).
    Retry,
    /// Poison: dead-letter now.
    DeadLetter,
    /// Discard: ack and count.
    Drop,
}

/// Where a failure came from; recorded in dead letters and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// The plugin returned a failure.
    Plugin,
    /// The plugin trapped (panic, unreachable, bad memory access).
    Trap,
    /// The plugin ran past `timeout_ms`.
    Timeout,
    /// The plugin grew past `memory_mb`.
    Memory,
    /// A record named a sink the pipeline does not have.
    Route,
    /// A sink refused or failed the write.
    Sink,
    /// Delivered `max_deliveries` times without an outcome: every consumer
    /// that held it stopped (crashed) before settling it.
    Unsettled,
    /// Pending, but its entry is no longer in the stream (trimmed by
    /// MAXLEN, or deleted) before it was settled: its data is gone.
    Trimmed,
    /// The message cannot be represented where it has to go without
    /// altering it (a field name that is not UTF-8, for a plugin). Retrying
    /// cannot help, so it is dead-lettered with its bytes intact.
    Encoding,
}

impl FailureClass {
    /// Stable lower-case name, used in logs, metrics and dead-letter entries.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::Plugin => "plugin",
            FailureClass::Trap => "trap",
            FailureClass::Timeout => "timeout",
            FailureClass::Memory => "memory",
            FailureClass::Route => "route",
            FailureClass::Sink => "sink",
            FailureClass::Unsettled => "unsettled",
            FailureClass::Trimmed => "trimmed",
            FailureClass::Encoding => "encoding",
        }
    }
}

/// Why a message failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What should happen to the message.
    pub kind: FailureKind,
    /// Where the failure came from.
    pub class: FailureClass,
    /// Human-readable reason.
    pub reason: String,
    /// Content hash of the plugin that failed it, if a plugin did.
    pub plugin: Option<Arc<str>>,
}

impl Failure {
    /// A transient failure of the given class.
    pub fn retry(class: FailureClass, reason: impl Into<String>) -> Self {
        Failure {
            kind: FailureKind::Retry,
            class,
            reason: reason.into(),
            plugin: None,
        }
    }

    /// A failure of the given class that no retry can fix: dead-letter at once.
    pub fn dead_letter(class: FailureClass, reason: impl Into<String>) -> Self {
        Failure {
            kind: FailureKind::DeadLetter,
            ..Failure::retry(class, reason)
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.class.as_str(), self.reason)
    }
}

/// The result of processing one message.
pub type Outcome = Result<Vec<Record>, Failure>;

/// `bytes` as text for logs and error messages: UTF-8 as it is (control
/// characters and quotes escaped), any other byte as `\xNN`, so a name that
/// is not UTF-8 is shown unambiguously instead of as replacement characters.
pub fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        out.extend(chunk.valid().chars().flat_map(char::escape_debug));
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// The millisecond timestamp in a stream entry id (`<ms>-<seq>`).
pub fn stream_id_ms(id: &str) -> u64 {
    id.split('-')
        .next()
        .and_then(|ms| ms.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_shows_invalid_bytes_as_hex_and_keeps_utf8() {
        assert_eq!(escape("café".as_bytes()), "café");
        assert_eq!(escape(b"a\xffb\x80"), "a\\xffb\\x80");
        assert_eq!(escape(b"q\"\n\0"), "q\\\"\\n\\0");
        assert_eq!(escape(b""), "");
    }
}
